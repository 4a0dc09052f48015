//! Per-interface debouncing: an interface is due once it has been quiet for the
//! window, or once the maximum wait has passed since the first change of its burst,
//! whichever comes first. Pure bookkeeping on [`tokio::time::Instant`] so it is tested
//! with paused time and the daemon sleeps exactly until the next deadline (no tick).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
struct Burst {
    first: Instant,
    last: Instant,
}

#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    max_wait: Duration,
    dirty: HashMap<u32, Burst>,
}

impl Debouncer {
    /// `max_wait` below `quiet` is raised to `quiet`: the window is the shorter bound.
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debouncer {
            quiet,
            max_wait: max_wait.max(quiet),
            dirty: HashMap::new(),
        }
    }

    /// Records a change of `ifindex` at `now`. Returns true when the interface was
    /// not dirty before (the pending set changed).
    pub fn mark(&mut self, ifindex: u32, now: Instant) -> bool {
        match self.dirty.get_mut(&ifindex) {
            Some(b) => {
                b.last = now;
                false
            }
            None => {
                self.dirty.insert(
                    ifindex,
                    Burst {
                        first: now,
                        last: now,
                    },
                );
                true
            }
        }
    }

    /// Forgets `ifindex` (it was just reported by other means, e.g. an urgent read).
    pub fn remove(&mut self, ifindex: u32) -> bool {
        self.dirty.remove(&ifindex).is_some()
    }

    /// Forgets everything (a full resync covered every interface).
    pub fn clear(&mut self) {
        self.dirty.clear();
    }

    fn due_at(&self, b: &Burst) -> Instant {
        (b.last + self.quiet).min(b.first + self.max_wait)
    }

    /// When the next interface becomes due; `None` when nothing is dirty (the
    /// daemon then sleeps without a timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.dirty.values().map(|b| self.due_at(b)).min()
    }

    /// Removes and returns the interfaces due at `now`, in ifindex order.
    pub fn take_due(&mut self, now: Instant) -> Vec<u32> {
        let mut due: Vec<u32> = self
            .dirty
            .iter()
            .filter(|(_, b)| self.due_at(b) <= now)
            .map(|(i, _)| *i)
            .collect();
        due.sort_unstable();
        for i in &due {
            self.dirty.remove(i);
        }
        due
    }

    /// The interfaces waiting for their window to close, in ifindex order.
    pub fn pending(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.dirty.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, sleep_until};

    const S: Duration = Duration::from_secs(1);

    fn defaults() -> Debouncer {
        Debouncer::new(3 * S, 10 * S)
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_window_closes_after_last_change() {
        let mut d = defaults();
        let t0 = Instant::now();
        assert!(d.mark(7, t0));
        advance(2 * S).await;
        assert!(!d.mark(7, Instant::now()));
        assert_eq!(d.next_deadline(), Some(t0 + 5 * S));
        advance(Duration::from_millis(2999)).await;
        assert!(d.take_due(Instant::now()).is_empty(), "window still open");
        advance(Duration::from_millis(1)).await;
        assert_eq!(d.take_due(Instant::now()), vec![7]);
        assert!(d.is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn constant_churn_is_reported_at_max_wait() {
        let mut d = defaults();
        let t0 = Instant::now();
        let mut reported = None;
        // A change every 500 ms for 30 s: the quiet window never closes.
        for _ in 0..60 {
            d.mark(3, Instant::now());
            if let Some(dl) = d.next_deadline() {
                let step = Instant::now() + Duration::from_millis(500);
                if dl <= step {
                    sleep_until(dl).await;
                    if !d.take_due(Instant::now()).is_empty() && reported.is_none() {
                        reported = Some(Instant::now() - t0);
                    }
                }
                sleep_until(step).await;
            }
        }
        assert_eq!(reported, Some(10 * S));
    }

    #[tokio::test(start_paused = true)]
    async fn interfaces_are_independent() {
        let mut d = defaults();
        let t0 = Instant::now();
        d.mark(1, t0);
        advance(2 * S).await;
        d.mark(2, Instant::now());
        assert_eq!(d.pending(), vec![1, 2]);
        sleep_until(d.next_deadline().unwrap()).await;
        assert_eq!(Instant::now() - t0, 3 * S);
        assert_eq!(d.take_due(Instant::now()), vec![1]);
        assert_eq!(d.pending(), vec![2]);
        sleep_until(d.next_deadline().unwrap()).await;
        assert_eq!(Instant::now() - t0, 5 * S);
        assert_eq!(d.take_due(Instant::now()), vec![2]);
        assert!(d.pending().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn remove_and_clear_forget_interfaces() {
        let mut d = defaults();
        d.mark(1, Instant::now());
        d.mark(2, Instant::now());
        assert!(d.remove(1));
        assert!(!d.remove(1));
        assert_eq!(d.pending(), vec![2]);
        d.clear();
        assert!(d.is_empty());
    }

    #[test]
    fn max_wait_shorter_than_window_is_raised() {
        let d = Debouncer::new(3 * S, S);
        assert_eq!(d.max_wait, 3 * S);
    }
}
