//! converge-bench: how fast the real agent (`agent run` + `netmon`, root, the real
//! engine) repairs and converges, each part compared with a floor measured in the
//! same run straight through the engine API.
//!
//! - repair: N runtimes attached; every one disconnected by hand from its macvlan
//!   network at once; time until the engine shows all N back with their stored MAC,
//!   with no trigger but the engine's events. Floor: the same N connects, 16 in flight.
//! - create: `agent runtime create` of N runtimes (default 100) with the default
//!   internal pool; time to all attached; each internal network must come from the
//!   pool. Floor: N internal networks + containers + connects through the API.
//! - cut: the agent reaches the engine through a socat proxy; the proxy is killed, the
//!   LAN moves, the proxy comes back after 10 s; time from the restore until every
//!   runtime is attached on the new subnet (target: 5 s).
//!
//! Each part exits non-zero when a correctness check fails. Creates `cvb*` links,
//! namespaces, containers and networks and removes them afterwards.
//!
//! `cargo build --release -p agent -p netmon --bins --example converge-bench`, then
//! `./target/release/examples/converge-bench` (full run), `--smoke` (small sizes).
//!
//! Over 400 lines: the three parts, their floors and their tables stay together so
//! each measurement reads next to its floor; the processes and checks are in `rig.rs`.

#[path = "shared/common.rs"]
mod common;
#[path = "converge_bench/rig.rs"]
mod rig;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use agent::engine::{ContainerSpec, Docker, NetworkSpec, Pool, managed_labels};
use agent::plan::network_name;
use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use common::each;
use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use rig::{AgentProc, Cleanup, IMAGE, Lan, lan_subnet};

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark: the agent's repair of hand disconnects, creation of many \
runtimes, and convergence after an engine cut during a LAN move"
)]
struct Args {
    /// Parts to run: repair, create, cut.
    #[arg(long, value_delimiter = ',', default_value = "repair,create,cut")]
    parts: Vec<String>,
    /// Runtimes disconnected by hand at once, one measurement per size.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    repair_sizes: Vec<usize>,
    /// Runtimes created (the default internal pool must hold them all).
    #[arg(long, default_value_t = 100)]
    create: usize,
    /// Runtimes moving while the engine is cut, one measurement per size.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    cut_sizes: Vec<usize>,
    /// How long the engine stays cut, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    cut_for: Duration,
    /// `agent runtime create`/`delete` CLI processes in flight at once.
    #[arg(long, default_value_t = 16)]
    cli_in_flight: usize,
    /// Calls in flight for the floors.
    #[arg(long, default_value_t = 16)]
    parallelism: usize,
    /// Small sizes for CI: repair 1,3; create 5; cut 1 for 2 s.
    #[arg(long)]
    smoke: bool,
}

/// Generous bound on every wait (a correctness failure, not a figure).
const LIMIT: Duration = Duration::from_secs(300);

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Subnets for the runs: 10.151-159.x.0/24 (the e2e tests use 10.160-250, agent-bench 10.100-150).
fn lan_pick() -> (u8, u8) {
    (fastrand::u8(151..=159), fastrand::u8(0..=250))
}

/// One agent with its netmon and LAN, and the runtimes it made (all removed on drop).
struct Scene {
    agent: AgentProc,
    _netmon: rig::Proc,
    cleanup: Cleanup,
    lan: Lan,
    names: Vec<String>,
    dir: std::path::PathBuf,
    _proxy: Option<rig::Proc>,
    /// Set once the part passed: the logs of a failed one are kept.
    passed: bool,
}

impl Scene {
    /// `tag` names the links and runtimes; `proxy` puts the engine behind socat.
    fn new(tag: &str, proxied: bool) -> Result<Scene> {
        let id = format!("cvb{}{tag}", std::process::id() % 10000);
        let id: String = id.chars().take(13).collect();
        let dir = std::env::temp_dir().join(format!("{id}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (a, b) = lan_pick();
        let lan = Lan::new(&id, lan_subnet(a, b))?;
        let cleanup = Cleanup {
            containers: Vec::new(),
            networks: Vec::new(),
            parent: id.clone(),
        };
        let (netmon, socket) = rig::netmon(&dir, &id)?;
        let (proxy, extra) = if proxied {
            let sock = dir.join("engine.sock");
            (
                Some(rig::proxy(&sock)?),
                vec![
                    "--docker-host".to_string(),
                    format!("unix://{}", sock.display()),
                ],
            )
        } else {
            (None, Vec::new())
        };
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let agent = AgentProc::start(&dir, &socket, &extra)?;
        agent.wait_linked(&id)?;
        Ok(Scene {
            agent,
            _netmon: netmon,
            cleanup,
            lan,
            names: Vec::new(),
            dir,
            _proxy: proxy,
            passed: false,
        })
    }

    fn parent(&self) -> String {
        self.lan.parent.clone()
    }

    fn network(&self) -> String {
        network_name(&self.lan.parent, self.lan.subnet)
    }

    /// `agent runtime create` of `n` runtimes, `in_flight` at once; their stored MACs.
    async fn create(&mut self, n: usize, in_flight: usize) -> Result<Vec<(String, MacAddr)>> {
        let base = self.names.len();
        let names: Vec<String> = (base..base + n)
            .map(|i| format!("{}-{i}", self.lan.parent))
            .collect();
        self.cleanup.containers.extend(names.iter().cloned());
        self.cleanup
            .networks
            .extend(names.iter().map(|n| format!("{n}_internal")));
        self.names.extend(names.iter().cloned());
        let p = self.parent();
        rig::cli_each(&self.agent, &names, in_flight, |n| {
            ["--wait", "300s", "runtime", "create", n, "--image", IMAGE]
                .into_iter()
                .map(String::from)
                .chain([
                    "--vnic".to_string(),
                    format!("name=eth1,parent={p},mode=dhcp"),
                ])
                .collect()
        })
        .await
        .context("agent runtime create")?;
        self.agent.macs(&names, &p)
    }

    /// Every vNIC `attached` in the agent's status and `health` 0 (waits for it).
    fn check_converged(&self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match self.agent.not_converged(&self.names)? {
                None => return Ok(()),
                Some(why) if Instant::now() > end => {
                    bail!(
                        "the agent does not say converged: {why} (logs in {})",
                        self.dir.display()
                    )
                }
                Some(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.agent.proc.stop();
        if self.passed {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

struct RepairRow {
    n: usize,
    disconnects: Duration,
    repaired: Duration,
    floor: Duration,
}

/// Part (a) for one size.
async fn repair(docker: &Docker, n: usize, args: &Args) -> Result<RepairRow> {
    let mut scene = Scene::new(&format!("r{n}"), false)?;
    let want = scene.create(n, args.cli_in_flight).await?;
    let net = scene.network();
    rig::wait_attached(docker, &want, &net, Instant::now(), LIMIT).await?;
    scene.check_converged()?;

    // By hand, every one at once.
    let t0 = Instant::now();
    each(&want, n.max(1), |(c, _)| docker.disconnect(c, &net)).await?;
    let disconnects = t0.elapsed();
    let repaired = rig::wait_attached(docker, &want, &net, t0, LIMIT)
        .await
        .context("the agent did not repair the hand disconnects")?;
    scene.check_converged()?;
    let on_parent = macvlan_on(docker, &scene.parent()).await?;
    ensure!(
        on_parent.len() == 1,
        "macvlan networks on the parent: {on_parent:?}"
    );

    // The floor: the agent stopped, the same reconnects straight through the API.
    scene.agent.proc.stop();
    each(&want, args.parallelism, |(c, _)| docker.disconnect(c, &net)).await?;
    let t = Instant::now();
    each(&want, args.parallelism, |(c, _)| {
        docker.connect(c, &net, None, None)
    })
    .await?;
    let floor = t.elapsed();
    scene.passed = true;
    Ok(RepairRow {
        n,
        disconnects,
        repaired,
        floor,
    })
}

/// The managed macvlan networks whose parent is `parent`.
async fn macvlan_on(docker: &Docker, parent: &str) -> Result<Vec<String>> {
    Ok(docker
        .list_networks()
        .await?
        .into_iter()
        .filter(|n| n.driver == "macvlan" && n.parent.as_deref() == Some(parent))
        .map(|n| n.name)
        .collect())
}

struct CreateRow {
    n: usize,
    created: Duration,
    attached: Duration,
    deleted: Duration,
    floor: Duration,
    pool_span: String,
}

/// Each runtime's internal network is a distinct subnet of the default pool; the
/// lowest and highest.
async fn check_internal(docker: &Docker, names: &[String]) -> Result<String> {
    let pool: Ipv4Network = agent::internal_pool::DEFAULT_POOL.parse()?;
    let nets = docker.list_networks().await?;
    let mut seen = BTreeSet::new();
    for n in names {
        let want = format!("{n}_internal");
        let net = nets
            .iter()
            .find(|x| x.name == want)
            .with_context(|| format!("{want} does not exist"))?;
        let sub = net.pools.first().map(|p| p.subnet).context("no subnet")?;
        ensure!(
            pool.contains(sub.network()) && sub.prefix() >= pool.prefix(),
            "{want} is on {sub}, outside the pool {pool}"
        );
        ensure!(seen.insert(sub.network()), "{want}: {sub} used twice");
    }
    let lo = seen.first().map(|a| a.to_string()).unwrap_or_default();
    let hi = seen.last().map(|a| a.to_string()).unwrap_or_default();
    Ok(format!("{lo} .. {hi} (/28s)"))
}

/// Part (b): `agent runtime create` of N runtimes, then `delete` of them all.
async fn create(docker: &Docker, args: &Args) -> Result<CreateRow> {
    let n = args.create;
    let mut scene = Scene::new(&format!("c{n}"), false)?;
    let t0 = Instant::now();
    let want = scene.create(n, args.cli_in_flight).await?;
    let created = t0.elapsed();
    let net = scene.network();
    let attached = rig::wait_attached(docker, &want, &net, t0, LIMIT).await?;
    scene.check_converged()?;
    let pool_span = check_internal(docker, &scene.names).await?;

    let t = Instant::now();
    rig::cli_each(&scene.agent, &scene.names, args.cli_in_flight, |n| {
        ["--wait", "300s", "runtime", "delete", n]
            .map(String::from)
            .to_vec()
    })
    .await
    .context("agent runtime delete")?;
    let deleted = t.elapsed();
    let nets = docker.list_networks().await?;
    for n in &scene.names {
        ensure!(
            docker.container(n).await?.is_none(),
            "container {n} is left"
        );
        let internal = format!("{n}_internal");
        ensure!(
            !nets.iter().any(|x| x.name == internal),
            "{internal} is left"
        );
    }
    let left = macvlan_on(docker, &scene.parent()).await?;
    ensure!(
        left.is_empty(),
        "macvlan networks left on the parent: {left:?}"
    );

    scene.agent.proc.stop();
    let floor = create_floor(docker, &mut scene, n, args.parallelism).await?;
    scene.passed = true;
    Ok(CreateRow {
        n,
        created,
        attached,
        deleted,
        floor,
        pool_span,
    })
}

/// The creation floor straight through the API: the macvlan network, then per
/// runtime an internal /28 (from 198.19.240.0/20), the container on it, its start
/// and its connect, `parallelism` runtimes at once.
async fn create_floor(
    docker: &Docker,
    scene: &mut Scene,
    n: usize,
    parallelism: usize,
) -> Result<Duration> {
    ensure!(n <= 256, "the floor has /28s for 256 runtimes");
    let names: Vec<(usize, String)> = (0..n)
        .map(|i| (i, format!("{}-f{i}", scene.parent())))
        .collect();
    for (_, c) in &names {
        scene.cleanup.containers.push(c.clone());
        scene.cleanup.networks.push(format!("{c}_internal"));
    }
    let lan = scene.lan.subnet;
    let at = |k: u32| std::net::Ipv4Addr::from(u32::from(lan.network()) + k);
    let macvlan = format!("{}-floor", scene.parent());
    let t = Instant::now();
    docker
        .create_network(&NetworkSpec {
            name: macvlan.clone(),
            parent: scene.parent(),
            pools: vec![Pool {
                subnet: lan,
                gateway: Some(at(1)),
            }],
            aux: vec![("host".into(), at(2))],
            labels: managed_labels(),
            ip_range: None,
        })
        .await?;
    let base = u32::from(std::net::Ipv4Addr::new(198, 19, 240, 0));
    each(&names, parallelism, |(i, c)| {
        let macvlan = &macvlan;
        async move {
            let internal = format!("{c}_internal");
            let sub = Ipv4Network::new((base + 16 * *i as u32).into(), 28).expect("a /28");
            docker
                .create_internal_network(&internal, sub, &managed_labels())
                .await?;
            docker
                .create_container(&ContainerSpec {
                    name: c.clone(),
                    image: IMAGE.into(),
                    network: Some(internal),
                    labels: managed_labels(),
                    ..Default::default()
                })
                .await?;
            docker.start_container(c).await?;
            docker.connect(c, macvlan, None, None).await
        }
    })
    .await?;
    Ok(t.elapsed())
}

/// Part (c) for one size: the engine cut while the LAN moves; the time from the
/// proxy's return to every runtime attached on the new subnet.
async fn cut(docker: &Docker, n: usize, args: &Args) -> Result<Duration> {
    let mut scene = Scene::new(&format!("x{n}"), true)?;
    let want = scene.create(n, args.cli_in_flight).await?;
    let old = scene.network();
    rig::wait_attached(docker, &want, &old, Instant::now(), LIMIT).await?;
    scene.check_converged()?;

    let cut_at = Instant::now();
    if let Some(mut p) = scene._proxy.take() {
        p.stop();
    }
    let end = Instant::now() + Duration::from_secs(30);
    while scene.agent.json(&["status"])?["engine"]["reachable"] != false {
        ensure!(
            Instant::now() < end,
            "the agent did not notice the engine left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to = loop {
        let (a, b) = lan_pick();
        let s = lan_subnet(a, b);
        if s != scene.lan.subnet {
            break s;
        }
    };
    scene.lan.readdress(to)?;
    tokio::time::sleep(args.cut_for.saturating_sub(cut_at.elapsed())).await;
    scene._proxy = Some(rig::proxy(&scene.dir.join("engine.sock"))?);
    let t0 = Instant::now();
    let new = scene.network();
    let took = rig::wait_attached(docker, &want, &new, t0, LIMIT)
        .await
        .context("no convergence after the engine came back")?;
    scene.check_converged()?;
    for (c, _) in &want {
        let info = docker.container(c).await?.context("container gone")?;
        ensure!(
            !info.endpoints.iter().any(|e| e.network_name == old),
            "{c} is still on the old network {old}"
        );
    }
    scene.passed = true;
    Ok(took)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64().max(1e-6))
}

async fn run_repair(docker: &Docker, args: &Args) -> Result<()> {
    println!("\n(a) repair of a hand disconnect (target: within 2 s)\n");
    println!(
        "| N | hand disconnects issued in | agent: all N attached again (from the first disconnect) | of which after the last disconnect returned | floor: N connects via the API ({} in flight) | after the last disconnect / floor | within 2 s |",
        args.parallelism
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.repair_sizes {
        let r = repair(docker, n, args).await?;
        let after = r.repaired.saturating_sub(r.disconnects);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            secs(r.disconnects),
            secs(r.repaired),
            secs(after),
            secs(r.floor),
            ratio(after, r.floor),
            if r.repaired <= Duration::from_secs(2) {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    Ok(())
}

async fn run_create(docker: &Docker, args: &Args) -> Result<()> {
    println!(
        "\n(b) creation of {} runtimes, default internal pool ({} CLI creates in flight)\n",
        args.create, args.cli_in_flight
    );
    println!(
        "| N | all `runtime create` returned | all attached | floor: API ({} in flight) | agent / floor | internal subnets | `runtime delete` of all |",
        args.parallelism
    );
    println!("|---|---|---|---|---|---|---|");
    let r = create(docker, args).await?;
    println!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        r.n,
        secs(r.created),
        secs(r.attached),
        secs(r.floor),
        ratio(r.attached, r.floor),
        r.pool_span,
        secs(r.deleted)
    );
    Ok(())
}

async fn run_cut(docker: &Docker, args: &Args) -> Result<()> {
    println!(
        "\n(c) engine cut for {} during a LAN move (target: converged within 5 s of the restore)\n",
        humantime::format_duration(args.cut_for)
    );
    println!("| N | converged after the restore | within 5 s |");
    println!("|---|---|---|");
    for &n in &args.cut_sizes {
        let took = cut(docker, n, args).await?;
        let ok = if took <= Duration::from_secs(5) {
            "yes"
        } else {
            "**no**"
        };
        println!("| {n} | {} | {ok} |", secs(took));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.repair_sizes = vec![1, 3];
        args.create = 5;
        args.cut_sizes = vec![1];
        args.cut_for = Duration::from_secs(2);
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("converge-bench needs root (veth parents in the host namespace)");
    }
    rig::binary("agent")?;
    rig::binary("netmon")?;
    rig::ensure_image()?;
    let docker = Docker::new(None)?;
    let v = docker.version().await.context("the engine")?;
    println!(
        "engine {} (API {}), {} CPUs, load average {}",
        v.version,
        v.api_version,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load_average()
    );
    let mut failed = Vec::new();
    for part in &args.parts {
        let r = match part.as_str() {
            "repair" => run_repair(&docker, &args).await,
            "create" => run_create(&docker, &args).await,
            "cut" => run_cut(&docker, &args).await,
            other => Err(anyhow::anyhow!(
                "unknown part {other:?} (repair, create, cut)"
            )),
        };
        if let Err(e) = r {
            eprintln!("part {part} FAILED: {e:#}");
            failed.push(part.clone());
        }
    }
    println!("\nload average at the end {}", load_average());
    if !failed.is_empty() {
        bail!("failed parts: {}", failed.join(", "));
    }
    Ok(())
}
