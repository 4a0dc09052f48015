//! Client-to-server requests and their replies (PROTOCOL.md, "Client to server").
//! The agent's control socket uses the same shapes with its own commands.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;

/// `{"command": "<name>", "id": <any>, ...arguments}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Request {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Any further fields: the command's arguments.
    #[serde(flatten)]
    pub args: Map<String, Value>,
}

/// Why a line could not be taken as a request; the text is the reply's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Invalid JSON")]
    InvalidJson,
    #[error("Request must be a JSON object")]
    NotAnObject,
    #[error("Request must have a string \"command\"")]
    NoCommand,
}

impl Request {
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            id: None,
            args: Map::new(),
        }
    }

    pub fn with_arg(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.args.insert(key.to_string(), value.into());
        self
    }

    /// Parses one received line, mapping every failure to the error PROTOCOL.md
    /// prescribes. The `id` is returned even when the command is missing, so the
    /// error reply can carry it.
    pub fn parse(line: &[u8]) -> Result<Request, (RequestError, Option<Value>)> {
        let value: Value =
            serde_json::from_slice(line).map_err(|_| (RequestError::InvalidJson, None))?;
        let Value::Object(mut map) = value else {
            return Err((RequestError::NotAnObject, None));
        };
        let id = map.remove("id");
        match map.remove("command") {
            Some(Value::String(command)) => Ok(Request {
                command,
                id,
                args: map,
            }),
            _ => Err((RequestError::NoCommand, id)),
        }
    }
}

/// A reply: an object with no `type` key, `success`, the request's `id`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reply {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Command-specific fields (`status`, `steps`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Reply {
    pub fn ok(id: Option<Value>) -> Self {
        Self {
            success: true,
            id,
            error: None,
            extra: Map::new(),
        }
    }

    pub fn err(id: Option<Value>, error: impl Into<String>) -> Self {
        Self {
            success: false,
            id,
            error: Some(error.into()),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }
}

/// Anything a server sends: events carry `type`, replies do not.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    Event(Event),
    Reply(Reply),
}

impl ServerMessage {
    pub fn parse(line: &[u8]) -> Result<ServerMessage, serde_json::Error> {
        let value: Value = serde_json::from_slice(line)?;
        if value.get("type").is_some() {
            Ok(ServerMessage::Event(serde_json::from_value(value)?))
        } else {
            Ok(ServerMessage::Reply(serde_json::from_value(value)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_request_with_id_and_args() {
        let r = Request::parse(br#"{"command":"discover","id":7,"x":true}"#).unwrap();
        assert_eq!(r.command, "discover");
        assert_eq!(r.id, Some(Value::from(7)));
        assert_eq!(r.args.get("x"), Some(&Value::Bool(true)));
    }

    #[test]
    fn parse_request_errors() {
        assert_eq!(
            Request::parse(b"{nope").unwrap_err().0,
            RequestError::InvalidJson
        );
        assert_eq!(
            Request::parse(b"[1,2]").unwrap_err().0,
            RequestError::NotAnObject
        );
        assert_eq!(
            Request::parse(b"\"x\"").unwrap_err().0,
            RequestError::NotAnObject
        );
        assert_eq!(
            Request::parse(&[0xff, 0xfe]).unwrap_err().0,
            RequestError::InvalidJson
        );
        let (e, id) = Request::parse(br#"{"id":"a"}"#).unwrap_err();
        assert_eq!(e, RequestError::NoCommand);
        assert_eq!(id, Some(Value::from("a")));
    }

    #[test]
    fn reply_shapes() {
        let r = Reply::err(Some(Value::from(1)), "Unknown command: x");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"success": false, "id": 1, "error": "Unknown command: x"})
        );
        let r = Reply::ok(None).with("status", serde_json::json!({"a": 1}));
        let v = serde_json::to_string(&r).unwrap();
        assert_eq!(v, r#"{"success":true,"status":{"a":1}}"#);
    }

    #[test]
    fn server_message_tells_events_from_replies() {
        let m = ServerMessage::parse(br#"{"success":true,"id":3}"#).unwrap();
        assert!(matches!(m, ServerMessage::Reply(r) if r.id == Some(Value::from(3))));
        let m =
            ServerMessage::parse(br#"{"type":"network_change","data":{"interface":"a"}}"#).unwrap();
        assert!(matches!(m, ServerMessage::Event(_)));
    }
}
