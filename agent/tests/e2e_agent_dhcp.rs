//! End to end, real netmon + real agent + real engine + Debian's dnsmasq in a "lan"
//! namespace across the parent veth: DHCP vNICs get the address dnsmasq leased for
//! their stored MAC, keep it through renewal, agent restart and `docker restart`
//! (INIT-REBOOT, no DISCOVER), release it on delete, wait as `pending` without a
//! server, and follow a LAN move with a new lease and the same MAC.

use std::process::Command;
use std::time::Duration;

use e2e::agent::{AgentProc, DockerCleanup, HostNetmon, has, has_ip, stored_mac, subnets};
use e2e::dhcp::DhcpLan;
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, must, unique, wait_for};
use serde_json::Value;

const ENV: &[(&str, &str)] = &[
    ("AGENT_NO_DHCP_CLIENT", "false"),
    ("AGENT_DHCP_RETRY_MAX", "3s"),
];

/// `--internal-pool` of a /24 of the test's own, so agents of tests running at once
/// do not pick the same internal subnet.
fn own_pool(test: u32) -> [String; 2] {
    let third = (std::process::id() * 3 + test) % 250;
    ["--internal-pool".into(), format!("198.19.{third}.0/24")]
}

fn start_agent(dir: &TempDir, netmon: &HostNetmon, test: u32, extra: &[&str]) -> AgentProc {
    let pool = own_pool(test);
    let mut args: Vec<&str> = pool.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    AgentProc::start_with_env(dir.path(), &netmon.socket, &args, ENV)
}

/// 10.<a>.<b> as two octets, from the rig's free-looking subnets.
fn octets(prefix: &str) -> (u8, u8) {
    let p: Vec<u8> = prefix.split('.').map(|x| x.parse().unwrap()).collect();
    (p[1], p[2])
}

fn lan(prefix: &str, t1: bool) -> DhcpLan {
    let (a, b) = octets(prefix);
    let mut l = DhcpLan::new(a, b);
    if t1 {
        l.extra = vec![
            "--dhcp-option=option:T1,6".into(),
            "--dhcp-option=option:T2,12".into(),
        ];
    }
    must(&format!("ip addr add {prefix}.2/24 dev {}", l.parent));
    l
}

/// Waits until dnsmasq's lease file holds `mac` and the runtime has that address on
/// the link with that MAC; returns the address.
fn leased_and_attached(l: &DhcpLan, rt: &str, mac: &str, limit: u64) -> String {
    wait_for(
        Duration::from_secs(limit),
        &format!("{rt} attached with dnsmasq's lease for {mac}"),
        || {
            let (ip, _) = l.lease_of(mac)?;
            has_ip(rt, mac, &ip).then_some(ip)
        },
    )
}

fn vnic_status(agent: &AgentProc, rt: &str) -> Value {
    agent.status()["runtimes"][rt][0].clone()
}

/// The ifindex of the container's link with `mac` (a reconnect makes a new link).
fn link_index(rt: &str, mac: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["exec", rt, "ip", "-o", "link"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.to_lowercase().contains(&mac.to_lowercase()))
        .and_then(|l| l.split(':').next().map(str::to_string))
}

#[test]
fn leases_are_attached_kept_through_renewal_and_restarts_and_released_on_delete() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agd");
    let (p, _, _) = subnets();
    let mut l = lan(&p, true);
    l.start();
    let pa = l.parent.clone();
    let rt1 = unique("rd");
    let rt2 = unique("rd");
    let _cleanup = DockerCleanup::runtimes(&[&rt1, &rt2], &[&pa]);
    let netmon = HostNetmon::start(dir.path(), &[&pa]);
    let mut agent = start_agent(&dir, &netmon, 0, &[]);
    agent.wait_linked(&[&pa]);

    agent.create_dhcp(&rt1, &image, "eth1", &pa);
    agent.create_dhcp(&rt2, &image, "eth1", &pa);
    let mac1 = stored_mac(&agent, &rt1, &pa);
    let mac2 = stored_mac(&agent, &rt2, &pa);
    let ip1 = leased_and_attached(&l, &rt1, &mac1, 30);
    let ip2 = leased_and_attached(&l, &rt2, &mac2, 30);
    assert_ne!(ip1, ip2, "two runtimes on one parent get distinct leases");
    // The client id is busybox udhcpc's: 01 + the MAC.
    let (_, id) = l.lease_of(&mac1).unwrap();
    assert_eq!(id, format!("01:{}", mac1.to_lowercase()));
    // The lease's router is the runtime's default route.
    let route = must(&format!("docker exec {rt1} ip route show default"));
    assert!(route.contains(&format!("via {p}.1")), "{route}");
    // Status shows the lease; the store carries the older system's fields.
    let st = vnic_status(&agent, &rt1);
    assert_eq!(st["dhcp"]["address"], format!("{ip1}/24"), "{st}");
    assert_eq!(st["dhcp"]["server"], format!("{p}.1"), "{st}");
    assert!(st["dhcp"]["renews_at"].is_string(), "{st}");
    let store: Value =
        serde_json::from_slice(&std::fs::read(agent.state_dir.join("runtime_vnics.json")).unwrap())
            .unwrap();
    assert_eq!(store[&rt1][0]["dhcp_ip"], ip1.as_str(), "{store}");
    assert_eq!(store[&rt1][0]["dhcp_gateway"], format!("{p}.1"));
    assert_eq!(store[&rt1][0]["dhcp_dns"], format!("{p}.1"));
    // Nothing the server did not hand out: the runtime holds no other LAN address.
    let links = must(&format!("docker exec {rt1} ip -o -4 addr"));
    assert_eq!(links.matches(&format!("inet {p}.")).count(), 1, "{links}");

    // Renewal at T1 (6 s): the same address, the same link (no reconnect).
    let index = link_index(&rt1, &mac1).expect("the vNIC's link");
    let acks = l.log_lines("DHCPACK", &mac1).len();
    wait_for(Duration::from_secs(20), "a renewal at T1", || {
        (l.log_lines("DHCPACK", &mac1).len() > acks).then_some(())
    });
    assert!(has_ip(&rt1, &mac1, &ip1));
    assert_eq!(link_index(&rt1, &mac1).as_deref(), Some(index.as_str()));

    // Agent restart, then `docker restart`: the same address, asked by INIT-REBOOT.
    let discovers = l.log_lines("DHCPDISCOVER", &mac1).len();
    agent.child.signal(nix::sys::signal::Signal::SIGTERM);
    agent.child.wait_timeout(Duration::from_secs(10));
    let acks = l.log_lines("DHCPACK", &mac1).len();
    agent.spawn();
    wait_for(
        Duration::from_secs(20),
        "the restarted agent's lease",
        || (l.log_lines("DHCPACK", &mac1).len() > acks).then_some(()),
    );
    must(&format!("docker restart -t 1 {rt1}"));
    assert_eq!(leased_and_attached(&l, &rt1, &mac1, 30), ip1);
    assert_eq!(
        l.log_lines("DHCPDISCOVER", &mac1).len(),
        discovers,
        "no DISCOVER after restarts:\n{}",
        l.log()
    );

    // Delete: DHCPRELEASE, the lease entry gone, the record gone.
    agent.must(&["runtime", "delete", &rt2]);
    wait_for(Duration::from_secs(15), "DHCPRELEASE for rt2", || {
        (!l.log_lines("DHCPRELEASE", &mac2).is_empty() && l.lease_of(&mac2).is_none()).then_some(())
    });
    let leases = std::fs::read_to_string(agent.state_dir.join("dhcp_leases.json")).unwrap();
    assert!(!leases.contains(&rt2), "{leases}");
    assert!(leases.contains(&rt1), "{leases}");
}

#[test]
fn no_server_is_pending_then_attached_and_a_lan_move_gets_a_new_lease() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agn");
    let (p, q, _) = subnets();
    let mut l = lan(&p, false);
    let pa = l.parent.clone();
    let rt = unique("rn");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&pa]);
    let netmon = HostNetmon::start(dir.path(), &[&pa]);
    let agent = start_agent(&dir, &netmon, 1, &[]);
    agent.wait_linked(&[&pa]);

    agent.create_dhcp(&rt, &image, "eth1", &pa);
    let mac = stored_mac(&agent, &rt, &pa);
    let st = wait_for(Duration::from_secs(20), "pending: no DHCP offer", || {
        let st = vnic_status(&agent, &rt);
        let s = st["state"].to_string();
        (s.contains("pending") && s.contains("no DHCP offer")).then_some(st)
    });
    assert!(st["dhcp"]["no_lease"].is_string(), "{st}");
    assert!(!has(&rt, &mac, &p), "no address without a lease");
    l.start();
    let ip = leased_and_attached(&l, &rt, &mac, 30);
    assert!(ip.starts_with(&format!("{p}.")));

    // The LAN moves: dnsmasq serves another subnet, the host follows.
    l.renumber(octets(&q).0, octets(&q).1);
    must(&format!(
        "ip addr add {q}.2/24 dev {pa} && ip addr del {p}.2/24 dev {pa}"
    ));
    let ip2 = wait_for(
        Duration::from_secs(40),
        "a lease on the new LAN, attached",
        || {
            let (ip, _) = l
                .lease_of(&mac)
                .filter(|(ip, _)| ip.starts_with(&format!("{q}.")))?;
            has_ip(&rt, &mac, &ip).then_some(ip)
        },
    );
    assert_ne!(ip2, ip);
    assert_eq!(stored_mac(&agent, &rt, &pa), mac, "MAC kept");
    assert!(!has(&rt, &mac, &p), "the old LAN's address is gone");
}

#[test]
fn a_stopped_runtime_keeps_its_lease_renewed_unless_release_when_stopped() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("ags");
    let (p, _, _) = subnets();
    let mut l = lan(&p, true);
    l.start();
    let pa = l.parent.clone();
    let kept = unique("rs");
    let _cleanup = DockerCleanup::runtimes(&[&kept], &[&pa]);
    let netmon = HostNetmon::start(dir.path(), &[&pa]);
    let agent = start_agent(&dir, &netmon, 2, &[]);
    agent.wait_linked(&[&pa]);
    agent.create_dhcp(&kept, &image, "eth1", &pa);
    let mac = stored_mac(&agent, &kept, &pa);
    let ip = leased_and_attached(&l, &kept, &mac, 30);
    agent.must(&["runtime", "stop", &kept]);
    let acks = l.log_lines("DHCPACK", &mac).len();
    wait_for(Duration::from_secs(20), "a renewal while stopped", || {
        (l.log_lines("DHCPACK", &mac).len() > acks).then_some(())
    });
    assert!(l.log_lines("DHCPRELEASE", &mac).is_empty());
    agent.must(&["runtime", "start", &kept]);
    assert_eq!(leased_and_attached(&l, &kept, &mac, 30), ip);
    drop(agent);

    // The same host, the agent now with --release-when-stopped.
    let dir2 = TempDir::new("agr");
    let agent = start_agent(&dir2, &netmon, 2, &["--release-when-stopped"]);
    agent.wait_linked(&[&pa]);
    let rel = unique("rs");
    let _cleanup2 = DockerCleanup::runtimes(&[&rel], &[]);
    agent.create_dhcp(&rel, &image, "eth1", &pa);
    let mac2 = stored_mac(&agent, &rel, &pa);
    leased_and_attached(&l, &rel, &mac2, 30);
    agent.must(&["runtime", "stop", &rel]);
    wait_for(Duration::from_secs(15), "DHCPRELEASE when stopped", || {
        (!l.log_lines("DHCPRELEASE", &mac2).is_empty() && l.lease_of(&mac2).is_none()).then_some(())
    });
    agent.must(&["runtime", "start", &rel]);
    leased_and_attached(&l, &rel, &mac2, 30);
}
