//! Shared by the dhcp_* kernel tests: short client timings and event waits.

#![allow(dead_code)]

use std::time::Duration;

use agent::dhcp::{
    ClientOptions, DhcpEvent, DhcpHandle, DhcpUpdate, LeaseRecord, LeaseRequest, spawn_on,
};
use e2e::dhcp::DhcpLan;
use ipc::MacAddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Timings for a LAN that answers in milliseconds; retries within seconds.
pub fn opts() -> ClientOptions {
    let s = Duration::from_secs;
    ClientOptions {
        discover_waits: vec![s(1), s(1)],
        request_waits: vec![s(1), s(2)],
        retry_min: s(1),
        retry_max: s(4),
        min_retransmit: s(1),
    }
}

pub fn request(lan: &DhcpLan, mac: MacAddr, cached: Option<LeaseRecord>) -> LeaseRequest {
    LeaseRequest {
        key: format!("rt/{mac}"),
        parent: lan.parent.clone(),
        mac,
        cached,
        hostname: Some("edgenet-test".into()),
    }
}

pub struct Client {
    pub handle: DhcpHandle,
    pub rx: mpsc::Receiver<DhcpEvent>,
}

/// Starts a client on the current runtime (its threads are in the test's namespace,
/// which holds the parent).
pub fn start(req: LeaseRequest) -> Client {
    let (tx, rx) = mpsc::channel(16);
    let handle = spawn_on(
        &tokio::runtime::Handle::current(),
        req,
        opts(),
        tx,
        CancellationToken::new(),
    );
    Client { handle, rx }
}

impl Client {
    /// The next update, or a panic after `limit`.
    pub async fn next(&mut self, limit: Duration) -> DhcpUpdate {
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Ok(Some(ev)) => ev.update,
            Ok(None) => panic!("the DHCP client stopped"),
            Err(_) => panic!("no DHCP update within {limit:?}"),
        }
    }

    /// Waits for Bound, ignoring Pending; panics on anything else.
    pub async fn bound(&mut self, limit: Duration) -> LeaseRecord {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                DhcpUpdate::Bound(r) => return r,
                DhcpUpdate::Pending { .. } => continue,
                other => panic!("expected Bound, got {other:?}"),
            }
        }
    }
}

pub fn mac() -> MacAddr {
    MacAddr::random_local()
}

/// dnsmasq writes client ids as colon-separated hex.
pub fn dnsmasq_client_id(mac: MacAddr) -> String {
    format!("01:{mac}")
}
