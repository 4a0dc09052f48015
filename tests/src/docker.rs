//! The Docker engine side of the rig: the local test image, test containers, and a LAN
//! whose host end is a MACVLAN parent in the host namespace.
//!
//! Nothing is pulled (no registry is reachable): the image is `docker import`ed from a
//! tarball holding Debian's `busybox-static`. Everything else a test creates has a
//! unique name and is removed by a Drop guard, also when the test panics.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{Netns, TempDir, must, require_root, sh, unique};

/// The local test image (busybox applets as `/bin/*`, `CMD ["sleep","infinity"]`).
pub const TEST_IMAGE: &str = "edgenet-test-busybox:1";
/// Label on every container the rig starts, so a leftover can be found by hand.
pub const TEST_LABEL: &str = "edgenet.test";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const APPLETS: &[&str] = &[
    "sh", "ip", "udhcpc", "sleep", "cat", "ls", "ifconfig", "ping", "echo", "grep",
];

/// Fails the test unless root, iproute2, and the engine at `/var/run/docker.sock`
/// answer `GET /_ping`.
pub fn require_engine() {
    require_root();
    let ping = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(DOCKER_SOCKET)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    match ping() {
        Ok(r) if r.starts_with("HTTP/1.") && r.contains(" 200 ") => {}
        Ok(r) => panic!(
            "the Docker engine at {DOCKER_SOCKET} answered _ping with {:?}: it must be up for this test",
            r.lines().next().unwrap_or("")
        ),
        Err(e) => {
            panic!("this test needs the Docker engine at {DOCKER_SOCKET} (start dockerd): {e}")
        }
    }
}

/// Builds the test image once per machine and returns its name. Safe when tests run
/// concurrently: builders serialise on a lock file and re-check under the lock.
pub fn test_image() -> String {
    let exists = || {
        sh(&format!(
            "docker image inspect {TEST_IMAGE} >/dev/null 2>&1"
        ))
        .is_ok()
    };
    if exists() {
        return TEST_IMAGE.to_string();
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/edgenet-test-image.lock")
        .expect("open /tmp/edgenet-test-image.lock");
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock /tmp/edgenet-test-image.lock: {e}"));
    if exists() {
        return TEST_IMAGE.to_string();
    }
    import_test_image("");
    TEST_IMAGE.to_string()
}

/// `docker import`s the test image as [`TEST_IMAGE`] into the engine at `docker_host`
/// (`""`: the CLI's default engine), from the host's busybox-static.
pub fn import_test_image(docker_host: &str) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("busybox is not installed: apt-get install -y busybox-static (.ci/run does)")
        });
    let static_ok = sh(&format!("file -L {busybox} 2>/dev/null || true"))
        .map(|s| !s.contains("dynamically linked"))
        .unwrap_or(true);
    assert!(
        static_ok,
        "{busybox} is dynamically linked: the test image needs busybox-static (apt-get install -y busybox-static)"
    );
    let dir = TempDir::new("img");
    let root = dir.join("rootfs");
    let r = root.display();
    must(&format!(
        "mkdir -p {r}/bin {r}/tmp {r}/proc {r}/sys {r}/dev {r}/etc {r}/run && cp {busybox} {r}/bin/busybox"
    ));
    for a in APPLETS {
        must(&format!("ln -sf busybox {r}/bin/{a}"));
    }
    let host = if docker_host.is_empty() {
        String::new()
    } else {
        format!("-H {docker_host} ")
    };
    must(&format!(
        "tar -C {r} -c . | docker {host}import --change 'CMD [\"sleep\",\"infinity\"]' - {TEST_IMAGE} >/dev/null"
    ));
}

/// A running test container, removed (forced) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d` of the test image with a unique name and the managed label.
    pub fn run() -> Container {
        Self::run_with(&[])
    }

    /// Same, with extra `docker run` arguments.
    pub fn run_with(args: &[&str]) -> Container {
        let image = test_image();
        let name = unique("ct");
        let c = Container { name };
        must(&format!(
            "docker run -d --name {} --label edgenet.managed=true --label {TEST_LABEL}=1 {} {image} >/dev/null",
            c.name,
            args.join(" ")
        ));
        c
    }

    /// Runs a command inside the container (`docker exec`).
    pub fn exec(&self, cmd: &str) -> anyhow::Result<String> {
        sh(&format!(
            "docker exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// The container's links as `ip addr` inside it prints them.
    pub fn links(&self) -> Vec<Link> {
        let out = self
            .exec("ip addr")
            .unwrap_or_else(|e| panic!("ip addr in {}: {e:#}", self.name));
        parse_ip_addr(&out)
    }

    /// The link holding `ip` inside the container.
    pub fn link_with(&self, ip: &str) -> Option<Link> {
        self.links()
            .into_iter()
            .find(|l| l.ipv4.iter().any(|a| a.split('/').next() == Some(ip)))
    }

    /// The container's endpoints: (network name, IPv4), from `docker inspect`.
    pub fn networks(&self) -> Vec<(String, String)> {
        let out = must(&format!(
            "docker inspect -f '{{{{range $k, $v := .NetworkSettings.Networks}}}}{{{{$k}}}} {{{{$v.IPAddress}}}}\n{{{{end}}}}' {}",
            self.name
        ));
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, a)| (n.to_string(), a.trim().to_string()))
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = sh(&format!("docker rm -f {} >/dev/null 2>&1", self.name));
    }
}

/// One link inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    /// `a.b.c.d/len`
    pub ipv4: Vec<String>,
}

/// Parses `ip addr` (iproute2 or busybox) output.
pub fn parse_ip_addr(out: &str) -> Vec<Link> {
    let mut links: Vec<Link> = Vec::new();
    for line in out.lines() {
        let t = line.trim_start();
        if !line.starts_with(' ') && t.contains(": ") {
            let mut parts = t.splitn(3, ": ");
            let _idx = parts.next();
            if let Some(n) = parts.next() {
                let name = n.split('@').next().unwrap_or(n).to_string();
                links.push(Link {
                    name,
                    mac: String::new(),
                    ipv4: Vec::new(),
                });
            }
        } else if let Some(l) = links.last_mut() {
            let mut w = t.split_whitespace();
            match (w.next(), w.next()) {
                (Some("link/ether"), Some(m)) => l.mac = m.to_lowercase(),
                (Some("inet"), Some(a)) => l.ipv4.push(a.to_string()),
                _ => {}
            }
        }
    }
    links
}

/// A LAN: a veth whose host end (`parent`) is the MACVLAN parent with the host's
/// address (.2), and whose peer sits in a fresh namespace holding the gateway (.1).
/// Drop removes the engine's networks on that parent (disconnecting what is attached),
/// the link, and the namespace.
pub struct Lan {
    pub parent: String,
    pub peer: String,
    /// `a.b.c.0/24`
    pub subnet: String,
    /// `a.b.c.2`
    pub host: String,
    /// `a.b.c.1`
    pub gateway: String,
    pub ns: Netns,
}

/// A /24 prefix (`a.b.c`) unique to this process and call, in 10.200.0.0 - 10.249.255.0,
/// so concurrent tests never share a subnet, and free on this host ([`Taken`]).
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let a = 200 + (pid % 50);
    let pick = || {
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!("10.{a}.{}", ((pid / 50) * 8 + n) % 256)
    };
    let taken = Taken::read();
    (0..256)
        .map(|_| pick())
        .find(|p| taken.leaves_free(&[p]))
        .unwrap_or_else(|| panic!("no free /24 left in 10.{a}.0.0/16"))
}

/// The subnets in use on this host, read once: the engine's networks' and the IPv4
/// routes' destinations. The engine refuses a network on a subnet it already holds
/// ("Pool overlaps"), and a network 20.10 cannot remove (moby#43286, a stale endpoint
/// count) keeps its subnet until the engine restarts.
pub struct Taken(Vec<(u32, u32)>);

impl Taken {
    pub fn read() -> Taken {
        let out = |cmd: &str| {
            Command::new("sh")
                .args(["-c", cmd])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let engine = out("docker network ls -q | xargs -r docker network inspect -f \
             '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null");
        let routes = out("ip -4 route show table all");
        let routed = routes.lines().filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        });
        Taken(
            engine
                .split_whitespace()
                .chain(routed)
                .filter_map(cidr)
                .collect(),
        )
    }

    /// Whether none of the /24 prefixes (`a.b.c`) overlaps a subnet in use.
    pub fn leaves_free(&self, prefixes: &[&str]) -> bool {
        prefixes.iter().all(|p| {
            cidr(&format!("{p}.0/24"))
                .is_some_and(|mine| !self.0.iter().any(|t| overlaps(mine, *t)))
        })
    }
}

/// `a.b.c.d/len` (or a bare address, a /32) as (address, prefix length).
fn cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(addr), len))
}

fn overlaps((a, alen): (u32, u32), (b, blen): (u32, u32)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (a ^ b) & mask == 0
}

impl Lan {
    /// A LAN on a parent with a unique name.
    pub fn new() -> Lan {
        Self::named(&unique("el"))
    }

    /// A LAN on a parent with the given name (e.g. `<p>` and `<p>0` for eth1/eth10).
    pub fn named(parent: &str) -> Lan {
        require_root();
        assert!(parent.len() <= 15, "interface name too long: {parent}");
        let ns = Netns::new();
        let peer = unique("lp");
        let prefix = unique_prefix();
        let lan = Lan {
            parent: parent.to_string(),
            peer: peer.clone(),
            subnet: format!("{prefix}.0/24"),
            host: format!("{prefix}.2"),
            gateway: format!("{prefix}.1"),
            ns,
        };
        must(&format!("ip link add {parent} type veth peer name {peer}"));
        must(&format!("ip link set {peer} netns {}", lan.ns.name));
        lan.ns
            .must_ip(&format!("addr add {}/24 dev {peer}", lan.gateway));
        lan.ns.must_ip(&format!("link set {peer} up"));
        must(&format!("ip addr add {}/24 dev {parent}", lan.host));
        must(&format!("ip link set {parent} up"));
        lan
    }

    /// Moves the LAN (host and gateway) to a fresh subnet.
    pub fn readdress(&mut self) {
        let prefix = unique_prefix();
        let (old_host, old_gw) = (self.host.clone(), self.gateway.clone());
        self.subnet = format!("{prefix}.0/24");
        self.host = format!("{prefix}.2");
        self.gateway = format!("{prefix}.1");
        must(&format!(
            "ip addr add {}/24 dev {p} && ip addr del {old_host}/24 dev {p}",
            self.host,
            p = self.parent
        ));
        self.ns.must_ip(&format!(
            "addr add {}/24 dev {p}",
            self.gateway,
            p = self.peer
        ));
        self.ns
            .must_ip(&format!("addr del {old_gw}/24 dev {p}", p = self.peer));
    }

    /// An address in the LAN (`a.b.c.<n>`).
    pub fn addr(&self, n: u8) -> String {
        let prefix = self.subnet.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        format!("{prefix}.{n}")
    }

    /// The parent's ifindex.
    pub fn index(&self) -> u32 {
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.parent))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex for {}", self.parent))
    }

    /// The parent as netmon would report it (up, its address, the gateway).
    pub fn interface(&self) -> ipc::Interface {
        let mut i = ipc::Interface::named(&self.parent);
        i.index = Some(self.index());
        i.status = Some(ipc::Status::Up);
        i.operstate = Some("UP".into());
        let host = self.host.parse().expect("host address");
        i.ipv4_addresses = vec![ipc::Ipv4Address::new(host, 24).expect("ipv4 address")];
        i.gateway = Some(self.gateway.parse().expect("gateway address"));
        i
    }

    /// Names of the engine's macvlan networks whose parent is exactly this LAN's.
    pub fn networks(&self) -> Vec<String> {
        networks_on(&self.parent)
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

/// The engine's macvlan networks whose `parent` option is exactly `parent`.
pub fn networks_on(parent: &str) -> Vec<String> {
    let ids = sh("docker network ls -q --filter driver=macvlan").unwrap_or_default();
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        let line = sh(&format!(
            "docker network inspect -f '{{{{index .Options \"parent\"}}}} {{{{.Name}}}}' {id}"
        ))
        .unwrap_or_default();
        if let Some((p, name)) = line.trim().split_once(' ')
            && p == parent
        {
            out.push(name.to_string());
        }
    }
    out.sort();
    out
}

/// A `network_discovery` event holding these LANs' parents.
pub fn discovery(lans: &[&Lan]) -> ipc::Event {
    ipc::Event {
        kind: ipc::EventKind::NetworkDiscovery(ipc::Discovery {
            interfaces: lans.iter().map(|l| l.interface()).collect(),
            timestamp: None,
        }),
        version: Some(ipc::PROTOCOL_VERSION),
        instance: None,
        seq: None,
    }
}

/// Removes a network after force-disconnecting whatever is attached.
pub fn remove_network(name: &str) {
    let attached = sh(&format!(
        "docker network inspect -f '{{{{range .Containers}}}}{{{{.Name}}}} {{{{end}}}}' {name}"
    ))
    .unwrap_or_default();
    for c in attached.split_whitespace() {
        let _ = sh(&format!(
            "docker network disconnect -f {name} {c} >/dev/null 2>&1"
        ));
    }
    let _ = sh(&format!("docker network rm {name} >/dev/null 2>&1"));
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in networks_on(&self.parent) {
            remove_network(&n);
        }
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.parent));
    }
}

/// Runs `docker` with arguments, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busybox_ip_addr() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000\n    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n    inet 127.0.0.1/8 scope host lo\n       valid_lft forever preferred_lft forever\n12: eth0@if13: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500 qdisc noqueue \n    link/ether 02:AA:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n    inet 10.200.1.5/24 brd 10.200.1.255 scope global eth0\n";
        let l = parse_ip_addr(out);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].name, "eth0");
        assert_eq!(l[1].mac, "02:aa:00:00:00:01");
        assert_eq!(l[1].ipv4, vec!["10.200.1.5/24"]);
    }

    #[test]
    fn subnets_overlap_when_one_holds_the_other() {
        let c = |s| cidr(s).unwrap();
        assert!(overlaps(c("10.212.160.0/24"), c("10.212.160.0/24")));
        assert!(overlaps(c("10.212.160.0/24"), c("10.212.0.0/16")));
        assert!(overlaps(c("10.212.160.0/24"), c("10.212.160.7")));
        assert!(overlaps(c("10.212.160.0/24"), c("0.0.0.0/0")));
        assert!(!overlaps(c("10.212.160.0/24"), c("10.212.161.0/24")));
        assert!(!overlaps(c("10.212.160.0/24"), c("10.212.161.7")));
        assert_eq!(cidr("default"), None);
        assert_eq!(cidr("10.0.0.0/33"), None);
    }
}
