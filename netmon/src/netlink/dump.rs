//! Dumps on a raw `netlink_sys` socket, converted message by message.
//!
//! rtnetlink's connection decodes every reply of a dump and forwards them all through
//! an unbounded channel, so a dump of 1,000 links held every decoded message at once.
//! Here each datagram is received, each message in it deserialized by
//! netlink-packet-core/-route, converted into a [`crate::model`] type and dropped
//! before the next one: the peak is one datagram plus one decoded message, whatever
//! the number of interfaces.

use std::fmt;
use std::io;
use std::ops::ControlFlow;

use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use super::{convert, wire};

/// The kernel sizes dump datagrams after the reader's buffer, capped near 32 KiB
/// (larger only when a single message needs it, which MSG_TRUNC catches).
const RECV_BUF: usize = 64 * 1024;

/// How often a dump the kernel flagged as interrupted (NLM_F_DUMP_INTR: the table
/// changed while it was being read) is redone before the last result is taken as is.
/// Every change that interrupts a dump is also announced on the event socket, so the
/// daemon reads again after it anyway.
pub(super) const MAX_ATTEMPTS: u32 = 5;

/// How a dump ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Complete,
    /// NLM_F_DUMP_INTR was set on a reply: the result may be inconsistent.
    Interrupted,
}

/// One unicast socket for dump requests. Not shared with the event socket: a dump
/// there could interleave with notifications.
pub(super) struct DumpSocket {
    fd: AsyncFd<Socket>,
    seq: u32,
}

impl fmt::Debug for DumpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DumpSocket")
            .field("fd", self.fd.get_ref())
            .field("seq", &self.seq)
            .finish()
    }
}

impl DumpSocket {
    /// Call it inside a tokio runtime: the socket is registered with its reactor.
    pub(super) fn open() -> io::Result<DumpSocket> {
        Self::open_with(false)
    }

    /// A socket whose dump requests the kernel checks strictly and filters by the
    /// fields set in them (NETLINK_GET_STRICT_CHK, Linux 4.20): an address dump for
    /// one ifindex, a route dump for one table and output interface. Only requests
    /// built for filtering go there: on it every header field set is a filter.
    pub(super) fn open_strict() -> io::Result<DumpSocket> {
        Self::open_with(true)
    }

    fn open_with(strict: bool) -> io::Result<DumpSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        if strict {
            sock.set_netlink_get_strict_chk(true)?;
        }
        sock.bind_auto()?;
        // Connected to the kernel (port 0), so `send` needs no address and only the
        // kernel's replies arrive.
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_non_blocking(true)?;
        // SAFETY: `Socket` owns its descriptor, never replaces it, and closes it only
        // when dropped, which happens after the AsyncFd that owns it is dropped.
        let fd = unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)?;
        Ok(DumpSocket { fd, seq: 0 })
    }

    /// Sends `request` as a dump request and hands every reply message to `each`, one
    /// at a time, until NLMSG_DONE. NLMSG_ERROR (or an error code in NLMSG_DONE) is an
    /// error. If the future is dropped half-way, unread replies stay queued: the
    /// caller must then drop the socket rather than reuse it.
    pub(super) async fn dump<F>(
        &mut self,
        request: RouteNetlinkMessage,
        mut each: F,
    ) -> io::Result<Outcome>
    where
        F: FnMut(RouteNetlinkMessage),
    {
        let mut interrupted = false;
        self.exchange(request, NLM_F_REQUEST | NLM_F_DUMP, |d, seq| {
            parse_datagram(d, seq, &mut interrupted, &mut each)
        })
        .await?;
        Ok(if interrupted {
            Outcome::Interrupted
        } else {
            Outcome::Complete
        })
    }

    /// Sends `request` as a plain request (one object, e.g. RTM_GETLINK for one
    /// ifindex) and returns its reply; `None` when the kernel answers ENODEV (the
    /// object is gone). Same rule as [`DumpSocket::dump`] for a dropped future.
    pub(super) async fn get(
        &mut self,
        request: RouteNetlinkMessage,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        let mut out = None;
        self.exchange(request, NLM_F_REQUEST, |d, seq| {
            parse_single(d, seq, &mut out)
        })
        .await?;
        Ok(out)
    }

    /// Sends `request` with `flags` and feeds each reply datagram to `on_datagram`
    /// until it says the exchange is over.
    async fn exchange<F>(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
        mut on_datagram: F,
    ) -> io::Result<()>
    where
        F: FnMut(&[u8], u32) -> io::Result<Option<()>>,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let wire = encode_request(request, seq, flags);
        self.send(&wire).await?;
        drop(wire);

        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        loop {
            let mut guard = self.fd.readable().await?;
            loop {
                buf.clear();
                let n = match guard.try_io(|s| s.get_ref().recv(&mut buf, libc::MSG_TRUNC)) {
                    Err(_would_block) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => return Err(e),
                };
                if n > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "reply datagram of {n} bytes truncated to {} bytes",
                            buf.len()
                        ),
                    ));
                }
                if on_datagram(&buf[..n], seq)?.is_some() {
                    return Ok(());
                }
            }
        }
    }

    async fn send(&self, wire: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send(wire, 0)) {
                Err(_would_block) => continue,
                Ok(Ok(n)) if n == wire.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("sent {n} of {} bytes of the request", wire.len()),
                    ));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// The request as the library serializes it, with `flags` (a dump or not).
fn encode_request(request: RouteNetlinkMessage, seq: u32, flags: u16) -> Vec<u8> {
    let mut msg = NetlinkMessage::from(request);
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut wire = vec![0; msg.buffer_len()];
    msg.serialize(&mut wire);
    wire
}

/// The messages of one datagram. Returns `Some(())` once NLMSG_DONE of this dump
/// was seen. Messages of another sequence number (a reply to nothing we asked for
/// now) are skipped.
fn parse_datagram<F>(
    data: &[u8],
    seq: u32,
    interrupted: &mut bool,
    each: &mut F,
) -> io::Result<Option<()>>
where
    F: FnMut(RouteNetlinkMessage),
{
    let walked = wire::walk(data, |buf| {
        if buf.sequence_number() != seq {
            debug!(
                got = buf.sequence_number(),
                want = seq,
                "netlink reply of another request; skipped"
            );
            return ControlFlow::Continue(());
        }
        if buf.flags() & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        // Only default routes are kept: the others (a prefix and a local route per
        // address) are skipped on their fixed header instead of decoded.
        if buf.message_type() == libc::RTM_NEWROUTE
            && !convert::may_be_default_v4(buf.payload()).unwrap_or(true)
        {
            return ControlFlow::Continue(());
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(buf.into_inner()) {
            Ok(msg) => match reply(msg.payload, each) {
                Ok(false) => ControlFlow::Continue(()),
                Ok(true) => ControlFlow::Break(Ok(())),
                Err(e) => ControlFlow::Break(Err(e)),
            },
            // One message this library version cannot parse: skip it, as rtnetlink's
            // connection did, rather than fail every read from now on.
            Err(e) => {
                warn!(error = %e, "undecodable netlink dump reply; skipped");
                ControlFlow::Continue(())
            }
        }
    });
    match walked {
        Ok(None) => Ok(None),
        Ok(Some(done)) => done.map(Some),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("undecodable reply datagram: {e}"),
        )),
    }
}

/// The reply to a plain request: the first message of our sequence number ends it.
/// ENODEV (the object is gone) leaves `out` empty; another error is an error.
fn parse_single(
    data: &[u8],
    seq: u32,
    out: &mut Option<RouteNetlinkMessage>,
) -> io::Result<Option<()>> {
    let walked = wire::walk(data, |buf| {
        if buf.sequence_number() != seq {
            return ControlFlow::Continue(());
        }
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(buf.into_inner()) {
            Ok(m) => m,
            Err(e) => {
                return ControlFlow::Break(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("undecodable reply: {e}"),
                )));
            }
        };
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => *out = Some(m),
            NetlinkPayload::Error(err) => match err.code {
                Some(c) if c.get() == -libc::ENODEV => {}
                Some(_) => {
                    let e = err.to_io();
                    let what = format!("kernel refused the request (NLMSG_ERROR): {e}");
                    return ControlFlow::Break(Err(io::Error::new(e.kind(), what)));
                }
                None => {}
            },
            _ => {}
        }
        ControlFlow::Break(Ok(()))
    });
    match walked {
        Ok(None) => Ok(None),
        Ok(Some(r)) => r.map(Some),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("undecodable reply datagram: {e}"),
        )),
    }
}

/// One reply of our dump: true once it is the end (NLMSG_DONE).
fn reply<F>(payload: NetlinkPayload<RouteNetlinkMessage>, each: &mut F) -> io::Result<bool>
where
    F: FnMut(RouteNetlinkMessage),
{
    match payload {
        NetlinkPayload::InnerMessage(m) => each(m),
        NetlinkPayload::Done(done) => {
            if done.code < 0 {
                let e = io::Error::from_raw_os_error(-done.code);
                return Err(io::Error::new(
                    e.kind(),
                    format!("kernel ended the dump with an error: {e}"),
                ));
            }
            return Ok(true);
        }
        NetlinkPayload::Error(err) if err.code.is_some() => {
            let e = err.to_io();
            return Err(io::Error::new(
                e.kind(),
                format!("kernel refused the request (NLMSG_ERROR): {e}"),
            ));
        }
        // An ACK: not asked for, nothing to do.
        NetlinkPayload::Error(_) | NetlinkPayload::Noop => {}
        NetlinkPayload::Overrun(_) => {
            return Err(io::Error::other("kernel reported NLMSG_OVERRUN"));
        }
        _ => {}
    }
    Ok(false)
}

#[cfg(test)]
#[path = "dump_tests.rs"]
mod tests;
