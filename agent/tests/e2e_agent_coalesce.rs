//! End to end through the real `agent` binary: reconcile requests that arrive while a
//! run is in progress make exactly one more run after it, and every request is
//! answered with the report of a run that started after the request.
//!
//! The run in progress is made slow without any engine event that would itself ask
//! for a run: several runtimes are disconnected from their macvlan network by hand
//! (the agent does not follow `disconnect` events), the agent handles one container
//! at a time (`--parallelism 1`), and it reaches the real engine through a proxy
//! that delays every request while the test wants a slow engine, so reconnecting
//! them all and checking their MACs takes a second or more on any machine.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use agent::plan::network_name;
use e2e::agent::{
    AgentProc, DockerCleanup, HostLan, HostNetmon, changing_calls, container_networks, has,
    stored_mac, subnets,
};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, bin, unique, wait_for};
use serde_json::Value;

/// Runtimes to reconnect in the slow run.
const RUNTIMES: usize = 6;
/// Concurrent `agent reconcile` calls fired while it runs.
const CALLS: usize = 5;
/// Delay added to every engine request during the slow run.
const ENGINE_DELAY_MS: u64 = 60;

/// A Unix socket proxy to the real engine that holds each chunk the agent sends for
/// `delay` before forwarding it (an HTTP request is one or two chunks); responses,
/// the event stream among them, pass at once. Stopped on drop.
struct SlowEngine {
    path: PathBuf,
    delay: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl SlowEngine {
    fn start(path: &Path) -> SlowEngine {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the engine proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let delay = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let acceptor = {
            let (delay, stop, conns) = (delay.clone(), stop.clone(), conns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(e) => panic!("engine proxy accept: {e}"),
                    };
                    client.set_nonblocking(false).expect("blocking stream");
                    let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                        continue;
                    };
                    let (Ok(c2), Ok(e2)) = (client.try_clone(), engine.try_clone()) else {
                        continue;
                    };
                    {
                        let mut all = conns.lock().unwrap();
                        all.extend(client.try_clone());
                        all.extend(engine.try_clone());
                    }
                    let delay = delay.clone();
                    std::thread::spawn(move || pipe(client, engine, Some(delay)));
                    std::thread::spawn(move || pipe(e2, c2, None));
                }
            })
        };
        SlowEngine {
            path: path.to_path_buf(),
            delay,
            stop,
            conns,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn set_delay(&self, ms: u64) {
        self.delay.store(ms, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either ends, holding each chunk for the delay.
fn pipe(mut from: UnixStream, mut to: UnixStream, delay: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(d) = &delay {
            let ms = d.load(Ordering::Relaxed);
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for SlowEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        if let Ok(all) = self.conns.lock() {
            for c in all.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn started(report: &Value) -> SystemTime {
    let s = report["started"]
        .as_str()
        .unwrap_or_else(|| panic!("a report without `started`: {report}"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("started {s:?}: {e}"))
}

fn ended(report: &Value) -> SystemTime {
    started(report) + Duration::from_millis(report["duration_ms"].as_u64().unwrap_or(0))
}

/// `agent reconcile --json` as its own process: (time just before the request was
/// sent, the report).
fn reconcile_call(control: &Path) -> (SystemTime, Value) {
    let mut cmd = Command::new(bin("agent"));
    cmd.arg("--control-socket")
        .arg(control)
        .args(["reconcile", "--json"]);
    let at = SystemTime::now();
    let out = cmd.output().expect("spawn agent reconcile");
    assert!(
        out.status.success(),
        "agent reconcile failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agent reconcile --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (at, report)
}

#[test]
fn requests_during_a_run_make_exactly_one_more_run() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("agq");
    let (a, a2, _) = subnets();
    let p = unique("gq");
    let lan = HostLan::new(&p, &format!("{a}.2/24"), &format!("{a}.1/24"));
    let rts: Vec<String> = (0..RUNTIMES).map(|_| unique("rt")).collect();
    let _cleanup = DockerCleanup {
        containers: rts.clone(),
        networks: rts.iter().map(|r| format!("{r}_internal")).collect(),
        parents: vec![p.clone()],
    };
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let engine = SlowEngine::start(&dir.join("engine.sock"));
    // One container at a time, and no periodic run during the test.
    let agent = AgentProc::start(
        dir.path(),
        &netmon.socket,
        &[
            "--docker-host",
            &engine.url(),
            "--parallelism",
            "1",
            "--reconcile-interval",
            "1h",
        ],
    );
    agent.wait_linked(&[&p]);

    for rt in &rts {
        agent.create_dhcp(rt, &image, "eth1", &p);
    }
    let net = network_name(&p, format!("{a}.0/24").parse().unwrap());
    let macs: Vec<String> = rts.iter().map(|r| stored_mac(&agent, r, &p)).collect();
    let attached_on = |a: &str, net: &str| {
        rts.iter()
            .zip(&macs)
            .all(|(rt, mac)| has(rt, mac, a) && container_networks(rt).iter().any(|n| n == net))
    };
    let attached = || {
        rts.iter()
            .zip(&macs)
            .all(|(rt, mac)| has(rt, mac, &a) && container_networks(rt).contains(&net))
    };
    wait_for(
        Duration::from_secs(20),
        "every runtime attached with its MAC",
        || attached().then_some(()),
    );
    let r = agent.json(&["reconcile"]);
    assert_eq!(changing_calls(&r), 0, "not converged before the test: {r}");

    // Make the next run slow: the LAN moves, so every runtime must be moved to the
    // new network and its MAC set; netmon's event starts that run.
    engine.set_delay(ENGINE_DELAY_MS);
    lan.readdress(&format!("{a}.2/24"), &format!("{a2}.2/24"));
    let in_progress = wait_for(Duration::from_secs(10), "a run in progress", || {
        let s = agent.status();
        (s["reconcile"]["running"] == true).then(|| s["reconcile"]["runs"].as_u64().unwrap())
    });

    // CALLS more requests at once while it runs.
    let barrier = Arc::new(Barrier::new(CALLS));
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let b = barrier.clone();
            let control = agent.control.clone();
            std::thread::spawn(move || {
                b.wait();
                reconcile_call(&control)
            })
        })
        .collect();
    let results: Vec<(SystemTime, Value)> = calls.into_iter().map(|t| t.join().unwrap()).collect();
    // Read at once: a further run would already be running or counted.
    let after = agent.status();
    // The slow run's report: the last run that changed something (the one after it
    // finds nothing to do).
    let first_report = after["reconcile"]["last_change"].clone();

    let last_request = results.iter().map(|(t, _)| *t).max().unwrap();
    let first_request = results.iter().map(|(t, _)| *t).min().unwrap();
    eprintln!(
        "the slow run: {} ms, {} steps; requests sent {:?} to {:?} after it started",
        first_report["duration_ms"],
        first_report["steps"].as_array().map_or(0, Vec::len),
        first_request
            .duration_since(started(&first_report))
            .unwrap_or_default(),
        last_request
            .duration_since(started(&first_report))
            .unwrap_or_default(),
    );
    assert!(
        started(&first_report) < first_request,
        "the first call's run started after the others were sent: {first_report}"
    );
    assert!(
        ended(&first_report) > last_request,
        "the run ended ({:?}) before the last request was sent ({last_request:?}): it must be slower for this test",
        ended(&first_report)
    );
    assert!(
        first_report["steps"]
            .as_array()
            .is_some_and(|s| s.len() >= RUNTIMES),
        "the first run did not reconnect the runtimes: {first_report}"
    );
    // Every request got a report of a run that started after it was sent, and after
    // the run in progress ended: one run answered them all.
    let next = &results[0].1;
    for (at, report) in &results {
        assert!(
            started(report) > *at,
            "a request sent at {at:?} got the report of a run that started before it: {report}"
        );
        assert!(
            started(report) >= ended(&first_report),
            "a run overlapped the one in progress: {report}"
        );
        assert_eq!(
            report["started"], next["started"],
            "the requests were answered by different runs"
        );
    }
    eprintln!("the run after it: {} ms", next["duration_ms"]);
    assert_eq!(
        changing_calls(next),
        0,
        "the run after the slow one found work: {next}"
    );
    // Exactly the run in progress and one more.
    assert_eq!(
        after["reconcile"]["runs"].as_u64().unwrap(),
        in_progress + 1,
        "runs: {in_progress} while the slow one ran, {} after the requests were answered \
         (running: {}, last run started {})",
        after["reconcile"]["runs"],
        after["reconcile"]["running"],
        after["reconcile"]["last"]["started"],
    );
    assert_eq!(
        after["reconcile"]["running"], false,
        "another run followed (last run started {})",
        after["reconcile"]["last"]["started"],
    );
    assert_eq!(after["reconcile"]["last"]["started"], next["started"]);

    let net2 = network_name(&p, format!("{a2}.0/24").parse().unwrap());
    assert!(
        attached_on(&a2, &net2),
        "the runtimes are not all on the new LAN with their MACs"
    );
    engine.set_delay(0);
    for rt in &rts {
        agent.must(&["runtime", "delete", rt]);
    }
}
