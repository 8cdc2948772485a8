//! Where a router can be reached: the addresses it advertises in its
//! topology entry, and the order in which others try another router's
//! addresses.
//!
//! A router learns its addresses from two sources, both fed in by the shell:
//!
//! - the addresses on its own interfaces ([`LocalAddr`]), leaving out those
//!   no other host can use: loopback, link-local, multicast, the pod range
//!   (the TUN device's host address lies in it), and container and overlay
//!   interfaces (Docker, CNI and libvirt bridges, veths, other overlays), as
//!   Calico's address autodetection leaves them out;
//! - the address its neighbours see it at, which each reports back over the
//!   authenticated control connection ([`super::mesh::Message::Seen`]): the
//!   only way to learn an address a 1:1 NAT maps to it.
//!
//! Addresses seen by neighbours come first (each was proven to work for at
//! least one router), most reported first, then interface addresses in the
//! order the system lists them. `--advertise` replaces all of this with the
//! operator's list; `--listen` with an IP puts that IP first and leaves
//! interfaces out (the router cannot be reached on the others). Ports are the
//! configured ones: mapping ports through a NAT is a later piece of work.
//!
//! Others try what a router advertises in that order ([`data_candidates`]
//! for the data plane, the mesh's dial logic for control), keep the first
//! address that answers with an authenticated reply, and back off from those
//! that do not.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipam_crdt::PeerName;
use ipnet::IpNet;

use super::topology::PeerEntry;

/// Most addresses a router advertises, and most a peer tries for another.
pub const MAX_ENDPOINTS: usize = 8;

/// An address on one of this host's interfaces, as the shell lists them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalAddr {
    /// The interface's name (`eth0`, `docker0`, ...).
    pub interface: String,
    /// The address.
    pub ip: IpAddr,
}

impl LocalAddr {
    /// An address on interface `interface`.
    pub fn new(interface: impl Into<String>, ip: IpAddr) -> Self {
        Self {
            interface: interface.into(),
            ip,
        }
    }
}

/// How a router chooses the control endpoints it advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `--advertise`: exactly these, in this order; nothing is learned.
    explicit: Vec<SocketAddr>,
    /// `--listen`: its port is the port of every learned address; a
    /// specific IP is advertised first and interfaces are left out.
    listen: SocketAddr,
    /// Never advertised unless named: the pod range.
    exclude: Vec<IpNet>,
}

impl Policy {
    /// The policy of a router listening on `listen`, advertising `explicit`
    /// if the operator named addresses, and never an address in `exclude`
    /// otherwise.
    pub fn new(listen: SocketAddr, explicit: Vec<SocketAddr>, exclude: Vec<IpNet>) -> Self {
        Self {
            explicit,
            listen,
            exclude,
        }
    }

    /// Exactly `addrs`, whatever the router learns (simulations, tests).
    pub fn fixed(addrs: Vec<SocketAddr>) -> Self {
        let listen = addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Self::new(listen, addrs, Vec::new())
    }

    /// The endpoints to advertise, given the interface addresses and the
    /// addresses neighbours see this router at (IP and how many report it).
    pub fn choose(&self, local: &[LocalAddr], seen: &BTreeMap<IpAddr, usize>) -> Vec<SocketAddr> {
        if !self.explicit.is_empty() {
            return self.explicit.iter().copied().take(MAX_ENDPOINTS).collect();
        }
        let port = self.listen.port();
        let mut out: Vec<IpAddr> = Vec::new();
        let specific = !self.listen.ip().is_unspecified();
        if specific {
            out.push(self.listen.ip());
        }
        let mut seen: Vec<(usize, IpAddr)> = seen
            .iter()
            .filter(|(ip, _)| self.usable(**ip))
            .map(|(ip, n)| (*n, *ip))
            .collect();
        // Most reported first; then by address, so every run agrees.
        seen.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        out.extend(seen.into_iter().map(|(_, ip)| ip));
        if !specific {
            out.extend(
                local
                    .iter()
                    .filter(|l| !is_container_interface(&l.interface) && self.usable(l.ip))
                    .map(|l| l.ip),
            );
        }
        let mut unique = Vec::with_capacity(out.len());
        for ip in out {
            if !unique.contains(&ip) {
                unique.push(ip);
            }
        }
        unique
            .into_iter()
            .take(MAX_ENDPOINTS)
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }

    /// Whether another host could reach this router at `ip`: a unicast
    /// address of the family the router listens on, outside the pod range,
    /// not loopback or link-local.
    fn usable(&self, ip: IpAddr) -> bool {
        let family_ok = match (self.listen.ip(), ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => true,
            // A socket on [::] takes IPv4 too (mapped), so both families.
            (IpAddr::V6(l), _) => l.is_unspecified() || ip.is_ipv6(),
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        };
        family_ok && is_global_enough(ip) && !self.exclude.iter().any(|net| net.contains(&ip))
    }
}

/// Whether `ip` could reach this host from another: not unspecified,
/// loopback, link-local, multicast or broadcast.
pub fn is_global_enough(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            // fe80::/10 is link-local.
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || link_local)
        }
    }
}

/// Whether interface `name` belongs to containers or to an overlay (this one
/// or another), whose addresses other hosts cannot reach: Docker's
/// `docker0` and `br-<id>`, CNI's and podman's bridges, libvirt's and LXC's,
/// veths, Calico, Flannel, Cilium, Weave, IPIP/VXLAN tunnels, Kubernetes'
/// IPVS and local DNS dummies, and Weft's own TUN device.
pub fn is_container_interface(name: &str) -> bool {
    const PREFIXES: [&str; 16] = [
        "docker",
        "cni",
        "podman",
        "virbr",
        "lxcbr",
        "lxdbr",
        "veth",
        "cali",
        "flannel",
        "cilium",
        "weave",
        "vxlan",
        "tunl",
        "kube-",
        "nodelocaldns",
        "cbr",
    ];
    if name == super::reconcile::TUN_NAME || PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // Docker's user-defined networks: `br-` and the first 12 hex digits of the network id.
    name.strip_prefix("br-")
        .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Where to try another router's data plane, in order: the address its
/// control connection to this router comes from (`seen_at`, authenticated),
/// then the addresses it advertises, each with its data-plane port; IPv4
/// only (the data plane's sockets are IPv4), at most [`MAX_ENDPOINTS`].
/// Empty if it runs no data plane.
pub fn data_candidates(entry: &PeerEntry, seen_at: Option<IpAddr>) -> Vec<SocketAddr> {
    let Some(data) = entry.data else {
        return Vec::new();
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    let ips = seen_at.into_iter().chain(entry.endpoints.iter().map(SocketAddr::ip));
    for ip in ips {
        let addr = SocketAddr::new(ip, data.port);
        if ip.is_ipv4() && is_global_enough(ip) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out.truncate(MAX_ENDPOINTS);
    out
}

/// Counts how many neighbours report each address: `reports` maps a
/// neighbour to the IP it sees this router at.
pub fn tally(reports: &BTreeMap<PeerName, IpAddr>) -> BTreeMap<IpAddr, usize> {
    let mut out = BTreeMap::new();
    for ip in reports.values() {
        *out.entry(*ip).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::topology::{DataPlane, IpamInit};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn local(pairs: &[(&str, &str)]) -> Vec<LocalAddr> {
        pairs.iter().map(|(i, a)| LocalAddr::new(*i, ip(a))).collect()
    }

    fn pod_range() -> Vec<IpNet> {
        vec!["10.32.0.0/12".parse().unwrap()]
    }

    #[test]
    fn interfaces_are_advertised_without_the_unreachable_ones() {
        let policy = Policy::new(sa("0.0.0.0:6783"), Vec::new(), pod_range());
        let addrs = local(&[
            ("lo", "127.0.0.1"),
            ("eth0", "192.0.2.10"),
            ("eth0", "fe80::1"),
            ("eth1", "198.51.100.7"),
            ("eth1", "2001:db8::7"),
            ("docker0", "172.17.0.1"),
            ("br-0123456789ab", "172.18.0.1"),
            ("cni0", "10.88.0.1"),
            ("pod-a", "169.254.1.1"),
            ("weft", "10.32.0.1"),
            ("br0", "203.0.113.5"),
        ]);
        assert_eq!(
            policy.choose(&addrs, &BTreeMap::new()),
            vec![sa("192.0.2.10:6783"), sa("198.51.100.7:6783"), sa("203.0.113.5:6783")],
            "a plain bridge (br0) may be the host's own NIC; the pod range is never advertised"
        );
    }

    #[test]
    fn the_pod_range_is_left_out_whatever_the_interface() {
        let policy = Policy::new(sa("0.0.0.0:6783"), Vec::new(), pod_range());
        let addrs = local(&[("eth9", "10.40.0.9"), ("eth9", "10.47.255.254"), ("eth9", "10.48.0.1")]);
        assert_eq!(policy.choose(&addrs, &BTreeMap::new()), vec![sa("10.48.0.1:6783")]);
    }

    #[test]
    fn addresses_seen_by_neighbours_come_first_most_reported_first() {
        let policy = Policy::new(sa("0.0.0.0:7000"), Vec::new(), pod_range());
        let addrs = local(&[("eth0", "10.0.0.5")]);
        let seen: BTreeMap<IpAddr, usize> = [
            (ip("203.0.113.9"), 1),
            (ip("198.51.100.1"), 3),
            (ip("10.0.0.5"), 2),
            (ip("127.0.0.1"), 9),
        ]
        .into();
        assert_eq!(
            policy.choose(&addrs, &seen),
            vec![sa("198.51.100.1:7000"), sa("10.0.0.5:7000"), sa("203.0.113.9:7000")],
            "a neighbour that sees us at loopback is no help to anyone else"
        );
    }

    #[test]
    fn a_listen_ip_is_advertised_alone_with_what_neighbours_see() {
        let policy = Policy::new(sa("192.0.2.10:6783"), Vec::new(), pod_range());
        let addrs = local(&[("eth0", "192.0.2.10"), ("eth1", "198.51.100.7")]);
        assert_eq!(policy.choose(&addrs, &BTreeMap::new()), vec![sa("192.0.2.10:6783")]);
        let seen = [(ip("203.0.113.1"), 1)].into();
        assert_eq!(
            policy.choose(&addrs, &seen),
            vec![sa("192.0.2.10:6783"), sa("203.0.113.1:6783")]
        );
        let loopback = Policy::new(sa("127.0.0.1:4000"), Vec::new(), pod_range());
        assert_eq!(
            loopback.choose(&[], &BTreeMap::new()),
            vec![sa("127.0.0.1:4000")],
            "named by the operator, so advertised"
        );
    }

    #[test]
    fn advertise_names_exactly_what_is_advertised() {
        let named = vec![sa("10.32.0.9:6783"), sa("127.0.0.1:9")];
        let policy = Policy::new(sa("0.0.0.0:6783"), named.clone(), pod_range());
        let seen = [(ip("203.0.113.1"), 5)].into();
        assert_eq!(policy.choose(&local(&[("eth0", "192.0.2.1")]), &seen), named);
    }

    #[test]
    fn families_follow_the_listen_address_and_the_list_is_bounded() {
        let v4 = Policy::new(sa("0.0.0.0:6783"), Vec::new(), Vec::new());
        let many: Vec<LocalAddr> = (1..=20)
            .map(|i| LocalAddr::new("eth0", ip(&format!("192.0.2.{i}"))))
            .collect();
        let chosen = v4.choose(&many, &BTreeMap::new());
        assert_eq!(chosen.len(), MAX_ENDPOINTS);
        assert_eq!(chosen[0], sa("192.0.2.1:6783"));
        let v6 = Policy::new(sa("[::]:6783"), Vec::new(), Vec::new());
        let both = local(&[("eth0", "192.0.2.1"), ("eth0", "2001:db8::1")]);
        assert_eq!(v6.choose(&both, &BTreeMap::new()).len(), 2);
        assert_eq!(v4.choose(&both, &BTreeMap::new()), vec![sa("192.0.2.1:6783")]);
    }

    #[test]
    fn container_interfaces_are_recognised_by_name() {
        for name in [
            "docker0",
            "br-a1b2c3d4e5f6",
            "cni0",
            "cni-podman0",
            "virbr0",
            "veth1234",
            "cali123",
            "weft",
        ] {
            assert!(is_container_interface(name), "{name}");
        }
        for name in ["eth0", "ens3", "br0", "br-lan", "bond0", "wlan0", "enp0s31f6"] {
            assert!(!is_container_interface(name), "{name}");
        }
    }

    #[test]
    fn data_candidates_start_with_the_control_connection_and_use_the_data_port() {
        let entry = PeerEntry {
            name: PeerName::from_u64(2),
            nickname: "h2".into(),
            version: 1,
            endpoints: vec![sa("192.0.2.2:6783"), sa("198.51.100.2:6783"), sa("[2001:db8::2]:6783")],
            neighbours: Default::default(),
            ipam: IpamInit::default(),
            data: Some(DataPlane {
                public_key: [0; 32],
                port: 7000,
            }),
        };
        assert_eq!(
            data_candidates(&entry, Some(ip("198.51.100.2"))),
            vec![sa("198.51.100.2:7000"), sa("192.0.2.2:7000")]
        );
        assert_eq!(
            data_candidates(&entry, None),
            vec![sa("192.0.2.2:7000"), sa("198.51.100.2:7000")]
        );
        let no_data = PeerEntry { data: None, ..entry };
        assert!(data_candidates(&no_data, None).is_empty());
    }
}
