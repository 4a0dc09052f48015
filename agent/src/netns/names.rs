//! Naming links inside a namespace in one pass (docs/NAMES.md): every link asked for
//! gets its name even when the names are swapped among them (`eth1` -> `eth0` while
//! `eth0` -> `int0`), because each goes through a temporary name first. The first time
//! a link is renamed, the name it had (the engine's) is kept in its alias
//! (IFLA_IFALIAS), on the link itself, so it survives an agent restart and the link
//! can be given back that name before the engine looks it up again.

use std::collections::BTreeSet;

use super::rtnl::Rtnl;
use super::{Netns, NetnsError, NsLink, check_name, run};

/// What the alias of a link the agent renamed starts with; the engine's name follows.
pub const ALIAS_PREFIX: &str = "edgenet:";

/// The name the engine gave a link the agent renamed (from its alias); `None` for a
/// link the agent never renamed.
pub fn engine_name(link: &NsLink) -> Option<&str> {
    link.alias.as_deref()?.strip_prefix(ALIAS_PREFIX)
}

/// Links between two names carry `edn<ifindex>`: not a name the engine (`eth<N>`) or a
/// vNIC (refused at validation) uses.
pub const TEMP_PREFIX: &str = "edn";

fn temp_name(index: u32) -> String {
    format!("{TEMP_PREFIX}{index}")
}

/// Gives each link (by index) its wanted name inside `ns`, recording the engine's name
/// in the alias of any link renamed for the first time. A link of ours (its alias
/// names its engine name) that holds a wanted name is moved aside to its temporary name (a later pass
/// names it); any other holder is an error, and nothing is renamed. Returns the links
/// as they read afterwards. Live renames need Linux 6.2 or later
/// ([`NetnsError::RenameUp`] before).
pub async fn name_links(ns: Netns, wants: Vec<(u32, String)>) -> Result<Vec<NsLink>, NetnsError> {
    for (_, to) in &wants {
        check_name(to)?;
    }
    run(ns, move || {
        let mut rtnl = Rtnl::open().map_err(|e| nl(ns, "list links", e))?;
        let links = rtnl.links().map_err(|e| nl(ns, "list links", e))?;
        let mut changing: Vec<(&NsLink, &str)> = Vec::new();
        for (index, to) in &wants {
            let link =
                links
                    .iter()
                    .find(|l| l.index == *index)
                    .ok_or_else(|| NetnsError::NoLink {
                        ns,
                        name: format!("ifindex {index}"),
                    })?;
            if link.name != *to {
                changing.push((link, to));
            }
        }
        if changing.is_empty() {
            return Ok(links);
        }
        let moving: BTreeSet<u32> = changing.iter().map(|(l, _)| l.index).collect();
        let mut aside = Vec::new();
        for (link, to) in &changing {
            let Some(holder) = links
                .iter()
                .find(|h| h.name == *to && !moving.contains(&h.index))
            else {
                continue;
            };
            if engine_name(holder).is_none() {
                return Err(NetnsError::NameTaken {
                    ns,
                    link: link.name.clone(),
                    to: to.to_string(),
                    holder: holder.name.clone(),
                });
            }
            aside.push(holder);
        }
        for (link, _) in &changing {
            if engine_name(link).is_none() && !link.name.starts_with(TEMP_PREFIX) {
                rtnl.set_alias(link.index, &format!("{ALIAS_PREFIX}{}", link.name))
                    .map_err(|e| nl(ns, &format!("set the alias of {}", link.name), e))?;
            }
        }
        for link in changing.iter().map(|(l, _)| *l).chain(aside) {
            rename(&mut rtnl, ns, link, &temp_name(link.index))?;
        }
        for (link, to) in &changing {
            rename(&mut rtnl, ns, link, to)?;
        }
        rtnl.links().map_err(|e| nl(ns, "list links", e))
    })
    .await
}

fn rename(rtnl: &mut Rtnl, ns: Netns, link: &NsLink, to: &str) -> Result<(), NetnsError> {
    if link.name == to {
        return Ok(());
    }
    match rtnl.rename(link.index, to) {
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
