//! `Kernel::dump` against the real kernel, checked field by field against `ip -j`.
//! Each test runs in a private network namespace of its own (see `e2e::kernel`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use e2e::kernel::{ifindex, ip_json, private_netns, runtime, veth};
use e2e::must;
use ipc::Status;
use netmon::filter::Filter;
use netmon::model::{Route4, Snapshot, build};
use netmon::netlink::Kernel;
use serde_json::Value;

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// Links: index, name, operstate, UP/LOWER_UP, kind, MAC, MTU.
fn check_links(snap: &Snapshot) {
    let links = ip_json("-d link show");
    let links = links.as_array().expect("ip -j link is an array");
    assert_eq!(snap.links.len(), links.len(), "same number of links");
    for l in links {
        let index = l["ifindex"].as_u64().expect("ifindex") as u32;
        let got = snap
            .links
            .iter()
            .find(|x| x.index == index)
            .unwrap_or_else(|| panic!("link {index} missing from the dump: {l}"));
        assert_eq!(got.name, str_of(&l["ifname"]), "{l}");
        assert_eq!(got.operstate, str_of(&l["operstate"]), "{l}");
        assert_eq!(got.flags_up, has_flag(l, "UP"), "{l}");
        assert_eq!(got.flags_lower_up, has_flag(l, "LOWER_UP"), "{l}");
        assert_eq!(got.mtu, l["mtu"].as_u64().map(|m| m as u32), "{l}");
        assert_eq!(got.mac.as_deref(), l["address"].as_str(), "{l}");
        assert_eq!(
            got.kind.as_deref(),
            l["linkinfo"]["info_kind"].as_str(),
            "{l}"
        );
    }
}

/// Addresses: per link, in kernel order, with the secondary flag and IPv6 scope.
fn check_addresses(snap: &Snapshot) {
    let links = ip_json("addr show");
    let mut n4 = 0;
    let mut n6 = 0;
    for l in links.as_array().expect("array") {
        let index = l["ifindex"].as_u64().expect("ifindex") as u32;
        let infos = l["addr_info"].as_array().cloned().unwrap_or_default();
        let want4: Vec<(String, u64, bool)> = infos
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| {
                (
                    str_of(&a["local"]).to_string(),
                    a["prefixlen"].as_u64().expect("prefixlen"),
                    a["secondary"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let got4: Vec<(String, u64, bool)> = snap
            .addrs4
            .iter()
            .filter(|a| a.index == index)
            .map(|a| (a.address.to_string(), u64::from(a.prefixlen), a.secondary))
            .collect();
        assert_eq!(got4, want4, "IPv4 addresses of {}", l["ifname"]);
        n4 += got4.len();

        let want6: Vec<(String, u64, String)> = infos
            .iter()
            .filter(|a| a["family"] == "inet6")
            .map(|a| {
                (
                    str_of(&a["local"]).to_string(),
                    a["prefixlen"].as_u64().expect("prefixlen"),
                    str_of(&a["scope"]).to_string(),
                )
            })
            .collect();
        let got6: Vec<(String, u64, String)> = snap
            .addrs6
            .iter()
            .filter(|a| a.index == index)
            .map(|a| {
                (
                    a.address.to_string(),
                    u64::from(a.prefixlen),
                    a.scope.clone(),
                )
            })
            .collect();
        assert_eq!(got6, want6, "IPv6 addresses of {}", l["ifname"]);
        n6 += got6.len();
    }
    assert_eq!(snap.addrs4.len(), n4, "no IPv4 address of an unknown link");
    assert_eq!(snap.addrs6.len(), n6, "no IPv6 address of an unknown link");
}

/// Routes: exactly the main table's IPv4 default routes with a gateway, one per nexthop.
fn check_routes(snap: &Snapshot) {
    let mut want = BTreeSet::new();
    for r in ip_json("-4 route show table main")
        .as_array()
        .expect("array")
    {
        if r["dst"] != "default" {
            continue;
        }
        let metric = r["metric"].as_u64().unwrap_or(0) as u32;
        let hops = match r["nexthops"].as_array() {
            Some(h) => h.clone(),
            None => vec![r.clone()],
        };
        for h in hops {
            if let Some(gw) = h["gateway"].as_str() {
                want.insert((
                    ifindex(str_of(&h["dev"])),
                    gw.parse::<Ipv4Addr>().unwrap(),
                    metric,
                ));
            }
        }
    }
    let got: BTreeSet<(u32, Ipv4Addr, u32)> = snap
        .routes
        .iter()
        .map(|r: &Route4| (r.oif, r.gateway, r.metric))
        .collect();
    assert_eq!(got.len(), snap.routes.len(), "no duplicate routes");
    assert_eq!(got, want);
}

#[test]
fn dump_matches_ip_json_field_by_field() {
    private_netns();
    // No automatic link-local addresses: they appear asynchronously and would race
    // the comparison. A manual one below covers the `link` scope.
    must("sysctl -qw net.ipv6.conf.default.addr_gen_mode=1");
    veth("ethA", "ethB");
    veth("ethC", "ethD");
    must("ip link set ethC down");
    must("ip link set ethA mtu 1400");
    must("ip link set ethA address 02:aa:bb:cc:dd:01");
    must("ip addr add 10.0.0.2/24 dev ethA");
    must("ip addr add 10.0.0.3/24 dev ethA"); // secondary of 10.0.0.0/24
    must("ip addr add 192.168.50.2/24 dev ethA");
    must("ip addr add 10.0.0.4/24 dev ethA"); // another secondary, after a primary
    must("ip addr add 2001:db8::2/64 dev ethA nodad");
    must("ip addr add fe80::2/64 dev ethA nodad");
    must("ip addr add 10.1.0.2/24 dev ethB");
    must("ip addr add 10.2.0.2/24 dev ethC");
    must("ip route add default via 10.0.0.1 dev ethA metric 200");
    must("ip route add default via 10.0.0.254 dev ethA metric 100");
    must("ip route add default via 10.1.0.1 dev ethB metric 150");
    must(
        "ip route add default metric 300 nexthop via 10.0.0.9 dev ethA nexthop via 10.1.0.9 dev ethB",
    );
    // Not default routes of the main table: never reported.
    must("ip route add default via 10.1.0.99 dev ethB table 100");
    must("ip route add 172.16.0.0/16 via 10.1.0.1 dev ethB");

    let snap = runtime().block_on(async {
        let kernel = Kernel::open_dump_only().expect("open dump connection");
        kernel.dump().await.expect("dump")
    });
    check_links(&snap);
    check_addresses(&snap);
    check_routes(&snap);
    assert_eq!(snap.routes.len(), 5, "{:?}", snap.routes);

    let reported = build(&snap, &Filter::default(), &|_| false);
    let names: Vec<&str> = reported.values().map(|i| i.interface.as_str()).collect();
    assert_eq!(names.len(), 4, "lo is filtered: {names:?}");
    assert!(!names.contains(&"lo"));

    let a = &reported[&ifindex("ethA")];
    let scopes: Vec<&str> = a.ipv6_addresses.iter().map(|x| x.scope.as_str()).collect();
    assert_eq!(scopes, ["global", "link"]);
    assert_eq!(a.status, Some(Status::Up));
    assert_eq!(a.mac.as_deref(), Some("02:aa:bb:cc:dd:01"));
    assert_eq!(a.mtu, Some(1400));
    assert_eq!(a.kind.as_deref(), Some("veth"));
    let v4: Vec<String> = a
        .ipv4_addresses
        .iter()
        .map(|x| x.address.to_string())
        .collect();
    assert_eq!(v4, ["10.0.0.2", "192.168.50.2", "10.0.0.3", "10.0.0.4"]);
    assert_eq!(
        a.gateway,
        Some("10.0.0.254".parse().unwrap()),
        "lowest metric wins"
    );
    let b = &reported[&ifindex("ethB")];
    assert_eq!(b.gateway, Some("10.1.0.1".parse().unwrap()));
    let c = &reported[&ifindex("ethC")];
    assert_eq!(c.status, Some(Status::Down));
    assert!(c.ipv4_addresses.is_empty(), "down: no IPv4 reported");
    let d = &reported[&ifindex("ethD")];
    assert_eq!(d.status, Some(Status::Down), "peer down: no carrier");
}

#[test]
fn dump_of_many_links_is_complete() {
    private_netns();
    e2e::kernel::disable_ipv6_autoconf();
    // 200 veth pairs = 400 links, through one `ip -batch` so set-up stays quick.
    let mut batch = String::new();
    for i in 0..200 {
        batch.push_str(&format!("link add ethM{i} type veth peer name ethN{i}\n"));
        batch.push_str(&format!("link set ethM{i} up\nlink set ethN{i} up\n"));
        batch.push_str(&format!(
            "addr add 10.{}.{}.1/30 dev ethM{i}\n",
            100 + i / 64,
            (i % 64) * 4
        ));
    }
    let dir = e2e::TempDir::new("kd");
    let path = dir.join("batch");
    std::fs::write(&path, batch).expect("write batch file");
    must(&format!("ip -batch {}", path.display()));
    // Carrier comes up asynchronously after `link set up`: compare once every veth
    // is operationally up, or the dump and `ip -j` may see different operstates.
    e2e::wait_for(Duration::from_secs(20), "every veth up", || {
        let links = ip_json("link show");
        let all_up = links
            .as_array()
            .expect("array")
            .iter()
            .filter(|l| l["ifname"] != "lo")
            .all(|l| l["operstate"] == "UP");
        all_up.then_some(())
    });

    let snaps = runtime().block_on(async {
        let kernel = Kernel::open_dump_only().expect("open dump connection");
        // Several callers at once on one connection: the kernel allows one dump per
        // socket, so `Kernel` must make them take turns rather than fail with EBUSY.
        let (a, b, c) = tokio::join!(kernel.dump(), kernel.dump(), kernel.dump());
        [a, b, c].map(|s| s.expect("dump"))
    });
    for snap in &snaps {
        assert_eq!(snap.links.len(), 401);
        assert_eq!(snap.addrs4.len(), 201);
    }
    let snap = &snaps[0];
    check_links(snap);
    check_addresses(snap);
    assert_eq!(build(snap, &Filter::default(), &|_| false).len(), 400);
}
