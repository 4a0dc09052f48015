//! Crafted replies fed to the decoder and the checks; the store's file handling.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use ipc::MacAddr;

use super::lease::{Refused, check_reply, lease_of};
use super::packet::{self, DecodeError, Message, MsgType, Route, opt};
use super::store::{LEASE_FILE, LeaseStore};

const XID: u32 = 0x1234_5678;

fn mac() -> MacAddr {
    "02:aa:bb:cc:dd:01".parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A good ACK for 10.77.1.50/24 from 10.77.1.1, then `edit` applied.
fn ack(edit: impl FnOnce(&mut Message)) -> Message {
    let mut m = Message::request(MsgType::Ack, XID, mac());
    m.op = 2;
    m.yiaddr = ip("10.77.1.50");
    m.push(opt::SERVER_ID, ip("10.77.1.1").octets());
    m.push(opt::SUBNET_MASK, [255, 255, 255, 0]);
    m.push(opt::ROUTER, ip("10.77.1.1").octets());
    m.push(opt::DNS, [10, 77, 1, 1, 9, 9, 9, 9]);
    m.push(opt::LEASE_TIME, 3600u32.to_be_bytes());
    edit(&mut m);
    // Through the wire format, as a reply would come.
    Message::decode(&m.encode()).expect("decodes")
}

fn set(m: &mut Message, code: u8, v: &[u8]) {
    m.options.retain(|(c, _)| *c != code);
    m.push(code, v);
}

fn refusal(m: &Message) -> Refused {
    check_reply(m, XID, mac())
        .and_then(|_| lease_of(m, mac(), "eth0", SystemTime::now()))
        .expect_err("refused")
}

#[test]
fn a_good_ack_gives_the_lease_with_udhcpc_client_id_and_default_timers() {
    let m = ack(|_| {});
    assert_eq!(check_reply(&m, XID, mac()), Ok(MsgType::Ack));
    let r = lease_of(&m, mac(), "eth0", SystemTime::now()).unwrap();
    assert_eq!(
        (r.address, r.prefix, r.router),
        (ip("10.77.1.50"), 24, Some(ip("10.77.1.1")))
    );
    assert_eq!(r.dns, vec![ip("10.77.1.1"), ip("9.9.9.9")]);
    assert_eq!((r.lease_time, r.t1, r.t2), (3600, 1800, 3150));
    assert_eq!(r.client_id, "0102aabbccdd01");
    assert_eq!(r.expires_at() - Duration::from_secs(3600), r.obtained_at);
}

#[test]
fn server_timers_are_used_when_sane_else_rfc_defaults() {
    let r = |t1: u32, t2: u32| {
        let m = ack(|m| {
            m.push(opt::T1, t1.to_be_bytes());
            m.push(opt::T2, t2.to_be_bytes());
        });
        let l = lease_of(&m, mac(), "eth0", SystemTime::now()).unwrap();
        (l.t1, l.t2)
    };
    assert_eq!(r(6, 12), (6, 12));
    assert_eq!(r(0, 0), (1800, 3150));
    assert_eq!(r(4000, 5000), (1800, 3150), "timers past the lease");
    assert_eq!(r(3000, 2000), (1800, 2000), "T1 after T2");
}

#[test]
fn wrong_xid_and_other_chaddr_are_refused() {
    let m = ack(|m| m.xid = 7);
    assert!(matches!(refusal(&m), Refused::Xid { got: 7, .. }));
    let m = ack(|m| m.chaddr[5] ^= 1);
    assert!(matches!(refusal(&m), Refused::OtherClient(_)));
    let m = ack(|m| m.op = 1);
    assert_eq!(refusal(&m), Refused::NotReply);
}

#[test]
fn missing_server_id_mask_or_lease_time_is_refused() {
    let m = ack(|m| m.options.retain(|(c, _)| *c != opt::SERVER_ID));
    assert_eq!(refusal(&m), Refused::NoServerId);
    let m = ack(|m| m.options.retain(|(c, _)| *c != opt::SUBNET_MASK));
    assert_eq!(refusal(&m), Refused::NoMask);
    let m = ack(|m| m.options.retain(|(c, _)| *c != opt::LEASE_TIME));
    assert_eq!(refusal(&m), Refused::NoLeaseTime);
    let m = ack(|m| set(m, opt::SUBNET_MASK, &[255, 0, 255, 0]));
    assert_eq!(refusal(&m), Refused::BadMask(ip("255.0.255.0")));
}

#[test]
fn a_lease_of_zero_seconds_is_refused() {
    let m = ack(|m| set(m, opt::LEASE_TIME, &0u32.to_be_bytes()));
    assert_eq!(refusal(&m), Refused::ZeroLease);
}

#[test]
fn a_router_outside_the_subnet_is_refused() {
    let m = ack(|m| set(m, opt::ROUTER, &ip("10.77.2.1").octets()));
    assert!(matches!(refusal(&m), Refused::RouterOutside { .. }));
    let m = ack(|m| set(m, opt::ROUTER, &ip("10.77.1.50").octets()));
    assert!(
        matches!(refusal(&m), Refused::RouterOutside { .. }),
        "router = our own address"
    );
}

#[test]
fn network_broadcast_and_unusable_addresses_are_refused() {
    for (a, want) in [
        ("10.77.1.0", true),
        ("10.77.1.255", true),
        ("0.0.0.0", false),
        ("224.0.0.9", false),
    ] {
        let m = ack(|m| m.yiaddr = ip(a));
        match refusal(&m) {
            Refused::NetworkOrBroadcast { .. } => assert!(want, "{a}"),
            Refused::BadAddress(_) => assert!(!want, "{a}"),
            other => panic!("{a}: {other:?}"),
        }
    }
}

#[test]
fn options_of_the_wrong_length_are_malformed() {
    let m = ack(|m| set(m, opt::SERVER_ID, &[10, 77, 1, 1, 9]));
    assert_eq!(
        refusal(&m),
        Refused::Malformed(DecodeError::BadLength(opt::SERVER_ID, 5))
    );
    let m = ack(|m| set(m, opt::DNS, &[1, 2, 3]));
    assert!(matches!(
        refusal(&m),
        Refused::Malformed(DecodeError::BadLength(opt::DNS, 3))
    ));
}

#[test]
fn option_overflow_missing_end_and_short_messages_fail_to_decode() {
    let good = ack(|_| {}).encode();
    let opts_at = 240;
    // An option claiming more bytes than the message holds.
    let mut b = good[..opts_at].to_vec();
    b.extend_from_slice(&[opt::MSG_TYPE, 1, 5, opt::ROUTER, 200, 10, 0]);
    assert!(matches!(
        Message::decode(&b),
        Err(DecodeError::Overflow {
            code: opt::ROUTER,
            ..
        })
    ));
    // A length byte cut off at the end.
    let mut b = good[..opts_at].to_vec();
    b.extend_from_slice(&[opt::MSG_TYPE, 1, 5, opt::ROUTER]);
    assert!(matches!(
        Message::decode(&b),
        Err(DecodeError::Overflow { .. })
    ));
    let mut b = good[..opts_at].to_vec();
    b.extend_from_slice(&[opt::MSG_TYPE, 1, 5]);
    assert_eq!(Message::decode(&b), Err(DecodeError::NoEnd("options")));
    assert_eq!(Message::decode(&good[..100]), Err(DecodeError::Short(100)));
    let mut b = good.clone();
    b[236] = 0;
    assert_eq!(Message::decode(&b), Err(DecodeError::NoCookie));
    let mut b = good[..opts_at].to_vec();
    b.extend_from_slice(&[opt::END]);
    assert_eq!(Message::decode(&b), Err(DecodeError::NoType));
}

#[test]
fn overloaded_file_and_sname_fields_are_read_and_checked() {
    let mut b = ack(|m| m.options.retain(|(c, _)| *c != opt::ROUTER)).encode();
    let end = b.iter().rposition(|&x| x == opt::END).unwrap();
    // Overload = 3: the router goes in `file`, a padding-only `sname` ends properly.
    b.splice(end..end, [opt::OVERLOAD, 1, 3]);
    b[108..115].copy_from_slice(&[opt::ROUTER, 4, 10, 77, 1, 1, opt::END]);
    b[44] = opt::END;
    let m = Message::decode(&b).unwrap();
    assert_eq!(m.addr(opt::ROUTER), Ok(Some(ip("10.77.1.1"))));
    // An overload whose field overflows is malformed.
    b[108..111].copy_from_slice(&[opt::ROUTER, 200, 10]);
    assert!(matches!(
        Message::decode(&b),
        Err(DecodeError::Overflow { field: "file", .. })
    ));
}

#[test]
fn random_and_truncated_input_never_panics() {
    let good = packet::frame(&route(), &ack(|_| {}).encode());
    let mut rng = fastrand::Rng::with_seed(9);
    for i in 0..20_000 {
        let mut f = good.clone();
        if i % 2 == 0 {
            f.truncate(rng.usize(..=f.len()));
        }
        for _ in 0..rng.usize(1..8) {
            if !f.is_empty() {
                let at = rng.usize(..f.len());
                f[at] = rng.u8(..);
            }
        }
        if let Ok((_, payload)) = packet::unframe(&f) {
            if let Ok(m) = Message::decode(payload) {
                let _ = check_reply(&m, XID, mac())
                    .and_then(|_| lease_of(&m, mac(), "e", SystemTime::now()));
            }
        }
        let _ = packet::arp_reply(&f, ip("10.77.1.50"), mac());
    }
}

fn route() -> Route {
    Route {
        src_mac: mac(),
        dst_mac: [0xff; 6],
        src_ip: ip("10.77.1.50"),
        dst_ip: ip("10.77.1.1"),
    }
}

/// A frame as a server sends it to the client port (our `frame` sends to 67).
fn to_client(payload: &[u8]) -> Vec<u8> {
    let mut f = packet::frame(&route(), payload);
    f[34..36].copy_from_slice(&packet::SERVER_PORT.to_be_bytes());
    f[36..38].copy_from_slice(&packet::CLIENT_PORT.to_be_bytes());
    f
}

#[test]
fn frames_round_trip_and_broken_headers_are_rejected() {
    let payload = ack(|_| {}).encode();
    let f = to_client(&payload);
    let (from, p) = packet::unframe(&f).unwrap();
    assert_eq!(from, mac().octets());
    assert_eq!(p, &payload[..]);
    // Our own requests go to the server port: not for us.
    assert_eq!(
        packet::unframe(&packet::frame(&route(), &payload)),
        Err(DecodeError::NotDhcpFrame)
    );
    let mut bad = f.clone();
    bad[14 + 8] ^= 1; // TTL: the header checksum no longer holds
    assert_eq!(
        packet::unframe(&bad),
        Err(DecodeError::BadIp("header checksum"))
    );
    let mut bad = f.clone();
    bad[14 + 2..14 + 4].copy_from_slice(&9000u16.to_be_bytes());
    assert_eq!(
        packet::unframe(&bad),
        Err(DecodeError::BadIp("total length"))
    );
    assert_eq!(packet::unframe(&f[..30]), Err(DecodeError::NotDhcpFrame));
}

#[test]
fn arp_is_answered_only_for_the_leased_address() {
    let mut req = vec![0xff; 6];
    req.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    req.extend_from_slice(&[2, 0, 0, 0, 0, 9, 10, 77, 1, 1]);
    req.extend_from_slice(&[0; 6]);
    req.extend_from_slice(&[10, 77, 1, 50]);
    let r = packet::arp_reply(&req, ip("10.77.1.50"), mac()).expect("answered");
    assert_eq!(&r[..6], &[2, 0, 0, 0, 0, 9]);
    assert_eq!(&r[20..22], &[0, 2]);
    assert_eq!(&r[22..28], &mac().octets());
    assert_eq!(&r[28..32], &[10, 77, 1, 50]);
    assert_eq!(packet::arp_reply(&req, ip("10.77.1.51"), mac()), None);
}

#[test]
fn requests_encode_client_id_and_split_long_options() {
    let mut m = Message::request(MsgType::Discover, XID, mac());
    m.push(opt::CLIENT_ID, super::client_id(mac()));
    m.push(200, vec![7u8; 300]);
    let b = m.encode();
    assert!(b.len() >= 300);
    let d = Message::decode(&b).unwrap();
    assert_eq!(d.msg_type(), Some(MsgType::Discover));
    assert_eq!(
        d.option(opt::CLIENT_ID),
        Some(vec![1, 2, 0xaa, 0xbb, 0xcc, 0xdd, 1])
    );
    assert_eq!(d.option(200).map(|v| v.len()), Some(300));
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dhcp-store-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_store_round_trips_records_as_rfc3339_json() {
    let dir = temp_dir();
    let rec = lease_of(&ack(|_| {}), mac(), "eth0", SystemTime::now()).unwrap();
    let mut s = LeaseStore::open(&dir);
    s.put("rt/eth1", rec.clone()).unwrap();
    let reopened = LeaseStore::open(&dir);
    let got = reopened.get("rt/eth1").unwrap();
    // Kept to the millisecond.
    let drift = rec
        .obtained_at
        .duration_since(got.obtained_at)
        .unwrap_or_default();
    assert!(drift < Duration::from_millis(1));
    assert_eq!(got.address, rec.address);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(LEASE_FILE)).unwrap()).unwrap();
    let at = json["rt/eth1"]["obtained_at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('T'), "{at}");
    assert_eq!(json["rt/eth1"]["mac"], "02:aa:bb:cc:dd:01");
    let mut s = reopened;
    assert!(s.remove("rt/eth1").unwrap().is_some());
    assert!(LeaseStore::open(&dir).all().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_store_is_moved_aside_never_overwritten() {
    let dir = temp_dir();
    std::fs::write(dir.join(LEASE_FILE), b"{ not json").unwrap();
    let mut s = LeaseStore::open(&dir);
    assert!(s.all().is_empty());
    let aside = s.moved_aside.clone().expect("moved aside");
    assert_eq!(std::fs::read(&aside).unwrap(), b"{ not json");
    let rec = lease_of(&ack(|_| {}), mac(), "eth0", SystemTime::now()).unwrap();
    s.put("rt/eth1", rec.clone()).unwrap();
    // Broken again behind our back: the next write moves that copy aside too.
    std::fs::write(dir.join(LEASE_FILE), b"garbage 2").unwrap();
    s.put("rt/eth2", rec).unwrap();
    let kept: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(kept.contains(&b"garbage 2".to_vec()));
    assert_eq!(LeaseStore::open(&dir).all().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
