//! One reconcile run: observe, plan, apply, verify, record.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime};

use serde::Serialize;

pub use crate::apply::StepResult;
use crate::apply::{self, MacOutcome};
use crate::cache::InterfaceCache;
use crate::engine::{CallCounts, ContainerInfo, Engine, EngineError, Observed};
use crate::plan::{self, Note, Step};
use crate::vnics::{MacMethod, Runtimes, VnicStore};

#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    /// Plan only: no engine change, no store write.
    pub dry_run: bool,
    /// Steps in flight at once, across all parents.
    pub parallelism: usize,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            dry_run: false,
            parallelism: 16,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct ReconcileReport {
    /// RFC 3339 start time.
    pub started: String,
    pub duration_ms: u64,
    pub dry_run: bool,
    pub steps: Vec<StepResult>,
    pub notes: Vec<Note>,
    /// Engine calls made by this run.
    pub engine_calls: CallCounts,
    /// The store could not record what this run found (e.g. it is faulted).
    pub store_error: Option<String>,
    /// What the verification pass still found wrong after applying.
    pub unconverged: Vec<Step>,
}

impl ReconcileReport {
    pub fn failed(&self) -> bool {
        self.steps.iter().any(|s| !s.ok) || !self.unconverged.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("observe the engine: {0}")]
    Engine(#[from] EngineError),
}

/// observe -> plan -> apply -> verify -> record (see the module docs of `plan` and
/// `apply`).
pub async fn reconcile(
    docker: &dyn Engine,
    store: &mut VnicStore,
    cache: &InterfaceCache,
    opts: &ReconcileOptions,
) -> Result<ReconcileReport, ReconcileError> {
    let started = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let t0 = Instant::now();
    let before = docker.counts();
    let desired = store.runtimes().clone();
    let names: Vec<String> = desired.keys().cloned().collect();

    // Look inside only the containers whose MACs the plan must check: those staying
    // attached. A container about to be reconnected gets its one check after the
    // connect, so a move costs one namespace read per container, not two.
    let mut observed = docker.observe_engine(&names).await?;
    let needs_look = staying_attached(&plan::plan(&desired, cache, &observed).steps);
    docker.read_links_of(&mut observed, &needs_look).await;
    let planned = plan::plan(&desired, cache, &observed);
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
    if opts.dry_run {
        report.steps = planned
            .steps
            .into_iter()
            .map(|step| StepResult {
                step,
                ok: true,
                error: None,
                duration_ms: 0,
            })
            .collect();
        report.engine_calls = docker.counts().since(&before);
        report.duration_ms = t0.elapsed().as_millis() as u64;
        return Ok(report);
    }

    let (final_observed, macs) = if planned.steps.is_empty() {
        (observed, Vec::new())
    } else {
        let (results, macs) = apply::execute(docker, planned.steps.clone(), opts.parallelism).await;
        report.steps = results;
        let known = known_containers(&observed, &planned.steps, &macs);
        let again = docker.observe_reusing(&names, &known).await?;
        report.unconverged = plan::plan(&desired, cache, &again).steps;
        (again, macs)
    };

    let recorded = record(&desired, &final_observed, &macs);
    if recorded != desired {
        if let Err(e) = store.update(|r| {
            // Merge per vNIC so a change made to the store during the run is not lost.
            for (c, vnics) in r.iter_mut() {
                let Some(new) = recorded.get(c) else { continue };
                for v in vnics.iter_mut() {
                    if let Some(n) = new
                        .iter()
                        .find(|n| n.name == v.name && n.parent_interface == v.parent_interface)
                    {
                        v.mac_address = n.mac_address.clone();
                        v.docker_network_name = n.docker_network_name.clone();
                        v.mac_applied = n.mac_applied;
                    }
                }
            }
        }) {
            tracing::error!(error = %e, "cannot record the reconcile's results in the vNIC store");
            report.store_error = Some(e.to_string());
        }
    } else if let Some(f) = store.fault() {
        report.store_error = Some(f.message.clone());
    }

    report.engine_calls = docker.counts().since(&before);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(
        steps = report.steps.len(),
        failed = report.failed(),
        changing_calls = report.engine_calls.changing(),
        duration_ms = report.duration_ms,
        "reconcile done"
    );
    Ok(report)
}

/// Containers with a MAC to verify on a vNIC that no step reconnects.
fn staying_attached(steps: &[Step]) -> BTreeSet<String> {
    let connected: BTreeSet<(&str, &str)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Connect {
                container, vnic, ..
            } => Some((container.as_str(), vnic.as_str())),
            _ => None,
        })
        .collect();
    steps
        .iter()
        .filter_map(|s| match s {
            Step::SetMac {
                container, vnic, ..
            } if !connected.contains(&(container.as_str(), vnic.as_str())) => {
                Some(container.clone())
            }
            _ => None,
        })
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
            | Step::SetMac { container, .. } => container.as_str(),
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

/// The store as it should read after this run: each vNIC's network, MAC and how the MAC
/// got there, from what the engine and the namespaces now show.
fn record(desired: &Runtimes, observed: &Observed, macs: &[MacOutcome]) -> Runtimes {
    let applied: BTreeMap<(&str, &str), MacMethod> = macs
        .iter()
        .map(|m| ((m.container.as_str(), m.vnic.as_str()), m.method))
        .collect();
    let mut out = desired.clone();
    for (container, vnics) in out.iter_mut() {
        let Some(ci) = observed.containers.get(container) else {
            continue;
        };
        for v in vnics.iter_mut() {
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
            v.docker_network_name = Some(net.name.clone());
            let inside = ep.ipv4.and_then(|ip| ci.link_with(ip)).and_then(|l| l.mac);
            match v.stored_mac() {
                // A stored text that is not a MAC stays as written (noted by the plan).
                None if v.bad_mac().is_some() => {}
                None => {
                    // First connect without a MAC: the engine's becomes the identity.
                    if let Some(m) = inside.or(ep.mac) {
                        v.record_mac(m);
                        v.mac_applied = Some(MacMethod::Engine);
                    }
                }
                Some(stored) => {
                    if inside == Some(stored) {
                        v.record_mac(stored);
                        if let Some(method) = applied.get(&(container.as_str(), v.name.as_str())) {
                            v.mac_applied = Some(*method);
                        }
                    }
                }
            }
        }
    }
    out
}
