//! Data-plane sessions with every other router, as a sans-IO state machine.
//!
//! [`Sessions`] owns, per peer, the handshake in flight, up to three sets of
//! transport keys, and the timers. It takes datagrams, requests from the
//! packet path and `now`, and hands back datagrams to send
//! ([`Sessions::poll_transmit`]) and the keys the packet path should use
//! ([`Sessions::send_keys`], [`Sessions::recv_keys`]). It never touches a
//! socket or the clock; randomness comes from a seed.
//!
//! # Handshake
//!
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` with prologue [`PROLOGUE`], as in
//! WireGuard: the initiator knows the responder's static key from the
//! topology (a router's entry carries its public key, and its name is a hash
//! of that key, so a forged key does not match the name). The PSK of a pair
//! is `MAC(data_psk, "weft pair psk v1" ‖ lower key ‖ higher key)`: it mixes
//! the cluster secret and both routers' static keys, so the handshake only
//! completes between two members of the same cluster.
//!
//! The initiation carries a timestamp (12 bytes: seconds and nanoseconds
//! since the Unix epoch, big-endian); the responder keeps the newest per
//! peer and refuses older ones, so a replayed initiation cannot replace a
//! session. The responder's keys are *unconfirmed* until the initiator's
//! first transport datagram arrives with them (the initiator sends a
//! keepalive at once if it has nothing queued); until then it keeps using
//! its previous keys.
//!
//! # Timers (all from `now`; WireGuard's values)
//!
//! - A handshake is retransmitted after 1 s, 2 s, 4 s, then every 5 s, each
//!   plus up to 1/3 s of jitter, with a fresh ephemeral key each time, and
//!   abandoned after [`REKEY_ATTEMPT_TIME`] (queued packets are dropped).
//! - The initiator of the current keys starts a new handshake after
//!   [`REKEY_AFTER_TIME`] if traffic flows (the responder after a little more,
//!   so both do not start at once); keys older than
//!   [`REJECT_AFTER_TIME`] are never used.
//! - After receiving data with nothing to send back for [`KEEPALIVE`], send a
//!   keepalive, so the peer knows the path works.
//! - Data sent and nothing received for `KEEPALIVE + REKEY_TIMEOUT` (15 s):
//!   start a new handshake (the peer may have lost its session).
//! - A peer that restarted has no session for our index and answers with a
//!   *stale* notice; we start a new handshake at once instead of waiting for
//!   that timer.
//!
//! # Eager sessions and liveness ([`Mode::Eager`], what the router runs)
//!
//! A session with every peer the topology knows is started at once, not on
//! the first pod packet, and kept: a keepalive goes out after
//! [`PERSISTENT_KEEPALIVE`] of sending nothing, keys are renewed on time
//! whether or not data flows, and a session that has received nothing for
//! [`STALE_AFTER`] is shaken hands again. So [`Sessions::peer_status`] tells
//! whether a peer is reachable before any pod sends. What that costs is in
//! `docs/data-plane.md`.
//!
//! # Endpoints
//!
//! A peer's topology entry gives the addresses to try, in order
//! ([`crate::core::endpoints::data_candidates`]). Its *endpoint*, where
//! transport datagrams go, is set only by an authenticated datagram from it
//! (a handshake message that checked out, or a transport datagram that
//! opened) and then follows the source of those: roaming. A handshake goes
//! to the endpoint while it answers; when it does not (or there is none
//! yet), retransmissions go to every address due. Each address backs off on
//! its own (doubling from [`FIRST_RETRY`] to [`CANDIDATE_BACKOFF_MAX`]) and
//! is reset by an authenticated reply from it, so no member can aim the
//! mesh's traffic at a third party by advertising its address, and an
//! address that never answers is not retried in a tight loop.
//!
//! An initiation from a member whose entry has not reached this router yet
//! (gossip and handshakes race when a router joins) is held for
//! [`PARK_TIME`] and answered as soon as the entry arrives, rather than
//! dropped and retried.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blake2::Blake2sMac256;
use blake2::digest::Mac as _;
use ipam_crdt::PeerName;
use rand::RngExt as _;
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use super::cookie::{Admit, COOKIE_SECRET_LIFETIME, Gate, MacKeys};
use super::keypair::{Activity, Keypair, PeerId};
pub use super::keypair::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES};
use super::wire::{
    self, CookieReply, INITIATION_LEN, Initiation, MAC_LEN, NOISE_INIT_LEN, NOISE_RESPONSE_LEN, Packet, RESPONSE_LEN,
    Response, TIMESTAMP_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD, TYPE_INITIATION, TYPE_RESPONSE,
};
use crate::core::Time;
use crate::core::noise;
use crate::identity::{Identity, NOISE_PARAMS};

/// Mixed into every data-plane handshake, so it can never be confused with
/// another protocol's.
pub const PROLOGUE: &[u8] = b"weft data v1";
/// The initiator of the current keys starts a new handshake after this.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A handshake is abandoned after trying for this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// The longest wait between two retransmissions of a handshake.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before retransmitting a handshake; it doubles up to
/// [`REKEY_TIMEOUT`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Send a keepalive after receiving data with nothing to send for this long.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// Packets queued per peer while its handshake is under way.
pub const MAX_STAGED: usize = 64;
/// How often the timers look at every peer.
pub const TICK: Duration = Duration::from_millis(250);
/// In [`Mode::Eager`], a keepalive goes to a peer after this long without
/// sending it anything (WireGuard's `PersistentKeepalive = 25`, which keeps
/// NAT and firewall mappings open too).
pub const PERSISTENT_KEEPALIVE: Duration = Duration::from_secs(25);
/// In [`Mode::Eager`], a session that received nothing for this long (the
/// peer's keepalive plus a handshake timeout) is stale: a new handshake
/// starts, and the peer is no longer `up`.
pub const STALE_AFTER: Duration = Duration::from_secs(PERSISTENT_KEEPALIVE.as_secs() + REKEY_TIMEOUT.as_secs());
/// The longest an address that does not answer waits between two
/// initiations (from [`FIRST_RETRY`], doubling).
pub const CANDIDATE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long an initiation from a key the topology does not know yet is held.
pub const PARK_TIME: Duration = Duration::from_secs(5);
/// Initiations held for unknown keys, at most.
const MAX_PARKED: usize = 64;

/// When sessions are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only while the packet path has data for a peer (WireGuard without a
    /// persistent keepalive).
    OnDemand,
    /// With every peer at once, kept alive by a keepalive after `keepalive`
    /// of sending nothing and renewed on time whatever the traffic.
    Eager {
        /// The persistent keepalive ([`PERSISTENT_KEEPALIVE`] in the router).
        keepalive: Duration,
    },
}

/// Whether a peer's data plane can be reached, as `weft status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// Keys confirmed and something authenticated received within
    /// [`STALE_AFTER`] (or the keys are that fresh).
    Up,
    /// A handshake is under way, unanswered for less than
    /// [`REKEY_ATTEMPT_TIME`].
    Connecting,
    /// No address to try, or no answer for [`REKEY_ATTEMPT_TIME`] or more.
    Down,
}

/// One peer's data-plane state, for `weft status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub name: PeerName,
    /// Whether it can be reached.
    pub reach: Reach,
    /// Where transport datagrams to it go (its last authenticated address).
    pub endpoint: Option<SocketAddr>,
    /// When something authenticated last arrived from it.
    pub heard: Option<Time>,
}
/// At most one stale notice per source address per this long.
const STALE_EVERY: Duration = Duration::from_secs(1);
/// A stale notice starts a handshake at most this often per peer.
const STALE_HANDSHAKE_EVERY: Duration = Duration::from_secs(1);

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The whole datagram.
    pub bytes: Vec<u8>,
}

/// Why a handshake-layer datagram was dropped: one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HandshakeDrop {
    /// `mac1` wrong: not from a member of this cluster, or not for us.
    BadMac,
    /// The Noise message did not decrypt: wrong static key or cluster secret.
    HandshakeFailed,
    /// A valid initiation from a key the topology did not show within [`PARK_TIME`].
    UnknownPeer,
    /// An initiation whose timestamp is not newer than the last one.
    ReplayedInitiation,
    /// Over the per-source rate.
    RateLimited,
    /// A response or cookie for no handshake of ours.
    UnknownIndex,
    /// A cookie reply that did not open.
    BadCookie,
}

impl HandshakeDrop {
    /// Every reason, in a fixed order.
    pub const ALL: [Self; 7] = [
        Self::BadMac,
        Self::HandshakeFailed,
        Self::UnknownPeer,
        Self::ReplayedInitiation,
        Self::RateLimited,
        Self::UnknownIndex,
        Self::BadCookie,
    ];

    /// The reason's name in metrics and `weft status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMac => "bad_mac",
            Self::HandshakeFailed => "handshake_failed",
            Self::UnknownPeer => "unknown_peer",
            Self::ReplayedInitiation => "replayed_initiation",
            Self::RateLimited => "rate_limited",
            Self::UnknownIndex => "unknown_index",
            Self::BadCookie => "bad_cookie",
        }
    }
}

/// Something worth logging or counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A handshake finished; `initiator` says which side we were.
    Established {
        /// With whom.
        peer: PeerName,
        /// Whether we initiated.
        initiator: bool,
    },
    /// A handshake got no answer for [`REKEY_ATTEMPT_TIME`]; `dropped`
    /// queued packets went with it.
    GaveUp {
        /// With whom.
        peer: PeerName,
        /// Queued packets dropped.
        dropped: usize,
    },
    /// A peer's endpoint moved.
    Roamed {
        /// Which peer.
        peer: PeerName,
        /// Its new endpoint.
        to: SocketAddr,
    },
    /// A handshake-layer datagram was dropped.
    Dropped(HandshakeDrop),
    /// Packets for a peer were dropped: no endpoint known, or the queue was full.
    Unsendable {
        /// For whom.
        peer: PeerName,
        /// How many.
        packets: usize,
    },
}

/// Why a peer cannot be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The key does not hash to the name: a forged or corrupted entry.
    #[error("its public key does not match its name")]
    KeyMismatch,
    /// It is this router.
    #[error("it is this router")]
    Itself,
}

struct Pending {
    hs: snow::HandshakeState,
    local_index: u32,
    /// The first attempt (for [`REKEY_ATTEMPT_TIME`]).
    started: Time,
    attempt: u32,
    retry_at: Time,
}

struct Peer {
    name: PeerName,
    public: [u8; 32],
    psk: Zeroizing<[u8; 32]>,
    /// Keys for MACs on messages *to* it.
    mac: MacKeys,
    /// Addresses to try, from the topology, in order, each with its backoff.
    candidates: Vec<Candidate>,
    /// Where transport datagrams go: set by authenticated datagrams only.
    endpoint: Option<SocketAddr>,
    /// When the first initiation still unanswered was sent (cleared by any
    /// authenticated datagram from it).
    failing_since: Option<Time>,
    activity: Arc<Activity>,
    pending: Option<Pending>,
    current: Option<Arc<Keypair>>,
    previous: Option<Arc<Keypair>>,
    /// Responder keys waiting for the initiator's first datagram.
    next: Option<Arc<Keypair>>,
    last_timestamp: Option<[u8; TIMESTAMP_LEN]>,
    /// A cookie it gave us, and when.
    cookie: Option<([u8; MAC_LEN], Time)>,
    last_mac1: Option<[u8; MAC_LEN]>,
    /// Inner packets waiting for keys, each with [`TRANSPORT_HEADER_LEN`]
    /// bytes of room in front and `TAG_LEN` behind.
    staged: VecDeque<Vec<u8>>,
    last_stale_handshake: Option<Time>,
    /// [`Event::GaveUp`] was reported for the current failing streak.
    gave_up: bool,
}

/// An address to try a peer at, and when it may be tried next.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    addr: SocketAddr,
    /// The wait after the next unanswered initiation.
    delay: Duration,
    /// Not sent to before this.
    next_at: Time,
}

impl Candidate {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            delay: FIRST_RETRY,
            next_at: Time::ZERO,
        }
    }
}

enum Slot {
    Pending(PeerId),
    Keys(PeerId),
}

/// An initiation from a key the topology does not know yet.
struct Parked {
    at: Time,
    from: SocketAddr,
    remote: [u8; 32],
    bytes: Vec<u8>,
}

/// Every data-plane session of one router.
pub struct Sessions {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    me: PeerName,
    data_psk: Zeroizing<[u8; 32]>,
    /// Keys for MACs on messages to us.
    own_mac: MacKeys,
    gate: Gate,
    /// Offset from [`Time`] to the Unix epoch, for timestamps.
    wall_at_zero: Duration,
    peers: Vec<Option<Peer>>,
    by_name: HashMap<PeerName, PeerId>,
    by_public: HashMap<[u8; 32], PeerId>,
    indices: HashMap<u32, Slot>,
    rng: ChaCha20Rng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stale_sent: HashMap<SocketAddr, Time>,
    parked: VecDeque<Parked>,
    next_tick: Time,
    changed: bool,
    mode: Mode,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("me", &self.me)
            .field("peers", &self.by_name.len())
            .field("indices", &self.indices.len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions for the router with `identity` in the cluster whose data
    /// PSK is `data_psk` ([`crate::secret::DATA_PSK_LABEL`]). `wall_at_zero`
    /// is the wall-clock time (since the Unix epoch) at [`Time::ZERO`].
    /// `rng` makes the ephemeral keys, indices, jitter and cookie secrets:
    /// the router passes one seeded from the OS (`rand::make_rng`); a fixed
    /// seed, for tests and simulations only, would make the ephemeral keys
    /// guessable.
    pub fn new(
        identity: &Identity,
        data_psk: [u8; 32],
        wall_at_zero: Duration,
        mut rng: ChaCha20Rng,
        now: Time,
    ) -> Self {
        let public = identity.public_key();
        let data_psk = Zeroizing::new(data_psk);
        let gate = Gate::new(now, rng.random());
        Self {
            private: Zeroizing::new(*identity.private_key()),
            public,
            me: identity.name(),
            own_mac: MacKeys::new(&data_psk, &public),
            data_psk,
            gate,
            wall_at_zero,
            peers: Vec::new(),
            by_name: HashMap::new(),
            by_public: HashMap::new(),
            indices: HashMap::new(),
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stale_sent: HashMap::new(),
            parked: VecDeque::new(),
            next_tick: now,
            changed: false,
            mode: Mode::OnDemand,
        }
    }

    /// The same sessions, made as `mode` says ([`Mode::OnDemand`] unless set).
    #[must_use]
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds a peer from the topology, or updates the addresses to try it at
    /// (`candidates`, in order; each keeps its backoff if it was there
    /// before). The endpoint in use is left alone: only an authenticated
    /// datagram moves it. In [`Mode::Eager`] a new peer's handshake starts
    /// at once, and an initiation it sent before its entry arrived is
    /// answered now.
    ///
    /// # Errors
    /// [`PeerError`] if the key does not match the name, or it is us.
    pub fn upsert_peer(
        &mut self,
        now: Time,
        name: PeerName,
        public: [u8; 32],
        candidates: &[SocketAddr],
    ) -> Result<PeerId, PeerError> {
        if Identity::name_of(&public) != name {
            return Err(PeerError::KeyMismatch);
        }
        if name == self.me {
            return Err(PeerError::Itself);
        }
        if let Some(&id) = self.by_name.get(&name) {
            let p = self.peer_mut(id);
            let mut next: Vec<SocketAddr> = candidates.to_vec();
            // The endpoint in use stays a candidate, advertised or not (a NAT's address).
            if let Some(e) = p.endpoint
                && !next.contains(&e)
            {
                next.insert(0, e);
            }
            if p.candidates.iter().map(|c| c.addr).ne(next.iter().copied()) {
                let old = std::mem::take(&mut p.candidates);
                p.candidates = next
                    .iter()
                    .map(|a| {
                        old.iter()
                            .find(|c| c.addr == *a)
                            .copied()
                            .unwrap_or_else(|| Candidate::new(*a))
                    })
                    .collect();
            }
            return Ok(id);
        }
        let psk = pair_psk(&self.data_psk, &self.public, &public);
        let peer = Peer {
            name,
            public,
            psk,
            mac: MacKeys::new(&self.data_psk, &public),
            candidates: candidates.iter().copied().map(Candidate::new).collect(),
            endpoint: None,
            failing_since: None,
            activity: Arc::new(Activity::default()),
            pending: None,
            current: None,
            previous: None,
            next: None,
            last_timestamp: None,
            cookie: None,
            last_mac1: None,
            staged: VecDeque::new(),
            last_stale_handshake: None,
            gave_up: false,
        };
        let id = match self.peers.iter().position(Option::is_none) {
            Some(free) => {
                self.peers[free] = Some(peer);
                PeerId(free as u32)
            }
            None => {
                self.peers.push(Some(peer));
                PeerId((self.peers.len() - 1) as u32)
            }
        };
        self.by_name.insert(name, id);
        self.by_public.insert(public, id);
        self.changed = true;
        self.unpark(now, &public);
        if matches!(self.mode, Mode::Eager { .. }) && self.peer(id).is_some_and(|p| p.pending.is_none()) {
            self.start_handshake(now, id);
        }
        Ok(id)
    }

    /// Forgets a peer that left the topology, with its keys.
    pub fn remove_peer(&mut self, name: PeerName) {
        let Some(id) = self.by_name.remove(&name) else {
            return;
        };
        if let Some(p) = self.peers[id.0 as usize].take() {
            self.by_public.remove(&p.public);
            for k in [&p.current, &p.previous, &p.next].into_iter().flatten() {
                self.indices.remove(&k.local_index);
            }
            if let Some(pending) = &p.pending {
                self.indices.remove(&pending.local_index);
            }
        }
        self.changed = true;
    }

    /// This router's name.
    pub fn me(&self) -> PeerName {
        self.me
    }

    /// The id of a peer, if known.
    pub fn peer_id(&self, name: PeerName) -> Option<PeerId> {
        self.by_name.get(&name).copied()
    }

    /// The name of a peer.
    pub fn peer_name(&self, id: PeerId) -> Option<PeerName> {
        self.peer(id).map(|p| p.name)
    }

    /// Every peer: id, name, endpoint, activity.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, PeerName, Option<SocketAddr>, &Arc<Activity>)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (PeerId(i as u32), p.name, p.endpoint, &p.activity)))
    }

    /// Whether each peer can be reached, and where its datagrams go.
    pub fn peer_status(&self, now: Time) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.iter().flatten().map(move |p| PeerStatus {
            name: p.name,
            reach: self.reach(p, now),
            endpoint: p.endpoint,
            heard: Activity::time(&p.activity.last_recv),
        })
    }

    fn reach(&self, p: &Peer, now: Time) -> Reach {
        let fresh = |t: Option<Time>| t.is_some_and(|t| now.since(t) < STALE_AFTER);
        let keys = p.current.as_ref().filter(|k| k.confirmed() && k.usable(now));
        if let Some(k) = keys
            && (fresh(Some(k.created)) || fresh(Activity::time(&p.activity.last_recv)))
        {
            return Reach::Up;
        }
        let trying = p.pending.is_some() || p.next.is_some();
        match p.failing_since {
            Some(since) if now.since(since) >= REKEY_ATTEMPT_TIME => Reach::Down,
            _ if trying => Reach::Connecting,
            _ if p.endpoint.is_none() && p.candidates.is_empty() => Reach::Down,
            // Between attempts, waiting for an address to be due.
            Some(_) => Reach::Connecting,
            None => Reach::Down,
        }
    }

    /// The keys to send to `peer` with: the current keys, if confirmed and
    /// still usable at `now`.
    pub fn send_keys(&self, peer: PeerId, now: Time) -> Option<&Arc<Keypair>> {
        let p = self.peer(peer)?;
        p.current.as_ref().filter(|k| k.confirmed() && k.usable(now))
    }

    /// Every index a datagram may be addressed to, with its keys.
    pub fn recv_keys(&self) -> impl Iterator<Item = &Arc<Keypair>> {
        self.peers
            .iter()
            .flatten()
            .flat_map(|p| [&p.current, &p.previous, &p.next].into_iter().flatten())
    }

    /// Whether the keys the packet path should use changed since the last
    /// call: then republish [`Sessions::send_keys`] and [`Sessions::recv_keys`].
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// A datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// An event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Sessions::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Time {
        self.next_tick
    }

    /// A handshake-layer datagram (initiation, response, cookie, stale)
    /// from `from`. Transport datagrams go through the [`Keypair`]s instead.
    pub fn handle_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        match wire::parse(bytes) {
            Ok(Packet::Initiation(init)) => self.handle_initiation(now, from, init),
            Ok(Packet::Response(resp)) => self.handle_response(now, from, resp),
            Ok(Packet::Cookie(c)) => self.handle_cookie(now, c),
            Ok(Packet::Stale { receiver }) => self.handle_stale(now, from, receiver),
            Ok(Packet::Transport { .. }) | Err(_) => {}
        }
    }

    /// The packet path has data for `peer` but no keys to seal it with (or
    /// keys due for renewal: then `packet` is `None`, as it was sent). A
    /// packet is given with [`TRANSPORT_HEADER_LEN`] bytes of room in front
    /// of the inner packet and `TAG_LEN` behind; it is sent once keys exist.
    pub fn need_session(&mut self, now: Time, peer: PeerId, packet: Option<Vec<u8>>) {
        let Some(p) = self.peer(peer) else {
            return;
        };
        let name = p.name;
        if let Some(mut pkt) = packet {
            if let Some(keys) = self.send_keys(peer, now).cloned() {
                // Keys arrived since the packet path looked.
                self.seal_and_send(now, peer, &keys, &mut pkt);
                return;
            }
            let p = self.peer_mut(peer);
            if p.staged.len() >= MAX_STAGED {
                p.staged.pop_front();
                self.events.push_back(Event::Unsendable { peer: name, packets: 1 });
            }
            self.peer_mut(peer).staged.push_back(pkt);
        }
        let p = self.peer_mut(peer);
        let awaiting_confirmation = p.next.as_ref().is_some_and(|k| now.since(k.created) < REKEY_TIMEOUT);
        let fresh_enough = p
            .current
            .as_ref()
            .is_some_and(|k| k.confirmed() && k.usable(now) && !k.wants_rekey(now, REKEY_AFTER_TIME));
        if p.pending.is_none() && !awaiting_confirmation && !fresh_enough {
            self.start_handshake(now, peer);
        }
    }

    /// The packet path got a transport datagram for index `receiver`, which
    /// no session has: tell the sender (rate-limited per address).
    pub fn unknown_index(&mut self, now: Time, from: SocketAddr, receiver: u32) {
        if self
            .stale_sent
            .get(&from)
            .is_some_and(|&at| now.since(at) < STALE_EVERY)
        {
            return;
        }
        if self.stale_sent.len() >= 4096 {
            self.stale_sent.retain(|_, at| now.since(*at) < STALE_EVERY);
        }
        self.stale_sent.insert(from, now);
        self.transmits.push_back(Transmit {
            to: from,
            bytes: wire::stale(receiver).to_vec(),
        });
    }

    /// The packet path opened a datagram from `peer` with keys `local_index`
    /// at `from`: promote responder keys on their first use, and follow the
    /// peer to a new address.
    pub fn authenticated(&mut self, now: Time, peer: PeerId, local_index: u32, from: SocketAddr) {
        let Some(p) = self.peer_opt_mut(peer) else {
            return;
        };
        if p.next.as_ref().is_some_and(|k| k.local_index == local_index) {
            let next = p.next.take();
            let old = std::mem::replace(&mut p.previous, p.current.take());
            p.current = next;
            if let Some(old) = old {
                self.indices.remove(&old.local_index);
            }
            self.changed = true;
            self.flush_staged(now, peer);
        }
        self.roam(now, peer, from);
    }

    /// Runs the timers.
    pub fn handle_timeout(&mut self, now: Time) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.expire_parked(now);
        if self.gate.needs_rotation(now) {
            let secret = self.rng.random();
            self.gate.rotate(now, secret);
        }
        for i in 0..self.peers.len() {
            if self.peers[i].is_some() {
                self.tick_peer(now, PeerId(i as u32));
            }
        }
    }

    fn tick_peer(&mut self, now: Time, id: PeerId) {
        let eager = match self.mode {
            Mode::Eager { keepalive } => Some(keepalive),
            Mode::OnDemand => None,
        };
        let p = self.peer_mut(id);
        // 1. Retransmit or abandon the handshake in flight.
        if let Some(pending) = &p.pending
            && now >= pending.retry_at
        {
            if now.since(pending.started) >= REKEY_ATTEMPT_TIME {
                let index = pending.local_index;
                p.pending = None;
                let dropped = p.staged.len();
                p.staged.clear();
                let peer = p.name;
                // Once per failing streak: an eager router keeps trying.
                let report = !std::mem::replace(&mut p.gave_up, true) || dropped > 0;
                self.indices.remove(&index);
                if report {
                    self.events.push_back(Event::GaveUp { peer, dropped });
                }
            } else {
                self.send_initiation(now, id);
            }
        }
        // 2. Drop keys nobody may use any more.
        let p = self.peer_mut(id);
        let mut dropped = Vec::new();
        for slot in [&mut p.current, &mut p.previous, &mut p.next] {
            if slot.as_ref().is_some_and(|k| now.since(k.created) >= REJECT_AFTER_TIME)
                && let Some(k) = slot.take()
            {
                dropped.push(k.local_index);
            }
        }
        if !dropped.is_empty() {
            for i in dropped {
                self.indices.remove(&i);
            }
            self.changed = true;
        }
        let p = self.peer_mut(id);
        let act = &p.activity;
        let last_sent = Activity::time(&act.last_sent);
        let last_sent_data = Activity::time(&act.last_sent_data);
        let last_recv_data = Activity::time(&act.last_recv_data);
        let unanswered = Activity::time(&act.unanswered_since);
        let recently = |t: Option<Time>| t.is_some_and(|t| now.since(t) < KEEPALIVE);
        let busy = recently(last_sent_data) || recently(last_recv_data);
        // 3. Rekey on time while traffic flows, or always when eager (the
        //    responder a little later).
        if p.pending.is_none()
            && (busy || eager.is_some())
            && let Some(k) = &p.current
        {
            let after = if k.initiator {
                REKEY_AFTER_TIME
            } else {
                REKEY_AFTER_TIME + KEEPALIVE + REKEY_TIMEOUT
            };
            if now.since(k.created) >= after {
                self.start_handshake(now, id);
                return;
            }
        }
        // 4. No answer to data for a while: the peer may have lost its keys.
        if let Some(since) = unanswered
            && now.since(since) >= KEEPALIVE + REKEY_TIMEOUT
        {
            p.activity
                .unanswered_since
                .store(0, std::sync::atomic::Ordering::Relaxed);
            if p.pending.is_none() {
                self.start_handshake(now, id);
                return;
            }
        }
        // 5. Passive keepalive: data came in, nothing went out for a while.
        if let Some(r) = last_recv_data
            && last_sent.is_none_or(|s| s < r)
            && now.since(r) >= KEEPALIVE
            && let Some(keys) = self.send_keys(id, now).cloned()
        {
            self.seal_and_send(now, id, &keys, &mut vec![0u8; TRANSPORT_OVERHEAD]);
            return;
        }
        // 6. Eager, or packets waiting: keep a live session. No usable keys,
        //    or nothing received for STALE_AFTER: shake hands (each
        //    address's own backoff decides whether anything is sent).
        let p = self.peer_mut(id);
        if eager.is_none() && p.staged.is_empty() {
            return;
        }
        let last_recv = Activity::time(&p.activity.last_recv);
        let awaiting_confirmation = p.next.as_ref().is_some_and(|k| now.since(k.created) < REKEY_TIMEOUT);
        let live = p.current.as_ref().is_some_and(|k| {
            k.confirmed()
                && k.usable(now)
                && (now.since(k.created) < STALE_AFTER || last_recv.is_some_and(|r| now.since(r) < STALE_AFTER))
        });
        if !live {
            if p.pending.is_none() && !awaiting_confirmation {
                self.start_handshake(now, id);
            }
            return;
        }
        // Its datagrams arrive: whatever initiation went unanswered, it is reachable.
        if p.failing_since.is_some_and(|f| last_recv.is_some_and(|r| r > f)) {
            p.failing_since = None;
            p.gave_up = false;
        }
        // 7. Persistent keepalive: nothing sent for `keepalive`.
        let Some(keepalive) = eager else { return };
        let since_sent = Activity::time(&p.activity.last_sent).map_or(Duration::MAX, |t| now.since(t));
        if since_sent >= keepalive
            && let Some(keys) = self.send_keys(id, now).cloned()
        {
            self.seal_and_send(now, id, &keys, &mut vec![0u8; TRANSPORT_OVERHEAD]);
        }
    }

    fn start_handshake(&mut self, now: Time, id: PeerId) {
        let p = self.peer_mut(id);
        if p.endpoint.is_none() && p.candidates.is_empty() {
            let packets = p.staged.len();
            p.staged.clear();
            let peer = p.name;
            if packets > 0 {
                self.events.push_back(Event::Unsendable { peer, packets });
            }
            return;
        }
        if let Some(old) = p.pending.take() {
            self.indices.remove(&old.local_index);
        }
        self.send_initiation(now, id);
    }

    /// Where the next initiation to `id` goes, marking each as tried: the
    /// endpoint alone while it answers. Once it does not: the endpoint on
    /// WireGuard's schedule for [`REKEY_ATTEMPT_TIME`] (it answered before),
    /// and every other address when its own backoff lets it.
    fn targets(&mut self, now: Time, id: PeerId) -> Vec<SocketAddr> {
        let p = self.peer_mut(id);
        let failing_for = p.failing_since.map(|f| now.since(f));
        let endpoint = p.endpoint;
        let healthy = endpoint.is_some() && failing_for.is_none();
        let mut out = Vec::new();
        for c in &mut p.candidates {
            let proven = Some(c.addr) == endpoint && failing_for.is_none_or(|d| d < REKEY_ATTEMPT_TIME);
            if proven {
                out.push(c.addr);
                // If the streak outlives the grace, back off from here.
                c.delay = REKEY_TIMEOUT;
                c.next_at = now + REKEY_TIMEOUT;
            } else if !healthy && c.next_at <= now {
                out.push(c.addr);
                c.next_at = now + c.delay;
                c.delay = (c.delay * 2).min(CANDIDATE_BACKOFF_MAX);
            }
        }
        out
    }

    /// Sends a fresh initiation (new ephemeral key and index) to `id`, and
    /// schedules its retransmission. When no address is due, the handshake
    /// in flight (if any) waits for the first that will be.
    fn send_initiation(&mut self, now: Time, id: PeerId) {
        let targets = self.targets(now, id);
        let Some(&to) = targets.first() else {
            let p = self.peer_mut(id);
            let next = p
                .candidates
                .iter()
                .map(|c| c.next_at)
                .min()
                .unwrap_or(now + REKEY_TIMEOUT);
            if let Some(pending) = &mut p.pending {
                pending.retry_at = next.max(now + TICK);
            }
            return;
        };
        let index = self.new_index();
        let timestamp = self.timestamp(now);
        let seed = self.rng.random();
        let p = self.peers[id.0 as usize].as_mut().unwrap_or_else(|| unreachable!());
        let built = noise::builder(
            NOISE_PARAMS
                .parse()
                .unwrap_or_else(|_| unreachable!("valid Noise params")),
            seed,
        )
        .local_private_key(self.private.as_ref())
        .and_then(|b| b.remote_public_key(&p.public))
        .and_then(|b| b.psk(2, &p.psk))
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(snow::Builder::build_initiator);
        let Ok(mut hs) = built else {
            return;
        };
        let mut msg = Vec::with_capacity(INITIATION_LEN);
        wire::handshake_header(TYPE_INITIATION, &[index], &mut msg);
        msg.resize(8 + NOISE_INIT_LEN, 0);
        if hs.write_message(&timestamp, &mut msg[8..]).ok() != Some(NOISE_INIT_LEN) {
            return;
        }
        msg.resize(INITIATION_LEN, 0);
        let cookie = p
            .cookie
            .filter(|(_, at)| now.since(*at) < COOKIE_SECRET_LIFETIME)
            .map(|(c, _)| c);
        p.last_mac1 = Some(p.mac.stamp(&mut msg, cookie.as_ref()));
        let (started, attempt) = match &p.pending {
            Some(old) => (old.started, old.attempt + 1),
            None => (now, 0),
        };
        if let Some(old) = p.pending.take() {
            self.indices.remove(&old.local_index);
        }
        let backoff = FIRST_RETRY.saturating_mul(1 << attempt.min(8)).min(REKEY_TIMEOUT);
        let jitter = Duration::from_millis(self.rng.random_range(0..334));
        let p = self.peers[id.0 as usize].as_mut().unwrap_or_else(|| unreachable!());
        p.pending = Some(Pending {
            hs,
            local_index: index,
            started,
            attempt,
            retry_at: now + backoff + jitter,
        });
        p.failing_since.get_or_insert(now);
        self.indices.insert(index, Slot::Pending(id));
        for extra in &targets[1..] {
            self.transmits.push_back(Transmit {
                to: *extra,
                bytes: msg.clone(),
            });
        }
        self.transmits.push_back(Transmit { to, bytes: msg });
    }

    fn handle_initiation(&mut self, now: Time, from: SocketAddr, init: Initiation<'_>) {
        if !self.own_mac.check_mac1(init.bytes) {
            return self.drop(HandshakeDrop::BadMac);
        }
        match self.gate.admit(now, from, init.bytes) {
            Admit::Yes => {}
            Admit::RateLimited => return self.drop(HandshakeDrop::RateLimited),
            Admit::SendCookie => return self.send_cookie(from, init.sender, init.bytes),
        }
        self.answer_initiation(now, from, init);
    }

    /// Answers an initiation that passed `mac1` and the gate.
    fn answer_initiation(&mut self, now: Time, from: SocketAddr, init: Initiation<'_>) {
        let seed = self.rng.random();
        let Ok(mut hs) = noise::builder(NOISE_PARAMS.parse().unwrap_or_else(|_| unreachable!()), seed)
            .local_private_key(self.private.as_ref())
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(snow::Builder::build_responder)
        else {
            return;
        };
        let mut payload = [0u8; 64];
        let Ok(n) = hs.read_message(init.noise, &mut payload) else {
            return self.drop(HandshakeDrop::HandshakeFailed);
        };
        let Ok(timestamp) = <[u8; TIMESTAMP_LEN]>::try_from(&payload[..n]) else {
            return self.drop(HandshakeDrop::HandshakeFailed);
        };
        let Some(remote) = hs.get_remote_static().and_then(|k| <[u8; 32]>::try_from(k).ok()) else {
            return self.drop(HandshakeDrop::HandshakeFailed);
        };
        let Some(&id) = self.by_public.get(&remote) else {
            // A member (it made mac1 and its static key decrypted) whose
            // entry has not reached us yet: answered when it does.
            return self.park(now, from, remote, init.bytes);
        };
        let p = self.peer(id).unwrap_or_else(|| unreachable!());
        if p.last_timestamp.is_some_and(|last| timestamp <= last) {
            return self.drop(HandshakeDrop::ReplayedInitiation);
        }
        if hs.set_psk(2, p.psk.as_ref()).is_err() {
            return;
        }
        let index = self.new_index();
        let mut msg = Vec::with_capacity(RESPONSE_LEN);
        wire::handshake_header(TYPE_RESPONSE, &[index, init.sender], &mut msg);
        msg.resize(12 + NOISE_RESPONSE_LEN, 0);
        if hs.write_message(&[], &mut msg[12..]).ok() != Some(NOISE_RESPONSE_LEN) {
            return self.drop(HandshakeDrop::HandshakeFailed);
        }
        msg.resize(RESPONSE_LEN, 0);
        let (i2r, r2i) = hs.dangerously_get_raw_split();
        let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
        let p = self.peers[id.0 as usize].as_mut().unwrap_or_else(|| unreachable!());
        let cookie = p
            .cookie
            .filter(|(_, at)| now.since(*at) < COOKIE_SECRET_LIFETIME)
            .map(|(c, _)| c);
        p.last_mac1 = Some(p.mac.stamp(&mut msg, cookie.as_ref()));
        p.last_timestamp = Some(timestamp);
        let keys = Arc::new(Keypair::new(
            id,
            index,
            init.sender,
            false,
            now,
            &r2i,
            &i2r,
            p.activity.clone(),
        ));
        let old = p.next.replace(keys);
        let name = p.name;
        if let Some(old) = old {
            self.indices.remove(&old.local_index);
        }
        self.indices.insert(index, Slot::Keys(id));
        self.roam(now, id, from);
        self.changed = true;
        self.events.push_back(Event::Established {
            peer: name,
            initiator: false,
        });
        self.transmits.push_back(Transmit { to: from, bytes: msg });
    }

    /// Holds an initiation from a key the topology does not know yet, for
    /// [`PARK_TIME`]; counted as `unknown_peer` if it is still unknown then
    /// (or there is no room).
    fn park(&mut self, now: Time, from: SocketAddr, remote: [u8; 32], bytes: &[u8]) {
        self.expire_parked(now);
        if self.parked.len() >= MAX_PARKED {
            return self.drop(HandshakeDrop::UnknownPeer);
        }
        // The newest initiation from a key replaces an older one.
        self.parked.retain(|p| p.remote != remote);
        self.parked.push_back(Parked {
            at: now,
            from,
            remote,
            bytes: bytes.to_vec(),
        });
    }

    /// Answers what `public` sent before its entry arrived.
    fn unpark(&mut self, now: Time, public: &[u8; 32]) {
        self.expire_parked(now);
        let Some(i) = self.parked.iter().position(|p| p.remote == *public) else {
            return;
        };
        let Some(parked) = self.parked.remove(i) else { return };
        if let Ok(Packet::Initiation(init)) = wire::parse(&parked.bytes) {
            self.answer_initiation(now, parked.from, init);
        }
    }

    fn expire_parked(&mut self, now: Time) {
        while self.parked.front().is_some_and(|p| now.since(p.at) >= PARK_TIME) {
            self.parked.pop_front();
            self.drop(HandshakeDrop::UnknownPeer);
        }
    }

    fn handle_response(&mut self, now: Time, from: SocketAddr, resp: Response<'_>) {
        if !self.own_mac.check_mac1(resp.bytes) {
            return self.drop(HandshakeDrop::BadMac);
        }
        let Some(Slot::Pending(id)) = self.indices.get(&resp.receiver) else {
            return self.drop(HandshakeDrop::UnknownIndex);
        };
        let id = *id;
        match self.gate.admit(now, from, resp.bytes) {
            Admit::Yes => {}
            Admit::RateLimited => return self.drop(HandshakeDrop::RateLimited),
            Admit::SendCookie => return self.send_cookie(from, resp.sender, resp.bytes),
        }
        let p = self.peers[id.0 as usize].as_mut().unwrap_or_else(|| unreachable!());
        let Some(pending) = p.pending.as_mut() else {
            return;
        };
        let mut payload = [0u8; 16];
        if pending.hs.read_message(resp.noise, &mut payload).ok() != Some(0) {
            return self.drop(HandshakeDrop::HandshakeFailed);
        }
        let Some(mut pending) = p.pending.take() else {
            return;
        };
        let (i2r, r2i) = pending.hs.dangerously_get_raw_split();
        let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
        let keys = Arc::new(Keypair::new(
            id,
            pending.local_index,
            resp.sender,
            true,
            now,
            &i2r,
            &r2i,
            p.activity.clone(),
        ));
        let old = std::mem::replace(&mut p.previous, p.current.replace(keys.clone()));
        let name = p.name;
        if let Some(old) = old {
            self.indices.remove(&old.local_index);
        }
        self.indices.insert(pending.local_index, Slot::Keys(id));
        self.roam(now, id, from);
        self.changed = true;
        self.events.push_back(Event::Established {
            peer: name,
            initiator: true,
        });
        let staged = self.peer(id).is_some_and(|p| !p.staged.is_empty());
        if staged {
            self.flush_staged(now, id);
        } else {
            // Confirm the keys for the responder, which may not send before.
            self.seal_and_send(now, id, &keys, &mut vec![0u8; TRANSPORT_OVERHEAD]);
        }
    }

    fn handle_cookie(&mut self, now: Time, c: CookieReply<'_>) {
        let id = match self.indices.get(&c.receiver) {
            Some(Slot::Pending(id) | Slot::Keys(id)) => *id,
            None => return self.drop(HandshakeDrop::UnknownIndex),
        };
        let p = self.peers[id.0 as usize].as_mut().unwrap_or_else(|| unreachable!());
        let opened = p.last_mac1.and_then(|m1| p.mac.open_cookie(c.sealed, &m1, c.nonce));
        match opened {
            Some(cookie) => p.cookie = Some((cookie, now)),
            None => self.drop(HandshakeDrop::BadCookie),
        }
    }

    fn handle_stale(&mut self, now: Time, from: SocketAddr, receiver: u32) {
        let found = self.peers.iter().enumerate().find_map(|(i, p)| {
            let p = p.as_ref()?;
            let ours = [&p.current, &p.previous]
                .into_iter()
                .flatten()
                .any(|k| k.remote_index == receiver);
            (ours && p.endpoint == Some(from)).then_some(PeerId(i as u32))
        });
        let Some(id) = found else {
            return;
        };
        let p = self.peer_mut(id);
        if p.last_stale_handshake
            .is_some_and(|t| now.since(t) < STALE_HANDSHAKE_EVERY)
        {
            return;
        }
        p.last_stale_handshake = Some(now);
        // Its keys are gone on the other side: stop using ours.
        let gone: Vec<u32> = [p.current.take(), p.previous.take()]
            .into_iter()
            .flatten()
            .map(|k| k.local_index)
            .collect();
        for i in gone {
            self.indices.remove(&i);
        }
        self.changed = true;
        self.start_handshake(now, id);
    }

    fn send_cookie(&mut self, to: SocketAddr, receiver: u32, msg: &[u8]) {
        let cookie = self.gate.cookie(to);
        let at = msg.len() - 2 * MAC_LEN;
        let nonce = self.rng.random();
        let sealed = self.own_mac.seal_cookie(&cookie, &msg[at..at + MAC_LEN], nonce);
        self.transmits.push_back(Transmit {
            to,
            bytes: wire::cookie_reply(receiver, &nonce, &sealed),
        });
    }

    fn flush_staged(&mut self, now: Time, id: PeerId) {
        let Some(keys) = self.send_keys(id, now).cloned() else {
            return;
        };
        let staged = std::mem::take(&mut self.peer_mut(id).staged);
        for mut pkt in staged {
            self.seal_and_send(now, id, &keys, &mut pkt);
        }
    }

    /// Seals `pkt` (inner packet with room in front and behind) and queues it.
    fn seal_and_send(&mut self, now: Time, id: PeerId, keys: &Keypair, pkt: &mut Vec<u8>) {
        let Some(to) = self.peer(id).and_then(|p| p.endpoint) else {
            return;
        };
        let len = pkt.len() - TRANSPORT_OVERHEAD;
        if let Ok(n) = keys.seal(now, pkt, len) {
            pkt.truncate(n);
            self.transmits.push_back(Transmit {
                to,
                bytes: std::mem::take(pkt),
            });
        }
    }

    /// An authenticated datagram from `id` came from `from`: that address
    /// works. It becomes the endpoint (roaming), its backoff is reset, and
    /// the peer is no longer failing.
    fn roam(&mut self, now: Time, id: PeerId, from: SocketAddr) {
        let p = self.peer_mut(id);
        p.failing_since = None;
        p.gave_up = false;
        match p.candidates.iter_mut().find(|c| c.addr == from) {
            Some(c) => {
                c.delay = FIRST_RETRY;
                c.next_at = now;
            }
            // An address it was not advertised at (a NAT's): tried first from now on.
            None => p.candidates.insert(0, Candidate::new(from)),
        }
        if p.endpoint != Some(from) {
            let first = p.endpoint.is_none();
            p.endpoint = Some(from);
            let peer = p.name;
            self.changed = true;
            if !first {
                self.events.push_back(Event::Roamed { peer, to: from });
            }
        }
    }

    fn drop(&mut self, why: HandshakeDrop) {
        self.events.push_back(Event::Dropped(why));
    }

    fn new_index(&mut self) -> u32 {
        loop {
            let i: u32 = self.rng.random();
            if i != 0 && !self.indices.contains_key(&i) {
                return i;
            }
        }
    }

    fn timestamp(&self, now: Time) -> [u8; TIMESTAMP_LEN] {
        let wall = self.wall_at_zero + Duration::from_millis(now.as_millis());
        let mut t = [0u8; TIMESTAMP_LEN];
        t[..8].copy_from_slice(&wall.as_secs().to_be_bytes());
        t[8..].copy_from_slice(&wall.subsec_nanos().to_be_bytes());
        t
    }

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn peer_opt_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    fn peer_mut(&mut self, id: PeerId) -> &mut Peer {
        self.peers[id.0 as usize]
            .as_mut()
            .unwrap_or_else(|| unreachable!("ids given out point at live peers"))
    }
}

/// The PSK of the pair of routers with these public keys (same either way).
fn pair_psk(data_psk: &[u8; 32], a: &[u8; 32], b: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut mac = <Blake2sMac256 as blake2::digest::KeyInit>::new_from_slice(data_psk)
        .unwrap_or_else(|_| unreachable!("a 32-byte key is a BLAKE2s key"));
    mac.update(b"weft pair psk v1");
    mac.update(lo);
    mac.update(hi);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// A buffer holding `inner` with room for the transport header and tag.
pub fn staged_packet(inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; inner.len() + TRANSPORT_OVERHEAD];
    v[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + inner.len()].copy_from_slice(inner);
    v
}

#[cfg(test)]
mod tests;
