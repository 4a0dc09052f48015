//! The daemon on the recording fake engine: what it answers while the engine is down
//! (at once, or after waiting as asked), and that the same commands work once the
//! engine is back, with the calls they made recorded; and that deletes side by side
//! on one parent remove its network only once their containers are gone. The control
//! socket is real.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::control::protocol::{Envelope, Reply, Request};
use agent::daemon::{Config, run_with};
use agent::engine::{Call, FakeEngine};
use agent::runtime::{CreateRequest, VnicRequest};
use e2e::TempDir;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

async fn ask(socket: &Path, request: Request, wait: Duration) -> Reply {
    let env = Envelope {
        id: Some(Value::from(7)),
        wait: Some(wait),
        request,
    };
    let mut s = UnixStream::connect(socket).await.expect("connect");
    s.write_all(&env.encode().unwrap()).await.unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    let reply: Reply = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(reply.id, Some(Value::from(7)), "{line}");
    reply
}

fn create(name: &str) -> Request {
    Request::RuntimeCreate(CreateRequest {
        name: name.into(),
        image: "img".into(),
        cmd: None,
        vnics: vec![VnicRequest {
            name: "eth0".into(),
            parent_interface: "p1".into(),
            network_mode: "dhcp".into(),
            ip: None,
            subnet: None,
            gateway: None,
            mac: None,
        }],
    })
}

/// A managed macvlan network on parent p1 with these containers on it, as a run on a
/// live parent leaves it.
fn managed_network_on_p1(fake: &FakeEngine, name: &str, containers: &[&str]) {
    fake.add_network(agent::engine::NetworkInfo {
        id: String::new(),
        name: name.into(),
        driver: "macvlan".into(),
        parent: Some("p1".into()),
        pools: Vec::new(),
        labels: agent::engine::managed_labels(),
        containers: containers.iter().map(|c| c.to_string()).collect(),
    });
}

/// The daemon on `fake`, with no netmon; returns its control socket once it is bound.
async fn start(
    dir: &TempDir,
    fake: Arc<FakeEngine>,
) -> (
    std::path::PathBuf,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), agent::daemon::DaemonError>>,
) {
    let socket = dir.join("agent.sock");
    let config = Config {
        netmon_socket: dir.join("no-netmon.sock"),
        state_dir: dir.join("state"),
        control_socket: socket.clone(),
        control_group: None,
        docker_host: None,
        reconcile_interval: Duration::from_secs(3600),
        parallelism: 4,
        health_grace: Duration::from_secs(10),
        internal_pool: agent::internal_pool::parse_pool(agent::internal_pool::DEFAULT_POOL)
            .unwrap(),
        cloud: None,
        dhcp: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(run_with(config, fake, shutdown.clone()));
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (socket, shutdown, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_while_the_engine_is_down_and_works_once_it_is_back() {
    e2e::require_root();
    let dir = TempDir::new("dmf");
    let fake = Arc::new(FakeEngine::new());
    fake.set_unreachable(true);
    let (socket, shutdown, daemon) = start(&dir, fake.clone()).await;

    // Status and health answer at once and say what is wrong.
    let status = ask(&socket, Request::Status, Duration::ZERO).await;
    let status = status.result.expect("status");
    assert_eq!(status["engine"]["reachable"], false, "{status}");
    let health = ask(&socket, Request::Health, Duration::ZERO).await;
    let problems = health.result.expect("health")["problems"].to_string();
    assert!(problems.contains("engine is not reachable"), "{problems}");
    assert!(problems.contains("netmon is not reachable"), "{problems}");

    // Engine work: refused at once without a wait, after the wait with one.
    let r = ask(
        &socket,
        Request::Reconcile { dry_run: false },
        Duration::ZERO,
    )
    .await;
    let e = r.error.expect("refused");
    assert!(
        e.contains("needs the container engine") && !e.contains("waited"),
        "{e}"
    );
    let t = std::time::Instant::now();
    let r = ask(&socket, create("rt1"), Duration::from_millis(300)).await;
    let e = r.error.expect("refused after the wait");
    assert!(e.contains("waited for it"), "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(
        fake.changes().is_empty(),
        "nothing changed: {:?}",
        fake.changes()
    );

    // The engine comes back while a create waits for it: the create goes through.
    fake.set_unreachable(false);
    let r = ask(&socket, create("rt1"), Duration::from_secs(20)).await;
    let created = r.result.unwrap_or_else(|| panic!("{:?}", r.error));
    assert_eq!(created["runtime"], "rt1");
    let state = &created["vnics"][0]["state"];
    assert_eq!(state["state"], "pending", "{created}");
    assert!(
        state["waiting_for"].as_str().unwrap().contains("p1"),
        "{state}"
    );
    let changes = fake.changes();
    let calls: Vec<Call> = changes.iter().map(|c| c.call).collect();
    assert_eq!(
        calls[..3],
        [
            Call::CreateInternalNetwork,
            Call::CreateContainer,
            Call::StartContainer
        ],
        "{changes:?}"
    );
    // Then at most the agent's own container (guessed when this test itself runs in
    // a container) joins the internal network.
    assert!(
        changes[3..]
            .iter()
            .all(|c| c.call == Call::Connect && c.target.ends_with(" rt1_internal")),
        "{changes:?}"
    );

    shutdown.cancel();
    daemon.await.expect("join").expect("clean exit");
    assert!(!socket.exists(), "the socket file is removed on exit");
}

/// Deletes side by side on one parent: the last one removes the parent's macvlan
/// network only after the others' containers are gone (before, it raced them and the
/// engine refused: "has active endpoints", seen with 10 deletes at once on 20.10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_delete_on_a_parent_removes_its_network_after_the_others_containers() {
    e2e::require_root();
    let dir = TempDir::new("dmd");
    let fake = Arc::new(FakeEngine::new());
    let (socket, shutdown, daemon) = start(&dir, fake.clone()).await;
    for rt in ["rt1", "rt2"] {
        let r = ask(&socket, create(rt), Duration::from_secs(20)).await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }
    // Both on the parent's managed network, as a run on a live parent leaves them.
    let net = "macvlan_p1_10.9.8.0_24";
    managed_network_on_p1(&fake, net, &["rt1", "rt2"]);

    // rt1's container removal is held; rt2's delete is the last on p1.
    let release = fake.pause_next_on(Call::RemoveContainer, "rt1");
    let first = tokio::spawn({
        let socket = socket.clone();
        async move {
            let d = Request::RuntimeDelete { name: "rt1".into() };
            ask(&socket, d, Duration::from_secs(20)).await
        }
    });
    // Once rt1 is out of the store, its delete is under way.
    loop {
        let list = ask(&socket, Request::RuntimeList, Duration::ZERO).await;
        if list.result.expect("list").get("rt1").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = tokio::spawn({
        let socket = socket.clone();
        async move {
            let d = Request::RuntimeDelete { name: "rt2".into() };
            ask(&socket, d, Duration::from_secs(20)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fake.network(net).is_some(),
        "the network is kept while rt1's container is still on it"
    );
    drop(release);

    let first = first.await.unwrap();
    assert_eq!(
        first.result.expect("rt1 deleted")["removed_networks"],
        serde_json::json!([])
    );
    let second = second.await.unwrap();
    let second = second
        .result
        .unwrap_or_else(|| panic!("rt2: {:?}", second.error));
    assert_eq!(
        second["removed_networks"],
        serde_json::json!([net]),
        "{second}"
    );
    assert!(fake.network(net).is_none(), "the network is removed");
    let calls = fake.changes();
    let at = |call: Call, target: &str| {
        calls
            .iter()
            .position(|c| c.call == call && c.target == target)
            .unwrap_or_else(|| panic!("no {call:?} {target}: {calls:?}"))
    };
    assert!(
        at(Call::RemoveContainer, "rt1") < at(Call::RemoveNetwork, net),
        "{calls:?}"
    );

    shutdown.cancel();
    daemon.await.expect("join").expect("clean exit");
}

/// A network the engine keeps ("has active endpoints": a container that is not ours
/// on it, or 20.10's stale count) does not fail the delete: it is named as left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_the_engine_keeps_is_reported_left_and_the_delete_succeeds() {
    e2e::require_root();
    let dir = TempDir::new("dml");
    let fake = Arc::new(FakeEngine::new());
    let (socket, shutdown, daemon) = start(&dir, fake.clone()).await;
    let r = ask(&socket, create("rt1"), Duration::from_secs(20)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let net = "macvlan_p1_10.9.7.0_24";
    managed_network_on_p1(&fake, net, &["rt1", "someone-else"]);

    let d = Request::RuntimeDelete { name: "rt1".into() };
    let r = ask(&socket, d, Duration::from_secs(20)).await;
    let deleted = r.result.unwrap_or_else(|| panic!("{:?}", r.error));
    assert_eq!(
        deleted["removed_networks"],
        serde_json::json!([]),
        "{deleted}"
    );
    let left = &deleted["left_networks"][0];
    assert_eq!(left["network"], net, "{deleted}");
    assert!(
        left["reason"]
            .as_str()
            .unwrap()
            .contains("active endpoints"),
        "{deleted}"
    );
    assert_eq!(
        fake.network(net).map(|n| n.containers),
        Some(vec!["someone-else".to_string()]),
        "the network and the other container on it stay"
    );
    let list = ask(&socket, Request::RuntimeList, Duration::ZERO).await;
    assert!(list.result.expect("list").get("rt1").is_none());

    shutdown.cancel();
    daemon.await.expect("join").expect("clean exit");
}
