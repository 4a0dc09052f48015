//! One state per vNIC, shown by `status` and judged by `health`: `attached`,
//! `pending` (with what it waits for), `failed` (a refusal that retrying will not fix,
//! with what to do) or `unsupported` (with why). Pure: derived from the store's record,
//! the interface cache, the engine's reachability and the last run's report.

use std::fmt;
use std::time::Duration;

use ipc::{LinkType, Status};
use serde::{Deserialize, Serialize};

use crate::cache::InterfaceCache;
use crate::plan::{Note, Step};
use crate::reconcile::ReconcileReport;
use crate::refusal::Refusal;
use crate::vnics::Vnic;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VnicState {
    Attached,
    Pending { waiting_for: String },
    Failed { reason: String, what_to_do: String },
    Unsupported { why: String },
}

impl VnicState {
    /// Pending or failed: what `health` counts against its grace period.
    pub fn is_problem(&self) -> bool {
        matches!(self, VnicState::Pending { .. } | VnicState::Failed { .. })
    }

    /// The state's name, for grouping and for `since` tracking.
    pub fn kind(&self) -> &'static str {
        match self {
            VnicState::Attached => "attached",
            VnicState::Pending { .. } => "pending",
            VnicState::Failed { .. } => "failed",
            VnicState::Unsupported { .. } => "unsupported",
        }
    }
}

impl fmt::Display for VnicState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VnicState::Attached => write!(f, "attached"),
            VnicState::Pending { waiting_for } => write!(f, "pending: {waiting_for}"),
            VnicState::Failed { reason, what_to_do } => {
                write!(f, "failed: {reason} ({what_to_do})")
            }
            VnicState::Unsupported { why } => write!(f, "unsupported: {why}"),
        }
    }
}

/// What the states are derived from.
pub struct Facts<'a> {
    pub engine_reachable: bool,
    pub cache: &'a InterfaceCache,
    pub last: Option<&'a ReconcileReport>,
    /// When the next retry of a run that left something wrong is due.
    pub next_retry: Option<Duration>,
}

/// The state of one vNIC of `runtime`.
pub fn vnic_state(runtime: &str, v: &Vnic, f: &Facts<'_>) -> VnicState {
    let parent = v.parent_interface.as_str();
    let iface = f.cache.get(parent);
    if v.recorded_as_wifi() || iface.is_some_and(|i| i.link_type == Some(LinkType::Wifi)) {
        return VnicState::Unsupported {
            why: format!("Wi-Fi parent {parent}: a managed-mode Wi-Fi link cannot carry macvlan"),
        };
    }
    if let Some(s) = permanent(runtime, v, f.last) {
        return s;
    }
    let pending = |w: String| VnicState::Pending { waiting_for: w };
    if !f.engine_reachable {
        return pending("the container engine, which is unreachable".into());
    }
    let Some(iface) = iface else {
        return pending(format!(
            "parent {parent} to appear (netmon does not report it)"
        ));
    };
    if iface.effective_status() != Status::Up {
        return pending(format!("parent {parent} to come up"));
    }
    if f.cache.lan(parent).is_none() {
        return pending(format!("an IPv4 address on parent {parent}"));
    }
    let Some(last) = f.last else {
        return pending("the first reconcile".into());
    };
    if let Some(r) = refusal(runtime, v, last) {
        return VnicState::Failed {
            reason: r.reason.clone(),
            what_to_do: r.what_to_do.clone(),
        };
    }
    if let Some(e) = step_error(runtime, v, last) {
        let next = f
            .next_retry
            .map(|d| format!(", next try in {} s", d.as_secs().max(1)))
            .unwrap_or_default();
        return pending(format!("a retry after: {e}{next}"));
    }
    if v.docker_network_name.is_none() {
        return pending("its first attachment".into());
    }
    VnicState::Attached
}

/// Refusals that a retry does not fix, from the last run's notes.
fn permanent(runtime: &str, v: &Vnic, last: Option<&ReconcileReport>) -> Option<VnicState> {
    last?.notes.iter().find_map(|n| match n {
        Note::StaticWithoutIp { container, vnic } if container == runtime && *vnic == v.name => {
            Some(VnicState::Failed {
                reason: "static vNIC without an ip".into(),
                what_to_do: "give it an ip (recreate the runtime)".into(),
            })
        }
        Note::DuplicateParent {
            container, vnic, ..
        } if container == runtime && *vnic == v.name => Some(VnicState::Failed {
            reason: format!("a second vNIC of {runtime} on {}", v.parent_interface),
            what_to_do: "use one vNIC per parent".into(),
        }),
        Note::ForeignOverlap { network, parent } if *parent == v.parent_interface => {
            Some(VnicState::Failed {
                reason: format!(
                    "network {network}, not made by this agent, overlaps {parent}'s LAN"
                ),
                what_to_do: format!(
                    "remove {network} (docker network rm {network}) or move it off that subnet"
                ),
            })
        }
        _ => None,
    })
}

/// Whether a step acts on this vNIC (or on its parent's network).
fn concerns(runtime: &str, v: &Vnic, s: &Step) -> bool {
    match s {
        Step::Connect {
            container, vnic, ..
        }
        | Step::SetMac {
            container, vnic, ..
        }
        | Step::Name {
            container, vnic, ..
        } => container == runtime && *vnic == v.name,
        Step::Disconnect {
            container, parent, ..
        } => container == runtime && *parent == v.parent_interface,
        Step::RemoveNetwork { parent, .. } | Step::CreateNetwork { parent, .. } => {
            *parent == v.parent_interface
        }
    }
}

/// The refusal of a step of the last run that concerns this vNIC: it is `failed`.
fn refusal<'a>(runtime: &str, v: &Vnic, last: &'a ReconcileReport) -> Option<&'a Refusal> {
    last.steps
        .iter()
        .filter(|s| concerns(runtime, v, &s.step))
        .find_map(|s| s.refusal.as_ref())
}

/// The error of a failed step, or a step still to do, that concerns this vNIC.
fn step_error(runtime: &str, v: &Vnic, last: &ReconcileReport) -> Option<String> {
    let concerns = |s: &Step| concerns(runtime, v, s);
    last.steps
        .iter()
        .find(|s| !s.ok && concerns(&s.step))
        .map(|s| {
            s.error
                .clone()
                .unwrap_or_else(|| format!("{} failed", s.step))
        })
        .or_else(|| {
            last.unconverged
                .iter()
                .find(|s| concerns(s))
                .map(|s| format!("still to do: {s}"))
        })
}

/// A DHCP vNIC without a lease: `pending: no DHCP offer` (or why else there is
/// none), with when the client tries next.
pub fn dhcp_pending(reason: &str, next_try: Option<std::time::SystemTime>) -> VnicState {
    let next = next_try
        .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        .map(|d| format!(", next try in {} s", d.as_secs().max(1)))
        .unwrap_or_default();
    VnicState::Pending {
        waiting_for: format!("no DHCP offer yet: waiting for {reason}{next}"),
    }
}

/// Whether the last run found the runtime's container gone.
pub fn runtime_missing(runtime: &str, last: Option<&ReconcileReport>) -> bool {
    last.is_some_and(|r| {
        r.notes
            .iter()
            .any(|n| matches!(n, Note::ContainerMissing { container } if container == runtime))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::StepResult;
    use crate::engine::CallCounts;
    use ipc::Event;

    fn cache(json: &str) -> InterfaceCache {
        let ev: Event = serde_json::from_str(&format!(
            r#"{{"type":"network_discovery","data":{{"interfaces":[{json}]}}}}"#
        ))
        .unwrap();
        let mut c = InterfaceCache::default();
        c.apply(&ev);
        c
    }

    const UP: &str = r#"{"interface":"eth1","index":3,"status":"up","ipv4_addresses":[{"address":"10.0.0.2","prefixlen":24,"subnet":"10.0.0.0/24","network_address":"10.0.0.0"}],"gateway":"10.0.0.1"}"#;

    fn report(steps: Vec<StepResult>, notes: Vec<Note>) -> ReconcileReport {
        ReconcileReport {
            started: String::new(),
            duration_ms: 0,
            dry_run: false,
            steps,
            notes,
            engine_calls: CallCounts::default(),
            store_error: None,
            unconverged: Vec::new(),
        }
    }

    fn attached_vnic() -> Vnic {
        let mut v = Vnic::dhcp("eth0", "eth1", Some("02:00:00:00:00:01".parse().unwrap()));
        v.docker_network_name = Some("macvlan_eth1_10.0.0.0_24".into());
        v
    }

    fn state(
        v: &Vnic,
        c: &InterfaceCache,
        last: Option<&ReconcileReport>,
        engine: bool,
    ) -> VnicState {
        vnic_state(
            "rt",
            v,
            &Facts {
                engine_reachable: engine,
                cache: c,
                last,
                next_retry: Some(Duration::from_secs(4)),
            },
        )
    }

    #[test]
    fn each_state_and_what_it_waits_for() {
        let v = attached_vnic();
        let ok = report(Vec::new(), Vec::new());
        let up = cache(UP);
        assert_eq!(state(&v, &up, Some(&ok), true), VnicState::Attached);
        let p = |s: VnicState| match s {
            VnicState::Pending { waiting_for } => waiting_for,
            other => panic!("{other:?}"),
        };
        assert!(p(state(&v, &up, Some(&ok), false)).contains("engine"));
        assert!(p(state(&v, &cache(""), Some(&ok), true)).contains("to appear"));
        let down = UP.replace(r#""status":"up""#, r#""status":"down""#);
        assert!(p(state(&v, &cache(&down), Some(&ok), true)).contains("come up"));
        let bare = r#"{"interface":"eth1","index":3,"status":"up","ipv4_addresses":[]}"#;
        assert!(p(state(&v, &cache(bare), Some(&ok), true)).contains("IPv4"));
        assert!(p(state(&v, &up, None, true)).contains("first reconcile"));
        let failed = report(
            vec![StepResult {
                step: Step::Connect {
                    parent: "eth1".into(),
                    container: "rt".into(),
                    vnic: "eth0".into(),
                    network: "n".into(),
                    ipv4: None,
                    mac: None,
                },
                ok: false,
                error: Some("engine refused the request (500): boom".into()),
                duration_ms: 1,
                refusal: None,
            }],
            Vec::new(),
        );
        let w = p(state(&v, &up, Some(&failed), true));
        assert!(w.contains("boom") && w.contains("next try in 4 s"), "{w}");
        // The same step refused for good: failed, with the engine's words.
        let mut refused = failed.clone();
        refused.steps[0].refusal = Some(Refusal {
            reason: "engine refused the request (400): private (none) mode".into(),
            what_to_do: "create it again on a bridge network".into(),
        });
        let s = state(&v, &up, Some(&refused), true);
        assert!(
            matches!(&s, VnicState::Failed { reason, what_to_do }
                if reason.contains("(none) mode") && what_to_do.contains("bridge")),
            "{s:?}"
        );
        let other = Vnic::dhcp("eth9", "eth2", None);
        assert!(
            !matches!(
                state(&other, &up, Some(&refused), true),
                VnicState::Failed { .. }
            ),
            "a refusal concerns only its own vNIC"
        );
        let mut fresh = v.clone();
        fresh.docker_network_name = None;
        assert!(p(state(&fresh, &up, Some(&ok), true)).contains("first attachment"));
    }

    #[test]
    fn refusals_and_wifi() {
        let v = attached_vnic();
        let up = cache(UP);
        let overlap = report(
            Vec::new(),
            vec![Note::ForeignOverlap {
                network: "theirs".into(),
                parent: "eth1".into(),
            }],
        );
        let s = state(&v, &up, Some(&overlap), true);
        assert!(
            matches!(&s, VnicState::Failed { what_to_do, .. } if what_to_do.contains("docker network rm theirs")),
            "{s:?}"
        );
        assert!(s.is_problem());
        let mut w = v.clone();
        w.extra.insert("_is_wifi".into(), true.into());
        let s = state(&w, &up, None, true);
        assert!(matches!(s, VnicState::Unsupported { .. }), "{s:?}");
        assert!(!s.is_problem());
        let wifi = UP.replace(r#""status":"up""#, r#""status":"up","type":"wifi""#);
        assert!(matches!(
            state(&v, &cache(&wifi), None, true),
            VnicState::Unsupported { .. }
        ));
        let json = serde_json::to_value(VnicState::Pending {
            waiting_for: "x".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "pending", "waiting_for": "x"})
        );
        let gone = report(
            Vec::new(),
            vec![Note::ContainerMissing {
                container: "rt".into(),
            }],
        );
        assert!(runtime_missing("rt", Some(&gone)) && !runtime_missing("other", Some(&gone)));
    }
}
