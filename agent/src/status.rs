//! What `agent status` and `agent health` show: a serialisable view built by the
//! daemon from the state it owns, and its text rendering for terminals.
//!
//! Over 400 lines: the view types, health's judgement and the text rendering of each
//! section, kept together so the text and `--json` cannot drift apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cache::InterfaceCache;
use crate::engine::ContainerInfo;
use crate::plan::Note;
use crate::reconcile::ReconcileReport;
use crate::vnic_state::VnicState;
use crate::vnics::{MacMethod, NetworkMode, Runtimes, StoreFault};

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatusView {
    pub agent: AgentInfo,
    pub netmon: NetmonLink,
    pub engine: EngineLink,
    pub interfaces: Vec<InterfaceView>,
    pub runtimes: BTreeMap<String, Vec<VnicView>>,
    /// Runtimes in the store whose container is gone (removed by hand).
    #[serde(default)]
    pub missing: Vec<String>,
    /// Runtimes in the store the agent cannot use (kept verbatim, not managed), with
    /// why: `failed` until the file is repaired.
    #[serde(default)]
    pub unusable: BTreeMap<String, String>,
    pub store: StoreView,
    /// Information from the last reconcile (e.g. a static subnet off the LAN).
    pub notes: Vec<Note>,
    pub reconcile: ReconcileState,
    /// The cloud link, when configured (`agent run --cloud-url`).
    #[serde(default)]
    pub cloud: Option<crate::cloud::LinkStatus>,
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
    pub mode: NetworkMode,
    pub network: Option<String>,
    pub mac: Option<String>,
    pub ipv4: Option<String>,
    pub subnet: Option<String>,
    /// How the stored MAC was applied: by the engine, or through the container's
    /// network namespace.
    pub mac_applied: Option<MacMethod>,
    /// Whether the engine shows the container on `network` (unknown when the
    /// engine was not asked).
    #[serde(default)]
    pub attached: Option<bool>,
    /// The MAC seen inside the container on that interface.
    #[serde(default)]
    pub live_mac: Option<String>,
    /// Attached, pending (and on what), failed (and what to do) or unsupported.
    #[serde(default)]
    pub state: Option<VnicState>,
    /// How long it has been in that state.
    #[serde(default)]
    pub state_for_s: Option<u64>,
    /// A DHCP vNIC's lease, or why it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpView>,
    /// The name of its link inside the container (the vNIC's own once named,
    /// docs/NAMES.md).
    #[serde(default)]
    pub ifname_inside: Option<String>,
}

/// A DHCP vNIC's lease as `status` shows it (times RFC 3339, UTC).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DhcpView {
    pub address: Option<String>,
    pub server: Option<String>,
    pub router: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub renews_at: Option<String>,
    pub expires_at: Option<String>,
    /// Why there is no lease (and when the next try is).
    pub no_lease: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StoreView {
    pub path: String,
    pub fault: Option<StoreFault>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ReconcileState {
    pub running: bool,
    pub runs: u64,
    /// The last run's report (steps, engine calls, notes).
    pub last: Option<ReconcileReport>,
    /// The last run that had steps to take (later runs may have found nothing).
    #[serde(default)]
    pub last_change: Option<ReconcileReport>,
    /// Why the last run could not run at all (e.g. the engine was unreachable).
    pub last_error: Option<String>,
    /// The last run left something wrong: the next try is this far after it.
    #[serde(default)]
    pub next_retry_ms: Option<u64>,
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
                    mode: v.network_mode,
                    network: v.docker_network_name.clone(),
                    mac: v.stored_mac().map(|m| m.to_string()),
                    ipv4: v.ip.map(|i| i.to_string()),
                    subnet: v.subnet.map(|s| s.to_string()),
                    mac_applied: v.mac_applied,
                    attached: None,
                    live_mac: None,
                    state: None,
                    state_for_s: None,
                    dhcp: None,
                    ifname_inside: None,
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
                    v.ifname_inside = Some(l.name.clone());
                }
            } else {
                v.attached = Some(false);
            }
        }
    }
}

/// `agent health`: healthy when `problems` is empty.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub problems: Vec<String>,
}

impl HealthReport {
    /// Problems of the links and the store, plus every vNIC pending or failed for
    /// longer than `grace`, and every runtime whose container is gone.
    pub fn of(s: &StatusView, grace: std::time::Duration) -> HealthReport {
        let mut problems = health_problems(s);
        for (name, why) in &s.unusable {
            problems.push(format!(
                "runtime {name} is failed: its record in the store cannot be used ({why}); it is kept as it is and not managed"
            ));
        }
        for name in &s.missing {
            problems.push(format!(
                "runtime {name} is missing: its container was removed; `agent runtime delete {name}` cleans up what is left"
            ));
        }
        for (rt, vnics) in &s.runtimes {
            for v in vnics {
                let (Some(st), Some(for_s)) = (&v.state, v.state_for_s) else {
                    continue;
                };
                if st.is_problem() && for_s >= grace.as_secs() {
                    problems.push(format!(
                        "{rt}/{} on {} is {st} (for {for_s} s)",
                        v.name, v.parent
                    ));
                }
            }
        }
        HealthReport {
            healthy: problems.is_empty(),
            problems,
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
        p.push(format!("the vNIC store is faulted: {}", f.message));
    }
    p
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// The text of `agent status`.
pub fn render(s: &StatusView) -> String {
    let mut o = String::new();
    render_links(&mut o, s);
    render_interfaces(&mut o, s);
    render_runtimes(&mut o, s);
    render_store(&mut o, s);
    render_reconcile(&mut o, s);
    render_cloud(&mut o, s);
    o
}

fn render_cloud(o: &mut String, s: &StatusView) {
    let Some(c) = &s.cloud else {
        return;
    };
    let state = if c.connected {
        format!("connected ({})", c.tls_version.as_deref().unwrap_or("TLS"))
    } else {
        let why = c.why_not.map(|w| w.to_string()).unwrap_or_default();
        match &c.detail {
            Some(d) => format!("not connected: {why}: {d}"),
            None => format!("not connected: {why}"),
        }
    };
    let _ = writeln!(o, "cloud: {} {state}", c.url);
    let _ = writeln!(
        o,
        "  agent id {}, certificate expires {}, connects {}, last heartbeat {}",
        c.agent_id.as_deref().unwrap_or("-"),
        c.certificate_not_after.as_deref().unwrap_or("-"),
        c.connects,
        c.last_heartbeat.as_deref().unwrap_or("-")
    );
}

fn render_links(o: &mut String, s: &StatusView) {
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
}

fn render_interfaces(o: &mut String, s: &StatusView) {
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
}

fn render_runtimes(o: &mut String, s: &StatusView) {
    let _ = writeln!(o, "runtimes ({}):", s.runtimes.len() + s.unusable.len());
    for (name, why) in &s.unusable {
        let _ = writeln!(
            o,
            "  {name}  failed: not managed, its record cannot be used: {why} (kept as it is; repair the file and `agent store reload`)"
        );
    }
    for (name, vnics) in &s.runtimes {
        if s.missing.contains(name) {
            let _ = writeln!(
                o,
                "  {name}  MISSING: its container was removed; `agent runtime delete {name}` cleans up"
            );
        } else {
            let _ = writeln!(o, "  {name}");
        }
        for v in vnics {
            let state = v
                .state
                .as_ref()
                .map(|st| match v.state_for_s {
                    Some(t) if st.is_problem() => format!("{st} (for {t} s)"),
                    _ => st.to_string(),
                })
                .unwrap_or_else(|| "state unknown".into());
            let _ = writeln!(
                o,
                "    {}: {state}; {} on parent {}, network {}",
                v.name,
                v.mode,
                v.parent,
                opt(&v.network)
            );
            let mac_how = match v.mac_applied {
                Some(MacMethod::Engine) => "given by the engine",
                Some(MacMethod::Netns) => "set in its namespace",
                None => "not applied yet",
            };
            let live = match (&v.live_mac, &v.mac) {
                (Some(l), Some(m)) if l != m => format!(", but it has {l} now"),
                _ => String::new(),
            };
            let inside = match &v.ifname_inside {
                Some(n) if *n == v.name => format!(", named {n} inside the container"),
                Some(n) => format!(", named {n} inside the container (not yet {})", v.name),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "      mac {} ({mac_how}{live}), ipv4 {}{inside}",
                opt(&v.mac),
                opt(&v.ipv4)
            );
            if let Some(d) = &v.dhcp {
                render_dhcp(o, d);
            }
        }
    }
}

fn render_dhcp(o: &mut String, d: &DhcpView) {
    match (&d.address, &d.no_lease) {
        (Some(a), _) => {
            let _ = writeln!(
                o,
                "      dhcp lease {a} from {}, router {}, dns {}, renews {}, expires {}",
                opt(&d.server),
                opt(&d.router),
                if d.dns.is_empty() {
                    "-".into()
                } else {
                    d.dns.join(" ")
                },
                opt(&d.renews_at),
                opt(&d.expires_at)
            );
        }
        (None, why) => {
            let _ = writeln!(o, "      dhcp: no lease ({})", opt(why));
        }
    }
}

fn render_store(o: &mut String, s: &StatusView) {
    let _ = writeln!(
        o,
        "store: {}{}",
        s.store.path,
        s.store
            .fault
            .as_ref()
            .map(|f| format!(" FAULTED: {} (writes refused until `agent store reset` or the file is repaired and `agent store reload`)", f.message))
            .unwrap_or_default()
    );
    for n in &s.notes {
        let _ = writeln!(o, "note: {n}");
    }
}

fn render_reconcile(o: &mut String, s: &StatusView) {
    let running = if s.reconcile.running {
        " (one is running now)"
    } else {
        ""
    };
    match (&s.reconcile.last, &s.reconcile.last_error) {
        (Some(r), _) => {
            let failed = r.steps.iter().filter(|x| !x.ok).count();
            let _ = writeln!(
                o,
                "last reconcile: started {}, {} ms, {} steps, {failed} failed{running}",
                r.started,
                r.duration_ms,
                r.steps.len(),
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "last reconcile: could not run: {e}{running}");
        }
        (None, None) => {
            let _ = writeln!(o, "last reconcile: none yet{running}");
        }
    }
    if let Some(r) = &s.reconcile.last_change {
        let _ = writeln!(
            o,
            "last change: started {}, {} ms, {} steps{}",
            r.started,
            r.duration_ms,
            r.steps.len(),
            r.steps
                .last()
                .map(|x| format!(", last: {}", x.step))
                .unwrap_or_default()
        );
    }
    if let (Some(_), Some(e)) = (&s.reconcile.last, &s.reconcile.last_error) {
        let _ = writeln!(o, "last reconcile attempt failed: {e}");
    }
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
        s.store.fault = Some(StoreFault {
            message: "parse".into(),
            moved_to: None,
            since: 0,
        });
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
    fn the_name_inside_the_container_is_shown() {
        let mut s = StatusView::default();
        let mut v = VnicView {
            name: "eth0".into(),
            ifname_inside: Some("eth0".into()),
            ..VnicView::default()
        };
        s.runtimes.insert("rt".into(), vec![v.clone()]);
        assert!(
            render(&s).contains("named eth0 inside the container"),
            "{}",
            render(&s)
        );
        v.ifname_inside = Some("eth3".into());
        s.runtimes.insert("rt".into(), vec![v]);
        assert!(render(&s).contains("named eth3 inside the container (not yet eth0)"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["runtimes"]["rt"][0]["ifname_inside"], "eth3");
    }
}
