//! Subnets for the runtimes' `NAME_internal` bridges.
//!
//! Left to the engine, each internal bridge takes one of its default address pools
//! (about 30 on a default engine: 172.17-31.0.0/16 and 192.168.0.0/16 in /20s), which
//! caps a host at about 29 runtimes. The agent instead gives each internal network a
//! small subnet from a range of its own, `--internal-pool` (default 198.18.0.0/15, the
//! range RFC 2544 sets aside for benchmarking: not routed, not in the engine's
//! defaults, and not a range a LAN hands out; see the README), cut into /28s: room for
//! the runtime, the agent's own container and the bridge's gateway, and 8,192 runtimes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnetwork::Ipv4Network;

pub const DEFAULT_POOL: &str = "198.18.0.0/15";
/// Prefix length of each internal network.
pub const SUBNET_PREFIX: u8 = 28;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "--internal-pool {0}: use a network of /{SUBNET_PREFIX} or larger, e.g. {DEFAULT_POOL}"
    )]
    TooSmall(Ipv4Network),
    #[error(
        "every /{SUBNET_PREFIX} of the internal pool {0} is taken: delete runtimes or give a larger --internal-pool"
    )]
    Exhausted(Ipv4Network),
}

/// Checks a configured pool; the network address is taken from it (`198.18.3.7/15`
/// means `198.18.0.0/15`).
pub fn parse_pool(s: &str) -> Result<Ipv4Network, String> {
    let n: Ipv4Network = s
        .parse()
        .map_err(|e| format!("{s:?}: {e} (e.g. {DEFAULT_POOL})"))?;
    let n = Ipv4Network::new(n.network(), n.prefix()).map_err(|e| e.to_string())?;
    if n.prefix() > SUBNET_PREFIX {
        return Err(PoolError::TooSmall(n).to_string());
    }
    Ok(n)
}

/// The first /28 of `pool` that overlaps none of `taken` (every subnet the engine's
/// networks already use, ours and others').
pub fn allocate(pool: Ipv4Network, taken: &[Ipv4Network]) -> Result<Ipv4Network, PoolError> {
    if pool.prefix() > SUBNET_PREFIX {
        return Err(PoolError::TooSmall(pool));
    }
    let start = u32::from(pool.network());
    let count = 1u64 << (SUBNET_PREFIX - pool.prefix());
    let step = 1u32 << (32 - SUBNET_PREFIX);
    (0..count)
        .map(|i| Ipv4Addr::from(start + (i as u32) * step))
        .filter_map(|a| Ipv4Network::new(a, SUBNET_PREFIX).ok())
        .find(|c| !taken.iter().any(|t| t.overlaps(*c)))
        .ok_or(PoolError::Exhausted(pool))
}

/// The bridge's gateway in an internal subnet: its first host address.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The subnets this agent's creates in flight have chosen but not yet made. Two
/// creates listing the engine's networks at the same moment would otherwise choose
/// the same first free /28: the engine refuses all but one ("Pool overlaps with
/// other one on this address space", a 403 on 20.10), and a burst of creates (40
/// at once) ran out of retries. Each create takes its subnet here instead, skipping
/// what the others hold, and gives it back when its network exists (or failed).
#[derive(Clone, Debug, Default)]
pub struct Reserved(Arc<Mutex<BTreeSet<Ipv4Network>>>);

/// One create's hold on a subnet, released on drop.
#[derive(Debug)]
pub struct Reservation {
    set: Reserved,
    pub subnet: Ipv4Network,
}

impl Reserved {
    /// The first /28 of `pool` overlapping none of `taken` nor any subnet held by
    /// another create, held until the returned reservation drops.
    pub fn take(&self, pool: Ipv4Network, taken: &[Ipv4Network]) -> Result<Reservation, PoolError> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut avoid = taken.to_vec();
        avoid.extend(held.iter().copied());
        let subnet = allocate(pool, &avoid)?;
        held.insert(subnet);
        Ok(Reservation {
            set: self.clone(),
            subnet,
        })
    }

    /// Subnets held right now.
    pub fn held(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.set.0.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.subnet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_the_first_free_slot_around_what_is_taken() {
        let pool = n(DEFAULT_POOL);
        assert_eq!(allocate(pool, &[]).unwrap(), n("198.18.0.0/28"));
        let taken = [n("198.18.0.0/28"), n("198.18.0.16/28"), n("10.0.0.0/8")];
        assert_eq!(allocate(pool, &taken).unwrap(), n("198.18.0.32/28"));
        // Something larger that covers the start of the pool is stepped over.
        assert_eq!(
            allocate(pool, &[n("198.18.0.0/24")]).unwrap(),
            n("198.18.1.0/28")
        );
        assert_eq!(
            gateway(n("198.18.0.32/28")),
            "198.18.0.33".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn a_hundred_runtimes_fit_and_a_full_pool_says_so() {
        let pool = n(DEFAULT_POOL);
        let mut taken = Vec::new();
        for _ in 0..100 {
            let s = allocate(pool, &taken).unwrap();
            assert!(!taken.contains(&s));
            taken.push(s);
        }
        let tiny = n("198.18.0.0/27");
        let full = [n("198.18.0.0/28"), n("198.18.0.16/28")];
        assert_eq!(allocate(tiny, &full), Err(PoolError::Exhausted(tiny)));
        assert!(
            parse_pool("198.18.0.0/29")
                .unwrap_err()
                .contains("/28 or larger")
        );
        assert_eq!(parse_pool("198.18.3.7/15").unwrap(), n("198.18.0.0/15"));
        assert!(parse_pool("nope").is_err());
    }

    #[test]
    fn creates_in_flight_get_different_subnets_until_they_give_them_back() {
        let pool = n(DEFAULT_POOL);
        let reserved = Reserved::default();
        let taken = [n("198.18.0.0/28")];
        let a = reserved.take(pool, &taken).unwrap();
        let b = reserved.take(pool, &taken).unwrap();
        assert_eq!(a.subnet, n("198.18.0.16/28"));
        assert_eq!(b.subnet, n("198.18.0.32/28"));
        assert_eq!(reserved.held(), 2);
        drop(a);
        assert_eq!(reserved.held(), 1);
        let c = reserved.take(pool, &taken).unwrap();
        assert_eq!(
            c.subnet,
            n("198.18.0.16/28"),
            "a released subnet is free again"
        );
        let tiny = n("198.18.0.0/27");
        assert_eq!(
            reserved.take(tiny, &taken).unwrap_err(),
            PoolError::Exhausted(tiny),
            "held subnets count as taken"
        );
        drop((b, c));
        assert_eq!(reserved.held(), 0);
    }
}
