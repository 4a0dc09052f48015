//! `Kernel::dump_some` (the read of a few interfaces) against the real kernel: for
//! the interfaces asked, exactly what a full dump says about them.

use std::collections::BTreeSet;

use e2e::kernel::{ifindex, private_netns, runtime, veth};
use e2e::must;
use netmon::model::Snapshot;
use netmon::netlink::Kernel;

/// The part of a full snapshot about `indexes`, in kernel order.
fn only(snap: &Snapshot, indexes: &BTreeSet<u32>) -> Snapshot {
    Snapshot {
        links: snap
            .links
            .iter()
            .filter(|l| indexes.contains(&l.index))
            .cloned()
            .collect(),
        addrs4: snap
            .addrs4
            .iter()
            .filter(|a| indexes.contains(&a.index))
            .cloned()
            .collect(),
        addrs6: snap
            .addrs6
            .iter()
            .filter(|a| indexes.contains(&a.index))
            .cloned()
            .collect(),
        routes: snap
            .routes
            .iter()
            .filter(|r| indexes.contains(&r.oif))
            .cloned()
            .collect(),
    }
}

#[test]
fn reading_some_interfaces_matches_the_full_dump_for_them() {
    private_netns();
    must("sysctl -qw net.ipv6.conf.default.addr_gen_mode=1");
    veth("ethA", "ethB");
    veth("ethC", "ethD");
    must("ip addr add 10.0.0.2/24 dev ethA");
    must("ip addr add 10.0.0.3/24 dev ethA");
    must("ip addr add 2001:db8::2/64 dev ethA nodad");
    must("ip addr add 10.1.0.2/24 dev ethB");
    must("ip addr add 10.2.0.2/24 dev ethC");
    must("ip route add default via 10.0.0.254 dev ethA metric 100");
    must("ip route add default via 10.1.0.1 dev ethB metric 150");
    must(
        "ip route add default metric 300 nexthop via 10.0.0.9 dev ethA nexthop via 10.1.0.9 dev ethB",
    );
    // Never reported: another table, not a default route.
    must("ip route add default via 10.0.0.99 dev ethA table 100");
    must("ip route add 172.16.0.0/16 via 10.0.0.1 dev ethA");

    let (a, b, c) = (ifindex("ethA"), ifindex("ethB"), ifindex("ethC"));
    let (full, some, gone, no_routes) = runtime().block_on(async {
        let kernel = Kernel::open_dump_only().expect("open dump connection");
        let full = kernel.dump().await.expect("full dump");
        let want: BTreeSet<u32> = [a, c].into();
        let some = kernel.dump_some(&want, true).await.expect("dump_some");
        // An index with no link (never existed, or just deleted) is simply absent.
        let gone = kernel
            .dump_some(&[b, 99_999].into(), true)
            .await
            .expect("dump_some with a missing index");
        let no_routes = kernel.dump_some(&want, false).await.expect("dump_some");
        (full, some, gone, no_routes)
    });
    let some = some.expect("this kernel filters dumps (Linux >= 4.20)");
    assert_eq!(some, only(&full, &[a, c].into()));
    assert_eq!(some.links.len(), 2);
    assert_eq!(some.addrs4.len(), 3);
    // ethA's own default route and its multipath hop; not ethB's hop.
    assert_eq!(some.routes.len(), 2, "{:?}", some.routes);
    let gone = gone.expect("filtered");
    assert_eq!(gone, only(&full, &[b].into()));
    assert_eq!(gone.links.len(), 1);
    let no_routes = no_routes.expect("filtered");
    assert!(no_routes.routes.is_empty());
    assert_eq!(no_routes.links, some.links);
    assert_eq!(no_routes.addrs4, some.addrs4);
}
