//! The usage history behind the consumption commands: one sample every 5 s, 48 h, for the
//! host and each runtime, in memory and bounded (12 bytes a sample: 48 h is 415 KB a series).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One reading as stored: seconds since the epoch, CPU (percent or vCPU as the caller
/// decides) and memory (MB).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: SystemTime,
    pub cpu: f32,
    pub memory: f32,
}

#[derive(Clone, Copy)]
struct Packed {
    secs: u32,
    cpu: f32,
    memory: f32,
}

/// The series key of the host itself.
pub const HOST: &str = "__host__";

/// Bounded per-series ring buffers.
pub struct UsageHistory {
    every: Duration,
    keep: Duration,
    cap: usize,
    series: HashMap<String, VecDeque<Packed>>,
}

impl Default for UsageHistory {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(48 * 3600))
    }
}

fn secs(t: SystemTime) -> u32 {
    let s = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl UsageHistory {
    /// Samples `every` apart, kept for `keep`.
    pub fn new(every: Duration, keep: Duration) -> Self {
        let every = every.max(Duration::from_secs(1));
        let cap = (keep.as_secs() / every.as_secs()).max(1) as usize + 1;
        UsageHistory {
            every,
            keep,
            cap,
            series: HashMap::new(),
        }
    }

    /// Adds a sample to `key`'s series. One closer than half a period to the previous
    /// one replaces it (a sampler that runs late or twice does not grow the series).
    pub fn record(&mut self, key: &str, s: Sample) {
        let q = self.series.entry(key.to_owned()).or_default();
        let p = Packed {
            secs: secs(s.at),
            cpu: s.cpu,
            memory: s.memory,
        };
        let half = (self.every.as_secs() / 2) as u32;
        match q.back_mut() {
            Some(last) if p.secs < last.secs.saturating_add(half.max(1)) && p.secs >= last.secs => {
                *last = p
            }
            Some(last) if p.secs < last.secs => return, // clock went back: keep order
            _ => q.push_back(p),
        }
        let oldest =
            secs(s.at).saturating_sub(u32::try_from(self.keep.as_secs()).unwrap_or(u32::MAX));
        while q.front().is_some_and(|f| f.secs < oldest) || q.len() > self.cap {
            q.pop_front();
        }
    }

    /// Samples of `key` from `start` to `end`, oldest first.
    pub fn range(&self, key: &str, start: SystemTime, end: SystemTime) -> Vec<Sample> {
        let (a, b) = (secs(start), secs(end));
        self.series
            .get(key)
            .into_iter()
            .flatten()
            .filter(|p| p.secs >= a && p.secs <= b)
            .map(|p| Sample {
                at: UNIX_EPOCH + Duration::from_secs(p.secs.into()),
                cpu: p.cpu,
                memory: p.memory,
            })
            .collect()
    }

    /// Forgets the runtimes that are gone (the host series stays).
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.series.retain(|k, _| k == HOST || live(k));
    }

    /// Samples held in `key`'s series.
    pub fn len(&self, key: &str) -> usize {
        self.series.get(key).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: u64, cpu: f32) -> Sample {
        Sample {
            at: UNIX_EPOCH + Duration::from_secs(at),
            cpu,
            memory: cpu * 2.0,
        }
    }

    #[test]
    fn bounded_to_48_hours_of_5_second_samples() {
        let mut h = UsageHistory::default();
        let start = 1_700_000_000;
        let n = 48 * 720 + 500; // 48 h and then some
        for i in 0..n {
            h.record("rt1", s(start + i * 5, i as f32));
        }
        assert_eq!(h.len("rt1"), 48 * 720 + 1);
        let last = start + (n - 1) * 5;
        let all = h.range("rt1", UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(last));
        assert_eq!(
            all.first().unwrap().at,
            UNIX_EPOCH + Duration::from_secs(last - 48 * 3600)
        );
        let hour = h.range(
            "rt1",
            UNIX_EPOCH + Duration::from_secs(last - 3600),
            UNIX_EPOCH + Duration::from_secs(last),
        );
        assert_eq!(hour.len(), 721);
        assert_eq!(hour.last().unwrap().memory, ((n - 1) as f32) * 2.0);
    }

    #[test]
    fn late_or_double_samples_do_not_grow_and_gone_runtimes_are_dropped() {
        let mut h = UsageHistory::default();
        h.record("rt1", s(100, 1.0));
        h.record("rt1", s(101, 2.0)); // same slot: replaces
        h.record("rt1", s(90, 9.0)); // clock went back: ignored
        h.record("rt1", s(105, 3.0));
        let all = h.range("rt1", UNIX_EPOCH, SystemTime::now());
        assert_eq!(
            all.iter().map(|x| x.cpu).collect::<Vec<_>>(),
            vec![2.0, 3.0]
        );
        h.record(HOST, s(100, 1.0));
        h.record("rt2", s(100, 1.0));
        h.retain(|k| k == "rt2");
        assert_eq!((h.len(HOST), h.len("rt1"), h.len("rt2")), (1, 0, 1));
        assert!(h.range("nope", UNIX_EPOCH, SystemTime::now()).is_empty());
    }
}
