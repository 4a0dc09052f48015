//! Clients of a JSON-lines socket (netmon's, or the agent's control socket).
//!
//! [`Connection`] is one connection, used step by step (CLIs, health probes).
//! [`Client`] keeps a connection up in the background: it waits for the socket
//! file with inotify rather than polling, reconnects with capped jittered backoff,
//! and forwards events over a channel.
//!
//! Over 400 lines with its tests (a quarter of the file).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::{CodecError, JsonLines, MAX_LINE_LEN};
use crate::event::Event;
use crate::request::{Reply, Request, ServerMessage};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection closed by the server")]
    Closed,
    #[error("bad message from the server: {0}")]
    BadMessage(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

type Reader = FramedRead<tokio::net::unix::OwnedReadHalf, JsonLines>;
type Writer = FramedWrite<tokio::net::unix::OwnedWriteHalf, JsonLines>;

/// One connection, driven by its owner.
pub struct Connection {
    reader: Reader,
    writer: Writer,
    /// Events read while waiting for a reply, handed out by `next_event` first.
    pending: VecDeque<Event>,
    next_id: u64,
}

impl Connection {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        let (r, w) = stream.into_split();
        Self {
            reader: FramedRead::new(r, JsonLines::new(MAX_LINE_LEN * 64)),
            writer: FramedWrite::new(w, JsonLines::default()),
            pending: VecDeque::new(),
            next_id: 1,
        }
    }

    async fn read_message(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        let Some(line) = self.reader.next().await.transpose()? else {
            return Ok(None);
        };
        ServerMessage::parse(&line).map(Some).map_err(|e| {
            ClientError::BadMessage(format!(
                "{e}: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ))
        })
    }

    /// The next event; `None` when the server closed the connection.
    /// Replies that nobody waits for are dropped.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(Some(e));
        }
        loop {
            match self.read_message().await? {
                None => return Ok(None),
                Some(ServerMessage::Event(e)) => return Ok(Some(e)),
                Some(ServerMessage::Reply(_)) => continue,
            }
        }
    }

    /// Sends a request (an `id` is added when it has none) and waits for its reply,
    /// keeping events that arrive meanwhile for `next_event`.
    pub async fn request(&mut self, mut req: Request) -> Result<Reply, ClientError> {
        let id = req.id.clone().unwrap_or_else(|| {
            let id = Value::from(self.next_id);
            self.next_id += 1;
            id
        });
        req.id = Some(id.clone());
        self.writer.send(&req).await?;
        loop {
            match self.read_message().await? {
                None => return Err(ClientError::Closed),
                Some(ServerMessage::Event(e)) => self.pending.push_back(e),
                Some(ServerMessage::Reply(r)) if r.id.as_ref() == Some(&id) => return Ok(r),
                Some(ServerMessage::Reply(_)) => continue,
            }
        }
    }
}

/// Settings of the reconnecting client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub path: PathBuf,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the background client reports.
// Events are the common case and are moved once into the channel: boxing them would
// cost an allocation each and change the public shape for the agent.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Connected,
    Event(Event),
    Disconnected { reason: String },
}

/// Handle of a background client. Cloneable. It only receives: nothing sends
/// requests through it (one-off requests use a [`Connection`]).
#[derive(Clone)]
pub struct Client {
    connected: Arc<AtomicBool>,
}

impl Client {
    /// Starts the background task. Events arrive on the returned receiver, which is
    /// bounded: a consumer that stops reading stalls this client, not the server
    /// (which will disconnect it and a fresh discovery follows the reconnect).
    pub fn spawn(
        config: ClientConfig,
        shutdown: CancellationToken,
    ) -> (Client, mpsc::Receiver<ClientEvent>) {
        let (tx, rx) = mpsc::channel(1024);
        let client = Client {
            connected: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(run(config, client.clone(), tx, shutdown));
        (client, rx)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

async fn run(
    config: ClientConfig,
    client: Client,
    events: mpsc::Sender<ClientEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = crate::Backoff::new(config.min_backoff, config.max_backoff);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if !config.path.exists() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wait_for_file(&config.path, config.max_backoff) => {}
            }
            continue;
        }
        let stream = match UnixStream::connect(&config.path).await {
            Ok(s) => s,
            Err(e) => {
                debug!(path = %config.path.display(), error = %e, "connect failed");
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        backoff.reset();
        info!(path = %config.path.display(), "connected");
        client.connected.store(true, Ordering::Release);
        let reason = serve(stream, &events, &shutdown).await;
        client.connected.store(false, Ordering::Release);
        if shutdown.is_cancelled() {
            return;
        }
        warn!(path = %config.path.display(), %reason, "disconnected");
        if events
            .send(ClientEvent::Disconnected { reason })
            .await
            .is_err()
        {
            return;
        }
        // A server that accepts and drops us at once must not be hammered.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Runs one connection until it ends; returns why it ended. Replies (to nothing
/// this client sent) are skipped.
async fn serve(
    stream: UnixStream,
    events: &mpsc::Sender<ClientEvent>,
    shutdown: &CancellationToken,
) -> String {
    let mut reader = FramedRead::new(stream, JsonLines::new(MAX_LINE_LEN * 64));
    if events.send(ClientEvent::Connected).await.is_err() {
        return "consumer gone".into();
    }
    loop {
        let line = tokio::select! {
            _ = shutdown.cancelled() => return "shutdown".into(),
            line = reader.next() => line,
        };
        let line = match line {
            None => return "closed by the server".into(),
            Some(Err(e)) => return format!("read: {e}"),
            Some(Ok(l)) => l,
        };
        match ServerMessage::parse(&line) {
            Ok(ServerMessage::Event(e)) => {
                if events.send(ClientEvent::Event(e)).await.is_err() {
                    return "consumer gone".into();
                }
            }
            Ok(ServerMessage::Reply(_)) => {}
            Err(e) => warn!(error = %e, "ignoring a line that is not a message"),
        }
    }
}

/// Waits until `path` exists or `limit` has passed, using inotify on the nearest
/// directory that exists (the socket's own, or an ancestor while that one is missing:
/// systemd removes netmon's RuntimeDirectory when netmon stops). When nothing can be
/// watched it sleeps instead: it never returns early without the file, so a caller's
/// retry loop cannot spin.
pub async fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    // The directory watched (or that could not be watched: then polled).
    let mut watching: Option<(PathBuf, Option<DirWatch>)> = None;
    while !path.exists() && tokio::time::Instant::now() < deadline {
        let dir = nearest_existing_dir(path);
        if watching.as_ref().map(|(d, _)| d) != Some(&dir) {
            let w = DirWatch::new(&dir);
            watching = Some((dir, w));
            // The file may have appeared between the check and the watch.
            continue;
        }
        let woke = match watching.as_mut().and_then(|(_, w)| w.as_mut()) {
            Some(w) => tokio::time::timeout_at(deadline, w.rx.recv()).await,
            None => {
                let nap = tokio::time::Instant::now() + Duration::from_millis(500);
                tokio::time::sleep_until(nap.min(deadline)).await;
                Ok(Some(()))
            }
        };
        match woke {
            Err(_) => return,
            // The watcher died: poll from now on.
            Ok(None) => {
                if let Some((_, w)) = watching.as_mut() {
                    *w = None;
                }
            }
            Ok(Some(())) => {}
        }
    }
}

/// The path's parent, or its nearest ancestor that exists.
fn nearest_existing_dir(path: &Path) -> PathBuf {
    let mut dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    while !dir.is_dir() {
        match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => dir = p,
            None => return PathBuf::from("/"),
        }
    }
    dir.to_path_buf()
}

/// An inotify watch on one directory; every change in it wakes `rx`.
struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
}

impl DirWatch {
    fn new(dir: &Path) -> Option<DirWatch> {
        use notify::{RecursiveMode, Watcher};
        let (tx, rx) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| debug!(error = %e, "no inotify watcher; polling"))
        .ok()?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| debug!(dir = %dir.display(), error = %e, "cannot watch; polling"))
            .ok()?;
        Some(DirWatch {
            _watcher: watcher,
            rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn client_waits_for_socket_then_gets_events_and_replies() {
        let dir = std::env::temp_dir().join(format!("ipc-test-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let shutdown = CancellationToken::new();
        let (client, mut rx) = Client::spawn(ClientConfig::new(&path), shutdown.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!client.is_connected());

        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(
                b"{\"type\":\"network_change\",\"seq\":1,\"data\":{\"interface\":\"e1\"}}\n",
            )
            .await
            .unwrap();
            // A reply to nothing the client asked is skipped, not an event.
            w.write_all(b"{\"success\":true,\"id\":\"c1\"}\n")
                .await
                .unwrap();
            w.write_all(
                b"{\"type\":\"network_change\",\"seq\":2,\"data\":{\"interface\":\"e1\"}}\n",
            )
            .await
            .unwrap();
            // Keep the connection open until the test ends.
            let _ = BufReader::new(r).lines().next_line().await;
        });

        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert!(matches!(first, Some(ClientEvent::Connected)));
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        match ev {
            Some(ClientEvent::Event(e)) => assert_eq!(e.seq, Some(1)),
            other => panic!("expected an event, got {other:?}"),
        }
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        match ev {
            Some(ClientEvent::Event(e)) => assert_eq!(e.seq, Some(2)),
            other => panic!("expected the second event, got {other:?}"),
        }
        assert!(client.is_connected());
        shutdown.cancel();
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn waiting_for_a_file_in_a_missing_directory_neither_spins_nor_misses_it() {
        let root = std::env::temp_dir().join(format!("ipc-wait-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&root).unwrap();
        let path = root.join("gone/deeper/s.sock");
        // Nothing appears: it returns at the limit, not before.
        let t = std::time::Instant::now();
        wait_for_file(&path, Duration::from_millis(400)).await;
        assert!(
            t.elapsed() >= Duration::from_millis(390),
            "{:?}",
            t.elapsed()
        );
        // The directories and the file appear later: it notices within moments.
        let p2 = path.clone();
        let maker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::create_dir_all(p2.parent().unwrap()).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(&p2, b"").unwrap();
            std::time::Instant::now()
        });
        wait_for_file(&path, Duration::from_secs(20)).await;
        let made = maker.await.unwrap();
        assert!(path.exists());
        assert!(
            made.elapsed() < Duration::from_secs(2),
            "noticed late: {:?}",
            made.elapsed()
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn connection_request_keeps_interleaved_events() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut conn = Connection::from_stream(a);
        let server = tokio::spawn(async move {
            let (r, mut w) = b.into_split();
            let mut lines = BufReader::new(r).lines();
            let req: Request =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            w.write_all(b"{\"type\":\"network_change\",\"data\":{\"interface\":\"x\"}}\n")
                .await
                .unwrap();
            w.write_all(b"{\"success\":true,\"id\":\"other\"}\n")
                .await
                .unwrap();
            w.write_all(&JsonLines::to_line(&Reply::ok(req.id)).unwrap())
                .await
                .unwrap();
        });
        let r = conn.request(Request::new("ping")).await.unwrap();
        assert!(r.success);
        let e = conn.next_event().await.unwrap().unwrap();
        assert_eq!(e.type_name(), "network_change");
        server.await.unwrap();
        assert!(conn.next_event().await.unwrap().is_none());
    }
}
