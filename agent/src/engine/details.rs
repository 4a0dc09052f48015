//! What the cloud's status and consumption commands read about one runtime container,
//! beyond what reconcile needs: its state, restart count, start time, exit code, the
//! addresses the engine gave it per network, its limits, and one stats reading.

use std::collections::BTreeMap;

use serde::Serialize;

/// A container as `get_device_status` shows it.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ContainerDetails {
    /// The engine's word: created, running, paused, restarting, removing, exited, dead.
    pub status: String,
    pub running: bool,
    pub restart_count: u64,
    /// RFC 3339 as the engine wrote it; `None` when never started.
    pub started_at: Option<String>,
    pub exit_code: Option<i64>,
    /// healthy / unhealthy / starting, when the image has a health check.
    pub health: Option<String>,
    /// By network name.
    pub networks: BTreeMap<String, NetworkAddress>,
    /// HostConfig limits: bytes (0 = none) and nano-CPUs (0 = none).
    pub memory_limit: u64,
    pub nano_cpus: u64,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct NetworkAddress {
    pub ip_address: Option<String>,
    pub mac_address: Option<String>,
    pub gateway: Option<String>,
}

/// One stats reading (the engine's one-shot call: no 1 s wait for a second sample, so
/// CPU use is computed by the caller from two readings).
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct ContainerStats {
    /// Cumulative CPU time of the container, nanoseconds.
    pub cpu_total_ns: u64,
    /// Cumulative CPU time of the host, nanoseconds (the engine's system usage).
    pub system_ns: u64,
    pub online_cpus: u32,
    pub memory_bytes: u64,
}
