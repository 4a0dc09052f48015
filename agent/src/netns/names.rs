//! Naming links inside a namespace in one pass (docs/NAMES.md): every link asked for
//! gets its name even when the names are swapped among them (`eth1` -> `eth0` while
//! `eth0` -> `int0`), because each goes through a temporary name first. The first time
//! a link is renamed, the name it had (the engine's) is kept in its alias
//! (IFLA_IFALIAS), on the link itself, so it survives an agent restart and the link
//! can be given back that name before the engine looks it up again.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipc::MacAddr;

use super::rtnl::Rtnl;
use super::{Netns, NetnsError, NsLink, check_name, run};

/// What the alias of a link the agent renamed starts with:
/// `edgenet:<engine name>:<endpoint id>`.
pub const ALIAS_PREFIX: &str = "edgenet:";

/// Links between two names carry `edn<ifindex>`: not a name the engine (`eth<N>`) or a
/// vNIC (refused at validation) uses.
pub const TEMP_PREFIX: &str = "edn";

fn alias_parts(link: &NsLink) -> Option<(&str, &str)> {
    let rest = link.alias.as_deref()?.strip_prefix(ALIAS_PREFIX)?;
    Some(rest.split_once(':').unwrap_or((rest, "")))
}

/// The name the engine gave a link the agent renamed (from its alias); `None` for a
/// link the agent never renamed.
pub fn engine_name(link: &NsLink) -> Option<&str> {
    alias_parts(link).map(|(name, _)| name)
}

/// The engine's endpoint a renamed link was made for (from its alias; may be empty).
pub fn endpoint_of(link: &NsLink) -> Option<&str> {
    alias_parts(link).map(|(_, ep)| ep)
}

/// One link to name: by ifindex, its new name, and the endpoint it is the link of
/// (kept in the alias with the engine's name the first time the link is renamed);
/// `mac`, when set, is given to the link in the same change (a vNIC's stored MAC
/// right after its connect: one kernel change instead of two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameWant {
    pub index: u32,
    pub name: String,
    pub endpoint: String,
    pub mac: Option<MacAddr>,
}

fn temp_name(index: u32) -> String {
    format!("{TEMP_PREFIX}{index}")
}

/// Gives each link (by index) its wanted name inside `ns`, recording the engine's name
/// and the endpoint in the alias of any link renamed for the first time. A link of ours
/// (its alias names its engine name) that holds a wanted name is moved aside to its
/// temporary name (a later pass names it); any other holder is an error, and nothing
/// is renamed. Returns the links as they read afterwards. Live renames need Linux 6.2
/// or later ([`NetnsError::RenameUp`] before).
pub async fn name_links(ns: Netns, wants: Vec<NameWant>) -> Result<Vec<NsLink>, NetnsError> {
    for w in &wants {
        check_name(&w.name)?;
    }
    run(ns, move || {
        let mut rtnl = Rtnl::open().map_err(|e| nl(ns, "list links", e))?;
        let links = rtnl.links().map_err(|e| nl(ns, "list links", e))?;
        match name_in(&mut rtnl, ns, &links, &wants)? {
            true => rtnl.links().map_err(|e| nl(ns, "list links", e)),
            false => Ok(links),
        }
    })
    .await
}

/// The naming pass of [`name_links`] on a thread inside `ns`, from `links` as read
/// there; whether it changed anything.
fn name_in(
    rtnl: &mut Rtnl,
    ns: Netns,
    links: &[NsLink],
    wants: &[NameWant],
) -> Result<bool, NetnsError> {
    let mut changing: Vec<(&NsLink, &NameWant)> = Vec::new();
    for w in wants {
        let link = links.iter().find(|l| l.index == w.index);
        let link = link.ok_or_else(|| NetnsError::NoLink {
            ns,
            name: format!("ifindex {}", w.index),
        })?;
        if link.name != w.name || w.mac.is_some_and(|m| link.mac != Some(m)) {
            changing.push((link, w));
        }
    }
    if changing.is_empty() {
        return Ok(false);
    }
    let moving: BTreeSet<u32> = changing.iter().map(|(l, _)| l.index).collect();
    let mut aside = Vec::new();
    for (link, w) in &changing {
        let holder = links
            .iter()
            .find(|h| h.name == w.name && !moving.contains(&h.index));
        let Some(holder) = holder else { continue };
        if engine_name(holder).is_none() {
            return Err(NetnsError::NameTaken {
                ns,
                link: link.name.clone(),
                to: w.name.clone(),
                holder: holder.name.clone(),
            });
        }
        aside.push(holder);
    }
    // The engine's name and the endpoint, kept the first time a link is renamed.
    let alias = |link: &NsLink, w: &NameWant| {
        let first = link.name != w.name
            && engine_name(link).is_none()
            && !link.name.starts_with(TEMP_PREFIX);
        first.then(|| format!("{ALIAS_PREFIX}{}:{}", link.name, w.endpoint))
    };
    // Straight to the wanted names, each link in one change, when none is held by
    // any link (a move: the old link is gone); through temporary names when some
    // are (a swap, a holder of ours).
    let held = |w: &NameWant| links.iter().any(|l| l.name == w.name && l.index != w.index);
    if aside.is_empty() && !changing.iter().any(|(_, w)| held(w)) {
        for (link, w) in &changing {
            change(rtnl, ns, link, w, alias(link, w).as_deref())?;
        }
        return Ok(true);
    }
    for (link, w) in &changing {
        if let Some(alias) = alias(link, w) {
            rtnl.set_alias(link.index, &alias)
                .map_err(|e| nl(ns, &format!("set the alias of {}", link.name), e))?;
        }
    }
    for link in changing.iter().map(|(l, _)| *l).chain(aside) {
        rename(rtnl, ns, link, &temp_name(link.index))?;
    }
    for (link, w) in &changing {
        change(rtnl, ns, link, w, None)?;
    }
    Ok(true)
}

/// What [`give_back_name`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GaveBack {
    /// The link was renamed back to the engine's name (from, to).
    Renamed(String, String),
    /// The link found has the engine's name (never renamed, or given back already).
    Unchanged,
    /// No link of that endpoint.
    NotFound,
}

/// Before the engine disconnects an endpoint: its link inside `ns` gets back the name
/// the engine gave it, in one pass on one thread; the link is found by
/// [`link_of_endpoint`] (docs/NAMES.md).
pub async fn give_back_name(
    ns: Netns,
    endpoint: String,
    ip: Option<Ipv4Addr>,
) -> Result<GaveBack, NetnsError> {
    run(ns, move || {
        let mut rtnl = Rtnl::open().map_err(|e| nl(ns, "list links", e))?;
        let links = rtnl.links().map_err(|e| nl(ns, "list links", e))?;
        let Some(link) = link_of_endpoint(&links, &endpoint, ip) else {
            return Ok(GaveBack::NotFound);
        };
        let Some(engine) = engine_name(link).filter(|e| *e != link.name) else {
            return Ok(GaveBack::Unchanged);
        };
        let (from, to) = (link.name.clone(), engine.to_string());
        let want = NameWant {
            index: link.index,
            name: to.clone(),
            endpoint: String::new(),
            mac: None,
        };
        name_in(&mut rtnl, ns, &links, &[want])?;
        Ok(GaveBack::Renamed(from, to))
    })
    .await
}

/// The link of the engine's `endpoint` among `links`: the one whose alias names it,
/// else the one holding `ip` whose alias names no other endpoint (a link the engine
/// forgot keeps its own endpoint's alias).
pub fn link_of_endpoint<'a>(
    links: &'a [NsLink],
    endpoint: &str,
    ip: Option<Ipv4Addr>,
) -> Option<&'a NsLink> {
    let by_alias = links.iter().find(|l| endpoint_of(l) == Some(endpoint));
    by_alias.or_else(|| {
        links.iter().find(|l| {
            ip.is_some_and(|ip| l.ipv4.contains(&ip))
                && endpoint_of(l).is_none_or(|e| e.is_empty() || e == endpoint)
        })
    })
}

fn rename(rtnl: &mut Rtnl, ns: Netns, link: &NsLink, to: &str) -> Result<(), NetnsError> {
    let want = NameWant {
        index: link.index,
        name: to.to_string(),
        endpoint: String::new(),
        mac: None,
    };
    change(rtnl, ns, link, &want, None)
}

/// Gives `link` the wanted name (when it has another) and MAC, and `alias`, in one change.
fn change(
    rtnl: &mut Rtnl,
    ns: Netns,
    link: &NsLink,
    w: &NameWant,
    alias: Option<&str>,
) -> Result<(), NetnsError> {
    let to = w.name.as_str();
    let name = (link.name != to).then_some(to);
    if name.is_none() && w.mac.is_none() && alias.is_none() {
        return Ok(());
    }
    match rtnl.change(link.index, name, w.mac, alias) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(NetnsError::RenameUp {
            ns,
            name: link.name.clone(),
            to: to.to_string(),
        }),
        Err(e) => Err(nl(ns, &format!("rename {} to {to}", link.name), e)),
    }
}

/// Deletes the link `index` inside `ns` (a link the engine forgot, see docs/NAMES.md);
/// already gone is success. Returns the links as they read afterwards.
pub async fn delete_link(ns: Netns, index: u32) -> Result<Vec<NsLink>, NetnsError> {
    run(ns, move || {
        let what = format!("delete link {index}");
        let mut rtnl = Rtnl::open().map_err(|e| nl(ns, &what, e))?;
        match rtnl.delete(index) {
            Err(e) if e.raw_os_error() != Some(libc::ENODEV) => return Err(nl(ns, &what, e)),
            _ => {}
        }
        rtnl.links().map_err(|e| nl(ns, "list links", e))
    })
    .await
}

fn nl(ns: Netns, what: &str, source: std::io::Error) -> NetnsError {
    NetnsError::Netlink {
        ns,
        what: what.to_string(),
        source,
    }
}
