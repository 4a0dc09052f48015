//! End to end: the agent starts before its engine is reachable (answering commands
//! meanwhile) and converges when it appears; the engine going away and coming back
//! while the LAN moves; killed with SIGKILL in the middle of a
//! reconcile and restarted, it converges; netmon restarted while the LAN moves,
//! the agent reconnects and converges.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::plan::network_name;
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, HostNetmon, container_networks, has, stored_mac, subnets,
};
use e2e::docker::{require_engine, test_image};
use e2e::{ChildGuard, TempDir, unique, wait_for};

/// `socat` forwarding a Unix socket to the real engine: an engine that can come
/// and go. Its own process group, so stopping it also ends the forked connections
/// (the agent's event stream among them).
struct Proxy(ChildGuard, std::path::PathBuf);

impl Proxy {
    fn start(path: &std::path::Path) -> Proxy {
        let _ = std::fs::remove_file(path);
        let child = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", path.display()))
            .arg("UNIX-CONNECT:/var/run/docker.sock")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn socat (apt-get install socat)");
        Proxy(ChildGuard(Some(child)), path.to_path_buf())
    }

    fn stop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-self.0.pid());
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        self.0.wait_timeout(Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn agent_survives_a_late_engine_sigkill_mid_reconcile_and_a_netmon_restart() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agr");
    let (s1, s2, s3) = subnets();
    // A fourth subnet next to the three (their last octet is at most 252).
    let (base, last) = s3.rsplit_once('.').unwrap();
    let s0 = format!("{base}.{}", last.parse::<u8>().unwrap() + 1);
    let p = unique("gr");
    let lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let mut netmon = HostNetmon::start(dir.path(), &[&p]);
    // The engine's socket does not exist yet: a proxy to the real one appears later.
    let proxy_sock = dir.join("d.sock");
    let docker_host = format!("unix://{}", proxy_sock.display());
    let mut agent = AgentProc::start(dir.path(), &netmon.socket, &["--docker-host", &docker_host]);

    // Commands are answered at once during start-up, engine or not.
    let t = Instant::now();
    let s = agent.status();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "status took {:?} during start-up",
        t.elapsed()
    );
    assert_eq!(s["engine"]["reachable"], false, "{s}");
    let h = agent.cli(&["health"]);
    assert_eq!(h.status.code(), Some(1));
    let why = String::from_utf8_lossy(&h.stderr);
    assert!(why.contains("engine is not reachable"), "{why}");
    let refused = agent.cli(&[
        "--wait",
        "1s",
        "runtime",
        "create",
        &rt,
        "--image",
        &image,
        "--vnic",
        &format!("name=eth1,parent={p},mode=dhcp"),
    ]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("needs the container engine"), "{why}");
    assert!(why.contains("waited for it"), "{why}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "start-up commands stalled"
    );

    // The engine appears: the agent notices without being told.
    let proxy = Proxy::start(&proxy_sock);
    wait_for(
        Duration::from_secs(30),
        "the agent to reach the late engine",
        || {
            let s = agent.status();
            (s["engine"]["reachable"] == true && s["netmon"]["connected"] == true).then_some(())
        },
    );
    agent.create_dhcp(&rt, &image, "eth1", &p);
    let mac = stored_mac(&agent, &rt, &p);
    wait_for(
        Duration::from_secs(20),
        "the runtime on the first subnet",
        || has(&rt, &mac, &s1).then_some(()),
    );

    // The engine goes away (its event stream with it) while the LAN moves; the
    // agent keeps running, says so, and converges once the engine is back.
    drop(proxy);
    wait_for(
        Duration::from_secs(20),
        "the agent to notice the engine left",
        || (agent.status()["engine"]["reachable"] == false).then_some(()),
    );
    lan.readdress(&format!("{s1}.2/24"), &format!("{s0}.2/24"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.child.child().try_wait().unwrap().is_none(),
        "the agent exited"
    );
    let _proxy = Proxy::start(&proxy_sock);
    let net0 = network_name(&p, format!("{s0}.0/24").parse().unwrap());
    wait_for(
        Duration::from_secs(30),
        "convergence after the engine returned",
        || (has(&rt, &mac, &s0) && container_networks(&rt).contains(&net0)).then_some(()),
    );

    // The LAN moves and the agent is killed while it reconciles.
    lan.readdress(&format!("{s0}.2/24"), &format!("{s2}.2/24"));
    let runs_before = agent.status()["reconcile"]["runs"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(15), "a reconcile in progress", || {
        let s = agent.status();
        let running = s["reconcile"]["running"] == true;
        let started = s["reconcile"]["runs"].as_u64().unwrap_or(0) > runs_before;
        (running && started).then_some(())
    });
    agent.kill9();
    // The stale control socket is replaced by the restarted agent.
    assert!(
        agent.control.exists(),
        "SIGKILL leaves the socket file behind"
    );
    agent.spawn();
    let net2 = network_name(&p, format!("{s2}.0/24").parse().unwrap());
    wait_for(Duration::from_secs(30), "convergence after SIGKILL", || {
        (has(&rt, &mac, &s2) && container_networks(&rt).contains(&net2)).then_some(())
    });

    // netmon goes away, the LAN moves meanwhile, netmon comes back.
    let instance = agent.status()["netmon"]["instance"].clone();
    netmon.child.signal(nix::sys::signal::Signal::SIGTERM);
    netmon.child.wait_timeout(Duration::from_secs(10));
    wait_for(
        Duration::from_secs(10),
        "the agent to notice netmon left",
        || (agent.status()["netmon"]["connected"] == false).then_some(()),
    );
    lan.readdress(&format!("{s2}.2/24"), &format!("{s3}.2/24"));
    netmon.restart();
    let net3 = network_name(&p, format!("{s3}.0/24").parse().unwrap());
    wait_for(
        Duration::from_secs(30),
        "convergence after netmon's restart",
        || (has(&rt, &mac, &s3) && container_networks(&rt).contains(&net3)).then_some(()),
    );
    let s = agent.status();
    assert_eq!(s["netmon"]["connected"], true);
    assert_ne!(
        s["netmon"]["instance"], instance,
        "a new netmon instance: {s}"
    );
    assert_eq!(agent.cli(&["health"]).status.code(), Some(0));
}
