//! Reads: networks, containers, the links inside running containers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::errors::Error as BError;
use bollard::models::NetworkInspect;
use bollard::query_parameters::ListNetworksOptions;
use futures::{StreamExt, TryStreamExt};

use super::convert::{container_info, network_info};
use super::{Docker, OBSERVE_PARALLELISM, bump};
use crate::engine::{ContainerInfo, EngineError, NetworkInfo, Observed};
use crate::netns::{self, Netns};

impl Docker {
    pub(super) async fn inspect_network(
        &self,
        c: &bollard::Docker,
        id: &str,
    ) -> Result<Option<NetworkInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        match c.inspect_network(id, None).await {
            Ok(n) => Ok(Some(network_info(n))),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(&format!("inspect network {id}"), e).await),
        }
    }

    /// Every network whose name or id is `name` (the engine's `name` filter is a substring
    /// match, so results are filtered exactly here).
    pub(super) async fn networks_named(
        &self,
        c: &bollard::Docker,
        name: &str,
    ) -> Result<Vec<NetworkInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let list = c
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await;
        let list = match list {
            Ok(l) => l,
            Err(e) => return Err(self.fail("list networks", e).await),
        };
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .map(|n| {
                network_info(NetworkInspect {
                    name: n.name,
                    id: n.id,
                    driver: n.driver,
                    ipam: n.ipam,
                    options: n.options,
                    labels: n.labels,
                    ..Default::default()
                })
            })
            .collect())
    }

    pub(super) async fn inspect_container(
        &self,
        c: &bollard::Docker,
        name: &str,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        match c.inspect_container(name, None).await {
            Ok(r) => Ok(Some(container_info(r))),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(&format!("inspect container {name}"), e).await),
        }
    }

    /// One container, with its namespace links when running.
    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let c = self.client().await?;
        let Some(mut info) = self.inspect_container(&c, name).await? else {
            return Ok(None);
        };
        self.read_links(&mut info).await;
        Ok(Some(info))
    }

    /// Reads a running container's links through its namespace (one MAC check);
    /// a failure is kept in `ns_error`.
    pub async fn read_links(&self, info: &mut ContainerInfo) {
        let Some(pid) = info.pid else { return };
        self.count_mac_check();
        info.ns_error = None;
        match netns::read_links(Netns::Pid(pid)).await {
            Ok(links) => info.ns_links = links,
            Err(e) => info.ns_error = Some(e.to_string()),
        }
    }

    /// Reads the links of the named containers of `observed` (see [`Docker::read_links`]).
    pub async fn read_links_of(&self, observed: &mut Observed, names: &BTreeSet<String>) {
        let wanted = observed
            .containers
            .values_mut()
            .filter(|c| names.contains(&c.name));
        futures::stream::iter(wanted)
            .for_each_concurrent(OBSERVE_PARALLELISM, |c| self.read_links(c))
            .await;
    }

    /// All macvlan networks and the named containers, without reading inside them.
    pub async fn observe_engine(&self, containers: &[String]) -> Result<Observed, EngineError> {
        let c = self.client().await?;
        // Owned names: a closure over borrowed items makes the future not `Send`
        // enough for a boxed trait future (a higher-ranked lifetime).
        let c = &c;
        let found: Vec<Option<ContainerInfo>> = futures::stream::iter(containers.to_vec())
            .map(|name| async move { self.inspect_container(c, &name).await })
            .buffered(OBSERVE_PARALLELISM)
            .try_collect()
            .await?;
        Ok(Observed {
            networks: self.macvlan_networks(c).await?,
            containers: found
                .into_iter()
                .flatten()
                .map(|c| (c.name.clone(), c))
                .collect(),
        })
    }

    /// All macvlan networks and the named containers (absent ones are left out).
    pub async fn observe(&self, containers: &[String]) -> Result<Observed, EngineError> {
        self.observe_reusing(containers, &BTreeMap::new()).await
    }

    /// Like [`Docker::observe`], but a container listed in `known` is taken from there
    /// instead of being read again (the verification pass after a run already holds
    /// what each container's MAC check read after its connect).
    pub async fn observe_reusing(
        &self,
        containers: &[String],
        known: &BTreeMap<String, ContainerInfo>,
    ) -> Result<Observed, EngineError> {
        let c = self.client().await?;
        let networks = self.macvlan_networks(&c).await?;
        let found: Vec<Option<ContainerInfo>> = futures::stream::iter(containers.to_vec())
            .map(|name| async move {
                match known.get(&name) {
                    Some(info) => Ok(Some(info.clone())),
                    None => self.container(&name).await,
                }
            })
            .buffered(OBSERVE_PARALLELISM)
            .try_collect()
            .await?;
        Ok(Observed {
            networks,
            containers: found
                .into_iter()
                .flatten()
                .map(|c| (c.name.clone(), c))
                .collect(),
        })
    }

    pub(super) async fn macvlan_networks(
        &self,
        c: &bollard::Docker,
    ) -> Result<Vec<NetworkInfo>, EngineError> {
        bump(&self.inner.counters.reads);
        let filters = HashMap::from([("driver".to_string(), vec!["macvlan".to_string()])]);
        let list = match c
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
        {
            Ok(l) => l,
            Err(e) => return Err(self.fail("list networks", e).await),
        };
        let mut networks = Vec::new();
        // The list omits attached containers on 20.10; inspect has them.
        for n in list {
            let Some(id) = n.id else { continue };
            if let Some(info) = self.inspect_network(c, &id).await? {
                networks.push(info);
            }
        }
        Ok(networks)
    }

    /// Every network (any driver), without attached containers.
    pub async fn list_networks(&self) -> Result<Vec<NetworkInfo>, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        match c.list_networks(None::<ListNetworksOptions>).await {
            Ok(list) => Ok(list
                .into_iter()
                .map(|n| {
                    network_info(NetworkInspect {
                        name: n.name,
                        id: n.id,
                        driver: n.driver,
                        ipam: n.ipam,
                        options: n.options,
                        labels: n.labels,
                        ..Default::default()
                    })
                })
                .collect()),
            Err(e) => Err(self.fail("list networks", e).await),
        }
    }
}
