//! cloud-bench: the real agent (`agent run --cloud-url`) on the real python-socketio
//! server with mutual TLS and N runtimes made from the cloud: link up after a server
//! restart (median of R), ack latency of `get_device_status` and `get_host_interfaces`
//! against the link's own floor in the same run (a request refused by the contract
//! check, answered without the daemon), the heartbeat period and its jitter, the
//! agent's RSS.
//!
//! Needs root, the engine, netmon and agent built next to it (`cargo build --bins
//! --examples -p agent -p netmon`), and the cloud venv (scripts/test.sh makes it).
//! `cloud-bench --runtimes 20` (full), `cloud-bench --runtimes 2 --restarts 2
//! --heartbeat-secs 12` (smoke). Every ack goes through the server's loopback control
//! endpoint, so each latency includes that HTTP hop (the floor has it too).

use std::time::{Duration, Instant};

use clap::Parser;
use e2e::agent::{AgentProc, DockerCleanup, HostLan, HostNetmon, subnets};
use e2e::cloud::{ClientOpts, CloudServer, Pki, RuntimeImage, ServerOpts};
use e2e::{TempDir, unique, wait_for};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 20)]
    runtimes: usize,
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    #[arg(long, default_value_t = 50)]
    acks: usize,
    /// How long heartbeats are collected.
    #[arg(long, default_value_t = 60)]
    heartbeat_secs: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p95, max) in ms.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.95), *v.last().unwrap())
}

fn ack(srv: &CloudServer, event: &str, data: Value) -> Value {
    let r = srv.emit(event, data, 60.0).expect("emit");
    assert!(r.get("timeout").is_none(), "{event}: no ack");
    r["ack"].clone()
}

fn timed(srv: &CloudServer, n: usize, f: impl Fn(usize) -> (String, Value)) -> (f64, f64, f64) {
    let v = (0..n)
        .map(|i| {
            let (ev, data) = f(i);
            let t = Instant::now();
            let a = ack(srv, &ev, data);
            let d = ms(t.elapsed());
            assert!(a["status"].is_string(), "{a}");
            d
        })
        .collect();
    stats(v)
}

fn live_clients(srv: &CloudServer) -> usize {
    srv.state()
        .ok()
        .and_then(|s| {
            s["clients"].as_array().map(|c| {
                c.iter()
                    .filter(|c| c.get("disconnected_at").is_none())
                    .count()
            })
        })
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args = Args::parse();
    e2e::require_root();
    e2e::docker::require_engine();
    let pki = Pki::new().unwrap();
    let (cert, key) = pki
        .client("bench", "cloud-bench", 7, ClientOpts::default())
        .unwrap();
    let mut srv = CloudServer::start(&pki, &ServerOpts::default()).unwrap();
    let image = RuntimeImage::new("bench").unwrap();
    let dir = TempDir::new("clb");
    let (a1, _, _) = subnets();
    let parent = unique("cb");
    let _lan = HostLan::new(&parent, &format!("{a1}.2/24"), &format!("{a1}.1/24"));
    let netmon = HostNetmon::start(dir.path(), &[&parent]);
    let names: Vec<String> = (0..args.runtimes).map(|_| unique("rtb")).collect();
    let refs: Vec<&String> = names.iter().collect();
    let _cleanup = DockerCleanup::runtimes(&refs, &[&parent]);
    let s = |p: &std::path::Path| p.display().to_string();
    let agent = AgentProc::start(
        dir.path(),
        &netmon.socket,
        &[
            "--cloud-url",
            &srv.url(),
            "--cloud-cert",
            &s(&cert),
            "--cloud-key",
            &s(&key),
            "--cloud-ca",
            &s(&pki.ca_cert),
            "--runtime-image",
            &image.repo,
        ],
    );
    agent.wait_linked(&[&parent]);
    wait_for(Duration::from_secs(30), "the link", || {
        (live_clients(&srv) > 0).then_some(())
    });

    let t = Instant::now();
    for n in &names {
        let a = ack(
            &srv,
            "create_new_runtime",
            json!({"container_name": n, "runtime_version": "bench",
                   "vnic_configs": [{"name": "eth1", "parent_interface": parent, "network_mode": "dhcp"}]}),
        );
        assert_eq!(a["status"], "creating", "{a}");
    }
    for n in &names {
        wait_for(Duration::from_secs(600), "runtimes up", || {
            let a = ack(&srv, "get_device_status", json!({"device_id": n}));
            assert_ne!(a["status"], "error", "{a}");
            (a["status"] == "success").then_some(())
        });
    }
    println!(
        "runtimes: {} created from the cloud and up in {:.1} s",
        names.len(),
        t.elapsed().as_secs_f64()
    );

    let floor = timed(&srv, args.acks, |_| {
        ("get_device_status".into(), json!({"correlation_id": 1}))
    });
    let status = timed(&srv, args.acks, |i| {
        (
            "get_device_status".into(),
            json!({"device_id": names[i % names.len()]}),
        )
    });
    let ifs = timed(&srv, args.acks, |_| {
        (
            "get_host_interfaces".into(),
            json!({"include_virtual": true}),
        )
    });
    println!(
        "ack latency over {} acks, ms (median / p95 / max):",
        args.acks
    );
    println!(
        "  floor (contract error, no daemon) {:.1} / {:.1} / {:.1}",
        floor.0, floor.1, floor.2
    );
    println!(
        "  get_device_status                 {:.1} / {:.1} / {:.1}",
        status.0, status.1, status.2
    );
    println!(
        "  get_host_interfaces               {:.1} / {:.1} / {:.1}",
        ifs.0, ifs.1, ifs.2
    );

    // Heartbeats over the window, with N runtimes sampled every 5 s meanwhile.
    let before = srv.state().unwrap()["heartbeats"]
        .as_array()
        .map_or(0, Vec::len);
    std::thread::sleep(Duration::from_secs(args.heartbeat_secs));
    let st = srv.state().unwrap();
    let at: Vec<f64> = st["heartbeats"].as_array().unwrap()[before..]
        .iter()
        .filter_map(|h| h["at"].as_f64())
        .collect();
    let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    if gaps.is_empty() {
        println!("heartbeat: fewer than 2 beats in {} s", args.heartbeat_secs);
    } else {
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let dev = gaps.iter().map(|g| (g - 5000.0).abs()).fold(0.0, f64::max);
        let (med, p95, max) = stats(gaps.clone());
        let min = gaps.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "heartbeat period over {} gaps, ms: mean {mean:.0}, median {med:.0}, p95 {p95:.0}, min {min:.0}, max {max:.0}; worst deviation from 5000: {dev:.0}",
            gaps.len()
        );
    }
    println!(
        "agent RSS with the link up and {} runtimes: {} KiB",
        names.len(),
        rss_kib(agent.child.pid())
    );

    // Link up after a server restart (the server forgets its clients on restart).
    let mut ups = Vec::new();
    for _ in 0..args.restarts {
        srv.restart().unwrap();
        let t = Instant::now();
        wait_for(Duration::from_secs(60), "the link back", || {
            (live_clients(&srv) > 0).then_some(())
        });
        ups.push(ms(t.elapsed()));
    }
    let (med, p95, max) = stats(ups.clone());
    let min = ups.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "link up after a server restart over {} restarts, ms: median {med:.0}, p95 {p95:.0}, min {min:.0}, max {max:.0} (backoff's first delay: 1 s +-30 %)",
        ups.len()
    );
    for n in &names {
        let _ = srv.emit("delete_device", json!({"device_id": n}), 30.0);
    }
    drop(agent);
}
