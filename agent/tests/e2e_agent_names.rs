//! End to end, real netmon + real agent + real engine: a vNIC's link inside the
//! container carries the vNIC's name (`eth0`, the name the engine gives the internal
//! bridge's link) from creation, across two LAN moves (the old link really gone each
//! time), a `docker restart` and a hand `docker network disconnect` the agent repairs;
//! the internal bridge's link is `int0`; `agent status` shows the name (docs/NAMES.md).

use std::time::Duration;

use agent::plan::{INTERNAL_IFNAME, network_name};
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, HostNetmon, container_networks, links_inside, subnets,
    wait_inside,
};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, must, unique, wait_for};

/// Exactly two links inside: `eth0` on the LAN `prefix` and `int0` on the internal
/// bridge; what is there otherwise.
fn named_on(container: &str, prefix: &str) -> Result<(), String> {
    let l = links_inside("", container);
    let ok = l.len() == 2
        && l.iter().any(|x| x.is("eth0", prefix))
        && l.iter().any(|x| x.name == INTERNAL_IFNAME);
    if ok { Ok(()) } else { Err(format!("{l:?}")) }
}

fn wait_named(container: &str, prefix: &str, what: &str) {
    wait_inside(
        &format!(
            "{what}: expected eth0 on {prefix}.0/24 and {INTERNAL_IFNAME}, nothing else; inside"
        ),
        || named_on(container, prefix),
    );
}

#[test]
fn the_vnic_link_keeps_its_name_through_moves_restarts_and_hand_disconnects() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agn");
    let (s1, s2, s3) = subnets();
    let p = unique("gn");
    let lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);
    agent.wait_linked(&[&p]);

    // The internal link's reserved name is refused for a vNIC.
    let refused = agent.cli(&[
        "runtime",
        "create",
        &unique("rt"),
        "--image",
        &image,
        "--vnic",
        &format!("name={INTERNAL_IFNAME},parent={p},mode=dhcp"),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("internal link"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    agent.create_dhcp(&rt, &image, "eth0", &p);
    wait_named(&rt, &s1, "after create");
    let s = agent.status();
    let v = &s["runtimes"][&rt][0];
    assert_eq!(v["ifname_inside"], "eth0", "{v}");
    let text = agent.must(&["status"]);
    assert!(text.contains("named eth0 inside the container"), "{text}");

    // Two LAN moves: each time the old link is gone and the new one is eth0.
    lan.readdress(&format!("{s1}.2/24"), &format!("{s2}.2/24"));
    wait_named(&rt, &s2, "after the first move");
    lan.readdress(&format!("{s2}.2/24"), &format!("{s3}.2/24"));
    wait_named(&rt, &s3, "after the second move");
    let net3 = network_name(&p, format!("{s3}.0/24").parse().unwrap());
    assert_eq!(
        container_networks(&rt)
            .iter()
            .filter(|n| n.starts_with("macvlan_"))
            .count(),
        1,
        "{:?}",
        container_networks(&rt)
    );

    // A restart by the engine gives every link a new engine name: named again.
    must(&format!("docker restart -t 1 {rt} >/dev/null"));
    wait_named(&rt, &s3, "after docker restart");

    // Hand disconnects, twice: after a restart the engine may have named the link
    // eth0 itself, but the link the agent reconnects is surely renamed. The engine
    // cannot find a renamed link and leaves it inside (holding the MAC the reconnect
    // needs); the agent deletes it and reconnects.
    for round in 1..=2 {
        must(&format!("docker network disconnect {net3} {rt}"));
        wait_for(Duration::from_secs(30), "the agent reconnects", || {
            container_networks(&rt).contains(&net3).then_some(())
        });
        wait_named(
            &rt,
            &s3,
            &format!("after hand disconnect {round}, repaired"),
        );
    }

    // The agent's own disconnect of a renamed link: the move back removes it.
    lan.readdress(&format!("{s3}.2/24"), &format!("{s1}.2/24"));
    wait_named(&rt, &s1, "after a third move");
    let s = agent.status();
    assert_eq!(s["runtimes"][&rt][0]["ifname_inside"], "eth0", "{s}");
}
