//! End to end, real netmon + real agent + real engine: runtimes follow their
//! parent's subnet change with their stored MACs, the static vNIC stays put, a
//! restarted container gets its MAC back, a parent blinking detaches nothing, and
//! a second reconcile changes nothing.

use std::time::{Duration, Instant};

use agent::plan::network_name;
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, HostNetmon, changing_calls, container_networks, has, has_ip,
    stored_mac, subnets,
};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, must, unique, wait_for};

#[test]
fn runtimes_follow_a_subnet_change_keep_their_macs_and_survive_restarts() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agf");
    let (a1, a2, b) = subnets();
    // A static subnet that is not the LAN's: an extra pool on the parent's network,
    // shown as a note (their last octets are at most 252).
    let (base, last) = b.rsplit_once('.').unwrap();
    let off = format!("{base}.{}", last.parse::<u8>().unwrap() + 1);
    let pa = unique("ga");
    let pb = unique("gb");
    let lan_a = HostLan::new(&pa, &format!("{a1}.2/24"), &format!("{a1}.1/24"));
    let _lan_b = HostLan::new(&pb, &format!("{b}.2/24"), &format!("{b}.1/24"));
    let rt1 = unique("rt");
    let rt2 = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt1, &rt2], &[&pa, &pb]);
    let netmon = HostNetmon::start(dir.path(), &[&pa, &pb]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);

    agent.wait_linked(&[&pa]);

    agent.must(&[
        "runtime",
        "create",
        &rt1,
        "--image",
        &image,
        "--vnic",
        &format!("name=eth1,parent={pa},mode=dhcp"),
        "--vnic",
        &format!("name=eth2,parent={pb},mode=static,ip={b}.100,subnet={b}.0/24,gateway={b}.1"),
    ]);
    agent.must(&[
        "runtime",
        "create",
        &rt2,
        "--image",
        &image,
        "--vnic",
        &format!("name=eth1,parent={pa},mode=dhcp,mac=02:5a:00:00:00:02"),
        "--vnic",
        &format!("name=eth2,parent={pb},mode=static,ip={off}.50,subnet={off}.0/24"),
    ]);
    // Reusing a MAC on the same parent is refused.
    let dup = agent.cli(&[
        "runtime",
        "create",
        &unique("rt"),
        "--image",
        &image,
        "--vnic",
        &format!("name=eth1,parent={pa},mode=dhcp,mac=02:5a:00:00:00:02"),
    ]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );

    let mac1 = stored_mac(&agent, &rt1, &pa);
    let mac1s = stored_mac(&agent, &rt1, &pb);
    let mac2 = stored_mac(&agent, &rt2, &pa);
    let mac2s = stored_mac(&agent, &rt2, &pb);
    assert_eq!(mac2, "02:5a:00:00:00:02");
    let net_a1 = network_name(&pa, format!("{a1}.0/24").parse().unwrap());
    let net_a2 = network_name(&pa, format!("{a2}.0/24").parse().unwrap());
    wait_for(
        Duration::from_secs(20),
        "runtimes attached with their MACs",
        || {
            (has(&rt1, &mac1, &a1)
                && has(&rt2, &mac2, &a1)
                && has_ip(&rt2, &mac2s, &format!("{off}.50"))
                && has_ip(&rt1, &mac1s, &format!("{b}.100"))
                && container_networks(&rt1).contains(&net_a1))
            .then_some(())
        },
    );

    // The LAN moves: the DHCP-mode vNICs go to the new network with their stored
    // MACs; the static vNIC keeps address and MAC.
    let t0 = Instant::now();
    lan_a.readdress(&format!("{a1}.2/24"), &format!("{a2}.2/24"));
    let seen_at = wait_for(
        Duration::from_secs(20),
        "runtimes on the new subnet",
        || {
            let at = t0.elapsed();
            // The static vNIC too: its link can be passing through a temporary name
            // while the moved vNIC's link is named, and the rig reads addresses and
            // names in two calls.
            (has(&rt1, &mac1, &a2)
                && has(&rt2, &mac2, &a2)
                && container_networks(&rt1).contains(&net_a2)
                && container_networks(&rt2).contains(&net_a2)
                && has_ip(&rt1, &mac1s, &format!("{b}.100")))
            .then_some(at)
        },
    );
    // How fast is a benchmark's figure (agent-bench, converge-bench), not this test's.
    eprintln!("runtimes verified on {net_a2} {seen_at:?} after the address moved");
    assert!(
        has_ip(&rt1, &mac1s, &format!("{b}.100")),
        "the static vNIC lost {b}.100 or its MAC {mac1s}"
    );
    assert!(!container_networks(&rt1).contains(&net_a1));

    // A restart by the engine loses the MAC set through the namespace: it comes back.
    must(&format!("docker restart -t 1 {rt2} >/dev/null"));
    wait_for(
        Duration::from_secs(20),
        "rt2's MAC back after docker restart",
        || has(&rt2, &mac2, &a2).then_some(()),
    );
    // The same through the agent's own command, which answers once it is verified.
    agent.must(&["runtime", "restart", &rt1]);
    assert!(
        has(&rt1, &mac1, &a2),
        "rt1's MAC after agent runtime restart"
    );

    // A parent that blinks detaches nothing.
    must(&format!("ip link set {pa} down"));
    std::thread::sleep(Duration::from_millis(2500));
    for rt in [&rt1, &rt2] {
        assert!(
            container_networks(rt).contains(&net_a2),
            "{rt} was detached while {pa} was down"
        );
    }
    must(&format!("ip link set {pa} up"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(has(&rt1, &mac1, &a2) && has(&rt2, &mac2, &a2));

    // Someone removes the managed network by hand: the engine's events bring it back.
    // The agent would repair the first disconnect before the network can be removed,
    // so it is paused meanwhile; the events wait in its stream.
    agent.child.signal(nix::sys::signal::Signal::SIGSTOP);
    let removed = e2e::sh(&format!(
        "docker network disconnect -f {net_a2} {rt1} && docker network disconnect -f {net_a2} {rt2} && docker network rm {net_a2} >/dev/null"
    ));
    agent.child.signal(nix::sys::signal::Signal::SIGCONT);
    removed.expect("remove the network by hand");
    wait_for(
        Duration::from_secs(20),
        "the removed network recreated and the runtimes back on it",
        || {
            (has(&rt1, &mac1, &a2)
                && has(&rt2, &mac2, &a2)
                && container_networks(&rt1).contains(&net_a2)
                && container_networks(&rt2).contains(&net_a2))
            .then_some(())
        },
    );

    // Converged: a reconcile now changes nothing in the engine.
    let first = agent.json(&["reconcile"]);
    let second = agent.json(&["reconcile"]);
    assert_eq!(
        changing_calls(&second),
        0,
        "second reconcile made changing calls: {second}"
    );
    assert!(
        second["steps"].as_array().is_some_and(Vec::is_empty),
        "{second} (first: {first})"
    );

    let notes = agent.status()["notes"].to_string();
    assert!(
        notes.contains(&format!("{off}.0/24")) && notes.contains(&rt2),
        "no note about the off-LAN static subnet: {notes}"
    );
    let status = agent.must(&["status"]);
    assert!(status.contains("note:"), "{status}");
    assert!(status.contains(&net_a2), "{status}");
    assert!(status.contains(&mac1), "{status}");
}
