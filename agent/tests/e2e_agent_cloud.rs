//! End to end, the real `agent run --cloud-url` against the real python-socketio server
//! with mutual TLS, the real netmon and the real engine: the server sees the agent's CN;
//! create_new_runtime then get_device_status until success on its MACVLAN network;
//! start/stop/restart change the container's state; run_command reaches the runtime's
//! HTTP server and times out on a silent one; heartbeats carry every field; `agent
//! status` shows the link; delete_device and delete_orchestrator remove what they say.
//!
//! Over 400 lines: one rig (PKI, server, LAN, netmon, agent) shared by the three tests,
//! and one long test that walks every command on the same runtime to stay under a minute.

use std::time::Duration;

use agent::plan::network_name;
use e2e::agent::{AgentProc, DockerCleanup, HostLan, HostNetmon, subnets};
use e2e::cloud::{ClientOpts, CloudServer, Pki, RuntimeImage, ServerOpts};
use e2e::docker::{Container, require_engine};
use e2e::{TempDir, must, sh, unique, wait_for};
use serde_json::{Value, json};

struct Rig {
    _pki: Pki,
    srv: CloudServer,
    cn: String,
    image: RuntimeImage,
    _lan: HostLan,
    parent: String,
    subnet: String,
    _netmon: HostNetmon,
    agent: AgentProc,
    _dir: TempDir,
}

/// PKI, server, a LAN, netmon and the agent linked to the cloud; `env` for the agent.
fn rig(env: &[(&str, &str)]) -> Rig {
    e2e::require_root();
    require_engine();
    let pki = Pki::new().unwrap();
    let cn = unique("cn");
    let (cert, key) = pki
        .client("agent", &cn, 4242, ClientOpts::default())
        .unwrap();
    let srv = CloudServer::start(&pki, &ServerOpts::default()).unwrap();
    let image = RuntimeImage::new("v1").unwrap();
    let dir = TempDir::new("agc");
    let (a1, _, _) = subnets();
    let parent = unique("cl");
    let lan = HostLan::new(&parent, &format!("{a1}.2/24"), &format!("{a1}.1/24"));
    let netmon = HostNetmon::start(dir.path(), &[&parent]);
    let url = srv.url();
    let (c, k, ca) = (
        cert.display().to_string(),
        key.display().to_string(),
        pki.ca_cert.display().to_string(),
    );
    let agent = AgentProc::start_with_env(
        dir.path(),
        &netmon.socket,
        &[
            "--cloud-url",
            &url,
            "--cloud-cert",
            &c,
            "--cloud-key",
            &k,
            "--cloud-ca",
            &ca,
            "--runtime-image",
            &image.repo,
            "--run-command-timeout",
            "3s",
        ],
        env,
    );
    agent.wait_linked(&[&parent]);
    wait_for(Duration::from_secs(30), "the agent's link", || {
        let s = srv.state().ok()?;
        s["clients"]
            .as_array()?
            .iter()
            .any(|c| c["cn"] == cn.as_str())
            .then_some(())
    });
    Rig {
        _pki: pki,
        srv,
        cn,
        image,
        _lan: lan,
        parent,
        subnet: format!("{a1}.0/24"),
        _netmon: netmon,
        agent,
        _dir: dir,
    }
}

impl Rig {
    /// The ack of `event`, which must arrive.
    fn ack(&self, event: &str, data: Value) -> Value {
        let r = self.srv.emit(event, data, 60.0).unwrap();
        assert!(r.get("timeout").is_none(), "{event}: no ack");
        r["ack"].clone()
    }

    fn create(&self, name: &str, version: &str) -> Value {
        self.ack(
            "create_new_runtime",
            json!({
                "correlation_id": 11,
                "container_name": name,
                "runtime_version": version,
                "vnic_configs": [{"name": "eth1", "parent_interface": self.parent, "network_mode": "dhcp"}],
            }),
        )
    }

    /// get_device_status until its status is not `creating`/`deleting`.
    fn settled(&self, name: &str) -> Value {
        wait_for(Duration::from_secs(40), "the operation to end", || {
            let a = self.ack("get_device_status", json!({"device_id": name}));
            (a["status"] != "creating" && a["status"] != "deleting").then_some(a)
        })
    }
}

fn inspect(name: &str, what: &str) -> String {
    must(&format!("docker inspect -f '{what}' {name}"))
        .trim()
        .to_string()
}

#[test]
fn runtimes_driven_from_the_cloud() {
    let r = rig(&[]);
    let rt = unique("rtc");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&r.parent]);

    let ack = r.create(&rt, "v1");
    assert_eq!(
        ack,
        json!({"action": "create_new_runtime", "correlation_id": 11, "status": "creating",
               "container_id": rt, "message": format!("Container creation started for {rt}")})
    );
    // A second create while the first runs: the contract's text (or, if it already
    // finished, the store's refusal of a name that exists).
    let again = r.create(&rt, "v1");
    assert_eq!(again["status"], "error", "{again}");
    let text = again["error"].as_str().unwrap();
    assert!(
        text == format!("Container {rt} already has a create operation in progress")
            || text.contains("already exists"),
        "{again}"
    );

    let st = wait_for(Duration::from_secs(40), "the runtime to be up", || {
        let a = r.ack(
            "get_device_status",
            json!({"device_id": rt, "correlation_id": 5}),
        );
        if a["status"] == "error" {
            panic!("create failed: {a}");
        }
        (a["status"] == "success").then_some(a)
    });
    let net = network_name(&r.parent, r.subnet.parse().unwrap());
    assert_eq!(st["correlation_id"], 5);
    assert_eq!(st["container_status"], "running", "{st}");
    assert_eq!(st["is_running"], true);
    assert!(st["networks"][&net]["mac_address"].is_string(), "{st}");
    assert!(st["networks"][&net]["ip_address"].is_string(), "{st}");
    assert!(
        st["networks"].get(format!("{rt}_internal")).is_none(),
        "internal hidden: {st}"
    );
    assert!(st["internal_ip"].is_string(), "{st}");
    assert!(st["uptime_seconds"].is_u64(), "{st}");
    assert_eq!(st["restart_count"], 0);
    assert_eq!(
        inspect(&rt, "{{.Config.Image}}"),
        format!("{}:v1", r.image.repo)
    );

    // stop / start / restart really change the container.
    let a = r.ack("stop_device", json!({"device_id": rt}));
    assert_eq!(
        (a["status"].clone(), a["success"].clone()),
        (json!("success"), json!(true)),
        "{a}"
    );
    assert_eq!(inspect(&rt, "{{.State.Running}}"), "false");
    let st = r.ack("get_device_status", json!({"device_id": rt}));
    assert_eq!(st["is_running"], false, "{st}");
    assert!(st["exit_code"].is_i64(), "{st}");
    let a = r.ack("start_device", json!({"device_id": rt}));
    assert_eq!(a["is_running"], true, "{a}");
    assert_eq!(inspect(&rt, "{{.State.Running}}"), "true");
    let before = inspect(&rt, "{{.State.StartedAt}}");
    let a = r.ack("restart_device", json!({"device_id": rt}));
    assert_eq!(a["status"], "success", "{a}");
    assert_ne!(inspect(&rt, "{{.State.StartedAt}}"), before, "restarted");
    let a = r.ack("start_device", json!({"device_id": unique("nosuch")}));
    assert_eq!(
        (a["status"].clone(), a["success"].clone()),
        (json!("error"), json!(false)),
        "{a}"
    );

    // run_command: the runtime's HTTP server on its internal address, a silent
    // listener (timeout), and its HTTPS API on 8443.
    let a = wait_for(Duration::from_secs(20), "the runtime's HTTP server", || {
        let a = r.ack(
            "run_command",
            json!({"device_id": rt, "method": "GET", "api": "/x.json", "port": 8080}),
        );
        (a["status"] == "success").then_some(a)
    });
    assert_eq!(a["http_response"]["status_code"], 200, "{a}");
    assert_eq!(a["http_response"]["body"], json!({"ok": true}), "{a}");
    assert_eq!(a["http_response"]["ok"], true);
    let a = r.ack(
        "run_command",
        json!({"device_id": rt, "method": "GET", "api": "/", "port": 8081}),
    );
    assert_eq!(a["status"], "error", "{a}");
    assert!(
        a["error"].as_str().unwrap().contains("no reply within 3s"),
        "{a}"
    );
    // 8443: https with the runtime's self-signed certificate, not verified.
    let a = r.ack(
        "run_command",
        json!({"device_id": rt, "method": "GET", "api": "/x.json", "port": 8443}),
    );
    assert_eq!(a["status"], "success", "{a}");
    assert_eq!(a["http_response"]["status_code"], 200, "{a}");
    assert_eq!(a["http_response"]["body"], json!({"ok": true}), "{a}");
    let a = r.ack(
        "run_command",
        json!({"device_id": rt, "method": "POST", "api": "/cgi-bin/echo", "port": 8443,
               "data": {"setpoint": 42, "unit": "bar"}}),
    );
    assert_eq!(a["status"], "success", "{a}");
    assert_eq!(
        a["http_response"]["body"],
        json!({"setpoint": 42, "unit": "bar"}),
        "the body that reached the runtime over TLS: {a}"
    );
    let a = r.ack(
        "run_command",
        json!({"device_id": rt, "method": "GET", "api": "/nosuch", "port": 8443}),
    );
    assert_eq!(a["status"], "error", "{a}");
    assert_eq!(
        (
            a["http_response"]["status_code"].clone(),
            a["http_response"]["ok"].clone()
        ),
        (json!(404), json!(false)),
        "{a}"
    );
    let big = "a".repeat(600 * 1024);
    let a = r.ack(
        "run_command",
        json!({"device_id": rt, "method": "POST", "api": "/", "port": 8080, "data": {"x": big}}),
    );
    assert!(
        a["error"].as_str().unwrap().contains("more than the"),
        "{a}"
    );

    // Interfaces and consumption.
    let a = r.ack("get_host_interfaces", json!({"include_virtual": true}));
    let ifs = a["interfaces"].as_array().unwrap();
    let mine = ifs
        .iter()
        .find(|i| i["name"] == r.parent.as_str())
        .unwrap_or_else(|| panic!("{a}"));
    assert!(
        mine["ip_address"].as_str().unwrap().ends_with(".2"),
        "{mine}"
    );
    assert!(
        mine["mac_address"].is_string() && mine["subnet"].is_string(),
        "{mine}"
    );
    let a = r.ack("get_host_interfaces", json!({}));
    assert!(
        !a["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == r.parent.as_str()),
        "a veth is virtual: {a}"
    );
    let a = wait_for(Duration::from_secs(20), "usage samples", || {
        let a = r.ack(
            "get_consumption_device",
            json!({"device_id": rt, "cpuPeriod": "1h", "memoryPeriod": "1h"}),
        );
        (!a["memory_usage"].as_array()?.is_empty()).then_some(a)
    });
    assert_eq!(
        (a["memory"].clone(), a["cpu"].clone()),
        (json!("unlimited"), json!("unlimited")),
        "{a}"
    );
    assert!(a["cpu_usage"][0]["timestamp"].is_string(), "{a}");
    let a = r.ack(
        "get_consumption_orchestrator",
        json!({"cpuPeriod": "10m", "memoryPeriod": "10m"}),
    );
    for k in [
        "ip_addresses",
        "memory",
        "cpu",
        "os",
        "kernel",
        "disk",
        "cpu_usage",
        "memory_usage",
    ] {
        assert!(a.get(k).is_some(), "{k}: {a}");
    }
    assert!(!a["memory_usage"].as_array().unwrap().is_empty(), "{a}");

    // A contract error from the real link.
    let a = r.ack("get_device_status", json!({"correlation_id": 9}));
    assert_eq!(
        a,
        json!({"action": "get_device_status", "correlation_id": 9, "status": "error",
               "error": "Missing required field: 'Missing key: device_id'"})
    );

    // Heartbeats with every field; status shows the link.
    let s = r.srv.state().unwrap();
    let hb = &s["heartbeats"].as_array().unwrap().last().unwrap()["data"];
    for k in e2e::cloud::HEARTBEAT_FIELDS {
        assert!(hb.get(k).is_some(), "{k}: {hb}");
    }
    assert_eq!(
        (hb["agent_id"].clone(), hb["status"].clone()),
        (json!(r.cn), json!("active"))
    );
    let st = r.agent.status();
    let c = &st["cloud"];
    assert_eq!(c["connected"], true, "{c}");
    assert_eq!(c["agent_id"], r.cn.as_str());
    assert_eq!(c["url"], r.srv.url());
    assert!(c["connects"].as_u64().unwrap() >= 1);
    assert!(
        c["certificate_not_after"].is_string() && c["last_heartbeat"].is_string(),
        "{c}"
    );
    let text = r.agent.must(&["status"]);
    assert!(
        text.contains(&format!("cloud: {} connected", r.srv.url())),
        "{text}"
    );
    assert!(text.contains(&r.cn), "{text}");
    r.agent.must(&["health", "--require-cloud"]);

    // delete_device, then it is gone.
    let a = r.ack("delete_device", json!({"device_id": rt}));
    assert_eq!(a["status"], "deleting", "{a}");
    assert_eq!(r.settled(&rt)["status"], "not_found");
    assert!(sh(&format!("docker inspect {rt} >/dev/null 2>&1")).is_err());

    // A runtime version with no image anywhere: the error names the pull and the local image.
    let rt2 = unique("rtc");
    let _c2 = DockerCleanup::runtimes(&[&rt2], &[]);
    assert_eq!(r.create(&rt2, "nosuchtag")["status"], "creating");
    let st = r.settled(&rt2);
    assert_eq!(st["status"], "error", "{st}");
    let e = st["error"].as_str().unwrap();
    assert!(
        e.contains("the pull failed") && e.contains("no local image"),
        "{st}"
    );
}

#[test]
fn delete_orchestrator_removes_runtimes_networks_and_the_agents_container() {
    // The agent's "own container" is a test container named by AGENT_CONTAINER: removing
    // it is the observable self-removal (no unit of this host is touched).
    let me = Container::run();
    let r = rig(&[("AGENT_CONTAINER", me.name.as_str())]);
    let rt = unique("rto");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&r.parent]);
    assert_eq!(r.create(&rt, "v1")["status"], "creating");
    assert_eq!(r.settled(&rt)["status"], "success");
    let net = network_name(&r.parent, r.subnet.parse().unwrap());
    must(&format!("docker network inspect {net} >/dev/null"));

    let a = r.ack("delete_orchestrator", json!({"correlation_id": 3}));
    assert_eq!(a["status"], "accepted", "{a}");
    assert_eq!(a["poll_device_id"], "__orchestrator__");
    let st = wait_for(Duration::from_secs(40), "the orchestrator removal", || {
        let a = r.ack(
            "get_device_status",
            json!({"device_id": "__orchestrator__"}),
        );
        assert_ne!(a["status"], "error", "{a}");
        (a["status"] == "deleted").then_some(a)
    });
    assert_eq!(st["operation"], "delete_orchestrator");
    assert!(st["message"].as_str().unwrap().contains(&me.name), "{st}");
    for gone in [&rt, &me.name] {
        assert!(
            sh(&format!("docker inspect {gone} >/dev/null 2>&1")).is_err(),
            "{gone} still there"
        );
    }
    for gone in [&net, &format!("{rt}_internal")] {
        assert!(
            sh(&format!("docker network inspect {gone} >/dev/null 2>&1")).is_err(),
            "{gone} still there"
        );
    }
}

#[test]
fn a_link_that_is_down_is_shown_and_fails_health_only_when_required() {
    e2e::require_root();
    require_engine();
    let pki = Pki::new().unwrap();
    let (cert, key) = pki
        .client("agent", "down-1", 9, ClientOpts::default())
        .unwrap();
    let dir = TempDir::new("agd");
    let parent = unique("cd");
    let (a1, _, _) = subnets();
    let _lan = HostLan::new(&parent, &format!("{a1}.2/24"), &format!("{a1}.1/24"));
    let netmon = HostNetmon::start(dir.path(), &[&parent]);
    // A port nobody listens on: bound then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://localhost:{port}");
    let (c, k, ca) = (
        cert.display().to_string(),
        key.display().to_string(),
        pki.ca_cert.display().to_string(),
    );
    let agent = AgentProc::start(
        dir.path(),
        &netmon.socket,
        &[
            "--cloud-url",
            &url,
            "--cloud-cert",
            &c,
            "--cloud-key",
            &k,
            "--cloud-ca",
            &ca,
        ],
    );
    agent.wait_linked(&[&parent]);
    let c = wait_for(Duration::from_secs(20), "the link's first failure", || {
        let s = agent.status();
        (s["cloud"]["why_not"] == "server_unreachable").then(|| s["cloud"].clone())
    });
    assert_eq!(c["connected"], false);
    assert_eq!(c["url"], url.as_str());
    let text = agent.must(&["status"]);
    assert!(
        text.contains(&format!("cloud: {url} not connected: server unreachable")),
        "{text}"
    );
    agent.must(&["health"]);
    let h = agent.cli(&["health", "--require-cloud"]);
    assert!(!h.status.success());
    let err = String::from_utf8_lossy(&h.stderr);
    assert!(
        err.contains("the cloud link to") && err.contains("server unreachable"),
        "{err}"
    );

    // Without --cloud-url: local only, no link in status.
    let dir2 = TempDir::new("agl");
    let local = AgentProc::start(dir2.path(), &netmon.socket, &[]);
    assert_eq!(local.status()["cloud"], Value::Null);
}
