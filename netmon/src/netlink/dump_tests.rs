//! Unit tests of `dump.rs`, kept apart so the module stays readable.

use super::*;
use rtnetlink::packet_core::{DoneMessage, ErrorMessage, NetlinkHeader};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

fn wire(header: NetlinkHeader, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
    buf
}

fn header(seq: u32, flags: u16) -> NetlinkHeader {
    let mut h = NetlinkHeader::default();
    h.sequence_number = seq;
    h.flags = flags;
    h
}

fn link(index: u32) -> NetlinkPayload<RouteNetlinkMessage> {
    let mut l = LinkMessage::default();
    l.header.index = index;
    l.attributes
        .push(LinkAttribute::IfName(format!("l{index}")));
    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
}

fn done(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
    let mut d = DoneMessage::default();
    d.code = code;
    NetlinkPayload::Done(d)
}

fn indexes(data: &[u8], seq: u32) -> (io::Result<Option<()>>, Vec<u32>, bool) {
    let mut seen = Vec::new();
    let mut interrupted = false;
    let res = parse_datagram(data, seq, &mut interrupted, &mut |m| {
        if let RouteNetlinkMessage::NewLink(l) = m {
            seen.push(l.header.index);
        }
    });
    (res, seen, interrupted)
}

#[test]
fn request_is_a_dump_with_our_sequence_number() {
    let w = encode_request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        42,
        NLM_F_REQUEST | NLM_F_DUMP,
    );
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&w).unwrap();
    assert_eq!(msg.header.sequence_number, 42);
    assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert!(matches!(
        msg.payload,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(_))
    ));
}

#[test]
fn messages_until_done_other_sequences_skipped() {
    let mut d = wire(header(7, 0), link(1));
    d.extend(wire(header(6, 0), link(99)));
    d.extend(wire(header(7, 0), link(2)));
    let (res, seen, intr) = indexes(&d, 7);
    assert_eq!(res.unwrap(), None);
    assert_eq!(seen, [1, 2]);
    assert!(!intr);
    d.extend(wire(header(7, 0), done(0)));
    let (res, seen, _) = indexes(&d, 7);
    assert_eq!(res.unwrap(), Some(()));
    assert_eq!(seen, [1, 2]);
}

#[test]
fn interrupted_flag_is_noticed() {
    let mut d = wire(header(3, 0), link(1));
    d.extend(wire(header(3, NLM_F_DUMP_INTR), done(0)));
    let (res, _, intr) = indexes(&d, 3);
    assert_eq!(res.unwrap(), Some(()));
    assert!(intr);
}

#[test]
fn errors_are_errors() {
    let mut e = ErrorMessage::default();
    e.code = std::num::NonZeroI32::new(-libc::EPERM);
    let d = wire(header(1, 0), NetlinkPayload::Error(e));
    let err = indexes(&d, 1).0.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("NLMSG_ERROR"), "{err}");

    let d = wire(header(1, 0), done(-libc::EINVAL));
    let err = indexes(&d, 1).0.unwrap_err();
    assert!(err.to_string().contains("ended the dump"), "{err}");

    assert!(indexes(&[1, 2, 3], 1).0.is_err());
}
