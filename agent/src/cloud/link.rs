//! The reconnect loop: one connection at a time, the host name resolved again and the
//! certificate pair re-read before every try; every `first_retry` until the first
//! successful connect ever, then the capped jittered backoff, reset on connect.

use std::sync::Arc;
use std::time::SystemTime;

use ipc::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatcher;
use super::host::HostProbe;
use super::period::format_iso;
use super::session::{self, Failure};
use super::tls::{self, CredentialError, CredentialStore};
use super::{Backend, CloudConfig, LinkStatus, WhyNot};

/// Where the link connects: from `https://HOST[:PORT]` or `wss://HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Without the trailing `/` ("" for none); the Socket.IO path is always `/socket.io/`.
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cloud URL {url:?}: {why} (want https://HOST[:PORT] or wss://HOST[:PORT])")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, UrlError> {
        Endpoint::parse_with(url, &["https", "wss"]).map_err(|why| UrlError {
            url: url.to_owned(),
            why,
        })
    }

    /// Host, port (443 by default) and path of `url` if its scheme is one of `schemes`.
    pub fn parse_with(url: &str, schemes: &[&str]) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        match uri.scheme_str() {
            Some(s) if schemes.contains(&s) => {}
            Some(s) => return Err(format!("scheme {s} is not one of {}", schemes.join(", "))),
            None => return Err("no scheme".into()),
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host")?;
        Ok(Endpoint {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(443),
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// Runs the link until `shutdown`; `status` always says where it stands.
pub async fn run(
    config: CloudConfig,
    backend: Arc<dyn Backend>,
    status: watch::Sender<LinkStatus>,
    shutdown: CancellationToken,
) {
    status.send_replace(LinkStatus::initial(&config.url));
    let endpoint = match Endpoint::parse(&config.url) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cloud: the link cannot start");
            set_down(&status, WhyNot::BadUrl, e.to_string());
            return;
        }
    };
    let dispatcher = Dispatcher::new(backend);
    let mut creds = CredentialStore::new(config.cert.clone(), config.key.clone());
    let mut probe = HostProbe::default();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut ever_connected = false;
    loop {
        let outcome = attempt(
            &config,
            &endpoint,
            &mut creds,
            &dispatcher,
            &mut probe,
            &status,
            &shutdown,
        )
        .await;
        if shutdown.is_cancelled() {
            break;
        }
        let was_up = outcome.was_up;
        if was_up {
            ever_connected = true;
            backoff.reset();
        }
        let delay = if ever_connected {
            backoff.next_delay()
        } else {
            config.first_retry
        };
        tracing::warn!(why = ?outcome.failure.why, detail = %outcome.failure.detail, retry_in = ?delay,
            host = %endpoint.host, port = endpoint.port, "cloud: link down");
        set_down(&status, outcome.failure.why, outcome.failure.detail);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    status.send_modify(|s| {
        s.connected = false;
        s.why_not = Some(WhyNot::Stopped);
        s.tls_version = None;
        s.since = format_iso(SystemTime::now());
    });
}

pub(super) struct Outcome {
    pub was_up: bool,
    pub failure: Failure,
}

fn set_down(status: &watch::Sender<LinkStatus>, why: WhyNot, detail: String) {
    status.send_modify(|s| {
        if s.connected || s.why_not != Some(why) {
            s.since = format_iso(SystemTime::now());
        }
        s.connected = false;
        s.why_not = Some(why);
        s.detail = Some(detail);
        s.tls_version = None;
    });
}

/// One try: credentials, roots, then a session until it ends.
async fn attempt(
    config: &CloudConfig,
    endpoint: &Endpoint,
    creds: &mut CredentialStore,
    dispatcher: &Arc<Dispatcher>,
    probe: &mut HostProbe,
    status: &watch::Sender<LinkStatus>,
    shutdown: &CancellationToken,
) -> Outcome {
    let down = |why, detail: String| Outcome {
        was_up: false,
        failure: Failure { why, detail },
    };
    let pair = match creds.refresh() {
        Ok(p) => p,
        Err(e) => {
            let why = match e {
                CredentialError::Mismatch { .. } => WhyNot::KeyMismatch,
                _ => WhyNot::CredentialsUnusable,
            };
            return down(why, e.to_string());
        }
    };
    let id = pair.identity.clone();
    status.send_modify(|s| {
        s.agent_id = Some(id.agent_id.clone());
        s.certificate_serial = Some(id.serial.clone());
        s.certificate_not_after = Some(format_iso(id.not_after));
    });
    let roots = match tls::roots(config.ca.as_deref()) {
        Ok(r) => r,
        Err(e) => return down(WhyNot::ServerNotTrusted, e.to_string()),
    };
    let tls_config = match tls::client_config(pair, roots) {
        Ok(c) => c,
        Err(e) => return down(WhyNot::KeyMismatch, e.to_string()),
    };
    let ctx = session::Context {
        config,
        endpoint,
        identity: &id,
        dispatcher,
        status,
        shutdown,
    };
    let mut outcome = session::connect_and_serve(&ctx, tls_config, probe).await;
    // A refusal of a certificate that is past its date says so.
    if outcome.failure.why == WhyNot::CertificateRefused && id.not_after < SystemTime::now() {
        outcome.failure.why = WhyNot::CertificateExpired;
        outcome.failure.detail = format!(
            "{} (the client certificate expired on {}; renew it, e.g. with `agent enroll`)",
            outcome.failure.detail,
            format_iso(id.not_after)
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ep = |h: &str, p| {
            Ok(Endpoint {
                host: h.into(),
                port: p,
                path: String::new(),
            })
        };
        assert_eq!(
            Endpoint::parse("https://cloud.example:8443"),
            ep("cloud.example", 8443)
        );
        assert_eq!(
            Endpoint::parse("wss://cloud.example"),
            ep("cloud.example", 443)
        );
        assert_eq!(Endpoint::parse("https://[::1]:9000/"), ep("::1", 9000));
        assert_eq!(Endpoint::parse("https://127.0.0.1:1"), ep("127.0.0.1", 1));
        for bad in ["http://x:1", "ws://x", "cloud.example:443", "", "https://"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
