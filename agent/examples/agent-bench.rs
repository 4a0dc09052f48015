//! agent-bench: how fast the agent moves N runtime containers to a new MACVLAN
//! network after their parent's subnet changes, against the real engine, compared
//! in the same run with the engine floor (the same calls straight to the API, 16 in
//! flight) and a shell script using the docker CLI one container at a time.
//!
//! Needs root (a veth parent in the host namespace) and the engine. Creates
//! `agbench-*` links, containers, networks and removes them afterwards.
//!
//! `agent-bench --sizes 1,10,50` (full run), `agent-bench --sizes 1,3` (smoke). An
//! example, not a binary, so release and image builds do not compile it:
//! `cargo build --release -p agent --bins --example agent-bench`, then
//! `./target/release/examples/agent-bench`.
//!
//! Over 400 lines: set-up, the measured move, the floor, the CLI script, the RSS probe
//! and the table live together so the bench stays one self-contained example.

#[path = "shared/common.rs"]
mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::cache::InterfaceCache;
use agent::engine::{ContainerSpec, Docker, NetworkSpec, Pool, managed_labels};
use agent::plan::network_name;
use agent::reconcile::{ReconcileOptions, reconcile};
use agent::vnics::{Vnic, VnicStore};
use anyhow::{Context, Result, bail};
use clap::Parser;
use common::{IMAGE, each, ensure_image, sh};
use futures::StreamExt;
use ipc::{Discovery, Event, EventKind, Interface, Ipv4Address, Status};
use ipnetwork::Ipv4Network;

#[derive(Parser, Debug)]
#[command(about = "Benchmark: reattaching N runtimes after a subnet change")]
struct Args {
    /// Numbers of runtimes, e.g. 1,10,50.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    parallelism: usize,
    /// Skip the docker-CLI script comparison.
    #[arg(long)]
    no_cli: bool,
}

/// Everything one size's run created, removed on drop.
struct Scene {
    parent: String,
    netns: String,
    containers: Vec<String>,
    /// The bridge network the containers start on (a runtime's first network).
    bridge: String,
    state: PathBuf,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let _ = sh(&format!(
                "docker rm -f {} >/dev/null 2>&1",
                self.containers.join(" ")
            ));
        }
        let _ = sh(&format!(
            "docker network rm {} >/dev/null 2>&1",
            self.bridge
        ));
        let _ = sh(&format!(
            "for n in $(docker network ls -q --filter driver=macvlan); do \
             [ \"$(docker network inspect -f '{{{{index .Options \"parent\"}}}}' $n)\" = {} ] && docker network rm $n; \
             done >/dev/null 2>&1",
            self.parent
        ));
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.parent));
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.netns));
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn discovery(parent: &str, host: Ipv4Addr, gw: Ipv4Addr) -> Event {
    let mut i = Interface::named(parent);
    i.status = Some(Status::Up);
    i.ipv4_addresses = Ipv4Address::new(host, 24).into_iter().collect();
    i.gateway = Some(gw);
    Event {
        kind: EventKind::NetworkDiscovery(Discovery {
            interfaces: vec![i],
            timestamp: None,
        }),
        version: Some(1),
        instance: None,
        seq: None,
    }
}

fn net(a: u8, b: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, a, b, 0), 24).expect("a /24")
}

struct Row {
    n: usize,
    agent: Duration,
    per_container: String,
    networks_created: u64,
    second_changing: u64,
    floor: Duration,
    cli: Option<Duration>,
}

fn host(s: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(s.network()) + 2)
}

fn gw(s: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(s.network()) + 1)
}

/// The parent veth (its peer in a namespace of its own), N running containers and
/// their vNICs in a fresh store.
async fn set_up(docker: &Docker, n: usize, id: &str) -> Result<(Scene, VnicStore)> {
    let parent: String = format!("agbench{id}").chars().take(15).collect();
    let state = std::env::temp_dir().join(format!("agbench-state-{id}"));
    let mut scene = Scene {
        parent: parent.clone(),
        netns: format!("agbench{id}"),
        containers: Vec::new(),
        bridge: format!("agbench-{id}-br"),
        state: state.clone(),
    };
    sh(&format!(
        "ip netns add {ns} && ip link add {parent} type veth peer name {parent}p && \
         ip link set {parent}p netns {ns} && ip -n {ns} link set {parent}p up && ip link set {parent} up",
        ns = scene.netns
    ))?;
    // A bridge of the bench's own, not the engine's default one (a host may run the
    // engine without docker0).
    sh(&format!(
        "docker network create {} >/dev/null",
        scene.bridge
    ))?;
    let names: Vec<String> = (0..n).map(|i| format!("agbench-{id}-{i}")).collect();
    scene.containers = names.clone();
    let bridge = &scene.bridge;
    let created: Vec<Result<()>> = futures::stream::iter(names.iter())
        .map(|name| async move {
            let spec = ContainerSpec {
                name: name.clone(),
                image: IMAGE.into(),
                network: Some(bridge.clone()),
                labels: managed_labels(),
                ..Default::default()
            };
            docker.create_container(&spec).await?;
            docker.start_container(name).await?;
            Ok(())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    std::fs::create_dir_all(&state)?;
    let mut store = VnicStore::open(&state);
    store.update(|r| {
        for name in &names {
            let mac = Some(ipc::MacAddr::random_local());
            r.insert(name.clone(), vec![Vnic::dhcp("eth1", &parent, mac)]);
        }
    })?;
    Ok((scene, store))
}

/// The floor: the same engine calls as the move straight to the API, `parallelism`
/// in flight, no MAC work; leaves the containers on the network it returns.
async fn floor_run(
    docker: &Docker,
    scene: &Scene,
    id: &str,
    old: &str,
    s3: Ipv4Network,
    parallelism: usize,
) -> Result<(Duration, String)> {
    let names = &scene.containers;
    let t = Instant::now();
    each(names, parallelism, |c| docker.disconnect(c, old)).await?;
    docker.remove_network(old).await?;
    let new = format!("agbench-floor-{id}");
    docker
        .create_network(&NetworkSpec {
            name: new.clone(),
            parent: scene.parent.clone(),
            pools: vec![Pool {
                subnet: s3,
                gateway: Some(gw(s3)),
            }],
            aux: vec![("host".into(), host(s3))],
            labels: managed_labels(),
            ip_range: None,
        })
        .await?;
    each(names, parallelism, |c| docker.connect(c, &new, None, None)).await?;
    Ok((t.elapsed(), new))
}

/// The docker CLI, one container at a time: `from` -> a new network on `s4`.
fn cli_run(scene: &Scene, id: &str, from: &str, s4: Ipv4Network) -> Result<(Duration, String)> {
    let to = format!("agbench-cli-{id}");
    let script = format!(
        "set -e\nfor c in {names}; do docker network disconnect {from} $c; done\n\
         docker network rm {from} >/dev/null\n\
         docker network create -d macvlan -o parent={parent} --subnet {s4} --gateway {g4} {to} >/dev/null\n\
         for c in {names}; do docker network connect {to} $c; done\n",
        names = scene.containers.join(" "),
        parent = scene.parent,
        g4 = gw(s4),
    );
    let t = Instant::now();
    sh(&script)?;
    Ok((t.elapsed(), to))
}

async fn run_size(docker: &Docker, n: usize, parallelism: usize, cli: bool) -> Result<Row> {
    let id = format!("{}{}", std::process::id() % 10000, n);
    let (scene, mut store) = set_up(docker, n, &id).await?;
    let parent = scene.parent.clone();
    let a = fastrand::u8(100..=150);
    let b = fastrand::u8(0..=250);
    let (s1, s2, s3, s4) = (net(a, b), net(a, b + 1), net(a, b + 2), net(a, b + 3));
    let opts = ReconcileOptions {
        dry_run: false,
        parallelism,
        reattach: Default::default(),
        leases: Default::default(),
    };

    // Initial attach on s1 (not measured).
    let mut cache = InterfaceCache::default();
    sh(&format!("ip addr add {}/24 dev {parent}", host(s1)))?;
    cache.apply(&discovery(&parent, host(s1), gw(s1)));
    let r = run(docker, &mut store, &cache, &opts).await?;
    if r.failed() {
        bail!("initial attach failed: {}", serde_json::to_string(&r)?);
    }

    // The measured move: s1 -> s2. reconcile() returns after verifying every MAC.
    sh(&format!(
        "ip addr add {}/24 dev {parent} && ip addr del {}/24 dev {parent}",
        host(s2),
        host(s1)
    ))?;
    cache.apply(&discovery(&parent, host(s2), gw(s2)));
    let t = Instant::now();
    let moved = run(docker, &mut store, &cache, &opts).await?;
    let agent = t.elapsed();
    if moved.failed() {
        bail!("the move failed: {}", serde_json::to_string(&moved)?);
    }
    let c = &moved.engine_calls;
    let per = |x: u64| x as f64 / n as f64;
    let per_container = format!(
        "disconnect {:.1}, connect {:.1}, engine reads {:.1}, namespace reads {:.1}, MAC set {:.1}, renames {:.1}",
        per(c.disconnect),
        per(c.connect),
        per(c.reads),
        per(c.mac_checks),
        per(c.mac_sets),
        per(c.renames)
    );
    let second = run(docker, &mut store, &cache, &opts).await?;

    let old = network_name(&parent, s2);
    let (floor, mut last) = floor_run(docker, &scene, &id, &old, s3, parallelism).await?;
    let cli = if cli {
        let (took, to) = cli_run(&scene, &id, &last, s4)?;
        last = to;
        Some(took)
    } else {
        None
    };
    // Detach before removing the containers: on 20.10, `rm -f` of many attached
    // containers can leave stale endpoints that keep the network from being removed.
    each(&scene.containers, parallelism, |c| {
        docker.disconnect(c, &last)
    })
    .await?;
    // 20.10 sometimes keeps a stale endpoint after every container left (moby/moby#43286):
    // the network then stays until the engine restarts. That spoils nothing measured,
    // so say it and go on with the next size.
    if let Err(e) = docker.remove_network(&last).await {
        eprintln!("warning: could not remove {last} after the run: {e}");
    }
    drop(store);
    drop(scene);
    Ok(Row {
        n,
        agent,
        per_container,
        networks_created: c.network_create,
        second_changing: second.engine_calls.changing(),
        floor,
        cli,
    })
}

/// RSS of the real `agent run` holding `n` runtimes, after its first reconcile.
fn agent_rss(state_dir: &Path) -> Result<u64> {
    // An example lives in target/<profile>/examples/; the agent binary one level up
    // (build it first: `cargo build -p agent --bins --example agent-bench`).
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench's own path has no target directory")?;
    let bin = profile_dir.join("agent");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build -p agent --bins --example agent-bench",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("agbench-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child = Command::new(&bin)
        .arg("--control-socket")
        .arg(dir.join("a.sock"))
        .args(["--log-level", "warn", "run", "--netmon-socket"])
        .arg(dir.join("absent.sock"))
        .arg("--state-dir")
        .arg(state_dir)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    std::thread::sleep(Duration::from_secs(3));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        bail!("agent-bench needs root (a veth parent in the host namespace)");
    }
    ensure_image()?;
    let docker = Docker::new(None)?;
    let v = docker.version().await.context("the engine")?;
    println!(
        "engine {} (API {}), {} CPUs, parallelism {}",
        v.version,
        v.api_version,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.parallelism
    );
    println!(
        "| N | agent: move + verify | floor (API, {p} in flight) | agent / floor | docker CLI script | calls per container | networks created | 2nd reconcile changing calls |",
        p = args.parallelism
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    for &n in &args.sizes {
        let row = run_size(&docker, n, args.parallelism, !args.no_cli).await?;
        ok &= row.second_changing == 0 && row.networks_created == 1;
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {} |",
            row.n,
            secs(row.agent),
            secs(row.floor),
            row.agent.as_secs_f64() / row.floor.as_secs_f64().max(1e-6),
            row.cli.map(secs).unwrap_or_else(|| "-".into()),
            row.per_container,
            row.networks_created,
            row.second_changing
        );
    }
    // RSS with the largest store, read back from a fresh agent (engine reachable,
    // no netmon: the state and engine links are what costs memory).
    let state = std::env::temp_dir().join(format!("agbench-rss-state-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let n = args.sizes.iter().copied().max().unwrap_or(1);
    let mut store = VnicStore::open(&state);
    store.update(|r| {
        for i in 0..n {
            r.insert(
                format!("rss-{i}"),
                vec![Vnic::dhcp("eth1", "rssparent", None)],
            );
        }
    })?;
    let rss = agent_rss(&state)?;
    let _ = std::fs::remove_dir_all(&state);
    println!(
        "agent RSS with {n} runtimes in its store: {:.1} MiB (target < 20 MiB)",
        rss as f64 / 1024.0
    );
    if !ok {
        bail!("a network was created more than once or a second reconcile changed something");
    }
    Ok(())
}

/// One reconcile run, its records merged into the store as the daemon does.
async fn run(
    docker: &Docker,
    store: &mut VnicStore,
    cache: &InterfaceCache,
    opts: &ReconcileOptions,
) -> Result<agent::reconcile::ReconcileReport> {
    let out = reconcile(docker, store.runtimes(), cache, opts).await?;
    store.update(|r| agent::reconcile::merge(r, &out.records))?;
    Ok(out.report)
}
