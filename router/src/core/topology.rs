//! The mesh's view of itself: one entry per router, merged by version.
//!
//! Each router publishes its own [`PeerEntry`] (name, nickname, version,
//! endpoints, the routers it holds an authenticated control connection to)
//! and only it bumps the version. Gossip carries entries, digests of
//! `(name, version)` and a summary hash, never the whole view every time.
//! An edge counts for routing only when both ends list it (a *confirmed*
//! connection), so one router cannot invent links for others.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use ipam_crdt::PeerName;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// What one router says about itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Its name (derived from its public key).
    pub name: PeerName,
    /// Its nickname (hostname by default).
    pub nickname: String,
    /// Bumped by the router on every change of its entry.
    pub version: u64,
    /// Where its control endpoint can be reached.
    pub endpoints: Vec<SocketAddr>,
    /// Routers it holds an authenticated control connection to.
    pub neighbours: BTreeSet<PeerName>,
    /// Where it stands in creating the address ring.
    pub ipam: IpamInit,
    /// How to reach its data plane, once it has one.
    pub data: Option<DataPlane>,
}

/// What a router publishes about its data plane: the static key its
/// handshakes are made with (its name is a hash of this key, so others can
/// check that the two belong together) and its UDP port, on the addresses of
/// its control endpoints.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DataPlane {
    /// The static X25519 public key.
    pub public_key: [u8; 32],
    /// The data-plane UDP port (`--dataplane-port`).
    pub port: u16,
}

/// A router's part in creating the address ring by consensus
/// (`--init-peer-count`): single-decree Paxos carried in the gossiped
/// entries (`docs/control-plane.md`, "Ring creation by consensus"). Written
/// only by the router itself, in its own entry, and durable before it is
/// announced.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct IpamInit {
    /// It has a ring (created or adopted): nobody needs to create one.
    pub has_ring: bool,
    /// As a proposer: the ballot it runs, if any (`ballot.proposer` is this
    /// router). A ballot is never run twice: a new one takes a round above
    /// every round its router has seen.
    pub ballot: Option<Ballot>,
    /// As a proposer: the seed list (sorted) it asks the routers to accept
    /// under [`IpamInit::ballot`], once a quorum promised that ballot. Set
    /// at most once per ballot.
    pub value: Option<Vec<PeerName>>,
    /// As an acceptor: the highest ballot it promised; it accepts nothing
    /// below it.
    pub promised: Option<Ballot>,
    /// As an acceptor: the last seed list it accepted, with its ballot.
    pub accepted: Option<(Ballot, Vec<PeerName>)>,
}

/// A round of ring creation: a number, and the router that runs it. Ordered
/// by round, then by router, so two routers never run the same ballot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Ballot {
    /// The round.
    pub round: u64,
    /// The router that runs it.
    pub proposer: PeerName,
}

impl IpamInit {
    /// The seed list this router proposes under its ballot, with the ballot.
    pub fn proposal(&self) -> Option<(Ballot, &[PeerName])> {
        Some((self.ballot?, self.value.as_deref()?))
    }

    /// Every ballot this entry names: the one it runs, the one it
    /// promised, the one it accepted under.
    pub fn ballots(&self) -> impl Iterator<Item = Ballot> {
        [self.ballot, self.promised, self.accepted.as_ref().map(|a| a.0)]
            .into_iter()
            .flatten()
    }
}

/// Every router's latest entry, as this router knows it.
#[derive(Clone, Debug)]
pub struct Topology {
    me: PeerName,
    /// Shared, so that passing an entry on (gossip) copies a pointer, not
    /// the entry.
    entries: BTreeMap<PeerName, Arc<PeerEntry>>,
    /// The same entries by name in a hash map: gossip looks one up per
    /// name it hears of (every announcement lists many), and at 2,000
    /// routers a tree search per name was a tenth of meshsim's time.
    index: FxHashMap<PeerName, Arc<PeerEntry>>,
    /// XOR of `mix(name, version)` over all entries: an order-free summary
    /// two routers compare before exchanging digests.
    summary: u64,
}

impl Topology {
    /// A view holding only this router's own entry (version 1).
    pub fn new(me: PeerName, nickname: String, endpoints: Vec<SocketAddr>) -> Self {
        let own = PeerEntry {
            name: me,
            nickname,
            version: 1,
            endpoints,
            neighbours: BTreeSet::new(),
            ipam: IpamInit::default(),
            data: None,
        };
        let mut t = Self {
            me,
            entries: BTreeMap::new(),
            index: FxHashMap::default(),
            summary: 0,
        };
        t.put(Arc::new(own));
        t
    }

    /// This router's name.
    pub fn me(&self) -> PeerName {
        self.me
    }

    /// This router's own entry.
    pub fn own(&self) -> &PeerEntry {
        &self.index[&self.me]
    }

    /// The entry of `name`, if known.
    pub fn get(&self, name: PeerName) -> Option<&PeerEntry> {
        self.index.get(&name).map(|e| &**e)
    }

    /// The entry of `name` as shared, to pass on.
    pub fn get_shared(&self, name: PeerName) -> Option<&Arc<PeerEntry>> {
        self.index.get(&name)
    }

    /// Every known entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> + '_ {
        self.entries.values().map(|e| &**e)
    }

    /// Number of known routers, this one included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: the view holds at least this router.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The summary hash of the view (equal views have equal summaries).
    pub fn summary(&self) -> u64 {
        self.summary
    }

    /// Replaces this router's neighbour set; bumps its version if it changed.
    /// Returns whether it changed.
    pub fn set_neighbours(&mut self, neighbours: BTreeSet<PeerName>) -> bool {
        self.update_own(|own| own.neighbours = neighbours)
    }

    /// Replaces this router's advertised endpoints; bumps its version if they
    /// changed. Returns whether they changed.
    pub fn set_endpoints(&mut self, endpoints: Vec<SocketAddr>) -> bool {
        self.update_own(|own| own.endpoints = endpoints)
    }

    /// Publishes our data plane; bumps the version if it changed.
    pub fn set_data(&mut self, data: Option<DataPlane>) -> bool {
        self.update_own(|own| own.data = data)
    }

    /// Sets our own ring-creation state; bumps the version if it changed.
    pub fn set_ipam(&mut self, ipam: IpamInit) -> bool {
        self.update_own(|own| own.ipam = ipam)
    }

    /// Applies `change` to our own entry; if that changed it, bumps the
    /// version. Returns whether it changed.
    fn update_own(&mut self, change: impl FnOnce(&mut PeerEntry)) -> bool {
        let mut own = self.own().clone();
        change(&mut own);
        if own == *self.own() {
            return false;
        }
        own.version += 1;
        self.put(Arc::new(own));
        true
    }

    /// Merges entries received from a neighbour. Returns the names of those
    /// that were new or newer here (to pass on). An entry about this router that claims a
    /// version at or above ours (we restarted and lost count) makes us jump
    /// past it, and our own entry is returned to be re-announced.
    pub fn merge<E: Into<Arc<PeerEntry>>>(&mut self, incoming: impl IntoIterator<Item = E>) -> Vec<PeerName> {
        let mut changed = Vec::new();
        for e in incoming {
            let e: Arc<PeerEntry> = e.into();
            if e.name == self.me {
                // Our own entry echoed back is nothing new; a different one at
                // our version or above is from a previous life (we restarted).
                let own = self.own();
                if e.version > own.version || (e.version == own.version && *e != *own) {
                    let mut own = self.own().clone();
                    own.version = e.version + 1;
                    self.put(Arc::new(own));
                    changed.push(self.me);
                }
                continue;
            }
            if self.index.get(&e.name).is_none_or(|mine| mine.version < e.version) {
                changed.push(e.name);
                self.put(e);
            }
        }
        changed
    }

    /// `(name, version)` of every entry.
    pub fn digest(&self) -> Vec<(PeerName, u64)> {
        self.entries.values().map(|e| (e.name, e.version)).collect()
    }

    /// Given a peer's digest: the entries it lacks or has older, and the names
    /// it has newer or that we lack.
    ///
    /// One walk over both lists, in name order (a digest is sent sorted;
    /// one that is not is sorted first), not a lookup per entry: at 2,000
    /// routers a digest arrives several times a second.
    pub fn diff(&self, theirs: &[(PeerName, u64)]) -> (Vec<Arc<PeerEntry>>, Vec<PeerName>) {
        let sorted;
        let theirs = if theirs.is_sorted_by(|a, b| a.0 < b.0) {
            theirs
        } else {
            let mut v = theirs.to_vec();
            v.sort_unstable();
            v.dedup_by_key(|e| e.0);
            sorted = v;
            &sorted[..]
        };
        let mut send = Vec::new();
        let mut want = Vec::new();
        let mut theirs = theirs.iter().peekable();
        for (name, e) in &self.entries {
            while let Some(&&(n, _)) = theirs.peek()
                && n < *name
            {
                want.push(n);
                theirs.next();
            }
            match theirs.next_if(|(n, _)| n == name) {
                Some(&(_, v)) if v > e.version => want.push(*name),
                Some(&(_, v)) if v == e.version => {}
                _ => send.push(e.clone()),
            }
        }
        want.extend(theirs.map(|(n, _)| *n));
        (send, want)
    }

    /// Whether `a` and `b` both list each other: a confirmed connection.
    pub fn confirmed(&self, a: PeerName, b: PeerName) -> bool {
        let lists = |x: PeerName, y: PeerName| self.index.get(&x).is_some_and(|e| e.neighbours.contains(&y));
        lists(a, b) && lists(b, a)
    }

    /// Next hop from this router to every reachable router over confirmed
    /// connections (breadth-first, so shortest in hops; ties broken by name,
    /// so every router computes the same paths from the same view).
    pub fn next_hops(&self) -> BTreeMap<PeerName, PeerName> {
        let mut hops = BTreeMap::new();
        let mut queue = VecDeque::new();
        for &n in &self.own().neighbours {
            if self.confirmed(self.me, n) && hops.insert(n, n).is_none() {
                queue.push_back(n);
            }
        }
        while let Some(x) = queue.pop_front() {
            let via = hops[&x];
            let Some(e) = self.index.get(&x) else { continue };
            for &y in &e.neighbours {
                if y != self.me && !hops.contains_key(&y) && self.confirmed(x, y) {
                    hops.insert(y, via);
                    queue.push_back(y);
                }
            }
        }
        hops
    }

    fn put(&mut self, e: Arc<PeerEntry>) {
        if let Some(old) = self.index.get(&e.name) {
            self.summary ^= mix(old.name, old.version);
        }
        self.summary ^= mix(e.name, e.version);
        self.index.insert(e.name, e.clone());
        self.entries.insert(e.name, e);
    }
}

/// A 64-bit mix of name and version (splitmix64 finaliser): summaries of
/// different views collide only by chance.
fn mix(name: PeerName, version: u64) -> u64 {
    let mut z = name.to_u64() ^ version.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn topo(n: u64) -> Topology {
        Topology::new(p(n), format!("h{n}"), vec![format!("10.0.0.{n}:6783").parse().unwrap()])
    }

    #[test]
    fn newer_versions_win_and_are_passed_on() {
        let mut a = topo(1);
        let mut b = topo(2);
        b.set_neighbours([p(1)].into());
        let changed = a.merge([b.own().clone()]);
        assert_eq!(changed.len(), 1);
        assert_eq!(a.get(p(2)).unwrap().version, 2);
        assert!(
            a.merge([b.own().clone()]).is_empty(),
            "same version again changes nothing"
        );
        let mut stale = b.own().clone();
        stale.version = 1;
        assert!(a.merge([stale]).is_empty(), "older version is ignored");
    }

    #[test]
    fn own_entry_from_a_previous_life_makes_us_jump_past_it() {
        let mut a = topo(1);
        let mut ghost = a.own().clone();
        ghost.version = 41;
        let changed = a.merge([ghost]);
        assert_eq!(a.own().version, 42);
        assert_eq!(changed, vec![p(1)]);
    }

    #[test]
    fn new_endpoints_bump_the_version_once() {
        let mut a = topo(1);
        let addrs = vec!["10.9.9.9:6783".parse().unwrap()];
        assert!(a.set_endpoints(addrs.clone()));
        assert_eq!(a.own().version, 2);
        assert!(!a.set_endpoints(addrs));
        assert_eq!(a.own().version, 2);
    }

    #[test]
    fn own_entry_echoed_back_is_ignored() {
        let mut a = topo(1);
        let echo = a.own().clone();
        assert!(a.merge([echo]).is_empty());
        assert_eq!(a.own().version, 1);
        let mut other_life = a.own().clone();
        other_life.nickname = "previous".into();
        assert_eq!(a.merge([other_life]).len(), 1);
        assert_eq!(a.own().version, 2);
    }

    #[test]
    fn summary_equal_iff_views_equal_and_diff_finds_the_gap() {
        let mut a = topo(1);
        let mut b = topo(2);
        assert_ne!(a.summary(), b.summary());
        a.merge([b.own().clone()]);
        b.merge([a.own().clone()]);
        assert_eq!(a.summary(), b.summary());
        b.set_neighbours([p(1)].into());
        assert_ne!(a.summary(), b.summary());
        let (send, want) = b.diff(&a.digest());
        assert_eq!(send, vec![Arc::new(b.own().clone())]);
        assert!(want.is_empty());
        let (send, want) = a.diff(&b.digest());
        assert!(send.is_empty());
        assert_eq!(want, vec![p(2)]);
    }

    #[test]
    fn diff_walks_both_digests_in_order_and_accepts_an_unsorted_one() {
        let mut a = topo(5);
        let mut b = topo(2);
        // a knows 1, 3 (newer), 4; b knows 3 (older), 6; both know each other.
        a.merge([topo(1).own().clone(), topo(4).own().clone()]);
        let mut three = topo(3);
        b.merge([three.own().clone(), topo(6).own().clone()]);
        three.set_neighbours([p(9)].into());
        a.merge([three.own().clone()]);
        a.merge([b.own().clone()]);
        b.merge([a.own().clone()]);
        let names = |v: &[Arc<PeerEntry>]| v.iter().map(|e| e.name).collect::<Vec<_>>();
        let (send, want) = a.diff(&b.digest());
        assert_eq!(names(&send), [p(1), p(3), p(4)]);
        assert_eq!(want, [p(6)]);
        let mut shuffled = b.digest();
        shuffled.reverse();
        let (send2, want2) = a.diff(&shuffled);
        assert_eq!((names(&send2), want2), (names(&send), want));
        let (send, want) = b.diff(&a.digest());
        assert_eq!(names(&send), [p(6)]);
        assert_eq!(want, [p(1), p(3), p(4)]);
    }

    #[test]
    fn routes_use_only_confirmed_edges() {
        // 1 - 2 - 3 confirmed; 3 claims 4, but 4 does not list 3.
        let mut v = topo(1);
        v.set_neighbours([p(2)].into());
        let entry = |n: u64, nb: &[u64]| PeerEntry {
            name: p(n),
            nickname: String::new(),
            version: 5,
            endpoints: vec![],
            neighbours: nb.iter().map(|&x| p(x)).collect(),
            ipam: IpamInit::default(),
            data: None,
        };
        v.merge([entry(2, &[1, 3]), entry(3, &[2, 4]), entry(4, &[])]);
        let hops = v.next_hops();
        assert_eq!(hops.get(&p(2)), Some(&p(2)));
        assert_eq!(hops.get(&p(3)), Some(&p(2)));
        assert_eq!(hops.get(&p(4)), None, "unconfirmed edge is not used");
    }
}
