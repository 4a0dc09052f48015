//! agent-bench: how fast the agent moves N runtime containers to a new MACVLAN
//! network after their parent's subnet changes, against the real engine, compared
//! in the same run with the engine floor (the same calls straight to the API, 16 in
//! flight) and a shell script using the docker CLI one container at a time. Each
//! size runs `--rounds` rounds (3 by default) of an agent move followed by a floor
//! move, and the ratio is taken over their totals: the engine's speed drifts between
//! consecutive runs on a shared machine.
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

use agent::cache::{InterfaceCache, Lan};
use agent::engine::{CallCounts, ContainerSpec, Docker, Engine, managed_labels};
use agent::netns::{NameWant, engine_name};
use agent::plan::{network_name, target_spec};
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
    /// Rounds per size, each an agent move then a floor move (1 to 20): on a shared
    /// machine the engine's speed drifts between runs, so the ratio is taken over
    /// rounds that alternate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    rounds: u8,
    /// Skip the docker-CLI script comparison.
    #[arg(long)]
    no_cli: bool,
    /// Log the agent's steps on stderr at this level (e.g. info: each step with its
    /// duration and a timestamp, to see where a move waits). Off by default.
    #[arg(long)]
    log_level: Option<String>,
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
    /// Each round's (agent, floor).
    rounds: Vec<(Duration, Duration)>,
    /// The first move's calls per container.
    per_container: String,
    networks_created: u64,
    second_changing: u64,
    cli: Option<Duration>,
    /// Why the rounds stopped early: the engine kept a network (see [`stale_network`]).
    stopped: Option<String>,
}

impl Row {
    fn total(&self) -> (Duration, Duration) {
        let agent = self.rounds.iter().map(|r| r.0).sum();
        let floor = self.rounds.iter().map(|r| r.1).sum();
        (agent, floor)
    }
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

/// The floor: a move's engine calls straight to the API, `parallelism` in flight, no
/// MAC or naming work: from `old` to the network the agent would make for `to` (its
/// name, labels and pools), so the agent's next move starts from it as from its own.
async fn floor_run(
    docker: &Docker,
    scene: &Scene,
    old: &str,
    to: Ipv4Network,
    parallelism: usize,
) -> Result<(Duration, String)> {
    let names = &scene.containers;
    let lan = Lan {
        subnet: to,
        host: host(to),
        gateway: Some(gw(to)),
    };
    let spec = target_spec(&scene.parent, &lan, &[]);
    let t = Instant::now();
    each(names, parallelism, |c| docker.disconnect(c, old)).await?;
    let disconnected = t.elapsed();
    docker.remove_network(old).await?;
    docker.create_network(&spec).await?;
    let created = t.elapsed();
    each(names, parallelism, |c| {
        docker.connect(c, &spec.name, None, None)
    })
    .await?;
    tracing::info!(
        disconnects_ms = disconnected.as_millis() as u64,
        network_ms = (created - disconnected).as_millis() as u64,
        connects_ms = (t.elapsed() - created).as_millis() as u64,
        "floor done"
    );
    Ok((t.elapsed(), spec.name))
}

/// Gives every container's renamed links their engine names back (not timed), so the
/// floor's disconnects find and delete the links as the agent's do (docs/NAMES.md).
async fn give_back_names(docker: &Docker, names: &[String]) -> Result<()> {
    for c in names {
        let info = docker
            .container(c)
            .await?
            .context("a bench container is gone")?;
        let pid = info.pid.context("a bench container is not running")?;
        let wants: Vec<NameWant> = info
            .ns_links
            .iter()
            .filter_map(|l| {
                let engine = engine_name(l).filter(|e| *e != l.name)?;
                Some(NameWant {
                    index: l.index,
                    name: engine.to_string(),
                    endpoint: String::new(),
                    mac: None,
                })
            })
            .collect();
        if !wants.is_empty() {
            docker.name_inside(pid, wants).await?;
        }
    }
    Ok(())
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

/// Moves the parent's host address from `from` to `to` and tells the cache.
fn move_parent(
    cache: &mut InterfaceCache,
    parent: &str,
    from: Ipv4Network,
    to: Ipv4Network,
) -> Result<()> {
    sh(&format!(
        "ip addr add {}/24 dev {parent} && ip addr del {}/24 dev {parent}",
        host(to),
        host(from)
    ))?;
    cache.apply(&discovery(parent, host(to), gw(to)));
    Ok(())
}

async fn run_size(docker: &Docker, n: usize, args: &Args) -> Result<Row> {
    let id = format!("{}{}", std::process::id() % 10000, n);
    let rounds = usize::from(args.rounds);
    let (scene, mut store) = set_up(docker, n, &id).await?;
    let parent = scene.parent.clone();
    let a = fastrand::u8(100..=150);
    let b = fastrand::u8(0..=200);
    // Rounds are at most 20 (clap checks): b + 2 * 20 + 2 stays below 256.
    let subnet = |k: usize| net(a, b + k as u8);
    let opts = ReconcileOptions {
        dry_run: false,
        parallelism: args.parallelism,
        reattach: Default::default(),
        leases: Default::default(),
    };

    // Initial attach on the first subnet (not measured).
    let mut cache = InterfaceCache::default();
    let mut on = subnet(0);
    sh(&format!("ip addr add {}/24 dev {parent}", host(on)))?;
    cache.apply(&discovery(&parent, host(on), gw(on)));
    let r = run(docker, &mut store, &cache, &opts).await?;
    if r.failed() {
        bail!("initial attach failed: {}", serde_json::to_string(&r)?);
    }

    // Each round: the agent's move (the parent's address to a new /24; reconcile()
    // returns after verifying every MAC and name), a second reconcile (its changing
    // calls counted), then the floor moves the containers on to the next /24.
    let mut row = Row {
        n,
        rounds: Vec::new(),
        per_container: String::new(),
        networks_created: 0,
        second_changing: 0,
        cli: None,
        stopped: None,
    };
    let mut last = network_name(&parent, on);
    for r in 0..rounds {
        let to = subnet(2 * r + 1);
        move_parent(&mut cache, &parent, on, to)?;
        on = to;
        let (t, cpu) = (Instant::now(), Cpu::now());
        let moved = run(docker, &mut store, &cache, &opts).await?;
        let agent = t.elapsed();
        cpu.log("agent move");
        if moved.failed() {
            let report = serde_json::to_string(&moved)?;
            if r > 0 && stale_network(&report) {
                row.stopped = Some(format!("the agent's move {r}: {}", stale_says(&report)));
                break;
            }
            bail!("the move failed: {report}");
        }
        let c = &moved.engine_calls;
        if r == 0 {
            row.per_container = per_container(c, n);
        }
        row.networks_created += c.network_create;
        let second = run(docker, &mut store, &cache, &opts).await?;
        row.second_changing += second.engine_calls.changing();
        give_back_names(docker, &scene.containers).await?;
        let old = network_name(&parent, to);
        let cpu = Cpu::now();
        let floor = floor_run(docker, &scene, &old, subnet(2 * r + 2), args.parallelism).await;
        let (floor, network) = match floor {
            Err(e) if stale_network(&e.to_string()) => {
                row.stopped = Some(format!("the floor's move {r}: {e}"));
                last = old;
                break;
            }
            other => other?,
        };
        cpu.log("floor move");
        last = network;
        row.rounds.push((agent, floor));
    }
    if !args.no_cli {
        let (took, to) = cli_run(&scene, &id, &last, subnet(2 * rounds + 1))?;
        last = to;
        row.cli = Some(took);
    }
    // Detach before removing the containers: on 20.10, `rm -f` of many attached
    // containers can leave stale endpoints that keep the network from being removed.
    each(&scene.containers, args.parallelism, |c| {
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
    Ok(row)
}

/// Whether an error is the engine keeping a network after every container left it:
/// Docker 20.10's stale endpoint count (moby/moby#43286), seen after parallel
/// disconnects from one network. No network can be made on that parent again until
/// the engine restarts, so the rounds stop there and those done are reported.
fn stale_network(error: &str) -> bool {
    error.contains("active endpoints")
}

/// The part of a failed move's report that names the kept network.
fn stale_says(report: &str) -> String {
    let at = report.find("remove network").unwrap_or(0);
    report[at..].chars().take(200).collect()
}

/// CPU seconds used so far by this process and by the engine (dockerd), for the log.
struct Cpu {
    bench: f64,
    engine: f64,
}

impl Cpu {
    fn now() -> Cpu {
        let engine = sh("pidof dockerd")
            .ok()
            .and_then(|p| p.split_whitespace().next().map(str::to_string))
            .map(|pid| cpu_secs(&format!("/proc/{pid}/stat")))
            .unwrap_or(0.0);
        Cpu {
            bench: cpu_secs("/proc/self/stat"),
            engine,
        }
    }

    fn log(&self, what: &str) {
        let now = Cpu::now();
        tracing::info!(
            bench_cpu_s = format!("{:.2}", now.bench - self.bench),
            engine_cpu_s = format!("{:.2}", now.engine - self.engine),
            "{what}: CPU used"
        );
    }
}

/// utime + stime of a process's `stat` file, in seconds (0 when unreadable).
fn cpu_secs(stat: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<f64>() / ticks.max(1.0)
}

fn per_container(c: &CallCounts, n: usize) -> String {
    let per = |x: u64| x as f64 / n as f64;
    format!(
        "disconnect {:.1}, connect {:.1}, engine reads {:.1}, namespace reads {:.1}, MAC set {:.1}, renames {:.1}",
        per(c.disconnect),
        per(c.connect),
        per(c.reads),
        per(c.mac_checks),
        per(c.mac_sets),
        per(c.renames)
    )
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
    if let Some(level) = &args.log_level {
        ipc::logging::init(ipc::logging::LogFormat::Text, level)?;
    }
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
        "| N | agent: move + verify ({r} rounds) | floor (API, {p} in flight) | agent / floor | each round | docker CLI script | calls per container (first move) | networks created | 2nd reconcile changing calls |",
        r = args.rounds,
        p = args.parallelism
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    for &n in &args.sizes {
        let row = run_size(&docker, n, &args).await?;
        // One network per agent move; a run the engine stopped is judged on what it did.
        ok &= row.second_changing == 0
            && (row.stopped.is_some() || row.networks_created == row.rounds.len() as u64);
        let (agent, floor) = row.total();
        let each_round: Vec<String> = row
            .rounds
            .iter()
            .map(|(a, f)| format!("{:.2}x", a.as_secs_f64() / f.as_secs_f64().max(1e-6)))
            .collect();
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {} | {} |",
            row.n,
            secs(agent),
            secs(floor),
            agent.as_secs_f64() / floor.as_secs_f64().max(1e-6),
            each_round.join(", "),
            row.cli.map(secs).unwrap_or_else(|| "-".into()),
            row.per_container,
            row.networks_created,
            row.second_changing
        );
        if let Some(why) = &row.stopped {
            println!(
                "  N={}: {} of {} rounds, then the engine kept a network with no container on it \
                 (Docker 20.10's stale endpoint count, moby/moby#43286; it stays until the engine \
                 restarts): {why}",
                row.n,
                row.rounds.len(),
                args.rounds
            );
        }
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
