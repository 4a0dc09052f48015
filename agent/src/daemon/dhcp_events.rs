//! What the state task does with DHCP: matches the clients to the store and the cache
//! after every message, takes the clients' updates (a new address triggers a run and
//! writes the older system's `dhcp_*` fields on the vNIC record), and shows a DHCP vNIC
//! without a lease as pending on its client.

use tracing::warn;

use super::dhcp::{DhcpManager, key};
use crate::dhcp::{DhcpEvent, LeaseRecord};
use crate::vnics::NetworkMode;

/// A DHCP vNIC without a lease is pending on its DHCP client, whatever the engine
/// shows (an endpoint it kept from before is not its address until a lease says so).
pub(super) fn state(
    m: &DhcpManager,
    runtime: &str,
    v: &crate::vnics::Vnic,
    st: crate::vnic_state::VnicState,
) -> crate::vnic_state::VnicState {
    use crate::vnic_state::VnicState;
    let first =
        matches!(&st, VnicState::Pending { waiting_for } if waiting_for == "its first attachment");
    if v.network_mode != NetworkMode::Dhcp || !(first || matches!(st, VnicState::Attached)) {
        return st;
    }
    let k = key(runtime, &v.name);
    if m.lease(&k).is_some() {
        return st;
    }
    match m.no_lease(&k) {
        Some(n) => crate::vnic_state::dhcp_pending(&n.reason, n.next_try),
        None => crate::vnic_state::dhcp_pending("a DHCP offer", None),
    }
}

impl super::State {
    /// Matches the DHCP clients to the store and the cache; a lease gone from a
    /// vNIC the plan used triggers a run.
    pub(super) fn sync_dhcp(&mut self) {
        let Some(d) = self.dhcp.as_mut() else {
            return;
        };
        if d.sync(self.store.runtimes(), &self.cache) {
            self.trigger(None);
        }
    }

    pub(super) fn on_dhcp(&mut self, ev: DhcpEvent) {
        let Some(d) = self.dhcp.as_mut() else {
            return;
        };
        let key = ev.key.clone();
        if d.on_event(ev) {
            if let Some(l) = d.lease(&key).cloned() {
                self.record_lease(&key, &l);
            }
            self.trigger(None);
        }
    }

    /// Writes the older system's `dhcp_ip`, `dhcp_gateway`, `dhcp_dns` on the vNIC.
    fn record_lease(&mut self, key: &str, l: &LeaseRecord) {
        let Some((rt, vnic)) = key.split_once('/') else {
            return;
        };
        let dns: Vec<String> = l.dns.iter().map(|d| d.to_string()).collect();
        let fields = [
            ("dhcp_ip", serde_json::Value::from(l.address.to_string())),
            (
                "dhcp_gateway",
                l.router
                    .map(|r| serde_json::Value::from(r.to_string()))
                    .unwrap_or(serde_json::Value::Null),
            ),
            ("dhcp_dns", serde_json::Value::from(dns.join(" "))),
        ];
        let same = self
            .store
            .runtimes()
            .get(rt)
            .and_then(|vs| vs.iter().find(|v| v.name == vnic))
            .is_none_or(|v| fields.iter().all(|(k, val)| v.extra.get(*k) == Some(val)));
        if same {
            return;
        }
        let r = self.store.update(|runtimes| {
            let Some(v) = runtimes
                .get_mut(rt)
                .and_then(|vs| vs.iter_mut().find(|v| v.name == vnic))
            else {
                return false;
            };
            for (k, val) in fields {
                v.extra.insert(k.to_string(), val);
            }
            true
        });
        if let Err(e) = r {
            warn!(%key, error = %e, "cannot write the lease's fields on the vNIC record");
        }
    }
}
