//! netmon's events through the real binary in a fresh namespace, checked against
//! what the kernel says (`ip -j`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::netmon::{expect_silence, next_change, next_event};
use e2e::{NetmonProc, Netns};
use ipc::{Connection, EventKind, Interface, Status};
use serde_json::Value;

const FAST: &[&str] = &["--debounce", "1s", "--max-wait", "3s"];

/// A namespace with two reported veth ends, `ethA` and `ethB`, both up, no automatic
/// IPv6 addresses (they appear asynchronously and would add events).
fn lan() -> Netns {
    let ns = Netns::new();
    ns.exec("sysctl -qw net.ipv6.conf.default.addr_gen_mode=1")
        .expect("sysctl");
    ns.veth("ethA", "ethB");
    e2e::netmon::wait_oper_up(&ns, &["ethA", "ethB"]);
    ns
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

/// Every event until `limit` has passed with nothing for `quiet`, or `until` matches.
async fn collect_until(
    c: &mut Connection,
    limit: Duration,
    mut until: impl FnMut(&[Interface]) -> bool,
) -> Vec<Interface> {
    let end = Instant::now() + limit;
    let mut out = Vec::new();
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        let Some(ev) = next_event(c, left).await else {
            break;
        };
        if let EventKind::NetworkChange(i) = ev.kind {
            out.push(i);
            if until(&out) {
                break;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_matches_ip_json_field_by_field() {
    let ns = lan();
    ns.veth("ethC", "vethC");
    ns.must_ip("link set ethC down");
    ns.must_ip("link add bridge7 type bridge");
    ns.must_ip("link set bridge7 up");
    ns.must_ip("link add link ethB name mvlan7 type macvlan");
    ns.must_ip("addr add 10.0.0.2/24 dev ethA");
    ns.must_ip("addr add 10.0.0.3/24 dev ethA");
    ns.must_ip("addr add 192.168.60.2/24 dev ethA");
    ns.must_ip("addr add 2001:db8::2/64 dev ethA nodad");
    ns.must_ip("addr add 10.1.0.2/24 dev ethB");
    ns.must_ip("addr add 10.2.0.2/24 dev ethC");
    ns.must_ip("route add default via 10.0.0.254 dev ethA metric 5100");
    ns.must_ip("route add default via 10.0.0.1 dev ethA metric 5000");
    ns.must_ip("route add default via 10.1.0.1 dev ethB metric 5050");
    let nm = NetmonProc::start(&ns, FAST);
    let (_c, ifaces) = nm.connect().await;
    let got: BTreeMap<&str, &Interface> =
        ifaces.iter().map(|i| (i.interface.as_str(), i)).collect();

    let links = ns.json("-d link show");
    let mut expected_names: Vec<&str> = links
        .as_array()
        .expect("ip -j link is an array")
        .iter()
        .filter_map(|l| s(&l["ifname"]))
        .filter(|n| *n != "lo" && !n.starts_with("veth"))
        .collect();
    expected_names.sort();
    let mut got_names: Vec<&str> = got.keys().copied().collect();
    got_names.sort();
    assert_eq!(got_names, expected_names, "reported interfaces");
    assert_eq!(
        expected_names,
        vec!["bridge7", "ethA", "ethB", "ethC", "mvlan7"]
    );

    for i in got.values() {
        e2e::netmon::assert_matches_ip(&ns, i);
    }
    // Lowest metric wins; a down link has no gateway.
    assert_eq!(got["ethA"].gateway, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(got["ethB"].gateway, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(got["ethC"].gateway, None);
    assert_eq!(got["bridge7"].gateway, None);
    assert_eq!(got["mvlan7"].kind.as_deref(), Some("macvlan"));
    // Primaries first: 10.0.0.3 is a secondary of 10.0.0.2/24.
    let order: Vec<String> = got["ethA"]
        .ipv4_addresses
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(order, vec!["10.0.0.2", "192.168.60.2", "10.0.0.3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_change_is_one_event_after_the_window() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, _) = nm.connect().await;
    ns.must_ip("addr add 10.3.0.2/24 dev ethA");
    ns.must_ip("addr add 10.3.1.2/24 dev ethA");
    // The window is 1 s: nothing may come before it closes.
    expect_silence(&mut c, Duration::from_millis(600), "inside the window").await;
    let i = next_change(&mut c, Duration::from_secs(5), "the new addresses").await;
    assert_eq!(i.interface, "ethA");
    let got: Vec<String> = i
        .ipv4_addresses
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(got, vec!["10.3.0.2", "10.3.1.2"]);
    assert_eq!(i.ipv4_addresses[0].subnet.to_string(), "10.3.0.0/24");
    expect_silence(&mut c, Duration::from_secs(2), "two changes, one event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_add_change_delete() {
    let ns = lan();
    ns.must_ip("addr add 10.4.0.2/24 dev ethA");
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, _) = nm.connect().await;
    let limit = Duration::from_secs(6);

    ns.must_ip("route add default via 10.4.0.1 dev ethA metric 5000");
    let i = next_change(&mut c, limit, "route add").await;
    assert_eq!(
        (i.interface.as_str(), i.gateway),
        ("ethA", Some("10.4.0.1".parse().unwrap()))
    );

    ns.must_ip("route replace default via 10.4.0.254 dev ethA metric 5000");
    let i = next_change(&mut c, limit, "route change").await;
    assert_eq!(i.gateway, Some("10.4.0.254".parse().unwrap()));

    ns.must_ip("route del default via 10.4.0.254 dev ethA metric 5000");
    let i = next_change(&mut c, limit, "route delete").await;
    assert_eq!((i.interface.as_str(), i.gateway), ("ethA", None));
    assert_eq!(i.ipv4_addresses.len(), 1, "address untouched");
}

/// A default route the kernel removes on its own when its gateway's subnet goes
/// (the address is deleted), and one that comes back with the link: the partial
/// reads must re-read routes for interfaces that had one, not only on route messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_lost_with_its_address_and_back_with_the_link() {
    let ns = lan();
    ns.must_ip("addr add 10.4.1.2/24 dev ethA");
    // With the address as its source: the kernel flushes the route with the address.
    ns.must_ip("route add default via 10.4.1.1 dev ethA src 10.4.1.2 metric 5000");
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, disc) = nm.connect().await;
    let a = disc.iter().find(|i| i.interface == "ethA").expect("ethA");
    assert_eq!(a.gateway, Some("10.4.1.1".parse().unwrap()));
    let limit = Duration::from_secs(6);

    // The route goes with its source address.
    ns.must_ip("addr add 10.4.2.2/24 dev ethA");
    ns.must_ip("addr del 10.4.1.2/24 dev ethA");
    let i = next_change(&mut c, limit, "the address move").await;
    assert_eq!(
        e2e::netmon::ip_gateway(&ns, "ethA"),
        None,
        "kernel dropped it"
    );
    assert_eq!((i.interface.as_str(), i.gateway), ("ethA", None));

    ns.must_ip("route add default via 10.4.2.1 dev ethA metric 5000");
    let i = next_change(&mut c, limit, "route add").await;
    assert_eq!(i.gateway, Some("10.4.2.1".parse().unwrap()));
    // Carrier lost (the peer goes down): no gateway reported, but the kernel keeps
    // the route (flagged linkdown); carrier back: the gateway is reported again.
    ns.must_ip("link set ethB down");
    let i = loop {
        let i = next_change(&mut c, limit, "carrier lost").await;
        if i.interface == "ethA" {
            break i;
        }
    };
    assert_eq!((i.status, i.gateway), (Some(Status::Down), None));
    ns.must_ip("link set ethB up");
    e2e::netmon::wait_oper_up(&ns, &["ethA", "ethB"]);
    let deadline = Instant::now() + limit;
    loop {
        let i = next_change(&mut c, limit, "carrier back").await;
        if i.interface == "ethA" && i.status == Some(Status::Up) && i.gateway.is_some() {
            let want = e2e::netmon::ip_gateway(&ns, "ethA");
            assert_eq!(i.gateway.map(|g| g.to_string()), want);
            break;
        }
        assert!(Instant::now() < deadline, "gateway never came back: {i:?}");
    }
}

/// Uses the default 3 s window: a change is not reported before it, a link going down
/// is reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_window_and_immediate_link_down() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, &[]);
    let (mut c, _) = nm.connect().await;
    ns.must_ip("addr add 10.6.0.2/24 dev ethA");
    expect_silence(
        &mut c,
        Duration::from_millis(2200),
        "inside the default 3 s window",
    )
    .await;
    let i = next_change(&mut c, Duration::from_secs(6), "the address").await;
    assert_eq!(i.ipv4_addresses[0].address.to_string(), "10.6.0.2");

    let t = Instant::now();
    ns.must_ip("link set ethA down");
    // Functional bound, far below the 3 s window: the down event skips the debounce.
    let evs = collect_until(&mut c, Duration::from_secs(2), |v| {
        v.iter().any(|i| i.interface == "ethA")
    })
    .await;
    let a = evs
        .iter()
        .find(|i| i.interface == "ethA")
        .unwrap_or_else(|| panic!("no immediate down event for ethA within 2 s: {evs:?}"));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "the 3 s window was not skipped"
    );
    assert_eq!(a.status, Some(Status::Down));
    assert_eq!(a.operstate.as_deref(), Some("DOWN"));
    assert!(a.ipv4_addresses.is_empty());
    assert_eq!(a.gateway, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_link_is_removed_at_once() {
    let ns = lan();
    ns.veth("ethC", "ethD");
    e2e::netmon::wait_oper_up(&ns, &["ethC", "ethD"]);
    ns.must_ip("addr add 10.7.0.2/24 dev ethC");
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, disc) = nm.connect().await;
    let idx = disc
        .iter()
        .find(|i| i.interface == "ethC")
        .and_then(|i| i.index)
        .expect("ethC in discovery");
    ns.must_ip("link del ethC");
    let evs = collect_until(&mut c, Duration::from_millis(2500), |v| {
        ["ethC", "ethD"]
            .iter()
            .all(|n| v.iter().any(|i| i.interface == *n))
    })
    .await;
    for n in ["ethC", "ethD"] {
        let i = evs
            .iter()
            .find(|i| i.interface == n)
            .unwrap_or_else(|| panic!("no removed event for {n}: {evs:?}"));
        assert_eq!(i.status, Some(Status::Removed), "{n}");
        assert!(i.ipv4_addresses.is_empty(), "{n}");
        // Not "UP": a reader of the older protocol (operstate only) must see it gone.
        assert_eq!(i.operstate.as_deref(), Some("NOTPRESENT"), "{n}");
    }
    let c_ev = evs.iter().find(|i| i.interface == "ethC").expect("ethC");
    assert_eq!(c_ev.index, Some(idx), "last known index");
    expect_silence(&mut c, Duration::from_secs(2), "a removal is reported once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_is_removed_then_new_name() {
    let ns = lan();
    // Both ends stay down: a link must be down to be renamed.
    ns.must_ip("link add dmold type veth peer name dmpeer");
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, disc) = nm.connect().await;
    let idx = disc
        .iter()
        .find(|i| i.interface == "dmold")
        .and_then(|i| i.index)
        .expect("dmold in discovery");
    ns.must_ip("link set dmold name dmnew");
    let evs = collect_until(&mut c, Duration::from_secs(6), |v| {
        v.iter().any(|i| i.interface == "dmnew")
    })
    .await;
    assert_eq!(evs.len(), 2, "removed + new: {evs:?}");
    assert_eq!(
        (evs[0].interface.as_str(), evs[0].status, evs[0].index),
        ("dmold", Some(Status::Removed), Some(idx))
    );
    assert_eq!(
        (evs[1].interface.as_str(), evs[1].index),
        ("dmnew", Some(idx))
    );
    assert_eq!(evs[1].status, Some(Status::Down));

    // Renamed to a name the default filter hides: it is removed.
    ns.must_ip("link set dmnew name veth9x");
    let i = next_change(&mut c, Duration::from_secs(6), "rename out of the filter").await;
    assert_eq!(
        (i.interface.as_str(), i.status),
        ("dmnew", Some(Status::Removed))
    );
    // And back into it: it appears.
    ns.must_ip("link set veth9x name dmback");
    let i = next_change(&mut c, Duration::from_secs(6), "rename into the filter").await;
    assert_eq!((i.interface.as_str(), i.index), ("dmback", Some(idx)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_deleted_and_readded_inside_window_is_silent() {
    let ns = lan();
    ns.must_ip("addr add 10.8.0.2/24 dev ethA");
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, _) = nm.connect().await;
    // A DHCP renewal: delete and re-add the same address.
    ns.must_ip("addr del 10.8.0.2/24 dev ethA");
    ns.must_ip("addr add 10.8.0.2/24 dev ethA");
    expect_silence(&mut c, Duration::from_secs(3), "the state is unchanged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_churn_is_reported_within_max_wait() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, _) = nm.connect().await;
    let name = ns.name.clone();
    let start = Instant::now();
    let churn = std::thread::spawn(move || {
        // A change every 500 ms for 6 s: the 1 s quiet window never closes.
        for n in 0..12 {
            e2e::must(&format!("ip -n {name} addr add 10.9.{n}.2/24 dev ethA"));
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let i = next_change(&mut c, Duration::from_secs(8), "a churning interface").await;
    let took = start.elapsed();
    assert_eq!(i.interface, "ethA");
    // Max wait 3 s from the first change, with a margin for a busy machine; the churn
    // still runs, so only the maximum wait can have released it.
    assert!(
        took < Duration::from_millis(5500),
        "reported after {took:?}, max wait is 3 s"
    );
    assert!(!churn.is_finished() || took < Duration::from_secs(6));
    churn.join().expect("churn thread");
}

/// Default 3 s window: two interfaces changed 2 s apart are reported 2 s apart, each
/// after its own window (a shared window would release both together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_interfaces_are_debounced_independently() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, &[]);
    let (mut c, _) = nm.connect().await;
    ns.must_ip("addr add 10.10.0.2/24 dev ethA");
    std::thread::sleep(Duration::from_secs(2));
    ns.must_ip("addr add 10.11.0.2/24 dev ethB");
    let first = next_change(&mut c, Duration::from_secs(6), "ethA").await;
    let t_first = Instant::now();
    let second = next_change(&mut c, Duration::from_secs(6), "ethB").await;
    let gap = t_first.elapsed();
    assert_eq!(first.interface, "ethA");
    assert_eq!(second.interface, "ethB");
    assert!(
        gap > Duration::from_millis(1000),
        "ethB reported only {gap:?} after ethA: the windows are not independent"
    );
}
