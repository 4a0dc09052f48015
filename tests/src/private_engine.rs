//! A private Docker engine, for tests that stop and restart the engine: the shared one
//! (`/var/run/docker.sock`) serves other suites at the same time and must never be
//! restarted.
//!
//! Its own `dockerd` with its own `--data-root`, `--exec-root` (so the containerd it
//! starts has its socket, state and shims' addresses there), `--pidfile`, socket,
//! `--cgroup-parent`, and an empty `--config-file` (the host's daemon.json names the
//! shared engine's data-root). Its default bridge is a host bridge of its own
//! (`--bridge=<name>`, made here with a /24 of 198.19.0.0/17), never `--bridge=none`:
//! a dockerd started with `--bridge=none` deletes the host's `docker0`, the shared
//! engine's default bridge (seen here: every `docker run` on the shared engine then
//! fails with "could not find bridge docker0"). `--iptables=false`, `--ip6tables=false`,
//! `--ip-masq=false`, `--ip-forward=false`: it touches no firewall rule or sysctl of the
//! host's. User-defined bridge networks (a runtime's `NAME_internal`) are each a host
//! bridge `br-<id>`.
//!
//! Dropping it removes everything it made: its containers and networks (through it,
//! while it answers), then the daemon (SIGTERM, SIGKILL after a while), any process
//! still running from its directories or in its cgroups (containerd, shims, container
//! processes: after a SIGKILL of the daemon), every mount under its directory
//! (overlay2 layers, the network namespaces' nsfs files), its cgroups, the host bridges
//! of its networks, and the directory.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{ChildGuard, require_root, unique};

/// How long a stop waits for the daemon before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How long a start waits for the daemon's `_ping`.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running private `dockerd`; see the module's notes.
pub struct PrivateEngine {
    pub dir: PathBuf,
    /// `unix://<dir>/docker.sock`, for `--docker-host` and `docker -H`.
    pub host: String,
    socket: PathBuf,
    cgroup: String,
    args: Vec<String>,
    child: ChildGuard,
    /// Host bridges of its networks, noted while it answered, before each stop or kill
    /// (removed on drop when the engine could not remove them itself; a daemon that
    /// dies by itself leaves those it made since the last note).
    bridges: BTreeSet<String>,
    /// Its default bridge (`--bridge`), a host bridge made for it.
    default_bridge: String,
}

impl PrivateEngine {
    /// Starts a private engine (overlay2, else vfs) and waits until it answers.
    pub fn start() -> PrivateEngine {
        require_root();
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("dockerd is not installed: this test runs a private engine (apt-get install docker.io)"));
        // Short: the sockets under it must fit in sun_path (108 bytes).
        let dir = PathBuf::from("/tmp").join(unique("pe"));
        std::fs::create_dir_all(&dir).expect("create the private engine's directory");
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("write daemon.json");
        let cgroup = dir.file_name().unwrap().to_string_lossy().into_owned();
        let socket = dir.join("docker.sock");
        let default_bridge = unique("peb");
        // 198.19.0.0-198.19.126.255: below the pools the tests give the agent on a
        // private engine (198.19.128.0/17) and the tests' own 198.19.127.0/24, far above
        // what the shared engine's agents allocate (198.18.0.0 upwards).
        let subnet = format!("198.19.{}.1/24", std::process::id() % 127);
        let mut e = PrivateEngine {
            host: format!("unix://{}", socket.display()),
            socket,
            cgroup,
            args: Vec::new(),
            child: ChildGuard(None),
            bridges: BTreeSet::from([default_bridge.clone()]),
            default_bridge,
            dir,
        };
        // Made after `e`, whose drop removes it when anything below fails.
        crate::must(&format!(
            "ip link add {b} type bridge && ip addr add {subnet} dev {b} && ip link set {b} up",
            b = e.default_bridge
        ));
        let mut errors = Vec::new();
        for driver in ["overlay2", "vfs"] {
            e.args = e.arguments(dockerd, driver);
            match e.spawn() {
                Ok(()) => return e,
                Err(why) => errors.push(format!("--storage-driver={driver}: {why}")),
            }
            e.kill();
            let _ = std::fs::remove_dir_all(e.dir.join("data"));
        }
        panic!(
            "a private dockerd could not start here:\n{}",
            errors.join("\n")
        );
    }

    fn arguments(&self, dockerd: &str, driver: &str) -> Vec<String> {
        let d = self.dir.display();
        [
            dockerd.to_string(),
            format!("--config-file={d}/daemon.json"),
            format!("--data-root={d}/data"),
            format!("--exec-root={d}/exec"),
            format!("--pidfile={d}/docker.pid"),
            format!("--host={}", self.host),
            format!("--cgroup-parent=/{}", self.cgroup),
            format!("--storage-driver={driver}"),
            format!("--bridge={}", self.default_bridge),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-masq=false".into(),
            "--ip-forward=false".into(),
        ]
        .into()
    }

    /// Starts the daemon with the arguments it was first started with; waits for it.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| format!("open dockerd.log: {e}"))?;
        let child = Command::new(&self.args[0])
            .args(&self.args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.args[0]))?;
        self.child = ChildGuard(Some(child));
        let end = Instant::now() + START_LIMIT;
        loop {
            if let Ok(Some(st)) = self.child.child().try_wait() {
                return Err(format!("dockerd exited ({st}): {}", self.log_tail()));
            }
            if self.answers() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "no answer on {} after {START_LIMIT:?}: {}",
                    self.host,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the daemon answers `GET /_ping` with 200.
    pub fn answers(&self) -> bool {
        let ping = || -> std::io::Result<String> {
            let mut s = UnixStream::connect(&self.socket)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        ping().is_ok_and(|r| r.starts_with("HTTP/1.") && r.contains(" 200 "))
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `docker -H <this engine> <args>`: stdout, or the error with stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = crate::agent::docker_on(&self.host)
            .args(args)
            .output()
            .map_err(|e| format!("docker {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "docker {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`PrivateEngine::docker`], panicking on failure.
    pub fn must(&self, args: &[&str]) -> String {
        self.docker(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Imports the rig's busybox image into this engine; its name.
    pub fn import_test_image(&self) -> String {
        crate::docker::import_test_image(&self.host);
        crate::docker::TEST_IMAGE.to_string()
    }

    /// Stops the daemon as an operator or systemd does (SIGTERM), waits for it to exit,
    /// and returns how long that took. SIGKILL after [`STOP_LIMIT`].
    pub fn stop(&mut self) -> Duration {
        self.note_bridges();
        let t = Instant::now();
        self.child.signal(Signal::SIGTERM);
        if self.child.wait_timeout(STOP_LIMIT).is_none() {
            self.kill();
        }
        self.child = ChildGuard(None);
        t.elapsed()
    }

    /// Starts the daemon again with the same arguments; panics when it does not come up.
    pub fn restart(&mut self) {
        if let Err(why) = self.spawn() {
            panic!("the private engine did not start again: {why}");
        }
    }

    /// SIGKILL: the daemon dies as in a crash, without stopping its containerd or
    /// containers (which drop then has to remove).
    pub fn kill(&mut self) {
        self.note_bridges();
        self.child.signal(Signal::SIGKILL);
        self.child.wait_timeout(Duration::from_secs(10));
        self.child = ChildGuard(None);
    }

    /// Remembers the host bridge of each of its bridge networks.
    fn note_bridges(&mut self) {
        let Ok(ids) = self.docker(&[
            "network",
            "ls",
            "-q",
            "--no-trunc",
            "--filter",
            "driver=bridge",
        ]) else {
            return;
        };
        for id in ids.split_whitespace() {
            self.bridges
                .insert(format!("br-{}", &id[..id.len().min(12)]));
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.child.0.is_some() && self.answers() {
            self.note_bridges();
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                for id in ids.split_whitespace() {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
            let _ = self.docker(&["network", "prune", "-f"]);
        }
        if self.child.0.is_some() {
            self.stop();
        }
        remove_leftovers(&self.dir, &self.cgroup, &self.bridges);
    }
}

/// What a daemon that did not stop cleanly leaves: processes started from `dir` or in
/// its cgroups, mounts under `dir`, the cgroups, the bridges; then `dir` itself.
fn remove_leftovers(dir: &Path, cgroup: &str, bridges: &BTreeSet<String>) {
    let needle = dir.display().to_string();
    let me = std::process::id();
    for pid in pids() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid != me && String::from_utf8_lossy(&cmdline).contains(&needle) {
            sigkill(pid);
        }
    }
    let groups = cgroups(cgroup);
    for g in &groups {
        let procs = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
        procs
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .for_each(sigkill);
    }
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&format!("{needle}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    // Deepest first; a cgroup whose last task is still exiting is busy for a moment.
    for _ in 0..50 {
        let left: Vec<&PathBuf> = groups
            .iter()
            .rev()
            .filter(|g| std::fs::remove_dir(g).is_err() && g.exists())
            .collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for b in bridges {
        if Path::new("/sys/class/net").join(b).exists() {
            let _ = crate::sh(&format!("ip link del {b}"));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The cgroup `/<name>` in every hierarchy and everything under it, parents first.
fn cgroups(name: &str) -> Vec<PathBuf> {
    fn walk(p: PathBuf, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(&p) else {
            return;
        };
        let subs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        out.push(p);
        for s in subs {
            walk(s, out);
        }
    }
    let mut out = Vec::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten();
    for h in roots.filter_map(|e| e.ok()) {
        let g = h.path().join(name);
        if g.is_dir() {
            walk(g, &mut out);
        }
    }
    // cgroup v2 mounted at /sys/fs/cgroup itself.
    let g = Path::new("/sys/fs/cgroup").join(name);
    if g.join("cgroup.procs").exists() && !out.contains(&g) {
        walk(g, &mut out);
    }
    out
}
