//! A small synchronous rtnetlink client for the namespace of the calling thread: dump
//! links and IPv4 addresses, set a link's MAC, name, alias and up/down state
//! (RTM_SETLINK, as netavark's `netlink_route.rs` does), delete a link. The socket
//! belongs to the namespace the thread is in when it is opened, so open it only on a
//! thread that entered the target.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipc::MacAddr;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use super::NsLink;

/// Receive buffer: larger than any datagram the kernel sends on a dump (it caps them
/// at about one page per message batch).
const RECV_BUF: usize = 64 * 1024;

pub(super) struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub(super) fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and collects the replies up to its end (`Done` for a dump,
    /// the ACK otherwise); a NACK becomes the kernel's errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUF);
        loop {
            rx.clear();
            // MSG_TRUNC: the datagram's real length, so a cut one is seen, not parsed.
            let n = self.socket.recv(&mut rx, libc::MSG_TRUNC)?;
            if n > rx.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io::Error::other("netlink message of length 0"));
                }
                at += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every link but loopback, with its MAC, state and IPv4 addresses.
    pub(super) fn links(&mut self) -> io::Result<Vec<NsLink>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links: Vec<NsLink> = replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .filter(|l| !l.flags_loopback)
            .map(|l| l.link)
            .collect();
        let addrs = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        for m in addrs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let Some(link) = links.iter_mut().find(|l| l.index == a.header.index) else {
                continue;
            };
            if let Some(ip) = ipv4_of(&a) {
                link.ipv4.push(ip);
            }
        }
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    fn set_link(&mut self, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg);
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
    }

    pub(super) fn set_mac(&mut self, index: u32, mac: MacAddr) -> io::Result<()> {
        self.change(index, None, Some(mac), None)
    }

    pub(super) fn rename(&mut self, index: u32, name: &str) -> io::Result<()> {
        self.change(index, Some(name), None, None)
    }

    /// Sets the link's alias (IFLA_IFALIAS, free text kept by the kernel on the link).
    pub(super) fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        self.change(index, None, None, Some(alias))
    }

    /// Sets any of the link's name, MAC and alias in one RTM_SETLINK: one change
    /// under the kernel's lock, which the engine's own link work also waits for.
    pub(super) fn change(
        &mut self,
        index: u32,
        name: Option<&str>,
        mac: Option<MacAddr>,
        alias: Option<&str>,
    ) -> io::Result<()> {
        self.set_link(index, |m| {
            if let Some(name) = name {
                m.attributes.push(LinkAttribute::IfName(name.to_string()));
            }
            if let Some(mac) = mac {
                m.attributes
                    .push(LinkAttribute::Address(mac.octets().to_vec()));
            }
            if let Some(alias) = alias {
                m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
            }
        })
    }

    /// Deletes the link (RTM_DELLINK).
    pub(super) fn delete(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
            .map(drop)
    }

    pub(super) fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        self.set_link(index, |m| {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        })
    }
}

struct Dumped {
    link: NsLink,
    flags_loopback: bool,
}

fn link_of(l: LinkMessage) -> Dumped {
    let mut link = NsLink {
        index: l.header.index,
        name: String::new(),
        mac: None,
        ipv4: Vec::new(),
        up: l.header.flags.contains(LinkFlags::Up),
        alias: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => link.mac = MacAddr::from_slice(&b),
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
            _ => {}
        }
    }
    Dumped {
        link,
        flags_loopback: l.header.flags.contains(LinkFlags::Loopback),
    }
}

/// The interface's own IPv4 address (`IFA_LOCAL`; `IFA_ADDRESS` is the peer on
/// point-to-point links and equal to it elsewhere).
fn ipv4_of(a: &AddressMessage) -> Option<Ipv4Addr> {
    let pick = |want_local: bool| {
        a.attributes.iter().find_map(|at| match (at, want_local) {
            (AddressAttribute::Local(IpAddr::V4(ip)), true)
            | (AddressAttribute::Address(IpAddr::V4(ip)), false) => Some(*ip),
            _ => None,
        })
    };
    pick(true).or_else(|| pick(false))
}
