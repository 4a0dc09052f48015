//! `netmon dump` through the real binary, inside a namespace, checked against `ip -j`.

use std::collections::BTreeMap;
use std::process::Output;

use e2e::{Netns, bin};
use ipc::{EventKind, PROTOCOL_VERSION, Status};
use serde_json::Value;

fn netmon_dump(ns: &Netns, args: &[&str]) -> String {
    let out: Output = ns
        .command(&bin("netmon"))
        .arg("dump")
        .args(args)
        .output()
        .expect("spawn netmon dump");
    assert!(
        out.status.success(),
        "`netmon dump {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("netmon dump prints UTF-8");
    assert!(
        !text.trim().is_empty(),
        "`netmon dump {}` printed nothing: is the `dump` subcommand wired to \
         netmon::dump::run_dump in main.rs?",
        args.join(" ")
    );
    text
}

/// A namespace with two reported veth pairs, one link down, addresses, default routes,
/// and a link the default filters hide.
fn lan() -> Netns {
    let ns = Netns::new();
    // No automatic IPv6 link-local addresses: they appear asynchronously and would
    // race the comparison with `ip -j`.
    ns.exec("sysctl -qw net.ipv6.conf.default.addr_gen_mode=1")
        .expect("sysctl");
    ns.veth("ethA", "ethB");
    ns.veth("ethC", "vethC");
    ns.must_ip("link set ethC down");
    ns.must_ip("addr add 10.0.0.2/24 dev ethA");
    ns.must_ip("addr add 10.0.0.3/24 dev ethA");
    ns.must_ip("addr add 192.168.60.2/24 dev ethA");
    ns.must_ip("addr add 2001:db8::2/64 dev ethA nodad");
    ns.must_ip("addr add 10.1.0.2/24 dev ethB");
    ns.must_ip("addr add 10.2.0.2/24 dev ethC");
    ns.must_ip("route add default via 10.0.0.1 dev ethA metric 200");
    ns.must_ip("route add default via 10.0.0.254 dev ethA metric 100");
    ns.must_ip("route add default via 10.1.0.1 dev ethB metric 150");
    ns
}

fn ifname_index(ns: &Netns) -> BTreeMap<String, u64> {
    ns.json("link show")
        .as_array()
        .expect("array")
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().expect("ifname").to_string(),
                l["ifindex"].as_u64().expect("ifindex"),
            )
        })
        .collect()
}

#[test]
fn dump_json_is_a_discovery_event_matching_ip() {
    let ns = lan();
    let out = netmon_dump(&ns, &["--json"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {out}");
    let raw: Value = serde_json::from_str(lines[0]).expect("valid JSON");
    assert_eq!(raw["type"], "network_discovery");
    let event: ipc::Event = serde_json::from_value(raw).expect("an ipc::Event");
    assert_eq!(event.version, Some(PROTOCOL_VERSION));
    assert_eq!(event.seq, Some(1));
    assert!(event.instance.as_deref().is_some_and(|i| !i.is_empty()));
    let EventKind::NetworkDiscovery(discovery) = event.kind else {
        panic!("not a discovery: {out}");
    };
    assert!(discovery.timestamp.is_some());

    // Every link except the filtered ones (lo, veth*), in ifindex order.
    let names: Vec<&str> = discovery
        .interfaces
        .iter()
        .map(|i| i.interface.as_str())
        .collect();
    let indexes = ifname_index(&ns);
    let mut want: Vec<&str> = ["ethA", "ethB", "ethC"].to_vec();
    want.sort_by_key(|n| indexes[*n]);
    assert_eq!(names, want);
    for iface in &discovery.interfaces {
        e2e::netmon::assert_matches_ip(&ns, iface);
    }
    let a = &discovery
        .interfaces
        .iter()
        .find(|i| i.interface == "ethA")
        .expect("ethA");
    assert_eq!(
        a.gateway,
        Some("10.0.0.254".parse().unwrap()),
        "lowest metric"
    );
    assert_eq!(a.ipv4_addresses.len(), 3);
    let c = &discovery
        .interfaces
        .iter()
        .find(|i| i.interface == "ethC")
        .expect("ethC");
    assert_eq!(c.status, Some(Status::Down));
}

#[test]
fn dump_table_shows_each_interface() {
    let ns = lan();
    let out = netmon_dump(&ns, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three interfaces:\n{out}");
    assert!(lines[0].starts_with("NAME"), "{out}");
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
    };
    let a: Vec<&str> = row("ethA").split_whitespace().collect();
    assert_eq!(a[2], "up");
    assert_eq!(a[3], "UP");
    assert_eq!(a[4], "ethernet/veth");
    assert_eq!(a[7], "10.0.0.2/24,192.168.60.2/24,10.0.0.3/24");
    assert_eq!(a[8], "10.0.0.254");
    let c: Vec<&str> = row("ethC").split_whitespace().collect();
    assert_eq!(c[2], "down");
    assert_eq!(c[7], "-", "no IPv4 shown when down");
    assert!(!out.contains("vethC") && !out.lines().any(|l| l.starts_with("lo ")));
    // Columns line up: STATUS starts at the same offset on every line.
    let col = lines[0].find("STATUS").expect("STATUS column");
    for l in &lines[1..] {
        assert!(
            l[col..].starts_with("up") || l[col..].starts_with("down"),
            "{l}"
        );
    }
}

#[test]
fn dump_applies_include_and_exclude() {
    let ns = lan();
    let names = |args: &[&str]| -> Vec<String> {
        let out = netmon_dump(&ns, args);
        let event: ipc::Event = serde_json::from_str(out.trim()).expect("an ipc::Event");
        let EventKind::NetworkDiscovery(d) = event.kind else {
            panic!("not a discovery: {out}");
        };
        let mut n: Vec<String> = d.interfaces.into_iter().map(|i| i.interface).collect();
        n.sort();
        n
    };
    // An include lifts the default exclusion of veth*; the user's exclude still wins.
    assert_eq!(
        names(&[
            "--json",
            "--include",
            "veth*",
            "--include",
            "eth*",
            "--exclude",
            "ethB"
        ]),
        ["ethA", "ethC", "vethC"]
    );
    // A name without wildcards matches only itself.
    assert_eq!(names(&["--json", "--include", "ethA"]), ["ethA"]);
    assert_eq!(
        names(&["--json", "--exclude", "eth?"]),
        Vec::<String>::new()
    );

    let bad = ns
        .command(&bin("netmon"))
        .args(["dump", "--include", "eth["])
        .output()
        .expect("spawn netmon dump");
    assert!(!bad.status.success(), "a malformed glob is refused");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("eth["), "the error names the pattern: {err}");
}
