//! `netmon health`: connect, expect a `network_discovery` within the timeout.

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use ipc::{ClientError, Connection, EventKind};

/// Why a health check failed; the text is the one line printed.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("no socket at {0}: netmon is not running (or uses another --socket)")]
    NoSocket(String),
    #[error(
        "stale socket {0}: nothing is listening (netmon died; it replaces the file when it starts)"
    )]
    Stale(String),
    #[error("permission denied on {0}: run as root or as a member of the socket's group")]
    Permission(String),
    #[error("cannot connect to {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    #[error("no discovery from {path} within {timeout:?}: netmon is stuck or overloaded")]
    Timeout { path: String, timeout: Duration },
    #[error("bad reply from {path}: {reason}")]
    BadReply { path: String, reason: String },
}

/// Returns the number of interfaces and the instance id on success.
pub async fn check(path: &Path, timeout: Duration) -> Result<(usize, String), Unhealthy> {
    let p = path.display().to_string();
    let attempt = async {
        let mut conn = Connection::connect(path).await.map_err(|e| match e {
            ClientError::Connect { source, .. } => match source.kind() {
                ErrorKind::NotFound => Unhealthy::NoSocket(p.clone()),
                ErrorKind::ConnectionRefused => Unhealthy::Stale(p.clone()),
                ErrorKind::PermissionDenied => Unhealthy::Permission(p.clone()),
                _ => Unhealthy::Connect {
                    path: p.clone(),
                    error: source,
                },
            },
            other => Unhealthy::BadReply {
                path: p.clone(),
                reason: other.to_string(),
            },
        })?;
        match conn.next_event().await {
            Ok(Some(ev)) => match ev.kind {
                EventKind::NetworkDiscovery(d) => {
                    Ok((d.interfaces.len(), ev.instance.unwrap_or_default()))
                }
                _ => Err(Unhealthy::BadReply {
                    path: p.clone(),
                    reason: format!("first event is {}, not network_discovery", ev.type_name()),
                }),
            },
            Ok(None) => Err(Unhealthy::BadReply {
                path: p.clone(),
                reason: "connection closed before the discovery".into(),
            }),
            Err(e) => Err(Unhealthy::BadReply {
                path: p.clone(),
                reason: e.to_string(),
            }),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Unhealthy::Timeout {
            path: p.clone(),
            timeout,
        }),
    }
}
