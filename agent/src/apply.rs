//! Reconcile, part two: the executor. Parents run independently; within a parent the
//! phases run in order (disconnect, remove, create, connect, set MAC), and the steps
//! of one phase run in parallel, bounded across all parents by one semaphore held
//! around the engine calls (a disconnect, a connect, the MAC check's read), so the
//! engine sees at most `parallelism` of them from us at once; namespace work runs
//! beside them, and the rare fallback reads (a link not found from the plan's read)
//! are bounded by the chains in progress (twice `parallelism`). A container's links
//! are named in its own chain, or once every parent is done when its steps are on
//! several parents (`names.rs`, docs/NAMES.md).

mod names;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use ipc::MacAddr;

use crate::engine::{ContainerInfo, Engine, EngineError};
use crate::netns;
use crate::plan::{Phase, Step};
use crate::refusal::{Refusal, StepError};
use crate::vnics::MacMethod;

/// The outcome of one step.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StepResult {
    pub step: Step,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Set when the failure is one a retry does not fix (`refusal.rs`): the vNIC is
    /// `failed` with it, and the run is tried again only every `REFUSED_RETRY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

impl StepResult {
    /// Skipped because an earlier step it depends on failed.
    pub fn is_skipped(&self) -> bool {
        !self.ok
            && self
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with(SKIPPED))
    }
}

const SKIPPED: &str = "skipped: ";

/// How a vNIC's MAC was found or put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacOutcome {
    pub container: String,
    pub vnic: String,
    pub mac: MacAddr,
    pub method: MacMethod,
    /// The container as read when its MAC was verified (after its connect), with the
    /// links inside as they were after any change.
    pub info: ContainerInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum MacError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("container {0} does not exist")]
    NoContainer(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {container} has no endpoint on {network}")]
    NoEndpoint { container: String, network: String },
    #[error("no link inside {container} holds {ip}")]
    NoLink {
        container: String,
        ip: std::net::Ipv4Addr,
    },
    #[error("{0}")]
    Netns(#[from] netns::NetnsError),
    #[error("set {want} on {container}/{link}, but it reads back as {}", match .got { Some(m) => m.to_string(), None => "no MAC (link gone?)".to_string() })]
    NotApplied {
        container: String,
        link: String,
        want: MacAddr,
        got: Option<MacAddr>,
    },
    #[error("namespace worker: {0}")]
    Join(String),
    #[error("{0}")]
    Forgotten(String),
}

/// Verifies the MAC of the container's link on `network` and sets it through the
/// namespace where it is wrong.
pub async fn ensure_mac(
    engine: &dyn Engine,
    container: &str,
    network: &str,
    mac: MacAddr,
) -> Result<(MacMethod, ContainerInfo), MacError> {
    let permits = Semaphore::new(1);
    ensure_mac_with(engine, &permits, container, network, mac, None).await
}

/// [`ensure_mac`] in a run: `permits` bounds the engine calls in flight (held for the
/// engine's read only); `name` is the vNIC's name when its container's naming follows
/// in the same chain: a link whose MAC is set then gets that name in the same change
/// if no link holds it.
async fn ensure_mac_with(
    engine: &dyn Engine,
    permits: &Semaphore,
    container: &str,
    network: &str,
    mac: MacAddr,
    name: Option<&str>,
) -> Result<(MacMethod, ContainerInfo), MacError> {
    let permit = permits.acquire().await.ok();
    let info = engine.container(container).await?;
    drop(permit);
    let info = info.ok_or_else(|| MacError::NoContainer(container.to_string()))?;
    let pid = info
        .pid
        .ok_or_else(|| MacError::NotRunning(container.to_string()))?;
    if let Some(reason) = &info.ns_error {
        return Err(MacError::Join(reason.clone()));
    }
    // A link the engine forgot (docs/NAMES.md) may hold this endpoint's address and
    // the MAC: it goes before the MAC is looked at.
    let mut info = info;
    let (dropped, links) = names::drop_orphans(engine, &info)
        .await
        .map_err(MacError::Forgotten)?;
    if dropped > 0 {
        info.ns_links = links;
    }
    let endpoint = info
        .endpoints
        .iter()
        .find(|e| e.network_name == network || e.network_id == network);
    let (ip, endpoint_id) = endpoint
        .and_then(|e| Some((e.ipv4?, e.endpoint_id.clone())))
        .ok_or_else(|| MacError::NoEndpoint {
            container: container.to_string(),
            network: network.to_string(),
        })?;
    let link = info.link_with(ip).ok_or_else(|| MacError::NoLink {
        container: container.to_string(),
        ip,
    })?;
    if link.mac == Some(mac) {
        return Ok((MacMethod::Engine, info));
    }
    let link = link.clone();
    let free = |n: &&str| !info.ns_links.iter().any(|l| l.name == *n);
    let links = match name.filter(|n| *n != link.name).filter(free) {
        Some(name) => {
            let want = netns::NameWant {
                index: link.index,
                name: name.to_string(),
                endpoint: endpoint_id,
                mac: Some(mac),
            };
            engine.name_inside(pid, vec![want]).await?
        }
        None => engine.set_mac_inside(pid, &link.name, mac).await?,
    };
    let got = links
        .iter()
        .find(|l| l.index == link.index)
        .and_then(|l| l.mac);
    if got != Some(mac) {
        return Err(MacError::NotApplied {
            container: container.to_string(),
            link: link.name.clone(),
            want: mac,
            got,
        });
    }
    tracing::info!(container, link = %link.name, %mac, "MAC set through the container's namespace");
    info.ns_links = links;
    Ok((MacMethod::Netns, info))
}

/// Runs one step. The engine permit is held for the step's engine calls only: work
/// inside a namespace (the kernel's, not the engine's) runs beside them.
#[tracing::instrument(level = "debug", skip_all, fields(step = %step))]
async fn run(
    cx: Ctx<'_>,
    step: &Step,
    known: Option<&ContainerInfo>,
    named_after: bool,
) -> Result<Option<MacOutcome>, StepError> {
    let docker = cx.docker;
    // The semaphore is never closed, so acquire cannot fail; run anyway if it did.
    let permit = || async { cx.permits.acquire().await.ok() };
    let r = match step {
        Step::Disconnect {
            container, network, ..
        } => {
            names::restore_engine_name(docker, container, network, known).await?;
            let _permit = permit().await;
            docker.disconnect(container, network).await
        }
        Step::RemoveNetwork { network, .. } => {
            let _permit = permit().await;
            docker.remove_network(network).await
        }
        Step::CreateNetwork { spec, .. } => {
            let _permit = permit().await;
            docker.create_network(spec).await.map(|_| ())
        }
        Step::Connect {
            container,
            network,
            ipv4,
            mac,
            ..
        } => {
            let _permit = permit().await;
            connect(docker, container, network, *ipv4, *mac).await
        }
        // Run by `name_all` after every parent; here only if a caller chained one.
        Step::Name { container, .. } => {
            return names::name_container(docker, container, &[step], None)
                .await
                .map(|_| None);
        }
        Step::SetMac {
            container,
            vnic,
            network,
            mac,
            ..
        } => {
            let name = named_after.then_some(vnic.as_str());
            return ensure_mac_with(docker, cx.permits, container, network, *mac, name)
                .await
                .map(|(method, info)| {
                    Some(MacOutcome {
                        container: container.clone(),
                        vnic: vnic.clone(),
                        mac: *mac,
                        method,
                        info,
                    })
                })
                .map_err(|e| match &e {
                    MacError::Engine(engine) => StepError::engine(step, engine),
                    _ => StepError::transient(e.to_string()),
                });
        }
    };
    r.map(|()| None).map_err(|e| StepError::engine(step, &e))
}

/// Connects; a connect refused because a link the engine forgot still holds the MAC
/// ("address already in use", docs/NAMES.md) is retried once after deleting it.
async fn connect(
    docker: &dyn Engine,
    container: &str,
    network: &str,
    ipv4: Option<std::net::Ipv4Addr>,
    mac: Option<MacAddr>,
) -> Result<(), EngineError> {
    let r = docker.connect(container, network, ipv4, mac).await;
    let Err(e) = &r else { return r };
    if !e.to_string().contains("address already in use") {
        return r;
    }
    let Ok(Some(info)) = docker.container(container).await else {
        return r;
    };
    match names::drop_orphans(docker, &info).await {
        Ok((n, _)) if n > 0 => docker.connect(container, network, ipv4, mac).await,
        Ok(_) => r,
        Err(why) => {
            tracing::warn!(container, error = %why, "could not delete a forgotten link");
            r
        }
    }
}

/// The container a step acts on, if any.
pub fn container_of(step: &Step) -> Option<&str> {
    match step {
        Step::Disconnect { container, .. }
        | Step::Connect { container, .. }
        | Step::SetMac { container, .. }
        | Step::Name { container, .. } => Some(container),
        _ => None,
    }
}

fn skipped(step: Step, why: &str) -> (StepResult, Option<MacOutcome>) {
    (
        StepResult {
            step,
            ok: false,
            error: Some(format!("{SKIPPED}{why}")),
            duration_ms: 0,
            refusal: None,
        },
        None,
    )
}

/// The containers as the plan's observation read them, by name.
pub type Known = BTreeMap<String, ContainerInfo>;

/// What every step of one `execute` shares.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    docker: &'a dyn Engine,
    permits: &'a Semaphore,
    parallelism: usize,
    known: &'a Known,
}

/// Runs one step; `named_after`: the step's chain ends with its container's naming.
async fn run_one(cx: Ctx<'_>, step: Step, named_after: bool) -> (StepResult, Option<MacOutcome>) {
    let t = Instant::now();
    let known = container_of(&step).and_then(|c| cx.known.get(c));
    let r = run(cx, &step, known, named_after).await;
    let duration_ms = t.elapsed().as_millis() as u64;
    match r {
        Ok(mac) => {
            tracing::info!(step = %step, duration_ms, "step done");
            let ok = StepResult {
                step,
                ok: true,
                error: None,
                duration_ms,
                refusal: None,
            };
            (ok, mac)
        }
        Err(e) => {
            let permanent = e.refusal.is_some();
            tracing::warn!(step = %step, error = %e.message, permanent, "step failed");
            let failed = StepResult {
                step,
                ok: false,
                error: Some(e.message),
                duration_ms,
                refusal: e.refusal,
            };
            (failed, None)
        }
    }
}

/// Chains in progress per engine permit: while some chains work inside namespaces
/// (no engine call), the others keep the engine's permits busy.
const CHAINS_PER_PERMIT: usize = 2;

/// Runs the chains in parallel (bounded); the steps of one chain in order, the rest
/// of a chain skipped after a failure.
async fn run_chains(cx: Ctx<'_>, chains: Vec<Vec<Step>>) -> Vec<(StepResult, Option<MacOutcome>)> {
    let per_chain: Vec<Vec<(StepResult, Option<MacOutcome>)>> = futures::stream::iter(chains)
        .map(|chain| async move {
            let mut out = Vec::with_capacity(chain.len());
            let mut failed = false;
            let named_after = chain.iter().any(|s| matches!(s, Step::Name { .. }));
            for step in chain {
                if failed {
                    out.push(skipped(step, "an earlier step for this container failed"));
                    continue;
                }
                let r = match step {
                    Step::Name { .. } => {
                        let known = container_of(&step).and_then(|c| cx.known.get(c));
                        names::name_in_chain(cx.docker, step, &mut out, known).await
                    }
                    step => run_one(cx, step, named_after).await,
                };
                failed = !r.0.ok;
                out.push(r);
            }
            out
        })
        .buffer_unordered(CHAINS_PER_PERMIT * cx.parallelism.max(1))
        .collect()
        .await;
    per_chain.into_iter().flatten().collect()
}

/// One parent: disconnects, then network removals, then the creation, then per
/// container its connect followed at once by its MAC check (and its naming, when all
/// the container's steps are on this parent). Chaining the MAC check and the naming to
/// the container's own connect (rather than waiting for every connect) hides the
/// namespace work behind the engine's serialised connects of the other containers.
async fn run_parent(cx: Ctx<'_>, steps: Vec<Step>) -> Vec<(StepResult, Option<MacOutcome>)> {
    let mut phases: BTreeMap<Phase, Vec<Step>> = BTreeMap::new();
    for s in steps {
        phases.entry(s.phase()).or_default().push(s);
    }
    let mut take = |p: Phase| phases.remove(&p).unwrap_or_default();
    let (disconnects, removes, creates) = (
        take(Phase::Disconnect),
        take(Phase::RemoveNetwork),
        take(Phase::CreateNetwork),
    );
    let mut attach: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    let attaching = take(Phase::Connect).into_iter().chain(take(Phase::SetMac));
    for s in attaching.chain(take(Phase::Name)) {
        let c = container_of(&s).unwrap_or_default().to_string();
        attach.entry(c).or_default().push(s);
    }

    let single = |v: Vec<Step>| v.into_iter().map(|s| vec![s]).collect::<Vec<_>>();
    let mut out = run_chains(cx, single(disconnects)).await;
    let mut network_failed: Option<String> = None;
    for (stage, steps) in [("remove", removes), ("create", creates)] {
        if let Some(why) = &network_failed {
            out.extend(steps.into_iter().map(|s| skipped(s, why)));
            continue;
        }
        let results = run_chains(cx, single(steps)).await;
        if let Some((r, _)) = results.iter().find(|(r, _)| !r.ok) {
            network_failed = Some(match &r.step {
                Step::RemoveNetwork { network, .. } => format!("removing {network} failed"),
                Step::CreateNetwork { spec, .. } => format!("creating {} failed", spec.name),
                _ => format!("the {stage} stage failed"),
            });
        }
        out.extend(results);
    }
    match &network_failed {
        Some(why) => out.extend(attach.into_values().flatten().map(|s| skipped(s, why))),
        None => out.extend(run_chains(cx, attach.into_values().collect()).await),
    }
    out
}

/// Applies the steps; returns each step's result (in plan order) and the MACs verified.
pub async fn execute(
    docker: &dyn Engine,
    steps: Vec<Step>,
    parallelism: usize,
) -> (Vec<StepResult>, Vec<MacOutcome>) {
    execute_known(docker, steps, parallelism, &Known::new()).await
}

/// [`execute`], with the containers as the plan read them: a disconnect gives the
/// link its engine name back from the container's pid and endpoints found there
/// (one namespace read, no engine read); a container not in `known` is read.
pub async fn execute_known(
    docker: &dyn Engine,
    steps: Vec<Step>,
    parallelism: usize,
    known: &Known,
) -> (Vec<StepResult>, Vec<MacOutcome>) {
    let order: Vec<Step> = steps.clone();
    let (naming, mut steps): (Vec<Step>, Vec<Step>) = steps
        .into_iter()
        .partition(|s| matches!(s, Step::Name { .. }));
    // A container all of whose steps are on one parent is named in its own chain
    // there, right after its MAC check; the others once every parent is done.
    let mut parents: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for s in naming.iter().chain(steps.iter()) {
        if let Some(c) = container_of(s) {
            parents.entry(c).or_default().insert(s.parent());
        }
    }
    let one_parent = |s: &Step| container_of(s).is_some_and(|c| parents[c].len() == 1);
    let (chained, naming): (Vec<Step>, Vec<Step>) = naming.iter().cloned().partition(one_parent);
    steps.extend(chained);
    let mut by_parent: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for s in steps {
        by_parent.entry(s.parent().to_string()).or_default().push(s);
    }
    let permits = Arc::new(Semaphore::new(parallelism.max(1)));
    let cx = Ctx {
        docker,
        permits: &permits,
        parallelism,
        known,
    };
    let per_parent =
        futures::future::join_all(by_parent.into_values().map(|steps| run_parent(cx, steps))).await;
    let mut done: Vec<(StepResult, Option<MacOutcome>)> =
        per_parent.into_iter().flatten().collect();
    let named = names::name_all(docker, &permits, parallelism, naming, &done).await;
    for (results, links) in named {
        if let Some((c, links)) = links {
            for (_, m) in done.iter_mut() {
                if let Some(m) = m.as_mut().filter(|m| m.container == c) {
                    m.info.ns_links = links.clone();
                }
            }
        }
        done.extend(results.into_iter().map(|r| (r, None)));
    }
    let mut results = Vec::with_capacity(done.len());
    let mut macs = Vec::new();
    for s in order {
        if let Some(i) = done.iter().position(|(r, _)| r.step == s) {
            let (r, m) = done.swap_remove(i);
            results.push(r);
            macs.extend(m);
        }
    }
    (results, macs)
}
