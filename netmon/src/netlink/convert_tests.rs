//! Unit tests of `convert.rs`, kept apart so the module stays readable.

use super::*;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::route::RouteNextHop;

/// The hints of `msg` as it arrives: serialized, then read from the wire.
fn hints_of(msg: RouteNetlinkMessage, out: &mut Vec<KernelEvent>) {
    let mut nl = NetlinkMessage::from(msg);
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    hints(NetlinkBuffer::new(&buf[..]), out).unwrap();
}

fn default_route(table_hdr: u8, table_attr: Option<u32>) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.table = table_hdr;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Oif(7));
    m.attributes.push(RouteAttribute::Priority(100));
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(
            "10.1.1.1".parse().unwrap(),
        )));
    if let Some(t) = table_attr {
        m.attributes.push(RouteAttribute::Table(t));
    }
    m
}

#[test]
fn only_main_table_v4_defaults() {
    let r = default_routes(&default_route(254, None));
    assert_eq!(
        r,
        [Route4 {
            oif: 7,
            gateway: "10.1.1.1".parse().unwrap(),
            metric: 100
        }]
    );
    assert_eq!(default_routes(&default_route(254, Some(254))).len(), 1);
    assert!(default_routes(&default_route(100, None)).is_empty());
    // Table 1000 is announced as RT_TABLE_COMPAT in the header.
    assert!(default_routes(&default_route(252, Some(1000))).is_empty());
    let mut not_default = default_route(254, None);
    not_default.header.destination_prefix_length = 24;
    assert!(default_routes(&not_default).is_empty());
    let mut v6 = default_route(254, None);
    v6.header.address_family = AddressFamily::Inet6;
    assert!(default_routes(&v6).is_empty());
}

#[test]
fn multipath_gives_each_nexthop() {
    let mut m = default_route(254, None);
    m.attributes
        .retain(|a| !matches!(a, RouteAttribute::Oif(_) | RouteAttribute::Gateway(_)));
    let hops = [(3, "10.0.0.1"), (4, "10.0.1.1")]
        .into_iter()
        .map(|(ifindex, gw)| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = ifindex;
            hop.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(
                    gw.parse().unwrap(),
                )));
            hop
        })
        .collect();
    m.attributes.push(RouteAttribute::MultiPath(hops));
    let r = default_routes(&m);
    assert_eq!(r.iter().map(|r| r.oif).collect::<Vec<_>>(), [3, 4]);
    assert!(r.iter().all(|r| r.metric == 100));
    let mut out = Vec::new();
    hints_of(RouteNetlinkMessage::DelRoute(m), &mut out);
    let ifs: Vec<u32> = out
        .iter()
        .map(|e| match e {
            KernelEvent::Hint { ifindex, .. } => *ifindex,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ifs, [3, 4]);
}

#[test]
fn only_default_route_messages_hint() {
    let mut out = Vec::new();
    hints_of(
        RouteNetlinkMessage::NewRoute(default_route(254, None)),
        &mut out,
    );
    // The main table named by RTA_TABLE only (the header says RT_TABLE_COMPAT).
    hints_of(
        RouteNetlinkMessage::NewRoute(default_route(252, Some(254))),
        &mut out,
    );
    assert_eq!(out.len(), 2, "{out:?}");
    // What an address storm brings: prefix routes, local-table routes.
    let mut prefix = default_route(254, None);
    prefix.header.destination_prefix_length = 24;
    hints_of(RouteNetlinkMessage::NewRoute(prefix), &mut out);
    hints_of(
        RouteNetlinkMessage::DelRoute(default_route(255, None)),
        &mut out,
    );
    hints_of(
        RouteNetlinkMessage::NewRoute(default_route(252, Some(1000))),
        &mut out,
    );
    assert_eq!(out.len(), 2, "{out:?}");
    let mut a = AddressMessage::default();
    a.header.family = AddressFamily::Inet6;
    a.header.index = 9;
    hints_of(RouteNetlinkMessage::DelAddress(a), &mut out);
    assert_eq!(
        out[2],
        KernelEvent::Hint {
            ifindex: 9,
            urgent: false,
            route: false
        }
    );
}

#[test]
fn link_down_is_urgent() {
    let mut l = LinkMessage::default();
    l.header.index = 5;
    l.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
    l.attributes.push(LinkAttribute::OperState(State::Up));
    let mut out = Vec::new();
    hints_of(RouteNetlinkMessage::NewLink(l.clone()), &mut out);
    l.header.flags = LinkFlags::Up;
    hints_of(RouteNetlinkMessage::NewLink(l.clone()), &mut out);
    l.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
    l.attributes = vec![LinkAttribute::OperState(State::LowerLayerDown)];
    hints_of(RouteNetlinkMessage::NewLink(l.clone()), &mut out);
    hints_of(RouteNetlinkMessage::DelLink(l), &mut out);
    let urgent: Vec<bool> = out
        .iter()
        .map(|e| match e {
            KernelEvent::Hint {
                ifindex: 5, urgent, ..
            } => *urgent,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(urgent, [false, true, true, true]);
}

#[test]
fn mac_format() {
    assert_eq!(
        format_mac(&[0x02, 0xAB, 0, 1, 0xff, 0x10]).as_deref(),
        Some("02:ab:00:01:ff:10")
    );
    assert_eq!(format_mac(&[]), None);
}
