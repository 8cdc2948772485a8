//! Kernel routing state as data: what the host should have for the data plane,
//! and the smallest list of changes that takes what it has there.
//!
//! This is the sans-IO half of the netlink shell (`io::netlink`): [`desired`]
//! turns the ring's view (the pod range, the ranges this router owns, its host
//! address) into a [`Desired`] state, the shell dumps the kernel into an
//! [`Actual`] state, and [`diff`] returns the [`Op`]s that take one to the other.
//! Nothing here talks to the kernel, so every rule below is a unit test.
//!
//! # What the host needs
//!
//! - **The whole pod range through the TUN device**, with the host address as
//!   preferred source (`10.32.0.0/12 dev weft src 10.32.0.1`). Packets for
//!   pods on other hosts enter the router; the host itself talks to pods from
//!   an address in the pod range, so replies come back through the mesh
//!   without NAT.
//! - **Each range this router owns as `unreachable`.** Local pods get /32
//!   routes to their veth from the CNI plugin, which are more specific and
//!   win. An owned address with no pod behind it then meets the `unreachable`
//!   route and the sender gets an immediate ICMP host unreachable, instead of
//!   the packet entering the router, which would only send it back to the
//!   kernel (a loop that ends when the TTL does). When an owned block is the
//!   whole pod range (a single router), nothing is remote: there is no TUN
//!   route then, and the leak guard below is the `unreachable` route for the
//!   whole range.
//! - **A leak guard: the whole pod range as `unreachable`, at metric
//!   [`GUARD_METRIC`]** (`unreachable 10.32.0.0/12 metric 4096`). While the
//!   router runs, the TUN route (metric 0) wins over it. When the router
//!   stops or crashes, the TUN device goes and the kernel flushes every
//!   route through it; without the guard, a pod's packet for a pod on
//!   another host would then match the host's default route and leave on
//!   the underlay in clear, which Weft promises never happens. The guard is
//!   bound to no device, so it stays; the router's stop path does not
//!   remove it, and only `weft reset` (`Netlink::remove_all`) does. `unreachable` rather than `blackhole`: both keep the packet off
//!   the wire, but `unreachable` answers ICMP host unreachable at once (a
//!   local sender gets `EHOSTUNREACH`), so a pod's connection fails fast and
//!   its retries or error handling start, where a `blackhole` would leave it
//!   waiting out TCP's timeouts with no sign of why. The own ranges'
//!   `unreachable` routes are more specific than the guard and do not meet
//!   it, except for a single router's whole-range block, which the guard
//!   stands for (above), so the desired state never holds two routes that
//!   differ in their metric alone (see *Metrics* below).
//! - **The host address as a /32 on the TUN link**, so the kernel accepts it
//!   as a preferred source and delivers replies to it locally. A /32 adds no
//!   subnet route of its own.
//!
//! # Whose routes these are
//!
//! Every route Weft adds carries the route protocol [`RTPROT_WEFT`] (87) in
//! the main table, and the dump keeps only routes with that protocol: routes
//! added by anyone else (the CNI plugin's /32s, the admin's `proto static`,
//! DHCP, a routing daemon) are never in [`Actual`], so no [`Op`] can touch
//! them. The protocol also survives a crash: after a restart the dump finds
//! the previous run's `unreachable` routes and keeps or removes them, where a
//! list kept in memory would have been lost. Addresses need no tag: the TUN
//! link is Weft's, and every address on it is.
//!
//! 87 is `'W'`, and unassigned: the kernel's `rtnetlink.h` names 0-4, 8-18,
//! 42 (babel), 99 (openr) and 186-192 (bgp, isis, ospf, rip, eigrp); FRR uses
//! 186-197 for its daemons and Calico's Felix defaults to 80; this machine's
//! `/etc/iproute2/rt_protos` lists only the kernel's names, and
//! `rt_protos.d/` is empty. A deployment may add `87 weft` to
//! `/etc/iproute2/rt_protos.d/weft.conf` so that `ip route` shows
//! `proto weft`.
//!
//! # Metrics
//!
//! A route is keyed by destination *and* metric ([`RouteKey`]), as the
//! kernel keys it (with the table and TOS, which are fixed here): the TUN
//! route and the guard share their destination. Every route but the guard
//! has metric 0. A deletion names the metric, but the kernel reads a metric
//! of 0 in a deletion as "any metric" and deletes the first match in metric
//! order, which is the metric-0 route itself as long as it exists. Since no
//! two desired routes differ in their metric alone, a metric-0 deletion can
//! only meet the guard if its own route vanished between dump and apply; the
//! check dump of `sync` then reports it, and the next sync puts it back.
//!
//! # Order of changes
//!
//! [`diff`] returns every addition before any removal, so traffic never has
//! a gap: addresses first (the kernel refuses a preferred source that is not
//! a local address), then new and replaced routes, then removed routes, then
//! removed addresses last (removing an address flushes the routes that use
//! it as their source). A route whose destination and metric stay but
//! whose shape changes (an owned block that becomes remote, a new host
//! address) is one [`Op::ReplaceRoute`]: the shell puts the new route in front of the old one
//! and then deletes the old one by its exact shape, never with
//! `NLM_F_REPLACE`, which replaces whichever route with that destination and
//! metric comes first, ours or not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

/// The TUN device's name: the link every route and address here belongs to.
pub const TUN_NAME: &str = "weft";

/// The route protocol (`rtm_protocol`) of every route Weft adds. See the
/// module docs for why 87 and what it guarantees.
pub const RTPROT_WEFT: u8 = 87;

/// The metric (`priority`) of the leak guard, the `unreachable` route for
/// the whole pod range that catches its traffic while the TUN route is gone
/// (see the module docs). High, so that the TUN route (metric 0) wins over
/// it, and so does any route an admin adds for part of the range by hand
/// with a usual metric; below the 2^32 - 1 that some tools treat as "none".
pub const GUARD_METRIC: u32 = 4096;

/// The metric of the `unreachable` routes for this router's own ranges.
/// Not 0: the CNI plugin adds a `/32` route for each local pod at metric 0,
/// and a range that does not start on a CIDR boundary gives `/32` blocks of
/// our own; at the same metric the two would collide (`EEXIST`), at this
/// one the pod's route wins and ours only catches addresses with no pod.
pub const OWN_METRIC: u32 = 1024;

/// What a route does with the packets it matches.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum RouteKind {
    /// Out through the TUN link (`dev weft scope link`), with this preferred
    /// source address if there is one.
    Tun {
        /// The preferred source (`src`): the host address.
        src: Option<Ipv4Addr>,
    },
    /// `unreachable`: the kernel drops the packet and answers ICMP host
    /// unreachable at once.
    Unreachable,
    /// A route with our protocol that has neither shape: through another
    /// link, or of another type. Only ever found by a dump (for example a
    /// leftover of an older version, or of a TUN device with another name);
    /// never desired, so [`diff`] replaces or removes it.
    Stray {
        /// The route type (`rtm_type`, `RTN_*`).
        route_type: u8,
        /// The output link, if the route has one.
        oif: Option<u32>,
    },
}

/// What tells two of our routes apart in the main table: the destination
/// and the metric. Two routes with the same key differ in their shape.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RouteKey {
    /// The destination prefix.
    pub dst: Ipv4Net,
    /// The metric (`RTA_PRIORITY`); 0 when the route has none.
    pub metric: u32,
}

/// One route in the main table, as Weft sees it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KernelRoute {
    /// The destination prefix.
    pub dst: Ipv4Net,
    /// The metric (`RTA_PRIORITY`); 0 when the route has none.
    pub metric: u32,
    /// What the route does.
    pub kind: RouteKind,
}

impl KernelRoute {
    /// The route with this key and shape.
    pub fn new(key: RouteKey, kind: RouteKind) -> Self {
        Self {
            dst: key.dst,
            metric: key.metric,
            kind,
        }
    }

    /// Its destination and metric.
    pub fn key(&self) -> RouteKey {
        RouteKey {
            dst: self.dst,
            metric: self.metric,
        }
    }
}

/// The kernel state the data plane needs. Built by [`desired`].
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Desired {
    /// Addresses on the TUN link.
    pub addresses: BTreeSet<Ipv4Net>,
    /// Routes in the main table with protocol [`RTPROT_WEFT`], one per
    /// destination and metric.
    pub routes: BTreeMap<RouteKey, RouteKind>,
}

impl Desired {
    /// The routes as [`KernelRoute`]s, as a dump would find them.
    pub fn kernel_routes(&self) -> BTreeSet<KernelRoute> {
        self.routes
            .iter()
            .map(|(&k, &kind)| KernelRoute::new(k, kind))
            .collect()
    }
}

/// The kernel state a dump found: the addresses on the TUN link, and the
/// routes in the main table with protocol [`RTPROT_WEFT`] (there may be more
/// than one per destination and metric, for example after a crash halfway
/// through a replacement).
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Actual {
    /// Addresses on the TUN link.
    pub addresses: BTreeSet<Ipv4Net>,
    /// Our routes in the main table.
    pub routes: BTreeSet<KernelRoute>,
}

/// One change to the kernel. [`diff`] returns them in the order to apply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Op {
    /// Add an address to the TUN link.
    AddAddress(Ipv4Net),
    /// Add a route (there is none of ours with its destination and metric).
    AddRoute(KernelRoute),
    /// Put `new` in place of `old`, which has the same destination and
    /// metric: add `new` in front, then delete `old` by its exact shape.
    ReplaceRoute {
        /// The route found.
        old: KernelRoute,
        /// The route wanted.
        new: KernelRoute,
    },
    /// Delete one of our routes, matched by destination, metric, shape and
    /// protocol.
    DelRoute(KernelRoute),
    /// Remove an address from the TUN link.
    DelAddress(Ipv4Net),
}

/// The state the data plane needs, from the ring's view.
///
/// `own_ranges` are CIDR blocks (see [`cidr_blocks`] to turn the ring's
/// ranges into them); blocks outside `pod_range` are ignored, since a route
/// for them would capture traffic that is not Weft's. `host_address`, when
/// given, becomes a /32 on the TUN link and the preferred source of the pod
/// range route. The leak guard ([`GUARD_METRIC`]) is always there.
pub fn desired(pod_range: Ipv4Net, own_ranges: &[Ipv4Net], host_address: Option<Ipv4Addr>) -> Desired {
    let pod_range = pod_range.trunc();
    let key = |dst, metric| RouteKey { dst, metric };
    let mut routes = BTreeMap::new();
    routes.insert(key(pod_range, 0), RouteKind::Tun { src: host_address });
    for block in own_ranges {
        let block = block.trunc();
        if block == pod_range {
            // Nothing is remote: no TUN route, and the guard is the
            // whole range's `unreachable` (see the module docs).
            routes.remove(&key(pod_range, 0));
        } else if pod_range.contains(&block) {
            routes.insert(key(block, OWN_METRIC), RouteKind::Unreachable);
        }
    }
    routes.insert(key(pod_range, GUARD_METRIC), RouteKind::Unreachable);
    let addresses = host_address
        .map(|a| Ipv4Net::new(a, 32).expect("32 is a valid IPv4 prefix length"))
        .into_iter()
        .collect();
    Desired { addresses, routes }
}

/// The changes that take `actual` to `desired`, additions first (see the
/// module docs for the order). Empty when they already agree.
pub fn diff(desired: &Desired, actual: &Actual) -> Vec<Op> {
    let mut adds = Vec::new();
    let mut dels = Vec::new();

    let mut found: BTreeMap<RouteKey, Vec<RouteKind>> = BTreeMap::new();
    for r in &actual.routes {
        found.entry(r.key()).or_default().push(r.kind);
    }
    for (&key, &want) in &desired.routes {
        let new = KernelRoute::new(key, want);
        let mut have = found.remove(&key).unwrap_or_default();
        if let Some(i) = have.iter().position(|&k| k == want) {
            have.remove(i);
        } else if !have.is_empty() {
            let old = KernelRoute::new(key, have.remove(0));
            adds.push(Op::ReplaceRoute { old, new });
        } else {
            adds.push(Op::AddRoute(new));
        }
        dels.extend(have.into_iter().map(|kind| Op::DelRoute(KernelRoute::new(key, kind))));
    }
    for (key, kinds) in found {
        dels.extend(kinds.into_iter().map(|kind| Op::DelRoute(KernelRoute::new(key, kind))));
    }

    let mut ops: Vec<Op> = desired
        .addresses
        .difference(&actual.addresses)
        .map(|&a| Op::AddAddress(a))
        .collect();
    ops.extend(adds);
    ops.extend(dels);
    ops.extend(
        actual
            .addresses
            .difference(&desired.addresses)
            .map(|&a| Op::DelAddress(a)),
    );
    ops
}

/// The fewest CIDR blocks that cover exactly the union of `ranges`
/// (inclusive, as the ring shows them: `10.32.0.0..=10.32.3.255`).
///
/// Overlapping and adjacent ranges are merged first, so two neighbouring
/// ranges that together form a block give one route, not two. The ranges
/// are inclusive because a half-open `[start, end)` cannot name the last
/// address (`end` would be 2^32). Ranges whose end is before their start
/// are ignored. The result is sorted.
pub fn cidr_blocks<I>(ranges: I) -> Vec<Ipv4Net>
where
    I: IntoIterator<Item = RangeInclusive<Ipv4Addr>>,
{
    let mut spans: Vec<(u64, u64)> = ranges
        .into_iter()
        .map(|r| (u64::from(u32::from(*r.start())), u64::from(u32::from(*r.end()))))
        .filter(|(s, e)| s <= e)
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match merged.last_mut() {
            Some((_, last)) if s <= *last + 1 => *last = (*last).max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut out = Vec::new();
    for (mut s, e) in merged {
        // Greedy: the largest aligned block that starts at `s` and fits.
        while s <= e {
            let align = if s == 0 { 32 } else { s.trailing_zeros().min(32) };
            let fit = (e - s + 1).ilog2();
            let bits = align.min(fit);
            let prefix = u8::try_from(32 - bits).expect("bits is at most 32");
            let addr = Ipv4Addr::from(u32::try_from(s).expect("s is at most e, an IPv4 address"));
            out.push(Ipv4Net::new(addr, prefix).expect("prefix is at most 32"));
            s += 1 << bits;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn tun(src: Option<&str>) -> RouteKind {
        RouteKind::Tun { src: src.map(ip) }
    }

    fn route(dst: &str, kind: RouteKind) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            metric: 0,
            kind,
        }
    }

    fn key(dst: &str, metric: u32) -> RouteKey {
        RouteKey { dst: net(dst), metric }
    }

    /// The leak guard for `pod`.
    fn own(dst: &str) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            metric: OWN_METRIC,
            kind: RouteKind::Unreachable,
        }
    }

    fn guard(pod: &str) -> KernelRoute {
        KernelRoute {
            dst: net(pod),
            metric: GUARD_METRIC,
            kind: RouteKind::Unreachable,
        }
    }

    fn actual(addresses: &[&str], routes: &[KernelRoute]) -> Actual {
        Actual {
            addresses: addresses.iter().map(|a| net(a)).collect(),
            routes: routes.iter().copied().collect(),
        }
    }

    /// What the kernel does with each op, as far as our routes go.
    fn apply(a: &mut Actual, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::AddAddress(n) => assert!(a.addresses.insert(n), "{op:?}: address already there"),
                Op::DelAddress(n) => assert!(a.addresses.remove(&n), "{op:?}: no such address"),
                Op::AddRoute(r) => {
                    // EEXIST is per destination and metric (NLM_F_EXCL).
                    assert!(a.routes.iter().all(|x| x.key() != r.key()), "{op:?}: would hit EEXIST");
                    a.routes.insert(r);
                }
                Op::ReplaceRoute { old, new } => {
                    assert_eq!(old.key(), new.key(), "{op:?}");
                    assert!(a.routes.insert(new), "{op:?}: new route already there");
                    kernel_delete(a, old, op);
                }
                Op::DelRoute(r) => kernel_delete(a, r, op),
            }
        }
    }

    /// A deletion as the kernel's `fib_table_delete` does it: metric 0
    /// matches any metric, and the first match in metric order goes. A
    /// diff that relied on an exact metric-0 match where the kernel would
    /// take another route ends in the wrong state, which the proptests see.
    fn kernel_delete(a: &mut Actual, r: KernelRoute, op: &Op) {
        let hit = a
            .routes
            .iter()
            .copied()
            .filter(|x| x.dst == r.dst && x.kind == r.kind && (r.metric == 0 || x.metric == r.metric))
            .min_by_key(|x| x.metric);
        let hit = hit.unwrap_or_else(|| panic!("{op:?}: no such route"));
        a.routes.remove(&hit);
    }

    fn as_actual(d: &Desired) -> Actual {
        Actual {
            addresses: d.addresses.clone(),
            routes: d.kernel_routes(),
        }
    }

    /// 0 for address adds, 1 for route adds and replacements, 2 for route
    /// removals, 3 for address removals: the order [`diff`] promises.
    fn phase(op: &Op) -> u8 {
        match op {
            Op::AddAddress(_) => 0,
            Op::AddRoute(_) | Op::ReplaceRoute { .. } => 1,
            Op::DelRoute(_) => 2,
            Op::DelAddress(_) => 3,
        }
    }

    #[test]
    fn desired_routes_the_pod_range_to_the_tun_and_owned_blocks_nowhere() {
        let d = desired(
            net("10.32.0.0/12"),
            &[net("10.32.0.0/14"), net("10.40.0.0/16")],
            Some(ip("10.32.0.1")),
        );
        assert_eq!(d.addresses, BTreeSet::from([net("10.32.0.1/32")]));
        assert_eq!(
            d.routes,
            BTreeMap::from([
                (key("10.32.0.0/12", 0), tun(Some("10.32.0.1"))),
                (key("10.32.0.0/12", GUARD_METRIC), RouteKind::Unreachable),
                (key("10.32.0.0/14", OWN_METRIC), RouteKind::Unreachable),
                (key("10.40.0.0/16", OWN_METRIC), RouteKind::Unreachable),
            ])
        );
    }

    #[test]
    fn desired_without_host_address_has_no_address_and_no_source() {
        let d = desired(net("10.32.0.0/12"), &[], None);
        assert!(d.addresses.is_empty());
        assert_eq!(
            d.kernel_routes(),
            BTreeSet::from([route("10.32.0.0/12", tun(None)), guard("10.32.0.0/12")])
        );
    }

    #[test]
    fn a_single_router_owning_everything_gets_unreachable_for_the_whole_range() {
        // The guard is that route: no TUN route, and no second
        // `unreachable` that would differ from the guard in its metric alone.
        let d = desired(net("10.32.0.0/12"), &[net("10.32.0.0/12")], None);
        assert_eq!(d.kernel_routes(), BTreeSet::from([guard("10.32.0.0/12")]));
    }

    #[test]
    fn blocks_outside_the_pod_range_are_ignored() {
        let d = desired(net("10.32.0.0/12"), &[net("192.168.0.0/24"), net("10.0.0.0/8")], None);
        assert_eq!(
            d.kernel_routes(),
            BTreeSet::from([route("10.32.0.0/12", tun(None)), guard("10.32.0.0/12")])
        );
    }

    #[test]
    fn the_leak_guard_catches_the_pod_range_when_the_tun_route_is_gone() {
        let pod = "10.32.0.0/12";
        let d = desired(net(pod), &[net("10.32.0.0/14")], Some(ip("10.32.0.1")));
        // Lower metric wins: while the router runs, the TUN route does.
        let tun_route = route(pod, tun(Some("10.32.0.1")));
        assert!(d.kernel_routes().contains(&tun_route));
        assert!(d.kernel_routes().contains(&guard(pod)));
        assert!(tun_route.metric < GUARD_METRIC);

        // The router stopped: its device went, and the kernel flushed the
        // TUN route and the address with it. The guard is still there, and
        // the restarted router puts back only what went.
        let mut after_crash = as_actual(&d);
        after_crash.routes.remove(&tun_route);
        after_crash.addresses.clear();
        assert!(after_crash.routes.contains(&guard(pod)));
        assert_eq!(
            diff(&d, &after_crash),
            vec![Op::AddAddress(net("10.32.0.1/32")), Op::AddRoute(tun_route)]
        );

        // A router of an older version left no guard: the next sync adds it.
        let mut old = as_actual(&d);
        old.routes.remove(&guard(pod));
        assert_eq!(diff(&d, &old), vec![Op::AddRoute(guard(pod))]);
    }

    #[test]
    fn routes_with_one_destination_and_different_metrics_are_told_apart() {
        let pod = "10.32.0.0/12";
        let d = desired(net(pod), &[], None);
        let high = KernelRoute {
            metric: 100,
            ..route(pod, RouteKind::Unreachable)
        };
        let stray_guard = KernelRoute {
            kind: RouteKind::Stray {
                route_type: 6,
                oif: None,
            },
            ..guard(pod)
        };
        // A guard of another shape is replaced at its metric; an
        // `unreachable` at a metric we do not use goes, by its metric.
        let a = actual(&[], &[route(pod, tun(None)), high, stray_guard]);
        assert_eq!(
            diff(&d, &a),
            vec![
                Op::ReplaceRoute {
                    old: stray_guard,
                    new: guard(pod)
                },
                Op::DelRoute(high),
            ]
        );
        // A single router that grows a peer gets its TUN route back, in
        // front of the guard, which stays.
        let single = desired(net(pod), &[net(pod)], None);
        assert_eq!(diff(&d, &as_actual(&single)), vec![Op::AddRoute(route(pod, tun(None)))]);
        assert_eq!(diff(&single, &as_actual(&d)), vec![Op::DelRoute(route(pod, tun(None)))]);
        // An older version's whole-range `unreachable` at metric 0 goes;
        // the kernel's metric-0 deletion takes it, not the guard.
        let mut old = as_actual(&single);
        old.routes.insert(route(pod, RouteKind::Unreachable));
        let ops = diff(&single, &old);
        assert_eq!(ops, vec![Op::DelRoute(route(pod, RouteKind::Unreachable))]);
        apply(&mut old, &ops);
        assert_eq!(old, as_actual(&single));
    }

    #[test]
    fn first_sync_adds_address_before_routes() {
        let d = desired(net("10.32.0.0/12"), &[net("10.32.0.0/14")], Some(ip("10.32.0.1")));
        let ops = diff(&d, &Actual::default());
        assert_eq!(
            ops,
            vec![
                Op::AddAddress(net("10.32.0.1/32")),
                Op::AddRoute(route("10.32.0.0/12", tun(Some("10.32.0.1")))),
                Op::AddRoute(guard("10.32.0.0/12")),
                Op::AddRoute(own("10.32.0.0/14")),
            ]
        );
    }

    #[test]
    fn a_ring_change_touches_only_what_changed() {
        let pod = net("10.32.0.0/12");
        let host = Some(ip("10.32.0.1"));
        let before = desired(pod, &[net("10.32.0.0/14"), net("10.36.0.0/15")], host);
        let after = desired(pod, &[net("10.32.0.0/14"), net("10.38.0.0/15")], host);
        let ops = diff(&after, &as_actual(&before));
        assert_eq!(
            ops,
            vec![Op::AddRoute(own("10.38.0.0/15")), Op::DelRoute(own("10.36.0.0/15")),]
        );
    }

    #[test]
    fn a_new_host_address_replaces_the_source_in_place() {
        let pod = net("10.32.0.0/12");
        let before = desired(pod, &[], Some(ip("10.32.0.1")));
        let after = desired(pod, &[], Some(ip("10.32.0.9")));
        let ops = diff(&after, &as_actual(&before));
        assert_eq!(
            ops,
            vec![
                Op::AddAddress(net("10.32.0.9/32")),
                Op::ReplaceRoute {
                    old: route("10.32.0.0/12", tun(Some("10.32.0.1"))),
                    new: route("10.32.0.0/12", tun(Some("10.32.0.9"))),
                },
                Op::DelAddress(net("10.32.0.1/32")),
            ]
        );
    }

    #[test]
    fn duplicates_and_strays_are_cleaned_up() {
        let d = desired(net("10.32.0.0/12"), &[], None);
        let stray = RouteKind::Stray {
            route_type: 1,
            oif: Some(99),
        };
        let a = actual(
            &["10.99.0.1/32"],
            &[
                route("10.32.0.0/12", stray),
                route("10.32.0.0/12", tun(None)),
                guard("10.32.0.0/12"),
                route("10.48.0.0/16", RouteKind::Unreachable),
            ],
        );
        assert_eq!(
            diff(&d, &a),
            vec![
                Op::DelRoute(route("10.32.0.0/12", stray)),
                Op::DelRoute(route("10.48.0.0/16", RouteKind::Unreachable)),
                Op::DelAddress(net("10.99.0.1/32")),
            ]
        );
    }

    #[test]
    fn cidr_blocks_split_unaligned_ranges() {
        assert_eq!(
            cidr_blocks([ip("10.32.0.1")..=ip("10.32.0.6")]),
            vec![
                net("10.32.0.1/32"),
                net("10.32.0.2/31"),
                net("10.32.0.4/31"),
                net("10.32.0.6/32")
            ]
        );
        assert_eq!(
            cidr_blocks([ip("10.32.0.0")..=ip("10.47.255.255")]),
            vec![net("10.32.0.0/12")]
        );
    }

    #[test]
    fn cidr_blocks_merge_neighbours_and_reach_the_ends_of_the_space() {
        assert_eq!(
            cidr_blocks([ip("10.32.2.0")..=ip("10.32.3.255"), ip("10.32.0.0")..=ip("10.32.1.255")]),
            vec![net("10.32.0.0/22")]
        );
        assert_eq!(
            cidr_blocks([ip("0.0.0.0")..=ip("255.255.255.255")]),
            vec![net("0.0.0.0/0")]
        );
        assert_eq!(
            cidr_blocks([ip("255.255.255.255")..=ip("255.255.255.255")]),
            vec![net("255.255.255.255/32")]
        );
        assert_eq!(cidr_blocks([ip("10.0.0.2")..=ip("10.0.0.1")]), vec![]);
    }

    fn arb_net(within: Ipv4Net) -> impl Strategy<Value = Ipv4Net> {
        let base = u32::from(within.network());
        let plen = within.prefix_len();
        (plen..=32u8, any::<u32>()).prop_map(move |(p, r)| {
            let host_bits = 32 - u32::from(plen);
            let offset = if host_bits == 0 {
                0
            } else {
                r % (1u32 << host_bits.min(31))
            };
            Ipv4Net::new(Ipv4Addr::from(base.wrapping_add(offset)), p)
                .unwrap()
                .trunc()
        })
    }

    fn arb_kind() -> impl Strategy<Value = RouteKind> {
        prop_oneof![
            Just(RouteKind::Unreachable),
            prop::option::of(0u32..4).prop_map(|o| RouteKind::Tun {
                src: o.map(|o| Ipv4Addr::new(10, 32, 0, u8::try_from(o).unwrap()))
            }),
            (0u8..3, prop::option::of(1u32..3)).prop_map(|(t, oif)| RouteKind::Stray { route_type: t, oif }),
        ]
    }

    fn arb_desired() -> impl Strategy<Value = Desired> {
        let pod = net("10.32.0.0/12");
        (prop::collection::vec(arb_net(pod), 0..6), prop::option::of(0u8..4))
            .prop_map(move |(own, host)| desired(pod, &own, host.map(|h| Ipv4Addr::new(10, 32, 0, h))))
    }

    fn arb_actual() -> impl Strategy<Value = Actual> {
        let pod = net("10.32.0.0/12");
        (
            prop::collection::btree_set(arb_net(pod).prop_map(|n| Ipv4Net::new(n.network(), 32).unwrap()), 0..4),
            prop::collection::btree_set(
                (
                    arb_net(pod),
                    prop::sample::select(vec![0, 100, GUARD_METRIC]),
                    arb_kind(),
                )
                    .prop_map(|(dst, metric, kind)| KernelRoute { dst, metric, kind }),
                0..8,
            ),
        )
            .prop_map(|(addresses, routes)| Actual { addresses, routes })
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_desired_state(d in arb_desired(), a in arb_actual()) {
            let ops = diff(&d, &a);
            let mut after = a;
            apply(&mut after, &ops);
            prop_assert_eq!(after, as_actual(&d));
        }

        #[test]
        fn the_diff_of_a_state_with_itself_is_empty(d in arb_desired()) {
            prop_assert!(diff(&d, &as_actual(&d)).is_empty());
        }

        #[test]
        fn the_guard_is_always_desired_and_never_removed(d in arb_desired(), a in arb_actual()) {
            let pod = "10.32.0.0/12";
            prop_assert_eq!(d.routes.get(&key(pod, GUARD_METRIC)), Some(&RouteKind::Unreachable));
            // No two desired routes differ in their metric alone, so no
            // metric-0 deletion can be read by the kernel as the guard's.
            for r in d.kernel_routes() {
                prop_assert!(
                    d.kernel_routes().iter().all(|x| x == &r || x.dst != r.dst || x.kind != r.kind),
                    "{:?}", d
                );
            }
            // Nothing deletes a guard the kernel has.
            let mut with_guard = a;
            with_guard.routes.insert(guard(pod));
            prop_assert!(
                !diff(&d, &with_guard).iter().any(|op| matches!(op,
                    Op::DelRoute(r) | Op::ReplaceRoute { old: r, .. } if *r == guard(pod))),
                "{:?}", diff(&d, &with_guard)
            );
        }

        #[test]
        fn additions_come_before_removals(d in arb_desired(), a in arb_actual()) {
            let ops = diff(&d, &a);
            prop_assert!(ops.windows(2).all(|w| phase(&w[0]) <= phase(&w[1])), "{:?}", ops);
        }

        #[test]
        fn the_diff_is_minimal(d in arb_desired(), a in arb_actual()) {
            // One op per route that is missing or surplus, where a replacement
            // counts for both, and one per address that differs.
            let ops = diff(&d, &a);
            let wanted = as_actual(&d);
            let missing = wanted.routes.difference(&a.routes).count();
            let surplus = a.routes.difference(&wanted.routes).count();
            let replacements = ops.iter().filter(|o| matches!(o, Op::ReplaceRoute { .. })).count();
            let addresses = wanted.addresses.symmetric_difference(&a.addresses).count();
            prop_assert_eq!(ops.len() + replacements, missing + surplus + addresses);
        }

        #[test]
        fn cidr_blocks_cover_exactly_and_are_maximal(
            ranges in prop::collection::vec((any::<u32>(), 0u32..5000), 0..5)
        ) {
            let ranges: Vec<RangeInclusive<Ipv4Addr>> = ranges
                .into_iter()
                .map(|(s, len)| Ipv4Addr::from(s)..=Ipv4Addr::from(s.saturating_add(len)))
                .collect();
            let blocks = cidr_blocks(ranges.clone());
            let inside = |a: u32| ranges.iter().any(|r| u32::from(*r.start()) <= a && a <= u32::from(*r.end()));
            let covered: u64 = blocks.iter().map(|b| 1u64 << (32 - u32::from(b.prefix_len()))).sum();
            let mut expected = ranges
                .iter()
                .flat_map(|r| u32::from(*r.start())..=u32::from(*r.end()))
                .collect::<Vec<_>>();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(covered, expected.len() as u64);
            for b in &blocks {
                prop_assert!(inside(u32::from(b.network())) && inside(u32::from(b.broadcast())));
            }
            for w in blocks.windows(2) {
                // Sorted, disjoint, and no two neighbours form a bigger block.
                prop_assert!(u32::from(w[0].broadcast()) < u32::from(w[1].network()));
                if let Some(parent) = w[0].supernet() {
                    prop_assert!(
                        !(parent.contains(&w[1]) && w[0].prefix_len() == w[1].prefix_len()),
                        "{} and {} merge into {}", w[0], w[1], parent
                    );
                }
            }
        }
    }
}
