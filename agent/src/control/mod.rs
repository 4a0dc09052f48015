//! The control socket: JSON lines (`ipc`'s codec, requests and replies) for the
//! agent's own CLI. Only root or members of the configured group are served.
//!
//! Each connection is read by its own task and every request is decoded here, at
//! the edge, into the typed [`protocol::Request`] and handed to the daemon's state
//! task as a [`Call`].

pub mod protocol;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipc::server::{PeerCred, Server, ServerConfig, Stream};
use ipc::{JsonLines, MAX_LINE_LEN};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use protocol::{Envelope, Reply};

/// One request from a client and where its reply goes.
pub struct Call {
    pub env: Envelope,
    pub reply: oneshot::Sender<Reply>,
    /// It already waited for the engine once (see `wait_ms`).
    pub waited: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Names the path and what to do.
    #[error(transparent)]
    Server(#[from] ipc::server::ServerError),
    #[error("control socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control group {0:?} does not exist")]
    NoGroup(String),
    #[error("look up control group {group:?}: {source}")]
    Group { group: String, source: nix::Error },
}

/// Who may talk to the agent.
#[derive(Clone, Debug)]
pub struct Access {
    pub gid: Option<u32>,
}

impl Access {
    pub fn new(group: Option<&str>) -> Result<Self, ControlError> {
        let Some(group) = group else {
            return Ok(Access { gid: None });
        };
        let g = nix::unistd::Group::from_name(group)
            .map_err(|source| ControlError::Group {
                group: group.to_string(),
                source,
            })?
            .ok_or_else(|| ControlError::NoGroup(group.to_string()))?;
        Ok(Access {
            gid: Some(g.gid.as_raw()),
        })
    }

    /// Root, or a process whose primary or supplementary groups hold the group.
    /// Supplementary groups come from `/proc/<pid>/status` because the socket's
    /// peer credentials carry only the primary gid.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 {
            return true;
        }
        let Some(want) = self.gid else {
            return false;
        };
        if gid == want {
            return true;
        }
        let Some(pid) = pid else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Groups:").map(str::to_string))
            })
            .map(|groups| {
                groups
                    .split_whitespace()
                    .any(|g| g.parse::<u32>().ok() == Some(want))
            })
            .unwrap_or(false)
    }
}

/// Control clients served at once; more are told "busy" and closed, so a runaway
/// script cannot exhaust the agent.
const MAX_CLIENTS: usize = 64;
/// A connection that sends no request for this long is closed, so idle clients
/// cannot hold every slot and lock out `agent health`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The start of the error of a client refused over the cap; the CLI retries on it.
pub const BUSY_PREFIX: &str = "busy:";

/// Binds the socket (`ipc`'s server: a live socket is never taken over, anything
/// that is not a socket is refused and left alone, a stale one is replaced), mode
/// 0660 and the control group applied before anyone can connect.
pub fn bind(path: &Path, group: Option<&str>) -> Result<Server, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let cfg = ServerConfig {
        path: path.to_path_buf(),
        mode: 0o660,
        group: group.map(str::to_string),
        max_clients: MAX_CLIENTS,
        idle_timeout: Some(IDLE_TIMEOUT),
    };
    Ok(Server::bind(&cfg)?)
}

/// Serves clients until shutdown; returns once every connection has ended and the
/// socket file is removed.
pub async fn serve(
    server: Server,
    access: Access,
    calls: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) {
    let stop = shutdown.clone();
    server
        .serve(
            move |stream, peer| {
                connection(stream, peer, access.clone(), calls.clone(), stop.clone())
            },
            shutdown,
        )
        .await;
}

async fn connection(
    stream: Stream,
    peer: PeerCred,
    access: Access,
    calls: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) {
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, JsonLines::new(MAX_LINE_LEN));
    let mut writer = FramedWrite::new(w, JsonLines::default());
    if !access.allows(peer.uid, peer.gid, peer.pid) {
        let who = format!("uid {} gid {}", peer.uid, peer.gid);
        warn!(peer = %who, "refused a control client");
        // Answer the first request with its own id so the client shows the reason
        // instead of a bare "connection closed"; then close.
        let id = match tokio::time::timeout(Duration::from_secs(2), reader.next()).await {
            Ok(Some(Ok(line))) => match Envelope::decode(&line) {
                Ok(e) => e.id,
                Err((_, id)) => id,
            },
            _ => None,
        };
        let _ = writer
            .send(&Reply::err(
                id,
                format!(
                    "permission denied: {who} is neither root nor in the agent's control group"
                ),
            ))
            .await;
        return;
    }
    loop {
        let line = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = reader.next() => l,
        };
        let line = match line {
            None => return,
            Some(Ok(l)) => l,
            Some(Err(ipc::CodecError::Io(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
                debug!("closing an idle control connection");
                return;
            }
            Some(Err(e)) => {
                let _ = writer.send(&Reply::err(None, e.to_string())).await;
                return;
            }
        };
        let reply = match Envelope::decode(&line) {
            Err((e, id)) => Reply::err(id, e.to_string()),
            Ok(env) => dispatch(env, &calls, &shutdown).await,
        };
        if writer.send(&reply).await.is_err() {
            return;
        }
    }
}

/// Hands one request to the state task and waits for its reply.
async fn dispatch(
    env: Envelope,
    calls: &mpsc::Sender<Call>,
    shutdown: &CancellationToken,
) -> Reply {
    let id = env.id.clone();
    let (tx, rx) = oneshot::channel();
    let call = Call {
        env,
        reply: tx,
        waited: false,
    };
    if calls.send(call).await.is_err() {
        return Reply::err(id, "the agent is shutting down");
    }
    tokio::select! {
        _ = shutdown.cancelled() => Reply::err(id, "the agent is shutting down"),
        r = rx => r.unwrap_or_else(|_| Reply::err(id, "the agent dropped the request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        let none = Access { gid: None };
        assert!(none.allows(0, 0, None));
        assert!(!none.allows(1000, 1000, None));
        let g = Access { gid: Some(4242) };
        assert!(g.allows(1000, 4242, None));
        assert!(!g.allows(1000, 1000, None));
        // Our own process: its supplementary groups are read from /proc.
        let me = std::process::id() as i32;
        let groups = nix::unistd::getgroups().unwrap();
        if let Some(extra) = groups.first() {
            let g = Access {
                gid: Some(extra.as_raw()),
            };
            assert!(g.allows(1000, u32::MAX, Some(me)));
        }
    }
}
