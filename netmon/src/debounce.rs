//! Per-interface debouncing: an interface is due once it has been quiet for the
//! window, or once the maximum wait has passed since the first change of its burst,
//! whichever comes first. Pure bookkeeping on [`tokio::time::Instant`] so it is tested
//! with paused time and the daemon sleeps exactly until the next deadline (no tick).
//!
//! The deadlines are kept ordered, so marking, the next deadline and taking what is
//! due cost O(log n) in the number of dirty interfaces: a storm over thousands of
//! interfaces asks for the next deadline on every batch of kernel messages.

use std::collections::{BTreeSet, HashMap};
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
    /// `(due_at, ifindex)` of every dirty interface.
    deadlines: BTreeSet<(Instant, u32)>,
}

impl Debouncer {
    /// `max_wait` below `quiet` is raised to `quiet`: the window is the shorter bound.
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debouncer {
            quiet,
            max_wait: max_wait.max(quiet),
            dirty: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Records a change of `ifindex` at `now`. Returns true when the interface was
    /// not dirty before (the pending set changed).
    pub fn mark(&mut self, ifindex: u32, now: Instant) -> bool {
        let (quiet, max_wait) = (self.quiet, self.max_wait);
        let due_at = |b: &Burst| (b.last + quiet).min(b.first + max_wait);
        match self.dirty.get_mut(&ifindex) {
            Some(b) => {
                let before = due_at(b);
                b.last = b.last.max(now);
                let after = due_at(b);
                if after != before {
                    self.deadlines.remove(&(before, ifindex));
                    self.deadlines.insert((after, ifindex));
                }
                false
            }
            None => {
                let b = Burst {
                    first: now,
                    last: now,
                };
                self.deadlines.insert((due_at(&b), ifindex));
                self.dirty.insert(ifindex, b);
                true
            }
        }
    }

    fn due_at(&self, b: &Burst) -> Instant {
        (b.last + self.quiet).min(b.first + self.max_wait)
    }

    /// Forgets `ifindex` (it was just reported by other means, e.g. an urgent read).
    pub fn remove(&mut self, ifindex: u32) -> bool {
        match self.dirty.remove(&ifindex) {
            Some(b) => {
                let at = self.due_at(&b);
                self.deadlines.remove(&(at, ifindex));
                true
            }
            None => false,
        }
    }

    /// Forgets everything (a full resync covered every interface).
    pub fn clear(&mut self) {
        self.dirty.clear();
        self.deadlines.clear();
    }

    /// When the next interface becomes due; `None` when nothing is dirty (the
    /// daemon then sleeps without a timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns the interfaces due at `now`, in ifindex order.
    pub fn take_due(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        while let Some(&(at, i)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.dirty.remove(&i);
            due.push(i);
        }
        due.sort_unstable();
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
        assert_eq!(d.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_marks_in_order() {
        let mut d = defaults();
        let t0 = Instant::now();
        d.mark(1, t0);
        d.mark(2, t0 + S);
        d.mark(1, t0 + 2 * S);
        // 2 is due first now (t0 + 4 s), then 1 (t0 + 5 s).
        assert_eq!(d.next_deadline(), Some(t0 + 4 * S));
        assert!(d.remove(2));
        assert_eq!(d.next_deadline(), Some(t0 + 5 * S));
        assert_eq!(d.take_due(t0 + 5 * S), vec![1]);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn max_wait_shorter_than_window_is_raised() {
        let d = Debouncer::new(3 * S, S);
        assert_eq!(d.max_wait, 3 * S);
    }
}
