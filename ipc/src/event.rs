//! Server-to-client events (PROTOCOL.md, "Server to client: events").
//!
//! Deserialisation is lenient on purpose: the agent must accept events from the older
//! Python sidecar, whose down/removed events carry only `interface`,
//! `ipv4_addresses` and `status`, and whose normal changes carry no `status`.
//! Serialisation always writes every field, so old consumers find what they expect.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// The `version` extension written on every event.
pub const PROTOCOL_VERSION: u32 = 1;

/// Whether an interface is usable (`status` extension).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Down,
    Removed,
}

/// `type`: `wifi` when the kernel says the link is wireless, else `ethernet`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkType {
    #[default]
    Ethernet,
    Wifi,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Address {
    pub address: Ipv4Addr,
    pub prefixlen: u8,
    /// The network in CIDR form, e.g. `192.168.1.0/24`.
    pub subnet: Ipv4Network,
    pub network_address: Ipv4Addr,
}

impl Ipv4Address {
    /// Builds the full record from an address and prefix length.
    /// Returns `None` for a prefix length over 32.
    pub fn new(address: Ipv4Addr, prefixlen: u8) -> Option<Self> {
        let net = Ipv4Network::new(address, prefixlen).ok()?;
        let subnet = Ipv4Network::new(net.network(), prefixlen).ok()?;
        Some(Self {
            address,
            prefixlen,
            subnet,
            network_address: net.network(),
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Address {
    pub address: Ipv6Addr,
    pub prefixlen: u8,
    /// `global`, `site`, `link` or `host`.
    pub scope: String,
}

/// One interface's complete state (the object in `interfaces` and in a change's `data`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub interface: String,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub operstate: Option<String>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(rename = "type", default)]
    pub link_type: Option<LinkType>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ipv4_addresses: Vec<Ipv4Address>,
    #[serde(default)]
    pub ipv6_addresses: Vec<Ipv6Address>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl Interface {
    /// An interface record with only a name, everything else unknown or empty.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            interface: name.into(),
            index: None,
            operstate: None,
            status: None,
            link_type: None,
            kind: None,
            mac: None,
            mtu: None,
            ipv4_addresses: Vec::new(),
            ipv6_addresses: Vec::new(),
            gateway: None,
            timestamp: None,
        }
    }

    /// The status, inferred for senders that do not write one (the older sidecar):
    /// an operstate of `DOWN`/`LOWERLAYERDOWN`/`NOTPRESENT` means down, anything else
    /// up.
    pub fn effective_status(&self) -> Status {
        if let Some(s) = self.status {
            return s;
        }
        match self.operstate.as_deref() {
            Some("DOWN" | "LOWERLAYERDOWN" | "NOTPRESENT" | "DORMANT") => Status::Down,
            _ => Status::Up,
        }
    }

    /// The first (primary) IPv4 address, if the interface is up and has one.
    pub fn primary_ipv4(&self) -> Option<&Ipv4Address> {
        if self.effective_status() != Status::Up {
            return None;
        }
        self.ipv4_addresses.first()
    }

    /// Equality ignoring the timestamp: what "the state differs" means.
    pub fn same_state(&self, other: &Interface) -> bool {
        let mut a = self.clone();
        a.timestamp = None;
        let mut b = other.clone();
        b.timestamp = None;
        a == b
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// The payload of an event, by its `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    NetworkDiscovery(Discovery),
    NetworkChange(Interface),
    /// A type this version does not know; consumers ignore it.
    Other(String, serde_json::Value),
}

/// One event with its top-level extensions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "RawEvent", into = "RawEvent")]
pub struct Event {
    pub kind: EventKind,
    pub version: Option<u32>,
    pub instance: Option<String>,
    pub seq: Option<u64>,
}

impl Event {
    pub fn type_name(&self) -> &str {
        match &self.kind {
            EventKind::NetworkDiscovery(_) => "network_discovery",
            EventKind::NetworkChange(_) => "network_change",
            EventKind::Other(t, _) => t,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default)]
    data: serde_json::Value,
}

impl TryFrom<RawEvent> for Event {
    type Error = serde_json::Error;
    fn try_from(raw: RawEvent) -> Result<Self, Self::Error> {
        let kind = match raw.kind.as_str() {
            "network_discovery" => EventKind::NetworkDiscovery(serde_json::from_value(raw.data)?),
            "network_change" => EventKind::NetworkChange(serde_json::from_value(raw.data)?),
            _ => EventKind::Other(raw.kind, raw.data),
        };
        Ok(Event {
            kind,
            version: raw.version,
            instance: raw.instance,
            seq: raw.seq,
        })
    }
}

impl From<Event> for RawEvent {
    fn from(e: Event) -> Self {
        let (kind, data) = match e.kind {
            EventKind::NetworkDiscovery(d) => (
                "network_discovery".to_string(),
                serde_json::to_value(d).unwrap_or_default(),
            ),
            EventKind::NetworkChange(i) => (
                "network_change".to_string(),
                serde_json::to_value(i).unwrap_or_default(),
            ),
            EventKind::Other(t, v) => (t, v),
        };
        RawEvent {
            kind,
            version: e.version,
            instance: e.instance,
            seq: e.seq,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"type": "network_discovery", "version": 1, "instance": "5f2c9a1e", "seq": 1,
 "data": {"interfaces": [
   {"interface": "ens37", "index": 2, "operstate": "UP", "status": "up",
    "type": "ethernet", "kind": null, "mac": "52:54:00:12:34:56", "mtu": 1500,
    "ipv4_addresses": [
      {"address": "192.168.1.50", "prefixlen": 24,
       "subnet": "192.168.1.0/24", "network_address": "192.168.1.0"}],
    "ipv6_addresses": [{"address": "fe80::5054:ff:fe12:3456", "prefixlen": 64, "scope": "link"}],
    "gateway": "192.168.1.1",
    "timestamp": "2025-11-20T20:30:45.123456Z"}],
  "timestamp": "2025-11-20T20:30:45.123456Z"}}"#;

    #[test]
    fn protocol_sample_round_trips() {
        let ev: Event = serde_json::from_str(SAMPLE).unwrap();
        let EventKind::NetworkDiscovery(d) = &ev.kind else {
            panic!("not a discovery: {ev:?}")
        };
        let i = &d.interfaces[0];
        assert_eq!(i.interface, "ens37");
        assert_eq!(i.index, Some(2));
        assert_eq!(i.status, Some(Status::Up));
        assert_eq!(i.link_type, Some(LinkType::Ethernet));
        assert_eq!(i.gateway, Some("192.168.1.1".parse().unwrap()));
        assert_eq!(i.ipv4_addresses[0].subnet.to_string(), "192.168.1.0/24");
        assert_eq!(ev.seq, Some(1));
        let back: serde_json::Value = serde_json::to_value(&ev).unwrap();
        let orig: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn old_sidecar_down_event_is_accepted() {
        let s = r#"{"type":"network_change","data":{"interface":"eth1","ipv4_addresses":[],"status":"down"}}"#;
        let ev: Event = serde_json::from_str(s).unwrap();
        let EventKind::NetworkChange(i) = ev.kind else {
            panic!()
        };
        assert_eq!(i.effective_status(), Status::Down);
        assert!(i.primary_ipv4().is_none());
        assert_eq!(ev.version, None);
    }

    #[test]
    fn old_sidecar_change_without_status_is_up() {
        let s = r#"{"type":"network_change","data":{"interface":"eth1","index":3,"operstate":"UP","mac":"aa:bb:cc:dd:ee:ff","ipv4_addresses":[{"address":"10.1.2.3","prefixlen":16,"subnet":"10.1.0.0/16","network_address":"10.1.0.0"}],"gateway":null}}"#;
        let ev: Event = serde_json::from_str(s).unwrap();
        let EventKind::NetworkChange(i) = ev.kind else {
            panic!()
        };
        assert_eq!(i.effective_status(), Status::Up);
        assert_eq!(i.primary_ipv4().unwrap().address.to_string(), "10.1.2.3");
    }

    #[test]
    fn unknown_event_type_is_kept_not_rejected() {
        let ev: Event = serde_json::from_str(r#"{"type":"future_thing","data":{"x":1}}"#).unwrap();
        assert_eq!(ev.type_name(), "future_thing");
    }

    #[test]
    fn ipv4_address_new_computes_subnet() {
        let a = Ipv4Address::new("192.168.7.99".parse().unwrap(), 20).unwrap();
        assert_eq!(a.subnet.to_string(), "192.168.0.0/20");
        assert_eq!(a.network_address.to_string(), "192.168.0.0");
        assert!(Ipv4Address::new("1.2.3.4".parse().unwrap(), 33).is_none());
    }

    #[test]
    fn same_state_ignores_timestamp() {
        let mut a = Interface::named("x");
        a.timestamp = Some("t1".into());
        let mut b = a.clone();
        b.timestamp = Some("t2".into());
        assert!(a.same_state(&b));
        b.mtu = Some(9000);
        assert!(!a.same_state(&b));
    }
}
