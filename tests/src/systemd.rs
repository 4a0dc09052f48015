//! The real-systemd tier: a container whose PID 1 is Debian's systemd, booted from
//! the image `scripts/systemd-image.sh` builds once per machine, with the project's
//! .deb installed inside it. Removed on drop.
//!
//! How it boots (these hosts have hybrid cgroups v1): a private cgroup namespace,
//! `CAP_SYS_ADMIN` so systemd can mount, tmpfs `/run` and `/run/lock`, and the
//! named `systemd` cgroup hierarchy remounted read-write before `exec /sbin/init`.
//! `--privileged` fails here, and the host's `/sys/fs/cgroup` is never
//! bind-mounted (the container's systemd would remount the host's tree read-only).
//! The host's engine socket is passed in, so `agent health` can reach an engine;
//! the container has no host PID namespace, so the agent's runtime work (entering
//! runtimes' namespaces, MACs, DHCP) is not exercised here.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

pub use crate::deploy::build_deb;
use crate::deploy::{repo_root, run};
use crate::{must, require_root, sh, unique, wait_for};

/// The image's tag (built when missing; concurrent callers wait on its lock).
pub fn image() -> String {
    let out = run(&mut Command::new(
        repo_root().join("scripts/systemd-image.sh"),
    ))
    .unwrap_or_else(|e| panic!("scripts/systemd-image.sh (apt-get install mmdebstrap): {e:#}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A booted systemd container; `docker rm -f` on drop.
pub struct SystemdHost {
    pub name: String,
}

impl SystemdHost {
    /// Boots one and waits until systemd reports `running` (or `degraded`, with
    /// the failed units in the panic message).
    pub fn boot() -> SystemdHost {
        require_root();
        crate::agent::require_engine();
        let image = image();
        let host = SystemdHost {
            name: unique("esd"),
        };
        must(&format!(
            "docker run -d --name {n} --hostname {n} --cgroupns=private --cap-add SYS_ADMIN \
             --cap-add NET_ADMIN --cap-add SYS_PTRACE --tmpfs /run --tmpfs /run/lock \
             --stop-signal SIGRTMIN+3 -v /var/run/docker.sock:/var/run/docker.sock \
             --label org.edgenet.test=systemd --entrypoint /bin/sh {image} \
             -c 'mount -o remount,bind,rw /sys/fs/cgroup/systemd && exec /sbin/init' >/dev/null",
            n = host.name
        ));
        let state = wait_for(Duration::from_secs(60), "systemd to finish booting", || {
            let s = host.sh("systemctl is-system-running").unwrap_or_else(|e| e);
            let s = s.trim().to_string();
            (s == "running" || s == "degraded").then_some(s)
        });
        assert_eq!(
            state,
            "running",
            "systemd booted degraded: {}",
            host.sh("systemctl --failed --no-pager")
                .unwrap_or_else(|e| e)
        );
        host
    }

    /// `sh -c cmd` inside; Ok(stdout) on success, Err(stdout + stderr) otherwise.
    pub fn sh(&self, cmd: &str) -> std::result::Result<String, String> {
        let out = Command::new("docker")
            .args(["exec", &self.name, "sh", "-c", cmd])
            .output()
            .map_err(|e| format!("docker exec: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{} (exit {}): {stdout}{}",
                cmd,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Like [`sh`](Self::sh), panicking on failure.
    pub fn must(&self, cmd: &str) -> String {
        self.sh(cmd)
            .unwrap_or_else(|e| panic!("in {}: {e}", self.name))
    }

    /// Copies the package in and `dpkg -i`s it; dpkg's output.
    pub fn install(&self, deb: &str) -> String {
        must(&format!("docker cp {deb} {}:/tmp/edgenet.deb", self.name));
        self.must("dpkg -i /tmp/edgenet.deb 2>&1")
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.must(&format!("systemctl show -p {prop} --value {unit}"))
            .trim()
            .to_string()
    }

    /// Waits until a unit is `active` with a main PID; returns that PID.
    pub fn wait_active(&self, unit: &str, limit: Duration) -> u32 {
        let end = Instant::now() + limit;
        loop {
            let state = self.prop(unit, "ActiveState");
            let pid: u32 = self.prop(unit, "MainPID").parse().unwrap_or(0);
            if state == "active" && pid != 0 {
                return pid;
            }
            if Instant::now() > end {
                panic!(
                    "{unit} not active after {limit:?} ({state}):\n{}",
                    self.sh(&format!(
                        "systemctl status --no-pager {unit}; journalctl -b -u {unit} --no-pager | tail -n 30"
                    ))
                    .unwrap_or_else(|e| e)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The unit's journal records since boot, as JSON objects.
    pub fn journal(&self, unit: &str) -> Vec<serde_json::Value> {
        self.must(&format!("journalctl -b -u {unit} -o json --no-pager"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// CPU time (user + system) a process has used, from /proc/PID/stat.
    pub fn cpu_time(&self, pid: u32) -> Result<Duration> {
        let stat = self
            .sh(&format!("cat /proc/{pid}/stat"))
            .map_err(anyhow::Error::msg)?;
        // Fields after the command name (which may hold spaces) start at `) `.
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (1-based) of the whole line, 12 and 13
        // after the state field here (0-based 11 and 12).
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            bail!("short /proc/{pid}/stat: {stat}");
        };
        let ticks: u64 = u.parse::<u64>()? + s.parse::<u64>()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        Ok(Duration::from_micros(ticks * 1_000_000 / hz))
    }

    /// Whether a path exists inside.
    pub fn exists(&self, path: &Path) -> bool {
        self.sh(&format!(
            "test -e {} -o -L {}",
            path.display(),
            path.display()
        ))
        .is_ok()
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = sh(&format!("docker rm -f {} >/dev/null 2>&1", self.name));
    }
}

/// `journalctl -o json`'s `__REALTIME_TIMESTAMP` (µs since the epoch).
pub fn realtime_us(record: &serde_json::Value) -> u64 {
    record["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A record's `MESSAGE` as text ("" when absent or binary).
pub fn message(record: &serde_json::Value) -> &str {
    record["MESSAGE"].as_str().unwrap_or("")
}
