//! The forwarding decision: which router an inner packet goes to, and
//! whether a packet from a router may carry its source address.
//!
//! The address ring is the routing table: the owner of the range holding a
//! destination is the router that delivers it. [`ForwardTable`] is a sorted
//! copy of the ring's ranges with each owner resolved to a [`PeerId`], built
//! off the packet path whenever the ring or the peer set changes, and looked
//! up with one binary search per packet.
//!
//! A decision names both the destination router and the *next hop*. Today
//! the next hop is always the destination (a direct session); relaying
//! through a third router when no direct path exists only has to fill in a
//! different `via` (from the mesh's shortest paths), and the packet path
//! already sends to `via`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::keypair::PeerId;

/// Who owns a range, as the packet path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This router: the kernel delivers (local pods have their own routes).
    Local,
    /// Another router with a data-plane slot.
    Peer(PeerId),
    /// A router we cannot reach yet (no key or endpoint known).
    Unknown,
}

/// Where an inner packet read from the TUN device goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// To router `dest`, through session `via` (today always `dest`).
    Send {
        /// The router that owns the destination.
        dest: PeerId,
        /// The router to send to.
        via: PeerId,
    },
    /// The destination is ours: the kernel should have delivered it, so
    /// nobody is there. Drop.
    Local,
    /// Owned by a router we have no session slot for. Drop.
    Unreachable,
    /// Outside the pod range (a route we did not make). Drop.
    OutsideRange,
}

/// The ring's ranges with owners resolved, sorted by first address.
#[derive(Clone, Debug, Default)]
pub struct ForwardTable {
    pod_range: Option<Ipv4Net>,
    /// `(first, last, owner)`, inclusive, sorted, not overlapping.
    ranges: Vec<(u32, u32, Owner)>,
}

impl ForwardTable {
    /// A table from ranges (inclusive first and last address, owner). Ranges
    /// may come in any order; they must not overlap.
    pub fn new(pod_range: Ipv4Net, ranges: impl IntoIterator<Item = (Ipv4Addr, Ipv4Addr, Owner)>) -> Self {
        let mut ranges: Vec<(u32, u32, Owner)> = ranges
            .into_iter()
            .map(|(a, b, o)| (u32::from(a), u32::from(b), o))
            .collect();
        ranges.sort_unstable_by_key(|r| r.0);
        Self {
            pod_range: Some(pod_range),
            ranges,
        }
    }

    /// The pod range, once there is a ring.
    pub fn pod_range(&self) -> Option<Ipv4Net> {
        self.pod_range
    }

    /// The owner of `addr`, if inside the ring.
    pub fn owner(&self, addr: Ipv4Addr) -> Option<Owner> {
        let a = u32::from(addr);
        let i = self.ranges.partition_point(|r| r.0 <= a);
        let (first, last, owner) = *self.ranges.get(i.checked_sub(1)?)?;
        (first <= a && a <= last).then_some(owner)
    }

    /// Where a packet for `dst` goes.
    pub fn decide(&self, dst: Ipv4Addr) -> Decision {
        match self.owner(dst) {
            None => Decision::OutsideRange,
            Some(Owner::Local) => Decision::Local,
            Some(Owner::Unknown) => Decision::Unreachable,
            Some(Owner::Peer(p)) => Decision::Send { dest: p, via: p },
        }
    }

    /// Whether a packet that arrived from `peer` may have source `src`: only
    /// a router's own ranges are its to send from. (A relayed packet will be
    /// checked against the originating router, which the relay header names.)
    pub fn may_send_from(&self, peer: PeerId, src: Ipv4Addr) -> bool {
        self.owner(src) == Some(Owner::Peer(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table() -> ForwardTable {
        ForwardTable::new(
            "10.32.0.0/22".parse().unwrap(),
            [
                (ip("10.32.2.0"), ip("10.32.3.255"), Owner::Peer(PeerId(2))),
                (ip("10.32.0.0"), ip("10.32.0.255"), Owner::Local),
                (ip("10.32.1.0"), ip("10.32.1.127"), Owner::Peer(PeerId(1))),
                (ip("10.32.1.128"), ip("10.32.1.255"), Owner::Unknown),
            ],
        )
    }

    #[test]
    fn destinations_go_to_their_owner() {
        let t = table();
        assert_eq!(t.decide(ip("10.32.0.7")), Decision::Local);
        assert_eq!(
            t.decide(ip("10.32.1.0")),
            Decision::Send {
                dest: PeerId(1),
                via: PeerId(1)
            }
        );
        assert_eq!(
            t.decide(ip("10.32.3.255")),
            Decision::Send {
                dest: PeerId(2),
                via: PeerId(2)
            }
        );
        assert_eq!(t.decide(ip("10.32.1.200")), Decision::Unreachable);
        assert_eq!(t.decide(ip("10.32.4.0")), Decision::OutsideRange);
        assert_eq!(t.decide(ip("10.31.255.255")), Decision::OutsideRange);
        assert_eq!(ForwardTable::default().decide(ip("10.32.0.1")), Decision::OutsideRange);
    }

    #[test]
    fn a_router_may_only_send_from_its_own_ranges() {
        let t = table();
        assert!(t.may_send_from(PeerId(1), ip("10.32.1.5")));
        assert!(!t.may_send_from(PeerId(1), ip("10.32.2.5")), "another router's address");
        assert!(!t.may_send_from(PeerId(1), ip("10.32.0.5")), "our address");
        assert!(!t.may_send_from(PeerId(1), ip("192.168.0.1")), "outside the pod range");
    }
}
