//! The interface cache, fed by netmon's events.
//!
//! Level-triggered: every event carries an interface's whole state, so the cache is
//! replaced (discovery) or overwritten per interface (change), never patched field by
//! field, except for what the older sidecar leaves out of its down events.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipc::{Event, EventKind, Interface, Status};
use ipnetwork::Ipv4Network;

/// A parent's LAN as planning needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lan {
    pub subnet: Ipv4Network,
    pub host: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Default, Debug, Clone)]
pub struct InterfaceCache {
    by_name: BTreeMap<String, Interface>,
}

/// What planning reads from an entry; a change elsewhere (MTU, IPv6, timestamp) does
/// not trigger a reconcile.
fn planning_view(i: Option<&Interface>) -> Option<(Status, Option<Lan>)> {
    let i = i?;
    Some((i.effective_status(), lan_of(i)))
}

fn lan_of(i: &Interface) -> Option<Lan> {
    let a = i.primary_ipv4()?;
    Some(Lan {
        subnet: a.subnet,
        host: a.address,
        gateway: i.gateway,
    })
}

impl InterfaceCache {
    /// Applies one event; returns the names whose planning view changed.
    pub fn apply(&mut self, event: &Event) -> Vec<String> {
        match &event.kind {
            EventKind::NetworkDiscovery(d) => {
                let next: BTreeMap<String, Interface> = d
                    .interfaces
                    .iter()
                    .filter(|i| i.effective_status() != Status::Removed)
                    .map(|i| (i.interface.clone(), i.clone()))
                    .collect();
                let changed: Vec<String> = self
                    .by_name
                    .keys()
                    .chain(next.keys())
                    .filter(|n| planning_view(self.by_name.get(*n)) != planning_view(next.get(*n)))
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                self.by_name = next;
                changed
            }
            EventKind::NetworkChange(i) => self.change(i),
            EventKind::Other(..) => Vec::new(),
        }
    }

    fn change(&mut self, i: &Interface) -> Vec<String> {
        let mut changed = Vec::new();
        if i.effective_status() == Status::Removed {
            if self.by_name.remove(&i.interface).is_some() {
                changed.push(i.interface.clone());
            }
            return changed;
        }
        let mut next = i.clone();
        if let Some(old) = self.by_name.get(&i.interface) {
            // The older sidecar's down events carry only name, addresses and status.
            next.index = next.index.or(old.index);
            next.mac = next.mac.clone().or_else(|| old.mac.clone());
            next.kind = next.kind.clone().or_else(|| old.kind.clone());
            next.link_type = next.link_type.or(old.link_type);
            next.mtu = next.mtu.or(old.mtu);
        }
        if let Some(index) = next.index {
            // A rename: the kernel keeps the index, the old name is gone.
            let stale: Vec<String> = self
                .by_name
                .iter()
                .filter(|(n, e)| **n != next.interface && e.index == Some(index))
                .map(|(n, _)| n.clone())
                .collect();
            for n in stale {
                self.by_name.remove(&n);
                changed.push(n);
            }
        }
        let before = planning_view(self.by_name.get(&next.interface));
        let name = next.interface.clone();
        self.by_name.insert(name.clone(), next);
        if before != planning_view(self.by_name.get(&name)) {
            changed.push(name);
        }
        changed
    }

    pub fn get(&self, name: &str) -> Option<&Interface> {
        self.by_name.get(name)
    }

    /// The parent's LAN: `Some` only when it is up with an IPv4 address.
    pub fn lan(&self, name: &str) -> Option<Lan> {
        lan_of(self.by_name.get(name)?)
    }

    pub fn interfaces(&self) -> impl Iterator<Item = &Interface> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Event {
        serde_json::from_str(s).unwrap()
    }

    fn iface(name: &str, index: u32, addr: &str, status: &str) -> String {
        let (ip, len) = addr.split_once('/').unwrap();
        let net: Ipv4Network = addr.parse().unwrap();
        format!(
            r#"{{"interface":"{name}","index":{index},"operstate":"UP","status":"{status}","mac":"52:54:00:00:00:0{index}","mtu":1500,
               "ipv4_addresses":[{{"address":"{ip}","prefixlen":{len},"subnet":"{}/{len}","network_address":"{}"}}],"gateway":"10.9.0.1"}}"#,
            net.network(),
            net.network()
        )
    }

    fn discovery(items: &[String]) -> Event {
        ev(&format!(
            r#"{{"type":"network_discovery","data":{{"interfaces":[{}]}}}}"#,
            items.join(",")
        ))
    }

    fn change(item: &str) -> Event {
        ev(&format!(r#"{{"type":"network_change","data":{item}}}"#))
    }

    #[test]
    fn discovery_replaces_wholesale() {
        let mut c = InterfaceCache::default();
        let ch = c.apply(&discovery(&[
            iface("eth1", 2, "10.9.0.5/24", "up"),
            iface("eth2", 3, "10.8.0.5/24", "up"),
        ]));
        assert_eq!(ch, vec!["eth1", "eth2"]);
        let lan = c.lan("eth1").unwrap();
        assert_eq!(lan.subnet.to_string(), "10.9.0.0/24");
        assert_eq!(lan.host.to_string(), "10.9.0.5");
        assert_eq!(lan.gateway.unwrap().to_string(), "10.9.0.1");
        // eth2 gone from the next discovery: forgotten, reported.
        let ch = c.apply(&discovery(&[iface("eth1", 2, "10.9.0.5/24", "up")]));
        assert_eq!(ch, vec!["eth2"]);
        assert!(c.get("eth2").is_none());
        // The same discovery again changes nothing.
        assert!(
            c.apply(&discovery(&[iface("eth1", 2, "10.9.0.5/24", "up")]))
                .is_empty()
        );
    }

    #[test]
    fn change_updates_and_only_planning_relevant_changes_are_reported() {
        let mut c = InterfaceCache::default();
        c.apply(&discovery(&[iface("eth1", 2, "10.9.0.5/24", "up")]));
        assert_eq!(
            c.apply(&change(&iface("eth1", 2, "10.7.0.5/24", "up"))),
            vec!["eth1"]
        );
        assert_eq!(c.lan("eth1").unwrap().subnet.to_string(), "10.7.0.0/24");
        // MTU only: no planning change.
        let mtu = iface("eth1", 2, "10.7.0.5/24", "up").replace("1500", "9000");
        assert!(c.apply(&change(&mtu)).is_empty());
        assert_eq!(c.get("eth1").unwrap().mtu, Some(9000));
        // A new interface appears through a change.
        assert_eq!(
            c.apply(&change(&iface("eth3", 7, "10.6.0.5/24", "up"))),
            vec!["eth3"]
        );
    }

    #[test]
    fn removed_deletes_the_entry() {
        let mut c = InterfaceCache::default();
        c.apply(&discovery(&[iface("eth1", 2, "10.9.0.5/24", "up")]));
        let ch = c.apply(&change(
            r#"{"interface":"eth1","ipv4_addresses":[],"status":"removed"}"#,
        ));
        assert_eq!(ch, vec!["eth1"]);
        assert!(c.get("eth1").is_none());
        assert!(c.is_empty());
        // Removing an unknown interface changes nothing.
        assert!(
            c.apply(&change(
                r#"{"interface":"eth9","ipv4_addresses":[],"status":"removed"}"#
            ))
            .is_empty()
        );
    }

    #[test]
    fn rename_drops_the_old_name() {
        let mut c = InterfaceCache::default();
        c.apply(&discovery(&[iface("eth1", 2, "10.9.0.5/24", "up")]));
        let mut ch = c.apply(&change(&iface("lan0", 2, "10.9.0.5/24", "up")));
        ch.sort();
        assert_eq!(ch, vec!["eth1", "lan0"]);
        assert!(c.get("eth1").is_none());
        assert_eq!(c.get("lan0").unwrap().index, Some(2));
    }

    #[test]
    fn old_sidecar_down_event_keeps_identity_and_hides_the_lan() {
        let mut c = InterfaceCache::default();
        c.apply(&discovery(&[iface("eth1", 2, "10.9.0.5/24", "up")]));
        let ch = c.apply(&change(
            r#"{"interface":"eth1","ipv4_addresses":[],"status":"down"}"#,
        ));
        assert_eq!(ch, vec!["eth1"]);
        let e = c.get("eth1").unwrap();
        assert_eq!(e.index, Some(2), "index kept from the earlier full record");
        assert_eq!(e.mac.as_deref(), Some("52:54:00:00:00:02"));
        assert!(c.lan("eth1").is_none(), "down: no LAN for planning");
    }

    #[test]
    fn old_sidecar_change_without_status_counts_as_up() {
        let mut c = InterfaceCache::default();
        let s = iface("eth1", 2, "10.9.0.5/24", "up").replace(r#""status":"up","#, "");
        assert_eq!(c.apply(&change(&s)), vec!["eth1"]);
        assert_eq!(c.lan("eth1").unwrap().host.to_string(), "10.9.0.5");
        // A down operstate without status is down.
        let down = s.replace(r#""operstate":"UP""#, r#""operstate":"DOWN""#);
        assert_eq!(c.apply(&change(&down)), vec!["eth1"]);
        assert!(c.lan("eth1").is_none());
    }

    #[test]
    fn up_without_ipv4_has_no_lan() {
        let mut c = InterfaceCache::default();
        c.apply(&change(
            r#"{"interface":"eth1","index":2,"status":"up","ipv4_addresses":[]}"#,
        ));
        assert!(c.get("eth1").is_some());
        assert!(c.lan("eth1").is_none());
    }
}
