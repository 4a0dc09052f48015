//! DHCPv4 leases for DHCP-mode vNICs, held by the agent for each vNIC's stored MAC.
//!
//! Where the client runs: in the host's network namespace, in proxy mode on the
//! vNIC's parent link, with our own small state machine over an AF_PACKET socket.
//! - Proxy mode, because the lease must exist before the runtime is attached (the
//!   engine then connects the container with the leased address as a static one, so
//!   no address the server did not hand out reaches the LAN), and because a STOPPED
//!   runtime has no namespace to run a client in but must keep its lease renewed.
//! - Our own client rather than `mozim` (what netavark's dhcp-proxy uses): in proxy
//!   mode mozim renews from a UDP socket bound to the leased address, which the host
//!   does not hold (EADDRNOTAVAIL), so it only ever renews by broadcast REBIND at T2;
//!   it drops a NAK outside INIT-REBOOT, and its decoder cannot be fed crafted replies
//!   for tests. Raw frames carry the vNIC's MAC as Ethernet source and, for RENEW and
//!   RELEASE, the leased address as IPv4 source, so RENEW is a true unicast at T1; the
//!   client answers the server's ARP for the leased address while it renews (the
//!   runtime may be stopped, with nobody else to answer). Client id: `01` + MAC,
//!   what busybox udhcpc sends, so leases in the field carry over.
//! - Our own codec rather than a DHCP crate: a dozen options are needed, and the
//!   crates available pull a DNS library and Unicode tables for options never used.
//!
//! The caller decides how the client gets into the host's namespace: the client's
//! socket is opened (and re-opened after a link failure) on the thread that polls the
//! client's task, so [`spawn_on`] must be given a runtime whose threads are in the
//! namespace holding the parent (the agent's own when it runs as a systemd unit; a
//! thread that entered the host's namespace when the agent runs in a container).
//! A parent subnet or gateway change is handled by the caller: `release()` the old
//! client, `spawn` a new one without a cache.
//!
//! Wiring (the caller's part): one client per DHCP-mode vNIC, keyed "runtime/vnic";
//! `cached` from [`LeaseStore::get`]; on `Bound` store the record and (re)attach the
//! runtime with `address/prefix` as a static address and `router` as its gateway;
//! on `Renewed` store it only (no engine call); on `Pending`/`Lost` show the reason
//! (the client retries by itself); on delete `release()` then [`LeaseStore::remove`].
//! A stopped runtime's client keeps running: it needs no interface or namespace.
//! Side effects on the host: the parent gets the vNIC's MAC in its unicast filter
//! while the socket is open (PACKET_MR_UNICAST; a NIC without unicast filtering,
//! like veth, goes promiscuous meanwhile), and while renewing the client answers ARP
//! for the leased address with the vNIC's MAC, which is the truth on the LAN.

mod client;
mod frame;
mod lease;
pub mod packet;
pub mod socket;
mod store;

use std::time::SystemTime;

use ipc::MacAddr;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use lease::{LeaseRecord, Refused, check_reply, client_id, lease_of};
pub use store::{LEASE_FILE, LeaseStore, LeaseStoreError};

/// What a client is asked to hold.
#[derive(Clone, Debug)]
pub struct LeaseRequest {
    /// "runtime/vnic", as in the lease store.
    pub key: String,
    /// The parent link, in the namespace the client runs in.
    pub parent: String,
    pub mac: MacAddr,
    /// The last lease for this vNIC: asked for first (INIT-REBOOT).
    pub cached: Option<LeaseRecord>,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DhcpUpdate {
    /// The first lease, or one with a different address than the last Bound.
    Bound(LeaseRecord),
    /// The lease was extended with the same address (the runtime stays attached).
    Renewed(LeaseRecord),
    /// No lease yet: why, and when the next try starts.
    Pending {
        reason: String,
        next_try: SystemTime,
    },
    /// The lease ended (NAK or expiry); the client starts over by itself.
    Lost { reason: String },
}

/// An update from the client holding `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpEvent {
    pub key: String,
    pub update: DhcpUpdate,
}

/// Timings; the defaults are for a real LAN, tests shorten them.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// DISCOVER retransmissions in one round (RFC 2131 4.1: about 4, 8, 16 s; shorter,
    /// as the rounds themselves are retried with backoff).
    pub discover_waits: Vec<std::time::Duration>,
    /// REQUEST retransmissions when selecting or rebooting.
    pub request_waits: Vec<std::time::Duration>,
    /// The backoff between rounds (capped).
    pub retry_min: std::time::Duration,
    pub retry_max: std::time::Duration,
    /// The shortest wait between RENEW/REBIND retransmissions (RFC 2131: 60 s).
    pub min_retransmit: std::time::Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        use std::time::Duration as D;
        ClientOptions {
            discover_waits: vec![D::from_secs(2), D::from_secs(4), D::from_secs(8)],
            request_waits: vec![D::from_secs(2), D::from_secs(4)],
            retry_min: D::from_secs(5),
            retry_max: D::from_secs(120),
            min_retransmit: D::from_secs(60),
        }
    }
}

/// A running client. Dropping it does not stop it: call [`DhcpHandle::stop`] or
/// [`DhcpHandle::release`], or cancel the shutdown token given to [`spawn`].
pub struct DhcpHandle {
    key: String,
    cancel: CancellationToken,
    release: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl DhcpHandle {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Sends DHCPRELEASE (best effort) if a lease is held, then stops.
    pub async fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }

    /// Stops without releasing (the lease stays on the server, cached for a restart).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Starts a client on the current tokio runtime (see the module comment for which
/// namespace its threads must be in).
pub fn spawn(
    req: LeaseRequest,
    updates: mpsc::Sender<DhcpEvent>,
    shutdown: CancellationToken,
) -> DhcpHandle {
    spawn_on(
        &tokio::runtime::Handle::current(),
        req,
        ClientOptions::default(),
        updates,
        shutdown,
    )
}

/// Starts a client on `rt`, whose threads are in the parent's network namespace.
pub fn spawn_on(
    rt: &tokio::runtime::Handle,
    req: LeaseRequest,
    opts: ClientOptions,
    updates: mpsc::Sender<DhcpEvent>,
    shutdown: CancellationToken,
) -> DhcpHandle {
    let key = req.key.clone();
    let cancel = shutdown.child_token();
    let (release_tx, release_rx) = oneshot::channel();
    let token = cancel.clone();
    let task = rt.spawn(async move {
        let mut c = client::Client::new(req, opts, updates);
        let release = tokio::select! {
            _ = token.cancelled() => false,
            Ok(()) = release_rx => true,
            _ = c.run() => false,
        };
        if release {
            c.release().await;
        }
    });
    DhcpHandle {
        key,
        cancel,
        release: Some(release_tx),
        task,
    }
}

#[cfg(test)]
mod tests;
