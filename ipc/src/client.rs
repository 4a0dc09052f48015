//! Clients of a JSON-lines socket (netmon's, or the agent's control socket).
//!
//! [`Connection`] is one connection, used step by step (CLIs, health probes).
//! [`Client`] keeps a connection up in the background: it waits for the socket
//! file with inotify rather than polling, reconnects with capped jittered backoff,
//! and forwards events over a channel.

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
    let mut backoff = config.min_backoff;
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
                let delay = jitter(backoff);
                backoff = (backoff * 2).min(config.max_backoff);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        backoff = config.min_backoff;
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
            _ = tokio::time::sleep(jitter(config.min_backoff)) => {}
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

fn jitter(d: Duration) -> Duration {
    // 50% to 100% of the nominal delay, so many clients do not reconnect in step.
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

/// Waits until `path` exists, using inotify on its directory; returns after at most
/// `limit` anyway (a directory that does not exist yet cannot be watched).
pub async fn wait_for_file(path: &Path, limit: Duration) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::channel::<()>(4);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    });
    let _guard = match watcher {
        Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                debug!(dir = %dir.display(), error = %e, "cannot watch; will retry");
                None
            }
        },
        Err(e) => {
            debug!(error = %e, "no inotify watcher; will retry");
            None
        }
    };
    // The file may have appeared between the caller's check and the watch.
    if path.exists() {
        return;
    }
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            r = rx.recv() => {
                if r.is_none() || path.exists() {
                    return;
                }
            }
        }
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
