//! `agent run`: one task owns the state (vNIC store, interface cache, links, the
//! last report); netmon, the engine watch, the control socket and the reconcile
//! runs talk to it over bounded channels.
//!
//! A reconcile run is a future the state task polls next to its channels, so
//! status, health and list are answered while it works: the store is lent to the
//! run and comes back with its report.
//! Commands that write the store wait for it to come back (seconds at most);
//! commands that need the engine while it is unreachable fail at once with the
//! reason instead of stalling.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use ipc::{ClientEvent, EventKind, Reply};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::InterfaceCache;
use crate::control::{self, Access, Call};
use crate::engine::{Docker, EngineError, EngineEvent, EngineVersion};
use crate::netmon_link;
use crate::reconcile::{ReconcileOptions, ReconcileReport, reconcile};
use crate::runtime::CreateRequest;
use crate::status::{self, StatusView};
use crate::vnics::{Runtimes, VnicStore};

mod commands;
mod engine_watch;
mod runs;

use engine_watch::engine_watch;
use runs::Runs;

/// Everything `agent run` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub netmon_socket: PathBuf,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub control_group: Option<String>,
    /// `None`: `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    pub reconcile_interval: Duration,
    pub parallelism: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Messages to the state task.
enum Msg {
    Netmon(ClientEvent),
    EngineUp(EngineVersion),
    EngineDown(String),
    Engine(EngineEvent),
    /// A reconcile whose report goes to a waiting request.
    Reconcile(Waiter),
    /// The engine part of `runtime_create` finished.
    Created {
        req: CreateRequest,
        result: Result<(), String>,
        waiter: Waiter,
    },
}

/// Work that needs the store while a run has it.
enum Deferred {
    Call(Call),
    /// Drop the records of a runtime whose creation failed in the engine, so the
    /// same command can be retried; then tell the waiter why it failed.
    Forget {
        name: String,
        waiter: Waiter,
        error: String,
    },
}

/// What a reconcile run hands back: the store it borrowed and its report.
struct RunOutcome {
    store: VnicStore,
    dry_run: bool,
    result: Result<ReconcileReport, String>,
}

/// A reconcile run, polled by the state task itself: the engine adapter's futures
/// need not be `Send`, and the run still never blocks message handling.
type RunFuture = Pin<Box<dyn Future<Output = RunOutcome>>>;

/// A control request waiting for a reply after something else finished.
struct Waiter {
    id: Option<Value>,
    tx: oneshot::Sender<Reply>,
    /// Fields to add to the reply next to the report.
    extra: Vec<(String, Value)>,
}

impl Waiter {
    fn new(id: Option<Value>, tx: oneshot::Sender<Reply>) -> Self {
        Self {
            id,
            tx,
            extra: Vec::new(),
        }
    }

    fn answer(self, mut reply: Reply) {
        for (k, v) in self.extra {
            reply.extra.insert(k, v);
        }
        let _ = self.tx.send(reply);
    }

    fn fail(self, msg: impl Into<String>) {
        let id = self.id.clone();
        self.answer(Reply::err(id, msg));
    }
}

struct State {
    config: Config,
    docker: Docker,
    docker_host: String,
    /// `None` while lent to a reconcile run.
    store: Option<VnicStore>,
    /// What the store held when last seen, for status while it is lent out.
    runtimes_view: Runtimes,
    fault_view: Option<Value>,
    store_path: String,
    cache: InterfaceCache,
    view: StatusView,
    runs: Runs<Waiter>,
    /// Store-writing requests that arrived while the store was lent out.
    deferred: VecDeque<Deferred>,
    started: Instant,
    tx: mpsc::Sender<Msg>,
    /// A run `start_run` prepared, for the loop to pick up.
    launch: Option<RunFuture>,
}

/// How long shutdown waits for a reconcile in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the agent until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| DaemonError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let access = Access::new(config.control_group.as_deref())?;
    let listener = control::bind(&config.control_socket, &access).await?;
    let docker = Docker::new(config.docker_host.as_deref())?;
    let docker_host = config
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());

    let store = VnicStore::open(&config.state_dir);
    if let Some(f) = store.fault() {
        error!(fault = ?f, "the vNIC store is faulted: writes are refused until an operator acts");
    }
    let (tx, mut rx) = mpsc::channel::<Msg>(256);
    let (call_tx, mut call_rx) = mpsc::channel::<Call>(64);
    let tasks = shutdown.child_token();

    tokio::spawn(control::serve(
        listener,
        config.control_socket.clone(),
        access,
        call_tx,
        tasks.clone(),
    ));
    netmon_link::spawn(
        config.netmon_socket.clone(),
        tx.clone(),
        Msg::Netmon,
        tasks.clone(),
    );
    tokio::spawn(engine_watch(docker.clone(), tx.clone(), tasks.clone()));

    let mut state = State {
        view: StatusView::default(),
        docker,
        docker_host,
        runtimes_view: store.runtimes().clone(),
        fault_view: store.fault().and_then(|f| serde_json::to_value(f).ok()),
        store_path: store.path().display().to_string(),
        store: Some(store),
        cache: InterfaceCache::default(),
        runs: Runs::default(),
        deferred: VecDeque::new(),
        started: Instant::now(),
        tx,
        launch: None,
        config,
    };
    state.init_view();
    ipc::systemd::notify_ready("serving the control socket");
    ipc::systemd::spawn_watchdog(tasks.clone());
    info!(
        control = %state.config.control_socket.display(),
        netmon = %state.config.netmon_socket.display(),
        engine = %state.docker_host,
        "agent running"
    );

    let mut timer = tokio::time::interval(state.config.reconcile_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    let mut running: Option<RunFuture> = None;

    loop {
        if running.is_none() {
            running = state.launch.take();
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            out = async { match running.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                running = None;
                state.run_done(out);
            }
            Some(msg) = rx.recv() => state.on_msg(msg),
            Some(call) = call_rx.recv() => state.on_call(call),
            _ = timer.tick() => {
                debug!("periodic reconcile");
                state.trigger(None);
            }
        }
    }
    ipc::systemd::notify_stopping();
    // A run cut short leaves containers half moved until the next start; give the
    // one in progress a moment to finish and record what it did.
    if let Some(run) = running.take() {
        info!("waiting for the reconcile in progress");
        match tokio::time::timeout(SHUTDOWN_GRACE, run).await {
            Ok(out) => state.run_done(out),
            Err(_) => warn!(grace = ?SHUTDOWN_GRACE, "reconcile still running; stopping anyway"),
        }
    }
    tasks.cancel();
    // Let the control server remove its socket file.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if state.config.control_socket.exists() {
        let _ = std::fs::remove_file(&state.config.control_socket);
    }
    info!("agent stopped");
    Ok(())
}

impl State {
    fn init_view(&mut self) {
        let v = &mut self.view;
        v.agent.version = env!("CARGO_PKG_VERSION").into();
        v.agent.pid = std::process::id();
        v.agent.state_dir = self.config.state_dir.display().to_string();
        v.agent.control_socket = self.config.control_socket.display().to_string();
        v.netmon.socket = self.config.netmon_socket.display().to_string();
        v.engine.host = self.docker_host.clone();
        v.store.path = self.store_path.clone();
    }

    fn status(&self) -> StatusView {
        let mut v = self.view.clone();
        v.agent.uptime_s = self.started.elapsed().as_secs();
        v.interfaces = status::interfaces(&self.cache);
        v.runtimes = status::runtimes(&self.runtimes_view);
        v.store.fault = self.fault_view.clone();
        v.reconcile.running = self.runs.running.is_some();
        v.reconcile.runs = self.runs.count;
        v.notes = v
            .reconcile
            .last
            .as_ref()
            .and_then(|r| r.get("notes"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        v
    }

    fn refresh_store_view(&mut self) {
        if let Some(s) = &self.store {
            self.runtimes_view = s.runtimes().clone();
            self.fault_view = s.fault().and_then(|f| serde_json::to_value(f).ok());
        }
    }

    fn uses_parent(&self, name: &str) -> bool {
        self.runtimes_view
            .values()
            .flatten()
            .any(|v| v.parent_interface == name)
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Netmon(ClientEvent::Connected) => {
                info!("connected to netmon");
                self.view.netmon.connected = true;
                self.view.netmon.last_error = None;
            }
            Msg::Netmon(ClientEvent::Disconnected { reason }) => {
                warn!(%reason, "lost netmon; the client reconnects");
                self.view.netmon.connected = false;
                self.view.netmon.last_error = Some(reason);
            }
            Msg::Netmon(ClientEvent::Event(ev)) => {
                self.view.netmon.events += 1;
                if ev.instance.is_some() {
                    self.view.netmon.instance = ev.instance.clone();
                }
                let changed = self.cache.apply(&ev);
                match &ev.kind {
                    EventKind::NetworkDiscovery(d) => {
                        self.view.netmon.discoveries += 1;
                        info!(interfaces = d.interfaces.len(), "netmon discovery");
                        self.trigger(None);
                    }
                    EventKind::NetworkChange(_) => {
                        let relevant: Vec<&String> =
                            changed.iter().filter(|n| self.uses_parent(n)).collect();
                        if !relevant.is_empty() {
                            info!(parents = ?relevant, "a vNIC parent changed");
                            self.trigger(None);
                        }
                    }
                    EventKind::Other(..) => {}
                }
            }
            Msg::EngineUp(v) => {
                info!(version = %v.version, api = %v.api_version, "engine reachable");
                self.view.engine.reachable = true;
                self.view.engine.version = Some(v.version);
                self.view.engine.api_version = Some(v.api_version);
                self.view.engine.last_error = None;
                self.view.engine.connects += 1;
                // A (re)connected engine may have lost or changed anything.
                self.trigger(None);
            }
            Msg::EngineDown(reason) => {
                if self.view.engine.reachable || self.view.engine.last_error.is_none() {
                    warn!(%reason, "engine unreachable; retrying");
                }
                self.view.engine.reachable = false;
                self.view.engine.last_error = Some(reason);
            }
            Msg::Engine(EngineEvent::ContainerStarted { name }) => {
                if self.runtimes_view.contains_key(&name) {
                    info!(container = %name, "runtime started; verifying its vNICs");
                    self.trigger(None);
                }
            }
            Msg::Engine(EngineEvent::NetworkGone { name, id }) => {
                // Only a network some vNIC sits on matters; reacting to every network
                // removed on the host would make other users' churn cost us runs.
                let ours = self
                    .runtimes_view
                    .values()
                    .flatten()
                    .any(|v| v.docker_network_name.as_deref() == Some(name.as_str()));
                if ours {
                    info!(network = %name, %id, "a network carrying vNICs disappeared");
                    self.trigger(None);
                } else {
                    debug!(network = %name, %id, "a network that carries no vNIC disappeared");
                }
            }
            Msg::Engine(EngineEvent::ContainerGone { name }) => {
                debug!(container = %name, "container gone");
            }
            Msg::Engine(EngineEvent::Other) => {}
            Msg::Reconcile(w) => self.trigger(Some(w)),
            Msg::Created {
                req,
                result,
                mut waiter,
            } => match result {
                Ok(()) => {
                    waiter
                        .extra
                        .push(("runtime".into(), Value::from(req.name.clone())));
                    self.trigger(Some(waiter));
                }
                Err(e) => {
                    self.deferred.push_back(Deferred::Forget {
                        error: format!("runtime {}: {e}", req.name),
                        name: req.name,
                        waiter,
                    });
                    self.drain_deferred();
                }
            },
        }
    }

    /// Asks for a reconcile; `waiter` gets the report of a run that starts after now.
    fn trigger(&mut self, waiter: Option<Waiter>) {
        if self.runs.request(waiter) {
            self.start_run(false);
        }
    }

    fn start_run(&mut self, dry_run: bool) {
        if !self.view.engine.reachable {
            // Answered now rather than stalled; the engine watch reconciles on return.
            let why = format!(
                "the container engine is {}; the agent reconciles as soon as it is back",
                self.engine_unreachable()
            );
            for w in self.runs.not_started(dry_run) {
                w.fail(why.clone());
            }
            return;
        }
        let Some(store) = self.store.take() else {
            // Only a run borrows the store, and runs do not overlap.
            for w in self.runs.not_started(dry_run) {
                w.fail("internal: the store is busy");
            }
            return;
        };
        self.runs.started(dry_run);
        let docker = self.docker.clone();
        let cache = self.cache.clone();
        let opts = ReconcileOptions {
            dry_run,
            parallelism: self.config.parallelism,
        };
        self.launch = Some(Box::pin(async move {
            let mut store = store;
            let result = reconcile(&docker, &mut store, &cache, &opts)
                .await
                .map_err(|e| e.to_string());
            RunOutcome {
                store,
                dry_run,
                result,
            }
        }));
    }

    fn run_done(&mut self, out: RunOutcome) {
        let RunOutcome {
            store,
            dry_run,
            result,
        } = out;
        self.store = Some(store);
        self.refresh_store_view();
        let waiters = self.runs.finished();
        match result {
            Ok(report) => {
                let failed = report.failed();
                let value = serde_json::to_value(&report).unwrap_or(Value::Null);
                if failed {
                    warn!(
                        steps = report.steps.len(),
                        "reconcile finished with failed steps"
                    );
                } else {
                    info!(
                        steps = report.steps.len(),
                        duration_ms = report.duration_ms,
                        dry_run,
                        "reconcile done"
                    );
                }
                if !dry_run {
                    if !report.steps.is_empty() {
                        self.view.reconcile.last_change = Some(value.clone());
                    }
                    self.view.reconcile.last = Some(value.clone());
                    self.view.reconcile.last_error = None;
                }
                for w in waiters {
                    let id = w.id.clone();
                    w.answer(
                        Reply::ok(id)
                            .with("failed", failed)
                            .with("report", value.clone()),
                    );
                }
            }
            Err(e) => {
                warn!(error = %e, "reconcile could not run");
                if !dry_run {
                    self.view.reconcile.last_error = Some(e.clone());
                }
                for w in waiters {
                    w.fail(format!("reconcile: {e}"));
                }
            }
        }
        self.drain_deferred();
        if let Some(dry) = self.runs.next_run() {
            self.start_run(dry);
        }
    }

    fn drain_deferred(&mut self) {
        while self.store.is_some() {
            match self.deferred.pop_front() {
                None => return,
                Some(Deferred::Call(call)) => self.on_call(call),
                Some(Deferred::Forget {
                    name,
                    waiter,
                    error,
                }) => {
                    if let Some(store) = self.store.as_mut()
                        && let Err(e) = store.update(|r| r.remove(&name))
                    {
                        warn!(runtime = %name, error = %e, "could not forget a failed runtime");
                    }
                    self.refresh_store_view();
                    waiter.fail(error);
                }
            }
        }
    }

    fn needs_engine(&self, id: &Option<Value>, what: &str) -> Option<Reply> {
        if self.view.engine.reachable {
            return None;
        }
        Some(Reply::err(
            id.clone(),
            format!(
                "{what} needs the container engine, which is {}",
                self.engine_unreachable()
            ),
        ))
    }

    /// "unreachable at <host>: <last error>", for replies that cannot be served.
    fn engine_unreachable(&self) -> String {
        format!(
            "unreachable at {}: {}",
            self.docker_host,
            self.view
                .engine
                .last_error
                .as_deref()
                .unwrap_or("not connected yet")
        )
    }
}
