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

/// What `ip -j` says the gateway of `dev` is: the lowest-metric main-table IPv4
/// default route through it.
pub fn ip_gateway(ns: &Netns, dev: &str) -> Option<String> {
    let routes = ns.json("-4 route show table main default");
    routes
        .as_array()
        .expect("ip -j route is an array")
        .iter()
        .filter(|r| r["dev"] == dev && r["gateway"].is_string())
        .min_by_key(|r| r["metric"].as_u64().unwrap_or(0))
        .map(|r| r["gateway"].as_str().unwrap_or_default().to_string())
}

/// Checks one reported interface field by field against `ip -j` in `ns`: index,
/// operstate, MAC, MTU, kind, type, status (UP, or UNKNOWN with the UP and LOWER_UP
/// flags), IPv4 addresses (primaries first, none when not up, subnet consistent),
/// IPv6 addresses with scope, and the gateway (none when not up).
pub fn assert_matches_ip(ns: &Netns, iface: &Interface) {
    let name = &iface.interface;
    let link = &ns.json(&format!("-d addr show dev {name}"))[0];
    assert_eq!(
        iface.index,
        link["ifindex"].as_u64().map(|i| i as u32),
        "{name} index"
    );
    assert_eq!(
        iface.operstate.as_deref(),
        link["operstate"].as_str(),
        "{name} operstate"
    );
    assert_eq!(iface.mac.as_deref(), link["address"].as_str(), "{name} mac");
    assert_eq!(iface.mtu.map(u64::from), link["mtu"].as_u64(), "{name} mtu");
    assert_eq!(
        iface.kind.as_deref(),
        link["linkinfo"]["info_kind"].as_str(),
        "{name} kind"
    );
    assert_eq!(
        iface.link_type,
        Some(ipc::LinkType::Ethernet),
        "{name} type"
    );
    assert!(iface.timestamp.is_some(), "{name} has a timestamp");

    let flags: Vec<&str> = link["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let up = link["operstate"] == "UP"
        || (link["operstate"] == "UNKNOWN" && flags.contains(&"UP") && flags.contains(&"LOWER_UP"));
    let want_status = if up {
        ipc::Status::Up
    } else {
        ipc::Status::Down
    };
    assert_eq!(iface.status, Some(want_status), "{name} status");

    let infos = link["addr_info"].as_array().cloned().unwrap_or_default();
    let v4 = |secondary: bool| {
        infos
            .iter()
            .filter(move |a| a["family"] == "inet")
            .filter(move |a| a["secondary"].as_bool().unwrap_or(false) == secondary)
            .map(|a| {
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                )
            })
    };
    let want4: Vec<String> = if up {
        v4(false).chain(v4(true)).collect()
    } else {
        Vec::new()
    };
    let got4: Vec<String> = iface
        .ipv4_addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefixlen))
        .collect();
    assert_eq!(
        got4, want4,
        "{name} ipv4_addresses: primaries first, none when down"
    );
    for a in &iface.ipv4_addresses {
        assert_eq!(a.subnet.ip(), a.network_address, "{name} subnet");
        assert_eq!(a.subnet.prefix(), a.prefixlen, "{name} subnet prefix");
    }
    let want6: Vec<String> = infos
        .iter()
        .filter(|a| a["family"] == "inet6")
        .map(|a| {
            format!(
                "{}/{} {}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"],
                a["scope"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let got6: Vec<String> = iface
        .ipv6_addresses
        .iter()
        .map(|a| format!("{}/{} {}", a.address, a.prefixlen, a.scope))
        .collect();
    assert_eq!(got6, want6, "{name} ipv6_addresses");
    let want_gw = if up { ip_gateway(ns, name) } else { None };
    assert_eq!(
        iface.gateway.map(|g| g.to_string()),
        want_gw,
        "{name} gateway"
    );
}

/// Runs `netmon <args>` in `ns` to completion: (exit code, stdout + stderr). For
/// start-up errors and one-shot subcommands.
pub fn run_to_end(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = ns
        .command(&bin("netmon"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn netmon");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
