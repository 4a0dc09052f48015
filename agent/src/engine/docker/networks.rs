//! Network changes: create and remove networks, connect and disconnect containers.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use bollard::errors::Error as BError;
use bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest,
};
use ipc::MacAddr;
use ipnetwork::Ipv4Network;

use super::{Docker, bump};
use crate::engine::{Endpoint, EngineError, NetworkSpec};

impl Docker {
    /// returned instead (20.10 would otherwise accept a duplicate name).
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<String, EngineError> {
        let c = self.client().await?;
        if let Some(n) = self
            .networks_named(&c, &spec.name)
            .await?
            .into_iter()
            .find(|n| n.driver == "macvlan" && n.parent.as_deref() == Some(spec.parent.as_str()))
        {
            return Ok(n.id);
        }
        let config = spec
            .pools
            .iter()
            .map(|p| {
                // IPAM refuses an auxiliary address outside its pool's subnet.
                let aux: HashMap<String, String> = spec
                    .aux
                    .iter()
                    .filter(|(_, a)| p.subnet.contains(*a))
                    .map(|(k, a)| (k.clone(), a.to_string()))
                    .collect();
                let range = spec
                    .ip_range
                    .filter(|r| p.subnet.contains(r.network()))
                    .map(|r| r.to_string());
                IpamConfig {
                    subnet: Some(p.subnet.to_string()),
                    gateway: p.gateway.map(|g| g.to_string()),
                    auxiliary_addresses: (!aux.is_empty()).then_some(aux),
                    ip_range: range,
                }
            })
            .collect();
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("macvlan".to_string()),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(config),
                options: None,
            }),
            options: Some(HashMap::from([
                ("parent".to_string(), spec.parent.clone()),
                ("macvlan_mode".to_string(), "bridge".to_string()),
            ])),
            labels: Some(spec.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        bump(&self.inner.counters.network_create);
        match c.create_network(req).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self.fail(&format!("create network {}", spec.name), e).await),
        }
    }

    /// An internal bridge network (a runtime's `NAME_internal`); existing = its id.
    pub async fn create_internal_network(
        &self,
        name: &str,
        subnet: Ipv4Network,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, EngineError> {
        let c = self.client().await?;
        if let Some(n) = self
            .networks_named(&c, name)
            .await?
            .into_iter()
            .find(|n| n.driver == "bridge")
        {
            return Ok(n.id);
        }
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            internal: Some(true),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(crate::internal_pool::gateway(subnet).to_string()),
                    auxiliary_addresses: None,
                    ip_range: None,
                }]),
                options: None,
            }),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        bump(&self.inner.counters.network_create);
        match c.create_network(req).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self.fail(&format!("create network {name}"), e).await),
        }
    }

    /// Removes a network; one that is already gone is success.
    pub async fn remove_network(&self, name_or_id: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.network_remove);
        match c.remove_network(name_or_id).await {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("remove network {name_or_id}"), e).await),
        }
    }

    /// The container's endpoint on a network, by network name or id.
    pub(super) async fn endpoint(
        &self,
        c: &bollard::Docker,
        container: &str,
        network: &str,
    ) -> Result<Option<Endpoint>, EngineError> {
        let Some(info) = self.inspect_container(c, container).await? else {
            return Err(EngineError::NotFound(format!("container {container}")));
        };
        Ok(info
            .endpoints
            .into_iter()
            .find(|e| e.network_name == network || e.network_id == network))
    }

    /// Connects a container. Already connected with the same address is success; this
    /// is decided by looking at the container, not at the engine's error text.
    pub async fn connect(
        &self,
        container: &str,
        network: &str,
        ipv4: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<(), EngineError> {
        let c = self.client().await?;
        let req = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(EndpointSettings {
                ipam_config: ipv4.map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                // Ignored by 20.10 (API 1.41); newer engines may honour it. The MAC is
                // verified inside the container either way.
                mac_address: mac.map(|m| m.to_string()),
                ..Default::default()
            }),
        };
        bump(&self.inner.counters.connect);
        let err = match c.connect_network(network, req).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                self.fail(&format!("connect {container} to {network}"), e)
                    .await
            }
        };
        if err.is_unreachable() {
            return Err(err);
        }
        match self.endpoint(&c, container, network).await {
            Ok(Some(ep)) if ipv4.is_none() || ep.ipv4 == ipv4 => Ok(()),
            _ => Err(err),
        }
    }

    /// Disconnects a container; not connected (or network gone) is success.
    pub async fn disconnect(&self, container: &str, network: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.disconnect);
        let req = NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(true),
        };
        let err = match c.disconnect_network(network, req).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                self.fail(&format!("disconnect {container} from {network}"), e)
                    .await
            }
        };
        match err {
            EngineError::Unreachable { .. } => Err(err),
            _ => match self.endpoint(&c, container, network).await {
                Ok(None) => Ok(()),
                _ => Err(err),
            },
        }
    }
}
