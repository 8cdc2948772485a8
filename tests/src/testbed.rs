//! Hosts on an underlay bridge, and pods on hosts.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::Ipv4Net;

use crate::netns::{self, InNamespace, Netns};
use crate::process::Shared;
use crate::{Error, skip_or_fail};

/// The underlay subnet. Host `i` is `10.99.0.i`. It exists only inside each testbed's namespaces, so testbeds
/// running at the same time all use it without meeting.
pub const UNDERLAY: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 99, 0, 0), 24);

/// A host's interface on the underlay (its "NIC").
pub const UNDERLAY_DEV: &str = "eth0";

/// The default gateway of every pod: a link-local address on the host side of each pod's veth, as Calico does.
/// Pods need no address of the host's, and every pod on every host has the same default route.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The most hosts a testbed can have: one per address of [`UNDERLAY`].
pub const MAX_HOSTS: usize = 254;

/// A set of hosts, each a network namespace, joined by an underlay bridge in a namespace of its own, so that
/// nothing is added to the root namespace.
///
/// ```text
///  ns PREFIX-ul:          br0 ── h1 ── h2 ── … (bridge ports; `cut(i)` sets port hi down)
///                               │     │
///  ns PREFIX-hI:  eth0 10.99.0.I/24, lo, ip_forward=1
///                   └ pod-S ── ns PREFIX-hI-S: eth0 ADDR, default via 169.254.1.1
/// ```
///
/// [`add_network`](Self::add_network) adds bridges `br1`, `br2`, ... with ports `hIn1`, `hIn2`, ... and host
/// interfaces `eth1`, `eth2`, ...
///
/// `PREFIX` is `wt{pid % 10000}-{k}`, with `k` counting testbeds in this process, so tests running in
/// parallel never share a name. Interface names are fixed and short because each lives in its own
/// namespace.
///
/// Dropping the testbed stops every process spawned in it, then deletes every namespace it made (pods, hosts,
/// the underlay), which takes their veths with them. This also happens when a test panics. Problems during
/// cleanup are printed to stderr.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    underlay: Netns,
    /// The first is [`UNDERLAY`] on [`UNDERLAY_DEV`]; [`Testbed::add_network`] adds more.
    networks: Vec<Network>,
    hosts: Vec<Host>,
    shared: Arc<Shared>,
}

impl Testbed {
    /// Builds a testbed of `hosts` hosts, numbered from 1, after sweeping away anything an earlier crashed run
    /// left under the same prefix.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `1 <= hosts <= MAX_HOSTS`; otherwise the first `ip` command that
    /// failed. What was built before the failure is removed again.
    pub fn new(hosts: usize) -> Result<Self, Error> {
        if !(1..=MAX_HOSTS).contains(&hosts) {
            return Err(Error::InvalidArgument {
                what: "host count",
                value: hosts.to_string(),
                reason: "a testbed has between 1 and 254 hosts",
            });
        }
        let prefix = next_prefix();
        netns::sweep(&prefix)?;
        let shared = Arc::new(Shared::default());
        let underlay = Netns::create(format!("{prefix}-ul"), &shared)?;
        // From here on, an early return drops `testbed`, which removes what was built so far.
        let mut testbed = Self {
            prefix,
            underlay,
            networks: vec![Network {
                index: 0,
                subnet: UNDERLAY,
            }],
            hosts: Vec::with_capacity(hosts),
            shared,
        };
        testbed.build_bridge(&testbed.networks[0])?;
        for index in 1..=hosts {
            let host = testbed.build_host(index)?;
            testbed.hosts.push(host);
        }
        Ok(testbed)
    }

    /// Adds another underlay network, `subnet`: a bridge `brK` in the underlay namespace and, on every host, an
    /// interface `ethK` with address I of `subnet` for host I (K counts networks from 0, the first underlay).
    /// Hosts then have two or more addresses, and two routes to nothing in particular: each network reaches only
    /// its own subnet. [`cut`](Self::cut) unplugs a host from every network; [`sever`](Self::sever) parts two
    /// hosts on one.
    ///
    /// ```no_run
    /// # let mut tb = weft_tests::Testbed::new(2).unwrap();
    /// let second = tb.add_network("10.98.0.0/24".parse().unwrap()).unwrap();
    /// assert_eq!(second.dev(), "eth1");
    /// assert_eq!(second.ip(tb.host(2)).to_string(), "10.98.0.2");
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `subnet` is smaller than a /24 or overlaps a network the testbed has; the
    /// first `ip` command that failed otherwise (what it built is removed with the testbed).
    pub fn add_network(&mut self, subnet: Ipv4Net) -> Result<Network, Error> {
        let network = Network::new(self.networks.len(), subnet, &self.networks)?;
        self.build_bridge(&network)?;
        for host in &self.hosts {
            self.plug(&host.netns, host.index, &network)?;
        }
        self.networks.push(network.clone());
        Ok(network)
    }

    /// Every underlay network, the first ([`UNDERLAY`]) first.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }

    /// Parts hosts `a` and `b` on `network`, as a firewall between them would: each drops what arrives from the
    /// other's address there ([`Host::drop_from`]), so neither reaches the other on that network and neither
    /// learns why. Both still reach every other host there, and each other on other networks.
    ///
    /// # Errors
    /// If `nft` fails.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn sever(&self, a: usize, b: usize, network: &Network) -> Result<(), Error> {
        let (a, b) = (self.host(a), self.host(b));
        a.drop_from(&[network.ip(b)])?;
        b.drop_from(&[network.ip(a)])
    }

    /// [`Testbed::new`] for tests: `None`, after [`skip_or_fail`], when network namespaces are unavailable
    /// (see [`netns_unavailable`](crate::netns_unavailable)). See also [`testbed_or_skip!`](crate::testbed_or_skip).
    ///
    /// # Panics
    /// If the testbed cannot be built although namespaces are available, and under CI if they are not.
    pub fn for_test(hosts: usize) -> Option<Self> {
        if let Some(reason) = crate::netns_unavailable() {
            skip_or_fail(&reason);
            return None;
        }
        Some(Self::new(hosts).unwrap_or_else(|err| panic!("cannot build a testbed of {hosts} hosts: {err}")))
    }

    /// The prefix of every namespace name in this testbed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `index`, counting from 1 (host `i` has underlay address `10.99.0.i`).
    ///
    /// # Panics
    /// If there is no such host.
    pub fn host(&self, index: usize) -> &Host {
        match index.checked_sub(1).and_then(|i| self.hosts.get(i)) {
            Some(host) => host,
            None => panic!("no host {index}: this testbed has hosts 1 to {}", self.hosts.len()),
        }
    }

    /// All hosts, host 1 first.
    pub fn hosts(&self) -> impl ExactSizeIterator<Item = &Host> {
        self.hosts.iter()
    }

    /// The namespace holding the underlay bridge `br0`, e.g. to capture traffic between hosts.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// Unplugs host `index` from the underlay: its bridge ports (on every network) go down, so it can reach no
    /// other host and no host can reach it. The host's own interfaces, addresses and routes stay as they are, as
    /// when the cables are pulled.
    ///
    /// # Errors
    /// If `ip link set` fails.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn cut(&self, index: usize) -> Result<(), Error> {
        self.set_port(index, "down")
    }

    /// Plugs host `index` back in after [`cut`](Self::cut).
    ///
    /// # Errors
    /// If `ip link set` fails.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn restore(&self, index: usize) -> Result<(), Error> {
        self.set_port(index, "up")
    }

    fn build_host(&self, index: usize) -> Result<Host, Error> {
        let netns = Netns::create(format!("{}-h{index}", self.prefix), &self.shared)?;
        for network in &self.networks {
            self.plug(&netns, index, network)?;
        }
        // Hosts route for their pods. /proc/sys/net is per namespace: this writes the host's own setting.
        netns.exec_ok(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        Ok(Host {
            netns,
            index,
            underlay_ip: self.networks[0].addr(index),
            dropped: Mutex::default(),
        })
    }

    fn build_bridge(&self, network: &Network) -> Result<(), Error> {
        let bridge = network.bridge();
        self.underlay.ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.underlay.ip(&["link", "set", &bridge, "up"]).map(drop)
    }

    /// Joins host `index` (namespace `netns`) to `network`: a veth from its bridge to the host's `ethK`, which
    /// gets the host's address.
    fn plug(&self, netns: &Netns, index: usize, network: &Network) -> Result<(), Error> {
        let (port, dev) = (network.port(index), network.dev());
        self.underlay.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            &dev,
            "netns",
            netns.name(),
        ])?;
        self.underlay
            .ip(&["link", "set", &port, "master", &network.bridge(), "up"])?;
        let addr = format!("{}/{}", network.addr(index), network.subnet.prefix_len());
        netns.ip(&["addr", "add", &addr, "dev", &dev])?;
        netns.ip(&["link", "set", &dev, "up"]).map(drop)
    }

    fn set_port(&self, index: usize, state: &str) -> Result<(), Error> {
        let host = self.host(index);
        for network in &self.networks {
            self.underlay.ip(&["link", "set", &network.port(host.index), state])?;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for err in self.shared.stop_all() {
            eprintln!("weft-tests: cleaning up {}: {err}", self.prefix);
        }
        for name in self.shared.take_namespaces() {
            // Stragglers (a process started without a guard, a grandchild that escaped its group) would keep
            // the namespace, and its veths, alive after its name is gone.
            if let Err(err) = netns::kill_inside(&name).and_then(|()| netns::delete(&name)) {
                eprintln!("weft-tests: cleaning up {}: {err}", self.prefix);
            }
        }
    }
}

/// One underlay network of a [`Testbed`]: a bridge in the underlay namespace, and on every host an interface
/// with the host's address in [`subnet`](Self::subnet). The first network is [`UNDERLAY`] on [`UNDERLAY_DEV`];
/// [`Testbed::add_network`] adds others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// K: bridge `brK`, host interface `ethK`.
    index: usize,
    subnet: Ipv4Net,
}

impl Network {
    /// Its addresses: host I has the I-th.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The interface every host has on it: `eth0` on the first network, `eth1` on the second, ...
    pub fn dev(&self) -> String {
        format!("eth{}", self.index)
    }

    /// The bridge in the underlay namespace: `br0`, `br1`, ...
    pub fn bridge(&self) -> String {
        format!("br{}", self.index)
    }

    /// `host`'s address on it: the I-th address of the subnet for host I.
    pub fn ip(&self, host: &Host) -> Ipv4Addr {
        self.addr(host.index)
    }

    /// Network `index` over `subnet`, if it may join `existing`.
    fn new(index: usize, subnet: Ipv4Net, existing: &[Self]) -> Result<Self, Error> {
        let invalid = |reason| {
            Err(Error::InvalidArgument {
                what: "network",
                value: subnet.to_string(),
                reason,
            })
        };
        if subnet.prefix_len() > UNDERLAY.prefix_len() {
            return invalid("a testbed network needs a /24 or larger, one address per host");
        }
        if existing
            .iter()
            .any(|n| n.subnet.contains(&subnet) || subnet.contains(&n.subnet))
        {
            return invalid("it overlaps a network the testbed has");
        }
        Ok(Self {
            index,
            subnet: subnet.trunc(),
        })
    }

    fn addr(&self, host: usize) -> Ipv4Addr {
        let host = u32::try_from(host).expect("at most MAX_HOSTS hosts");
        Ipv4Addr::from(u32::from(self.subnet.network()) + host)
    }

    /// Host `host`'s port on the bridge: `hI` on the first network (as it always was), `hIn{K}` on the others.
    fn port(&self, host: usize) -> String {
        match self.index {
            0 => format!("h{host}"),
            k => format!("h{host}n{k}"),
        }
    }
}

/// One host: a network namespace on the underlay, where a router runs.
#[derive(Debug)]
pub struct Host {
    netns: Netns,
    index: usize,
    underlay_ip: Ipv4Addr,
    /// What [`Host::drop_from`] drops.
    dropped: Mutex<BTreeSet<Ipv4Addr>>,
}

impl Host {
    /// Its number in the testbed, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its namespace's name.
    pub fn name(&self) -> &str {
        self.netns.name()
    }

    /// Its address on the underlay, `10.99.0.INDEX`, on [`UNDERLAY_DEV`].
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// Drops every packet that arrives from one of `addrs`, besides those dropped already, as a firewall in
    /// front of the host would: the sender learns nothing (an output rule would fail its `sendto` with `EPERM`,
    /// which no network does). The rule is in a table of the harness's own, `inet wt-drop`, so it leaves the
    /// router's `ip weft` table and its iptables rules alone. See also [`Testbed::sever`].
    ///
    /// # Errors
    /// If `nft` fails; nothing is changed then.
    pub fn drop_from(&self, addrs: &[Ipv4Addr]) -> Result<(), Error> {
        self.set_dropped(|dropped| dropped.extend(addrs))
    }

    /// Stops dropping what arrives from `addrs`.
    ///
    /// # Errors
    /// If `nft` fails; nothing is changed then.
    pub fn allow_from(&self, addrs: &[Ipv4Addr]) -> Result<(), Error> {
        self.set_dropped(|dropped| dropped.retain(|addr| !addrs.contains(addr)))
    }

    /// Applies `change` to the dropped addresses and replaces the `wt-drop` table with their rules, in one `nft`
    /// transaction.
    fn set_dropped(&self, change: impl FnOnce(&mut BTreeSet<Ipv4Addr>)) -> Result<(), Error> {
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = dropped.clone();
        change(&mut next);
        self.netns.exec_ok(["nft", &drop_ruleset(&next)])?;
        *dropped = next;
        Ok(())
    }

    /// Adds a pod as a routed CNI plugin (ptp, Calico) would: namespace `HOST-SUFFIX` with `eth0` at `addr`
    /// (without a subnet route: every destination goes through the gateway) and a default route via
    /// [`POD_GATEWAY`]; on the host, the veth `pod-SUFFIX` carrying `POD_GATEWAY/32` and a `/32` route to the
    /// pod. Pods on one host reach each other and the host; reaching other hosts' pods is the router's job.
    /// The testbed deletes the pod with everything else.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `name_suffix` is 1 to 11 characters of `a-z0-9`; the failing `ip`
    /// command otherwise (e.g. a pod with that suffix exists already).
    pub fn add_pod(&self, name_suffix: &str, addr: Ipv4Net) -> Result<Pod, Error> {
        check_pod_suffix(name_suffix)?;
        let pod = Netns::create(format!("{}-{name_suffix}", self.name()), self.netns.shared())?;
        let host_veth = format!("pod-{name_suffix}");
        let gateway = POD_GATEWAY.to_string();
        let host_ip = |args: &[&str]| self.netns.ip(args).map(drop);
        host_ip(&[
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])?;
        pod.ip(&["addr", "add", &addr.to_string(), "dev", "eth0", "noprefixroute"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        pod.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        host_ip(&[
            "addr",
            "add",
            &format!("{gateway}/32"),
            "dev",
            &host_veth,
            "scope",
            "link",
        ])?;
        host_ip(&["link", "set", &host_veth, "up"])?;
        host_ip(&[
            "route",
            "add",
            &format!("{}/32", addr.addr()),
            "dev",
            &host_veth,
            "scope",
            "link",
        ])?;
        Ok(Pod {
            netns: pod,
            addr,
            host_veth,
        })
    }
}

/// A pod: a network namespace behind a veth into its host. Deleted by the testbed, not when this is dropped.
#[derive(Debug)]
pub struct Pod {
    netns: Netns,
    addr: Ipv4Net,
    host_veth: String,
}

impl Pod {
    /// Its namespace's name, `HOST-SUFFIX`.
    pub fn name(&self) -> &str {
        self.netns.name()
    }

    /// The address on its `eth0`, with the prefix it was given.
    pub fn addr(&self) -> Ipv4Net {
        self.addr
    }

    /// Its IP address.
    pub fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }

    /// The host side of its veth, `pod-SUFFIX`, in the host's namespace.
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }
}

/// A fresh name prefix, `wt{pid % 10000}-{k}`: unique among this process's testbeds, short, and the same in a
/// later process with the same pid, whose testbed then sweeps what this one left behind if it crashed.
pub(crate) fn next_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "wt{}-{}",
        std::process::id() % 10_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `nft` script that makes the `wt-drop` table drop what arrives from `dropped`, replacing whatever the table
/// held (and removing it when `dropped` is empty). Declaring the table first lets the delete succeed when it
/// does not exist yet.
fn drop_ruleset(dropped: &BTreeSet<Ipv4Addr>) -> String {
    let mut script = format!("table inet {DROP_TABLE}\ndelete table inet {DROP_TABLE}\n");
    if !dropped.is_empty() {
        let addrs: Vec<String> = dropped.iter().map(Ipv4Addr::to_string).collect();
        script += &format!(
            "table inet {DROP_TABLE} {{\n\
             \tset dropped {{ type ipv4_addr; elements = {{ {} }}; }}\n\
             \tchain input {{ type filter hook input priority filter; policy accept; ip saddr @dropped counter drop; }}\n\
             }}\n",
            addrs.join(", ")
        );
    }
    script
}

fn check_pod_suffix(suffix: &str) -> Result<(), Error> {
    let reason = if suffix.is_empty() || suffix.len() > MAX_POD_SUFFIX {
        "it must have 1 to 11 characters, so that `pod-SUFFIX` fits an interface name"
    } else if !suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        "it may hold only a-z and 0-9"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument {
        what: "pod name suffix",
        value: suffix.to_owned(),
        reason,
    })
}

/// The harness's own nftables table in a host, for [`Host::drop_from`].
const DROP_TABLE: &str = "wt-drop";
/// Interface names have at most 15 bytes, and the host side of a pod's veth is `pod-SUFFIX`.
const MAX_POD_SUFFIX: usize = 15 - "pod-".len();

impl InNamespace for Host {
    fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl InNamespace for Pod {
    fn netns(&self) -> &Netns {
        &self.netns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_short() {
        let (a, b) = (next_prefix(), next_prefix());
        assert_ne!(a, b);
        assert!(a.starts_with("wt") && a.len() <= 12, "{a}");
    }

    #[test]
    fn pod_suffixes_must_fit_an_interface_name() {
        assert!(check_pod_suffix("a").is_ok());
        assert!(check_pod_suffix("web0123456z").is_ok());
        assert!(check_pod_suffix("").is_err());
        assert!(
            check_pod_suffix("web01234567z").is_err(),
            "pod-web01234567z has 16 bytes"
        );
        assert!(check_pod_suffix("Web").is_err());
        assert!(check_pod_suffix("a-b").is_err());
    }

    #[test]
    fn networks_give_host_i_the_ith_address_and_may_not_overlap() {
        let first = Network::new(0, UNDERLAY, &[]).unwrap();
        let second = Network::new(1, "10.98.0.0/24".parse().unwrap(), std::slice::from_ref(&first)).unwrap();
        assert_eq!(first.addr(1), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(second.addr(254), Ipv4Addr::new(10, 98, 0, 254));
        assert_eq!((second.dev(), second.bridge()), ("eth1".into(), "br1".into()));
        assert_eq!((first.port(7), second.port(7)), ("h7".into(), "h7n1".into()));
        let both = [first, second];
        for (subnet, reason) in [
            ("10.99.0.128/25", "/24 or larger"),
            ("10.99.0.0/16", "overlaps"),
            ("10.98.0.0/24", "overlaps"),
        ] {
            let err = Network::new(2, subnet.parse().unwrap(), &both).unwrap_err();
            assert!(err.to_string().contains(reason), "{subnet}: {err}");
        }
        assert!(Network::new(2, "10.97.0.0/23".parse().unwrap(), &both).is_ok());
    }

    #[test]
    fn the_drop_ruleset_replaces_the_table_and_empty_removes_it() {
        let header = "table inet wt-drop\ndelete table inet wt-drop\n";
        assert_eq!(drop_ruleset(&BTreeSet::new()), header);
        let addrs = BTreeSet::from([Ipv4Addr::new(10, 99, 0, 3), Ipv4Addr::new(10, 98, 0, 2)]);
        assert_eq!(
            drop_ruleset(&addrs),
            format!(
                "{header}table inet wt-drop {{\n\
                 \tset dropped {{ type ipv4_addr; elements = {{ 10.98.0.2, 10.99.0.3 }}; }}\n\
                 \tchain input {{ type filter hook input priority filter; policy accept; \
                 ip saddr @dropped counter drop; }}\n}}\n"
            )
        );
    }

    #[test]
    fn host_count_is_checked_before_anything_is_built() {
        assert!(matches!(
            Testbed::new(0),
            Err(Error::InvalidArgument { what: "host count", .. })
        ));
        assert!(matches!(
            Testbed::new(MAX_HOSTS + 1),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
