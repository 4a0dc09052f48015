//! The compose deployment driven from the cloud: `packaging/compose.yaml` with its
//! cloud variables (EDGENET_CLOUD_URL, the client pair and the CA mounted read-only),
//! the real python-socketio server with mutual TLS on the project bridge's host
//! address, known to the agent's container by a name its certificate carries (host
//! name checking on), and the agent's DHCP client on against dnsmasq: the server
//! sees the agent's CN, a heartbeat arrives with its fields, `create_new_runtime`
//! then `get_device_status` until success with the runtime on its MACVLAN network at
//! dnsmasq's lease, `get_host_interfaces` answers from netmon's cache, and
//! `delete_device` removes the runtime and releases its lease. Nothing is left.

use std::time::{Duration, Instant};

use e2e::agent::{DockerCleanup, has_ip, subnets};
use e2e::cloud::{ClientOpts, CloudServer, HEARTBEAT_FIELDS, Pki, RuntimeImage, ServerOpts};
use e2e::compose_lan::{
    CloudOverride, HostDhcpLan, agent_status, assert_nothing_left, wait_agent_knows,
};
use e2e::deploy::{Compose, images};
use e2e::docker::networks_on;
use e2e::{require_root, sh, unique, wait_for};
use serde_json::{Value, json};

const HEALTHY_WITHIN: Duration = Duration::from_secs(120);
/// The cloud's name as the agent's container knows it (`extra_hosts`), and as the
/// server's certificate names it.
const CLOUD_NAME: &str = "cloud.edgenet.test";

/// The ack of `event`, which must arrive.
fn ack(srv: &CloudServer, event: &str, data: Value) -> Value {
    let r = srv
        .emit(event, data, 60.0)
        .unwrap_or_else(|e| panic!("{event}: {e:#}"));
    assert!(r.get("timeout").is_none(), "{event}: no ack");
    r["ack"].clone()
}

/// The newest heartbeat from `cn`, if any.
fn heartbeat(srv: &CloudServer, cn: &str) -> Option<Value> {
    srv.state().ok()?["heartbeats"]
        .as_array()?
        .iter()
        .rev()
        .map(|h| h["data"].clone())
        .find(|d| d["agent_id"] == cn)
}

#[test]
fn compose_deployment_is_driven_from_the_cloud_over_mutual_tls() {
    require_root();
    let imgs = images();
    let pki = Pki::new().expect("the PKI");
    let cn = unique("cn");
    let (cert, key) = pki
        .client("agent", &cn, 4343, ClientOpts::default())
        .expect("the client pair");
    let server_pair = pki.server_for(CLOUD_NAME).expect("the server pair");
    let image = RuntimeImage::new("v1").expect("the runtime image");
    let (lan_prefix, _, _) = subnets();
    let (bridge_prefix, _, _) = subnets();
    let lan = HostDhcpLan::new(&lan_prefix);
    let parent = lan.parent().to_string();
    let rt = unique("crt");
    // Dropped after the project: the agent's container sits on the runtime's
    // internal network until the project is down.
    let cleanup = DockerCleanup {
        containers: vec![rt.clone()],
        networks: vec![format!("{rt}_internal")],
        parents: vec![parent.clone()],
    };
    let over = CloudOverride::new(&bridge_prefix, CLOUD_NAME, &[]);
    let mut compose = Compose::new(&imgs);
    compose.overrides.push(over.file.clone());
    compose.set("EDGENET_NO_DHCP_CLIENT", "false");
    compose.set("EDGENET_CLOUD_CERT", &cert.display().to_string());
    compose.set("EDGENET_CLOUD_KEY", &key.display().to_string());
    compose.set("EDGENET_CLOUD_CA", &pki.ca_cert.display().to_string());
    compose.set("EDGENET_RUNTIME_IMAGE", &image.repo);

    // The project's network first: its bridge address is where the server listens.
    compose.must(&["up", "--no-start"]);
    let srv = CloudServer::start(
        &pki,
        &ServerOpts {
            pair: Some(server_pair),
            host: Some(over.gateway.clone()),
            ..Default::default()
        },
    )
    .expect("the cloud server on the project's bridge");
    let url = format!("https://{CLOUD_NAME}:{}", srv.port);
    compose.set("EDGENET_CLOUD_URL", &url);
    compose.must(&["up", "-d"]);
    compose.wait_healthy(HEALTHY_WITHIN);

    // The server sees the agent's CN (mutual TLS), then a heartbeat with its fields.
    wait_for(Duration::from_secs(60), "the agent's link", || {
        srv.state().ok()?["clients"]
            .as_array()?
            .iter()
            .any(|c| c["cn"] == cn.as_str())
            .then_some(())
    });
    let hb = wait_for(Duration::from_secs(30), "a heartbeat", || {
        heartbeat(&srv, &cn)
    });
    for k in HEARTBEAT_FIELDS {
        assert!(hb.get(k).is_some(), "{k}: {hb}");
    }
    assert_eq!(hb["status"], "active", "{hb}");
    let link = wait_for(Duration::from_secs(20), "the link in status", || {
        let c = agent_status(&compose)?["cloud"].clone();
        (c["connected"] == true).then_some(c)
    });
    assert_eq!(link["agent_id"], cn.as_str(), "{link}");
    assert_eq!(link["url"], url.as_str(), "{link}");

    // create_new_runtime, then get_device_status until success.
    wait_agent_knows(&compose, &parent, Duration::from_secs(60));
    let asked = Instant::now();
    let a = ack(
        &srv,
        "create_new_runtime",
        json!({
            "correlation_id": 21,
            "container_name": rt,
            "runtime_version": "v1",
            "vnic_configs": [{"name": "eth1", "parent_interface": parent, "network_mode": "dhcp"}],
        }),
    );
    assert_eq!(
        (a["status"].clone(), a["correlation_id"].clone()),
        (json!("creating"), json!(21)),
        "{a}"
    );
    let st = wait_for(Duration::from_secs(120), "the runtime up", || {
        let a = ack(&srv, "get_device_status", json!({"device_id": rt}));
        assert_ne!(a["status"], "error", "create failed: {a}");
        (a["status"] == "success").then_some(a)
    });
    let took = asked.elapsed();
    assert_eq!(st["container_status"], "running", "{st}");
    // On its MACVLAN network on the parent, at the address dnsmasq leased its MAC.
    let macvlan = networks_on(&parent);
    assert_eq!(macvlan.len(), 1, "{macvlan:?}");
    let net = &st["networks"][&macvlan[0]];
    let (mac, ip) = (
        net["mac_address"]
            .as_str()
            .unwrap_or_else(|| panic!("{st}")),
        net["ip_address"].as_str().unwrap_or_else(|| panic!("{st}")),
    );
    assert!(
        lan.leases_of(mac).iter().any(|l| l == ip),
        "{ip} is not dnsmasq's lease for {mac}: {:?}",
        lan.lan.leases()
    );
    assert!(has_ip(&rt, mac, ip), "{rt} does not hold {ip} on {mac}");
    eprintln!(
        "observed: create_new_runtime -> get_device_status success (leased, attached) in {took:?} (compose, cloud link)"
    );

    // get_host_interfaces: the parent as netmon reports it (the agent's cache).
    let a = ack(
        &srv,
        "get_host_interfaces",
        json!({"include_virtual": true}),
    );
    let mine = a["interfaces"]
        .as_array()
        .and_then(|v| v.iter().find(|i| i["name"] == parent.as_str()).cloned())
        .unwrap_or_else(|| panic!("{parent} not in {a}"));
    assert_eq!(mine["ip_address"], format!("{lan_prefix}.2"), "{mine}");
    let cached = agent_status(&compose).expect("status")["interfaces"]
        .as_array()
        .and_then(|v| v.iter().find(|i| i["name"] == parent.as_str()).cloned())
        .expect("the parent in the agent's cache");
    assert!(
        cached["ipv4"].as_array().is_some_and(|v| v.iter().any(|x| x
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{lan_prefix}.2"))))),
        "{cached} vs {mine}"
    );

    // delete_device: the runtime goes and its lease is released.
    let releases = lan.lan.log_lines("DHCPRELEASE", mac).len();
    let a = ack(&srv, "delete_device", json!({"device_id": rt}));
    assert_eq!(a["status"], "deleting", "{a}");
    wait_for(Duration::from_secs(60), "the runtime gone", || {
        let a = ack(&srv, "get_device_status", json!({"device_id": rt}));
        (a["status"] == "not_found").then_some(())
    });
    assert!(sh(&format!("docker inspect {rt} >/dev/null 2>&1")).is_err());
    wait_for(
        Duration::from_secs(30),
        "DHCPRELEASE in dnsmasq's log",
        || (lan.lan.log_lines("DHCPRELEASE", mac).len() > releases).then_some(()),
    );
    assert!(networks_on(&parent).is_empty(), "the MACVLAN network left");

    compose
        .down()
        .unwrap_or_else(|e| panic!("compose down -v: {e:#}"));
    drop(cleanup);
    assert_nothing_left(&compose, &rt, &parent);
}
