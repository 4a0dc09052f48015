//! The Engine API adapter: the only module that names bollard.
//!
//! The client is created lazily and dropped when the engine becomes unreachable, so an
//! engine that is down at start, restarts, or is upgraded is picked up again (with a
//! fresh API version negotiation) on the next call, without the agent restarting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::errors::Error as BError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    EventMessageTypeEnum, HostConfig, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, NetworkInspect,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, RestartContainerOptions, StopContainerOptions,
};
use futures::{Stream, StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;

use super::{
    CallCounts, ContainerInfo, ContainerSpec, Endpoint, EngineError, EngineEvent, EngineVersion,
    NetworkInfo, NetworkSpec, Observed, Pool,
};
use crate::netns;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Per-request timeout (seconds): a wedged engine must not stall a reconcile forever.
const REQUEST_TIMEOUT: u64 = 120;
/// Containers inspected at once while observing.
const OBSERVE_PARALLELISM: usize = 8;

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    network_create: AtomicU64,
    network_remove: AtomicU64,
    connect: AtomicU64,
    disconnect: AtomicU64,
    container_changes: AtomicU64,
    mac_checks: AtomicU64,
    mac_sets: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    socket: String,
    client: tokio::sync::Mutex<Option<bollard::Docker>>,
    counters: Counters,
}

/// A handle on the engine; cheap to clone, shared counters.
#[derive(Clone)]
pub struct Docker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docker")
            .field("socket", &self.inner.socket)
            .finish()
    }
}

/// Maps a bollard error to what it means for us.
fn classify(socket: &str, what: &str, e: BError) -> EngineError {
    match e {
        BError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => EngineError::NotFound(format!("{what}: {message}")),
            409 => EngineError::Conflict(format!("{what}: {message}")),
            401 => EngineError::Permission(format!("{what}: {message}")),
            status => EngineError::Api {
                status,
                message: format!("{what}: {message}"),
            },
        },
        BError::IOError { err } if err.kind() == std::io::ErrorKind::PermissionDenied => {
            EngineError::Permission(format!("{what}: {socket}: {err}"))
        }
        BError::SocketNotFoundError(_)
        | BError::IOError { .. }
        | BError::HyperResponseError { .. }
        | BError::HttpClientError { .. }
        | BError::RequestTimeoutError => EngineError::Unreachable {
            host: socket.to_string(),
            reason: format!("{what}: {e}"),
        },
        other => EngineError::Protocol(format!("{what}: {other}")),
    }
}

fn labels_of(m: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    m.unwrap_or_default().into_iter().collect()
}

fn parse_ip(s: Option<&String>) -> Option<Ipv4Addr> {
    s.filter(|s| !s.is_empty())
        .and_then(|s| Ipv4Addr::from_str(s).ok())
}

fn pools_of(ipam: Option<&Ipam>) -> Vec<Pool> {
    ipam.and_then(|i| i.config.as_ref())
        .map(|cfg| {
            cfg.iter()
                .filter_map(|c| {
                    let subnet = Ipv4Network::from_str(c.subnet.as_deref()?).ok()?;
                    Some(Pool {
                        subnet,
                        gateway: parse_ip(c.gateway.as_ref()),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn network_info(n: NetworkInspect) -> NetworkInfo {
    let mut containers: Vec<String> = n
        .containers
        .unwrap_or_default()
        .into_values()
        .filter_map(|e| e.name)
        .collect();
    containers.sort();
    NetworkInfo {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        driver: n.driver.unwrap_or_default(),
        parent: n.options.as_ref().and_then(|o| o.get("parent").cloned()),
        pools: pools_of(n.ipam.as_ref()),
        labels: labels_of(n.labels),
        containers,
    }
}

fn container_info(c: ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let pid = state
        .pid
        .filter(|p| *p > 0 && running)
        .and_then(|p| u32::try_from(p).ok());
    let mut endpoints: Vec<Endpoint> = c
        .network_settings
        .and_then(|s| s.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, e)| Endpoint {
            network_id: e.network_id.unwrap_or_default(),
            network_name: name,
            // A stopped container has no address yet; the requested static one stands in.
            ipv4: parse_ip(e.ip_address.as_ref())
                .or_else(|| parse_ip(e.ipam_config.as_ref().and_then(|c| c.ipv4_address.as_ref()))),
            mac: e.mac_address.filter(|m| !m.is_empty()),
        })
        .collect();
    endpoints.sort_by(|a, b| a.network_name.cmp(&b.network_name));
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        running,
        pid,
        endpoints,
        ns_links: Vec::new(),
        labels: labels_of(c.config.and_then(|c| c.labels)),
        ns_error: None,
    }
}

/// The `unix://` path from a host URL.
fn socket_path(host: &str) -> Result<String, EngineError> {
    if let Some(p) = host.strip_prefix("unix://") {
        return Ok(p.to_string());
    }
    if host.starts_with('/') {
        return Ok(host.to_string());
    }
    Err(EngineError::BadHost(host.to_string()))
}

impl Docker {
    /// `docker_host` (`unix:///path`), else `DOCKER_HOST`, else the local socket. Does
    /// not touch the engine: the first call connects and negotiates the API version.
    pub fn new(docker_host: Option<&str>) -> Result<Docker, EngineError> {
        let env = std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty());
        let host = docker_host
            .map(str::to_string)
            .or(env)
            .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
        Ok(Docker {
            inner: Arc::new(Inner {
                socket: socket_path(&host)?,
                client: tokio::sync::Mutex::new(None),
                counters: Counters::default(),
            }),
        })
    }

    /// The socket path in use.
    pub fn socket(&self) -> &str {
        &self.inner.socket
    }

    async fn client(&self) -> Result<bollard::Docker, EngineError> {
        let mut slot = self.inner.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let socket = &self.inner.socket;
        let c = bollard::Docker::connect_with_unix(
            socket,
            REQUEST_TIMEOUT,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| classify(socket, "connect", e))?;
        bump(&self.inner.counters.reads);
        let c = c
            .negotiate_version()
            .await
            .map_err(|e| classify(socket, "negotiate the API version", e))?;
        let v = c.client_version();
        tracing::info!(socket = %socket, api = %format!("{}.{}", v.major_version, v.minor_version), "engine connected");
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Classifies an error and forgets the client when the engine is gone.
    async fn fail(&self, what: &str, e: BError) -> EngineError {
        let err = classify(&self.inner.socket, what, e);
        if err.is_unreachable() {
            *self.inner.client.lock().await = None;
        }
        err
    }

    pub(crate) fn count_mac_check(&self) {
        bump(&self.inner.counters.mac_checks);
    }

    pub(crate) fn count_mac_set(&self) {
        bump(&self.inner.counters.mac_sets);
    }

    /// Cumulative calls made through this handle (and its clones).
    pub fn counts(&self) -> CallCounts {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CallCounts {
            reads: g(&c.reads),
            network_create: g(&c.network_create),
            network_remove: g(&c.network_remove),
            connect: g(&c.connect),
            disconnect: g(&c.disconnect),
            container_changes: g(&c.container_changes),
            mac_checks: g(&c.mac_checks),
            mac_sets: g(&c.mac_sets),
        }
    }

    pub async fn version(&self) -> Result<EngineVersion, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        match c.version().await {
            Ok(v) => Ok(EngineVersion {
                version: v.version.unwrap_or_default(),
                api_version: v.api_version.unwrap_or_default(),
            }),
            Err(e) => Err(self.fail("version", e).await),
        }
    }

    async fn inspect_network(
        &self,
        c: &bollard::Docker,
        id: &str,
    ) -> Result<Option<NetworkInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        match c.inspect_network(id, None).await {
            Ok(n) => Ok(Some(network_info(n))),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(&format!("inspect network {id}"), e).await),
        }
    }

    /// Every network whose name or id is `name` (the engine's `name` filter is a substring
    /// match, so results are filtered exactly here).
    async fn networks_named(
        &self,
        c: &bollard::Docker,
        name: &str,
    ) -> Result<Vec<NetworkInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let list = c
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await;
        let list = match list {
            Ok(l) => l,
            Err(e) => return Err(self.fail("list networks", e).await),
        };
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .map(|n| {
                network_info(NetworkInspect {
                    name: n.name,
                    id: n.id,
                    driver: n.driver,
                    ipam: n.ipam,
                    options: n.options,
                    labels: n.labels,
                    ..Default::default()
                })
            })
            .collect())
    }

    async fn inspect_container(
        &self,
        c: &bollard::Docker,
        name: &str,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        match c.inspect_container(name, None).await {
            Ok(r) => Ok(Some(container_info(r))),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(&format!("inspect container {name}"), e).await),
        }
    }

    /// One container, with its namespace links when running.
    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let c = self.client().await?;
        let Some(mut info) = self.inspect_container(&c, name).await? else {
            return Ok(None);
        };
        self.read_links(&mut info).await;
        Ok(Some(info))
    }

    /// Reads a running container's links through its namespace (one MAC check);
    /// a failure is kept in `ns_error`.
    pub async fn read_links(&self, info: &mut ContainerInfo) {
        let Some(pid) = info.pid else { return };
        self.count_mac_check();
        info.ns_error = None;
        match tokio::task::spawn_blocking(move || netns::read_links(pid)).await {
            Ok(Ok(links)) => info.ns_links = links,
            Ok(Err(e)) => info.ns_error = Some(e.to_string()),
            Err(e) => info.ns_error = Some(format!("namespace reader: {e}")),
        }
    }

    /// Reads the links of the named containers of `observed` (see [`Docker::read_links`]).
    pub async fn read_links_of(&self, observed: &mut Observed, names: &BTreeSet<String>) {
        let wanted = observed
            .containers
            .values_mut()
            .filter(|c| names.contains(&c.name));
        futures::stream::iter(wanted)
            .for_each_concurrent(OBSERVE_PARALLELISM, |c| self.read_links(c))
            .await;
    }

    /// All macvlan networks and the named containers, without reading inside them.
    pub async fn observe_engine(&self, containers: &[String]) -> Result<Observed, EngineError> {
        let c = self.client().await?;
        let found: Vec<Option<ContainerInfo>> = futures::stream::iter(containers.iter())
            .map(|name| self.inspect_container(&c, name))
            .buffered(OBSERVE_PARALLELISM)
            .try_collect()
            .await?;
        Ok(Observed {
            networks: self.macvlan_networks(&c).await?,
            containers: found
                .into_iter()
                .flatten()
                .map(|c| (c.name.clone(), c))
                .collect(),
        })
    }

    /// All macvlan networks and the named containers (absent ones are left out).
    pub async fn observe(&self, containers: &[String]) -> Result<Observed, EngineError> {
        self.observe_reusing(containers, &BTreeMap::new()).await
    }

    /// Like [`Docker::observe`], but a container listed in `known` is taken from there
    /// instead of being read again (the verification pass after a run already holds
    /// what each container's MAC check read after its connect).
    pub async fn observe_reusing(
        &self,
        containers: &[String],
        known: &BTreeMap<String, ContainerInfo>,
    ) -> Result<Observed, EngineError> {
        let c = self.client().await?;
        let networks = self.macvlan_networks(&c).await?;
        let found: Vec<Option<ContainerInfo>> = futures::stream::iter(containers.iter())
            .map(|name| async move {
                match known.get(name) {
                    Some(info) => Ok(Some(info.clone())),
                    None => self.container(name).await,
                }
            })
            .buffered(OBSERVE_PARALLELISM)
            .try_collect()
            .await?;
        Ok(Observed {
            networks,
            containers: found
                .into_iter()
                .flatten()
                .map(|c| (c.name.clone(), c))
                .collect(),
        })
    }

    async fn macvlan_networks(&self, c: &bollard::Docker) -> Result<Vec<NetworkInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        let filters = HashMap::from([("driver".to_string(), vec!["macvlan".to_string()])]);
        let list = match c
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
        {
            Ok(l) => l,
            Err(e) => return Err(self.fail("list networks", e).await),
        };
        let mut networks = Vec::new();
        // The list omits attached containers on 20.10; inspect has them.
        for n in list {
            let Some(id) = n.id else { continue };
            if let Some(info) = self.inspect_network(c, &id).await? {
                networks.push(info);
            }
        }
        Ok(networks)
    }

    /// Every network (any driver), without attached containers.
    pub async fn list_networks(&self) -> Result<Vec<NetworkInfo>, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        match c.list_networks(None::<ListNetworksOptions>).await {
            Ok(list) => Ok(list
                .into_iter()
                .map(|n| {
                    network_info(NetworkInspect {
                        name: n.name,
                        id: n.id,
                        driver: n.driver,
                        ipam: n.ipam,
                        options: n.options,
                        labels: n.labels,
                        ..Default::default()
                    })
                })
                .collect()),
            Err(e) => Err(self.fail("list networks", e).await),
        }
    }

    /// Creates the macvlan network; an existing one of that name on that parent is
    /// returned instead (20.10 would otherwise accept a duplicate name).
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<String, EngineError> {
        let c = self.client().await?;
        if let Some(n) = self
            .networks_named(&c, &spec.name)
            .await?
            .into_iter()
            .find(|n| n.driver == "macvlan" && n.parent.as_deref() == Some(spec.parent.as_str()))
        {
            return Ok(n.id);
        }
        let config = spec
            .pools
            .iter()
            .map(|p| {
                // IPAM refuses an auxiliary address outside its pool's subnet.
                let aux: HashMap<String, String> = spec
                    .aux
                    .iter()
                    .filter(|(_, a)| p.subnet.contains(*a))
                    .map(|(k, a)| (k.clone(), a.to_string()))
                    .collect();
                IpamConfig {
                    subnet: Some(p.subnet.to_string()),
                    gateway: p.gateway.map(|g| g.to_string()),
                    auxiliary_addresses: (!aux.is_empty()).then_some(aux),
                    ip_range: None,
                }
            })
            .collect();
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("macvlan".to_string()),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(config),
                options: None,
            }),
            options: Some(HashMap::from([
                ("parent".to_string(), spec.parent.clone()),
                ("macvlan_mode".to_string(), "bridge".to_string()),
            ])),
            labels: Some(spec.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        bump(&self.inner.counters.network_create);
        match c.create_network(req).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self.fail(&format!("create network {}", spec.name), e).await),
        }
    }

    /// An internal bridge network (a runtime's `NAME_internal`) on `subnet`;
    /// existing = its id.
    pub async fn create_internal_network(
        &self,
        name: &str,
        subnet: Ipv4Network,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, EngineError> {
        let c = self.client().await?;
        if let Some(n) = self
            .networks_named(&c, name)
            .await?
            .into_iter()
            .find(|n| n.driver == "bridge")
        {
            return Ok(n.id);
        }
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            internal: Some(true),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(crate::internal_pool::gateway(subnet).to_string()),
                    auxiliary_addresses: None,
                    ip_range: None,
                }]),
                options: None,
            }),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        bump(&self.inner.counters.network_create);
        match c.create_network(req).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self.fail(&format!("create network {name}"), e).await),
        }
    }

    /// Removes a network; one that is already gone is success.
    pub async fn remove_network(&self, name_or_id: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.network_remove);
        match c.remove_network(name_or_id).await {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("remove network {name_or_id}"), e).await),
        }
    }

    /// The container's endpoint on a network, by network name or id.
    async fn endpoint(
        &self,
        c: &bollard::Docker,
        container: &str,
        network: &str,
    ) -> Result<Option<Endpoint>, EngineError> {
        let Some(info) = self.inspect_container(c, container).await? else {
            return Err(EngineError::NotFound(format!("container {container}")));
        };
        Ok(info
            .endpoints
            .into_iter()
            .find(|e| e.network_name == network || e.network_id == network))
    }

    /// Connects a container. Already connected with the same address is success; this
    /// is decided by looking at the container, not at the engine's error text.
    pub async fn connect(
        &self,
        container: &str,
        network: &str,
        ipv4: Option<Ipv4Addr>,
        mac: Option<&str>,
    ) -> Result<(), EngineError> {
        let c = self.client().await?;
        let req = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(EndpointSettings {
                ipam_config: ipv4.map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                // Ignored by 20.10 (API 1.41); newer engines may honour it. The MAC is
                // verified inside the container either way.
                mac_address: mac.filter(|m| !m.is_empty()).map(str::to_string),
                ..Default::default()
            }),
        };
        bump(&self.inner.counters.connect);
        let err = match c.connect_network(network, req).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                self.fail(&format!("connect {container} to {network}"), e)
                    .await
            }
        };
        if err.is_unreachable() {
            return Err(err);
        }
        match self.endpoint(&c, container, network).await {
            Ok(Some(ep)) if ipv4.is_none() || ep.ipv4 == ipv4 => Ok(()),
            _ => Err(err),
        }
    }

    /// Disconnects a container; not connected (or network gone) is success.
    pub async fn disconnect(&self, container: &str, network: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.disconnect);
        let req = NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(true),
        };
        let err = match c.disconnect_network(network, req).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                self.fail(&format!("disconnect {container} from {network}"), e)
                    .await
            }
        };
        match err {
            EngineError::Unreachable { .. } => Err(err),
            _ => match self.endpoint(&c, container, network).await {
                Ok(None) => Ok(()),
                _ => Err(err),
            },
        }
    }

    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let c = self.client().await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            host_config: Some(HostConfig {
                network_mode: spec.network.clone(),
                cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        bump(&self.inner.counters.container_changes);
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: String::new(),
        };
        match c.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self
                .fail(&format!("create container {}", spec.name), e)
                .await),
        }
    }

    /// Starts a container; already running is success.
    pub async fn start_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        match c.start_container(name, None).await {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("start container {name}"), e).await),
        }
    }

    /// Stops a container; already stopped is success.
    pub async fn stop_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        match c
            .stop_container(
                name,
                Some(StopContainerOptions {
                    signal: None,
                    t: Some(10),
                }),
            )
            .await
        {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("stop container {name}"), e).await),
        }
    }

    pub async fn restart_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        match c
            .restart_container(
                name,
                Some(RestartContainerOptions {
                    signal: None,
                    t: Some(10),
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(&format!("restart container {name}"), e).await),
        }
    }

    /// Removes a container (forced); already gone is success.
    pub async fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        let opts = RemoveContainerOptions {
            v: false,
            force: true,
            link: false,
        };
        match c.remove_container(name, Some(opts)).await {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("remove container {name}"), e).await),
        }
    }

    /// Names of the containers carrying the managed label, running or not.
    pub async fn list_managed_containers(&self) -> Result<Vec<String>, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", super::MANAGED_LABEL)],
        )]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        match c.list_containers(Some(opts)).await {
            Ok(list) => {
                let mut names: Vec<String> = list
                    .into_iter()
                    .filter_map(|s| s.names?.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .collect();
                names.sort();
                Ok(names)
            }
            Err(e) => Err(self.fail("list containers", e).await),
        }
    }

    /// The engine's container start/destroy and network destroy events. Subscribe
    /// first, then list: nothing that happens in between is missed. The request is
    /// sent on the stream's first poll (bollard exposes no "subscribed" signal), so poll
    /// it once, e.g. under a short timeout, before listing.
    pub fn events(&self) -> impl Stream<Item = Result<EngineEvent, EngineError>> + Send + 'static {
        let this = self.clone();
        futures::stream::once(async move {
            let filters = HashMap::from([
                (
                    "type".to_string(),
                    vec!["container".to_string(), "network".to_string()],
                ),
                (
                    "event".to_string(),
                    vec!["start".to_string(), "destroy".to_string()],
                ),
            ]);
            let opts = EventsOptions {
                filters: Some(filters),
                ..Default::default()
            };
            match this.client().await {
                Ok(c) => {
                    let socket = this.inner.socket.clone();
                    let that = this.clone();
                    c.events(Some(opts))
                        .then(move |r| {
                            let socket = socket.clone();
                            let that = that.clone();
                            async move {
                                match r {
                                    Ok(m) => Ok(event_of(m)),
                                    Err(e) => {
                                        let err = classify(&socket, "engine events", e);
                                        if err.is_unreachable() {
                                            *that.inner.client.lock().await = None;
                                        }
                                        Err(err)
                                    }
                                }
                            }
                        })
                        .boxed()
                }
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
    }
}

fn event_of(m: bollard::models::EventMessage) -> EngineEvent {
    let action = m.action.unwrap_or_default();
    let actor = m.actor.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let name = attrs.get("name").cloned().unwrap_or_default();
    match (m.typ, action.as_str()) {
        (Some(EventMessageTypeEnum::CONTAINER), "start") => EngineEvent::ContainerStarted { name },
        (Some(EventMessageTypeEnum::CONTAINER), "destroy") => EngineEvent::ContainerGone { name },
        (Some(EventMessageTypeEnum::NETWORK), "destroy") => EngineEvent::NetworkGone {
            name,
            id: actor.id.unwrap_or_default(),
        },
        _ => EngineEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_urls() {
        assert_eq!(
            socket_path("unix:///run/docker.sock").unwrap(),
            "/run/docker.sock"
        );
        assert_eq!(socket_path("/run/x.sock").unwrap(), "/run/x.sock");
        assert!(matches!(
            socket_path("tcp://1.2.3.4:2375"),
            Err(EngineError::BadHost(_))
        ));
    }

    #[test]
    fn status_codes_map_to_meaning() {
        let e = |status_code| BError::DockerResponseServerError {
            status_code,
            message: "m".into(),
        };
        assert!(matches!(
            classify("s", "w", e(404)),
            EngineError::NotFound(_)
        ));
        assert!(matches!(
            classify("s", "w", e(409)),
            EngineError::Conflict(_)
        ));
        assert!(matches!(
            classify("s", "w", e(500)),
            EngineError::Api { status: 500, .. }
        ));
        assert!(classify("s", "w", BError::SocketNotFoundError("s".into())).is_unreachable());
    }
}
