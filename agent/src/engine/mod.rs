//! The container engine as the rest of the agent sees it: our own small types, the
//! [`Engine`] seam, [`Docker`] (the adapter over the Engine API) and [`FakeEngine`]
//! (a recording fake for unit tests). Only `docker/` names bollard; its generated
//! models change every release and must not leak into planning.

mod details;
mod docker;
pub mod fake;
mod seam;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub use crate::netns::NsLink;
pub use details::{ContainerDetails, ContainerStats, NetworkAddress};
pub use docker::Docker;
pub use fake::{Call, FakeEngine};
pub use seam::{Engine, EngineFuture};

/// Label set to `"true"` on every network and container the agent creates.
pub const MANAGED_LABEL: &str = "edgenet.managed";

/// The labels the agent puts on what it creates.
pub fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_LABEL.to_string(), "true".to_string())])
}

/// Whether a label set marks a resource as the agent's.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_LABEL).map(String::as_str) == Some("true")
}

/// One IPAM pool of a network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pool {
    pub subnet: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
}

/// A macvlan network to create.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub parent: String,
    pub pools: Vec<Pool>,
    /// Auxiliary addresses IPAM must never hand out (the host, the gateway).
    pub aux: Vec<(String, Ipv4Addr)>,
    pub labels: BTreeMap<String, String>,
    /// Where the engine's IPAM may choose addresses (the pool containing it only).
    pub ip_range: Option<ipnetwork::Ipv4Network>,
}

/// A network as the engine reports it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// The macvlan `parent` option, exactly as given at creation.
    pub parent: Option<String>,
    pub pools: Vec<Pool>,
    pub labels: BTreeMap<String, String>,
    /// Names of the containers attached (from the network's inspect).
    pub containers: Vec<String>,
}

/// One attachment of a container to a network.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The engine's id of this attachment (a reconnect is a new one); empty when the
    /// engine did not say.
    pub endpoint_id: String,
    pub network_id: String,
    pub network_name: String,
    pub ipv4: Option<Ipv4Addr>,
    /// The MAC the engine believes the endpoint has (not necessarily what is inside).
    pub mac: Option<MacAddr>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
    pub endpoints: Vec<Endpoint>,
    /// Read through the container's namespace when it is running; empty otherwise or
    /// when the namespace could not be read (see `ns_error`).
    pub ns_links: Vec<NsLink>,
    pub labels: BTreeMap<String, String>,
    /// Why `ns_links` could not be read, when it could not.
    pub ns_error: Option<String>,
}

impl ContainerInfo {
    /// The endpoint on a network, by id or name.
    pub fn endpoint_on(&self, network: &NetworkInfo) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.network_id == network.id || e.network_name == network.name)
    }

    /// The namespace link holding an IPv4 address.
    pub fn link_with(&self, ip: Ipv4Addr) -> Option<&NsLink> {
        self.ns_links.iter().find(|l| l.ipv4.contains(&ip))
    }
}

/// What the engine holds that planning needs.
#[derive(Serialize, Default, Clone, Debug)]
pub struct Observed {
    /// Every macvlan network.
    pub networks: Vec<NetworkInfo>,
    /// The containers asked about that exist, by name.
    pub containers: BTreeMap<String, ContainerInfo>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineVersion {
    pub version: String,
    pub api_version: String,
}

/// A container to create.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    /// The first network (e.g. `NAME_internal`); `None` = the engine's default.
    pub network: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
}

/// The engine events the agent reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    ContainerStarted {
        name: String,
    },
    ContainerDied {
        name: String,
    },
    ContainerGone {
        name: String,
    },
    /// A container (by id) connected to or disconnected from a network (by hand, or
    /// by us).
    Attachment {
        network: String,
        container: String,
        connected: bool,
    },
    NetworkGone {
        name: String,
        id: String,
    },
    Other,
}

/// Engine calls made, cumulative. "Changing" calls are everything but `reads`,
/// `mac_checks`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct CallCounts {
    pub reads: u64,
    pub network_create: u64,
    pub network_remove: u64,
    pub connect: u64,
    pub disconnect: u64,
    pub container_changes: u64,
    pub mac_checks: u64,
    pub mac_sets: u64,
    /// Link renames and deletions inside containers (docs/NAMES.md).
    #[serde(default)]
    pub renames: u64,
}

impl CallCounts {
    /// Calls that change something in the engine or a container.
    pub fn changing(&self) -> u64 {
        self.network_create
            + self.network_remove
            + self.connect
            + self.disconnect
            + self.container_changes
            + self.mac_sets
            + self.renames
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &CallCounts) -> CallCounts {
        CallCounts {
            reads: self.reads.saturating_sub(earlier.reads),
            network_create: self.network_create.saturating_sub(earlier.network_create),
            network_remove: self.network_remove.saturating_sub(earlier.network_remove),
            connect: self.connect.saturating_sub(earlier.connect),
            disconnect: self.disconnect.saturating_sub(earlier.disconnect),
            container_changes: self
                .container_changes
                .saturating_sub(earlier.container_changes),
            mac_checks: self.mac_checks.saturating_sub(earlier.mac_checks),
            mac_sets: self.mac_sets.saturating_sub(earlier.mac_sets),
            renames: self.renames.saturating_sub(earlier.renames),
        }
    }
}

/// Engine failures, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine unreachable at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("permission denied: {0}")]
    Permission(String),
    #[error("engine refused the request ({status}): {message}")]
    Api { status: u16, message: String },
    #[error("bad engine address {0:?}: use unix:///path/to/docker.sock")]
    BadHost(String),
    #[error("unexpected engine reply: {0}")]
    Protocol(String),
}

/// 20.10's words (with a 500) for a connect whose address the network cannot hold.
const OUTSIDE_SUBNETS: &str = "does not belong to any of this network's subnets";

impl EngineError {
    /// Whether retrying later (engine restart, socket appearing) can help.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EngineError::Unreachable { .. })
    }

    /// Whether the engine refused for good: the same request will be refused again
    /// until someone changes something (the one place engine errors are classified).
    ///
    /// Transient: the engine unreachable or timing out, a reply we could not read, a
    /// 5xx, a 404 (an object being re-created, or removed by a run that re-creates
    /// it), a 409, a 408 or 429, and a 403, which is how 20.10 answers the conflicts
    /// the next run resolves ("has active endpoints", "endpoint ... already exists",
    /// "Address already in use", "Pool overlaps"). Permanent: every other 4xx (400
    /// "... private (none) mode", "user specified IP address is supported only ...",
    /// 401), the one 500 that 20.10 gives for a refusal ("Invalid address ...: It does
    /// not belong to any of this network's subnets", a connect with an address the
    /// network cannot hold), a permission denied on the socket, and a bad engine address.
    pub fn is_permanent(&self) -> bool {
        match self {
            EngineError::Unreachable { .. }
            | EngineError::NotFound(_)
            | EngineError::Conflict(_)
            | EngineError::Protocol(_) => false,
            EngineError::Permission(_) | EngineError::BadHost(_) => true,
            EngineError::Api {
                status: 500,
                message,
            } => message.contains(OUTSIDE_SUBNETS),
            EngineError::Api { status, .. } => {
                (400..500).contains(status) && !matches!(status, 403 | 404 | 408 | 409 | 429)
            }
        }
    }
}
