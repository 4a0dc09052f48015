//! Reconcile against the real engine: the executor applies plans, is idempotent, follows
//! a LAN change, keeps parents apart, restores MACs, and clears stale networks.
//! Each test has its own LAN (a host veth with a unique name and subnet) and removes
//! everything it made, also on panic (Drop guards).

use std::net::Ipv4Addr;

use agent::cache::InterfaceCache;
use agent::engine::{Docker, MANAGED_LABEL};
use agent::plan::{Step, network_name};
use agent::reconcile::{ReconcileOptions, ReconcileReport, reconcile};
use agent::vnics::{MacMethod, Vnic, VnicStore};
use e2e::TempDir;
use e2e::docker::{Container, Lan, discovery, docker, remove_network, require_engine};
use ipc::MacAddr;
use ipnetwork::Ipv4Network;

struct Rig {
    docker: Docker,
    store: VnicStore,
    cache: InterfaceCache,
    _dir: TempDir,
}

impl Rig {
    fn new(lans: &[&Lan]) -> Rig {
        require_engine();
        let dir = TempDir::new("st");
        let mut cache = InterfaceCache::default();
        cache.apply(&discovery(lans));
        Rig {
            docker: Docker::new(Some("unix:///var/run/docker.sock")).expect("engine handle"),
            store: VnicStore::open(dir.path()),
            cache,
            _dir: dir,
        }
    }

    fn add(&mut self, container: &Container, vnic: Vnic) {
        self.store
            .update(|r| r.entry(container.name.clone()).or_default().push(vnic))
            .expect("store update");
    }

    async fn reconcile(&mut self) -> ReconcileReport {
        let opts = ReconcileOptions {
            dry_run: false,
            parallelism: 8,
            reattach: Default::default(),
            leases: Default::default(),
        };
        let out = reconcile(&self.docker, self.store.runtimes(), &self.cache, &opts)
            .await
            .expect("reconcile");
        let mut r = out.report;
        r.store_error = agent::reconcile::record_into(&mut self.store, &out.records);
        assert!(
            !r.failed(),
            "reconcile failed: {}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        );
        assert!(r.store_error.is_none(), "{:?}", r.store_error);
        r
    }

    fn vnic(&self, container: &Container) -> Vnic {
        self.store.runtimes()[&container.name][0].clone()
    }
}

fn subnet(s: &str) -> Ipv4Network {
    s.parse().expect("subnet")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

fn dhcp(lan: &Lan, mac: &MacAddr) -> Vnic {
    Vnic::dhcp("eth1", &lan.parent, Some(*mac))
}

fn fixed(lan: &Lan, host: u8, mac: &MacAddr) -> Vnic {
    Vnic::fixed(
        "eth1",
        &lan.parent,
        ip(&lan.addr(host)),
        subnet(&lan.subnet),
        Some(ip(&lan.gateway)),
        Some(*mac),
    )
}

/// The container's address on a network, from the engine.
fn address_on(c: &Container, network: &str) -> String {
    c.networks()
        .into_iter()
        .find(|(n, _)| n == network)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("{} is not on {network}: {:?}", c.name, c.networks()))
}

/// The MAC `ip addr` inside the container shows on the link holding `addr`.
fn mac_inside(c: &Container, addr: &str) -> MacAddr {
    let link = c
        .link_with(addr)
        .unwrap_or_else(|| panic!("no link with {addr} in {}: {:?}", c.name, c.links()));
    link.mac
        .parse()
        .unwrap_or_else(|e| panic!("{e} inside {}", c.name))
}

fn count(r: &ReconcileReport, f: impl Fn(&Step) -> bool) -> usize {
    r.steps.iter().filter(|s| f(&s.step)).count()
}

#[tokio::test]
async fn executor_creates_network_connects_two_containers_sets_macs_and_is_idempotent() {
    require_engine();
    let lan = Lan::new();
    let (c1, c2) = (Container::run(), Container::run());
    let mut rig = Rig::new(&[&lan]);
    let (m1, m2) = (MacAddr::random_local(), MacAddr::random_local());
    rig.add(&c1, dhcp(&lan, &m1));
    rig.add(&c2, fixed(&lan, 50, &m2));

    let r = rig.reconcile().await;
    let net = network_name(&lan.parent, subnet(&lan.subnet));
    assert_eq!(r.engine_calls.network_create, 1, "{:?}", r.engine_calls);
    assert_eq!(r.engine_calls.connect, 2);
    assert_eq!(lan.networks(), vec![net.clone()]);
    let labels = docker(&["network", "inspect", "-f", "{{json .Labels}}", &net]);
    assert!(
        labels.contains(&format!("\"{MANAGED_LABEL}\":\"true\"")),
        "{labels}"
    );
    let ipam = docker(&["network", "inspect", "-f", "{{json .IPAM.Config}}", &net]);
    assert!(
        ipam.contains(&lan.host),
        "host reserved as an auxiliary address: {ipam}"
    );
    assert!(ipam.contains(&lan.gateway), "{ipam}");

    // What `ip` inside the containers shows.
    let a1 = address_on(&c1, &net);
    assert!(
        subnet(&lan.subnet).contains(ip(&a1)),
        "{a1} in {}",
        lan.subnet
    );
    assert_eq!(mac_inside(&c1, &a1), m1);
    assert_eq!(address_on(&c2, &net), lan.addr(50));
    assert_eq!(mac_inside(&c2, &lan.addr(50)), m2);

    // Recorded in the store.
    for (c, m) in [(&c1, &m1), (&c2, &m2)] {
        let v = rig.vnic(c);
        assert_eq!(v.docker_network_name.as_deref(), Some(net.as_str()));
        assert_eq!(v.mac_address, Some(m.to_string()), "written lower-case");
        assert!(v.mac_applied.is_some(), "{v:?}");
    }
    let e1 = r
        .steps
        .iter()
        .any(|s| matches!(&s.step, Step::SetMac { container, .. } if *container == c1.name));
    assert!(e1, "MAC verified after connect");

    // A second run changes nothing and makes no changing call.
    let r2 = rig.reconcile().await;
    assert!(r2.steps.is_empty(), "{:#?}", r2.steps);
    assert_eq!(r2.engine_calls.changing(), 0, "{:?}", r2.engine_calls);
}

#[tokio::test]
async fn lan_subnet_change_moves_containers_keeping_macs_and_the_static_ip() {
    require_engine();
    let mut lan = Lan::new();
    let (c1, c2) = (Container::run(), Container::run());
    let mut rig = Rig::new(&[&lan]);
    let (m1, m2) = (MacAddr::random_local(), MacAddr::random_local());
    rig.add(&c1, dhcp(&lan, &m1));
    rig.add(&c2, fixed(&lan, 50, &m2));
    rig.reconcile().await;
    let old_net = network_name(&lan.parent, subnet(&lan.subnet));
    let static_ip = lan.addr(50);

    lan.readdress();
    rig.cache.apply(&discovery(&[&lan]));
    let r = rig.reconcile().await;
    let new_net = network_name(&lan.parent, subnet(&lan.subnet));
    assert_ne!(old_net, new_net);
    assert_eq!(lan.networks(), vec![new_net.clone()], "old network removed");
    assert_eq!(r.engine_calls.network_create, 1);
    assert_eq!(r.engine_calls.network_remove, 1);
    assert_eq!(r.engine_calls.disconnect, 2);
    assert_eq!(r.engine_calls.connect, 2);
    // Two namespace reads per moved container: before its disconnect (a renamed link
    // gets its engine name back, docs/NAMES.md) and the check after its connect (the
    // plan does not look inside a container it reconnects; naming and verification
    // reuse the check).
    assert_eq!(r.engine_calls.mac_checks, 4, "{:?}", r.engine_calls);

    let a1 = address_on(&c1, &new_net);
    assert!(
        subnet(&lan.subnet).contains(ip(&a1)),
        "DHCP-mode vNIC follows the LAN: {a1}"
    );
    assert_eq!(mac_inside(&c1, &a1), m1);
    assert_eq!(
        address_on(&c2, &new_net),
        static_ip,
        "static vNIC keeps its address"
    );
    assert_eq!(mac_inside(&c2, &static_ip), m2);
    assert_eq!(
        rig.vnic(&c1).docker_network_name.as_deref(),
        Some(new_net.as_str())
    );
    assert!(
        r.notes
            .iter()
            .any(|n| matches!(n, agent::plan::Note::OffLanStatic { .. })),
        "the static vNIC is now off-LAN: {:?}",
        r.notes
    );

    let r3 = rig.reconcile().await;
    assert_eq!(r3.engine_calls.changing(), 0, "{:?}", r3.engine_calls);
}

#[tokio::test]
async fn eth1_and_eth10_style_parents_stay_apart() {
    require_engine();
    let p = e2e::unique("q");
    let mut lan_a = Lan::named(&p);
    let lan_b = Lan::named(&format!("{p}0"));
    let (c1, c2) = (Container::run(), Container::run());
    let mut rig = Rig::new(&[&lan_a, &lan_b]);
    let (m1, m2) = (MacAddr::random_local(), MacAddr::random_local());
    rig.add(&c1, dhcp(&lan_a, &m1));
    rig.add(&c2, dhcp(&lan_b, &m2));
    rig.reconcile().await;
    let net_b = network_name(&lan_b.parent, subnet(&lan_b.subnet));
    assert_eq!(
        lan_a.networks(),
        vec![network_name(&p, subnet(&lan_a.subnet))]
    );
    assert_eq!(lan_b.networks(), vec![net_b.clone()]);
    let id_b = docker(&["network", "inspect", "-f", "{{.Id}}", &net_b]);

    lan_a.readdress();
    rig.cache.apply(&discovery(&[&lan_a, &lan_b]));
    let r = rig.reconcile().await;
    assert!(
        r.steps.iter().all(|s| s.step.parent() == p),
        "only {p} moves: {:#?}",
        r.steps
    );
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{.Id}}", &net_b]),
        id_b
    );
    assert_eq!(mac_inside(&c2, &address_on(&c2, &net_b)), m2);
    let net_a = network_name(&p, subnet(&lan_a.subnet));
    assert_eq!(mac_inside(&c1, &address_on(&c1, &net_a)), m1);
}

#[tokio::test]
async fn restarted_container_gets_its_mac_back_on_the_next_reconcile() {
    require_engine();
    let lan = Lan::new();
    let c1 = Container::run();
    let mut rig = Rig::new(&[&lan]);
    let m1 = MacAddr::random_local();
    rig.add(&c1, dhcp(&lan, &m1));
    rig.reconcile().await;
    let net = network_name(&lan.parent, subnet(&lan.subnet));

    docker(&["restart", "-t", "1", &c1.name]);
    let a1 = address_on(&c1, &net);
    let after_restart = mac_inside(&c1, &a1);
    let r = rig.reconcile().await;
    if after_restart != m1 {
        // The engine recreated the endpoint with its own MAC (20.10 does): the MAC is
        // set, and the naming after it (planned with every MAC fix) finds the names.
        assert_eq!(r.steps.len(), 2, "{:#?}", r.steps);
        assert!(matches!(r.steps[0].step, Step::SetMac { .. }));
        assert!(matches!(r.steps[1].step, Step::Name { .. }));
        assert!(r.steps.iter().all(|s| s.ok), "{:#?}", r.steps);
        assert_eq!(r.engine_calls.connect + r.engine_calls.disconnect, 0);
        assert_eq!(r.engine_calls.mac_sets, 1);
        assert_eq!(rig.vnic(&c1).mac_applied, Some(MacMethod::Netns));
    } else {
        assert!(r.steps.is_empty());
    }
    assert_eq!(mac_inside(&c1, &address_on(&c1, &net)), m1);
}

#[tokio::test]
async fn stale_same_subnet_network_is_replaced() {
    require_engine();
    let lan = Lan::new();
    let elsewhere = Lan::new();
    let c1 = Container::run();
    // A leftover of ours with this LAN's subnet on another parent: the engine would
    // refuse the target with "Pool overlaps".
    let stale = e2e::unique("stale");
    docker(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        &lan.subnet,
        "-o",
        &format!("parent={}", elsewhere.parent),
        "--label",
        &format!("{MANAGED_LABEL}=true"),
        &stale,
    ]);
    docker(&["network", "connect", &stale, &c1.name]);
    let mut rig = Rig::new(&[&lan]);
    let m1 = MacAddr::random_local();
    rig.add(&c1, dhcp(&lan, &m1));
    let r = rig.reconcile().await;
    assert!(
        r.steps
            .iter()
            .any(|s| matches!(&s.step, Step::RemoveNetwork { network, .. } if *network == stale)),
        "{:#?}",
        r.steps
    );
    assert!(elsewhere.networks().is_empty(), "stale network removed");
    let net = network_name(&lan.parent, subnet(&lan.subnet));
    assert_eq!(mac_inside(&c1, &address_on(&c1, &net)), m1);
    remove_network(&stale);
}

#[tokio::test]
async fn old_deployment_network_is_adopted_whatever_its_name() {
    require_engine();
    let lan = Lan::new();
    let c1 = Container::run();
    let old = e2e::unique("dm-");
    docker(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        &lan.subnet,
        "--gateway",
        &lan.gateway,
        "-o",
        &format!("parent={}", lan.parent),
        &old,
    ]);
    docker(&["network", "connect", &old, &c1.name]);
    let mut rig = Rig::new(&[&lan]);
    let m1 = MacAddr::random_local();
    rig.add(&c1, dhcp(&lan, &m1));
    let r = rig.reconcile().await;
    assert_eq!(
        r.engine_calls.network_create + r.engine_calls.network_remove,
        0,
        "{:#?}",
        r.steps
    );
    assert_eq!(
        r.engine_calls.connect, 0,
        "already attached: {:#?}",
        r.steps
    );
    assert_eq!(lan.networks(), vec![old.clone()]);
    assert_eq!(mac_inside(&c1, &address_on(&c1, &old)), m1);
    assert_eq!(
        rig.vnic(&c1).docker_network_name.as_deref(),
        Some(old.as_str())
    );
    assert_eq!(count(&r, |s| matches!(s, Step::SetMac { .. })), 1);
}

#[tokio::test]
async fn stopped_container_is_connected_and_gets_its_mac_after_start() {
    require_engine();
    let lan = Lan::new();
    let c1 = Container::run();
    docker(&["stop", "-t", "1", &c1.name]);
    let mut rig = Rig::new(&[&lan]);
    let m1 = MacAddr::random_local();
    rig.add(&c1, dhcp(&lan, &m1));
    let r = rig.reconcile().await;
    assert_eq!(r.engine_calls.connect, 1);
    assert_eq!(count(&r, |s| matches!(s, Step::SetMac { .. })), 0);
    docker(&["start", &c1.name]);
    let r = rig.reconcile().await;
    assert_eq!(r.engine_calls.connect, 0, "{:#?}", r.steps);
    let net = network_name(&lan.parent, subnet(&lan.subnet));
    assert_eq!(mac_inside(&c1, &address_on(&c1, &net)), m1);
}

#[tokio::test]
async fn dry_run_plans_without_changing_anything() {
    require_engine();
    let lan = Lan::new();
    let c1 = Container::run();
    let mut rig = Rig::new(&[&lan]);
    rig.add(&c1, dhcp(&lan, &MacAddr::random_local()));
    let before = std::fs::read(rig.store.path()).expect("store written");
    let opts = ReconcileOptions {
        dry_run: true,
        parallelism: 4,
        reattach: Default::default(),
        leases: Default::default(),
    };
    let r = reconcile(&rig.docker, rig.store.runtimes(), &rig.cache, &opts)
        .await
        .expect("dry run")
        .report;
    assert!(r.dry_run);
    // Create, connect, MAC check, naming.
    assert_eq!(r.steps.len(), 4, "{:#?}", r.steps);
    assert_eq!(r.engine_calls.changing(), 0);
    assert!(lan.networks().is_empty());
    assert_eq!(std::fs::read(rig.store.path()).expect("store"), before);
}

#[tokio::test]
async fn failed_network_creation_is_reported_and_its_connects_skipped() {
    require_engine();
    let c1 = Container::run();
    // netmon says this parent is up with an address, but the kernel has no such link:
    // the engine refuses the macvlan network.
    let ghost = e2e::unique("gh");
    let prefix = e2e::docker::unique_prefix();
    let mut iface = ipc::Interface::named(&ghost);
    iface.index = Some(999_999);
    iface.status = Some(ipc::Status::Up);
    iface.ipv4_addresses =
        vec![ipc::Ipv4Address::new(ip(&format!("{prefix}.2")), 24).expect("addr")];
    iface.gateway = Some(ip(&format!("{prefix}.1")));
    let ev = ipc::Event {
        kind: ipc::EventKind::NetworkChange(iface),
        version: None,
        instance: None,
        seq: None,
    };
    let mut rig = Rig::new(&[]);
    rig.cache.apply(&ev);
    rig.add(
        &c1,
        Vnic::dhcp("eth1", &ghost, Some(MacAddr::random_local())),
    );
    let opts = ReconcileOptions {
        dry_run: false,
        parallelism: 4,
        reattach: Default::default(),
        leases: Default::default(),
    };
    let r = reconcile(&rig.docker, rig.store.runtimes(), &rig.cache, &opts)
        .await
        .expect("reconcile runs")
        .report;
    assert!(r.failed());
    let create = r
        .steps
        .iter()
        .find(|s| matches!(s.step, Step::CreateNetwork { .. }))
        .expect("create step");
    assert!(!create.ok && create.error.is_some(), "{create:?}");
    for s in r
        .steps
        .iter()
        .filter(|s| !matches!(s.step, Step::CreateNetwork { .. }))
    {
        assert!(!s.ok, "{s:?}");
        assert!(
            s.error.as_deref().unwrap_or("").starts_with("skipped:"),
            "{s:?}"
        );
    }
    assert_eq!(r.engine_calls.connect, 0);
    assert!(e2e::docker::networks_on(&ghost).is_empty());
    assert_eq!(rig.vnic(&c1).docker_network_name, None);
}

#[tokio::test]
async fn parent_down_and_up_detaches_nothing() {
    require_engine();
    let lan = Lan::new();
    let c1 = Container::run();
    let mut rig = Rig::new(&[&lan]);
    let m1 = MacAddr::random_local();
    rig.add(&c1, dhcp(&lan, &m1));
    rig.reconcile().await;
    let net = network_name(&lan.parent, subnet(&lan.subnet));
    let before = address_on(&c1, &net);

    e2e::must(&format!("ip link set {} down", lan.parent));
    // netmon's down event, in the older sidecar's shape (no addresses, status down).
    let down: ipc::Event = serde_json::from_str(&format!(
        r#"{{"type":"network_change","data":{{"interface":"{}","ipv4_addresses":[],"status":"down"}}}}"#,
        lan.parent
    ))
    .expect("event");
    rig.cache.apply(&down);
    let r = rig.reconcile().await;
    assert!(r.steps.is_empty(), "{:#?}", r.steps);
    assert_eq!(r.engine_calls.changing(), 0);
    assert!(
        r.notes
            .iter()
            .any(|n| matches!(n, agent::plan::Note::ParentDown { .. }))
    );
    assert_eq!(address_on(&c1, &net), before, "still attached");

    e2e::must(&format!("ip link set {} up", lan.parent));
    rig.cache.apply(&discovery(&[&lan]));
    let r = rig.reconcile().await;
    assert_eq!(r.engine_calls.changing(), 0, "{:#?}", r.steps);
    assert_eq!(mac_inside(&c1, &before), m1);
}
