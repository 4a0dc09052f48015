//! Reconcile, part two: the executor. Parents run independently; within a parent the
//! phases run in order (disconnect, remove, create, connect, set MAC), and the steps
//! of one phase run in parallel, bounded across all parents by one semaphore so the
//! engine never sees more than `parallelism` calls from us at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::engine::{Docker, EngineError, NsLink};
use crate::netns;
use crate::plan::{Phase, Step};
use crate::vnics::MacMethod;

/// The outcome of one step.
#[derive(Serialize, Clone, Debug)]
pub struct StepResult {
    pub step: Step,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// How a vNIC's MAC was found or put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacOutcome {
    pub container: String,
    pub vnic: String,
    pub mac: String,
    pub method: MacMethod,
    /// Every link inside the container as read when the MAC was verified.
    pub links: Vec<NsLink>,
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
    #[error("set {want} on {container}/{link}, but it reads back as {got}")]
    NotApplied {
        container: String,
        link: String,
        want: String,
        got: String,
    },
    #[error("namespace worker: {0}")]
    Join(String),
}

/// Verifies the MAC of the container's link on `network` and sets it through the
/// namespace where it is wrong.
pub async fn ensure_mac(
    docker: &Docker,
    container: &str,
    network: &str,
    mac: &str,
) -> Result<(MacMethod, Vec<NsLink>), MacError> {
    let info = docker
        .container(container)
        .await?
        .ok_or_else(|| MacError::NoContainer(container.to_string()))?;
    let pid = info
        .pid
        .ok_or_else(|| MacError::NotRunning(container.to_string()))?;
    if let Some(reason) = &info.ns_error {
        return Err(MacError::Join(reason.clone()));
    }
    let ip = info
        .endpoints
        .iter()
        .find(|e| e.network_name == network || e.network_id == network)
        .and_then(|e| e.ipv4)
        .ok_or_else(|| MacError::NoEndpoint {
            container: container.to_string(),
            network: network.to_string(),
        })?;
    let link = info.link_with(ip).ok_or_else(|| MacError::NoLink {
        container: container.to_string(),
        ip,
    })?;
    if link.mac.eq_ignore_ascii_case(mac) {
        return Ok((MacMethod::Engine, info.ns_links.clone()));
    }
    docker.count_mac_set();
    let (ifname, want) = (link.name.clone(), mac.to_string());
    let links = tokio::task::spawn_blocking(move || {
        netns::set_mac(pid, &ifname, &want)?;
        netns::read_links(pid)
    })
    .await
    .map_err(|e| MacError::Join(e.to_string()))??;
    let got = links
        .iter()
        .find(|l| l.name == link.name)
        .map(|l| l.mac.clone())
        .unwrap_or_default();
    if !got.eq_ignore_ascii_case(mac) {
        return Err(MacError::NotApplied {
            container: container.to_string(),
            link: link.name.clone(),
            want: mac.to_string(),
            got,
        });
    }
    tracing::info!(container, link = %link.name, mac, "MAC set through the container's namespace");
    Ok((MacMethod::Netns, links))
}

async fn run(docker: &Docker, step: &Step) -> Result<Option<MacOutcome>, String> {
    let r = match step {
        Step::Disconnect {
            container, network, ..
        } => docker.disconnect(container, network).await,
        Step::RemoveNetwork { network, .. } => docker.remove_network(network).await,
        Step::CreateNetwork { spec, .. } => docker.create_network(spec).await.map(|_| ()),
        Step::Connect {
            container,
            network,
            ipv4,
            mac,
            ..
        } => {
            docker
                .connect(container, network, *ipv4, Some(mac.as_str()))
                .await
        }
        Step::SetMac {
            container,
            vnic,
            network,
            mac,
            ..
        } => {
            return ensure_mac(docker, container, network, mac)
                .await
                .map(|(method, links)| {
                    Some(MacOutcome {
                        container: container.clone(),
                        vnic: vnic.clone(),
                        mac: mac.clone(),
                        method,
                        links,
                    })
                })
                .map_err(|e| e.to_string());
        }
    };
    r.map(|()| None).map_err(|e| e.to_string())
}

/// The container a step acts on, if any.
fn container_of(step: &Step) -> Option<&str> {
    match step {
        Step::Disconnect { container, .. }
        | Step::Connect { container, .. }
        | Step::SetMac { container, .. } => Some(container),
        _ => None,
    }
}

async fn run_parent(
    docker: &Docker,
    steps: Vec<Step>,
    permits: &Semaphore,
    parallelism: usize,
) -> Vec<(StepResult, Option<MacOutcome>)> {
    let mut phases: BTreeMap<Phase, Vec<Step>> = BTreeMap::new();
    for s in steps {
        phases.entry(s.phase()).or_default().push(s);
    }
    let mut out = Vec::new();
    let mut network_failed: Option<String> = None;
    let mut connect_failed: BTreeSet<String> = BTreeSet::new();
    for (phase, steps) in phases {
        let mut runnable = Vec::new();
        for s in steps {
            let blocked = match (&network_failed, phase) {
                (Some(why), Phase::CreateNetwork | Phase::Connect | Phase::SetMac) => {
                    Some(why.clone())
                }
                _ if phase == Phase::SetMac
                    && container_of(&s).is_some_and(|c| connect_failed.contains(c)) =>
                {
                    Some("its connect failed".to_string())
                }
                _ => None,
            };
            match blocked {
                Some(why) => out.push((
                    StepResult {
                        step: s,
                        ok: false,
                        error: Some(format!("skipped: {why}")),
                        duration_ms: 0,
                    },
                    None,
                )),
                None => runnable.push(s),
            }
        }
        let results: Vec<(StepResult, Option<MacOutcome>)> = futures::stream::iter(runnable)
            .map(|step| async move {
                // The semaphore is never closed, so acquire cannot fail; fall through anyway.
                let _permit = permits.acquire().await.ok();
                let t = Instant::now();
                let r = run(docker, &step).await;
                let duration_ms = t.elapsed().as_millis() as u64;
                match r {
                    Ok(mac) => {
                        tracing::info!(step = %step, duration_ms, "step done");
                        (
                            StepResult {
                                step,
                                ok: true,
                                error: None,
                                duration_ms,
                            },
                            mac,
                        )
                    }
                    Err(e) => {
                        tracing::warn!(step = %step, error = %e, "step failed");
                        (
                            StepResult {
                                step,
                                ok: false,
                                error: Some(e),
                                duration_ms,
                            },
                            None,
                        )
                    }
                }
            })
            .buffer_unordered(parallelism.max(1))
            .collect()
            .await;
        for (r, _) in &results {
            if r.ok {
                continue;
            }
            match &r.step {
                Step::RemoveNetwork { network, .. } => {
                    network_failed = Some(format!("removing {network} failed"))
                }
                Step::CreateNetwork { spec, .. } => {
                    network_failed = Some(format!("creating {} failed", spec.name))
                }
                Step::Connect { container, .. } => {
                    connect_failed.insert(container.clone());
                }
                _ => {}
            }
        }
        out.extend(results);
    }
    out
}

/// Applies the steps; returns each step's result (in plan order) and the MACs verified.
pub async fn execute(
    docker: &Docker,
    steps: Vec<Step>,
    parallelism: usize,
) -> (Vec<StepResult>, Vec<MacOutcome>) {
    let order: Vec<Step> = steps.clone();
    let mut by_parent: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for s in steps {
        by_parent.entry(s.parent().to_string()).or_default().push(s);
    }
    let permits = Arc::new(Semaphore::new(parallelism.max(1)));
    let per_parent = futures::future::join_all(
        by_parent
            .into_values()
            .map(|steps| run_parent(docker, steps, &permits, parallelism)),
    )
    .await;
    let mut done: Vec<(StepResult, Option<MacOutcome>)> =
        per_parent.into_iter().flatten().collect();
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
