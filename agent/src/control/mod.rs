//! The control socket: JSON lines (`ipc`'s codec, requests and replies) for the
//! agent's own CLI. Only root or members of the configured group are served.
//!
//! Each connection is read by its own task and every request is decoded here, at
//! the edge, into the typed [`protocol::Request`] and handed to the daemon's state
//! task as a [`Call`].

pub mod protocol;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipc::{JsonLines, MAX_LINE_LEN};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    #[error("another agent is already serving {0}: stop it first")]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket: it was left as it is; remove it or choose another --control-socket"
    )]
    NotASocket(PathBuf),
    #[error(
        "{0} is a socket that accepts connections but did not answer in time: another agent may be starting; stop it or choose another --control-socket"
    )]
    Busy(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
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

/// Binds the socket: a stale file (nobody listening) is replaced, a live socket is
/// never stolen. Mode 0660, group set when one is configured.
pub async fn bind(path: &Path, access: &Access) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            return Err(ControlError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => {
            match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await {
                Ok(Ok(_)) => return Err(ControlError::InUse(path.to_path_buf())),
                Err(_) => return Err(ControlError::Busy(path.to_path_buf())),
                // Refused: nobody listens; a stale file of an earlier run.
                Ok(Err(_)) => {
                    info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(io)?;
                }
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    if let Some(gid) = access.gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io(std::io::Error::from(e)))?;
    }
    Ok(listener)
}

/// Accepts clients until shutdown, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    access: Access,
    calls: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        warn!(max = MAX_CLIENTS, "too many control clients; refusing one");
                        tokio::spawn(refuse_busy(stream));
                        continue;
                    };
                    let (access, calls, shutdown) = (access.clone(), calls.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        connection(stream, access, calls, shutdown).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Err(e) = std::fs::remove_file(&path) {
        debug!(path = %path.display(), error = %e, "control socket already gone");
    }
}

/// Control clients served at once; more are told so and closed, so a runaway
/// script cannot exhaust the agent.
const MAX_CLIENTS: usize = 64;
/// A connection that sends no request for this long is closed, so idle clients
/// cannot hold every slot and lock out `agent health`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The start of the error of a client refused over the cap; the CLI retries on it.
pub const BUSY_PREFIX: &str = "busy:";

async fn refuse_busy(stream: UnixStream) {
    let (_r, w) = stream.into_split();
    let mut writer = FramedWrite::new(w, JsonLines::default());
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        writer.send(&Reply::err(
            None,
            format!("{BUSY_PREFIX} the agent is serving {MAX_CLIENTS} control clients already; try again"),
        )),
    )
    .await;
}

async fn connection(
    stream: UnixStream,
    access: Access,
    calls: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) {
    let cred = stream.peer_cred();
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, JsonLines::new(MAX_LINE_LEN));
    let mut writer = FramedWrite::new(w, JsonLines::default());
    let allowed = match &cred {
        Ok(c) => access.allows(c.uid(), c.gid(), c.pid()),
        Err(_) => false,
    };
    if !allowed {
        let who = cred
            .map(|c| format!("uid {} gid {}", c.uid(), c.gid()))
            .unwrap_or_else(|e| format!("unknown peer ({e})"));
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
            l = tokio::time::timeout(IDLE_TIMEOUT, reader.next()) => match l {
                Ok(l) => l,
                Err(_) => {
                    debug!("closing an idle control connection");
                    return;
                }
            },
        };
        let line = match line {
            None => return,
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                let _ = writer.send(&Reply::err(None, e.to_string())).await;
                return;
            }
        };
        let reply = match Envelope::decode(&line) {
            Err((e, id)) => Reply::err(id, e.to_string()),
            Ok(env) => {
                let id = env.id.clone();
                let (tx, rx) = oneshot::channel();
                let call = Call {
                    env,
                    reply: tx,
                    waited: false,
                };
                if calls.send(call).await.is_err() {
                    Reply::err(id, "the agent is shutting down")
                } else {
                    tokio::select! {
                        _ = shutdown.cancelled() => Reply::err(id, "the agent is shutting down"),
                        r = rx => r.unwrap_or_else(|_| Reply::err(id, "the agent dropped the request")),
                    }
                }
            }
        };
        if writer.send(&reply).await.is_err() {
            return;
        }
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
