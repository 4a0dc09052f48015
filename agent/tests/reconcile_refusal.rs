//! Refusals on the recording fake (issue 8): a step the engine refuses for good (a
//! 4xx other than the conflicts and races the next run resolves) and a vNIC name held
//! inside the container by a link the agent does not own make the vNIC `failed`, with
//! the engine's words (or the holder and its network) and what to do; the run counts
//! as refused only, so the daemon retries it at the cap. A transient error (a 5xx)
//! stays `pending`. The real engine refuses the same way in `e2e_agent_refusal.rs`.

use std::time::Duration;

use agent::cache::InterfaceCache;
use agent::engine::{Call, Engine, EngineError, FakeEngine, NetworkInfo, Pool, managed_labels};
use agent::plan::Step;
use agent::reconcile::{ReconcileOptions, ReconcileReport, reconcile, record_into};
use agent::vnic_state::{Facts, VnicState, vnic_state};
use agent::vnics::{Vnic, VnicStore};
use e2e::TempDir;
use ipc::Event;

const NONE_MODE: &str = "connect c1 to macvlan_p1_10.7.0.0_24: container cannot be connected to multiple networks with one of the networks in private (none) mode";

fn lan() -> InterfaceCache {
    let json = r#"{"type":"network_discovery","data":{"interfaces":[{"interface":"p1","index":7,"status":"up","ipv4_addresses":[{"address":"10.7.0.2","prefixlen":24,"subnet":"10.7.0.0/24","network_address":"10.7.0.0"}],"gateway":"10.7.0.1"}]}}"#;
    let ev: Event = serde_json::from_str(json).unwrap();
    let mut c = InterfaceCache::default();
    c.apply(&ev);
    c
}

async fn run(fake: &FakeEngine, store: &mut VnicStore, cache: &InterfaceCache) -> ReconcileReport {
    let opts = ReconcileOptions {
        dry_run: false,
        parallelism: 4,
        reattach: Default::default(),
        leases: Default::default(),
    };
    let out = reconcile(fake, store.runtimes(), cache, &opts)
        .await
        .unwrap();
    let mut r = out.report;
    r.store_error = record_into(store, &out.records);
    r
}

fn store_with(dir: &TempDir, vnic: Vnic) -> VnicStore {
    let mut store = VnicStore::open(dir.path());
    store
        .update(|r| {
            r.insert("c1".to_string(), vec![vnic]);
        })
        .unwrap();
    store
}

fn state(store: &VnicStore, cache: &InterfaceCache, last: &ReconcileReport) -> VnicState {
    let facts = Facts {
        engine_reachable: true,
        cache,
        last: Some(last),
        next_retry: Some(Duration::from_secs(1)),
    };
    vnic_state("c1", &store.runtimes()["c1"][0], &facts)
}

#[tokio::test]
async fn a_permanent_refusal_is_failed_a_transient_error_pending() {
    let fake = FakeEngine::new();
    fake.add_container("c1", true, managed_labels());
    let dir = TempDir::new("rr");
    let mut store = store_with(&dir, Vnic::dhcp("eth1", "p1", None));
    let cache = lan();

    let none_mode = EngineError::Api {
        status: 400,
        message: NONE_MODE.into(),
    };
    fake.fail_next_on(Call::Connect, "c1", none_mode);
    let r = run(&fake, &mut store, &cache).await;
    assert!(r.failed() && r.only_refused(), "{r:#?}");
    let connect = r
        .steps
        .iter()
        .find(|s| matches!(s.step, Step::Connect { .. }))
        .unwrap();
    let refusal = connect.refusal.as_ref().expect("refused for good");
    assert!(
        refusal.reason.contains("private (none) mode"),
        "{refusal:?}"
    );
    match state(&store, &cache, &r) {
        VnicState::Failed { reason, what_to_do } => {
            assert!(
                reason.contains("(400)") && reason.contains("(none) mode"),
                "{reason}"
            );
            assert!(
                what_to_do.contains("bridge network") && what_to_do.contains("every 30 s"),
                "{what_to_do}"
            );
        }
        other => panic!("{other:?}"),
    }

    // A 5xx is transient: pending, and not refused only (the fast schedule).
    fake.fail_next_on(
        Call::Connect,
        "c1",
        EngineError::Api {
            status: 500,
            message: "connect c1: driver failed programming".into(),
        },
    );
    let r = run(&fake, &mut store, &cache).await;
    assert!(r.failed() && !r.only_refused(), "{r:#?}");
    match state(&store, &cache, &r) {
        VnicState::Pending { waiting_for } => {
            assert!(
                waiting_for.contains("driver failed programming"),
                "{waiting_for}"
            )
        }
        other => panic!("{other:?}"),
    }

    // Once the engine takes it: attached.
    let r = run(&fake, &mut store, &cache).await;
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(state(&store, &cache, &r), VnicState::Attached);
}

#[tokio::test]
async fn a_name_held_by_a_link_of_a_foreign_network_is_failed_until_it_is_freed() {
    let fake = FakeEngine::new();
    // A network the agent did not make: the container's first link (eth0) is on it.
    fake.add_network(NetworkInfo {
        id: String::new(),
        name: "theirs".into(),
        driver: "bridge".into(),
        parent: None,
        pools: vec![Pool {
            subnet: "172.29.0.0/24".parse().unwrap(),
            gateway: None,
        }],
        labels: Default::default(),
        containers: Vec::new(),
    });
    fake.add_container("c1", true, managed_labels());
    fake.connect("c1", "theirs", None, None).await.unwrap();
    let dir = TempDir::new("rr");
    let mut store = store_with(&dir, Vnic::dhcp("eth0", "p1", None));
    let cache = lan();

    let r = run(&fake, &mut store, &cache).await;
    assert!(r.failed() && r.only_refused(), "{r:#?}");
    match state(&store, &cache, &r) {
        VnicState::Failed { reason, what_to_do } => {
            assert!(
                reason.contains("eth0") && reason.contains("network theirs"),
                "{reason}"
            );
            assert!(
                what_to_do.contains("another name")
                    && what_to_do.contains("docker network disconnect theirs c1"),
                "{what_to_do}"
            );
        }
        other => panic!("{other:?}"),
    }
    let links = fake.peek("c1").unwrap().ns_links;
    assert!(
        links.iter().any(|l| l.name == "eth0" && l.alias.is_none()),
        "their link is left as it is: {links:?}"
    );

    // The operator frees the name: the next run names the vNIC's link.
    fake.disconnect("c1", "theirs").await.unwrap();
    let r = run(&fake, &mut store, &cache).await;
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(state(&store, &cache, &r), VnicState::Attached);
    let links = fake.peek("c1").unwrap().ns_links;
    assert!(links.iter().any(|l| l.name == "eth0"), "{links:?}");
}
