//! A connected session: answer pings, hand events to the dispatcher, write its acks,
//! send heartbeats; end when the server closes, goes silent past pingInterval +
//! pingTimeout, or we shut down. Bad packets are logged and skipped.

use std::time::SystemTime;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use super::WhyNot;
use super::host::HostProbe;
use super::packet::{self, Inbound, Open};
use super::period::format_iso;
use super::session::{Context, Failure, Ws, fail};

/// Longest excerpt of a bad packet put in the log.
const EXCERPT: usize = 160;

fn excerpt(t: &str) -> String {
    let mut end = t.len().min(EXCERPT);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    if end < t.len() {
        format!("{}... ({} bytes)", &t[..end], t.len())
    } else {
        t.to_owned()
    }
}

pub(super) async fn serve(
    ctx: &Context<'_>,
    ws: Ws,
    open: &Open,
    probe: &mut HostProbe,
) -> Failure {
    let (mut sink, mut stream) = ws.split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<String>(64);
    let silence = open.ping_interval + open.ping_timeout;
    let mut deadline = Instant::now() + silence;
    let mut beat = tokio::time::interval(ctx.config.heartbeat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failure = loop {
        let out: Option<String> = tokio::select! {
            _ = ctx.shutdown.cancelled() => break fail(WhyNot::Stopped, "shutting down"),
            _ = sleep_until(deadline) => {
                break fail(WhyNot::LinkLost, format!("no ping from the server within {silence:?} (pingInterval + pingTimeout): the link is dead"));
            }
            _ = beat.tick() => {
                let hb = probe.heartbeat(&ctx.identity.agent_id);
                let v = serde_json::to_value(&hb).unwrap_or(Value::Null);
                let ts = hb.timestamp.clone();
                ctx.status.send_modify(|s| s.last_heartbeat = Some(ts));
                Some(packet::emit("heartbeat", &v))
            }
            Some(text) = reply_rx.recv() => Some(text),
            msg = stream.next() => match msg {
                None => break fail(WhyNot::LinkLost, "the server closed the connection"),
                Some(Err(e)) => break fail(WhyNot::LinkLost, format!("read: {e}")),
                Some(Ok(Message::Text(t))) => match on_text(ctx, t.as_str(), open, &reply_tx) {
                    Step::Continue(out) => {
                        if out.as_deref() == Some(packet::PONG) {
                            deadline = Instant::now() + silence;
                        }
                        out
                    }
                    Step::End(f) => break f,
                },
                Some(Ok(Message::Binary(b))) => {
                    tracing::warn!(bytes = b.len(), "cloud: binary frame from the server ignored (JSON only)");
                    None
                }
                Some(Ok(Message::Close(c))) => break fail(WhyNot::LinkLost, format!("the server closed the WebSocket: {c:?}")),
                Some(Ok(_)) => None, // WebSocket ping/pong: tungstenite answers
            },
        };
        if let Some(text) = out {
            if let Err(e) = sink.send(Message::text(text)).await {
                break fail(WhyNot::LinkLost, format!("write: {e}"));
            }
        }
    };
    let _ = sink.send(Message::Close(None)).await;
    ctx.status
        .send_modify(|s| s.since = format_iso(SystemTime::now()));
    failure
}

enum Step {
    Continue(Option<String>),
    End(Failure),
}

fn on_text(ctx: &Context<'_>, t: &str, open: &Open, reply: &mpsc::Sender<String>) -> Step {
    match packet::parse(t) {
        Ok(Inbound::Ping) => Step::Continue(Some(packet::PONG.into())),
        Ok(Inbound::Event { id, name, data }) => {
            ctx.dispatcher
                .dispatch(id, name, data, open.max_payload, reply.clone());
            Step::Continue(None)
        }
        Ok(Inbound::Close) => Step::End(fail(
            WhyNot::LinkLost,
            "the server closed the Engine.IO session",
        )),
        Ok(Inbound::Disconnected) => Step::End(fail(
            WhyNot::LinkLost,
            "the server disconnected the Socket.IO namespace",
        )),
        Ok(Inbound::ConnectRefused { message }) => Step::End(fail(
            WhyNot::CertificateRefused,
            format!("the server refused the Socket.IO connection: {message}"),
        )),
        Ok(
            Inbound::Pong
            | Inbound::Noop
            | Inbound::Ack { .. }
            | Inbound::Connected { .. }
            | Inbound::Open(_),
        ) => {
            tracing::debug!(packet = %excerpt(t), "cloud: packet ignored");
            Step::Continue(None)
        }
        Ok(Inbound::Ignored(what)) => {
            tracing::info!(what, packet = %excerpt(t), "cloud: packet ignored");
            Step::Continue(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, packet = %excerpt(t), "cloud: malformed packet from the server ignored");
            Step::Continue(None)
        }
    }
}
