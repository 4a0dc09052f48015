//! End to end: 40 runtimes on one engine, through the real `netmon` and `agent run`
//! with the default `--internal-pool` (198.18.0.0/15 cut into /28s). Left to the
//! engine's default address pools, each `NAME_internal` bridge would take a /20 of
//! its ~30 pools and the host would stop at about 29 runtimes. Every vNIC ends
//! `attached`, every internal network comes from the pool, `health` is 0; deleting
//! them all (10 at once) leaves nothing of them behind, or says which network the
//! engine would not remove.

use std::time::{Duration, Instant};

use agent::plan::network_name;
use e2e::agent::{AgentProc, DockerCleanup, HostLan, HostNetmon, subnets};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, sh, unique};
use ipnetwork::Ipv4Network;
use serde_json::Value;

const RUNTIMES: usize = 40;
/// Creates in flight at once (each is one CLI process).
const IN_FLIGHT: usize = 10;

/// Runs `f` on every name, `IN_FLIGHT` threads at once.
fn in_parallel(names: &[String], f: impl Fn(&str) + Sync) {
    for chunk in names.chunks(IN_FLIGHT) {
        std::thread::scope(|s| {
            for n in chunk {
                let f = &f;
                s.spawn(move || f(n));
            }
        });
    }
}

/// The subnet of a network's first IPAM pool, or None when it does not exist.
fn network_subnet(name: &str) -> Option<Ipv4Network> {
    sh(&format!(
        "docker network inspect -f '{{{{range .IPAM.Config}}}}{{{{.Subnet}}}} {{{{end}}}}' {name}"
    ))
    .ok()?
    .split_whitespace()
    .next()?
    .parse()
    .ok()
}

/// Every runtime's vNIC `attached` in `agent status --json`; the first that is not.
fn not_attached(status: &Value, names: &[String]) -> Option<String> {
    names
        .iter()
        .find(|n| {
            let vnics = status["runtimes"][n.as_str()].as_array();
            !vnics.is_some_and(|v| {
                !v.is_empty() && v.iter().all(|x| x["state"]["state"] == "attached")
            })
        })
        .map(|n| format!("{n}: {}", status["runtimes"][n.as_str()]))
}

#[test]
fn forty_runtimes_fit_on_one_engine_with_the_default_internal_pool() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("ags");
    let (s1, _, _) = subnets();
    let p = unique("gs");
    let _lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let stem = unique("sc");
    let names: Vec<String> = (0..RUNTIMES).map(|i| format!("{stem}-{i}")).collect();
    let refs: Vec<&String> = names.iter().collect();
    let _cleanup = DockerCleanup::runtimes(&refs, &[&p]);
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);
    agent.wait_linked(&[&p]);

    in_parallel(&names, |n| {
        agent.must(&[
            "--wait",
            "120s",
            "runtime",
            "create",
            n,
            "--image",
            &image,
            "--vnic",
            &format!("name=eth1,parent={p},mode=dhcp"),
        ]);
    });

    let net = network_name(&p, format!("{s1}.0/24").parse().unwrap());
    // Polled every 500 ms (a status of 40 runtimes asks the engine about each).
    let end = Instant::now() + Duration::from_secs(180);
    while let Some(which) = not_attached(&agent.status(), &names) {
        assert!(Instant::now() < end, "not attached after 180 s: {which}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let pool: Ipv4Network = agent::internal_pool::DEFAULT_POOL.parse().unwrap();
    let mut subnets_seen = Vec::new();
    for n in &names {
        let sub = network_subnet(&format!("{n}_internal"))
            .unwrap_or_else(|| panic!("{n}_internal has no subnet"));
        assert!(
            pool.contains(sub.network()) && sub.prefix() >= pool.prefix(),
            "{n}_internal is on {sub}, outside {pool}"
        );
        assert!(
            !subnets_seen.contains(&sub),
            "{n}_internal shares {sub} with another runtime"
        );
        subnets_seen.push(sub);
        let on = e2e::agent::container_networks(n);
        assert!(on.contains(&net), "{n} is not on {net}: {on:?}");
    }
    let h = agent.cli(&["health"]);
    assert_eq!(
        h.status.code(),
        Some(0),
        "health: {}",
        String::from_utf8_lossy(&h.stderr)
    );

    let said = std::sync::Mutex::new(String::new());
    in_parallel(&names, |n| {
        let out = agent.must(&["--wait", "120s", "runtime", "delete", n]);
        said.lock().unwrap().push_str(&out);
    });
    let said = said.into_inner().unwrap();
    let list = agent.json(&["runtime", "list"]);
    for n in &names {
        assert!(list.get(n.as_str()).is_none(), "{n} still listed: {list}");
        assert!(
            sh(&format!("docker container inspect {n} >/dev/null 2>&1")).is_err(),
            "container {n} is left"
        );
        assert!(
            network_subnet(&format!("{n}_internal")).is_none(),
            "{n}_internal is left"
        );
    }
    // The last delete removes the macvlan network, unless 20.10 says it "has active
    // endpoints" with no container on it (moby/moby#43286, a stale count that only an
    // engine restart clears): then the delete says it left it, and why.
    for left in e2e::docker::networks_on(&p) {
        assert!(
            said.contains(&format!("left network {left}: ")) && said.contains("active endpoints"),
            "the managed macvlan network {left} is left unreported: {said}"
        );
        let on = sh(&format!(
            "docker network inspect -f '{{{{len .Containers}}}}' {left}"
        ))
        .unwrap_or_default();
        assert_eq!(on.trim(), "0", "{left} has containers: {said}");
    }
}
