//! One reconcile run: observe, plan, apply, verify. The run borrows the desired
//! state and returns its report plus the records to merge ([`Record`]); the task that
//! owns the vNIC store merges them (netavark's `setup()` returning a `StatusBlock`).
//!
//! Over 400 lines: the run, its report's rendering, the records and their merge, and the
//! choice of which containers to look inside.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Instant, SystemTime};

use ipc::MacAddr;
use serde::{Deserialize, Serialize};

pub use crate::apply::StepResult;
use crate::apply::{self, MacOutcome};
use crate::cache::InterfaceCache;
use crate::engine::{CallCounts, ContainerInfo, Engine, EngineError, NetworkInfo, Observed};
use crate::plan::{self, Note, Step};
use crate::vnics::{MacMethod, NetworkMode, Runtimes, Vnic, VnicStore};

#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    /// Plan only: no engine change, no store write.
    pub dry_run: bool,
    /// Steps in flight at once, across all parents.
    pub parallelism: usize,
    /// Parents whose link was re-created: their runtimes are reconnected.
    pub reattach: BTreeSet<String>,
    /// DHCP vNICs' leased addresses; `None`: engine IPAM (see [`plan::DhcpLeases`]).
    pub leases: Option<plan::DhcpLeases>,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            dry_run: false,
            parallelism: 16,
            reattach: BTreeSet::new(),
            leases: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReconcileReport {
    /// RFC 3339 start time.
    pub started: String,
    pub duration_ms: u64,
    pub dry_run: bool,
    pub steps: Vec<StepResult>,
    pub notes: Vec<Note>,
    /// Engine calls made by this run.
    pub engine_calls: CallCounts,
    /// The store could not record what this run found (e.g. it is faulted); set by
    /// the store's owner after merging.
    pub store_error: Option<String>,
    /// What the verification pass still found wrong after applying.
    pub unconverged: Vec<Step>,
}

impl ReconcileReport {
    pub fn failed(&self) -> bool {
        self.steps.iter().any(|s| !s.ok) || !self.unconverged.is_empty()
    }

    /// Failed, and only by refusals a retry does not fix (`refusal.rs`): every failed
    /// step is refused or skipped after a failure, and every step the verify still
    /// finds to do is on a container (or, for network steps, a parent) with a refused
    /// step. The daemon then tries again at the backoff's cap, not on its fast schedule.
    pub fn only_refused(&self) -> bool {
        let refused: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| s.refusal.is_some())
            .map(|s| &s.step)
            .collect();
        if refused.is_empty() {
            return false;
        }
        let covered = |step: &Step| {
            refused.iter().any(
                |r| match (apply::container_of(r), apply::container_of(step)) {
                    (Some(a), Some(b)) => a == b,
                    _ => r.parent() == step.parent(),
                },
            )
        };
        self.steps
            .iter()
            .all(|s| s.ok || s.refusal.is_some() || s.is_skipped())
            && self.unconverged.iter().all(covered)
    }
}

impl StepResult {
    /// A step of a dry run: planned, not taken.
    pub fn planned(step: Step) -> StepResult {
        StepResult {
            step,
            ok: true,
            error: None,
            duration_ms: 0,
            refusal: None,
        }
    }
}

/// `agent reconcile`: one line per step, `[eth1] connect plc1/eth0 to NET ... ok 48 ms`.
impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.error, self.ok) {
            (None, true) => write!(f, "{} ... ok {} ms", self.step, self.duration_ms),
            (Some(e), _) => match &self.refusal {
                Some(r) => write!(f, "{} ... REFUSED: {e} ({})", self.step, r.what_to_do),
                None => write!(f, "{} ... FAILED: {e}", self.step),
            },
            (None, false) => write!(f, "{} ... FAILED", self.step),
        }
    }
}

/// The whole report: steps (or "planned" lines), notes, what is still wrong, and a
/// one-line summary.
impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            writeln!(f, "nothing to do: every vNIC is where it should be")?;
        }
        for s in &self.steps {
            if self.dry_run {
                writeln!(f, "{} ... planned", s.step)?;
            } else {
                writeln!(f, "{s}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for u in &self.unconverged {
            writeln!(f, "still to do: {u}")?;
        }
        if let Some(e) = &self.store_error {
            writeln!(f, "store: could not record the results: {e}")?;
        }
        let failed = self.steps.iter().filter(|s| !s.ok).count();
        let calls = &self.engine_calls;
        writeln!(
            f,
            "{} {} step{}{} in {} ms; engine calls: {} changing, {} reads, {} MAC checks",
            if self.dry_run { "planned" } else { "done:" },
            self.steps.len(),
            if self.steps.len() == 1 { "" } else { "s" },
            if failed > 0 {
                format!(", {failed} FAILED")
            } else {
                String::new()
            },
            self.duration_ms,
            calls.changing(),
            calls.reads,
            calls.mac_checks
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("observe the engine: {0}")]
    Engine(#[from] EngineError),
}

/// What one vNIC's record in the store should now say.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub runtime: String,
    pub vnic: String,
    pub parent: String,
    pub mac_address: Option<MacAddr>,
    pub docker_network_name: Option<String>,
    pub mac_applied: Option<MacMethod>,
}

/// A run's findings: the report for the caller, the records for the store's owner.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub report: ReconcileReport,
    pub records: Vec<Record>,
    /// (network, container id) of every disconnect this run made, and (network, "")
    /// of every network it removed: the engine's events for them are echoes, not a
    /// runtime knocked off its LAN.
    pub disconnected: Vec<(String, String)>,
    /// The runtimes whose containers the run (a real one) found running at its end.
    pub running: BTreeSet<String>,
    /// The engine's ids of the runtimes' containers as this run found them (engine
    /// events name containers by id).
    pub container_ids: BTreeSet<String>,
}

/// observe -> plan -> apply -> verify. Nothing here writes the store.
pub async fn reconcile(
    docker: &dyn Engine,
    desired: &Runtimes,
    cache: &InterfaceCache,
    opts: &ReconcileOptions,
) -> Result<Outcome, ReconcileError> {
    let started = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let t0 = Instant::now();
    let before = docker.counts();
    let names: Vec<String> = desired.keys().cloned().collect();

    // Look inside only the containers whose MACs the plan must check: those staying
    // attached. A container about to be reconnected gets its one check after the
    // connect, so a move costs one namespace read per container, not two.
    let mut observed = docker.observe_engine(&names).await?;
    let observed_ids: BTreeSet<String> =
        observed.containers.values().map(|c| c.id.clone()).collect();
    let inspect = staying_attached(desired, cache, &observed, opts.leases.as_ref());
    docker.read_links_of(&mut observed, &inspect).await;
    let observe_ms = t0.elapsed().as_millis() as u64;
    let mut apply_ms = 0;
    let planned = plan::plan_with(
        desired,
        cache,
        &observed,
        &opts.reattach,
        opts.leases.as_ref(),
    );
    let mut report = ReconcileReport {
        started,
        duration_ms: 0,
        dry_run: opts.dry_run,
        steps: Vec::new(),
        notes: planned.notes.clone(),
        engine_calls: CallCounts::default(),
        store_error: None,
        unconverged: Vec::new(),
    };
    let mut records = Vec::new();
    let mut disconnected = Vec::new();
    let mut running = BTreeSet::new();
    if opts.dry_run {
        report.steps = planned.steps.into_iter().map(StepResult::planned).collect();
    } else {
        let (final_observed, macs) = if planned.steps.is_empty() {
            (observed, Vec::new())
        } else {
            let (results, macs) = apply::execute_known(
                docker,
                planned.steps.clone(),
                opts.parallelism,
                &observed.containers,
            )
            .await;
            apply_ms = t0.elapsed().as_millis() as u64 - observe_ms;
            report.steps = results;
            disconnected = own_disconnects(&report.steps, &observed);
            let known = known_containers(&observed, &planned.steps, &macs);
            let again = docker.observe_reusing(&names, &known).await?;
            let none = BTreeSet::new();
            report.unconverged =
                plan::plan_with(desired, cache, &again, &none, opts.leases.as_ref()).steps;
            (again, macs)
        };
        records = record(desired, &final_observed, &macs);
        running = final_observed
            .containers
            .iter()
            .filter(|(_, c)| c.running)
            .map(|(n, _)| n.clone())
            .collect();
    }
    report.engine_calls = docker.counts().since(&before);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(
        steps = report.steps.len(),
        failed = report.failed(),
        changing_calls = report.engine_calls.changing(),
        duration_ms = report.duration_ms,
        observe_ms,
        apply_ms,
        dry_run = opts.dry_run,
        "reconcile done"
    );
    let container_ids = observed_ids;
    Ok(Outcome {
        container_ids,
        report,
        records,
        disconnected,
        running,
    })
}

/// The disconnects a run made, as the engine's events name them.
fn own_disconnects(steps: &[StepResult], observed: &Observed) -> Vec<(String, String)> {
    steps
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| match &s.step {
            Step::Disconnect {
                container, network, ..
            } => observed
                .containers
                .get(container)
                .map(|c| (network.clone(), c.id.clone())),
            Step::RemoveNetwork { network, .. } => Some((network.clone(), String::new())),
            _ => None,
        })
        .collect()
}

/// The store's owner records a run's findings; returns the store's error when it
/// could not (faulted, or the write failed), for the run's report.
pub fn record_into(store: &mut VnicStore, records: &[Record]) -> Option<String> {
    if !records.iter().any(|r| differs(store.runtimes(), r)) {
        return store.fault().map(|f| f.message.clone());
    }
    match store.update(|r| merge(r, records)) {
        Ok(_) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot record the reconcile's results in the vNIC store");
            Some(e.to_string())
        }
    }
}

fn find_mut<'a>(runtimes: &'a mut Runtimes, r: &Record) -> Option<&'a mut Vnic> {
    runtimes
        .get_mut(&r.runtime)?
        .iter_mut()
        .find(|v| v.name == r.vnic && v.parent_interface == r.parent)
}

/// Whether merging `r` would change its vNIC.
fn differs(runtimes: &Runtimes, r: &Record) -> bool {
    runtimes
        .get(&r.runtime)
        .and_then(|vnics| {
            vnics
                .iter()
                .find(|v| v.name == r.vnic && v.parent_interface == r.parent)
        })
        .is_some_and(|v| {
            // Compared as MACs, so a stored upper-case text is not rewritten.
            (r.mac_address.is_some()
                && r.mac_address
                    != v.mac_address
                        .as_deref()
                        .and_then(|t| t.parse::<MacAddr>().ok()))
                || (r.docker_network_name.is_some()
                    && r.docker_network_name != v.docker_network_name)
                || (r.mac_applied.is_some() && r.mac_applied != v.mac_applied)
        })
}

/// Writes `records` into `runtimes`, per vNIC (matched by runtime, name and parent),
/// so a runtime created or deleted while the run was in flight is neither lost nor
/// brought back. Returns whether anything changed.
pub fn merge(runtimes: &mut Runtimes, records: &[Record]) -> bool {
    let mut changed = false;
    for r in records {
        if !differs(runtimes, r) {
            continue;
        }
        let Some(v) = find_mut(runtimes, r) else {
            continue;
        };
        if let Some(m) = r.mac_address
            && v.mac_address
                .as_deref()
                .and_then(|t| t.parse::<MacAddr>().ok())
                != Some(m)
        {
            v.record_mac(m);
        }
        if r.docker_network_name.is_some() {
            v.docker_network_name = r.docker_network_name.clone();
        }
        if r.mac_applied.is_some() {
            v.mac_applied = r.mac_applied;
        }
        changed = true;
    }
    changed
}

/// Running containers with a vNIC whose endpoint on a macvlan network of its parent
/// already has the address it should keep: their MACs are checked in place. The rest
/// are reconnected, and each gets its one check after the connect.
fn staying_attached(
    desired: &Runtimes,
    cache: &InterfaceCache,
    observed: &Observed,
    leases: Option<&plan::DhcpLeases>,
) -> BTreeSet<String> {
    // Staying means: the network already carries the parent's current LAN subnet
    // (else it is replaced), and the address is one the vNIC keeps.
    let keeps = |rt: &str, v: &Vnic, n: &NetworkInfo, ip: std::net::Ipv4Addr| {
        let Some(lan) = cache.lan(&v.parent_interface) else {
            return false;
        };
        let lan_net = (lan.subnet.network(), lan.subnet.prefix());
        n.pools
            .iter()
            .any(|p| (p.subnet.network(), p.subnet.prefix()) == lan_net)
            && match v.network_mode {
                NetworkMode::Static => v.ip == Some(ip),
                NetworkMode::Dhcp => match leases {
                    None => lan.subnet.contains(ip),
                    Some(l) => l.get(&(rt.to_string(), v.name.clone())) == Some(&ip),
                },
            }
    };
    desired
        .iter()
        .filter(|(name, vnics)| {
            let Some(ci) = observed.containers.get(*name).filter(|c| c.running) else {
                return false;
            };
            vnics.iter().any(|v| {
                observed
                    .networks
                    .iter()
                    .filter(|n| {
                        n.driver == "macvlan"
                            && n.parent.as_deref() == Some(v.parent_interface.as_str())
                    })
                    .any(|n| {
                        ci.endpoint_on(n)
                            .and_then(|e| e.ipv4)
                            .is_some_and(|ip| keeps(name, v, n, ip))
                    })
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Containers the verification pass need not read again: those no step touched (read
/// at the start of this run), and those read by their only MAC check when all their
/// steps were on one parent (the check ran after their last change).
fn known_containers(
    observed: &Observed,
    steps: &[Step],
    macs: &[MacOutcome],
) -> BTreeMap<String, ContainerInfo> {
    let mut touched: BTreeMap<&str, (BTreeSet<&str>, usize)> = BTreeMap::new();
    for s in steps {
        let c = match s {
            Step::Disconnect { container, .. }
            | Step::Connect { container, .. }
            | Step::SetMac { container, .. }
            | Step::Name { container, .. } => container.as_str(),
            _ => continue,
        };
        let e = touched.entry(c).or_default();
        e.0.insert(s.parent());
        if matches!(s, Step::SetMac { .. }) {
            e.1 += 1;
        }
    }
    let mut known = BTreeMap::new();
    for (name, ci) in &observed.containers {
        if !touched.contains_key(name.as_str()) && ci.ns_error.is_none() {
            known.insert(name.clone(), ci.clone());
        }
    }
    for m in macs {
        if let Some((parents, 1)) = touched.get(m.container.as_str())
            && parents.len() == 1
        {
            known.insert(m.container.clone(), m.info.clone());
        }
    }
    known
}

/// What the store should record after this run: each vNIC's network, MAC and how the
/// MAC got there, from what the engine and the namespaces now show.
fn record(desired: &Runtimes, observed: &Observed, macs: &[MacOutcome]) -> Vec<Record> {
    let applied: BTreeMap<(&str, &str), MacMethod> = macs
        .iter()
        .map(|m| ((m.container.as_str(), m.vnic.as_str()), m.method))
        .collect();
    let mut out = Vec::new();
    for (container, vnics) in desired {
        let Some(ci) = observed.containers.get(container) else {
            continue;
        };
        for v in vnics {
            let Some((net, ep)) = ci.endpoints.iter().find_map(|ep| {
                observed
                    .networks
                    .iter()
                    .find(|n| {
                        (n.id == ep.network_id || n.name == ep.network_name)
                            && n.driver == "macvlan"
                            && n.parent.as_deref() == Some(v.parent_interface.as_str())
                    })
                    .map(|n| (n, ep))
            }) else {
                continue;
            };
            let mut r = Record {
                runtime: container.clone(),
                vnic: v.name.clone(),
                parent: v.parent_interface.clone(),
                mac_address: None,
                docker_network_name: Some(net.name.clone()),
                mac_applied: None,
            };
            let inside = ep.ipv4.and_then(|ip| ci.link_with(ip)).and_then(|l| l.mac);
            match v.stored_mac() {
                // A stored text that is not a MAC stays as written (noted by the plan).
                None if v.bad_mac().is_some() => {}
                None => {
                    // First connect without a MAC: the engine's becomes the identity.
                    if let Some(m) = inside.or(ep.mac) {
                        r.mac_address = Some(m);
                        r.mac_applied = Some(MacMethod::Engine);
                    }
                }
                Some(stored) => {
                    if inside == Some(stored) {
                        r.mac_address = Some(stored);
                        r.mac_applied =
                            applied.get(&(container.as_str(), v.name.as_str())).copied();
                    }
                }
            }
            out.push(r);
        }
    }
    out
}
