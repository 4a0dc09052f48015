//! A vNIC object as the field writes it (COMPAT.md), read leniently and written back
//! with every key where it was.
//!
//! Accepted as the older system writes them: `ip` with a `/len` suffix (ignored),
//! `network_mode` `manual` (static), a `subnet` given as a netmask (the network is
//! taken from the gateway; refused without one). What the agent changes on an existing
//! vNIC are only the fields it records (`mac_address`, `docker_network_name`,
//! `mac_applied`): every other key keeps its text and its place, new keys go at the end.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{MacMethod, NetworkMode, Vnic};

/// Keys the agent owns on an existing vNIC: written over the file's value.
const RECORDED: [&str; 3] = ["mac_address", "docker_network_name", "mac_applied"];

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    }
}

fn required<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    text(m, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{key} is missing"))
}

fn ipv4(key: &str, s: &str) -> Result<Ipv4Addr, String> {
    // "10.0.0.100/24": the suffix is tolerated and ignored (COMPAT.md).
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.trim()
        .parse()
        .map_err(|_| format!("{key} {s:?} is not an IPv4 address"))
}

fn mode(s: &str) -> Result<NetworkMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "dhcp" => Ok(NetworkMode::Dhcp),
        // The older docs call static addressing "manual".
        "static" | "manual" => Ok(NetworkMode::Static),
        other => Err(format!(
            "network_mode {other:?} is not dhcp, static or manual"
        )),
    }
}

/// A netmask's prefix length, when `s` is one (contiguous ones, like 255.255.255.0).
fn netmask_len(s: &str) -> Option<u8> {
    let m = u32::from(s.parse::<Ipv4Addr>().ok()?);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// `10.0.0.0/24`, or a netmask anchored on the gateway.
fn subnet(s: &str, gateway: Option<Ipv4Addr>) -> Result<Ipv4Network, String> {
    if let Some(len) = netmask_len(s).filter(|_| !s.contains('/')) {
        let gw = gateway.ok_or_else(|| {
            format!("subnet {s:?} is a netmask and there is no gateway to take the network from")
        })?;
        let n = Ipv4Network::new(gw, len).map_err(|e| e.to_string())?;
        return Ipv4Network::new(n.network(), len).map_err(|e| e.to_string());
    }
    let bad = || format!("subnet {s:?} is neither a network like 10.0.0.0/24 nor a netmask");
    if !s.contains('/') {
        return Err(bad());
    }
    let n: Ipv4Network = s.parse().map_err(|_| bad())?;
    Ipv4Network::new(n.network(), n.prefix()).map_err(|e| e.to_string())
}

impl Vnic {
    /// Reads one vNIC object of the file; the error says which field is unusable.
    pub fn from_object(m: Map<String, Value>) -> Result<Vnic, String> {
        let gateway = text(&m, "gateway")?
            .map(|g| ipv4("gateway", g))
            .transpose()?;
        let network_mode = mode(required(&m, "network_mode")?)?;
        let v = Vnic {
            name: required(&m, "name")?.to_string(),
            parent_interface: required(&m, "parent_interface")?.to_string(),
            network_mode,
            ip: text(&m, "ip")?.map(|i| ipv4("ip", i)).transpose()?,
            subnet: text(&m, "subnet")?
                .map(|s| subnet(s, gateway))
                .transpose()?,
            gateway,
            dns: m.get("dns").cloned(),
            mac: text(&m, "mac")?.map(str::to_string),
            mac_address: text(&m, "mac_address")?.map(str::to_string),
            docker_network_name: text(&m, "docker_network_name")?.map(str::to_string),
            // Unknown words (a newer version's) are not ours to judge: kept as written.
            mac_applied: m
                .get("mac_applied")
                .and_then(|x| serde_json::from_value(x.clone()).ok()),
            extra: m
                .iter()
                .filter(|(k, _)| !is_known(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            raw: m,
        };
        Ok(v)
    }

    /// The object to write: the file's own object with the recorded fields set,
    /// missing fields and changed unknown fields added.
    pub fn to_object(&self) -> Map<String, Value> {
        let mut out = self.raw.clone();
        let recorded = [
            ("mac_address", self.mac_address.clone().map(Value::from)),
            (
                "docker_network_name",
                self.docker_network_name.clone().map(Value::from),
            ),
            (
                "mac_applied",
                self.mac_applied
                    .and_then(|m: MacMethod| serde_json::to_value(m).ok()),
            ),
        ];
        let own = [
            ("name", Some(Value::from(self.name.clone()))),
            (
                "parent_interface",
                Some(Value::from(self.parent_interface.clone())),
            ),
            (
                "network_mode",
                Some(Value::from(self.network_mode.to_string())),
            ),
            ("ip", self.ip.map(|i| Value::from(i.to_string()))),
            ("subnet", self.subnet.map(|s| Value::from(s.to_string()))),
            ("gateway", self.gateway.map(|g| Value::from(g.to_string()))),
            ("dns", self.dns.clone()),
            ("mac", self.mac.clone().map(Value::from)),
        ];
        for (k, v) in own {
            if let Some(v) = v
                && !out.contains_key(k)
            {
                out.insert(k.to_string(), v);
            }
        }
        for (k, v) in recorded {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        }
        for (k, v) in &self.extra {
            if out.get(k) != Some(v) {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

fn is_known(k: &str) -> bool {
    RECORDED.contains(&k)
        || matches!(
            k,
            "name"
                | "parent_interface"
                | "network_mode"
                | "ip"
                | "subnet"
                | "gateway"
                | "dns"
                | "mac"
        )
}

impl Serialize for Vnic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_object().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Vnic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = Map::<String, Value>::deserialize(d)?;
        Vnic::from_object(m).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_fields_shapes_are_read_and_written_back_as_they_were() {
        let field = json!({"name": "eth1", "parent_interface": "ens38", "network_mode": "manual",
            "ip": "10.0.0.100/24", "subnet": "255.255.255.0", "gateway": "10.0.0.1",
            "dns": ["10.0.0.1"], "_interface_type": "ethernet", "zz": {"b": 1, "a": 2}});
        let v = Vnic::from_object(obj(field.clone())).unwrap();
        assert_eq!(v.network_mode, NetworkMode::Static);
        assert_eq!(v.ip, Some("10.0.0.100".parse().unwrap()));
        assert_eq!(v.subnet, Some("10.0.0.0/24".parse().unwrap()));
        assert_eq!(v.extra.get("_interface_type"), Some(&json!("ethernet")));
        let back = Value::Object(v.to_object());
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&field).unwrap(),
            "every key, value and order kept"
        );
        let mut v = v;
        v.docker_network_name = Some("macvlan_ens38_10.0.0.0_24".into());
        let keys: Vec<String> = v.to_object().keys().cloned().collect();
        assert_eq!(keys.last().map(String::as_str), Some("docker_network_name"));
    }

    #[test]
    fn what_cannot_be_used_is_named() {
        let bad = |v: Value| Vnic::from_object(obj(v)).unwrap_err();
        let e = bad(
            json!({"name": "e", "parent_interface": "p", "network_mode": "static",
            "ip": "10.0.0.5", "subnet": "255.255.255.0"}),
        );
        assert!(e.contains("no gateway"), "{e}");
        let e = bad(json!({"name": "e", "parent_interface": "p", "network_mode": "bridge"}));
        assert!(e.contains("network_mode"), "{e}");
        let e = bad(json!({"name": "e", "parent_interface": "p", "network_mode": "dhcp", "ip": 5}));
        assert!(e.contains("ip must be a string"), "{e}");
        let e = bad(json!({"parent_interface": "p", "network_mode": "dhcp"}));
        assert!(e.contains("name is missing"), "{e}");
        let e = bad(
            json!({"name": "e", "parent_interface": "p", "network_mode": "static",
            "subnet": "255.0.255.0", "gateway": "10.0.0.1"}),
        );
        assert!(e.contains("neither"), "{e}");
        assert_eq!(netmask_len("255.255.254.0"), Some(23));
        assert_eq!(netmask_len("0.0.0.0"), Some(0));
        assert_eq!(netmask_len("10.0.0.1"), None);
    }
}
