//! converge-bench's rig: a LAN (a host veth whose peer holds the gateway in a
//! namespace of its own), the real `netmon` and `agent run` processes, a socat proxy
//! in front of the engine, what each part created (removed on drop), and the
//! engine-side check that a runtime is attached.
//!
//! Over 400 lines: each piece is small, and they are one rig used only by this bench.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent::engine::Docker;
use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use serde_json::Value;

pub use crate::common::{IMAGE, ensure_image, sh};

/// `agent` and `netmon` next to this example (target/<profile>/).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench's own path has no target directory")?;
    let bin = dir.join(name);
    ensure!(
        bin.exists(),
        "{} is missing: cargo build -p agent -p netmon --bins --example converge-bench",
        bin.display()
    );
    Ok(bin)
}

/// A /24 LAN on a host veth; `.1` is the gateway in the peer's namespace, `.2` the host.
pub struct Lan {
    pub parent: String,
    netns: String,
    pub subnet: Ipv4Network,
}

pub fn lan_subnet(a: u8, b: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, a, b, 0), 24).expect("a /24")
}

fn nth(s: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(s.network()) + n)
}

impl Lan {
    pub fn new(parent: &str, subnet: Ipv4Network) -> Result<Lan> {
        let lan = Lan {
            parent: parent.to_string(),
            netns: parent.to_string(),
            subnet,
        };
        sh(&format!(
            "ip netns add {ns} && ip link add {p} type veth peer name {p}p && \
             ip link set {p}p netns {ns} && ip -n {ns} addr add {g}/24 dev {p}p && \
             ip -n {ns} link set {p}p up && ip addr add {h}/24 dev {p} && ip link set {p} up",
            ns = lan.netns,
            p = lan.parent,
            g = nth(subnet, 1),
            h = nth(subnet, 2),
        ))?;
        Ok(lan)
    }

    /// Moves the host (and the gateway) to `to`.
    pub fn readdress(&mut self, to: Ipv4Network) -> Result<()> {
        sh(&format!(
            "ip addr add {h2}/24 dev {p} && ip addr del {h1}/24 dev {p} && \
             ip -n {ns} addr add {g2}/24 dev {p}p && ip -n {ns} addr del {g1}/24 dev {p}p",
            p = self.parent,
            ns = self.netns,
            h1 = nth(self.subnet, 2),
            h2 = nth(to, 2),
            g1 = nth(self.subnet, 1),
            g2 = nth(to, 1),
        ))?;
        self.subnet = to;
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.parent));
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.netns));
    }
}

/// A child process, killed (its process group when `group`) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    group: bool,
}

impl Proc {
    fn spawn(cmd: &mut Command, group: bool) -> Result<Proc> {
        if group {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {:?}", cmd.get_program()))?;
        Ok(Proc {
            child: Some(child),
            group,
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id() as i32;
        let target = nix::unistd::Pid::from_raw(if self.group { -pid } else { pid });
        let sig = if self.group {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        let _ = nix::sys::signal::kill(target, sig);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_path(p: &Path, proc: &mut Proc, what: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    while !p.exists() {
        if let Some(st) = proc.exited() {
            bail!("{what} exited early: {st}");
        }
        ensure!(
            Instant::now() < end,
            "{what}: no {} after 15 s",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn log_file(dir: &Path, name: &str) -> Result<Stdio> {
    Ok(std::fs::File::create(dir.join(name))?.into())
}

/// netmon in the host namespace watching only `parent` (debounce 1 s).
pub fn netmon(dir: &Path, parent: &str) -> Result<(Proc, PathBuf)> {
    let socket = dir.join("netmon.sock");
    let mut p = Proc::spawn(
        Command::new(binary("netmon")?)
            .arg("--socket")
            .arg(&socket)
            .args(["--debounce", "1s", "--include", parent])
            .env("NETMON_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log_file(dir, "netmon.log")?)
            .stderr(log_file(dir, "netmon.err")?),
        false,
    )?;
    wait_path(&socket, &mut p, "netmon")?;
    Ok((p, socket))
}

/// `socat` forwarding a Unix socket to the real engine, in a process group of its
/// own so that killing it also ends the connections it forked (the agent's event
/// stream among them).
pub fn proxy(path: &Path) -> Result<Proc> {
    let _ = std::fs::remove_file(path);
    let mut p = Proc::spawn(
        Command::new("socat")
            // The default backlog (5) refuses connections under 16 parallel creates.
            .arg(format!("UNIX-LISTEN:{},fork,backlog=256", path.display()))
            .arg("UNIX-CONNECT:/var/run/docker.sock")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        true,
    )
    .context("socat (apt-get install socat)")?;
    wait_path(path, &mut p, "socat")?;
    Ok(p)
}

/// The real `agent run` (no periodic reconcile: only events and its own retries
/// trigger runs; no DHCP client: the engine's IPAM gives the LAN addresses).
pub struct AgentProc {
    pub proc: Proc,
    pub control: PathBuf,
}

impl AgentProc {
    pub fn start(dir: &Path, netmon: &Path, extra: &[&str]) -> Result<AgentProc> {
        let control = dir.join("agent.sock");
        let mut proc = Proc::spawn(
            Command::new(binary("agent")?)
                .arg("--control-socket")
                .arg(&control)
                .args(["--log-level", "warn", "run", "--netmon-socket"])
                .arg(netmon)
                .arg("--state-dir")
                .arg(dir.join("state"))
                .args(["--reconcile-interval", "1h"])
                .args(extra)
                .env_remove("DOCKER_HOST")
                .env("AGENT_NO_DHCP_CLIENT", "true")
                .stdin(Stdio::null())
                .stdout(log_file(dir, "agent.log")?)
                .stderr(log_file(dir, "agent.err")?),
            false,
        )?;
        wait_path(&control, &mut proc, "the agent")?;
        Ok(AgentProc { proc, control })
    }

    pub fn command(&self, args: &[&str]) -> Result<tokio::process::Command> {
        let mut c = tokio::process::Command::new(binary("agent")?);
        c.arg("--control-socket").arg(&self.control).args(args);
        Ok(c)
    }

    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(binary("agent")?)
            .arg("--control-socket")
            .arg(&self.control)
            .args(args)
            .output()?)
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.cli(&a)?;
        ensure!(o.status.success(), "agent {a:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).with_context(|| format!("agent {a:?}"))
    }

    /// Linked to netmon and the engine, and netmon reports `parent`.
    pub fn wait_linked(&self, parent: &str) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.json(&["status"])?;
            let seen = s["interfaces"]
                .as_array()
                .is_some_and(|i| i.iter().any(|x| x["name"] == parent));
            if seen && s["netmon"]["connected"] == true && s["engine"]["reachable"] == true {
                return Ok(());
            }
            ensure!(Instant::now() < end, "agent not linked after 30 s: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each runtime's stored MAC of its vNIC on `parent` (`runtime list --json`).
    pub fn macs(&self, names: &[String], parent: &str) -> Result<Vec<(String, MacAddr)>> {
        let list = self.json(&["runtime", "list"])?;
        names
            .iter()
            .map(|n| {
                let mac = list[n.as_str()]
                    .as_array()
                    .and_then(|v| v.iter().find(|x| x["parent"] == parent))
                    .and_then(|x| x["mac"].as_str())
                    .and_then(|m| m.parse().ok())
                    .with_context(|| format!("no stored MAC for {n}: {list}"))?;
                Ok((n.clone(), mac))
            })
            .collect()
    }

    /// `None` when every vNIC of `names` is `attached` in `status` and `health` is 0;
    /// otherwise what is not.
    pub fn not_converged(&self, names: &[String]) -> Result<Option<String>> {
        let s = self.json(&["status"])?;
        for n in names {
            let v = &s["runtimes"][n.as_str()];
            let ok = v.as_array().is_some_and(|v| {
                !v.is_empty() && v.iter().all(|x| x["state"]["state"] == "attached")
            });
            if !ok {
                return Ok(Some(format!("{n}: {v}")));
            }
        }
        let h = self.cli(&["health"])?;
        Ok((!h.status.success()).then(|| format!("health: {}", stderr(&h))))
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Runs `agent ARGS(name)` for every name, `in_flight` CLI processes at once; the
/// first failure is returned.
pub async fn cli_each(
    agent: &AgentProc,
    names: &[String],
    in_flight: usize,
    args: impl Fn(&str) -> Vec<String>,
) -> Result<()> {
    let cmds: Vec<tokio::process::Command> = names
        .iter()
        .map(|n| {
            let a = args(n);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            agent.command(&a)
        })
        .collect::<Result<_>>()?;
    let outs: Vec<Result<Output>> = futures::stream::iter(cmds)
        .map(|mut c| async move { Ok(c.output().await?) })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    for o in outs {
        let o = o?;
        ensure!(o.status.success(), "agent CLI failed: {}", stderr(&o));
    }
    Ok(())
}

/// Attached as the engine sees it: the container has an endpoint on `network`, and
/// the link inside it holding that endpoint's address carries `mac`. (20.10 ignores
/// the MAC asked for at connect, so its inspect shows the MAC the engine chose; the
/// stored one is read inside the container.)
pub async fn attached(docker: &Docker, name: &str, network: &str, mac: MacAddr) -> bool {
    let Ok(Some(c)) = docker.container(name).await else {
        return false;
    };
    let Some(ip) = c
        .endpoints
        .iter()
        .find(|e| e.network_name == network)
        .and_then(|e| e.ipv4)
    else {
        return false;
    };
    c.link_with(ip).is_some_and(|l| l.mac == Some(mac))
}

/// Polls the engine (16 inspects in flight, only for those not yet seen attached)
/// until every runtime is attached to `network` with its MAC; the time from `t0`
/// to the poll that saw the last one.
pub async fn wait_attached(
    docker: &Docker,
    want: &[(String, MacAddr)],
    network: &str,
    t0: Instant,
    limit: Duration,
) -> Result<Duration> {
    let mut pending: Vec<(String, MacAddr)> = want.to_vec();
    loop {
        let seen: Vec<bool> = futures::stream::iter(pending.iter())
            .map(|(n, mac)| attached(docker, n, network, *mac))
            .buffered(16)
            .collect()
            .await;
        let mut it = seen.into_iter();
        pending.retain(|_| !it.next().unwrap_or(false));
        if pending.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!(
                "{} of {} not attached to {network} after {limit:?}: {:?}",
                pending.len(),
                want.len(),
                pending.iter().map(|p| &p.0).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Containers, networks (by name) and every macvlan network on `parent`, removed on
/// drop (the containers first: a network with endpoints cannot go).
pub struct Cleanup {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub parent: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Detached first: on 20.10, `rm -f` of many attached containers can leave a
        // stale endpoint that keeps the network until the engine restarts
        // (moby/moby#43286).
        let on_parent = macvlan_networks(&self.parent);
        for net in &on_parent {
            for c in &self.containers {
                let _ = sh(&format!(
                    "docker network disconnect -f {net} {c} >/dev/null 2>&1"
                ));
            }
        }
        for chunk in self.containers.chunks(50) {
            let _ = sh(&format!("docker rm -f {} >/dev/null 2>&1", chunk.join(" ")));
        }
        for chunk in self.networks.chunks(50) {
            let _ = sh(&format!(
                "docker network rm {} >/dev/null 2>&1",
                chunk.join(" ")
            ));
        }
        for net in macvlan_networks(&self.parent) {
            let _ = sh(&format!("docker network rm {net} >/dev/null 2>&1"));
        }
    }
}

/// The macvlan networks whose parent is `parent`, by name.
fn macvlan_networks(parent: &str) -> Vec<String> {
    if parent.is_empty() {
        return Vec::new();
    }
    sh(
        "for n in $(docker network ls -q --filter driver=macvlan); do \
        docker network inspect -f '{{index .Options \"parent\"}} {{.Name}}' $n; done",
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.split_once(' '))
    .filter(|(p, _)| *p == parent)
    .map(|(_, n)| n.to_string())
    .collect()
}
