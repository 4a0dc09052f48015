//! The state shared by the daemon loop (writer) and the connections (readers): the
//! last sent state of every interface, the connected clients and their queues.
//!
//! Memory: every event and the discovery are encoded once into a `Bytes` that all
//! queues share; a queue holds references, and its bound counts the bytes it
//! references (a client that does not read is dropped once it owes more than the
//! bound, never waited for). So 1,000 stuck clients cost 1,000 small queues, not
//! 1,000 copies of the discovery.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use ipc::{Discovery, Interface, JsonLines, Reply};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Counters and state shown by `get_status`.
#[derive(Serialize, Debug, Default, Clone)]
struct StatusCounters {
    events_sent: u64,
    resyncs: u64,
    netlink_overruns: u64,
}

/// What a client's writer sends, in order.
pub(crate) enum Outgoing {
    /// An event whose `data` was encoded once for every client; the writer adds the
    /// per-connection envelope and `seq`.
    Event {
        kind: &'static str,
        data: Bytes,
    },
    Reply(Bytes),
    /// Write what is queued, then close (after an over-long line).
    Close,
}

/// What an event's envelope adds to its data, for the byte bound.
const ENVELOPE: usize = 96;

impl Outgoing {
    /// The bytes this item puts on the wire, counted against the queue bound.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Outgoing::Event { data, .. } => data.len() + ENVELOPE,
            Outgoing::Reply(line) => line.len(),
            Outgoing::Close => 0,
        }
    }
}

/// A client's side of its queue: the connection reads `rx` and gives the bytes back
/// through `queued` once written.
pub(crate) struct ClientQueue {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Outgoing>,
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) cancel: CancellationToken,
}

struct ClientSlot {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl ClientSlot {
    /// Queues `item` unless the client already owes `limit` bytes. The first item of
    /// an empty queue always fits, so a discovery larger than the bound still goes.
    fn push(&self, item: Outgoing, limit: usize) -> bool {
        let cost = item.cost();
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued + cost > limit {
            return false;
        }
        self.queued.fetch_add(cost, Ordering::AcqRel);
        self.tx.send(item).is_ok()
    }
}

struct HubInner {
    interfaces: BTreeMap<u32, Interface>,
    /// The encoded discovery of `interfaces`, shared by every client that asks until
    /// the state changes.
    discovery: Option<Bytes>,
    clients: HashMap<u64, ClientSlot>,
    next_client: u64,
    pending: BTreeMap<u32, String>,
    counters: StatusCounters,
}

/// See the module documentation. Every critical section is short and never awaits.
pub struct Hub {
    instance: String,
    started: Instant,
    queue_bytes: usize,
    inner: Mutex<HubInner>,
}

impl Hub {
    pub fn new(
        instance: String,
        queue_bytes: usize,
        interfaces: BTreeMap<u32, Interface>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            instance,
            started: Instant::now(),
            queue_bytes,
            inner: Mutex::new(HubInner {
                interfaces,
                discovery: None,
                clients: HashMap::new(),
                next_client: 1,
                pending: BTreeMap::new(),
                counters: StatusCounters::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than stopping would; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Sends `network_change` for each interface to every client. Removed interfaces
    /// (status `removed`) leave the state. Each `data` is encoded once.
    pub fn publish(&self, changes: Vec<Interface>) {
        if changes.is_empty() {
            return;
        }
        let now = ipc::timestamp_now();
        let mut inner = self.lock();
        inner.discovery = None;
        for mut iface in changes {
            iface.timestamp = Some(now.clone());
            let data = match serde_json::to_vec(&iface) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    warn!(interface = %iface.interface, error = %e, "cannot encode an interface; skipped");
                    continue;
                }
            };
            record(&mut inner.interfaces, &iface);
            inner.counters.events_sent += 1;
            let limit = self.queue_bytes;
            inner.clients.retain(|id, slot| {
                let item = Outgoing::Event {
                    kind: "network_change",
                    data: data.clone(),
                };
                let kept = slot.push(item, limit);
                if !kept {
                    warn!(
                        client = id,
                        queue_bytes = limit,
                        "client is not reading; disconnected"
                    );
                    slot.cancel.cancel();
                }
                kept
            });
            // Only the primary address: an interface can carry thousands. Plain values
            // (an absent one is left out), not Debug text: journald stores each field
            // as typed (F_STATUS=down, never Some(Down)).
            info!(interface = %iface.interface, index = iface.index,
                  status = iface.status.map(status_word),
                  ipv4 = iface.ipv4_addresses.first().map(|a| display(a.address)),
                  ipv4_count = iface.ipv4_addresses.len(),
                  gateway = iface.gateway.map(display), "network_change");
        }
    }

    /// An interface waits for its window (`Some(name)`), or no longer does (`None`).
    pub fn set_pending(&self, ifindex: u32, name: Option<String>) {
        let mut inner = self.lock();
        match name {
            Some(n) => inner.pending.insert(ifindex, n),
            None => inner.pending.remove(&ifindex),
        };
    }

    pub fn clear_pending(&self) {
        self.lock().pending.clear();
    }

    pub fn count_resync(&self, overrun: bool) {
        let mut inner = self.lock();
        inner.counters.resyncs += 1;
        if overrun {
            inner.counters.netlink_overruns += 1;
        }
    }

    pub fn client_count(&self) -> usize {
        self.lock().clients.len()
    }

    /// The shared encoding of the current discovery (made on first use after a change).
    fn discovery(inner: &mut HubInner) -> Option<Bytes> {
        if let Some(d) = &inner.discovery {
            return Some(d.clone());
        }
        let d = Discovery {
            interfaces: inner.interfaces.values().cloned().collect(),
            timestamp: Some(ipc::timestamp_now()),
        };
        match serde_json::to_vec(&d) {
            Ok(v) => {
                let b = Bytes::from(v);
                inner.discovery = Some(b.clone());
                Some(b)
            }
            Err(e) => {
                warn!(error = %e, "cannot encode the discovery");
                None
            }
        }
    }

    /// Registers a client and queues its discovery under one lock, so it sees every
    /// change after the state it was shown, and none twice.
    pub(crate) fn register(&self) -> ClientQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = ClientSlot {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            cancel: CancellationToken::new(),
        };
        let mut inner = self.lock();
        let id = inner.next_client;
        inner.next_client += 1;
        if let Some(data) = Self::discovery(&mut inner) {
            let kind = "network_discovery";
            slot.push(Outgoing::Event { kind, data }, self.queue_bytes);
        }
        let queue = ClientQueue {
            id,
            rx,
            queued: slot.queued.clone(),
            cancel: slot.cancel.clone(),
        };
        inner.clients.insert(id, slot);
        queue
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.lock().clients.remove(&id);
    }

    /// Queues a reply, and for `discover` the discovery right after it, atomically.
    pub(crate) fn reply(&self, id: u64, reply: &Reply, then_discovery: bool, then_close: bool) {
        let line = match JsonLines::to_line(reply) {
            Ok(l) => Bytes::from(l),
            Err(e) => {
                warn!(error = %e, "cannot encode a reply");
                return;
            }
        };
        let mut inner = self.lock();
        let discovery = then_discovery
            .then(|| Self::discovery(&mut inner))
            .flatten();
        let Some(slot) = inner.clients.get(&id) else {
            return;
        };
        let limit = self.queue_bytes;
        let mut ok = slot.push(Outgoing::Reply(line), limit);
        if let Some(data) = discovery {
            let kind = "network_discovery";
            ok &= slot.push(Outgoing::Event { kind, data }, limit);
        }
        if then_close {
            // Close even when the queue is full: the connection ends either way.
            let _ = slot.tx.send(Outgoing::Close);
            if !ok {
                slot.cancel.cancel();
            }
        } else if !ok {
            if let Some(slot) = inner.clients.remove(&id) {
                warn!(
                    client = id,
                    "client is not reading its replies; disconnected"
                );
                slot.cancel.cancel();
            }
        }
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        let inner = self.lock();
        serde_json::json!({
            "instance": self.instance,
            "uptime_s": self.started.elapsed().as_secs(),
            "clients_connected": inner.clients.len(),
            "interfaces": inner.interfaces.len(),
            "events_sent": inner.counters.events_sent,
            "resyncs": inner.counters.resyncs,
            "netlink_overruns": inner.counters.netlink_overruns,
            "pending_changes": inner.pending.values().collect::<Vec<_>>(),
        })
    }
}

/// Records a sent interface in the state; a `removed` one leaves it, but only when
/// it is the record held: a rename sends `removed` for the old name and keeps the
/// index.
fn record(interfaces: &mut BTreeMap<u32, Interface>, iface: &Interface) {
    let Some(index) = iface.index else { return };
    if iface.status == Some(ipc::Status::Removed) {
        if interfaces.get(&index).map(|i| &i.interface) == Some(&iface.interface) {
            interfaces.remove(&index);
        }
    } else {
        interfaces.insert(index, iface.clone());
    }
}

/// An interface status as the wire spells it, for log fields.
fn status_word(s: ipc::Status) -> &'static str {
    match s {
        ipc::Status::Up => "up",
        ipc::Status::Down => "down",
        ipc::Status::Removed => "removed",
    }
}
