//! The vNIC store: `runtime_vnics.json` in the state directory, the desired state.
//!
//! Schema-compatible with the older deployment's file (an object keyed by container
//! name, each a list of vNIC objects); fields this version does not know are kept.
//! The file is the only copy of every runtime's identity on the LAN (its MACs), so a
//! file that cannot be read is never overwritten: it is moved aside and every write is
//! refused until an operator restores it (`reload`) or starts over (`reset`).
//!
//! Over 400 lines: about half is the tests of the file format and its faults.

mod format;

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub const STORE_FILE: &str = "runtime_vnics.json";
const CORRUPT_PREFIX: &str = "runtime_vnics.json.corrupt-";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Dhcp,
    Static,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            NetworkMode::Dhcp => "dhcp",
            NetworkMode::Static => "static",
        })
    }
}

/// How a vNIC's MAC got into its container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MacMethod {
    /// The engine gave the endpoint the stored MAC.
    Engine,
    /// The agent set it through the container's network namespace.
    Netns,
}

/// One vNIC. Read and written through `format.rs` (the field's shapes, every key
/// kept where it was); new vNICs are written in the older file's order.
#[derive(Clone, Debug)]
pub struct Vnic {
    pub name: String,
    pub parent_interface: String,
    pub network_mode: NetworkMode,
    pub ip: Option<Ipv4Addr>,
    pub subnet: Option<Ipv4Network>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<serde_json::Value>,
    /// The configured MAC. Both MAC fields keep the file's text as it was (so a file
    /// round-trips byte for byte and a bad value from the field faults nothing); read
    /// them through [`Vnic::stored_mac`] and [`Vnic::bad_mac`].
    pub mac: Option<String>,
    /// The MAC recorded after a reconcile (what the container has).
    pub mac_address: Option<String>,
    pub docker_network_name: Option<String>,
    pub mac_applied: Option<MacMethod>,
    /// Fields this version does not know, written back unchanged.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The object as the file had it (key order, texts): what is written back.
    pub(crate) raw: serde_json::Map<String, serde_json::Value>,
}

/// Equal when every value is: how the file laid the object out does not count.
impl PartialEq for Vnic {
    fn eq(&self, o: &Vnic) -> bool {
        self.to_object()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            == o.to_object()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
    }
}

impl Vnic {
    /// A DHCP-mode vNIC with nothing recorded yet.
    pub fn dhcp(name: &str, parent: &str, mac: Option<MacAddr>) -> Vnic {
        Vnic {
            name: name.to_string(),
            parent_interface: parent.to_string(),
            network_mode: NetworkMode::Dhcp,
            ip: None,
            subnet: None,
            gateway: None,
            dns: None,
            mac: mac.map(|m| m.to_string()),
            mac_address: None,
            docker_network_name: None,
            mac_applied: None,
            extra: serde_json::Map::new(),
            raw: serde_json::Map::new(),
        }
    }

    /// A static vNIC with nothing recorded yet.
    pub fn fixed(
        name: &str,
        parent: &str,
        ip: Ipv4Addr,
        subnet: Ipv4Network,
        gateway: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Vnic {
        Vnic {
            network_mode: NetworkMode::Static,
            ip: Some(ip),
            subnet: Some(subnet),
            gateway,
            ..Vnic::dhcp(name, parent, mac)
        }
    }

    /// The stored MAC text: the recorded one, else the configured one (empty = none).
    fn stored_text(&self) -> Option<&str> {
        self.mac_address
            .as_deref()
            .or(self.mac.as_deref())
            .filter(|m| !m.is_empty())
    }

    /// The MAC this vNIC must have: the recorded one, else the configured one. `None`
    /// also when the stored text is not a MAC (see [`Vnic::bad_mac`]).
    pub fn stored_mac(&self) -> Option<MacAddr> {
        self.stored_text().and_then(|m| m.parse().ok())
    }

    /// The stored MAC text when it is not a MAC (a file edited by hand): kept as it
    /// is, treated as no MAC, and noted by the planner.
    pub fn bad_mac(&self) -> Option<&str> {
        self.stored_text().filter(|m| m.parse::<MacAddr>().is_err())
    }

    /// Whether the older system recorded this vNIC as Wi-Fi (`_is_wifi`,
    /// `_interface_type: "wifi"`, or `_network_method: "proxy_arp"`).
    pub fn recorded_as_wifi(&self) -> bool {
        let s = |k: &str| self.extra.get(k).and_then(|x| x.as_str());
        self.extra.get("_is_wifi").and_then(|x| x.as_bool()) == Some(true)
            || s("_interface_type") == Some("wifi")
            || s("_network_method") == Some("proxy_arp")
    }

    /// Records the MAC the container now has.
    pub fn record_mac(&mut self, mac: MacAddr) {
        self.mac_address = Some(mac.to_string());
    }
}

/// Desired state: container name -> its vNICs, in the file's order (the order the
/// runtimes were created).
pub type Runtimes = IndexMap<String, Vec<Vnic>>;

/// A runtime whose vNICs the agent cannot use (a value it does not understand): kept
/// verbatim in the file, not managed, shown `failed` with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Unusable {
    pub raw: serde_json::Value,
    pub reason: String,
}

/// Why the store refuses writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoreFault {
    pub message: String,
    /// Where the unreadable file was moved.
    pub moved_to: Option<PathBuf>,
    /// Unix time (seconds) the fault was detected.
    pub since: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the vNIC store is faulted ({0}); restore a good {STORE_FILE} and run reload, or reset it"
    )]
    Faulted(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the vNIC store is healthy and holds {0} runtimes: `agent store reset --force` forgets them all (a copy of the file is kept)"
    )]
    Healthy(usize),
    #[error("encode the vNIC store: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The store: the file's content in memory, written through on every change.
#[derive(Debug)]
pub struct VnicStore {
    dir: PathBuf,
    runtimes: Runtimes,
    /// Runtimes kept verbatim because a value in them cannot be used.
    unusable: IndexMap<String, Unusable>,
    /// Every runtime name in the file's order (usable or not), for writing back.
    order: Vec<String>,
    fault: Option<StoreFault>,
}

/// A parsed file: the usable runtimes, the ones kept verbatim, every name in order.
type Split = (Runtimes, IndexMap<String, Unusable>, Vec<String>);

/// Splits a parsed file into usable runtimes and the ones kept verbatim; a file that
/// is not an object of lists is an error (the whole store faults).
fn split(value: serde_json::Value) -> Result<Split, String> {
    let serde_json::Value::Object(top) = value else {
        return Err("the top level is not an object of runtimes".into());
    };
    let (mut runtimes, mut unusable, mut order) = (Runtimes::new(), IndexMap::new(), Vec::new());
    for (name, list) in top {
        let serde_json::Value::Array(items) = &list else {
            return Err(format!("runtime {name:?} is not a list of vNICs"));
        };
        order.push(name.clone());
        let parsed: Result<Vec<Vnic>, String> = items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::Object(m) => {
                    Vnic::from_object(m.clone()).map_err(|e| format!("vNIC {}: {e}", i + 1))
                }
                other => Err(format!("vNIC {} is not an object: {other}", i + 1)),
            })
            .collect();
        match parsed {
            Ok(vnics) => {
                runtimes.insert(name, vnics);
            }
            Err(reason) => {
                tracing::warn!(runtime = %name, %reason, "a runtime in the store cannot be used; kept as it is, not managed");
                unusable.insert(name, Unusable { raw: list, reason });
            }
        }
    }
    Ok((runtimes, unusable, order))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl VnicStore {
    /// Opens the store in `state_dir`. Never fails: see the module comment.
    pub fn open(state_dir: &Path) -> VnicStore {
        let mut s = VnicStore {
            dir: state_dir.to_path_buf(),
            runtimes: Runtimes::new(),
            unusable: IndexMap::new(),
            order: Vec::new(),
            fault: None,
        };
        s.load();
        s
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STORE_FILE)
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// Runtimes kept verbatim and not managed, with why.
    pub fn unusable(&self) -> &IndexMap<String, Unusable> {
        &self.unusable
    }

    pub fn fault(&self) -> Option<&StoreFault> {
        self.fault.as_ref()
    }

    fn load(&mut self) {
        let path = self.path();
        let parsed = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(split)
                .map_err(|e| format!("cannot parse {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.runtimes = Runtimes::new();
                self.unusable.clear();
                self.order.clear();
                self.fault = self.earlier_corruption();
                return;
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        match parsed {
            Ok((runtimes, unusable, order)) => {
                self.runtimes = runtimes;
                self.unusable = unusable;
                self.order = order;
                self.fault = None;
            }
            Err(message) => {
                let moved_to = self.move_aside();
                tracing::error!(%message, moved_to = ?moved_to, "vNIC store unreadable; moved aside, writes refused");
                self.runtimes = Runtimes::new();
                self.unusable.clear();
                self.order.clear();
                self.fault = Some(StoreFault {
                    message,
                    moved_to,
                    since: now_secs(),
                });
            }
        }
    }

    /// Renames the store file to a `.corrupt-<time>` name that does not exist yet.
    fn move_aside(&self) -> Option<PathBuf> {
        let t = now_secs();
        for n in 0..1000u32 {
            let name = if n == 0 {
                format!("{CORRUPT_PREFIX}{t}")
            } else {
                format!("{CORRUPT_PREFIX}{t}.{n}")
            };
            let dest = self.dir.join(name);
            if dest.exists() {
                continue;
            }
            // A hard link fails if the destination appeared meanwhile: never overwrites.
            match fs::hard_link(self.path(), &dest) {
                Ok(()) => {
                    if let Err(e) = fs::remove_file(self.path()) {
                        tracing::error!(error = %e, "cannot remove the corrupt store after copying it aside");
                    }
                    return Some(dest);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot move the corrupt store aside; leaving it in place");
                    return None;
                }
            }
        }
        None
    }

    /// The fault left by an earlier run: no store file, but a corrupt copy beside it.
    fn earlier_corruption(&self) -> Option<StoreFault> {
        let entries = fs::read_dir(&self.dir).ok()?;
        let newest = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(CORRUPT_PREFIX))
            .map(|e| e.path())
            .max()?;
        let since = fs::metadata(&newest)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_else(now_secs);
        Some(StoreFault {
            message: format!(
                "{STORE_FILE} is missing and an unreadable copy was kept as {}",
                newest.display()
            ),
            moved_to: Some(newest),
            since,
        })
    }

    /// Applies `f` to a copy, writes it atomically, then commits it in memory.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut Runtimes) -> R) -> Result<R, StoreError> {
        if let Some(fault) = &self.fault {
            return Err(StoreError::Faulted(fault.message.clone()));
        }
        let mut next = self.runtimes.clone();
        let r = f(&mut next);
        // The file's order: runtimes kept where they were, new ones at the end.
        let mut order: Vec<String> = self
            .order
            .iter()
            .filter(|n| next.contains_key(*n) || self.unusable.contains_key(*n))
            .cloned()
            .collect();
        let new: Vec<String> = next
            .keys()
            .filter(|n| !order.contains(n))
            .cloned()
            .collect();
        order.extend(new);
        self.write(&self.file_value(&next, &order))?;
        self.runtimes = next;
        self.order = order;
        Ok(r)
    }

    /// Re-reads the file (after an operator restored it).
    pub fn reload(&mut self) -> Result<(), StoreError> {
        self.load();
        match &self.fault {
            Some(f) => Err(StoreError::Faulted(f.message.clone())),
            None => Ok(()),
        }
    }

    /// Starts over with an empty store. A healthy store that holds runtimes is reset
    /// only with `force`. The current file, if any, is always kept as
    /// `runtime_vnics.json.reset-<unix time>` (returned); corrupt copies stay too.
    pub fn reset(&mut self, force: bool) -> Result<Option<PathBuf>, StoreError> {
        if self.fault.is_none() && !self.runtimes.is_empty() && !force {
            return Err(StoreError::Healthy(self.runtimes.len()));
        }
        let current = self.path();
        let kept = if current.exists() {
            let to = self.dir.join(format!("{STORE_FILE}.reset-{}", now_secs()));
            fs::copy(&current, &to).map_err(|source| StoreError::Io {
                what: "keep a copy of",
                path: current.clone(),
                source,
            })?;
            File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(|source| StoreError::Io {
                    what: "sync",
                    path: to.clone(),
                    source,
                })?;
            Some(to)
        } else {
            None
        };
        self.write(&serde_json::Value::Object(serde_json::Map::new()))?;
        self.runtimes = Runtimes::new();
        self.unusable.clear();
        self.order.clear();
        self.fault = None;
        Ok(kept)
    }

    /// The file's content: every runtime in `order`, the unusable ones verbatim.
    fn file_value(&self, runtimes: &Runtimes, order: &[String]) -> serde_json::Value {
        let mut top = serde_json::Map::new();
        for name in order {
            let v = match (runtimes.get(name), self.unusable.get(name)) {
                (Some(vnics), _) => serde_json::Value::Array(
                    vnics
                        .iter()
                        .map(|v| serde_json::Value::Object(v.to_object()))
                        .collect(),
                ),
                (None, Some(u)) => u.raw.clone(),
                (None, None) => continue,
            };
            top.insert(name.clone(), v);
        }
        serde_json::Value::Object(top)
    }

    fn write(&self, value: &serde_json::Value) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        crate::atomic_file::write(&self.dir, STORE_FILE, &bytes)
            .map_err(|(what, path, source)| StoreError::Io { what, path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written the way the older Python deployment writes it (json.dump, indent 2),
    /// with a field this version does not know.
    const PYTHON_FILE: &str = r#"{
  "plc-gateway": [
    {
      "name": "eth0",
      "parent_interface": "ens37",
      "network_mode": "dhcp",
      "mac": "02:11:22:33:44:55",
      "mac_address": "02:11:22:33:44:55",
      "docker_network_name": "macvlan_ens37_192.168.1.0_24",
      "vlan": 12
    },
    {
      "name": "eth1",
      "parent_interface": "ens38",
      "network_mode": "static",
      "ip": "10.0.0.100",
      "subnet": "10.0.0.0/24",
      "gateway": "10.0.0.1",
      "dns": [
        "10.0.0.53"
      ]
    }
  ]
}
"#;

    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "vnics-test-{}-{n}-{}",
                std::process::id(),
                fastrand::u32(..)
            ));
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn files(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Object keys in the order the text has them (serde_json::Value would sort them).
    fn key_order(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix('"').and_then(|r| r.split_once("\":")))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    #[test]
    fn missing_file_is_an_empty_healthy_store() {
        let d = Dir::new();
        let s = VnicStore::open(&d.0);
        assert!(s.runtimes().is_empty());
        assert!(s.fault().is_none());
        assert!(d.files().is_empty(), "opening writes nothing");
    }

    #[test]
    fn python_file_round_trips_with_unknown_fields_and_field_order() {
        let d = Dir::new();
        fs::write(d.0.join(STORE_FILE), PYTHON_FILE).unwrap();
        let mut s = VnicStore::open(&d.0);
        assert!(s.fault().is_none());
        let v = &s.runtimes()["plc-gateway"];
        assert_eq!(v[0].network_mode, NetworkMode::Dhcp);
        assert_eq!(v[0].stored_mac(), Some(mac("02:11:22:33:44:55")));
        assert_eq!(v[0].extra["vlan"], 12);
        assert_eq!(v[1].ip, Some("10.0.0.100".parse().unwrap()));
        assert_eq!(v[1].subnet.unwrap().to_string(), "10.0.0.0/24");
        // A no-op update rewrites the file: same content, same field order.
        s.update(|_| ()).unwrap();
        let written = fs::read_to_string(d.0.join(STORE_FILE)).unwrap();
        let a: serde_json::Value = serde_json::from_str(&written).unwrap();
        let b: serde_json::Value = serde_json::from_str(PYTHON_FILE).unwrap();
        assert_eq!(a, b, "nothing lost or added:\n{written}");
        assert_eq!(key_order(&written), key_order(PYTHON_FILE));
        assert_eq!(
            written, PYTHON_FILE,
            "byte for byte, as Python's json.dump(indent=2) writes it"
        );
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn stored_mac_prefers_the_recorded_one() {
        let mut v = Vnic::dhcp("eth0", "p", Some(mac("02:00:00:00:00:01")));
        assert_eq!(v.stored_mac(), Some(mac("02:00:00:00:00:01")));
        v.record_mac(mac("02:00:00:00:00:02"));
        assert_eq!(v.mac_address.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(v.stored_mac(), Some(mac("02:00:00:00:00:02")));
        v.mac_address = Some(String::new());
        v.mac = Some(String::new());
        assert_eq!(v.stored_mac(), None);
        assert_eq!(v.bad_mac(), None, "empty is no MAC, not a bad one");
    }

    #[test]
    fn a_bad_or_upper_case_mac_in_the_file_is_kept_as_written() {
        let d = Dir::new();
        let text = PYTHON_FILE
            .replacen(
                "\"mac\": \"02:11:22:33:44:55\"",
                "\"mac\": \"02:11:22:33:44:5Z\"",
                1,
            )
            .replacen(
                "\"mac_address\": \"02:11:22:33:44:55\"",
                "\"mac_address\": \"not a mac\"",
                1,
            );
        assert_ne!(text, PYTHON_FILE, "the fixture has the MAC lines");
        fs::write(d.0.join(STORE_FILE), &text).unwrap();
        let mut s = VnicStore::open(&d.0);
        assert!(s.fault().is_none(), "a bad MAC faults nothing");
        let v = &s.runtimes()["plc-gateway"][0];
        assert_eq!(v.stored_mac(), None);
        assert_eq!(v.bad_mac(), Some("not a mac"));
        s.update(|_| ()).unwrap();
        let written = fs::read_to_string(d.0.join(STORE_FILE)).unwrap();
        assert_eq!(written, text, "written back byte for byte");
        let mut upper = Vnic::dhcp("eth0", "p", None);
        upper.mac = Some("02:AA:00:00:00:01".into());
        assert_eq!(upper.stored_mac(), Some(mac("02:aa:00:00:00:01")));
        let json = serde_json::to_string(&upper).unwrap();
        assert!(
            json.contains("02:AA:00:00:00:01"),
            "kept as written: {json}"
        );
    }

    #[test]
    fn update_is_atomic_and_leaves_no_temp_files() {
        let d = Dir::new();
        let mut s = VnicStore::open(&d.0);
        for i in 0..5 {
            s.update(|r| {
                r.entry(format!("c{i}")).or_default().push(Vnic::dhcp(
                    "eth0",
                    "p1",
                    Some(mac("02:00:00:00:00:01")),
                ))
            })
            .unwrap();
        }
        assert_eq!(d.files(), vec![STORE_FILE.to_string()]);
        let reopened = VnicStore::open(&d.0);
        assert_eq!(reopened.runtimes(), s.runtimes());
        assert_eq!(reopened.runtimes().len(), 5);
    }

    #[test]
    fn io_failure_leaves_memory_unchanged() {
        let d = Dir::new();
        let mut s = VnicStore::open(&d.0.join("sub"));
        s.update(|r| r.insert("a".into(), vec![])).unwrap();
        // Replace the directory by a file: the next write cannot create its temp file.
        fs::remove_dir_all(d.0.join("sub")).unwrap();
        fs::write(d.0.join("sub"), b"x").unwrap();
        let e = s.update(|r| r.insert("b".into(), vec![])).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        assert_eq!(s.runtimes().keys().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn corrupt_file_is_moved_aside_faulted_and_never_overwritten() {
        let d = Dir::new();
        let garbage = b"{\"c1\": [ {\"name\": \"eth0\", truncated";
        fs::write(d.0.join(STORE_FILE), garbage).unwrap();
        let mut s = VnicStore::open(&d.0);
        let fault = s.fault().expect("faulted").clone();
        let moved = fault.moved_to.clone().expect("moved aside");
        assert!(
            moved
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("runtime_vnics.json.corrupt-")
        );
        assert_eq!(fs::read(&moved).unwrap(), garbage, "kept byte for byte");
        assert!(!d.0.join(STORE_FILE).exists());
        // Writes are refused without running the change.
        let mut ran = false;
        let e = s.update(|_| ran = true).unwrap_err();
        assert!(matches!(e, StoreError::Faulted(_)), "{e}");
        assert!(!ran);
        assert!(
            !d.0.join(STORE_FILE).exists(),
            "nothing written while faulted"
        );
        // A second corrupt file in the same second gets its own name.
        fs::write(d.0.join(STORE_FILE), b"also bad").unwrap();
        let s2 = VnicStore::open(&d.0);
        let moved2 = s2.fault().unwrap().moved_to.clone().unwrap();
        assert_ne!(moved, moved2);
        assert_eq!(
            fs::read(&moved).unwrap(),
            garbage,
            "first copy not overwritten"
        );
        assert_eq!(fs::read(&moved2).unwrap(), b"also bad");
    }

    #[test]
    fn fault_persists_across_reopen_until_reload_or_reset() {
        let d = Dir::new();
        fs::write(d.0.join(STORE_FILE), b"not json").unwrap();
        drop(VnicStore::open(&d.0));
        let mut s = VnicStore::open(&d.0);
        assert!(s.fault().is_some(), "still faulted after a restart");
        assert!(s.reload().is_err(), "nothing restored yet");
        // The operator restores a good file.
        fs::write(d.0.join(STORE_FILE), PYTHON_FILE).unwrap();
        s.reload().unwrap();
        assert!(s.fault().is_none());
        assert_eq!(s.runtimes().len(), 1);
        s.update(|r| r.insert("x".into(), vec![])).unwrap();

        // Or resets: an empty store, the corrupt copies kept.
        let d = Dir::new();
        fs::write(d.0.join(STORE_FILE), b"not json").unwrap();
        let mut s = VnicStore::open(&d.0);
        assert_eq!(
            s.reset(false).unwrap(),
            None,
            "a faulted store needs no --force"
        );
        assert!(s.fault().is_none());
        assert!(s.runtimes().is_empty());
        let files = d.files();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(
            files
                .iter()
                .any(|f| f.starts_with("runtime_vnics.json.corrupt-"))
        );
        assert!(
            VnicStore::open(&d.0).fault().is_none(),
            "healthy after reset and reopen"
        );
    }

    #[test]
    fn a_file_that_is_not_an_object_of_lists_faults_the_store() {
        for bad in [&br#"{"c1": {"name": "eth0"}}"#[..], b"[1, 2]", b"\"text\""] {
            let d = Dir::new();
            fs::write(d.0.join(STORE_FILE), bad).unwrap();
            assert!(
                VnicStore::open(&d.0).fault().is_some(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_unusable_runtime_is_kept_verbatim_in_place_and_the_rest_managed() {
        let d = Dir::new();
        let file = r#"{
  "b-first": [{"name": "eth0", "parent_interface": "ens37", "network_mode": "dhcp"}],
  "a-bad": [{"name": "eth0", "network_mode": "dhcp", "odd": [3, 1]}],
  "c-last": [{"network_mode": "static", "name": "eth1", "parent_interface": "ens38",
              "ip": "10.0.0.100/24", "subnet": "255.255.255.0", "gateway": "10.0.0.1"}]
}"#;
        fs::write(d.0.join(STORE_FILE), file).unwrap();
        let mut s = VnicStore::open(&d.0);
        assert!(s.fault().is_none());
        assert_eq!(
            s.runtimes().keys().collect::<Vec<_>>(),
            ["b-first", "c-last"]
        );
        let bad = &s.unusable()["a-bad"];
        assert!(
            bad.reason.contains("parent_interface is missing"),
            "{}",
            bad.reason
        );
        assert_eq!(
            s.runtimes()["c-last"][0].subnet,
            Some("10.0.0.0/24".parse().unwrap())
        );
        s.update(|r| {
            r.insert("d-new".into(), vec![Vnic::dhcp("eth0", "ens37", None)]);
            r["b-first"][0].docker_network_name = Some("macvlan_ens37_192.168.1.0_24".into());
        })
        .unwrap();
        let text = fs::read_to_string(d.0.join(STORE_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let top: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(top, ["b-first", "a-bad", "c-last", "d-new"], "{text}");
        let orig: serde_json::Value = serde_json::from_str(file).unwrap();
        assert_eq!(v["a-bad"], orig["a-bad"], "kept verbatim");
        assert_eq!(
            v["c-last"], orig["c-last"],
            "texts kept: /24 suffix, netmask"
        );
        let c_keys: Vec<&String> = v["c-last"][0].as_object().unwrap().keys().collect();
        assert_eq!(
            c_keys,
            [
                "network_mode",
                "name",
                "parent_interface",
                "ip",
                "subnet",
                "gateway"
            ]
        );
        assert!(VnicStore::open(&d.0).unusable().contains_key("a-bad"));
    }

    #[test]
    fn reset_of_a_healthy_store_needs_force_and_keeps_a_copy() {
        let d = Dir::new();
        fs::write(d.0.join(STORE_FILE), PYTHON_FILE).unwrap();
        let mut s = VnicStore::open(&d.0);
        let e = s.reset(false).unwrap_err();
        assert!(matches!(e, StoreError::Healthy(1)), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(
            fs::read(d.0.join(STORE_FILE)).unwrap(),
            PYTHON_FILE.as_bytes()
        );
        assert_eq!(s.runtimes().len(), 1, "nothing forgotten");
        let kept = s.reset(true).unwrap().expect("a copy");
        assert_eq!(fs::read(&kept).unwrap(), PYTHON_FILE.as_bytes());
        assert!(
            kept.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("runtime_vnics.json.reset-")
        );
        assert!(s.runtimes().is_empty());
        assert!(VnicStore::open(&d.0).runtimes().is_empty());
    }
}
