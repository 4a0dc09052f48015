//! `agent run`: one task owns the state (vNIC store, interface cache, links, the
//! last report); netmon, the engine watch, the control socket and the reconcile
//! runs talk to it over bounded channels.
//!
//! A reconcile run is a task of its own: it takes copies of the desired state and the
//! cache, and sends back its report and the records to merge. The state task keeps the
//! store the whole time, so every command is answered while a run works.
//!
//! Over 400 lines: the state task's loop and its run bookkeeping (start, end, merge,
//! retry, states); commands and events are in their own files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::ClientEvent;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::InterfaceCache;
use crate::control::{self, Access, Call};
use crate::engine::{Docker, Engine, EngineError, EngineEvent, EngineVersion};
use crate::netmon_link;
use crate::reconcile::{Outcome, ReconcileOptions, ReconcileReport, reconcile};
use crate::status::StatusView;
use crate::vnic_state::{self, Facts, VnicState};
use crate::vnics::VnicStore;

mod cloud;
mod cloud_create;
mod commands;
mod dhcp;
mod dhcp_events;
mod echoes;
mod engine_stops;
mod engine_watch;
mod events;
mod removals;
mod running_file;
mod runs;

pub use cloud::CloudOptions;
use commands::{Responder, Waiter};
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
    /// `health` fails once a vNIC has been pending or failed this long.
    pub health_grace: Duration,
    /// Where the runtimes' internal networks get their subnets.
    pub internal_pool: ipnetwork::Ipv4Network,
    /// The cloud link; `None`: local only.
    pub cloud: Option<CloudOptions>,
    pub dhcp: DhcpConfig,
}

/// The DHCP client for DHCP-mode vNICs (see `dhcp.rs`).
#[derive(Clone, Debug)]
pub struct DhcpConfig {
    /// Off: DHCP vNICs take the engine's IPAM address (`--no-dhcp-client`).
    pub client: bool,
    pub release_when_stopped: bool,
    /// The cap between DISCOVER rounds while no server answers.
    pub retry_max: Duration,
}

/// Off, so library users and the fake-engine tests need no host namespace.
impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            client: false,
            release_when_stopped: false,
            retry_max: Duration::from_secs(120),
        }
    }
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
    /// A command that waited for the engine, back for another try.
    Retry(Call),
    /// A reconcile whose report goes to a waiter.
    Reconcile(Waiter),
    /// A reconcile run ended.
    RunDone {
        dry_run: bool,
        result: Result<Outcome, String>,
    },
    /// A DHCP client's update.
    Dhcp(crate::dhcp::DhcpEvent),
    /// The engine part of `runtime_create` finished.
    Created {
        name: String,
        result: Result<(), String>,
        reply: Responder,
    },
    /// A question of the cloud link's backend (daemon/cloud.rs).
    Cloud(cloud::CloudAsk),
    /// `runtime_stop` (or the cloud's `stop_device`) stopped this runtime.
    StoppedOnPurpose(String),
}

struct State {
    config: Config,
    docker: Arc<dyn Engine>,
    docker_host: String,
    store: VnicStore,
    cache: InterfaceCache,
    view: StatusView,
    runs: Runs<Waiter>,
    started: Instant,
    tx: mpsc::Sender<Msg>,
    /// Whether the engine answers, for commands waiting for it at start-up.
    engine_up: watch::Sender<bool>,
    /// The engine has answered, or failed, at least once (READY=1 waits for it).
    engine_known: bool,
    /// After a run that left something wrong: when to try again, and the backoff.
    retry_at: Option<tokio::time::Instant>,
    retry: ipc::Backoff,
    /// Each vNIC's state and since when it has been in it (by kind).
    states: BTreeMap<(String, String), (VnicState, Instant)>,
    /// The ifindex each vNIC parent had when last seen: a new one means the link was
    /// re-created and its runtimes need a reattach.
    parent_index: BTreeMap<String, u32>,
    /// The runtimes' container ids, as the last run found them.
    runtime_ids: std::collections::BTreeSet<String>,
    /// Disconnect events that may be echoes of our own runs' disconnects.
    echoes: echoes::Echoes,
    /// Parents to reattach on the next run, and those the run in progress reattaches.
    reattach: std::collections::BTreeSet<String>,
    reattaching: std::collections::BTreeSet<String>,
    /// The DHCP clients; `None` with `--no-dhcp-client`.
    dhcp: Option<dhcp::DhcpManager>,
    /// Runtimes the engine stopped when it went down (engine_stops.rs), and their
    /// file across agent restarts (running_file.rs).
    engine_stops: engine_stops::EngineStops,
    /// The internal pool and the subnets creates in flight hold in it.
    internal: crate::runtime::InternalPool,
    running_file: running_file::RunningFile,
    /// Deletes whose container is still being removed (removals.rs).
    removals: removals::Removals,
}

/// Retries after a run that did not converge: the first within a second, then
/// doubling up to this cap, until a run converges.
const RETRY_FIRST: Duration = Duration::from_millis(700);
const RETRY_CAP: Duration = crate::refusal::REFUSED_RETRY;

/// How long shutdown waits for a reconcile in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// READY=1 is sent once the engine has answered or failed; at the latest after this,
/// so an engine that hangs does not hold up boot.
const READY_LIMIT: Duration = Duration::from_secs(5);

/// Runs the agent until `shutdown`, on the engine at `config.docker_host`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let docker = Arc::new(Docker::new(config.docker_host.as_deref())?);
    run_with(config, docker, shutdown).await
}

/// Runs the agent on the given engine (the daemon's tests hand in a fake).
pub async fn run_with(
    config: Config,
    docker: Arc<dyn Engine>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| DaemonError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let access = Access::new(config.control_group.as_deref())?;
    let server = control::bind(&config.control_socket, config.control_group.as_deref())?;
    let docker_host = docker.host();

    let store = VnicStore::open(&config.state_dir);
    if let Some(f) = store.fault() {
        error!(fault = ?f, "the vNIC store is faulted: writes are refused until an operator acts");
    }
    let (tx, mut rx) = mpsc::channel::<Msg>(256);
    let (call_tx, mut call_rx) = mpsc::channel::<Call>(64);
    let tasks = shutdown.child_token();
    let control = tokio::spawn(control::serve(server, access, call_tx, tasks.clone()));
    netmon_link::spawn(
        config.netmon_socket.clone(),
        tx.clone(),
        Msg::Netmon,
        tasks.clone(),
    );
    tokio::spawn(engine_watch(docker.clone(), tx.clone(), tasks.clone()));

    let mut cloud_status = spawn_cloud(&config, &docker, &tx, &tasks);
    let mut state = State::new(config, docker, docker_host, store, tx);
    if state.config.dhcp.client {
        state.start_dhcp(&tasks);
    }
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
    let ready_by = tokio::time::sleep(READY_LIMIT);
    tokio::pin!(ready_by);
    let mut ready = false;
    loop {
        if !ready && state.engine_known {
            ready = true;
            ipc::systemd::notify_ready("serving the control socket; the engine has answered");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut ready_by, if !ready => {
                ready = true;
                ipc::systemd::notify_ready("serving the control socket; the engine has not answered yet");
            }
            _ = sleep_until(state.retry_at), if state.retry_at.is_some() => {
                state.retry_at = None;
                debug!("retrying the reconcile that did not converge");
                state.trigger(None);
            }
            Some(msg) = rx.recv() => {
                state.on_msg(msg);
                state.sync_dhcp();
                state.refresh_states();
                state.keep_running_file();
            }
            Some(link) = cloud_changed(&mut cloud_status) => state.view.cloud = Some(link),
            Some(call) = call_rx.recv() => {
                state.on_call(call);
                state.sync_dhcp();
                state.refresh_states();
                state.keep_running_file();
            }
            _ = timer.tick() => {
                debug!("periodic reconcile");
                state.trigger(None);
            }
        }
    }
    ipc::systemd::notify_stopping();
    state.finish_run(&mut rx).await;
    tasks.cancel();
    // The control server removes its socket file once its connections are gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), control).await;
    info!("agent stopped");
    Ok(())
}

impl State {
    /// The DHCP manager, its events forwarded to this task.
    fn start_dhcp(&mut self, tasks: &CancellationToken) {
        let (dtx, mut drx) = mpsc::channel(256);
        let c = &self.config;
        self.dhcp = Some(dhcp::DhcpManager::new(
            &c.state_dir,
            &c.netmon_socket,
            c.dhcp.release_when_stopped,
            c.dhcp.retry_max,
            dtx,
            tasks.clone(),
        ));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = drx.recv().await {
                if tx.send(Msg::Dhcp(ev)).await.is_err() {
                    break;
                }
            }
        });
    }

    fn new(
        config: Config,
        docker: Arc<dyn Engine>,
        docker_host: String,
        store: VnicStore,
        tx: mpsc::Sender<Msg>,
    ) -> State {
        let mut view = StatusView::default();
        view.agent.version = env!("CARGO_PKG_VERSION").into();
        view.agent.pid = std::process::id();
        view.agent.state_dir = config.state_dir.display().to_string();
        view.agent.control_socket = config.control_socket.display().to_string();
        view.netmon.socket = config.netmon_socket.display().to_string();
        view.engine.host = docker_host.clone();
        view.store.path = store.path().display().to_string();
        let (running_file, remembered) = running_file::RunningFile::open(&config.state_dir);
        State {
            internal: crate::runtime::InternalPool::new(config.internal_pool),
            config,
            docker,
            docker_host,
            store,
            cache: InterfaceCache::default(),
            view,
            runs: Runs::default(),
            started: Instant::now(),
            tx,
            engine_up: watch::Sender::new(false),
            engine_known: false,
            retry_at: None,
            retry: ipc::Backoff::new(RETRY_FIRST, RETRY_CAP),
            states: BTreeMap::new(),
            parent_index: BTreeMap::new(),
            echoes: echoes::Echoes::default(),
            runtime_ids: Default::default(),
            reattach: Default::default(),
            reattaching: Default::default(),
            dhcp: None,
            engine_stops: engine_stops::EngineStops::from_remembered(remembered),
            running_file,
            removals: removals::Removals::new(),
        }
    }

    /// Keeps what is owed a start (managed runtimes only) in its file, on change.
    fn keep_running_file(&mut self) {
        let mut set = self.engine_stops.remembered();
        set.retain(|n| self.store.runtimes().contains_key(n));
        self.running_file.save(set);
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
                self.answer(w, Err(why.clone()));
            }
            return;
        }
        self.runs.started(dry_run);
        let docker = self.docker.clone();
        let desired = self.store.runtimes().clone();
        let cache = self.cache.clone();
        let opts = ReconcileOptions {
            dry_run,
            parallelism: self.config.parallelism,
            reattach: if dry_run {
                self.reattach.clone()
            } else {
                self.reattaching = std::mem::take(&mut self.reattach);
                self.reattaching.clone()
            },
            leases: self.dhcp.as_ref().map(|d| d.leases(self.store.runtimes())),
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = reconcile(docker.as_ref(), &desired, &cache, &opts)
                .await
                .map_err(|e| e.to_string());
            let _ = tx.send(Msg::RunDone { dry_run, result }).await;
        });
    }

    /// A run ended: merge its records into the store, keep its report, answer its
    /// waiters, and start the run owed after it, if any.
    fn run_done(&mut self, dry_run: bool, result: Result<Outcome, String>) {
        let waiters = self.runs.finished();
        if let Ok(o) = &result {
            self.runtime_ids = o.container_ids.clone();
        }
        let own = result
            .as_ref()
            .map(|o| o.disconnected.clone())
            .unwrap_or_default();
        debug!(own = ?own, "the run's own disconnects");
        let by_hand = self.echoes.run_ended(own);
        let result = result.map(|outcome| {
            let mut report = outcome.report;
            if !dry_run {
                self.engine_stops.observed(&outcome.running);
                report.store_error = self.merge(&outcome.records);
                if !report.steps.is_empty() {
                    self.view.reconcile.last_change = Some(report.clone());
                }
                self.view.reconcile.last = Some(report.clone());
                self.view.reconcile.last_error = None;
            }
            report
        });
        if let Err(e) = &result {
            warn!(error = %e, "reconcile could not run");
            if !dry_run {
                self.view.reconcile.last_error = Some(e.clone());
            }
        }
        if !dry_run {
            let failed = result.as_ref().map(ReconcileReport::failed).unwrap_or(true);
            let refused = result.as_ref().is_ok_and(ReconcileReport::only_refused);
            let done = std::mem::take(&mut self.reattaching);
            if failed {
                self.reattach.extend(done);
            }
            self.schedule_retry(failed, refused);
        }
        for w in waiters {
            self.answer(w, result.clone());
        }
        if let Some(dry) = self.runs.next_run() {
            self.start_run(dry);
        }
        if by_hand {
            info!("a container was disconnected by hand during the run");
            self.trigger(None);
        }
    }

    /// After a real run: converged resets the backoff; anything left wrong (a failed
    /// step, an unconverged verify, an engine error) tries again without waiting for
    /// an event. A run left wrong only by refusals (`only_refused`) tries again at the
    /// cap: the same request would be refused again until someone changes something,
    /// and a change (an event) triggers a run anyway.
    fn schedule_retry(&mut self, failed: bool, refused: bool) {
        if !failed {
            self.retry.reset();
            self.retry_at = None;
            self.view.reconcile.next_retry_ms = None;
            return;
        }
        let delay = match refused {
            true => RETRY_CAP,
            false => self.retry.next_delay(),
        };
        info!(
            ?delay,
            refused, "the last reconcile left something wrong; retrying"
        );
        self.retry_at = Some(tokio::time::Instant::now() + delay);
        self.view.reconcile.next_retry_ms = Some(delay.as_millis() as u64);
    }

    /// Records what a run found; the error to show when the store refused it.
    fn merge(&mut self, records: &[crate::reconcile::Record]) -> Option<String> {
        crate::reconcile::record_into(&mut self.store, records)
    }

    /// On shutdown: a run cut short leaves containers half moved until the next start,
    /// so give the one in progress a moment to finish and record what it did.
    async fn finish_run(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        if self.runs.running.is_none() {
            return;
        }
        info!("waiting for the reconcile in progress");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::RunDone { dry_run, result })) => {
                    let waiters = self.runs.finished();
                    if let Ok(o) = &result
                        && !dry_run
                    {
                        self.merge(&o.records);
                    }
                    for w in waiters {
                        self.answer(w, Err("the agent is shutting down".into()));
                    }
                    return;
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    warn!(grace = ?SHUTDOWN_GRACE, "reconcile still running; stopping anyway");
                    return;
                }
            }
        }
    }

    /// Re-derives every vNIC's state; a vNIC whose state changed kind starts its
    /// clock again (health counts pending and failed time against the grace).
    fn refresh_states(&mut self) {
        let now = Instant::now();
        let facts = Facts {
            engine_reachable: self.view.engine.reachable,
            cache: &self.cache,
            last: self.view.reconcile.last.as_ref(),
            next_retry: self
                .retry_at
                .map(|t| t.saturating_duration_since(tokio::time::Instant::now())),
        };
        let mut next = BTreeMap::new();
        for (rt, vnics) in self.store.runtimes() {
            for v in vnics {
                let key = (rt.clone(), v.name.clone());
                let mut st = vnic_state::vnic_state(rt, v, &facts);
                if let Some(d) = &self.dhcp {
                    st = dhcp_events::state(d, rt, v, st);
                }
                let since = match self.states.get(&key) {
                    Some((old, t)) if old.kind() == st.kind() => *t,
                    _ => now,
                };
                next.insert(key, (st, since));
            }
        }
        self.states = next;
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

/// Starts the cloud link and its usage sampler when configured; the link's status.
fn spawn_cloud(
    config: &Config,
    docker: &Arc<dyn Engine>,
    tx: &mpsc::Sender<Msg>,
    tasks: &CancellationToken,
) -> Option<watch::Receiver<crate::cloud::LinkStatus>> {
    let opts = config.cloud.clone()?;
    let link = opts.link.clone();
    let (status_tx, status_rx) = watch::channel(crate::cloud::LinkStatus::initial(&link.url));
    let c = Arc::new(cloud::Cloud::new(tx.clone(), docker.clone(), opts));
    let backend: Arc<dyn crate::cloud::Backend> = Arc::new(cloud::CloudBackend(c.clone()));
    info!(url = %link.url, "cloud link configured");
    tokio::spawn(crate::cloud::run(link, backend, status_tx, tasks.clone()));
    let names = c.clone();
    tokio::spawn(crate::cloud::usage::sample_loop(
        c.usage.clone(),
        docker.clone(),
        Duration::from_secs(5),
        move || {
            let c = names.clone();
            async move { c.names().await }
        },
        tasks.clone(),
    ));
    Some(status_rx)
}

/// The link's next status; never returns without a link.
async fn cloud_changed(
    rx: &mut Option<watch::Receiver<crate::cloud::LinkStatus>>,
) -> Option<crate::cloud::LinkStatus> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(r.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never returns when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
