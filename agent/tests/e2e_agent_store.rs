//! End to end: a corrupt store is kept and reported and writes are refused until an
//! operator acts; the control socket serves root and the configured group only;
//! parents `X1` and `X10` are never confused; `runtime delete` removes the
//! container, its internal network and a macvlan network nothing uses anymore.

use std::process::Command;
use std::time::Duration;

use agent::plan::network_name;
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, HostNetmon, container_networks, has, stored_mac, subnets,
};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, bin, must, sh, unique, wait_for};

/// The agent CLI run as uid 65534 with the given gid and supplementary groups.
fn cli_as_nobody(agent: &AgentProc, gid: u32, groups: &str) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", &gid.to_string()]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        c.args(["--groups", groups]);
    }
    c.arg(bin("agent"))
        .arg("--control-socket")
        .arg(&agent.control)
        .arg("status")
        .output()
        .expect("spawn setpriv")
}

#[test]
fn corrupt_store_peer_credentials_prefix_parents_and_delete() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("ags");
    let (s1, s2, s3) = subnets();
    // `X1` and `X10`: the old system matched networks by name prefix.
    let p1 = unique("gs");
    let p10 = format!("{p1}0");
    let lan1 = HostLan::new(&p1, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let _lan10 = HostLan::new(&p10, &format!("{s3}.2/24"), &format!("{s3}.1/24"));
    let rt1 = unique("rt");
    let rt10 = unique("rt");
    // Stands for the container the agent itself would run in.
    let me = unique("self");
    let _cleanup = DockerCleanup {
        containers: vec![rt1.clone(), rt10.clone(), me.clone()],
        networks: vec![format!("{rt1}_internal"), format!("{rt10}_internal")],
        parents: vec![p1.clone(), p10.clone()],
    };
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let garbage = "{\"rt\": [ {\"name\": \"eth0\", oops";
    std::fs::write(state.join("runtime_vnics.json"), garbage).unwrap();

    let netmon = HostNetmon::start(dir.path(), &[&p1, &p10]);
    must(&format!("docker run -d --name {me} {image} >/dev/null"));
    let mut agent = AgentProc::start_with_env(
        dir.path(),
        &netmon.socket,
        &["--control-group", "nogroup"],
        &[("AGENT_CONTAINER", &me)],
    );
    wait_for(Duration::from_secs(20), "links up", || {
        let s = agent.status();
        (s["netmon"]["connected"] == true && s["engine"]["reachable"] == true).then_some(())
    });

    // A second agent on the same control socket does not steal it.
    let second = Command::new(bin("agent"))
        .arg("--control-socket")
        .arg(&agent.control)
        .arg("run")
        .arg("--netmon-socket")
        .arg(&netmon.socket)
        .arg("--state-dir")
        .arg(dir.join("state2"))
        .output()
        .expect("spawn a second agent");
    assert!(!second.status.success());
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(why.contains("is listening on"), "{why}");
    assert_eq!(agent.status()["netmon"]["connected"], true);

    // Corrupt store: reported, kept, writes refused.
    let s = agent.status();
    assert!(!s["store"]["fault"].is_null(), "no fault reported: {s}");
    let h = agent.cli(&["health"]);
    assert_eq!(h.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&h.stderr).contains("store is faulted"),
        "{}",
        String::from_utf8_lossy(&h.stderr)
    );
    let kept = sh(&format!("grep -rl oops {}", state.display())).unwrap_or_default();
    assert!(!kept.trim().is_empty(), "the corrupt content was not kept");
    let refused = agent.cli(&[
        "runtime",
        "create",
        &rt1,
        "--image",
        &image,
        "--vnic",
        &format!("name=eth1,parent={p1},mode=dhcp"),
    ]);
    assert!(
        !refused.status.success(),
        "a write to a faulted store was accepted"
    );
    assert!(agent.must(&["status"]).contains("FAULTED"));
    agent.must(&["store", "reset"]);
    assert!(agent.status()["store"]["fault"].is_null());
    assert!(
        !sh(&format!("grep -rl oops {}", state.display()))
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "reset must not destroy the moved-aside file"
    );
    assert_eq!(agent.cli(&["health"]).status.code(), Some(0));

    // Peer credentials: the group (primary or supplementary) is served; anyone else
    // who can open the socket (mode widened here on purpose) is refused.
    let ok = cli_as_nobody(&agent, 65534, "");
    assert!(
        ok.status.success(),
        "a member of the control group was refused: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = cli_as_nobody(&agent, 1, "65534");
    assert!(
        ok.status.success(),
        "a supplementary member was refused: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    must(&format!("chmod 0666 {}", agent.control.display()));
    let denied = cli_as_nobody(&agent, 1, "");
    assert!(!denied.status.success());
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(why.contains("permission denied"), "{why}");

    // A creation the engine refuses (no such image, nothing can be pulled) leaves
    // nothing behind, so the same name can be used again.
    let failed = agent.cli(&[
        "runtime",
        "create",
        &rt1,
        "--image",
        "edgenet-no-such-image:0",
        "--vnic",
        &format!("name=eth1,parent={p1},mode=dhcp"),
    ]);
    assert!(!failed.status.success());
    assert!(agent.json(&["runtime", "list"]).get(&rt1).is_none());
    assert!(
        sh(&format!(
            "docker network inspect {rt1}_internal >/dev/null 2>&1"
        ))
        .is_err()
    );

    // X1 and X10 each get their own network; moving X1 leaves X10's alone.
    for (rt, p) in [(&rt1, &p1), (&rt10, &p10)] {
        agent.create_dhcp(rt, &image, "eth1", p);
    }
    // The agent's own container joins each runtime's internal network.
    for rt in [&rt1, &rt10] {
        let nets = container_networks(&me);
        assert!(
            nets.contains(&format!("{rt}_internal")),
            "{me} is on {nets:?}"
        );
    }
    let mac1 = stored_mac(&agent, &rt1, &p1);
    let mac10 = stored_mac(&agent, &rt10, &p10);
    let net10 = network_name(&p10, format!("{s3}.0/24").parse().unwrap());
    wait_for(Duration::from_secs(20), "both runtimes attached", || {
        (has(&rt1, &mac1, &s1) && has(&rt10, &mac10, &s3)).then_some(())
    });
    let id10 = must(&format!("docker network inspect -f '{{{{.Id}}}}' {net10}"));
    lan1.readdress(&format!("{s1}.2/24"), &format!("{s2}.2/24"));
    let net1b = network_name(&p1, format!("{s2}.0/24").parse().unwrap());
    wait_for(
        Duration::from_secs(20),
        "X1's runtime on its new subnet",
        || (has(&rt1, &mac1, &s2) && container_networks(&rt1).contains(&net1b)).then_some(()),
    );
    assert_eq!(
        must(&format!("docker network inspect -f '{{{{.Id}}}}' {net10}")),
        id10,
        "X10's network was touched by X1's change"
    );
    assert!(
        has(&rt10, &mac10, &s3),
        "X10's runtime lost its address or MAC"
    );

    // Delete: container, internal network and the now unused macvlan network go;
    // X10's stays.
    agent.must(&["runtime", "delete", &rt1]);
    assert!(sh(&format!("docker inspect {rt1} >/dev/null 2>&1")).is_err());
    assert!(
        sh(&format!(
            "docker network inspect {rt1}_internal >/dev/null 2>&1"
        ))
        .is_err()
    );
    assert!(sh(&format!("docker network inspect {net1b} >/dev/null 2>&1")).is_err());
    assert!(sh(&format!("docker network inspect {net10} >/dev/null 2>&1")).is_ok());
    let list = agent.json(&["runtime", "list"]);
    assert!(
        list.get(&rt1).is_none() && list.get(&rt10).is_some(),
        "{list}"
    );
    assert!(!container_networks(&me).contains(&format!("{rt1}_internal")));
    let reloaded = agent.must(&["store", "reload"]);
    assert!(reloaded.contains("1 runtimes"), "{reloaded}");

    // SIGTERM: a clean exit that removes the control socket.
    agent.child.signal(nix::sys::signal::Signal::SIGTERM);
    let st = agent
        .child
        .wait_timeout(Duration::from_secs(10))
        .expect("the agent did not stop on SIGTERM");
    assert!(st.success(), "{st}");
    assert!(
        !agent.control.exists(),
        "the control socket was left behind"
    );
    let gone = agent.cli(&["status"]);
    assert!(!gone.status.success());
    let why = String::from_utf8_lossy(&gone.stderr);
    assert!(
        why.contains("cannot reach the agent at") && why.contains("is `agent run` running?"),
        "{why}"
    );
    assert_eq!(agent.cli(&["health"]).status.code(), Some(1));
}
