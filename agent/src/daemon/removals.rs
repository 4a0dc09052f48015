//! Deletes in progress. A delete removes the runtime's container, then, when no
//! runtime in the store uses its parent anymore, the parent's managed macvlan network.
//! Deletes run side by side, so the last of several on one parent would remove that
//! network while the others' containers are still on it, and the engine refuses it
//! ("has active endpoints": seen with 10 deletes at once on 20.10). Each delete holds
//! a [`Removal`] while its container goes; networks go once none is held.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How long a network removal waits for other deletes' containers to go before it
/// tries anyway (each removal is bounded by the engine's own timeouts).
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The count of deletes whose container is still being removed.
#[derive(Clone)]
pub(super) struct Removals(Arc<watch::Sender<usize>>);

/// One delete's container removal in progress; dropping it ends it.
pub(super) struct Removal(Removals);

impl Removals {
    pub(super) fn new() -> Removals {
        Removals(Arc::new(watch::Sender::new(0)))
    }

    /// Counts a delete from now until the returned guard is dropped.
    pub(super) fn begin(&self) -> Removal {
        self.0.send_modify(|n| *n += 1);
        Removal(self.clone())
    }

    /// Waits until no delete's container is being removed (at most [`WAIT_LIMIT`]).
    pub(super) async fn settled(&self) {
        let mut rx = self.0.subscribe();
        let idle = rx.wait_for(|n| *n == 0);
        if tokio::time::timeout(WAIT_LIMIT, idle).await.is_err() {
            tracing::warn!(
                "other deletes still remove their containers after {WAIT_LIMIT:?}; removing the network anyway"
            );
        }
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settles_once_every_removal_has_ended() {
        let r = Removals::new();
        r.settled().await;
        let a = r.begin();
        let b = r.begin();
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.settled().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one removal is still held");
        drop(b);
        waiting.await.unwrap();
    }
}
