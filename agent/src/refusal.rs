//! Refusals: a step that failed in a way the next try cannot fix (issue 8). The engine's
//! errors are classified by [`EngineError::is_permanent`]; this module turns a
//! permanent one, or a name held inside the container by a link that is not the
//! agent's, into what the vNIC's `failed` state shows: the reason (with the engine's
//! own words) and what to do. The daemon keeps trying a run that was only refused, but
//! every [`REFUSED_RETRY`] rather than on the fast schedule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::EngineError;
use crate::plan::Step;

/// How often a run that left only refusals is tried again (besides every event and
/// the periodic run): the backoff's cap.
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// Why a step is refused for good, and what the operator can do about it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub what_to_do: String,
}

/// A failed step: its message, and the refusal when the failure is permanent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    pub message: String,
    pub refusal: Option<Refusal>,
}

impl StepError {
    /// A failure the next try may not meet.
    pub fn transient(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            refusal: None,
        }
    }

    /// The engine's error while taking `step`: a refusal when it is permanent.
    pub fn engine(step: &Step, e: &EngineError) -> StepError {
        let mut message = e.to_string();
        if let Step::RemoveNetwork { network, .. } = step
            && message.contains("active endpoints")
        {
            message.push_str(&stale_count_hint(network));
        }
        let refusal = e.is_permanent().then(|| Refusal {
            reason: message.clone(),
            what_to_do: format!("{}; {}", what_to_do(step, e), tries_again()),
        });
        StepError { message, refusal }
    }

    /// `name` inside `container` is held by `holder`, a link the agent did not
    /// rename; `network` is the engine network that link is on, if any.
    pub fn name_held(
        container: &str,
        name: &str,
        holder: &str,
        network: Option<&str>,
    ) -> StepError {
        let (reason, what) = match network {
            Some(net) => (
                format!(
                    "the name {name} inside {container} is held by its link {holder} on network {net}, which the agent does not manage"
                ),
                format!(
                    "give the vNIC another name (delete the runtime and create it again), or disconnect {container} from {net} (docker network disconnect {net} {container})"
                ),
            ),
            None => (
                format!(
                    "the name {name} inside {container} is held by link {holder}, which is on no network of the engine (made inside the container?)"
                ),
                format!(
                    "give the vNIC another name (delete the runtime and create it again), or remove or rename {holder} inside {container}"
                ),
            ),
        };
        StepError {
            message: reason.clone(),
            refusal: Some(Refusal {
                reason,
                what_to_do: format!("{what}; {}", tries_again()),
            }),
        }
    }
}

impl From<String> for StepError {
    fn from(message: String) -> StepError {
        StepError::transient(message)
    }
}

/// What a network the engine will not remove may mean: 20.10 can keep a count of its
/// endpoints above zero after every container has left (moby/moby#43286; seen here
/// after 16 disconnects at once from one network, in about one move of 50 containers
/// in four), and nothing but an engine restart clears it. Meanwhile no other network
/// can be made on the parent (the macvlan driver takes one network per parent).
fn stale_count_hint(network: &str) -> String {
    format!(
        " (if `docker network inspect {network}` lists no container, Docker 20.10's count of \
         its endpoints is stale, moby/moby#43286: only an engine restart clears it, e.g. \
         `systemctl restart docker`; the agent then finishes the move by itself)"
    )
}

fn tries_again() -> String {
    format!(
        "the agent tries again every {} s and after every change",
        REFUSED_RETRY.as_secs()
    )
}

/// What to do about a permanent engine refusal of `step`, from the engine's words.
fn what_to_do(step: &Step, e: &EngineError) -> String {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    match (step, e) {
        (_, EngineError::Permission(_)) => {
            "give the agent access to the engine's socket (run it as root or in the docker group)"
                .into()
        }
        (_, EngineError::BadHost(_)) => {
            "give the engine's address as unix:///path/to/docker.sock".into()
        }
        (Step::Connect { container, .. }, _)
            if has("private (none) mode") || has("sharing network namespace") =>
        {
            format!(
                "{container} runs with network mode none, host or another container's, which takes no other network: create it again on a bridge network (for example {container}_internal)"
            )
        }
        (Step::Connect { .. }, _) if has("user specified IP") || has("Invalid address") => {
            "give the vNIC an address inside its LAN's subnet (delete the runtime and create it again)"
                .into()
        }
        (Step::CreateNetwork { parent, .. }, _) => format!(
            "fix what the engine names in the network made for {parent} (its parent link, subnet and gateway)"
        ),
        _ => "fix what the engine's message names".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> EngineError {
        EngineError::Api {
            status,
            message: message.into(),
        }
    }

    fn connect() -> Step {
        Step::Connect {
            parent: "eth1".into(),
            container: "rt".into(),
            vnic: "eth0".into(),
            network: "n".into(),
            ipv4: None,
            mac: None,
        }
    }

    #[test]
    fn transient_and_permanent_engine_errors() {
        let transient = [
            EngineError::Unreachable {
                host: "h".into(),
                reason: "connection refused".into(),
            },
            EngineError::NotFound("network n".into()),
            EngineError::Conflict("c".into()),
            EngineError::Protocol("truncated".into()),
            api(500, "boom"),
            api(503, "busy"),
            api(403, "network n has active endpoints"),
            api(403, "Address already in use"),
            api(408, "timeout"),
            api(429, "slow down"),
        ];
        for e in &transient {
            assert!(!e.is_permanent(), "{e}");
            assert_eq!(StepError::engine(&connect(), e).refusal, None, "{e}");
        }
        let permanent = [
            api(
                400,
                "connect rt to n: container cannot be connected to multiple networks with one of the networks in private (none) mode",
            ),
            api(400, "user specified IP address is supported only when ..."),
            api(422, "unprocessable"),
            api(
                500,
                "Invalid address 10.252.7.5: It does not belong to any of this network's subnets",
            ),
            EngineError::Permission("docker.sock: permission denied".into()),
            EngineError::BadHost("tcp://x".into()),
        ];
        for e in &permanent {
            assert!(e.is_permanent(), "{e}");
            let r = StepError::engine(&connect(), e).refusal.expect("a refusal");
            assert_eq!(r.reason, e.to_string());
            assert!(r.what_to_do.contains("tries again every 30 s"), "{r:?}");
        }
    }

    #[test]
    fn a_network_the_engine_keeps_says_what_a_stale_count_means() {
        let remove = Step::RemoveNetwork {
            parent: "eth1".into(),
            network: "macvlan_eth1_10.0.0.0_24".into(),
        };
        let e = api(403, "network macvlan_eth1_10.0.0.0_24 has active endpoints");
        let got = StepError::engine(&remove, &e);
        assert_eq!(got.refusal, None, "retried: an engine restart fixes it");
        assert!(got.message.starts_with(&e.to_string()), "{}", got.message);
        assert!(
            got.message
                .contains("docker network inspect macvlan_eth1_10.0.0.0_24")
                && got.message.contains("engine restart"),
            "{}",
            got.message
        );
        let other = StepError::engine(&connect(), &e);
        assert_eq!(other.message, e.to_string());
    }

    #[test]
    fn what_to_do_follows_the_engines_words() {
        let none = api(
            400,
            "container cannot be connected to multiple networks with one of the networks in private (none) mode",
        );
        let r = StepError::engine(&connect(), &none).refusal.unwrap();
        assert!(r.reason.contains("private (none) mode"), "{r:?}");
        assert!(
            r.what_to_do.contains("network mode none") && r.what_to_do.contains("rt_internal"),
            "{r:?}"
        );
        let ip = api(
            400,
            "user specified IP address is supported only when connecting to networks with user configured subnets",
        );
        let r = StepError::engine(&connect(), &ip).refusal.unwrap();
        assert!(r.what_to_do.contains("address inside its LAN"), "{r:?}");
        let held = StepError::name_held("rt", "eth0", "eth0", Some("lan2"));
        let r = held.refusal.unwrap();
        assert!(
            r.reason.contains("eth0") && r.reason.contains("lan2"),
            "{r:?}"
        );
        assert!(
            r.what_to_do.contains("docker network disconnect lan2 rt"),
            "{r:?}"
        );
        let made = StepError::name_held("rt", "eth0", "eth0", None)
            .refusal
            .unwrap();
        assert!(made.reason.contains("no network"), "{made:?}");
    }
}
