//! The Unix-socket server both daemons use (netmon's event socket, the agent's
//! control socket).
//!
//! - [`Server::bind`] binds on a temporary name in the socket's directory, applies
//!   mode and group there and renames it into place, so nobody connects before the
//!   permissions are final. A live socket at the path is never taken over; anything
//!   that is not a socket (file, symlink, directory) is refused and left untouched; a
//!   stale socket (nobody listening) is replaced.
//! - [`Server::serve`] runs one handler task per client, with the peer's credentials,
//!   up to `max_clients`; the client over the cap gets one JSON-line "busy" reply
//!   and is closed. Reads that wait longer than `idle_timeout` fail with `TimedOut`.
//! - On shutdown it stops accepting, removes the socket file if it is still ours
//!   (same device and inode), and waits for every handler to finish (like
//!   mini-redis's `server.rs`, with a task tracker instead of a channel).

mod bind;
mod stream;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use stream::{IdleRead, Stream};

use crate::{JsonLines, Reply};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another process is listening on {0}; stop it first, or choose another socket path")]
    InUse(PathBuf),
    #[error("socket directory {0} does not exist; create it or choose another socket path")]
    NoDir(PathBuf),
    #[error(
        "{path} exists and is not a socket; it was left as it is: remove it or choose another socket path"
    )]
    NotASocket { path: PathBuf },
    #[error("permission denied creating {path}: run as a user who may write to {dir}")]
    Permission { path: PathBuf, dir: PathBuf },
    #[error("unknown group {0:?} for the socket: create it or name an existing group")]
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

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub path: PathBuf,
    /// Permission bits of the socket file (e.g. 0o660).
    pub mode: u32,
    /// Group owning the socket file, so its members may connect.
    pub group: Option<String>,
    /// Clients served at once; the next one is told "busy" and closed.
    pub max_clients: usize,
    /// A read that waits this long without a byte fails with `TimedOut`, so idle
    /// clients cannot hold every slot. `None` for subscribers that never send.
    pub idle_timeout: Option<Duration>,
}

impl ServerConfig {
    /// Mode 0660, no group, 64 clients, no idle timeout.
    pub fn new(path: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            path: path.into(),
            mode: 0o660,
            group: None,
            max_clients: 64,
            idle_timeout: None,
        }
    }
}

/// Who is on the other end (SO_PEERCRED), for the handler's own access checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// A bound socket. The file is removed when the server ends or is dropped, if the
/// path still names the socket we bound.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    bound: bind::Bound,
    max_clients: usize,
    idle_timeout: Option<Duration>,
}

/// How long the client over the cap is given to take its "busy" line.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

impl Server {
    /// Binds `cfg.path` (see the module documentation for what is refused). Call it
    /// inside a tokio runtime.
    pub fn bind(cfg: &ServerConfig) -> Result<Server, ServerError> {
        let (listener, bound) = bind::bind(cfg)?;
        Ok(Server {
            listener,
            bound,
            max_clients: cfg.max_clients.max(1),
            idle_timeout: cfg.idle_timeout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.bound.path
    }

    /// Accepts clients until `shutdown`, each served by `handler(stream, peer)` in
    /// its own task. Handlers should watch `shutdown` too: this returns once the
    /// listener is closed, the socket file removed (if still ours) and every handler
    /// has returned.
    pub async fn serve<H, F>(self, handler: H, shutdown: CancellationToken)
    where
        H: Fn(Stream, PeerCred) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            listener,
            mut bound,
            max_clients,
            idle_timeout,
        } = self;
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(max_clients));
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        warn!(path = %bound.path.display(), error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let peer = match stream.peer_cred() {
                Ok(c) => PeerCred {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    warn!(error = %e, "cannot read the peer's credentials; connection closed");
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(max_clients, uid = peer.uid, pid = ?peer.pid, "client cap reached; refusing a client");
                tracker.spawn(refuse_busy(stream, max_clients));
                continue;
            };
            debug!(uid = peer.uid, pid = ?peer.pid, "client connected");
            let task = handler(Stream::new(stream, idle_timeout), peer);
            tracker.spawn(async move {
                task.await;
                drop(slot);
            });
        }
        drop(listener);
        bound.remove();
        tracker.close();
        tracker.wait().await;
    }
}

/// The line a client over the cap reads before it is closed.
pub fn busy_reply(max_clients: usize) -> Reply {
    Reply::err(
        None,
        format!("busy: {max_clients} clients connected (the limit); try again"),
    )
}

async fn refuse_busy(mut stream: UnixStream, max_clients: usize) {
    let Ok(line) = JsonLines::to_line(&busy_reply(max_clients)) else {
        return;
    };
    let write = async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(REFUSAL_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        debug!(error = %e, "could not tell a refused client why");
    }
}
