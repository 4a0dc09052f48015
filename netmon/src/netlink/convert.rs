//! netlink-packet-route messages -> our model and event hints. The only place that
//! reads the library's message types.

use std::net::IpAddr;

use rtnetlink::packet_core::{DecodeError, NetlinkBuffer, NlasIterator, Parseable};
use rtnetlink::packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressHeader, AddressHeaderFlags, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage, State},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};

use super::KernelEvent;
use crate::model::{Addr4, Addr6, Link, Route4};

fn operstate_word(state: &State) -> String {
    match state {
        State::Up => "UP".into(),
        State::Down => "DOWN".into(),
        State::Unknown => "UNKNOWN".into(),
        State::LowerLayerDown => "LOWERLAYERDOWN".into(),
        State::NotPresent => "NOTPRESENT".into(),
        State::Testing => "TESTING".into(),
        State::Dormant => "DORMANT".into(),
        // iproute2 prints unknown values as their number too.
        State::Other(n) => n.to_string(),
        _ => "UNKNOWN".into(),
    }
}

/// Lowercase, colon-separated, as `ip link` prints an Ethernet address.
fn format_mac(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(parts.join(":"))
}

pub(crate) fn link(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    // IFLA_OPERSTATE is always sent by current kernels; UNKNOWN is what an absent one means.
    let mut operstate = "UNKNOWN".to_string();
    let mut kind = None;
    let mut mac = None;
    let mut mtu = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::OperState(s) => operstate = operstate_word(s),
            LinkAttribute::Address(a) => mac = format_mac(a),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        index: msg.header.index,
        name: name?,
        operstate,
        flags_up: msg.header.flags.contains(LinkFlags::Up),
        flags_lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        kind,
        mac,
        mtu,
    })
}

/// IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
/// point-to-point links and equals IFA_LOCAL elsewhere.
fn local_address(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

fn is_secondary(msg: &AddressMessage) -> bool {
    // IFA_FLAGS (32 bits) supersedes the 8-bit header flags when present.
    for attr in &msg.attributes {
        if let AddressAttribute::Flags(f) = attr {
            return f.contains(rtnetlink::packet_route::address::AddressFlags::Secondary);
        }
    }
    msg.header.flags.contains(AddressHeaderFlags::Secondary)
}

fn scope_word(scope: AddressScope) -> String {
    match scope {
        AddressScope::Universe => "global".into(),
        AddressScope::Site => "site".into(),
        AddressScope::Link => "link".into(),
        AddressScope::Host => "host".into(),
        AddressScope::Nowhere => "nowhere".into(),
        AddressScope::Other(n) => n.to_string(),
        _ => u8::from(scope).to_string(),
    }
}

pub(crate) enum Addr {
    V4(Addr4),
    V6(Addr6),
}

pub(crate) fn address(msg: &AddressMessage) -> Option<Addr> {
    let index = msg.header.index;
    let prefixlen = msg.header.prefix_len;
    match local_address(msg)? {
        IpAddr::V4(address) => Some(Addr::V4(Addr4 {
            index,
            address,
            prefixlen,
            secondary: is_secondary(msg),
        })),
        IpAddr::V6(address) => Some(Addr::V6(Addr6 {
            index,
            address,
            prefixlen,
            scope: scope_word(msg.header.scope),
        })),
    }
}

/// The table a route is in: RTA_TABLE when present (tables above 255 only appear
/// there), else the header's 8-bit field.
fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn is_main_v4_default(msg: &RouteMessage) -> bool {
    msg.header.address_family == AddressFamily::Inet
        && msg.header.destination_prefix_length == 0
        && msg.header.kind == RouteType::Unicast
        && route_table(msg) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn gateway_v4(attrs: &[RouteAttribute]) -> Option<std::net::Ipv4Addr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
        _ => None,
    })
}

/// The gateways of a main-table IPv4 default route: one entry, or one per nexthop
/// for a multipath route. Empty for every other route.
pub(crate) fn default_routes(msg: &RouteMessage) -> Vec<Route4> {
    if !is_main_v4_default(msg) {
        return Vec::new();
    }
    let mut metric = 0;
    let mut oif = None;
    let mut nexthops = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::MultiPath(hops) => nexthops = Some(hops),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let (Some(oif), Some(gateway)) = (oif, gateway_v4(&msg.attributes)) {
        out.push(Route4 {
            oif,
            gateway,
            metric,
        });
    }
    for hop in nexthops.into_iter().flatten() {
        if let Some(gateway) = gateway_v4(&hop.attributes) {
            out.push(Route4 {
                oif: hop.interface_index,
                gateway,
                metric,
            });
        }
    }
    out
}

/// IFLA_OPERSTATE (linux/if_link.h).
const IFLA_OPERSTATE: u16 = 16;
/// Fixed header sizes of struct ifinfomsg, struct rtmsg.
const LINK_HEADER_LEN: usize = 16;
const ROUTE_HEADER_LEN: usize = 12;
/// RTA_TABLE (linux/rtnetlink.h).
const RTA_TABLE: u16 = 15;

/// Whether a link message itself says the link is not usable: no IFF_UP, no
/// LOWER_UP, or an operstate that is not up. Only the header and the operstate
/// attribute are read.
fn link_went_down(flags: LinkFlags, attributes: &[u8]) -> bool {
    if !flags.contains(LinkFlags::Up) || !flags.contains(LinkFlags::LowerUp) {
        return true;
    }
    let operstate = NlasIterator::new(attributes)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == IFLA_OPERSTATE)
        .and_then(|nla| nla.value().first().copied())
        .map(State::from);
    matches!(
        operstate,
        Some(
            State::Down
                | State::LowerLayerDown
                | State::NotPresent
                | State::Dormant
                | State::Testing
        )
    )
}

/// Whether a route message may be a main-table IPv4 default route, from its fixed
/// header and RTA_TABLE alone: the prefix and local routes of an address storm are
/// dropped here without being decoded.
pub(super) fn may_be_default_v4(payload: &[u8]) -> Result<bool, DecodeError> {
    let h = RouteHeader::parse(payload)?;
    if h.address_family != AddressFamily::Inet || h.destination_prefix_length != 0 {
        return Ok(false);
    }
    let table = NlasIterator::new(payload.get(ROUTE_HEADER_LEN..).unwrap_or_default())
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == RTA_TABLE)
        .and_then(|nla| {
            nla.value()
                .get(..4)
                .map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
        })
        .unwrap_or(u32::from(h.table));
    Ok(table == u32::from(RouteHeader::RT_TABLE_MAIN))
}

/// The hints one multicast message gives, appended to `out`. Only fixed headers
/// (and for links the operstate) are read; a route message is decoded in full only
/// when its header says it may be a default route.
pub(crate) fn hints(
    msg: NetlinkBuffer<&[u8]>,
    out: &mut Vec<KernelEvent>,
) -> Result<(), DecodeError> {
    let payload = msg.payload();
    let kind = msg.message_type();
    match kind {
        libc::RTM_NEWLINK | libc::RTM_DELLINK => {
            let h = LinkHeader::parse(payload)?;
            let attributes = payload.get(LINK_HEADER_LEN..).unwrap_or_default();
            out.push(KernelEvent::Hint {
                ifindex: h.index,
                urgent: kind == libc::RTM_DELLINK || link_went_down(h.flags, attributes),
                route: false,
            });
        }
        libc::RTM_NEWADDR | libc::RTM_DELADDR => {
            let h = AddressHeader::parse(payload)?;
            if matches!(h.family, AddressFamily::Inet | AddressFamily::Inet6) {
                out.push(KernelEvent::Hint {
                    ifindex: h.index,
                    urgent: false,
                    route: false,
                });
            }
        }
        libc::RTM_NEWROUTE | libc::RTM_DELROUTE if may_be_default_v4(payload)? => {
            let route = RouteMessage::parse(payload)?;
            for r in default_routes(&route) {
                out.push(KernelEvent::Hint {
                    ifindex: r.oif,
                    urgent: false,
                    route: true,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
