//! A recording, in-memory [`Engine`] for unit tests of reconcile, the executor, the
//! runtime commands and the daemon: it holds networks and containers (with their links
//! "inside"), records every call in order, and can be told to fail a given call.
//! It behaves like Engine 20.10 where that matters to the agent: a requested MAC on
//! connect is ignored (the endpoint gets an engine MAC), a network with endpoints
//! cannot be removed, removing what is gone and disconnecting what is not connected
//! succeed. Always passed in explicitly; nothing switches to it by itself.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use futures::FutureExt;
use ipc::MacAddr;

use super::{CallCounts, ContainerInfo, EngineError, EngineEvent, EngineFuture, NetworkInfo};

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
    /// The cloud's reads: container details, stats, image pull and check.
    Details,
    Stats,
    Image,
    /// `name_inside` or `delete_inside`.
    Rename,
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
                    Version
                        | Observe
                        | ReadLinks
                        | Container
                        | ListNetworks
                        | ListManaged
                        | Events
                        | Details
                        | Stats
                        | Image
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

mod seam;
mod state;

#[cfg(test)]
mod tests;
