//! The executor's naming work (`apply/names.rs`, docs/NAMES.md) against the recording
//! fake, which disconnects as 20.10 does (a link renamed inside stays): links named
//! after their vNIC and `int0` in one pass, the engine's name given back before a
//! disconnect, a link left behind by a hand disconnect deleted on the reconnect. The
//! real engine and kernel run the same in `e2e_agent_names.rs`.

use std::collections::BTreeMap;

use agent::apply;
use agent::engine::{Call, Engine, FakeEngine, NetworkInfo, Pool, managed_labels};
use agent::plan::{INTERNAL_IFNAME, Step};
use ipc::MacAddr;

const M1: &str = "02:aa:00:00:00:01";

fn network(fake: &FakeEngine, name: &str, driver: &str, subnet: &str) {
    fake.add_network(NetworkInfo {
        id: String::new(),
        name: name.to_string(),
        driver: driver.to_string(),
        parent: (driver == "macvlan").then(|| "p1".to_string()),
        pools: vec![Pool {
            subnet: subnet.parse().unwrap(),
            gateway: None,
        }],
        labels: managed_labels(),
        containers: Vec::new(),
    });
}

fn attach_steps(network: &str) -> Vec<Step> {
    let (p, c, v) = ("p1".to_string(), "c1".to_string(), "eth0".to_string());
    vec![
        Step::Connect {
            parent: p.clone(),
            container: c.clone(),
            vnic: v.clone(),
            network: network.to_string(),
            ipv4: None,
            mac: Some(M1.parse().unwrap()),
        },
        Step::SetMac {
            parent: p.clone(),
            container: c.clone(),
            vnic: v.clone(),
            network: network.to_string(),
            mac: M1.parse().unwrap(),
        },
        Step::Name {
            parent: p,
            container: c,
            vnic: v,
            network: network.to_string(),
        },
    ]
}

/// (name, engine name from the alias) of every link inside c1.
fn names(fake: &FakeEngine) -> Vec<(String, Option<String>)> {
    let c = fake.peek("c1").unwrap();
    let mut v: Vec<_> = c
        .ns_links
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                agent::netns::engine_name(l).map(str::to_string),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn links_are_named_given_back_before_a_disconnect_and_forgotten_ones_deleted() {
    let fake = FakeEngine::new();
    network(&fake, "c1_internal", "bridge", "198.18.0.0/24");
    network(&fake, "lan1", "macvlan", "10.20.0.0/24");
    fake.add_container("c1", true, managed_labels());
    // The internal bridge first: the engine calls it eth0, the vNIC eth1.
    fake.connect("c1", "c1_internal", None, None).await.unwrap();

    let (results, _) = apply::execute(&fake, attach_steps("lan1"), 4).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    assert_eq!(
        names(&fake),
        vec![
            ("eth0".to_string(), Some("eth1".to_string())),
            (INTERNAL_IFNAME.to_string(), Some("eth0".to_string())),
        ]
    );
    // Idempotent: a second pass renames nothing.
    fake.clear_calls();
    let (results, _) = apply::execute(&fake, attach_steps("lan1"), 4).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    assert!(
        !fake.calls().iter().any(|r| r.call == Call::Rename),
        "{:?}",
        fake.calls()
    );
    // Named in the container's own chain from its MAC check's read: one engine read.
    let reads = fake
        .calls()
        .iter()
        .filter(|r| r.call == Call::Container)
        .count();
    assert_eq!(reads, 1, "{:?}", fake.calls());

    // The agent's disconnect: the link gets eth1 back first, so the engine removes it.
    fake.clear_calls();
    let leave = vec![Step::Disconnect {
        parent: "p1".into(),
        container: "c1".into(),
        network: "lan1".into(),
    }];
    let (results, _) = apply::execute(&fake, leave.clone(), 4).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    let calls: Vec<Call> = fake.calls().iter().map(|r| r.call).collect();
    assert_eq!(calls, vec![Call::Container, Call::Rename, Call::Disconnect]);
    assert_eq!(names(&fake).len(), 1, "only int0 left: {:?}", names(&fake));

    // With the container as the plan's observation read it (pid and endpoints, no
    // links): one namespace pass (find and rename) instead of the engine read, and
    // the same result.
    let (results, _) = apply::execute(&fake, attach_steps("lan1"), 4).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    let mut seen = fake.peek("c1").unwrap();
    seen.ns_links.clear();
    let known = BTreeMap::from([("c1".to_string(), seen)]);
    fake.clear_calls();
    let (results, _) = apply::execute_known(&fake, leave, 4, &known).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    let calls: Vec<Call> = fake.calls().iter().map(|r| r.call).collect();
    assert_eq!(calls, vec![Call::Rename, Call::Disconnect]);
    assert_eq!(names(&fake).len(), 1, "only int0 left: {:?}", names(&fake));

    // A hand disconnect of the renamed link leaves it inside; the reconnect deletes it.
    let (results, _) = apply::execute(&fake, attach_steps("lan1"), 4).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    fake.disconnect("c1", "lan1").await.unwrap();
    assert_eq!(
        names(&fake).len(),
        2,
        "the renamed link stays: {:?}",
        names(&fake)
    );
    let (results, _) = apply::execute(&fake, attach_steps("lan1"), 4).await;
    assert!(results.iter().all(|r| r.ok), "{results:#?}");
    let after = names(&fake);
    assert_eq!(after.len(), 2, "the forgotten link is gone: {after:?}");
    assert!(after.iter().any(|(n, _)| n == "eth0"), "{after:?}");
    let c = fake.peek("c1").unwrap();
    let ep = c
        .endpoints
        .iter()
        .find(|e| e.network_name == "lan1")
        .unwrap();
    let link = c.link_with(ep.ipv4.unwrap()).unwrap();
    assert_eq!(link.name, "eth0");
    assert_eq!(link.mac, Some(M1.parse::<MacAddr>().unwrap()));
    assert_eq!(
        agent::netns::endpoint_of(link),
        Some(ep.endpoint_id.as_str())
    );
}
