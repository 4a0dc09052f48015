//! The kernel side: one multicast-only netlink socket for events, a separate
//! rtnetlink connection for dumps (requests on the event socket could make the kernel
//! interleave dump replies with notifications, and a dump can swallow them).
//!
//! Only this module names netlink-packet-route types; everything leaves it as
//! [`crate::model`] types or [`KernelEvent`]s.

mod convert;
mod events;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::LinkExtentMask;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::model::Snapshot;

/// What the event socket tells the daemon. Level-triggered: a hint says "look again",
/// never what the new state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// Something about this interface may have changed (link, address or default-route message).
    /// `urgent` when the message itself says the link went down (no IFF_UP / no LOWER_UP /
    /// operstate not up) or was deleted (RTM_DELLINK): the daemon then re-reads at once
    /// instead of debouncing.
    Hint { ifindex: u32, urgent: bool },
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
    #[error("open netlink dump connection (AF_NETLINK must be allowed): {0}")]
    DumpConnection(std::io::Error),
    #[error("dump links: {0}")]
    DumpLinks(rtnetlink::Error),
    #[error("dump addresses: {0}")]
    DumpAddresses(rtnetlink::Error),
    #[error("dump routes: {0}")]
    DumpRoutes(rtnetlink::Error),
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

/// The dump connection; the event socket lives in its own task.
#[derive(Debug)]
pub struct Kernel {
    handle: Handle,
    connection: JoinHandle<()>,
    /// The kernel runs one dump per socket at a time and refuses a second with EBUSY:
    /// callers sharing a `Kernel` take turns instead.
    dump_lock: tokio::sync::Mutex<()>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Kernel {
    /// Opens the event socket FIRST and subscribes (link, IPv4 address, IPv4 route, IPv6
    /// address), then opens the dump connection: a change made between the two is then
    /// both announced and in the first dump, never in neither. Events flow into the
    /// returned receiver from a task that drains every message available on each
    /// wake-up. The receiver is closed if the event socket dies. Call it inside a tokio
    /// runtime: the event reader and the dump connection are tasks of it.
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

    /// Only the dump connection, for one-shot reads (`netmon dump`). Call it inside a
    /// tokio runtime.
    pub fn open_dump_only() -> Result<Kernel, NetlinkError> {
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(NetlinkError::DumpConnection)?;
        let connection = tokio::spawn(conn);
        Ok(Kernel {
            handle,
            connection,
            dump_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Full dump of links, addresses (v4, v6) and main-table IPv4 default routes.
    /// The three dumps run one after the other: the kernel allows one dump in flight
    /// per socket.
    pub async fn dump(&self) -> Result<Snapshot, NetlinkError> {
        let _turn = self.dump_lock.lock().await;
        let mut snap = Snapshot::default();

        // Statistics are a third of every link message and netmon never reads them;
        // skipping them keeps a dump of 1,000 links cheap.
        let mut links = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .execute();
        while let Some(msg) = links.try_next().await.map_err(NetlinkError::DumpLinks)? {
            if let Some(link) = convert::link(&msg) {
                snap.links.push(link);
            }
        }

        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(NetlinkError::DumpAddresses)?
        {
            match convert::address(&msg) {
                Some(convert::Addr::V4(a)) => snap.addrs4.push(a),
                Some(convert::Addr::V6(a)) => snap.addrs6.push(a),
                None => {}
            }
        }

        let query: RouteMessage = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        while let Some(msg) = routes.try_next().await.map_err(NetlinkError::DumpRoutes)? {
            snap.routes.extend(convert::default_routes(&msg));
        }

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
