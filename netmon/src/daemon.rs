//! The daemon loop: level-triggered. Kernel messages only mark interfaces dirty; when
//! an interface's window closes netmon re-reads the kernel and reports what differs
//! from what it last sent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ipc::{Interface, ServerConfig, ServerError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection;
use crate::debounce::Debouncer;
use crate::filter::Filter;
use crate::hub::Hub;
use crate::model::{build, sysfs_is_wireless};
use crate::netlink::{Kernel, KernelEvent, NetlinkError};
use crate::state::{Due, State};

/// Everything `run` needs, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Socket path, mode, group and client cap (no idle timeout: subscribers only
    /// read).
    pub socket: ServerConfig,
    /// Bytes a client may owe before it is disconnected for not reading.
    pub client_queue_bytes: usize,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub resync_interval: Duration,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("bad interface pattern: {0}")]
    Filter(#[from] crate::filter::FilterError),
    #[error("read the kernel's network state: {0}")]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

struct Reader {
    filter: Filter,
    /// The name of every link of the last read, reported or not: hints arrive for
    /// filtered links too, and `pending_changes` should not list those.
    names: std::sync::Mutex<HashMap<u32, String>>,
    /// Route knowledge for partial reads: the interfaces with a main-table default
    /// route at the last read of them, and those named by a default-route message
    /// since. Only these need the route dump: the kernel announces every default
    /// route it adds, but may drop one silently (its gateway became unreachable
    /// when an address went).
    routes: std::sync::Mutex<RouteWatch>,
}

#[derive(Default)]
struct RouteWatch {
    with_default: HashSet<u32>,
    hinted: HashSet<u32>,
}

impl Reader {
    async fn read(&self, kernel: &Kernel) -> Result<BTreeMap<u32, Interface>, NetlinkError> {
        let snap = kernel.dump().await?;
        let map = build(&snap, &self.filter, &sysfs_is_wireless);
        if let Ok(mut names) = self.names.lock() {
            *names = snap
                .links
                .iter()
                .map(|l| (l.index, l.name.clone()))
                .collect();
        }
        if let Ok(mut w) = self.routes.lock() {
            w.with_default = snap.routes.iter().map(|r| r.oif).collect();
            w.hinted.clear();
        }
        drop(snap);
        release_free_memory();
        Ok(map)
    }

    /// Reads only `indexes` when they are a small part of the host (a storm then
    /// costs what changed, not the host), else everything. The map holds what is
    /// left of `indexes` (a missing one is gone or filtered), or everything.
    async fn read_some(
        &self,
        kernel: &Kernel,
        indexes: &BTreeSet<u32>,
    ) -> Result<BTreeMap<u32, Interface>, NetlinkError> {
        let links = self.names.lock().map(|n| n.len()).unwrap_or(0);
        if indexes.len().saturating_mul(PARTIAL_SHARE) > links {
            return self.read(kernel).await;
        }
        let routes = self.routes.lock().is_ok_and(|w| {
            indexes
                .iter()
                .any(|i| w.with_default.contains(i) || w.hinted.contains(i))
        });
        let Some(snap) = kernel.dump_some(indexes, routes).await? else {
            return self.read(kernel).await;
        };
        if let (true, Ok(mut w)) = (routes, self.routes.lock()) {
            for i in indexes {
                w.with_default.remove(i);
                w.hinted.remove(i);
            }
            w.with_default.extend(snap.routes.iter().map(|r| r.oif));
        }
        if let Ok(mut names) = self.names.lock() {
            for i in indexes {
                names.remove(i);
            }
            names.extend(snap.links.iter().map(|l| (l.index, l.name.clone())));
        }
        Ok(build(&snap, &self.filter, &sysfs_is_wireless))
    }
}

/// How long after an interface's window closes its read may wait for others.
const COALESCE: Duration = Duration::from_millis(20);

/// A read of a few interfaces costs three round trips each; a full read costs one
/// pass over the host. Up to a quarter of the links are read one by one.
const PARTIAL_SHARE: usize = 4;

/// A full read allocates the snapshot and the built map (hundreds of KiB with many
/// links) and frees most of it right after; glibc keeps freed pages mapped unless
/// asked. Returning them keeps the steady-state RSS at the size of the state itself.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Opens the kernel, retrying with the capped backoff until `shutdown`.
async fn reopen(shutdown: &CancellationToken) -> Option<(Kernel, mpsc::Receiver<KernelEvent>)> {
    let mut backoff = ipc::Backoff::new(REOPEN_MIN, REOPEN_MAX);
    loop {
        let delay = backoff.next_delay();
        match Kernel::open().await {
            Ok(k) => return Some(k),
            Err(e) => warn!(error = %e, retry_in = ?delay, "cannot reopen netlink"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs netmon until `shutdown`: reads the kernel, binds the socket, reports
/// READY=1 to systemd, then serves events. Startup errors are returned; later kernel
/// trouble is retried.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let reader = Reader {
        filter: Filter::new(&config.include, &config.exclude)?,
        names: Default::default(),
        routes: Default::default(),
    };
    // Subscribe before the first read: a change made in between is then both read and
    // announced, never neither.
    let (kernel, events) = Kernel::open().await?;
    let initial = reader.read(&kernel).await?;
    info!(interfaces = initial.len(), "initial read done");
    let instance = format!("{:08x}", fastrand::u32(..));
    let now = ipc::timestamp_now();
    let stamped = initial
        .iter()
        .map(|(i, iface)| {
            let mut iface = iface.clone();
            iface.timestamp = Some(now.clone());
            (*i, iface)
        })
        .collect();
    let hub = Hub::new(instance.clone(), config.client_queue_bytes, stamped);
    let server = ipc::Server::bind(&config.socket)?;
    let server_task = {
        let (hub, stop) = (hub.clone(), shutdown.clone());
        tokio::spawn(server.serve(
            move |stream, _peer| connection::serve(stream, hub.clone(), stop.clone()),
            shutdown.clone(),
        ))
    };
    let d = Daemon {
        debounce: Debouncer::new(config.debounce, config.max_wait),
        state: State::new(initial),
        reader,
        kernel,
        hub,
    };
    ipc::systemd::notify_ready(&format!(
        "watching {} interfaces, instance {instance}",
        d.state.sent().len()
    ));
    let watchdog = ipc::systemd::spawn_watchdog(shutdown.clone());
    info!(instance = %instance, socket = %config.socket.path.display(),
          debounce = ?config.debounce, max_wait = ?config.max_wait, "netmon ready");
    d.run(events, config.resync_interval, &shutdown).await;

    info!("shutting down");
    ipc::systemd::notify_stopping();
    // The server returns once its connections ended and the socket file is removed.
    let _ = server_task.await;
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    Ok(())
}

/// The daemon loop's state: what was sent, what is dirty, and how to read.
struct Daemon {
    reader: Reader,
    kernel: Kernel,
    hub: Arc<Hub>,
    state: State,
    debounce: Debouncer,
}

impl Daemon {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<KernelEvent>,
        resync_interval: Duration,
        shutdown: &CancellationToken,
    ) {
        let mut resync =
            tokio::time::interval_at(Instant::now() + resync_interval, resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.debounce.next_deadline();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(first) => self.on_events(first, &mut events).await,
                    None => {
                        warn!("netlink event socket closed; reopening");
                        drop(events);
                        let Some((k, e)) = reopen(shutdown).await else { break };
                        self.kernel = k;
                        events = e;
                        self.resync_all(false).await;
                    }
                },
                // A little after the first deadline, so interfaces due within a few
                // ms of each other (a storm) share one read.
                _ = sleep_until_opt(deadline.map(|d| d + COALESCE)), if deadline.is_some() => {
                    self.on_due().await
                }
                _ = resync.tick() => {
                    debug!("periodic resync");
                    self.resync_all(false).await;
                }
            }
        }
    }

    /// Takes everything already queued in one go: a burst costs one read.
    async fn on_events(&mut self, first: KernelEvent, events: &mut mpsc::Receiver<KernelEvent>) {
        let mut urgent = BTreeSet::new();
        let mut overrun = false;
        let mut next = Some(first);
        let now = Instant::now();
        while let Some(ev) = next {
            match ev {
                KernelEvent::Hint {
                    ifindex,
                    urgent: u,
                    route,
                } => {
                    self.mark(ifindex, now);
                    if route {
                        if let Ok(mut w) = self.reader.routes.lock() {
                            w.hinted.insert(ifindex);
                        }
                    }
                    if u {
                        urgent.insert(ifindex);
                    }
                }
                KernelEvent::Overrun => overrun = true,
            }
            next = events.try_recv().ok();
        }
        if overrun {
            warn!("netlink event socket overran; re-reading everything");
            self.resync_all(true).await;
        } else if !urgent.is_empty() {
            match self.reader.read_some(&self.kernel, &urgent).await {
                Ok(current) => {
                    for i in urgent {
                        if let Some(changes) = self.state.apply_urgent(&current, i) {
                            self.unmark(i);
                            self.hub.publish(changes);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "urgent read failed; the change stays pending"),
            }
        }
    }

    async fn on_due(&mut self) {
        let due = self.debounce.take_due(Instant::now());
        if due.is_empty() {
            return;
        }
        for i in &due {
            self.hub.set_pending(*i, None);
        }
        let due: BTreeSet<u32> = due.into_iter().collect();
        match self.reader.read_some(&self.kernel, &due).await {
            Ok(current) => {
                let changes = self.state.apply(&current, &Due::Some(due));
                self.hub.publish(changes);
            }
            Err(e) => {
                warn!(error = %e, "read failed; retrying after the window");
                let now = Instant::now();
                for i in due {
                    self.mark(i, now);
                }
            }
        }
    }

    /// Marks `ifindex` dirty; a newly dirty interface is listed in `pending_changes`
    /// by its reported name, by its kernel name if it would be reported, or by its
    /// index when no read has seen it yet (just created). Excluded links are not
    /// listed.
    fn mark(&mut self, ifindex: u32, now: Instant) {
        if !self.debounce.mark(ifindex, now) {
            return;
        }
        let name = match self.state.name_of(ifindex) {
            Some(n) => Some(n.to_string()),
            None => match self
                .reader
                .names
                .lock()
                .ok()
                .and_then(|k| k.get(&ifindex).cloned())
            {
                Some(n) if self.reader.filter.allows(&n) => Some(n),
                Some(_) => None,
                None => Some(format!("ifindex {ifindex}")),
            },
        };
        if name.is_some() {
            self.hub.set_pending(ifindex, name);
        }
    }

    fn unmark(&mut self, ifindex: u32) {
        self.debounce.remove(ifindex);
        self.hub.set_pending(ifindex, None);
    }

    async fn resync_all(&mut self, overrun: bool) {
        self.hub.count_resync(overrun);
        match self.reader.read(&self.kernel).await {
            Ok(current) => {
                let changes = self.state.apply(&current, &Due::All);
                if !changes.is_empty() {
                    info!(changes = changes.len(), overrun, "resync found differences");
                }
                self.debounce.clear();
                self.hub.clear_pending();
                self.hub.publish(changes);
                ipc::systemd::notify_status(&format!(
                    "watching {} interfaces, {} clients",
                    self.state.sent().len(),
                    self.hub.client_count()
                ));
            }
            Err(e) => warn!(error = %e, "resync read failed; will retry on the next trigger"),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
