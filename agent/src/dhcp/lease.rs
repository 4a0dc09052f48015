//! What a lease is once we accept it, and the checks a server's reply must pass first.
//!
//! Every reply is checked before anything of it is used: a reply for another client
//! (xid, chaddr), a broken or hostile lease (0 s, no server id, an address that is the
//! network or broadcast address, a router outside the subnet) is refused with the
//! reason, so the caller logs it and keeps waiting. Nothing here panics on input.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use ipc::MacAddr;
use serde::{Deserialize, Serialize};

use super::packet::{DecodeError, Message, MsgType, opt};

/// A lease as the agent keeps it (`dhcp_leases.json`) and hands to reconcile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    pub server_id: Ipv4Addr,
    /// When the server's ACK arrived (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub obtained_at: SystemTime,
    /// Seconds, from the ACK; T1/T2 are the server's or RFC 2131's 50 % / 87.5 %.
    pub lease_time: u32,
    pub t1: u32,
    pub t2: u32,
    /// Option 61 in hex: `01` + the MAC, as busybox udhcpc sends it.
    pub client_id: String,
    pub mac: MacAddr,
    pub parent: String,
}

impl LeaseRecord {
    pub fn renew_at(&self) -> SystemTime {
        self.obtained_at + Duration::from_secs(self.t1.into())
    }
    pub fn rebind_at(&self) -> SystemTime {
        self.obtained_at + Duration::from_secs(self.t2.into())
    }
    pub fn expires_at(&self) -> SystemTime {
        self.obtained_at + Duration::from_secs(self.lease_time.into())
    }
    /// The address with its prefix, e.g. `10.77.1.50/24`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
    }
}

/// The client id busybox udhcpc sends: hardware type 1 (Ethernet), then the MAC.
pub fn client_id(mac: MacAddr) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&mac.octets());
    v
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why a reply was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("malformed: {0}")]
    Malformed(#[from] DecodeError),
    #[error("not a BOOTREPLY for an Ethernet client")]
    NotReply,
    #[error("transaction id {got:#010x}, ours is {want:#010x}")]
    Xid { got: u32, want: u32 },
    #[error("for client hardware address {0}, not ours")]
    OtherClient(String),
    #[error("a {0:?}, not expected now")]
    Unexpected(MsgType),
    #[error("no server identifier (option 54)")]
    NoServerId,
    #[error("no subnet mask (option 1)")]
    NoMask,
    #[error("subnet mask {0} is not a contiguous prefix")]
    BadMask(Ipv4Addr),
    #[error("lease time of 0 s")]
    ZeroLease,
    #[error("no lease time (option 51)")]
    NoLeaseTime,
    #[error("address {0} is not a usable host address")]
    BadAddress(Ipv4Addr),
    #[error("address {addr} is the network or broadcast address of /{prefix}")]
    NetworkOrBroadcast { addr: Ipv4Addr, prefix: u8 },
    #[error("router {router} is outside {addr}/{prefix}")]
    RouterOutside {
        router: Ipv4Addr,
        addr: Ipv4Addr,
        prefix: u8,
    },
}

/// Checks that `m` answers our transaction `xid` for `mac`; returns its type.
pub fn check_reply(m: &Message, xid: u32, mac: MacAddr) -> Result<MsgType, Refused> {
    if m.op != 2 || m.htype != 1 || m.hlen != 6 {
        return Err(Refused::NotReply);
    }
    if m.xid != xid {
        return Err(Refused::Xid {
            got: m.xid,
            want: xid,
        });
    }
    if m.chaddr[..6] != mac.octets() {
        return Err(Refused::OtherClient(hex(&m.chaddr[..6])));
    }
    let kind = m.msg_type().ok_or(DecodeError::NoType)?;
    match kind {
        MsgType::Offer | MsgType::Ack | MsgType::Nak => {}
        other => return Err(Refused::Unexpected(other)),
    }
    if m.addr(opt::SERVER_ID)?.is_none() {
        return Err(Refused::NoServerId);
    }
    Ok(kind)
}

/// The lease an OFFER or ACK describes, if it is one we may use.
pub fn lease_of(
    m: &Message,
    mac: MacAddr,
    parent: &str,
    now: SystemTime,
) -> Result<LeaseRecord, Refused> {
    let server_id = m.addr(opt::SERVER_ID)?.ok_or(Refused::NoServerId)?;
    let mask = m.addr(opt::SUBNET_MASK)?.ok_or(Refused::NoMask)?;
    let bits = u32::from(mask);
    let prefix = bits.leading_ones() as u8;
    if bits.count_ones() != u32::from(prefix) || !(8..=30).contains(&prefix) {
        return Err(Refused::BadMask(mask));
    }
    let addr = m.yiaddr;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_loopback() || addr.is_multicast() {
        return Err(Refused::BadAddress(addr));
    }
    let a = u32::from(addr);
    if a & !bits == 0 || a & !bits == !bits {
        return Err(Refused::NetworkOrBroadcast { addr, prefix });
    }
    let router = m.addrs(opt::ROUTER)?.first().copied();
    if let Some(r) = router {
        if u32::from(r) & bits != a & bits || r == addr {
            return Err(Refused::RouterOutside {
                router: r,
                addr,
                prefix,
            });
        }
    }
    let lease_time = m.u32(opt::LEASE_TIME)?.ok_or(Refused::NoLeaseTime)?;
    if lease_time == 0 {
        return Err(Refused::ZeroLease);
    }
    let (t1, t2) = timers(lease_time, m.u32(opt::T1)?, m.u32(opt::T2)?);
    Ok(LeaseRecord {
        address: addr,
        prefix,
        router,
        dns: m.addrs(opt::DNS)?,
        server_id,
        obtained_at: now,
        lease_time,
        t1,
        t2,
        client_id: hex(&client_id(mac)),
        mac,
        parent: parent.to_string(),
    })
}

/// T1 and T2 as the server gave them when they make sense (0 < T1 < T2 < lease),
/// else RFC 2131's defaults of 50 % and 87.5 % of the lease.
fn timers(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
    let d1 = lease / 2;
    let d2 = (u64::from(lease) * 7 / 8) as u32;
    let t2 = t2.filter(|&t| t > 0 && t < lease).unwrap_or(d2);
    let t1 = t1
        .filter(|&t| t > 0 && t < t2)
        .unwrap_or(d1.min(t2.saturating_sub(1)).max(1));
    (t1, t2.max(t1))
}
