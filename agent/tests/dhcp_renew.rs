//! Renewal against dnsmasq with T1 = 6 s and T2 = 12 s (its minimum lease is 2 min):
//! a unicast RENEW at T1 keeps the address, with no interface holding the MAC (a
//! stopped runtime) and with a macvlan child holding it in another namespace (a
//! running one, as the engine makes it).

mod dhcp_support;

use std::time::{Duration, Instant};

use agent::dhcp::{DhcpUpdate, LeaseRecord};
use dhcp_support::{mac, request, start};
use e2e::dhcp::DhcpLan;
use e2e::kernel::{private_netns, runtime};
use e2e::{Netns, must};

fn short_lan() -> DhcpLan {
    private_netns();
    let mut lan = DhcpLan::new(77, 3);
    lan.extra = vec![
        "--dhcp-option=option:T1,6".into(),
        "--dhcp-option=option:T2,12".into(),
    ];
    lan.start();
    lan
}

/// Binds, then expects `Renewed` with the same address before T2 (a REBIND would
/// only come at 12 s), and a second DHCPACK for the MAC in dnsmasq's log.
async fn renews_at_t1(lan: &DhcpLan, m: ipc::MacAddr, on_bound: impl FnOnce(&LeaseRecord)) {
    let mut c = start(request(lan, m, None));
    let rec = c.bound(Duration::from_secs(30)).await;
    assert_eq!((rec.t1, rec.t2), (6, 12));
    on_bound(&rec);
    let bound_at = Instant::now();
    match c.next(Duration::from_secs(30)).await {
        DhcpUpdate::Renewed(r) => assert_eq!(r.address, rec.address),
        other => panic!("expected Renewed, got {other:?}"),
    }
    let after = bound_at.elapsed();
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_millis(11_500),
        "renewed {after:?} after binding: RENEW at T1 (6 s) expected, not REBIND at T2 (12 s)"
    );
    assert_eq!(
        lan.log_lines("DHCPACK", &m.to_string()).len(),
        2,
        "{}",
        lan.log()
    );
    assert_eq!(
        lan.lease_of(&m.to_string()).map(|l| l.0),
        Some(rec.address.to_string())
    );
    c.handle.stop().await;
}

#[test]
fn renews_by_unicast_at_t1_with_no_interface_holding_the_mac() {
    let lan = short_lan();
    // The server forgets the MAC it learnt when it offered: its reply to the RENEW
    // then needs an ARP answer for the leased address, which only the client gives.
    let forget = |_: &LeaseRecord| {
        lan.lan.must_ip(&format!("neigh flush dev {}", lan.peer));
    };
    runtime().block_on(renews_at_t1(&lan, mac(), forget));
}

#[test]
fn renews_at_t1_with_a_macvlan_child_holding_the_mac_in_another_namespace() {
    let lan = short_lan();
    let ctr = Netns::new();
    let m = mac();
    let child = e2e::unique("mv");
    must(&format!(
        "ip link add link {} name {child} address {m} type macvlan mode bridge",
        lan.parent
    ));
    must(&format!("ip link set {child} netns {}", ctr.name));
    ctr.must_ip(&format!("link set {child} up"));
    // The engine's part: the container's link holds the leased address, statically.
    let attach = |r: &LeaseRecord| {
        ctr.must_ip(&format!("addr add {} dev {child}", r.cidr()));
    };
    runtime().block_on(renews_at_t1(&lan, m, attach));
}

/// The server now reserves another address for the MAC: the RENEW at T1 is NAKed,
/// the client reports Lost and binds the new address (Bound, not Renewed).
#[test]
fn a_nak_to_the_renewal_loses_the_lease_then_binds_the_new_address() {
    let mut lan = short_lan();
    runtime().block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let rec = c.bound(Duration::from_secs(30)).await;
        let other = if rec.address.octets()[3] == 140 {
            141
        } else {
            140
        };
        let reserved = format!("{}.{other}", lan.prefix);
        lan.stop();
        lan.extra.push(format!("--dhcp-host={m},{reserved}"));
        lan.extra.push("--dhcp-authoritative".into());
        lan.start();
        match c.next(Duration::from_secs(30)).await {
            DhcpUpdate::Lost { reason } => assert!(reason.contains("NAK"), "{reason}"),
            other => panic!("expected Lost, got {other:?}"),
        }
        let new = c.bound(Duration::from_secs(30)).await;
        assert_eq!(new.address.to_string(), reserved);
        assert!(
            !lan.log_lines("DHCPNAK", &m.to_string()).is_empty(),
            "{}",
            lan.log()
        );
        c.handle.stop().await;
    });
}

/// The parent is down across T1 (ENETDOWN on send): the client keeps trying and
/// renews the same address once the link is back, before T2's deadline passes.
#[test]
fn a_parent_down_across_t1_still_renews_once_it_is_back() {
    let lan = short_lan();
    runtime().block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let rec = c.bound(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        must(&format!("ip link set {} down", lan.parent));
        tokio::time::sleep(Duration::from_secs(3)).await;
        must(&format!("ip link set {} up", lan.parent));
        match c.next(Duration::from_secs(30)).await {
            DhcpUpdate::Renewed(r) => assert_eq!(r.address, rec.address),
            other => panic!("expected Renewed, got {other:?}"),
        }
        c.handle.stop().await;
    });
}
