//! Kubernetes peer discovery as plain data: which nodes' routers to connect
//! to, and when the router of a deleted node may be reclaimed.
//!
//! The shell (`io::kube`, cargo feature `kube`) lists and watches Node
//! objects and feeds them in as [`Node`]s; it asks the local router for its
//! peers when [`Discovery::poll_timeout`] says so and feeds them in as
//! [`PeerView`]s. [`Discovery::poll_action`] then says what to ask of the
//! router, through the same API as `weft connect`, `weft forget` and
//! `weft rmpeer`.
//!
//! # Connecting
//!
//! Every node but this router's own gets one PEER address: its first
//! `InternalIP` (IPv4 before IPv6), else its first `ExternalIP`, else its
//! `Hostname` (resolved by the router), at the control port. A node whose
//! address changes is forgotten at the old address and connected at the new
//! one; a deleted node is forgotten.
//!
//! # Reclaiming, and why it is safe
//!
//! A deleted node's router may still be running (a node object deleted and
//! re-registered, an API hiccup), and reclaiming a live router's ranges would
//! hand its addresses out twice. So a reclaim is asked for only when all of
//! these hold:
//!
//! 1. the Node object is gone from the API (a watch `DELETED`, or absent from
//!    a full relist), and has not come back;
//! 2. no router that matches the node is connected to this router, where a
//!    router matches if its nickname is the node name (`weft launch --kube`
//!    names a router after its node) or its address is one of the node's
//!    addresses;
//! 3. (2) has held continuously for [`Config::grace`].
//!
//! The router then applies its own `weft rmpeer` rule on top: it refuses while
//! any router of the mesh still reports a connection to the dead one. A
//! refusal starts the grace period again. The reclaim names the dead router by
//! its peer name (learnt from the peers list), so a new router that took the
//! same nickname is never the target.
//!
//! The reclaim confirms the router gone (`weft rmpeer --gone`): its heir
//! frees its pods' addresses. A deleted Node object is the cluster's own
//! verdict: Kubernetes deletes the pods bound to a node that no longer exists
//! (pod garbage collection), so no pod the cluster knows holds those
//! addresses, and a kubelet that comes back finds its pods deleted. Without
//! the confirmation the heir would hold them until an operator confirmed
//! each node by hand, and the removed router, never heard from again, would
//! stay a voter that every later reclaim waits for. The cost: a host cut off
//! from every router for the whole grace whose Node an operator deleted may
//! keep running orphaned pods whose addresses are handed out again; they
//! lose the network when its router hears of its removal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipam_crdt::PeerName;
use tracing::{debug, info};

use super::Time;
use super::names::PeerAddr;

/// A Node object, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses`, in the API's order.
    pub addresses: Vec<NodeAddress>,
}

/// One entry of a node's `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// `type`: `InternalIP`, `ExternalIP`, `Hostname`, ...
    pub kind: String,
    /// `address`.
    pub address: String,
}

/// One router in the local router's peers list (`GET /v1/peers`), reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// Its peer name, if known.
    pub name: Option<PeerName>,
    /// Its nickname, if known.
    pub nickname: Option<String>,
    /// The IP of the address connected to or dialled, if any.
    pub ip: Option<IpAddr>,
    /// Whether the local router has an established connection to it.
    pub established: bool,
}

/// What the router said to a reclaim ([`Action::Rmpeer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReclaimOutcome {
    /// The reclaim started (or is done).
    Started,
    /// The router does not know that router: nothing to reclaim.
    Unknown,
    /// Refused: some router still reports a connection to it.
    Refused,
    /// Any other failure; tried again later.
    Failed,
}

/// What discovery asks of the local router.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Action {
    /// `weft connect ADDR`.
    Connect(PeerAddr),
    /// `weft forget ADDR`.
    Forget(PeerAddr),
    /// `weft rmpeer PEER`, for the router of deleted node `node`.
    Rmpeer {
        /// The deleted node.
        node: String,
        /// Its router.
        peer: PeerName,
        /// `--gone`: confirm the router gone for good, so that its heir frees
        /// its pods' addresses (see the [module docs](self)).
        gone: bool,
    },
}

/// Discovery's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This router's node name; never connected to, never reclaimed.
    pub me: String,
    /// The control port of the other routers.
    pub port: u16,
    /// How long a deleted node's router must stay disconnected before it is reclaimed.
    pub grace: Duration,
    /// How often the peers list is checked while a deleted node waits.
    pub poll: Duration,
}

impl Config {
    /// The defaults for node `me`: port 6783, 30 s grace, peers checked every 5 s.
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            port: PeerAddr::DEFAULT_PORT,
            grace: DEFAULT_GRACE,
            poll: DEFAULT_POLL,
        }
    }
}

/// The discovery core. Drive it with `handle_*`, then drain [`Discovery::poll_action`];
/// call [`Discovery::handle_peers`] at [`Discovery::poll_timeout`].
#[derive(Debug)]
pub struct Discovery {
    config: Config,
    /// Nodes in the API (but ours), and the address connected to for each.
    nodes: BTreeMap<String, Known>,
    /// Deleted nodes whose routers may need reclaiming.
    gone: BTreeMap<String, Gone>,
    /// When the peers list is next wanted (while `gone` is not empty).
    next_check: Time,
    actions: VecDeque<Action>,
}

#[derive(Debug, Clone)]
struct Known {
    addr: Option<PeerAddr>,
    ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default)]
struct Gone {
    ips: Vec<IpAddr>,
    /// Since when no matching router has been connected.
    dead_since: Option<Time>,
    /// Reclaims asked for and not answered yet.
    in_flight: BTreeSet<PeerName>,
    /// Routers reclaimed (or unknown to the router).
    done: BTreeSet<PeerName>,
}

impl Discovery {
    /// A core that knows no node yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            nodes: BTreeMap::new(),
            gone: BTreeMap::new(),
            next_check: Time::ZERO,
            actions: VecDeque::new(),
        }
    }

    /// A full list of the nodes (the initial list, or a relist after the
    /// watch broke): nodes known before and absent now count as deleted.
    pub fn handle_listed(&mut self, now: Time, nodes: Vec<Node>) {
        let listed: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let missing: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !listed.contains(n.as_str()))
            .cloned()
            .collect();
        for name in missing {
            self.handle_deleted(now, &name);
        }
        for node in nodes {
            self.handle_applied(node);
        }
    }

    /// A node was added or changed.
    pub fn handle_applied(&mut self, node: Node) {
        if node.name == self.config.me {
            return;
        }
        if self.gone.remove(&node.name).is_some() {
            info!(node = %node.name, "a deleted node is back; its router will not be reclaimed");
        }
        let addr = node.peer_addr(self.config.port);
        let ips = node.ips();
        let old = self.nodes.insert(
            node.name.clone(),
            Known {
                addr: addr.clone(),
                ips,
            },
        );
        let old_addr = old.and_then(|k| k.addr);
        if old_addr == addr {
            return;
        }
        if let Some(old) = old_addr {
            self.forget(old);
        }
        match addr {
            Some(addr) => {
                debug!(node = %node.name, %addr, "connecting to a node's router");
                self.actions.push_back(Action::Connect(addr));
            }
            None => debug!(node = %node.name, "the node has no usable address yet"),
        }
    }

    /// A node was deleted.
    pub fn handle_deleted(&mut self, now: Time, name: &str) {
        if name == self.config.me {
            return;
        }
        let Some(known) = self.nodes.remove(name) else { return };
        if let Some(addr) = known.addr {
            self.forget(addr);
        }
        info!(node = %name, "node deleted; its router is reclaimed once it is gone from the mesh");
        self.gone.insert(
            name.to_owned(),
            Gone {
                ips: known.ips,
                ..Gone::default()
            },
        );
        self.next_check = now;
    }

    /// The local router's peers list, asked for at [`Discovery::poll_timeout`].
    pub fn handle_peers(&mut self, now: Time, peers: &[PeerView]) {
        let grace = self.config.grace;
        let mut next = now + self.config.poll;
        for (node, gone) in &mut self.gone {
            if !gone.in_flight.is_empty() {
                continue;
            }
            let matching: Vec<&PeerView> = peers
                .iter()
                .filter(|p| {
                    p.nickname.as_deref() == Some(node.as_str()) || p.ip.is_some_and(|ip| gone.ips.contains(&ip))
                })
                .collect();
            if matching.iter().any(|p| p.established) {
                if gone.dead_since.take().is_some() {
                    debug!(%node, "the router of a deleted node is connected again");
                }
                continue;
            }
            let since = *gone.dead_since.get_or_insert(now);
            let due = since + grace;
            if now < due {
                next = next.min(due);
                continue;
            }
            let targets: BTreeSet<PeerName> = matching
                .iter()
                .filter_map(|p| p.name)
                .filter(|p| !gone.done.contains(p))
                .collect();
            for peer in &targets {
                info!(%node, %peer, "reclaiming the address space of a deleted node's router");
                self.actions.push_back(Action::Rmpeer {
                    node: node.clone(),
                    peer: *peer,
                    gone: true,
                });
            }
            gone.in_flight = targets;
        }
        // Nodes with nothing left to reclaim are done.
        self.gone.retain(|node, g| {
            let keep = !g.in_flight.is_empty() || g.dead_since.is_none_or(|s| now < s + grace);
            if !keep {
                debug!(%node, "nothing left to reclaim for a deleted node");
            }
            keep
        });
        self.next_check = next;
    }

    /// The peers list could not be read; try again after [`Config::poll`].
    pub fn handle_peers_failed(&mut self, now: Time) {
        self.next_check = now + self.config.poll;
    }

    /// The router's answer to [`Action::Rmpeer`].
    pub fn handle_reclaim(&mut self, now: Time, node: &str, peer: PeerName, outcome: ReclaimOutcome) {
        let Some(gone) = self.gone.get_mut(node) else { return };
        if !gone.in_flight.remove(&peer) {
            return;
        }
        match outcome {
            ReclaimOutcome::Started | ReclaimOutcome::Unknown => {
                gone.done.insert(peer);
            }
            ReclaimOutcome::Refused | ReclaimOutcome::Failed => {
                // Wait a whole grace period again before the next try.
                gone.dead_since = Some(now);
            }
        }
        if gone.in_flight.is_empty() {
            // Every reclaim answered: the next look at the peers list finishes the node or waits again.
            self.next_check = self.next_check.min(now);
        }
    }

    /// When [`Discovery::handle_peers`] is next wanted; `None` while no deleted node waits.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.gone
            .values()
            .any(|g| g.in_flight.is_empty())
            .then_some(self.next_check)
    }

    /// The next thing to ask of the local router.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The addresses connected to, one per node that has one.
    pub fn peer_addrs(&self) -> impl Iterator<Item = &PeerAddr> {
        self.nodes.values().filter_map(|k| k.addr.as_ref())
    }

    /// Forgets `addr`, unless another node still has it.
    fn forget(&mut self, addr: PeerAddr) {
        if !self.nodes.values().any(|k| k.addr.as_ref() == Some(&addr)) {
            self.actions.push_back(Action::Forget(addr));
        }
    }
}

impl Node {
    /// The PEER address of this node's router: the first `InternalIP` (IPv4
    /// first), else the first `ExternalIP` (IPv4 first), else the `Hostname`.
    pub fn peer_addr(&self, port: u16) -> Option<PeerAddr> {
        for kind in ["InternalIP", "ExternalIP"] {
            let ips: Vec<IpAddr> = self
                .addresses
                .iter()
                .filter(|a| a.kind == kind)
                .filter_map(|a| a.address.trim().parse().ok())
                .collect();
            if let Some(ip) = ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()) {
                return SocketAddr::new(*ip, port).to_string().parse().ok();
            }
        }
        self.addresses
            .iter()
            .filter(|a| a.kind == "Hostname")
            .find_map(|a| format!("{}:{port}", a.address.trim()).parse().ok())
    }

    /// Every IP address of the node.
    fn ips(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .filter_map(|a| a.address.trim().parse().ok())
            .collect()
    }
}

/// Default [`Config::grace`]: long enough to ride out a router restart or a
/// node object deleted and registered again by its kubelet.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Default [`Config::poll`].
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        Node {
            name: name.to_owned(),
            addresses: addrs
                .iter()
                .map(|(k, a)| NodeAddress {
                    kind: (*k).to_owned(),
                    address: (*a).to_owned(),
                })
                .collect(),
        }
    }

    fn internal(name: &str, ip: &str) -> Node {
        node(name, &[("Hostname", name), ("InternalIP", ip)])
    }

    fn addr(s: &str) -> PeerAddr {
        s.parse().unwrap()
    }

    fn drain(d: &mut Discovery) -> Vec<Action> {
        std::iter::from_fn(|| d.poll_action()).collect()
    }

    fn core() -> Discovery {
        Discovery::new(Config {
            grace: Duration::from_secs(30),
            poll: Duration::from_secs(5),
            ..Config::new("n1")
        })
    }

    fn t(s: u64) -> Time {
        Time::from_millis(s * 1000)
    }

    fn peer(name: u64, nickname: &str, ip: &str, established: bool) -> PeerView {
        PeerView {
            name: Some(PeerName::from_u64(name)),
            nickname: Some(nickname.to_owned()),
            ip: Some(ip.parse().unwrap()),
            established,
        }
    }

    #[test]
    fn address_choice() {
        let n = node(
            "a",
            &[
                ("Hostname", "a.example"),
                ("ExternalIP", "203.0.113.1"),
                ("InternalIP", "fd00::1"),
                ("InternalIP", "10.0.0.1"),
            ],
        );
        assert_eq!(n.peer_addr(6783), Some(addr("10.0.0.1:6783")));
        let n = node("a", &[("InternalIP", "fd00::1"), ("ExternalIP", "203.0.113.1")]);
        assert_eq!(n.peer_addr(7000), Some(addr("[fd00::1]:7000")));
        let n = node("a", &[("InternalIP", "junk"), ("ExternalIP", "203.0.113.1")]);
        assert_eq!(n.peer_addr(6783), Some(addr("203.0.113.1:6783")));
        let n = node("a", &[("Hostname", "a.example")]);
        assert_eq!(n.peer_addr(6783), Some(addr("a.example:6783")));
        assert_eq!(node("a", &[]).peer_addr(6783), None);
    }

    #[test]
    fn listed_nodes_are_connected_except_this_one() {
        let mut d = core();
        d.handle_listed(
            t(0),
            vec![
                internal("n1", "10.0.0.1"),
                internal("n2", "10.0.0.2"),
                internal("n3", "10.0.0.3"),
            ],
        );
        assert_eq!(
            drain(&mut d),
            [
                Action::Connect(addr("10.0.0.2:6783")),
                Action::Connect(addr("10.0.0.3:6783"))
            ]
        );
        // The same list again changes nothing.
        d.handle_listed(t(1), vec![internal("n2", "10.0.0.2"), internal("n3", "10.0.0.3")]);
        assert_eq!(drain(&mut d), []);
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn address_change_forgets_the_old_one() {
        let mut d = core();
        d.handle_applied(node("n2", &[]));
        assert_eq!(drain(&mut d), []);
        d.handle_applied(internal("n2", "10.0.0.2"));
        assert_eq!(drain(&mut d), [Action::Connect(addr("10.0.0.2:6783"))]);
        d.handle_applied(internal("n2", "10.0.0.9"));
        assert_eq!(
            drain(&mut d),
            [
                Action::Forget(addr("10.0.0.2:6783")),
                Action::Connect(addr("10.0.0.9:6783"))
            ]
        );
    }

    #[test]
    fn relist_deletes_missing_nodes() {
        let mut d = core();
        d.handle_listed(t(0), vec![internal("n2", "10.0.0.2"), internal("n3", "10.0.0.3")]);
        drain(&mut d);
        d.handle_listed(t(10), vec![internal("n3", "10.0.0.3")]);
        assert_eq!(drain(&mut d), [Action::Forget(addr("10.0.0.2:6783"))]);
        assert_eq!(d.poll_timeout(), Some(t(10)));
    }

    #[test]
    fn deleted_node_with_live_router_is_not_reclaimed() {
        let mut d = core();
        d.handle_applied(internal("n2", "10.0.0.2"));
        drain(&mut d);
        d.handle_deleted(t(0), "n2");
        assert_eq!(drain(&mut d), [Action::Forget(addr("10.0.0.2:6783"))]);
        // Still connected (it dialled us): never reclaimed, however long.
        for s in (0..600).step_by(5) {
            d.handle_peers(t(s), &[peer(2, "n2", "10.0.0.2", true)]);
            assert_eq!(drain(&mut d), [], "at {s} s");
        }
        // Matched by address even under another nickname.
        d.handle_peers(t(600), &[peer(2, "other", "10.0.0.2", true)]);
        d.handle_peers(t(700), &[peer(2, "other", "10.0.0.2", true)]);
        assert_eq!(drain(&mut d), []);
        assert!(d.poll_timeout().is_some(), "still watched");
    }

    #[test]
    fn deleted_and_dead_router_is_reclaimed_after_the_grace() {
        let mut d = core();
        d.handle_applied(internal("n2", "10.0.0.2"));
        d.handle_applied(internal("n3", "10.0.0.3"));
        drain(&mut d);
        d.handle_deleted(t(100), "n2");
        drain(&mut d);
        let dead = [peer(2, "n2", "10.0.0.2", false), peer(3, "n3", "10.0.0.3", true)];
        d.handle_peers(t(100), &dead);
        assert_eq!(drain(&mut d), []);
        assert_eq!(d.poll_timeout(), Some(t(105)));
        // Back for a moment: the grace starts again.
        d.handle_peers(t(120), &[peer(2, "n2", "10.0.0.2", true)]);
        d.handle_peers(t(125), &dead);
        d.handle_peers(t(150), &dead);
        assert_eq!(drain(&mut d), []);
        d.handle_peers(t(155), &dead);
        let rmpeer = Action::Rmpeer {
            gone: true,
            node: "n2".into(),
            peer: PeerName::from_u64(2),
        };
        assert_eq!(drain(&mut d), std::slice::from_ref(&rmpeer));
        // Nothing more while the reclaim is in flight.
        assert_eq!(d.poll_timeout(), None);
        d.handle_peers(t(160), &dead);
        assert_eq!(drain(&mut d), []);

        // Refused (someone still sees it): a whole grace again, then a retry.
        d.handle_reclaim(t(160), "n2", PeerName::from_u64(2), ReclaimOutcome::Refused);
        d.handle_peers(t(170), &dead);
        assert_eq!(drain(&mut d), []);
        d.handle_peers(t(190), &dead);
        assert_eq!(drain(&mut d), [rmpeer]);
        d.handle_reclaim(t(191), "n2", PeerName::from_u64(2), ReclaimOutcome::Started);
        assert_eq!(d.poll_timeout(), Some(t(191)));
        d.handle_peers(t(191), &dead);
        assert_eq!(drain(&mut d), [], "reclaimed once only");
        assert_eq!(d.poll_timeout(), None, "done with n2");
    }

    #[test]
    fn a_node_that_comes_back_is_not_reclaimed() {
        let mut d = core();
        d.handle_applied(internal("n2", "10.0.0.2"));
        d.handle_deleted(t(0), "n2");
        drain(&mut d);
        d.handle_peers(t(0), &[peer(2, "n2", "10.0.0.2", false)]);
        d.handle_applied(internal("n2", "10.0.0.2"));
        assert_eq!(drain(&mut d), [Action::Connect(addr("10.0.0.2:6783"))]);
        d.handle_peers(t(100), &[peer(2, "n2", "10.0.0.2", false)]);
        assert_eq!(drain(&mut d), []);
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn unknown_router_needs_no_reclaim_and_own_node_is_ignored() {
        let mut d = core();
        d.handle_applied(internal("n1", "10.0.0.1"));
        d.handle_deleted(t(0), "n1");
        assert_eq!(drain(&mut d), []);
        assert_eq!(d.poll_timeout(), None);

        d.handle_applied(internal("n2", "10.0.0.2"));
        d.handle_deleted(t(0), "n2");
        drain(&mut d);
        d.handle_peers(t(0), &[]);
        d.handle_peers(t(30), &[]);
        assert_eq!(drain(&mut d), []);
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn every_identity_of_the_node_is_reclaimed_once() {
        let mut d = core();
        d.handle_applied(internal("n2", "10.0.0.2"));
        d.handle_deleted(t(0), "n2");
        drain(&mut d);
        let two = [peer(2, "n2", "10.0.0.2", false), peer(7, "n2", "10.0.0.2", false)];
        d.handle_peers(t(0), &two);
        d.handle_peers(t(30), &two);
        let got = drain(&mut d);
        assert_eq!(got.len(), 2, "{got:?}");
        d.handle_reclaim(t(31), "n2", PeerName::from_u64(2), ReclaimOutcome::Started);
        d.handle_reclaim(t(31), "n2", PeerName::from_u64(7), ReclaimOutcome::Unknown);
        d.handle_peers(t(31), &two);
        assert_eq!(drain(&mut d), []);
        assert_eq!(d.poll_timeout(), None);
    }
}
