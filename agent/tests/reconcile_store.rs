//! Reconcile and the vNIC store against the real engine: a store that cannot record
//! what a run found is reported in the run's report, never hidden.

use agent::cache::InterfaceCache;
use agent::engine::Docker;
use agent::reconcile::{ReconcileOptions, ReconcileReport, reconcile, record_into};
use agent::vnics::{STORE_FILE, Vnic, VnicStore};
use e2e::TempDir;
use e2e::docker::{Container, Lan, discovery, require_engine};

fn opts() -> ReconcileOptions {
    ReconcileOptions {
        dry_run: false,
        parallelism: 4,
        reattach: Default::default(),
        leases: Default::default(),
    }
}

/// One run, its findings recorded by the store's owner, as the daemon does.
async fn run(docker: &Docker, store: &mut VnicStore, cache: &InterfaceCache) -> ReconcileReport {
    let out = reconcile(docker, store.runtimes(), cache, &opts())
        .await
        .expect("reconcile");
    let mut r = out.report;
    r.store_error = record_into(store, &out.records);
    r
}

#[tokio::test]
async fn faulted_store_is_reported_and_nothing_is_touched() {
    require_engine();
    let dir = TempDir::new("st");
    std::fs::write(dir.join(STORE_FILE), b"{ truncated").expect("write corrupt store");
    let mut store = VnicStore::open(dir.path());
    assert!(store.fault().is_some());
    let docker = Docker::new(Some("unix:///var/run/docker.sock")).expect("engine handle");
    let r = run(&docker, &mut store, &InterfaceCache::default()).await;
    let err = r.store_error.as_deref().expect("fault reported");
    assert!(
        err.contains("unreadable copy") || err.contains("parse"),
        "{err}"
    );
    assert!(r.steps.is_empty());
    assert_eq!(r.engine_calls.changing(), 0);
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "the corrupt copy is kept");
}

#[tokio::test]
async fn unwritable_store_is_reported_while_the_engine_is_still_fixed() {
    require_engine();
    let lan = Lan::new();
    let c = Container::run();
    let dir = TempDir::new("st");
    let state = dir.join("state");
    let mut store = VnicStore::open(&state);
    store
        .update(|r| {
            r.insert(
                c.name.clone(),
                vec![Vnic::dhcp(
                    "eth1",
                    &lan.parent,
                    "02:11:22:33:44:01".parse().ok(),
                )],
            )
        })
        .expect("seed store");
    // The state directory becomes a file: recording the results must fail.
    std::fs::remove_dir_all(&state).expect("remove state dir");
    std::fs::write(&state, b"not a directory").expect("block state dir");
    let mut cache = InterfaceCache::default();
    cache.apply(&discovery(&[&lan]));
    let docker = Docker::new(Some("unix:///var/run/docker.sock")).expect("engine handle");
    let r = run(&docker, &mut store, &cache).await;
    assert!(r.store_error.is_some(), "{r:#?}");
    assert!(r.steps.iter().all(|s| s.ok), "{:#?}", r.steps);
    assert_eq!(r.engine_calls.connect, 1);
    assert_eq!(
        store.runtimes()[&c.name][0].docker_network_name,
        None,
        "memory unchanged when the write failed"
    );
}
