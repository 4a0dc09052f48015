//! The engine adapter against the real engine: idempotent calls, observation through
//! the container's namespace, events, and an engine that is not there yet.

use std::time::Duration;

use agent::engine::{ContainerSpec, Docker, EngineEvent, NetworkSpec, Pool, managed_labels};
use agent::netns;
use agent::plan::network_name;
use e2e::docker::{Container, Lan, docker, require_engine, test_image};
use futures::StreamExt;
use ipc::MacAddr;

fn engine() -> Docker {
    require_engine();
    Docker::new(Some("unix:///var/run/docker.sock")).expect("engine handle")
}

fn spec(lan: &Lan) -> NetworkSpec {
    NetworkSpec {
        name: network_name(&lan.parent, lan.subnet.parse().expect("subnet")),
        parent: lan.parent.clone(),
        pools: vec![Pool {
            subnet: lan.subnet.parse().expect("subnet"),
            gateway: Some(lan.gateway.parse().expect("gw")),
        }],
        aux: vec![("host".into(), lan.host.parse().expect("host"))],
        labels: managed_labels(),
        ip_range: None,
    }
}

#[tokio::test]
async fn version_is_negotiated() {
    let d = engine();
    let v = d.version().await.expect("version");
    assert!(
        !v.version.is_empty() && v.api_version.starts_with("1."),
        "{v:?}"
    );
}

#[tokio::test]
async fn network_connect_disconnect_and_remove_are_idempotent_and_observed() {
    let d = engine();
    let lan = Lan::new();
    let c = Container::run();
    let s = spec(&lan);
    let id = d.create_network(&s).await.expect("create");
    assert_eq!(
        d.create_network(&s).await.expect("create again"),
        id,
        "same network"
    );
    let ip = lan.addr(77).parse().expect("ip");
    d.connect(&c.name, &s.name, Some(ip), "02:00:00:00:77:01".parse().ok())
        .await
        .expect("connect");
    d.connect(&c.name, &s.name, Some(ip), None)
        .await
        .expect("already connected, same address");
    let other = lan.addr(78).parse().expect("ip");
    assert!(
        d.connect(&c.name, &s.name, Some(other), None)
            .await
            .is_err(),
        "a different address is not the same"
    );

    let o = d
        .observe(std::slice::from_ref(&c.name))
        .await
        .expect("observe");
    let net = o
        .networks
        .iter()
        .find(|n| n.name == s.name)
        .expect("network observed");
    assert_eq!(net.parent.as_deref(), Some(lan.parent.as_str()));
    assert_eq!(net.pools, s.pools);
    assert!(net.containers.contains(&c.name));
    let ci = &o.containers[&c.name];
    assert!(ci.running && ci.pid.is_some());
    let ep = ci.endpoint_on(net).expect("endpoint");
    assert_eq!(ep.ipv4, Some(ip));
    let link = ci.link_with(ip).expect("link read through the namespace");
    assert_eq!(
        link.mac,
        c.link_with(&lan.addr(77)).and_then(|l| l.mac.parse().ok())
    );

    d.disconnect(&c.name, &s.name).await.expect("disconnect");
    d.disconnect(&c.name, &s.name)
        .await
        .expect("not connected is fine");
    d.remove_network(&s.name).await.expect("remove");
    d.remove_network(&s.name)
        .await
        .expect("already gone is fine");
    assert!(lan.networks().is_empty());
    let missing = d
        .observe(&["no-such-container-xyz".to_string()])
        .await
        .expect("observe");
    assert!(missing.containers.is_empty());
}

/// 20.10 answers an address outside the network's subnets with a 500 and a taken one
/// with a 403: the first is a refusal for good (the vNIC `failed`), the second one the
/// next run can resolve.
#[tokio::test]
async fn an_address_outside_the_subnet_is_refused_for_good_a_taken_one_is_not() {
    let d = engine();
    let lan = Lan::new();
    let c = Container::run();
    let s = spec(&lan);
    d.create_network(&s).await.expect("create");
    let outside = "192.0.2.77".parse().expect("ip");
    let refused = d.connect(&c.name, &s.name, Some(outside), None).await;
    // 20.10 keeps the refused request in the container's record; it is no endpoint.
    let seen = d
        .observe(std::slice::from_ref(&c.name))
        .await
        .expect("observe");
    let gateway = lan.gateway.parse().expect("gw");
    let taken = d.connect(&c.name, &s.name, Some(gateway), None).await;
    d.remove_network(&s.name).await.expect("remove");
    let endpoints = &seen.containers[&c.name].endpoints;
    assert!(
        endpoints.iter().all(|e| e.network_name != s.name),
        "{endpoints:?}"
    );
    let refused = refused.expect_err("an address outside the subnet is refused");
    assert!(refused.is_permanent(), "{refused}");
    assert!(
        refused.to_string().contains("Invalid address 192.0.2.77"),
        "{refused}"
    );
    let taken = taken.expect_err("the gateway's address is taken");
    assert!(!taken.is_permanent(), "{taken}");
}

#[tokio::test]
async fn mac_set_through_the_namespace_is_seen_by_ip_inside() {
    let d = engine();
    let c = Container::run();
    let o = d
        .observe(std::slice::from_ref(&c.name))
        .await
        .expect("observe");
    let pid = o.containers[&c.name].pid.expect("pid");
    let ns = netns::Netns::Pid(pid);
    let links = netns::read_links(ns).await.expect("read links");
    let eth0 = links
        .iter()
        .find(|l| !l.ipv4.is_empty())
        .expect("a link with an address");
    let want: MacAddr = "02:5e:00:12:34:56".parse().unwrap();
    let after = netns::set_mac(ns, &eth0.name, want).await.expect("set mac");
    assert_eq!(
        after
            .iter()
            .find(|l| l.name == eth0.name)
            .and_then(|l| l.mac),
        Some(want)
    );
    let inside = c
        .links()
        .into_iter()
        .find(|l| l.name == eth0.name)
        .expect("link");
    assert_eq!(inside.mac, "02:5e:00:12:34:56");
    assert!(matches!(
        netns::set_mac(ns, "nope0", want).await,
        Err(netns::NetnsError::NoLink { .. })
    ));
}

#[tokio::test]
async fn events_report_container_start_and_removal() {
    let d = engine();
    let mut events = Box::pin(d.events());
    let name = e2e::unique("ev");
    let guard = Container { name: name.clone() };
    let spec = ContainerSpec {
        name: name.clone(),
        image: test_image(),
        labels: managed_labels(),
        ..Default::default()
    };
    // The subscription is made on first poll: poll a moment so the engine has it
    // before our container starts (other tests' events may arrive; they are skipped).
    let _ = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    d.create_container(&spec).await.expect("create container");
    d.start_container(&name).await.expect("start");
    d.start_container(&name).await.expect("start again is fine");
    assert!(
        d.list_managed_containers()
            .await
            .expect("list")
            .contains(&name)
    );
    let want = |ev: EngineEvent| async move {
        loop {
            match events_next(&mut events).await {
                e if e == ev => return events,
                _ => continue,
            }
        }
    };
    let mut events = tokio::time::timeout(
        Duration::from_secs(30),
        want(EngineEvent::ContainerStarted { name: name.clone() }),
    )
    .await
    .expect("start event within 30 s");
    // Forced removal: busybox sleep as PID 1 ignores SIGTERM, a stop would wait 10 s.
    d.remove_container(&name).await.expect("remove");
    d.remove_container(&name)
        .await
        .expect("already gone is fine");
    let gone = async {
        loop {
            if events_next(&mut events).await == (EngineEvent::ContainerGone { name: name.clone() })
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .expect("destroy event within 30 s");
    drop(guard);
}

async fn events_next(
    s: &mut std::pin::Pin<
        Box<impl futures::Stream<Item = Result<EngineEvent, agent::engine::EngineError>>>,
    >,
) -> EngineEvent {
    match s.next().await {
        Some(Ok(e)) => e,
        Some(Err(e)) => panic!("event stream error: {e}"),
        None => panic!("event stream ended"),
    }
}

#[tokio::test]
async fn engine_that_is_not_there_yet_is_unreachable_then_used_when_it_appears() {
    require_engine();
    let dir = e2e::TempDir::new("sock");
    let sock = dir.join("docker.sock");
    let d = Docker::new(Some(&format!("unix://{}", sock.display()))).expect("handle");
    let e = d.version().await.expect_err("no engine yet");
    assert!(e.is_unreachable(), "{e}");
    assert!(
        d.observe(&[])
            .await
            .expect_err("no engine")
            .is_unreachable()
    );
    std::os::unix::fs::symlink("/var/run/docker.sock", &sock).expect("symlink");
    d.version()
        .await
        .expect("the engine is used once its socket appears");
    let _ = docker(&["version", "--format", "{{.Server.Version}}"]);
}

#[tokio::test]
async fn internal_network_is_created_once() {
    let d = engine();
    let name = e2e::unique("int");
    // A slot of the internal pool's upper half: the agent's e2e tests allocate from
    // its start.
    let subnet: ipnetwork::Ipv4Network =
        format!("198.19.{}.{}/28", fastrand::u8(..), fastrand::u8(..16) * 16)
            .parse()
            .unwrap();
    let id = d
        .create_internal_network(&name, subnet, &managed_labels())
        .await
        .expect("create");
    let again = d
        .create_internal_network(&name, subnet, &managed_labels())
        .await;
    let internal = docker(&[
        "network",
        "inspect",
        "-f",
        "{{.Internal}} {{.Driver}} {{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
        &name,
    ]);
    d.remove_network(&name).await.expect("remove");
    assert_eq!(
        internal.trim(),
        format!(
            "true bridge {subnet} {}",
            agent::internal_pool::gateway(subnet)
        )
    );
    assert_eq!(
        again.expect("create again"),
        id,
        "the existing one is returned"
    );
    let all = d.list_networks().await.expect("list");
    assert!(all.iter().all(|n| n.name != name));
    assert!(all.iter().any(|n| n.driver == "bridge"));
}
