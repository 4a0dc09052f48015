//! Work inside a network namespace: read its links, set a link's MAC, rename it, set
//! it up or down (all over rtnetlink, see `rtnl.rs`), and run code inside it, either
//! once ([`run`]) or as a long-lived task with its own runtime ([`spawn_in`], for a
//! DHCP client). No engine type appears here: the engine adapter converts.
//!
//! Deployment choice: the agent enters the namespace itself (`setns` on
//! `/proc/<pid>/ns/net`). Under systemd it runs as root on the host; as a container it
//! needs the host PID namespace (`pid: host`, so the engine's container PIDs are valid
//! in `/proc`) plus CAP_SYS_ADMIN (setns) and CAP_NET_ADMIN (RTM_SETLINK); the host's
//! own namespace it reaches through netmon's process, not pid 1's (see
//! [`Netns::of_socket_server`]). This was
//! chosen over a helper container per runtime because it costs no engine call and no
//! image: the engine serialises calls (ARCHITECTURE.md, "Engine versions"), and a helper
//! container would add a create/start/remove per MAC.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so all work runs on a
//! dedicated thread that is never returned to a pool: a thread left in a container's
//! namespace would poison whatever ran on it next.

mod names;
mod rtnl;

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use ipc::MacAddr;
use nix::sched::{CloneFlags, setns};
use serde::Serialize;

pub use names::{
    ALIAS_PREFIX, GaveBack, NameWant, TEMP_PREFIX, delete_link, endpoint_of, engine_name,
    give_back_name, link_of_endpoint, name_links,
};
use rtnl::Rtnl;

/// A network namespace to work in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netns {
    /// The host's: `/proc/1/ns/net` (right under systemd); not entered when it is the
    /// namespace the agent already runs in. Where pid 1 cannot be inspected (a sandbox
    /// denying ptrace access to it, or a container without CAP_SYS_PTRACE, see
    /// [`Netns::of_socket_server`]), the agent's own process namespace: right for an
    /// agent on the host, wrong in a container, whose DHCP clients therefore use
    /// netmon's namespace instead.
    Host,
    /// A process's, e.g. a running container's: `/proc/<pid>/ns/net`.
    Pid(u32),
}

impl Netns {
    fn path(&self) -> String {
        match self {
            Netns::Host => "/proc/1/ns/net".to_string(),
            Netns::Pid(pid) => format!("/proc/{pid}/ns/net"),
        }
    }

    /// The namespace file to enter; `None` when this thread is already in it.
    fn open(&self) -> Result<Option<File>, NetnsError> {
        let open_err = |source| NetnsError::Open { ns: *self, source };
        let file = match File::open(self.path()) {
            Err(e) if *self == Netns::Host && e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::debug!(error = %e, "pid 1's namespace is not ours to see; the host is the agent's own");
                File::open("/proc/self/ns/net")
            }
            other => other,
        }
        .map_err(open_err)?;
        let here = std::fs::metadata("/proc/thread-self/ns/net").map_err(open_err)?;
        let there = file.metadata().map_err(open_err)?;
        if (here.dev(), here.ino()) == (there.dev(), there.ino()) {
            return Ok(None);
        }
        Ok(Some(file))
    }
}

impl Netns {
    /// The namespace of the process serving the Unix stream socket at `path` (its
    /// SO_PEERCRED pid): for netmon's socket, the namespace whose links netmon reports,
    /// which is where the parents are. The agent as a container reaches the host's
    /// namespace this way: pid 1's cannot be opened from a container unless it has
    /// CAP_SYS_PTRACE (the kernel lets a process open another's namespace only when it
    /// holds every capability the other holds, or CAP_SYS_PTRACE), while netmon,
    /// running with no capability on the host network, can be.
    pub fn of_socket_server(path: &Path) -> std::io::Result<Netns> {
        let stream = UnixStream::connect(path)?;
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(std::io::Error::from)?;
        match u32::try_from(cred.pid()) {
            Ok(pid) if pid > 0 => Ok(Netns::Pid(pid)),
            _ => Err(std::io::Error::other(format!(
                "the server of {} is not in this PID namespace (pid {})",
                path.display(),
                cred.pid()
            ))),
        }
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Host => write!(f, "the host's network namespace"),
            Netns::Pid(pid) => write!(f, "the network namespace of pid {pid}"),
        }
    }
}

/// An interface as it really is inside a namespace (loopback is never listed).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct NsLink {
    pub index: u32,
    pub name: String,
    /// `None` for a link without an Ethernet address.
    pub mac: Option<MacAddr>,
    pub ipv4: Vec<Ipv4Addr>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The link's alias (IFLA_IFALIAS); the agent keeps there the name the engine gave
    /// a link it renamed (see `names.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open {}: {source} (the agent needs the host PID namespace)", .ns.path())]
    Open {
        ns: Netns,
        #[source]
        source: std::io::Error,
    },
    #[error("enter {ns}: {source} (needs CAP_SYS_ADMIN)")]
    Enter { ns: Netns, source: nix::Error },
    #[error("{what} in {ns}: {source} (needs CAP_NET_ADMIN for changes)")]
    Netlink {
        ns: Netns,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no link named {name:?} in {ns}")]
    NoLink { ns: Netns, name: String },
    #[error(
        "rename {name} to {to} in {ns}: the link is up and this kernel (before 6.2) refuses; set it down first"
    )]
    RenameUp { ns: Netns, name: String, to: String },
    #[error("cannot name {link} {to:?} in {ns}: {holder} holds that name and is not ours to move")]
    NameTaken {
        ns: Netns,
        link: String,
        to: String,
        holder: String,
    },
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/', ':' or whitespace")]
    BadName(String),
    #[error("namespace worker thread for {ns}: {reason}")]
    Thread { ns: Netns, reason: String },
}

/// Runs `f` on a new thread that has entered `ns` and ends with `f`: the thread is
/// never reused outside the namespace.
pub async fn run<T: Send + 'static>(
    ns: Netns,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let file = ns.open()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(thread_name(ns, "netns"))
        .spawn(move || {
            let r = enter(ns, file.as_ref()).and_then(|()| f());
            let _ = tx.send(r);
        })
        .map_err(|e| thread_err(ns, e.to_string()))?;
    rx.await
        .map_err(|_| thread_err(ns, "panicked".to_string()))?
}

/// A long-lived task inside a namespace, on a thread of its own running a
/// current-thread tokio runtime (see [`spawn_in`]).
pub struct NsTask<T> {
    ns: Netns,
    done: tokio::sync::oneshot::Receiver<T>,
    thread: std::thread::JoinHandle<()>,
}

impl<T> NsTask<T> {
    /// Waits for the task's future to finish.
    pub async fn join(self) -> Result<T, NetnsError> {
        let r = self.done.await;
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
        r.map_err(|_| thread_err(self.ns, "panicked".to_string()))
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts `make()`'s future on a new thread named `name` that has entered `ns`, under
/// a current-thread runtime of its own (sockets it opens belong to `ns`). Returns once
/// the thread is inside, so a namespace that cannot be entered is an error here. The
/// thread ends with the future. Stop it through a channel or token the future watches.
pub fn spawn_in<F, Fut>(ns: Netns, name: &str, make: F) -> Result<NsTask<Fut::Output>, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    let file = ns.open()?;
    let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = enter(ns, file.as_ref()).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| thread_err(ns, format!("runtime: {e}")))
            });
            let rt = match rt {
                Ok(rt) => {
                    let _ = entered_tx.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = entered_tx.send(Err(e));
                    return;
                }
            };
            let out = rt.block_on(make());
            let _ = done_tx.send(out);
        })
        .map_err(|e| thread_err(ns, e.to_string()))?;
    match entered_rx.recv() {
        Ok(Ok(())) => Ok(NsTask { ns, done, thread }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(thread_err(ns, "ended before entering".to_string())),
    }
}

fn enter(ns: Netns, file: Option<&File>) -> Result<(), NetnsError> {
    match file {
        Some(f) => {
            setns(f, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { ns, source })
        }
        None => Ok(()),
    }
}

fn thread_name(ns: Netns, what: &str) -> String {
    match ns {
        Netns::Host => format!("{what}-host"),
        Netns::Pid(pid) => format!("{what}-{pid}"),
    }
}

fn thread_err(ns: Netns, reason: String) -> NetnsError {
    NetnsError::Thread { ns, reason }
}

/// Interface names: 1 to 15 bytes, no '/', ':' or whitespace (the kernel's rule).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b':')
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(NetnsError::BadName(name.to_string()))
    }
}

/// Opens rtnetlink in `ns`, finds the link `name` and runs `f` on it.
async fn with_link<T: Send + 'static>(
    ns: Netns,
    name: &str,
    what: String,
    f: impl FnOnce(&mut Rtnl, &NsLink) -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetnsError> {
    check_name(name)?;
    let name = name.to_string();
    run(ns, move || {
        let nl = |source| NetnsError::Netlink {
            ns,
            what: what.clone(),
            source,
        };
        let mut rtnl = Rtnl::open().map_err(nl)?;
        let links = rtnl.links().map_err(nl)?;
        let link = links
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| NetnsError::NoLink {
                ns,
                name: name.clone(),
            })?;
        f(&mut rtnl, link).map_err(nl)
    })
    .await
}

/// The links inside `ns` (loopback excluded) with their MAC and IPv4 addresses.
pub async fn read_links(ns: Netns) -> Result<Vec<NsLink>, NetnsError> {
    run(ns, move || {
        let nl = |source| NetnsError::Netlink {
            ns,
            what: "list links".to_string(),
            source,
        };
        Rtnl::open().and_then(|mut r| r.links()).map_err(nl)
    })
    .await
}

/// Sets the MAC of `ifname` while the link stays as it is (up stays up): taking a
/// macvlan link down drops the container's default route (ARCHITECTURE.md). Returns
/// the links as they read afterwards.
pub async fn set_mac(ns: Netns, ifname: &str, mac: MacAddr) -> Result<Vec<NsLink>, NetnsError> {
    with_link(
        ns,
        ifname,
        format!("set the MAC of {ifname} to {mac}"),
        move |r, l| {
            r.set_mac(l.index, mac)?;
            r.links()
        },
    )
    .await
}

/// Renames `ifname` to `to`. Linux before 6.2 refuses to rename a link that is up
/// (EBUSY, reported as [`NetnsError::RenameUp`]): set it down first ([`set_up`]), then
/// up again, and restore its routes (down drops them). 6.2 and later rename it live.
pub async fn rename(ns: Netns, ifname: &str, to: &str) -> Result<(), NetnsError> {
    check_name(to)?;
    let target = to.to_string();
    let r = with_link(
        ns,
        ifname,
        format!("rename {ifname} to {to}"),
        move |r, l| r.rename(l.index, &target),
    )
    .await;
    match r {
        Err(NetnsError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
            Err(NetnsError::RenameUp {
                ns,
                name: ifname.to_string(),
                to: to.to_string(),
            })
        }
        other => other,
    }
}

/// Sets `ifname` administratively up or down.
pub async fn set_up(ns: Netns, ifname: &str, up: bool) -> Result<(), NetnsError> {
    let what = format!("set {ifname} {}", if up { "up" } else { "down" });
    with_link(ns, ifname, what, move |r, l| r.set_up(l.index, up)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_process_is_a_clear_error() {
        let e = read_links(Netns::Pid(u32::MAX - 1)).await.unwrap_err();
        assert!(matches!(e, NetnsError::Open { .. }), "{e}");
        assert!(e.to_string().contains("/proc/4294967294/ns/net"), "{e}");
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("a:1"));
    }
}
