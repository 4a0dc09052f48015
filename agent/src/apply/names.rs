//! The executor's part of stable names (docs/NAMES.md): name a container's links after
//! its vNICs (and the internal bridge's `int0`) once all its connects are done, give a
//! link back its engine name before the engine disconnects it (libnetwork looks the link
//! up by the name it gave), and delete links the engine forgot (a hand disconnect of a
//! renamed link leaves it inside, holding the MAC the next connect needs).

use std::net::Ipv4Addr;

use crate::engine::{ContainerInfo, Engine};
use crate::netns::{NsLink, engine_name};
use crate::plan::{INTERNAL_IFNAME, Step};
use crate::runtime::internal_network;

fn ip_on(info: &ContainerInfo, network: &str) -> Option<Ipv4Addr> {
    info.endpoints
        .iter()
        .find(|e| e.network_name == network || e.network_id == network)
        .and_then(|e| e.ipv4)
}

fn link_with(links: &[NsLink], ip: Ipv4Addr) -> Option<&NsLink> {
    links.iter().find(|l| l.ipv4.contains(&ip))
}

/// Links the agent renamed that hold no address of any endpoint the engine lists: the
/// engine disconnected them without finding them.
fn orphans(info: &ContainerInfo) -> Vec<&NsLink> {
    info.ns_links
        .iter()
        .filter(|l| engine_name(l).is_some_and(|e| e != l.name))
        .filter(|l| {
            !info
                .endpoints
                .iter()
                .any(|e| e.ipv4.is_some_and(|ip| l.ipv4.contains(&ip)))
        })
        .collect()
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
    let gone = orphans(info);
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
/// the name the engine gave it, so the engine finds and removes it.
pub(super) async fn restore_engine_name(
    docker: &dyn Engine,
    container: &str,
    network: &str,
) -> Result<(), String> {
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
    let Some(link) = ip_on(&info, network).and_then(|ip| link_with(&info.ns_links, ip)) else {
        return Ok(());
    };
    let Some(engine) = engine_name(link).filter(|e| *e != link.name) else {
        return Ok(());
    };
    tracing::debug!(container, link = %link.name, engine, "engine name back before a disconnect");
    docker
        .name_inside(pid, vec![(link.index, engine.to_string())])
        .await
        .map(drop)
        .map_err(|e| format!("give {} back its engine name {engine}: {e}", link.name))
}

/// Names the container's links: each `Step::Name`'s vNIC link after the vNIC, the
/// internal bridge's link [`INTERNAL_IFNAME`]; orphans deleted first. The links after.
pub(super) async fn name_container(
    docker: &dyn Engine,
    container: &str,
    steps: &[&Step],
) -> Result<Vec<NsLink>, String> {
    let info = docker
        .container(container)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("container {container} does not exist"))?;
    let Some(pid) = info.pid else {
        return Err(format!("container {container} is not running"));
    };
    if let Some(reason) = &info.ns_error {
        return Err(format!("cannot read {container}'s namespace: {reason}"));
    }
    let (_, links) = drop_orphans(docker, &info).await?;
    let mut wants: Vec<(u32, String)> = Vec::new();
    if let Some(l) = ip_on(&info, &internal_network(container)).and_then(|ip| link_with(&links, ip))
    {
        wants.push((l.index, INTERNAL_IFNAME.to_string()));
    }
    for step in steps {
        let Step::Name { vnic, network, .. } = step else {
            continue;
        };
        let ip = ip_on(&info, network)
            .ok_or_else(|| format!("container {container} has no address on {network}"))?;
        let l = link_with(&links, ip)
            .ok_or_else(|| format!("no link inside {container} holds {ip}"))?;
        wants.push((l.index, vnic.clone()));
    }
    let named = |links: &[NsLink]| {
        wants
            .iter()
            .all(|(i, n)| links.iter().any(|l| l.index == *i && l.name == *n))
    };
    if named(&links) {
        return Ok(links);
    }
    let after = docker
        .name_inside(pid, wants.clone())
        .await
        .map_err(|e| e.to_string())?;
    if !named(&after) {
        return Err(format!(
            "renamed links inside {container}, but they do not read back as {wants:?}"
        ));
    }
    tracing::info!(container, names = ?wants, "links named inside the container");
    Ok(after)
}
