//! A whole reconcile run (observe, plan, apply, verify, record) against the recording
//! fake engine: what the real-engine tests in `engine_reconcile.rs` show, without an
//! engine, plus the faults that are hard to make a real engine produce on cue. With
//! them the refusals (issue 8): a step the engine refuses for good and a vNIC name
//! held inside by a link the agent does not own make the vNIC `failed` (the engine's
//! words or the holder and its network, and what to do) and the run refused only, so
//! the daemon retries at the cap; a 5xx stays `pending`. The real engine refuses the
//! same way in `e2e_agent_refusal.rs`.

use std::time::Duration;

use agent::cache::InterfaceCache;
use agent::engine::{Call, Engine, EngineError, FakeEngine, NetworkInfo, Pool, managed_labels};
use agent::plan::{Note, Step};
use agent::reconcile::{ReconcileOptions, ReconcileReport, reconcile, record_into};
use agent::vnic_state::{Facts, VnicState, vnic_state};
use agent::vnics::{MacMethod, Vnic, VnicStore};
use e2e::TempDir;
use ipc::{Event, MacAddr};

const M1: &str = "02:aa:00:00:00:11";
const NONE_MODE: &str = "connect c1 to macvlan_p1_10.7.0.0_24: container cannot be connected to multiple networks with one of the networks in private (none) mode";

fn lan(parent: &str, addr: &str, subnet: &str, gw: &str) -> InterfaceCache {
    let (a, len) = addr.split_once('/').unwrap();
    let net = subnet.split('/').next().unwrap();
    let json = format!(
        r#"{{"type":"network_discovery","data":{{"interfaces":[{{"interface":"{parent}","index":7,"status":"up","ipv4_addresses":[{{"address":"{a}","prefixlen":{len},"subnet":"{subnet}","network_address":"{net}"}}],"gateway":"{gw}"}}]}}}}"#
    );
    let ev: Event = serde_json::from_str(&json).unwrap();
    let mut c = InterfaceCache::default();
    c.apply(&ev);
    c
}

/// One run, its findings recorded by the store's owner, as the daemon does.
async fn run(fake: &FakeEngine, store: &mut VnicStore, cache: &InterfaceCache) -> ReconcileReport {
    let out = reconcile(fake, store.runtimes(), cache, &opts())
        .await
        .unwrap();
    let mut r = out.report;
    r.store_error = record_into(store, &out.records);
    r
}

fn opts() -> ReconcileOptions {
    ReconcileOptions {
        dry_run: false,
        parallelism: 4,
        reattach: Default::default(),
        leases: Default::default(),
    }
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

#[tokio::test]
async fn attach_then_nothing_to_do_then_follow_a_new_subnet() {
    let fake = FakeEngine::new();
    fake.add_container("c1", true, managed_labels());
    let dir = TempDir::new("rf");
    let mac: MacAddr = M1.parse().unwrap();
    let mut store = store_with(&dir, Vnic::dhcp("eth1", "p1", Some(mac)));
    let cache = lan("p1", "10.7.0.2/24", "10.7.0.0/24", "10.7.0.1");

    let r = run(&fake, &mut store, &cache).await;
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(r.engine_calls.network_create, 1);
    let v = &store.runtimes()["c1"][0];
    assert_eq!(
        v.docker_network_name.as_deref(),
        Some("macvlan_p1_10.7.0.0_24")
    );
    assert_eq!(
        v.mac_applied,
        Some(MacMethod::Netns),
        "the fake, like 20.10, ignores it on connect"
    );
    assert_eq!(fake.peek("c1").unwrap().ns_links[0].mac, Some(mac));

    fake.clear_calls();
    let again = run(&fake, &mut store, &cache).await;
    assert!(again.steps.is_empty(), "{:#?}", again.steps);
    assert_eq!(again.engine_calls.changing(), 0);
    assert!(fake.changes().is_empty(), "{:?}", fake.changes());

    let moved = lan("p1", "10.8.0.2/24", "10.8.0.0/24", "10.8.0.1");
    let r = run(&fake, &mut store, &moved).await;
    assert!(!r.failed(), "{r:#?}");
    assert!(
        fake.network("macvlan_p1_10.7.0.0_24").is_none(),
        "the old network went"
    );
    assert_eq!(
        fake.peek("c1").unwrap().ns_links[0].mac,
        Some(mac),
        "MAC kept"
    );
}

#[tokio::test]
async fn an_engine_down_is_an_error_and_a_bad_stored_mac_is_kept_and_noted() {
    let fake = FakeEngine::new();
    fake.add_container("c1", true, managed_labels());
    let dir = TempDir::new("rf");
    let mut bad = Vnic::dhcp("eth1", "p1", None);
    bad.mac = Some("02:zz:00:00:00:01".to_string());
    let mut store = store_with(&dir, bad);
    let cache = lan("p1", "10.7.0.2/24", "10.7.0.0/24", "10.7.0.1");

    fake.set_unreachable(true);
    let e = reconcile(&fake, store.runtimes(), &cache, &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fake engine is down"), "{e}");
    fake.set_unreachable(false);

    let r = run(&fake, &mut store, &cache).await;
    assert!(
        r.notes.iter().any(|n| matches!(n, Note::BadMac { .. })),
        "{:?}",
        r.notes
    );
    assert!(
        !r.steps
            .iter()
            .any(|s| matches!(s.step, Step::SetMac { .. }))
    );
    let v = &store.runtimes()["c1"][0];
    assert_eq!(
        v.mac.as_deref(),
        Some("02:zz:00:00:00:01"),
        "kept as written"
    );
    assert_eq!(
        v.mac_address, None,
        "the engine's MAC is not recorded over it"
    );
}

#[tokio::test]
async fn a_refused_connect_is_reported_and_the_next_run_repairs_it() {
    let fake = FakeEngine::new();
    fake.add_container("c1", true, managed_labels());
    let dir = TempDir::new("rf");
    let mut store = store_with(&dir, Vnic::dhcp("eth1", "p1", M1.parse().ok()));
    let cache = lan("p1", "10.7.0.2/24", "10.7.0.0/24", "10.7.0.1");
    let refused = EngineError::Api {
        status: 500,
        message: "connect: no IPv4 address left in the pool".to_string(),
    };
    fake.fail_next(Call::Connect, refused);

    let r = run(&fake, &mut store, &cache).await;
    assert!(r.failed());
    let connect = r
        .steps
        .iter()
        .find(|s| matches!(s.step, Step::Connect { .. }))
        .unwrap();
    assert!(
        connect
            .error
            .as_deref()
            .unwrap()
            .contains("no IPv4 address left")
    );
    assert!(
        !r.unconverged.is_empty(),
        "the verification pass still sees the gap"
    );
    let r = run(&fake, &mut store, &cache).await;
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(
        fake.counts().network_create,
        1,
        "the network from the first run is used"
    );
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
    let dir = TempDir::new("rf");
    let mut store = store_with(&dir, Vnic::dhcp("eth1", "p1", None));
    let cache = lan("p1", "10.7.0.2/24", "10.7.0.0/24", "10.7.0.1");

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
    let dir = TempDir::new("rf");
    let mut store = store_with(&dir, Vnic::dhcp("eth0", "p1", None));
    let cache = lan("p1", "10.7.0.2/24", "10.7.0.0/24", "10.7.0.1");

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
