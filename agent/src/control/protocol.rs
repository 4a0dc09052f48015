//! The control protocol between `agent`'s CLI and `agent run`: one request enum,
//! one reply type per command, shared by both sides (mini-redis `cmd/` style).
//!
//! On the wire (JSON lines, `ipc`'s codec): a request is
//! `{"command": "<name>", "id": <any>, "wait_ms": <optional>, ...fields}`; a reply is
//! `{"success": true, "id": ..., "result": {...}}` or
//! `{"success": false, "id": ..., "error": "..."}`. Fields are strict: a wrong type or
//! an unknown field is an error reply naming it, never a guess.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reconcile::ReconcileReport;
use crate::runtime::CreateRequest;
use crate::status::VnicView;

/// Every command the control socket serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Status,
    Health,
    Reconcile {
        #[serde(default)]
        dry_run: bool,
    },
    RuntimeList,
    RuntimeCreate(CreateRequest),
    RuntimeDelete {
        name: String,
    },
    RuntimeStart {
        name: String,
    },
    RuntimeStop {
        name: String,
    },
    RuntimeRestart {
        name: String,
    },
    StoreReload,
    StoreReset {
        #[serde(default)]
        force: bool,
    },
}

impl Request {
    /// The wire name, for logs and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Status => "status",
            Request::Health => "health",
            Request::Reconcile { .. } => "reconcile",
            Request::RuntimeList => "runtime_list",
            Request::RuntimeCreate(_) => "runtime_create",
            Request::RuntimeDelete { .. } => "runtime_delete",
            Request::RuntimeStart { .. } => "runtime_start",
            Request::RuntimeStop { .. } => "runtime_stop",
            Request::RuntimeRestart { .. } => "runtime_restart",
            Request::StoreReload => "store_reload",
            Request::StoreReset { .. } => "store_reset",
        }
    }

    /// Whether answering needs the container engine (and so waits for it at start-up).
    pub fn needs_engine(&self) -> bool {
        matches!(
            self,
            Request::Reconcile { .. }
                | Request::RuntimeCreate(_)
                | Request::RuntimeDelete { .. }
                | Request::RuntimeStart { .. }
                | Request::RuntimeStop { .. }
                | Request::RuntimeRestart { .. }
        )
    }
}

/// A request with its envelope: the caller's `id` and how long a command that needs
/// the engine may wait for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub id: Option<Value>,
    pub wait: Option<Duration>,
    pub request: Request,
}

/// Why a line is not a request; the text is the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("a request must be a JSON object")]
    NotAnObject,
    #[error("\"wait_ms\" must be a number of milliseconds")]
    BadWait,
    #[error("{0}")]
    Fields(String),
}

impl Envelope {
    pub fn new(request: Request) -> Envelope {
        Envelope {
            id: None,
            wait: None,
            request,
        }
    }

    /// Decodes one line. The `id` comes back with the error when it could be read,
    /// so the error reply carries it.
    pub fn decode(line: &[u8]) -> Result<Envelope, (DecodeError, Option<Value>)> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| (DecodeError::Json(e.to_string()), None))?;
        let Value::Object(mut map) = value else {
            return Err((DecodeError::NotAnObject, None));
        };
        let id = map.remove("id");
        let wait = match map.remove("wait_ms") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(ms) => Some(Duration::from_millis(ms)),
                None => return Err((DecodeError::BadWait, id)),
            },
        };
        let request = serde_json::from_value::<Request>(Value::Object(map))
            .map_err(|e| (DecodeError::Fields(e.to_string()), id.clone()))?;
        Ok(Envelope { id, wait, request })
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let Value::Object(mut map) = serde_json::to_value(&self.request)? else {
            unreachable!("an internally tagged enum serialises to an object");
        };
        if let Some(id) = &self.id {
            map.insert("id".into(), id.clone());
        }
        if let Some(w) = self.wait {
            map.insert("wait_ms".into(), Value::from(w.as_millis() as u64));
        }
        let mut line = serde_json::to_vec(&map)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// The reply envelope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reply {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl Reply {
    pub fn ok(id: Option<Value>, result: &impl Serialize) -> Reply {
        match serde_json::to_value(result) {
            Ok(v) => Reply {
                success: true,
                id,
                error: None,
                result: Some(v),
            },
            Err(e) => Reply::err(id, format!("internal: encode the reply: {e}")),
        }
    }

    pub fn err(id: Option<Value>, error: impl Into<String>) -> Reply {
        Reply {
            success: false,
            id,
            error: Some(error.into()),
            result: None,
        }
    }

    /// The typed result of a successful reply, or the agent's error.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, String> {
        if !self.success {
            return Err(self
                .error
                .unwrap_or_else(|| "the agent refused the request".into()));
        }
        let v = self.result.unwrap_or(Value::Null);
        serde_json::from_value(v).map_err(|e| format!("the agent's reply: {e}"))
    }
}

/// `ping`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Pong {
    pub version: String,
    pub pid: u32,
}

/// `runtime_create`: the runtime exists; where its vNICs are now, and the run that
/// attached them (absent when the engine part failed).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Created {
    pub runtime: String,
    pub vnics: Vec<VnicView>,
    pub report: Option<ReconcileReport>,
}

/// `runtime_delete`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub runtime: String,
    pub removed_networks: Vec<String>,
    /// Managed networks no runtime uses anymore that the engine would not remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_networks: Vec<LeftNetwork>,
}

/// A network a delete had to leave: its name and the engine's words.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeftNetwork {
    pub network: String,
    pub reason: String,
}

/// `runtime_start`, `runtime_stop`, `runtime_restart`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Lifecycle {
    pub runtime: String,
    pub action: String,
    /// The run that verified the vNICs after a start (none after a stop).
    pub report: Option<ReconcileReport>,
}

/// `runtime_list`.
pub type RuntimeList = BTreeMap<String, Vec<VnicView>>;

/// `store_reload`, `store_reset`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoreOutcome {
    pub runtimes: usize,
    /// Where the previous file was kept (reset).
    pub kept_as: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> Result<Envelope, (DecodeError, Option<Value>)> {
        Envelope::decode(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn every_request_round_trips_with_its_envelope() {
        let all = [
            Request::Ping,
            Request::Status,
            Request::Health,
            Request::Reconcile { dry_run: true },
            Request::RuntimeList,
            Request::RuntimeCreate(CreateRequest {
                name: "plc1".into(),
                image: "img".into(),
                cmd: None,
                vnics: Vec::new(),
            }),
            Request::RuntimeDelete { name: "a".into() },
            Request::RuntimeStart { name: "a".into() },
            Request::RuntimeStop { name: "a".into() },
            Request::RuntimeRestart { name: "a".into() },
            Request::StoreReload,
            Request::StoreReset { force: true },
        ];
        for r in all {
            let env = Envelope {
                id: Some(json!(7)),
                wait: Some(Duration::from_millis(1500)),
                request: r.clone(),
            };
            let line = env.encode().unwrap();
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v["command"], r.name(), "{v}");
            assert_eq!(Envelope::decode(&line).unwrap(), env);
        }
    }

    #[test]
    fn fields_are_strict_and_errors_name_them() {
        let (e, id) =
            decode(json!({"command": "reconcile", "id": 3, "dry_run": "yes"})).unwrap_err();
        assert_eq!(id, Some(json!(3)));
        assert!(e.to_string().contains("expected a boolean"), "{e}");
        let (e, _) = decode(json!({"command": "reconcile", "dry": true})).unwrap_err();
        assert!(e.to_string().contains("unknown field `dry`"), "{e}");
        let (e, _) = decode(json!({"command": "runtime_delete"})).unwrap_err();
        assert!(e.to_string().contains("missing field `name`"), "{e}");
        let (e, _) = decode(json!({"command": "runtime_delete", "name": 5})).unwrap_err();
        assert!(e.to_string().contains("expected a string"), "{e}");
        let (e, _) = decode(json!({"command": "fly"})).unwrap_err();
        assert!(e.to_string().contains("unknown variant `fly`"), "{e}");
        let (e, _) = decode(json!({"id": 1})).unwrap_err();
        assert!(e.to_string().contains("missing field `command`"), "{e}");
        let (e, _) = decode(json!({"command": "ping", "wait_ms": "soon"})).unwrap_err();
        assert_eq!(e, DecodeError::BadWait);
        assert_eq!(decode(json!([1])).unwrap_err().0, DecodeError::NotAnObject);
        assert!(matches!(
            Envelope::decode(b"{nope").unwrap_err().0,
            DecodeError::Json(_)
        ));
        let ok = decode(json!({"command": "reconcile"})).unwrap();
        assert_eq!(ok.request, Request::Reconcile { dry_run: false });
    }

    #[test]
    fn replies_decode_typed_or_give_the_error() {
        let r = Reply::ok(
            Some(json!(1)),
            &Pong {
                version: "0.1.0".into(),
                pid: 9,
            },
        );
        let line = serde_json::to_string(&r).unwrap();
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back.clone().into_result::<Pong>().unwrap().pid, 9);
        let e = Reply::err(None, "no such runtime")
            .into_result::<Pong>()
            .unwrap_err();
        assert_eq!(e, "no such runtime");
        let wrong = Reply::ok(None, &json!({"pid": "x"}))
            .into_result::<Pong>()
            .unwrap_err();
        assert!(wrong.contains("the agent's reply"), "{wrong}");
    }
}
