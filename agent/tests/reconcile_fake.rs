//! A whole reconcile run (observe, plan, apply, verify, record) against the recording
//! fake engine: what the real-engine tests in `engine_reconcile.rs` show, without an
//! engine, plus the faults that are hard to make a real engine produce on cue.

use agent::cache::InterfaceCache;
use agent::engine::{Call, Engine, EngineError, FakeEngine, managed_labels};
use agent::plan::{Note, Step};
use agent::reconcile::{ReconcileOptions, ReconcileReport, reconcile, record_into};
use agent::vnics::{MacMethod, Vnic, VnicStore};
use e2e::TempDir;
use ipc::{Event, MacAddr};

const M1: &str = "02:aa:00:00:00:11";

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
