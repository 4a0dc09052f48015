//! The executor's part of stable names (docs/NAMES.md): name a container's links after
//! its vNICs (and the internal bridge's `int0`) once all its connects are done, give a
//! link back its engine name before the engine disconnects it (libnetwork looks the link
//! up by the name it gave), and delete links the engine forgot (a hand disconnect of a
//! renamed link leaves it inside, holding the MAC the next connect needs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{MacOutcome, StepResult, skipped};

use crate::engine::{ContainerInfo, Endpoint, Engine};
use crate::netns::{GaveBack, NameWant, NetnsError, NsLink, endpoint_of, engine_name};
use crate::plan::{INTERNAL_IFNAME, Step};
use crate::refusal::StepError;
use crate::runtime::internal_network;

fn endpoint_on<'a>(info: &'a ContainerInfo, network: &str) -> Option<&'a Endpoint> {
    info.endpoints
        .iter()
        .find(|e| e.network_name == network || e.network_id == network)
}

/// Whether a link the agent renamed belongs to no endpoint the engine lists: the
/// engine disconnected it without finding it. Its alias names its endpoint; an alias
/// without one (none known when it was renamed) goes by the addresses.
fn is_orphan(info: &ContainerInfo, l: &NsLink) -> bool {
    match endpoint_of(l) {
        None => false,
        Some("") => {
            engine_name(l) != Some(l.name.as_str())
                && !info
                    .endpoints
                    .iter()
                    .any(|e| e.ipv4.is_some_and(|ip| l.ipv4.contains(&ip)))
        }
        Some(id) => !info.endpoints.iter().any(|e| e.endpoint_id == id),
    }
}

/// The link of `ep` among `links`: the one holding its address that is no orphan,
/// the one renamed for it first (an orphan may hold the same address).
fn link_of<'a>(info: &ContainerInfo, links: &'a [NsLink], ep: &Endpoint) -> Option<&'a NsLink> {
    let ip: Ipv4Addr = ep.ipv4?;
    let mut held = links
        .iter()
        .filter(|l| l.ipv4.contains(&ip) && !is_orphan(info, l));
    let first = held.clone().next();
    held.find(|l| endpoint_of(l) == Some(ep.endpoint_id.as_str()))
        .or(first)
}

/// Deletes the container's orphaned links; how many, and the links after.
pub(super) async fn drop_orphans(
    docker: &dyn Engine,
    info: &ContainerInfo,
) -> Result<(usize, Vec<NsLink>), String> {
    let mut links = info.ns_links.clone();
    let Some(pid) = info.pid else {
        return Ok((0, links));
    };
    let gone: Vec<&NsLink> = info
        .ns_links
        .iter()
        .filter(|l| is_orphan(info, l))
        .collect();
    for l in &gone {
        tracing::info!(container = %info.name, link = %l.name, "deleting a link the engine disconnected without finding it");
        links = docker
            .delete_inside(pid, l.index)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((gone.len(), links))
}

/// Before the engine disconnects `container` from `network`: the link on it gets back
/// the name the engine gave it, so the engine finds and removes it. `known` is the
/// container as the plan read it: its pid and endpoint locate the link with one
/// namespace read and no engine read; without it (or when the link is not found that
/// way) the container is read.
pub(super) async fn restore_engine_name(
    docker: &dyn Engine,
    container: &str,
    network: &str,
    known: Option<&ContainerInfo>,
) -> Result<(), String> {
    if let Some(info) = known.filter(|i| i.ns_error.is_none())
        && let (Some(pid), Some(ep)) = (info.pid, endpoint_on(info, network))
    {
        if !info.ns_links.is_empty() {
            if let Some(link) = link_of(info, &info.ns_links, ep) {
                return give_back(docker, container, pid, link).await;
            }
        } else {
            // The plan did not look inside: find and rename in one namespace pass.
            let r = docker
                .give_back_inside(pid, ep.endpoint_id.clone(), ep.ipv4)
                .await;
            match r {
                Ok(GaveBack::Renamed(from, to)) => {
                    tracing::debug!(container, link = %from, engine = %to, "engine name back before a disconnect");
                    return Ok(());
                }
                Ok(GaveBack::Unchanged) => return Ok(()),
                Ok(GaveBack::NotFound) => {}
                Err(e) => {
                    tracing::debug!(container, error = %e, "giving the engine name back from the plan's read failed; reading the container")
                }
            }
        }
    }
    let Some(info) = docker
        .container(container)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let (Some(pid), None) = (info.pid, &info.ns_error) else {
        return Ok(());
    };
    match endpoint_on(&info, network).and_then(|ep| link_of(&info, &info.ns_links, ep)) {
        Some(link) => give_back(docker, container, pid, link).await,
        None => Ok(()),
    }
}

/// Renames `link` (inside `pid`) back to the engine's name in its alias, if it has one.
async fn give_back(
    docker: &dyn Engine,
    container: &str,
    pid: u32,
    link: &NsLink,
) -> Result<(), String> {
    let Some(engine) = engine_name(link).filter(|e| *e != link.name) else {
        return Ok(());
    };
    tracing::debug!(container, link = %link.name, engine, "engine name back before a disconnect");
    docker
        .name_inside(
            pid,
            vec![NameWant {
                index: link.index,
                name: engine.to_string(),
                endpoint: String::new(),
                mac: None,
            }],
        )
        .await
        .map(drop)
        .map_err(|e| format!("give {} back its engine name {engine}: {e}", link.name))
}

/// Names the container's links: each `Step::Name`'s vNIC link after the vNIC, the
/// internal bridge's link [`INTERNAL_IFNAME`]; orphans deleted first. `known` is the
/// container as its MAC check read it after its last connect: used instead of a
/// read, and read again if it turns out stale. The links after.
pub(super) async fn name_container(
    docker: &dyn Engine,
    container: &str,
    steps: &[&Step],
    known: Option<&ContainerInfo>,
) -> Result<Vec<NsLink>, StepError> {
    if let Some(info) = known {
        match name_from(docker, container, steps, info.clone()).await {
            Ok(links) => return Ok(links),
            Err(e) if e.refusal.is_some() => return Err(e),
            Err(e) => {
                tracing::debug!(container, error = %e.message, "naming from the MAC check's read failed; reading again")
            }
        }
    }
    let info = docker
        .container(container)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("container {container} does not exist"))?;
    name_from(docker, container, steps, info).await
}

async fn name_from(
    docker: &dyn Engine,
    container: &str,
    steps: &[&Step],
    info: ContainerInfo,
) -> Result<Vec<NsLink>, StepError> {
    let Some(pid) = info.pid else {
        return Err(format!("container {container} is not running").into());
    };
    if let Some(reason) = &info.ns_error {
        return Err(format!("cannot read {container}'s namespace: {reason}").into());
    }
    let (_, links) = drop_orphans(docker, &info).await?;
    let mut wants: Vec<NameWant> = Vec::new();
    let want = |l: &NsLink, name: &str, ep: &Endpoint| NameWant {
        index: l.index,
        name: name.to_string(),
        endpoint: ep.endpoint_id.clone(),
        mac: None,
    };
    if let Some(ep) = endpoint_on(&info, &internal_network(container))
        && let Some(l) = link_of(&info, &links, ep)
    {
        wants.push(want(l, INTERNAL_IFNAME, ep));
    }
    for step in steps {
        let Step::Name { vnic, network, .. } = step else {
            continue;
        };
        let ep = endpoint_on(&info, network)
            .filter(|e| e.ipv4.is_some())
            .ok_or_else(|| format!("container {container} has no address on {network}"))?;
        let l = link_of(&info, &links, ep).ok_or_else(|| {
            format!(
                "no link inside {container} holds {}",
                ep.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED)
            )
        })?;
        wants.push(want(l, vnic, ep));
    }
    let named = |links: &[NsLink]| {
        wants
            .iter()
            .all(|w| links.iter().any(|l| l.index == w.index && l.name == w.name))
    };
    if named(&links) {
        return Ok(links);
    }
    let after = match docker.name_inside(pid, wants.clone()).await {
        Ok(after) => after,
        Err(NetnsError::NameTaken { to, holder, .. }) => {
            return Err(name_taken(&info, &links, &to, &holder));
        }
        Err(e) => return Err(e.to_string().into()),
    };
    if !named(&after) {
        return Err(format!(
            "renamed links inside {container}, but they do not read back as {wants:?}"
        )
        .into());
    }
    let names: Vec<(u32, &str)> = wants.iter().map(|w| (w.index, w.name.as_str())).collect();
    tracing::info!(container, ?names, "links named inside the container");
    Ok(after)
}

/// `to` is held inside the container by `holder`, a link the agent never renamed.
/// A refusal when that link is on a network the agent does not manage (or on none):
/// only the operator can free the name, and the agent never renames what is not its
/// own. On the internal bridge or a network named as the agent names its own
/// (`macvlan_...`) it is the engine's link of another vNIC awaiting its own name: a
/// later pass frees the name.
fn name_taken(info: &ContainerInfo, links: &[NsLink], to: &str, holder: &str) -> StepError {
    let held = links.iter().find(|l| l.name == holder);
    let network = held.and_then(|l| {
        info.endpoints
            .iter()
            .find(|e| e.ipv4.is_some_and(|ip| l.ipv4.contains(&ip)))
            .map(|e| e.network_name.as_str())
    });
    let ours = |n: &str| n == internal_network(&info.name) || n.starts_with("macvlan_");
    match network {
        Some(n) if ours(n) => StepError::transient(format!(
            "cannot name a link {to} inside {}: {holder} of {n} holds that name for now",
            info.name
        )),
        _ => StepError::name_held(&info.name, to, holder, network),
    }
}

/// A `Name` step at the end of its container's chain (connect, MAC check) on its one
/// parent: named from the MAC check's read when the chain made one, from the plan's
/// read (`known`) when the chain connected nothing, else read again; the MAC check's
/// outcome gets the links as they are after.
pub(super) async fn name_in_chain(
    docker: &dyn Engine,
    step: Step,
    before: &mut [(StepResult, Option<MacOutcome>)],
    known: Option<&ContainerInfo>,
) -> (StepResult, Option<MacOutcome>) {
    let t = Instant::now();
    let Step::Name { container, .. } = &step else {
        return skipped(step, "not a naming step");
    };
    let connected = before
        .iter()
        .any(|(r, _)| matches!(r.step, Step::Connect { .. }));
    let mut checked = before.iter_mut().find_map(|(_, m)| m.as_mut());
    let read = match (&checked, connected) {
        (Some(m), _) => Some(&m.info),
        (None, false) => known,
        (None, true) => None,
    };
    let r = name_container(docker, container, &[&step], read.cloned().as_ref()).await;
    if let (Ok(links), Some(m)) = (&r, checked.as_mut()) {
        m.info.ns_links = links.clone();
    }
    if let Err(e) = &r {
        tracing::warn!(%container, error = %e.message, permanent = e.refusal.is_some(), "naming links failed");
    }
    let duration_ms = t.elapsed().as_millis() as u64;
    let error = r.err();
    let result = StepResult {
        step,
        ok: error.is_none(),
        error: error.as_ref().map(|e| e.message.clone()),
        duration_ms,
        refusal: error.and_then(|e| e.refusal),
    };
    (result, None)
}

/// One container's naming pass: its `Name` steps' results, and its links after.
pub(super) type Named = (Vec<StepResult>, Option<(String, Vec<crate::netns::NsLink>)>);

/// Runs each container's naming pass (bounded like the other steps). A vNIC whose
/// connect or MAC step failed this run is not named (skipped, as in a chain).
pub(super) async fn name_all(
    docker: &dyn Engine,
    permits: &Semaphore,
    parallelism: usize,
    naming: Vec<Step>,
    done: &[(StepResult, Option<MacOutcome>)],
) -> Vec<Named> {
    let failed = |c: &str, v: &str| {
        done.iter().any(|(r, _)| {
            !r.ok
                && matches!(&r.step, Step::Connect { container, vnic, .. } | Step::SetMac { container, vnic, .. } if container == c && vnic == v)
        })
    };
    let mut by_container: BTreeMap<String, (Vec<Step>, Vec<Step>)> = BTreeMap::new();
    for s in naming {
        let Step::Name {
            container, vnic, ..
        } = &s
        else {
            continue;
        };
        let e = by_container.entry(container.clone()).or_default();
        if failed(container, vnic) {
            e.1.push(s);
        } else {
            e.0.push(s);
        }
    }
    futures::stream::iter(by_container)
        .map(|(c, (run, skip))| async move {
            let mut out: Vec<StepResult> = skip
                .into_iter()
                .map(|s| skipped(s, "an earlier step for this vNIC failed").0)
                .collect();
            if run.is_empty() {
                return (out, None);
            }
            let _permit = permits.acquire().await.ok();
            let t = Instant::now();
            // The MAC check's read is the container after its connect when it was its
            // only one (one vNIC changed this run).
            let mut checks = done
                .iter()
                .filter_map(|(_, m)| m.as_ref())
                .filter(|m| m.container == c);
            let known = match (checks.next(), checks.next(), run.len()) {
                (Some(m), None, 1) => Some(&m.info),
                _ => None,
            };
            let steps: Vec<&Step> = run.iter().collect();
            let r = name_container(docker, &c, &steps, known).await;
            let duration_ms = t.elapsed().as_millis() as u64;
            if let Err(e) = &r {
                tracing::warn!(container = %c, error = %e.message, permanent = e.refusal.is_some(), "naming links failed");
            }
            let error = r.as_ref().err().cloned();
            out.extend(run.into_iter().map(|step| StepResult {
                step,
                ok: error.is_none(),
                error: error.as_ref().map(|e| e.message.clone()),
                duration_ms,
                refusal: error.as_ref().and_then(|e| e.refusal.clone()),
            }));
            (out, r.ok().map(|links| (c, links)))
        })
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await
}
