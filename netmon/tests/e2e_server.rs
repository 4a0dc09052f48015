//! netmon's socket server through the real binary: fan-out, slow clients, bad
//! input, the socket file's life cycle, `health`, `watch` and systemd notifications.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use e2e::netmon::{next_change, next_event};
use e2e::{ChildGuard, NetmonProc, Netns, TempDir, bin};
use ipc::{EventKind, Request};
use nix::sys::signal::Signal;
use serde_json::Value;

const FAST: &[&str] = &["--debounce", "1s", "--max-wait", "3s"];

fn lan() -> Netns {
    let ns = Netns::new();
    ns.exec("sysctl -qw net.ipv6.conf.default.addr_gen_mode=1")
        .expect("sysctl");
    ns.veth("ethA", "ethB");
    e2e::netmon::wait_oper_up(&ns, &["ethA", "ethB"]);
    ns
}

fn run_netmon(ns: &Netns, args: &[&str]) -> (i32, String) {
    e2e::netmon::run_to_end(ns, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_receive_the_same_events() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(nm.connect().await.0);
    }
    ns.must_ip("addr add 10.20.0.2/24 dev ethA");
    let mut first = None;
    for (n, c) in clients.iter_mut().enumerate() {
        let ev = next_event(c, Duration::from_secs(8))
            .await
            .unwrap_or_else(|| panic!("client {n} got no event"));
        assert_eq!(
            ev.seq,
            Some(2),
            "client {n}: second event on its connection"
        );
        assert!(matches!(ev.kind, EventKind::NetworkChange(_)));
        let first = first.get_or_insert_with(|| ev.clone());
        // Same bytes for everyone: same data, same timestamp, same instance.
        assert_eq!(&ev, first, "client {n}");
    }
    let mut c = clients.pop().expect("a client");
    let status = c
        .request(Request::new("get_status"))
        .await
        .expect("get_status");
    assert_eq!(status.extra["status"]["clients_connected"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_dropped_and_others_keep_receiving() {
    let ns = lan();
    // 300 addresses make each event ~35 KiB, so a few fill the socket buffers.
    let batch = TempDir::new("nb");
    let file = batch.join("addrs");
    let cmds: String = (0..300)
        .map(|n| format!("addr add 10.30.{}.{}/32 dev ethA\n", n / 200, n % 200 + 1))
        .collect();
    std::fs::write(&file, cmds).expect("write batch");
    ns.must_ip(&format!("-batch {}", file.display()));
    let nm = NetmonProc::start(
        &ns,
        &[
            "--debounce",
            "100ms",
            "--max-wait",
            "200ms",
            "--client-queue-bytes",
            "64KiB",
        ],
    );
    // The stuck client: connected, never reads.
    let stuck = std::os::unix::net::UnixStream::connect(&nm.socket).expect("connect");
    let (mut good, _) = nm.connect().await;
    for n in 0..40 {
        ns.must_ip(&format!("addr add 10.31.0.{}/32 dev ethB", n + 1));
        let i = next_change(&mut good, Duration::from_secs(5), "a change").await;
        assert_eq!(i.interface, "ethB");
        assert_eq!(i.ipv4_addresses.len(), n + 1, "every change, in order");
        if n % 5 == 0 {
            // Large events too, for the stuck client's buffers.
            ns.must_ip(&format!("addr add 10.32.0.{}/32 dev ethA", n + 1));
            let i = next_change(&mut good, Duration::from_secs(5), "a big change").await;
            assert_eq!(i.interface, "ethA");
        }
    }
    let r = good
        .request(Request::new("get_status"))
        .await
        .expect("get_status");
    assert_eq!(
        r.extra["status"]["clients_connected"], 1,
        "the stuck client was disconnected: {r:?}"
    );
    // The stuck client sees an end of stream once it drains what was buffered.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut lines = BufReader::new(stuck).lines();
    let mut n = 0;
    loop {
        match lines.next() {
            None => break,
            Some(Ok(_)) => n += 1,
            Some(Err(e)) => panic!("stuck client was not closed: {e}"),
        }
    }
    assert!(n >= 1, "the stuck client got at least its discovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_protocol_errors_and_the_connection_survives() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, _) = nm.connect().await;
    let (mut other, _) = nm.connect().await;

    // Each bad line gets its error reply; read them raw to see the exact text.
    let mut raw = tokio::net::UnixStream::connect(&nm.socket)
        .await
        .expect("connect");
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    raw.write_all(b"this is not json\n[1,2,3]\n{\"command\":\"fly\",\"id\":9}\n{\"command\":\"ping\",\"id\":\"p\"}\n")
        .await
        .expect("write");
    let mut lines = tokio::io::BufReader::new(raw).lines();
    let mut replies = Vec::new();
    while replies.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("replies in time")
            .expect("read")
            .expect("connection open");
        let v: Value = serde_json::from_str(&line).expect("JSON");
        if v.get("type").is_none() {
            replies.push(v);
        }
    }
    assert_eq!(
        replies[0],
        serde_json::json!({"success": false, "error": "Invalid JSON"})
    );
    assert_eq!(
        replies[1],
        serde_json::json!({"success": false, "error": "Request must be a JSON object"})
    );
    assert_eq!(
        replies[2],
        serde_json::json!({"success": false, "id": 9, "error": "Unknown command: fly"})
    );
    assert_eq!(replies[3], serde_json::json!({"success": true, "id": "p"}));

    // An over-long line: an error reply, then the connection is closed.
    let mut raw = lines.into_inner().into_inner();
    let long = vec![b'x'; 70 * 1024];
    raw.write_all(&long).await.expect("write long");
    let _ = raw.write_all(b"\n").await;
    let mut lines = tokio::io::BufReader::new(raw).lines();
    let mut saw_error = false;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("server answers or closes in time");
        match next {
            Ok(Some(line)) => {
                let v: Value = serde_json::from_str(&line).expect("JSON");
                if v.get("type").is_none() {
                    assert_eq!(v["success"], false, "{v}");
                    assert!(
                        v["error"].as_str().unwrap_or("").contains("too long"),
                        "{v}"
                    );
                    saw_error = true;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    assert!(saw_error, "an error reply before the close");

    // The other clients were not affected.
    for conn in [&mut c, &mut other] {
        let r = conn.request(Request::new("ping")).await.expect("ping");
        assert!(r.success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_and_get_status() {
    let ns = lan();
    ns.veth("vethX", "vethY");
    let nm = NetmonProc::start(&ns, &["--debounce", "3s", "--max-wait", "10s"]);
    let (mut c, first) = nm.connect().await;
    let r = c.request(Request::new("discover")).await.expect("discover");
    assert!(r.success);
    let ev = next_event(&mut c, Duration::from_secs(5))
        .await
        .expect("a discovery after discover");
    assert_eq!(ev.seq, Some(2));
    let EventKind::NetworkDiscovery(d) = ev.kind else {
        panic!("not a discovery: {ev:?}")
    };
    assert_eq!(d.interfaces.len(), first.len());

    // A change on a link the filter hides is never listed as pending.
    ns.must_ip("addr add 10.41.0.2/24 dev vethX");
    ns.must_ip("addr add 10.40.0.2/24 dev ethA");
    // Within the 3 s window the change is pending.
    let mut r = None;
    for _ in 0..40 {
        let st = c
            .request(Request::new("get_status"))
            .await
            .expect("get_status");
        if st.extra["status"]["pending_changes"] != serde_json::json!([]) {
            r = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = r.expect("the change shows in pending_changes inside the window");
    let st = &r.extra["status"];
    assert_eq!(st["instance"].as_str(), ev.instance.as_deref());
    assert_eq!(st["interfaces"], 2);
    assert_eq!(st["clients_connected"], 1);
    assert_eq!(st["events_sent"], 0);
    assert_eq!(st["resyncs"], 0);
    assert_eq!(st["netlink_overruns"], 0);
    assert!(st["uptime_s"].is_u64());
    assert_eq!(st["pending_changes"], serde_json::json!(["ethA"]));
    let _ = next_change(&mut c, Duration::from_secs(8), "the address").await;
    let r = c
        .request(Request::new("get_status"))
        .await
        .expect("get_status");
    assert_eq!(r.extra["status"]["events_sent"], 1);
    assert_eq!(r.extra["status"]["pending_changes"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_and_a_live_one_is_never_stolen() {
    let ns = lan();
    let dir = TempDir::new("ns");
    let socket = dir.join("netmon.sock");
    // A stale socket: bound, then its owner gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let path = socket.clone();
    let nm = NetmonProc::start_at(&ns, dir, socket, FAST, &[]);
    let (_c, _) = nm.connect().await;

    let (code, text) = run_netmon(&ns, &["--socket", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "second instance must fail: {text}");
    assert!(
        text.contains(&format!(
            "another process is listening on {}",
            path.display()
        )),
        "{text}"
    );
    // The first one still serves.
    let (_c2, _) = nm.connect().await;
}

#[test]
fn startup_errors_say_what_to_do() {
    let ns = lan();
    let (code, text) = run_netmon(&ns, &["--socket", "/nonexistent-dir-h2/netmon.sock"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("socket directory /nonexistent-dir-h2 does not exist"),
        "{text}"
    );
    let dir = TempDir::new("ng");
    let sock = dir.join("s.sock");
    let (code, text) = run_netmon(
        &ns,
        &[
            "--socket",
            sock.to_str().expect("utf-8"),
            "--socket-group",
            "no-such-group-h2",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("unknown group \"no-such-group-h2\""),
        "{text}"
    );

    // An unprivileged user (nobody) may read the kernel but not create the socket in a
    // root-owned directory, nor connect to a root-only socket.
    let as_nobody = |args: &[&str]| {
        let out = ns
            .command(std::path::Path::new("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("netmon"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn setpriv (util-linux)");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = as_nobody(&["--socket", sock.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "permission denied creating {}: run as a user who may write to {}",
            sock.display(),
            dir.path().display()
        )),
        "{text}"
    );
    let nm = NetmonProc::start(&ns, &["--debounce", "1s", "--socket-mode", "0600"]);
    let (code, text) = as_nobody(&["health", "--socket", nm.socket.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("permission denied on"), "{text}");
}

fn signal_removes_socket(sig: Signal) {
    let ns = lan();
    let mut nm = NetmonProc::start(&ns, FAST);
    nm.child.signal(sig);
    let st = nm
        .child
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("netmon did not exit on {sig}"));
    assert!(st.success(), "clean exit on {sig}: {st}");
    assert!(!nm.socket.exists(), "socket removed on {sig}");
}

#[test]
fn sigterm_removes_the_socket() {
    signal_removes_socket(Signal::SIGTERM);
}

#[test]
fn sigint_removes_the_socket() {
    signal_removes_socket(Signal::SIGINT);
}

#[test]
fn health_exit_codes() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let sock = nm.socket.to_str().expect("utf-8").to_string();
    let (code, text) = run_netmon(&ns, &["health", "--socket", &sock]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("healthy: 2 interfaces"), "{text}");

    let dir = TempDir::new("nh");
    let missing = dir.join("none.sock");
    let (code, text) = run_netmon(
        &ns,
        &["health", "--socket", missing.to_str().expect("utf-8")],
    );
    assert_eq!(code, 1);
    assert!(text.contains("no socket at"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");

    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let (code, text) = run_netmon(&ns, &["health", "--socket", stale.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(text.contains("stale socket"), "{text}");

    // A listener that never sends a discovery: timeout.
    let mute = dir.join("mute.sock");
    let _l = std::os::unix::net::UnixListener::bind(&mute).expect("bind");
    let (code, text) = run_netmon(
        &ns,
        &[
            "health",
            "--socket",
            mute.to_str().expect("utf-8"),
            "--timeout",
            "500ms",
        ],
    );
    assert_eq!(code, 1);
    assert!(text.contains("no discovery"), "{text}");
}

#[test]
fn socket_mode_and_group_are_applied() {
    let ns = lan();
    // A group that exists everywhere, and is not root's primary group.
    let gid = nix::unistd::Group::from_name("daemon")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .expect("the `daemon` group exists");
    let nm = NetmonProc::start(
        &ns,
        &[
            "--debounce",
            "1s",
            "--socket-mode",
            "0640",
            "--socket-group",
            "daemon",
        ],
    );
    let md = std::fs::metadata(&nm.socket).expect("stat socket");
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!(md.gid(), gid);
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(nm.dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn ready_and_watchdog_notifications() {
    let ns = lan();
    let dir = TempDir::new("sd");
    let notify = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let nm = NetmonProc::start_with_env(
        &ns,
        FAST,
        &[
            ("NOTIFY_SOCKET", notify.to_str().expect("utf-8")),
            // 400 ms: a ping every 200 ms.
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({e}); got so far: {got:?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = got.iter().find(|m| m.contains("READY=1")).expect("READY");
    assert!(ready.contains("STATUS="), "{ready}");
    // The socket was listening when READY=1 was sent.
    assert!(nm.socket.exists());
    nm.child.signal(Signal::SIGTERM);
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on shutdown");
}

#[test]
fn watch_prints_events_and_reconnects() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let mut cmd = ns.command(&bin("netmon"));
    cmd.args(["watch", "--socket"])
        .arg(&nm.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawn watch")));
    let stdout = child.child().stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_line = |pat: &str| -> String {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(pat) => return l,
                Ok(_) => continue,
                Err(_) => panic!("`netmon watch` printed no line with {pat:?}"),
            }
        }
    };
    wait_line("network_discovery");
    ns.must_ip("addr add 10.50.0.2/24 dev ethA");
    let l = wait_line("network_change");
    assert!(
        l.contains("ethA status=up ipv4=[10.50.0.2/24] gateway=-"),
        "{l}"
    );
    // netmon dies (SIGKILL: its socket file stays, stale) and a new one starts.
    let NetmonProc { child, socket, dir } = nm;
    drop(child);
    let _nm2 = NetmonProc::start_at(&ns, dir, socket, FAST, &[]);
    wait_line("network_discovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_resync_never_rebroadcasts_unchanged_state() {
    let ns = lan();
    ns.must_ip("addr add 10.60.0.2/24 dev ethA");
    let nm = NetmonProc::start(&ns, &["--debounce", "1s", "--resync-interval", "500ms"]);
    let (mut c, _) = nm.connect().await;
    e2e::netmon::expect_silence(
        &mut c,
        Duration::from_millis(1800),
        "resyncs of unchanged state",
    )
    .await;
    let r = c
        .request(Request::new("get_status"))
        .await
        .expect("get_status");
    let st = &r.extra["status"];
    assert!(st["resyncs"].as_u64().unwrap_or(0) >= 2, "{st}");
    assert_eq!(st["events_sent"], 0, "{st}");
    // A real change is still reported once, not again by the next resyncs.
    ns.must_ip("addr add 10.60.1.2/24 dev ethA");
    let i = next_change(&mut c, Duration::from_secs(5), "the address").await;
    assert_eq!(i.ipv4_addresses.len(), 2);
    e2e::netmon::expect_silence(&mut c, Duration::from_millis(1500), "reported once").await;
}

#[test]
fn json_logs_and_help() {
    let ns = lan();
    let dir = TempDir::new("nj");
    let sock = dir.join("s.sock");
    let mut cmd = ns.command(&bin("netmon"));
    cmd.args(["--log-format", "json", "--socket"])
        .arg(&sock)
        .env("NETMON_DEBOUNCE", "1s")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawn netmon")));
    let stderr = child.child().stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen_ready = false;
    for _ in 0..20 {
        let Some(Ok(line)) = lines.next() else { break };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{v}");
        if v["message"] == "netmon ready" {
            assert_eq!(v["debounce"], "1s", "NETMON_DEBOUNCE applies: {v}");
            seen_ready = true;
            break;
        }
    }
    assert!(seen_ready, "a `netmon ready` log line");
    child.signal(Signal::SIGTERM);
    assert!(child.wait_timeout(Duration::from_secs(10)).is_some());

    let (code, text) = run_netmon(&ns, &["--help"]);
    assert_eq!(code, 0);
    for word in [
        "--debounce",
        "--max-wait",
        "--socket-group",
        "health",
        "watch",
        "dump",
        "NETMON_SOCKET",
    ] {
        assert!(text.contains(word), "--help mentions {word}: {text}");
    }
}

#[test]
fn watch_json_prints_protocol_lines() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let mut cmd = ns.command(&bin("netmon"));
    cmd.args(["watch", "--json", "--socket"])
        .arg(&nm.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawn watch")));
    let stdout = child.child().stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("readable stdout");
    let v: Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(v["type"], "network_discovery");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["version"], 1);
    assert_eq!(v["data"]["interfaces"].as_array().map(Vec::len), Some(2));
    ns.must_ip("addr add 10.70.0.2/24 dev ethB");
    let line = lines.next().expect("a second line").expect("readable");
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["type"], "network_change");
    assert_eq!(v["data"]["interface"], "ethB");
    assert_eq!(v["data"]["ipv4_addresses"][0]["subnet"], "10.70.0.0/24");
}

/// netmon is stopped (SIGSTOP) while the kernel sends far more notifications than
/// its event socket holds: on SIGCONT the socket reports the overrun, netmon re-reads
/// everything and sends the one real difference, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrun_is_answered_by_a_full_resync() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, FAST);
    let (mut c, _) = nm.connect().await;
    let batch = TempDir::new("no");
    let file = batch.join("flood");
    let mut cmds = String::new();
    for _ in 0..8000 {
        cmds.push_str("addr add 10.80.0.1/32 dev ethA\naddr del 10.80.0.1/32 dev ethA\n");
    }
    cmds.push_str("addr add 10.80.0.2/32 dev ethA\n");
    std::fs::write(&file, cmds).expect("write batch");
    nm.child.signal(Signal::SIGSTOP);
    let flood = ns.ip(&format!("-batch {}", file.display()));
    nm.child.signal(Signal::SIGCONT);
    flood.expect("ip -batch");
    let i = next_change(&mut c, Duration::from_secs(10), "the final state").await;
    assert_eq!(i.interface, "ethA");
    let addrs: Vec<String> = i
        .ipv4_addresses
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(addrs, vec!["10.80.0.2"]);
    e2e::netmon::expect_silence(&mut c, Duration::from_secs(2), "one event for the flood").await;
    let r = c
        .request(Request::new("get_status"))
        .await
        .expect("get_status");
    let st = &r.extra["status"];
    assert!(st["netlink_overruns"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert!(st["resyncs"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert_eq!(st["events_sent"], 1, "{st}");
}
