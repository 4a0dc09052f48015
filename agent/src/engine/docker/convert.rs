//! bollard's models to the agent's engine types.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;

use bollard::models::{ContainerInspectResponse, EventMessageTypeEnum, Ipam, NetworkInspect};
use ipnetwork::Ipv4Network;

use crate::engine::{ContainerInfo, Endpoint, EngineEvent, NetworkInfo, Pool};

pub(super) fn labels_of(m: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    m.unwrap_or_default().into_iter().collect()
}

pub(super) fn parse_ip(s: Option<&String>) -> Option<Ipv4Addr> {
    s.filter(|s| !s.is_empty())
        .and_then(|s| Ipv4Addr::from_str(s).ok())
}

pub(super) fn pools_of(ipam: Option<&Ipam>) -> Vec<Pool> {
    ipam.and_then(|i| i.config.as_ref())
        .map(|cfg| {
            cfg.iter()
                .filter_map(|c| {
                    let subnet = Ipv4Network::from_str(c.subnet.as_deref()?).ok()?;
                    Some(Pool {
                        subnet,
                        gateway: parse_ip(c.gateway.as_ref()),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn network_info(n: NetworkInspect) -> NetworkInfo {
    let mut containers: Vec<String> = n
        .containers
        .unwrap_or_default()
        .into_values()
        .filter_map(|e| e.name)
        .collect();
    containers.sort();
    NetworkInfo {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        driver: n.driver.unwrap_or_default(),
        parent: n.options.as_ref().and_then(|o| o.get("parent").cloned()),
        pools: pools_of(n.ipam.as_ref()),
        labels: labels_of(n.labels),
        containers,
    }
}

pub(super) fn container_info(c: ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let pid = state
        .pid
        .filter(|p| *p > 0 && running)
        .and_then(|p| u32::try_from(p).ok());
    let mut endpoints: Vec<Endpoint> = c
        .network_settings
        .and_then(|s| s.networks)
        .unwrap_or_default()
        .into_iter()
        // A running container's network with no endpoint id is a connect the engine
        // refused: 20.10 keeps the request (its IPAM config) after answering 500
        // "Invalid address". It is not an attachment, and a connect still works.
        .filter(|(_, e)| !running || e.endpoint_id.as_deref().is_some_and(|id| !id.is_empty()))
        .map(|(name, e)| Endpoint {
            endpoint_id: e.endpoint_id.unwrap_or_default(),
            network_id: e.network_id.unwrap_or_default(),
            network_name: name,
            // A stopped container has no address yet; the requested static one stands in.
            ipv4: parse_ip(e.ip_address.as_ref())
                .or_else(|| parse_ip(e.ipam_config.as_ref().and_then(|c| c.ipv4_address.as_ref()))),
            // Empty (no MAC yet) or unparsable both mean "not known".
            mac: e.mac_address.and_then(|m| m.parse().ok()),
        })
        .collect();
    endpoints.sort_by(|a, b| a.network_name.cmp(&b.network_name));
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        running,
        pid,
        endpoints,
        ns_links: Vec::new(),
        labels: labels_of(c.config.and_then(|c| c.labels)),
        ns_error: None,
    }
}

pub(super) fn event_of(m: bollard::models::EventMessage) -> EngineEvent {
    let action = m.action.unwrap_or_default();
    let actor = m.actor.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let name = attrs.get("name").cloned().unwrap_or_default();
    match (m.typ, action.as_str()) {
        (Some(EventMessageTypeEnum::CONTAINER), "start") => EngineEvent::ContainerStarted { name },
        (Some(EventMessageTypeEnum::CONTAINER), "die") => EngineEvent::ContainerDied { name },
        (Some(EventMessageTypeEnum::CONTAINER), "destroy") => EngineEvent::ContainerGone { name },
        (Some(EventMessageTypeEnum::NETWORK), "connect" | "disconnect") => {
            EngineEvent::Attachment {
                network: name,
                container: attrs.get("container").cloned().unwrap_or_default(),
                connected: action == "connect",
            }
        }
        (Some(EventMessageTypeEnum::NETWORK), "destroy") => EngineEvent::NetworkGone {
            name,
            id: actor.id.unwrap_or_default(),
        },
        _ => EngineEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{
        ContainerInspectResponse, ContainerState, EndpointIpamConfig, EndpointSettings,
        NetworkSettings,
    };

    use super::container_info;

    fn inspected(running: bool, endpoint_id: &str) -> ContainerInspectResponse {
        let refused = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some("192.0.2.77".into()),
                ..Default::default()
            }),
            endpoint_id: Some(endpoint_id.into()),
            ..Default::default()
        };
        ContainerInspectResponse {
            state: Some(ContainerState {
                running: Some(running),
                pid: Some(if running { 42 } else { 0 }),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([("lan".to_string(), refused)])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_connect_left_in_a_running_containers_record_is_no_endpoint() {
        assert!(container_info(inspected(true, "")).endpoints.is_empty());
        let attached = container_info(inspected(true, "ep1"));
        assert_eq!(attached.endpoints[0].endpoint_id, "ep1");
        // A stopped container has no endpoint ids: its requested address stands in.
        let stopped = container_info(inspected(false, ""));
        assert_eq!(stopped.endpoints[0].ipv4, "192.0.2.77".parse().ok());
    }
}
