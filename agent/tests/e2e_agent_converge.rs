//! End to end: the agent repairs what a host does to its runtimes with no other
//! trigger, and `status`/`health` tell the truth meanwhile. A hand disconnect is
//! repaired; a parent deleted and re-created is reattached; a runtime removed by hand
//! is `missing` and fails `health` by name; a runtime created before its parent exists
//! is accepted, `pending`, and attached once the link appears.

use std::time::{Duration, Instant};

use agent::plan::network_name;
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, HostNetmon, container_networks, has, stored_mac, subnets,
};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, must, unique, wait_for};
use serde_json::Value;

fn vnic_state(agent: &AgentProc, rt: &str) -> Value {
    agent.status()["runtimes"][rt][0]["state"].clone()
}

#[test]
fn a_hand_disconnect_and_a_recreated_parent_are_repaired() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agc");
    let (s1, _, _) = subnets();
    let p = unique("gc");
    let lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &["--reconcile-interval", "1h"]);
    agent.wait_linked(&[&p]);
    agent.create_dhcp(&rt, &image, "eth1", &p);
    let mac = stored_mac(&agent, &rt, &p);
    let net = network_name(&p, format!("{s1}.0/24").parse().unwrap());
    wait_for(Duration::from_secs(20), "the runtime attached", || {
        has(&rt, &mac, &s1).then_some(())
    });
    assert_eq!(vnic_state(&agent, &rt)["state"], "attached");

    // By hand: disconnected. The engine's event brings it back.
    let t = Instant::now();
    must(&format!("docker network disconnect {net} {rt}"));
    wait_for(
        Duration::from_secs(20),
        "the hand disconnect repaired",
        || (container_networks(&rt).contains(&net) && has(&rt, &mac, &s1)).then_some(()),
    );
    println!("hand disconnect repaired in {:?}", t.elapsed());

    // The parent is deleted and re-created with the same name and LAN: the old
    // endpoint is stale; the runtime is reattached and gets its MAC back.
    let gw_ns = lan.gw_ns.name.clone();
    let peer: String = format!("{p}p").chars().take(15).collect();
    must(&format!("ip link del {p}"));
    wait_for(
        Duration::from_secs(10),
        "the parent gone from the status",
        || (vnic_state(&agent, &rt)["state"] == "pending").then_some(()),
    );
    must(&format!("ip link add {p} type veth peer name {peer}"));
    must(&format!("ip link set {peer} netns {gw_ns}"));
    must(&format!("ip -n {gw_ns} addr add {s1}.1/24 dev {peer}"));
    must(&format!("ip -n {gw_ns} link set {peer} up"));
    must(&format!(
        "ip addr add {s1}.2/24 dev {p} && ip link set {p} up"
    ));
    let t = Instant::now();
    wait_for(Duration::from_secs(30), "the runtime reattached", || {
        (has(&rt, &mac, &s1) && vnic_state(&agent, &rt)["state"] == "attached").then_some(())
    });
    println!("re-created parent reattached in {:?}", t.elapsed());
    // It reaches the gateway through the new parent.
    must(&format!("docker exec {rt} ping -c 1 -W 2 {s1}.1"));
    assert_eq!(agent.cli(&["health"]).status.code(), Some(0));
}

#[test]
fn a_runtime_removed_by_hand_is_missing_and_delete_cleans_up() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agc");
    let (s1, _, _) = subnets();
    let p = unique("gc");
    let _lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);
    agent.wait_linked(&[&p]);
    agent.create_dhcp(&rt, &image, "eth1", &p);
    let mac = stored_mac(&agent, &rt, &p);
    wait_for(Duration::from_secs(20), "the runtime attached", || {
        has(&rt, &mac, &s1).then_some(())
    });

    must(&format!("docker rm -f {rt}"));
    wait_for(
        Duration::from_secs(20),
        "the runtime reported missing",
        || {
            let s = agent.status();
            s["missing"]
                .as_array()
                .is_some_and(|m| m.iter().any(|x| x == rt.as_str()))
                .then_some(())
        },
    );
    let h = agent.cli(&["health"]);
    assert_eq!(h.status.code(), Some(1));
    let why = String::from_utf8_lossy(&h.stderr);
    assert!(why.contains(&format!("runtime {rt} is missing")), "{why}");
    let text = agent.must(&["status"]);
    assert!(text.contains("MISSING"), "{text}");

    agent.must(&["runtime", "delete", &rt]);
    assert!(
        e2e::sh(&format!("docker network inspect {rt}_internal")).is_err(),
        "its internal network is removed"
    );
    assert_eq!(agent.cli(&["health"]).status.code(), Some(0));
}

#[test]
fn a_runtime_whose_parent_appears_later_is_pending_then_attached() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agc");
    let (s1, _, _) = subnets();
    let p = unique("gc");
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &["--health-grace", "2s"]);
    let out = agent.create_dhcp(&rt, &image, "eth1", &p);
    assert!(out.contains("pending") && out.contains(&p), "{out}");
    let st = vnic_state(&agent, &rt);
    assert_eq!(st["state"], "pending", "{st}");
    assert!(
        st["waiting_for"].as_str().unwrap().contains("to appear"),
        "{st}"
    );
    wait_for(
        Duration::from_secs(10),
        "health to fail on the pending vNIC",
        || {
            let h = agent.cli(&["health"]);
            let why = String::from_utf8_lossy(&h.stderr).into_owned();
            (h.status.code() == Some(1) && why.contains(&format!("{rt}/eth1"))).then_some(())
        },
    );

    // The USB NIC is plugged in.
    let t = Instant::now();
    let _lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let mac = stored_mac(&agent, &rt, &p);
    wait_for(Duration::from_secs(20), "the runtime attached", || {
        (has(&rt, &mac, &s1) && vnic_state(&agent, &rt)["state"] == "attached").then_some(())
    });
    println!(
        "attached {:?} after the parent appeared (debounce 1 s)",
        t.elapsed()
    );
    assert_eq!(agent.cli(&["health"]).status.code(), Some(0));
}
