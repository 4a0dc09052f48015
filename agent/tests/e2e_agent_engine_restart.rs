//! End to end across an ENGINE restart, on a private engine (`e2e::private_engine`: the
//! shared engine serves other suites and must never be restarted): real netmon, real
//! agent (`--docker-host` the private socket), real kernel. The vNIC's link inside the
//! runtime is `eth0` with its stored MAC and the internal link `int0`; the engine is
//! stopped with SIGTERM (which stops the runtime: restart policy `no`, no live-restore)
//! and `status` says the engine is unreachable and the vNIC pending, `health` fails;
//! the engine is started again and, with no other trigger, the agent starts the runtime
//! the engine stopped and attaches it with the same name and MAC (`status` attached,
//! `health` 0). A runtime stopped by hand well before stays stopped, and so does one
//! stopped by `agent runtime stop` just before. A LAN move after the restart still
//! removes the old link. And a host reboot (agent, engine and netmon stopped, then
//! started): the agent starts from its state file what ran, not what `agent runtime
//! stop` stopped, and the DHCP lease is kept (the client on, dnsmasq on the LAN).

use std::path::Path;
use std::time::{Duration, Instant};

use agent::plan::INTERNAL_IFNAME;
use e2e::agent::{AgentProc, HostLan, HostNetmon, links_inside, stored_mac, subnets, wait_inside};
use e2e::dhcp::DhcpLan;
use e2e::private_engine::PrivateEngine;
use e2e::{TempDir, unique, wait_for};
use serde_json::Value;

/// Exactly two links inside: `eth0` with `mac` on the LAN `prefix`, and `int0`.
fn named_on(engine: &PrivateEngine, rt: &str, prefix: &str, mac: &str) -> Result<(), String> {
    let l = links_inside(&engine.host, rt);
    let ok = l.len() == 2
        && l.iter()
            .any(|x| x.is("eth0", prefix) && x.mac.eq_ignore_ascii_case(mac))
        && l.iter().any(|x| x.name == INTERNAL_IFNAME);
    if ok {
        return Ok(());
    }
    let status = engine.docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", rt]);
    Err(format!(
        "{l:?}; container: {}",
        status.unwrap_or_else(|e| e)
    ))
}

fn wait_named(engine: &PrivateEngine, rt: &str, prefix: &str, mac: &str, what: &str) {
    wait_inside(
        &format!(
            "{what}: expected eth0 ({mac}) on {prefix}.0/24 and {INTERNAL_IFNAME}, nothing else; inside"
        ),
        || named_on(engine, rt, prefix, mac),
    );
}

fn state(agent: &AgentProc, rt: &str) -> Value {
    agent.status()["runtimes"][rt][0]["state"].clone()
}

fn wait_attached(agent: &AgentProc, rt: &str, what: &str) {
    let mut last = Value::Null;
    let found = (0..150).any(|_| {
        let s = agent.status();
        let ok = s["engine"]["reachable"] == true
            && s["runtimes"][rt][0]["state"]["state"] == "attached"
            && s["runtimes"][rt][0]["ifname_inside"] == "eth0";
        last = s;
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    assert!(found, "{what}: status never said attached as eth0: {last}");
}

/// While the engine is stopped: `status` says it is unreachable and the vNIC pending
/// for it; `health` fails and says why.
fn truth_while_down(agent: &AgentProc, rt: &str) {
    wait_for(
        Duration::from_secs(20),
        "status: engine unreachable",
        || (agent.status()["engine"]["reachable"] == false).then_some(()),
    );
    let st = state(agent, rt);
    assert_eq!(st["state"], "pending", "{st}");
    assert!(
        st["waiting_for"].as_str().unwrap_or("").contains("engine"),
        "{st}"
    );
    let h = agent.cli(&["health"]);
    assert_eq!(h.status.code(), Some(1), "health while the engine is down");
    let why = String::from_utf8_lossy(&h.stderr);
    assert!(why.contains("engine is not reachable"), "{why}");
    let text = agent.must(&["status"]);
    assert!(text.contains("pending"), "{text}");
}

/// The runtimes' LAN: a plain one (the agent's DHCP client off, the engine's IPAM
/// address), or one with dnsmasq across the parent veth (the client on).
enum Lan {
    Plain(HostLan),
    Dhcp(DhcpLan),
}

/// A private engine, a LAN whose parent `p` is on `s1`, netmon and the agent on that
/// engine. Fields drop in order: the agent before the engine.
struct Rig {
    agent: AgentProc,
    netmon: HostNetmon,
    lan: Lan,
    _dir: TempDir,
    engine: PrivateEngine,
    image: String,
    p: String,
    s1: String,
    s2: String,
}

impl Rig {
    fn start(dhcp: bool) -> Rig {
        let engine = PrivateEngine::start();
        let image = engine.import_test_image();
        let dir = TempDir::new("age");
        let (s1, s2, _) = subnets();
        let (p, lan) = if dhcp {
            let o: Vec<u8> = s1.split('.').map(|x| x.parse().unwrap()).collect();
            let mut l = DhcpLan::new(o[1], o[2]);
            e2e::must(&format!("ip addr add {s1}.2/24 dev {}", l.parent));
            l.start();
            (l.parent.clone(), Lan::Dhcp(l))
        } else {
            let p = unique("ge");
            let l = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
            (p, Lan::Plain(l))
        };
        let client = if dhcp { "false" } else { "true" };
        let netmon = HostNetmon::start(dir.path(), &[&p]);
        // Internal subnets of its own: the private engine cannot see the shared
        // engine's networks, and two host bridges on one subnet would break each
        // other's routes.
        let pool = format!("198.19.{}.0/24", 128 + std::process::id() % 127);
        let agent = AgentProc::start_with_env(
            dir.path(),
            &netmon.socket,
            &["--docker-host", &engine.host, "--internal-pool", &pool],
            &[("AGENT_NO_DHCP_CLIENT", client)],
        );
        agent.wait_linked(&[&p]);
        Rig {
            agent,
            netmon,
            lan,
            _dir: dir,
            engine,
            image,
            p,
            s1,
            s2,
        }
    }

    /// A DHCP-mode runtime on the LAN, attached as eth0: its stored MAC.
    fn runtime(&self, rt: &str) -> String {
        self.agent.create_dhcp(rt, &self.image, "eth0", &self.p);
        let mac = stored_mac(&self.agent, rt, &self.p);
        wait_named(&self.engine, rt, &self.s1, &mac, "after create");
        wait_attached(&self.agent, rt, "after create");
        mac
    }

    /// Attached again as eth0 with `mac`, health 0, the stored MAC kept.
    fn back(&self, rt: &str, mac: &str, what: &str) {
        wait_named(&self.engine, rt, &self.s1, mac, what);
        wait_attached(&self.agent, rt, what);
        let h = self.agent.cli(&["health"]);
        assert_eq!(
            h.status.code(),
            Some(0),
            "health {what}: {}",
            String::from_utf8_lossy(&h.stderr)
        );
        assert_eq!(
            stored_mac(&self.agent, rt, &self.p),
            mac,
            "the stored MAC is kept"
        );
    }

    /// The address dnsmasq leased for `mac`, once `rt`'s eth0 holds it.
    fn leased(&self, rt: &str, mac: &str, what: &str) -> String {
        let Lan::Dhcp(l) = &self.lan else {
            unreachable!("a DHCP LAN")
        };
        wait_for(
            Duration::from_secs(30),
            &format!("{what}: {rt}'s eth0 with dnsmasq's lease for {mac}"),
            || {
                let (ip, _) = l.lease_of(mac)?;
                let inside = links_inside(&self.engine.host, rt);
                let on = inside
                    .iter()
                    .any(|x| x.name == "eth0" && x.ipv4.contains(&ip));
                on.then_some(ip)
            },
        )
    }

    /// How many DHCPDISCOVERs dnsmasq logged for `mac`.
    fn discovers(&self, mac: &str) -> usize {
        let Lan::Dhcp(l) = &self.lan else {
            unreachable!("a DHCP LAN")
        };
        l.log_lines("DHCPDISCOVER", mac).len()
    }

    /// The container of `rt` is exited (not started by anyone).
    fn stopped(&self, rt: &str, why: &str) {
        let s = self
            .engine
            .must(&["inspect", "-f", "{{.State.Status}}", rt]);
        assert_eq!(s.trim(), "exited", "{rt}: {why}");
    }
}

#[test]
fn the_vnic_keeps_its_name_and_mac_across_an_engine_restart() {
    let mut r = Rig::start(false);
    let rt = unique("rt");
    let mac = r.runtime(&rt);
    let policy = r
        .engine
        .must(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &rt]);
    assert!(
        ["", "no"].contains(&policy.trim()),
        "runtimes are created with restart policy no (the agent starts them itself): {policy}"
    );
    assert_eq!(r.agent.cli(&["health"]).status.code(), Some(0));
    // Another runtime, stopped by hand well before the engine stops: it stays stopped.
    let held = unique("rt");
    r.agent.create_dhcp(&held, &r.image, "eth0", &r.p);
    r.engine.must(&["stop", "-t", "1", &held]);
    let stopped_by_hand = Instant::now();

    // The engine goes away: the truth while it is down.
    // And one stopped by `agent runtime stop` just before the engine stops: its die
    // falls in the engine's shutdown window, yet it stays stopped.
    let stopped = unique("rt");
    r.agent.create_dhcp(&stopped, &r.image, "eth0", &r.p);
    let since_hand_stop = stopped_by_hand.elapsed();
    std::thread::sleep(Duration::from_secs(15).saturating_sub(since_hand_stop));
    r.agent.must(&["runtime", "stop", &stopped]);
    let took = r.engine.stop();
    println!("engine stopped in {took:?}");
    truth_while_down(&r.agent, &rt);

    // Back, with the same arguments: nothing but the agent starts the runtime.
    r.engine.restart();
    r.back(&rt, &mac, "after the engine restart");
    r.stopped(&held, "stopped by hand, it stays stopped");
    r.stopped(
        &stopped,
        "stopped by `agent runtime stop`, it stays stopped",
    );

    // The engine works on the links of the new sandbox: a move removes the old one.
    let (s1, s2) = (r.s1.clone(), r.s2.clone());
    let Lan::Plain(lan) = &r.lan else {
        unreachable!("a plain LAN")
    };
    lan.readdress(&format!("{s1}.2/24"), &format!("{s2}.2/24"));
    wait_named(
        &r.engine,
        &rt,
        &s2,
        &mac,
        "after a move following the restart",
    );
    wait_attached(&r.agent, &rt, "after the move");
}

/// A host reboot: the agent stops (systemd stops it before the engine), then the
/// engine (stopping the runtimes), then both start again, netmon too. The agent's
/// memory of what ran is in its state directory (`runtimes_running.json`), so it
/// starts the runtime the engine stopped, with its vNIC's name and MAC; one stopped
/// by `agent runtime stop` just before the reboot stays stopped. The LAN's dnsmasq
/// (another host) keeps running, and the runtime keeps its leased address, asked for
/// by INIT-REBOOT.
#[test]
fn a_host_reboot_brings_the_runtimes_that_ran_back_and_not_those_stopped_on_purpose() {
    let mut r = Rig::start(true);
    let rt = unique("rt");
    let mac = r.runtime(&rt);
    let ip = r.leased(&rt, &mac, "after create");
    let held = unique("rt");
    r.runtime(&held);
    r.agent.must(&["runtime", "stop", &held]);
    r.stopped(&held, "agent runtime stop");

    let file = r.agent.state_dir.join("runtimes_running.json");
    wait_for(
        Duration::from_secs(10),
        "the file without the stopped runtime",
        || {
            let text = std::fs::read_to_string(&file).ok()?;
            let names: Vec<String> = serde_json::from_str(&text).ok()?;
            (names == [rt.clone()]).then_some(())
        },
    );
    let discovers = r.discovers(&mac);
    r.agent.stop();
    let took = r.engine.stop();
    println!("engine stopped in {took:?}");
    r.netmon.restart();
    r.engine.restart();
    r.stopped(&rt, "the engine does not start it");
    r.agent.spawn();
    r.back(&rt, &mac, "after the reboot");
    assert_eq!(
        r.leased(&rt, &mac, "after the reboot"),
        ip,
        "the leased address is kept"
    );
    assert_eq!(
        r.discovers(&mac),
        discovers,
        "asked again by INIT-REBOOT, no DISCOVER"
    );
    r.stopped(&held, "stopped by `agent runtime stop`, it stays stopped");
}

/// The rig's guard: a private engine that crashed (SIGKILL) with a running container on
/// a bridge network leaves no process, mount, cgroup, bridge or directory behind.
#[test]
fn a_killed_private_engine_leaves_nothing_behind() {
    // The shared engine's default bridge is not the private engine's to touch (a
    // dockerd with `--bridge=none` deletes it).
    let docker0 = || std::fs::read_to_string("/sys/class/net/docker0/ifindex").ok();
    let docker0_before = docker0();
    let mut engine = PrivateEngine::start();
    let image = engine.import_test_image();
    let net = unique("pen");
    engine.must(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "198.19.127.0/28",
        &net,
    ]);
    let id = engine.must(&["network", "inspect", "-f", "{{.Id}}", &net]);
    let bridge = format!("br-{}", &id.trim()[..12]);
    engine.must(&[
        "run",
        "-d",
        "--network",
        &net,
        "--name",
        &unique("pec"),
        &image,
    ]);
    assert!(
        Path::new("/sys/class/net").join(&bridge).exists(),
        "{bridge}"
    );
    let dir = engine.dir.clone();
    let needle = dir.display().to_string();
    engine.kill();
    let leftover = |what: &str| {
        let out = e2e::must(what);
        out.lines().filter(|l| l.contains(&needle)).count()
    };
    assert!(
        leftover("ps -eo args") > 0,
        "containerd and the shim outlive a SIGKILL of dockerd"
    );
    drop(engine);
    assert_eq!(docker0(), docker0_before, "the host's docker0 was touched");
    assert_eq!(leftover("ps -eo args"), 0, "processes from {needle}");
    assert_eq!(
        leftover("cat /proc/self/mountinfo"),
        0,
        "mounts under {needle}"
    );
    assert!(!dir.exists(), "{needle} removed");
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "{bridge} removed"
    );
    let cgroup = dir.file_name().unwrap().to_string_lossy().into_owned();
    let groups = e2e::must(&format!(
        "ls -d /sys/fs/cgroup/*/{cgroup} 2>/dev/null || true"
    ));
    assert!(groups.trim().is_empty(), "cgroups left: {groups}");
}
