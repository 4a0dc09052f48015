//! End to end: a `runtime_vnics.json` as the older system writes it in the field
//! (COMPAT.md: Ethernet DHCP with its recorded lease, Wi-Fi by proxy ARP, a static
//! vNIC with `ip` "A/24", `network_mode` "manual" and a netmask `subnet`, unknown and
//! nested keys) loads with no store fault, every Ethernet vNIC is attached, the Wi-Fi
//! one is `unsupported`, `health` is 0, and the file keeps every key in its order.

use std::time::Duration;

use e2e::agent::{AgentProc, DockerCleanup, HostLan, HostNetmon, has, subnets};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, must, unique, wait_for};
use serde_json::Value;

/// Every object's keys, depth first, in file order.
fn key_paths(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(format!("{at}/{k}"));
                key_paths(x, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                key_paths(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_fields_file_loads_attaches_and_keeps_its_shape() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agx");
    let (a, b, _) = subnets();
    let (pe, ps) = (unique("gx"), unique("gy"));
    let _lan_e = HostLan::new(&pe, &format!("{a}.2/24"), &format!("{a}.1/24"));
    let _lan_s = HostLan::new(&ps, &format!("{b}.2/24"), &format!("{b}.1/24"));
    let (plc1, plc2) = (unique("rt"), unique("rt"));
    let _cleanup = DockerCleanup::runtimes(&[&plc1, &plc2], &[&pe, &ps]);
    // The older system made these containers, each on its NAME_internal bridge; they
    // carry no label of ours.
    for c in [&plc1, &plc2] {
        must(&format!("docker network create --internal {c}_internal"));
        must(&format!(
            "docker run -d --name {c} --network {c}_internal {image}"
        ));
    }
    let file = format!(
        r#"{{
  "{plc1}": [
    {{
      "name": "eth0",
      "parent_interface": "{pe}",
      "network_mode": "dhcp",
      "_interface_type": "ethernet",
      "_is_wifi": false,
      "_network_method": "macvlan",
      "mac_address": "02:5e:91:0c:7a:33",
      "docker_network_name": "macvlan_{pe}_{a}.0_24",
      "dhcp_ip": "{a}.57",
      "dhcp_gateway": "{a}.1",
      "dhcp_dns": "{a}.1"
    }},
    {{
      "name": "wifi0",
      "parent_interface": "wlan9",
      "network_mode": "dhcp",
      "_interface_type": "wifi",
      "_is_wifi": true,
      "_network_method": "proxy_arp",
      "dhcp_ip": "10.1.1.80",
      "_proxy_arp_config": {{"veth_host": "veth-plc1", "veth_container": "eth1",
                            "ip_address": "10.1.1.80", "gateway": "10.1.1.1",
                            "parent_interface": "wlan9"}}
    }}
  ],
  "{plc2}": [
    {{
      "name": "eth1",
      "parent_interface": "{ps}",
      "network_mode": "manual",
      "ip": "{b}.100/24",
      "subnet": "255.255.255.0",
      "gateway": "{b}.1",
      "dns": ["{b}.1"]
    }}
  ]
}}
"#
    );
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("runtime_vnics.json"), &file).unwrap();
    let netmon = HostNetmon::start(dir.path(), &[&pe, &ps]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);

    wait_for(Duration::from_secs(30), "both runtimes attached", || {
        (has(&plc1, "02:5e:91:0c:7a:33", &a)
            && e2e::agent::container_links(&plc2)
                .map(|l| Value::Array(l).to_string().contains(&format!("{b}.100")))
                .unwrap_or(false))
        .then_some(())
    });
    let s = agent.status();
    assert!(s["store"]["fault"].is_null(), "{s}");
    assert!(
        s["unusable"].as_object().is_none_or(|u| u.is_empty()),
        "{s}"
    );
    let states = |rt: &str| -> Vec<String> {
        s["runtimes"][rt]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["state"]["state"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(states(&plc1), ["attached", "unsupported"], "{s}");
    assert_eq!(states(&plc2), ["attached"], "{s}");
    let h = agent.cli(&["health"]);
    assert_eq!(
        h.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&h.stderr)
    );

    // Written back: every key of the file still there, in its order; what the agent
    // recorded after them.
    let now = std::fs::read_to_string(state.join("runtime_vnics.json")).unwrap();
    let (before, after): (Value, Value) = (
        serde_json::from_str(&file).unwrap(),
        serde_json::from_str(&now).unwrap(),
    );
    let (mut kb, mut ka) = (Vec::new(), Vec::new());
    key_paths(&before, "", &mut kb);
    key_paths(&after, "", &mut ka);
    let kept: Vec<&String> = ka.iter().filter(|k| kb.contains(k)).collect();
    assert_eq!(kept, kb.iter().collect::<Vec<_>>(), "{now}");
    assert_eq!(after[&plc2][0]["ip"], format!("{b}.100/24"), "{now}");
    assert_eq!(after[&plc2][0]["subnet"], "255.255.255.0", "{now}");
    assert_eq!(after[&plc2][0]["network_mode"], "manual", "{now}");
    assert_eq!(
        after[&plc1][1], before[&plc1][1],
        "the Wi-Fi vNIC untouched: {now}"
    );
}
