//! The fake behaves like the engine where the agent depends on it.

use futures::StreamExt;

use super::{Call, FakeEngine};
use crate::engine::{ContainerSpec, Engine, EngineError, EngineEvent, NetworkSpec, managed_labels};

fn spec(name: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.to_string(),
        parent: "p1".to_string(),
        pools: vec![crate::engine::Pool {
            subnet: "10.5.0.0/24".parse().unwrap(),
            gateway: None,
        }],
        aux: Vec::new(),
        labels: managed_labels(),
        ip_range: None,
    }
}

#[tokio::test]
async fn a_told_failure_hits_once_and_down_fails_everything() {
    let fake = FakeEngine::new();
    fake.fail_next(Call::Version, EngineError::Protocol("bad reply".into()));
    assert!(matches!(
        fake.version().await,
        Err(EngineError::Protocol(_))
    ));
    assert!(fake.version().await.is_ok(), "only the next call");
    fake.set_unreachable(true);
    assert!(fake.list_networks().await.unwrap_err().is_unreachable());
    fake.set_unreachable(false);
    assert_eq!(fake.calls().len(), 3, "failed calls are recorded too");
}

#[tokio::test]
async fn networks_and_containers_behave_like_the_engine() {
    let fake = FakeEngine::new();
    let id = fake.create_network(&spec("n1")).await.unwrap();
    assert_eq!(
        fake.create_network(&spec("n1")).await.unwrap(),
        id,
        "existing one returned"
    );
    assert_eq!(fake.counts().network_create, 1);
    let c = ContainerSpec {
        name: "c1".into(),
        image: "img".into(),
        labels: managed_labels(),
        ..Default::default()
    };
    fake.create_container(&c).await.unwrap();
    assert!(matches!(
        fake.create_container(&c).await,
        Err(EngineError::Conflict(_))
    ));
    fake.start_container("c1").await.unwrap();
    fake.connect("c1", "n1", None, None).await.unwrap();
    fake.connect("c1", "n1", None, None)
        .await
        .expect("already connected is fine");
    let err = fake.remove_network("n1").await.unwrap_err();
    assert!(err.to_string().contains("active endpoints"), "{err}");
    let info = fake.container("c1").await.unwrap().unwrap();
    assert_eq!(info.ns_links.len(), 1);
    assert_eq!(
        info.ns_links[0].mac, info.endpoints[0].mac,
        "the engine's MAC inside"
    );
    fake.disconnect("c1", "n1").await.unwrap();
    fake.disconnect("c1", "n1")
        .await
        .expect("not connected is fine");
    fake.remove_network("n1").await.unwrap();
    fake.remove_network("n1").await.expect("gone is fine");
    assert_eq!(
        fake.list_managed_containers().await.unwrap(),
        vec!["c1".to_string()]
    );
}

#[tokio::test]
async fn events_follow_starts_and_removals() {
    let fake = FakeEngine::new();
    let mut events = fake.events();
    fake.add_container("c1", false, managed_labels());
    fake.start_container("c1").await.unwrap();
    fake.remove_container("c1").await.unwrap();
    let got: Vec<EngineEvent> = events.by_ref().take(2).map(Result::unwrap).collect().await;
    assert_eq!(
        got,
        vec![
            EngineEvent::ContainerStarted { name: "c1".into() },
            EngineEvent::ContainerGone { name: "c1".into() },
        ]
    );
}
