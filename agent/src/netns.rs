//! Work inside a container's network namespace: read its links, set a MAC.
//!
//! Deployment choice: the agent enters the namespace itself (`setns` on
//! `/proc/<pid>/ns/net`). Under systemd it runs as root on the host; as a container it
//! needs the host PID namespace (`pid: host`, so the engine's container PIDs are valid
//! in `/proc`) plus CAP_SYS_ADMIN (setns) and CAP_NET_ADMIN (SIOCSIFHWADDR). This was
//! chosen over a helper container per runtime because it costs no engine call and no
//! image: the engine serialises calls (ARCHITECTURE.md, "Engine versions"), and a helper
//! container would add a create/start/remove per MAC.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so each call runs on a
//! dedicated short-lived thread that is never returned to a pool: a thread left in a
//! container's namespace would poison whatever ran on it next.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;

use nix::sched::{CloneFlags, setns};

use crate::engine::NsLink;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open /proc/{pid}/ns/net: {source} (the agent needs the host PID namespace)")]
    Open {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("enter the network namespace of pid {pid}: {source} (needs CAP_SYS_ADMIN)")]
    Enter { pid: u32, source: nix::Error },
    #[error("list interfaces in the namespace of pid {pid}: {source}")]
    List { pid: u32, source: nix::Error },
    #[error(
        "set the MAC of {ifname} in the namespace of pid {pid}: {source} (needs CAP_NET_ADMIN)"
    )]
    SetMac {
        pid: u32,
        ifname: String,
        source: std::io::Error,
    },
    #[error("invalid MAC {0:?}: want six hex octets, unicast")]
    BadMac(String),
    #[error("invalid interface name {0:?}")]
    BadName(String),
    #[error("namespace worker thread failed: {0}")]
    Thread(String),
}

/// Runs `f` on a new thread that has joined the network namespace of `pid`.
fn in_netns<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| NetnsError::Open { pid, source })?;
    let worker = std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetnsError::Enter { pid, source })?;
            f()
        })
        .map_err(|e| NetnsError::Thread(e.to_string()))?;
    worker
        .join()
        .map_err(|_| NetnsError::Thread("panicked".to_string()))?
}

/// The links inside the container (loopback excluded) with their MAC and IPv4 addresses.
pub fn read_links(pid: u32) -> Result<Vec<NsLink>, NetnsError> {
    in_netns(pid, move || {
        let addrs =
            nix::ifaddrs::getifaddrs().map_err(|source| NetnsError::List { pid, source })?;
        let mut links: BTreeMap<String, NsLink> = BTreeMap::new();
        for a in addrs {
            if a.interface_name == "lo" {
                continue;
            }
            let entry = links
                .entry(a.interface_name.clone())
                .or_insert_with(|| NsLink {
                    name: a.interface_name.clone(),
                    mac: String::new(),
                    ipv4: Vec::new(),
                });
            let Some(addr) = a.address else { continue };
            if let Some(l) = addr.as_link_addr() {
                if let Some(m) = l.addr() {
                    entry.mac = format_mac(m);
                }
            } else if let Some(sin) = addr.as_sockaddr_in() {
                entry.ipv4.push(sin.ip());
            }
        }
        Ok(links.into_values().collect())
    })
}

/// Sets the MAC of `ifname` inside the container, while the link stays up: taking a
/// macvlan link down drops the container's default route (ARCHITECTURE.md).
pub fn set_mac(pid: u32, ifname: &str, mac: &str) -> Result<(), NetnsError> {
    let octets = parse_mac(mac)?;
    let name = CString::new(ifname).map_err(|_| NetnsError::BadName(ifname.to_string()))?;
    if name.as_bytes().len() >= libc::IFNAMSIZ || name.as_bytes().is_empty() {
        return Err(NetnsError::BadName(ifname.to_string()));
    }
    let ifname = ifname.to_string();
    in_netns(pid, move || {
        let err = |source: std::io::Error| NetnsError::SetMac {
            pid,
            ifname: ifname.clone(),
            source,
        };
        // SAFETY: plain socket/ioctl/close on a descriptor we own; `req` is a fully
        // initialised ifreq whose name is NUL-terminated and shorter than IFNAMSIZ.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
                *dst = *src as libc::c_char;
            }
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(octets) {
                *dst = src as libc::c_char;
            }
            let rc = libc::ioctl(fd, libc::SIOCSIFHWADDR as _, &mut req);
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            if rc < 0 {
                return Err(err(e));
            }
        }
        Ok(())
    })
}

/// `aa:bb:cc:dd:ee:ff`, lowercase, as the engine and `ip` print it.
pub fn format_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a unicast MAC in `:` or `-` separated hex.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetnsError> {
    let bad = || NetnsError::BadMac(s.to_string());
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if out[0] & 1 == 1 || out == [0; 6] {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:AA:00:00:00:01").unwrap(),
            [2, 0xaa, 0, 0, 0, 1]
        );
        assert_eq!(
            parse_mac("02-aa-00-00-00-01").unwrap(),
            [2, 0xaa, 0, 0, 0, 1]
        );
        assert!(parse_mac("03:aa:00:00:00:01").is_err(), "multicast refused");
        assert!(parse_mac("00:00:00:00:00:00").is_err());
        assert!(parse_mac("02:aa:00:00:00").is_err());
        assert!(parse_mac("02:aa:00:00:00:0g").is_err());
        assert_eq!(format_mac([2, 0xaa, 0, 0, 0, 1]), "02:aa:00:00:00:01");
    }

    #[test]
    fn missing_process_is_a_clear_error() {
        let e = read_links(u32::MAX - 1).unwrap_err();
        assert!(matches!(e, NetnsError::Open { .. }), "{e}");
    }
}
