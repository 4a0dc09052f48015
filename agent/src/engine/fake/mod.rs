//! A recording, in-memory [`Engine`] for unit tests of reconcile, the executor, the
//! runtime commands and the daemon: it holds networks and containers (with their links
//! "inside"), records every call in order, and can be told to fail a given call.
//! It behaves like Engine 20.10 where that matters to the agent: a requested MAC on
//! connect is ignored (the endpoint gets an engine MAC), a network with endpoints
//! cannot be removed, removing what is gone and disconnecting what is not connected
//! succeed. Always passed in explicitly; nothing switches to it by itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use futures::FutureExt;
use ipc::MacAddr;

use super::{
    CallCounts, ContainerInfo, ContainerSpec, Endpoint, EngineError, EngineEvent, EngineFuture,
    NetworkInfo, NsLink, Observed, Pool,
};

/// The calls, as recorded and as targets of [`FakeEngine::fail_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Call {
    Version,
    Observe,
    ReadLinks,
    Container,
    ListNetworks,
    ListManaged,
    CreateNetwork,
    CreateInternalNetwork,
    RemoveNetwork,
    Connect,
    Disconnect,
    CreateContainer,
    StartContainer,
    StopContainer,
    RestartContainer,
    RemoveContainer,
    Events,
    SetMac,
}

/// One recorded call: what, and on what (`"c1 net1"` for a connect: container then
/// network; the name for the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub call: Call,
    pub target: String,
}

struct Failure {
    call: Call,
    /// Fails only a call whose target starts with this (`None`: any).
    target: Option<String>,
    error: EngineError,
}

#[derive(Default)]
struct State {
    networks: BTreeMap<String, NetworkInfo>,
    containers: BTreeMap<String, ContainerInfo>,
    calls: Vec<Recorded>,
    failures: Vec<Failure>,
    counts: CallCounts,
    unreachable: bool,
    pauses: Vec<(Call, String, tokio::sync::oneshot::Receiver<()>)>,
    next_id: u32,
    events: Vec<tokio::sync::mpsc::UnboundedSender<Result<EngineEvent, EngineError>>>,
}

#[derive(Default)]
pub struct FakeEngine {
    state: Mutex<State>,
}

const FAKE_HOST: &str = "fake://engine";

impl FakeEngine {
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent data behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next call of `call` fails with `error` (once).
    pub fn fail_next(&self, call: Call, error: EngineError) {
        self.lock().failures.push(Failure {
            call,
            target: None,
            error,
        });
    }

    /// The next call of `call` whose target starts with `target` fails with `error`.
    pub fn fail_next_on(&self, call: Call, target: &str, error: EngineError) {
        self.lock().failures.push(Failure {
            call,
            target: Some(target.to_string()),
            error,
        });
    }

    /// While set, every call fails as an engine that is down does.
    pub fn set_unreachable(&self, down: bool) {
        self.lock().unreachable = down;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.lock().calls.clone()
    }

    /// The calls so far that change something (not reads, observes, MAC checks).
    pub fn changes(&self) -> Vec<Recorded> {
        use Call::*;
        self.calls()
            .into_iter()
            .filter(|r| {
                !matches!(
                    r.call,
                    Version | Observe | ReadLinks | Container | ListNetworks | ListManaged | Events
                )
            })
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Adds a network as if made by hand or by an earlier run; returns its id.
    pub fn add_network(&self, mut n: NetworkInfo) -> String {
        let mut s = self.lock();
        if n.id.is_empty() {
            n.id = s.new_id("net");
        }
        let id = n.id.clone();
        s.networks.insert(n.name.clone(), n);
        id
    }

    /// Adds a container (running or not) with no endpoints; returns its pid when running.
    pub fn add_container(
        &self,
        name: &str,
        running: bool,
        labels: BTreeMap<String, String>,
    ) -> Option<u32> {
        let mut s = self.lock();
        let id = s.new_id("ctr");
        s.containers.insert(
            name.to_string(),
            ContainerInfo {
                id,
                name: name.to_string(),
                running: false,
                pid: None,
                endpoints: Vec::new(),
                ns_links: Vec::new(),
                labels,
                ns_error: None,
            },
        );
        if running { s.start(name).ok() } else { None }
    }

    /// A network as the fake holds it.
    pub fn network(&self, name: &str) -> Option<NetworkInfo> {
        self.lock().networks.get(name).cloned()
    }

    /// A container as the fake holds it (with its links), without recording a call.
    pub fn peek(&self, name: &str) -> Option<ContainerInfo> {
        self.lock().containers.get(name).cloned()
    }

    /// Sets a MAC "inside" a container by hand (as someone with `ip link` would).
    pub fn set_inside_mac(&self, container: &str, ifname: &str, mac: MacAddr) {
        let mut s = self.lock();
        if let Some(l) = s
            .containers
            .get_mut(container)
            .and_then(|c| c.ns_links.iter_mut().find(|l| l.name == ifname))
        {
            l.mac = Some(mac);
        }
    }

    /// Records the call, then fails it if told to.
    fn enter(&self, call: Call, target: &str) -> Result<MutexGuard<'_, State>, EngineError> {
        let mut s = self.lock();
        s.calls.push(Recorded {
            call,
            target: target.to_string(),
        });
        if s.unreachable {
            return Err(EngineError::Unreachable {
                host: FAKE_HOST.to_string(),
                reason: "the fake engine is down".to_string(),
            });
        }
        let hit = s.failures.iter().position(|f| {
            f.call == call
                && f.target
                    .as_ref()
                    .is_none_or(|t| target.starts_with(t.as_str()))
        });
        match hit {
            Some(i) => Err(s.failures.remove(i).error),
            None => Ok(s),
        }
    }

    /// The next call of `call` whose target starts with `target` waits (before it is
    /// recorded or acts) until the returned sender is used or dropped: to hold one
    /// call while others run.
    pub fn pause_next_on(&self, call: Call, target: &str) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().pauses.push((call, target.to_string(), rx));
        tx
    }

    fn take_pause(&self, call: Call, target: &str) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let mut s = self.lock();
        let i = s
            .pauses
            .iter()
            .position(|(c, t, _)| *c == call && target.starts_with(t.as_str()))?;
        Some(s.pauses.remove(i).2)
    }

    fn call<'a, T: Send + 'a>(
        &'a self,
        call: Call,
        target: &str,
        f: impl FnOnce(&mut State) -> Result<T, EngineError> + Send + 'a,
    ) -> EngineFuture<'a, T> {
        let gate = self.take_pause(call, target);
        let target = target.to_string();
        async move {
            if let Some(rx) = gate {
                let _ = rx.await;
            }
            let mut s = self.enter(call, &target)?;
            f(&mut s)
        }
        .boxed()
    }
}

impl State {
    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:04}", self.next_id)
    }

    fn emit(&mut self, e: EngineEvent) {
        self.events.retain(|tx| tx.send(Ok(e.clone())).is_ok());
    }

    fn container(&mut self, name: &str) -> Result<&mut ContainerInfo, EngineError> {
        self.containers
            .get_mut(name)
            .ok_or_else(|| EngineError::NotFound(format!("container {name}")))
    }

    fn network_named(&self, name_or_id: &str) -> Option<&NetworkInfo> {
        self.networks
            .values()
            .find(|n| n.name == name_or_id || n.id == name_or_id)
    }

    fn start(&mut self, name: &str) -> Result<u32, EngineError> {
        let pid = 10_000 + self.next_id;
        self.next_id += 1;
        let c = self.container(name)?;
        if let (true, Some(p)) = (c.running, c.pid) {
            return Ok(p);
        }
        c.running = true;
        c.pid = Some(pid);
        c.ns_links = c
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| link_for(i, e))
            .collect();
        self.emit(EngineEvent::ContainerStarted {
            name: name.to_string(),
        });
        Ok(pid)
    }

    fn stop(&mut self, name: &str) -> Result<(), EngineError> {
        let c = self.container(name)?;
        c.running = false;
        c.pid = None;
        c.ns_links.clear();
        Ok(())
    }

    fn create(
        &mut self,
        name: &str,
        driver: &str,
        parent: Option<&str>,
        pools: Vec<Pool>,
        labels: &BTreeMap<String, String>,
    ) -> String {
        if let Some(n) = self.networks.get(name)
            && n.driver == driver
            && n.parent.as_deref() == parent
        {
            return n.id.clone();
        }
        let id = self.new_id("net");
        self.counts.network_create += 1;
        self.networks.insert(
            name.to_string(),
            NetworkInfo {
                id: id.clone(),
                name: name.to_string(),
                driver: driver.to_string(),
                parent: parent.map(str::to_string),
                pools,
                labels: labels.clone(),
                containers: Vec::new(),
            },
        );
        id
    }

    fn connect(
        &mut self,
        container: &str,
        network: &str,
        ipv4: Option<Ipv4Addr>,
    ) -> Result<(), EngineError> {
        let net = self
            .network_named(network)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("network {network}")))?;
        let c = self.container(container)?;
        if let Some(ep) = c.endpoints.iter().find(|e| e.network_id == net.id) {
            return match ipv4.is_none() || ep.ipv4 == ipv4 {
                true => Ok(()),
                false => Err(EngineError::Api {
                    status: 403,
                    message: format!("{container} is already connected to {network}"),
                }),
            };
        }
        let ip = ipv4.or_else(|| {
            net.pools
                .first()
                .and_then(|p| p.subnet.nth(100 + c.endpoints.len() as u32))
        });
        let ep = Endpoint {
            network_id: net.id.clone(),
            network_name: net.name.clone(),
            ipv4: ip,
            mac: Some(MacAddr::random_local()),
        };
        if c.running {
            let link = link_for(c.ns_links.len(), &ep);
            c.ns_links.push(link);
        }
        c.endpoints.push(ep);
        if let Some(n) = self.networks.get_mut(&net.name) {
            n.containers.push(container.to_string());
            n.containers.sort();
        }
        Ok(())
    }

    fn disconnect(&mut self, container: &str, network: &str) -> Result<(), EngineError> {
        let Some(net) = self.network_named(network).cloned() else {
            return Ok(());
        };
        let c = self.container(container)?;
        if let Some(i) = c.endpoints.iter().position(|e| e.network_id == net.id) {
            let ep = c.endpoints.remove(i);
            c.ns_links
                .retain(|l| ep.ipv4.is_none_or(|ip| !l.ipv4.contains(&ip)));
        }
        if let Some(n) = self.networks.get_mut(&net.name) {
            n.containers.retain(|x| x != container);
        }
        Ok(())
    }

    fn remove_network(&mut self, name_or_id: &str) -> Result<(), EngineError> {
        let Some(net) = self.network_named(name_or_id).cloned() else {
            return Ok(());
        };
        if !net.containers.is_empty() {
            return Err(EngineError::Api {
                status: 403,
                message: format!(
                    "error while removing network: network {} has active endpoints",
                    net.name
                ),
            });
        }
        self.networks.remove(&net.name);
        self.emit(EngineEvent::NetworkGone {
            name: net.name,
            id: net.id,
        });
        Ok(())
    }

    fn create_container(&mut self, spec: &ContainerSpec) -> Result<String, EngineError> {
        if self.containers.contains_key(&spec.name) {
            return Err(EngineError::Conflict(format!(
                "create container {}: the name is already in use",
                spec.name
            )));
        }
        let id = self.new_id("ctr");
        self.containers.insert(
            spec.name.clone(),
            ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                running: false,
                pid: None,
                endpoints: Vec::new(),
                ns_links: Vec::new(),
                labels: spec.labels.clone(),
                ns_error: None,
            },
        );
        if let Some(net) = &spec.network {
            self.connect(&spec.name, net, None)?;
        }
        Ok(id)
    }

    fn remove_container(&mut self, name: &str) {
        if self.containers.remove(name).is_none() {
            return;
        }
        for n in self.networks.values_mut() {
            n.containers.retain(|x| x != name);
        }
        self.emit(EngineEvent::ContainerGone {
            name: name.to_string(),
        });
    }

    fn observe(&self, containers: &[String], links: bool) -> Observed {
        Observed {
            networks: self
                .networks
                .values()
                .filter(|n| n.driver == "macvlan")
                .cloned()
                .collect(),
            containers: containers
                .iter()
                .filter_map(|n| self.containers.get(n))
                .map(|c| {
                    let mut c = c.clone();
                    if !links {
                        c.ns_links.clear();
                    }
                    (c.name.clone(), c)
                })
                .collect(),
        }
    }
}

/// The link a new endpoint gets inside a running container: `ethN` with the
/// endpoint's address and the engine's MAC.
fn link_for(i: usize, ep: &Endpoint) -> NsLink {
    NsLink {
        index: 2 + i as u32,
        name: format!("eth{i}"),
        mac: ep.mac,
        ipv4: ep.ipv4.into_iter().collect(),
        up: true,
    }
}

mod seam;
