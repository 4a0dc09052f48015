//! The client's one socket: AF_PACKET on the parent link, raw Ethernet frames.
//!
//! Raw frames let every message carry the vNIC's MAC as its source and, for RENEW and
//! RELEASE, the leased address as its IPv4 source, though the host holds neither.
//! Bound with ETH_P_ALL so frames are seen before a macvlan child on the parent
//! takes them (protocol taps run before the rx handler; ETH_P_IP taps after it).
//! A classic BPF filter keeps only UDP to port 68 for the vNIC's chaddr, and ARP; PACKET_MR_UNICAST makes a
//! real NIC accept frames to the vNIC's MAC (a veth passes them all anyway).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipc::MacAddr;
use tokio::io::unix::AsyncFd;

pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
}

/// ETH_P_ALL (0x0003) and ETH_P_IP in network order.
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;

/// UDP to port 68 whose BOOTP chaddr is `mac`, and ARP. Other clients' replies on a
/// busy LAN are dropped in the kernel: N clients on one parent do not wake N times
/// for every reply.
fn filter(mac: MacAddr) -> [libc::sock_filter; 16] {
    let s = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let m = mac.octets();
    let head = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
    let tail = u32::from(u16::from_be_bytes([m[4], m[5]]));
    [
        s(0x28, 0, 0, 12),      // 0  ldh [12]           ethertype
        s(0x15, 12, 0, 0x0806), // 1  jeq ARP -> accept
        s(0x15, 0, 12, 0x0800), // 2  jeq IPv4, else drop
        s(0x30, 0, 0, 23),      // 3  ldb [23]           IP protocol
        s(0x15, 0, 10, 17),     // 4  jeq UDP, else drop
        s(0x28, 0, 0, 20),      // 5  ldh [20]           fragment offset
        s(0x45, 8, 0, 0x1fff),  // 6  jset -> drop fragments
        s(0xb1, 0, 0, 14),      // 7  ldxb 4*([14]&0xf)  IP header length
        s(0x48, 0, 0, 16),      // 8  ldh [x+16]         UDP destination port
        s(0x15, 0, 5, 68),      // 9  jeq 68, else drop
        s(0x40, 0, 0, 50),      // 10 ld [x+50]          chaddr[0..4]
        s(0x15, 0, 3, head),    // 11
        s(0x48, 0, 0, 54),      // 12 ldh [x+54]         chaddr[4..6]
        s(0x15, 0, 1, tail),    // 13
        s(0x06, 0, 0, 0x40000), // 14 accept
        s(0x06, 0, 0, 0),       // 15 drop
    ]
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T, what: &str) -> io::Result<()> {
    // SAFETY: `v` points to a live T of the given size for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(r, what).map(drop)
}

fn link_addr(ifindex: i32, protocol: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol.to_be();
    sa.sll_ifindex = ifindex;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&mac);
    sa
}

impl PacketSocket {
    /// Opens the socket on `parent` in the calling thread's network namespace.
    pub fn open(parent: &str, mac: MacAddr) -> io::Result<Self> {
        let name = std::ffi::CString::new(parent)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in link name"))?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no link {parent} in this network namespace"),
            ));
        }
        // Protocol 0 receives nothing until bind, so no unfiltered frame is queued.
        // SAFETY: plain socket(2).
        let raw = check(
            unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            },
            "socket(AF_PACKET): needs CAP_NET_RAW",
        )?;
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = filter(mac);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut _,
        };
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
            "attach BPF filter",
        )?;
        let sa = link_addr(ifindex, ETH_P_ALL, [0; 6]);
        // SAFETY: `sa` is a valid sockaddr_ll of the size given.
        check(
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            },
            &format!("bind to {parent}"),
        )?;
        // SAFETY: packet_mreq is plain data.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = ifindex;
        mr.mr_type = libc::PACKET_MR_UNICAST as u16;
        mr.mr_alen = 6;
        mr.mr_address[..6].copy_from_slice(&mac.octets());
        if let Err(e) = setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mr,
            "unicast membership",
        ) {
            tracing::warn!(%parent, %mac, error = %e, "cannot add the vNIC MAC to the parent's unicast filter; replies may be missed on a filtering NIC");
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd and closed only when it drops
        // (after deregistration), the condition `register` asks for.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends one Ethernet frame (`frame[0..6]` is its destination).
    pub async fn send(&self, frame: &[u8]) -> io::Result<()> {
        let dst: [u8; 6] = frame[..6].try_into().expect("a frame has a header");
        let sa = link_addr(self.ifindex, ETH_P_IP, dst);
        loop {
            let mut guard = self.fd.writable().await?;
            // SAFETY: frame and sa are valid for the call.
            let r = guard.try_io(|fd| {
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&sa as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }

    /// Receives one frame that arrived from the link (not our own outgoing ones).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: sockaddr_ll is plain data; buf and sa are valid for the call.
                let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut sa as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((n as usize, sa.sll_pkttype))
                }
            });
            match r {
                Ok(Ok((_, t))) if t == libc::PACKET_OUTGOING => continue,
                Ok(Ok((n, _))) => return Ok(n),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
