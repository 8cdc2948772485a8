//! The address pool and address arithmetic.
//!
//! Inside the crate every address is an *offset* from the pool's network
//! address, held in a `u128` so the same code will serve IPv6 pools. Only the
//! public API speaks [`IpAddr`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

/// The CIDR a ring divides: the pod address range (`--ipalloc-range`).
///
/// Its network and broadcast addresses are never handed out.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool {
    net: IpNet,
}

impl Pool {
    /// Weft's default pod range, `10.32.0.0/12`, as Weave's.
    pub const DEFAULT_CIDR: &'static str = "10.32.0.0/12";

    /// The smallest pool accepted (as a prefix length): four addresses, two usable.
    pub const MAX_PREFIX_V4: u8 = 30;

    /// A pool over `net`.
    ///
    /// # Errors
    /// [`PoolError`] when `net` has host bits set, is smaller than a /30, or is
    /// IPv6 (the types carry IPv6; the allocator does not yet).
    pub fn new(net: IpNet) -> Result<Self, PoolError> {
        match net {
            IpNet::V6(_) => Err(PoolError::Ipv6NotSupported(net)),
            IpNet::V4(v4) => {
                if v4.trunc() != v4 {
                    return Err(PoolError::HostBitsSet {
                        given: net,
                        network: IpNet::V4(v4.trunc()),
                    });
                }
                if v4.prefix_len() > Self::MAX_PREFIX_V4 {
                    return Err(PoolError::TooSmall(net));
                }
                Ok(Self { net })
            }
        }
    }

    /// The default pool, [`Pool::DEFAULT_CIDR`].
    pub fn default_v4() -> Self {
        let net: Ipv4Net = Self::DEFAULT_CIDR.parse().expect("constant CIDR parses");
        Self::new(IpNet::V4(net)).expect("constant CIDR is a valid pool")
    }

    /// The CIDR.
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// Number of addresses in the pool, network and broadcast included.
    pub fn size(&self) -> u128 {
        1u128 << (self.bits() - self.net.prefix_len())
    }

    /// Number of addresses that can ever be allocated (size minus network and broadcast).
    pub fn usable(&self) -> u128 {
        self.size() - 2
    }

    /// Whether `addr` lies in the pool.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.net.contains(&addr)
    }

    /// Whether `net` lies wholly inside the pool.
    pub fn contains_net(&self, net: IpNet) -> bool {
        self.net.contains(&net)
    }

    pub(crate) fn bits(&self) -> u8 {
        match self.net {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        }
    }

    pub(crate) fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        if !self.contains(addr) {
            return None;
        }
        Some(addr_to_u128(addr) - addr_to_u128(self.net.network()))
    }

    pub(crate) fn addr_at(&self, offset: u128) -> IpAddr {
        debug_assert!(offset < self.size());
        let v = addr_to_u128(self.net.network()) + offset;
        match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpNet::V6(_) => IpAddr::V6(v.into()),
        }
    }

    /// The half-open offset span `[start, end)` covered by `net`, if `net` is inside the pool.
    pub(crate) fn span_of(&self, net: IpNet) -> Option<(u128, u128)> {
        if !self.contains_net(net) {
            return None;
        }
        let start = self.offset_of(net.network())?;
        let len = 1u128 << (self.bits() - net.prefix_len());
        Some((start, start + len))
    }

    /// The offsets a container in `net` may have, `[start, end)`: the span
    /// of `net` without its own network and broadcast addresses (an address
    /// taken from `net:10.32.4.0/24` sits on an interface as a /24, where
    /// those two are not host addresses). Subnets of 2 or 1 addresses have
    /// none to spare and keep their whole span.
    pub(crate) fn host_span_of(&self, net: IpNet) -> Option<(u128, u128)> {
        let (start, end) = self.span_of(net)?;
        Some(if end - start > 2 {
            (start + 1, end - 1)
        } else {
            (start, end)
        })
    }

    /// Whether `offset` is the network or broadcast address.
    pub(crate) fn is_reserved(&self, offset: u128) -> bool {
        offset == 0 || offset == self.size() - 1
    }

    /// How many reserved offsets lie in `[start, end)`.
    pub(crate) fn reserved_in(&self, start: u128, end: u128) -> u128 {
        u128::from(start == 0) + u128::from(end == self.size())
    }

    pub(crate) fn range(&self, start: u128, end: u128) -> AddrRange {
        AddrRange {
            first: self.addr_at(start),
            last: self.addr_at(end - 1),
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.net.fmt(f)
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pool({})", self.net)
    }
}

/// An inclusive range of addresses, as shown to operators (`10.32.0.0-10.32.1.255`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AddrRange {
    /// First address of the range.
    pub first: IpAddr,
    /// Last address of the range (inclusive).
    pub last: IpAddr,
}

impl AddrRange {
    /// Number of addresses in the range.
    pub fn len(&self) -> u128 {
        addr_to_u128(self.last) - addr_to_u128(self.first) + 1
    }

    /// Never true: a range holds at least one address. (Present for clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let a = addr_to_u128(addr);
        addr.is_ipv4() == self.first.is_ipv4() && addr_to_u128(self.first) <= a && a <= addr_to_u128(self.last)
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Why a CIDR cannot be a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The CIDR has host bits set; the operator probably meant the network.
    #[error("{given} has host bits set; did you mean {network}?")]
    HostBitsSet {
        /// What was given.
        given: IpNet,
        /// The network it lies in.
        network: IpNet,
    },
    /// Fewer than four addresses.
    #[error("{0} is too small for a pod range: use a prefix of /30 or shorter")]
    TooSmall(IpNet),
    /// IPv6 pools are not supported yet.
    #[error("{0} is IPv6; IPv6 pod ranges are not supported yet")]
    Ipv6NotSupported(IpNet),
}

pub(crate) fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn default_pool_is_weaves() {
        let p = Pool::default_v4();
        assert_eq!(p.net().to_string(), "10.32.0.0/12");
        assert_eq!(p.size(), 1 << 20);
        assert_eq!(p.usable(), (1 << 20) - 2);
    }

    #[test]
    fn offsets_round_trip() {
        let p = pool("10.32.0.0/22");
        let a: IpAddr = "10.32.2.7".parse().unwrap();
        assert_eq!(p.offset_of(a), Some(519));
        assert_eq!(p.addr_at(519), a);
        assert_eq!(p.offset_of("10.33.0.0".parse().unwrap()), None);
        assert!(p.is_reserved(0) && p.is_reserved(1023) && !p.is_reserved(1));
        assert_eq!(p.reserved_in(0, 1024), 2);
        assert_eq!(p.reserved_in(1, 1023), 0);
        assert_eq!(p.range(0, 512).to_string(), "10.32.0.0-10.32.1.255");
    }

    #[test]
    fn span_of_subnet() {
        let p = pool("10.32.0.0/22");
        assert_eq!(p.span_of("10.32.1.0/24".parse().unwrap()), Some((256, 512)));
        assert_eq!(p.host_span_of("10.32.1.0/24".parse().unwrap()), Some((257, 511)));
        assert_eq!(p.host_span_of("10.32.1.4/31".parse().unwrap()), Some((260, 262)));
        assert_eq!(p.span_of("10.32.0.0/21".parse().unwrap()), None);
    }

    #[test]
    fn rejects_bad_pools() {
        assert!(matches!(
            Pool::new("10.32.0.1/12".parse().unwrap()),
            Err(PoolError::HostBitsSet { .. })
        ));
        assert!(matches!(
            Pool::new("10.32.0.0/31".parse().unwrap()),
            Err(PoolError::TooSmall(_))
        ));
        assert!(matches!(
            Pool::new("fd00::/64".parse().unwrap()),
            Err(PoolError::Ipv6NotSupported(_))
        ));
        let e = Pool::new("10.32.0.1/12".parse().unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.32.0.1/12 has host bits set; did you mean 10.32.0.0/12?"
        );
    }
}
