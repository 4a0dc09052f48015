//! One capped, jittered exponential backoff for every retry loop in the workspace
//! (netmon clients, the engine watch, reconcile retries, DHCP, the cloud link).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Fraction of the nominal delay that is randomised, both ways (0.3 = +-30 %).
    jitter: f64,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles on every [`Backoff::next_delay`] up to `max`;
    /// +-30 % jitter, never below `min` / 2.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            jitter: 0.3,
            next: min,
        }
    }

    /// The share of each delay that is random, both ways (clamped to 0..=1).
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The delay to wait now; the following one doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let spread = nominal.as_secs_f64() * self.jitter;
        let d = nominal.as_secs_f64() + spread * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64(d.max(self.min.as_secs_f64() / 2.0)).min(self.max)
    }

    /// The nominal (unjittered) delay the next call starts from.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// After a success: start from `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let mut b = Backoff::new(min, max);
        let mut nominal = min;
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= nominal.mul_f64(0.7) && d <= nominal.mul_f64(1.3).min(max),
                "{d:?} for {nominal:?}"
            );
            nominal = (nominal * 2).min(max);
        }
        assert_eq!(b.peek(), max);
        b.reset();
        assert_eq!(b.peek(), min);
        let mut none = Backoff::new(min, max).with_jitter(0.0);
        assert_eq!(none.next_delay(), min);
        assert_eq!(none.next_delay(), min * 2);
    }
}
