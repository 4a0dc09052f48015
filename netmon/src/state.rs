//! What was last sent for each interface, and the pure decision of what to send
//! next from a freshly built map.

use std::collections::{BTreeMap, BTreeSet};

use ipc::{Interface, Status};

/// Which interfaces a comparison covers.
#[derive(Debug, Clone)]
pub enum Due {
    All,
    Some(BTreeSet<u32>),
}

impl Due {
    fn contains(&self, i: u32) -> bool {
        match self {
            Due::All => true,
            Due::Some(s) => s.contains(&i),
        }
    }
}

/// The last state sent for each interface, and the decisions of what to send next.
/// Pure: fed with freshly built maps, it returns the records to broadcast.
#[derive(Debug, Default, Clone)]
pub struct State {
    sent: BTreeMap<u32, Interface>,
}

/// The record sent for an interface that is gone (or no longer reported): its last
/// known name and index, status `removed`, no addresses, no gateway.
pub fn removed(last: &Interface) -> Interface {
    let mut r = last.clone();
    r.status = Some(Status::Removed);
    // The kernel's word for a link that is not there: a consumer that reads only
    // `operstate` (the older sidecar's protocol) must not take it for up.
    r.operstate = Some("NOTPRESENT".into());
    r.ipv4_addresses.clear();
    r.ipv6_addresses.clear();
    r.gateway = None;
    r.timestamp = None;
    r
}

impl State {
    pub fn new(initial: BTreeMap<u32, Interface>) -> Self {
        State { sent: initial }
    }

    pub fn sent(&self) -> &BTreeMap<u32, Interface> {
        &self.sent
    }

    pub fn name_of(&self, ifindex: u32) -> Option<&str> {
        self.sent.get(&ifindex).map(|i| i.interface.as_str())
    }

    /// Compares `current` with what was last sent, for the `due` interfaces only, and
    /// records and returns what must be sent, in ifindex order. A rename (same index,
    /// new name) is `removed` for the old name followed by the new record; an
    /// interface that the filter starts or stops allowing appears or is removed.
    pub fn apply(&mut self, current: &BTreeMap<u32, Interface>, due: &Due) -> Vec<Interface> {
        let indexes: BTreeSet<u32> = match due {
            Due::All => self.sent.keys().chain(current.keys()).copied().collect(),
            Due::Some(s) => s.clone(),
        };
        let mut out = Vec::new();
        for i in indexes {
            debug_assert!(due.contains(i));
            match (self.sent.get(&i), current.get(&i)) {
                (None, None) => {}
                (None, Some(new)) => {
                    out.push(new.clone());
                    self.sent.insert(i, new.clone());
                }
                (Some(old), None) => {
                    out.push(removed(old));
                    self.sent.remove(&i);
                }
                (Some(old), Some(new)) => {
                    if old.interface != new.interface {
                        out.push(removed(old));
                        out.push(new.clone());
                        self.sent.insert(i, new.clone());
                    } else if !old.same_state(new) {
                        out.push(new.clone());
                        self.sent.insert(i, new.clone());
                    }
                }
            }
        }
        out
    }

    /// Applies an urgent read of `ifindex`: only a link that is now down or gone is
    /// sent at once. Returns `None` when the interface is still up (it stays under the
    /// normal debounce).
    pub fn apply_urgent(
        &mut self,
        current: &BTreeMap<u32, Interface>,
        ifindex: u32,
    ) -> Option<Vec<Interface>> {
        let down_or_gone = match current.get(&ifindex) {
            None => true,
            Some(i) => i.status != Some(Status::Up),
        };
        if !down_or_gone {
            return None;
        }
        let mut due = BTreeSet::new();
        due.insert(ifindex);
        Some(self.apply(current, &Due::Some(due)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::Ipv4Address;

    fn iface(index: u32, name: &str, addr: Option<&str>) -> Interface {
        let mut i = Interface::named(name);
        i.index = Some(index);
        i.operstate = Some("UP".into());
        i.status = Some(Status::Up);
        if let Some(a) = addr {
            i.ipv4_addresses = vec![Ipv4Address::new(a.parse().unwrap(), 24).unwrap()];
        }
        i
    }

    fn map(v: &[Interface]) -> BTreeMap<u32, Interface> {
        v.iter().map(|i| (i.index.unwrap(), i.clone())).collect()
    }

    fn due(v: &[u32]) -> Due {
        Due::Some(v.iter().copied().collect())
    }

    #[test]
    fn unchanged_state_sends_nothing() {
        let a = iface(2, "eth0", Some("10.0.0.1"));
        let mut st = State::new(map(std::slice::from_ref(&a)));
        let mut again = a.clone();
        again.timestamp = Some("later".into());
        assert!(st.apply(&map(&[again]), &due(&[2])).is_empty());
        assert!(st.apply(&map(&[a]), &Due::All).is_empty());
    }

    #[test]
    fn change_is_sent_once() {
        let mut st = State::new(map(&[iface(2, "eth0", Some("10.0.0.1"))]));
        let new = map(&[iface(2, "eth0", Some("10.0.0.2"))]);
        let out = st.apply(&new, &due(&[2]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ipv4_addresses[0].address.to_string(), "10.0.0.2");
        assert!(st.apply(&new, &due(&[2])).is_empty());
    }

    #[test]
    fn only_due_interfaces_are_compared() {
        let mut st = State::new(map(&[iface(2, "a", None), iface(3, "b", None)]));
        let new = map(&[
            iface(2, "a", Some("10.0.0.2")),
            iface(3, "b", Some("10.0.0.3")),
        ]);
        let out = st.apply(&new, &due(&[3]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, "b");
        assert_eq!(st.apply(&new, &due(&[2]))[0].interface, "a");
    }

    #[test]
    fn removal_keeps_last_name_and_index() {
        let mut st = State::new(map(&[iface(4, "eth1", Some("10.0.0.1"))]));
        let out = st.apply(&BTreeMap::new(), &due(&[4]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, "eth1");
        assert_eq!(out[0].index, Some(4));
        assert_eq!(out[0].status, Some(Status::Removed));
        assert_eq!(out[0].operstate.as_deref(), Some("NOTPRESENT"));
        assert_eq!(out[0].effective_status(), Status::Removed);
        let mut legacy = out[0].clone();
        legacy.status = None;
        assert_eq!(
            legacy.effective_status(),
            Status::Down,
            "not up for an old reader"
        );
        assert!(out[0].ipv4_addresses.is_empty());
        assert!(out[0].gateway.is_none());
        assert!(st.sent().is_empty());
    }

    #[test]
    fn rename_is_removed_then_new() {
        let mut st = State::new(map(&[iface(4, "old", Some("10.0.0.1"))]));
        let out = st.apply(&map(&[iface(4, "new", Some("10.0.0.1"))]), &due(&[4]));
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].interface.as_str(), out[0].status),
            ("old", Some(Status::Removed))
        );
        assert_eq!(
            (out[1].interface.as_str(), out[1].status),
            ("new", Some(Status::Up))
        );
        assert_eq!(st.name_of(4), Some("new"));
    }

    #[test]
    fn rename_into_and_out_of_the_filter() {
        // Renamed to an excluded name: the built map no longer has it.
        let mut st = State::new(map(&[iface(4, "eth1", None)]));
        let out = st.apply(&BTreeMap::new(), &due(&[4]));
        assert_eq!(out[0].status, Some(Status::Removed));
        // Renamed back to an allowed name: it appears.
        let out = st.apply(&map(&[iface(4, "eth9", None)]), &due(&[4]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].interface, "eth9");
    }

    #[test]
    fn resync_covers_new_and_vanished() {
        let mut st = State::new(map(&[iface(2, "a", None), iface(3, "b", None)]));
        let out = st.apply(&map(&[iface(2, "a", None), iface(5, "c", None)]), &Due::All);
        let names: Vec<_> = out
            .iter()
            .map(|i| (i.interface.as_str(), i.status))
            .collect();
        assert_eq!(
            names,
            vec![("b", Some(Status::Removed)), ("c", Some(Status::Up))]
        );
    }

    #[test]
    fn urgent_read_sends_only_down_or_gone() {
        let mut st = State::new(map(&[iface(2, "a", Some("10.0.0.1"))]));
        // Still up (a flap already undone): left to the debounce.
        assert!(
            st.apply_urgent(&map(&[iface(2, "a", Some("10.0.0.1"))]), 2)
                .is_none()
        );
        let mut down = iface(2, "a", None);
        down.status = Some(Status::Down);
        down.operstate = Some("DOWN".into());
        let out = st.apply_urgent(&map(&[down]), 2).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Some(Status::Down));
        let out = st.apply_urgent(&BTreeMap::new(), 2).unwrap();
        assert_eq!(out[0].status, Some(Status::Removed));
        // Gone and never reported (an excluded link): nothing.
        assert!(st.apply_urgent(&BTreeMap::new(), 9).unwrap().is_empty());
    }
}
