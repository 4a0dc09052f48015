//! The daemon on the recording fake engine: what it answers while the engine is down
//! (at once, or after waiting as asked), and that the same commands work once the
//! engine is back, with the calls they made recorded. The control socket is real.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_while_the_engine_is_down_and_works_once_it_is_back() {
    e2e::require_root();
    let dir = TempDir::new("dmf");
    let fake = Arc::new(FakeEngine::new());
    fake.set_unreachable(true);
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
    let daemon = tokio::spawn(run_with(config, fake.clone(), shutdown.clone()));
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
