//! The event socket against the real kernel: each change gives a hint for the right
//! interface, link down and delete are urgent, and an overflowing socket says
//! `Overrun`. Each test runs in a private network namespace (see `e2e::kernel`).

use e2e::kernel::{EVENT_WAIT, disable_ipv6_autoconf, ifindex, private_netns, runtime, veth};
use e2e::must;
use netmon::netlink::{Kernel, KernelEvent, KernelOptions};
use tokio::sync::mpsc::Receiver;

/// Receives until `pred` matches, returning everything received before it.
async fn wait_for(
    rx: &mut Receiver<KernelEvent>,
    what: &str,
    pred: impl Fn(&KernelEvent) -> bool,
) -> Vec<KernelEvent> {
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return before,
            Ok(Some(ev)) => before.push(ev),
            Ok(None) => panic!("event stream closed while waiting for {what}"),
            Err(_) => panic!("no {what} within {EVENT_WAIT:?}; got {before:?}"),
        }
    }
}

fn hint(ifindex: u32, urgent: bool) -> impl Fn(&KernelEvent) -> bool {
    move |ev| matches!(ev, KernelEvent::Hint { ifindex: i, urgent: u, .. } if *i == ifindex && *u == urgent)
}

/// A hint from a default-route message.
fn route_hint(ifindex: u32) -> impl Fn(&KernelEvent) -> bool {
    move |ev| matches!(ev, KernelEvent::Hint { ifindex: i, route: true, .. } if *i == ifindex)
}

fn any_hint_for(ifindex: u32) -> impl Fn(&KernelEvent) -> bool {
    move |ev| matches!(ev, KernelEvent::Hint { ifindex: i, .. } if *i == ifindex)
}

/// Adds an address to `sentinel` and waits for its hint: everything the kernel sent
/// before it has then been received too (one socket, in order).
async fn sync_on(rx: &mut Receiver<KernelEvent>, sentinel: &str, n: u8) -> Vec<KernelEvent> {
    must(&format!("ip addr add 10.250.{n}.1/32 dev {sentinel}"));
    wait_for(rx, "the sentinel's hint", any_hint_for(ifindex(sentinel))).await
}

#[test]
fn address_add_and_delete_hint_the_interface() {
    private_netns();
    disable_ipv6_autoconf();
    veth("ethA", "ethB");
    runtime().block_on(async {
        let (_kernel, mut rx) = Kernel::open().await.expect("open kernel");
        let a = ifindex("ethA");
        must("ip addr add 10.0.0.2/24 dev ethA");
        wait_for(&mut rx, "a hint for ethA (add)", hint(a, false)).await;
        must("ip addr del 10.0.0.2/24 dev ethA");
        wait_for(&mut rx, "a hint for ethA (delete)", hint(a, false)).await;
        // IPv6 addresses are subscribed too (an extension of the protocol).
        must("sysctl -qw net.ipv6.conf.ethA.disable_ipv6=0");
        must("ip addr add 2001:db8::2/64 dev ethA nodad");
        wait_for(&mut rx, "a hint for ethA (IPv6 add)", hint(a, false)).await;
    });
}

#[test]
fn default_route_add_change_delete_hint_the_oif() {
    private_netns();
    disable_ipv6_autoconf();
    veth("ethA", "ethB");
    veth("ethC", "ethD");
    must("ip addr add 10.0.0.2/24 dev ethA");
    must("ip addr add 10.1.0.2/24 dev ethB");
    runtime().block_on(async {
        let (_kernel, mut rx) = Kernel::open().await.expect("open kernel");
        let (a, b) = (ifindex("ethA"), ifindex("ethB"));
        sync_on(&mut rx, "ethC", 1).await;

        must("ip route add default via 10.0.0.1 dev ethA metric 100");
        wait_for(&mut rx, "a route hint for ethA (route add)", route_hint(a)).await;
        must("ip route replace default via 10.0.0.254 dev ethA metric 100");
        wait_for(&mut rx, "a route hint for ethA (route change)", route_hint(a)).await;
        must("ip route del default via 10.0.0.254 dev ethA metric 100");
        wait_for(&mut rx, "a route hint for ethA (route delete)", route_hint(a)).await;

        // Routes netmon does not report must not wake it: another table, a
        // non-default destination.
        sync_on(&mut rx, "ethC", 2).await;
        must("ip route add default via 10.1.0.1 dev ethB table 100");
        must("ip route add 172.16.0.0/16 via 10.1.0.1 dev ethB");
        let before = sync_on(&mut rx, "ethC", 3).await;
        assert!(
            !before.iter().any(any_hint_for(b)),
            "no hint for routes outside the main table's defaults: {before:?}"
        );

        // Multipath: every nexthop's interface is hinted.
        must("ip route add default metric 300 nexthop via 10.0.0.9 dev ethA nexthop via 10.1.0.9 dev ethB");
        let mut missing = vec![a, b];
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(KernelEvent::Hint { ifindex, .. })) => missing.retain(|i| *i != ifindex),
                Ok(Some(_)) => {}
                Ok(None) => panic!("event stream closed"),
                Err(_) => panic!("no multipath hint for ifindex {missing:?}"),
            }
        }
    });
}

#[test]
fn link_down_up_delete_hints_with_urgency() {
    private_netns();
    disable_ipv6_autoconf();
    veth("ethA", "ethB");
    runtime().block_on(async {
        let (_kernel, mut rx) = Kernel::open().await.expect("open kernel");
        let (a, b) = (ifindex("ethA"), ifindex("ethB"));

        must("ip link set ethA down");
        wait_for(&mut rx, "an urgent hint for ethA (down)", hint(a, true)).await;
        // The peer loses its carrier: urgent too.
        wait_for(
            &mut rx,
            "an urgent hint for ethB (no carrier)",
            hint(b, true),
        )
        .await;

        must("ip link set ethA up");
        wait_for(&mut rx, "a non-urgent hint for ethA (up)", hint(a, false)).await;

        must("ip link set ethA mtu 1400");
        wait_for(&mut rx, "a hint for ethA (mtu)", hint(a, false)).await;

        must("ip link del ethA");
        wait_for(&mut rx, "an urgent hint for ethA (delete)", hint(a, true)).await;
    });
}

#[test]
fn new_link_is_hinted() {
    private_netns();
    disable_ipv6_autoconf();
    runtime().block_on(async {
        let (_kernel, mut rx) = Kernel::open().await.expect("open kernel");
        veth("ethA", "ethB");
        let a = ifindex("ethA");
        wait_for(&mut rx, "a hint for the new ethA", any_hint_for(a)).await;
        must("ip link set ethA name ethR");
        wait_for(&mut rx, "a hint for the renamed link", any_hint_for(a)).await;
    });
}

/// A deliberately tiny receive buffer, and a reader that stops reading because nobody
/// takes its events: the kernel drops notifications and reports ENOBUFS, which must
/// come out as `Overrun`. Afterwards the socket keeps working.
#[test]
fn overflowing_the_event_socket_yields_overrun() {
    private_netns();
    disable_ipv6_autoconf();
    veth("ethA", "ethB");
    let dir = e2e::TempDir::new("ko");
    let path = dir.join("batch");
    let batch: String = (0..500)
        .map(|i| format!("addr add 10.9.{}.{}/32 dev ethA\n", i / 200, i % 200 + 1))
        .collect();
    std::fs::write(&path, batch).expect("write batch file");

    runtime().block_on(async {
        let options = KernelOptions {
            event_rcvbuf: 1,
            channel_capacity: 1,
        };
        let (_kernel, mut rx) = Kernel::open_with(options).await.expect("open kernel");
        // The flood runs while nobody reads the channel.
        must(&format!("ip -batch {}", path.display()));
        let before = wait_for(&mut rx, "Overrun", |ev| *ev == KernelEvent::Overrun).await;
        assert!(
            before.len() < 500,
            "notifications were lost, so fewer than 500 hints came first: {}",
            before.len()
        );
        // The socket still delivers: ethB was not part of the flood, so its hint can
        // only come from this change. The kernel may still be overrunning the tiny
        // buffer with the flood's tail when the first change lands (a second
        // `Overrun`), so a few changes are tried, each waited for in turn.
        let b = ifindex("ethB");
        let mut delivered = false;
        'tries: for n in 1..=5u8 {
            must(&format!("ip addr add 10.250.{n}.1/32 dev ethB"));
            let deadline = tokio::time::Instant::now() + EVENT_WAIT;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(KernelEvent::Hint { ifindex, .. })) if ifindex == b => {
                        delivered = true;
                        break 'tries;
                    }
                    // Lost again in the flood's tail: try another change.
                    Ok(Some(KernelEvent::Overrun)) => continue 'tries,
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("event stream closed after the overrun"),
                    Err(_) => break 'tries,
                }
            }
        }
        assert!(
            delivered,
            "the event socket delivered nothing for ethB after the overrun"
        );
    });
}

/// A burst with the default buffer: every notification arrives (one hint per address
/// added, no overrun), because the reader drains the socket on every wake-up.
#[test]
fn a_burst_is_delivered_completely() {
    private_netns();
    disable_ipv6_autoconf();
    veth("ethA", "ethB");
    let dir = e2e::TempDir::new("kb");
    let path = dir.join("batch");
    let batch: String = (0..300)
        .map(|i| format!("addr add 10.8.{}.{}/32 dev ethA\n", i / 200, i % 200 + 1))
        .collect();
    std::fs::write(&path, batch).expect("write batch file");

    runtime().block_on(async {
        let (_kernel, mut rx) = Kernel::open().await.expect("open kernel");
        let a = ifindex("ethA");
        must(&format!("ip -batch {}", path.display()));
        let before = sync_on(&mut rx, "ethB", 1).await;
        assert!(
            !before.contains(&KernelEvent::Overrun),
            "no overrun with the default buffer"
        );
        let hints = before
            .iter()
            .filter(|e| {
                **e == KernelEvent::Hint {
                    ifindex: a,
                    urgent: false,
                    route: false,
                }
            })
            .count();
        assert_eq!(hints, 300, "one hint per address added: {before:?}");
    });
}
