//! The engine seam: every engine (and in-namespace) call that reconcile, the executor
//! and the runtime commands make. Implemented by [`Docker`](super::Docker) and by
//! [`FakeEngine`](super::FakeEngine).
//!
//! Object safe on purpose (`&dyn Engine`, `Arc<dyn Engine>`): the daemon holds one
//! engine chosen at start, and tests hand in the fake. Methods return boxed `Send`
//! futures so they can be awaited inside spawned tasks; one allocation per call is
//! nothing next to an HTTP round trip to the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use ipc::MacAddr;
use ipnetwork::Ipv4Network;

use super::details::{ContainerDetails, ContainerStats};
use super::{
    CallCounts, ContainerInfo, ContainerSpec, EngineError, EngineEvent, EngineVersion, NetworkInfo,
    NetworkSpec, NsLink, Observed,
};
use crate::netns::NetnsError;

/// A boxed engine call.
pub type EngineFuture<'a, T> = BoxFuture<'a, Result<T, EngineError>>;

pub trait Engine: Send + Sync {
    /// Where the engine is, for messages (`unix:///var/run/docker.sock`).
    fn host(&self) -> String;
    /// Cumulative calls made through this engine.
    fn counts(&self) -> CallCounts;
    fn version(&self) -> EngineFuture<'_, EngineVersion>;

    /// All macvlan networks and the named containers that exist, without reading
    /// inside them (`ns_links` empty).
    fn observe_engine<'a>(&'a self, containers: &'a [String]) -> EngineFuture<'a, Observed>;
    /// All macvlan networks and the named containers with their links; a container in
    /// `known` is taken from there instead of being read again.
    fn observe_reusing<'a>(
        &'a self,
        containers: &'a [String],
        known: &'a BTreeMap<String, ContainerInfo>,
    ) -> EngineFuture<'a, Observed>;
    /// Reads the links inside the named running containers of `observed`; a failure
    /// is kept in each container's `ns_error`.
    fn read_links_of<'a>(
        &'a self,
        observed: &'a mut Observed,
        names: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, ()>;
    /// One container, with its links when running; `None` when it does not exist.
    fn container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerInfo>>;
    /// Every network (any driver), without attached containers.
    fn list_networks(&self) -> EngineFuture<'_, Vec<NetworkInfo>>;
    /// Names of the containers carrying the managed label.
    fn list_managed_containers(&self) -> EngineFuture<'_, Vec<String>>;

    /// Creates a macvlan network (an existing one of that name on that parent is
    /// returned instead); its id.
    fn create_network<'a>(&'a self, spec: &'a NetworkSpec) -> EngineFuture<'a, String>;
    /// Creates an internal bridge network on `subnet` (existing = its id).
    fn create_internal_network<'a>(
        &'a self,
        name: &'a str,
        subnet: Ipv4Network,
        labels: &'a BTreeMap<String, String>,
    ) -> EngineFuture<'a, String>;
    /// Removes a network; already gone is success.
    fn remove_network<'a>(&'a self, name_or_id: &'a str) -> EngineFuture<'a, ()>;
    /// Connects a container; already connected (with that address) is success.
    fn connect<'a>(
        &'a self,
        container: &'a str,
        network: &'a str,
        ipv4: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> EngineFuture<'a, ()>;
    /// Disconnects a container; not connected (or network gone) is success.
    fn disconnect<'a>(&'a self, container: &'a str, network: &'a str) -> EngineFuture<'a, ()>;

    fn create_container<'a>(&'a self, spec: &'a ContainerSpec) -> EngineFuture<'a, String>;
    fn start_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()>;
    fn stop_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()>;
    fn restart_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()>;
    fn remove_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()>;

    /// Container start/destroy and network destroy events, from the subscription on.
    fn events(&self) -> BoxStream<'static, Result<EngineEvent, EngineError>>;

    /// Sets the MAC of `ifname` inside the running process `pid`'s namespace and
    /// returns the links as they read afterwards (one MAC set).
    fn set_mac_inside<'a>(
        &'a self,
        pid: u32,
        ifname: &'a str,
        mac: MacAddr,
    ) -> BoxFuture<'a, Result<Vec<NsLink>, NetnsError>>;

    // The cloud's reads and the runtime image (only the cloud commands use them).

    /// A container's state for `get_device_status`; `None` when it does not exist.
    fn details<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerDetails>>;
    /// One stats reading of a container; `None` when it does not exist.
    fn stats<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerStats>>;
    /// Pulls `image` (`repo:tag`) from its registry.
    fn pull_image<'a>(&'a self, image: &'a str) -> EngineFuture<'a, ()>;
    /// Whether `image` exists locally.
    fn image_exists<'a>(&'a self, image: &'a str) -> EngineFuture<'a, bool>;

    /// Names links (by ifindex) inside `pid`'s namespace in one pass, keeping each
    /// renamed link's engine name in its alias (`netns::name_links`); the links after.
    fn name_inside(
        &self,
        pid: u32,
        wants: Vec<crate::netns::NameWant>,
    ) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>>;

    /// The links inside `pid`'s namespace (one namespace read, counted as a MAC check:
    /// no engine call).
    fn links_inside(&self, pid: u32) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>>;

    /// Gives the link of `endpoint` (by its alias, else by `ip`) inside `pid`'s
    /// namespace back the engine's name, in one pass (`netns::give_back_name`).
    fn give_back_inside(
        &self,
        pid: u32,
        endpoint: String,
        ip: Option<std::net::Ipv4Addr>,
    ) -> BoxFuture<'_, Result<crate::netns::GaveBack, NetnsError>>;

    /// Deletes a link (by ifindex) inside `pid`'s namespace; the links after.
    fn delete_inside(&self, pid: u32, index: u32)
    -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>>;
}
