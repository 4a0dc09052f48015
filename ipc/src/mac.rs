//! One MAC address type for the workspace: parsed once at the edge (CLI, store, engine,
//! kernel), compared as bytes, printed and serialised as lower-case `aa:bb:cc:dd:ee:ff`
//! (how the engine, `ip` and the older system write it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC {0:?}: want six hex octets such as 02:42:ac:11:00:02")]
pub struct MacError(pub String);

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// From a kernel or engine byte slice; `None` unless it is exactly six bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Not a group (multicast or broadcast) address, and not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }

    /// The locally administered bit (0x02 of the first octet) is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// A random unicast, locally administered address.
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        for o in b.iter_mut() {
            *o = fastrand::u8(..);
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        MacAddr(b)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Six hex octets separated by `:` or `-`, any case.
    fn from_str(s: &str) -> Result<Self, MacError> {
        let bad = || MacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_separators_and_any_case_and_prints_lower_case() {
        let m: MacAddr = "02:AA:00:0b:00:01".parse().unwrap();
        assert_eq!(m.octets(), [2, 0xaa, 0, 0x0b, 0, 1]);
        assert_eq!(m, "02-aa-00-0B-00-01".parse().unwrap());
        assert_eq!(m.to_string(), "02:aa:00:0b:00:01");
    }

    #[test]
    fn refuses_what_is_not_six_octets() {
        for bad in [
            "",
            "02:aa:00:00:00",
            "02:aa:00:00:00:01:02",
            "02:aa:00:00:00:0g",
            "2:aa:00:00:00:01",
            "02:aa:00:00:00:001",
            "02:aa:00:00:00:+1",
            "02aa00000001",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unicast_and_local_bits() {
        let p = |s: &str| s.parse::<MacAddr>().unwrap();
        assert!(p("02:00:00:00:00:01").is_unicast());
        assert!(!p("03:00:00:00:00:01").is_unicast(), "group bit");
        assert!(!p("ff:ff:ff:ff:ff:ff").is_unicast());
        assert!(!p("00:00:00:00:00:00").is_unicast());
        assert!(p("02:00:00:00:00:01").is_local());
        assert!(!p("00:16:3e:00:00:01").is_local());
        for _ in 0..200 {
            let r = MacAddr::random_local();
            assert!(r.is_unicast() && r.is_local(), "{r}");
        }
    }

    #[test]
    fn serde_is_the_lower_case_string() {
        let m: MacAddr = serde_json::from_str("\"02:AA:00:00:00:01\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"02:aa:00:00:00:01\"");
        let e = serde_json::from_str::<MacAddr>("\"nope\"").unwrap_err();
        assert!(e.to_string().contains("invalid MAC"), "{e}");
        assert!(serde_json::from_str::<MacAddr>("12").is_err());
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }
}
