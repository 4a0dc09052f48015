//! The Ethernet/IPv4/UDP frames that carry DHCP messages on the packet socket, and
//! the ARP reply the client gives for a leased address while it renews.

use std::net::Ipv4Addr;

use ipc::MacAddr;

use super::packet::{CLIENT_PORT, DecodeError, SERVER_PORT};

/// The Internet checksum (RFC 1071) over `parts` in sequence.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &byte in *p {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where a frame goes: link and IP addresses on both ends.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub src_mac: MacAddr,
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
}

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// An Ethernet frame carrying `payload` from the DHCP client port to the server port.
pub fn frame(route: &Route, payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total as usize);
    f.extend_from_slice(&route.dst_mac);
    f.extend_from_slice(&route.src_mac.octets());
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&route.src_ip.octets());
    ip[16..20].copy_from_slice(&route.dst_ip.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let pseudo = pseudo_header(route.src_ip, route.dst_ip, udp_len);
    let c = match checksum(&[&pseudo, &udp, payload]) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f.extend_from_slice(payload);
    f
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = 17;
    p[10..12].copy_from_slice(&udp_len.to_be_bytes());
    p
}

/// A received frame's sender MAC and its DHCP payload (UDP to port 68).
pub fn unframe(f: &[u8]) -> Result<([u8; 6], &[u8]), DecodeError> {
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] {
        return Err(DecodeError::NotDhcpFrame);
    }
    let src_mac: [u8; 6] = f[6..12].try_into().expect("6 bytes");
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl + 8 {
        return Err(DecodeError::BadIp("version or header length"));
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl + 8 || total > ip.len() {
        return Err(DecodeError::BadIp("total length"));
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DecodeError::BadIp("fragment"));
    }
    if ip[9] != 17 {
        return Err(DecodeError::NotDhcpFrame);
    }
    if checksum(&[&ip[..ihl]]) != 0 {
        return Err(DecodeError::BadIp("header checksum"));
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if u16::from_be_bytes([udp[2], udp[3]]) != CLIENT_PORT {
        return Err(DecodeError::NotDhcpFrame);
    }
    if udp_len < 8 || udp_len > udp.len() {
        return Err(DecodeError::BadIp("UDP length"));
    }
    // The UDP checksum is not checked: a frame from a local veth peer reaches a packet
    // socket before the offloaded checksum is filled in (CHECKSUM_PARTIAL), so a
    // correct frame would look broken. The IP header checksum is always complete.
    let udp = &udp[..udp_len];
    Ok((src_mac, &udp[8..]))
}

/// If `f` is an ARP request for `ip`, the reply saying `mac` holds it.
pub fn arp_reply(f: &[u8], ip: Ipv4Addr, mac: MacAddr) -> Option<Vec<u8>> {
    let a = f.get(14..42)?;
    if f[12..14] != [0x08, 0x06] || a[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || a[24..28] != ip.octets() {
        return None;
    }
    let (sha, spa) = (&a[8..14], &a[14..18]);
    let mut r = Vec::with_capacity(42);
    r.extend_from_slice(sha);
    r.extend_from_slice(&mac.octets());
    r.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    r.extend_from_slice(&mac.octets());
    r.extend_from_slice(&ip.octets());
    r.extend_from_slice(sha);
    r.extend_from_slice(spa);
    Some(r)
}
