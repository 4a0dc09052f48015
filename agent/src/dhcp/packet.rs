//! DHCPv4 messages (RFC 2131/2132); their frames are in `frame.rs`.
//!
//! Our own codec rather than a crate: the client needs a dozen options, and the DHCP
//! crates on the registry pull a DNS library (and its Unicode tables) for the options
//! we never use. Decoding is strict and total: anything from the wire that does not
//! parse is an error value, never a panic.

use std::net::Ipv4Addr;

use ipc::MacAddr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// op + htype + hlen + hops + xid + secs + flags + 4 addresses + chaddr + sname + file.
const FIXED: usize = 236;

pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MSG_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_SIZE: u8 = 57;
    pub const T1: u8 = 58;
    pub const T2: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MsgType {
    fn from_u8(v: u8) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {0} bytes is shorter than a DHCP header and cookie")]
    Short(usize),
    #[error("no DHCP magic cookie")]
    NoCookie,
    #[error("option {code} claims {len} bytes past the end of the {field} field")]
    Overflow {
        code: u8,
        len: usize,
        field: &'static str,
    },
    #[error("options in the {0} field do not end with an END option")]
    NoEnd(&'static str),
    #[error("option {0} appears with an unusable length {1}")]
    BadLength(u8, usize),
    #[error("no DHCP message type option (or an unknown type)")]
    NoType,
    #[error("not an IPv4/UDP frame to the DHCP client port")]
    NotDhcpFrame,
    #[error("IPv4 header malformed: {0}")]
    BadIp(&'static str),
}

/// One decoded (or to-be-encoded) DHCP message; options kept as raw TLVs in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub hlen: u8,
    pub htype: u8,
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// A client request (op 1) of `kind` from `mac`, options to be added.
    pub fn request(kind: MsgType, xid: u32, mac: MacAddr) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac.octets());
        Message {
            op: 1,
            xid,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            hlen: 6,
            htype: 1,
            options: vec![(opt::MSG_TYPE, vec![kind as u8])],
        }
    }

    pub fn push(&mut self, code: u8, value: impl Into<Vec<u8>>) -> &mut Self {
        self.options.push((code, value.into()));
        self
    }

    /// The first option `code` (options split over several TLVs are joined, RFC 3396).
    pub fn option(&self, code: u8) -> Option<Vec<u8>> {
        let mut parts = self.options.iter().filter(|(c, _)| *c == code).peekable();
        parts.peek()?;
        Some(parts.flat_map(|(_, v)| v.iter().copied()).collect())
    }

    pub fn msg_type(&self) -> Option<MsgType> {
        match self.option(opt::MSG_TYPE)?.as_slice() {
            [t] => MsgType::from_u8(*t),
            _ => None,
        }
    }

    /// An option holding exactly one IPv4 address.
    pub fn addr(&self, code: u8) -> Result<Option<Ipv4Addr>, DecodeError> {
        match self.option(code) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
            Some(v) => Err(DecodeError::BadLength(code, v.len())),
        }
    }

    /// An option holding a list of IPv4 addresses (at least one).
    pub fn addrs(&self, code: u8) -> Result<Vec<Ipv4Addr>, DecodeError> {
        match self.option(code) {
            None => Ok(Vec::new()),
            Some(v) if !v.is_empty() && v.len() % 4 == 0 => Ok(v
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect()),
            Some(v) => Err(DecodeError::BadLength(code, v.len())),
        }
    }

    /// An option holding one 32-bit number (seconds).
    pub fn u32(&self, code: u8) -> Result<Option<u32>, DecodeError> {
        match self.option(code) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))),
            Some(v) => Err(DecodeError::BadLength(code, v.len())),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(300);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, 0]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&(if self.broadcast { 0x8000u16 } else { 0 }).to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.resize(FIXED, 0); // sname and file stay empty
        b.extend_from_slice(&MAGIC);
        for (code, value) in &self.options {
            // Values over 255 bytes are split into several TLVs (RFC 3396).
            for chunk in value.chunks(255).chain(value.is_empty().then_some(&[][..])) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(opt::END);
        // Some servers drop BOOTP messages under 300 bytes.
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < FIXED + MAGIC.len() {
            return Err(DecodeError::Short(b.len()));
        }
        if b[FIXED..FIXED + 4] != MAGIC {
            return Err(DecodeError::NoCookie);
        }
        let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&b[28..44]);
        let mut options = Vec::new();
        parse_options(&b[FIXED + 4..], "options", &mut options)?;
        let overload = options
            .iter()
            .find(|(c, _)| *c == opt::OVERLOAD)
            .map(|(_, v)| v.clone());
        match overload.as_deref() {
            None => {}
            // RFC 2131 4.1: options go on in `file` (1), `sname` (2), or both (3).
            Some([o @ 1..=3]) => {
                if o & 1 != 0 {
                    parse_options(&b[108..236], "file", &mut options)?;
                }
                if o & 2 != 0 {
                    parse_options(&b[44..108], "sname", &mut options)?;
                }
            }
            Some(v) => return Err(DecodeError::BadLength(opt::OVERLOAD, v.len())),
        }
        let m = Message {
            op: b[0],
            htype: b[1],
            hlen: b[2],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            secs: u16::from_be_bytes([b[8], b[9]]),
            broadcast: b[10] & 0x80 != 0,
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr,
            options,
        };
        m.msg_type().ok_or(DecodeError::NoType)?;
        Ok(m)
    }
}

fn parse_options(
    b: &[u8],
    field: &'static str,
    out: &mut Vec<(u8, Vec<u8>)>,
) -> Result<(), DecodeError> {
    let mut i = 0;
    while i < b.len() {
        let code = b[i];
        match code {
            opt::PAD => i += 1,
            opt::END => return Ok(()),
            _ => {
                let len = *b.get(i + 1).ok_or(DecodeError::Overflow {
                    code,
                    len: 1,
                    field,
                })? as usize;
                let value =
                    b.get(i + 2..i + 2 + len)
                        .ok_or(DecodeError::Overflow { code, len, field })?;
                out.push((code, value.to_vec()));
                i += 2 + len;
            }
        }
    }
    Err(DecodeError::NoEnd(field))
}

pub use super::frame::{BROADCAST_MAC, Route, arp_reply, frame, unframe};
