//! Mesh membership: which routers to hold control connections to, and the
//! gossip that keeps every router's [`Topology`] in step.
//!
//! Driven like `quinn_proto::Connection`: feed events in with `handle_*`
//! (connections up and down, dial failures, messages, timeouts) and commands
//! (`connect`, `forget`); drain `poll_transmit`, `poll_dial` and
//! `poll_event` after each call, and call [`Mesh::handle_timeout`] at
//! [`Mesh::poll_timeout`].
//!
//! The mesh has bounded degree: a router dials the routers it was told about
//! (`weft launch PEER...`, `weft connect`) always, and routers it learned
//! by gossip only until it holds `target_degree` connections; it accepts
//! up to `conn_limit`. Changes are batched (`flush_interval`) and announced
//! as `(name, version)` pairs to every neighbour (at most `fanout`), which
//! request the entries they lack from one announcer, so each entry version
//! reaches each router about once; every `gossip_interval` a
//! router sends one random neighbour a summary hash, and only on mismatch do
//! they exchange digests and then the missing entries. Steady-state cost is
//! one small message per router per interval, whatever the mesh size.
//!
//! What a router advertises as its endpoints is chosen here too
//! ([`super::endpoints`]): the shell feeds in the host's interface addresses
//! ([`Mesh::set_local_addrs`]), and every neighbour reports the address it
//! sees this router at ([`Message::Seen`], sent on every new connection).
//! Routers learned by gossip are dialed at their advertised endpoints in
//! order, each address backing off on its own, so one that never answers is
//! not retried in a tight loop and the next one is tried meanwhile; a router
//! that shows itself alive again (a newer entry by gossip, or the shell hears
//! it, [`Mesh::handle_alive`]) is dialed at once, so a healed partition does
//! not wait out backoffs that grew while it lasted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipam_crdt::PeerName;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::Time;
use super::endpoints::{self, LocalAddr, Policy};
use super::topology::{PeerEntry, Topology};

/// Tuning of the mesh core.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most control connections held at once (`--conn-limit`). Default 64.
    pub conn_limit: usize,
    /// Connections sought to routers learned by gossip. Default 8: with
    /// random choices this keeps a mesh of thousands connected with a
    /// diameter of a few hops, at a few connections per router.
    pub target_degree: usize,
    /// Period of the anti-entropy summary. Default 3 s: it repairs what the
    /// push missed (a partition that heals changes many entries at once), and
    /// costs one 8-byte hash per router per period when views agree.
    pub gossip_interval: Duration,
    /// Changes are batched and pushed this often. Default 200 ms: a join
    /// storm costs one batch per window, not one message per change.
    pub flush_interval: Duration,
    /// Most neighbours each batch of changes is announced to, chosen at
    /// random; anti-entropy catches whoever the push missed. Default
    /// `usize::MAX`: every neighbour. An announcement is only `(name,
    /// version)` pairs and the entries themselves still cross once per
    /// router, so telling every neighbour costs little; with 4 of about 12,
    /// a router all of whose neighbours passed it over waited for
    /// anti-entropy, which made the tail of a heal (meshsim, 1,000 routers:
    /// 6.5 s with 4, 4.5-5.0 s with 8, 2.0-2.5 s with all).
    pub fanout: usize,
    /// First retry delay after a failed dial; doubles up to `backoff_max`. Default 1 s.
    pub backoff_min: Duration,
    /// Longest retry delay. Default 60 s.
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            conn_limit: 64,
            target_degree: 8,
            gossip_interval: Duration::from_secs(3),
            flush_interval: Duration::from_millis(200),
            fanout: usize::MAX,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A gossip message between neighbours.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Entries: merge them and announce what is new to you.
    Update(Vec<Arc<PeerEntry>>),
    /// `(name, version)` of entries that are new to the sender: request those
    /// that are new to you too.
    Announce(Vec<(PeerName, u64)>),
    /// The sender's summary hash: reply with a digest if yours differs.
    Summary(u64),
    /// The sender's `(name, version)` list: reply with what it lacks, ask for what you lack.
    Digest(Vec<(PeerName, u64)>),
    /// Entries the sender wants.
    Request(Vec<PeerName>),
    /// The address the sender sees the receiver at (the far end of their
    /// connection): how a router learns the addresses it is reached at,
    /// behind a 1:1 NAT too. Sent once per new connection. Carried in a
    /// frame kind of its own (`core::wire`), so routers from before it skip
    /// it.
    Seen(SocketAddr),
}

/// Why a dial or connection did not result in a neighbour. Shown in `weft status`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Failure {
    /// No answer, or the network refused.
    Unreachable,
    /// The other side does not share our cluster secret (or we not theirs).
    AuthenticationFailed,
    /// One side holds `conn_limit` connections already.
    ConnectionLimit,
    /// The connection was lost.
    Lost(String),
}

/// Where we stand with a router, as `weft status` shows it.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum PeerState {
    /// An authenticated control connection is up.
    Established,
    /// Dialing now.
    Dialing,
    /// The last attempt failed; retrying at the given time.
    Retrying {
        /// Why the last attempt failed.
        reason: Failure,
        /// When the next attempt is due.
        at: Time,
    },
    /// Known through gossip; no connection is needed (the mesh has enough).
    NotNeighbour,
}

/// Something the shell may want to know.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A neighbour's control connection is established.
    Up(PeerName),
    /// A neighbour's control connection is gone.
    Down(PeerName),
    /// The topology changed (entries merged or our own entry changed).
    TopologyChanged,
}

/// The shell should close this connection: the core refused it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refused(pub Failure);

/// The shell's handle for one control connection.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(pub u64);

/// One router's mesh membership state.
#[derive(Debug)]
pub struct Mesh {
    cfg: Config,
    topo: Topology,
    rng: ChaCha8Rng,
    /// Established neighbours.
    conns: BTreeMap<PeerName, Conn>,
    /// How this router chooses the endpoints it advertises.
    advertise: Policy,
    /// The host's interface addresses, as the shell last listed them.
    local: Vec<LocalAddr>,
    /// The IP each neighbour reports seeing this router at.
    seen: BTreeMap<PeerName, IpAddr>,
    /// Addresses the operator asked for: dialed until connected, whatever the degree.
    persistent: BTreeSet<SocketAddr>,
    /// Dial state per address.
    dials: BTreeMap<SocketAddr, Dial>,
    transmits: VecDeque<(PeerName, Message)>,
    dial_queue: VecDeque<SocketAddr>,
    events: VecDeque<Event>,
    next_gossip: Time,
    /// Entries changed since the last push.
    pending: BTreeSet<PeerName>,
    /// Entry versions each neighbour showed it holds since the last flush
    /// (it announced them, or sent them, so this includes where each entry
    /// came from): the flush does not announce them back to it.
    heard: FxHashMap<PeerName, FxHashMap<PeerName, u64>>,
    /// Our own neighbour set changed since the last push.
    own_dirty: bool,
    /// When the pending changes are pushed, if any are pending.
    next_flush: Option<Time>,
    /// Entries requested after an announcement, with the version and when:
    /// not requested again from other announcers until this one is stale.
    requested: FxHashMap<PeerName, (u64, Time)>,
}

/// One established control connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    id: ConnId,
    /// The address we dialed; `None` for an inbound connection.
    dialed: Option<SocketAddr>,
    /// The far end's address, as this side sees it.
    remote: SocketAddr,
    /// When it came up.
    since: Time,
}

#[derive(Clone, Debug)]
struct Dial {
    /// Who we expect there, if learned from gossip.
    expect: Option<PeerName>,
    attempts: u32,
    /// When [`Mesh::handle_alive`] last brought its retry forward.
    early_at: Option<Time>,
    state: DialState,
}

#[derive(Clone, Debug)]
enum DialState {
    InFlight,
    Waiting { until: Time, reason: Failure },
    Connected,
}

impl Mesh {
    /// A router's mesh core, advertising endpoints as `advertise` says.
    /// `seed` seeds its random choices (the shell passes OS randomness, the
    /// simulator a test seed).
    pub fn new(cfg: Config, me: PeerName, nickname: String, advertise: Policy, now: Time, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let first = cfg.gossip_interval.mul_f64(rng.random_range(0.1..1.0));
        let endpoints = advertise.choose(&[], &BTreeMap::new());
        Self {
            cfg,
            topo: Topology::new(me, nickname, endpoints),
            rng,
            conns: BTreeMap::new(),
            advertise,
            local: Vec::new(),
            seen: BTreeMap::new(),
            persistent: BTreeSet::new(),
            dials: BTreeMap::new(),
            transmits: VecDeque::new(),
            dial_queue: VecDeque::new(),
            events: VecDeque::new(),
            next_gossip: now + first,
            pending: BTreeSet::new(),
            heard: FxHashMap::default(),
            own_dirty: false,
            next_flush: None,
            requested: FxHashMap::default(),
        }
    }

    // ---- getters ----

    /// The topology as this router knows it.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Established neighbours.
    pub fn neighbours(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.conns.keys().copied()
    }

    /// The far end of the control connection to `peer`, as this router sees
    /// it, if one is up.
    pub fn remote_of(&self, peer: PeerName) -> Option<SocketAddr> {
        self.conns.get(&peer).map(|c| c.remote)
    }

    /// The control connection the mesh holds to `peer`, if one is up.
    pub fn connection_of(&self, peer: PeerName) -> Option<ConnId> {
        self.conns.get(&peer).map(|c| c.id)
    }

    /// The endpoints this router advertises now.
    pub fn advertised(&self) -> &[SocketAddr] {
        &self.topo.own().endpoints
    }

    /// Where we stand with every router we know or try to reach: one row per
    /// router, by name, with the address of its connection (or the one being
    /// dialed, or the first it advertises); an address the operator gave
    /// whose router is not known yet is a row of its own, by address. An
    /// operator's address that belongs to a connected router (whichever side
    /// dialed) is that router's row.
    pub fn peer_states(&self) -> Vec<(Option<PeerName>, Option<SocketAddr>, PeerState)> {
        let mut out = Vec::new();
        let mut listed = BTreeSet::new();
        for (n, c) in &self.conns {
            listed.insert(*n);
            out.push((Some(*n), Some(c.remote), PeerState::Established));
        }
        // A router being dialed at several addresses shows the most hopeful.
        let mut dialing: BTreeMap<PeerName, (SocketAddr, PeerState)> = BTreeMap::new();
        for (addr, d) in &self.dials {
            let state = match &d.state {
                DialState::InFlight => PeerState::Dialing,
                DialState::Waiting { until, reason } => PeerState::Retrying {
                    reason: reason.clone(),
                    at: *until,
                },
                DialState::Connected => continue,
            };
            match d.expect {
                Some(n) if listed.contains(&n) => {}
                Some(n) => {
                    let better = dialing.get(&n).is_none_or(|(_, old)| match (old, &state) {
                        (PeerState::Dialing, _) => false,
                        (_, PeerState::Dialing) => true,
                        (PeerState::Retrying { at: a, .. }, PeerState::Retrying { at: b, .. }) => b < a,
                        _ => false,
                    });
                    if better {
                        dialing.insert(n, (*addr, state));
                    }
                }
                None => out.push((None, Some(*addr), state)),
            }
        }
        for (n, (addr, state)) in dialing {
            listed.insert(n);
            out.push((Some(n), Some(addr), state));
        }
        for e in self.topo.entries() {
            if e.name != self.topo.me() && !listed.contains(&e.name) {
                out.push((Some(e.name), e.endpoints.first().copied(), PeerState::NotNeighbour));
            }
        }
        out
    }

    // ---- commands ----

    /// Dial `addr` and keep dialing it until connected (`weft launch PEER`, `weft connect`).
    pub fn connect(&mut self, now: Time, addr: SocketAddr) {
        self.persistent.insert(addr);
        // Due at once; the reason is only shown if the dial then fails.
        self.dials.entry(addr).or_insert(Dial {
            expect: None,
            attempts: 0,
            early_at: None,
            state: DialState::Waiting {
                until: now,
                reason: Failure::Unreachable,
            },
        });
        self.handle_timeout(now);
    }

    /// Stop dialing `addr` (`weft forget`). An established connection stays.
    pub fn forget(&mut self, addr: SocketAddr) {
        self.persistent.remove(&addr);
        if let Some(d) = self.dials.get(&addr)
            && !matches!(d.state, DialState::Connected)
        {
            self.dials.remove(&addr);
        }
    }

    /// The host's interface addresses changed (the shell lists them at start
    /// and again now and then): advertise anew if that changes the choice.
    pub fn set_local_addrs(&mut self, now: Time, mut addrs: Vec<LocalAddr>) {
        addrs.dedup();
        if addrs != self.local {
            self.local = addrs;
            self.readvertise(now);
        }
    }

    /// Replaces the endpoints this router advertises. Announced with the
    /// next batch if they changed. Normally chosen by the mesh itself from
    /// the [`Policy`] it was made with.
    pub fn set_endpoints(&mut self, now: Time, endpoints: Vec<SocketAddr>) {
        if self.topo.set_endpoints(endpoints) {
            self.events.push_back(Event::TopologyChanged);
            self.pending.insert(self.topo.me());
            self.schedule_flush(now);
        }
    }

    /// Publishes our data plane (in our own entry).
    pub fn set_data(&mut self, now: Time, data: Option<crate::core::topology::DataPlane>) {
        if self.topo.set_data(data) {
            self.pending.insert(self.topo.me());
            self.schedule_flush(now);
        }
    }

    /// Publishes our part in creating the address ring (in our own entry).
    pub fn set_ipam(&mut self, now: Time, ipam: crate::core::topology::IpamInit) {
        if self.topo.set_ipam(ipam) {
            self.pending.insert(self.topo.me());
            self.schedule_flush(now);
        }
    }

    // ---- network input ----

    /// A dial to `addr` failed.
    pub fn handle_dial_failed(&mut self, now: Time, addr: SocketAddr, reason: Failure) {
        self.backoff(now, addr, reason);
        self.match_persistent();
    }

    /// An authenticated control connection `conn` to `peer` is up. `dialed`
    /// is the address we dialed, or `None` for an inbound connection;
    /// `remote` is the far end's address as this side sees it. Returns an
    /// older connection to the same router that the shell must now close.
    ///
    /// # Errors
    /// [`Refused`] when `conn` must be closed: over the limit, or a duplicate
    /// that loses the tie-break (of two connections between two routers,
    /// both sides keep the one dialed by the lower name).
    pub fn handle_connected(
        &mut self,
        now: Time,
        peer: PeerName,
        conn: ConnId,
        dialed: Option<SocketAddr>,
        remote: SocketAddr,
    ) -> Result<Option<ConnId>, Refused> {
        let me = self.topo.me();
        let mut replaced = None;
        if let Some(old) = self.conns.get(&peer).copied() {
            let old_by_lower = old.dialed.is_some() == (me < peer);
            let new_by_lower = dialed.is_some() == (me < peer);
            // The peer dialed us again although we hold a connection it
            // dialed before: a router dials only routers it has no
            // connection to, so it lost that one (it restarted). Keep the new
            // one rather than wait for the old one to time out. Simultaneous
            // opens pair one inbound with one outbound connection on each
            // side, so the tie-break below still decides those.
            // Likewise when it dials us while we hold a connection we dialed
            // long ago: a simultaneous open completes within the handshake
            // timeout, so an inbound connection later than that means the
            // peer lost ours (a restart), and ours is dead too.
            let peer_redialed =
                dialed.is_none() && (old.dialed.is_none() || now.since(old.since) > SIMULTANEOUS_OPEN_WINDOW);
            if !peer_redialed && (old_by_lower || !new_by_lower) {
                if let Some(addr) = dialed {
                    self.mark_connected(addr, peer);
                }
                return Err(Refused(Failure::Lost("duplicate connection".into())));
            }
            replaced = Some(old.id);
        } else if self.conns.len() >= self.cfg.conn_limit {
            if let Some(addr) = dialed {
                self.backoff(now, addr, Failure::ConnectionLimit);
            }
            return Err(Refused(Failure::ConnectionLimit));
        }
        self.conns.insert(
            peer,
            Conn {
                id: conn,
                dialed,
                remote,
                since: now,
            },
        );
        if let Some(addr) = dialed {
            self.mark_connected(addr, peer);
        }
        self.match_persistent();
        if replaced.is_none() {
            self.events.push_back(Event::Up(peer));
            self.neighbours_changed(now);
        }
        // Tell the neighbour where it is seen, and bring it up to date: it
        // answers our digest with what we lack.
        self.transmits.push_back((peer, Message::Seen(remote)));
        self.transmits.push_back((peer, Message::Digest(self.topo.digest())));
        Ok(replaced)
    }

    /// Control connection `conn` to `peer` closed (a replaced duplicate is ignored).
    pub fn handle_disconnected(&mut self, now: Time, peer: PeerName, conn: ConnId, reason: Failure) {
        let Some(c) = self.conns.get(&peer).copied() else {
            return;
        };
        if c.id != conn {
            return;
        }
        self.conns.remove(&peer);
        self.heard.remove(&peer);
        self.events.push_back(Event::Down(peer));
        if self.seen.remove(&peer).is_some() {
            self.readvertise(now);
        }
        if let Some(addr) = c.dialed {
            self.backoff(now, addr, reason.clone());
        }
        // Addresses that stood for this router while it was connected: the
        // operator's are dialed again at once, learned ones are forgotten
        // (gossip offers them again).
        let persistent = &self.persistent;
        self.dials.retain(|addr, d| {
            if d.expect != Some(peer) || !matches!(d.state, DialState::Connected) {
                return true;
            }
            if !persistent.contains(addr) {
                return false;
            }
            d.state = DialState::Waiting {
                until: now,
                reason: reason.clone(),
            };
            true
        });
        self.neighbours_changed(now);
        self.handle_timeout(now);
    }

    /// A gossip message from neighbour `from`.
    pub fn handle_message(&mut self, now: Time, from: PeerName, msg: Message) {
        if !self.conns.contains_key(&from) {
            return;
        }
        match msg {
            Message::Update(entries) => {
                self.note_heard(from, entries.iter().map(|e| (e.name, e.version)));
                for e in &entries {
                    if self.requested.get(&e.name).is_some_and(|(v, _)| *v <= e.version) {
                        self.requested.remove(&e.name);
                    }
                }
                let changed = self.topo.merge(entries);
                if !changed.is_empty() {
                    self.events.push_back(Event::TopologyChanged);
                    for &name in &changed {
                        self.handle_alive(now, name);
                    }
                    self.pending.extend(changed);
                    self.schedule_flush(now);
                    self.match_persistent();
                }
            }
            Message::Announce(versions) => {
                self.note_heard(from, versions.iter().copied());
                let mut want = Vec::new();
                for (n, v) in versions {
                    let newer = n != self.topo.me() && self.topo.get(n).is_none_or(|e| e.version < v);
                    let asked = self
                        .requested
                        .get(&n)
                        .is_some_and(|(rv, at)| *rv >= v && now.since(*at) <= REQUEST_TIMEOUT);
                    if newer && !asked {
                        self.requested.insert(n, (v, now));
                        want.push(n);
                    }
                }
                if !want.is_empty() {
                    self.transmits.push_back((from, Message::Request(want)));
                }
            }
            Message::Summary(hash) => {
                if hash != self.topo.summary() {
                    self.transmits.push_back((from, Message::Digest(self.topo.digest())));
                }
            }
            Message::Digest(theirs) => {
                let (send, want) = self.topo.diff(&theirs);
                if !send.is_empty() {
                    self.transmits.push_back((from, Message::Update(send)));
                }
                if !want.is_empty() {
                    self.transmits.push_back((from, Message::Request(want)));
                }
            }
            Message::Request(names) => {
                let entries: Vec<Arc<PeerEntry>> =
                    names.iter().filter_map(|n| self.topo.get_shared(*n).cloned()).collect();
                if !entries.is_empty() {
                    self.transmits.push_back((from, Message::Update(entries)));
                }
            }
            Message::Seen(addr) => {
                if self.seen.get(&from) != Some(&addr.ip()) {
                    self.seen.insert(from, addr.ip());
                    self.readvertise(now);
                }
            }
        }
    }

    /// Timers: anti-entropy, retries, and dialing learned routers while the
    /// mesh needs connections.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.next_flush.is_some_and(|t| t <= now) {
            self.flush();
        }
        if now >= self.next_gossip {
            // Forgotten every round while no batch waits, so that it stays
            // small while nothing is flushed; a batch needs it to skip
            // where its entries came from.
            if self.next_flush.is_none() {
                self.heard.clear();
            }
            if !self.conns.is_empty() {
                let k = self.rng.random_range(0..self.conns.len());
                let to = *self.conns.keys().nth(k).expect("k < len");
                self.transmits.push_back((to, Message::Summary(self.topo.summary())));
            }
            // Jitter keeps routers from gossiping in lockstep.
            self.next_gossip = now + self.cfg.gossip_interval.mul_f64(self.rng.random_range(0.8..1.2));
        }
        self.match_persistent();
        let due: Vec<SocketAddr> = self
            .dials
            .iter()
            .filter(|(_, d)| matches!(d.state, DialState::Waiting { until, .. } if until <= now))
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            let persistent = self.persistent.contains(&addr);
            let reached = self
                .dials
                .get(&addr)
                .and_then(|d| d.expect)
                .is_some_and(|p| self.conns.contains_key(&p));
            if persistent || (!reached && self.in_flight_and_established() < self.cfg.target_degree) {
                self.start_dial(addr);
            } else {
                // A learned address the mesh does not need now (its router
                // reached another way, or enough connections): forget it;
                // gossip offers it again. Its backoff grew only while it was
                // wanted, so no address is dialed in a tight loop.
                self.dials.remove(&addr);
            }
        }
        self.dial_learned();
    }

    // ---- output ----

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(PeerName, Message)> {
        self.transmits.pop_front()
    }

    /// The next address to dial.
    pub fn poll_dial(&mut self) -> Option<SocketAddr> {
        self.dial_queue.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Mesh::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Time {
        let retry = self.dials.values().filter_map(|d| match d.state {
            DialState::Waiting { until, .. } => Some(until),
            _ => None,
        });
        let t = retry.fold(self.next_gossip, Time::min);
        self.next_flush.map_or(t, |f| f.min(t))
    }

    // ---- helpers ----

    fn in_flight_and_established(&self) -> usize {
        self.conns.len()
            + self
                .dials
                .values()
                .filter(|d| matches!(d.state, DialState::InFlight))
                .count()
    }

    /// Chooses the endpoints to advertise again (local addresses or what
    /// neighbours see changed).
    fn readvertise(&mut self, now: Time) {
        let endpoints = self.advertise.choose(&self.local, &endpoints::tally(&self.seen));
        self.set_endpoints(now, endpoints);
    }

    /// Works out which router each address the operator gave belongs to: a
    /// connection from it, or a router advertising it. One that belongs to
    /// a connected router needs no dial of its own.
    fn match_persistent(&mut self) {
        let me = self.topo.me();
        for addr in &self.persistent {
            let Some(d) = self.dials.get_mut(addr) else { continue };
            if !matches!(d.state, DialState::Waiting { .. }) {
                continue;
            }
            let by_conn = self
                .conns
                .iter()
                .find(|(_, c)| c.remote == *addr || c.dialed == Some(*addr))
                .map(|(n, _)| *n);
            let owner = by_conn.or(d.expect).or_else(|| {
                self.topo
                    .entries()
                    .find(|e| e.name != me && e.endpoints.contains(addr))
                    .map(|e| e.name)
            });
            if let Some(n) = owner {
                d.expect = Some(n);
                if self.conns.contains_key(&n) {
                    d.state = DialState::Connected;
                    d.attempts = 0;
                }
            }
        }
    }

    /// Picks random learned routers to dial while below the target degree,
    /// each at the first of its advertised endpoints that is not failing.
    fn dial_learned(&mut self) {
        let mut budget = self.cfg.target_degree.saturating_sub(self.in_flight_and_established());
        if budget == 0 {
            return;
        }
        let me = self.topo.me();
        let busy: BTreeSet<PeerName> = self
            .dials
            .values()
            .filter(|d| matches!(d.state, DialState::InFlight))
            .filter_map(|d| d.expect)
            .collect();
        let mut candidates: Vec<(PeerName, SocketAddr)> = self
            .topo
            .entries()
            .filter(|e| e.name != me && !self.conns.contains_key(&e.name) && !busy.contains(&e.name))
            .filter_map(|e| {
                e.endpoints
                    .iter()
                    .find(|a| !self.dials.contains_key(a))
                    .map(|a| (e.name, *a))
            })
            .collect();
        while budget > 0 && !candidates.is_empty() {
            let k = self.rng.random_range(0..candidates.len());
            let (name, addr) = candidates.swap_remove(k);
            self.dials.insert(
                addr,
                Dial {
                    expect: Some(name),
                    attempts: 0,
                    early_at: None,
                    state: DialState::InFlight,
                },
            );
            self.dial_queue.push_back(addr);
            budget -= 1;
        }
    }

    fn start_dial(&mut self, addr: SocketAddr) {
        if let Some(d) = self.dials.get_mut(&addr) {
            d.state = DialState::InFlight;
            self.dial_queue.push_back(addr);
        }
    }

    fn mark_connected(&mut self, addr: SocketAddr, peer: PeerName) {
        let d = self.dials.entry(addr).or_insert(Dial {
            expect: Some(peer),
            attempts: 0,
            early_at: None,
            state: DialState::Connected,
        });
        d.expect = Some(peer);
        d.attempts = 0;
        d.state = DialState::Connected;
    }

    fn backoff(&mut self, now: Time, addr: SocketAddr, reason: Failure) {
        let Some(d) = self.dials.get_mut(&addr) else { return };
        d.attempts = d.attempts.saturating_add(1);
        let attempts = d.attempts;
        let delay = self.delay(attempts);
        let d = self.dials.get_mut(&addr).expect("looked up above");
        d.state = DialState::Waiting {
            until: now + delay,
            reason,
        };
    }

    /// The wait after `attempts` failed dials: doubling from `backoff_min`
    /// up to `backoff_max`, with ±25 % jitter.
    fn delay(&mut self, attempts: u32) -> Duration {
        let exp = self
            .cfg
            .backoff_min
            .saturating_mul(1 << attempts.min(16).saturating_sub(1));
        exp.min(self.cfg.backoff_max).mul_f64(self.rng.random_range(0.75..1.25))
    }

    /// `peer` shows itself alive: gossip brought a newer entry, which only
    /// it writes (called from [`Mesh::handle_message`]), or the shell heard
    /// an authenticated datagram from it (its data-plane session).
    /// Addresses that stand for it and wait out a backoff are dialed at
    /// once, not when the backoff ends: across a partition the backoff grows
    /// to `backoff_max`, and after the heal the first connection across
    /// brings the other side's entries, so every router redials the routers
    /// it lost within a gossip round or two. At most once per
    /// [`ALIVE_REDIAL_EVERY`] for each address, so a router that is alive
    /// but whose control port cannot be reached from here is not dialed in a
    /// loop as its entry changes or its datagrams arrive (the backoff itself
    /// keeps growing).
    pub fn handle_alive(&mut self, now: Time, peer: PeerName) {
        for d in self.dials.values_mut() {
            if d.expect != Some(peer) || d.early_at.is_some_and(|t| now.since(t) < ALIVE_REDIAL_EVERY) {
                continue;
            }
            if let DialState::Waiting { until, .. } = &mut d.state
                && *until > now
            {
                *until = now;
                d.early_at = Some(now);
            }
        }
    }

    fn neighbours_changed(&mut self, now: Time) {
        self.own_dirty = true;
        self.schedule_flush(now);
    }

    fn schedule_flush(&mut self, now: Time) {
        if self.next_flush.is_none() {
            self.next_flush = Some(now + self.cfg.flush_interval);
        }
    }

    /// Notes that neighbour `from` holds these `(name, version)`s: it
    /// announced or sent them.
    fn note_heard(&mut self, from: PeerName, versions: impl IntoIterator<Item = (PeerName, u64)>) {
        let heard = self.heard.entry(from).or_default();
        for (name, version) in versions {
            let v = heard.entry(name).or_default();
            *v = (*v).max(version);
        }
    }

    /// Announces the batch: our own entry (one version bump for all neighbour
    /// changes in the window) and every entry learned in the window, to
    /// `fanout` random neighbours, never to a neighbour that sent or
    /// announced it (at that version or newer) since the last flush, so
    /// never back to where it came from.
    fn flush(&mut self) {
        self.next_flush = None;
        if std::mem::take(&mut self.own_dirty) {
            let me = self.topo.me();
            if self.topo.set_neighbours(self.conns.keys().copied().collect()) {
                self.events.push_back(Event::TopologyChanged);
                self.pending.insert(me);
            }
        }
        if self.pending.is_empty() {
            return;
        }
        // Looked up once for the batch, not once per neighbour.
        let pending: Vec<(PeerName, u64)> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|name| self.topo.get(name).map(|e| (e.name, e.version)))
            .collect();
        let mut targets: Vec<PeerName> = self.conns.keys().copied().collect();
        while targets.len() > self.cfg.fanout {
            let k = self.rng.random_range(0..targets.len());
            targets.swap_remove(k);
        }
        let heard = std::mem::take(&mut self.heard);
        for n in targets {
            let has = heard.get(&n);
            let versions: Vec<(PeerName, u64)> = pending
                .iter()
                .filter(|(name, version)| has.and_then(|h| h.get(name)).is_none_or(|v| v < version))
                .copied()
                .collect();
            if !versions.is_empty() {
                self.transmits.push_back((n, Message::Announce(versions)));
            }
        }
    }
}

/// How far apart the two connections of a simultaneous open come up, at
/// most, in practice (both dials start together and complete in a round
/// trip or two). A connection from a peer later than this after ours came up
/// means the peer restarted. Erring here costs one reconnect, not safety.
const SIMULTANEOUS_OPEN_WINDOW: Duration = Duration::from_secs(2);
/// How long an entry requested from one announcer is not requested from others.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most often [`Mesh::handle_alive`] brings one address's retry forward.
pub const ALIVE_REDIAL_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn addr(n: u64) -> SocketAddr {
        format!("10.0.0.{n}:6783").parse().unwrap()
    }

    fn mesh(n: u64) -> Mesh {
        Mesh::new(
            Config::default(),
            p(n),
            format!("h{n}"),
            Policy::fixed(vec![addr(n)]),
            Time::ZERO,
            n,
        )
    }

    /// Connects `a` (dialer) and `b` in memory, as the shell would.
    fn link(now: Time, a: &mut Mesh, b: &mut Mesh, conn: u64) {
        let (na, nb) = (a.topology().me(), b.topology().me());
        b.handle_connected(now, na, ConnId(conn), None, addr(na.to_u64()))
            .unwrap();
        a.handle_connected(now, nb, ConnId(conn), Some(addr(nb.to_u64())), addr(nb.to_u64()))
            .unwrap();
    }

    /// Delivers every queued message between the cores until none is left.
    fn pump(now: Time, meshes: &mut [Mesh]) {
        loop {
            let mut moved = false;
            for i in 0..meshes.len() {
                let from = meshes[i].topology().me();
                while let Some((to, msg)) = meshes[i].poll_transmit() {
                    moved = true;
                    let j = meshes.iter().position(|m| m.topology().me() == to).unwrap();
                    meshes[j].handle_message(now, from, msg);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs every core's timers up to `until` in 100 ms steps, pumping messages.
    fn run(meshes: &mut [Mesh], until: Time) {
        let mut t = Time::ZERO;
        while t <= until {
            for m in meshes.iter_mut() {
                if m.poll_timeout() <= t {
                    m.handle_timeout(t);
                }
            }
            pump(t, meshes);
            t = t + Duration::from_millis(100);
        }
    }

    #[test]
    fn operator_peers_are_dialed_at_once() {
        let mut a = mesh(1);
        a.connect(Time::ZERO, addr(2));
        assert_eq!(a.poll_dial(), Some(addr(2)));
        assert_eq!(a.poll_dial(), None);
    }

    #[test]
    fn failed_dials_back_off_exponentially_and_show_the_reason() {
        let mut a = mesh(1);
        a.connect(Time::ZERO, addr(2));
        assert_eq!(a.poll_dial(), Some(addr(2)));
        let mut now = Time::ZERO;
        let mut delays = Vec::new();
        for _ in 0..4 {
            a.handle_dial_failed(now, addr(2), Failure::AuthenticationFailed);
            let at = a.poll_timeout().min(now + Duration::from_secs(120));
            let retry = a.peer_states().into_iter().find_map(|(_, ad, s)| match s {
                PeerState::Retrying { reason, at } if ad == Some(addr(2)) => Some((reason, at)),
                _ => None,
            });
            let (reason, retry_at) = retry.expect("listed as retrying");
            assert_eq!(reason, Failure::AuthenticationFailed);
            assert!(at <= retry_at);
            delays.push(retry_at.since(now));
            now = retry_at;
            a.handle_timeout(now);
            assert_eq!(a.poll_dial(), Some(addr(2)), "retried when due");
        }
        for w in delays.windows(2) {
            assert!(w[1] > w[0], "backoff grows: {delays:?}");
        }
    }

    #[test]
    fn a_router_that_gossip_shows_alive_is_redialed_at_once_not_after_the_backoff() {
        let mut ms = [mesh(1), mesh(2), mesh(3)];
        ms[0].connect(Time::ZERO, addr(2));
        assert_eq!(ms[0].poll_dial(), Some(addr(2)));
        let [a, b, c] = &mut ms;
        link(Time::ZERO, a, b, 1);
        link(Time::ZERO, a, c, 2);
        pump(Time::ZERO, &mut ms);
        // Router 2 is cut off: the connection times out, and dials fail
        // until the backoff is long.
        let mut now = Time::from_millis(1000);
        ms[0].handle_disconnected(now, p(2), ConnId(1), Failure::Lost("idle timeout".into()));
        let mut failures = 0;
        while failures < 5 {
            now = ms[0].poll_timeout().max(now);
            ms[0].handle_timeout(now);
            while ms[0].poll_dial().is_some() {
                ms[0].handle_dial_failed(now, addr(2), Failure::Unreachable);
                failures += 1;
            }
        }
        let failed = now;
        let retry_at = |m: &Mesh| {
            m.peer_states().into_iter().find_map(|(_, ad, s)| match s {
                PeerState::Retrying { at, .. } if ad == Some(addr(2)) => Some(at),
                _ => None,
            })
        };
        assert!(
            retry_at(&ms[0]).unwrap().since(failed) > Duration::from_secs(10),
            "backed off"
        );
        // Router 3 relays a newer entry of router 2: it is alive again.
        let entry = ms[1].topology().get_shared(p(2)).unwrap().clone();
        let newer = |v: u64| {
            Message::Update(vec![Arc::new(PeerEntry {
                version: entry.version + v,
                ..(*entry).clone()
            })])
        };
        now = failed + Duration::from_millis(500);
        ms[0].handle_message(now, p(3), newer(1));
        assert_eq!(retry_at(&ms[0]), Some(now), "due at once");
        ms[0].handle_timeout(now);
        assert_eq!(ms[0].poll_dial(), Some(addr(2)));
        // That dial fails too; more news within ALIVE_REDIAL_EVERY waits for the backoff.
        ms[0].handle_dial_failed(now, addr(2), Failure::Unreachable);
        let early = now;
        now = early + ALIVE_REDIAL_EVERY - Duration::from_millis(1);
        ms[0].handle_message(now, p(3), newer(2));
        assert!(
            retry_at(&ms[0]).unwrap() > now + Duration::from_secs(5),
            "not in a loop"
        );
        // The data plane hears it later: at once again.
        now = early + ALIVE_REDIAL_EVERY;
        ms[0].handle_alive(now, p(2));
        assert_eq!(retry_at(&ms[0]), Some(now));
    }

    #[test]
    fn a_restarted_peer_replaces_the_dead_connection_we_dialed() {
        // 1 < 2: the connection 1 dialed wins every tie-break.
        let mut a = mesh(1);
        a.connect(Time::ZERO, addr(2));
        assert_eq!(a.poll_dial(), Some(addr(2)));
        assert_eq!(
            a.handle_connected(Time::ZERO, p(2), ConnId(1), Some(addr(2)), addr(2)),
            Ok(None)
        );
        // A simultaneous open: 2's inbound connection loses the tie-break.
        let soon = Time::from_millis(500);
        assert!(a.handle_connected(soon, p(2), ConnId(2), None, addr(2)).is_err());
        // Router 2 restarts and dials again long after: ours is dead; keep
        // the new one now instead of waiting for ours to time out.
        let later = Time::from_millis(30_000);
        assert_eq!(
            a.handle_connected(later, p(2), ConnId(3), None, addr(2)),
            Ok(Some(ConnId(1)))
        );
        assert_eq!(a.neighbours().collect::<Vec<_>>(), vec![p(2)]);
    }

    #[test]
    fn two_routers_exchange_entries_on_connect() {
        let mut ms = vec![mesh(1), mesh(2)];
        let (a, b) = ms.split_at_mut(1);
        link(Time::ZERO, &mut a[0], &mut b[0], 1);
        run(&mut ms, Time::from_millis(1_000));
        for m in &ms {
            assert_eq!(m.topology().len(), 2);
            assert!(m.topology().confirmed(p(1), p(2)), "both list the connection");
        }
        assert_eq!(ms[0].topology().summary(), ms[1].topology().summary());
    }

    #[test]
    fn a_chain_converges_through_announcements_and_routes_over_it() {
        // 1 - 2 - 3 - 4: router 1 learns 4 only through gossip.
        let mut ms: Vec<Mesh> = (1..=4).map(mesh).collect();
        for i in 0..3 {
            let (l, r) = ms.split_at_mut(i + 1);
            link(Time::ZERO, &mut l[i], &mut r[0], i as u64 + 1);
        }
        // Learned routers are dialed too; swallow those dials to keep the chain.
        run(&mut ms, Time::from_millis(3_000));
        for m in &mut ms {
            while m.poll_dial().is_some() {}
        }
        let s = ms[0].topology().summary();
        assert!(
            ms.iter()
                .all(|m| m.topology().len() == 4 && m.topology().summary() == s)
        );
        assert_eq!(ms[0].topology().next_hops().get(&p(4)), Some(&p(2)));
    }

    #[test]
    fn an_entry_is_not_announced_back_to_neighbours_that_announced_it() {
        let mut ms: Vec<Mesh> = (1..=4).map(mesh).collect();
        for (j, conn) in [(1, 1), (2, 2), (3, 3)] {
            let (a, b) = ms.split_at_mut(j);
            link(Time::ZERO, &mut a[0], &mut b[0], conn);
        }
        run(&mut ms, Time::from_millis(1_000));
        let m = &mut ms[0];
        while m.poll_transmit().is_some() {}
        // Router 9's entry arrives from 2; 3 announces it too before the flush.
        let nine = Topology::new(p(9), "h9".into(), vec![addr(9)]).own().clone();
        let now = Time::from_millis(1_100);
        m.handle_message(now, p(2), Message::Update(vec![Arc::new(nine.clone())]));
        m.handle_message(now, p(3), Message::Announce(vec![(p(9), nine.version)]));
        m.handle_timeout(now + Duration::from_secs(1));
        let told: Vec<PeerName> = std::iter::from_fn(|| m.poll_transmit())
            .filter(|(_, msg)| matches!(msg, Message::Announce(v) if v.iter().any(|(n, _)| *n == p(9))))
            .map(|(to, _)| to)
            .collect();
        assert_eq!(told, [p(4)], "only the neighbour that showed nothing hears of it");
    }

    #[test]
    fn anti_entropy_repairs_a_missed_update() {
        let mut ms = vec![mesh(1), mesh(2)];
        {
            let (a, b) = ms.split_at_mut(1);
            link(Time::ZERO, &mut a[0], &mut b[0], 1);
        }
        run(&mut ms, Time::from_millis(1_000));
        // Router 2 learns of router 9 but its announcement to 1 is lost.
        let nine = Topology::new(p(9), "h9".into(), vec![addr(9)]).own().clone();
        ms[1].topo.merge([nine]);
        while ms[1].poll_transmit().is_some() {}
        assert_eq!(ms[0].topology().len(), 2);
        // Within a gossip interval the summaries disagree and digests repair it.
        run(&mut ms, Time::from_millis(1_000) + Duration::from_secs(13));
        assert_eq!(ms[0].topology().len(), 3);
    }

    #[test]
    fn simultaneous_connections_keep_the_one_dialed_by_the_lower_name() {
        let (mut a, mut b) = (mesh(1), mesh(2));
        // 1 dialed 2 (conn 10) and 2 dialed 1 (conn 20) at the same time.
        b.handle_connected(Time::ZERO, p(1), ConnId(20), Some(addr(1)), addr(1))
            .unwrap();
        a.handle_connected(Time::ZERO, p(2), ConnId(20), None, addr(2)).unwrap();
        // Conn 10 arrives: dialed by the lower name (1), so both keep it and close 20.
        assert_eq!(
            b.handle_connected(Time::ZERO, p(1), ConnId(10), None, addr(1)),
            Ok(Some(ConnId(20)))
        );
        assert_eq!(
            a.handle_connected(Time::ZERO, p(2), ConnId(10), Some(addr(2)), addr(2)),
            Ok(Some(ConnId(20)))
        );
        // Closing the replaced connection does not take the neighbour down.
        a.handle_disconnected(Time::ZERO, p(2), ConnId(20), Failure::Lost("replaced".into()));
        assert_eq!(a.neighbours().collect::<Vec<_>>(), vec![p(2)]);
        // A third, dialed by the higher name, is refused by both.
        assert!(a.handle_connected(Time::ZERO, p(2), ConnId(30), None, addr(2)).is_err());
    }

    #[test]
    fn a_peer_that_dials_again_replaces_its_stale_connection() {
        let mut a = mesh(1);
        a.handle_connected(Time::ZERO, p(2), ConnId(1), None, addr(2)).unwrap();
        // Router 2 restarted and dials again: its old connection is dead on its side.
        assert_eq!(
            a.handle_connected(Time::ZERO, p(2), ConnId(2), None, addr(2)),
            Ok(Some(ConnId(1)))
        );
        a.handle_disconnected(Time::ZERO, p(2), ConnId(1), Failure::Lost("replaced".into()));
        assert_eq!(
            a.neighbours().collect::<Vec<_>>(),
            vec![p(2)],
            "still a neighbour, on the new connection"
        );
        while a.poll_event().is_some() {}
        a.handle_disconnected(Time::ZERO, p(2), ConnId(2), Failure::Lost("gone".into()));
        assert_eq!(a.poll_event(), Some(Event::Down(p(2))));
    }

    #[test]
    fn connection_limit_is_enforced() {
        let cfg = Config {
            conn_limit: 2,
            ..Config::default()
        };
        let mut a = Mesh::new(cfg, p(1), "h1".into(), Policy::fixed(vec![addr(1)]), Time::ZERO, 1);
        a.handle_connected(Time::ZERO, p(2), ConnId(1), None, addr(2)).unwrap();
        a.handle_connected(Time::ZERO, p(3), ConnId(2), None, addr(3)).unwrap();
        assert_eq!(
            a.handle_connected(Time::ZERO, p(4), ConnId(3), None, addr(4)),
            Err(Refused(Failure::ConnectionLimit))
        );
        assert_eq!(a.neighbours().count(), 2);
    }

    #[test]
    fn messages_from_strangers_are_ignored() {
        let mut a = mesh(1);
        let stranger = Topology::new(p(7), "h7".into(), vec![]).own().clone();
        a.handle_message(Time::ZERO, p(7), Message::Update(vec![Arc::new(stranger)]));
        assert_eq!(a.topology().len(), 1);
    }

    // ---- endpoints: routers launched as users launch them ----

    /// Router `n` as `weft launch` with the default `--listen`: it learns
    /// its endpoints, from its one interface address `10.0.0.n`.
    fn learning(n: u64) -> Mesh {
        let listen = SocketAddr::from(([0, 0, 0, 0], 6783));
        let mut m = Mesh::new(
            Config::default(),
            p(n),
            format!("h{n}"),
            Policy::new(listen, Vec::new(), vec!["10.32.0.0/12".parse().unwrap()]),
            Time::ZERO,
            n,
        );
        m.set_local_addrs(
            Time::ZERO,
            vec![
                LocalAddr::new("lo", "127.0.0.1".parse().unwrap()),
                LocalAddr::new("eth0", addr(n).ip()),
                LocalAddr::new("docker0", "172.17.0.1".parse().unwrap()),
            ],
        );
        m
    }

    /// Connects every dial to the router advertising (or, before it
    /// advertises anything, listening at) the address, both ends seeing each
    /// other at their `10.0.0.n:6783`, until no dial is left.
    fn serve_dials(now: Time, ms: &mut [Mesh], next_conn: &mut u64) {
        loop {
            let mut dials = Vec::new();
            for (i, m) in ms.iter_mut().enumerate() {
                while let Some(a) = m.poll_dial() {
                    dials.push((i, a));
                }
            }
            if dials.is_empty() {
                return;
            }
            for (i, a) in dials {
                let Some(j) = ms.iter().position(|m| addr(m.topology().me().to_u64()) == a) else {
                    ms[i].handle_dial_failed(now, a, Failure::Unreachable);
                    continue;
                };
                *next_conn += 1;
                let (ni, nj) = (ms[i].topology().me(), ms[j].topology().me());
                let (ai, aj) = (addr(ni.to_u64()), addr(nj.to_u64()));
                match ms[j].handle_connected(now, ni, ConnId(*next_conn), None, ai) {
                    Ok(_) => {
                        if ms[i]
                            .handle_connected(now, nj, ConnId(*next_conn), Some(a), aj)
                            .is_err()
                        {
                            ms[j].handle_disconnected(now, ni, ConnId(*next_conn), Failure::Lost("refused".into()));
                        }
                    }
                    Err(Refused(why)) => ms[i].handle_dial_failed(now, a, why),
                }
            }
        }
    }

    #[test]
    fn a_router_that_only_dials_out_advertises_its_interfaces_and_what_others_see() {
        let mut a = learning(2);
        assert_eq!(a.advertised(), &[addr(2)], "loopback and docker0 left out");
        // A neighbour behind whose NAT... or any neighbour: it says where it sees us.
        a.handle_connected(Time::ZERO, p(1), ConnId(1), Some(addr(1)), addr(1))
            .unwrap();
        let nat: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        a.handle_message(Time::ZERO, p(1), Message::Seen(nat));
        assert_eq!(
            a.advertised(),
            &["203.0.113.2:6783".parse().unwrap(), addr(2)],
            "what a neighbour sees comes first, with our own port"
        );
        // And it told the neighbour where it sees it.
        let sent: Vec<Message> = std::iter::from_fn(|| a.poll_transmit()).map(|(_, m)| m).collect();
        assert!(sent.contains(&Message::Seen(addr(1))), "{sent:?}");
        // The report goes with the neighbour.
        a.handle_disconnected(Time::ZERO, p(1), ConnId(1), Failure::Lost("gone".into()));
        assert_eq!(a.advertised(), &[addr(2)]);
    }

    #[test]
    fn routers_that_each_name_one_peer_find_each_other() {
        // h1 names nobody; h2..h5 name h1 only: each dials the others it
        // learns by gossip, up to the target degree.
        let mut ms: Vec<Mesh> = (1..=5).map(learning).collect();
        for m in &mut ms[1..] {
            m.connect(Time::ZERO, addr(1));
        }
        let mut next_conn = 0;
        let mut now = Time::ZERO;
        while now <= Time::from_millis(5_000) {
            for m in ms.iter_mut() {
                if m.poll_timeout() <= now {
                    m.handle_timeout(now);
                }
            }
            serve_dials(now, &mut ms, &mut next_conn);
            pump(now, &mut ms);
            now = now + Duration::from_millis(100);
        }
        for m in &ms {
            let me = m.topology().me();
            let others: BTreeSet<PeerName> = (1..=5).map(p).filter(|&q| q != me).collect();
            assert_eq!(
                m.neighbours().collect::<BTreeSet<_>>(),
                others,
                "{me} holds a connection to every other"
            );
            let states = m.peer_states();
            assert_eq!(states.len(), 4, "one row per router, nothing left dialing: {states:?}");
            assert!(
                states
                    .iter()
                    .all(|(n, _, s)| n.is_some() && *s == PeerState::Established),
                "{states:?}"
            );
            for q in &others {
                assert_eq!(m.topology().get(*q).unwrap().endpoints, vec![addr(q.to_u64())]);
            }
        }
    }

    #[test]
    fn an_operator_address_of_a_connected_router_is_that_router() {
        let mut a = learning(1);
        a.connect(Time::ZERO, addr(2));
        assert_eq!(a.poll_dial(), Some(addr(2)));
        // Router 2 dialed us first; our own dial then fails (say it was refused as a duplicate late).
        a.handle_connected(Time::ZERO, p(2), ConnId(1), None, addr(2)).unwrap();
        a.handle_dial_failed(Time::ZERO, addr(2), Failure::Lost("duplicate connection".into()));
        assert_eq!(
            a.peer_states(),
            vec![(Some(p(2)), Some(addr(2)), PeerState::Established)],
            "one row, the router's"
        );
        a.handle_timeout(Time::from_millis(5_000));
        assert_eq!(a.poll_dial(), None, "no dial to a connected router");
        // When it goes, the operator's address is dialed again at once.
        let later = Time::from_millis(6_000);
        a.handle_disconnected(later, p(2), ConnId(1), Failure::Lost("gone".into()));
        assert_eq!(a.poll_dial(), Some(addr(2)));
    }

    #[test]
    fn a_learned_address_that_fails_gives_way_to_the_next_and_backs_off() {
        let mut a = learning(1);
        a.handle_connected(Time::ZERO, p(2), ConnId(1), None, addr(2)).unwrap();
        let dead: SocketAddr = "192.0.2.9:6783".parse().unwrap();
        let nine = PeerEntry {
            endpoints: vec![dead, addr(9)],
            ..Topology::new(p(9), "h9".into(), vec![]).own().clone()
        };
        a.handle_message(Time::ZERO, p(2), Message::Update(vec![Arc::new(nine)]));
        a.handle_timeout(Time::ZERO);
        assert_eq!(a.poll_dial(), Some(dead), "the first advertised address first");
        assert_eq!(a.poll_dial(), None);
        a.handle_dial_failed(Time::ZERO, dead, Failure::Unreachable);
        a.handle_timeout(Time::ZERO);
        assert_eq!(a.poll_dial(), Some(addr(9)), "then the next, at once");
        a.handle_dial_failed(Time::ZERO, addr(9), Failure::Unreachable);
        // Both failing: each is retried on its own backoff, never in a tight loop.
        let mut dials = Vec::new();
        let mut now = Time::ZERO;
        while now < Time::from_millis(300_000) {
            now = now + Duration::from_millis(100);
            a.handle_timeout(now);
            while let Some(d) = a.poll_dial() {
                dials.push((now, d));
                a.handle_dial_failed(now, d, Failure::Unreachable);
            }
        }
        for target in [dead, addr(9)] {
            let times: Vec<u64> = dials
                .iter()
                .filter(|(_, d)| *d == target)
                .map(|(t, _)| t.as_millis())
                .collect();
            assert!(
                times.len() <= 12,
                "{target}: {} dials in 5 minutes: {times:?}",
                times.len()
            );
            let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(gaps.iter().rev().take(2).all(|g| *g >= 40_000), "{target}: {gaps:?}");
        }
    }
}
