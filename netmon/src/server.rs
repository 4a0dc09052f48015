//! The Unix socket server: binds race-free, greets every client with a discovery,
//! fans events out through bounded per-client queues (a slow client is dropped, never
//! waited for), and answers `discover`, `get_status` and `ping`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use ipc::codec::CodecError;
use ipc::request::RequestError;
use ipc::{Discovery, Interface, JsonLines, MAX_LINE_LEN, PROTOCOL_VERSION, Reply, Request};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another netmon is listening on {0}; stop it first, or give this one another --socket")]
    InUse(PathBuf),
    #[error(
        "socket directory {0} does not exist; create it (systemd: RuntimeDirectory=netmon) or choose another --socket"
    )]
    NoDir(PathBuf),
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("permission denied creating {path}: run netmon as a user who may write to {dir}")]
    Permission { path: PathBuf, dir: PathBuf },
    #[error("unknown group {0:?} for --socket-group: create it or name an existing group")]
    UnknownGroup(String),
    #[error("look up group {group:?}: {error}")]
    GroupLookup { group: String, error: nix::Error },
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

/// Socket settings from the command line.
#[derive(Clone, Debug)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub mode: u32,
    pub group: Option<String>,
    pub client_queue: usize,
}

/// Counters and state shown by `get_status`.
#[derive(Serialize, Debug, Default, Clone)]
struct StatusCounters {
    events_sent: u64,
    resyncs: u64,
    netlink_overruns: u64,
}

/// What a client's writer task sends, in order.
enum Outgoing {
    /// An event whose `data` was encoded once for every client; the writer adds the
    /// per-connection `seq`.
    Event {
        kind: &'static str,
        data: Bytes,
    },
    Reply(Bytes),
    /// Write what is queued, then close (after an over-long line).
    Close,
}

struct ClientSlot {
    tx: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
}

struct HubInner {
    interfaces: BTreeMap<u32, Interface>,
    clients: HashMap<u64, ClientSlot>,
    next_client: u64,
    pending: Vec<String>,
    counters: StatusCounters,
}

/// State shared by the daemon loop (writer) and the connections (readers): the last
/// sent state of every interface and the connected clients. Every critical section
/// is short and never awaits.
pub struct Hub {
    instance: String,
    started: Instant,
    client_queue: usize,
    inner: Mutex<HubInner>,
}

impl Hub {
    pub fn new(
        instance: String,
        client_queue: usize,
        interfaces: BTreeMap<u32, Interface>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            instance,
            started: Instant::now(),
            client_queue: client_queue.max(2),
            inner: Mutex::new(HubInner {
                interfaces,
                clients: HashMap::new(),
                next_client: 1,
                pending: Vec::new(),
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
        for mut iface in changes {
            iface.timestamp = Some(now.clone());
            let data = match serde_json::to_vec(&iface) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    warn!(interface = %iface.interface, error = %e, "cannot encode an interface; skipped");
                    continue;
                }
            };
            if let Some(index) = iface.index {
                if iface.status == Some(ipc::Status::Removed) {
                    // Only forget it when the removed record is the one we hold: a
                    // rename sends `removed` for the old name and keeps the index.
                    if inner.interfaces.get(&index).map(|i| &i.interface) == Some(&iface.interface)
                    {
                        inner.interfaces.remove(&index);
                    }
                } else {
                    inner.interfaces.insert(index, iface.clone());
                }
            }
            inner.counters.events_sent += 1;
            let mut dropped = Vec::new();
            for (id, slot) in &inner.clients {
                let item = Outgoing::Event {
                    kind: "network_change",
                    data: data.clone(),
                };
                if slot.tx.try_send(item).is_err() {
                    dropped.push(*id);
                }
            }
            for id in dropped {
                if let Some(slot) = inner.clients.remove(&id) {
                    warn!(
                        client = id,
                        queue = self.client_queue,
                        "client is not reading; disconnected"
                    );
                    slot.cancel.cancel();
                }
            }
            // Only the primary address: an interface can carry thousands.
            // Plain values (an absent one is left out), not Debug text: journald
            // stores each field as typed (F_STATUS=down, never Some(Down)).
            info!(interface = %iface.interface, index = iface.index,
                  status = iface.status.map(status_word),
                  ipv4 = iface.ipv4_addresses.first().map(|a| display(a.address)),
                  ipv4_count = iface.ipv4_addresses.len(),
                  gateway = iface.gateway.map(display), "network_change");
        }
    }

    pub fn set_pending(&self, names: Vec<String>) {
        self.lock().pending = names;
    }

    pub fn count_resync(&self, overrun: bool) {
        let mut inner = self.lock();
        inner.counters.resyncs += 1;
        if overrun {
            inner.counters.netlink_overruns += 1;
        }
    }

    pub fn interface_count(&self) -> usize {
        self.lock().interfaces.len()
    }

    pub fn client_count(&self) -> usize {
        self.lock().clients.len()
    }

    fn discovery_data(inner: &HubInner) -> Option<Bytes> {
        let d = Discovery {
            interfaces: inner.interfaces.values().cloned().collect(),
            timestamp: Some(ipc::timestamp_now()),
        };
        match serde_json::to_vec(&d) {
            Ok(v) => Some(Bytes::from(v)),
            Err(e) => {
                warn!(error = %e, "cannot encode the discovery");
                None
            }
        }
    }

    /// Registers a client and queues its discovery under one lock, so it sees every
    /// change after the state it was shown, and none twice.
    fn register(&self) -> (u64, mpsc::Receiver<Outgoing>, CancellationToken) {
        let (tx, rx) = mpsc::channel(self.client_queue);
        let cancel = CancellationToken::new();
        let mut inner = self.lock();
        let id = inner.next_client;
        inner.next_client += 1;
        if let Some(data) = Self::discovery_data(&inner) {
            let _ = tx.try_send(Outgoing::Event {
                kind: "network_discovery",
                data,
            });
        }
        inner.clients.insert(
            id,
            ClientSlot {
                tx,
                cancel: cancel.clone(),
            },
        );
        (id, rx, cancel)
    }

    fn unregister(&self, id: u64) {
        self.lock().clients.remove(&id);
    }

    /// Queues a reply, and for `discover` the discovery right after it, atomically.
    fn reply(&self, id: u64, reply: &Reply, then_discovery: bool, then_close: bool) {
        let line = match JsonLines::to_line(reply) {
            Ok(l) => Bytes::from(l),
            Err(e) => {
                warn!(error = %e, "cannot encode a reply");
                return;
            }
        };
        let mut inner = self.lock();
        let discovery = if then_discovery {
            Self::discovery_data(&inner)
        } else {
            None
        };
        let Some(slot) = inner.clients.get(&id) else {
            return;
        };
        let mut ok = slot.tx.try_send(Outgoing::Reply(line)).is_ok();
        if let Some(data) = discovery {
            ok &= slot
                .tx
                .try_send(Outgoing::Event {
                    kind: "network_discovery",
                    data,
                })
                .is_ok();
        }
        if then_close {
            // Close even when the queue is full: the connection ends either way.
            let _ = slot.tx.try_send(Outgoing::Close);
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

    fn status(&self) -> serde_json::Value {
        let inner = self.lock();
        serde_json::json!({
            "instance": self.instance,
            "uptime_s": self.started.elapsed().as_secs(),
            "clients_connected": inner.clients.len(),
            "interfaces": inner.interfaces.len(),
            "events_sent": inner.counters.events_sent,
            "resyncs": inner.counters.resyncs,
            "netlink_overruns": inner.counters.netlink_overruns,
            "pending_changes": inner.pending,
        })
    }
}

/// The bound socket; the file is removed when this is dropped (if it is still ours).
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only remove the file if it is the one we bound: a successor may have
        // replaced it already.
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if Some((md.dev(), md.ino())) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |error| ServerError::Io {
        what,
        path: path.to_path_buf(),
        error,
    }
}

/// Binds the socket: refuses to steal a live one, replaces a stale one, and sets mode
/// and group on a temporary name before renaming it into place, so nobody can
/// connect before the permissions are right.
pub fn bind(cfg: &SocketConfig) -> Result<Server, ServerError> {
    let path = &cfg.path;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(ServerError::NoDir(dir));
    }
    let gid = match &cfg.group {
        None => None,
        Some(g) => match nix::unistd::Group::from_name(g) {
            Ok(Some(gr)) => Some(gr.gid),
            Ok(None) => return Err(ServerError::UnknownGroup(g.clone())),
            Err(error) => {
                return Err(ServerError::GroupLookup {
                    group: g.clone(),
                    error,
                });
            }
        },
    };
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(ServerError::NotASocket { path: path.clone() });
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ServerError::InUse(path.clone())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "replacing a stale socket (nothing listens on it)");
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(ServerError::Permission {
                        path: path.clone(),
                        dir,
                    });
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "existing socket is unusable; replacing it");
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "netmon.sock".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            ServerError::Permission {
                path: path.clone(),
                dir: dir.clone(),
            }
        } else {
            io_err("bind", &tmp)(e)
        }
    })?;
    let cleanup = |e: ServerError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))
        .map_err(io_err("set the mode of", &tmp))
        .map_err(cleanup)?;
    if let Some(gid) = gid {
        nix::unistd::chown(&tmp, None, Some(gid))
            .map_err(|e| io_err("set the group of", &tmp)(io::Error::from(e)))
            .map_err(cleanup)?;
    }
    std::fs::rename(&tmp, path)
        .map_err(io_err("move the socket into place at", path))
        .map_err(cleanup)?;
    let ino = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    info!(path = %path.display(), mode = format!("{:o}", cfg.mode), group = cfg.group.as_deref(), "listening");
    Ok(Server {
        listener,
        path: path.clone(),
        ino,
    })
}

impl Server {
    /// Accepts clients until `shutdown`.
    pub async fn serve(self, hub: Arc<Hub>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok((stream, _)) => {
                        tokio::spawn(connection(stream, hub.clone(), shutdown.clone()));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

fn event_head(buf: &mut BytesMut, kind: &str, instance: &str, seq: u64) {
    buf.put_slice(b"{\"type\":\"");
    buf.put_slice(kind.as_bytes());
    buf.put_slice(format!("\",\"version\":{PROTOCOL_VERSION},\"instance\":").as_bytes());
    // The instance id is hex, but encode it as JSON anyway.
    buf.put_slice(
        serde_json::to_string(instance)
            .unwrap_or_default()
            .as_bytes(),
    );
    buf.put_slice(format!(",\"seq\":{seq},\"data\":").as_bytes());
}

async fn connection(stream: UnixStream, hub: Arc<Hub>, shutdown: CancellationToken) {
    let (id, mut rx, cancel) = hub.register();
    debug!(client = id, "client connected");
    let (r, mut w) = stream.into_split();
    let instance = hub.instance().to_string();

    let writer = {
        let cancel = cancel.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut seq = 0u64;
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                    item = rx.recv() => item,
                };
                let Some(first) = item else { return };
                let mut close = false;
                let mut next = Some(first);
                // Gather what is already queued into one write.
                while let Some(item) = next {
                    match item {
                        Outgoing::Event { kind, data } => {
                            seq += 1;
                            event_head(&mut buf, kind, &instance, seq);
                            buf.put_slice(&data);
                            buf.put_slice(b"}\n");
                        }
                        Outgoing::Reply(line) => buf.put_slice(&line),
                        Outgoing::Close => {
                            close = true;
                            break;
                        }
                    }
                    if buf.len() > 256 * 1024 {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                let res = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                    r = w.write_all(&buf) => r,
                };
                buf.clear();
                if let Err(e) = res {
                    debug!(client = id, error = %e, "write failed");
                    return;
                }
                if close {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    };

    let reader = {
        let hub = hub.clone();
        async move {
            let mut lines = FramedRead::new(r, JsonLines::new(MAX_LINE_LEN));
            while let Some(item) = lines.next().await {
                match item {
                    Ok(line) => handle_line(&hub, id, &line),
                    Err(CodecError::LineTooLong { max }) => {
                        let reply = Reply::err(None, format!("Line too long (limit {max} bytes)"));
                        hub.reply(id, &reply, false, true);
                        // Stop reading; the writer closes after the reply.
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        debug!(client = id, error = %e, "read failed");
                        return;
                    }
                }
            }
        }
    };

    let writer = std::pin::pin!(writer);
    let mut writer = writer;
    tokio::select! {
        _ = &mut writer => {}
        _ = reader => {
            // The client stopped sending (it may only have half-closed): drop its
            // slot so the writer ends once the replies already queued are written.
            hub.unregister(id);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut writer).await;
        }
    }
    hub.unregister(id);
    debug!(client = id, "client disconnected");
}

fn handle_line(hub: &Hub, id: u64, line: &[u8]) {
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err((e, req_id)) => {
            let msg = match e {
                RequestError::InvalidJson => "Invalid JSON".to_string(),
                other => other.to_string(),
            };
            hub.reply(id, &Reply::err(req_id, msg), false, false);
            return;
        }
    };
    match req.command.as_str() {
        "discover" => hub.reply(id, &Reply::ok(req.id), true, false),
        "ping" => hub.reply(id, &Reply::ok(req.id), false, false),
        "get_status" => {
            let reply = Reply::ok(req.id).with("status", hub.status());
            hub.reply(id, &reply, false, false);
        }
        other => {
            let reply = Reply::err(req.id, format!("Unknown command: {other}"));
            hub.reply(id, &reply, false, false);
        }
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
