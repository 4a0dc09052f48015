//! A hostile DHCP server across the veth: to every DISCOVER and REQUEST it first sends
//! replies that must be refused (wrong xid, another client's chaddr, a 0 s lease, a
//! router outside the subnet, no server id, the network address, an option running
//! past the end), each with an address of its own, then one good reply. The client
//! must bind the good address only: no refused address ever reaches an update.

mod dhcp_support;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use agent::dhcp::packet::{Message, MsgType, opt};
use dhcp_support::{mac, start};
use e2e::dhcp::DhcpLan;
use e2e::kernel::{private_netns, runtime};
use std::sync::{Arc, Mutex};

const GOOD: Ipv4Addr = Ipv4Addr::new(10, 77, 4, 60);

fn reply(
    to: &Message,
    kind: MsgType,
    yiaddr: Ipv4Addr,
    edit: impl FnOnce(&mut Message),
) -> Vec<u8> {
    let mut m = Message::request(
        kind,
        to.xid,
        ipc::MacAddr::from_slice(&to.chaddr[..6]).unwrap(),
    );
    m.op = 2;
    m.yiaddr = yiaddr;
    m.push(opt::SERVER_ID, [10, 77, 4, 1]);
    m.push(opt::SUBNET_MASK, [255, 255, 255, 0]);
    m.push(opt::ROUTER, [10, 77, 4, 1]);
    m.push(opt::LEASE_TIME, 120u32.to_be_bytes());
    edit(&mut m);
    m.encode()
}

fn without(m: &mut Message, code: u8) {
    m.options.retain(|(c, _)| *c != code);
}

/// The bad replies to `to`, then the good one.
fn answers(to: &Message, kind: MsgType) -> Vec<Vec<u8>> {
    let a = |n| Ipv4Addr::new(10, 77, 4, n);
    let mut v = vec![
        reply(to, kind, a(66), |m| m.xid ^= 1),
        reply(to, kind, a(67), |m| m.chaddr[5] ^= 1),
        reply(to, kind, a(68), |m| {
            without(m, opt::LEASE_TIME);
            m.push(opt::LEASE_TIME, 0u32.to_be_bytes());
        }),
        reply(to, kind, a(69), |m| {
            without(m, opt::ROUTER);
            m.push(opt::ROUTER, [10, 9, 9, 1]);
        }),
        reply(to, kind, a(70), |m| without(m, opt::SERVER_ID)),
        reply(to, kind, a(0), |_| {}),
    ];
    // An option whose length runs past the end of the message.
    let mut overflow = reply(to, kind, a(71), |_| {});
    let end = overflow.iter().rposition(|&b| b == opt::END).unwrap();
    overflow.truncate(end);
    overflow.extend_from_slice(&[opt::DNS, 250, 1, 2]);
    v.push(overflow);
    v.push(reply(to, kind, GOOD, |_| {}));
    v
}

/// Serves from a UDP socket made inside the LAN namespace until the test ends; keeps
/// the address each REQUEST asks for (option 50).
fn hostile_server(lan: &DhcpLan) -> Arc<Mutex<Vec<Ipv4Addr>>> {
    let requested = Arc::new(Mutex::new(Vec::new()));
    let seen = requested.clone();
    let ns = std::fs::File::open(format!("/run/netns/{}", lan.lan.name))
        .expect("open the LAN namespace");
    std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the LAN");
        let sock = UdpSocket::bind("0.0.0.0:67").expect("bind :67 in the LAN");
        sock.set_broadcast(true).unwrap();
        let mut buf = [0u8; 1500];
        loop {
            let Ok(n) = sock.recv(&mut buf) else { return };
            let Ok(m) = Message::decode(&buf[..n]) else {
                continue;
            };
            let kind = match m.msg_type() {
                Some(MsgType::Discover) => MsgType::Offer,
                Some(MsgType::Request) => {
                    if let Ok(Some(a)) = m.addr(opt::REQUESTED_IP) {
                        seen.lock().unwrap().push(a);
                    }
                    MsgType::Ack
                }
                _ => continue,
            };
            for a in answers(&m, kind) {
                let _ = sock.send_to(&a, "10.77.4.255:68");
            }
        }
    });
    requested
}

#[test]
fn only_the_good_reply_is_applied() {
    private_netns();
    let lan = DhcpLan::new(77, 4);
    let requested = hostile_server(&lan);
    runtime().block_on(async {
        let m = mac();
        let mut c = start(dhcp_support::request(&lan, m, None));
        let rec = c.bound(Duration::from_secs(30)).await;
        assert_eq!(rec.address, GOOD);
        assert_eq!(rec.router, Some(Ipv4Addr::new(10, 77, 4, 1)));
        assert_eq!(rec.lease_time, 120);
        // Nothing else arrives (no second Bound from a late bad reply).
        let more = tokio::time::timeout(Duration::from_secs(2), c.rx.recv()).await;
        assert!(more.is_err(), "unexpected update {more:?}");
        c.handle.stop().await;
    });
    let asked = requested.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![GOOD],
        "the client requested only the good offer's address"
    );
}
