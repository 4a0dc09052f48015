//! The agent end to end: the real `netmon` (in the host namespace, because the
//! engine's macvlan parent is a host link) and the real `agent`, a host veth whose
//! peer sits in a gateway namespace, and helpers to look inside containers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::docker::Taken;
use crate::{ChildGuard, Netns, bin, must, sh, wait_for};

/// Fails the test unless root and the Docker engine answer (the docker rig's check).
pub fn require_engine() {
    crate::docker::require_engine();
}

/// netmon running in the host namespace, watching only the given links.
pub struct HostNetmon {
    pub child: ChildGuard,
    pub socket: PathBuf,
    args: Vec<String>,
}

impl HostNetmon {
    pub fn start(dir: &Path, include: &[&str]) -> HostNetmon {
        let socket = dir.join("netmon.sock");
        let mut args = vec![
            "--socket".to_string(),
            socket.display().to_string(),
            "--debounce".into(),
            "1s".into(),
        ];
        for i in include {
            args.push("--include".into());
            args.push(i.to_string());
        }
        let mut n = HostNetmon {
            child: ChildGuard(None),
            socket,
            args,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(bin("netmon"))
            .args(&self.args)
            .env(
                "NETMON_LOG_LEVEL",
                std::env::var("NETMON_LOG_LEVEL").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn netmon");
        self.child = ChildGuard(Some(child));
        let s = self.socket.clone();
        let child = &mut self.child;
        wait_for(Duration::from_secs(10), "netmon's socket", || {
            if let Ok(Some(st)) = child.child().try_wait() {
                panic!("netmon exited early: {st}");
            }
            s.exists().then_some(())
        });
    }

    /// Stops netmon with SIGTERM and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.child.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait_timeout(Duration::from_secs(10));
        self.child = ChildGuard(None);
        self.spawn();
    }
}

/// The real `agent run`, sockets and state in a directory of the test's.
pub struct AgentProc {
    pub child: ChildGuard,
    pub control: PathBuf,
    pub state_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AgentProc {
    /// Starts `agent run` and waits for its control socket. `extra` adds options
    /// (e.g. `--docker-host`).
    pub fn start(dir: &Path, netmon_socket: &Path, extra: &[&str]) -> AgentProc {
        Self::start_with_env(dir, netmon_socket, extra, &[])
    }

    /// Like [`AgentProc::start`] with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        netmon_socket: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        let mut a = Self::configured(dir, netmon_socket, extra, env);
        a.spawn();
        a
    }

    /// The agent's command line, not started yet ([`AgentProc::spawn`] or `launch`).
    pub fn configured(
        dir: &Path,
        netmon_socket: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        let control = dir.join("agent.sock");
        let state_dir = dir.join("state");
        let mut args: Vec<String> = vec![
            "--control-socket".into(),
            control.display().to_string(),
            "run".into(),
            "--netmon-socket".into(),
            netmon_socket.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        AgentProc {
            child: ChildGuard(None),
            control,
            state_dir,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts the process again and waits for its control socket.
    pub fn spawn(&mut self) {
        self.launch();
        let s = self.control.clone();
        let child = &mut self.child;
        wait_for(
            Duration::from_secs(10),
            "the agent's control socket",
            || {
                if let Ok(Some(st)) = child.child().try_wait() {
                    panic!("agent exited early: {st}");
                }
                s.exists().then_some(())
            },
        );
    }

    /// Starts the process and returns at once (start-up races are tested with it).
    pub fn launch(&mut self) {
        let child = Command::new(bin("agent"))
            .args(&self.args)
            .env(
                "AGENT_LOG_LEVEL",
                std::env::var("AGENT_LOG_LEVEL").unwrap_or("info".into()),
            )
            .env_remove("DOCKER_HOST")
            .env_remove("AGENT_CONTAINER")
            // Tests of other features have no DHCP server on their LANs; the DHCP
            // tests (e2e_agent_dhcp) turn the client on with AGENT_NO_DHCP_CLIENT=false.
            .env("AGENT_NO_DHCP_CLIENT", "true")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn agent");
        self.child = ChildGuard(Some(child));
    }

    /// SIGTERM (as systemd stops it), then wait for the process to be gone.
    pub fn stop(&mut self) {
        self.child.signal(nix::sys::signal::Signal::SIGTERM);
        let st = self.child.wait_timeout(Duration::from_secs(15));
        assert!(
            st.is_some(),
            "the agent did not stop within 15 s of SIGTERM"
        );
        self.child = ChildGuard(None);
    }

    /// SIGKILL (no clean-up at all), then wait for the process to be gone.
    pub fn kill9(&mut self) {
        self.child.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait_timeout(Duration::from_secs(10));
        self.child = ChildGuard(None);
    }

    /// The CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("agent"))
            .arg("--control-socket")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("spawn agent CLI")
    }

    /// The CLI, which must succeed; its stdout.
    pub fn must(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "agent {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The CLI with `--json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.must(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("agent {a:?}: {e}: {out}"))
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// Waits until the agent is linked to netmon and the engine and netmon reports
    /// each of `parents`.
    pub fn wait_linked(&self, parents: &[&str]) {
        wait_for(
            Duration::from_secs(20),
            "agent linked to netmon and the engine",
            || {
                let s = self.status();
                let seen = |p: &str| {
                    s["interfaces"]
                        .as_array()
                        .is_some_and(|i| i.iter().any(|x| x["name"] == p))
                };
                let ok = s["netmon"]["connected"] == true
                    && s["engine"]["reachable"] == true
                    && parents.iter().all(|p| seen(p));
                ok.then_some(())
            },
        );
    }

    /// `agent runtime create NAME --image IMAGE --vnic name=VNIC,parent=PARENT,mode=dhcp`,
    /// which must succeed; its stdout.
    pub fn create_dhcp(&self, name: &str, image: &str, vnic: &str, parent: &str) -> String {
        self.must(&[
            "runtime",
            "create",
            name,
            "--image",
            image,
            "--vnic",
            &format!("name={vnic},parent={parent},mode=dhcp"),
        ])
    }
}

/// A LAN: a veth `parent` in the host namespace (the MACVLAN parent) whose peer
/// sits in a namespace holding the gateway address. Removed on drop.
pub struct HostLan {
    pub parent: String,
    pub gw_ns: Netns,
}

impl HostLan {
    /// `parent` gets `host_cidr` (e.g. 10.61.0.2/24); the peer gets `gw` (10.61.0.1/24).
    pub fn new(parent: &str, host_cidr: &str, gw_cidr: &str) -> HostLan {
        let gw_ns = Netns::new();
        let peer = format!("{parent}p");
        let peer: String = peer.chars().take(15).collect();
        must(&format!("ip link add {parent} type veth peer name {peer}"));
        let lan = HostLan {
            parent: parent.to_string(),
            gw_ns,
        };
        must(&format!("ip link set {peer} netns {}", lan.gw_ns.name));
        lan.gw_ns.must_ip(&format!("addr add {gw_cidr} dev {peer}"));
        lan.gw_ns.must_ip(&format!("link set {peer} up"));
        must(&format!("ip addr add {host_cidr} dev {parent}"));
        must(&format!("ip link set {parent} up"));
        lan
    }

    /// Moves the host's address on the parent to another subnet.
    pub fn readdress(&self, old_cidr: &str, new_cidr: &str) {
        must(&format!(
            "ip addr add {new_cidr} dev {p} && ip addr del {old_cidr} dev {p}",
            p = self.parent
        ));
    }
}

impl Drop for HostLan {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {}", self.parent));
    }
}

/// Containers and networks removed on drop (the test's, by name).
#[derive(Default)]
pub struct DockerCleanup {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    /// Remove every network on these parents (the macvlan networks the agent made).
    pub parents: Vec<String>,
}

impl DockerCleanup {
    /// The runtimes' containers and internal networks, and every network on `parents`.
    pub fn runtimes(runtimes: &[&String], parents: &[&String]) -> DockerCleanup {
        DockerCleanup {
            containers: runtimes.iter().map(|r| r.to_string()).collect(),
            networks: runtimes.iter().map(|r| format!("{r}_internal")).collect(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = sh(&format!("docker rm -f {c} >/dev/null 2>&1"));
        }
        for n in &self.networks {
            let _ = sh(&format!("docker network rm {n} >/dev/null 2>&1"));
        }
        for p in &self.parents {
            let _ = sh(&format!(
                "for n in $(docker network ls -q --filter driver=macvlan); do \
                 [ \"$(docker network inspect -f '{{{{index .Options \"parent\"}}}}' $n)\" = {p} ] && docker network rm $n; \
                 done >/dev/null 2>&1"
            ));
        }
    }
}

/// A container's interfaces as `ip -j addr` inside it sees them.
pub fn container_links(container: &str) -> Result<Vec<Value>, String> {
    container_links_on("", container)
}

/// `docker` against the engine at `docker_host` (`""`: the CLI's default engine).
pub fn docker_on(docker_host: &str) -> Command {
    let mut c = Command::new("docker");
    if !docker_host.is_empty() {
        c.args(["-H", docker_host]);
    }
    c
}

/// [`container_links`] of a container of the engine at `docker_host`.
pub fn container_links_on(docker_host: &str, container: &str) -> Result<Vec<Value>, String> {
    let out = docker_on(docker_host)
        .args(["exec", container, "ip", "-j", "addr"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        // busybox `ip` has no -j: fall back to parsing the text form.
        let out = docker_on(docker_host)
            .args(["exec", container, "ip", "-o", "addr"])
            .output()
            .map_err(|e| e.to_string())?;
        let link = docker_on(docker_host)
            .args(["exec", container, "ip", "-o", "link"])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() || !link.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        return Ok(parse_ip_text(
            &String::from_utf8_lossy(&link.stdout),
            &String::from_utf8_lossy(&out.stdout),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `ip -o link` + `ip -o addr` text into the `ip -j addr` shape (ifname, address,
/// addr_info[].local for IPv4).
fn parse_ip_text(links: &str, addrs: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for l in links.lines() {
        // "2: eth0@if5: <...> mtu 1500 ... link/ether 02:42:ac:11:00:02 brd ..."
        let mut parts = l.split_whitespace();
        let _idx = parts.next();
        let Some(name) = parts.next() else { continue };
        let name = name.trim_end_matches(':');
        let name = name.split('@').next().unwrap_or(name).to_string();
        let words: Vec<&str> = l.split_whitespace().collect();
        let mac = words
            .iter()
            .position(|w| *w == "link/ether")
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string());
        let ips: Vec<Value> = addrs
            .lines()
            .filter(|a| {
                let w: Vec<&str> = a.split_whitespace().collect();
                w.get(1) == Some(&name.as_str()) && w.get(2) == Some(&"inet")
            })
            .filter_map(|a| {
                let w: Vec<&str> = a.split_whitespace().collect();
                let (ip, plen) = w.get(3)?.split_once('/')?;
                Some(serde_json::json!({"family": "inet", "local": ip, "prefixlen": plen.parse::<u32>().ok()}))
            })
            .collect();
        out.push(serde_json::json!({"ifname": name, "address": mac, "addr_info": ips}));
    }
    out
}

/// (MAC, IPv4 addresses) of the interface inside `container` holding an address
/// in `subnet_prefix` (e.g. "10.62.0."), or the one with `mac`.
pub fn find_link(
    links: &[Value],
    pred: impl Fn(&str, &[String]) -> bool,
) -> Option<(String, Vec<String>)> {
    links.iter().find_map(|l| {
        let mac = l.get("address")?.as_str()?.to_string();
        let ips = ipv4s(l)?;
        pred(&mac, &ips).then_some((mac, ips))
    })
}

/// The IPv4 addresses of one link of [`container_links`].
fn ipv4s(link: &Value) -> Option<Vec<String>> {
    Some(
        link.get("addr_info")?
            .as_array()?
            .iter()
            .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
            .filter_map(|a| a.get("local")?.as_str().map(str::to_string))
            .collect(),
    )
}

/// One link inside a container, as [`links_inside`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inside {
    pub name: String,
    /// Lower case.
    pub mac: String,
    pub ipv4: Vec<String>,
}

impl Inside {
    /// Named `name` with an address in `prefix.` (e.g. "10.62.0").
    pub fn is(&self, name: &str, prefix: &str) -> bool {
        self.name == name
            && self
                .ipv4
                .iter()
                .any(|ip| ip.starts_with(&format!("{prefix}.")))
    }
}

/// A container's links but loopback (empty when they cannot be read), of the engine at
/// `docker_host` (`""`: the CLI's default engine).
pub fn links_inside(docker_host: &str, container: &str) -> Vec<Inside> {
    container_links_on(docker_host, container)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| {
            let name = l.get("ifname")?.as_str()?.to_string();
            let mac = l.get("address")?.as_str().unwrap_or("").to_lowercase();
            let ipv4 = ipv4s(l)?;
            (name != "lo").then_some(Inside { name, mac, ipv4 })
        })
        .collect()
}

/// Polls `check` every 200 ms for up to 40 s; panics with `what` and its last answer.
pub fn wait_inside(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    let found = (0..200).any(|_| match check() {
        Ok(()) => true,
        Err(seen) => {
            last = seen;
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(found, "{what}: {last}");
}

/// Names of the networks a container is attached to (engine's view).
pub fn container_networks(container: &str) -> Vec<String> {
    sh(&format!(
        "docker inspect -f '{{{{range $k, $v := .NetworkSettings.Networks}}}}{{{{$k}}}} {{{{end}}}}' {container}"
    ))
    .map(|s| s.split_whitespace().map(str::to_string).collect())
    .unwrap_or_default()
}

/// A /24 triple free on this host ([`Taken`]): 10.<a>.<b>, 10.<a>.<b+1>,
/// 10.<a>.<b+2>, picked at random so concurrent tests rarely meet.
pub fn subnets() -> (String, String, String) {
    let pick = || {
        let a = fastrand::u8(160..=250);
        let b = fastrand::u8(0..=250);
        [0, 1, 2].map(|i| format!("10.{a}.{}", b + i))
    };
    let taken = Taken::read();
    let [s1, s2, s3] = (0..100)
        .map(|_| pick())
        .find(|t| taken.leaves_free(&[&t[0], &t[1], &t[2]]))
        .expect("no free /24 triple in 10.160.0.0 - 10.250.255.0 after 100 picks");
    (s1, s2, s3)
}

/// The stored MAC of a runtime's vNIC on `parent`, from `agent runtime list --json`.
pub fn stored_mac(agent: &AgentProc, runtime: &str, parent: &str) -> String {
    mac_in_list(&agent.json(&["runtime", "list"]), runtime, parent)
}

/// The MAC of `runtime`'s vNIC on `parent` in the output of `agent runtime list --json`.
pub fn mac_in_list(list: &Value, runtime: &str, parent: &str) -> String {
    list[runtime]
        .as_array()
        .and_then(|v| v.iter().find(|n| n["parent"] == parent))
        .and_then(|n| n["mac"].as_str())
        .unwrap_or_else(|| panic!("no stored MAC for {runtime} on {parent}: {list}"))
        .to_string()
}

/// Whether `container` has an interface with `mac` holding an address in `prefix.`.
pub fn has(container: &str, mac: &str, prefix: &str) -> bool {
    let Ok(links) = container_links(container) else {
        return false;
    };
    find_link(&links, |m, ips| {
        m.eq_ignore_ascii_case(mac) && ips.iter().any(|ip| ip.starts_with(&format!("{prefix}.")))
    })
    .is_some()
}

/// Whether `container` has an interface with `mac` holding exactly `ip`.
pub fn has_ip(container: &str, mac: &str, ip: &str) -> bool {
    let Ok(links) = container_links(container) else {
        return false;
    };
    find_link(&links, |m, ips| {
        m.eq_ignore_ascii_case(mac) && ips.iter().any(|i| i == ip)
    })
    .is_some()
}

pub fn changing_calls(report: &Value) -> u64 {
    let c = &report["engine_calls"];
    [
        "network_create",
        "network_remove",
        "connect",
        "disconnect",
        "container_changes",
        "mac_sets",
    ]
    .iter()
    .map(|k| c[*k].as_u64().unwrap_or(0))
    .sum()
}
