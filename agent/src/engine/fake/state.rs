//! The fake's in-memory engine: what each call does to networks, containers and
//! the links "inside" them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipc::MacAddr;

use super::State;
use crate::engine::{
    ContainerInfo, ContainerSpec, Endpoint, EngineError, EngineEvent, NetworkInfo, NsLink,
    Observed, Pool,
};

impl State {
    pub(super) fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:04}", self.next_id)
    }

    pub(super) fn emit(&mut self, e: EngineEvent) {
        self.events.retain(|tx| tx.send(Ok(e.clone())).is_ok());
    }

    pub(super) fn container(&mut self, name: &str) -> Result<&mut ContainerInfo, EngineError> {
        self.containers
            .get_mut(name)
            .ok_or_else(|| EngineError::NotFound(format!("container {name}")))
    }

    pub(super) fn network_named(&self, name_or_id: &str) -> Option<&NetworkInfo> {
        self.networks
            .values()
            .find(|n| n.name == name_or_id || n.id == name_or_id)
    }

    pub(super) fn start(&mut self, name: &str) -> Result<u32, EngineError> {
        let pid = 10_000 + self.next_id;
        self.next_id += 1;
        let c = self.container(name)?;
        if let (true, Some(p)) = (c.running, c.pid) {
            return Ok(p);
        }
        c.running = true;
        c.pid = Some(pid);
        c.ns_links = c
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| link_for(i, e))
            .collect();
        self.emit(EngineEvent::ContainerStarted {
            name: name.to_string(),
        });
        Ok(pid)
    }

    pub(super) fn stop(&mut self, name: &str) -> Result<(), EngineError> {
        let c = self.container(name)?;
        c.running = false;
        c.pid = None;
        c.ns_links.clear();
        Ok(())
    }

    pub(super) fn create(
        &mut self,
        name: &str,
        driver: &str,
        parent: Option<&str>,
        pools: Vec<Pool>,
        labels: &BTreeMap<String, String>,
    ) -> String {
        if let Some(n) = self.networks.get(name)
            && n.driver == driver
            && n.parent.as_deref() == parent
        {
            return n.id.clone();
        }
        let id = self.new_id("net");
        self.counts.network_create += 1;
        self.networks.insert(
            name.to_string(),
            NetworkInfo {
                id: id.clone(),
                name: name.to_string(),
                driver: driver.to_string(),
                parent: parent.map(str::to_string),
                pools,
                labels: labels.clone(),
                containers: Vec::new(),
            },
        );
        id
    }

    pub(super) fn connect(
        &mut self,
        container: &str,
        network: &str,
        ipv4: Option<Ipv4Addr>,
    ) -> Result<(), EngineError> {
        let net = self
            .network_named(network)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("network {network}")))?;
        let endpoint_id = self.new_id("ep");
        let c = self.container(container)?;
        if let Some(ep) = c.endpoints.iter().find(|e| e.network_id == net.id) {
            return match ipv4.is_none() || ep.ipv4 == ipv4 {
                true => Ok(()),
                false => Err(EngineError::Api {
                    status: 403,
                    message: format!("{container} is already connected to {network}"),
                }),
            };
        }
        let ip = ipv4.or_else(|| {
            net.pools
                .first()
                .and_then(|p| p.subnet.nth(100 + c.endpoints.len() as u32))
        });
        let ep = Endpoint {
            endpoint_id,
            network_id: net.id.clone(),
            network_name: net.name.clone(),
            ipv4: ip,
            mac: Some(MacAddr::random_local()),
        };
        if c.running {
            let link = link_for(c.ns_links.len(), &ep);
            c.ns_links.push(link);
        }
        c.endpoints.push(ep);
        if let Some(n) = self.networks.get_mut(&net.name) {
            n.containers.push(container.to_string());
            n.containers.sort();
        }
        Ok(())
    }

    pub(super) fn disconnect(&mut self, container: &str, network: &str) -> Result<(), EngineError> {
        let Some(net) = self.network_named(network).cloned() else {
            return Ok(());
        };
        let c = self.container(container)?;
        if let Some(i) = c.endpoints.iter().position(|e| e.network_id == net.id) {
            let ep = c.endpoints.remove(i);
            // As 20.10 does: the engine finds the link by the name it gave it, so a
            // link renamed inside stays (docs/NAMES.md).
            let engine_named =
                |l: &NsLink| crate::netns::engine_name(l).is_none_or(|e| e == l.name);
            c.ns_links
                .retain(|l| ep.ipv4.is_none_or(|ip| !l.ipv4.contains(&ip)) || !engine_named(l));
        }
        if let Some(n) = self.networks.get_mut(&net.name) {
            n.containers.retain(|x| x != container);
        }
        Ok(())
    }

    pub(super) fn remove_network(&mut self, name_or_id: &str) -> Result<(), EngineError> {
        let Some(net) = self.network_named(name_or_id).cloned() else {
            return Ok(());
        };
        if !net.containers.is_empty() {
            return Err(EngineError::Api {
                status: 403,
                message: format!(
                    "error while removing network: network {} has active endpoints",
                    net.name
                ),
            });
        }
        self.networks.remove(&net.name);
        self.emit(EngineEvent::NetworkGone {
            name: net.name,
            id: net.id,
        });
        Ok(())
    }

    pub(super) fn create_container(&mut self, spec: &ContainerSpec) -> Result<String, EngineError> {
        if self.containers.contains_key(&spec.name) {
            return Err(EngineError::Conflict(format!(
                "create container {}: the name is already in use",
                spec.name
            )));
        }
        let id = self.new_id("ctr");
        self.containers.insert(
            spec.name.clone(),
            ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                running: false,
                pid: None,
                endpoints: Vec::new(),
                ns_links: Vec::new(),
                labels: spec.labels.clone(),
                ns_error: None,
            },
        );
        if let Some(net) = &spec.network {
            self.connect(&spec.name, net, None)?;
        }
        Ok(id)
    }

    pub(super) fn remove_container(&mut self, name: &str) {
        if self.containers.remove(name).is_none() {
            return;
        }
        for n in self.networks.values_mut() {
            n.containers.retain(|x| x != name);
        }
        self.emit(EngineEvent::ContainerGone {
            name: name.to_string(),
        });
    }

    pub(super) fn observe(&self, containers: &[String], links: bool) -> Observed {
        Observed {
            networks: self
                .networks
                .values()
                .filter(|n| n.driver == "macvlan")
                .cloned()
                .collect(),
            containers: containers
                .iter()
                .filter_map(|n| self.containers.get(n))
                .map(|c| {
                    let mut c = c.clone();
                    if !links {
                        c.ns_links.clear();
                    }
                    (c.name.clone(), c)
                })
                .collect(),
        }
    }
}

/// The link a new endpoint gets inside a running container: `ethN` with the
/// endpoint's address and the engine's MAC.
fn link_for(i: usize, ep: &Endpoint) -> NsLink {
    NsLink {
        index: 2 + i as u32,
        name: format!("eth{i}"),
        mac: ep.mac,
        ipv4: ep.ipv4.into_iter().collect(),
        up: true,
        alias: None,
    }
}
