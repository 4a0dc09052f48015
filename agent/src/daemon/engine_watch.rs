//! Following the engine: its reachability and its event stream.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Msg;
use std::sync::Arc;

use crate::engine::{Engine, EngineEvent};

/// Follows the engine: subscribe to events first, then report it up (which makes
/// the state task reconcile = list); on any failure report it down and retry with
/// capped jittered backoff. Never gives up.
pub(super) async fn engine_watch(
    docker: Arc<dyn Engine>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    let mut backoff = ipc::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let reason = match docker.version().await {
            Err(e) => e.to_string(),
            Ok(version) => {
                backoff.reset();
                let events = docker.events();
                tokio::pin!(events);
                // The subscription is sent on the first poll: give it a moment so the
                // listing that follows cannot miss a change made in between.
                let first = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
                let mut early = None;
                let mut ended = None;
                match first {
                    Ok(Some(Ok(ev))) => early = Some(ev),
                    Ok(Some(Err(e))) => ended = Some(e.to_string()),
                    Ok(None) => ended = Some("event stream ended".into()),
                    Err(_) => {}
                }
                if let Some(r) = ended {
                    r
                } else {
                    if tx.send(Msg::EngineUp(version)).await.is_err() {
                        return;
                    }
                    if let Some(ev) = early
                        && tx.send(Msg::Engine(ev)).await.is_err()
                    {
                        return;
                    }
                    loop {
                        let next = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            n = events.next() => n,
                        };
                        match next {
                            Some(Ok(EngineEvent::Other)) => {}
                            Some(Ok(ev)) => {
                                if tx.send(Msg::Engine(ev)).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(e)) => break e.to_string(),
                            None => break "event stream ended".into(),
                        }
                    }
                }
            }
        };
        if tx.send(Msg::EngineDown(reason)).await.is_err() {
            return;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
