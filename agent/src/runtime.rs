//! Runtime containers: the `runtime_create` request, its validation against the
//! store, MAC generation, and the engine work of create/delete/start/stop.
//!
//! Validation is pure (store in, vNIC records or an error out) so the daemon can do it
//! while owning the store; the engine work runs in a task of its own afterwards.
//!
//! Over 400 lines: validation, the engine work of create/delete and their tests (a
//! third of the file) belong together.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::engine::{ContainerSpec, Engine, EngineError, is_managed, managed_labels};
use crate::internal_pool;
use crate::vnics::{NetworkMode, Runtimes, Vnic};

/// A vNIC as asked for by `agent runtime create --vnic ...`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VnicRequest {
    pub name: String,
    pub parent_interface: String,
    pub network_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The arguments of `runtime_create`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    pub vnics: Vec<VnicRequest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    #[error("--vnic {spec:?}: {reason}")]
    VnicSyntax { spec: String, reason: String },
    #[error(
        "invalid runtime name {0:?}: use letters, digits, '_', '.', '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("runtime {0:?} already exists: delete it first")]
    Exists(String),
    #[error("no runtime named {0:?}")]
    NoSuchRuntime(String),
    #[error("a runtime needs at least one --vnic")]
    NoVnics,
    #[error("vNIC {vnic}: {reason}")]
    BadVnic { vnic: String, reason: String },
    #[error(
        "vNICs {a} and {b} are both on parent {parent}: they would land on the same network; use one vNIC per parent"
    )]
    SameNetwork {
        a: String,
        b: String,
        parent: String,
    },
    #[error("{}", name_taken(what, name, *ours))]
    NameTaken {
        what: &'static str,
        name: String,
        /// Carries the agent's label (left over from an earlier runtime).
        ours: bool,
    },
    #[error("{0}")]
    Engine(String),
    #[error("vNIC {vnic}: MAC {mac} is already used on parent {parent} by {owner}")]
    MacInUse {
        vnic: String,
        mac: String,
        parent: String,
        owner: String,
    },
}

fn name_taken(what: &str, name: &str, ours: bool) -> String {
    if ours {
        format!(
            "a {what} named {name} already exists (made by this agent for an earlier runtime, but not in its store): remove it (docker {what} rm {name}) or choose another name"
        )
    } else {
        format!(
            "a {what} named {name} already exists and was not made by this agent: nothing was created; choose another runtime name"
        )
    }
}

/// Parses `name=eth0,parent=ens37,mode=dhcp[,ip=..,subnet=..,gateway=..,mac=..]`.
pub fn parse_vnic(spec: &str) -> Result<VnicRequest, RuntimeError> {
    let err = |reason: String| RuntimeError::VnicSyntax {
        spec: spec.to_string(),
        reason,
    };
    let mut name = None;
    let mut parent = None;
    let mut mode = None;
    let mut v = VnicRequest {
        name: String::new(),
        parent_interface: String::new(),
        network_mode: String::new(),
        ip: None,
        subnet: None,
        gateway: None,
        mac: None,
    };
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(err(format!("key {key}: empty value")));
        }
        let bad = |what: &str| err(format!("key {key}: {value:?} is not {what}"));
        match key {
            "name" => name = Some(value.to_string()),
            "parent" | "parent_interface" => parent = Some(value.to_string()),
            "mode" | "network_mode" => mode = Some(value.to_string()),
            "ip" => v.ip = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
            "subnet" => {
                v.subnet = Some(
                    value
                        .parse()
                        .map_err(|_| bad("an IPv4 subnet like 10.0.0.0/24"))?,
                )
            }
            "gateway" => v.gateway = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
            "mac" => v.mac = Some(value.to_string()),
            other => {
                return Err(err(format!(
                    "unknown key {other:?} (known: name, parent, mode, ip, subnet, gateway, mac)"
                )));
            }
        }
    }
    v.name = name.ok_or_else(|| err("key name is missing".into()))?;
    v.parent_interface = parent.ok_or_else(|| err("key parent is missing".into()))?;
    v.network_mode = mode.ok_or_else(|| err("key mode is missing (dhcp or static)".into()))?;
    Ok(v)
}

/// Docker's container name rule.
fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Interface names: at most 15 bytes, no '/', whitespace or ':'.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':')
}

/// Why a vNIC name is reserved inside a runtime (docs/NAMES.md), if it is.
fn reserved_name(name: &str) -> Option<String> {
    let temp = name
        .strip_prefix(crate::netns::TEMP_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if name == crate::plan::INTERNAL_IFNAME {
        Some(format!(
            "{name:?} is the runtime's internal link inside the container; choose another name"
        ))
    } else if name == "lo" {
        Some("\"lo\" is the container's loopback; choose another name".to_string())
    } else if temp {
        Some(format!(
            "{name:?} is a name the agent uses while renaming links; choose another name"
        ))
    } else {
        None
    }
}

/// Every MAC stored on a parent, with its owner (`runtime/vnic`).
fn macs_on_parent(runtimes: &Runtimes, parent: &str) -> Vec<(MacAddr, String)> {
    runtimes
        .iter()
        .flat_map(|(rt, vnics)| {
            vnics
                .iter()
                .filter(move |v| v.parent_interface == parent)
                .filter_map(move |v| {
                    let mac = v.stored_mac()?;
                    Some((mac, format!("{rt}/{}", v.name)))
                })
        })
        .collect()
}

/// Checks a create request against the store and returns the vNIC records to store.
pub fn validate(req: &CreateRequest, runtimes: &Runtimes) -> Result<Vec<Vnic>, RuntimeError> {
    if !valid_container_name(&req.name) {
        return Err(RuntimeError::BadName(req.name.clone()));
    }
    if runtimes.contains_key(&req.name) {
        return Err(RuntimeError::Exists(req.name.clone()));
    }
    if req.vnics.is_empty() {
        return Err(RuntimeError::NoVnics);
    }
    let mut names = BTreeSet::new();
    let mut new_macs: Vec<(MacAddr, String, String)> = Vec::new();
    let mut out = Vec::new();
    for (i, r) in req.vnics.iter().enumerate() {
        let bad = |reason: String| RuntimeError::BadVnic {
            vnic: r.name.clone(),
            reason,
        };
        check_names(r, &mut names).map_err(bad)?;
        if let Some(other) = req.vnics[..i]
            .iter()
            .find(|o| o.parent_interface == r.parent_interface)
        {
            return Err(RuntimeError::SameNetwork {
                a: other.name.clone(),
                b: r.name.clone(),
                parent: r.parent_interface.clone(),
            });
        }
        let mode = check_addressing(r).map_err(bad)?;
        let taken: Vec<(MacAddr, String)> = macs_on_parent(runtimes, &r.parent_interface)
            .into_iter()
            .chain(
                new_macs
                    .iter()
                    .filter(|(_, p, _)| *p == r.parent_interface)
                    .map(|(m, _, o)| (*m, o.clone())),
            )
            .collect();
        let mac = choose_mac(r, &taken)?;
        new_macs.push((
            mac,
            r.parent_interface.clone(),
            format!("{}/{}", req.name, r.name),
        ));
        out.push(Vnic {
            network_mode: mode,
            ip: r.ip,
            subnet: r.subnet,
            gateway: r.gateway,
            ..Vnic::dhcp(&r.name, &r.parent_interface, Some(mac))
        });
    }
    Ok(out)
}

/// The vNIC's and its parent's names.
fn check_names<'a>(r: &'a VnicRequest, seen: &mut BTreeSet<&'a str>) -> Result<(), String> {
    if !valid_ifname(&r.name) {
        return Err("name must be an interface name of 1 to 15 characters".into());
    }
    if let Some(why) = reserved_name(&r.name) {
        return Err(why);
    }
    if !seen.insert(r.name.as_str()) {
        return Err("the name is used twice".into());
    }
    if !valid_ifname(&r.parent_interface) {
        return Err(format!(
            "parent {:?} is not an interface name",
            r.parent_interface
        ));
    }
    Ok(())
}

/// The mode, and a static vNIC's address, subnet and gateway.
fn check_addressing(r: &VnicRequest) -> Result<NetworkMode, String> {
    let mode = match r.network_mode.as_str() {
        "dhcp" => NetworkMode::Dhcp,
        "static" => NetworkMode::Static,
        other => return Err(format!("mode {other:?}: use dhcp or static")),
    };
    if mode == NetworkMode::Dhcp {
        if r.ip.is_some() || r.subnet.is_some() || r.gateway.is_some() {
            return Err(
                "mode dhcp takes its address from the parent's LAN: drop ip, subnet and gateway"
                    .into(),
            );
        }
        return Ok(mode);
    }
    let (Some(ip), Some(subnet)) = (r.ip, r.subnet) else {
        return Err("mode static needs ip and subnet".into());
    };
    if subnet.ip() != subnet.network() {
        return Err(format!(
            "subnet {subnet}: write the network address ({}/{})",
            subnet.network(),
            subnet.prefix()
        ));
    }
    if !subnet.contains(ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(format!("ip {ip} is not a host address of subnet {subnet}"));
    }
    if let Some(gw) = r.gateway {
        if !subnet.contains(gw) {
            return Err(format!("gateway {gw} is not in subnet {subnet}"));
        }
        if gw == ip {
            return Err(format!("ip {ip} is the gateway"));
        }
    }
    Ok(mode)
}

/// The vNIC's MAC: the one asked for (unicast, not taken on its parent), else a
/// random local one no other vNIC on that parent has.
fn choose_mac(r: &VnicRequest, taken: &[(MacAddr, String)]) -> Result<MacAddr, RuntimeError> {
    let bad = |reason: String| RuntimeError::BadVnic {
        vnic: r.name.clone(),
        reason,
    };
    let Some(m) = &r.mac else {
        return Ok(loop {
            let m = MacAddr::random_local();
            if !taken.iter().any(|(t, _)| *t == m) {
                break m;
            }
        });
    };
    let mac: MacAddr = m
        .parse()
        .map_err(|_| bad(format!("mac {m:?} is not like 02:aa:bb:cc:dd:ee")))?;
    if mac.octets() == [0; 6] {
        return Err(bad("mac 00:00:00:00:00:00 is not usable".into()));
    }
    if !mac.is_unicast() {
        return Err(bad(format!("mac {mac} is multicast; use a unicast MAC")));
    }
    if let Some((_, owner)) = taken.iter().find(|(t, _)| *t == mac) {
        return Err(RuntimeError::MacInUse {
            vnic: r.name.clone(),
            mac: mac.to_string(),
            parent: r.parent_interface.clone(),
            owner: owner.clone(),
        });
    }
    Ok(mac)
}

/// The internal bridge network of a runtime.
pub fn internal_network(runtime: &str) -> String {
    format!("{runtime}_internal")
}

/// The container the agent itself runs in, if any: `AGENT_CONTAINER` (explicit),
/// else the hostname when `/.dockerenv` exists (the engine sets the hostname to the
/// short id; a guess, since `/.dockerenv` also exists in containers of other engines).
pub fn own_container() -> Option<OwnContainer> {
    if let Ok(c) = std::env::var("AGENT_CONTAINER")
        && !c.trim().is_empty()
    {
        return Some(OwnContainer {
            name: c.trim().to_string(),
            explicit: true,
        });
    }
    if std::path::Path::new("/.dockerenv").exists() {
        return std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .map(|name| OwnContainer {
                name,
                explicit: false,
            });
    }
    None
}

pub struct OwnContainer {
    pub name: String,
    /// Named by `AGENT_CONTAINER` rather than guessed.
    pub explicit: bool,
}

/// Connects the agent's own container to a runtime's internal network. A guessed
/// container the engine does not know means the agent is not one of its
/// containers: nothing to do.
async fn connect_self(docker: &dyn Engine, internal: &str) -> Result<(), EngineError> {
    let Some(me) = own_container() else {
        return Ok(());
    };
    match docker.connect(&me.name, internal, None, None).await {
        Ok(()) => {
            info!(container = %me.name, network = %internal, "connected the agent's container");
            Ok(())
        }
        Err(EngineError::NotFound(_)) if !me.explicit => {
            debug!(guess = %me.name, "not running in a container of this engine");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Where internal networks come from: the configured range, and the subnets held
/// by this agent's creates in flight (shared by all of them).
#[derive(Clone, Debug)]
pub struct InternalPool {
    pub range: Ipv4Network,
    pub reserved: internal_pool::Reserved,
}

impl InternalPool {
    pub fn new(range: Ipv4Network) -> InternalPool {
        InternalPool {
            range,
            reserved: Default::default(),
        }
    }
}

/// What one create made, by id, so a failure undoes exactly that and nothing else.
#[derive(Default, Debug)]
struct Made {
    network: Option<String>,
    container: Option<String>,
}

/// How a create gets its internal network.
enum Internal {
    /// Ours and left over (e.g. from a runtime removed by hand): reused, and so not
    /// removed if this create fails.
    Reuse,
    /// To be made on this subnet of the internal pool, held from other creates.
    New(internal_pool::Reservation),
}

/// Refuses a create whose names are taken, and finds its internal subnet: the first
/// free one of `pool`, avoiding every subnet the engine's networks use and those
/// other creates in flight hold.
async fn prepare(
    docker: &dyn Engine,
    name: &str,
    internal: &str,
    pool: &InternalPool,
) -> Result<Internal, RuntimeError> {
    let engine = |e: EngineError| RuntimeError::Engine(e.to_string());
    if let Some(c) = docker.container(name).await.map_err(engine)? {
        return Err(RuntimeError::NameTaken {
            what: "container",
            name: name.to_string(),
            ours: is_managed(&c.labels),
        });
    }
    let networks = docker.list_networks().await.map_err(engine)?;
    match networks.iter().find(|n| n.name == internal) {
        None => {
            let taken: Vec<Ipv4Network> = networks
                .iter()
                .flat_map(|n| n.pools.iter().map(|p| p.subnet))
                .collect();
            pool.reserved
                .take(pool.range, &taken)
                .map(Internal::New)
                .map_err(|e| RuntimeError::Engine(e.to_string()))
        }
        Some(n) if is_managed(&n.labels) && n.driver == "bridge" => Ok(Internal::Reuse),
        Some(n) => Err(RuntimeError::NameTaken {
            what: "network",
            name: internal.to_string(),
            ours: is_managed(&n.labels),
        }),
    }
}

/// Creates the internal network and the container, starts it, and connects the
/// agent's own container to the internal network. A container or network name that
/// is already taken is refused before anything is created; on a later failure only
/// what this call created (by id) is removed again, so a retry starts clean.
pub async fn create_in_engine(
    docker: &dyn Engine,
    req: &CreateRequest,
    pool: &InternalPool,
) -> Result<(), RuntimeError> {
    let internal = internal_network(&req.name);
    let how = prepare(docker, &req.name, &internal, pool).await?;
    let mut made = Made::default();
    let result = async {
        if let Internal::New(held) = how {
            made.network = Some(create_internal(docker, &internal, held, pool).await?);
        }
        let spec = ContainerSpec {
            name: req.name.clone(),
            image: req.image.clone(),
            cmd: req.cmd.clone(),
            env: Vec::new(),
            network: Some(internal.clone()),
            labels: managed_labels(),
            // The MAC is set from the agent's side of the namespace; the runtime
            // itself needs no extra privilege.
            cap_add: Vec::new(),
        };
        made.container = Some(docker.create_container(&spec).await?);
        docker.start_container(&req.name).await?;
        connect_self(docker, &internal).await
    }
    .await;
    if let Err(e) = &result {
        warn!(runtime = %req.name, error = %e, made = ?made, "runtime create failed; removing what it created");
        undo(docker, &made).await;
    }
    result.map_err(|e| RuntimeError::Engine(e.to_string()))
}

/// Enough for several agents or other clients creating networks on one engine at once
/// (seen in the test suite: 8 ran out while other agents' creates went on); each try
/// is one refused create and one network listing.
const INTERNAL_TRIES: usize = 32;

/// Creates the internal network on the held subnet. Another engine client (or one
/// of our creates that finished between our listing and our choice) may have taken
/// it since: when the engine refuses, the next free one is tried (up to
/// [`INTERNAL_TRIES`]; the last refusal is returned). The subnet stays held until the
/// network exists.
async fn create_internal(
    docker: &dyn Engine,
    name: &str,
    mut held: internal_pool::Reservation,
    pool: &InternalPool,
) -> Result<String, EngineError> {
    let mut refused = Vec::new();
    let mut last = None;
    for _ in 0..INTERNAL_TRIES {
        let subnet = held.subnet;
        let err = match docker
            .create_internal_network(name, subnet, &managed_labels())
            .await
        {
            Ok(id) => return Ok(id),
            Err(e) if e.is_unreachable() => return Err(e),
            Err(e) => e,
        };
        // Not something another try can fix.
        if matches!(err, EngineError::Permission(_) | EngineError::BadHost(_)) {
            return Err(err);
        }
        // Taken meanwhile by a network we can see, or held by the engine's IPAM for
        // one being created or removed right now: either way, not this subnet.
        refused.push(subnet);
        let mut taken: Vec<Ipv4Network> = docker
            .list_networks()
            .await?
            .iter()
            .flat_map(|n| n.pools.iter().map(|p| p.subnet))
            .collect();
        taken.extend(refused.iter().copied());
        debug!(%subnet, error = %err, "internal subnet refused; choosing another");
        last = Some(err);
        held = pool
            .reserved
            .take(pool.range, &taken)
            .map_err(|e| EngineError::Conflict(e.to_string()))?;
    }
    Err(last.unwrap_or_else(|| {
        EngineError::Conflict(format!("no internal subnet could be created for {name}"))
    }))
}

/// Removes what a failed create made, container first (a network with an endpoint
/// cannot be removed). Best effort: each failure is logged.
async fn undo(docker: &dyn Engine, made: &Made) {
    if let Some(id) = &made.container
        && let Err(e) = docker.remove_container(id).await
    {
        warn!(container = %id, error = %e, "could not remove the container this create made");
    }
    if let Some(id) = &made.network {
        if let Some(me) = own_container() {
            let _ = docker.disconnect(&me.name, id).await;
        }
        if let Err(e) = docker.remove_network(id).await {
            warn!(network = %id, error = %e, "could not remove the network this create made");
        }
    }
}

/// Removes the container and its internal network (after disconnecting the agent's
/// own container from it). "Not found" counts as done.
pub async fn remove_runtime(docker: &dyn Engine, name: &str) -> Result<(), EngineError> {
    ok_if_gone(docker.remove_container(name).await)?;
    let internal = internal_network(name);
    if let Some(me) = own_container() {
        ok_if_gone(docker.disconnect(&me.name, &internal).await)?;
    }
    ok_if_gone(docker.remove_network(&internal).await)
}

/// What [`remove_unused_networks`] did: the networks removed, and those the engine
/// kept with the reason it gave.
#[derive(Default, Debug)]
pub struct NetworksRemoved {
    pub removed: Vec<String>,
    pub left: Vec<crate::control::protocol::LeftNetwork>,
}

/// Removes each managed macvlan network on `unused_parents` (parents no runtime in
/// the store uses anymore). Call it once no other runtime's container is still being
/// removed (`daemon::removals`). A network the engine keeps because it "has active
/// endpoints" is left and reported: a container that is not ours may be on it, or
/// 20.10's count of its endpoints is stale (moby/moby#43286, cleared by an engine
/// restart); either way it is not the agent's to force.
pub async fn remove_unused_networks(
    docker: &dyn Engine,
    unused_parents: &[String],
) -> Result<NetworksRemoved, EngineError> {
    let mut out = NetworksRemoved::default();
    if unused_parents.is_empty() {
        return Ok(out);
    }
    for net in docker.list_networks().await? {
        let managed = crate::engine::is_managed(&net.labels);
        let on_parent = net
            .parent
            .as_ref()
            .is_some_and(|p| unused_parents.contains(p));
        if net.driver != "macvlan" || !managed || !on_parent {
            continue;
        }
        match ok_if_gone(docker.remove_network(&net.name).await) {
            Ok(()) => out.removed.push(net.name),
            Err(e) if e.to_string().contains("active endpoints") => {
                tracing::warn!(network = %net.name, error = %e, "the engine keeps a network no runtime uses");
                out.left.push(crate::control::protocol::LeftNetwork {
                    network: net.name,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn ok_if_gone(r: Result<(), EngineError>) -> Result<(), EngineError> {
    match r {
        Err(EngineError::NotFound(_)) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(vnics: &[&str]) -> CreateRequest {
        CreateRequest {
            name: "rt1".into(),
            image: "img".into(),
            cmd: None,
            vnics: vnics.iter().map(|s| parse_vnic(s).unwrap()).collect(),
        }
    }

    #[test]
    fn parse_errors_name_the_key() {
        let e = parse_vnic("name=eth0,parent=ens37,mode=static,ip=10.0.0.300").unwrap_err();
        assert!(e.to_string().contains("key ip"), "{e}");
        let e = parse_vnic("name=eth0,parent=ens37,mode=static,subnet=10.0.0.0/33").unwrap_err();
        assert!(e.to_string().contains("key subnet"), "{e}");
        let e = parse_vnic("name=eth0,mode=dhcp").unwrap_err();
        assert!(e.to_string().contains("key parent is missing"), "{e}");
        let e = parse_vnic("name=eth0,parent=a,mode=dhcp,colour=red").unwrap_err();
        assert!(e.to_string().contains("unknown key \"colour\""), "{e}");
        let e = parse_vnic("name=eth0,parent").unwrap_err();
        assert!(e.to_string().contains("not key=value"), "{e}");
    }

    #[test]
    fn reserved_names_inside_the_runtime_are_refused() {
        for name in ["int0", "lo", "edn7"] {
            let e = validate(
                &req(&[&format!("name={name},parent=a,mode=dhcp")]),
                &Runtimes::new(),
            )
            .unwrap_err();
            assert!(matches!(e, RuntimeError::BadVnic { .. }), "{name}: {e}");
            assert!(e.to_string().contains("choose another name"), "{e}");
        }
        validate(&req(&["name=ednx,parent=a,mode=dhcp"]), &Runtimes::new()).unwrap();
    }

    #[test]
    fn generates_unique_local_unicast_macs() {
        let vnics = validate(
            &req(&[
                "name=eth0,parent=a,mode=dhcp",
                "name=eth1,parent=b,mode=dhcp",
            ]),
            &Runtimes::new(),
        )
        .unwrap();
        for v in &vnics {
            let mac = v.mac.as_deref().unwrap();
            let first = u8::from_str_radix(&mac[..2], 16).unwrap();
            assert_eq!(first & 0b11, 0b10, "{mac}: locally administered unicast");
        }
        assert_ne!(vnics[0].mac, vnics[1].mac);
    }

    #[test]
    fn rejects_two_vnics_on_one_parent_and_reused_macs() {
        let e = validate(
            &req(&[
                "name=eth0,parent=a,mode=dhcp",
                "name=eth1,parent=a,mode=dhcp",
            ]),
            &Runtimes::new(),
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::SameNetwork { .. }), "{e}");

        let mut store = Runtimes::new();
        store.insert(
            "other".into(),
            validate(
                &req(&["name=eth0,parent=a,mode=dhcp,mac=02:00:00:00:00:01"]),
                &Runtimes::new(),
            )
            .unwrap(),
        );
        let e = validate(
            &req(&["name=eth0,parent=a,mode=dhcp,mac=02:00:00:00:00:01"]),
            &store,
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::MacInUse { .. }), "{e}");
        // The same MAC on another parent is another LAN: allowed.
        validate(
            &req(&["name=eth0,parent=b,mode=dhcp,mac=02:00:00:00:00:01"]),
            &store,
        )
        .unwrap();
        let e = validate(
            &CreateRequest {
                name: "other".into(),
                ..req(&["name=eth0,parent=c,mode=dhcp"])
            },
            &store,
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Exists(_)), "{e}");
    }

    #[test]
    fn static_needs_a_consistent_address() {
        let r = |s: &str| validate(&req(&[s]), &Runtimes::new());
        assert!(r("name=eth0,parent=a,mode=static,ip=10.0.0.5").is_err());
        assert!(r("name=eth0,parent=a,mode=static,ip=10.0.1.5,subnet=10.0.0.0/24").is_err());
        assert!(
            r("name=eth0,parent=a,mode=static,ip=10.0.0.5,subnet=10.0.0.0/24,gateway=10.1.0.1")
                .is_err()
        );
        assert!(r("name=eth0,parent=a,mode=dhcp,ip=10.0.0.5").is_err());
        assert!(r("name=eth0,parent=a,mode=static,ip=10.0.0.5,subnet=10.0.0.9/24").is_err());
        assert!(r("name=eth0,parent=a,mode=bridge").is_err());
        assert!(r("name=eth0,parent=a,mode=dhcp,mac=01:00:5e:00:00:01").is_err());
        let v = r(
            "name=eth0,parent=a,mode=static,ip=10.0.0.5,subnet=10.0.0.0/24,gateway=10.0.0.1,mac=02:AA:bb:cc:dd:ee",
        )
        .unwrap();
        assert_eq!(v[0].mac.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        assert!(matches!(v[0].network_mode, NetworkMode::Static));
    }

    #[test]
    fn container_names() {
        assert!(valid_container_name("rt-1.a_b"));
        assert!(!valid_container_name("-x"));
        assert!(!valid_container_name("a/b"));
        assert!(!valid_container_name(""));
    }
}
