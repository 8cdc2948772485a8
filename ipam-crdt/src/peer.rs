//! Router identities as the ring sees them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The name of a router: 64 bits, derived by the router from its public key.
///
/// The ring only compares, orders and stores names; it never interprets them.
/// Shown as eight colon-separated hex bytes (`3f:2a:9c:1e:0b:7d:44:e1`), in the
/// spirit of Weave's MAC-like peer names. Encoded as 8 fixed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerName(u64);

impl PeerName {
    /// The name with this numeric value.
    pub const fn from_u64(v: u64) -> Self {
        Self(v)
    }

    /// The numeric value of the name.
    pub const fn to_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_be_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not eight colon-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected eight colon-separated hex bytes like 3f:2a:9c:1e:0b:7d:44:e1")]
pub struct ParsePeerNameError(String);

impl FromStr for PeerName {
    type Err = ParsePeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerNameError(s.to_owned());
        let mut bytes = [0u8; 8];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(u64::from_be_bytes(bytes)))
    }
}

impl Serialize for PeerName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.to_be_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for PeerName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <[u8; 8]>::deserialize(d).map(|b| Self(u64::from_be_bytes(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let p = PeerName::from_u64(0x3f2a_9c1e_0b7d_44e1);
        assert_eq!(p.to_string(), "3f:2a:9c:1e:0b:7d:44:e1");
        assert_eq!("3f:2a:9c:1e:0b:7d:44:e1".parse::<PeerName>(), Ok(p));
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "3f:2a",
            "3f:2a:9c:1e:0b:7d:44:e1:00",
            "3f:2a:9c:1e:0b:7d:44:g1",
            "3f2a:9c:1e:0b:7d:44:e1:0",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn encodes_as_eight_fixed_bytes() {
        let p = PeerName::from_u64(0x0102_0304_0506_0708);
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(postcard::from_bytes::<PeerName>(&bytes).unwrap(), p);
    }
}
