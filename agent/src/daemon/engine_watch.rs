//! Following the engine: its reachability and its event stream.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Msg;
use std::sync::Arc;

use crate::engine::{Engine, EngineEvent};

/// Retries of an unreachable engine: the first after 250 ms, doubling up to 1 s.
/// A version call on the local socket costs next to nothing, and the cap is how
/// long a returning engine can go unnoticed: at 5 s, convergence after a 10 s engine
/// cut took 4.6 s of the 5 s allowed, most of it waiting for the next try
/// (converge-bench, BENCHMARKS.md).
const ENGINE_RETRY_FIRST: Duration = Duration::from_millis(250);
const ENGINE_RETRY_CAP: Duration = Duration::from_secs(1);

/// Follows the engine: subscribe to events first, then report it up (which makes
/// the state task reconcile = list); on any failure report it down and retry with
/// capped jittered backoff. Never gives up.
pub(super) async fn engine_watch(
    docker: Arc<dyn Engine>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    let mut backoff = ipc::Backoff::new(ENGINE_RETRY_FIRST, ENGINE_RETRY_CAP);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FakeEngine;

    /// The next message that is not `EngineDown` (`EngineUp` = true), or None when
    /// `until` passes first.
    async fn next_up(rx: &mut mpsc::Receiver<Msg>, until: tokio::time::Instant) -> Option<bool> {
        loop {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Err(_) => return None,
                Ok(Some(Msg::EngineDown(_))) => return Some(false),
                Ok(Some(Msg::EngineUp(_))) => return Some(true),
                Ok(Some(_)) => {}
                Ok(None) => panic!("engine_watch ended"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_back_after_a_long_outage_is_seen_within_the_retry_cap() {
        let fake = Arc::new(FakeEngine::new());
        fake.set_unreachable(true);
        let (tx, mut rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(engine_watch(fake.clone(), tx, shutdown.clone()));
        // A minute down: the backoff has reached its cap.
        let minute = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Some(up) = next_up(&mut rx, minute).await {
            assert!(!up, "the engine is down");
        }
        // It returns just after a failed try: the whole next delay is waited.
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        assert_eq!(next_up(&mut rx, far).await, Some(false));
        fake.set_unreachable(false);
        let back = tokio::time::Instant::now();
        assert_eq!(next_up(&mut rx, far).await, Some(true));
        // Within 1 s (the cap), plus the 200 ms given to the event subscription.
        let waited = back.elapsed();
        assert!(
            waited <= Duration::from_millis(1250),
            "seen {waited:?} after it returned"
        );
        shutdown.cancel();
        task.await.unwrap();
    }
}
