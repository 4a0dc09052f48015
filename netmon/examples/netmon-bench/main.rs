//! netmon benchmark (not a test): run as root.
//!
//! ```text
//! cargo build --release -p netmon && cargo run --release -p netmon --example netmon-bench
//! cargo run -p netmon --example netmon-bench -- --interfaces 20 --ops 500 --idle 5s --discovery-interfaces 50
//! ```
//!
//! In a fresh namespace with `--interfaces` reported links (veth pairs with names the
//! filter keeps) it starts the real netmon (from the same target profile as this
//! example), storms `--ops` address add/delete operations through `ip -batch`, and
//! measures netmon's CPU time per 1,000 netlink messages (one per operation), its peak
//! RSS, the events emitted against the interfaces whose final state changed (each
//! checked against `ip -j`), the time from the last change to its event, a single
//! change's latency, idle wake-ups, and the discovery latency with
//! `--discovery-interfaces` links. Exits 1 when a correctness check fails; the
//! performance figures are printed against their targets.

mod clients;
mod storm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::netmon::next_event;
use e2e::{NetmonProc, Netns, TempDir, must};
use ipc::{Connection, EventKind, Interface, Request};

struct Args {
    interfaces: usize,
    ops: usize,
    idle: Duration,
    discovery_interfaces: usize,
    debounce: Duration,
    storm: storm::Kind,
    idle_clients: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        interfaces: 200,
        ops: 10_000,
        idle: Duration::from_secs(60),
        discovery_interfaces: 1000,
        debounce: Duration::from_secs(3),
        storm: storm::Kind::Toggle,
        idle_clients: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--interfaces" => a.interfaces = num(&val()),
            "--ops" => a.ops = num(&val()),
            "--discovery-interfaces" => a.discovery_interfaces = num(&val()),
            "--idle" => a.idle = dur(&val()),
            "--debounce" => a.debounce = dur(&val()),
            "--storm" => {
                let v = val();
                a.storm = storm::Kind::parse(&v)
                    .unwrap_or_else(|| die(&format!("--storm {v:?}: toggle or moves")))
            }
            "--idle-clients" => a.idle_clients = num(&val()),
            "-h" | "--help" => {
                println!(
                    "netmon-bench [--interfaces 200] [--ops 10000] [--idle 60s] \
                     [--discovery-interfaces 1000] [--debounce 3s] [--storm toggle|moves] \
                     [--idle-clients 0]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown flag {other}")),
        }
    }
    a.interfaces = a.interfaces.max(2);
    a
}

fn die(msg: &str) -> ! {
    eprintln!("netmon-bench: {msg}");
    std::process::exit(2)
}

fn num(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| die(&format!("{s:?} is not a number")))
}

fn dur(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| die(&format!("{s:?}: {e}")))
}

/// user+sys CPU time of a process, from /proc/<pid>/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may contain spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn status_field(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Context switches of every thread of `pid`: each is a wake-up.
fn wakeups(pid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path().join("status");
            status_field(&p, "voluntary_ctxt_switches:")
                + status_field(&p, "nonvoluntary_ctxt_switches:")
        })
        .sum()
}

/// Creates `n` reported interfaces as n/2 veth pairs `bnA<i>`/`bnB<i>`, all up.
fn make_links(ns: &Netns, n: usize) -> Vec<String> {
    let tmp = TempDir::new("bl");
    let file = tmp.join("links");
    let mut cmds = String::new();
    let mut names = Vec::new();
    for i in 0..n.div_ceil(2) {
        cmds.push_str(&format!("link add bnA{i} type veth peer name bnB{i}\n"));
        cmds.push_str(&format!("link set bnA{i} up\nlink set bnB{i} up\n"));
        names.push(format!("bnA{i}"));
        names.push(format!("bnB{i}"));
    }
    std::fs::write(&file, cmds).unwrap_or_else(|e| die(&format!("write batch: {e}")));
    ns.must_ip(&format!("-batch {}", file.display()));
    names.truncate(n.max(2).div_ceil(2) * 2);
    names
}

/// `ip -j addr` as name -> sorted IPv4 addresses.
fn kernel_v4(ns: &Netns) -> BTreeMap<String, BTreeSet<String>> {
    let v = ns.json("-4 addr show");
    let mut out = BTreeMap::new();
    for l in v.as_array().cloned().unwrap_or_default() {
        let name = l["ifname"].as_str().unwrap_or("").to_string();
        let addrs = l["addr_info"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect();
        out.insert(name, addrs);
    }
    out
}

fn reported_v4(i: &Interface) -> BTreeSet<String> {
    i.ipv4_addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefixlen))
        .collect()
}

struct Report {
    rows: Vec<(String, String, String)>,
    failed: bool,
}

impl Report {
    fn row(&mut self, what: &str, value: String, target: &str) {
        println!("  {what:<44} {value:<22} {target}");
        self.rows.push((what.into(), value, target.into()));
    }
}

async fn discovery_latency(c_path: &Path) -> (Duration, usize) {
    let t = Instant::now();
    let mut c = Connection::connect(c_path)
        .await
        .unwrap_or_else(|e| die(&format!("connect: {e}")));
    let ev = next_event(&mut c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| die("no discovery"));
    let EventKind::NetworkDiscovery(d) = ev.kind else {
        die("first event is not a discovery")
    };
    (t.elapsed(), d.interfaces.len())
}

async fn bench(a: &Args) -> Report {
    let mut r = Report {
        rows: Vec::new(),
        failed: false,
    };
    let ns = Netns::new();
    must(&format!(
        "ip netns exec {} sysctl -qw net.ipv6.conf.default.addr_gen_mode=1",
        ns.name
    ));
    let names = make_links(&ns, a.interfaces);
    if a.storm == storm::Kind::Moves {
        let tmp = TempDir::new("bm");
        let file = tmp.join("setup");
        std::fs::write(&file, storm::moves_setup(&names))
            .unwrap_or_else(|e| die(&format!("write setup: {e}")));
        ns.must_ip(&format!("-batch {}", file.display()));
    }
    let debounce = format!("{}ms", a.debounce.as_millis());
    let nm = NetmonProc::start(&ns, &["--debounce", &debounce, "--log-level", "warn"]);
    let pid = nm.child.pid();
    let (disc_t, disc_n) = discovery_latency(&nm.socket).await;
    let mut c = Connection::connect(&nm.socket)
        .await
        .unwrap_or_else(|e| die(&format!("connect: {e}")));
    let _ = next_event(&mut c, Duration::from_secs(30)).await;
    println!(
        "netmon pid {pid}: {disc_n} interfaces reported, {} ops",
        a.ops
    );
    if disc_n != names.len() {
        eprintln!(
            "FAIL: discovery has {disc_n} interfaces, expected {}",
            names.len()
        );
        r.failed = true;
    }

    let tmp = TempDir::new("bs");
    let file = tmp.join("storm");
    let storm::Storm { commands, changed } = storm::build(a.storm, &names, a.ops);
    std::fs::write(&file, commands).unwrap_or_else(|e| die(&format!("write storm: {e}")));

    let cpu0 = cpu_time(pid);
    let t_storm = Instant::now();
    ns.must_ip(&format!("-batch {}", file.display()));
    let t_last = Instant::now();
    let storm_took = t_last - t_storm;

    // Events until the expected interfaces are all in and 2 s more pass quietly.
    let mut events: Vec<Interface> = Vec::new();
    let mut last_event_at = t_last;
    let hard_end = t_last + a.debounce * 4 + Duration::from_secs(15);
    loop {
        let seen: BTreeSet<&str> = events.iter().map(|i| i.interface.as_str()).collect();
        let all_in = changed.iter().all(|n| seen.contains(n.as_str()));
        let wait = if all_in {
            Duration::from_secs(2)
        } else {
            hard_end.saturating_duration_since(Instant::now())
        };
        match next_event(&mut c, wait).await {
            Some(ev) => {
                if let EventKind::NetworkChange(i) = ev.kind {
                    last_event_at = Instant::now();
                    events.push(i);
                }
            }
            None => break,
        }
    }
    let cpu = cpu_time(pid) - cpu0;
    let final_kernel = kernel_v4(&ns);
    let mut last_state: BTreeMap<String, &Interface> = BTreeMap::new();
    for e in &events {
        last_state.insert(e.interface.clone(), e);
    }
    let emitted: BTreeSet<String> = last_state.keys().cloned().collect();
    let mut wrong = 0;
    for (name, i) in &last_state {
        let want = final_kernel.get(name).cloned().unwrap_or_default();
        if reported_v4(i) != want {
            wrong += 1;
            eprintln!(
                "FAIL: {name}: reported {:?}, kernel {:?}",
                reported_v4(i),
                want
            );
        }
    }
    let missing: Vec<_> = changed.difference(&emitted).collect();
    let extra: Vec<_> = emitted.difference(&changed).collect();
    // A fresh discovery must match the kernel for every interface.
    let reply = c.request(Request::new("discover")).await;
    let mut disc_wrong = 0;
    if reply.is_ok() {
        if let Some(ev) = next_event(&mut c, Duration::from_secs(10)).await {
            if let EventKind::NetworkDiscovery(d) = ev.kind {
                for i in &d.interfaces {
                    if reported_v4(i) != final_kernel.get(&i.interface).cloned().unwrap_or_default()
                    {
                        disc_wrong += 1;
                    }
                }
                if d.interfaces.len() != names.len() {
                    disc_wrong += names.len().abs_diff(d.interfaces.len());
                }
            }
        }
    } else {
        disc_wrong = names.len();
    }
    if wrong > 0 || !missing.is_empty() || !extra.is_empty() || disc_wrong > 0 {
        r.failed = true;
        eprintln!(
            "FAIL: missing {missing:?}, unexpected {extra:?}, wrong {wrong}, discovery wrong {disc_wrong}"
        );
    }

    // One change after the storm has settled.
    let probe = &names[0];
    let t = Instant::now();
    ns.must_ip(&format!("addr add 10.250.0.1/32 dev {probe}"));
    let single = match next_event(&mut c, a.debounce + Duration::from_secs(10)).await {
        Some(_) => t.elapsed(),
        None => {
            r.failed = true;
            Duration::MAX
        }
    };

    // Idle: nothing changes, one client connected. Let the probe's aftermath (the
    // client write, the pending-list update) settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w0 = wakeups(pid);
    tokio::time::sleep(a.idle).await;
    let idle_wakeups = wakeups(pid) - w0;
    let rss = status_field(Path::new(&format!("/proc/{pid}/status")), "VmHWM:");
    let rss_now = status_field(Path::new(&format!("/proc/{pid}/status")), "VmRSS:");

    println!();
    r.row(
        "interfaces / operations / storm",
        format!("{} / {} / {:?}", names.len(), a.ops, a.storm),
        "",
    );
    r.row(
        "storm duration (ip -batch)",
        format!("{storm_took:.2?}"),
        "",
    );
    r.row(
        "CPU (user+sys) per 1,000 messages",
        format!(
            "{:.2} ms",
            cpu.as_secs_f64() * 1000.0 / a.ops as f64 * 1000.0
        ),
        "",
    );
    r.row(
        "CPU (user+sys) for the whole storm",
        format!("{:.0} ms", cpu.as_secs_f64() * 1000.0),
        "",
    );
    r.row(
        "peak RSS (VmHWM)",
        format!("{:.1} MiB", rss as f64 / 1024.0),
        "< 8 MiB",
    );
    r.row(
        "RSS when idle after the storm (VmRSS)",
        format!("{:.1} MiB", rss_now as f64 / 1024.0),
        "",
    );
    r.row(
        "events emitted / interfaces changed",
        format!("{} / {}", events.len(), changed.len()),
        "equal",
    );
    r.row(
        "final states right / missing / unexpected",
        format!(
            "{} / {} / {}",
            last_state.len() - wrong,
            missing.len(),
            extra.len()
        ),
        "all / 0 / 0",
    );
    r.row(
        "last change -> its event",
        format!("{:.2?}", last_event_at.saturating_duration_since(t_last)),
        &format!("<= debounce ({:?}) + 100 ms", a.debounce),
    );
    r.row(
        "single change -> event",
        format!("{single:.2?}"),
        &format!("<= debounce ({:?}) + 100 ms", a.debounce),
    );
    r.row(
        &format!("idle wake-ups over {:?}", a.idle),
        format!("{idle_wakeups}"),
        "0 (resync every 5 min)",
    );
    r.row(
        &format!("discovery latency, {} interfaces", names.len()),
        format!("{disc_t:.2?}"),
        "",
    );
    drop(c);
    drop(nm);
    drop(ns);

    // Discovery with many interfaces, in its own namespace.
    let ns = Netns::new();
    let t = Instant::now();
    let big = make_links(&ns, a.discovery_interfaces);
    let made = t.elapsed();
    let t = Instant::now();
    let nm = NetmonProc::start(&ns, &["--log-level", "warn"]);
    let startup = t.elapsed();
    let (disc_t, n) = discovery_latency(&nm.socket).await;
    if n != big.len() {
        r.failed = true;
        eprintln!("FAIL: discovery has {n} of {} interfaces", big.len());
    }
    let status = format!("/proc/{}/status", nm.child.pid());
    let rss = status_field(Path::new(&status), "VmHWM:");
    let rss_now = status_field(Path::new(&status), "VmRSS:");
    r.row(
        &format!("discovery latency, {n} interfaces"),
        format!("{disc_t:.2?}"),
        &format!("(links created in {made:.1?})"),
    );
    r.row(
        &format!("start to socket ready, {n} interfaces"),
        format!("{startup:.2?}"),
        "",
    );
    r.row(
        &format!("peak RSS with {n} interfaces"),
        format!("{:.1} MiB", rss as f64 / 1024.0),
        "< 8 MiB",
    );
    r.row(
        &format!("RSS after discovery, {n} interfaces"),
        format!("{:.1} MiB", rss_now as f64 / 1024.0),
        "",
    );
    if a.idle_clients > 0 {
        idle_clients(a, &ns, &nm, &big, &mut r);
    }
    r
}

/// `--idle-clients N`: N clients that never read, a few changes queued behind their
/// discoveries; netmon's peak RSS, and what client N+1 is told.
fn idle_clients(a: &Args, ns: &Netns, nm: &NetmonProc, names: &[String], r: &mut Report) {
    let settle = Duration::from_secs(5);
    let streams = clients::connect_idle(&nm.socket, a.idle_clients, ns, names, 50, settle);
    let status = format!("/proc/{}/status", nm.child.pid());
    let rss = status_field(Path::new(&status), "VmHWM:");
    let line = clients::first_line(&nm.socket);
    let answer = if line.contains("\"busy") {
        "busy refusal"
    } else if line.contains("network_discovery") {
        "a discovery"
    } else {
        r.failed = true;
        eprintln!("FAIL: client {} read {line:?}", a.idle_clients + 1);
        "neither"
    };
    r.row(
        &format!(
            "peak RSS, {} idle clients, {} interfaces",
            streams.len(),
            names.len()
        ),
        format!("{:.1} MiB", rss as f64 / 1024.0),
        "< 64 MiB",
    );
    r.row(
        &format!("client {} reads", streams.len() + 1),
        answer.to_string(),
        "busy at >= 1,000 clients",
    );
}

fn main() {
    let a = parse_args();
    e2e::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    println!(
        "netmon-bench: nproc {}, kernel {}, netmon {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        must("uname -r").trim(),
        e2e::bin("netmon").display()
    );
    let r = rt.block_on(bench(&a));
    if r.failed {
        eprintln!("netmon-bench: correctness checks FAILED");
        std::process::exit(1);
    }
    println!("netmon-bench: all correctness checks passed");
}
