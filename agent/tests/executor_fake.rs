//! The executor (`apply::execute`, `apply::ensure_mac`) against the recording fake
//! engine: phase order per parent, parallel parents, skip chains, what is recorded,
//! and idempotence. The same executor runs against the real engine in
//! `engine_reconcile.rs`; these pin the logic without one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent::apply::{self, MacError, StepResult};
use agent::engine::{
    Call, Engine, EngineError, FakeEngine, NetworkInfo, NetworkSpec, Pool, managed_labels,
};
use agent::plan::Step;
use agent::vnics::MacMethod;
use ipc::MacAddr;

const M1: &str = "02:aa:00:00:00:01";
const M2: &str = "02:aa:00:00:00:02";

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn spec(parent: &str, name: &str, subnet: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.to_string(),
        parent: parent.to_string(),
        pools: vec![Pool {
            subnet: subnet.parse().unwrap(),
            gateway: None,
        }],
        aux: Vec::new(),
        labels: managed_labels(),
        ip_range: None,
    }
}

fn old_network(fake: &FakeEngine, parent: &str, name: &str, subnet: &str) {
    let s = spec(parent, name, subnet);
    fake.add_network(NetworkInfo {
        id: String::new(),
        name: s.name,
        driver: "macvlan".to_string(),
        parent: Some(s.parent),
        pools: s.pools,
        labels: s.labels,
        containers: Vec::new(),
    });
}

/// A parent's full move: the containers leave `old` (on it already), `old` goes,
/// `new` is made, each container joins `new` and gets its MAC checked.
fn move_steps(parent: &str, old: &str, new: &str, members: &[(&str, &str)]) -> Vec<Step> {
    let p = parent.to_string();
    let mut steps: Vec<Step> = members
        .iter()
        .map(|(c, _)| Step::Disconnect {
            parent: p.clone(),
            container: c.to_string(),
            network: old.to_string(),
        })
        .collect();
    steps.push(Step::RemoveNetwork {
        parent: p.clone(),
        network: old.to_string(),
    });
    steps.push(Step::CreateNetwork {
        parent: p.clone(),
        spec: spec(parent, new, "10.20.0.0/24"),
    });
    for (c, m) in members {
        steps.push(Step::Connect {
            parent: p.clone(),
            container: c.to_string(),
            vnic: "eth1".to_string(),
            network: new.to_string(),
            ipv4: None,
            mac: Some(mac(m)),
        });
    }
    for (c, m) in members {
        steps.push(Step::SetMac {
            parent: p.clone(),
            container: c.to_string(),
            vnic: "eth1".to_string(),
            network: new.to_string(),
            mac: mac(m),
        });
    }
    steps
}

/// A fake with running containers attached to `old` on `parent`.
fn seeded(fake: &FakeEngine, parent: &str, old: &str, containers: &[&str]) {
    old_network(fake, parent, old, "10.10.0.0/24");
    for c in containers {
        fake.add_container(c, true, managed_labels());
    }
}

async fn attach(fake: &FakeEngine, old: &str, containers: &[&str]) {
    for c in containers {
        fake.connect(c, old, None, None).await.unwrap();
    }
    fake.clear_calls();
}

fn targets(fake: &FakeEngine, keep: impl Fn(&str) -> bool) -> Vec<(Call, String)> {
    fake.calls()
        .into_iter()
        .filter(|r| keep(&r.target))
        .map(|r| (r.call, r.target))
        .collect()
}

fn by_step(results: &[StepResult], f: impl Fn(&Step) -> bool) -> Vec<&StepResult> {
    results.iter().filter(|r| f(&r.step)).collect()
}

#[tokio::test]
async fn a_parent_runs_disconnect_remove_create_connect_then_set_mac_in_that_order() {
    let fake = FakeEngine::new();
    seeded(&fake, "p1", "old1", &["c1"]);
    attach(&fake, "old1", &["c1"]).await;
    let steps = move_steps("p1", "old1", "new1", &[("c1", M1)]);
    let before = fake.counts();
    let (results, macs) = apply::execute(&fake, steps.clone(), 4).await;

    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    let order: Vec<Step> = results.iter().map(|r| r.step.clone()).collect();
    assert_eq!(order, steps, "results come back in plan order");
    use Call::*;
    assert_eq!(
        targets(&fake, |_| true),
        vec![
            // The link on old1 gets its engine name back first, if it was renamed.
            (Container, "c1".to_string()),
            (Disconnect, "c1 old1".to_string()),
            (RemoveNetwork, "old1".to_string()),
            (CreateNetwork, "new1".to_string()),
            (Connect, "c1 new1".to_string()),
            (Container, "c1".to_string()),
            (SetMac, "c1 eth0".to_string()),
        ]
    );
    assert_eq!(macs.len(), 1);
    assert_eq!((macs[0].mac, macs[0].method), (mac(M1), MacMethod::Netns));
    let c1 = fake.peek("c1").unwrap();
    assert_eq!(c1.ns_links[0].mac, Some(mac(M1)), "{c1:?}");
    assert_eq!(
        macs[0].info.ns_links, c1.ns_links,
        "the outcome holds the links read after"
    );
    let counts = fake.counts().since(&before);
    assert_eq!(
        (
            counts.disconnect,
            counts.network_remove,
            counts.network_create,
            counts.connect
        ),
        (1, 1, 1, 1)
    );
    // Two reads: before the disconnect (a renamed link gets its engine name back)
    // and the MAC check after the connect (which the naming pass reuses).
    assert_eq!((counts.mac_checks, counts.mac_sets), (2, 1));
}

#[tokio::test]
async fn parents_run_in_parallel_one_held_call_does_not_hold_the_other() {
    let fake = Arc::new(FakeEngine::new());
    seeded(&fake, "p1", "old1", &["c1"]);
    old_network(&fake, "p2", "old2", "10.11.0.0/24");
    fake.add_container("c2", true, managed_labels());
    attach(&fake, "old1", &["c1"]).await;
    attach(&fake, "old2", &["c2"]).await;
    let mut steps = move_steps("p1", "old1", "new1", &[("c1", M1)]);
    steps.extend(move_steps("p2", "old2", "new2", &[("c2", M2)]));
    let release = fake.pause_next_on(Call::RemoveNetwork, "old1");

    let f = fake.clone();
    let run = tokio::spawn(async move { apply::execute(&*f, steps, 4).await });
    let p2_done = async {
        while !fake
            .calls()
            .iter()
            .any(|r| r.call == Call::SetMac && r.target.starts_with("c2"))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), p2_done)
        .await
        .expect("p2 finished while p1's remove was held");
    assert!(
        targets(&fake, |t| t.contains("new1")).is_empty(),
        "p1 went no further than its held remove: {:?}",
        fake.calls()
    );
    release.send(()).unwrap();
    let (results, macs) = run.await.unwrap();
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    assert_eq!(macs.len(), 2);
}

#[tokio::test]
async fn a_failed_remove_skips_the_create_and_connects_of_that_parent_only() {
    let fake = FakeEngine::new();
    seeded(&fake, "p1", "old1", &["c1"]);
    old_network(&fake, "p2", "old2", "10.11.0.0/24");
    fake.add_container("c2", true, managed_labels());
    attach(&fake, "old1", &["c1"]).await;
    attach(&fake, "old2", &["c2"]).await;
    let refused = EngineError::Api {
        status: 500,
        message: "remove network old1: driver failed".to_string(),
    };
    fake.fail_next_on(Call::RemoveNetwork, "old1", refused);
    let mut steps = move_steps("p1", "old1", "new1", &[("c1", M1)]);
    steps.extend(move_steps("p2", "old2", "new2", &[("c2", M2)]));
    let (results, macs) = apply::execute(&fake, steps, 4).await;

    let p1 = by_step(&results, |s| s.parent() == "p1");
    let remove = p1
        .iter()
        .find(|r| matches!(r.step, Step::RemoveNetwork { .. }))
        .unwrap();
    assert!(!remove.ok && remove.error.as_deref().unwrap().contains("driver failed"));
    for r in p1.iter().filter(|r| {
        matches!(
            r.step,
            Step::CreateNetwork { .. } | Step::Connect { .. } | Step::SetMac { .. }
        )
    }) {
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.error.as_deref(), Some("skipped: removing old1 failed"));
    }
    assert!(
        targets(&fake, |t| t.contains("new1")).is_empty(),
        "{:?}",
        fake.calls()
    );
    assert!(
        by_step(&results, |s| s.parent() == "p2")
            .iter()
            .all(|r| r.ok),
        "{results:#?}"
    );
    assert_eq!(macs.len(), 1, "p2's MAC verified");
    assert_eq!(macs[0].container, "c2");
}

#[tokio::test]
async fn a_failed_connect_skips_that_containers_mac_step_only() {
    let fake = FakeEngine::new();
    seeded(&fake, "p1", "old1", &["c1", "c2"]);
    attach(&fake, "old1", &["c1", "c2"]).await;
    let gone = EngineError::NotFound("connect c1 to new1: no such container".to_string());
    fake.fail_next_on(Call::Connect, "c1 ", gone);
    let steps = move_steps("p1", "old1", "new1", &[("c1", M1), ("c2", M2)]);
    let (results, macs) = apply::execute(&fake, steps, 4).await;

    let failed: Vec<&StepResult> = results.iter().filter(|r| !r.ok).collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(matches!(&failed[0].step, Step::Connect { container, .. } if container == "c1"));
    assert!(matches!(&failed[1].step, Step::SetMac { container, .. } if container == "c1"));
    assert_eq!(
        failed[1].error.as_deref(),
        Some("skipped: an earlier step for this container failed")
    );
    assert!(
        !fake
            .calls()
            .iter()
            .any(|r| r.call == Call::SetMac && r.target.starts_with("c1"))
    );
    assert_eq!(macs.len(), 1);
    assert_eq!(fake.peek("c2").unwrap().ns_links[0].mac, Some(mac(M2)));
}

#[tokio::test]
async fn running_the_same_steps_again_succeeds_and_changes_nothing_inside() {
    let fake = FakeEngine::new();
    seeded(&fake, "p1", "old1", &["c1"]);
    attach(&fake, "old1", &["c1"]).await;
    let steps = move_steps("p1", "old1", "new1", &[("c1", M1)]);
    let (first, _) = apply::execute(&fake, steps.clone(), 4).await;
    assert!(first.iter().all(|r| r.ok));
    let before = fake.counts();

    // Not connected to old1 any more, old1 gone, new1 there, already connected.
    let (again, macs) = apply::execute(&fake, steps, 4).await;
    assert!(again.iter().all(|r| r.ok), "{again:#?}");
    assert_eq!(
        macs[0].method,
        MacMethod::Engine,
        "right already: nothing set"
    );
    let delta = fake.counts().since(&before);
    assert_eq!((delta.network_create, delta.mac_sets), (0, 0), "{delta:?}");
    assert_eq!(
        fake.peek("c1").unwrap().endpoints.len(),
        1,
        "no second endpoint"
    );
}

#[tokio::test]
async fn ensure_mac_says_why_it_cannot() {
    let fake = FakeEngine::new();
    let e = apply::ensure_mac(&fake, "ghost", "n", mac(M1))
        .await
        .unwrap_err();
    assert!(matches!(e, MacError::NoContainer(_)), "{e}");
    fake.add_container("stopped", false, BTreeMap::new());
    let e = apply::ensure_mac(&fake, "stopped", "n", mac(M1))
        .await
        .unwrap_err();
    assert!(matches!(e, MacError::NotRunning(_)), "{e}");
    fake.add_container("c1", true, managed_labels());
    let e = apply::ensure_mac(&fake, "c1", "n", mac(M1))
        .await
        .unwrap_err();
    assert!(matches!(e, MacError::NoEndpoint { .. }), "{e}");
    fake.set_unreachable(true);
    let e = apply::ensure_mac(&fake, "c1", "n", mac(M1))
        .await
        .unwrap_err();
    assert!(
        matches!(e, MacError::Engine(ref x) if x.is_unreachable()),
        "{e}"
    );
}
