//! What `agent status` and `agent health` show: a serialisable view built by the
//! daemon from the state it owns, and its text rendering for terminals.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::InterfaceCache;
use crate::engine::ContainerInfo;
use crate::vnics::Runtimes;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatusView {
    pub agent: AgentInfo,
    pub netmon: NetmonLink,
    pub engine: EngineLink,
    pub interfaces: Vec<InterfaceView>,
    pub runtimes: BTreeMap<String, Vec<VnicView>>,
    pub store: StoreView,
    /// Information from the last reconcile (e.g. a static subnet off the LAN).
    pub notes: Vec<Value>,
    pub reconcile: ReconcileState,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub state_dir: String,
    pub control_socket: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct NetmonLink {
    pub socket: String,
    pub connected: bool,
    /// netmon's instance id from its last event (changes when netmon restarts).
    pub instance: Option<String>,
    pub events: u64,
    pub discoveries: u64,
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct EngineLink {
    pub host: String,
    pub reachable: bool,
    pub version: Option<String>,
    pub api_version: Option<String>,
    pub last_error: Option<String>,
    pub connects: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct InterfaceView {
    pub name: String,
    pub index: Option<u32>,
    pub status: String,
    pub ipv4: Vec<String>,
    pub gateway: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct VnicView {
    pub name: String,
    pub parent: String,
    pub mode: Value,
    pub network: Option<String>,
    pub mac: Option<String>,
    pub ipv4: Option<String>,
    pub subnet: Option<String>,
    /// How the stored MAC was applied: by the engine, or through the container's
    /// network namespace.
    pub mac_applied: Value,
    /// Whether the engine shows the container on `network` (unknown when the
    /// engine was not asked).
    #[serde(default)]
    pub attached: Option<bool>,
    /// The MAC seen inside the container on that interface.
    #[serde(default)]
    pub live_mac: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StoreView {
    pub path: String,
    pub fault: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ReconcileState {
    pub running: bool,
    pub runs: u64,
    /// The last run's report (steps, engine calls, notes), as the reconciler wrote it.
    pub last: Option<Value>,
    /// The last run that had steps to take (later runs may have found nothing).
    #[serde(default)]
    pub last_change: Option<Value>,
    /// Why the last run could not run at all (e.g. the engine was unreachable).
    pub last_error: Option<String>,
}

pub fn interfaces(cache: &InterfaceCache) -> Vec<InterfaceView> {
    let mut v: Vec<InterfaceView> = cache
        .interfaces()
        .map(|i| InterfaceView {
            name: i.interface.clone(),
            index: i.index,
            status: match i.effective_status() {
                ipc::Status::Up => "up".into(),
                other => format!("{other:?}").to_lowercase(),
            },
            ipv4: i
                .ipv4_addresses
                .iter()
                .map(|a| format!("{}/{}", a.address, a.prefixlen))
                .collect(),
            gateway: i.gateway.map(|g| g.to_string()),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn runtimes(runtimes: &Runtimes) -> BTreeMap<String, Vec<VnicView>> {
    runtimes
        .iter()
        .map(|(name, vnics)| {
            let views = vnics
                .iter()
                .map(|v| VnicView {
                    name: v.name.clone(),
                    parent: v.parent_interface.clone(),
                    mode: serde_json::to_value(v.network_mode).unwrap_or(Value::Null),
                    network: v.docker_network_name.clone(),
                    mac: v.stored_mac().map(|m| m.to_string()),
                    ipv4: v.ip.map(|i| i.to_string()),
                    subnet: v.subnet.map(|s| s.to_string()),
                    mac_applied: serde_json::to_value(v.mac_applied).unwrap_or(Value::Null),
                    attached: None,
                    live_mac: None,
                })
                .collect();
            (name.clone(), views)
        })
        .collect()
}

/// Adds what the engine reports (addresses, live MACs) to each vNIC's view.
pub fn fill_observed(view: &mut StatusView, containers: &[ContainerInfo]) {
    for c in containers {
        let Some(vnics) = view.runtimes.get_mut(&c.name) else {
            continue;
        };
        for v in vnics {
            let Some(net) = &v.network else { continue };
            if let Some(ep) = c.endpoints.iter().find(|e| &e.network_name == net) {
                v.ipv4 = ep.ipv4.map(|i| i.to_string()).or(v.ipv4.take());
                v.attached = Some(true);
                if let Some(ip) = ep.ipv4
                    && let Some(l) = c.link_with(ip)
                {
                    v.live_mac = l.mac.map(|m| m.to_string());
                }
            } else {
                v.attached = Some(false);
            }
        }
    }
}

/// Why the agent is not healthy; empty when it is.
pub fn health_problems(s: &StatusView) -> Vec<String> {
    let mut p = Vec::new();
    if !s.netmon.connected {
        p.push(format!(
            "netmon is not reachable at {}{}",
            s.netmon.socket,
            s.netmon
                .last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    if !s.engine.reachable {
        p.push(format!(
            "the container engine is not reachable at {}{}",
            s.engine.host,
            s.engine
                .last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    if let Some(f) = &s.store.fault {
        p.push(format!("the vNIC store is faulted: {}", compact(f)));
    }
    p
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", compact(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// The text of `agent status`.
pub fn render(s: &StatusView) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "agent {} (pid {}, up {}s), state {}",
        s.agent.version, s.agent.pid, s.agent.uptime_s, s.agent.state_dir
    );
    let _ = writeln!(
        o,
        "netmon: {} at {} (instance {}, {} events, {} discoveries){}",
        if s.netmon.connected {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        s.netmon.socket,
        opt(&s.netmon.instance),
        s.netmon.events,
        s.netmon.discoveries,
        match (&s.netmon.connected, &s.netmon.last_error) {
            (false, Some(e)) => format!(": {e}"),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        o,
        "engine: {} at {} (version {}, API {}){}",
        if s.engine.reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        },
        s.engine.host,
        opt(&s.engine.version),
        opt(&s.engine.api_version),
        match (&s.engine.reachable, &s.engine.last_error) {
            (false, Some(e)) => format!(": {e}"),
            _ => String::new(),
        }
    );
    let _ = writeln!(o, "interfaces ({}):", s.interfaces.len());
    for i in &s.interfaces {
        let _ = writeln!(
            o,
            "  {:<15} {:<5} {:<20} gw {}",
            i.name,
            i.status,
            if i.ipv4.is_empty() {
                "-".to_string()
            } else {
                i.ipv4.join(",")
            },
            opt(&i.gateway)
        );
    }
    let _ = writeln!(o, "runtimes ({}):", s.runtimes.len());
    for (name, vnics) in &s.runtimes {
        let _ = writeln!(o, "  {name}");
        for v in vnics {
            let _ = writeln!(
                o,
                "    {:<6} parent {:<12} {:<7} net {:<32} mac {} ({}) ipv4 {}{}",
                v.name,
                v.parent,
                v.mode.as_str().unwrap_or("?"),
                opt(&v.network),
                opt(&v.mac),
                v.mac_applied.as_str().unwrap_or("not yet"),
                opt(&v.ipv4),
                match (v.attached, &v.live_mac) {
                    (Some(false), _) => "  NOT ATTACHED".to_string(),
                    (Some(true), Some(m)) if Some(m) != v.mac.as_ref() => {
                        format!("  LIVE MAC {m}")
                    }
                    _ => String::new(),
                }
            );
        }
    }
    let _ = writeln!(
        o,
        "store: {}{}",
        s.store.path,
        s.store
            .fault
            .as_ref()
            .map(|f| format!(" FAULTED: {} (writes refused until `agent store reset` or the file is repaired and `agent store reload`)", compact(f)))
            .unwrap_or_default()
    );
    for n in &s.notes {
        let _ = writeln!(o, "note: {}", compact(n));
    }
    match (&s.reconcile.last, &s.reconcile.last_error) {
        (Some(r), _) => {
            let steps = r.get("steps").and_then(Value::as_array);
            let failed = steps
                .map(|s| {
                    s.iter()
                        .filter(|x| x.get("ok") == Some(&Value::Bool(false)))
                        .count()
                })
                .unwrap_or(0);
            let _ = writeln!(
                o,
                "last reconcile: started {}, {} ms, {} steps, {} failed{}",
                r.get("started").map(compact).unwrap_or_default(),
                r.get("duration_ms").map(compact).unwrap_or_default(),
                steps.map(Vec::len).unwrap_or(0),
                failed,
                if s.reconcile.running {
                    " (another is running)"
                } else {
                    ""
                }
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "last reconcile: could not run: {e}");
        }
        (None, None) => {
            let _ = writeln!(
                o,
                "last reconcile: none yet{}",
                if s.reconcile.running {
                    " (one is running)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(r) = &s.reconcile.last_change {
        let steps = r.get("steps").and_then(Value::as_array);
        let _ = writeln!(
            o,
            "last change: started {}, {} ms, {} steps{}",
            r.get("started").map(compact).unwrap_or_default(),
            r.get("duration_ms").map(compact).unwrap_or_default(),
            steps.map(Vec::len).unwrap_or(0),
            steps
                .and_then(|s| s.last())
                .and_then(|x| x.get("step"))
                .map(|x| format!(", last: {}", compact(x)))
                .unwrap_or_default()
        );
    }
    if let (Some(_), Some(e)) = (&s.reconcile.last, &s.reconcile.last_error) {
        let _ = writeln!(o, "last reconcile attempt failed: {e}");
    }
    o
}

/// The text of `agent reconcile`: one line per step with its result.
pub fn render_report(report: &Value) -> String {
    let mut o = String::new();
    let dry = report.get("dry_run") == Some(&Value::Bool(true));
    let steps = report
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if steps.is_empty() {
        let _ = writeln!(o, "nothing to do: every vNIC is where it should be");
    }
    for s in &steps {
        let step = s.get("step").map(compact).unwrap_or_default();
        let desc = s
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(step);
        let status = if dry {
            "planned".to_string()
        } else if s.get("ok") == Some(&Value::Bool(true)) {
            "ok".to_string()
        } else {
            format!(
                "FAILED: {}",
                s.get("error").map(compact).unwrap_or_else(|| "?".into())
            )
        };
        let ms = s.get("duration_ms").and_then(Value::as_u64);
        let _ = writeln!(
            o,
            "{status:>8}  {desc}{}",
            ms.filter(|_| !dry)
                .map(|m| format!(" ({m} ms)"))
                .unwrap_or_default()
        );
    }
    if let Some(notes) = report.get("notes").and_then(Value::as_array) {
        for n in notes {
            let _ = writeln!(o, "    note  {}", compact(n));
        }
    }
    if let Some(e) = report.get("store_error").filter(|e| !e.is_null()) {
        let _ = writeln!(o, "store: {}", compact(e));
    }
    let calls = report.get("engine_calls").map(compact).unwrap_or_default();
    let _ = writeln!(
        o,
        "{} in {} ms; engine calls: {calls}",
        if dry { "planned" } else { "done" },
        report
            .get("duration_ms")
            .map(compact)
            .unwrap_or_else(|| "?".into())
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_lists_each_problem() {
        let mut s = StatusView::default();
        s.netmon.socket = "/run/netmon/netmon.sock".into();
        s.engine.host = "unix:///var/run/docker.sock".into();
        s.engine.last_error = Some("connection refused".into());
        s.store.fault = Some(serde_json::json!({"error": "parse"}));
        let p = health_problems(&s);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[1].contains("connection refused"));
        s.netmon.connected = true;
        s.engine.reachable = true;
        s.store.fault = None;
        assert!(health_problems(&s).is_empty());
        assert!(render(&s).contains("engine: reachable"));
    }

    #[test]
    fn report_rendering_marks_failures() {
        let r = serde_json::json!({
            "dry_run": false, "duration_ms": 12,
            "steps": [{"step": "connect a to b", "ok": true, "duration_ms": 3},
                      {"step": "disconnect a", "ok": false, "error": "boom"}],
            "notes": [], "engine_calls": {"connect": 1}
        });
        let t = render_report(&r);
        assert!(t.contains("ok  connect a to b"), "{t}");
        assert!(t.contains("FAILED: boom"), "{t}");
    }
}
