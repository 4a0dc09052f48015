//! The deployment side of the rig: the one shared static release build and the
//! images (`packaging/build-images.sh`), systemd unit files read as systemd would,
//! a `NOTIFY_SOCKET` listener, a lock for tests that change system-wide state
//! (packages, `/usr/bin`, the `netmon` group), a host LAN whose routes have metric
//! 5000, and compose projects that are brought down (with their volume) on drop.

use std::fs::{File, OpenOptions};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Netns, TempDir, must, require_root, sh, unique};

/// The workspace root (this crate is `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file under `packaging/`.
pub fn packaging(name: &str) -> PathBuf {
    repo_root().join("packaging").join(name)
}

/// A file under `systemd/`.
pub fn systemd(name: &str) -> PathBuf {
    repo_root().join("systemd").join(name)
}

/// Runs a program to completion, failing with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Builds the project's .deb into `dir` (the static binaries are shared); its path.
pub fn build_deb(dir: &TempDir) -> String {
    let out = run(Command::new(packaging("build-deb.sh"))
        .arg("--out")
        .arg(dir.path()))
    .unwrap_or_else(|e| panic!("build-deb.sh: {e:#}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The static release binaries that the images and the package carry.
pub struct StaticBinaries {
    pub netmon: PathBuf,
    pub agent: PathBuf,
}

/// The two images, by name. Tagged for this test alone (never the names a user's
/// install uses, `edgenet/netmon:<version>`), and removed on drop; or, when
/// [`PREBUILT_NETMON`] and [`PREBUILT_AGENT`] are set (CI builds the images once
/// before the tests), those, left to whoever built them.
pub struct Images {
    pub netmon: String,
    pub agent: String,
    owned: bool,
}

/// Environment naming images built before the tests (see `.ci/run`).
pub const PREBUILT_NETMON: &str = "EDGENET_TEST_NETMON_IMAGE";
pub const PREBUILT_AGENT: &str = "EDGENET_TEST_AGENT_IMAGE";

impl Drop for Images {
    fn drop(&mut self) {
        if self.owned {
            let _ = sh(&format!(
                "docker rmi {} {} >/dev/null 2>&1",
                self.netmon, self.agent
            ));
        }
    }
}

fn build_images(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = run(Command::new(packaging("build-images.sh"))
        .args(args)
        .envs(envs.iter().copied()))
    .unwrap_or_else(|e| panic!("packaging/build-images.sh: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(out: &str, kind: &str, name: &str, col: usize) -> String {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&kind) && w.get(1) == Some(&name))
        .and_then(|w| w.get(col).map(|s| s.to_string()))
        .unwrap_or_else(|| panic!("build-images.sh printed no `{kind} {name}` line: {out}"))
}

/// Builds (once per machine and source state; concurrent callers wait on the
/// script's lock) and returns the static binaries.
pub fn static_binaries() -> StaticBinaries {
    let out = build_images(&["--binaries-only"], &[]);
    StaticBinaries {
        netmon: field(&out, "binary", "netmon", 2).into(),
        agent: field(&out, "binary", "agent", 2).into(),
    }
}

/// Builds the binaries (once) and both images under tags of this test's own
/// (`edgenet-test/netmon:<unique>`), or takes the prebuilt ones CI names.
pub fn images() -> Images {
    crate::agent::require_engine();
    if let (Ok(netmon), Ok(agent)) = (
        std::env::var(PREBUILT_NETMON),
        std::env::var(PREBUILT_AGENT),
    ) && !netmon.is_empty()
        && !agent.is_empty()
    {
        for i in [&netmon, &agent] {
            if sh(&format!("docker image inspect {i} >/dev/null 2>&1")).is_err() {
                panic!("{PREBUILT_NETMON}/{PREBUILT_AGENT} name {i}, which is not built");
            }
        }
        return Images {
            netmon,
            agent,
            owned: false,
        };
    }
    own_images()
}

/// Builds both images under tags of this call's own, removed on drop.
pub fn own_images() -> Images {
    crate::agent::require_engine();
    let tag = unique("t");
    let (netmon, agent) = (
        format!("edgenet-test/netmon:{tag}"),
        format!("edgenet-test/agent:{tag}"),
    );
    // Owned from here, so a failed build still removes what it tagged.
    let images = Images {
        netmon,
        agent,
        owned: true,
    };
    let out = build_images(
        &[],
        &[
            ("EDGENET_NETMON_IMAGE", &images.netmon),
            ("EDGENET_AGENT_IMAGE", &images.agent),
        ],
    );
    assert_eq!(field(&out, "image", "netmon", 2), images.netmon);
    assert_eq!(field(&out, "image", "agent", 2), images.agent);
    images
}

/// Held by tests that change system-wide state (the installed package, files in
/// `/usr/bin` and `/etc/systemd`, the `netmon` user and group), so they never
/// interleave.
pub struct SystemLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

pub fn system_lock() -> SystemLock {
    require_root();
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/edgenet-deploy-system.lock")
        .expect("open /tmp/edgenet-deploy-system.lock");
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock /tmp/edgenet-deploy-system.lock: {e}"));
    SystemLock(held)
}

/// A system group (and, for `netmon`, the matching system user) that exists for
/// the guard's life; removed on drop only if this guard created it.
pub struct SystemAccount {
    name: String,
    created_group: bool,
    created_user: bool,
}

impl SystemAccount {
    /// Call with the [`SystemLock`] held.
    pub fn ensure(name: &str, with_user: bool) -> SystemAccount {
        let created_group = sh(&format!("getent group {name} >/dev/null")).is_err();
        if created_group {
            must(&format!("groupadd --system {name}"));
        }
        let created_user = with_user && sh(&format!("getent passwd {name} >/dev/null")).is_err();
        if created_user {
            must(&format!(
                "useradd --system --gid {name} --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name}"
            ));
        }
        SystemAccount {
            name: name.to_string(),
            created_group,
            created_user,
        }
    }

    pub fn gid(&self) -> u32 {
        id_of("group", &self.name)
    }

    pub fn uid(&self) -> u32 {
        id_of("passwd", &self.name)
    }
}

/// uid or gid from `getent passwd|group NAME`.
pub fn id_of(db: &str, name: &str) -> u32 {
    let line = must(&format!("getent {db} {name}"));
    line.trim()
        .split(':')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("getent {db} {name}: {line}"))
}

impl Drop for SystemAccount {
    fn drop(&mut self) {
        if self.created_user {
            let _ = sh(&format!("userdel {} 2>/dev/null", self.name));
        }
        if self.created_group {
            let _ = sh(&format!("groupdel {} 2>/dev/null", self.name));
        }
    }
}

/// The values of `key` in `[section]` of a unit file, in order (systemd allows a
/// key to repeat). Joins backslash-continued lines; skips comments.
pub fn unit_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut logical: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if pending.is_empty() && (t.starts_with('#') || t.starts_with(';')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        logical.push(std::mem::take(&mut pending));
    }
    for l in logical {
        if l.starts_with('[') && l.ends_with(']') {
            current = l[1..l.len() - 1].to_string();
        } else if current == section
            && let Some((k, v)) = l.split_once('=')
            && k.trim() == key
        {
            out.push(v.trim().to_string());
        }
    }
    out
}

/// The single `ExecStart=` of a unit file, split into words as systemd does for
/// the simple forms used here (plain words, double-quoted words).
pub fn exec_start(unit: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(unit).unwrap_or_else(|e| panic!("read {}: {e}", unit.display()));
    let v = unit_values(&text, "Service", "ExecStart");
    assert_eq!(
        v.len(),
        1,
        "{}: want one ExecStart, got {v:?}",
        unit.display()
    );
    split_words(&v[0])
}

/// Splits a command line on whitespace, honouring double quotes.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// A bound `NOTIFY_SOCKET` datagram socket, as systemd's, collecting what is sent.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
    /// Every `KEY=VALUE` line received so far, in order.
    pub received: Vec<String>,
    _dir: TempDir,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = TempDir::new("nfy");
        // Others (the service's unprivileged user) must be able to send.
        must(&format!("chmod 0755 {}", dir.path().display()));
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        must(&format!("chmod 0666 {}", path.display()));
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set read timeout");
        NotifySocket {
            path,
            sock,
            received: Vec::new(),
            _dir: dir,
        }
    }

    /// Reads until `count` lines equal to `line` have arrived in total; panics after
    /// `limit` with everything received. `alive` is polled so that a service which
    /// died is reported as such.
    pub fn wait_for(
        &mut self,
        line: &str,
        count: usize,
        limit: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        loop {
            if self.received.iter().filter(|l| *l == line).count() >= count {
                return;
            }
            if let Err(e) = alive() {
                panic!(
                    "the service stopped before sending {line} x{count}: {e}; received {:?}",
                    self.received
                );
            }
            if Instant::now() > end {
                panic!(
                    "timed out after {limit:?} waiting for {line} x{count}; received {:?}",
                    self.received
                );
            }
            match self.sock.recv(&mut buf) {
                Ok(n) => self.received.extend(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                ),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }
}

/// journald's socket for units that log with `--log-format journald`. Where no
/// journald runs (this rig's machines), the test binds the socket itself, so the
/// unit's own command line runs unchanged and its records can be checked; a real
/// journald's socket is left alone. Call with the [`SystemLock`] held.
pub struct JournalSocket {
    /// Records received so far, filled by a thread that reads continuously: a
    /// Unix datagram sender blocks once the receiver's queue is full, so an
    /// unread socket would stall the services' logging.
    records: Option<Arc<Mutex<Vec<String>>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    created: Vec<PathBuf>,
}

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

impl JournalSocket {
    pub fn ensure() -> JournalSocket {
        let path = Path::new(JOURNAL_SOCKET);
        let stop = Arc::new(AtomicBool::new(false));
        if path.exists() {
            if UnixDatagram::unbound()
                .and_then(|s| s.connect(path))
                .is_ok()
            {
                return JournalSocket {
                    records: None,
                    stop,
                    reader: None,
                    created: Vec::new(),
                };
            }
            // Nobody listens: a test that was killed left it.
            let _ = std::fs::remove_file(path);
        }
        for d in ["/run/systemd", "/run/systemd/journal"] {
            if !Path::new(d).exists() {
                std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
            }
        }
        // Removed on drop only when empty by then, so nothing of anyone else's goes.
        let created = vec![
            PathBuf::from("/run/systemd"),
            PathBuf::from("/run/systemd/journal"),
            path.to_path_buf(),
        ];
        let sock =
            UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {JOURNAL_SOCKET}: {e}"));
        // Unprivileged services log too.
        must(&format!("chmod 0666 {JOURNAL_SOCKET}"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set read timeout");
        let records = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (records, stop) = (records.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf)
                        && let Ok(mut r) = records.lock()
                    {
                        r.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
            })
        };
        JournalSocket {
            records: Some(records),
            stop,
            reader: Some(reader),
            created,
        }
    }

    /// Records received so far (journald's native protocol: `KEY=VALUE` lines, or
    /// `KEY\n<len><bytes>` for some values), as text. Empty when a real journald
    /// owns the socket.
    pub fn records(&self) -> Vec<String> {
        self.records
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.clone()))
            .unwrap_or_default()
    }

    /// Whether the test (not a real journald) is the receiver.
    pub fn is_ours(&self) -> bool {
        self.records.is_some()
    }
}

impl Drop for JournalSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        for p in self.created.iter().rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A veth in the host namespace (`parent`) whose peer sits in a gateway namespace.
/// The host address is added with `metric 5000`, so its prefix route never
/// competes with the host's own. Removed on drop.
pub struct MetricLan {
    pub parent: String,
    pub peer: String,
    pub gw: Netns,
}

pub const LAN_METRIC: u32 = 5000;

impl MetricLan {
    /// `host` e.g. `10.1.2.2/24`, `gateway` e.g. `10.1.2.1/24`.
    pub fn new(host: &str, gateway: &str) -> MetricLan {
        require_root();
        let gw = Netns::new();
        let lan = MetricLan {
            parent: unique("dl"),
            peer: unique("dp"),
            gw,
        };
        must(&format!(
            "ip link add {} type veth peer name {}",
            lan.parent, lan.peer
        ));
        must(&format!("ip link set {} netns {}", lan.peer, lan.gw.name));
        lan.gw
            .must_ip(&format!("addr add {gateway} dev {}", lan.peer));
        lan.gw.must_ip(&format!("link set {} up", lan.peer));
        must(&format!(
            "ip addr add {host} dev {} metric {LAN_METRIC}",
            lan.parent
        ));
        must(&format!("ip link set {} up", lan.parent));
        lan
    }

    /// Moves host and gateway from one subnet to another (new added first).
    pub fn readdress(&self, old: (&str, &str), new: (&str, &str)) {
        self.gw
            .must_ip(&format!("addr add {} dev {}", new.1, self.peer));
        self.gw
            .must_ip(&format!("addr del {} dev {}", old.1, self.peer));
        must(&format!(
            "ip addr add {} dev {p} metric {LAN_METRIC} && ip addr del {} dev {p}",
            new.0,
            old.0,
            p = self.parent
        ));
    }
}

impl Drop for MetricLan {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.parent));
    }
}

/// The compose tool: the `docker compose` plugin when installed, else
/// `docker-compose`; `EDGENET_COMPOSE` (e.g. "docker-compose") overrides.
pub fn compose_program() -> Vec<String> {
    if let Ok(c) = std::env::var("EDGENET_COMPOSE")
        && !c.trim().is_empty()
    {
        return c.split_whitespace().map(str::to_string).collect();
    }
    if sh("docker compose version >/dev/null 2>&1").is_ok() {
        return vec!["docker".into(), "compose".into()];
    }
    vec!["docker-compose".into()]
}

/// A compose project of `packaging/compose.yaml` with unique names (project, agent
/// container, volume). Drop brings it down with its volume.
pub struct Compose {
    pub project: String,
    pub agent_container: String,
    pub volume: String,
    pub file: PathBuf,
    /// Override files after `file` (`-f compose.yaml -f OVERRIDE`).
    pub overrides: Vec<PathBuf>,
    images: (String, String),
    program: Vec<String>,
    /// Variables set on top of (or instead of) the defaults of [`Compose::envs`].
    extra: Vec<(&'static str, String)>,
}

impl Compose {
    pub fn new(images: &Images) -> Compose {
        let project = unique("edn");
        Compose {
            agent_container: format!("{project}-agent"),
            volume: format!("{project}-orchestrator"),
            project,
            file: packaging("compose.yaml"),
            overrides: Vec::new(),
            images: (images.netmon.clone(), images.agent.clone()),
            program: compose_program(),
            extra: Vec::new(),
        }
    }

    /// Sets a compose variable (e.g. `EDGENET_NO_DHCP_CLIENT=false` for a LAN that
    /// has a DHCP server, or `EDGENET_CLOUD_URL`).
    pub fn set(&mut self, key: &'static str, value: &str) {
        self.extra.retain(|(k, _)| *k != key);
        self.extra.push((key, value.to_string()));
    }

    /// The environment the project's names come from (as install.sh passes it on).
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("EDGENET_NETMON_IMAGE", self.images.0.clone()),
            ("EDGENET_AGENT_IMAGE", self.images.1.clone()),
            ("EDGENET_AGENT_CONTAINER", self.agent_container.clone()),
            ("EDGENET_VOLUME", self.volume.clone()),
            // Unless [`Compose::set`] says otherwise: a LAN without a DHCP server.
            ("EDGENET_NO_DHCP_CLIENT", "true".to_string()),
        ];
        v.retain(|(k, _)| !self.extra.iter().any(|(e, _)| e == k));
        v.extend(self.extra.iter().cloned());
        v
    }

    /// `<compose> -p <project> -f compose.yaml <args>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program[0]);
        c.args(&self.program[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file);
        for o in &self.overrides {
            c.arg("-f").arg(o);
        }
        c.args(args).envs(self.envs());
        c
    }

    /// Runs a compose command that must succeed; its stdout.
    pub fn must(&self, args: &[&str]) -> String {
        let out =
            run(&mut self.command(args)).unwrap_or_else(|e| panic!("compose {args:?}: {e:#}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container id of a service ("" when it has none).
    pub fn container(&self, service: &str) -> String {
        self.must(&["ps", "-q", service]).trim().to_string()
    }

    /// Waits until both services' containers report `healthy`; panics after `limit`
    /// with their states and logs.
    pub fn wait_healthy(&self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let states: Vec<(String, String)> = ["netmon", "agent"]
                .iter()
                .map(|s| (s.to_string(), health(&self.container(s))))
                .collect();
            if states.iter().all(|(_, h)| h == "healthy") {
                return;
            }
            if Instant::now() > end {
                let logs = self
                    .command(&["logs", "--no-color", "--tail", "40"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!("not healthy after {limit:?}: {states:?}\n{logs}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Where the shared volume lives on the host (root can read it directly).
    pub fn volume_dir(&self) -> PathBuf {
        PathBuf::from(
            must(&format!(
                "docker volume inspect -f '{{{{.Mountpoint}}}}' {}",
                self.volume
            ))
            .trim(),
        )
    }

    /// `down -v`: containers, the project network and the volume.
    pub fn down(&self) -> Result<()> {
        run(&mut self.command(&["down", "-v", "--remove-orphans", "-t", "10"]))?;
        Ok(())
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
        let _ = sh(&format!(
            "docker volume rm -f {} >/dev/null 2>&1",
            self.volume
        ));
    }
}

/// A container's health status (`healthy`, `starting`, ...), or its state when it
/// has no health check, or `missing`.
pub fn health(container: &str) -> String {
    if container.is_empty() {
        return "missing".into();
    }
    sh(&format!(
        "docker inspect -f '{{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}{{{{.State.Status}}}}{{{{end}}}}' {container}"
    ))
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "missing".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unit_values_with_continuations_and_repeats() {
        let text = "[Unit]\nDescription=x\n# ExecStart=/bin/no\n[Service]\nExecStart=/usr/bin/a \\\n  --b \"c d\"\nSystemCallFilter=@system-service\nSystemCallFilter=~@mount\n[Install]\nWantedBy=multi-user.target\n";
        assert_eq!(
            unit_values(text, "Service", "ExecStart"),
            vec!["/usr/bin/a  --b \"c d\""]
        );
        assert_eq!(
            split_words(&unit_values(text, "Service", "ExecStart")[0]),
            vec!["/usr/bin/a", "--b", "c d"]
        );
        assert_eq!(
            unit_values(text, "Service", "SystemCallFilter"),
            vec!["@system-service", "~@mount"]
        );
        assert!(unit_values(text, "Unit", "ExecStart").is_empty());
    }
}
