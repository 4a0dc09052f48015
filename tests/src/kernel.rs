//! Kernel tests in a private network namespace of the test process itself.
//!
//! `unshare(CLONE_NEWNET)` moves only the calling thread; threads and processes it
//! creates afterwards inherit the new namespace. So a test calls [`private_netns`]
//! first and only then builds its tokio runtime ([`runtime`]) and runs `ip`. Under
//! nextest every test is its own process; under plain `cargo test` each test thread
//! still gets its own namespace.

use std::time::Duration;

use crate::{must, require_root};

/// Moves the calling thread into a fresh network namespace with `lo` up. Fails the
/// test (never skips) without root.
pub fn private_netns() {
    require_root();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}: this test needs root"));
    must("ip link set lo up");
}

/// A multi-threaded runtime whose worker threads are created now, in the calling
/// thread's namespace.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

/// Stops the kernel from adding IPv6 link-local addresses (and their later DAD
/// notifications) to links created from now on: tests that assert an interface stays
/// quiet need that.
pub fn disable_ipv6_autoconf() {
    must("sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
    must("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
}

/// `ip -j <args>` in the current namespace, parsed.
pub fn ip_json(args: &str) -> serde_json::Value {
    let out = must(&format!("ip -j {args}"));
    if out.trim().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args}: {e}: {out}"))
}

/// The ifindex of `name` in the current namespace.
pub fn ifindex(name: &str) -> u32 {
    let v = ip_json(&format!("link show dev {name}"));
    v[0]["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or_else(|| panic!("no ifindex for {name}: {v}"))
}

/// Adds a veth pair `a`/`b` in the current namespace, both up, and waits until the
/// kernel says both are operationally UP. The carrier comes up asynchronously
/// (linkwatch, up to a second later) with a link notification of its own; a test that
/// opens its event socket after this call must not receive that late notification.
pub fn veth(a: &str, b: &str) {
    must(&format!("ip link add {a} type veth peer name {b}"));
    must(&format!("ip link set {a} up"));
    must(&format!("ip link set {b} up"));
    crate::wait_for(
        Duration::from_secs(10),
        "both veth ends operationally up",
        || {
            let up = |n: &str| ip_json(&format!("link show dev {n}"))[0]["operstate"] == "UP";
            (up(a) && up(b)).then_some(())
        },
    );
}

/// How long kernel tests wait for a notification: generous, the machine is shared.
pub const EVENT_WAIT: Duration = Duration::from_secs(15);
