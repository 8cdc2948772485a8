//! One pod interface as data: what it should look like, what the kernel has,
//! and what to do about the difference.
//!
//! This is the sans-IO half of the crate. [`desired`] turns a [`Spec`] into
//! the [`Desired`] state of both ends of the veth, the netlink shell reads
//! the kernel into an [`Actual`] state, [`differences`] lists what differs
//! (CHECK reports the first), and [`diff`] returns the [`Op`]s that take
//! the kernel to the desired state. Nothing here talks to the kernel or
//! names a netlink type, so every rule below is a unit test.
//!
//! # Rebuild rather than repair
//!
//! [`diff`] is empty when nothing differs, and otherwise rebuilds the pair
//! from scratch: delete what is there, create the veth, configure both ends.
//! A pair that differs was left half-wired by a crash, wired with other
//! addresses, or changed by someone else; starting again is the one path
//! that every case shares, and it keeps the proxy's promise that the route
//! via the gateway appears last, when everything else already works
//! (`weft-wait` releases the container's program as soon as it sees it).
//!
//! # What is compared
//!
//! Everything [`Op`]s make except the MTU, which is only set at creation
//! (CNI CHECK does not know it). Extra routes on either link are allowed
//! (the kernel adds its own, such as IPv6's `fe80::/64`); extra addresses of
//! global scope on the pod's interface are a difference, so that wiring a
//! container again with fewer addresses removes the others.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;

/// The pods' IPv4 gateway: link-local, on the host side of every pod's veth,
/// which has no address of its own. Every pod on every host has the same
/// one, and no host address is spent per pod (as Calico does).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pods' IPv6 gateway, `fe80::1`: the IPv6 counterpart of
/// [`GATEWAY_V4`], short and recognisable in `ip -6 route`.
///
/// Any link-local address would do: a link-local gateway is on-link by
/// definition, so the pod needs no route to reach it, and the pod resolves
/// it through a permanent neighbour entry for the host veth's MAC. Nothing
/// on the host answers neighbour solicitations for it (the host veth has
/// only its own kernel-made link-local address), so unlike IPv4, where
/// `proxy_arp` answers, a pod whose permanent entry is deleted by hand
/// loses its IPv6 gateway until the interface is wired again.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The gateway of `addr`'s family.
pub fn gateway_for(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => GATEWAY_V4.into(),
        IpAddr::V6(_) => GATEWAY_V6.into(),
    }
}

/// A default route for each family that `addresses` have, IPv4 first: the
/// routes of a pod that sends everything to its gateway.
pub fn default_routes(addresses: &[IpNet]) -> Vec<IpNet> {
    let mut routes = Vec::new();
    if addresses.iter().any(|a| matches!(a, IpNet::V4(_))) {
        routes.push(IpNet::V4(ipnet::Ipv4Net::default()));
    }
    if addresses.iter().any(|a| matches!(a, IpNet::V6(_))) {
        routes.push(IpNet::V6(ipnet::Ipv6Net::default()));
    }
    routes
}

/// What one pod interface should look like.
///
/// The veth is created in the caller's namespace (the host) as `host_veth`,
/// with its peer born in `netns` as `ifname`; nothing with the pod's
/// interface name is ever visible in the host. See [`desired`] for what
/// each field becomes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Spec {
    /// The pod's network namespace, e.g. `CNI_NETNS` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// The interface in the pod (`CNI_IFNAME`, `ethwe`).
    pub ifname: String,
    /// The host end, see [`cni_host_veth`](crate::cni_host_veth) and
    /// [`docker_host_veth`](crate::docker_host_veth).
    pub host_veth: String,
    /// The MTU of both ends, set when the pair is created.
    pub mtu: u32,
    /// The pod's addresses, IPv4 and IPv6, each with its prefix length, in
    /// the order they are added (the kernel marks a later IPv4 address in
    /// the prefix of an earlier one `secondary`).
    pub addresses: Vec<IpNet>,
    /// Destinations routed via the gateway of their family ([`GATEWAY_V4`],
    /// [`GATEWAY_V6`]): `0.0.0.0/0` for a pod that sends everything there
    /// ([`default_routes`]), the pod range for one that also has another
    /// network.
    pub routes: Vec<IpNet>,
    /// How the pod reaches its gateway.
    pub gateway: Gateway,
    /// What to do with an interface named `ifname` in the pod that is not
    /// the peer of `host_veth`.
    pub occupied: Occupied,
}

/// How the pod reaches its gateway, and what that means for its addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gateway {
    /// A route to the IPv4 gateway itself (`169.254.1.1 dev eth0 scope
    /// link`) and the routes via it (`default via 169.254.1.1 dev eth0`).
    /// The addresses are added as given: the CNI plugin gives a `/32`,
    /// which adds no connected route. IPv6 needs no route to its gateway,
    /// which is link-local. This is the CNI plugin's form (and Calico's).
    LinkRoute,
    /// The routes via the gateway flagged `onlink` (`10.32.0.0/12 via
    /// 169.254.1.1 dev ethwe onlink`), and the addresses keep their prefix
    /// length (so programs see the pod range's netmask) with
    /// `IFA_F_NOPREFIXROUTE`, so the kernel adds no connected route for
    /// them. This is the Docker proxy's form.
    Onlink,
}

/// What to do with an interface of the pod's interface name that is not the
/// peer of the host veth.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Occupied {
    /// Leave it alone: creating the veth then fails, since the name is
    /// taken. For the CNI plugin, where another plugin may own it.
    Fail,
    /// Delete it first. For the proxy, whose `ethwe` is Weft's by
    /// convention (a leftover of a crash midway, say).
    Replace,
}

/// The state [`desired`] asks for: the host end, then the pod end.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Desired {
    /// The host end's name.
    pub host_veth: String,
    /// The pod end's name.
    pub ifname: String,
    /// `net.ipv4.conf.<host_veth>.proxy_arp = 1`, so that a pod whose
    /// neighbour table was flushed still gets an answer for the gateway.
    /// Only when the pod has an IPv4 address.
    pub proxy_arp: bool,
    /// Routes in the host to the host veth, one per pod address (`/32`,
    /// `/128`), scope link, protocol static.
    pub host_routes: Vec<IpNet>,
    /// The pod interface's addresses, in order.
    pub addresses: Vec<Address>,
    /// Gateways that need a permanent neighbour entry in the pod for the
    /// host veth's MAC.
    pub neighbours: Vec<IpAddr>,
    /// Routes in the pod's main table through its interface, in the order
    /// they are added (a route to a gateway before the routes via it).
    pub routes: Vec<Route>,
    /// What to do with an interface in the way.
    pub occupied: Occupied,
}

/// An address on the pod's interface, with the flags Weft sets.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Address {
    /// The address and its prefix length.
    pub net: IpNet,
    /// `IFA_F_NOPREFIXROUTE`: the kernel adds no connected route.
    pub noprefixroute: bool,
    /// `IFA_F_NODAD`: usable at once, without duplicate address detection.
    /// Set on every IPv6 address: the address is the pod's alone (IPAM says
    /// so), and the second or so that detection takes would fail the pod's
    /// first packets.
    pub nodad: bool,
}

/// A route through the pod's interface, in its main table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Route {
    /// The destination.
    pub dst: IpNet,
    /// The gateway, or `None` for a route to the link itself (scope link).
    pub via: Option<IpAddr>,
    /// `RTNH_F_ONLINK`: the gateway is reached on the link without a route
    /// to it.
    pub onlink: bool,
}

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct MacAddr(pub [u8; 6]);

/// The kernel state the netlink shell found for a [`Spec`].
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Actual {
    /// The link named like the host veth, in the host.
    pub host: Option<HostLink>,
    /// The link named like the pod's interface, in the pod.
    pub pod: Option<PodLink>,
}

/// The host veth as found.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct HostLink {
    /// Its index in the host.
    pub index: u32,
    /// The index of its peer in the peer's namespace (`IFLA_LINK`).
    pub peer_index: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Its MAC.
    pub mac: Option<MacAddr>,
    /// Whether `proxy_arp` is on for it.
    pub proxy_arp: bool,
    /// Destinations of the main table's routes through it without a gateway.
    pub routes: Vec<IpNet>,
}

/// The pod's interface as found.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct PodLink {
    /// Its index in the pod.
    pub index: u32,
    /// The index of its peer in the peer's namespace (`IFLA_LINK`).
    pub peer_index: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Its MAC.
    pub mac: Option<MacAddr>,
    /// Its addresses of global scope.
    pub addresses: Vec<Address>,
    /// The main table's routes through it.
    pub routes: Vec<Route>,
    /// Its permanent neighbour entries.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
}

impl Actual {
    /// Whether both links exist and are each other's peers: the pod's
    /// interface is our veth's other end, not a link of the same name.
    pub fn paired(&self) -> bool {
        match (&self.host, &self.pod) {
            (Some(host), Some(pod)) => host.peer_index == Some(pod.index) && pod.peer_index == Some(host.index),
            _ => false,
        }
    }
}

/// One thing that differs between [`Desired`] and [`Actual`], named for
/// people (CNI CHECK's message).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Difference {
    /// The host veth does not exist.
    NoHostVeth {
        /// Its name.
        host_veth: String,
    },
    /// The pod has no interface of that name.
    NoPodLink {
        /// Its name.
        ifname: String,
    },
    /// Both names exist, but the pod's interface is not the host veth's peer.
    NotPaired {
        /// The host end.
        host_veth: String,
        /// The pod's interface.
        ifname: String,
    },
    /// The host veth is down.
    HostVethDown {
        /// Its name.
        host_veth: String,
    },
    /// `proxy_arp` is off for the host veth.
    NoProxyArp {
        /// Its name.
        host_veth: String,
    },
    /// The host has no route to a pod address through the host veth.
    NoHostRoute {
        /// The destination (`/32`, `/128`).
        dst: IpNet,
        /// The host end.
        host_veth: String,
    },
    /// The pod's interface is down.
    PodLinkDown {
        /// Its name.
        ifname: String,
    },
    /// The pod's interface lacks an address (or has it without the flags).
    NoAddress {
        /// The address wanted.
        address: Address,
        /// The pod's interface.
        ifname: String,
    },
    /// The pod's interface has a global address that is not asked for.
    ExtraAddress {
        /// The address found.
        address: Address,
        /// The pod's interface.
        ifname: String,
    },
    /// The pod has no permanent neighbour entry for a gateway with the host
    /// veth's MAC.
    NoNeighbour {
        /// The gateway.
        gateway: IpAddr,
        /// The pod's interface.
        ifname: String,
    },
    /// The pod lacks a route.
    NoRoute {
        /// The route wanted.
        route: Route,
        /// The pod's interface.
        ifname: String,
    },
}

/// One change to the kernel; [`diff`] returns them in the order to apply.
/// Names, MTU and MACs come from the [`Desired`] state and the links as
/// they are when the op is applied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Op {
    /// Delete the pod's interface, which is not our veth's peer
    /// ([`Occupied::Replace`]).
    DeletePodLink,
    /// Delete the host veth, which takes its peer in the pod with it.
    DeleteHostVeth,
    /// Create the veth in the host with its peer born in the pod under its
    /// final name, both with the MTU.
    CreateVeth,
    /// Turn `proxy_arp` on for the host veth.
    ProxyArp,
    /// Set the host veth up.
    HostUp,
    /// Add (or replace) a host route to the host veth, scope link.
    HostRoute(IpNet),
    /// Add an address to the pod's interface.
    AddAddress(Address),
    /// Set the pod's interface up.
    PodUp,
    /// Add (or replace) the pod's permanent neighbour entry for a gateway,
    /// with the host veth's MAC.
    Neighbour(IpAddr),
    /// Add (or replace) a route in the pod.
    AddRoute(Route),
}

/// The state `spec` asks for.
///
/// - Host: `proxy_arp` if the pod has an IPv4 address, and a route per pod
///   address to the host veth (`10.32.0.5/32`, `fd00::5/128`).
/// - Pod: the addresses (flagged `noprefixroute` in the [`Gateway::Onlink`]
///   form, `nodad` if IPv6), a permanent neighbour entry for each gateway
///   that a route uses (IPv4 first), and the routes: with
///   [`Gateway::LinkRoute`], `169.254.1.1 dev IF scope link` first if an
///   IPv4 route needs it, then each of `spec.routes` via its family's
///   gateway; with [`Gateway::Onlink`], each of `spec.routes` via its
///   family's gateway, `onlink`.
pub fn desired(spec: &Spec) -> Desired {
    let onlink = spec.gateway == Gateway::Onlink;
    let addresses = spec
        .addresses
        .iter()
        .map(|&net| Address {
            net,
            noprefixroute: onlink,
            nodad: matches!(net, IpNet::V6(_)),
        })
        .collect();
    let host_routes = spec.addresses.iter().map(|a| IpNet::from(a.addr())).collect();
    let mut neighbours: Vec<IpAddr> = Vec::new();
    for dst in &spec.routes {
        let gateway = gateway_for(dst.addr());
        if !neighbours.contains(&gateway) {
            neighbours.push(gateway);
        }
    }
    neighbours.sort_unstable();
    let mut routes = Vec::new();
    if spec.gateway == Gateway::LinkRoute && neighbours.contains(&IpAddr::V4(GATEWAY_V4)) {
        routes.push(Route {
            dst: IpNet::from(IpAddr::V4(GATEWAY_V4)),
            via: None,
            onlink: false,
        });
    }
    routes.extend(spec.routes.iter().map(|dst| Route {
        dst: dst.trunc(),
        via: Some(gateway_for(dst.addr())),
        onlink,
    }));
    Desired {
        host_veth: spec.host_veth.clone(),
        ifname: spec.ifname.clone(),
        proxy_arp: spec.addresses.iter().any(|a| matches!(a, IpNet::V4(_))),
        host_routes,
        addresses,
        neighbours,
        routes,
        occupied: spec.occupied,
    }
}

/// Everything that differs, in the order the pair is built: the links, the
/// host end, then the pod end. Empty when `actual` is as `desired` asks.
/// When a link is missing or the two are not a pair, nothing else is
/// compared.
pub fn differences(desired: &Desired, actual: &Actual) -> Vec<Difference> {
    let host_veth = || desired.host_veth.clone();
    let ifname = || desired.ifname.clone();
    let mut out = Vec::new();
    if actual.host.is_none() {
        out.push(Difference::NoHostVeth { host_veth: host_veth() });
    }
    if actual.pod.is_none() {
        out.push(Difference::NoPodLink { ifname: ifname() });
    }
    let (Some(host), Some(pod)) = (&actual.host, &actual.pod) else {
        return out;
    };
    if !actual.paired() {
        out.push(Difference::NotPaired {
            host_veth: host_veth(),
            ifname: ifname(),
        });
        return out;
    }

    if !host.up {
        out.push(Difference::HostVethDown { host_veth: host_veth() });
    }
    if desired.proxy_arp && !host.proxy_arp {
        out.push(Difference::NoProxyArp { host_veth: host_veth() });
    }
    for &dst in &desired.host_routes {
        if !host.routes.contains(&dst) {
            out.push(Difference::NoHostRoute {
                dst,
                host_veth: host_veth(),
            });
        }
    }

    if !pod.up {
        out.push(Difference::PodLinkDown { ifname: ifname() });
    }
    for &address in &desired.addresses {
        if !pod.addresses.contains(&address) {
            out.push(Difference::NoAddress {
                address,
                ifname: ifname(),
            });
        }
    }
    for &address in &pod.addresses {
        if !desired.addresses.iter().any(|a| a.net == address.net) {
            out.push(Difference::ExtraAddress {
                address,
                ifname: ifname(),
            });
        }
    }
    for &gateway in &desired.neighbours {
        if host.mac.is_none() || pod.neighbours.get(&gateway) != host.mac.as_ref() {
            out.push(Difference::NoNeighbour {
                gateway,
                ifname: ifname(),
            });
        }
    }
    for &route in &desired.routes {
        if !pod.routes.contains(&route) {
            out.push(Difference::NoRoute {
                route,
                ifname: ifname(),
            });
        }
    }
    out
}

/// The changes that take `actual` to `desired`: none if nothing
/// [differs](differences), else a rebuild (see the module docs):
///
/// 1. delete an interface in the way ([`Occupied::Replace`] only), then the
///    old host veth;
/// 2. create the pair;
/// 3. the host end: `proxy_arp`, up, the routes to the pod;
/// 4. the pod end: the addresses, up, the neighbour entries, the routes,
///    the routes via a gateway last.
pub fn diff(desired: &Desired, actual: &Actual) -> Vec<Op> {
    if differences(desired, actual).is_empty() {
        return Vec::new();
    }
    let mut ops = Vec::new();
    if actual.pod.is_some() && !actual.paired() && desired.occupied == Occupied::Replace {
        ops.push(Op::DeletePodLink);
    }
    if actual.host.is_some() {
        ops.push(Op::DeleteHostVeth);
    }
    ops.push(Op::CreateVeth);
    if desired.proxy_arp {
        ops.push(Op::ProxyArp);
    }
    ops.push(Op::HostUp);
    ops.extend(desired.host_routes.iter().map(|&r| Op::HostRoute(r)));
    ops.extend(desired.addresses.iter().map(|&a| Op::AddAddress(a)));
    ops.push(Op::PodUp);
    ops.extend(desired.neighbours.iter().map(|&g| Op::Neighbour(g)));
    ops.extend(desired.routes.iter().map(|&r| Op::AddRoute(r)));
    ops
}

impl Route {
    /// The route as `ip route` shows it on `ifname`: `default via
    /// 169.254.1.1 dev eth0`, `169.254.1.1 dev eth0 scope link`,
    /// `10.32.0.0/12 via 169.254.1.1 dev ethwe onlink`.
    pub fn on<'a>(&'a self, ifname: &'a str) -> impl fmt::Display + 'a {
        RouteOn { route: self, ifname }
    }

    fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }
}

struct RouteOn<'a> {
    route: &'a Route,
    ifname: &'a str,
}

impl fmt::Display for RouteOn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dst = self.route.dst;
        if self.route.is_default() {
            f.write_str("default")?;
        } else if dst.prefix_len() == dst.max_prefix_len() {
            write!(f, "{}", dst.addr())?;
        } else {
            write!(f, "{dst}")?;
        }
        self.fmt_next_hop(f)
    }
}

impl RouteOn<'_> {
    /// What follows the destination: ` via 169.254.1.1 dev eth0 onlink`.
    fn fmt_next_hop(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.route.via {
            Some(via) => write!(f, " via {via} dev {}", self.ifname)?,
            None => write!(f, " dev {} scope link", self.ifname)?,
        }
        if self.route.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

impl fmt::Display for Address {
    /// The address and prefix length, as `ip addr add` takes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl TryFrom<&[u8]> for MacAddr {
    type Error = std::array::TryFromSliceError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        bytes.try_into().map(Self)
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHostVeth { host_veth } => write!(f, "the host veth {host_veth} is missing"),
            Self::NoPodLink { ifname } => write!(f, "the container has no interface {ifname}"),
            Self::NotPaired { host_veth, ifname } => write!(
                f,
                "{ifname} in the container is not the peer of the host veth {host_veth}"
            ),
            Self::HostVethDown { host_veth } => write!(f, "the host veth {host_veth} is down"),
            Self::NoProxyArp { host_veth } => write!(f, "proxy ARP is off for the host veth {host_veth}"),
            Self::NoHostRoute { dst, host_veth } => write!(f, "the host has no route {dst} dev {host_veth}"),
            Self::PodLinkDown { ifname } => write!(f, "{ifname} in the container is down"),
            Self::NoAddress { address, ifname } => {
                write!(f, "{ifname} in the container does not have {address}")?;
                if address.noprefixroute {
                    f.write_str(" noprefixroute")?;
                }
                Ok(())
            }
            Self::ExtraAddress { address, ifname } => {
                write!(f, "{ifname} in the container has {address}, which it should not")
            }
            Self::NoNeighbour { gateway, ifname } => write!(
                f,
                "the container has no permanent neighbour entry for {gateway} on {ifname} with the host veth's MAC"
            ),
            Self::NoRoute { route, ifname } if route.is_default() => {
                f.write_str("the container has no default route")?;
                RouteOn { route, ifname }.fmt_next_hop(f)
            }
            Self::NoRoute { route, ifname } => write!(f, "the container has no route {}", route.on(ifname)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The CNI plugin's spec for `addresses`.
    fn cni(addresses: &[&str]) -> Spec {
        let addresses: Vec<IpNet> = addresses.iter().map(|a| net(a)).collect();
        Spec {
            netns: PathBuf::from("/run/netns/pod"),
            ifname: "eth0".into(),
            host_veth: "weft0123456789a".into(),
            mtu: 1420,
            routes: default_routes(&addresses),
            addresses,
            gateway: Gateway::LinkRoute,
            occupied: Occupied::Fail,
        }
    }

    /// The proxy's spec for `addresses` and `ranges`.
    fn proxy(addresses: &[&str], ranges: &[&str]) -> Spec {
        Spec {
            netns: PathBuf::from("/proc/42/ns/net"),
            ifname: "ethwe".into(),
            host_veth: "weftd0123456789".into(),
            mtu: 1376,
            addresses: addresses.iter().map(|a| net(a)).collect(),
            routes: ranges.iter().map(|r| net(r)).collect(),
            gateway: Gateway::Onlink,
            occupied: Occupied::Replace,
        }
    }

    fn addr(net_: &str, noprefixroute: bool) -> Address {
        let net = net(net_);
        Address {
            net,
            noprefixroute,
            nodad: matches!(net, IpNet::V6(_)),
        }
    }

    fn route(dst: &str, via: Option<&str>, onlink: bool) -> Route {
        Route {
            dst: net(dst),
            via: via.map(ip),
            onlink,
        }
    }

    const HOST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

    /// What the kernel has after applying `ops` to nothing: the state the
    /// shell makes, as a dump would read it back.
    fn built(d: &Desired, ops: &[Op]) -> Actual {
        let mut actual = Actual::default();
        for op in ops {
            match *op {
                Op::DeletePodLink => actual.pod = None,
                Op::DeleteHostVeth => actual.host = None,
                Op::CreateVeth => {
                    assert!(actual.pod.is_none(), "{op:?}: the name is taken in the pod");
                    actual.host = Some(HostLink {
                        index: 7,
                        peer_index: Some(2),
                        mac: Some(HOST_MAC),
                        ..HostLink::default()
                    });
                    actual.pod = Some(PodLink {
                        index: 2,
                        peer_index: Some(7),
                        mac: Some(MacAddr([0x02, 0, 0, 0, 0, 2])),
                        ..PodLink::default()
                    });
                }
                Op::ProxyArp => actual.host.as_mut().unwrap().proxy_arp = true,
                Op::HostUp => actual.host.as_mut().unwrap().up = true,
                Op::HostRoute(dst) => actual.host.as_mut().unwrap().routes.push(dst),
                Op::AddAddress(a) => actual.pod.as_mut().unwrap().addresses.push(a),
                Op::PodUp => actual.pod.as_mut().unwrap().up = true,
                Op::Neighbour(g) => {
                    let mac = actual.host.as_ref().unwrap().mac.unwrap();
                    actual.pod.as_mut().unwrap().neighbours.insert(g, mac);
                }
                Op::AddRoute(r) => {
                    let pod = actual.pod.as_mut().unwrap();
                    if let Some(via) = r.via
                        && !r.onlink
                        && !via.is_ipv6()
                    {
                        assert!(
                            pod.routes.iter().any(|x| x.via.is_none() && x.dst.contains(&via)),
                            "{op:?}: the kernel refuses a gateway it has no route to"
                        );
                    }
                    pod.routes.push(r);
                }
            }
        }
        assert!(differences(d, &actual).is_empty(), "{:?}", differences(d, &actual));
        actual
    }

    #[test]
    fn the_cni_form_for_ipv4() {
        let d = desired(&cni(&["10.32.0.5/32"]));
        assert!(d.proxy_arp);
        assert_eq!(d.host_routes, [net("10.32.0.5/32")]);
        assert_eq!(d.addresses, [addr("10.32.0.5/32", false)]);
        assert_eq!(d.neighbours, [ip("169.254.1.1")]);
        assert_eq!(
            d.routes,
            [
                route("169.254.1.1/32", None, false),
                route("0.0.0.0/0", Some("169.254.1.1"), false)
            ]
        );
        assert_eq!(
            diff(&d, &Actual::default()),
            [
                Op::CreateVeth,
                Op::ProxyArp,
                Op::HostUp,
                Op::HostRoute(net("10.32.0.5/32")),
                Op::AddAddress(addr("10.32.0.5/32", false)),
                Op::PodUp,
                Op::Neighbour(ip("169.254.1.1")),
                Op::AddRoute(route("169.254.1.1/32", None, false)),
                Op::AddRoute(route("0.0.0.0/0", Some("169.254.1.1"), false)),
            ]
        );
    }

    #[test]
    fn the_proxy_form_for_ipv4() {
        let d = desired(&proxy(&["10.32.0.5/12", "10.33.1.2/12"], &["10.32.0.0/12"]));
        assert!(d.proxy_arp);
        assert_eq!(d.host_routes, [net("10.32.0.5/32"), net("10.33.1.2/32")]);
        assert_eq!(d.addresses, [addr("10.32.0.5/12", true), addr("10.33.1.2/12", true)]);
        assert_eq!(d.neighbours, [ip("169.254.1.1")]);
        // No route to the gateway: onlink.
        assert_eq!(d.routes, [route("10.32.0.0/12", Some("169.254.1.1"), true)]);
        let ops = diff(&d, &Actual::default());
        // The route via the gateway is the very last change: weft-wait waits for it.
        assert_eq!(ops.last(), Some(&Op::AddRoute(d.routes[0])));
        built(&d, &ops);
    }

    #[test]
    fn an_ipv6_only_pod() {
        let d = desired(&cni(&["fd00::5/128"]));
        assert!(!d.proxy_arp, "no IPv4, no proxy ARP");
        assert_eq!(d.host_routes, [net("fd00::5/128")]);
        assert_eq!(
            d.addresses,
            [Address {
                net: net("fd00::5/128"),
                noprefixroute: false,
                nodad: true
            }]
        );
        assert_eq!(d.neighbours, [ip("fe80::1")]);
        // The link-local gateway needs no route of its own.
        assert_eq!(d.routes, [route("::/0", Some("fe80::1"), false)]);
        let ops = diff(&d, &Actual::default());
        assert!(!ops.contains(&Op::ProxyArp), "{ops:?}");
        built(&d, &ops);

        let d = desired(&proxy(&["fd00:32::5/64"], &["fd00:32::/64"]));
        assert_eq!(d.addresses, [addr("fd00:32::5/64", true)]);
        assert_eq!(d.routes, [route("fd00:32::/64", Some("fe80::1"), true)]);
        built(&d, &diff(&d, &Actual::default()));
    }

    #[test]
    fn a_dual_stack_pod() {
        let d = desired(&cni(&["fd00::5/128", "10.32.0.5/32"]));
        assert!(d.proxy_arp);
        assert_eq!(d.host_routes, [net("fd00::5/128"), net("10.32.0.5/32")]);
        // The neighbours and routes are IPv4 first, whatever the address order.
        assert_eq!(d.neighbours, [ip("169.254.1.1"), ip("fe80::1")]);
        assert_eq!(
            d.routes,
            [
                route("169.254.1.1/32", None, false),
                route("0.0.0.0/0", Some("169.254.1.1"), false),
                route("::/0", Some("fe80::1"), false),
            ]
        );
        let ops = diff(&d, &Actual::default());
        let actual = built(&d, &ops);
        assert_eq!(diff(&d, &actual), [], "nothing to do once built");

        let d = desired(&proxy(
            &["10.32.0.5/12", "fd00:32::5/64"],
            &["10.32.0.0/12", "fd00:32::/64"],
        ));
        assert_eq!(
            d.routes,
            [
                route("10.32.0.0/12", Some("169.254.1.1"), true),
                route("fd00:32::/64", Some("fe80::1"), true),
            ]
        );
        built(&d, &diff(&d, &Actual::default()));
    }

    #[test]
    fn a_range_is_routed_by_its_network() {
        let d = desired(&proxy(&["10.32.0.5/12"], &["10.32.0.5/12"]));
        assert_eq!(d.routes, [route("10.32.0.0/12", Some("169.254.1.1"), true)]);
    }

    #[test]
    fn every_difference_is_found_in_build_order_and_named() {
        let d = desired(&cni(&["10.32.0.5/32", "fd00::5/128"]));
        let whole = built(&d, &diff(&d, &Actual::default()));
        let first = |change: &dyn Fn(&mut Actual)| {
            let mut a = whole.clone();
            change(&mut a);
            let found = differences(&d, &a);
            assert!(diff(&d, &a).contains(&Op::CreateVeth), "{found:?}: built again");
            found.first().expect("a difference").to_string()
        };
        assert_eq!(first(&|a| a.host = None), "the host veth weft0123456789a is missing");
        assert_eq!(first(&|a| a.pod = None), "the container has no interface eth0");
        assert_eq!(
            first(&|a| a.pod.as_mut().unwrap().peer_index = Some(9)),
            "eth0 in the container is not the peer of the host veth weft0123456789a"
        );
        assert_eq!(
            first(&|a| a.host.as_mut().unwrap().up = false),
            "the host veth weft0123456789a is down"
        );
        assert_eq!(
            first(&|a| a.host.as_mut().unwrap().proxy_arp = false),
            "proxy ARP is off for the host veth weft0123456789a"
        );
        assert_eq!(
            first(&|a| {
                a.host.as_mut().unwrap().routes.remove(1);
            }),
            "the host has no route fd00::5/128 dev weft0123456789a"
        );
        assert_eq!(
            first(&|a| a.pod.as_mut().unwrap().up = false),
            "eth0 in the container is down"
        );
        assert_eq!(
            first(&|a| a.pod.as_mut().unwrap().addresses[0].net = net("10.32.0.6/32")),
            "eth0 in the container does not have 10.32.0.5/32"
        );
        assert_eq!(
            first(&|a| a.pod.as_mut().unwrap().addresses.push(addr("10.32.0.9/32", false))),
            "eth0 in the container has 10.32.0.9/32, which it should not"
        );
        assert_eq!(
            first(&|a| {
                a.pod
                    .as_mut()
                    .unwrap()
                    .neighbours
                    .insert(ip("fe80::1"), MacAddr([2, 0, 0, 0, 0, 9]));
            }),
            "the container has no permanent neighbour entry for fe80::1 on eth0 with the host veth's MAC"
        );
        assert_eq!(
            first(&|a| {
                a.pod.as_mut().unwrap().routes.remove(1);
            }),
            "the container has no default route via 169.254.1.1 dev eth0"
        );
        assert_eq!(
            first(&|a| {
                a.pod.as_mut().unwrap().routes.remove(0);
            }),
            "the container has no route 169.254.1.1 dev eth0 scope link"
        );
        assert_eq!(
            first(&|a| {
                a.pod.as_mut().unwrap().routes.pop();
            }),
            "the container has no default route via fe80::1 dev eth0"
        );

        let d = desired(&proxy(&["10.32.0.5/12"], &["10.32.0.0/12"]));
        let mut a = built(&d, &diff(&d, &Actual::default()));
        a.pod.as_mut().unwrap().addresses[0].noprefixroute = false;
        a.pod.as_mut().unwrap().routes.clear();
        let found: Vec<String> = differences(&d, &a).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "ethwe in the container does not have 10.32.0.5/12 noprefixroute",
                "the container has no route 10.32.0.0/12 via 169.254.1.1 dev ethwe onlink",
            ]
        );
    }

    #[test]
    fn extra_routes_and_link_local_addresses_are_no_difference() {
        let d = desired(&cni(&["fd00::5/128"]));
        let mut a = built(&d, &diff(&d, &Actual::default()));
        let pod = a.pod.as_mut().unwrap();
        // What the kernel adds by itself when the links go up.
        pod.routes.push(route("fe80::/64", None, false));
        pod.routes.push(route("fd00::5/128", None, false));
        a.host.as_mut().unwrap().routes.push(net("fe80::/64"));
        assert_eq!(differences(&d, &a), []);
        assert_eq!(diff(&d, &a), []);
    }

    #[test]
    fn leftovers_are_deleted_before_the_pair_is_made_again() {
        let d = desired(&proxy(&["10.32.0.5/12"], &["10.32.0.0/12"]));
        let stale_host = HostLink {
            index: 5,
            peer_index: Some(6),
            ..HostLink::default()
        };
        let foreign_pod = PodLink {
            index: 2,
            peer_index: Some(3),
            ..PodLink::default()
        };
        let both = Actual {
            host: Some(stale_host),
            pod: Some(foreign_pod.clone()),
        };
        let ops = diff(&d, &both);
        assert_eq!(ops[..3], [Op::DeletePodLink, Op::DeleteHostVeth, Op::CreateVeth]);
        built(&d, &ops);

        // The CNI plugin leaves an interface that is not ours alone: creating the pair fails.
        let d = desired(&cni(&["10.32.0.5/32"]));
        let ops = diff(&d, &both);
        assert_eq!(ops[..2], [Op::DeleteHostVeth, Op::CreateVeth]);
        let only_pod = Actual {
            host: None,
            pod: Some(foreign_pod),
        };
        assert_eq!(diff(&d, &only_pod)[0], Op::CreateVeth);

        // Our own pair, partly wired: the host veth takes its peer with it.
        let d = desired(&proxy(&["10.32.0.5/12"], &["10.32.0.0/12"]));
        let mut half = built(&d, &diff(&d, &Actual::default()));
        half.pod.as_mut().unwrap().routes.clear();
        assert_eq!(diff(&d, &half)[..2], [Op::DeleteHostVeth, Op::CreateVeth]);
    }

    #[test]
    fn wired_with_other_addresses_is_a_difference() {
        let d = desired(&proxy(&["10.32.0.5/12"], &["10.32.0.0/12"]));
        let a = built(&d, &diff(&d, &Actual::default()));
        let other = desired(&proxy(&["10.33.1.2/12"], &["10.32.0.0/12"]));
        let found = differences(&other, &a);
        assert!(
            matches!(
                found[..],
                [
                    Difference::NoHostRoute { .. },
                    Difference::NoAddress { .. },
                    Difference::ExtraAddress { .. }
                ]
            ),
            "{found:?}"
        );
        assert_eq!(diff(&other, &a)[0], Op::DeleteHostVeth);
    }

    #[test]
    fn routes_are_shown_as_ip_route_shows_them() {
        assert_eq!(
            route("0.0.0.0/0", Some("169.254.1.1"), false).on("eth0").to_string(),
            "default via 169.254.1.1 dev eth0"
        );
        assert_eq!(
            route("169.254.1.1/32", None, false).on("eth0").to_string(),
            "169.254.1.1 dev eth0 scope link"
        );
        assert_eq!(
            route("fd00:32::/64", Some("fe80::1"), true).on("ethwe").to_string(),
            "fd00:32::/64 via fe80::1 dev ethwe onlink"
        );
        assert_eq!(MacAddr([0x0a, 0xbc, 0, 1, 0x22, 0xff]).to_string(), "0a:bc:00:01:22:ff");
        assert!(MacAddr::try_from(&[1u8, 2, 3][..]).is_err());
    }

    #[test]
    fn default_routes_follow_the_families() {
        assert_eq!(default_routes(&[net("10.0.0.1/32")]), [net("0.0.0.0/0")]);
        assert_eq!(default_routes(&[net("fd00::1/128")]), [net("::/0")]);
        assert_eq!(
            default_routes(&[net("fd00::1/128"), net("10.0.0.1/32"), net("10.0.0.2/32")]),
            [net("0.0.0.0/0"), net("::/0")]
        );
        assert_eq!(default_routes(&[]), []);
    }
}
