//! The host's numbers for the heartbeat and the usage history, from /proc and statvfs.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;

use super::period::format_iso;

/// The heartbeat's payload, field for field as the older agent sends it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heartbeat {
    pub agent_id: String,
    /// Host CPU use in percent since the previous sample.
    pub cpu_usage: f64,
    /// GB, one decimal.
    pub memory_usage: f64,
    pub memory_total: f64,
    /// GB over the physical partitions.
    pub disk_usage: f64,
    pub disk_total: f64,
    /// Seconds the agent process has run.
    pub uptime: u64,
    pub status: &'static str,
    pub timestamp: String,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn one_decimal(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// CPU use needs two readings: the probe keeps the last one.
#[derive(Default)]
pub struct HostProbe {
    last_cpu: Option<(u64, u64)>,
}

/// Memory in bytes: (used, total); used = total - available, as psutil counts it.
pub fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?;
    Some((total.saturating_sub(avail), total))
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Used and total bytes over the mounted physical partitions (block devices under /dev,
/// each counted once); the root file system when there is none (inside a container).
pub fn disk() -> (u64, u64) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut seen = HashSet::new();
    let mut points = Vec::new();
    for l in mounts.lines() {
        let mut it = l.split_whitespace();
        let (Some(dev), Some(at)) = (it.next(), it.next()) else {
            continue;
        };
        if dev.starts_with("/dev/") && !dev.starts_with("/dev/loop") && seen.insert(dev.to_owned())
        {
            points.push(at.replace("\\040", " "));
        }
    }
    if points.is_empty() {
        points.push("/".into());
    }
    let (mut used, mut total) = (0u64, 0u64);
    #[allow(clippy::useless_conversion)]
    for p in points {
        if let Ok(s) = nix::sys::statvfs::statvfs(p.as_str()) {
            // The field widths differ between 32- and 64-bit targets (u32 on armv7).
            let frsize = u64::from(s.fragment_size());
            let blocks = u64::from(s.blocks());
            total += blocks * frsize;
            used += blocks.saturating_sub(u64::from(s.blocks_free())) * frsize;
        }
    }
    (used, total)
}

/// Seconds this process has run: /proc/uptime minus our start time in /proc/self/stat.
pub fn process_uptime() -> Option<u64> {
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = stat.rsplit_once(')')?.1;
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((up - start_ticks / hz).max(0.0) as u64)
}

impl HostProbe {
    /// CPU percent since the previous call (since boot on the first).
    pub fn cpu_percent(&mut self) -> f64 {
        let Some((busy, total)) = cpu_times() else {
            return 0.0;
        };
        let (b0, t0) = self.last_cpu.replace((busy, total)).unwrap_or((0, 0));
        let dt = total.saturating_sub(t0);
        if dt == 0 {
            return 0.0;
        }
        one_decimal(busy.saturating_sub(b0) as f64 * 100.0 / dt as f64)
    }

    /// One heartbeat for `agent_id`, now.
    pub fn heartbeat(&mut self, agent_id: &str) -> Heartbeat {
        let (mu, mt) = memory().unwrap_or((0, 0));
        let (du, dt) = disk();
        Heartbeat {
            agent_id: agent_id.to_owned(),
            cpu_usage: self.cpu_percent(),
            memory_usage: one_decimal(mu as f64 / GIB),
            memory_total: one_decimal(mt as f64 / GIB),
            disk_usage: one_decimal(du as f64 / GIB),
            disk_total: one_decimal(dt as f64 / GIB),
            uptime: process_uptime().unwrap_or(0),
            status: "active",
            timestamp: format_iso(SystemTime::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host() {
        let mut p = HostProbe::default();
        let hb = p.heartbeat("07048933");
        assert_eq!((hb.agent_id.as_str(), hb.status), ("07048933", "active"));
        assert!(
            hb.memory_total > 0.0 && hb.memory_usage <= hb.memory_total,
            "{hb:?}"
        );
        assert!(
            hb.disk_total > 0.0 && hb.disk_usage <= hb.disk_total,
            "{hb:?}"
        );
        assert!((0.0..=100.0).contains(&hb.cpu_usage), "{hb:?}");
        assert!(hb.uptime < 24 * 3600, "a test process is young: {hb:?}");
        assert_eq!(hb.memory_total, one_decimal(hb.memory_total));
        assert!(
            super::super::period::parse_iso(&hb.timestamp).is_some(),
            "{}",
            hb.timestamp
        );
        let again = p.cpu_percent();
        assert!((0.0..=100.0).contains(&again));
    }
}
