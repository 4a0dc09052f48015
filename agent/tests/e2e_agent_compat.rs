//! End to end against the OLDER Python sidecar's wire shapes: the test serves the
//! netmon socket itself and speaks exactly as the sidecar did (no `version`,
//! `instance` or `seq`; no `status` on discovery and normal changes; down and removed
//! events carrying only `interface`, `ipv4_addresses` and `status`). The real `agent`
//! binary and the real engine, a real parent link in the host namespace: the runtime
//! follows an old-style change to a new subnet with its stored MAC, and an old-style
//! down (and removed) event detaches nothing while `status` shows the cached entry.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use agent::plan::network_name;
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, changing_calls, container_networks, has, stored_mac, subnets,
};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, must, unique, wait_for};
use serde_json::{Value, json};

/// A stand-in for the older sidecar: a Unix socket server that sends a
/// `network_discovery` of its current interfaces on every connection, writes the
/// events it is given to every client, and answers requests with
/// `{"success": true, "id": ...}`. Stopped (socket removed) on drop.
struct OldSidecar {
    path: PathBuf,
    interfaces: Arc<Mutex<Vec<Value>>>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn line(v: &Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).expect("serialise");
    l.push(b'\n');
    l
}

impl OldSidecar {
    fn start(path: &Path, interfaces: Vec<Value>) -> OldSidecar {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the sidecar socket");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let interfaces = Arc::new(Mutex::new(interfaces));
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (interfaces, clients, stop) = (interfaces.clone(), clients.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(e) => panic!("sidecar accept: {e}"),
                    };
                    stream.set_nonblocking(false).expect("blocking stream");
                    let mut w = stream.try_clone().expect("clone stream");
                    let mut all = clients.lock().unwrap();
                    // The sidecar's discovery: no version, instance or seq; no status.
                    let discovery = json!({
                        "type": "network_discovery",
                        "data": {
                            "interfaces": interfaces.lock().unwrap().clone(),
                            "timestamp": ipc::timestamp_now(),
                        }
                    });
                    if w.write_all(&line(&discovery)).is_err() {
                        continue;
                    }
                    all.push(w);
                    drop(all);
                    let clients = clients.clone();
                    std::thread::spawn(move || answer_requests(stream, clients));
                }
            })
        };
        OldSidecar {
            path: path.to_path_buf(),
            interfaces,
            clients,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// What the next discovery reports (the sidecar's current state).
    fn set_interfaces(&self, interfaces: Vec<Value>) {
        *self.interfaces.lock().unwrap() = interfaces;
    }

    /// Sends one event to every connected client; panics when none is connected (the
    /// event would be lost, which the sidecar never did to a connected consumer).
    fn send(&self, event: &Value) {
        let mut all = self.clients.lock().unwrap();
        let bytes = line(event);
        all.retain_mut(|c| c.write_all(&bytes).is_ok());
        assert!(!all.is_empty(), "no agent connected to the sidecar socket");
    }
}

/// Replies to each request line on `stream` as the sidecar did (`ping`, `discover`,
/// `get_status` all succeed; this test never needs more).
fn answer_requests(stream: UnixStream, clients: Arc<Mutex<Vec<UnixStream>>>) {
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for l in BufReader::new(stream).lines() {
        let Ok(l) = l else { return };
        let id = serde_json::from_str::<Value>(&l)
            .ok()
            .and_then(|v| v.get("id").cloned());
        let reply = match id {
            Some(id) => json!({"success": true, "id": id}),
            None => json!({"success": true}),
        };
        // Under the clients lock so a reply never interleaves with an event.
        let _held = clients.lock().unwrap();
        if w.write_all(&line(&reply)).is_err() {
            return;
        }
    }
}

impl Drop for OldSidecar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(all) = self.clients.lock() {
            for c in all.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The parent as the old sidecar reported an up interface: every field of its time,
/// none of our extensions (`status`, `kind`, `ipv6_addresses`).
fn old_up(parent: &str, prefix: &str) -> Value {
    let sys = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{parent}/{f}"))
            .unwrap_or_else(|e| panic!("/sys/class/net/{parent}/{f}: {e}"))
            .trim()
            .to_string()
    };
    json!({
        "interface": parent,
        "index": sys("ifindex").parse::<u32>().unwrap(),
        "operstate": "UP",
        "type": "ethernet",
        "mac": sys("address"),
        "mtu": sys("mtu").parse::<u32>().unwrap(),
        "ipv4_addresses": [{
            "address": format!("{prefix}.2"),
            "prefixlen": 24,
            "subnet": format!("{prefix}.0/24"),
            "network_address": format!("{prefix}.0"),
        }],
        "gateway": format!("{prefix}.1"),
        "timestamp": ipc::timestamp_now(),
    })
}

fn change(data: Value) -> Value {
    json!({"type": "network_change", "data": data})
}

/// The cached interface `name` in `agent status --json`, if any.
fn cached(agent: &AgentProc, name: &str) -> Option<Value> {
    agent.status()["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
}

#[test]
fn agent_follows_the_older_sidecars_events() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agc");
    let (a, b, _) = subnets();
    let p = unique("gc");
    let lan = HostLan::new(&p, &format!("{a}.2/24"), &format!("{a}.1/24"));
    let index = std::fs::read_to_string(format!("/sys/class/net/{p}/ifindex"))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let sidecar = OldSidecar::start(&dir.join("sidecar.sock"), vec![old_up(&p, &a)]);
    let agent = AgentProc::start(dir.path(), &sidecar.path, &[]);

    wait_for(
        Duration::from_secs(20),
        "the agent linked to the old sidecar and the engine",
        || {
            let s = agent.status();
            let up = cached(&agent, &p)
                .is_some_and(|i| i["status"] == "up" && i["ipv4"] == json!([format!("{a}.2/24")]));
            (s["netmon"]["connected"] == true && s["engine"]["reachable"] == true && up)
                .then_some(())
        },
    );
    let s = agent.status();
    assert!(
        s["netmon"]["instance"].is_null(),
        "the old sidecar sends no instance: {s}"
    );
    assert!(s["netmon"]["discoveries"].as_u64() >= Some(1), "{s}");

    // A DHCP-mode runtime lands on the network of the subnet the sidecar reported.
    agent.create_dhcp(&rt, &image, "eth1", &p);
    let mac = stored_mac(&agent, &rt, &p);
    let net_a = network_name(&p, format!("{a}.0/24").parse().unwrap());
    let net_b = network_name(&p, format!("{b}.0/24").parse().unwrap());
    wait_for(
        Duration::from_secs(20),
        "the runtime on subnet A with its MAC",
        || (has(&rt, &mac, &a) && container_networks(&rt).contains(&net_a)).then_some(()),
    );

    // The LAN really moves to B, and the sidecar reports it its way: a normal change
    // with no `status` field.
    lan.readdress(&format!("{a}.2/24"), &format!("{b}.2/24"));
    let peer: String = format!("{p}p").chars().take(15).collect();
    lan.gw_ns.must_ip(&format!("addr add {b}.1/24 dev {peer}"));
    let up_b = old_up(&p, &b);
    sidecar.set_interfaces(vec![up_b.clone()]);
    sidecar.send(&change(up_b.clone()));
    wait_for(
        Duration::from_secs(20),
        "the runtime moved to subnet B with its MAC",
        || {
            let nets = container_networks(&rt);
            (has(&rt, &mac, &b) && nets.contains(&net_b) && !nets.contains(&net_a)).then_some(())
        },
    );
    let i = cached(&agent, &p).expect("the parent in the cache");
    assert_eq!(i["status"], "up", "a change without status is up: {i}");
    assert_eq!(i["ipv4"], json!([format!("{b}.2/24")]), "{i}");
    let rts = agent.status()["runtimes"][&rt].clone();
    assert_eq!(rts[0]["network"], net_b.as_str(), "{rts}");

    // The old sidecar's down event: only interface, empty addresses and status. The
    // link really goes down too. Nothing is detached; the entry stays cached, down,
    // keeping what the earlier full record said (index).
    must(&format!("ip link set {p} down"));
    sidecar.set_interfaces(vec![{
        let mut d = up_b.clone();
        d["operstate"] = json!("DOWN");
        d["ipv4_addresses"] = json!([]);
        d
    }]);
    sidecar.send(&change(json!({
        "interface": p,
        "ipv4_addresses": [],
        "status": "down",
    })));
    let i = wait_for(
        Duration::from_secs(10),
        "the cached entry down after the old-style down event",
        || cached(&agent, &p).filter(|i| i["status"] == "down"),
    );
    assert_eq!(i["index"], index, "the down entry keeps its index: {i}");
    assert_eq!(i["ipv4"], json!([]), "{i}");
    // A reconcile while the parent is down plans nothing and says why.
    let r = agent.json(&["reconcile"]);
    assert!(
        r["steps"].as_array().is_some_and(Vec::is_empty),
        "a reconcile with the parent down planned steps: {r}"
    );
    assert_eq!(changing_calls(&r), 0, "{r}");
    assert!(
        r["notes"].to_string().contains(&p),
        "no note about the down parent: {r}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let nets = container_networks(&rt);
    assert!(
        nets.contains(&net_b),
        "{rt} was detached from {net_b} after the down event: {nets:?}"
    );
    let s = agent.status();
    assert_eq!(s["runtimes"][&rt][0]["network"], net_b.as_str(), "{s}");
    assert_eq!(s["runtimes"][&rt][0]["mac"], mac.as_str(), "{s}");
    assert!(
        cached(&agent, &p).is_some_and(|i| i["status"] == "down"),
        "{s}"
    );

    // Back up, reported the old way (no status): already right, nothing to change.
    must(&format!("ip link set {p} up"));
    sidecar.set_interfaces(vec![up_b.clone()]);
    sidecar.send(&change(old_up(&p, &b)));
    wait_for(Duration::from_secs(10), "the cached entry up again", || {
        cached(&agent, &p).filter(|i| i["status"] == "up")
    });
    wait_for(
        Duration::from_secs(20),
        "the runtime on B with its MAC after the link came back",
        || (has(&rt, &mac, &b) && container_networks(&rt).contains(&net_b)).then_some(()),
    );
    let r = agent.json(&["reconcile"]);
    assert_eq!(changing_calls(&r), 0, "nothing to change after up: {r}");

    // The old sidecar's removed event: the entry is forgotten, nothing is detached.
    sidecar.set_interfaces(vec![]);
    sidecar.send(&change(json!({
        "interface": p,
        "ipv4_addresses": [],
        "status": "removed",
    })));
    wait_for(
        Duration::from_secs(10),
        "the entry forgotten after the old-style removed event",
        || cached(&agent, &p).is_none().then_some(()),
    );
    let r = agent.json(&["reconcile"]);
    assert_eq!(
        changing_calls(&r),
        0,
        "a removed parent changed something: {r}"
    );
    assert!(
        container_networks(&rt).contains(&net_b),
        "{rt} was detached after the removed event"
    );
    assert!(agent.status()["netmon"]["connected"] == true);

    // Clean up through the agent (container, internal and macvlan network).
    agent.must(&["runtime", "delete", &rt]);
    drop(agent);
    drop(sidecar);
}
