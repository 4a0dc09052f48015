//! The DHCP client against Debian's dnsmasq across a veth (see e2e::dhcp): leases,
//! INIT-REBOOT, NAK, release, no server, two clients, a LAN change.

mod dhcp_support;

use std::time::{Duration, SystemTime};

use agent::dhcp::DhcpUpdate;
use dhcp_support::{dnsmasq_client_id, mac, request, start};
use e2e::dhcp::DhcpLan;
use e2e::kernel::{private_netns, runtime};

const LIMIT: Duration = Duration::from_secs(30);

fn lan() -> (DhcpLan, tokio::runtime::Runtime) {
    private_netns();
    let mut lan = DhcpLan::new(77, 1);
    lan.start();
    (lan, runtime())
}

#[test]
fn lease_for_the_mac_matches_dnsmasqs_lease_file() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let rec = c.bound(LIMIT).await;
        assert_eq!(rec.mac, m);
        assert_eq!(rec.prefix, 24);
        assert_eq!(rec.router.map(|r| r.to_string()), Some(lan.gateway()));
        assert_eq!(rec.server_id.to_string(), lan.gateway());
        assert_eq!(
            rec.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            vec![lan.gateway()]
        );
        assert_eq!(rec.lease_time, 120);
        assert_eq!(
            rec.client_id,
            format!("01{}", m.to_string().replace(':', ""))
        );
        let (ip, id) = lan
            .lease_of(&m.to_string())
            .expect("dnsmasq holds a lease for the MAC");
        assert_eq!(ip, rec.address.to_string());
        assert_eq!(id, dnsmasq_client_id(m));
        c.handle.stop().await;
    });
}

#[test]
fn init_reboot_with_the_cached_record_keeps_the_address_without_discover() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let first = c.bound(LIMIT).await;
        c.handle.stop().await;
        let discovers = lan.log_lines("DHCPDISCOVER", &m.to_string()).len();
        assert_eq!(discovers, 1, "{}", lan.log());
        let mut again = start(request(&lan, m, Some(first.clone())));
        let second = again.bound(LIMIT).await;
        assert_eq!(second.address, first.address);
        assert_eq!(
            lan.log_lines("DHCPDISCOVER", &m.to_string()).len(),
            1,
            "{}",
            lan.log()
        );
        assert!(second.obtained_at > first.obtained_at);
        again.handle.stop().await;
    });
}

#[test]
fn a_cached_address_from_another_lan_gets_nak_then_a_fresh_lease() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let mut stale = c.bound(LIMIT).await;
        c.handle.stop().await;
        stale.address = "10.99.3.77".parse().unwrap();
        let mut again = start(request(&lan, m, Some(stale)));
        let fresh = again.bound(LIMIT).await;
        assert!(
            fresh.address.to_string().starts_with("10.77.1."),
            "{fresh:?}"
        );
        assert!(
            !lan.log_lines("DHCPNAK", &m.to_string()).is_empty(),
            "{}",
            lan.log()
        );
        again.handle.stop().await;
    });
}

#[test]
fn release_shows_dhcprelease_and_the_lease_entry_goes() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let rec = c.bound(LIMIT).await;
        assert!(lan.lease_of(&m.to_string()).is_some());
        c.handle.release().await;
        e2e::wait_for(
            Duration::from_secs(10),
            "DHCPRELEASE in dnsmasq's log",
            || (!lan.log_lines("DHCPRELEASE", &m.to_string()).is_empty()).then_some(()),
        );
        e2e::wait_for(Duration::from_secs(10), "the lease entry to go", || {
            lan.lease_of(&m.to_string()).is_none().then_some(())
        });
        assert!(
            lan.log_lines("DHCPRELEASE", &rec.address.to_string()).len() == 1,
            "{}",
            lan.log()
        );
    });
}

#[test]
fn no_server_is_pending_with_backoff_then_bound_once_dnsmasq_starts() {
    private_netns();
    let mut lan = DhcpLan::new(77, 2);
    let rt = runtime();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let mut delays = Vec::new();
        for _ in 0..3 {
            match c.next(LIMIT).await {
                DhcpUpdate::Pending { reason, next_try } => {
                    assert_eq!(reason, "no DHCP offer");
                    let d = next_try
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    delays.push(d);
                }
                other => panic!("expected Pending, got {other:?}"),
            }
        }
        // opts(): 1 s doubling, capped at 4 s, +-30 % jitter.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
        assert!(delays[2] > delays[0], "backoff grows: {delays:?}");
        lan.start();
        let rec = c.bound(LIMIT).await;
        assert_eq!(
            lan.lease_of(&m.to_string()).map(|l| l.0),
            Some(rec.address.to_string())
        );
        c.handle.stop().await;
    });
}

#[test]
fn two_macs_on_one_parent_get_distinct_leases() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let (m1, m2) = (mac(), mac());
        let mut a = start(request(&lan, m1, None));
        let mut b = start(request(&lan, m2, None));
        let (ra, rb) = (a.bound(LIMIT).await, b.bound(LIMIT).await);
        assert_ne!(ra.address, rb.address);
        assert_eq!(
            lan.lease_of(&m1.to_string()).map(|l| l.0),
            Some(ra.address.to_string())
        );
        assert_eq!(
            lan.lease_of(&m2.to_string()).map(|l| l.0),
            Some(rb.address.to_string())
        );
        a.handle.stop().await;
        b.handle.stop().await;
    });
}

#[test]
fn a_lan_change_releases_the_old_lease_and_binds_on_the_new_subnet() {
    let (mut lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let old = c.bound(LIMIT).await;
        // What the agent does on a netmon subnet/gateway change: release, then a new
        // client without the cache. The release reaches the old server first.
        c.handle.release().await;
        e2e::wait_for(Duration::from_secs(10), "DHCPRELEASE", || {
            (!lan.log_lines("DHCPRELEASE", &m.to_string()).is_empty()).then_some(())
        });
        lan.renumber(88, 5);
        let mut c = start(request(&lan, m, None));
        let new = c.bound(LIMIT).await;
        assert!(
            new.address.to_string().starts_with("10.88.5."),
            "{new:?} after {old:?}"
        );
        assert_eq!(new.router.map(|r| r.to_string()), Some(lan.gateway()));
        c.handle.stop().await;
    });
}

#[test]
fn a_missing_parent_is_pending_with_the_reason_and_binds_once_it_appears() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut req = request(&lan, m, None);
        req.parent = e2e::unique("gone");
        let late = req.parent.clone();
        let mut c = start(req);
        match c.next(LIMIT).await {
            DhcpUpdate::Pending { reason, .. } => assert!(
                reason.contains(&late) && reason.contains("no link"),
                "{reason}"
            ),
            other => panic!("expected Pending, got {other:?}"),
        }
        // The parent appears: the LAN's link is renamed to the awaited name.
        let p = &lan.parent;
        e2e::must(&format!(
            "ip link set {p} down && ip link set {p} name {late} && ip link set {late} up"
        ));
        let rec = c.bound(LIMIT).await;
        assert_eq!(
            lan.lease_of(&m.to_string()).map(|l| l.0),
            Some(rec.address.to_string())
        );
        c.handle.stop().await;
    });
}

#[test]
fn with_the_server_down_init_reboot_is_retried_until_it_answers() {
    let (mut lan, rt) = lan();
    rt.block_on(async {
        let m = mac();
        let mut c = start(request(&lan, m, None));
        let first = c.bound(LIMIT).await;
        c.handle.stop().await;
        lan.stop();
        let mut again = start(request(&lan, m, Some(first.clone())));
        for _ in 0..2 {
            match again.next(LIMIT).await {
                DhcpUpdate::Pending { reason, .. } => {
                    assert_eq!(reason, "no DHCP answer to INIT-REBOOT")
                }
                other => panic!("expected Pending, got {other:?}"),
            }
        }
        lan.start();
        let second = again.bound(LIMIT).await;
        assert_eq!(second.address, first.address);
        assert_eq!(
            lan.log_lines("DHCPDISCOVER", &m.to_string()).len(),
            1,
            "{}",
            lan.log()
        );
        again.handle.stop().await;
    });
}

#[test]
fn a_client_socket_receives_no_dhcp_reply_for_another_mac() {
    let (lan, rt) = lan();
    rt.block_on(async {
        let other =
            agent::dhcp::socket::PacketSocket::open(&lan.parent, mac()).expect("packet socket");
        let mut c = start(request(&lan, mac(), None));
        c.bound(LIMIT).await;
        // The kernel filter dropped the OFFER and ACK for the client's MAC (ARP may pass).
        let mut buf = vec![0u8; 2048];
        let mut dhcp = 0;
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), other.recv(&mut buf)).await
        {
            dhcp += usize::from(agent::dhcp::packet::unframe(&buf[..n]).is_ok());
        }
        assert_eq!(dhcp, 0, "DHCP frames for another MAC reached the socket");
        c.handle.stop().await;
    });
}
