//! The daemon's DHCP manager: one client (`crate::dhcp`) per DHCP-mode vNIC with a
//! stored MAC, keyed "runtime/vnic", started once its parent is up with IPv4, for a
//! running or a stopped runtime alike (unless `--release-when-stopped`).
//!
//! All clients run on one thread in the namespace where the parents are, netmon's
//! (the links it reports are the parents): `netns::spawn_in` gives that thread a
//! current-thread runtime. The namespace is found through netmon's socket (the pid
//! serving it, SO_PEERCRED), else it is pid 1's (`Netns::Host`). Under systemd the
//! thread is already there; as a container (`pid: host`) it enters netmon's, as pid 1's
//! cannot be opened without CAP_SYS_PTRACE. The thread starts with the first client
//! (netmon has answered by then), and again after a failure. Updates come back to the
//! state task as `Msg::Dhcp`.
//!
//! Leases are kept in [`LeaseStore`] (`dhcp_leases.json`): a restarted agent hands
//! each client its last lease (INIT-REBOOT asks for the same address), and the plan
//! uses the stored leases from the first run on, so a restart reconnects nothing.
//! A parent whose subnet or gateway changed gets its clients released and restarted
//! without a cache; a runtime deleted gets its client released and its record removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::InterfaceCache;
use crate::dhcp::{
    ClientOptions, DhcpEvent, DhcpHandle, DhcpUpdate, LeaseRecord, LeaseRequest, LeaseStore,
};
use crate::netns::{Netns, NsTask};
use crate::plan::DhcpLeases;
use crate::vnics::{NetworkMode, Runtimes};

/// What a client was started for: a change of any of these restarts it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    parent: String,
    mac: MacAddr,
    subnet: Ipv4Network,
    gateway: Option<Ipv4Addr>,
}

struct Running {
    wanted: Wanted,
    handle: DhcpHandle,
}

/// Why a vNIC has no lease, for status and its pending state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NoLease {
    pub reason: String,
    pub next_try: Option<SystemTime>,
}

pub(super) struct DhcpManager {
    release_when_stopped: bool,
    /// netmon's socket: its server's namespace is the parents'.
    netmon_socket: PathBuf,
    /// The runtime in the parents' namespace the clients run on; started with the
    /// first client.
    host: Option<(tokio::runtime::Handle, NsTask<()>)>,
    /// Why it could not start the last time (logged once per reason).
    host_error: Option<String>,
    clients: BTreeMap<String, Running>,
    store: LeaseStore,
    waiting: BTreeMap<String, NoLease>,
    /// Runtimes whose container is stopped (from engine events and run notes).
    pub(super) stopped: BTreeSet<String>,
    updates: mpsc::Sender<DhcpEvent>,
    shutdown: CancellationToken,
    opts: ClientOptions,
}

/// "runtime/vnic", as in the lease store.
pub(crate) fn key(runtime: &str, vnic: &str) -> String {
    format!("{runtime}/{vnic}")
}

impl DhcpManager {
    pub(super) fn new(
        state_dir: &Path,
        netmon_socket: &Path,
        release_when_stopped: bool,
        retry_max: Duration,
        updates: mpsc::Sender<DhcpEvent>,
        shutdown: CancellationToken,
    ) -> DhcpManager {
        DhcpManager {
            release_when_stopped,
            netmon_socket: netmon_socket.to_path_buf(),
            host: None,
            host_error: None,
            clients: BTreeMap::new(),
            store: LeaseStore::open(state_dir),
            waiting: BTreeMap::new(),
            stopped: BTreeSet::new(),
            updates,
            shutdown,
            opts: client_options(retry_max),
        }
    }

    /// The leases the plan connects with: stored, unexpired, for the MAC the vNIC has.
    pub(super) fn leases(&self, runtimes: &Runtimes) -> DhcpLeases {
        let now = SystemTime::now();
        let mut out = DhcpLeases::new();
        for (rt, vnics) in runtimes {
            for v in vnics.iter().filter(|v| v.network_mode == NetworkMode::Dhcp) {
                if let Some(l) = self.store.get(&key(rt, &v.name))
                    && Some(l.mac) == v.stored_mac()
                    && l.expires_at() > now
                {
                    out.insert((rt.clone(), v.name.clone()), l.address);
                }
            }
        }
        out
    }

    pub(crate) fn lease(&self, key: &str) -> Option<&LeaseRecord> {
        self.store.get(key)
    }

    pub(crate) fn no_lease(&self, key: &str) -> Option<&NoLease> {
        self.waiting.get(key)
    }

    /// Starts, restarts and releases clients to match the store and the cache.
    /// Returns whether a lease the plan used went away (a run should follow).
    pub(super) fn sync(&mut self, runtimes: &Runtimes, cache: &InterfaceCache) -> bool {
        let mut want: BTreeMap<String, Wanted> = BTreeMap::new();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for (rt, vnics) in runtimes {
            if self.release_when_stopped && self.stopped.contains(rt) {
                continue;
            }
            for v in vnics.iter().filter(|v| v.network_mode == NetworkMode::Dhcp) {
                let k = key(rt, &v.name);
                let Some(mac) = v.stored_mac() else {
                    self.set_waiting(&k, "a MAC for the vNIC (none is stored)".into(), None);
                    continue;
                };
                let Some(lan) = cache.lan(&v.parent_interface) else {
                    // A parent down or without IPv4 for a moment: a client that runs keeps
                    // its lease (it retries by itself); none is started before it is up.
                    keep.insert(k);
                    continue;
                };
                want.insert(
                    k,
                    Wanted {
                        parent: v.parent_interface.clone(),
                        mac,
                        subnet: lan.subnet,
                        gateway: lan.gateway,
                    },
                );
            }
        }
        let mut lost = false;
        let gone: Vec<String> = self
            .clients
            .keys()
            .filter(|k| !want.contains_key(*k) && !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            lost |= self.release(&k, "its runtime was deleted or stopped");
        }
        for (k, w) in want {
            if let Some(r) = self.clients.get(&k) {
                if r.wanted == w {
                    continue;
                }
                info!(key = %k, old = ?r.wanted, new = ?w, "a DHCP vNIC's LAN changed; releasing and asking again");
                lost |= self.release(&k, "its parent's LAN changed");
            }
            self.start(&k, w, runtimes);
        }
        // Records of vNICs that no longer exist (deleted while the agent was down).
        let stale: Vec<String> = self
            .store
            .all()
            .keys()
            .filter(|k| !self.clients.contains_key(*k) && !exists(runtimes, k))
            .cloned()
            .collect();
        for k in stale {
            self.forget(&k);
        }
        lost
    }

    fn start(&mut self, k: &str, w: Wanted, runtimes: &Runtimes) {
        let rt = match self.host_handle() {
            Ok(rt) => rt,
            Err(e) => {
                let reason = format!("the DHCP client, which cannot run: {e}");
                self.set_waiting(k, reason, None);
                return;
            }
        };
        let cached = self
            .store
            .get(k)
            .filter(|l| l.mac == w.mac && l.parent == w.parent && w.subnet.contains(l.address))
            .cloned();
        let hostname = k.split('/').next().filter(|r| runtimes.contains_key(*r));
        let req = LeaseRequest {
            key: k.to_string(),
            parent: w.parent.clone(),
            mac: w.mac,
            cached,
            hostname: hostname.map(str::to_string),
        };
        info!(key = %k, parent = %w.parent, mac = %w.mac, init_reboot = req.cached.is_some(), "starting a DHCP client");
        if self.store.get(k).is_none() {
            self.set_waiting(k, "a DHCP offer (asking)".into(), None);
        }
        let handle = crate::dhcp::spawn_on(
            &rt,
            req,
            self.opts.clone(),
            self.updates.clone(),
            self.shutdown.clone(),
        );
        self.clients
            .insert(k.to_string(), Running { wanted: w, handle });
    }

    /// Stops `k`'s client with a DHCPRELEASE (in the background) and drops its record.
    fn release(&mut self, k: &str, why: &str) -> bool {
        if let Some(r) = self.clients.remove(k) {
            info!(key = %k, reason = why, "releasing a DHCP lease");
            tokio::spawn(r.handle.release());
        }
        self.forget(k)
    }

    /// Drops `k`'s lease record; whether there was one.
    fn forget(&mut self, k: &str) -> bool {
        self.waiting.remove(k);
        match self.store.remove(k) {
            Ok(r) => r.is_some(),
            Err(e) => {
                warn!(key = %k, error = %e, "cannot remove a lease record");
                false
            }
        }
    }

    /// An update from a client. Returns whether the plan's lease changed (a run is due).
    pub(super) fn on_event(&mut self, ev: DhcpEvent) -> bool {
        let k = ev.key;
        if !self.clients.contains_key(&k) {
            // A client released meanwhile: its last words change nothing.
            return false;
        }
        match ev.update {
            DhcpUpdate::Bound(l) => {
                info!(key = %k, address = %l.cidr(), server = %l.server_id, "DHCP lease bound");
                self.waiting.remove(&k);
                self.put(&k, l);
                true
            }
            DhcpUpdate::Renewed(l) => {
                self.put(&k, l);
                false
            }
            DhcpUpdate::Pending { reason, next_try } => {
                self.set_waiting(&k, reason, Some(next_try));
                false
            }
            DhcpUpdate::Lost { reason } => {
                warn!(key = %k, %reason, "DHCP lease lost; the client starts over");
                self.set_waiting(&k, format!("a new lease ({reason})"), None);
                // The runtime stays attached with the old address until a new lease
                // says otherwise: detaching it now would only add a gap.
                false
            }
        }
    }

    fn put(&mut self, k: &str, l: LeaseRecord) {
        if let Err(e) = self.store.put(k, l) {
            warn!(key = %k, error = %e, "cannot store a DHCP lease; a restart will DISCOVER again");
        }
    }

    fn set_waiting(&mut self, k: &str, reason: String, next_try: Option<SystemTime>) {
        self.waiting
            .insert(k.to_string(), NoLease { reason, next_try });
    }

    /// `runtime delete`: every client of `runtime` releases, its records go.
    pub(super) fn delete_runtime(&mut self, runtime: &str) {
        let prefix = format!("{runtime}/");
        let keys: Vec<String> = self
            .clients
            .keys()
            .chain(self.store.all().keys())
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in keys {
            self.release(&k, "its runtime was deleted");
        }
        self.stopped.remove(runtime);
    }
}

fn exists(runtimes: &Runtimes, k: &str) -> bool {
    let Some((rt, vnic)) = k.split_once('/') else {
        return false;
    };
    runtimes
        .get(rt)
        .is_some_and(|vs| vs.iter().any(|v| v.name == vnic))
}

impl DhcpManager {
    /// The runtime in the parents' namespace, started on first use (and again after a
    /// failure, or if its thread ended).
    fn host_handle(&mut self) -> Result<tokio::runtime::Handle, String> {
        if let Some((h, t)) = &self.host
            && !t.is_finished()
        {
            return Ok(h.clone());
        }
        self.host = None;
        match parents_runtime(&self.netmon_socket, self.shutdown.clone()) {
            Ok((h, t, ns)) => {
                info!(namespace = %ns, "DHCP clients run in the parents' network namespace");
                self.host_error = None;
                self.host = Some((h.clone(), t));
                Ok(h)
            }
            Err(e) => {
                if self.host_error.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, "cannot run DHCP clients in the parents' network namespace; DHCP vNICs stay pending");
                    self.host_error = Some(e.clone());
                }
                Err(e)
            }
        }
    }
}

/// The thread whose runtime runs every client, in the namespace of netmon's socket
/// server, else in pid 1's (`Netns::Host`); which one it entered.
fn parents_runtime(
    netmon_socket: &Path,
    shutdown: CancellationToken,
) -> Result<(tokio::runtime::Handle, NsTask<()>, Netns), String> {
    let mut errors = Vec::new();
    match Netns::of_socket_server(netmon_socket) {
        Ok(ns) => match host_runtime(ns, shutdown.clone()) {
            Ok((h, t)) => return Ok((h, t, ns)),
            Err(e) => errors.push(e),
        },
        Err(e) => errors.push(format!("netmon at {}: {e}", netmon_socket.display())),
    }
    match host_runtime(Netns::Host, shutdown) {
        Ok((h, t)) => {
            info!(netmon = %errors.join("; "), "netmon's namespace is not reachable; DHCP clients use pid 1's");
            Ok((h, t, Netns::Host))
        }
        Err(e) => {
            errors.push(e);
            Err(errors.join("; "))
        }
    }
}

/// A thread in `ns` whose current-thread runtime runs every client.
fn host_runtime(
    ns: Netns,
    shutdown: CancellationToken,
) -> Result<(tokio::runtime::Handle, NsTask<()>), String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task = crate::netns::spawn_in(ns, "dhcp-host", move || async move {
        let _ = tx.send(tokio::runtime::Handle::current());
        shutdown.cancelled().await;
    })
    .map_err(|e| e.to_string())?;
    let handle = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the host-namespace thread did not start".to_string())?;
    Ok((handle, task))
}

/// The client's timings, with the cap between DISCOVER rounds from
/// `--dhcp-retry-max` (tests shorten it, so "attached as soon as a server answers"
/// is quick).
fn client_options(retry_max: Duration) -> ClientOptions {
    let mut o = ClientOptions::default();
    o.retry_max = retry_max.max(Duration::from_secs(1));
    o.retry_min = o.retry_min.min(o.retry_max);
    if o.retry_max < Duration::from_secs(10) {
        o.discover_waits = vec![Duration::from_secs(1), Duration::from_secs(2)];
    }
    o
}

impl DhcpManager {
    /// What `status` shows for one DHCP vNIC.
    pub(super) fn view(&self, runtime: &str, vnic: &str) -> crate::status::DhcpView {
        let k = key(runtime, vnic);
        let t = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        match self.store.get(&k) {
            Some(l) => crate::status::DhcpView {
                address: Some(l.cidr()),
                server: Some(l.server_id.to_string()),
                router: l.router.map(|r| r.to_string()),
                dns: l.dns.iter().map(|d| d.to_string()).collect(),
                renews_at: Some(t(l.renew_at())),
                expires_at: Some(t(l.expires_at())),
                no_lease: None,
            },
            None => crate::status::DhcpView {
                no_lease: Some(match self.waiting.get(&k) {
                    Some(n) => match n.next_try {
                        Some(at) => format!("{}; next try at {}", n.reason, t(at)),
                        None => n.reason.clone(),
                    },
                    None => "no DHCP client yet (its parent is not up with IPv4)".into(),
                }),
                ..Default::default()
            },
        }
    }
}
