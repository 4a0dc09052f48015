//! The namespace module against the real kernel: fresh namespaces (`ip netns add`)
//! with a veth pair, entered through a process living in them (as a container's is).
//! Root only; a test that cannot get root fails.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::netns::{self, Netns, NetnsError};
use e2e::{ChildGuard, Netns as TestNs, unique};
use ipc::MacAddr;

/// A namespace with veth `a` (10.9.0.2/24, up, default route via 10.9.0.1) and `b`,
/// and a process sleeping inside it.
struct Rig {
    ns: TestNs,
    _sleeper: ChildGuard,
    pid: u32,
    a: String,
}

impl Rig {
    fn new() -> Rig {
        let ns = TestNs::new();
        let (a, b) = (unique("nsa"), unique("nsb"));
        ns.veth(&a, &b);
        ns.must_ip(&format!("addr add 10.9.0.2/24 dev {a}"));
        ns.must_ip(&format!(
            "route add default via 10.9.0.1 dev {a} metric 5000"
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn a process in the namespace");
        let sleeper = ChildGuard(Some(child));
        let pid = sleeper.pid() as u32;
        // `ip netns exec` enters the namespace, then execs sleep: wait for that.
        let want = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .unwrap()
            .ino();
        for _ in 0..200 {
            let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            if ino.ok() == Some(want) {
                return Rig {
                    ns,
                    _sleeper: sleeper,
                    pid,
                    a,
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("process {pid} never entered {}", ns.name);
    }

    fn target(&self) -> Netns {
        Netns::Pid(self.pid)
    }

    fn link_json(&self, name: &str) -> serde_json::Value {
        self.ns.json(&format!("link show {name}"))[0].clone()
    }
}

#[tokio::test]
async fn reads_links_with_mac_state_and_ipv4_and_leaves_out_loopback() {
    let rig = Rig::new();
    let links = netns::read_links(rig.target()).await.expect("read links");
    assert!(links.iter().all(|l| l.name != "lo"), "{links:?}");
    assert_eq!(links.len(), 2, "{links:?}");
    let a = links.iter().find(|l| l.name == rig.a).expect("link a");
    let j = rig.link_json(&rig.a);
    assert_eq!(a.mac, j["address"].as_str().and_then(|m| m.parse().ok()));
    assert_eq!(a.index as u64, j["ifindex"].as_u64().unwrap());
    assert_eq!(
        a.ipv4,
        vec!["10.9.0.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(a.up);
}

#[tokio::test]
async fn sets_the_mac_while_the_link_stays_up_and_keeps_the_default_route() {
    let rig = Rig::new();
    let want: MacAddr = "02:5e:00:aa:bb:01".parse().unwrap();
    let after = netns::set_mac(rig.target(), &rig.a, want)
        .await
        .expect("set mac");
    let a = after.iter().find(|l| l.name == rig.a).expect("link a");
    assert_eq!(
        a.mac,
        Some(want),
        "the links returned are read after the change"
    );
    let j = rig.link_json(&rig.a);
    assert_eq!(j["address"], "02:5e:00:aa:bb:01");
    assert!(
        j["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "still up: {j}"
    );
    let routes = rig.ns.must_ip("route show default");
    assert!(
        routes.contains("via 10.9.0.1"),
        "default route kept: {routes}"
    );
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn is_up(j: &serde_json::Value) -> bool {
    j["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

#[tokio::test]
async fn rename_works_down_and_up_only_on_kernels_that_allow_it() {
    let rig = Rig::new();
    // Down, rename, up: works on every kernel.
    netns::set_up(rig.target(), &rig.a, false)
        .await
        .expect("down");
    assert!(!is_up(&rig.link_json(&rig.a)));
    netns::rename(rig.target(), &rig.a, "lan0")
        .await
        .expect("rename");
    netns::set_up(rig.target(), "lan0", true).await.expect("up");
    let j = rig.link_json("lan0");
    assert_eq!(j["ifname"], "lan0");
    assert!(is_up(&j));
    assert!(
        rig.ns.ip(&format!("link show {}", rig.a)).is_err(),
        "old name gone"
    );
    // Up: Linux 6.2 and later rename live; older kernels answer EBUSY.
    let live = netns::rename(rig.target(), "lan0", "lan1").await;
    if kernel_version() >= (6, 2) {
        live.expect("a live rename on this kernel");
        assert!(is_up(&rig.link_json("lan1")), "stays up");
    } else {
        let e = live.unwrap_err();
        assert!(matches!(e, NetnsError::RenameUp { .. }), "{e}");
        assert!(e.to_string().contains("set it down first"), "{e}");
    }
}

#[tokio::test]
async fn errors_say_what_and_where() {
    let rig = Rig::new();
    let mac: MacAddr = "02:5e:00:aa:bb:02".parse().unwrap();
    let e = netns::read_links(Netns::Pid(u32::MAX - 1))
        .await
        .unwrap_err();
    assert!(matches!(e, NetnsError::Open { .. }), "{e}");
    let e = netns::set_mac(rig.target(), "nope0", mac)
        .await
        .unwrap_err();
    assert!(matches!(e, NetnsError::NoLink { .. }), "{e}");
    assert!(e.to_string().contains(&format!("pid {}", rig.pid)), "{e}");
    for bad in ["", "a/b", "way-too-long-name0", "x y"] {
        let e = netns::set_mac(rig.target(), bad, mac).await.unwrap_err();
        assert!(matches!(e, NetnsError::BadName(_)), "{bad:?}: {e}");
        let e = netns::rename(rig.target(), &rig.a, bad).await.unwrap_err();
        assert!(matches!(e, NetnsError::BadName(_)), "{bad:?}: {e}");
    }
    let group: MacAddr = "03:00:00:00:00:01".parse().unwrap();
    let e = netns::set_mac(rig.target(), &rig.a, group)
        .await
        .unwrap_err();
    assert!(
        matches!(e, NetnsError::Netlink { .. }),
        "the kernel refuses a group MAC: {e}"
    );
}

fn own_ns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[tokio::test]
async fn run_works_on_a_thread_inside_and_leaves_the_caller_where_it_was() {
    let rig = Rig::new();
    let before = own_ns_inode();
    let want = std::fs::metadata(format!("/proc/{}/ns/net", rig.pid))
        .unwrap()
        .ino();
    let inside = netns::run(rig.target(), || Ok(own_ns_inode()))
        .await
        .unwrap();
    assert_eq!(inside, want);
    assert_eq!(own_ns_inode(), before);
    // The host: pid 1's namespace, or ours where pid 1 cannot be inspected.
    let host = netns::run(Netns::Host, || Ok(own_ns_inode()))
        .await
        .unwrap();
    let want = std::fs::metadata("/proc/1/ns/net")
        .or_else(|_| std::fs::metadata("/proc/self/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(host, want);
    assert!(!netns::read_links(Netns::Host).await.unwrap().is_empty());
}

#[tokio::test]
async fn spawn_in_runs_a_runtime_whose_sockets_belong_to_the_namespace() {
    let rig = Rig::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = netns::spawn_in(rig.target(), "ns-test", move || async move {
        // 10.9.0.2 exists only inside the namespace.
        let sock = tokio::net::UdpSocket::bind("10.9.0.2:0").await?;
        let addr = sock.local_addr()?;
        let _ = stop_rx.await;
        Ok::<_, std::io::Error>((addr, own_ns_inode()))
    })
    .expect("spawn in the namespace");
    assert!(!task.is_finished());
    stop_tx.send(()).unwrap();
    let (addr, ino) = task.join().await.expect("joined").expect("bound inside");
    assert_eq!(addr.ip().to_string(), "10.9.0.2");
    assert_eq!(
        ino,
        std::fs::metadata(format!("/proc/{}/ns/net", rig.pid))
            .unwrap()
            .ino()
    );
    let e = netns::spawn_in(Netns::Pid(u32::MAX - 1), "ns-none", || async {}).err();
    assert!(matches!(e, Some(NetnsError::Open { .. })), "{e:?}");
}

fn want(index: u32, name: &str, endpoint: &str) -> netns::NameWant {
    netns::NameWant {
        index,
        name: name.to_string(),
        endpoint: endpoint.to_string(),
        mac: None,
    }
}

#[tokio::test]
async fn name_links_swaps_names_live_keeps_the_engine_name_in_the_alias_and_the_route() {
    let rig = Rig::new();
    let links = netns::read_links(rig.target()).await.unwrap();
    let a = links.iter().find(|l| l.name == rig.a).unwrap().clone();
    let b = links.iter().find(|l| l.name != rig.a).unwrap().clone();
    assert_eq!((a.alias.as_deref(), b.alias.as_deref()), (None, None));
    // Swap the two names in one pass (each goes through a temporary name).
    let swap = netns::name_links(
        rig.target(),
        vec![
            want(a.index, &b.name, "ep-a"),
            want(b.index, &a.name, "ep-b"),
        ],
    )
    .await;
    if kernel_version() < (6, 2) {
        // Older kernels refuse to rename a link that is up (docs/NAMES.md).
        let e = swap.unwrap_err();
        assert!(matches!(e, NetnsError::RenameUp { .. }), "{e}");
        return;
    }
    let after = swap.expect("swap");
    let got = |i: u32| after.iter().find(|l| l.index == i).unwrap().clone();
    assert_eq!(got(a.index).name, b.name);
    assert_eq!(got(b.index).name, a.name);
    assert_eq!(netns::engine_name(&got(a.index)), Some(a.name.as_str()));
    assert_eq!(netns::endpoint_of(&got(a.index)), Some("ep-a"));
    let j = rig.link_json(&b.name);
    assert_eq!(j["ifindex"].as_u64(), Some(a.index as u64));
    assert!(is_up(&j), "renamed while up, stays up");
    assert_eq!(
        j["ifalias"].as_str(),
        Some(format!("{}{}:ep-a", netns::ALIAS_PREFIX, a.name).as_str())
    );
    let routes = rig.ns.must_ip("route show default");
    assert!(
        routes.contains(&format!("dev {}", b.name)),
        "route kept: {routes}"
    );

    // Back to the engine's names: the alias keeps the first engine name.
    let back = netns::name_links(
        rig.target(),
        vec![want(a.index, &a.name, ""), want(b.index, &b.name, "")],
    )
    .await
    .expect("back");
    let a2 = back.iter().find(|l| l.index == a.index).unwrap();
    assert_eq!(a2.name, a.name);
    assert_eq!(netns::engine_name(a2), Some(a.name.as_str()));
}

#[tokio::test]
async fn a_free_name_and_a_mac_are_given_in_one_change_with_the_alias() {
    let rig = Rig::new();
    let links = netns::read_links(rig.target()).await.unwrap();
    let a = links.iter().find(|l| l.name == rig.a).unwrap().clone();
    let mac: ipc::MacAddr = "02:ed:9e:00:00:31".parse().unwrap();
    let mut w = want(a.index, "vnic0", "ep-a");
    w.mac = Some(mac);
    let r = netns::name_links(rig.target(), vec![w.clone()]).await;
    if kernel_version() < (6, 2) {
        assert!(matches!(r, Err(NetnsError::RenameUp { .. })), "{r:?}");
        return;
    }
    let after = r.expect("name and MAC");
    let l = after.iter().find(|l| l.index == a.index).unwrap();
    assert_eq!((l.name.as_str(), l.mac), ("vnic0", Some(mac)));
    assert_eq!(netns::engine_name(l), Some(a.name.as_str()));
    assert_eq!(netns::endpoint_of(l), Some("ep-a"));
    assert_eq!(l.ipv4, a.ipv4, "addresses kept");
    // What the kernel says, not only the reply: name, MAC, alias, still up.
    let j = rig.link_json("vnic0");
    assert_eq!(j["ifindex"].as_u64(), Some(a.index as u64));
    assert_eq!(j["address"].as_str(), Some("02:ed:9e:00:00:31"));
    assert!(is_up(&j), "changed while up, stays up");
    // Asked again: nothing to change, the alias still names the first engine name.
    let again = netns::name_links(rig.target(), vec![w])
        .await
        .expect("again");
    let l = again.iter().find(|l| l.index == a.index).unwrap();
    assert_eq!(netns::engine_name(l), Some(a.name.as_str()));
}

#[tokio::test]
async fn give_back_name_finds_the_link_by_its_alias_or_address_and_renames_it_back() {
    use netns::GaveBack;
    let rig = Rig::new();
    if kernel_version() < (6, 2) {
        return; // live renames (the swap test checks the refusal)
    }
    let links = netns::read_links(rig.target()).await.unwrap();
    let a = links.iter().find(|l| l.name == rig.a).unwrap().clone();
    let ip = "10.9.0.2".parse().unwrap();
    // Never renamed: found by its address, nothing to give back.
    let r = netns::give_back_name(rig.target(), "ep-a".into(), Some(ip)).await;
    assert_eq!(r.unwrap(), GaveBack::Unchanged);
    // Renamed with no endpoint known: found by its address.
    netns::name_links(rig.target(), vec![want(a.index, "vnic0", "")])
        .await
        .expect("rename");
    let r = netns::give_back_name(rig.target(), "ep-a".into(), Some(ip)).await;
    assert_eq!(
        r.unwrap(),
        GaveBack::Renamed("vnic0".into(), a.name.clone())
    );
    assert_eq!(
        rig.link_json(&a.name)["ifindex"].as_u64(),
        Some(a.index as u64)
    );
    // Without the address nor an alias naming the endpoint: not found.
    netns::name_links(rig.target(), vec![want(a.index, "vnic0", "")])
        .await
        .expect("rename again");
    let r = netns::give_back_name(rig.target(), "ep-a".into(), None).await;
    assert_eq!(r.unwrap(), GaveBack::NotFound);
    // An alias naming another endpoint is a link the engine forgot: not this one.
    let alias = format!("{}{}:ep-a", netns::ALIAS_PREFIX, a.name);
    rig.ns.must_ip(&format!("link set dev vnic0 alias {alias}"));
    let r = netns::give_back_name(rig.target(), "ep-other".into(), Some(ip)).await;
    assert_eq!(r.unwrap(), GaveBack::NotFound);
    // By the endpoint in its alias.
    let r = netns::give_back_name(rig.target(), "ep-a".into(), None).await;
    assert_eq!(
        r.unwrap(),
        GaveBack::Renamed("vnic0".into(), a.name.clone())
    );
    // Neither alias nor address.
    let r = netns::give_back_name(
        rig.target(),
        "ep-x".into(),
        Some("10.9.9.9".parse().unwrap()),
    )
    .await;
    assert_eq!(r.unwrap(), GaveBack::NotFound);
}

#[tokio::test]
async fn a_name_held_by_a_link_not_renamed_by_us_is_refused_and_nothing_moves() {
    let rig = Rig::new();
    let links = netns::read_links(rig.target()).await.unwrap();
    let a = links.iter().find(|l| l.name == rig.a).unwrap().clone();
    let b = links.iter().find(|l| l.name != rig.a).unwrap().clone();
    let e = netns::name_links(rig.target(), vec![want(a.index, &b.name, "")])
        .await
        .unwrap_err();
    assert!(matches!(e, NetnsError::NameTaken { .. }), "{e}");
    assert!(e.to_string().contains("not ours to move"), "{e}");
    let now = netns::read_links(rig.target()).await.unwrap();
    assert!(
        now.iter().any(|l| l.name == a.name && l.alias.is_none()),
        "{now:?}"
    );
    // A name that is no interface name is refused before anything is touched.
    let e = netns::name_links(rig.target(), vec![want(a.index, "no/slash", "")])
        .await
        .unwrap_err();
    assert!(matches!(e, NetnsError::BadName(_)), "{e}");
    // An index that is not there.
    let e = netns::name_links(rig.target(), vec![want(u32::MAX, "x0", "")])
        .await
        .unwrap_err();
    assert!(matches!(e, NetnsError::NoLink { .. }), "{e}");
}

#[tokio::test]
async fn delete_link_removes_it_and_a_second_delete_is_success() {
    let rig = Rig::new();
    let links = netns::read_links(rig.target()).await.unwrap();
    let a = links.iter().find(|l| l.name == rig.a).unwrap().clone();
    let after = netns::delete_link(rig.target(), a.index)
        .await
        .expect("delete");
    // A veth goes with its peer: nothing is left but loopback.
    assert!(after.iter().all(|l| l.index != a.index), "{after:?}");
    assert!(rig.ns.ip(&format!("link show {}", rig.a)).is_err());
    netns::delete_link(rig.target(), a.index)
        .await
        .expect("already gone is success");
}

/// The DHCP clients' namespace as the agent finds it in a container: the one of the
/// process serving netmon's socket. Here a listener inside the rig's namespace.
#[tokio::test]
async fn the_namespace_of_a_socket_server_is_the_servers() {
    let rig = Rig::new();
    let dir = e2e::TempDir::new("nss");
    let path = dir.join("netmon.sock");
    let server = Command::new("ip")
        .args(["netns", "exec", &rig.ns.name, "socat"])
        .arg(format!("UNIX-LISTEN:{},fork", path.display()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn socat (apt-get install socat) in the namespace");
    let server = ChildGuard(Some(server));
    e2e::wait_for(Duration::from_secs(10), "the listener's socket", || {
        path.exists().then_some(())
    });
    let ns = Netns::of_socket_server(&path).expect("the server's namespace");
    assert_eq!(ns, Netns::Pid(server.pid() as u32));
    // Entered, it holds the rig's links (and a socket opened there is there).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = netns::spawn_in(ns, "ns-peer", move || async move {
        let sock = tokio::net::UdpSocket::bind("10.9.0.2:0").await;
        let _ = stop_rx.await;
        (sock.is_ok(), own_ns_inode())
    })
    .expect("spawn in the server's namespace");
    stop_tx.send(()).unwrap();
    let (bound, ino) = task.join().await.unwrap();
    assert!(bound, "10.9.0.2 is not in the server's namespace");
    assert_eq!(
        ino,
        std::fs::metadata(format!("/run/netns/{}", rig.ns.name))
            .unwrap()
            .ino()
    );
    let links = netns::read_links(ns).await.expect("read links");
    assert!(links.iter().any(|l| l.name == rig.a), "{links:?}");

    // Nobody serving: an error, not a namespace.
    drop(server);
    let _ = std::fs::remove_file(&path);
    assert!(Netns::of_socket_server(&path).is_err());
}
