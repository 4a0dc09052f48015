//! The control-plane link: the agent driven from the cloud over mutual TLS, speaking the
//! field's protocol (Engine.IO v4 / Socket.IO v5 on a direct WebSocket; see
//! shared/design/CONTROL-PLANE.md). Self-contained: the daemon hands in a [`Backend`] that
//! does the work of each [`Command`], a `watch` sender for the [`LinkStatus`] it shows in
//! `agent status`, and a shutdown token.
//!
//! Layout: `packet` (wire codec), `fields`+`command` (requests as types), `period` (time
//! on the wire), `tls` (certificates, roots, what a TLS failure means), `session` (one
//! connection), `link` (the reconnect loop and status), `dispatch` (acks, per-name order),
//! `host` (the heartbeat's numbers) and `history` (the bounded usage history).

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod command;
pub mod dispatch;
pub mod enroll;
mod fields;
pub mod history;
pub mod host;
pub mod http;
mod link;
pub mod packet;
pub mod period;
mod serve;
mod session;
pub mod tls;
pub mod usage;

pub use command::{Command, CreateRuntime, Meta, Request, RunCommand, UploadFile, VnicRequest};
pub use fields::{ContractError, Kind};
pub use host::Heartbeat;
pub use link::{Endpoint, UrlError, run};
pub use period::{Period, parse_period};

/// Where and how to reach the cloud.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// `https://HOST[:PORT]` or `wss://HOST[:PORT]` (port 443 when absent).
    pub url: String,
    /// PEM client certificate (chain), re-read before every connection.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), re-read before every connection.
    pub key: PathBuf,
    /// PEM CA bundle the server is checked against; `None`: the system trust store.
    pub ca: Option<PathBuf>,
    /// Retry period until the first successful connect ever (the device waits to be linked).
    pub first_retry: Duration,
    /// Backoff after a link that was up: from `backoff_min` doubling to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Heartbeat period while connected.
    pub heartbeat_every: Duration,
    /// Bound on TCP + TLS + WebSocket + Socket.IO connect, each step.
    pub connect_timeout: Duration,
}

impl CloudConfig {
    /// The field's defaults: `~/.mtls/client.crt` and `~/.mtls/client.key`, system roots.
    pub fn new(url: impl Into<String>) -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        CloudConfig {
            url: url.into(),
            cert: home.join(".mtls/client.crt"),
            key: home.join(".mtls/client.key"),
            ca: None,
            first_retry: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the link is not up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhyNot {
    /// The first attempt is under way.
    Connecting,
    /// `url` is not an `https://` or `wss://` URL: fix the configuration.
    BadUrl,
    /// The certificate or key file is missing or unreadable.
    CredentialsUnusable,
    /// The key does not belong to the certificate.
    KeyMismatch,
    /// The server turned our certificate down and it is past its not-after.
    CertificateExpired,
    /// The server turned our certificate down (TLS alert, TLS 1.3 close, or `44`).
    CertificateRefused,
    /// The server's certificate is not trusted or not for this host name.
    ServerNotTrusted,
    /// Any other TLS failure (no common version or cipher, say).
    TlsError,
    /// No address, or no TCP connection (refused, timed out).
    ServerUnreachable,
    /// The server does not speak Engine.IO / Socket.IO as expected.
    ProtocolError,
    /// The link was up and went down (closed, dead: no ping in time).
    LinkLost,
    /// Shut down.
    Stopped,
}

impl std::fmt::Display for WhyNot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WhyNot::Connecting => "connecting",
            WhyNot::BadUrl => "bad cloud URL",
            WhyNot::CredentialsUnusable => "certificate or key unusable",
            WhyNot::KeyMismatch => "key does not match the certificate",
            WhyNot::CertificateExpired => "certificate expired",
            WhyNot::CertificateRefused => "certificate refused by the server",
            WhyNot::ServerNotTrusted => "server certificate not trusted",
            WhyNot::TlsError => "TLS error",
            WhyNot::ServerUnreachable => "server unreachable",
            WhyNot::ProtocolError => "protocol error",
            WhyNot::LinkLost => "link lost",
            WhyNot::Stopped => "stopped",
        })
    }
}

/// What `agent status` shows about the link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub url: String,
    pub connected: bool,
    /// `None` while connected.
    pub why_not: Option<WhyNot>,
    /// The last failure in words (kept after a reconnect for the record).
    pub detail: Option<String>,
    pub agent_id: Option<String>,
    pub certificate_serial: Option<String>,
    /// ISO 8601.
    pub certificate_not_after: Option<String>,
    /// TLS version of the current connection ("TLSv1_3").
    pub tls_version: Option<String>,
    /// Successful connects since start.
    pub connects: u64,
    /// ISO 8601 time of the last heartbeat sent.
    pub last_heartbeat: Option<String>,
    /// ISO 8601 time of the last change of `connected` / `why_not`.
    pub since: String,
}

impl LinkStatus {
    /// The state before the first attempt.
    pub fn initial(url: &str) -> Self {
        LinkStatus {
            url: url.to_owned(),
            connected: false,
            why_not: Some(WhyNot::Connecting),
            detail: None,
            agent_id: None,
            certificate_serial: None,
            certificate_not_after: None,
            tls_version: None,
            connects: 0,
            last_heartbeat: None,
            since: period::format_iso(std::time::SystemTime::now()),
        }
    }
}

/// The daemon's side of the link. Each call returns an owned future so the daemon can
/// answer from its own tasks (send the command down a channel with a oneshot for the
/// reply). The link serialises changing commands per runtime name before calling.
pub trait Backend: Send + Sync {
    /// Does `cmd` and returns the ack's result fields (`status`, ...); the link adds
    /// `action` and `correlation_id`.
    fn handle(&self, cmd: Command) -> BoxFuture<'static, Map<String, Value>>;
}
