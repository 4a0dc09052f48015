//! Starting the real `netmon` binary inside a namespace and talking to it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ipc::{Connection, Event, EventKind, Interface};

use crate::{ChildGuard, Netns, TempDir, bin, wait_for};

/// A running `netmon` in a namespace, with its socket in a temp dir.
pub struct NetmonProc {
    pub child: ChildGuard,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl NetmonProc {
    /// Starts `netmon --socket <tmp>/netmon.sock <extra args>` in `ns` and waits until
    /// its socket accepts connections.
    pub fn start(ns: &Netns, extra: &[&str]) -> NetmonProc {
        Self::start_with_env(ns, extra, &[])
    }

    /// [`NetmonProc::start`] with extra environment variables (e.g. NOTIFY_SOCKET).
    pub fn start_with_env(ns: &Netns, extra: &[&str], env: &[(&str, &str)]) -> NetmonProc {
        let dir = TempDir::new("nm");
        let socket = dir.join("netmon.sock");
        Self::start_at(ns, dir, socket, extra, env)
    }

    /// Starts netmon with its socket at `socket` (inside `dir`, kept alive with it).
    pub fn start_at(
        ns: &Netns,
        dir: TempDir,
        socket: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NetmonProc {
        let mut cmd = ns.command(&bin("netmon"));
        cmd.arg("--socket").arg(&socket).args(extra);
        cmd.env(
            "NETMON_LOG_LEVEL",
            std::env::var("NETMON_LOG_LEVEL").unwrap_or("info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn netmon");
        let mut child = ChildGuard(Some(child));
        let s = socket.clone();
        wait_for(Duration::from_secs(10), "netmon's socket", || {
            if let Ok(Some(st)) = child.child().try_wait() {
                panic!("netmon exited early: {st}");
            }
            // Connectable, not just present: a stale file from a previous run exists
            // before this netmon replaces it.
            std::os::unix::net::UnixStream::connect(&s).ok().map(drop)
        });
        NetmonProc { child, socket, dir }
    }

    /// Connects and reads the greeting discovery.
    pub async fn connect(&self) -> (Connection, Vec<Interface>) {
        let mut c = Connection::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connect to netmon: {e}"));
        let ev = next_event(&mut c, Duration::from_secs(10))
            .await
            .expect("a discovery on connect");
        let EventKind::NetworkDiscovery(d) = ev.kind else {
            panic!("first event is not a discovery: {ev:?}")
        };
        assert_eq!(ev.seq, Some(1), "discovery is seq 1");
        (c, d.interfaces)
    }
}

/// The next event within `limit`, `None` on timeout. Panics on a closed connection.
pub async fn next_event(c: &mut Connection, limit: Duration) -> Option<Event> {
    match tokio::time::timeout(limit, c.next_event()).await {
        Err(_) => None,
        Ok(Ok(Some(e))) => Some(e),
        Ok(Ok(None)) => panic!("netmon closed the connection"),
        Ok(Err(e)) => panic!("reading from netmon: {e}"),
    }
}

/// The next `network_change` within `limit`; panics on timeout or on another event.
pub async fn next_change(c: &mut Connection, limit: Duration, what: &str) -> Interface {
    let ev = next_event(c, limit)
        .await
        .unwrap_or_else(|| panic!("no network_change within {limit:?} for {what}"));
    match ev.kind {
        EventKind::NetworkChange(i) => i,
        _ => panic!("expected a network_change for {what}, got {ev:?}"),
    }
}

/// Asserts that no event arrives within `quiet`.
pub async fn expect_silence(c: &mut Connection, quiet: Duration, why: &str) {
    if let Some(ev) = next_event(c, quiet).await {
        panic!("unexpected event ({why}): {ev:?}");
    }
}

/// Waits until the kernel reports operstate UP for every named link of `ns`. Carrier
/// changes are applied by the kernel's link watcher up to a second later, so a link
/// set up just now may still change state under a freshly started netmon.
pub fn wait_oper_up(ns: &Netns, names: &[&str]) {
    wait_for(
        Duration::from_secs(10),
        "links to be operationally UP",
        || {
            let links = ns.json("link show");
            let up = |n: &str| {
                links
                    .as_array()
                    .is_some_and(|a| a.iter().any(|l| l["ifname"] == n && l["operstate"] == "UP"))
            };
            names.iter().all(|n| up(n)).then_some(())
        },
    );
}
