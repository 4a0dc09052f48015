//! The usage sampler behind the consumption commands: every 5 s one host sample and one
//! per runtime, the runtimes read concurrently (the engine's one-shot stats call, one
//! reading each; CPU from the difference with the previous reading), so the period does
//! not grow with the number of runtimes as the older agent's one-after-another loop did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::history::{HOST, Sample, UsageHistory};
use super::host::{self, HostProbe};
use crate::engine::{ContainerStats, Engine};

/// Runtimes read at once.
const PARALLEL: usize = 32;

/// The shared history and the sampler's own last readings.
#[derive(Default)]
pub struct Usage {
    pub history: Mutex<UsageHistory>,
}

/// CPU percent of one container between two readings (Docker's formula: share of the
/// host's CPU time times the CPUs online).
fn cpu_percent(prev: &ContainerStats, now: &ContainerStats) -> f32 {
    let dc = now.cpu_total_ns.saturating_sub(prev.cpu_total_ns) as f64;
    let ds = now.system_ns.saturating_sub(prev.system_ns) as f64;
    if ds <= 0.0 {
        return 0.0;
    }
    (dc / ds * f64::from(now.online_cpus.max(1)) * 100.0) as f32
}

/// Samples until `stop`; `names` gives the runtimes of the moment.
pub async fn sample_loop<F, Fut>(
    usage: Arc<Usage>,
    engine: Arc<dyn Engine>,
    every: Duration,
    names: F,
    stop: tokio_util::sync::CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let mut probe = HostProbe::default();
    probe.cpu_percent();
    let mut last: HashMap<String, ContainerStats> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = SystemTime::now();
        let host_mem = host::memory().map_or(0.0, |(used, _)| used as f32 / 1e6);
        let host_cpu = probe.cpu_percent() as f32;
        let list = names().await;
        let read: Vec<(String, Option<ContainerStats>)> = futures::stream::iter(list.clone())
            .map(|n| {
                let engine = engine.clone();
                async move {
                    let s = engine.stats(&n).await.ok().flatten();
                    (n, s)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut h = usage.history.lock().unwrap_or_else(|p| p.into_inner());
        h.record(
            HOST,
            Sample {
                at: now,
                cpu: host_cpu,
                memory: host_mem,
            },
        );
        for (name, s) in read {
            let Some(s) = s else { continue };
            let cpu = last.get(&name).map_or(0.0, |p| cpu_percent(p, &s));
            h.record(
                &name,
                Sample {
                    at: now,
                    cpu,
                    memory: s.memory_bytes as f32 / 1e6,
                },
            );
            last.insert(name, s);
        }
        h.retain(|k| list.iter().any(|n| n == k));
        last.retain(|k, _| list.iter().any(|n| n == k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_between_readings() {
        let a = ContainerStats {
            cpu_total_ns: 1_000,
            system_ns: 10_000,
            online_cpus: 2,
            memory_bytes: 0,
        };
        let b = ContainerStats {
            cpu_total_ns: 2_000,
            system_ns: 20_000,
            ..a
        };
        assert!((cpu_percent(&a, &b) - 20.0).abs() < 0.01);
        assert_eq!(cpu_percent(&b, &b), 0.0);
    }
}
