//! The daemon loop: level-triggered. Kernel messages only mark interfaces dirty; when
//! an interface's window closes netmon re-reads the kernel and reports what differs
//! from what it last sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipc::{Interface, Status};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::debounce::Debouncer;
use crate::filter::Filter;
use crate::model::{build, sysfs_is_wireless};
use crate::netlink::{Kernel, KernelEvent, NetlinkError};
use crate::server::{self, Hub, ServerError, SocketConfig};

/// Everything `run` needs, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: SocketConfig,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub resync_interval: Duration,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Config {
    pub fn new(socket: PathBuf) -> Self {
        Config {
            socket: SocketConfig {
                path: socket,
                mode: 0o660,
                group: None,
                client_queue: 1024,
            },
            debounce: Duration::from_secs(3),
            max_wait: Duration::from_secs(10),
            resync_interval: Duration::from_secs(300),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
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

/// Which interfaces a comparison covers.
#[derive(Debug, Clone)]
pub enum Due {
    All,
    Some(BTreeSet<u32>),
}

impl Due {
    fn contains(&self, i: u32) -> bool {
        match self {
            Due::All => true,
            Due::Some(s) => s.contains(&i),
        }
    }
}

/// The last state sent for each interface, and the decisions of what to send next.
/// Pure: fed with freshly built maps, it returns the records to broadcast.
#[derive(Debug, Default, Clone)]
pub struct State {
    sent: BTreeMap<u32, Interface>,
}

/// The record sent for an interface that is gone (or no longer reported): its last
/// known name and index, status `removed`, no addresses, no gateway.
pub fn removed(last: &Interface) -> Interface {
    let mut r = last.clone();
    r.status = Some(Status::Removed);
    r.ipv4_addresses.clear();
    r.ipv6_addresses.clear();
    r.gateway = None;
    r.timestamp = None;
    r
}

impl State {
    pub fn new(initial: BTreeMap<u32, Interface>) -> Self {
        State { sent: initial }
    }

    pub fn sent(&self) -> &BTreeMap<u32, Interface> {
        &self.sent
    }

    pub fn name_of(&self, ifindex: u32) -> Option<&str> {
        self.sent.get(&ifindex).map(|i| i.interface.as_str())
    }

    /// Compares `current` with what was last sent, for the `due` interfaces only, and
    /// records and returns what must be sent, in ifindex order. A rename (same index,
    /// new name) is `removed` for the old name followed by the new record; an
    /// interface that the filter starts or stops allowing appears or is removed.
    pub fn apply(&mut self, current: &BTreeMap<u32, Interface>, due: &Due) -> Vec<Interface> {
        let indexes: BTreeSet<u32> = match due {
            Due::All => self.sent.keys().chain(current.keys()).copied().collect(),
            Due::Some(s) => s.clone(),
        };
        let mut out = Vec::new();
        for i in indexes {
            debug_assert!(due.contains(i));
            match (self.sent.get(&i), current.get(&i)) {
                (None, None) => {}
                (None, Some(new)) => {
                    out.push(new.clone());
                    self.sent.insert(i, new.clone());
                }
                (Some(old), None) => {
                    out.push(removed(old));
                    self.sent.remove(&i);
                }
                (Some(old), Some(new)) => {
                    if old.interface != new.interface {
                        out.push(removed(old));
                        out.push(new.clone());
                        self.sent.insert(i, new.clone());
                    } else if !old.same_state(new) {
                        out.push(new.clone());
                        self.sent.insert(i, new.clone());
                    }
                }
            }
        }
        out
    }

    /// Applies an urgent read of `ifindex`: only a link that is now down or gone is
    /// sent at once. Returns `None` when the interface is still up (it stays under the
    /// normal debounce).
    pub fn apply_urgent(
        &mut self,
        current: &BTreeMap<u32, Interface>,
        ifindex: u32,
    ) -> Option<Vec<Interface>> {
        let down_or_gone = match current.get(&ifindex) {
            None => true,
            Some(i) => i.status != Some(Status::Up),
        };
        if !down_or_gone {
            return None;
        }
        let mut due = BTreeSet::new();
        due.insert(ifindex);
        Some(self.apply(current, &Due::Some(due)))
    }
}

struct Reader {
    filter: Filter,
    /// The name of every link of the last read, reported or not: hints arrive for
    /// filtered links too, and `pending_changes` should not list those.
    names: std::sync::Mutex<HashMap<u32, String>>,
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
        drop(snap);
        release_free_memory();
        Ok(map)
    }
}

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

/// Opens the kernel, retrying with capped exponential backoff until `shutdown`.
async fn reopen(shutdown: &CancellationToken) -> Option<(Kernel, mpsc::Receiver<KernelEvent>)> {
    let mut delay = REOPEN_MIN;
    loop {
        match Kernel::open().await {
            Ok(k) => return Some(k),
            Err(e) => warn!(error = %e, retry_in = ?delay, "cannot reopen netlink"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(REOPEN_MAX);
    }
}

/// Runs netmon until `shutdown`: reads the kernel, binds the socket, reports
/// READY=1 to systemd, then serves events. Startup errors are returned; later kernel
/// trouble is retried.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let reader = Reader {
        filter: Filter::new(&config.include, &config.exclude)?,
        names: Default::default(),
    };
    // Subscribe before the first read: a change made in between is then both read and
    // announced, never neither.
    let (mut kernel, mut events) = Kernel::open().await?;
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
    let hub = Hub::new(instance.clone(), config.socket.client_queue, stamped);
    let mut state = State::new(initial);
    let server = server::bind(&config.socket)?;
    let server_task = tokio::spawn(server.serve(hub.clone(), shutdown.clone()));
    ipc::systemd::notify_ready(&format!(
        "watching {} interfaces, instance {instance}",
        state.sent().len()
    ));
    let watchdog = ipc::systemd::spawn_watchdog(shutdown.clone());
    info!(instance = %instance, socket = %config.socket.path.display(),
          debounce = ?config.debounce, max_wait = ?config.max_wait, "netmon ready");

    let mut debounce = Debouncer::new(config.debounce, config.max_wait);
    let mut resync = tokio::time::interval_at(
        Instant::now() + config.resync_interval,
        config.resync_interval,
    );
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let deadline = debounce.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv() => match ev {
                Some(first) => {
                    // Take everything already queued in one go: a burst costs one read.
                    let mut urgent = BTreeSet::new();
                    let mut overrun = false;
                    let mut next = Some(first);
                    let now = Instant::now();
                    let mut pending_changed = false;
                    while let Some(ev) = next {
                        match ev {
                            KernelEvent::Hint { ifindex, urgent: u } => {
                                pending_changed |= debounce.mark(ifindex, now);
                                if u { urgent.insert(ifindex); }
                            }
                            KernelEvent::Overrun => overrun = true,
                        }
                        next = events.try_recv().ok();
                    }
                    if overrun {
                        warn!("netlink event socket overran; re-reading everything");
                        resync_all(&reader, &kernel, &hub, &mut state, &mut debounce, true).await;
                        pending_changed = true;
                    } else if !urgent.is_empty() {
                        match reader.read(&kernel).await {
                            Ok(current) => {
                                for i in urgent {
                                    if let Some(changes) = state.apply_urgent(&current, i) {
                                        debounce.remove(i);
                                        pending_changed = true;
                                        hub.publish(changes);
                                    }
                                }
                            }
                            Err(e) => warn!(error = %e, "urgent read failed; the change stays pending"),
                        }
                    }
                    if pending_changed {
                        publish_pending(&hub, &state, &debounce, &reader);
                    }
                }
                None => {
                    warn!("netlink event socket closed; reopening");
                    drop(events);
                    let Some((k, e)) = reopen(&shutdown).await else { break };
                    kernel = k;
                    events = e;
                    resync_all(&reader, &kernel, &hub, &mut state, &mut debounce, false).await;
                    publish_pending(&hub, &state, &debounce, &reader);
                }
            },
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                let due = debounce.take_due(Instant::now());
                if !due.is_empty() {
                    match reader.read(&kernel).await {
                        Ok(current) => {
                            let changes = state.apply(&current, &Due::Some(due.into_iter().collect()));
                            hub.publish(changes);
                        }
                        Err(e) => {
                            warn!(error = %e, "read failed; retrying after the window");
                            let now = Instant::now();
                            for i in due { debounce.mark(i, now); }
                        }
                    }
                }
                publish_pending(&hub, &state, &debounce, &reader);
            }
            _ = resync.tick() => {
                debug!("periodic resync");
                resync_all(&reader, &kernel, &hub, &mut state, &mut debounce, false).await;
                publish_pending(&hub, &state, &debounce, &reader);
            }
        }
    }

    info!("shutting down");
    ipc::systemd::notify_stopping();
    // The server task removes the socket file when it ends.
    let _ = server_task.await;
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn resync_all(
    reader: &Reader,
    kernel: &Kernel,
    hub: &Arc<Hub>,
    state: &mut State,
    debounce: &mut Debouncer,
    overrun: bool,
) {
    hub.count_resync(overrun);
    match reader.read(kernel).await {
        Ok(current) => {
            let changes = state.apply(&current, &Due::All);
            if !changes.is_empty() {
                info!(changes = changes.len(), overrun, "resync found differences");
            }
            debounce.clear();
            hub.publish(changes);
            ipc::systemd::notify_status(&format!(
                "watching {} interfaces, {} clients",
                state.sent().len(),
                hub.client_count()
            ));
        }
        Err(e) => warn!(error = %e, "resync read failed; will retry on the next trigger"),
    }
}

/// Publishes the names of the reported interfaces waiting for their window. A link
/// not seen in any read yet (just created) is listed by its index.
fn publish_pending(hub: &Hub, state: &State, debounce: &Debouncer, reader: &Reader) {
    let known = reader.names.lock().ok();
    let names = debounce
        .pending()
        .into_iter()
        .filter_map(|i| {
            if let Some(n) = state.name_of(i) {
                return Some(n.to_string());
            }
            match known.as_ref().and_then(|k| k.get(&i)) {
                Some(n) if reader.filter.allows(n) => Some(n.clone()),
                Some(_) => None,
                None => Some(format!("ifindex {i}")),
            }
        })
        .collect();
    hub.set_pending(names);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::Ipv4Address;

    fn iface(index: u32, name: &str, addr: Option<&str>) -> Interface {
        let mut i = Interface::named(name);
        i.index = Some(index);
        i.operstate = Some("UP".into());
        i.status = Some(Status::Up);
        if let Some(a) = addr {
            i.ipv4_addresses = vec![Ipv4Address::new(a.parse().unwrap(), 24).unwrap()];
        }
        i
    }

    fn map(v: &[Interface]) -> BTreeMap<u32, Interface> {
        v.iter().map(|i| (i.index.unwrap(), i.clone())).collect()
    }

    fn due(v: &[u32]) -> Due {
        Due::Some(v.iter().copied().collect())
    }

    #[test]
    fn unchanged_state_sends_nothing() {
        let a = iface(2, "eth0", Some("10.0.0.1"));
        let mut st = State::new(map(std::slice::from_ref(&a)));
        let mut again = a.clone();
        again.timestamp = Some("later".into());
        assert!(st.apply(&map(&[again]), &due(&[2])).is_empty());
        assert!(st.apply(&map(&[a]), &Due::All).is_empty());
    }

    #[test]
    fn change_is_sent_once() {
        let mut st = State::new(map(&[iface(2, "eth0", Some("10.0.0.1"))]));
        let new = map(&[iface(2, "eth0", Some("10.0.0.2"))]);
        let out = st.apply(&new, &due(&[2]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ipv4_addresses[0].address.to_string(), "10.0.0.2");
        assert!(st.apply(&new, &due(&[2])).is_empty());
    }

    #[test]
    fn only_due_interfaces_are_compared() {
        let mut st = State::new(map(&[iface(2, "a", None), iface(3, "b", None)]));
        let new = map(&[
            iface(2, "a", Some("10.0.0.2")),
            iface(3, "b", Some("10.0.0.3")),
        ]);
        let out = st.apply(&new, &due(&[3]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, "b");
        assert_eq!(st.apply(&new, &due(&[2]))[0].interface, "a");
    }

    #[test]
    fn removal_keeps_last_name_and_index() {
        let mut st = State::new(map(&[iface(4, "eth1", Some("10.0.0.1"))]));
        let out = st.apply(&BTreeMap::new(), &due(&[4]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, "eth1");
        assert_eq!(out[0].index, Some(4));
        assert_eq!(out[0].status, Some(Status::Removed));
        assert!(out[0].ipv4_addresses.is_empty());
        assert!(st.sent().is_empty());
    }

    #[test]
    fn rename_is_removed_then_new() {
        let mut st = State::new(map(&[iface(4, "old", Some("10.0.0.1"))]));
        let out = st.apply(&map(&[iface(4, "new", Some("10.0.0.1"))]), &due(&[4]));
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].interface.as_str(), out[0].status),
            ("old", Some(Status::Removed))
        );
        assert_eq!(
            (out[1].interface.as_str(), out[1].status),
            ("new", Some(Status::Up))
        );
        assert_eq!(st.name_of(4), Some("new"));
    }

    #[test]
    fn rename_into_and_out_of_the_filter() {
        // Renamed to an excluded name: the built map no longer has it.
        let mut st = State::new(map(&[iface(4, "eth1", None)]));
        let out = st.apply(&BTreeMap::new(), &due(&[4]));
        assert_eq!(out[0].status, Some(Status::Removed));
        // Renamed back to an allowed name: it appears.
        let out = st.apply(&map(&[iface(4, "eth9", None)]), &due(&[4]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, "eth9");
    }

    #[test]
    fn resync_covers_new_and_vanished() {
        let mut st = State::new(map(&[iface(2, "a", None), iface(3, "b", None)]));
        let out = st.apply(&map(&[iface(2, "a", None), iface(5, "c", None)]), &Due::All);
        let names: Vec<_> = out
            .iter()
            .map(|i| (i.interface.as_str(), i.status))
            .collect();
        assert_eq!(
            names,
            vec![("b", Some(Status::Removed)), ("c", Some(Status::Up))]
        );
    }

    #[test]
    fn urgent_read_sends_only_down_or_gone() {
        let mut st = State::new(map(&[iface(2, "a", Some("10.0.0.1"))]));
        // Still up (a flap already undone): left to the debounce.
        assert!(
            st.apply_urgent(&map(&[iface(2, "a", Some("10.0.0.1"))]), 2)
                .is_none()
        );
        let mut down = iface(2, "a", None);
        down.status = Some(Status::Down);
        down.operstate = Some("DOWN".into());
        let out = st.apply_urgent(&map(&[down]), 2).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Some(Status::Down));
        let out = st.apply_urgent(&BTreeMap::new(), 2).unwrap();
        assert_eq!(out[0].status, Some(Status::Removed));
        // Gone and never reported (an excluded link): nothing.
        assert!(st.apply_urgent(&BTreeMap::new(), 9).unwrap().is_empty());
    }
}
