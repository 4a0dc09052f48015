//! A DHCP LAN for the agent's DHCP client: the test's own network namespace plays the
//! host and holds the parent link (one end of a veth); the other end sits in a "lan"
//! namespace holding the gateway address and running Debian's `dnsmasq`.
//!
//! The server cannot sit on the parent itself (a macvlan parent does not hear its own
//! children's traffic that way), so it is across the veth, as on a real LAN.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ChildGuard, Netns, TempDir, must, require_root, unique, wait_for};

/// One LAN: subnet `10.<n>.<m>.0/24`, gateway `.1`, pool `.50`-`.150`.
pub struct DhcpLan {
    pub lan: Netns,
    /// The parent link, in the caller's namespace.
    pub parent: String,
    pub peer: String,
    pub prefix: String,
    pub dir: TempDir,
    server: Option<ChildGuard>,
    /// Extra dnsmasq arguments (e.g. T1/T2), kept for restarts.
    pub extra: Vec<String>,
}

/// Fails (never skips) without root, iproute2 or dnsmasq.
pub fn require_dnsmasq() {
    require_root();
    let ok = Command::new("dnsmasq")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs dnsmasq: apt-get install dnsmasq-base (.ci/run does)"
    );
}

impl DhcpLan {
    /// A LAN `10.<a>.<b>.0/24` whose parent is in the calling thread's namespace.
    /// No server runs until [`DhcpLan::start`].
    pub fn new(a: u8, b: u8) -> Self {
        require_dnsmasq();
        let lan = Netns::new();
        let parent = unique("dp");
        let peer = unique("dq");
        must(&format!(
            "ip link add {parent} type veth peer name {peer} netns {}",
            lan.name
        ));
        must(&format!("ip link set {parent} up"));
        let prefix = format!("10.{a}.{b}");
        lan.must_ip(&format!("addr add {prefix}.1/24 dev {peer}"));
        lan.must_ip(&format!("link set {peer} up"));
        DhcpLan {
            lan,
            parent,
            peer,
            prefix,
            dir: TempDir::new("dhcp"),
            server: None,
            extra: Vec::new(),
        }
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn lease_file(&self) -> PathBuf {
        self.dir.join("leases")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    /// Starts dnsmasq (lease 2 min, dnsmasq's minimum) with `self.extra`; waits until
    /// its pid file exists.
    pub fn start(&mut self) {
        let pid = self.dir.join("pid");
        let _ = std::fs::remove_file(&pid);
        let p = &self.prefix;
        let mut c = self.lan.command(std::path::Path::new("dnsmasq"));
        c.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--user=root",
            "--port=0",
            &format!("--interface={}", self.peer),
            "--bind-interfaces",
            "--except-interface=lo",
            &format!("--dhcp-range={p}.50,{p}.150,255.255.255.0,2m"),
            &format!("--dhcp-option=option:router,{p}.1"),
            &format!("--dhcp-option=option:dns-server,{p}.1"),
            "--no-ping",
            "--log-dhcp",
            &format!("--dhcp-leasefile={}", self.lease_file().display()),
            &format!("--log-facility={}", self.log_file().display()),
            &format!("--pid-file={}", pid.display()),
        ]);
        c.args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.server = Some(ChildGuard(Some(c.spawn().expect("spawn dnsmasq"))));
        wait_for(Duration::from_secs(10), "dnsmasq's pid file", || {
            pid.exists().then_some(())
        });
    }

    /// Stops dnsmasq (its lease file stays).
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Lines of the log holding `word` (e.g. "DHCPDISCOVER") and `mac`.
    pub fn log_lines(&self, word: &str, mac: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(word) && l.contains(mac))
            .map(str::to_string)
            .collect()
    }

    /// The lease file's entries: (mac, address, client id).
    pub fn leases(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.lease_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5).then(|| (f[1].to_string(), f[2].to_string(), f[4].to_string()))
            })
            .collect()
    }

    /// The lease file's entry for `mac`, if any.
    pub fn lease_of(&self, mac: &str) -> Option<(String, String)> {
        self.leases()
            .into_iter()
            .find(|(m, _, _)| m.eq_ignore_ascii_case(mac))
            .map(|(_, ip, id)| (ip, id))
    }

    /// Moves the LAN to another subnet: the gateway address changes and dnsmasq
    /// restarts with the new range (the lease file is kept).
    pub fn renumber(&mut self, a: u8, b: u8) {
        self.stop();
        self.lan.must_ip(&format!("addr flush dev {}", self.peer));
        self.prefix = format!("10.{a}.{b}");
        self.lan
            .must_ip(&format!("addr add {}.1/24 dev {}", self.prefix, self.peer));
        self.start();
    }
}
