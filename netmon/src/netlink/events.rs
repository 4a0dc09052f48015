//! The multicast event socket.
//!
//! A raw `netlink_sys` socket rather than an rtnetlink connection: netlink-proto's
//! connection swallows ENOBUFS, and ENOBUFS is the one signal that events were lost.
//! Each datagram is framed by the shared walker; only message headers are read.

use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsFd;

use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NLMSG_OVERRUN;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::{KernelEvent, KernelOptions, NetlinkError, convert, wire};

const GROUPS: [MulticastGroup; 4] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Ifaddr,
];

/// Big enough for any single notification: the kernel builds multicast messages in
/// skbs of at most a few pages (link messages with all stats are the largest).
const RECV_BUF: usize = 64 * 1024;

fn open_socket(options: &KernelOptions) -> Result<Socket, NetlinkError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::EventSocket)?;
    set_rcvbuf(&sock, options.event_rcvbuf);
    sock.bind(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::EventSocket)?;
    for group in GROUPS {
        let group = group as u32;
        sock.add_membership(group)
            .map_err(|error| NetlinkError::Subscribe { group, error })?;
    }
    sock.set_non_blocking(true)
        .map_err(NetlinkError::EventSocket)?;
    Ok(sock)
}

/// SO_RCVBUFFORCE lifts the `net.core.rmem_max` cap but needs CAP_NET_ADMIN, which
/// netmon must not need: try it, then fall back to SO_RCVBUF quietly.
fn set_rcvbuf(sock: &Socket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&sock.as_fd(), sockopt::RcvBufForce, &bytes).is_ok() {
        return;
    }
    if let Err(e) = sock.set_rx_buf_sz(bytes) {
        warn!(error = %e, bytes, "cannot size the netlink event buffer; keeping the default");
    }
    let got = sock.get_rx_buf_sz().unwrap_or(0);
    debug!(
        requested = bytes,
        effective = got,
        "netlink event socket receive buffer"
    );
}

/// Opens and subscribes the event socket now (so the caller's first dump comes after
/// the subscription), then reads it in a task.
pub(super) fn spawn(options: &KernelOptions) -> Result<mpsc::Receiver<KernelEvent>, NetlinkError> {
    let sock = open_socket(options)?;
    // SAFETY: `Socket` owns its descriptor, never replaces it, and closes it only
    // when dropped, which happens after the AsyncFd that owns it is dropped.
    let fd = unsafe { AsyncFd::register(sock) }.map_err(|e| NetlinkError::EventSocket(e.into()))?;
    let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
    tokio::spawn(async move {
        tokio::select! {
            res = read_loop(&fd, &tx) => {
                if let Err(e) = res {
                    error!(error = %e, "netlink event socket failed; closing the event stream");
                }
            }
            // Nobody listens any more: close the socket instead of filling it.
            () = tx.closed() => {}
        }
    });
    Ok(rx)
}

enum Step {
    /// A datagram of this length is in the buffer.
    Datagram(usize),
    /// Nothing more to read until the next wake-up.
    Drained,
    Overrun,
}

/// Reads until the socket fails or the receiver goes away. Every wake-up drains the
/// socket completely, so a burst is never left waiting for the next notification.
async fn read_loop(fd: &AsyncFd<Socket>, tx: &mpsc::Sender<KernelEvent>) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    let mut batch = Vec::new();
    loop {
        let mut guard = fd.readable().await?;
        loop {
            buf.clear();
            let step = match guard.try_io(|s| s.get_ref().recv(&mut buf, libc::MSG_TRUNC)) {
                Err(_would_block) => Step::Drained,
                Ok(Ok(n)) if n > buf.len() => {
                    // Cannot happen with RECV_BUF, but a truncated notification is a lost
                    // one: treat it like an overrun rather than guess.
                    warn!(len = n, "netlink notification truncated");
                    Step::Overrun
                }
                Ok(Ok(n)) => Step::Datagram(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => Step::Overrun,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
            };
            match step {
                Step::Drained => break,
                Step::Overrun => {
                    warn!("netlink event socket overran; a full re-read follows");
                    batch.push(KernelEvent::Overrun);
                }
                Step::Datagram(n) => parse_datagram(&buf[..n], &mut batch),
            }
            for ev in batch.drain(..) {
                if tx.send(ev).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// One datagram can carry several messages back to back. Only the fixed headers
/// are read (see [`convert::hints`]): a storm costs what its messages cost to
/// frame, not to decode.
fn parse_datagram(data: &[u8], out: &mut Vec<KernelEvent>) {
    let walked = wire::walk(data, |msg| {
        if msg.message_type() == NLMSG_OVERRUN {
            out.push(KernelEvent::Overrun);
        } else if let Err(e) = convert::hints(msg, out) {
            // A message this library version cannot read: say "look at everything"
            // rather than drop what might be a real change.
            debug!(error = %e, "unparsed netlink notification; re-reading everything");
            out.push(KernelEvent::Overrun);
        }
        ControlFlow::<()>::Continue(())
    });
    if let Err(e) = walked {
        warn!(error = %e, "undecodable netlink datagram; re-reading everything");
        out.push(KernelEvent::Overrun);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::NetlinkMessage;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_route::address::AddressMessage;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

    fn encode(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut nl = NetlinkMessage::from(msg);
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    #[test]
    fn every_message_of_a_datagram_is_read() {
        let mut addr = AddressMessage::default();
        addr.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        addr.header.index = 3;
        let mut link = LinkMessage::default();
        link.header.index = 4;
        link.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        link.attributes.push(LinkAttribute::IfName("ethA".into()));
        let mut datagram = encode(RouteNetlinkMessage::NewAddress(addr));
        // Pad to the 4-byte alignment the kernel uses between messages.
        while datagram.len() % 4 != 0 {
            datagram.push(0);
        }
        datagram.extend(encode(RouteNetlinkMessage::DelLink(link)));
        let mut out = Vec::new();
        parse_datagram(&datagram, &mut out);
        assert_eq!(
            out,
            [
                KernelEvent::Hint {
                    ifindex: 3,
                    urgent: false,
                    route: false
                },
                KernelEvent::Hint {
                    ifindex: 4,
                    urgent: true,
                    route: false
                }
            ]
        );
    }

    #[test]
    fn undecodable_data_asks_for_a_full_read() {
        let mut out = Vec::new();
        parse_datagram(&[1, 2, 3, 4, 5], &mut out);
        assert_eq!(out, [KernelEvent::Overrun]);
        // A header claiming more bytes than the datagram holds.
        let mut lying = encode(RouteNetlinkMessage::NewAddress(AddressMessage::default()));
        lying[0] = 200;
        out.clear();
        parse_datagram(&lying, &mut out);
        assert_eq!(out, [KernelEvent::Overrun]);
    }
}
