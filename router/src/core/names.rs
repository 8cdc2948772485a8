//! The names and addresses of routers as operators write them: a
//! [`PeerRef`] (peer name or [`Nickname`]), a [`PeerAddr`] (`host[:port]`),
//! and the pod network's [`Mtu`]. Parsed once, at the edge (the command line,
//! the API), into types that cannot be wrong; the cores take them as they
//! are. Their errors say what is wrong with the text, not which flag it came
//! from: the caller adds that.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU16;
use std::str::FromStr;

use ipam_crdt::PeerName;

/// A router as an operator names it: by peer name if it looks like one, else by nickname.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerRef {
    /// A peer name (`3f:2a:9c:1e:0b:7d:44:e1`).
    Name(PeerName),
    /// A nickname.
    Nickname(Nickname),
}

impl FromStr for PeerRef {
    type Err = PeerRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(name) = s.parse::<PeerName>() {
            return Ok(Self::Name(name));
        }
        s.parse()
            .map(Self::Nickname)
            .map_err(|_| PeerRefError { given: s.to_owned() })
    }
}

impl fmt::Display for PeerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => n.fmt(f),
            Self::Nickname(n) => n.fmt(f),
        }
    }
}

/// A router's human-friendly name: 1 to 64 ASCII letters, digits, `.`, `-`
/// or `_` (any hostname fits). It cannot be mistaken for a [`PeerName`],
/// which contains colons.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nickname(String);

impl Nickname {
    /// The longest nickname, in bytes (the Linux hostname limit).
    pub const MAX_LEN: usize = 64;

    /// The nickname.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Nickname {
    type Err = NicknameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NicknameError { given: s.to_owned() })
        }
    }
}

impl fmt::Display for Nickname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text is not a valid [`Nickname`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a valid nickname: use {NICKNAME_RULE}")]
pub struct NicknameError {
    /// What was given.
    pub given: String,
}

/// The text is neither a [`PeerName`] nor a [`Nickname`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is neither a peer name (like 3f:2a:9c:1e:0b:7d:44:e1) nor a nickname ({NICKNAME_RULE})")]
pub struct PeerRefError {
    /// What was given.
    pub given: String,
}

/// Where to reach a router: `host[:port]`.
///
/// The host is an IP address or a syntactically valid hostname (resolved
/// later, when connecting); the port is never 0. IPv6 addresses must be in
/// brackets (`[fd00::1]:6783`), since `fd00::1:6783` is itself an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    host: Host,
    port: NonZeroU16,
}

/// The host part of a [`PeerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Host {
    /// A literal IP address.
    Ip(IpAddr),
    /// A hostname, to be resolved when connecting.
    Name(String),
}

impl PeerAddr {
    /// The port used when a PEER has none.
    pub const DEFAULT_PORT: u16 = 6783;

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// The socket address, if the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port.get())),
            Host::Name(_) => None,
        }
    }
}

impl TryFrom<SocketAddr> for PeerAddr {
    type Error = PeerAddrError;

    /// The PEER for a socket address; refused if the port is 0.
    fn try_from(addr: SocketAddr) -> Result<Self, Self::Error> {
        let port = NonZeroU16::new(addr.port()).ok_or_else(|| PeerAddrError::BadPort { given: "0".to_owned() })?;
        Ok(Self {
            host: Host::Ip(addr.ip()),
            port,
        })
    }
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PeerAddrError::Empty);
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or(PeerAddrError::UnclosedBracket)?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| PeerAddrError::BadIpv6 {
                given: inside.to_owned(),
            })?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| PeerAddrError::BadPort {
                    given: after.to_owned(),
                })?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else if s.matches(':').count() > 1 {
            return Err(PeerAddrError::BareIpv6 { given: s.to_owned() });
        } else {
            let (host, port) = match s.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            };
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if is_hostname(host) => Host::Name(host.to_owned()),
                Err(_) => return Err(PeerAddrError::BadHost { given: host.to_owned() }),
            };
            (host, port)
        };
        let port = match port {
            None => DEFAULT_PEER_PORT,
            Some(p) => p.parse().map_err(|_| PeerAddrError::BadPort { given: p.to_owned() })?,
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Why a PEER is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerAddrError {
    /// Nothing was given.
    #[error("empty address; write host[:port], like 192.0.2.7 or node-2:6783")]
    Empty,
    /// An IPv6 address (or something with several colons) without brackets.
    #[error("{given:?} has several colons; put IPv6 addresses in brackets, like [fd00::1]:6783")]
    BareIpv6 {
        /// What was given.
        given: String,
    },
    /// `[` without a matching `]`.
    #[error("missing ']' after the IPv6 address; write it like [fd00::1]:6783")]
    UnclosedBracket,
    /// The text in brackets is not an IPv6 address.
    #[error("{given:?} in brackets is not an IPv6 address")]
    BadIpv6 {
        /// The text in brackets.
        given: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("port {given:?} is not a number from 1 to 65535")]
    BadPort {
        /// The port text.
        given: String,
    },
    /// The host is neither an IP address nor a valid hostname.
    #[error("{given:?} is neither an IP address nor a valid hostname")]
    BadHost {
        /// The host text.
        given: String,
    },
}

/// The pod network's MTU in bytes, from [`Mtu::MIN`] to [`Mtu::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mtu(u16);

impl Mtu {
    /// The smallest MTU: the datagram size every IPv4 host must accept (RFC 791).
    pub const MIN: u16 = 576;
    /// The largest MTU: leaves room for the IP, UDP and encryption overhead
    /// inside one 65,535-byte encapsulating datagram.
    pub const MAX: u16 = 65_000;

    /// `bytes` as an MTU, if it is in range.
    pub fn new(bytes: u16) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&bytes).then_some(Self(bytes))
    }

    /// The MTU in bytes.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether `s` is a syntactically valid hostname: dot-separated labels of
/// 1 to 63 letters, digits, `-` or `_`, not starting or ending with `-`, at
/// most 253 bytes, an optional trailing dot, and a last label that is not all
/// digits (so a mistyped IPv4 address such as `10.0.0.256` is not taken for a name).
fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels_ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_not_numeric = s
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && last_not_numeric
}

/// The port of a PEER written without one.
const DEFAULT_PEER_PORT: NonZeroU16 = NonZeroU16::new(PeerAddr::DEFAULT_PORT).expect("6783 is not 0");

/// What a nickname may be, for error messages.
pub const NICKNAME_RULE: &str = "1 to 64 letters, digits, '.', '-' or '_'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addr_parse() {
        let ok = |s: &str| s.parse::<PeerAddr>().unwrap();
        assert_eq!(ok("192.0.2.1").socket_addr(), Some("192.0.2.1:6783".parse().unwrap()));
        assert_eq!(ok("192.0.2.1:7000").port(), 7000);
        assert_eq!(
            ok("[fd00::1]:7000").socket_addr(),
            Some("[fd00::1]:7000".parse().unwrap())
        );
        assert_eq!(ok("[fd00::1]").port(), 6783);
        assert_eq!(ok("node-2").host(), &Host::Name("node-2".to_owned()));
        assert_eq!(ok("node-2.example.com.:1").to_string(), "node-2.example.com.:1");
        assert_eq!(ok(" node_3 ").socket_addr(), None);

        let err = |s: &str| s.parse::<PeerAddr>().unwrap_err();
        assert_eq!(err(""), PeerAddrError::Empty);
        assert!(matches!(err("::1"), PeerAddrError::BareIpv6 { .. }));
        assert!(matches!(err("fd00::1:6783"), PeerAddrError::BareIpv6 { .. }));
        assert_eq!(err("[fd00::1"), PeerAddrError::UnclosedBracket);
        assert!(matches!(err("[10.0.0.1]"), PeerAddrError::BadIpv6 { .. }));
        assert!(matches!(err("[fd00::1]7000"), PeerAddrError::BadPort { .. }));
        assert!(matches!(err("host:0"), PeerAddrError::BadPort { .. }));
        assert!(matches!(err("host:"), PeerAddrError::BadPort { .. }));
        assert!(matches!(err("host:65536"), PeerAddrError::BadPort { .. }));
        assert!(matches!(err("10.0.0.256"), PeerAddrError::BadHost { .. }));
        assert!(matches!(err("-bad.example"), PeerAddrError::BadHost { .. }));
        assert!(matches!(err("a..b"), PeerAddrError::BadHost { .. }));
        assert!(matches!(err("sp ace"), PeerAddrError::BadHost { .. }));
        assert!(matches!(err(&"a".repeat(64)), PeerAddrError::BadHost { .. }));
    }

    #[test]
    fn peer_addr_display_round_trips() {
        for s in ["192.0.2.1:6783", "[fd00::1]:7000", "node-2:6784"] {
            assert_eq!(s.parse::<PeerAddr>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn peer_ref_prefers_peer_names() {
        assert_eq!(
            "3f:2a:9c:1e:0b:7d:44:e1".parse::<PeerRef>(),
            Ok(PeerRef::Name(PeerName::from_u64(0x3f2a_9c1e_0b7d_44e1)))
        );
        assert_eq!(
            "node-1".parse::<PeerRef>(),
            Ok(PeerRef::Nickname(Nickname("node-1".to_owned())))
        );
        assert_eq!(
            "3f:2a".parse::<PeerRef>().unwrap_err().to_string(),
            "\"3f:2a\" is neither a peer name (like 3f:2a:9c:1e:0b:7d:44:e1) nor a nickname \
             (1 to 64 letters, digits, '.', '-' or '_')"
        );
    }
}
