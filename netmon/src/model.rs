//! Our own small view of the kernel's state, and what netmon reports from it.
//!
//! The netlink module converts kernel messages into these types; nothing else sees
//! netlink-packet-route. [`build`] turns a [`Snapshot`] into the protocol's
//! [`ipc::Interface`] records.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipc::{Interface, Ipv4Address, Ipv6Address, LinkType, Status};

use crate::filter::Filter;

/// One link (RTM_NEWLINK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The kernel's operstate word: `UP`, `DOWN`, `UNKNOWN`, `LOWERLAYERDOWN`,
    /// `NOTPRESENT`, `TESTING`, `DORMANT`.
    pub operstate: String,
    /// IFF_UP: administratively up.
    pub flags_up: bool,
    /// IFF_LOWER_UP: the driver signals carrier.
    pub flags_lower_up: bool,
    /// IFLA_INFO_KIND (`veth`, `vlan`, `bridge`, ...); `None` for a plain NIC.
    pub kind: Option<String>,
    /// Link-layer address, lowercase, colon-separated; `None` when the link has none.
    pub mac: Option<String>,
    pub mtu: Option<u32>,
}

/// One IPv4 address (RTM_NEWADDR, AF_INET).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr4 {
    pub index: u32,
    pub address: Ipv4Addr,
    pub prefixlen: u8,
    /// IFA_F_SECONDARY: another address of the same subnet was there first.
    pub secondary: bool,
}

/// One IPv6 address (RTM_NEWADDR, AF_INET6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub index: u32,
    pub address: Ipv6Addr,
    pub prefixlen: u8,
    /// `global`, `site`, `link`, `host` (or the scope number for anything else).
    pub scope: String,
}

/// A main-table IPv4 default route through a gateway (one per nexthop for multipath).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route4 {
    pub oif: u32,
    pub gateway: Ipv4Addr,
    pub metric: u32,
}

/// Everything one full read of the kernel returns, in kernel order.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: Vec<Link>,
    pub addrs4: Vec<Addr4>,
    pub addrs6: Vec<Addr6>,
    pub routes: Vec<Route4>,
}

impl Link {
    /// PROTOCOL.md's `status`: usable when operstate is UP, or UNKNOWN with the flags
    /// UP and LOWER_UP (tun, loopback and some drivers never report an operstate).
    pub fn is_up(&self) -> bool {
        match self.operstate.as_str() {
            "UP" => true,
            "UNKNOWN" => self.flags_up && self.flags_lower_up,
            _ => false,
        }
    }
}

/// What netmon reports: ifindex -> interface, only for the links `filter` allows.
/// Timestamps are left `None`: the daemon stamps each record when it sends it.
pub fn build(
    snapshot: &Snapshot,
    filter: &Filter,
    is_wireless: &dyn Fn(&str) -> bool,
) -> BTreeMap<u32, Interface> {
    // Grouped by ifindex once, so building is linear in the snapshot's size even
    // with thousands of links.
    let mut addrs4: HashMap<u32, Vec<&Addr4>> = HashMap::new();
    for a in &snapshot.addrs4 {
        addrs4.entry(a.index).or_default().push(a);
    }
    let mut addrs6: HashMap<u32, Vec<&Addr6>> = HashMap::new();
    for a in &snapshot.addrs6 {
        addrs6.entry(a.index).or_default().push(a);
    }
    let mut gateways: HashMap<u32, &Route4> = HashMap::new();
    for r in &snapshot.routes {
        let best = gateways.entry(r.oif).or_insert(r);
        if r.metric < best.metric {
            *best = r;
        }
    }

    let mut out = BTreeMap::new();
    for link in snapshot.links.iter().filter(|l| filter.allows(&l.name)) {
        let up = link.is_up();
        let mut iface = Interface::named(link.name.clone());
        iface.index = Some(link.index);
        iface.operstate = Some(link.operstate.clone());
        iface.status = Some(if up { Status::Up } else { Status::Down });
        iface.link_type = Some(if is_wireless(&link.name) {
            LinkType::Wifi
        } else {
            LinkType::Ethernet
        });
        iface.kind = link.kind.clone();
        iface.mac = link.mac.clone();
        iface.mtu = link.mtu;
        if up {
            let mine = addrs4
                .get(&link.index)
                .map(Vec::as_slice)
                .unwrap_or_default();
            // Primaries first, each group in kernel order: consumers take the first
            // address as "the" address of the interface.
            iface.ipv4_addresses = mine
                .iter()
                .filter(|a| !a.secondary)
                .chain(mine.iter().filter(|a| a.secondary))
                .filter_map(|a| Ipv4Address::new(a.address, a.prefixlen))
                .collect();
            // The gateway is kept only while the link is up, like the IPv4 addresses: a
            // consumer must not route through a link that is down, and the kernel keeps
            // "linkdown" routes around after a carrier loss. Equal metrics: the first in
            // kernel order wins, as the kernel's own route lookup does.
            iface.gateway = gateways.get(&link.index).map(|r| r.gateway);
        }
        iface.ipv6_addresses = addrs6
            .get(&link.index)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| Ipv6Address {
                address: a.address,
                prefixlen: a.prefixlen,
                scope: a.scope.clone(),
            })
            .collect();
        out.insert(link.index, iface);
    }
    out
}

/// PROTOCOL.md's `type`: wireless when sysfs shows `wireless` or `phy80211` for the link.
pub fn sysfs_is_wireless(name: &str) -> bool {
    is_wireless_under(Path::new("/sys/class/net"), name)
}

fn is_wireless_under(class_net: &Path, name: &str) -> bool {
    // A name with a slash or a dot-dot would escape /sys/class/net; the kernel never
    // produces one, but the name comes from outside the process.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return false;
    }
    let dir = class_net.join(name);
    // `wireless` exists for cfg80211 and wext drivers, `phy80211` (a symlink) for
    // mac80211 ones; either alone is enough.
    dir.join("wireless").exists() || dir.join("phy80211").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, operstate: &str, up: bool, lower_up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            operstate: operstate.into(),
            flags_up: up,
            flags_lower_up: lower_up,
            kind: None,
            mac: Some(format!("02:00:00:00:00:{index:02x}")),
            mtu: Some(1500),
        }
    }

    fn a4(index: u32, addr: &str, prefixlen: u8, secondary: bool) -> Addr4 {
        Addr4 {
            index,
            address: addr.parse().unwrap(),
            prefixlen,
            secondary,
        }
    }

    fn route(oif: u32, gw: &str, metric: u32) -> Route4 {
        Route4 {
            oif,
            gateway: gw.parse().unwrap(),
            metric,
        }
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn status_rules() {
        let snap = Snapshot {
            links: vec![
                link(2, "eth0", "UP", true, true),
                link(3, "tun0", "UNKNOWN", true, true),
                link(4, "eth2", "UNKNOWN", true, false),
                link(5, "eth3", "UNKNOWN", false, true),
                link(6, "eth4", "DOWN", false, false),
                link(7, "eth5", "LOWERLAYERDOWN", true, false),
                link(8, "eth6", "DORMANT", true, true),
            ],
            ..Default::default()
        };
        let got = build(&snap, &Filter::default(), &never);
        let st = |i: u32| got[&i].status.unwrap();
        assert_eq!(st(2), Status::Up);
        assert_eq!(st(3), Status::Up, "UNKNOWN with UP and LOWER_UP is usable");
        assert_eq!(st(4), Status::Down);
        assert_eq!(st(5), Status::Down);
        assert_eq!(st(6), Status::Down);
        assert_eq!(st(7), Status::Down);
        assert_eq!(st(8), Status::Down);
        assert_eq!(got[&3].operstate.as_deref(), Some("UNKNOWN"));
    }

    #[test]
    fn fields_are_copied_and_timestamp_is_left_to_the_sender() {
        let mut l = link(2, "wlan0", "UP", true, true);
        l.kind = Some("vlan".into());
        l.mtu = Some(9000);
        let snap = Snapshot {
            links: vec![l],
            addrs6: vec![Addr6 {
                index: 2,
                address: "fe80::1".parse().unwrap(),
                prefixlen: 64,
                scope: "link".into(),
            }],
            ..Default::default()
        };
        let got = build(&snap, &Filter::default(), &|n| n == "wlan0");
        let i = &got[&2];
        assert_eq!(i.interface, "wlan0");
        assert_eq!(i.index, Some(2));
        assert_eq!(i.link_type, Some(LinkType::Wifi));
        assert_eq!(i.kind.as_deref(), Some("vlan"));
        assert_eq!(i.mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(i.mtu, Some(9000));
        assert_eq!(i.ipv6_addresses.len(), 1);
        assert_eq!(i.ipv6_addresses[0].scope, "link");
        assert_eq!(i.timestamp, None);
    }

    #[test]
    fn down_link_reports_no_ipv4_and_no_gateway() {
        let snap = Snapshot {
            links: vec![link(2, "eth0", "DOWN", true, false)],
            addrs4: vec![a4(2, "10.0.0.2", 24, false)],
            routes: vec![route(2, "10.0.0.1", 100)],
            ..Default::default()
        };
        let got = build(&snap, &Filter::default(), &never);
        assert!(got[&2].ipv4_addresses.is_empty());
        assert_eq!(got[&2].gateway, None);
    }

    #[test]
    fn primaries_first_in_kernel_order() {
        let snap = Snapshot {
            links: vec![
                link(2, "eth0", "UP", true, true),
                link(3, "eth1", "UP", true, true),
            ],
            addrs4: vec![
                a4(2, "10.0.0.5", 24, false),
                a4(2, "10.0.0.6", 24, true),
                a4(3, "172.16.0.1", 16, false),
                a4(2, "192.168.9.9", 24, false),
                a4(2, "10.0.0.7", 24, true),
            ],
            ..Default::default()
        };
        let got = build(&snap, &Filter::default(), &never);
        let addrs: Vec<String> = got[&2]
            .ipv4_addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefixlen))
            .collect();
        assert_eq!(
            addrs,
            [
                "10.0.0.5/24",
                "192.168.9.9/24",
                "10.0.0.6/24",
                "10.0.0.7/24"
            ]
        );
        assert_eq!(got[&2].ipv4_addresses[0].subnet.to_string(), "10.0.0.0/24");
        assert_eq!(got[&3].ipv4_addresses.len(), 1);
    }

    #[test]
    fn lowest_metric_gateway_of_this_interface() {
        let snap = Snapshot {
            links: vec![
                link(2, "eth0", "UP", true, true),
                link(3, "eth1", "UP", true, true),
            ],
            routes: vec![
                route(2, "10.0.0.1", 600),
                route(3, "10.9.9.1", 1),
                route(2, "10.0.0.254", 100),
                route(2, "10.0.0.9", 300),
            ],
            ..Default::default()
        };
        let got = build(&snap, &Filter::default(), &never);
        assert_eq!(got[&2].gateway, Some("10.0.0.254".parse().unwrap()));
        assert_eq!(got[&3].gateway, Some("10.9.9.1".parse().unwrap()));
    }

    #[test]
    fn filtered_names_are_not_reported() {
        let snap = Snapshot {
            links: vec![
                link(1, "lo", "UNKNOWN", true, true),
                link(2, "eth0", "UP", true, true),
                link(3, "docker0", "DOWN", true, false),
                link(4, "veth1234", "UP", true, true),
                link(5, "eth10", "UP", true, true),
            ],
            ..Default::default()
        };
        let got = build(&snap, &Filter::default(), &never);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [2, 5]);
        let f = Filter::new(&["eth1*".into()], &["eth10".into()]).unwrap();
        assert!(build(&snap, &f, &never).is_empty());
    }

    #[test]
    fn wireless_from_either_sysfs_entry() {
        let root = std::env::temp_dir().join(format!("netmon-sysfs-{}", std::process::id()));
        for (name, entry) in [
            ("wlan0", Some("wireless")),
            ("wlp2s0", Some("phy80211")),
            ("eth0", None),
        ] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            if let Some(e) = entry {
                std::fs::create_dir_all(root.join(name).join(e)).unwrap();
            }
        }
        let got = [
            is_wireless_under(&root, "wlan0"),
            is_wireless_under(&root, "wlp2s0"),
            is_wireless_under(&root, "eth0"),
            is_wireless_under(&root, "missing0"),
        ];
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(got, [true, true, false, false]);
    }

    #[test]
    fn wireless_probe_rejects_path_tricks() {
        assert!(!sysfs_is_wireless(""));
        assert!(!sysfs_is_wireless(".."));
        assert!(!sysfs_is_wireless("../../etc"));
        assert!(!sysfs_is_wireless("lo"));
    }
}
