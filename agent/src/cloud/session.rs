//! One connection: resolve, TCP, TLS, WebSocket upgrade, Engine.IO OPEN, Socket.IO
//! CONNECT; then pings, events, acks and heartbeats until it ends. Every failure is told
//! as a [`WhyNot`] with words, so `agent status` can tell a refused certificate from a
//! network fault.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant as StdInstant, SystemTime};

use futures::{SinkExt, StreamExt};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, protocol::WebSocketConfig,
};
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatcher;
use super::host::HostProbe;
use super::link::{Endpoint, Outcome};
use super::packet::{self, Inbound, Open};
use super::period::format_iso;
use super::serve::serve;
use super::tls::{Identity, TlsFault, fault};
use super::{CloudConfig, LinkStatus, WhyNot};

pub(super) type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Why a connection failed or ended.
#[derive(Debug)]
pub struct Failure {
    pub why: WhyNot,
    pub detail: String,
}

pub(super) fn fail(why: WhyNot, detail: impl Into<String>) -> Failure {
    Failure {
        why,
        detail: detail.into(),
    }
}

pub(super) struct Context<'a> {
    pub config: &'a CloudConfig,
    pub endpoint: &'a Endpoint,
    pub identity: &'a Identity,
    pub dispatcher: &'a Arc<Dispatcher>,
    pub status: &'a watch::Sender<LinkStatus>,
    pub shutdown: &'a CancellationToken,
}

/// Biggest WebSocket message taken from the server; a bigger one ends the connection.
const MAX_INBOUND: usize = 16 << 20;

pub(super) async fn connect_and_serve(
    ctx: &Context<'_>,
    tls: (Arc<ClientConfig>, Arc<AtomicBool>),
    probe: &mut HostProbe,
) -> Outcome {
    let started = StdInstant::now();
    let connected = tokio::select! {
        r = connect(ctx, tls) => r,
        _ = ctx.shutdown.cancelled() => Err(fail(WhyNot::Stopped, "shutting down")),
    };
    let (ws, open, version) = match connected {
        Ok(c) => c,
        Err(failure) => {
            return Outcome {
                was_up: false,
                failure,
            };
        }
    };
    tracing::info!(agent_id = %ctx.identity.agent_id, sid = ?open.sid, tls = %version,
        took_ms = started.elapsed().as_millis() as u64, "cloud: connected");
    ctx.status.send_modify(|s| {
        s.connected = true;
        s.why_not = None;
        s.connects += 1;
        s.tls_version = Some(version.clone());
        s.since = format_iso(SystemTime::now());
    });
    let failure = serve(ctx, ws, &open, probe).await;
    Outcome {
        was_up: true,
        failure,
    }
}

async fn connect(
    ctx: &Context<'_>,
    (tls, asked): (Arc<ClientConfig>, Arc<AtomicBool>),
) -> Result<(Ws, Open, String), Failure> {
    let ep = ctx.endpoint;
    let step = ctx.config.connect_timeout;
    let tcp = tcp(ep, step).await?;
    let name = ServerName::try_from(ep.host.clone()).map_err(|e| {
        fail(
            WhyNot::BadUrl,
            format!("{} is not a host name: {e}", ep.host),
        )
    })?;
    let tls = match timeout(step, TlsConnector::from(tls).connect(name, tcp)).await {
        Err(_) => {
            return Err(fail(
                WhyNot::TlsError,
                format!("no TLS handshake within {step:?}"),
            ));
        }
        Ok(Err(e)) => return Err(handshake_failure(&e, asked.load(Ordering::SeqCst))),
        Ok(Ok(s)) => s,
    };
    let version = tls
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let tls13 = version.contains("1_3");
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let req = format!(
        "wss://{host}:{}/socket.io/?EIO=4&transport=websocket",
        ep.port
    )
    .into_client_request()
    .map_err(|e| fail(WhyNot::BadUrl, e.to_string()))?;
    let wcfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_INBOUND))
        .max_frame_size(Some(MAX_INBOUND));
    let mut ws = match timeout(
        step,
        tokio_tungstenite::client_async_with_config(req, tls, Some(wcfg)),
    )
    .await
    {
        Err(_) => {
            return Err(fail(
                WhyNot::ProtocolError,
                format!("no WebSocket upgrade within {step:?}"),
            ));
        }
        Ok(Err(e)) => return Err(upgrade_failure(e, tls13)),
        Ok(Ok((ws, _resp))) => ws,
    };
    let open = handshake(&mut ws, step).await?;
    Ok((ws, open, version))
}

/// Engine.IO OPEN from the server, then our Socket.IO CONNECT and its answer.
async fn handshake(ws: &mut Ws, step: std::time::Duration) -> Result<Open, Failure> {
    let open = match timeout(step, next_text(ws)).await {
        Err(_) => {
            return Err(fail(
                WhyNot::ProtocolError,
                "no Engine.IO OPEN from the server",
            ));
        }
        Ok(Err(f)) => return Err(f),
        Ok(Ok(t)) => match packet::parse(&t) {
            Ok(Inbound::Open(o)) => o,
            other => {
                let d = format!("expected Engine.IO OPEN, got {other:?}");
                return Err(fail(WhyNot::ProtocolError, d));
            }
        },
    };
    send(ws, packet::CONNECT.into()).await?;
    match timeout(step, socket_connect(ws)).await {
        Err(_) => Err(fail(
            WhyNot::ProtocolError,
            "no answer to the Socket.IO CONNECT",
        )),
        Ok(r) => r.map(|()| open),
    }
}

async fn tcp(ep: &Endpoint, step: std::time::Duration) -> Result<TcpStream, Failure> {
    let unreachable = |d: String| fail(WhyNot::ServerUnreachable, d);
    let addrs: Vec<_> =
        match timeout(step, tokio::net::lookup_host((ep.host.as_str(), ep.port))).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "resolving {} took longer than {step:?}",
                    ep.host
                )));
            }
            Ok(Err(e)) => return Err(unreachable(format!("resolve {}: {e}", ep.host))),
            Ok(Ok(a)) => a.collect(),
        };
    let mut last = format!("{} resolves to no address", ep.host);
    for a in addrs {
        match timeout(step, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("connect to {a}: {e}"),
            Err(_) => last = format!("connect to {a}: no answer within {step:?}"),
        }
    }
    Err(unreachable(last))
}

fn tls_failure(e: &io::Error, when: &str) -> Failure {
    match fault(e) {
        Some(TlsFault::Refused(d)) => fail(WhyNot::CertificateRefused, d),
        Some(TlsFault::Other(d)) if d.contains("server's certificate") => {
            fail(WhyNot::ServerNotTrusted, d)
        }
        Some(TlsFault::Other(d)) => fail(WhyNot::TlsError, format!("{when}: {d}")),
        None => fail(WhyNot::TlsError, format!("{when}: {e}")),
    }
}

/// With TLS 1.2 a server that dislikes our certificate may just close the handshake.
fn handshake_failure(e: &io::Error, cert_asked: bool) -> Failure {
    let closed = matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    );
    if fault(e).is_none() && closed && cert_asked {
        return fail(
            WhyNot::CertificateRefused,
            format!(
                "the server closed the TLS handshake after it received the client certificate ({e}): it refused the certificate"
            ),
        );
    }
    tls_failure(e, "during the TLS handshake")
}

/// The first read after the handshake is the upgrade's: with TLS 1.3 the server's verdict
/// on our certificate arrives here, as an alert or as a bare close.
fn upgrade_failure(e: tungstenite::Error, tls13: bool) -> Failure {
    use tungstenite::Error as E;
    let eof = match &e {
        E::Io(io) => {
            if fault(io).is_some() {
                return tls_failure(io, "after the TLS handshake");
            }
            matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            )
        }
        E::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete)
        | E::ConnectionClosed
        | E::AlreadyClosed => true,
        _ => false,
    };
    if eof && tls13 {
        return fail(
            WhyNot::CertificateRefused,
            "the server closed the connection right after the TLS 1.3 handshake: that is how it refuses a client certificate",
        );
    }
    match e {
        E::Http(resp) => fail(
            WhyNot::ProtocolError,
            format!("the WebSocket upgrade was answered HTTP {}", resp.status()),
        ),
        other => fail(WhyNot::ProtocolError, format!("WebSocket upgrade: {other}")),
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, Failure> {
    loop {
        match ws.next().await {
            None => {
                return Err(fail(
                    WhyNot::ProtocolError,
                    "the server closed the WebSocket",
                ));
            }
            Some(Err(e)) => return Err(fail(WhyNot::ProtocolError, format!("read: {e}"))),
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => {
                return Err(fail(
                    WhyNot::ProtocolError,
                    format!("the server closed the WebSocket: {c:?}"),
                ));
            }
            Some(Ok(_)) => continue,
        }
    }
}

pub(super) async fn send(ws: &mut Ws, text: String) -> Result<(), Failure> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| fail(WhyNot::LinkLost, format!("write: {e}")))
}

/// Waits for `40` (accepted) or `44` (refused: the cloud does not take this identity).
async fn socket_connect(ws: &mut Ws) -> Result<(), Failure> {
    loop {
        let t = next_text(ws).await?;
        match packet::parse(&t) {
            Ok(Inbound::Connected { .. }) => return Ok(()),
            Ok(Inbound::ConnectRefused { message }) => {
                return Err(fail(
                    WhyNot::CertificateRefused,
                    format!("the server refused the Socket.IO connect: {message}"),
                ));
            }
            Ok(Inbound::Ping) => send(ws, packet::PONG.into()).await?,
            other => tracing::debug!(packet = ?other, "cloud: ignored while connecting"),
        }
    }
}
