//! What the compose deployment's end-to-end tests add to [`crate::deploy::Compose`]: a
//! DHCP LAN whose parent is in the host's namespace (netmon watches the host), the
//! agent's CLI through `compose exec`, and an override file that puts the project's
//! network on a subnet of the test's own with a host name for the cloud stand-in.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::deploy::{Compose, LAN_METRIC};
use crate::dhcp::DhcpLan;
use crate::{TempDir, must, sh, wait_for};

/// A [`DhcpLan`] (dnsmasq in a "lan" namespace across a veth) whose parent is in the
/// host's namespace with the host address `.2/24` at metric 5000, so netmon reports a
/// LAN on it while the host's own routes stay first.
pub struct HostDhcpLan {
    pub lan: DhcpLan,
}

/// `10.a.b` as (a, b).
pub fn octets(prefix: &str) -> (u8, u8) {
    let p: Vec<u8> = prefix.split('.').filter_map(|x| x.parse().ok()).collect();
    assert_eq!(p.len(), 3, "not a 10.a.b prefix: {prefix}");
    (p[1], p[2])
}

impl HostDhcpLan {
    /// The LAN `prefix.0/24` (`prefix` = "10.a.b"), dnsmasq started.
    pub fn new(prefix: &str) -> HostDhcpLan {
        let (a, b) = octets(prefix);
        let mut lan = DhcpLan::new(a, b);
        must(&format!(
            "ip addr add {prefix}.2/24 dev {} metric {LAN_METRIC}",
            lan.parent
        ));
        lan.start();
        HostDhcpLan { lan }
    }

    pub fn parent(&self) -> &str {
        &self.lan.parent
    }

    /// Moves the LAN to `prefix.0/24`: dnsmasq restarts there (lease file kept), then
    /// the host address moves, which is what netmon reports.
    pub fn move_to(&mut self, prefix: &str) {
        let old = self.lan.prefix.clone();
        let (a, b) = octets(prefix);
        self.lan.renumber(a, b);
        must(&format!(
            "ip addr add {prefix}.2/24 dev {p} metric {LAN_METRIC} && ip addr del {old}.2/24 dev {p}",
            p = self.lan.parent
        ));
    }

    /// The addresses dnsmasq's lease file holds for `mac` (after a move, the old
    /// subnet's entry can stay beside the new one).
    pub fn leases_of(&self, mac: &str) -> Vec<String> {
        self.lan
            .leases()
            .into_iter()
            .filter(|(m, _, _)| m.eq_ignore_ascii_case(mac))
            .map(|(_, ip, _)| ip)
            .collect()
    }

    /// Waits until dnsmasq's lease file holds `mac` with an address in the LAN's
    /// current subnet; that address.
    pub fn wait_lease(&self, mac: &str, limit: Duration) -> String {
        let prefix = format!("{}.", self.lan.prefix);
        wait_for(limit, &format!("dnsmasq's lease for {mac}"), || {
            self.leases_of(mac)
                .into_iter()
                .find(|ip| ip.starts_with(&prefix))
        })
    }
}

impl Drop for HostDhcpLan {
    fn drop(&mut self) {
        // The peer's namespace goes with DhcpLan, and the veth with it; this is for
        // a parent left behind if that order ever changes.
        let _ = crate::sh(&format!("ip link del {} 2>/dev/null", self.lan.parent));
    }
}

/// `<compose> exec -T agent agent ARGS`, which must succeed; its stdout.
pub fn exec_agent(compose: &Compose, args: &[&str]) -> String {
    // -T: no TTY (the test has none).
    let mut a = vec!["exec", "-T", "agent", "agent"];
    a.extend_from_slice(args);
    compose.must(&a)
}

/// `agent status --json` through `compose exec`, or `None` while it cannot answer.
pub fn agent_status(compose: &Compose) -> Option<Value> {
    let out = compose
        .command(&["exec", "-T", "agent", "agent", "status", "--json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until the agent (through `compose exec`) lists `parent` among netmon's
/// interfaces.
pub fn wait_agent_knows(compose: &Compose, parent: &str, limit: Duration) {
    wait_for(limit, &format!("the agent to know {parent}"), || {
        agent_status(compose)?["interfaces"]
            .as_array()?
            .iter()
            .any(|i| i["name"] == parent)
            .then_some(())
    });
}

/// The stored MAC of `runtime`'s vNIC on `parent` (`agent runtime list --json`).
pub fn stored_mac(compose: &Compose, runtime: &str, parent: &str) -> String {
    let list: Value = serde_json::from_str(&exec_agent(compose, &["runtime", "list", "--json"]))
        .expect("runtime list --json");
    crate::agent::mac_in_list(&list, runtime, parent)
}

/// An override file: the project's default network on `prefix.0/24` with the host's
/// end (the bridge) at `prefix.1`, which the agent's container knows as `host_name`,
/// and `environment` added to the agent's. The bridge address exists once the
/// network does, so a server on the host can bind it before the agent starts.
pub struct CloudOverride {
    pub file: PathBuf,
    pub gateway: String,
    _dir: TempDir,
}

impl CloudOverride {
    pub fn new(prefix: &str, host_name: &str, environment: &[(&str, &str)]) -> CloudOverride {
        let dir = TempDir::new("cov");
        let file = dir.join("override.yaml");
        let gateway = format!("{prefix}.1");
        let env: String = environment
            .iter()
            .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
            .collect();
        let env = if env.is_empty() {
            String::new()
        } else {
            format!("    environment:\n{env}")
        };
        let text = format!(
            "version: \"2.4\"\nservices:\n  agent:\n    extra_hosts:\n      - \"{host_name}:{gateway}\"\n{env}\
             networks:\n  default:\n    ipam:\n      config:\n        - subnet: {prefix}.0/24\n          gateway: {gateway}\n"
        );
        std::fs::write(&file, text).expect("write the override file");
        CloudOverride {
            file,
            gateway,
            _dir: dir,
        }
    }
}

/// After `down -v`: no container, network or volume of the project is left, nor
/// runtime `rt`, its `NAME_internal` network or a MACVLAN network on `parent`.
pub fn assert_nothing_left(compose: &Compose, rt: &str, parent: &str) {
    let labelled = |what: &str| {
        sh(&format!(
            "docker {what} ls -q --filter label=com.docker.compose.project={}",
            compose.project
        ))
        .unwrap_or_default()
    };
    let left = labelled("container");
    assert!(left.trim().is_empty(), "containers left: {left}");
    let nets = labelled("network");
    assert!(nets.trim().is_empty(), "project networks left: {nets}");
    let gone = |cmd: String| sh(&format!("{cmd} >/dev/null 2>&1")).is_err();
    assert!(
        gone(format!("docker volume inspect {}", compose.volume)),
        "volume {} left",
        compose.volume
    );
    assert!(
        crate::docker::networks_on(parent).is_empty(),
        "managed networks left on {parent}"
    );
    assert!(gone(format!("docker inspect {rt}")), "runtime {rt} left");
    assert!(
        gone(format!("docker network inspect {rt}_internal")),
        "{rt}_internal left"
    );
}
