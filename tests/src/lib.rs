//! The shared end-to-end rig: network namespaces, veth LANs, the real binaries.
//!
//! Everything here needs root and iproute2. A test that cannot get them fails with a
//! message saying so; it never passes by skipping (CI=true or not).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod agent;
pub mod cloud;
pub mod compose_lan;
pub mod deploy;
pub mod dhcp;
pub mod docker;
pub mod kernel;
pub mod netmon;
pub mod private_engine;
pub mod runtime_image;
pub mod systemd;

pub use netmon::NetmonProc;

/// Fails the test unless we are root with iproute2 available.
pub fn require_root() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, veth links): run the suite as root, as .ci/run does"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs iproute2 (`ip`): apt-get install iproute2"
    );
}

/// A name unique to this process and call, at most 15 bytes (IFNAMSIZ - 1) when
/// `prefix` is at most 6 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    let r = fastrand::u32(..) % 100;
    let s = format!("{prefix}{pid:05}{r:02}{n:02}");
    s.chars().take(15).collect()
}

/// Runs a command line through `sh -c`; fails with its stderr when it fails.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("spawn sh -c {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`sh`] but panics with the error: for test set-up steps.
pub fn must(cmd: &str) -> String {
    sh(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The directory holding the workspace's built binaries (`target/debug`), found from
/// the running test executable (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe has a parent");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// Path of a workspace binary, built by `cargo test`/`cargo nextest run --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`), \
         or run the suite with `cargo nextest run --workspace`",
        p.display()
    );
    p
}

/// A fresh temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace (`ip netns add`), deleted on drop with everything in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        require_root();
        let name = unique("nt");
        must(&format!("ip netns add {name}"));
        must(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> Result<String> {
        sh(&format!("ip -n {} {args}", self.name))
    }

    /// Runs `ip -n <ns> <args>`, panicking on failure.
    pub fn must_ip(&self, args: &str) -> String {
        self.ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs a shell command inside the namespace.
    pub fn exec(&self, cmd: &str) -> Result<String> {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// A command to spawn inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Adds a veth pair `a`/`b`, both inside this namespace, `a` up.
    pub fn veth(&self, a: &str, b: &str) {
        self.must_ip(&format!("link add {a} type veth peer name {b}"));
        self.must_ip(&format!("link set {a} up"));
        self.must_ip(&format!("link set {b} up"));
    }

    /// `ip -j` output parsed, e.g. `json("addr show")`.
    pub fn json(&self, args: &str) -> serde_json::Value {
        let out = self.must_ip(&format!("-j {args}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args}: {e}: {out}"))
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns delete {}", self.name));
    }
}

/// A child process killed on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }
    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }
    /// Waits up to `limit` for exit; returns the status if it exited.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child().try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit` with `what`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
