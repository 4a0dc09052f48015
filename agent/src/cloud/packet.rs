//! Engine.IO v4 / Socket.IO v5 text packets on a WebSocket, namespace `/` only.
//! One WebSocket text frame carries one Engine.IO packet; a `4` (message) carries one
//! Socket.IO packet. Pure: parsing never panics on anything the server sends.

use std::time::Duration;

use serde_json::Value;

/// What the server's Engine.IO OPEN says; every field optional (defaults as in the spec).
#[derive(Clone, Debug, PartialEq)]
pub struct Open {
    pub sid: Option<String>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: usize,
}

impl Default for Open {
    fn default() -> Self {
        Open {
            sid: None,
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
        }
    }
}

/// One packet from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    Open(Open),
    /// Engine.IO close.
    Close,
    Ping,
    Pong,
    Noop,
    /// Socket.IO CONNECT answered (`40{"sid"}`).
    Connected {
        sid: Option<String>,
    },
    /// Socket.IO CONNECT_ERROR (`44{"message"}`).
    ConnectRefused {
        message: String,
    },
    /// Socket.IO DISCONNECT (`41`): the server dropped the namespace.
    Disconnected,
    /// `42[id]["name", data]`; `data` is Null when the event has no argument.
    Event {
        id: Option<u64>,
        name: String,
        data: Value,
    },
    /// `43id[...]`: an ack of something we emitted (we never ask for one).
    Ack {
        id: u64,
    },
    /// For another namespace, binary, or an upgrade probe: logged and ignored.
    Ignored(&'static str),
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    UnknownEngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    UnknownSocketType(char),
    #[error("bad JSON in a {what} packet: {err}")]
    BadJson { what: &'static str, err: String },
    #[error("{0}")]
    Shape(&'static str),
}

/// Reads one Engine.IO packet (one WebSocket text frame).
pub fn parse(text: &str) -> Result<Inbound, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError::Empty)?;
    let rest = chars.as_str();
    match kind {
        '0' => parse_open(rest).map(Inbound::Open),
        '1' => Ok(Inbound::Close),
        '2' if rest.is_empty() => Ok(Inbound::Ping),
        '2' => Ok(Inbound::Ignored("ping with a payload (upgrade probe)")),
        '3' => Ok(Inbound::Pong),
        '4' => parse_socket(rest),
        '5' => Ok(Inbound::Ignored("upgrade")),
        '6' => Ok(Inbound::Noop),
        c => Err(PacketError::UnknownEngineType(c)),
    }
}

fn json(what: &'static str, s: &str) -> Result<Value, PacketError> {
    serde_json::from_str(s).map_err(|e| PacketError::BadJson {
        what,
        err: e.to_string(),
    })
}

fn parse_open(rest: &str) -> Result<Open, PacketError> {
    let v = json("OPEN", rest)?;
    let o = v
        .as_object()
        .ok_or(PacketError::Shape("OPEN is not a JSON object"))?;
    let ms = |k: &str, d: Duration| {
        o.get(k)
            .and_then(Value::as_u64)
            .filter(|&n| n > 0 && n < 3_600_000)
            .map(Duration::from_millis)
            .unwrap_or(d)
    };
    let def = Open::default();
    Ok(Open {
        sid: o.get("sid").and_then(Value::as_str).map(str::to_owned),
        ping_interval: ms("pingInterval", def.ping_interval),
        ping_timeout: ms("pingTimeout", def.ping_timeout),
        max_payload: o
            .get("maxPayload")
            .and_then(Value::as_u64)
            .filter(|&n| n >= 1024)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .unwrap_or(def.max_payload),
    })
}

fn parse_socket(rest: &str) -> Result<Inbound, PacketError> {
    let mut chars = rest.chars();
    let kind = chars
        .next()
        .ok_or(PacketError::Shape("empty Socket.IO packet"))?;
    let mut body = chars.as_str();
    if matches!(kind, '5' | '6') {
        return Ok(Inbound::Ignored("binary Socket.IO packet"));
    }
    if body.starts_with('/') {
        // Namespaced: `/nsp,...`. Only `/` is ours; `/,` is the same as none.
        let (nsp, after) = body.split_once(',').unwrap_or((body, ""));
        if nsp != "/" {
            return Ok(Inbound::Ignored("packet for another namespace"));
        }
        body = after;
    }
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        let n = body[..digits]
            .parse::<u64>()
            .map_err(|_| PacketError::Shape("packet id out of range"))?;
        body = &body[digits..];
        Some(n)
    } else {
        None
    };
    match kind {
        '0' => {
            let sid = if body.is_empty() {
                None
            } else {
                json("CONNECT", body)?
                    .get("sid")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            Ok(Inbound::Connected { sid })
        }
        '1' => Ok(Inbound::Disconnected),
        '2' => parse_event(id, body),
        '3' => id
            .map(|id| Inbound::Ack { id })
            .ok_or(PacketError::Shape("ack without an id")),
        '4' => {
            let v = if body.is_empty() {
                Value::Null
            } else {
                json("CONNECT_ERROR", body)?
            };
            let message = match &v {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("message")
                    .map(|m| {
                        m.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| m.to_string())
                    })
                    .unwrap_or_else(|| v.to_string()),
                Value::Null => "no reason given".to_owned(),
                other => other.to_string(),
            };
            Ok(Inbound::ConnectRefused { message })
        }
        c => Err(PacketError::UnknownSocketType(c)),
    }
}

fn parse_event(id: Option<u64>, body: &str) -> Result<Inbound, PacketError> {
    let v = json("EVENT", body)?;
    let Value::Array(mut items) = v else {
        return Err(PacketError::Shape("event is not a JSON array"));
    };
    if items.is_empty() {
        return Err(PacketError::Shape("event without a name"));
    }
    let data = if items.len() > 1 {
        items.swap_remove(1)
    } else {
        Value::Null
    };
    match items.swap_remove(0) {
        Value::String(name) => Ok(Inbound::Event { id, name, data }),
        _ => Err(PacketError::Shape("event name is not a string")),
    }
}

/// The client's Socket.IO CONNECT to `/` (no auth payload: the certificate is the identity).
pub const CONNECT: &str = "40";
/// The client's Engine.IO pong.
pub const PONG: &str = "3";

/// `42["name",data]`: an event that asks for no ack.
pub fn emit(name: &str, data: &Value) -> String {
    format!(
        "42{}",
        Value::Array(vec![Value::String(name.to_owned()), data.clone()])
    )
}

/// `43id[data]`: the ack of the server's event `id`.
pub fn ack(id: u64, data: &Value) -> String {
    format!("43{id}{}", Value::Array(vec![data.clone()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_python_socketio_sends() {
        let open = parse(
            r#"0{"sid":"abc","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#,
        );
        assert_eq!(
            open,
            Ok(Inbound::Open(Open {
                sid: Some("abc".into()),
                ping_interval: Duration::from_millis(300),
                ping_timeout: Duration::from_millis(200),
                max_payload: 1_000_000,
            }))
        );
        assert_eq!(parse("0{}"), Ok(Inbound::Open(Open::default())));
        assert_eq!(
            parse(r#"0{"pingInterval":"x","maxPayload":-1}"#),
            Ok(Inbound::Open(Open::default()))
        );
        assert_eq!(parse("2"), Ok(Inbound::Ping));
        assert_eq!(parse("3"), Ok(Inbound::Pong));
        assert_eq!(parse("6"), Ok(Inbound::Noop));
        assert_eq!(parse("1"), Ok(Inbound::Close));
        assert_eq!(
            parse(r#"40{"sid":"x1"}"#),
            Ok(Inbound::Connected {
                sid: Some("x1".into())
            })
        );
        assert_eq!(parse("40"), Ok(Inbound::Connected { sid: None }));
        assert_eq!(
            parse(r#"44{"message":"not linked"}"#),
            Ok(Inbound::ConnectRefused {
                message: "not linked".into()
            })
        );
        assert_eq!(parse("41"), Ok(Inbound::Disconnected));
        assert_eq!(
            parse(r#"4212["get_device_status",{"device_id":"a"}]"#),
            Ok(Inbound::Event {
                id: Some(12),
                name: "get_device_status".into(),
                data: json!({"device_id":"a"})
            })
        );
        assert_eq!(
            parse(r#"42/,7["x"]"#),
            Ok(Inbound::Event {
                id: Some(7),
                name: "x".into(),
                data: Value::Null
            })
        );
        assert!(parse(r#"43 5[{}]"#).is_err());
        assert_eq!(parse(r#"435[{}]"#), Ok(Inbound::Ack { id: 5 }));
        assert!(matches!(
            parse(r#"42/admin,["x",{}]"#),
            Ok(Inbound::Ignored(_))
        ));
        assert!(matches!(
            parse("451-[\"x\",{\"_placeholder\":true,\"num\":0}]"),
            Ok(Inbound::Ignored(_))
        ));
        assert!(matches!(parse("2probe"), Ok(Inbound::Ignored(_))));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "9",
            "x",
            "é",
            "0",
            "0[]",
            "0{",
            "4",
            "49",
            "42",
            "42{",
            "42[]",
            "42[1,{}]",
            "42{\"a\":1}",
            "43",
            "4299999999999999999999999[\"x\"]",
            "40{bad",
            "44{",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} gave {:?}", parse(bad));
        }
    }

    #[test]
    fn writes_emits_and_acks() {
        assert_eq!(
            emit("heartbeat", &json!({"a":1})),
            r#"42["heartbeat",{"a":1}]"#
        );
        assert_eq!(ack(3, &json!({"ok":true})), r#"433[{"ok":true}]"#);
        assert_eq!(
            parse(&emit("x", &json!({"b":[1]}))),
            Ok(Inbound::Event {
                id: None,
                name: "x".into(),
                data: json!({"b":[1]})
            })
        );
    }
}
