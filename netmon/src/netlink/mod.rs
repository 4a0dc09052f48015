//! The kernel side: one multicast-only netlink socket for events, a separate unicast
//! socket for dumps (requests on the event socket could make the kernel interleave
//! dump replies with notifications, and a dump can swallow them). Both are raw
//! `netlink_sys` sockets; netlink-packet-core/-route serialize and parse.
//!
//! Only this module names netlink-packet-route types; everything leaves it as
//! [`crate::model`] types or [`KernelEvent`]s.

mod convert;
mod dump;
mod events;
mod partial;
mod wire;

use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use dump::{DumpSocket, Outcome};

use crate::model::Snapshot;

/// What the event socket tells the daemon. Level-triggered: a hint says "look again",
/// never what the new state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// Something about this interface may have changed (link, address or default-route message).
    /// `urgent` when the message itself says the link went down (no IFF_UP / no LOWER_UP /
    /// operstate not up) or was deleted (RTM_DELLINK): the daemon then re-reads at once
    /// instead of debouncing.
    /// `route` when it came from a default-route message: the daemon then re-reads
    /// the routes of the interface (it skips the route dump for interfaces that had
    /// no default route and got no route message: additions are always announced).
    Hint {
        ifindex: u32,
        urgent: bool,
        route: bool,
    },
    /// The event socket overran (ENOBUFS): events were lost, the daemon must re-read everything.
    Overrun,
}

/// The inner error is part of each message (not a `source`), so a `{:#}` chain does
/// not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open netlink event socket (AF_NETLINK must be allowed): {0}")]
    EventSocket(std::io::Error),
    #[error("subscribe to netlink multicast group {group}: {error}")]
    Subscribe { group: u32, error: std::io::Error },
    #[error("open netlink dump socket (AF_NETLINK must be allowed): {0}")]
    DumpConnection(std::io::Error),
    /// `what` is "links", "addresses" or "routes".
    #[error("dump {what}: {error}")]
    Dump {
        what: &'static str,
        error: std::io::Error,
    },
}

/// Tunables of [`Kernel::open_with`]; the defaults are what netmon uses.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Requested SO_RCVBUF of the event socket, in bytes. The kernel doubles it for
    /// bookkeeping and caps it at `net.core.rmem_max` unless we may force it.
    pub event_rcvbuf: usize,
    /// Capacity of the event channel. When the daemon falls this far behind, the
    /// reader stops reading, the socket fills and the kernel reports an overrun: the
    /// daemon then re-reads everything, which is the right answer to a flood.
    pub channel_capacity: usize,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            event_rcvbuf: 4 << 20,
            channel_capacity: 4096,
        }
    }
}

/// The dump socket; the event socket lives in its own task.
#[derive(Debug)]
pub struct Kernel {
    /// The kernel runs one dump per socket at a time and refuses a second with EBUSY:
    /// callers sharing a `Kernel` take turns instead. `None` after a dump that did not
    /// finish (an error, or its future was dropped): replies may still be queued on
    /// that socket, so it was closed and the next dump opens a fresh one.
    socket: tokio::sync::Mutex<Option<DumpSocket>>,
    /// The strict socket for reads of a few interfaces ([`Kernel::dump_some`]), same
    /// rules; opened on first use.
    strict: tokio::sync::Mutex<Option<DumpSocket>>,
}

impl Kernel {
    /// Opens the event socket FIRST and subscribes (link, IPv4 address, IPv4 route, IPv6
    /// address), then opens the dump socket: a change made between the two is then
    /// both announced and in the first dump, never in neither. Events flow into the
    /// returned receiver from a task that drains every message available on each
    /// wake-up. The receiver is closed if the event socket dies. Call it inside a tokio
    /// runtime: the event reader is a task of it and both sockets use its reactor.
    pub async fn open() -> Result<(Kernel, mpsc::Receiver<KernelEvent>), NetlinkError> {
        Self::open_with(KernelOptions::default()).await
    }

    /// [`Kernel::open`] with explicit options.
    pub async fn open_with(
        options: KernelOptions,
    ) -> Result<(Kernel, mpsc::Receiver<KernelEvent>), NetlinkError> {
        let events = events::spawn(&options)?;
        let kernel = Self::open_dump_only()?;
        Ok((kernel, events))
    }

    /// Only the dump socket, for one-shot reads (`netmon dump`). Call it inside a
    /// tokio runtime.
    pub fn open_dump_only() -> Result<Kernel, NetlinkError> {
        let socket = DumpSocket::open().map_err(NetlinkError::DumpConnection)?;
        Ok(Kernel {
            socket: tokio::sync::Mutex::new(Some(socket)),
            strict: tokio::sync::Mutex::new(None),
        })
    }

    /// Full dump of links, addresses (v4, v6) and main-table IPv4 default routes.
    /// The three dumps run one after the other: the kernel allows one dump in flight
    /// per socket. Each reply is converted into the model as it arrives and dropped,
    /// so the memory of a dump is the snapshot plus one datagram, not every decoded
    /// message at once.
    pub async fn dump(&self) -> Result<Snapshot, NetlinkError> {
        let mut turn = self.socket.lock().await;
        // Taken out for the duration: put back only when every dump completed.
        let mut sock = match turn.take() {
            Some(s) => s,
            None => DumpSocket::open().map_err(NetlinkError::DumpConnection)?,
        };
        let mut snap = Snapshot::default();

        let query = link_query(0);
        dump_retrying(
            &mut sock,
            "links",
            || RouteNetlinkMessage::GetLink(query.clone()),
            &mut snap.links,
            |msg, links| {
                if let RouteNetlinkMessage::NewLink(l) = msg {
                    links.extend(convert::link(&l));
                }
            },
        )
        .await?;

        let mut addrs = (Vec::new(), Vec::new());
        dump_retrying(
            &mut sock,
            "addresses",
            || RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            &mut addrs,
            |msg, (v4, v6)| {
                if let RouteNetlinkMessage::NewAddress(a) = msg {
                    match convert::address(&a) {
                        Some(convert::Addr::V4(a)) => v4.push(a),
                        Some(convert::Addr::V6(a)) => v6.push(a),
                        None => {}
                    }
                }
            },
        )
        .await?;
        (snap.addrs4, snap.addrs6) = addrs;

        let query: RouteMessage = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        dump_retrying(
            &mut sock,
            "routes",
            || RouteNetlinkMessage::GetRoute(query.clone()),
            &mut snap.routes,
            |msg, routes| {
                if let RouteNetlinkMessage::NewRoute(r) = msg {
                    routes.extend(convert::default_routes(&r));
                }
            },
        )
        .await?;

        *turn = Some(sock);
        debug!(
            links = snap.links.len(),
            addrs4 = snap.addrs4.len(),
            addrs6 = snap.addrs6.len(),
            default_routes = snap.routes.len(),
            "kernel dump"
        );
        Ok(snap)
    }
}

/// The link query of every read: statistics are a third of every link message and
/// netmon never reads them (IFLA_EXT_MASK = RTEXT_FILTER_SKIP_STATS).
fn link_query(index: u32) -> LinkMessage {
    let mut query = LinkMessage::default();
    query.header.interface_family = AddressFamily::Unspec;
    query.header.index = index;
    query
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    query
}

/// One dump into `out` (reset with `Default` before every attempt), redone while the
/// kernel flags it as interrupted, up to [`dump::MAX_ATTEMPTS`]; after that the last
/// result is kept with a warning (the changes that interrupted it are announced on the
/// event socket and cause another read).
async fn dump_retrying<T, Q, F>(
    sock: &mut DumpSocket,
    what: &'static str,
    request: Q,
    out: &mut T,
    mut convert: F,
) -> Result<(), NetlinkError>
where
    T: Default,
    Q: Fn() -> RouteNetlinkMessage,
    F: FnMut(RouteNetlinkMessage, &mut T),
{
    for attempt in 1..=dump::MAX_ATTEMPTS {
        *out = T::default();
        let outcome = sock
            .dump(request(), |msg| convert(msg, out))
            .await
            .map_err(|error| NetlinkError::Dump { what, error })?;
        match outcome {
            Outcome::Complete => return Ok(()),
            Outcome::Interrupted if attempt < dump::MAX_ATTEMPTS => {
                debug!(
                    what,
                    attempt, "netlink dump interrupted by a change; redoing it"
                );
            }
            Outcome::Interrupted => warn!(
                what,
                attempts = attempt,
                "netlink dump interrupted every time; keeping the last, possibly inconsistent, result"
            ),
        }
    }
    Ok(())
}
