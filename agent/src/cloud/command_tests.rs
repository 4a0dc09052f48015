//! Table tests: every topic decoded, every contract error text.

use std::time::Duration;

use serde_json::json;

use super::*;

fn ok(topic: &str, data: Value) -> Request {
    decode(topic, &data).unwrap_or_else(|e| panic!("{topic} {data}: {e:?}"))
}

fn err(topic: &str, data: Value) -> (Option<Number>, String) {
    match decode(topic, &data) {
        Err(DecodeError::Contract {
            correlation_id,
            error,
        }) => (correlation_id, error.to_string()),
        other => panic!("{topic} {data}: expected a contract error, got {other:?}"),
    }
}

#[test]
fn every_topic_decodes() {
    let dev = |c: Command| c;
    let hour = Period::DEFAULT;
    let cases: Vec<(&str, Value, Command)> = vec![
        (
            "delete_device",
            json!({"device_id":"rt1"}),
            dev(Command::DeleteDevice {
                device_id: "rt1".into(),
            }),
        ),
        (
            "start_device",
            json!({"device_id":"rt1"}),
            Command::StartDevice {
                device_id: "rt1".into(),
            },
        ),
        (
            "stop_device",
            json!({"device_id":"rt1"}),
            Command::StopDevice {
                device_id: "rt1".into(),
            },
        ),
        (
            "restart_device",
            json!({"device_id":"rt1"}),
            Command::RestartDevice {
                device_id: "rt1".into(),
            },
        ),
        (
            "get_device_status",
            json!({"device_id":"__orchestrator__"}),
            Command::GetDeviceStatus {
                device_id: "__orchestrator__".into(),
            },
        ),
        (
            "get_host_interfaces",
            json!({}),
            Command::GetHostInterfaces {
                include_virtual: false,
                detailed: true,
            },
        ),
        (
            "get_host_interfaces",
            json!({"include_virtual":true,"detailed":false}),
            Command::GetHostInterfaces {
                include_virtual: true,
                detailed: false,
            },
        ),
        (
            "get_consumption_device",
            json!({"device_id":"rt1","cpuPeriod":"2h","memoryPeriod":"bogus"}),
            Command::GetConsumptionDevice {
                device_id: "rt1".into(),
                cpu_period: Period::Last(Duration::from_secs(7200)),
                memory_period: hour,
            },
        ),
        (
            "get_consumption_orchestrator",
            json!({"cpuPeriod":"30"}),
            Command::GetConsumptionOrchestrator {
                cpu_period: Period::Last(Duration::from_secs(30)),
                memory_period: hour,
            },
        ),
        (
            "delete_orchestrator",
            json!({}),
            Command::DeleteOrchestrator,
        ),
    ];
    for (topic, data, want) in cases {
        let r = ok(topic, data.clone());
        assert_eq!(r.command, want, "{topic} {data}");
        assert_eq!(r.command.topic(), topic);
    }
}

#[test]
fn create_new_runtime_full_and_minimal() {
    let r = ok(
        "create_new_runtime",
        json!({
            "correlation_id": 42, "action": "create_new_runtime", "requested_at": "2024-05-01T10:00:00.123456",
            "container_name": "plc1", "runtime_version": "v4", "dedicated_interface": "eth1.100",
            "serial_configs": [{"device": "/dev/ttyS0"}], "extra": "ignored",
            "vnic_configs": [
                {"name": "v1", "parent_interface": "eth0", "network_mode": "dhcp"},
                {"name": "v2", "parent_interface": "eth1", "network_mode": "static", "ip": "10.0.0.5",
                 "subnet": "255.255.255.0", "gateway": "10.0.0.1", "mac": "02:AA:bb:cc:dd:ee", "dns": ["1.1.1.1"]}
            ]
        }),
    );
    assert_eq!(r.meta.correlation_id, Some(42.into()));
    assert_eq!(r.meta.action.as_deref(), Some("create_new_runtime"));
    assert_eq!(
        r.meta.requested_at.as_deref(),
        Some("2024-05-01T10:00:00.123456")
    );
    let Command::CreateRuntime(c) = r.command else {
        panic!()
    };
    assert_eq!(c.container_name, "plc1");
    assert_eq!(c.runtime_version.as_deref(), Some("v4"));
    assert_eq!(c.dedicated_interface.as_deref(), Some("eth1.100"));
    assert_eq!(
        c.serial_configs,
        Some(vec![json!({"device": "/dev/ttyS0"})])
    );
    assert_eq!(c.vnic_configs.len(), 2);
    assert_eq!(c.vnic_configs[0].network_mode, "dhcp");
    assert_eq!(c.vnic_configs[0].ip, None);
    let v2 = &c.vnic_configs[1];
    assert_eq!(
        (v2.ip.as_deref(), v2.gateway.as_deref()),
        (Some("10.0.0.5"), Some("10.0.0.1"))
    );
    assert_eq!(
        v2.mac.map(|m| m.to_string()).as_deref(),
        Some("02:aa:bb:cc:dd:ee")
    );
    assert_eq!(v2.dns, Some(vec!["1.1.1.1".to_owned()]));
    let min = ok(
        "create_new_runtime",
        json!({"container_name":"p","vnic_configs":[]}),
    );
    assert_eq!(min.meta, Meta::default());
}

#[test]
fn run_command_fields() {
    let r = ok(
        "run_command",
        json!({"device_id":"rt1","method":"post","api":"/api/upload","port":8080,
               "headers":{"X-A":"1","X-N":2},"data":{"k":[1]},"params":{"q":"x"},
               "files":{"prog":{"filename":"a.st","content_base64":"AAE=","content_type":"text/plain"}}}),
    );
    let Command::RunCommand(c) = r.command else {
        panic!()
    };
    assert_eq!(
        (c.method.as_str(), c.api.as_str(), c.port),
        ("POST", "/api/upload", 8080)
    );
    assert_eq!(c.headers.get("X-A").map(String::as_str), Some("1"));
    assert_eq!(c.headers.get("X-N").map(String::as_str), Some("2"));
    assert_eq!(c.data, Some(json!({"k":[1]})));
    assert_eq!(c.params.unwrap().get("q"), Some(&json!("x")));
    assert_eq!(c.files["prog"].content_base64, "AAE=");
    let d = ok(
        "run_command",
        json!({"device_id":"rt1","method":"GET","api":"/x"}),
    );
    let Command::RunCommand(d) = d.command else {
        panic!()
    };
    assert_eq!((d.port, d.data, d.files.len()), (8443, None, 0));
}

#[test]
fn every_contract_error_text() {
    let s = "Invalid field type: Value must be a string.";
    let n = "Invalid field type: Value must be a number.";
    let ne = "Invalid field type: Value must be a non-empty string.";
    let b = "Invalid field type: Value must be a boolean.";
    let l = "Invalid field type: Value must be a list.";
    let iso = "Invalid field type: Value must be a valid ISO datetime string.";
    let vnic = json!({"name":"v","parent_interface":"eth0","network_mode":"dhcp"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "create_new_runtime",
            json!({"vnic_configs":[]}),
            "Missing required field: 'Missing key: container_name'",
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p"}),
            "Missing required field: 'Missing key: vnic_configs'",
        ),
        (
            "create_new_runtime",
            json!({"container_name":7,"vnic_configs":[]}),
            ne,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"","vnic_configs":[]}),
            ne,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":{}}),
            l,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[{"name":"v","network_mode":"dhcp"}]}),
            "Missing required field: 'Missing key: parent_interface'",
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[{"name":1,"parent_interface":"e","network_mode":"dhcp"}]}),
            s,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[vnic.clone()],"runtime_version":3}),
            s,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[vnic.clone()],"serial_configs":"x"}),
            l,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[{"name":"v","parent_interface":"e","network_mode":"s","dns":"8.8.8.8"}]}),
            l,
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[vnic.clone()],"dedicated_interface":"much-too-long-name0"}),
            "Validation error: dedicated_interface \"much-too-long-name0\" is not an interface name (1-15 characters of a-z, A-Z, 0-9, '_', '.', '-')",
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":["x"]}),
            "Validation error: each vnic_configs entry must be a JSON object",
        ),
        (
            "create_new_runtime",
            json!({"container_name":"p","vnic_configs":[{"name":"v","parent_interface":"e","network_mode":"s","mac":"zz"}]}),
            "Validation error: vnic_configs mac: invalid MAC \"zz\": want six hex octets such as 02:42:ac:11:00:02",
        ),
        (
            "delete_device",
            json!({}),
            "Missing required field: 'Missing key: device_id'",
        ),
        ("start_device", json!({"device_id":""}), ne),
        ("stop_device", json!({"device_id":5}), ne),
        (
            "get_device_status",
            json!({"device_id":"a","correlation_id":"7"}),
            n,
        ),
        ("restart_device", json!({"device_id":"a","action":1}), s),
        (
            "get_device_status",
            json!({"device_id":"a","requested_at":"today"}),
            iso,
        ),
        (
            "get_device_status",
            json!({"device_id":"a","requested_at":5}),
            iso,
        ),
        ("get_host_interfaces", json!({"include_virtual":"yes"}), b),
        ("get_host_interfaces", json!({"detailed":1}), b),
        (
            "get_consumption_device",
            json!({"device_id":"a","cpuPeriod":1}),
            s,
        ),
        (
            "get_consumption_orchestrator",
            json!({"memoryPeriod":[]}),
            s,
        ),
        (
            "run_command",
            json!({"device_id":"a","api":"/"}),
            "Missing required field: 'Missing key: method'",
        ),
        (
            "run_command",
            json!({"device_id":"a","method":"GET"}),
            "Missing required field: 'Missing key: api'",
        ),
        (
            "run_command",
            json!({"device_id":"a","method":"PATCH","api":"/"}),
            "Validation error: method \"PATCH\" is not one of GET, POST, PUT, DELETE",
        ),
        (
            "run_command",
            json!({"device_id":"a","method":"GET","api":"/","port":"80"}),
            n,
        ),
        (
            "run_command",
            json!({"device_id":"a","method":"GET","api":"/","port":70000}),
            "Validation error: port 70000 is not a TCP port (1-65535)",
        ),
        (
            "run_command",
            json!({"device_id":"a","method":"GET","api":"/","headers":[]}),
            "Validation error: headers must be an object",
        ),
        (
            "run_command",
            json!({"device_id":"a","method":"GET","api":"/","files":{"f":{"filename":"x"}}}),
            "Missing required field: 'Missing key: content_base64'",
        ),
        (
            "delete_orchestrator",
            json!([1]),
            "Validation error: the request must be a JSON object",
        ),
        (
            "delete_orchestrator",
            json!(null),
            "Validation error: the request must be a JSON object",
        ),
    ];
    for (topic, data, text) in cases {
        assert_eq!(err(topic, data.clone()).1, text, "{topic} {data}");
    }
}

#[test]
fn errors_keep_the_correlation_id_and_unknown_topics_are_not_commands() {
    let (cid, _) = err("delete_device", json!({"correlation_id": 9}));
    assert_eq!(cid, Some(9.into()));
    let (cid, _) = err(
        "delete_device",
        json!({"correlation_id": 1.5, "device_id": 3}),
    );
    assert_eq!(cid, Some(Number::from_f64(1.5).unwrap()));
    let (cid, _) = err("delete_device", json!({"correlation_id": "9"}));
    assert_eq!(cid, None);
    assert_eq!(
        decode("reboot_planet", &json!({})),
        Err(DecodeError::UnknownTopic)
    );
}

#[test]
fn only_changes_are_serialised_per_name() {
    let name = |t: &str, d: Value| ok(t, d).command.serialised_name().map(str::to_owned);
    assert_eq!(
        name("start_device", json!({"device_id":"a"})).as_deref(),
        Some("a")
    );
    assert_eq!(
        name(
            "create_new_runtime",
            json!({"container_name":"b","vnic_configs":[]})
        )
        .as_deref(),
        Some("b")
    );
    assert_eq!(name("get_device_status", json!({"device_id":"a"})), None);
    assert_eq!(name("delete_orchestrator", json!({})), None);
}
