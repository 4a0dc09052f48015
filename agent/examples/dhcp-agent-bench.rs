//! dhcp-agent-bench: the agent's DHCP vNICs end to end, with the real agent and
//! netmon binaries, the real engine and Debian's dnsmasq in a LAN namespace across the
//! parent veth (the e2e rig). For N runtimes on one parent it measures
//! - create -> leased and attached: from the first `agent runtime create` until every
//!   runtime's endpoint holds dnsmasq's lease for its stored MAC;
//! - change -> new lease attached: the LAN moves to another subnet (dnsmasq renumbered,
//!   the host's address moved); from netmon's `network_change` event for the parent
//!   (read by a `netmon watch` of our own) until every endpoint holds its new lease.
//!
//! Peer, in the same run: the same agent with `--no-dhcp-client` (the engine's IPAM
//! picks the address), i.e. the agent's own cost without DHCP. dnsmasq's own answer
//! time (the floor) is dhcp-bench's "bare DORA", run next to it.
//!
//! `cargo build -p agent -p netmon --bins --example dhcp-agent-bench`, then as root
//! `./target/debug/examples/dhcp-agent-bench --sizes 1,10 --rounds 3`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent::plan::network_name;
use anyhow::{Result, bail};
use clap::Parser;
use e2e::agent::{AgentProc, DockerCleanup, HostNetmon, stored_mac, subnets};
use e2e::dhcp::DhcpLan;
use e2e::{TempDir, bin, must, unique};

#[derive(Parser, Debug)]
#[command(about = "Benchmark: DHCP vNICs through the agent (create and LAN move)")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const LIMIT: Duration = Duration::from_secs(90);

fn octets(prefix: &str) -> (u8, u8) {
    let p: Vec<u8> = prefix.split('.').map(|x| x.parse().unwrap()).collect();
    (p[1], p[2])
}

/// Each container's IPv4 on `net`, by container name (one engine call).
fn endpoints(net: &str) -> BTreeMap<String, String> {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{range .Containers}}{{.Name}} {{.IPv4Address}}\n{{end}}",
            net,
        ])
        .output();
    let Ok(out) = out else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, a) = l.split_once(' ')?;
            Some((n.to_string(), a.split('/').next()?.to_string()))
        })
        .collect()
}

/// Until every runtime's endpoint on `net` is what `want` says (its lease, or any
/// address in `prefix` without DHCP).
fn wait_all(
    lan: &DhcpLan,
    net: &str,
    rts: &[(String, String)],
    prefix: &str,
    dhcp: bool,
) -> Result<Instant> {
    let end = Instant::now() + LIMIT;
    loop {
        let eps = endpoints(net);
        let ok = rts.iter().all(|(rt, mac)| {
            let Some(have) = eps.get(rt) else {
                return false;
            };
            if dhcp {
                lan.lease_of(mac).is_some_and(|(ip, _)| ip == *have)
            } else {
                have.starts_with(&format!("{prefix}."))
            }
        });
        if ok {
            return Ok(Instant::now());
        }
        if Instant::now() > end {
            bail!("not all attached on {net} after {LIMIT:?}: {eps:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `netmon watch --json` whose network_change events for `parent` arrive as instants.
fn watch(
    socket: &std::path::Path,
    parent: &str,
) -> Result<(e2e::ChildGuard, mpsc::Receiver<Instant>)> {
    let mut child = Command::new(bin("netmon"))
        .args(["watch", "--json", "--socket"])
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let parent = parent.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("network_change") && line.contains(&parent) {
                let _ = tx.send(Instant::now());
            }
        }
    });
    Ok((e2e::ChildGuard(Some(child)), rx))
}

/// One round: N runtimes created, then the LAN moved. (create, change) durations.
fn round(n: usize, dhcp: bool) -> Result<(Duration, Duration)> {
    let dir = TempDir::new("dab");
    let (p, q, _) = subnets();
    let (a, b) = octets(&p);
    let mut lan = DhcpLan::new(a, b);
    must(&format!("ip addr add {p}.2/24 dev {}", lan.parent));
    lan.start();
    let parent = lan.parent.clone();
    let names: Vec<String> = (0..n).map(|_| unique("db")).collect();
    let refs: Vec<&String> = names.iter().collect();
    let _cleanup = DockerCleanup::runtimes(&refs, &[&parent]);
    let netmon = HostNetmon::start(dir.path(), &[&parent]);
    let env: &[(&str, &str)] = if dhcp {
        &[("AGENT_NO_DHCP_CLIENT", "false")]
    } else {
        &[]
    };
    let agent = AgentProc::start_with_env(dir.path(), &netmon.socket, &[], env);
    agent.wait_linked(&[&parent]);
    let image = e2e::docker::test_image();

    let t0 = Instant::now();
    for rt in &names {
        agent.create_dhcp(rt, &image, "eth1", &parent);
    }
    let rts: Vec<(String, String)> = names
        .iter()
        .map(|rt| (rt.clone(), stored_mac(&agent, rt, &parent)))
        .collect();
    let net1 = network_name(&parent, format!("{p}.0/24").parse()?);
    let created = wait_all(&lan, &net1, &rts, &p, dhcp)? - t0;

    let (_watch, events) = watch(&netmon.socket, &parent)?;
    std::thread::sleep(Duration::from_millis(300));
    let (c, d) = octets(&q);
    lan.renumber(c, d);
    must(&format!(
        "ip addr add {q}.2/24 dev {parent} && ip addr del {p}.2/24 dev {parent}"
    ));
    let net2 = network_name(&parent, format!("{q}.0/24").parse()?);
    let done = wait_all(&lan, &net2, &rts, &q, dhcp)?;
    // The first change event after the move; the attachment waits for it anyway.
    let event = events.try_iter().next().unwrap_or(done);
    Ok((created, done.saturating_duration_since(event)))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    e2e::require_root();
    e2e::docker::require_engine();
    println!(
        "| N | create -> leased+attached (DHCP) | create -> attached (no DHCP, engine IPAM) | change event -> new lease attached (DHCP) | change event -> attached (no DHCP) |"
    );
    println!("|---|---|---|---|---|");
    for &n in &args.sizes {
        let mut cells: [Vec<Duration>; 4] = Default::default();
        for _ in 0..args.rounds {
            let (c, m) = round(n, true)?;
            cells[0].push(c);
            cells[2].push(m);
            let (c, m) = round(n, false)?;
            cells[1].push(c);
            cells[3].push(m);
        }
        let [a, b, c, d] = cells.map(median);
        println!("| {n} | {} | {} | {} | {} |", ms(a), ms(b), ms(c), ms(d));
    }
    Ok(())
}
