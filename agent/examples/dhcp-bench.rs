//! Time from `dhcp::spawn` to `Bound` for N vNICs at once, against dnsmasq in a LAN
//! namespace (the e2e rig), with two references measured in the same run:
//! - floor: N bare DISCOVER/OFFER/REQUEST/ACK exchanges on raw sockets, no checks, no
//!   state machine: the server's and the kernel's own answer time;
//! - peer: N busybox `udhcpc -q` (what the older system runs) on N macvlan children
//!   of the parent, process start to exit with a lease.
//!
//! Needs root; runs in a private network namespace of its own. Exits non-zero when a
//! lease does not match dnsmasq's lease file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::dhcp::packet::{self, BROADCAST_MAC, Message, MsgType, Route, opt};
use agent::dhcp::socket::PacketSocket;
use agent::dhcp::{ClientOptions, DhcpUpdate, LeaseRequest, spawn_on};
use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::dhcp::DhcpLan;
use ipc::MacAddr;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Numbers of vNICs leased at once.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10",
        env = "DHCP_BENCH_SIZES"
    )]
    sizes: Vec<usize>,
    /// Rounds per size (the median is reported).
    #[arg(long, default_value_t = 5, env = "DHCP_BENCH_ROUNDS")]
    rounds: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Ours: N clients spawned at once; the time until the last is Bound.
async fn ours(lan: &DhcpLan, n: usize) -> Result<Duration> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(n * 4);
    let stop = CancellationToken::new();
    let macs: Vec<MacAddr> = (0..n).map(|_| MacAddr::random_local()).collect();
    let start = Instant::now();
    let handles: Vec<_> = macs
        .iter()
        .map(|&mac| {
            let req = LeaseRequest {
                key: mac.to_string(),
                parent: lan.parent.clone(),
                mac,
                cached: None,
                hostname: None,
            };
            spawn_on(
                &tokio::runtime::Handle::current(),
                req,
                ClientOptions::default(),
                tx.clone(),
                stop.clone(),
            )
        })
        .collect();
    let mut bound = Vec::new();
    while bound.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("no DHCP update within 30 s")?
            .context("clients stopped")?;
        if let DhcpUpdate::Bound(r) = ev.update {
            bound.push(r);
        }
    }
    let took = start.elapsed();
    for r in &bound {
        let held = lan.lease_of(&r.mac.to_string()).map(|l| l.0);
        if held != Some(r.address.to_string()) {
            bail!(
                "{} bound {} but dnsmasq's lease file says {held:?}",
                r.mac,
                r.address
            );
        }
    }
    for h in handles {
        h.release().await;
    }
    Ok(took)
}

/// One bare DORA: first OFFER taken, first ACK taken, nothing checked but the xid;
/// a NAK (dnsmasq offers one free address to two concurrent DISCOVERs, then NAKs the
/// second REQUEST: "address in use") starts over at once.
async fn bare(parent: &str, mac: MacAddr) -> Result<Option<(PacketSocket, Vec<u8>)>> {
    let sock = PacketSocket::open(parent, mac)?;
    let route = Route {
        src_mac: mac,
        dst_mac: BROADCAST_MAC,
        src_ip: [0; 4].into(),
        dst_ip: [255; 4].into(),
    };
    loop {
        let xid = fastrand::u32(..);
        let mut d = Message::request(MsgType::Discover, xid, mac);
        d.push(opt::CLIENT_ID, agent::dhcp::client_id(mac));
        sock.send(&packet::frame(&route, &d.encode())).await?;
        let (offer, _) = wait(&sock, xid, &[MsgType::Offer]).await?;
        let mut r = Message::request(MsgType::Request, xid, mac);
        r.push(opt::CLIENT_ID, agent::dhcp::client_id(mac));
        r.push(opt::REQUESTED_IP, offer.yiaddr.octets());
        r.push(
            opt::SERVER_ID,
            offer.option(opt::SERVER_ID).unwrap_or_default(),
        );
        sock.send(&packet::frame(&route, &r.encode())).await?;
        let (ack, server_mac) = wait(&sock, xid, &[MsgType::Ack, MsgType::Nak]).await?;
        if ack.msg_type() == Some(MsgType::Ack) {
            // Given back, so the rounds do not drain the pool (outside the timing).
            let mut rel = Message::request(MsgType::Release, fastrand::u32(..), mac);
            rel.ciaddr = ack.yiaddr;
            rel.push(opt::CLIENT_ID, agent::dhcp::client_id(mac));
            rel.push(
                opt::SERVER_ID,
                ack.option(opt::SERVER_ID).unwrap_or_default(),
            );
            let server = ack
                .addr(opt::SERVER_ID)
                .ok()
                .flatten()
                .unwrap_or([255; 4].into());
            let to = Route {
                src_mac: mac,
                dst_mac: server_mac,
                src_ip: ack.yiaddr,
                dst_ip: server,
            };
            return Ok(Some((sock, packet::frame(&to, &rel.encode()))));
        }
    }
}

async fn wait(sock: &PacketSocket, xid: u32, kinds: &[MsgType]) -> Result<(Message, [u8; 6])> {
    let mut buf = vec![0u8; 2048];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if let Ok((from, p)) = packet::unframe(&buf[..n]) {
                if let Ok(m) = Message::decode(p) {
                    if m.xid == xid && m.msg_type().is_some_and(|k| kinds.contains(&k)) {
                        return Ok((m, from));
                    }
                }
            }
        }
    })
    .await
    .context("no reply from dnsmasq in 10 s")?
}

async fn floor(lan: &DhcpLan, n: usize) -> Result<Duration> {
    let start = Instant::now();
    let all = (0..n).map(|_| bare(&lan.parent, MacAddr::random_local()));
    let done = futures::future::join_all(all).await;
    let took = start.elapsed();
    for (sock, release) in done
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
    {
        sock.send(&release).await?;
    }
    Ok(took)
}

/// busybox udhcpc on N macvlan children at once.
fn peer(lan: &DhcpLan, n: usize) -> Result<Duration> {
    let links: Vec<String> = (0..n).map(|_| e2e::unique("ub")).collect();
    for l in &links {
        e2e::sh(&format!(
            "ip link add link {} name {l} address {} type macvlan mode bridge && ip link set {l} up",
            lan.parent,
            MacAddr::random_local()
        ))?;
    }
    let start = Instant::now();
    let children: Vec<_> = links
        .iter()
        .map(|l| {
            Command::new("busybox")
                // No -n: after a NAK or silence it tries again (-A 1), as in the field;
                // -R gives the lease back on exit so rounds do not drain the pool.
                .args([
                    "udhcpc",
                    "-f",
                    "-q",
                    "-R",
                    "-t",
                    "5",
                    "-T",
                    "1",
                    "-A",
                    "1",
                    "-s",
                    "/bin/true",
                    "-i",
                    l,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("spawn busybox udhcpc (apt-get install busybox-static)")?;
    let mut ok = true;
    for c in children {
        let mut c = e2e::ChildGuard(Some(c));
        ok &= c
            .wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| s.success());
    }
    let took = start.elapsed();
    for l in &links {
        let _ = e2e::sh(&format!("ip link del {l}"));
    }
    if !ok {
        bail!("a udhcpc got no lease within 30 s");
    }
    Ok(took)
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    e2e::kernel::private_netns();
    let mut lan = DhcpLan::new(77, 9);
    lan.start();
    let r = run(&args, &lan);
    if r.is_err() {
        let log = lan.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("dnsmasq's log, last lines first:\n{}", tail.join("\n"));
    }
    r
}

fn run(args: &Args, lan: &DhcpLan) -> Result<()> {
    let rt = e2e::kernel::runtime();
    println!(
        "| N | ours: spawn -> all Bound | floor: bare DORA | ours / floor | busybox udhcpc -q | ours / udhcpc |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &args.sizes {
        let (mut a, mut f, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            // A pause before each: the server writes its lease file after a release.
            let settle = || std::thread::sleep(Duration::from_millis(300));
            settle();
            a.push(rt.block_on(ours(lan, n))?);
            settle();
            f.push(rt.block_on(floor(lan, n))?);
            settle();
            p.push(peer(lan, n)?);
        }
        let (a, f, p) = (median(a), median(f), median(p));
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.2}x | {:.1} ms | {:.2}x |",
            a.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3,
            a.as_secs_f64() / f.as_secs_f64(),
            p.as_secs_f64() * 1e3,
            a.as_secs_f64() / p.as_secs_f64()
        );
    }
    Ok(())
}
