//! The cloud link against a real python-socketio server with mutual TLS: identity,
//! commands and acks, contract errors, heartbeats, reconnects, dead links, and bad input.

mod cloud_common;

use std::time::Duration;

use agent::cloud::{Command, WhyNot};
use cloud_common::{Link, blocking, config};
use e2e::cloud::{ClientOpts, CloudServer, Pki, ServerOpts};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_commands_errors_and_heartbeats() {
    let pki = Pki::new().unwrap();
    let (cert, key) = pki
        .client("c1", "07048933", 4660, ClientOpts::default())
        .unwrap();
    let srv = CloudServer::start(&pki, &ServerOpts::default()).unwrap();
    let mut link = Link::start(config(&srv.url(), &cert, &key, &pki.ca_cert));
    let st = link.connected(20).await;
    assert_eq!(st.agent_id.as_deref(), Some("07048933"));
    assert_eq!(st.certificate_serial.as_deref(), Some("1234"));
    assert_eq!(st.connects, 1);
    assert!(st.certificate_not_after.is_some());

    let state = blocking(|| srv.state()).unwrap();
    assert_eq!(state["clients"][0]["cn"], "07048933", "{state}");
    assert_eq!(state["clients"][0]["serial"], "1234");
    assert_eq!(
        state["clients"][0]["auth"],
        Value::Null,
        "no auth payload: the certificate is the identity"
    );

    let ack = blocking(|| {
        srv.emit(
            "get_device_status",
            json!({"device_id": "rt1", "correlation_id": 77}),
            10.0,
        )
    })
    .unwrap();
    assert_eq!(
        ack["ack"],
        json!({"action": "get_device_status", "correlation_id": 77, "status": "success", "device_id": "rt1", "handled": "get_device_status"})
    );
    let ack = blocking(|| srv.emit("start_device", json!({"device_id": "rt2"}), 10.0)).unwrap();
    assert_eq!(ack["ack"]["correlation_id"], Value::Null);
    assert_eq!(ack["ack"]["action"], "start_device");
    assert_eq!(
        link.backend.commands.lock().unwrap().clone(),
        vec![
            Command::GetDeviceStatus {
                device_id: "rt1".into()
            },
            Command::StartDevice {
                device_id: "rt2".into()
            }
        ]
    );

    let vnic = json!({"name": "v", "parent_interface": "eth0", "network_mode": "dhcp"});
    let cases = [
        (
            "create_new_runtime",
            json!({"vnic_configs": []}),
            "Missing required field: 'Missing key: container_name'",
        ),
        (
            "create_new_runtime",
            json!({"container_name": "", "vnic_configs": []}),
            "Invalid field type: Value must be a non-empty string.",
        ),
        (
            "create_new_runtime",
            json!({"container_name": "p", "vnic_configs": [vnic], "runtime_version": 1}),
            "Invalid field type: Value must be a string.",
        ),
        (
            "create_new_runtime",
            json!({"container_name": "p", "vnic_configs": "x"}),
            "Invalid field type: Value must be a list.",
        ),
        (
            "get_device_status",
            json!({"device_id": "a", "correlation_id": "x"}),
            "Invalid field type: Value must be a number.",
        ),
        (
            "get_host_interfaces",
            json!({"detailed": "no"}),
            "Invalid field type: Value must be a boolean.",
        ),
        (
            "delete_device",
            json!({"device_id": "a", "requested_at": "soon"}),
            "Invalid field type: Value must be a valid ISO datetime string.",
        ),
        (
            "run_command",
            json!({"device_id": "a", "method": "TRACE", "api": "/"}),
            "Validation error: method \"TRACE\" is not one of GET, POST, PUT, DELETE",
        ),
    ];
    for (i, (topic, mut data, text)) in cases.into_iter().enumerate() {
        if data.get("correlation_id").is_none() {
            data["correlation_id"] = json!(1000 + i);
        }
        let want_cid = data["correlation_id"]
            .as_u64()
            .map(Value::from)
            .unwrap_or(Value::Null);
        let ack = blocking(|| srv.emit(topic, data.clone(), 10.0)).unwrap();
        assert_eq!(
            ack["ack"],
            json!({"action": topic, "correlation_id": want_cid, "status": "error", "error": text}),
            "{topic} {data}"
        );
    }
    assert_eq!(
        link.backend.commands.lock().unwrap().len(),
        2,
        "refused requests never reach the backend"
    );

    let unknown = blocking(|| srv.emit("make_coffee", json!({"correlation_id": 1}), 1.5)).unwrap();
    assert_eq!(
        unknown,
        json!({"timeout": true}),
        "an unknown topic is ignored, not answered"
    );

    let hb = loop {
        let s = blocking(|| srv.state()).unwrap();
        if let Some(h) = s["heartbeats"].as_array().and_then(|a| a.first()) {
            break h["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(hb["agent_id"], "07048933");
    assert_eq!(hb["status"], "active");
    for f in [
        "cpu_usage",
        "memory_usage",
        "memory_total",
        "disk_usage",
        "disk_total",
    ] {
        let x = hb[f].as_f64().unwrap_or_else(|| panic!("{f} in {hb}"));
        assert!(x >= 0.0 && (x * 10.0).round() == x * 10.0, "{f}={x}");
    }
    assert!(hb["memory_usage"].as_f64() <= hb["memory_total"].as_f64());
    assert!(hb["uptime"].as_u64().is_some(), "{hb}");
    assert!(
        agent::cloud::period::parse_iso(hb["timestamp"].as_str().unwrap()).is_some(),
        "{hb}"
    );
    assert_eq!(
        hb.as_object().unwrap().len(),
        9,
        "exactly the heartbeat's fields: {hb}"
    );
    assert!(link.status.borrow().last_heartbeat.is_some());
    assert!(link.status.borrow().connected, "still up after all that");
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_key_formats() {
    let pki = Pki::new().unwrap();
    for (tls, pkcs1, ec, want) in [
        ("1.3", false, false, "TLSv1_3"),
        ("1.3", true, false, "TLSv1_3"),
        ("1.2", false, false, "TLSv1_2"),
        ("1.2", true, false, "TLSv1_2"),
        ("1.3", false, true, "TLSv1_3"),
    ] {
        let name = format!("k{tls}{pkcs1}{ec}");
        let (cert, key) = pki
            .client(
                &name,
                "dev-1",
                7,
                ClientOpts {
                    pkcs1,
                    ec,
                    ..Default::default()
                },
            )
            .unwrap();
        if pkcs1 {
            assert!(
                std::fs::read_to_string(&key)
                    .unwrap()
                    .contains("BEGIN RSA PRIVATE KEY")
            );
        }
        let srv = CloudServer::start(
            &pki,
            &ServerOpts {
                tls,
                ..Default::default()
            },
        )
        .unwrap();
        let mut link = Link::start(config(&srv.url(), &cert, &key, &pki.ca_cert));
        let st = link.connected(20).await;
        assert_eq!(st.tls_version.as_deref(), Some(want), "{name}");
        let ack = blocking(|| {
            srv.emit(
                "get_device_status",
                json!({"device_id": "x", "correlation_id": 1}),
                10.0,
            )
        })
        .unwrap();
        assert_eq!(ack["ack"]["status"], "success", "{name}");
        let state = blocking(|| srv.state()).unwrap();
        assert_eq!(state["clients"][0]["cn"], "dev-1");
        assert_eq!(
            state["clients"][0]["tls"],
            if tls == "1.3" { "TLSv1.3" } else { "TLSv1.2" }
        );
        link.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_and_dead_link() {
    let pki = Pki::new().unwrap();
    let (cert, key) = pki.client("c", "dev-r", 9, ClientOpts::default()).unwrap();
    let o = ServerOpts {
        ping_interval: 1.0,
        ping_timeout: 1.0,
        ..Default::default()
    };
    let mut srv = CloudServer::start(&pki, &o).unwrap();
    let mut link = Link::start(config(&srv.url(), &cert, &key, &pki.ca_cert));
    link.connected(20).await;

    blocking(|| srv.restart()).unwrap();
    // After a link that was up: 1 s +-30 % first, so well within 10 s.
    let st = link
        .wait(10, "back after a server restart", |s| {
            s.connected && s.connects == 2
        })
        .await;
    assert_eq!(st.why_not, None);
    let went_down = link
        .history
        .lock()
        .unwrap()
        .iter()
        .any(|s| !s.connected && s.why_not == Some(WhyNot::LinkLost));
    assert!(went_down, "the status said the link was lost in between");
    let state = blocking(|| srv.state()).unwrap();
    assert_eq!(state["clients"][0]["cn"], "dev-r");

    // Silent server, open socket: dead after pingInterval + pingTimeout (2 s here).
    srv.pause(true);
    let st = link.wait(15, "dead link noticed", |s| !s.connected).await;
    srv.pause(false);
    assert_eq!(st.why_not, Some(WhyNot::LinkLost));
    assert!(
        st.detail.as_deref().unwrap_or("").contains("no ping"),
        "{st:?}"
    );
    link.wait(20, "back after the pause", |s| {
        s.connected && s.connects >= 3
    })
    .await;

    // A server that closes the namespace: back again.
    blocking(|| srv.disconnect()).unwrap();
    link.wait(20, "back after a server disconnect", |s| {
        s.connected && s.connects >= 4
    })
    .await;
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_survived() {
    let pki = Pki::new().unwrap();
    let (cert, key) = pki.client("c", "dev-m", 3, ClientOpts::default()).unwrap();
    let srv = CloudServer::start(&pki, &ServerOpts::default()).unwrap();
    let mut link = Link::start(config(&srv.url(), &cert, &key, &pki.ca_cert));
    link.connected(20).await;
    let big = format!(
        "42[\"get_device_status\",{{\"device_id\":\"{}\"}}]",
        "a".repeat(3 << 20)
    );
    for text in [
        "42[bad json",
        "42{\"a\":1}",
        "42[1,2]",
        "42[]",
        "4",
        "49",
        "9xyz",
        "43999[{}]",
        "4",
        "41garbage-ish",
        "40{",
        "421[\"get_device_status\",5]",
        "42[\"get_device_status\",{\"device_id\":[]}]",
        "42/admin,[\"x\",{}]",
        "451-[\"x\",{}]",
        "6",
        "3",
        "\u{0}\u{1}",
        big.as_str(),
    ] {
        if text == "41garbage-ish" {
            continue; // a real namespace disconnect is covered by server_restart_and_dead_link
        }
        blocking(|| srv.raw(text, 0)).unwrap();
    }
    let ack = blocking(|| {
        srv.emit(
            "get_device_status",
            json!({"device_id": "ok", "correlation_id": 5}),
            10.0,
        )
    })
    .unwrap();
    assert_eq!(
        ack["ack"]["status"], "success",
        "still answering on the same connection: {ack}"
    );
    assert_eq!(link.status.borrow().connects, 1, "no reconnect was needed");

    // Bigger than the link takes (16 MiB): the connection is dropped and made again.
    blocking(|| srv.raw("42[\"x\",\"", 17 << 20)).unwrap();
    let st = link
        .wait(30, "reconnected after an oversized frame", |s| {
            s.connected && s.connects == 2
        })
        .await;
    assert!(st.detail.is_some(), "{st:?}");
    let ack = blocking(|| {
        srv.emit(
            "get_device_status",
            json!({"device_id": "ok", "correlation_id": 6}),
            10.0,
        )
    })
    .unwrap();
    assert_eq!(ack["ack"]["correlation_id"], 6);
    link.shutdown().await;
}
