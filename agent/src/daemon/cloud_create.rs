//! Pure helpers of the cloud commands (daemon/cloud.rs): a cloud create request as the
//! CLI's, the runtime image, the status and interface shapes, host facts, and the
//! removal of everything for `delete_orchestrator`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{Map, Value, json};

use super::cloud::{Cloud, uptime};
use crate::cloud::CreateRuntime;
use crate::control::protocol::Request;
use crate::engine::{ContainerDetails, Engine, is_managed};
use crate::runtime::{self, VnicRequest};

/// The cloud's vNICs as `agent runtime create --vnic` would give them. The subnet comes
/// as a CIDR (`192.168.1.0/24`) or, as older clouds send it, a netmask with `ip`.
pub(super) fn vnics(c: &CreateRuntime) -> Result<Vec<VnicRequest>, String> {
    c.vnic_configs
        .iter()
        .map(|v| {
            let ip = match v.ip.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => Some(
                    s.parse::<Ipv4Addr>()
                        .map_err(|_| format!("vNIC {}: ip {s:?} is not an IPv4 address", v.name))?,
                ),
                None => None,
            };
            let subnet = match v.subnet.as_deref().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(subnet(s, ip).ok_or_else(|| {
                    format!(
                        "vNIC {}: subnet {s:?} is neither a CIDR nor a netmask",
                        v.name
                    )
                })?),
            };
            let gateway = match v.gateway.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
                    format!("vNIC {}: gateway {s:?} is not an IPv4 address", v.name)
                })?),
                None => None,
            };
            let mode = match v.network_mode.as_str() {
                "manual" => "static".to_owned(),
                m => m.to_owned(),
            };
            Ok(VnicRequest {
                name: v.name.clone(),
                parent_interface: v.parent_interface.clone(),
                network_mode: mode,
                ip: if mode_is_dhcp(&v.network_mode) {
                    None
                } else {
                    ip
                },
                subnet: if mode_is_dhcp(&v.network_mode) {
                    None
                } else {
                    subnet
                },
                gateway: if mode_is_dhcp(&v.network_mode) {
                    None
                } else {
                    gateway
                },
                mac: v.mac.map(|m| m.to_string()),
            })
        })
        .collect()
}

fn mode_is_dhcp(m: &str) -> bool {
    m == "dhcp"
}

fn subnet(s: &str, ip: Option<Ipv4Addr>) -> Option<Ipv4Network> {
    let n = if s.contains('/') {
        s.parse::<Ipv4Network>().ok()?
    } else {
        Ipv4Network::with_netmask(ip?, s.parse().ok()?).ok()?
    };
    Ipv4Network::new(n.network(), n.prefix()).ok()
}

/// Pull first; no registry (or a failed pull) falls back to a local image of that name.
pub(super) async fn resolve_image(engine: &dyn Engine, image: &str) -> Result<(), String> {
    let pulled = match engine.pull_image(image).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    tracing::info!(%image, error = %pulled, "cloud: pull failed; looking for a local image");
    match engine.image_exists(image).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "image {image}: the pull failed ({pulled}) and there is no local image {image}"
        )),
        Err(e) => Err(format!(
            "image {image}: the pull failed ({pulled}) and the local check failed ({e})"
        )),
    }
}

/// What the store knows of a vNIC on a network: its address (static, or the DHCP
/// lease) and its stored MAC.
#[derive(Clone, Debug, Default)]
pub(super) struct Known {
    pub ip: Option<String>,
    pub mac: Option<String>,
}

/// `get_device_status`'s success shape; the internal network is hidden, its address is
/// `internal_ip`; a DHCP vNIC shows its lease address from `known` (by network). The
/// MAC is the stored one, which the link carries: Docker 20.10 reports the endpoint
/// MAC it generated, not the one the agent set in the container's namespace.
pub(super) fn status_fields(
    name: &str,
    d: ContainerDetails,
    known: &BTreeMap<String, Known>,
) -> Map<String, Value> {
    let internal = runtime::internal_network(name);
    let mut networks = Map::new();
    let mut internal_ip = None;
    for (net, a) in d.networks {
        if net == internal {
            internal_ip = a.ip_address;
            continue;
        }
        let k = known.get(&net).cloned().unwrap_or_default();
        let ip = a.ip_address.or(k.ip);
        let mac = k.mac.or(a.mac_address);
        networks.insert(
            net,
            json!({"ip_address": ip, "mac_address": mac, "gateway": a.gateway}),
        );
    }
    let mut m = Map::new();
    m.insert("status".into(), "success".into());
    m.insert("device_id".into(), name.into());
    m.insert("container_status".into(), d.status.into());
    m.insert("is_running".into(), d.running.into());
    m.insert("networks".into(), Value::Object(networks));
    m.insert("restart_count".into(), d.restart_count.into());
    if let Some(ip) = internal_ip {
        m.insert("internal_ip".into(), ip.into());
    }
    if d.running
        && let Some(up) = d.started_at.as_deref().and_then(uptime)
    {
        m.insert("uptime_seconds".into(), up.into());
    }
    if !d.running
        && let Some(code) = d.exit_code
    {
        m.insert("exit_code".into(), code.into());
    }
    if let Some(h) = d.health {
        m.insert("health_status".into(), h.into());
    }
    m
}

/// Virtual: loopback and links with a kind (veth, bridge, macvlan, ...).
fn is_virtual(i: &ipc::Interface) -> bool {
    i.interface == "lo" || i.kind.as_deref().is_some_and(|k| !k.is_empty())
}

pub(super) fn interfaces_json(
    list: &[ipc::Interface],
    include_virtual: bool,
    detailed: bool,
) -> Vec<Value> {
    let mut v: Vec<&ipc::Interface> = list
        .iter()
        .filter(|i| include_virtual || !is_virtual(i))
        .collect();
    v.sort_by(|a, b| a.interface.cmp(&b.interface));
    v.into_iter()
        .map(|i| {
            let first = i.ipv4_addresses.iter().find(|a| !a.address.is_loopback());
            let mut m = obj_of(json!({
                "name": i.interface,
                "ip_address": first.map(|a| a.address.to_string()),
                "ipv4_addresses": i.ipv4_addresses.iter().map(|a| a.address.to_string()).collect::<Vec<_>>(),
                "mac_address": i.mac,
            }));
            if detailed {
                m.insert("subnet".into(), first.map(|a| a.subnet.to_string()).into());
                m.insert("gateway".into(), i.gateway.map(|g| g.to_string()).into());
            }
            Value::Object(m)
        })
        .collect()
}

fn obj_of(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `get_consumption_orchestrator`'s fixed part.
pub(super) fn host_facts(list: &[ipc::Interface]) -> Map<String, Value> {
    let ips: Vec<Value> = list
        .iter()
        .filter(|i| i.interface != "lo")
        .flat_map(|i| {
            i.ipv4_addresses
                .iter()
                .map(|a| json!({"interface": i.interface, "ip_address": a.address.to_string()}))
        })
        .collect();
    let (_, mem_total) = crate::cloud::host::memory().unwrap_or((0, 0));
    let (_, disk_total) = crate::cloud::host::disk();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    obj_of(json!({
        "ip_addresses": ips,
        "memory": mem_total / 1_000_000,
        "cpu": cpus,
        "os": os,
        "kernel": kernel,
        "disk": ((disk_total as f64 / 1e9) * 10.0).round() / 10.0,
    }))
}

/// How the agent itself is deployed, for `delete_orchestrator`'s last step.
enum Deployment {
    /// `AGENT_CONTAINER` names the agent's container.
    Container(String),
    /// Started by a systemd unit (`INVOCATION_ID`): the units are disabled and stopped.
    Systemd,
    None,
}

/// Only an explicit container or an invocation by systemd counts: `/run/systemd/system`
/// alone means systemd is the host's init, not that it runs this agent, and disabling
/// units from a shell-started agent would stop someone else's deployment.
fn deployment() -> Deployment {
    if let Some(me) = runtime::own_container().filter(|c| c.explicit) {
        return Deployment::Container(me.name);
    }
    if std::env::var_os("INVOCATION_ID").is_some()
        && std::path::Path::new("/run/systemd/system").exists()
    {
        return Deployment::Systemd;
    }
    Deployment::None
}

/// Every runtime (through the control path), the managed networks on their parents, then the agent's
/// own deployment. The summary on success.
pub(super) async fn remove_everything(
    cloud: &Cloud,
    step: impl Fn(&str),
) -> Result<String, String> {
    // The parents the store's runtimes use: the managed networks on them are this
    // agent's (on a shared engine, other agents' networks carry the same label).
    let list = cloud.ask(Request::RuntimeList).await?;
    let mut parents = std::collections::BTreeSet::new();
    let mut names = Vec::new();
    if let Value::Object(m) = &list {
        for (n, vnics) in m {
            names.push(n.clone());
            for v in vnics.as_array().into_iter().flatten() {
                if let Some(p) = v["parent"].as_str() {
                    parents.insert(p.to_owned());
                }
            }
        }
    }
    for n in &names {
        step(&format!("removing runtime {n}"));
        cloud
            .ask(Request::RuntimeDelete { name: n.clone() })
            .await?;
    }
    step("removing managed networks");
    let engine = cloud.engine();
    let mut nets = 0;
    for net in engine.list_networks().await.map_err(|e| e.to_string())? {
        let on_ours = net.parent.as_ref().is_some_and(|p| parents.contains(p));
        if is_managed(&net.labels) && on_ours {
            engine
                .remove_network(&net.name)
                .await
                .map_err(|e| format!("remove network {}: {e}", net.name))?;
            nets += 1;
        }
    }
    step("removing the agent's deployment");
    let how = match deployment() {
        Deployment::Container(c) => {
            engine.remove_container(&c).await.map_err(|e| format!("remove the agent's container {c}: {e}"))?;
            format!("container {c} removed")
        }
        Deployment::Systemd => {
            let out = tokio::process::Command::new("systemctl")
                .args(["disable", "--now", "agent.service", "netmon.service"])
                .output()
                .await
                .map_err(|e| format!("run systemctl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "systemctl disable --now agent.service netmon.service: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            "agent.service and netmon.service disabled and stopped".into()
        }
        Deployment::None => "the agent runs neither in a container (AGENT_CONTAINER) nor under systemd: nothing more to remove".into(),
    };
    Ok(format!(
        "{} runtimes and {nets} networks removed; {how}",
        names.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::VnicRequest as CloudVnic;
    use crate::engine::NetworkAddress;

    fn req(v: CloudVnic) -> CreateRuntime {
        CreateRuntime {
            container_name: "rt".into(),
            vnic_configs: vec![v],
            serial_configs: None,
            runtime_version: None,
            dedicated_interface: None,
        }
    }

    fn vnic(mode: &str, ip: Option<&str>, subnet: Option<&str>) -> CloudVnic {
        CloudVnic {
            name: "eth1".into(),
            parent_interface: "ens37".into(),
            network_mode: mode.into(),
            ip: ip.map(Into::into),
            subnet: subnet.map(Into::into),
            gateway: None,
            mac: None,
            dns: None,
        }
    }

    #[test]
    fn subnets_as_cidr_or_netmask() {
        let v = vnics(&req(vnic(
            "static",
            Some("10.0.0.5"),
            Some("255.255.255.0"),
        )))
        .unwrap();
        assert_eq!(v[0].subnet, Some("10.0.0.0/24".parse().unwrap()));
        let v = vnics(&req(vnic("manual", Some("10.0.0.5"), Some("10.0.0.9/24")))).unwrap();
        assert_eq!(v[0].subnet, Some("10.0.0.0/24".parse().unwrap()));
        assert_eq!(v[0].network_mode, "static");
        let e = vnics(&req(vnic("static", Some("10.0.0.300"), None))).unwrap_err();
        assert!(e.contains("not an IPv4 address"), "{e}");
        let e = vnics(&req(vnic("static", Some("10.0.0.5"), Some("banana")))).unwrap_err();
        assert!(e.contains("neither a CIDR nor a netmask"), "{e}");
        // DHCP takes its address from the LAN: what the cloud sent for it is dropped.
        let v = vnics(&req(vnic("dhcp", Some("10.0.0.5"), Some("10.0.0.0/24")))).unwrap();
        assert_eq!((v[0].ip, v[0].subnet), (None, None));
    }

    #[test]
    fn status_hides_the_internal_network_and_fills_leases() {
        let addr = |ip: Option<&str>| NetworkAddress {
            ip_address: ip.map(Into::into),
            mac_address: Some("02:00:00:00:00:01".into()),
            gateway: None,
        };
        let d = ContainerDetails {
            status: "exited".into(),
            running: false,
            exit_code: Some(137),
            networks: BTreeMap::from([
                ("rt_internal".to_string(), addr(Some("172.30.0.2"))),
                ("macvlan_ens37_10.0.0.0_24".to_string(), addr(None)),
            ]),
            ..Default::default()
        };
        let known = BTreeMap::from([(
            "macvlan_ens37_10.0.0.0_24".to_string(),
            Known {
                ip: Some("10.0.0.77".to_string()),
                mac: Some("0a:9b:ce:a2:8b:c6".to_string()),
            },
        )]);
        let m = status_fields("rt", d, &known);
        assert_eq!(m["internal_ip"], "172.30.0.2");
        assert_eq!(m["exit_code"], 137);
        assert!(m.get("uptime_seconds").is_none());
        let nets = m["networks"].as_object().unwrap();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets["macvlan_ens37_10.0.0.0_24"]["ip_address"], "10.0.0.77");
        // The stored MAC, not the engine's generated endpoint MAC.
        assert_eq!(
            nets["macvlan_ens37_10.0.0.0_24"]["mac_address"],
            "0a:9b:ce:a2:8b:c6"
        );
    }
}
