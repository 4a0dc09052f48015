//! Reconcile, part one: a pure function from (desired vNICs, interface cache, observed
//! engine state) to the steps that make the engine match. No I/O here, so every case is
//! a table test; `apply.rs` executes the steps.
//!
//! Per parent that carries vNICs and is up with an IPv4 subnet, the target is one
//! managed macvlan network. Networks are matched by driver, exact `parent` option and
//! pools (as sets), never by name, so the older deployment's network is adopted and
//! `eth1` never matches `eth10`. Gateways are compared only where the cache knows one:
//! the engine picks a gateway of its own when none is given.
//!
//! Over 400 lines because of its table tests (the planner itself is about 500).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipc::MacAddr;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::cache::{InterfaceCache, Lan};
use crate::engine::{
    ContainerInfo, NetworkInfo, NetworkSpec, Observed, Pool, is_managed, managed_labels,
};
use crate::vnics::{NetworkMode, Runtimes, Vnic};

/// One engine or namespace action. Every step is idempotent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Disconnect {
        parent: String,
        container: String,
        network: String,
    },
    RemoveNetwork {
        parent: String,
        network: String,
    },
    CreateNetwork {
        parent: String,
        spec: NetworkSpec,
    },
    /// `mac` is the stored MAC, `None` when the vNIC has none yet (the engine's is then
    /// recorded).
    Connect {
        parent: String,
        container: String,
        vnic: String,
        network: String,
        ipv4: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    },
    /// Verify the MAC inside the container's namespace; set it there where wrong.
    /// `network` says which of the container's links is the vNIC's.
    SetMac {
        parent: String,
        container: String,
        vnic: String,
        network: String,
        mac: MacAddr,
    },
    /// Name the vNIC's link inside the container after the vNIC, and the internal
    /// bridge's link [`INTERNAL_IFNAME`] (docs/NAMES.md). Run once per container after
    /// every parent's connects; `network` says which link is the vNIC's.
    Name {
        parent: String,
        container: String,
        vnic: String,
        network: String,
    },
}

/// The name of a runtime's link on its internal bridge, inside the container; refused
/// as a vNIC name.
pub const INTERNAL_IFNAME: &str = "int0";

/// The order steps of one parent run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Disconnect,
    RemoveNetwork,
    CreateNetwork,
    Connect,
    SetMac,
    Name,
}

impl Step {
    pub fn parent(&self) -> &str {
        match self {
            Step::Disconnect { parent, .. }
            | Step::RemoveNetwork { parent, .. }
            | Step::CreateNetwork { parent, .. }
            | Step::Connect { parent, .. }
            | Step::SetMac { parent, .. }
            | Step::Name { parent, .. } => parent,
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Step::Disconnect { .. } => Phase::Disconnect,
            Step::RemoveNetwork { .. } => Phase::RemoveNetwork,
            Step::CreateNetwork { .. } => Phase::CreateNetwork,
            Step::Connect { .. } => Phase::Connect,
            Step::SetMac { .. } => Phase::SetMac,
            Step::Name { .. } => Phase::Name,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Disconnect {
                parent,
                container,
                network,
            } => write!(f, "[{parent}] disconnect {container} from {network}"),
            Step::RemoveNetwork { parent, network } => {
                write!(f, "[{parent}] remove network {network}")
            }
            Step::CreateNetwork { parent, spec } => {
                let pools: Vec<String> = spec
                    .pools
                    .iter()
                    .map(|p| match p.gateway {
                        Some(g) => format!("{} gw {g}", p.subnet),
                        None => p.subnet.to_string(),
                    })
                    .collect();
                write!(
                    f,
                    "[{parent}] create network {} (macvlan on {parent}, pools {})",
                    spec.name,
                    pools.join(", ")
                )
            }
            Step::Connect {
                parent,
                container,
                vnic,
                network,
                ipv4,
                mac,
            } => {
                write!(f, "[{parent}] connect {container}/{vnic} to {network}")?;
                match ipv4 {
                    Some(ip) => write!(f, " ip {ip}")?,
                    None => write!(f, " (address from the LAN pool)")?,
                }
                match mac {
                    None => write!(f, " mac from the engine"),
                    Some(mac) => write!(f, " mac {mac}"),
                }
            }
            Step::SetMac {
                parent,
                container,
                vnic,
                mac,
                ..
            } => write!(f, "[{parent}] ensure {container}/{vnic} has mac {mac}"),
            Step::Name {
                parent,
                container,
                vnic,
                ..
            } => write!(f, "[{parent}] name {container}/{vnic}'s link {vnic} inside"),
        }
    }
}

/// Information the plan produced that is not a step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// A static vNIC outside the parent's LAN subnet: its subnet is an extra pool.
    OffLanStatic {
        container: String,
        vnic: String,
        subnet: Ipv4Network,
        lan: Ipv4Network,
    },
    /// A Wi-Fi vNIC: not attached (macvlan cannot ride a managed-mode Wi-Fi link).
    WifiUnsupported {
        container: String,
        vnic: String,
        parent: String,
    },
    /// The parent is down or has no IPv4 address: nothing is touched.
    ParentDown {
        parent: String,
    },
    /// netmon does not report the parent at all.
    ParentUnknown {
        parent: String,
    },
    ContainerMissing {
        container: String,
    },
    /// Connects work on a stopped container; its MACs are set when it starts.
    ContainerNotRunning {
        container: String,
    },
    /// No stored MAC: the engine's is recorded after connect.
    NoMac {
        container: String,
        vnic: String,
    },
    /// The stored MAC text is not a MAC (a hand-edited file): kept in the file as it
    /// is, and treated as no MAC (nothing set, nothing recorded over it).
    BadMac {
        container: String,
        vnic: String,
        value: String,
    },
    /// A static vNIC without an address cannot be connected.
    StaticWithoutIp {
        container: String,
        vnic: String,
    },
    /// A second vNIC of one container on the same parent (one network per parent).
    DuplicateParent {
        container: String,
        vnic: String,
        parent: String,
    },
    /// A container that is not ours is attached to a network the plan removes.
    ForeignEndpoint {
        network: String,
        container: String,
    },
    /// A network that is not ours overlaps the target's pools; creation will fail.
    ForeignOverlap {
        network: String,
        parent: String,
    },
    /// The container's namespace could not be read; its MACs are checked by SetMac.
    NamespaceUnreadable {
        container: String,
        reason: String,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::OffLanStatic {
                container,
                vnic,
                subnet,
                lan,
            } => write!(
                f,
                "{container}/{vnic}: static subnet {subnet} is not the LAN subnet {lan} (kept as an extra pool)"
            ),
            Note::WifiUnsupported {
                container,
                vnic,
                parent,
            } => write!(
                f,
                "{container}/{vnic}: {parent} is Wi-Fi: not attached until Wi-Fi support lands"
            ),
            Note::ParentDown { parent } => {
                write!(f, "{parent} is down or has no IPv4 address: left as is")
            }
            Note::ParentUnknown { parent } => {
                write!(f, "{parent} is not reported by netmon: left as is")
            }
            Note::ContainerMissing { container } => write!(f, "{container}: no such container"),
            Note::ContainerNotRunning { container } => {
                write!(f, "{container} is not running: MACs are set when it starts")
            }
            Note::NoMac { container, vnic } => write!(
                f,
                "{container}/{vnic} has no stored MAC: the engine's is recorded"
            ),
            Note::BadMac {
                container,
                vnic,
                value,
            } => write!(
                f,
                "{container}/{vnic}: stored MAC {value:?} is not a MAC; fix the store (left as is)"
            ),
            Note::StaticWithoutIp { container, vnic } => {
                write!(f, "{container}/{vnic} is static but has no ip: skipped")
            }
            Note::DuplicateParent {
                container,
                vnic,
                parent,
            } => write!(
                f,
                "{container}/{vnic}: a second vNIC on {parent} (one network per parent): skipped"
            ),
            Note::ForeignEndpoint { network, container } => write!(
                f,
                "{container} is not a runtime of this agent but is attached to {network}"
            ),
            Note::ForeignOverlap { network, parent } => write!(
                f,
                "network {network} (not ours) overlaps the target of {parent}"
            ),
            Note::NamespaceUnreadable { container, reason } => {
                write!(f, "{container}: cannot read its namespace: {reason}")
            }
        }
    }
}

#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<Note>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// `macvlan_<parent>_<LAN subnet with / as _>`, e.g. `macvlan_eth1_192.168.1.0_24`.
pub fn network_name(parent: &str, subnet: Ipv4Network) -> String {
    format!("macvlan_{parent}_{}_{}", subnet.network(), subnet.prefix())
}

fn normalize(n: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)
}

/// The target network for a parent, from its LAN and the static vNICs on it.
pub fn target_spec(parent: &str, lan: &Lan, statics: &[Pool]) -> NetworkSpec {
    let lan_subnet = normalize(lan.subnet);
    let mut pools = vec![Pool {
        subnet: lan_subnet,
        gateway: lan.gateway.filter(|g| lan_subnet.contains(*g)),
    }];
    for p in statics {
        if !pools.iter().any(|q| q.subnet == p.subnet) {
            pools.push(p.clone());
        }
    }
    // The gateway is reserved as the pool's gateway; naming it again as an auxiliary
    // address makes IPAM refuse the network ("address already in use"), so only a
    // gateway that is not the pool's is listed here.
    let mut aux = vec![("host".to_string(), lan.host)];
    if let Some(g) = lan.gateway
        && pools[0].gateway != Some(g)
        && lan_subnet.contains(g)
    {
        aux.push(("gateway".to_string(), g));
    }
    NetworkSpec {
        name: network_name(parent, lan_subnet),
        parent: parent.to_string(),
        pools,
        aux,
        labels: managed_labels(),
        ip_range: None,
    }
}

/// Whether an existing network's pools are the target's: the same subnets, and the same
/// gateway wherever the target names one.
pub fn pools_match(have: &[Pool], want: &[Pool]) -> bool {
    let h: BTreeSet<Ipv4Network> = have.iter().map(|p| normalize(p.subnet)).collect();
    let w: BTreeSet<Ipv4Network> = want.iter().map(|p| normalize(p.subnet)).collect();
    h == w
        && want.iter().all(|w| {
            w.gateway.is_none()
                || have
                    .iter()
                    .any(|h| normalize(h.subnet) == w.subnet && h.gateway == w.gateway)
        })
}

fn overlaps(have: &[Pool], want: &[Pool]) -> bool {
    have.iter()
        .any(|h| want.iter().any(|w| h.subnet.overlaps(w.subnet)))
}

struct Member<'a> {
    container: &'a str,
    vnic: &'a Vnic,
}

/// The address each DHCP-mode vNIC holds a lease for, by (runtime, vNIC). Given
/// (the agent's DHCP client runs), a DHCP vNIC is connected only with its leased
/// address (as a static one) and without a lease not at all, so the engine never
/// picks an address on the LAN. Not given (`None`: `agent run --no-dhcp-client`,
/// and library callers), DHCP vNICs take the engine's IPAM address in the LAN.
pub type DhcpLeases = BTreeMap<(String, String), Ipv4Addr>;

/// Plans the steps that make `observed` match `desired`.
pub fn plan(desired: &Runtimes, cache: &InterfaceCache, observed: &Observed) -> Plan {
    plan_with(desired, cache, observed, &BTreeSet::new(), None)
}

/// [`plan`], with every endpoint on the `reattach` parents (links re-created since
/// their runtimes were attached) reconnected.
pub fn plan_with(
    desired: &Runtimes,
    cache: &InterfaceCache,
    observed: &Observed,
    reattach: &BTreeSet<String>,
    leases: Option<&DhcpLeases>,
) -> Plan {
    let mut out = Plan::default();

    let mut by_parent: BTreeMap<&str, Vec<Member<'_>>> = BTreeMap::new();
    for (container, vnics) in desired {
        match observed.containers.get(container) {
            None => out.notes.push(Note::ContainerMissing {
                container: container.clone(),
            }),
            Some(ci) if !ci.running => out.notes.push(Note::ContainerNotRunning {
                container: container.clone(),
            }),
            Some(ci) => {
                if let Some(reason) = &ci.ns_error {
                    out.notes.push(Note::NamespaceUnreadable {
                        container: container.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
        let mut parents_seen = BTreeSet::new();
        for vnic in vnics {
            let wifi_parent = cache
                .get(&vnic.parent_interface)
                .is_some_and(|i| i.link_type == Some(ipc::LinkType::Wifi));
            if vnic.recorded_as_wifi() || wifi_parent {
                // A managed-mode Wi-Fi link cannot carry macvlan: never given one.
                out.notes.push(Note::WifiUnsupported {
                    container: container.clone(),
                    vnic: vnic.name.clone(),
                    parent: vnic.parent_interface.clone(),
                });
                continue;
            }
            if !parents_seen.insert(vnic.parent_interface.as_str()) {
                out.notes.push(Note::DuplicateParent {
                    container: container.clone(),
                    vnic: vnic.name.clone(),
                    parent: vnic.parent_interface.clone(),
                });
                continue;
            }
            by_parent
                .entry(vnic.parent_interface.as_str())
                .or_default()
                .push(Member { container, vnic });
        }
    }

    // Parents whose own target is planned this run: their networks are never removed
    // as another parent's "overlap".
    let live_parents: BTreeSet<&str> = by_parent
        .keys()
        .copied()
        .filter(|p| cache.lan(p).is_some())
        .collect();

    let mut staying = Vec::new();
    for (parent, members) in &by_parent {
        staying.extend(plan_parent(
            parent,
            members,
            cache,
            observed,
            desired,
            &live_parents,
            reattach,
            leases,
            &mut out,
        ));
    }
    name_the_moved_aside(&mut out, staying);
    out
}

/// Names, in the same run, the staying vNICs of every container that has a vNIC
/// disconnected: the engine's name given back before a disconnect can be held by
/// another vNIC's link, which is then moved aside to a temporary name (docs/NAMES.md).
/// `staying` holds a naming step for each attached vNIC not already named.
fn name_the_moved_aside(out: &mut Plan, staying: Vec<Step>) {
    let disconnected: BTreeSet<String> = out
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Disconnect { container, .. } => Some(container.clone()),
            _ => None,
        })
        .collect();
    out.steps.extend(
        staying.into_iter().filter(
            |s| matches!(s, Step::Name { container, .. } if disconnected.contains(container)),
        ),
    );
}

/// The steps of one parent, by phase, before they are put in order.
#[derive(Default)]
struct ParentSteps {
    disconnects: Vec<Step>,
    removes: Vec<Step>,
    create: Option<Step>,
    connects: Vec<Step>,
    setmacs: Vec<Step>,
    names: Vec<Step>,
    /// Naming steps for the attached vNICs that need none unless another vNIC of their
    /// container is disconnected ([`name_the_moved_aside`]).
    staying: Vec<Step>,
}

/// What one parent's members share: the parent, its LAN, and the network they go on.
struct Target<'a> {
    parent: &'a str,
    lan_subnet: Ipv4Network,
    /// The existing network that already matches, if any.
    matched: Option<&'a NetworkInfo>,
    network_name: String,
    /// The parent link was re-created: every endpoint on it is reconnected.
    reattach: bool,
    leases: Option<&'a DhcpLeases>,
}

#[allow(clippy::too_many_arguments)]
fn plan_parent(
    parent: &str,
    members: &[Member<'_>],
    cache: &InterfaceCache,
    observed: &Observed,
    desired: &Runtimes,
    live_parents: &BTreeSet<&str>,
    reattach: &BTreeSet<String>,
    leases: Option<&DhcpLeases>,
    out: &mut Plan,
) -> Vec<Step> {
    if cache.get(parent).is_none() {
        out.notes.push(Note::ParentUnknown {
            parent: parent.to_string(),
        });
        return Vec::new();
    }
    let Some(lan) = cache.lan(parent) else {
        out.notes.push(Note::ParentDown {
            parent: parent.to_string(),
        });
        return Vec::new();
    };
    let lan_subnet = normalize(lan.subnet);
    let (usable, statics) = usable_members(members, lan_subnet, out);
    // Nothing to attach: do not create or replace networks for containers that are not there.
    if !usable
        .iter()
        .any(|m| observed.containers.contains_key(m.container))
    {
        return Vec::new();
    }
    let mut spec = target_spec(parent, &lan, &statics);
    if leases.is_some() && spec.pools[0].gateway.is_some() {
        // With the DHCP client, every vNIC is connected with its address (static or
        // leased), so the engine's IPAM is given only the host's own address, which is
        // reserved: a connect without an address fails ("no available IPv4
        // addresses") rather than take one the LAN's DHCP server may have leased.
        // Without a gateway the engine takes one from the range, so none is set then.
        spec.ip_range = Ipv4Network::new(lan.host, 32).ok();
    }
    let on_parent: Vec<&NetworkInfo> = observed
        .networks
        .iter()
        .filter(|n| n.driver == "macvlan" && n.parent.as_deref() == Some(parent))
        .collect();
    let matched = on_parent
        .iter()
        .filter(|n| pools_match(&n.pools, &spec.pools))
        .max_by_key(|n| (n.name == spec.name, is_managed(&n.labels)))
        .copied();

    let mut steps = ParentSteps::default();
    let network_name = match matched {
        Some(net) => net.name.clone(),
        None => {
            let replace = Replace {
                parent,
                on_parent,
                spec: &spec,
                observed,
                desired,
                live_parents,
            };
            replace.plan(&mut steps, out);
            spec.name.clone()
        }
    };
    let target = Target {
        parent,
        lan_subnet,
        matched,
        network_name,
        reattach: reattach.contains(parent),
        leases,
    };
    for m in usable {
        if let Some(ci) = observed.containers.get(m.container) {
            plan_member(&target, m, ci, &mut steps, out);
        }
    }
    out.steps.extend(steps.disconnects);
    out.steps.extend(steps.removes);
    out.steps.extend(steps.create);
    out.steps.extend(steps.connects);
    out.steps.extend(steps.setmacs);
    out.steps.extend(steps.names);
    steps.staying
}

/// The members that can be attached, and the extra pools their off-LAN static
/// addresses need; notes for the rest.
fn usable_members<'m, 'a>(
    members: &'m [Member<'a>],
    lan_subnet: Ipv4Network,
    out: &mut Plan,
) -> (Vec<&'m Member<'a>>, Vec<Pool>) {
    let mut statics = Vec::new();
    let mut usable = Vec::new();
    for m in members {
        if m.vnic.network_mode == NetworkMode::Static {
            let Some(ip) = m.vnic.ip else {
                out.notes.push(Note::StaticWithoutIp {
                    container: m.container.to_string(),
                    vnic: m.vnic.name.clone(),
                });
                continue;
            };
            let subnet = m.vnic.subnet.map(normalize).unwrap_or_else(|| {
                Ipv4Network::new(ip, lan_subnet.prefix())
                    .map(normalize)
                    .unwrap_or(lan_subnet)
            });
            if subnet != lan_subnet {
                out.notes.push(Note::OffLanStatic {
                    container: m.container.to_string(),
                    vnic: m.vnic.name.clone(),
                    subnet,
                    lan: lan_subnet,
                });
                statics.push(Pool {
                    subnet,
                    gateway: m.vnic.gateway.filter(|g| subnet.contains(*g)),
                });
            }
        }
        usable.push(m);
    }
    (usable, statics)
}

/// No network on the parent matches: the ones in the way go (after their containers
/// of ours leave them) and the target is created.
struct Replace<'a> {
    parent: &'a str,
    on_parent: Vec<&'a NetworkInfo>,
    spec: &'a NetworkSpec,
    observed: &'a Observed,
    desired: &'a Runtimes,
    live_parents: &'a BTreeSet<&'a str>,
}

impl Replace<'_> {
    fn plan(&self, steps: &mut ParentSteps, out: &mut Plan) {
        let parent = self.parent;
        let mut removals: Vec<&NetworkInfo> = self.on_parent.clone();
        for n in &self.observed.networks {
            if removals.iter().any(|r| r.id == n.id) || !overlaps(&n.pools, &self.spec.pools) {
                continue;
            }
            let other_parent_live = n
                .parent
                .as_deref()
                .is_some_and(|p| self.live_parents.contains(p));
            if is_managed(&n.labels) && !other_parent_live {
                removals.push(n);
            } else {
                out.notes.push(Note::ForeignOverlap {
                    network: n.name.clone(),
                    parent: parent.to_string(),
                });
            }
        }
        for net in removals {
            self.leave(net, steps, out);
            steps.removes.push(Step::RemoveNetwork {
                parent: parent.to_string(),
                network: net.name.clone(),
            });
        }
        steps.create = Some(Step::CreateNetwork {
            parent: parent.to_string(),
            spec: self.spec.clone(),
        });
    }

    /// Disconnects our containers from a network about to go; notes foreign ones.
    fn leave(&self, net: &NetworkInfo, steps: &mut ParentSteps, out: &mut Plan) {
        let observed = self.observed;
        let mut attached: BTreeSet<&str> = net.containers.iter().map(String::as_str).collect();
        attached.extend(
            observed
                .containers
                .values()
                .filter(|c| c.endpoint_on(net).is_some())
                .map(|c| c.name.as_str()),
        );
        for c in attached {
            let ours = self.desired.contains_key(c)
                || observed
                    .containers
                    .get(c)
                    .is_some_and(|ci| is_managed(&ci.labels));
            if ours {
                steps.disconnects.push(Step::Disconnect {
                    parent: self.parent.to_string(),
                    container: c.to_string(),
                    network: net.name.clone(),
                });
            } else {
                out.notes.push(Note::ForeignEndpoint {
                    network: net.name.clone(),
                    container: c.to_string(),
                });
            }
        }
    }
}

/// What a member's address should be, and whether its endpoint has the wrong one.
struct Addressing {
    wanted_ip: Option<Ipv4Addr>,
    /// A DHCP vNIC whose lease is from another LAN (or none yet): never connected.
    leaseless: bool,
    /// The endpoint must be reconnected (wrong or missing address, stale, reattach).
    wrong_address: bool,
}

fn addressing(
    t: &Target<'_>,
    m: &Member<'_>,
    ci: &ContainerInfo,
    ep: Option<&crate::engine::Endpoint>,
) -> Addressing {
    // A lease from another LAN (the parent moved; a new client is asking) is no lease.
    let lease = t.leases.map(|l| {
        l.get(&(m.container.to_string(), m.vnic.name.clone()))
            .copied()
            .filter(|ip| t.lan_subnet.contains(*ip))
    });
    // A DHCP vNIC without a lease is never connected (the engine would choose its
    // address); an endpoint it already has stays until a lease says otherwise.
    let (wanted_ip, leaseless) = match (m.vnic.network_mode, lease) {
        (NetworkMode::Static, _) => (m.vnic.ip, false),
        (NetworkMode::Dhcp, None) => (None, false),
        (NetworkMode::Dhcp, Some(l)) => (l, l.is_none()),
    };
    // A stopped container's endpoint has no address until it starts (the engine
    // reports the requested static one, if any); that is not a wrong address.
    let wrong_address = !leaseless
        && ep.is_some_and(|ep| match (m.vnic.network_mode, lease, ep.ipv4) {
            (_, _, None) => ci.running,
            (NetworkMode::Dhcp, None, Some(ip)) => !t.lan_subnet.contains(ip),
            (_, _, got) => got != wanted_ip,
        });
    // The engine still lists the endpoint but no link inside holds its address: its
    // macvlan link went with a parent that was deleted (and maybe re-created). Only
    // a reconnect makes a new one; fixing its MAC cannot.
    let stale = ep.and_then(|e| e.ipv4).is_some_and(|ip| {
        ci.running && ci.ns_error.is_none() && !ci.ns_links.is_empty() && ci.link_with(ip).is_none()
    });
    let wrong_address = wrong_address || (!leaseless && (stale || (t.reattach && ep.is_some())));
    Addressing {
        wanted_ip,
        leaseless,
        wrong_address,
    }
}

/// One vNIC of an existing container: reconnect when missing or on a wrong address,
/// then check its MAC when it has one and runs.
fn plan_member(
    t: &Target<'_>,
    m: &Member<'_>,
    ci: &ContainerInfo,
    steps: &mut ParentSteps,
    out: &mut Plan,
) {
    let parent = t.parent;
    let ep = t.matched.and_then(|net| ci.endpoint_on(net));
    let Addressing {
        wanted_ip,
        leaseless,
        wrong_address,
    } = addressing(t, m, ci, ep);
    if wrong_address {
        steps.disconnects.push(Step::Disconnect {
            parent: parent.to_string(),
            container: m.container.to_string(),
            network: t.network_name.clone(),
        });
    }
    if leaseless && ep.is_none() {
        return;
    }
    let connect = ep.is_none() || wrong_address;
    let ip = ep.and_then(|e| e.ipv4);
    // A MAC fixed without a connect is named too: when the plan's read showed no link
    // holding the address (read while the engine was still setting a restarted
    // container's links up), the names could not be judged; naming after the MAC
    // check's read costs nothing when they are right.
    let stored = m.vnic.stored_mac();
    let mac_fix = stored.is_some_and(|mac| !mac_is_right(ci, ip, mac));
    if ci.running {
        let naming = Step::Name {
            parent: parent.to_string(),
            container: m.container.to_string(),
            vnic: m.vnic.name.clone(),
            network: t.network_name.clone(),
        };
        match connect || misnamed(m, ci, ip) || mac_fix {
            true => steps.names.push(naming),
            false => steps.staying.push(naming),
        }
    }
    if connect {
        steps.connects.push(Step::Connect {
            parent: parent.to_string(),
            container: m.container.to_string(),
            vnic: m.vnic.name.clone(),
            network: t.network_name.clone(),
            ipv4: wanted_ip,
            mac: stored,
        });
    }
    let Some(mac) = stored else {
        out.notes.push(match m.vnic.bad_mac() {
            Some(value) => Note::BadMac {
                container: m.container.to_string(),
                vnic: m.vnic.name.clone(),
                value: value.to_string(),
            },
            None => Note::NoMac {
                container: m.container.to_string(),
                vnic: m.vnic.name.clone(),
            },
        });
        return;
    };
    if !ci.running {
        return;
    }
    if connect || mac_fix {
        steps.setmacs.push(Step::SetMac {
            parent: parent.to_string(),
            container: m.container.to_string(),
            vnic: m.vnic.name.clone(),
            network: t.network_name.clone(),
            mac,
        });
    }
}

/// Whether the links as read show the vNIC's link, or the internal bridge's, under
/// another name than its own. Links not read (a container about to be reconnected)
/// show nothing wrong.
fn misnamed(m: &Member<'_>, ci: &ContainerInfo, ip: Option<Ipv4Addr>) -> bool {
    if ci.ns_error.is_some() || ci.ns_links.is_empty() {
        return false;
    }
    let internal = crate::runtime::internal_network(m.container);
    let internal_ip = ci
        .endpoints
        .iter()
        .find(|e| e.network_name == internal)
        .and_then(|e| e.ipv4);
    let wrong = |ip: Option<Ipv4Addr>, name: &str| {
        ip.and_then(|ip| ci.link_with(ip))
            .is_some_and(|l| l.name != name)
    };
    wrong(ip, &m.vnic.name) || wrong(internal_ip, INTERNAL_IFNAME)
}

fn mac_is_right(ci: &ContainerInfo, ip: Option<Ipv4Addr>, mac: MacAddr) -> bool {
    ip.and_then(|ip| ci.link_with(ip))
        .is_some_and(|l| l.mac == Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Endpoint, NsLink};
    use ipc::Event;

    /// The engine steps of a plan: the naming steps have tests of their own
    /// (`names_*`, which call `super::plan`).
    fn plan(d: &Runtimes, c: &InterfaceCache, o: &Observed) -> Plan {
        let mut p = super::plan(d, c, o);
        p.steps.retain(|s| !matches!(s, Step::Name { .. }));
        p
    }

    const MAC1: &str = "02:aa:00:00:00:01";
    const MAC2: &str = "02:aa:00:00:00:02";
    const MAC3: &str = "02:aa:00:00:00:03";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn net4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    /// (name, index, "addr/len" or "", gateway or "", status)
    fn cache(ifaces: &[(&str, u32, &str, &str, &str)]) -> InterfaceCache {
        let items: Vec<String> = ifaces
            .iter()
            .map(|(name, index, addr, gw, status)| {
                let addrs = if addr.is_empty() {
                    String::new()
                } else {
                    let (a, len) = addr.split_once('/').unwrap();
                    let n = normalize(net4(addr));
                    format!(
                        r#"{{"address":"{a}","prefixlen":{len},"subnet":"{n}","network_address":"{}"}}"#,
                        n.network()
                    )
                };
                let gw = if gw.is_empty() { "null".to_string() } else { format!("\"{gw}\"") };
                format!(
                    r#"{{"interface":"{name}","index":{index},"status":"{status}","ipv4_addresses":[{addrs}],"gateway":{gw}}}"#
                )
            })
            .collect();
        let ev: Event = serde_json::from_str(&format!(
            r#"{{"type":"network_discovery","data":{{"interfaces":[{}]}}}}"#,
            items.join(",")
        ))
        .unwrap();
        let mut c = InterfaceCache::default();
        c.apply(&ev);
        c
    }

    fn pool(subnet: &str, gw: Option<&str>) -> Pool {
        Pool {
            subnet: net4(subnet),
            gateway: gw.map(ip),
        }
    }

    fn network(id: &str, name: &str, parent: &str, pools: Vec<Pool>, managed: bool) -> NetworkInfo {
        NetworkInfo {
            id: id.to_string(),
            name: name.to_string(),
            driver: "macvlan".to_string(),
            parent: Some(parent.to_string()),
            pools,
            labels: if managed {
                managed_labels()
            } else {
                BTreeMap::new()
            },
            containers: Vec::new(),
        }
    }

    /// A running container; `eps` = (network, ip, mac inside the namespace).
    fn container(name: &str, running: bool, eps: &[(&NetworkInfo, &str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.to_string(),
            running,
            pid: running.then_some(4242),
            endpoints: eps
                .iter()
                .map(|(n, a, _)| Endpoint {
                    endpoint_id: format!("ep-{}", n.id),
                    network_id: n.id.clone(),
                    network_name: n.name.clone(),
                    ipv4: Some(ip(a)),
                    mac: Some(mac("02:42:0a:00:00:05")),
                })
                .collect(),
            ns_links: if running {
                eps.iter()
                    .enumerate()
                    .map(|(i, (_, a, m))| NsLink {
                        index: 2 + i as u32,
                        name: format!("eth{i}"),
                        mac: Some(mac(m)),
                        ipv4: vec![ip(a)],
                        up: true,
                        alias: None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            labels: managed_labels(),
            ns_error: None,
        }
    }

    fn observed(networks: Vec<NetworkInfo>, containers: Vec<ContainerInfo>) -> Observed {
        Observed {
            networks,
            containers: containers
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
        }
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn dhcp(name: &str, parent: &str, m: &str) -> Vnic {
        let mut v = Vnic::dhcp(name, parent, None);
        v.mac_address = Some(m.to_string());
        v
    }

    fn fixed(name: &str, parent: &str, addr: &str, subnet: &str, gw: &str, m: &str) -> Vnic {
        Vnic::fixed(
            name,
            parent,
            ip(addr),
            net4(subnet),
            Some(ip(gw)),
            Some(mac(m)),
        )
    }

    fn runtimes(items: &[(&str, Vec<Vnic>)]) -> Runtimes {
        items
            .iter()
            .map(|(c, v)| (c.to_string(), v.clone()))
            .collect()
    }

    fn lan_net(parent: &str, subnet: &str, gw: &str) -> NetworkInfo {
        let s = net4(subnet);
        network(
            &format!("id-{parent}-{}", s.network()),
            &network_name(parent, s),
            parent,
            vec![pool(subnet, Some(gw))],
            true,
        )
    }

    fn connect(
        parent: &str,
        c: &str,
        vnic: &str,
        network: &str,
        ipv4: Option<&str>,
        m: &str,
    ) -> Step {
        Step::Connect {
            parent: parent.into(),
            container: c.into(),
            vnic: vnic.into(),
            network: network.into(),
            ipv4: ipv4.map(ip),
            mac: (!m.is_empty()).then(|| mac(m)),
        }
    }
    fn setmac(parent: &str, c: &str, vnic: &str, network: &str, m: &str) -> Step {
        Step::SetMac {
            parent: parent.into(),
            container: c.into(),
            vnic: vnic.into(),
            network: network.into(),
            mac: mac(m),
        }
    }
    fn disconnect(parent: &str, c: &str, network: &str) -> Step {
        Step::Disconnect {
            parent: parent.into(),
            container: c.into(),
            network: network.into(),
        }
    }
    fn remove(parent: &str, network: &str) -> Step {
        Step::RemoveNetwork {
            parent: parent.into(),
            network: network.into(),
        }
    }
    fn created(plan: &Plan) -> Vec<&NetworkSpec> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreateNetwork { spec, .. } => Some(spec),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn network_name_format() {
        assert_eq!(
            network_name("eth1", net4("192.168.1.0/24")),
            "macvlan_eth1_192.168.1.0_24"
        );
    }

    #[test]
    fn fresh_create_makes_network_connects_and_sets_mac() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(vec![], vec![container("c1", true, &[])]);
        let p = plan(&d, &c, &o);
        let name = "macvlan_p1_10.1.0.0_24";
        assert_eq!(
            p.steps,
            vec![
                Step::CreateNetwork {
                    parent: "p1".into(),
                    spec: NetworkSpec {
                        name: name.into(),
                        parent: "p1".into(),
                        pools: vec![pool("10.1.0.0/24", Some("10.1.0.1"))],
                        aux: vec![("host".into(), ip("10.1.0.2"))],
                        labels: managed_labels(),
                        ip_range: None,
                    }
                },
                connect("p1", "c1", "eth0", name, None, MAC1),
                setmac("p1", "c1", "eth0", name, MAC1),
            ]
        );
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn lan_without_gateway_still_reserves_the_host() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(vec![], vec![container("c1", true, &[])]);
        let p = plan(&d, &c, &o);
        let spec = created(&p)[0];
        assert_eq!(spec.pools, vec![pool("10.1.0.0/24", None)]);
        assert_eq!(spec.aux, vec![("host".to_string(), ip("10.1.0.2"))]);
    }

    #[test]
    fn subnet_change_of_dhcp_parent_moves_it_and_leaves_other_parent_alone() {
        let old = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let other = lan_net("p2", "10.2.0.0/24", "10.2.0.1");
        let c = cache(&[
            ("p1", 2, "10.3.0.2/24", "10.3.0.1", "up"),
            ("p2", 3, "10.2.0.2/24", "10.2.0.1", "up"),
        ]);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1)]),
            (
                "c2",
                vec![fixed(
                    "eth0",
                    "p2",
                    "10.2.0.50",
                    "10.2.0.0/24",
                    "10.2.0.1",
                    MAC2,
                )],
            ),
        ]);
        let o = observed(
            vec![old.clone(), other.clone()],
            vec![
                container("c1", true, &[(&old, "10.1.0.5", MAC1)]),
                container("c2", true, &[(&other, "10.2.0.50", MAC2)]),
            ],
        );
        let p = plan(&d, &c, &o);
        let new = "macvlan_p1_10.3.0.0_24";
        assert_eq!(p.steps.len(), 5, "{:#?}", p.steps);
        assert_eq!(p.steps[0], disconnect("p1", "c1", &old.name));
        assert_eq!(p.steps[1], remove("p1", &old.name));
        assert!(
            matches!(&p.steps[2], Step::CreateNetwork { spec, .. } if spec.name == new
            && spec.pools == vec![pool("10.3.0.0/24", Some("10.3.0.1"))])
        );
        assert_eq!(p.steps[3], connect("p1", "c1", "eth0", new, None, MAC1));
        assert_eq!(p.steps[4], setmac("p1", "c1", "eth0", new, MAC1));
        assert!(p.steps.iter().all(|s| s.parent() == "p1"));
    }

    #[test]
    fn static_vnic_keeps_its_ip_across_a_lan_change() {
        let old = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.3.0.2/24", "10.3.0.1", "up")]);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1)]),
            (
                "c2",
                vec![fixed(
                    "eth0",
                    "p1",
                    "10.1.0.50",
                    "10.1.0.0/24",
                    "10.1.0.1",
                    MAC2,
                )],
            ),
        ]);
        let o = observed(
            vec![old.clone()],
            vec![
                container("c1", true, &[(&old, "10.1.0.5", MAC1)]),
                container("c2", true, &[(&old, "10.1.0.50", MAC2)]),
            ],
        );
        let p = plan(&d, &c, &o);
        let new = "macvlan_p1_10.3.0.0_24";
        let spec = created(&p)[0];
        assert_eq!(
            spec.pools,
            vec![
                pool("10.3.0.0/24", Some("10.3.0.1")),
                pool("10.1.0.0/24", Some("10.1.0.1"))
            ],
            "LAN pool first, then the static vNIC's subnet"
        );
        assert!(p.steps.contains(&disconnect("p1", "c2", &old.name)));
        assert!(
            p.steps
                .contains(&connect("p1", "c2", "eth0", new, Some("10.1.0.50"), MAC2))
        );
        assert!(
            p.steps
                .contains(&connect("p1", "c1", "eth0", new, None, MAC1))
        );
        assert!(p.notes.contains(&Note::OffLanStatic {
            container: "c2".into(),
            vnic: "eth0".into(),
            subnet: net4("10.1.0.0/24"),
            lan: net4("10.3.0.0/24"),
        }));
    }

    #[test]
    fn off_lan_static_is_a_note_and_a_pool_and_then_converges() {
        let c = cache(&[("p1", 2, "10.3.0.2/24", "10.3.0.1", "up")]);
        let d = runtimes(&[(
            "c1",
            vec![fixed(
                "eth0",
                "p1",
                "172.20.0.9",
                "172.20.0.0/24",
                "172.20.0.1",
                MAC1,
            )],
        )]);
        let p = plan(&d, &c, &observed(vec![], vec![container("c1", true, &[])]));
        let spec = created(&p)[0].clone();
        assert_eq!(spec.pools[1], pool("172.20.0.0/24", Some("172.20.0.1")));
        assert_eq!(p.notes.len(), 1);
        assert!(matches!(p.notes[0], Note::OffLanStatic { .. }));
        // Once in place, the same state plans nothing but still notes the information.
        let net = network("n1", &spec.name, "p1", spec.pools.clone(), true);
        let o = observed(
            vec![net.clone()],
            vec![container("c1", true, &[(&net, "172.20.0.9", MAC1)])],
        );
        let p = plan(&d, &c, &o);
        assert!(p.steps.is_empty(), "{:#?}", p.steps);
        assert!(matches!(p.notes[0], Note::OffLanStatic { .. }));
    }

    #[test]
    fn parent_down_or_without_ipv4_gives_no_steps() {
        let old = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(
            vec![old.clone()],
            vec![container("c1", true, &[(&old, "10.1.0.5", MAC2)])],
        );
        for c in [
            cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "down")]),
            cache(&[("p1", 2, "", "", "up")]),
        ] {
            let p = plan(&d, &c, &o);
            assert!(p.steps.is_empty(), "nothing detached: {:#?}", p.steps);
            assert_eq!(
                p.notes,
                vec![Note::ParentDown {
                    parent: "p1".into()
                }]
            );
        }
    }

    #[test]
    fn parent_unknown_gives_a_note_only() {
        let c = cache(&[("p2", 3, "10.2.0.2/24", "10.2.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let p = plan(&d, &c, &observed(vec![], vec![container("c1", true, &[])]));
        assert!(p.steps.is_empty());
        assert_eq!(
            p.notes,
            vec![Note::ParentUnknown {
                parent: "p1".into()
            }]
        );
    }

    #[test]
    fn dhcp_vnic_is_connected_only_with_its_lease() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let key = ("c1".to_string(), "eth0".to_string());
        let none = BTreeSet::new();
        // No lease: no connect at all, and the network reserves no address for IPAM.
        let fresh = observed(vec![], vec![container("c1", true, &[])]);
        let p = plan_with(&d, &c, &fresh, &none, Some(&DhcpLeases::new()));
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Connect { .. })));
        assert_eq!(created(&p)[0].ip_range, Some(net4("10.1.0.2/32")));
        // A lease: connected with it as a static address.
        let leases = DhcpLeases::from([(key.clone(), ip("10.1.0.77"))]);
        let p = plan_with(&d, &c, &fresh, &none, Some(&leases));
        assert!(p.steps.contains(&connect(
            "p1",
            "c1",
            "eth0",
            &net.name,
            Some("10.1.0.77"),
            MAC1
        )));
        // Attached with the leased address: nothing to do; with another: reconnected.
        let on = observed(
            vec![net.clone()],
            vec![container("c1", true, &[(&net, "10.1.0.77", MAC1)])],
        );
        assert_eq!(
            plan_with(&d, &c, &on, &none, Some(&leases)),
            Plan::default()
        );
        let moved = DhcpLeases::from([(key.clone(), ip("10.1.0.80"))]);
        let mut steps = plan_with(&d, &c, &on, &none, Some(&moved)).steps;
        steps.retain(|s| !matches!(s, Step::Name { .. }));
        assert_eq!(
            steps,
            vec![
                disconnect("p1", "c1", &net.name),
                connect("p1", "c1", "eth0", &net.name, Some("10.1.0.80"), MAC1),
                setmac("p1", "c1", "eth0", &net.name, MAC1),
            ]
        );
        // The lease went (a new LAN is being asked): the endpoint is left as it is,
        // and a lease from another subnet counts as none.
        let other = DhcpLeases::from([(key, ip("10.9.0.5"))]);
        assert_eq!(plan_with(&d, &c, &on, &none, Some(&other)), Plan::default());
        assert_eq!(
            plan_with(&d, &c, &on, &none, Some(&DhcpLeases::new())),
            Plan::default()
        );
    }

    #[test]
    fn already_correct_plans_nothing() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1)]),
            (
                "c2",
                vec![fixed(
                    "eth0",
                    "p1",
                    "10.1.0.50",
                    "10.1.0.0/24",
                    "10.1.0.1",
                    MAC2,
                )],
            ),
        ]);
        let o = observed(
            vec![net.clone()],
            vec![
                container("c1", true, &[(&net, "10.1.0.5", MAC1)]),
                // MACs compare case-insensitively.
                container("c2", true, &[(&net, "10.1.0.50", &MAC2.to_uppercase())]),
            ],
        );
        assert_eq!(plan(&d, &c, &o), Plan::default());
    }

    #[test]
    fn a_stale_endpoint_or_a_recreated_parent_is_reconnected() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        // The engine lists the endpoint, but its link died with the old parent: the
        // namespace holds only the internal bridge's link.
        let mut c1 = container("c1", true, &[(&net, "10.1.0.5", MAC1)]);
        c1.ns_links[0].ipv4 = vec![ip("198.18.0.2")];
        let o = observed(vec![net.clone()], vec![c1]);
        let want = vec![
            disconnect("p1", "c1", &net.name),
            connect("p1", "c1", "eth0", &net.name, None, MAC1),
            setmac("p1", "c1", "eth0", &net.name, MAC1),
        ];
        assert_eq!(plan(&d, &c, &o).steps, want);

        // A parent known to be re-created: reconnected even while its old link seems
        // fine (read before the deletion reached the namespace).
        let ok = observed(
            vec![net.clone()],
            vec![container("c1", true, &[(&net, "10.1.0.5", MAC1)])],
        );
        assert!(plan(&d, &c, &ok).steps.is_empty());
        let mut again = plan_with(&d, &c, &ok, &BTreeSet::from(["p1".to_string()]), None);
        again.steps.retain(|s| !matches!(s, Step::Name { .. }));
        assert_eq!(again.steps, want);
    }

    fn name(parent: &str, c: &str, vnic: &str, network: &str) -> Step {
        Step::Name {
            parent: parent.into(),
            container: c.into(),
            vnic: vnic.into(),
            network: network.into(),
        }
    }

    #[test]
    fn names_every_connect_is_followed_by_naming_last() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(vec![], vec![container("c1", true, &[])]);
        let p = super::plan(&d, &c, &o);
        let net = "macvlan_p1_10.1.0.0_24";
        assert_eq!(p.steps.last(), Some(&name("p1", "c1", "eth0", net)));
        assert_eq!(p.steps.last().unwrap().phase(), Phase::Name);
        assert_eq!(
            p.steps.last().unwrap().to_string(),
            "[p1] name c1/eth0's link eth0 inside"
        );
        // A stopped container is connected, and named when it starts.
        let o = observed(vec![], vec![container("c1", false, &[])]);
        let p = super::plan(&d, &c, &o);
        assert!(
            !p.steps.iter().any(|s| matches!(s, Step::Name { .. })),
            "{p:#?}"
        );
    }

    #[test]
    fn names_a_staying_link_under_the_engines_name_is_only_renamed() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let mut internal = lan_net("p9", "198.18.0.0/24", "198.18.0.1");
        internal.name = "c1_internal".into();
        internal.id = "int-c1".into();
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        // As the engine leaves it after a restart: internal eth0, the vNIC eth1.
        let ci = container(
            "c1",
            true,
            &[(&internal, "198.18.0.2", MAC2), (&net, "10.1.0.5", MAC1)],
        );
        assert_eq!(ci.ns_links[1].name, "eth1");
        let o = observed(vec![net.clone()], vec![ci.clone()]);
        assert_eq!(
            super::plan(&d, &c, &o).steps,
            vec![name("p1", "c1", "eth0", &net.name)]
        );
        // Named already, but the internal link still has the engine's name.
        let mut half = ci.clone();
        half.ns_links[0].name = "eth9".into();
        half.ns_links[1].name = "eth0".into();
        let o = observed(vec![net.clone()], vec![half.clone()]);
        assert_eq!(
            super::plan(&d, &c, &o).steps,
            vec![name("p1", "c1", "eth0", &net.name)]
        );
        // Both right: nothing.
        half.ns_links[0].name = INTERNAL_IFNAME.into();
        let o = observed(vec![net.clone()], vec![half]);
        assert_eq!(super::plan(&d, &c, &o), Plan::default());
        // Links not read (or unreadable): the names cannot be judged; the MAC check
        // planned for them reads the links, and the naming after it judges from that.
        let mut unread = ci;
        unread.ns_links.clear();
        let o = observed(vec![net.clone()], vec![unread]);
        let p = super::plan(&d, &c, &o);
        assert_eq!(
            p.steps,
            vec![
                setmac("p1", "c1", "eth0", &net.name, MAC1),
                name("p1", "c1", "eth0", &net.name)
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn names_the_staying_vnics_of_a_container_with_a_vnic_moved() {
        let old = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let other = lan_net("p2", "10.2.0.0/24", "10.2.0.1");
        let c = cache(&[
            ("p1", 2, "10.3.0.2/24", "10.3.0.1", "up"),
            ("p2", 3, "10.2.0.2/24", "10.2.0.1", "up"),
        ]);
        let on_p2 = || fixed("eth1", "p2", "10.2.0.50", "10.2.0.0/24", "10.2.0.1", MAC2);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1), on_p2()]),
            ("c2", vec![on_p2()]),
        ]);
        // c1's eth0 moves; its eth1 stays, and so does c2's, each under its own name.
        let c1 = container(
            "c1",
            true,
            &[(&old, "10.1.0.5", MAC1), (&other, "10.2.0.50", MAC2)],
        );
        let mut c2 = container("c2", true, &[(&other, "10.2.0.50", MAC2)]);
        c2.ns_links[0].name = "eth1".into();
        let o = observed(vec![old.clone(), other.clone()], vec![c1, c2]);
        let names: Vec<Step> = super::plan(&d, &c, &o)
            .steps
            .into_iter()
            .filter(|s| matches!(s, Step::Name { .. }))
            .collect();
        // The give-back before eth0's disconnect may move eth1's link aside (when
        // eth1 is eth0's engine name): eth1 is named in the same run, c2 not at all.
        assert_eq!(
            names,
            vec![
                name("p1", "c1", "eth0", "macvlan_p1_10.3.0.0_24"),
                name("p2", "c1", "eth1", &other.name),
            ]
        );
    }

    #[test]
    fn wrong_mac_inside_gives_set_mac_only() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(
            vec![net.clone()],
            vec![container(
                "c1",
                true,
                &[(&net, "10.1.0.5", "02:42:0a:01:00:05")],
            )],
        );
        assert_eq!(
            plan(&d, &c, &o).steps,
            vec![setmac("p1", "c1", "eth0", &net.name, MAC1)]
        );
    }

    #[test]
    fn static_with_wrong_ip_is_reconnected() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[(
            "c1",
            vec![fixed(
                "eth0",
                "p1",
                "10.1.0.50",
                "10.1.0.0/24",
                "10.1.0.1",
                MAC1,
            )],
        )]);
        let o = observed(
            vec![net.clone()],
            vec![container("c1", true, &[(&net, "10.1.0.7", MAC1)])],
        );
        assert_eq!(
            plan(&d, &c, &o).steps,
            vec![
                disconnect("p1", "c1", &net.name),
                connect("p1", "c1", "eth0", &net.name, Some("10.1.0.50"), MAC1),
                setmac("p1", "c1", "eth0", &net.name, MAC1),
            ]
        );
    }

    #[test]
    fn eth1_never_matches_eth10() {
        let c = cache(&[
            ("eth1", 2, "10.1.0.2/24", "10.1.0.1", "up"),
            ("eth10", 3, "10.10.0.2/24", "10.10.0.1", "up"),
        ]);
        // eth10's network, plus a trap: a network on eth10 whose name starts with
        // macvlan_eth1 and whose pools are exactly eth1's target.
        let n10 = lan_net("eth10", "10.10.0.0/24", "10.10.0.1");
        let trap = network(
            "trap",
            "macvlan_eth1_10.1.0.0_24",
            "eth10",
            vec![pool("10.1.0.0/24", Some("10.1.0.1"))],
            false,
        );
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "eth1", MAC1)]),
            ("c2", vec![dhcp("eth0", "eth10", MAC2)]),
        ]);
        let o = observed(
            vec![n10.clone(), trap.clone()],
            vec![
                container("c1", true, &[]),
                container("c2", true, &[(&n10, "10.10.0.5", MAC2)]),
            ],
        );
        let p = plan(&d, &c, &o);
        assert!(
            p.steps.iter().all(|s| s.parent() == "eth1"),
            "eth10 untouched: {:#?}",
            p.steps
        );
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::RemoveNetwork { .. })),
            "{:#?}",
            p.steps
        );
        let spec = created(&p)[0];
        assert_eq!(spec.parent, "eth1");
        assert!(p.notes.contains(&Note::ForeignOverlap {
            network: trap.name.clone(),
            parent: "eth1".into()
        }));
    }

    #[test]
    fn old_deployment_network_is_adopted_by_parent_and_pools_whatever_its_name() {
        let old = network(
            "0123abcd",
            "dm-7f3e2a",
            "p1",
            vec![pool("10.1.0.0/24", Some("10.1.0.1"))],
            false,
        );
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1)]),
            ("c2", vec![dhcp("eth0", "p1", MAC2)]),
        ]);
        let o = observed(
            vec![old.clone()],
            vec![
                container("c1", true, &[(&old, "10.1.0.5", MAC1)]),
                container("c2", true, &[]),
            ],
        );
        let p = plan(&d, &c, &o);
        assert_eq!(
            p.steps,
            vec![
                connect("p1", "c2", "eth0", "dm-7f3e2a", None, MAC2),
                setmac("p1", "c2", "eth0", "dm-7f3e2a", MAC2)
            ]
        );
    }

    #[test]
    fn adoption_ignores_a_missing_gateway_but_not_a_different_one() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let want = vec![pool("10.1.0.0/24", Some("10.1.0.1"))];
        assert!(pools_match(&[pool("10.1.0.0/24", Some("10.1.0.1"))], &want));
        assert!(!pools_match(
            &[pool("10.1.0.0/24", Some("10.1.0.254"))],
            &want
        ));
        assert!(!pools_match(
            &[
                pool("10.1.0.0/24", Some("10.1.0.1")),
                pool("10.9.0.0/24", None)
            ],
            &want
        ));
        // Without a gateway in the cache the engine's own choice is accepted.
        assert!(pools_match(
            &[pool("10.1.0.0/24", Some("10.1.0.1"))],
            &[pool("10.1.0.0/24", None)]
        ));
        let _ = c;
    }

    #[test]
    fn leftover_overlapping_network_is_removed_when_ours_and_noted_when_not() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        // Ours, on a parent nobody uses any more, same subnet under another name.
        let mut leftover = network(
            "left",
            "macvlan_gone_10.1.0.0_24",
            "gone",
            vec![pool("10.1.0.0/24", Some("10.1.0.1"))],
            true,
        );
        leftover.containers = vec!["c1".into(), "stranger".into()];
        // Not ours, on another parent, overlapping.
        let foreign = network(
            "frgn",
            "lab-net",
            "ens99",
            vec![pool("10.1.0.0/16", None)],
            false,
        );
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(
            vec![leftover.clone(), foreign.clone()],
            vec![container("c1", true, &[(&leftover, "10.1.0.9", MAC1)])],
        );
        let p = plan(&d, &c, &o);
        let name = "macvlan_p1_10.1.0.0_24";
        assert_eq!(p.steps[0], disconnect("p1", "c1", &leftover.name));
        assert_eq!(p.steps[1], remove("p1", &leftover.name));
        assert!(matches!(&p.steps[2], Step::CreateNetwork { spec, .. } if spec.name == name));
        assert_eq!(p.steps[3], connect("p1", "c1", "eth0", name, None, MAC1));
        assert_eq!(p.steps.len(), 5);
        assert!(p.notes.contains(&Note::ForeignEndpoint {
            network: leftover.name.clone(),
            container: "stranger".into()
        }));
        assert!(p.notes.contains(&Note::ForeignOverlap {
            network: "lab-net".into(),
            parent: "p1".into()
        }));
    }

    #[test]
    fn same_parent_network_with_other_pools_is_replaced_even_if_not_ours() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let stale = network(
            "st",
            "whatever",
            "p1",
            vec![pool("10.7.0.0/24", None)],
            false,
        );
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let o = observed(
            vec![stale.clone()],
            vec![container("c1", true, &[(&stale, "10.7.0.3", MAC1)])],
        );
        let p = plan(&d, &c, &o);
        assert_eq!(p.steps[0], disconnect("p1", "c1", "whatever"));
        assert_eq!(p.steps[1], remove("p1", "whatever"));
    }

    #[test]
    fn two_runtimes_sharing_a_parent_share_one_network() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1)]),
            (
                "c2",
                vec![dhcp("eth0", "p1", MAC2), dhcp("eth1", "p2", MAC3)],
            ),
        ]);
        let o = observed(
            vec![],
            vec![container("c1", true, &[]), container("c2", true, &[])],
        );
        let p = plan(&d, &c, &o);
        let name = "macvlan_p1_10.1.0.0_24";
        assert_eq!(created(&p).len(), 1);
        assert_eq!(
            p.steps[1..].to_vec(),
            vec![
                connect("p1", "c1", "eth0", name, None, MAC1),
                connect("p1", "c2", "eth0", name, None, MAC2),
                setmac("p1", "c1", "eth0", name, MAC1),
                setmac("p1", "c2", "eth0", name, MAC2),
            ]
        );
        assert_eq!(
            p.notes,
            vec![Note::ParentUnknown {
                parent: "p2".into()
            }]
        );
    }

    #[test]
    fn missing_container_is_a_note_without_steps() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("ghost", vec![dhcp("eth0", "p1", MAC1)])]);
        let p = plan(&d, &c, &observed(vec![], vec![]));
        assert!(p.steps.is_empty());
        assert_eq!(
            p.notes,
            vec![Note::ContainerMissing {
                container: "ghost".into()
            }]
        );
        // Alongside an existing one, only the existing one gets steps.
        let d = runtimes(&[
            ("ghost", vec![dhcp("eth0", "p1", MAC1)]),
            ("c1", vec![dhcp("eth0", "p1", MAC2)]),
        ]);
        let p = plan(&d, &c, &observed(vec![], vec![container("c1", true, &[])]));
        assert!(p.steps.iter().all(|s| !format!("{s}").contains("ghost")));
        assert_eq!(p.steps.len(), 3);
    }

    #[test]
    fn stopped_container_is_connected_but_its_mac_waits_for_start() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let p = plan(&d, &c, &observed(vec![], vec![container("c1", false, &[])]));
        assert_eq!(p.steps.len(), 2);
        assert!(matches!(p.steps[1], Step::Connect { .. }));
        assert_eq!(
            p.notes,
            vec![Note::ContainerNotRunning {
                container: "c1".into()
            }]
        );
        // Already attached and stopped: nothing to do until it starts.
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let o = observed(
            vec![net.clone()],
            vec![container("c1", false, &[(&net, "10.1.0.5", MAC1)])],
        );
        assert!(plan(&d, &c, &o).steps.is_empty());
    }

    #[test]
    fn stopped_container_attached_without_an_address_yet_is_left_alone() {
        let net = lan_net("p1", "10.1.0.0/24", "10.1.0.1");
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![dhcp("eth0", "p1", MAC1)])]);
        let mut stopped = container("c1", false, &[(&net, "10.1.0.5", MAC1)]);
        stopped.endpoints[0].ipv4 = None;
        let p = plan(&d, &c, &observed(vec![net.clone()], vec![stopped.clone()]));
        assert!(p.steps.is_empty(), "{:#?}", p.steps);
        // Running without an address on the network: reconnect.
        stopped.running = true;
        let p = plan(&d, &c, &observed(vec![net.clone()], vec![stopped]));
        assert_eq!(p.steps[0], disconnect("p1", "c1", &net.name));
    }

    #[test]
    fn a_stored_mac_that_is_not_a_mac_is_noted_and_nothing_is_set() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let mut v = Vnic::dhcp("eth0", "p1", None);
        v.mac_address = Some("02:aa:zz:00:00:01".into());
        let d = runtimes(&[("c1", vec![v])]);
        let p = plan(&d, &c, &observed(vec![], vec![container("c1", true, &[])]));
        assert_eq!(
            p.steps[1],
            connect("p1", "c1", "eth0", "macvlan_p1_10.1.0.0_24", None, "")
        );
        assert_eq!(p.steps.len(), 2, "no SetMac for a bad MAC");
        assert_eq!(
            p.notes,
            vec![Note::BadMac {
                container: "c1".into(),
                vnic: "eth0".into(),
                value: "02:aa:zz:00:00:01".into(),
            }]
        );
        assert!(
            p.notes[0].to_string().contains("is not a MAC"),
            "{}",
            p.notes[0]
        );
    }

    #[test]
    fn vnic_without_mac_connects_with_the_engines_mac_and_notes_it() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[("c1", vec![Vnic::dhcp("eth0", "p1", None)])]);
        let p = plan(&d, &c, &observed(vec![], vec![container("c1", true, &[])]));
        assert_eq!(
            p.steps[1],
            connect("p1", "c1", "eth0", "macvlan_p1_10.1.0.0_24", None, "")
        );
        assert_eq!(p.steps.len(), 2, "no SetMac without a stored MAC");
        assert_eq!(
            p.notes,
            vec![Note::NoMac {
                container: "c1".into(),
                vnic: "eth0".into()
            }]
        );
    }

    #[test]
    fn dhcp_vnic_outside_the_lan_is_reconnected() {
        // The adopted network also carries a static pool; a DHCP vNIC that landed there moves.
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let d = runtimes(&[
            ("c1", vec![dhcp("eth0", "p1", MAC1)]),
            (
                "c2",
                vec![fixed(
                    "eth0",
                    "p1",
                    "10.9.0.5",
                    "10.9.0.0/24",
                    "10.9.0.1",
                    MAC2,
                )],
            ),
        ]);
        let net = network(
            "n",
            "n",
            "p1",
            vec![
                pool("10.1.0.0/24", Some("10.1.0.1")),
                pool("10.9.0.0/24", Some("10.9.0.1")),
            ],
            true,
        );
        let o = observed(
            vec![net.clone()],
            vec![
                container("c1", true, &[(&net, "10.9.0.7", MAC1)]),
                container("c2", true, &[(&net, "10.9.0.5", MAC2)]),
            ],
        );
        let p = plan(&d, &c, &o);
        assert_eq!(p.steps[0], disconnect("p1", "c1", "n"));
        assert_eq!(p.steps[1], connect("p1", "c1", "eth0", "n", None, MAC1));
    }

    #[test]
    fn second_vnic_on_the_same_parent_and_static_without_ip_are_noted() {
        let c = cache(&[("p1", 2, "10.1.0.2/24", "10.1.0.1", "up")]);
        let mut bad = Vnic::dhcp("eth2", "p1", Some(mac(MAC3)));
        bad.network_mode = NetworkMode::Static;
        let d = runtimes(&[
            (
                "c1",
                vec![dhcp("eth0", "p1", MAC1), dhcp("eth1", "p1", MAC2)],
            ),
            ("c2", vec![bad]),
        ]);
        let p = plan(
            &d,
            &c,
            &observed(
                vec![],
                vec![container("c1", true, &[]), container("c2", true, &[])],
            ),
        );
        assert!(p.notes.contains(&Note::DuplicateParent {
            container: "c1".into(),
            vnic: "eth1".into(),
            parent: "p1".into()
        }));
        assert!(p.notes.contains(&Note::StaticWithoutIp {
            container: "c2".into(),
            vnic: "eth2".into()
        }));
        assert_eq!(p.steps.len(), 3);
    }

    #[test]
    fn steps_serialize_tagged_and_display_for_humans() {
        let s = connect("p1", "c1", "eth0", "n", Some("10.1.0.5"), MAC1);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["step"], "connect");
        assert_eq!(v["ipv4"], "10.1.0.5");
        assert_eq!(
            s.to_string(),
            format!("[p1] connect c1/eth0 to n ip 10.1.0.5 mac {MAC1}")
        );
        let n = serde_json::to_value(Note::ParentDown {
            parent: "p1".into(),
        })
        .unwrap();
        assert_eq!(n["note"], "parent_down");
    }
}
