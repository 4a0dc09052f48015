//! The Engine API adapter: the only module that names bollard.
//!
//! The client is created lazily and dropped when the engine becomes unreachable, so an
//! engine that is down at start, restarts, or is upgraded is picked up again (with a
//! fresh API version negotiation) on the next call, without the agent restarting.
//!
//! Split by concern: `convert.rs` (bollard models to ours), `observe.rs` (reads),
//! `networks.rs` (network changes, connect/disconnect), `containers.rs` (container
//! changes, events), `seam.rs` (the [`Engine`](super::Engine) implementation).

mod containers;
mod convert;
mod details;
mod networks;
mod observe;
mod seam;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::errors::Error as BError;

use super::{CallCounts, EngineError, EngineVersion};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Per-request timeout (seconds): a wedged engine must not stall a reconcile forever.
const REQUEST_TIMEOUT: u64 = 120;
/// Containers inspected at once while observing.
const OBSERVE_PARALLELISM: usize = 8;

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    network_create: AtomicU64,
    network_remove: AtomicU64,
    connect: AtomicU64,
    disconnect: AtomicU64,
    container_changes: AtomicU64,
    mac_checks: AtomicU64,
    mac_sets: AtomicU64,
    renames: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    socket: String,
    client: tokio::sync::Mutex<Option<bollard::Docker>>,
    counters: Counters,
}

/// A handle on the engine; cheap to clone, shared counters.
#[derive(Clone)]
pub struct Docker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docker")
            .field("socket", &self.inner.socket)
            .finish()
    }
}

/// Maps a bollard error to what it means for us.
fn classify(socket: &str, what: &str, e: BError) -> EngineError {
    match e {
        BError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => EngineError::NotFound(format!("{what}: {message}")),
            409 => EngineError::Conflict(format!("{what}: {message}")),
            401 => EngineError::Permission(format!("{what}: {message}")),
            status => EngineError::Api {
                status,
                message: format!("{what}: {message}"),
            },
        },
        BError::IOError { err } if err.kind() == std::io::ErrorKind::PermissionDenied => {
            EngineError::Permission(format!("{what}: {socket}: {err}"))
        }
        BError::SocketNotFoundError(_)
        | BError::IOError { .. }
        | BError::HyperResponseError { .. }
        | BError::HttpClientError { .. }
        | BError::RequestTimeoutError => EngineError::Unreachable {
            host: socket.to_string(),
            reason: format!("{what}: {e}"),
        },
        other => EngineError::Protocol(format!("{what}: {other}")),
    }
}

/// The `unix://` path from a host URL.
fn socket_path(host: &str) -> Result<String, EngineError> {
    if let Some(p) = host.strip_prefix("unix://") {
        return Ok(p.to_string());
    }
    if host.starts_with('/') {
        return Ok(host.to_string());
    }
    Err(EngineError::BadHost(host.to_string()))
}

impl Docker {
    /// `docker_host` (`unix:///path`), else `DOCKER_HOST`, else the local socket. Does
    /// not touch the engine: the first call connects and negotiates the API version.
    pub fn new(docker_host: Option<&str>) -> Result<Docker, EngineError> {
        let env = std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty());
        let host = docker_host
            .map(str::to_string)
            .or(env)
            .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
        Ok(Docker {
            inner: Arc::new(Inner {
                socket: socket_path(&host)?,
                client: tokio::sync::Mutex::new(None),
                counters: Counters::default(),
            }),
        })
    }

    /// The socket path in use.
    pub fn socket(&self) -> &str {
        &self.inner.socket
    }

    async fn client(&self) -> Result<bollard::Docker, EngineError> {
        let mut slot = self.inner.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let socket = &self.inner.socket;
        let c = bollard::Docker::connect_with_unix(
            socket,
            REQUEST_TIMEOUT,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| classify(socket, "connect", e))?;
        bump(&self.inner.counters.reads);
        let c = c
            .negotiate_version()
            .await
            .map_err(|e| classify(socket, "negotiate the API version", e))?;
        let v = c.client_version();
        tracing::info!(socket = %socket, api = %format!("{}.{}", v.major_version, v.minor_version), "engine connected");
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Classifies an error and forgets the client when the engine is gone.
    async fn fail(&self, what: &str, e: BError) -> EngineError {
        let err = classify(&self.inner.socket, what, e);
        if err.is_unreachable() {
            *self.inner.client.lock().await = None;
        }
        err
    }

    pub(crate) fn count_mac_check(&self) {
        bump(&self.inner.counters.mac_checks);
    }

    pub(crate) fn count_mac_set(&self) {
        bump(&self.inner.counters.mac_sets);
    }

    pub(crate) fn count_rename(&self) {
        bump(&self.inner.counters.renames);
    }

    /// Cumulative calls made through this handle (and its clones).
    pub fn counts(&self) -> CallCounts {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CallCounts {
            reads: g(&c.reads),
            network_create: g(&c.network_create),
            network_remove: g(&c.network_remove),
            connect: g(&c.connect),
            disconnect: g(&c.disconnect),
            container_changes: g(&c.container_changes),
            mac_checks: g(&c.mac_checks),
            mac_sets: g(&c.mac_sets),
            renames: g(&c.renames),
        }
    }

    pub async fn version(&self) -> Result<EngineVersion, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        match c.version().await {
            Ok(v) => Ok(EngineVersion {
                version: v.version.unwrap_or_default(),
                api_version: v.api_version.unwrap_or_default(),
            }),
            Err(e) => Err(self.fail("version", e).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_urls() {
        assert_eq!(
            socket_path("unix:///run/docker.sock").unwrap(),
            "/run/docker.sock"
        );
        assert_eq!(socket_path("/run/x.sock").unwrap(), "/run/x.sock");
        assert!(matches!(
            socket_path("tcp://1.2.3.4:2375"),
            Err(EngineError::BadHost(_))
        ));
    }

    #[test]
    fn status_codes_map_to_meaning() {
        let e = |status_code| BError::DockerResponseServerError {
            status_code,
            message: "m".into(),
        };
        assert!(matches!(
            classify("s", "w", e(404)),
            EngineError::NotFound(_)
        ));
        assert!(matches!(
            classify("s", "w", e(409)),
            EngineError::Conflict(_)
        ));
        assert!(matches!(
            classify("s", "w", e(500)),
            EngineError::Api { status: 500, .. }
        ));
        assert!(classify("s", "w", BError::SocketNotFoundError("s".into())).is_unreachable());
    }
}
