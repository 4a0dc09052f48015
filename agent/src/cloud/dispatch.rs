//! From event to ack: decode, hold the runtime name's lock for changing commands, ask the
//! backend, and frame `{"action", "correlation_id", ...result}` as the event's ack.
//! Each event runs on its own task, so different runtimes proceed in parallel.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Number, Value};
use tokio::sync::{OwnedMutexGuard, mpsc};

use super::Backend;
use super::command::{DecodeError, decode};
use super::packet;

/// One async lock per runtime name, dropped from the map when nobody holds or waits on it.
#[derive(Default)]
pub struct NameLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a command for `name` runs; frees the map entry when the last user leaves.
pub struct NameGuard<'a> {
    locks: &'a NameLocks,
    name: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl NameLocks {
    pub async fn lock(&self, name: &str) -> NameGuard<'_> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(name.to_owned()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        NameGuard {
            locks: self,
            name: name.to_owned(),
            guard: Some(guard),
        }
    }

    /// Names with a lock entry (held or awaited).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}

/// Shared by every connection of one link.
pub struct Dispatcher {
    backend: Arc<dyn Backend>,
    locks: NameLocks,
    unknown: Mutex<HashSet<String>>,
}

impl Dispatcher {
    pub fn new(backend: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Dispatcher {
            backend,
            locks: NameLocks::default(),
            unknown: Mutex::default(),
        })
    }

    /// Handles the server's event `name` on its own task; the ack (when `id` asks for one)
    /// goes to `reply`, the connection's writer, capped at the server's `max_payload`.
    pub fn dispatch(
        self: &Arc<Self>,
        id: Option<u64>,
        name: String,
        data: Value,
        max_payload: usize,
        reply: mpsc::Sender<String>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(result) = this.answer(&name, &data).await else {
                return;
            };
            let Some(id) = id else {
                tracing::debug!(topic = %name, "cloud: the event asked for no ack; result dropped");
                return;
            };
            let text = framed(id, &name, result, max_payload);
            if reply.send(text).await.is_err() {
                tracing::warn!(topic = %name, "cloud: the connection closed before the ack could be sent");
            }
        });
    }

    /// The ack's object, or `None` for an unknown topic.
    pub async fn answer(&self, topic: &str, data: &Value) -> Option<Map<String, Value>> {
        let (cid, fields) = match decode(topic, data) {
            Err(DecodeError::UnknownTopic) => {
                if self
                    .unknown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(topic.to_owned())
                {
                    tracing::warn!(
                        topic,
                        "cloud: unknown topic from the server; ignored (logged once per topic)"
                    );
                }
                return None;
            }
            Err(DecodeError::Contract {
                correlation_id,
                error,
            }) => {
                tracing::info!(topic, %error, "cloud: request refused");
                (correlation_id, error_fields(error.to_string()))
            }
            Ok(req) => {
                let cid = req.meta.correlation_id.clone();
                let name = req.command.serialised_name().map(str::to_owned);
                let _held = match &name {
                    Some(n) => Some(self.locks.lock(n).await),
                    None => None,
                };
                tracing::info!(topic, runtime = name.as_deref(), correlation_id = ?cid, "cloud: command");
                (cid, self.backend.handle(req.command).await)
            }
        };
        Some(ack_object(topic, cid, fields))
    }
}

fn error_fields(text: String) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status".into(), "error".into());
    m.insert("error".into(), text.into());
    m
}

/// `{"action": topic, "correlation_id": cid|null, ...result}`; the link's two keys win.
pub fn ack_object(
    topic: &str,
    cid: Option<Number>,
    result: Map<String, Value>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("action".into(), topic.into());
    m.insert(
        "correlation_id".into(),
        cid.map(Value::Number).unwrap_or(Value::Null),
    );
    for (k, v) in result {
        if k != "action" && k != "correlation_id" {
            m.insert(k, v);
        }
    }
    m
}

/// The ack packet; a reply the server would refuse (over `max_payload`) becomes an error.
fn framed(id: u64, topic: &str, ack: Map<String, Value>, max_payload: usize) -> String {
    let text = packet::ack(id, &Value::Object(ack.clone()));
    if text.len() <= max_payload {
        return text;
    }
    tracing::warn!(
        topic,
        bytes = text.len(),
        max_payload,
        "cloud: reply too large for the server"
    );
    let cid = ack
        .get("correlation_id")
        .and_then(|v| v.as_number().cloned());
    let err = error_fields(format!(
        "Validation error: the reply is {} bytes, more than the server's maxPayload of {max_payload} bytes",
        text.len()
    ));
    packet::ack(id, &Value::Object(ack_object(topic, cid, err)))
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
