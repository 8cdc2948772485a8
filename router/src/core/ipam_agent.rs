//! The IPAM agent: one router's [`Replica`] on the mesh, as a sans-IO core.
//!
//! The shell feeds it the mesh's view ([`Agent::handle_topology`]), neighbours
//! coming and going, IPAM messages and timer ticks, and carries out what it
//! asks for. The order matters and is the shell's contract:
//!
//! 1. after any call, [`Agent::take_persist`] first: if it returns bytes, they
//!    are written durably (`DATA_DIR/ipam`) before anything else happens;
//! 2. then [`Agent::take_announcement`] (into the mesh's own entry),
//!    [`Agent::poll_transmit`] and [`Agent::poll_event`].
//!
//! So an address is on disk before the caller hears of it, and a state of
//! this router's own entries is on disk before any other router sees it
//! (`ipam-crdt`'s persistence rule).
//!
//! **What waits for the disk.** Every change this router makes (an
//! allocation, a release, a donation given or received, a vote, an heir's
//! takeover, a step of ring creation) sets [`Agent::take_dirty`]: written
//! before anything else goes out. Other routers' entries merged from gossip
//! change nothing this router answered or voted on, so they are written
//! lazily: with the next write of a change of ours, or
//! [`FOREIGN_PERSIST_EVERY`] after they arrived ([`Agent::take_foreign_due`]),
//! whichever comes first. A crash that loses them loses nothing: they are
//! their owners' state, durable on their owners' disks, and gossip brings
//! them back.
//!
//! **Gossip.** Changes are announced, batched over [`BATCH`], as the stamps
//! of the changed entries (`Have`) to [`FANOUT`] neighbours in turn; each
//! pulls what is newer there once (`Pull`, answered by a [`Delta`]) and
//! announces in turn, so a change crosses each router once. Changes of
//! this router's own free counts alone wait up to [`FREE_COUNTS_EVERY`];
//! what it merged from others is passed on after [`BATCH`]. The whole ring goes to every
//! neighbour when the reclaim records changed (votes travel only with the
//! voter's whole state: `ipam-crdt`'s `delta` module says why), and to a
//! router that could not place a delta even when pulled again
//! ([`REPULL_AFTER`]). A new neighbour gets our ring hash; every
//! [`SUMMARY_EVERY`] a hash goes to one neighbour in turn; a differing hash
//! is answered with a digest of stamps (for a large ring, bucket sums first,
//! and then the stamps of the buckets that differ), from which both sides
//! pull what they lack, which repairs anything a lost announcement left
//! out. A router without a ring asks one neighbour at a time for it, and
//! one that adopted a ring does not pass it on whole.
//!
//! **Creating the ring.** From a seed list once every name resolves, or by
//! the consensus of `docs/control-plane.md` (`--init-peer-count`): proposals,
//! withdrawals and acks travel in the routers' topology entries
//! ([`IpamInit`]) and are persisted before they are announced.
//!
//! **Space requests.** When the replica answers
//! [`AllocError::AskPeer`], the agent parks the allocation until the shell
//! says which routers it can reach now ([`Agent::wants_routes`],
//! [`Agent::handle_routes`]: the mesh's neighbours and current routes, not a
//! copy kept here), then sends a router an `Ask`, routed through the mesh if
//! it is not a neighbour. For a specific address or subnet that router is the
//! owner of the space; if it cannot be reached now the allocation fails at
//! once, naming it ([`AllocFailure::Unreachable`]). For any address the agent
//! chooses: the router advertising the most free addresses among those it can
//! reach now that it has not asked yet for this allocation, so a router on the
//! other side of a partition, or a dead one that still holds ranges (until
//! `weft rmpeer`), is never waited on. A donor that does not answer within
//! [`ASK_TIMEOUT`] is passed over for the next reachable one (its answer, if
//! it comes later, is still merged and used). When no reachable router has
//! free space but unreachable ones do, the allocation waits for the topology
//! (or the ring) to change, until [`RING_WAIT`] after the call, and then fails
//! as unavailable; when no router at all has free space it fails as
//! exhausted. The donor answers `Gave` with what the donation changed (or a [`Refusal`] and
//! its whole ring); the agent merges it (fetching the donor's whole ring if
//! the delta cannot be placed) and allocates again. A claim the owner refuses
//! because the address is allocated fails as in use.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use blake2::{Blake2s256, Digest};
use ipam_crdt::{
    AllocError, AllocKey, Allocation, Delta, DonateError, MAX_BUCKETS, MergeError, MergeOutcome, PeerName, Pool,
    ReclaimError, ReclaimStatus, Replica, Request, Ring, Snapshot, Stamp, Want,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ipam::{Resolution, resolve_seeds};
use super::names::PeerRef;
use super::time::Time;
use super::topology::{Ballot, IpamInit, PeerEntry, Topology};

/// Ring changes are announced at most this often.
pub const BATCH: Duration = Duration::from_millis(200);

/// Changes of this router's own free counts alone (its allocations and
/// releases) are announced at most this often: other routers use them only
/// to choose a donor, and at 1,000 routers announcing each allocation at
/// once would make every allocation cross the whole mesh. Ownership
/// changes, and whatever was merged from other routers, go out after
/// [`BATCH`], so a change waits once at its origin, not at every hop.
pub const FREE_COUNTS_EVERY: Duration = Duration::from_secs(5);

/// How often a ring summary goes to one neighbour.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(3);

/// How long a space request may go unanswered before the next reachable
/// donor is asked. The ask and its answer cross the mesh's current route
/// (a few hops of milliseconds each, a lost packet costing a retransmission
/// of about 200 ms) and the donor writes its state once: a second is several
/// round trips even across a lossy path, and leaves time for a second donor
/// within the two seconds an allocation may take while space is reachable.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an allocation waits, from the call, for the ring to exist and
/// then for a router with free space to be reachable. Requests already sent
/// get [`ASK_TIMEOUT`] each, and a reachable donor is asked whatever the
/// time left.
pub const RING_WAIT: Duration = Duration::from_secs(30);

/// Other routers' entries merged from gossip are written at most this long
/// after they arrived, if no change of this router's wrote them sooner (see
/// the [module docs](self)).
pub const FOREIGN_PERSIST_EVERY: Duration = Duration::from_secs(1);

/// How many neighbours hear each announcement of changed entries: 8 of
/// about 12, the next ones in name order each time. Fewer, and routers that
/// every neighbour passed over waited for a summary, the tail of a heal
/// (meshsim, 1,000 routers, seeds 1-3: rings agreed 1.5 s after it with
/// exactly 8; 1.5-2.0 s with the every-other-neighbour choice used until
/// issue 21, which gave 6 of 12; 4.0-6.0 s with half of that).
pub const FANOUT: usize = 8;

/// Rings of at most this many entries answer a differing summary with
/// every entry's stamp ([`IpamMsg::Digest`], under a kilobyte); larger ones
/// with bucket sums first ([`IpamMsg::Buckets`]).
pub const DIGEST_WHOLE: usize = 64;

/// How long a router without a ring waits for the neighbour it asked before
/// it asks another ([`IpamMsg::WantRing`]).
pub const RING_ASK_EVERY: Duration = Duration::from_secs(1);

/// How long an entry pulled from one neighbour is not pulled from another.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a delta that could not be placed its entries are pulled again.
pub const REPULL_AFTER: Duration = Duration::from_millis(500);

/// How often allocations waiting for a reachable donor look again, at most,
/// as the topology and the ring change: each look needs the shell's routes,
/// which cost a search of the mesh when they changed.
pub const REACH_EVERY: Duration = Duration::from_millis(500);

/// How long a routed message waits for a route ([`Unrouted`]).
pub const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// Most routed messages waiting for a route ([`Unrouted`]).
pub const MAX_UNROUTED: usize = 1024;

/// How long a router that has met a quorum of the `--init-peer-count`
/// routers ([`quorum`]) waits for the others before the ring is created
/// without them (`docs/control-plane.md`, "Ring creation by consensus").
/// Long enough for routers launched together by hand or by a deployment to
/// find each other (a few gossip rounds of 200 ms and the dials' first
/// back-off steps), short enough that a launch with a dead member is
/// delayed by seconds, not until it returns. Safety does not depend on it:
/// it only decides when a quorum may proceed.
pub const QUORUM_WAIT: Duration = Duration::from_secs(10);

/// An IPAM message between routers (inside [`ControlMsg::Ipam`](super::wire::ControlMsg)).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum IpamMsg {
    /// A whole ring, in its wire form ([`Ring::encode`]).
    Ring(Vec<u8>),
    /// A hash of the sender's ring: answer with the ring if yours differs.
    Summary(u64),
    /// A space request from `from`, routed to `to`.
    Ask {
        /// Request id, chosen by `from`.
        id: u64,
        /// The router that needs space.
        from: PeerName,
        /// The router asked.
        to: PeerName,
        /// What it needs.
        want: WantWire,
    },
    /// The answer to an `Ask`, routed back.
    Gave {
        /// The request's id.
        id: u64,
        /// The donor.
        from: PeerName,
        /// The router that asked.
        to: PeerName,
        /// Why nothing was given, if so.
        refused: Option<Refusal>,
        /// What the donation changed, or the donor's whole ring.
        update: Update,
    },
    /// A change of the sender's ring ([`Delta::encode`]).
    Delta(Vec<u8>),
    /// `from` could not place the delta `to` gave for request `id`: send the whole ring as a `Gave`.
    Fetch {
        /// The request's id.
        id: u64,
        /// The router that asked.
        from: PeerName,
        /// The donor.
        to: PeerName,
    },
    /// The entries that changed in the sender's ring: pull those newer than yours.
    Have(Vec<Stamp>),
    /// The entries the sender wants (answered with a [`IpamMsg::Delta`]).
    Pull(Vec<u128>),
    /// Every entry's stamp, in answer to a [`IpamMsg::Summary`] that
    /// differs: pull what is newer, announce what is older.
    Digest {
        /// The sender's ring hash.
        hash: u64,
        /// Its entries' stamps, in token order.
        stamps: Vec<Stamp>,
    },
    /// Send your whole ring (the sender has none, or could not place a delta).
    WantRing,
    /// In answer to a [`IpamMsg::Summary`] that differs, when the ring is
    /// too large for a [`IpamMsg::Digest`] to be cheap: one sum per bucket
    /// of entries ([`Ring::bucket_sums`]). The other side asks for the
    /// entries of the buckets that differ ([`IpamMsg::WantPart`]), or sends
    /// its whole ring if none does (the reclaim records or members differ).
    Buckets {
        /// The sender's ring hash.
        hash: u64,
        /// The sums, as many as the buckets (at most [`MAX_BUCKETS`]).
        sums: Vec<u64>,
    },
    /// Send the stamps of your entries in these buckets ([`IpamMsg::Part`]).
    WantPart {
        /// How many buckets the pool was split into.
        count: u16,
        /// The buckets whose sums differed.
        buckets: Vec<u16>,
    },
    /// The stamps of the entries in some buckets, in answer to
    /// [`IpamMsg::WantPart`]: pull what is newer, announce what is older,
    /// as for a [`IpamMsg::Digest`] of those buckets.
    Part {
        /// How many buckets the pool was split into.
        count: u16,
        /// The buckets listed, those whose sums differed.
        buckets: Vec<u16>,
        /// The sender's entries in those buckets, in token order.
        stamps: Vec<Stamp>,
    },
}

/// Ring state inside a [`IpamMsg::Gave`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Update {
    /// A whole ring ([`Ring::encode`]).
    Ring(Vec<u8>),
    /// What changed ([`Delta::encode`]).
    Delta(Vec<u8>),
    /// Nothing: the sender has no ring.
    Nothing,
}

/// Why a donor gave nothing (inside a [`IpamMsg::Gave`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Refusal {
    /// The address asked for is allocated, to this container and interface.
    InUse {
        /// The address.
        addr: IpAddr,
        /// The holder's container id.
        container: String,
        /// The holder's interface.
        iface: String,
    },
    /// Anything else, in words ([`ipam_crdt::DonateError`]).
    Other(String),
}

impl Refusal {
    /// The refusal of a donation that failed with `e`.
    pub fn of(e: &DonateError) -> Self {
        match e {
            DonateError::InUse { addr, by } => Self::InUse {
                addr: *addr,
                container: by.container().to_owned(),
                iface: by.iface().to_owned(),
            },
            e => Self::Other(e.to_string()),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse { addr, container, iface } => write!(f, "{addr} is in use by {container} ({iface})"),
            Self::Other(why) => f.write_str(why),
        }
    }
}

impl IpamMsg {
    /// Where a routed message is going; `None` for neighbour-to-neighbour messages.
    pub fn destination(&self) -> Option<PeerName> {
        match self {
            Self::Ask { to, .. } | Self::Gave { to, .. } | Self::Fetch { to, .. } => Some(*to),
            Self::Ring(_)
            | Self::Summary(_)
            | Self::Delta(_)
            | Self::Have(_)
            | Self::Pull(_)
            | Self::Digest { .. }
            | Self::WantRing
            | Self::Buckets { .. }
            | Self::WantPart { .. }
            | Self::Part { .. } => None,
        }
    }

    /// A short name of the message's kind, for logs and tallies.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ring(_) => "ring",
            Self::Delta(_) => "delta",
            Self::Summary(_) => "summary",
            Self::Ask { .. } => "ask",
            Self::Gave {
                update: Update::Delta(_),
                ..
            } => "gave_delta",
            Self::Gave { .. } => "gave_ring",
            Self::Fetch { .. } => "fetch",
            Self::Have(_) => "have",
            Self::Pull(_) => "pull",
            Self::Digest { .. } => "digest",
            Self::WantRing => "want_ring",
            Self::Buckets { .. } => "buckets",
            Self::WantPart { .. } => "want_part",
            Self::Part { .. } => "part",
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a message; the frame was size-checked by the control codec.
    ///
    /// # Errors
    /// The postcard error, for a malformed message (dropped and counted).
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// [`Want`] on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum WantWire {
    /// Any free range.
    Any,
    /// One address.
    Addr(IpAddr),
    /// A free range inside a subnet.
    Within(IpNet),
}

impl From<Want> for WantWire {
    fn from(w: Want) -> Self {
        match w {
            Want::Any => Self::Any,
            Want::Addr(a) => Self::Addr(a),
            Want::Within(n) => Self::Within(n),
        }
    }
}

impl From<WantWire> for Want {
    fn from(w: WantWire) -> Self {
        match w {
            WantWire::Any => Self::Any,
            WantWire::Addr(a) => Self::Addr(a),
            WantWire::Within(n) => Self::Within(n),
        }
    }
}

/// Where a message goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Dest {
    /// This neighbour.
    Neighbour(PeerName),
    /// Every neighbour.
    AllNeighbours,
    /// This router, through the mesh's next hop.
    Routed(PeerName),
}

/// An allocation the agent could not answer at once.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Ticket(pub u64);

/// What [`Agent::allocate`] did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Progress {
    /// Allocated (persist before answering).
    Done(Allocation),
    /// Waiting for the ring or for another router's space; the answer comes
    /// as [`Event::Allocated`] with this ticket.
    Waiting(Ticket),
}

/// Why there is no address ring yet. Says what is wrong, not which flag to
/// change: the shell adds that ([`NoRing::setting`]).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoRing {
    /// Seed routers the topology does not show yet.
    #[error("waiting to learn of the seed routers: {}", .0.join(", "))]
    UnknownSeeds(Vec<String>),
    /// A seed nickname several routers carry.
    #[error(
        "the seed {nickname} is the nickname of {} routers ({}); name one by its peer name",
        routers.len(),
        routers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousSeed {
        /// The nickname.
        nickname: String,
        /// The routers that carry it.
        routers: Vec<PeerName>,
    },
    /// The seed list is not resolved yet.
    #[error("waiting to resolve the seed list")]
    ResolvingSeeds,
    /// The ring could not be created.
    #[error("cannot create the ring: {0}")]
    CannotCreate(String),
    /// Another router has the ring: it is on its way.
    #[error("waiting for the ring from router {router} ({nickname})")]
    FromRouter {
        /// That router.
        router: PeerName,
        /// Its nickname.
        nickname: String,
    },
    /// This router proposed the split and waits for every member to accept,
    /// or, once it has waited [`QUORUM_WAIT`], for a quorum.
    #[error(
        "proposed splitting the range between {members} routers, {accepted} accepted; waiting for all of them, {}",
        quorum_text(*.needed, *.proceed_in)
    )]
    Proposed {
        /// How many routers the proposal names.
        members: usize,
        /// How many of them accepted it so far.
        accepted: usize,
        /// How many must accept once the wait is over.
        needed: usize,
        /// How long until it may create the ring with `needed` (zero: it
        /// may now); `None` while fewer than a quorum are reachable.
        proceed_in: Option<Duration>,
    },
    /// This router promised (or accepted) another router's ballot and waits
    /// for a quorum to accept its proposal.
    #[error("follows router {proposer}'s proposal; waiting for a quorum of the routers to accept it")]
    Accepted {
        /// The proposer.
        proposer: PeerName,
    },
    /// Fewer of the routers that start the mesh have met than it takes.
    #[error(
        "{met} of the {count} routers that start the mesh have met; waiting for all of them, {}",
        quorum_text(*.quorum, *.proceed_in)
    )]
    Meeting {
        /// How many have met.
        met: usize,
        /// How many it takes.
        count: usize,
        /// A majority of `count` ([`quorum`]): how many may create the ring
        /// without the others after [`QUORUM_WAIT`].
        quorum: usize,
        /// How long until that quorum proceeds (zero: it may now); `None`
        /// while fewer than a quorum are reachable.
        proceed_in: Option<Duration>,
    },
    /// Waiting for another router to share the ring.
    #[error("waiting for another router to share the ring")]
    Adopting,
    /// The IPAM state file is gone although this router ran before: it
    /// creates no ring, only adopts the mesh's ([`Saved::lost`]).
    #[error(
        "{file} is missing although this router ran before (its identity is still there), so it will not start \
         a new ring: that could hand out addresses its pods still hold. To recover, launch it again with a PEER of \
         the mesh (it receives the ring, in which it still owns its ranges, and takes them back), or run \
         `weft reset` (it removes this router's identity too) and launch it again as a new router"
    )]
    StateLost {
        /// The missing file, as the shell names it.
        file: String,
    },
}

impl NoRing {
    /// The `weft launch` setting this depends on, if any: `ipalloc-init` or
    /// `init-peer-count`.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            Self::UnknownSeeds(_) | Self::AmbiguousSeed { .. } | Self::ResolvingSeeds => Some("ipalloc-init"),
            Self::Proposed { .. } | Self::Accepted { .. } | Self::Meeting { .. } => Some("init-peer-count"),
            Self::CannotCreate(_) | Self::FromRouter { .. } | Self::Adopting | Self::StateLost { .. } => None,
        }
    }
}

/// Router `p`'s part in creating the ring: `st` for this router `me`
/// (its state in the making), else its entry in `topo`.
fn init_of<'a>(topo: &'a Topology, me: PeerName, st: &'a IpamInit, p: PeerName) -> Option<&'a IpamInit> {
    if p == me {
        Some(st)
    } else {
        topo.get(p).map(|e| &e.ipam)
    }
}

/// The part of a [`NoRing`] text that says when a quorum proceeds.
fn quorum_text(quorum: usize, proceed_in: Option<Duration>) -> String {
    match proceed_in {
        None => format!(
            "or for a quorum of {quorum} to be reachable for {} s",
            QUORUM_WAIT.as_secs()
        ),
        Some(d) if d.is_zero() => format!("or for {quorum} (a quorum): the wait is over, the ring is being created"),
        Some(d) => format!(
            "or for {quorum} (a quorum, reachable now) in {} s, without the others",
            d.as_secs_f64().ceil()
        ),
    }
}

/// How many of `count` routers make a quorum: a majority, so that two
/// quorums of the same routers always share one
/// (`docs/control-plane.md`, "Ring creation by consensus").
pub fn quorum(count: usize) -> usize {
    count / 2 + 1
}

/// Why an allocation failed, in the words the API shows.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AllocFailure {
    /// The ring does not exist yet and did not appear in time.
    #[error("the address ring does not exist yet: {0}")]
    NoRing(NoRing),
    /// The replica refused (bad request, address in use, exhausted, removed).
    #[error(transparent)]
    Refused(AllocError),
    /// Other routers hold the space and did not give any, or none that has
    /// some could be reached.
    #[error("no router gave space: {0}")]
    NoDonor(String),
    /// The only router that can give the space asked for (the owner of a
    /// specific address or subnet) cannot be reached now, or did not answer.
    #[error("router {owner} owns {wanted} and {why}; try again once it is reachable, or ask for another address")]
    Unreachable {
        /// The owner.
        owner: PeerName,
        /// What was asked for.
        wanted: IpNet,
        /// "cannot be reached now", or "did not answer".
        why: &'static str,
    },
}

/// What the agent reports.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A parked allocation finished.
    Allocated(Ticket, Result<Allocation, AllocFailure>),
    /// This router created the ring with these seeds.
    Created(Vec<PeerName>),
    /// This router adopted the ring or merged a change.
    Merged {
        /// Ranges this router received.
        gained: usize,
        /// Removed routers whose ranges it took.
        reclaimed: Vec<PeerName>,
    },
    /// A ring from `from` was refused.
    Refused {
        /// The neighbour that sent it.
        from: PeerName,
        /// Why.
        error: MergeError,
    },
    /// `from` sent a ring over another pool than `--ipalloc-range`; not adopted.
    OtherPool {
        /// The neighbour that sent it.
        from: PeerName,
        /// Its pool.
        pool: Pool,
    },
    /// After its state file was lost ([`Saved::lost`]), this router adopted
    /// the mesh's ring and took back the `ranges` it still owns there. The
    /// list of what was allocated from them is gone; the addresses the
    /// host still routes to pods ([`Saved::with_pods`]) were allocated
    /// again.
    Recovered {
        /// The state file that was missing.
        file: String,
        /// How many ranges it took back.
        ranges: usize,
        /// How many pod addresses it allocated again.
        claimed: usize,
        /// Pod addresses in the pool that it could not allocate again,
        /// with why: another router owns them now (a pod holding one may
        /// share it with a pod elsewhere).
        elsewhere: Vec<(IpAddr, AllocError)>,
    },
    /// A message could not be decoded and was dropped.
    Malformed {
        /// The neighbour that sent it.
        from: PeerName,
    },
}

/// How the ring gets created.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Init {
    /// `--ipalloc-init seed=...`: create it once every name resolves.
    Seeds(Vec<PeerRef>),
    /// `--init-peer-count N`: agree with the other routers once `N` have met
    /// (see `docs/control-plane.md`).
    Consensus(usize),
    /// Only adopt a ring some other router created.
    Adopt,
}

/// What the agent keeps on disk: the replica and its part in creating the ring.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct Record {
    /// [`Replica::encode`]; empty for a replica with nothing in it yet.
    replica: Vec<u8>,
    /// Proposal, withdrawal and ack, persisted before they are announced.
    init: IpamInit,
}

/// The disk form of a [`Record`] of `replica` and `init`.
fn encode_record(replica: &Replica, init: &IpamInit) -> Vec<u8> {
    let record = Record {
        replica: replica.encode(),
        init: init.clone(),
    };
    postcard::to_allocvec(&record).expect("encoding to a Vec cannot fail")
}

/// The agent's state read from disk ([`Agent::decode_saved`]), or the
/// knowledge that it was lost ([`Saved::lost`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Saved {
    replica: Replica,
    init: IpamInit,
    /// What is known of the state, when it was lost.
    lost: Option<Lost>,
}

/// What a router whose state file was lost knows of it ([`Saved::lost`]).
#[derive(Clone, PartialEq, Eq, Debug)]
struct Lost {
    /// The file that should have held the state.
    file: String,
    /// The addresses the host routes to its pods, each with its host veth
    /// ([`Saved::with_pods`]).
    pods: Vec<(IpAddr, String)>,
}

/// The container part of the key a pod's address is claimed again under
/// after lost state ([`Saved::with_pods`]); the interface part is the
/// pod's host veth. Reserved ([`crate::core::node::RESERVED_PREFIX`]): the
/// API neither allocates nor releases it.
pub const RECOVERED_CONTAINER: &str = "weft:recovered";

impl Saved {
    /// Router `me` had IPAM state, but `file` that held it is gone (the
    /// shell saw the router's identity without it). The agent then creates
    /// no ring ([`NoRing::StateLost`]) and only adopts the mesh's, in which
    /// it still owns its ranges. Its allocation list is lost with the file;
    /// what the host's pods still hold comes from [`Saved::with_pods`]:
    /// see `docs/control-plane.md` ("Persistence").
    pub fn lost(me: PeerName, file: impl Into<String>) -> Self {
        Self {
            replica: Replica::new(me),
            init: IpamInit::default(),
            lost: Some(Lost {
                file: file.into(),
                pods: Vec::new(),
            }),
        }
    }

    /// For lost state: the addresses the host routes to its pods, as the
    /// kernel shows them, each with its host veth. When the router takes
    /// its ranges back from the mesh's ring, it allocates each of them that
    /// lies in its ranges again, under the key ([`RECOVERED_CONTAINER`],
    /// the veth), before it answers anything, so that none is handed out
    /// twice. No effect on state that was not lost.
    #[must_use]
    pub fn with_pods(mut self, pods: impl IntoIterator<Item = (IpAddr, String)>) -> Self {
        if let Some(lost) = &mut self.lost {
            lost.pods.extend(pods);
        }
        self
    }

    /// The record of router `me` before it has done anything: no ring, no
    /// allocations, no step of ring creation. The shell writes it at the
    /// first launch, so that a missing file later always means lost state.
    pub fn fresh(me: PeerName) -> Self {
        Self {
            replica: Replica::new(me),
            init: IpamInit::default(),
            lost: None,
        }
    }

    /// The disk form, as [`Agent::record`] writes it and
    /// [`Agent::decode_saved`] reads it.
    pub fn encode(&self) -> Vec<u8> {
        encode_record(&self.replica, &self.init)
    }

    /// The saved replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Whether this is [`Saved::lost`]: no state, and none to be had.
    pub fn is_lost(&self) -> bool {
        self.lost.is_some()
    }
}

#[derive(Debug)]
struct Parked {
    key: AllocKey,
    req: Request,
    /// What it waits for.
    wait: Wait,
    /// The deadline of the current wait.
    until: Time,
    /// [`RING_WAIT`] after the call: the end of the waits for the ring and
    /// for a reachable donor.
    deadline: Time,
    /// Routers already asked.
    tried: BTreeSet<PeerName>,
    /// Those of them that did not answer in time.
    silent: BTreeSet<PeerName>,
    /// The router whose space the replica said it needs, and what of it.
    needs: Option<(PeerName, Want)>,
    /// Why the last donor refused.
    last_refusal: Option<String>,
}

/// What to do for an allocation that needs another router's space.
enum Choice {
    /// Ask this router.
    Ask(PeerName, Want),
    /// Fail now.
    Fail(AllocFailure),
    /// Wait for a router with free space to become reachable.
    Wait,
}

/// What a parked allocation waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    /// The ring, to exist.
    Ring,
    /// The shell's routes, to choose whom to ask ([`Agent::handle_routes`]).
    Routes,
    /// Router `donor`'s answer to space request `id`.
    Answer { id: u64, donor: PeerName },
    /// A router with free space, to become reachable (a topology change) or
    /// a reachable one to gain free space (a ring change).
    Reachable,
}

/// One router's IPAM on the mesh. See the [module docs](self).
#[derive(Debug)]
pub struct Agent {
    me: PeerName,
    pool: Pool,
    init: Init,
    replica: Replica,
    /// The replica changed since the last [`Agent::take_persist`].
    dirty: bool,
    /// Since when other routers' entries merged from gossip wait to be
    /// written (see the [module docs](self)).
    foreign_since: Option<Time>,
    /// The state file was lost ([`Saved::lost`]): adopt a ring, create none.
    lost: Option<Lost>,
    /// [`ring_hash`] of the current ring, cleared by every change (which
    /// also sets `dirty`, as every change must be persisted).
    hash: Option<u64>,
    /// When the pending ring announcement goes out.
    announce_at: Option<Time>,
    /// The ring as last announced: the base of the next delta.
    announced: Option<Snapshot>,
    /// Without a ring: the neighbour last asked for one, and when.
    ring_asked: Option<(PeerName, Time)>,
    /// The entries that may have changed since the last announcement, when
    /// only deltas merged from other routers changed the ring; `None` when
    /// anything else may have (then the whole ring is compared).
    since_announced: Option<BTreeSet<u128>>,
    /// Entry stamps each neighbour showed it has since the last
    /// announcement (it announced them, or pulled them from us): it is not
    /// told of them again, and the [`FANOUT`] goes to those that may lack them.
    told: BTreeMap<PeerName, BTreeMap<u128, (u32, u64)>>,
    /// When the last announcement went out.
    announced_at: Time,
    /// Rotates which neighbours hear the next announcement.
    announce_turn: usize,
    /// Entries pulled from a neighbour and when, so that one change
    /// announced by several neighbours is pulled once.
    pulled: BTreeMap<u128, ((u32, u64), Time)>,
    /// Space requests that arrived before the ring: until when, id, asker, want.
    held_asks: Vec<(Time, u64, PeerName, Want)>,
    /// Pulls to repeat (a delta could not be placed yet): when, from whom, which tokens.
    repull: Vec<(Time, PeerName, Vec<u128>)>,
    /// Tokens pulled again, and when.
    repulled: BTreeMap<u128, Time>,
    next_summary: Time,
    neighbours: BTreeSet<PeerName>,
    /// When allocations waiting for a reachable donor last looked again,
    /// and when they look next (see [`REACH_EVERY`]).
    rechecked_at: Option<Time>,
    recheck_at: Option<Time>,
    summary_turn: usize,
    parked: BTreeMap<Ticket, Parked>,
    next_id: u64,
    /// What `resolve_seeds` last said, for the status.
    waiting_for: Option<NoRing>,
    /// After a leave: the heir, and whether a ring from the mesh showed it
    /// accepting (its vote, or its takeover).
    leaving: Option<(PeerName, bool)>,
    /// Our part in creating the ring (persisted), and whether the mesh must hear of a change.
    init_state: IpamInit,
    announce_init: bool,
    /// The record holds a step of ring creation (a proposal, withdrawal or
    /// ack, or the ring this router created) not yet written: it must be
    /// durable before anything else leaves ([`Agent::must_sync`]).
    must_sync: bool,
    /// When this router (in this life) first had a quorum of the
    /// `--init-peer-count` routers reachable; [`QUORUM_WAIT`] later it may
    /// go on without the others. Not persisted: after a restart it waits
    /// again, which only delays.
    quorum_since: Option<Time>,
    /// The end of that wait, while [`Agent::handle_timeout`] has not seen it.
    quorum_due: Option<Time>,
    /// The latest mesh view while the ring is created by consensus (the
    /// quorum's timer steps with it); `None` once there is a ring.
    consensus_view: Option<Topology>,
    /// The latest time the shell passed in, for the status's "in N s".
    clock: Time,
    out: VecDeque<(Dest, IpamMsg)>,
    events: VecDeque<Event>,
}

/// The persisted replica does not fit this launch.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("the saved IPAM state divides {state}, not the pod range {given} this router was given")]
pub struct PoolMismatch {
    /// The range the saved state divides.
    pub state: Pool,
    /// The range given.
    pub given: Pool,
}

impl Agent {
    /// An agent for router `me` over `pool`, resuming `saved` (the replica
    /// read from disk) if there is one.
    ///
    /// # Errors
    /// [`PoolMismatch`] when the saved ring divides another pool.
    pub fn new(me: PeerName, pool: Pool, init: Init, saved: Option<Saved>, now: Time) -> Result<Self, PoolMismatch> {
        let (replica, init_state, lost) = match saved {
            Some(s) => (s.replica, s.init, s.lost),
            None => (Replica::new(me), IpamInit::default(), None),
        };
        if let Some(ring) = replica.ring()
            && ring.pool() != pool
        {
            return Err(PoolMismatch {
                state: ring.pool(),
                given: pool,
            });
        }
        Ok(Self {
            me,
            pool,
            init,
            replica,
            dirty: false,
            foreign_since: None,
            lost,
            hash: None,
            announce_at: None,
            announced: None,
            ring_asked: None,
            told: BTreeMap::new(),
            since_announced: None,
            announced_at: now,
            announce_turn: 0,
            pulled: BTreeMap::new(),
            held_asks: Vec::new(),
            repull: Vec::new(),
            repulled: BTreeMap::new(),
            next_summary: now + SUMMARY_EVERY,
            neighbours: BTreeSet::new(),
            rechecked_at: None,
            recheck_at: None,
            summary_turn: 0,
            parked: BTreeMap::new(),
            next_id: 1,
            waiting_for: None,
            leaving: None,
            init_state,
            announce_init: true,
            must_sync: false,
            quorum_since: None,
            quorum_due: None,
            consensus_view: None,
            clock: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// The replica (ring, allocations).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Why there is no ring yet, in words, if there is none.
    pub fn no_ring_reason(&self) -> Option<NoRing> {
        if self.replica.ring().is_some() {
            return None;
        }
        let proceed_in = self.quorum_since.map(|t| (t + QUORUM_WAIT).since(self.clock));
        Some(match (&self.init, &self.waiting_for) {
            (_, Some(NoRing::Meeting { met, count, quorum, .. })) => NoRing::Meeting {
                met: *met,
                count: *count,
                quorum: *quorum,
                proceed_in,
            },
            (
                _,
                Some(NoRing::Proposed {
                    members,
                    accepted,
                    needed,
                    ..
                }),
            ) => NoRing::Proposed {
                members: *members,
                accepted: *accepted,
                needed: *needed,
                proceed_in,
            },
            (_, Some(why)) => why.clone(),
            (Init::Seeds(_), None) => NoRing::ResolvingSeeds,
            (Init::Adopt, None) => NoRing::Adopting,
            (Init::Consensus(n), None) => NoRing::Meeting {
                met: 1,
                count: *n,
                quorum: quorum(*n),
                proceed_in,
            },
        })
    }

    /// The agent's record to save, if it changed since the last call. The
    /// shell must write it durably before transmitting, announcing or
    /// answering anything.
    pub fn take_persist(&mut self) -> Option<Vec<u8>> {
        self.take_dirty().then(|| self.record())
    }

    /// Whether the record changed since the last call ([`Agent::take_persist`]
    /// in two steps, for a caller that encodes the record later, once, for
    /// several changes). The write takes the other routers' entries merged
    /// since the last write too.
    pub fn take_dirty(&mut self) -> bool {
        self.must_sync = false;
        let dirty = std::mem::take(&mut self.dirty);
        if dirty {
            self.foreign_since = None;
        }
        dirty
    }

    /// Whether other routers' entries merged from gossip have waited
    /// [`FOREIGN_PERSIST_EVERY`] to be written: the caller writes the record
    /// then, and nothing it sends need wait for that write.
    pub fn take_foreign_due(&mut self, now: Time) -> bool {
        let due = self
            .foreign_since
            .is_some_and(|t| now.since(t) >= FOREIGN_PERSIST_EVERY);
        if due {
            self.foreign_since = None;
        }
        due
    }

    /// A write of the other routers' entries failed: try again later.
    pub fn foreign_unwritten(&mut self, now: Time) {
        self.foreign_since.get_or_insert(now);
    }

    /// A write failed: go back to `durable`, the last record on disk
    /// ([`Agent::record`]; `None`: nothing was ever written), undoing every
    /// change since. Parked allocations stay parked; the next announcement
    /// is the whole ring, as announcements made since may never have left.
    ///
    /// Returns whether our part in ring creation ([`IpamInit`]) was undone
    /// too: then the gossip that carried it must not go out.
    ///
    /// # Panics
    /// When `durable` does not decode: it is what [`Agent::record`] encoded
    /// in this process, so that is a bug, not an input.
    pub fn roll_back(&mut self, durable: Option<&[u8]>) -> bool {
        let (replica, init) = match durable {
            Some(bytes) => {
                let saved = Self::decode_saved(bytes)
                    .unwrap_or_else(|e| panic!("the record this router encoded does not decode: {e}"));
                (saved.replica, saved.init)
            }
            None => (Replica::new(self.me), IpamInit::default()),
        };
        self.replica = replica;
        let init_undone = init != self.init_state;
        if init_undone {
            self.init_state = init;
            self.announce_init = true;
        }
        if !self.replica.ring().is_some_and(|r| r.is_removed(self.me)) {
            // A leave (`weft reset`) that was undone.
            self.leaving = None;
        }
        self.dirty = false;
        self.must_sync = false;
        self.foreign_since = None;
        self.hash = None;
        self.announced = None;
        self.since_announced = None;
        init_undone
    }

    /// Whether the unwritten change includes a step of ring creation: a
    /// proposal, a withdrawal, an ack, or the ring this router created.
    /// **Such a write must be durable before anything queued after it is
    /// sent, and never batched or deferred**: a router that forgot an ack
    /// in a crash could ack a second proposer, and the consensus counts
    /// every ack once (`docs/control-plane.md`). The topology entry that
    /// carries it comes from [`Agent::take_announcement`], which the shell
    /// calls after the write.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    /// The agent's record as it is now (what [`Agent::decode_saved`] reads).
    pub fn record(&self) -> Vec<u8> {
        encode_record(&self.replica, &self.init_state)
    }

    /// Decodes what [`Agent::take_persist`] returned.
    ///
    /// # Errors
    /// What is wrong with it, in words.
    pub fn decode_saved(bytes: &[u8]) -> Result<Saved, String> {
        let record: Record = postcard::from_bytes(bytes).map_err(|e| format!("malformed: {e}"))?;
        let replica = Replica::decode(&record.replica).map_err(|e| e.to_string())?;
        Ok(Saved {
            replica,
            init: record.init,
            lost: None,
        })
    }

    /// Decodes a record written before ring creation ran by ballots (the
    /// state file's format version 2, when it ran by acks). Its replica
    /// reads unchanged. A router that had a ring keeps it; one that had
    /// done nothing toward creating one starts afresh. One that was in the
    /// middle of it (it proposed, acked or withdrew) cannot carry that over:
    /// an ack means nothing to a ballot, and dropping it could count the
    /// router twice. It has no ring and so no addresses yet, so the error
    /// says to reset it.
    ///
    /// # Errors
    /// A malformed record, or one in the middle of ring creation.
    pub fn decode_saved_v2(bytes: &[u8]) -> Result<Saved, String> {
        /// The ring-creation part of a version 2 record.
        #[derive(Deserialize)]
        struct AckInit {
            has_ring: bool,
            proposal: Option<Vec<PeerName>>,
            withdrawn: bool,
            ack: Option<PeerName>,
        }
        #[derive(Deserialize)]
        struct AckRecord {
            replica: Vec<u8>,
            init: AckInit,
        }
        let record: AckRecord = postcard::from_bytes(bytes).map_err(|e| format!("malformed: {e}"))?;
        let replica = Replica::decode(&record.replica).map_err(|e| e.to_string())?;
        let has_ring = record.init.has_ring || replica.ring().is_some();
        let midway = record.init.proposal.is_some() || record.init.withdrawn || record.init.ack.is_some();
        if midway && !has_ring {
            return Err(
                "it was written by an earlier weft while this router was helping to create the address \
                 ring, which this weft cannot continue; the router has no ring and no addresses yet, so nothing is \
                 lost by starting it afresh: run `weft reset` and launch it again (on every router that has no \
                 ring yet)"
                    .to_owned(),
            );
        }
        Ok(Saved {
            replica,
            init: IpamInit {
                has_ring,
                ..IpamInit::default()
            },
            lost: None,
        })
    }

    /// Our part in creating the ring, when the mesh must hear of a change
    /// (after [`Agent::take_persist`]; the shell passes it to the mesh).
    pub fn take_announcement(&mut self) -> Option<IpamInit> {
        std::mem::take(&mut self.announce_init).then(|| self.init_state.clone())
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(Dest, IpamMsg)> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Agent::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.next_summary;
        if let Some(q) = self.quorum_due {
            t = t.min(q);
        }
        if let Some(a) = self.announce_at {
            t = t.min(a);
        }
        for p in self.parked.values() {
            t = t.min(p.until);
        }
        for r in &self.repull {
            t = t.min(r.0);
        }
        if let Some(since) = self.foreign_since {
            t = t.min(since + FOREIGN_PERSIST_EVERY);
        }
        if let Some(r) = self.recheck_at {
            t = t.min(r);
        }
        t
    }

    /// The parked allocations waiting for `wait`, oldest first.
    fn waiting(&self, wait: Wait) -> Vec<Ticket> {
        self.parked
            .iter()
            .filter(|(_, p)| p.wait == wait)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Whether an allocation waits for the routers this one can reach now:
    /// call [`Agent::handle_routes`] before anything else.
    pub fn wants_routes(&self) -> bool {
        self.parked.values().any(|p| p.wait == Wait::Routes)
    }

    /// The routers this one can reach now (its neighbours and the mesh's
    /// current routes): allocations that need another router's space ask
    /// one of them, or fail or wait as the [module docs](self) say.
    pub fn handle_routes(&mut self, now: Time, reachable: impl Fn(PeerName) -> bool) {
        for ticket in self.waiting(Wait::Routes) {
            let mut p = self.parked.remove(&ticket).expect("listed above");
            // Space may have come meanwhile (a release, a late donation).
            match self.replica.allocate(p.key.clone(), p.req) {
                Err(AllocError::AskPeer { peer, want }) => p.needs = Some((peer, want)),
                _ => {
                    if let Some(result) = self.attempt(now, ticket, p) {
                        self.events.push_back(Event::Allocated(ticket, result));
                    }
                    continue;
                }
            }
            match self.choose(&p, &reachable) {
                Choice::Ask(donor, want) => self.ask(now, ticket, p, donor, want),
                Choice::Fail(e) => self.events.push_back(Event::Allocated(ticket, Err(e))),
                Choice::Wait if now < p.deadline => {
                    p.wait = Wait::Reachable;
                    p.until = p.deadline;
                    self.parked.insert(ticket, p);
                }
                Choice::Wait => {
                    let e = self.unreachable_failure(&p);
                    self.events.push_back(Event::Allocated(ticket, Err(e)));
                }
            }
        }
    }

    /// The mesh view changed: create the ring if the seed list now resolves,
    /// or take the next step of the consensus.
    ///
    /// Allocations waiting for a reachable donor look again (at most every
    /// [`REACH_EVERY`]); whom they can reach, the shell says then
    /// ([`Agent::handle_routes`]).
    pub fn handle_topology(&mut self, now: Time, topo: &Topology) {
        self.clock = self.clock.max(now);
        if self.replica.ring().is_some() {
            self.consensus_view = None;
            self.set_init(IpamInit {
                has_ring: true,
                ..self.init_state.clone()
            });
            self.retry_unreachable(now);
            return;
        }
        // A neighbour's topology entry says it has a ring: ask it (the
        // ring's creator sends it to its neighbours, and routers that adopt
        // it do not pass it on whole).
        if let Some(e) = topo
            .entries()
            .find(|e| e.ipam.has_ring && self.neighbours.contains(&e.name))
        {
            let peer = e.name;
            self.ask_for_ring(peer);
        }
        if let Some(lost) = &self.lost {
            // Never create a ring: adopt the mesh's, which holds our ranges.
            self.waiting_for = Some(NoRing::StateLost {
                file: lost.file.clone(),
            });
            return;
        }
        if let Init::Consensus(count) = self.init {
            // Kept for the quorum's timer, which steps with the latest view.
            self.consensus_view = Some(topo.clone());
            self.consensus(now, topo, count);
            return;
        }
        let Init::Seeds(seeds) = &self.init else { return };
        match resolve_seeds(seeds, topo) {
            Resolution::Ready(seeds) => match Replica::create(self.me, self.pool, &seeds) {
                Ok(r) => {
                    self.replica = r;
                    self.waiting_for = None;
                    self.mutated();
                    self.events.push_back(Event::Created(seeds));
                    self.schedule_announce(now);
                    self.retry_parked(now);
                }
                Err(e) => self.waiting_for = Some(NoRing::CannotCreate(e.to_string())),
            },
            Resolution::Waiting { unknown } => self.waiting_for = Some(NoRing::UnknownSeeds(unknown)),
            Resolution::Ambiguous { nickname, routers } => {
                self.waiting_for = Some(NoRing::AmbiguousSeed { nickname, routers });
            }
        }
    }

    /// A neighbour connected: it gets our ring hash at once, or a request
    /// for its ring if we have none. Routers that already agree exchange
    /// 8 bytes; others compare digests and pull what differs.
    pub fn neighbour_up(&mut self, peer: PeerName) {
        self.neighbours.insert(peer);
        match self.ring_hash() {
            Some(hash) => self.out.push_back((Dest::Neighbour(peer), IpamMsg::Summary(hash))),
            None => self.ask_for_ring(peer),
        }
    }

    /// A neighbour went away.
    pub fn neighbour_down(&mut self, peer: PeerName) {
        self.neighbours.remove(&peer);
        self.told.remove(&peer);
    }

    /// Allocates for `key`, or parks the request (see [`Progress`]).
    ///
    /// # Errors
    /// [`AllocFailure::Refused`] for what no waiting can fix.
    pub fn allocate(&mut self, now: Time, key: AllocKey, req: Request) -> Result<Progress, AllocFailure> {
        let ticket = Ticket(self.fresh_id());
        let parked = Parked {
            key,
            req,
            wait: Wait::Ring,
            until: now + RING_WAIT,
            deadline: now + RING_WAIT,
            tried: BTreeSet::new(),
            silent: BTreeSet::new(),
            needs: None,
            last_refusal: None,
        };
        match self.attempt(now, ticket, parked) {
            Some(Ok(a)) => Ok(Progress::Done(a)),
            Some(Err(e)) => Err(e),
            None => Ok(Progress::Waiting(ticket)),
        }
    }

    /// After lost state, when the ranges are back: allocates each pod
    /// address that lies in the pool again, under ([`RECOVERED_CONTAINER`],
    /// its veth). Returns how many, and those it could not (another router
    /// owns them now, or two veths route one address).
    fn claim_pods(&mut self, now: Time, pods: Vec<(IpAddr, String)>) -> (usize, Vec<(IpAddr, AllocError)>) {
        let mut claimed = 0;
        let mut elsewhere = Vec::new();
        for (addr, veth) in pods {
            let Ok(key) = AllocKey::new(RECOVERED_CONTAINER, &veth) else {
                continue;
            };
            match self.replica.allocate(key, Request::Addr(addr)) {
                Ok(_) => claimed += 1,
                // Another network's route, or the family the pool is not.
                Err(AllocError::OutsidePool { .. }) => {}
                Err(e) => elsewhere.push((addr, e)),
            }
        }
        if claimed > 0 {
            self.changed(now);
        }
        (claimed, elsewhere)
    }

    /// Whether addresses allocated again after lost state
    /// ([`Saved::with_pods`]) are still held: [`Agent::pods_present`] frees
    /// each as its pod goes. O(allocations).
    pub fn has_recovered(&self) -> bool {
        self.replica
            .allocations()
            .any(|(k, _)| k.container() == RECOVERED_CONTAINER)
    }

    /// The pod addresses the host routes now, each with its host veth (as
    /// for [`Saved::with_pods`]): every address allocated again after lost
    /// state that its veth no longer routes is released, since its pod is
    /// gone (its runtime's release named a key the lost file held).
    /// Returns the addresses released.
    pub fn pods_present(&mut self, now: Time, present: &[(IpAddr, String)]) -> Vec<IpAddr> {
        let gone: Vec<AllocKey> = self
            .replica
            .allocations()
            .filter(|(k, addr)| {
                k.container() == RECOVERED_CONTAINER && !present.iter().any(|(a, veth)| a == addr && veth == k.iface())
            })
            .map(|(k, _)| k.clone())
            .collect();
        let freed: Vec<IpAddr> = gone.iter().filter_map(|k| self.replica.release(k)).collect();
        if !freed.is_empty() {
            // As one release: one write, one announcement, one retry.
            self.changed(now);
            self.retry_unreachable(now);
        }
        freed
    }

    /// Releases `key`'s address, if it has one here.
    pub fn release(&mut self, now: Time, key: &AllocKey) -> Option<IpAddr> {
        let addr = self.replica.release(key)?;
        self.changed(now);
        self.retry_unreachable(now);
        Some(addr)
    }

    /// Starts (or joins) the reclaim of `dead` (`weft rmpeer`). The caller
    /// checks first that no router still sees a connection to it.
    ///
    /// # Errors
    /// As [`Replica::begin_reclaim`].
    pub fn begin_reclaim(&mut self, now: Time, dead: PeerName) -> Result<ReclaimStatus, ReclaimError> {
        let status = self.replica.begin_reclaim(dead)?;
        self.changed(now);
        Ok(status)
    }

    /// The operator's confirmation that the removed router `dead` is gone
    /// for good (`weft rmpeer --gone`): its heir may hand out what it held
    /// for it ([`Replica::confirm_gone`]).
    ///
    /// # Errors
    /// As [`Replica::confirm_gone`].
    pub fn confirm_gone(&mut self, now: Time, dead: PeerName) -> Result<(), ReclaimError> {
        if self.replica.confirm_gone(dead)? {
            self.changed(now);
            self.retry_unreachable(now);
        }
        Ok(())
    }

    /// Leaves the ring (`weft reset`): records this router's removal with
    /// `heir` proposed, and sends the ring to every neighbour at once. Calling
    /// it again after a leave just sends the ring again. A router that was
    /// removed while alive (`weft rmpeer` ran against it) instead records
    /// that its pods are gone, so its heir may hand out their addresses
    /// ([`Replica::surrender_all`]).
    ///
    /// # Errors
    /// As [`Replica::leave`].
    pub fn leave(&mut self, now: Time, heir: PeerName) -> Result<(), ReclaimError> {
        match self.replica.leave(heir) {
            Ok(_) => self.changed(now),
            Err(ReclaimError::Removed) if self.replica.ring().is_some_and(|r| r.is_removed(self.me)) => {
                if self.replica.surrender_all()? {
                    self.changed(now);
                }
                // A neighbour's ring that carries the surrender confirms it
                // ([`Agent::heir_confirmed`]): ask for one after ours arrived.
                let ring = self.replica.ring().expect("removed implies a ring");
                self.out.push_back((Dest::AllNeighbours, IpamMsg::Ring(ring.encode())));
                self.out.push_back((Dest::AllNeighbours, IpamMsg::WantRing));
                self.leaving = Some((heir, false));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let ring = self.replica.ring().expect("leave needs a ring");
        self.out.push_back((Dest::AllNeighbours, IpamMsg::Ring(ring.encode())));
        self.leaving = Some((heir, false));
        Ok(())
    }

    /// After [`Agent::leave`]: whether a ring from the mesh showed the heir
    /// accepting this router's ranges (its vote, or its takeover). The
    /// takeover itself is refused by this router's merge (only it writes its
    /// entries), so this is read from the rings as they arrive.
    pub fn heir_confirmed(&self) -> bool {
        self.leaving.is_some_and(|(_, ok)| ok)
    }

    /// The live member with the most free space among `candidates`: the heir for a leave.
    pub fn choose_heir(&self, candidates: impl IntoIterator<Item = PeerName>) -> Option<PeerName> {
        let ring = self.replica.ring()?;
        let owners = ring.owners();
        let members: BTreeSet<PeerName> = ring.voters().filter(|v| !ring.is_removed(*v)).collect();
        candidates
            .into_iter()
            .filter(|c| *c != self.me && members.contains(c))
            .max_by_key(|c| (owners.get(c).map_or(0, |s| s.free), std::cmp::Reverse(*c)))
    }

    /// An IPAM message from neighbour `from`. Messages for other routers are
    /// the shell's to forward ([`IpamMsg::destination`]).
    pub fn handle_message(&mut self, now: Time, from: PeerName, msg: IpamMsg) {
        self.clock = self.clock.max(now);
        match msg {
            IpamMsg::Ring(bytes) => self.handle_ring(now, from, &bytes),
            IpamMsg::Summary(hash) => match self.ring_hash() {
                Some(mine) if mine != hash => {
                    let ring = self.replica.ring().expect("hashed above");
                    let msg = if ring.len() <= DIGEST_WHOLE {
                        IpamMsg::Digest {
                            hash: mine,
                            stamps: ring.stamps(),
                        }
                    } else {
                        IpamMsg::Buckets {
                            hash: mine,
                            sums: ring.bucket_sums(ring.digest_buckets()),
                        }
                    };
                    self.out.push_back((Dest::Neighbour(from), msg));
                }
                Some(_) => {}
                // It has a ring and we have none (our request for it was
                // lost with a connection, say): ask again.
                None => self.ask_for_ring(from),
            },
            IpamMsg::Digest { hash, stamps } => self.handle_digest(now, from, hash, &stamps),
            IpamMsg::Buckets { hash, sums } => self.handle_buckets(from, hash, &sums),
            IpamMsg::WantPart { count, buckets } => self.handle_want_part(from, count, &buckets),
            IpamMsg::Part { count, buckets, stamps } => self.handle_part(now, from, count, &buckets, &stamps),
            IpamMsg::WantRing => {
                if let Some(ring) = self.replica.ring() {
                    self.out
                        .push_back((Dest::Neighbour(from), IpamMsg::Ring(ring.encode())));
                }
            }
            IpamMsg::Ask {
                id,
                from: asker,
                to,
                want,
            } if to == self.me => self.handle_ask(now, id, asker, want.into()),
            IpamMsg::Gave {
                id,
                from: donor,
                to,
                refused,
                update,
            } if to == self.me => self.handle_gave(now, id, donor, refused, update),
            IpamMsg::Delta(bytes) => {
                let _ = self.handle_delta(now, from, &bytes);
            }
            IpamMsg::Have(stamps) => self.handle_have(now, from, &stamps),
            IpamMsg::Pull(tokens) => {
                if let Some(ring) = self.replica.ring() {
                    let delta = ring.delta_of(&tokens);
                    self.note_told(from, delta.stamps());
                    self.out
                        .push_back((Dest::Neighbour(from), IpamMsg::Delta(delta.encode())));
                }
            }
            IpamMsg::Fetch { id, from: asker, to } if to == self.me => {
                let update = self
                    .replica
                    .ring()
                    .map_or(Update::Nothing, |r| Update::Ring(r.encode()));
                self.out.push_back((
                    Dest::Routed(asker),
                    IpamMsg::Gave {
                        id,
                        from: self.me,
                        to: asker,
                        refused: None,
                        update,
                    },
                ));
            }
            IpamMsg::Ask { .. } | IpamMsg::Gave { .. } | IpamMsg::Fetch { .. } => {}
        }
    }

    /// Timers: announcements, summaries, parked allocations' deadlines.
    pub fn handle_timeout(&mut self, now: Time) {
        self.clock = self.clock.max(now);
        if self.quorum_due.is_some_and(|t| t <= now) {
            self.quorum_due = None;
            // The quorum's wait is over: the next step may go on without
            // the silent routers, with the latest view taken.
            if let (Init::Consensus(count), None, Some(view)) =
                (&self.init, self.replica.ring(), self.consensus_view.clone())
            {
                self.consensus(now, &view, *count);
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.repull).into_iter().partition(|r| r.0 <= now);
        self.repull = later;
        for (_, peer, tokens) in due {
            if self.neighbours.contains(&peer) {
                self.out.push_back((Dest::Neighbour(peer), IpamMsg::Pull(tokens)));
            }
        }
        if self.announce_at.is_some_and(|t| t <= now) {
            self.announce_at = None;
            // Changes merged from others alone go on at once.
            let free_counts_only = match (self.replica.ring(), &self.announced, &self.since_announced) {
                (Some(ring), Some(base), None) => !ring.changed_beyond_own_free_counts(base, self.me),
                _ => false,
            };
            let due = self.announced_at + FREE_COUNTS_EVERY;
            if free_counts_only && now < due {
                self.announce_at = Some(due);
            } else {
                self.announced_at = now;
                self.announce();
            }
        }
        if self.next_summary <= now {
            self.next_summary = now + SUMMARY_EVERY;
            self.pulled.retain(|_, (_, at)| now.since(*at) <= PULL_TIMEOUT);
            self.repulled.retain(|_, at| now.since(*at) <= PULL_TIMEOUT);
            self.held_asks.retain(|(until, ..)| *until > now);
            if !self.neighbours.is_empty()
                && let Some(hash) = self.ring_hash()
            {
                let i = self.summary_turn % self.neighbours.len();
                self.summary_turn = self.summary_turn.wrapping_add(1);
                let peer = *self.neighbours.iter().nth(i).expect("index is in range");
                self.out.push_back((Dest::Neighbour(peer), IpamMsg::Summary(hash)));
            }
        }
        if self.recheck_at.is_some_and(|t| t <= now) {
            self.recheck_at = None;
            self.retry_unreachable(now);
        }
        let expired: Vec<Ticket> = self
            .parked
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(t, _)| *t)
            .collect();
        for ticket in expired {
            let Some(mut p) = self.parked.remove(&ticket) else {
                continue;
            };
            match p.wait {
                // A donor did not answer: try another, or give up.
                Wait::Answer { donor, .. } => {
                    p.silent.insert(donor);
                    p.last_refusal = Some(format!("router {donor} did not answer"));
                    if let Some(result) = self.attempt(now, ticket, p) {
                        self.events.push_back(Event::Allocated(ticket, result));
                    }
                }
                // The deadline: a last try, which fails saying how many
                // routers with free space are out of reach.
                Wait::Reachable | Wait::Routes => {
                    if let Some(result) = self.attempt(now, ticket, p) {
                        self.events.push_back(Event::Allocated(ticket, result));
                    }
                }
                Wait::Ring => {
                    let why = self.no_ring_reason().unwrap_or(NoRing::Adopting);
                    self.events
                        .push_back(Event::Allocated(ticket, Err(AllocFailure::NoRing(why))));
                }
            }
        }
    }

    // ---- internals ----

    /// Records a new ring-creation state: persisted, then announced.
    fn set_init(&mut self, init: IpamInit) {
        if init != self.init_state {
            self.init_state = init;
            self.mutated();
            // Durable before announced, never batched ([`Agent::must_sync`]).
            self.must_sync = true;
            self.announce_init = true;
        }
    }

    /// One step of ring creation by consensus: single-decree Paxos whose
    /// messages are the routers' own gossiped entries
    /// (`docs/control-plane.md`, "Ring creation by consensus", which gives
    /// the argument). Every router with no ring is an acceptor; the leader
    /// (the lowest-named router, among those known once `count` have met, or
    /// among those reachable after the quorum's wait) runs ballots; any
    /// router that sees a quorum accept one seed list under one ballot
    /// creates the ring from it, and all such rings are the same ring.
    fn consensus(&mut self, now: Time, topo: &Topology, count: usize) {
        let me = self.me;
        let others: Vec<&PeerEntry> = topo.entries().filter(|e| e.name != me).collect();
        let quorum = quorum(count);
        let mut st = self.init_state.clone();
        let mut known: Vec<PeerName> = others.iter().map(|e| e.name).collect();
        known.push(me);
        known.sort_unstable();
        // How many routers make a quorum here: a majority of `count`, and
        // every router known beyond `count` (more routers than `count` void
        // the argument; this keeps some margin when that happens).
        let needed = quorum + known.len().saturating_sub(count);
        // Learner: a seed list accepted under one ballot by a quorum is
        // chosen, and every router that sees it may create the ring from it.
        let chosen = |st: &IpamInit| {
            let mut tally: BTreeMap<(Ballot, Vec<PeerName>), usize> = BTreeMap::new();
            for s in known.iter().filter_map(|p| init_of(topo, me, st, *p)) {
                if let Some(a) = &s.accepted {
                    *tally.entry(a.clone()).or_default() += 1;
                }
            }
            tally
        };
        let ready = |tally: &BTreeMap<(Ballot, Vec<PeerName>), usize>| {
            tally.iter().find(|(_, n)| **n >= needed).map(|((_, v), _)| v.clone())
        };
        if let Some(e) = others.iter().find(|e| e.ipam.has_ring) {
            // Its ring is on its way, unless it died with it: create the
            // same ring where the acceptances show which it is.
            if let Some(seeds) = ready(&chosen(&st)) {
                self.create_chosen(now, seeds);
            } else {
                self.waiting_for = Some(NoRing::FromRouter {
                    router: e.name,
                    nickname: e.nickname.clone(),
                });
            }
            return;
        }
        // The routers this one reaches now over confirmed connections (a
        // router that died or is cut off is known but not reachable).
        let mut reachable: Vec<PeerName> = topo.next_hops().into_keys().collect();
        reachable.push(me);
        reachable.sort_unstable();
        if reachable.len() >= quorum && self.quorum_since.is_none() {
            self.quorum_since = Some(now);
            self.quorum_due = Some(now + QUORUM_WAIT);
        }
        let waited = self.quorum_since.is_some_and(|t| now >= t + QUORUM_WAIT);
        // Which routers lead is free: safety rests only on how ballots,
        // promises and acceptances move. Leading decides who makes progress.
        let leader =
            (known.len() >= count && known[0] == me) || (waited && reachable.len() >= quorum && reachable[0] == me);

        // The leader runs a ballot above every ballot it has seen, so that
        // acceptors promise it.
        let seen = others.iter().flat_map(|e| e.ipam.ballots()).chain(st.ballots()).max();
        if leader && (st.ballot.is_none() || seen > st.ballot) {
            st.ballot = Some(Ballot {
                round: seen.map_or(0, |b| b.round) + 1,
                proposer: me,
            });
            st.value = None;
        }
        // Acceptor: promise the highest ballot any router runs.
        let running = others
            .iter()
            .filter_map(|e| e.ipam.ballot.filter(|b| b.proposer == e.name))
            .chain(st.ballot)
            .max();
        if running > st.promised {
            st.promised = running;
        }
        // Leader: once a quorum promised its ballot (every router known
        // before the wait), propose the seed list the highest ballot among
        // them accepted, or else those routers.
        let mut progress = None;
        if leader
            && let Some(b) = st.ballot
            && st.value.is_none()
        {
            let promisers: Vec<(PeerName, &IpamInit)> = known
                .iter()
                .filter_map(|p| init_of(topo, me, &st, *p).map(|s| (*p, s)))
                .filter(|(_, s)| s.promised == Some(b))
                .collect();
            if promisers.len() >= needed && (promisers.len() == known.len() || waited) {
                let prior = promisers
                    .iter()
                    .filter_map(|(_, s)| s.accepted.as_ref())
                    .max_by_key(|a| a.0);
                let value = match prior {
                    Some((_, v)) => v.clone(),
                    None => promisers.iter().map(|(p, _)| *p).collect(),
                };
                st.value = Some(value);
            } else {
                progress = Some((known.len(), promisers.len()));
            }
        }
        // Acceptor: accept the seed list proposed under the ballot it promised.
        if let Some(b) = st.promised
            && st.accepted.as_ref().is_none_or(|a| a.0 < b)
            && let Some(v) = init_of(topo, me, &st, b.proposer)
                .and_then(|s| s.proposal().filter(|(pb, _)| *pb == b).map(|(_, v)| v.to_vec()))
        {
            st.accepted = Some((b, v));
        }
        let tally = chosen(&st);
        let ready = ready(&tally);
        if ready.is_none()
            && leader
            && let Some((b, _)) = st.proposal()
        {
            let accepted = tally.iter().filter(|((ab, _), _)| *ab == b).map(|(_, n)| *n).sum();
            progress = Some((known.len(), accepted));
        }
        let proceed_in = self.quorum_since.map(|t| (t + QUORUM_WAIT).since(now));
        self.waiting_for = match (progress, st.promised) {
            _ if ready.is_some() => None,
            (Some((members, accepted)), _) => Some(NoRing::Proposed {
                members,
                accepted,
                needed,
                proceed_in,
            }),
            (None, Some(b)) if b.proposer != me => Some(NoRing::Accepted { proposer: b.proposer }),
            (None, _) => Some(NoRing::Meeting {
                met: known.len().min(count),
                count,
                quorum,
                proceed_in,
            }),
        };
        self.set_init(st);
        if let Some(seeds) = ready {
            self.create_chosen(now, seeds);
        }
    }

    /// Creates the ring from the seed list the consensus chose.
    fn create_chosen(&mut self, now: Time, seeds: Vec<PeerName>) {
        match Replica::create(self.me, self.pool, &seeds) {
            Ok(r) => {
                self.replica = r;
                self.waiting_for = None;
                self.quorum_due = None;
                self.mutated();
                self.events.push_back(Event::Created(seeds));
                self.set_init(IpamInit {
                    has_ring: true,
                    ..self.init_state.clone()
                });
                self.schedule_announce(now);
                self.retry_parked(now);
            }
            Err(e) => self.waiting_for = Some(NoRing::CannotCreate(e.to_string())),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Tries `p` now. `None` means parked (under `ticket`).
    fn attempt(&mut self, now: Time, ticket: Ticket, mut p: Parked) -> Option<Result<Allocation, AllocFailure>> {
        match self.replica.allocate(p.key.clone(), p.req) {
            Ok(a) => {
                if !a.existing {
                    self.changed(now);
                }
                Some(Ok(a))
            }
            Err(AllocError::NoRing) => {
                p.wait = Wait::Ring;
                p.until = p.deadline;
                self.parked.insert(ticket, p);
                None
            }
            // Another router's space: whom to ask depends on whom this one
            // can reach now, which the shell says next.
            Err(AllocError::AskPeer { peer, want }) => {
                p.needs = Some((peer, want));
                p.wait = Wait::Routes;
                p.until = p.deadline;
                self.parked.insert(ticket, p);
                None
            }
            Err(e) => Some(Err(AllocFailure::Refused(e))),
        }
    }

    /// Whom `p` asks, among the routers `reachable` accepts.
    fn choose(&self, p: &Parked, reachable: impl Fn(PeerName) -> bool) -> Choice {
        let Some((peer, want)) = p.needs else {
            return Choice::Wait;
        };
        if want != Want::Any {
            // A specific address or subnet: only its owner can give it.
            let wanted = match want {
                Want::Addr(a) => IpNet::from(a),
                Want::Within(n) => n,
                Want::Any => unreachable!("handled below"),
            };
            let unreachable = |why| {
                Choice::Fail(AllocFailure::Unreachable {
                    owner: peer,
                    wanted,
                    why,
                })
            };
            return if p.silent.contains(&peer) {
                unreachable("did not answer")
            } else if p.tried.contains(&peer) {
                let why = p
                    .last_refusal
                    .clone()
                    .unwrap_or_else(|| format!("router {peer} was asked and gave nothing"));
                Choice::Fail(AllocFailure::NoDonor(why))
            } else if !reachable(peer) {
                unreachable("cannot be reached now")
            } else {
                Choice::Ask(peer, want)
            };
        }
        // Any router's space will do: the one with the most among those
        // reachable now and not asked yet.
        let untried = |q: PeerName| !p.tried.contains(&q);
        if let Some(donor) = self.replica.choose_donor_where(|q| untried(q) && reachable(q)) {
            return Choice::Ask(donor, Want::Any);
        }
        let waitable = self.replica.donors().any(|(q, _)| untried(q) || p.silent.contains(&q));
        if waitable {
            return Choice::Wait;
        }
        if self.replica.donors().next().is_none() {
            return Choice::Fail(AllocFailure::Refused(AllocError::Exhausted));
        }
        Choice::Fail(AllocFailure::NoDonor(
            p.last_refusal.clone().unwrap_or_else(|| gave_nothing(p.tried.len())),
        ))
    }

    /// The failure of `p` at its deadline: routers have free space, none of
    /// them reachable.
    fn unreachable_failure(&self, p: &Parked) -> AllocFailure {
        let unreachable = self
            .replica
            .donors()
            .filter(|(q, _)| !p.tried.contains(q) || p.silent.contains(q))
            .count();
        let (n, verb) = match unreachable {
            1 => ("router", "is"),
            _ => ("routers", "are"),
        };
        let earlier = p
            .last_refusal
            .as_ref()
            .map(|why| format!("; {why}"))
            .unwrap_or_default();
        AllocFailure::NoDonor(format!(
            "no reachable router has free space ({unreachable} {n} with free space {verb} unreachable{earlier})"
        ))
    }

    /// Sends `donor` a request for `want` and parks `p` until it answers.
    fn ask(&mut self, now: Time, ticket: Ticket, mut p: Parked, donor: PeerName, want: Want) {
        let id = self.fresh_id();
        p.tried.insert(donor);
        p.silent.remove(&donor);
        p.wait = Wait::Answer { id, donor };
        p.until = now + ASK_TIMEOUT;
        self.out.push_back((
            Dest::Routed(donor),
            IpamMsg::Ask {
                id,
                from: self.me,
                to: donor,
                want: want.into(),
            },
        ));
        self.parked.insert(ticket, p);
    }

    /// The topology or the ring changed: allocations waiting for a
    /// reachable donor look again (at most every [`REACH_EVERY`], else at
    /// the next timeout), and those waiting for an answer take space that
    /// arrived meanwhile (a late answer to an earlier request).
    fn retry_unreachable(&mut self, now: Time) {
        let answered: Vec<Ticket> = self
            .parked
            .iter()
            .filter(|(_, p)| matches!(p.wait, Wait::Answer { .. }))
            .map(|(t, _)| *t)
            .collect();
        for ticket in answered {
            let key = &self.parked[&ticket].key;
            let req = self.parked[&ticket].req;
            if let Ok(a) = self.replica.allocate(key.clone(), req) {
                self.parked.remove(&ticket);
                if !a.existing {
                    self.changed(now);
                }
                self.events.push_back(Event::Allocated(ticket, Ok(a)));
            }
        }
        if !self.parked.values().any(|p| p.wait == Wait::Reachable) {
            return;
        }
        if let Some(at) = self.rechecked_at
            && now < at + REACH_EVERY
        {
            self.recheck_at = Some(at + REACH_EVERY);
            return;
        }
        self.rechecked_at = Some(now);
        self.recheck_at = None;
        for ticket in self.waiting(Wait::Reachable) {
            let mut p = self.parked.remove(&ticket).expect("listed above");
            // Donors that did not answer may answer now.
            let silent = std::mem::take(&mut p.silent);
            p.tried.retain(|q| !silent.contains(q));
            if let Some(result) = self.attempt(now, ticket, p) {
                self.events.push_back(Event::Allocated(ticket, result));
            }
        }
    }

    /// Retries every allocation waiting for the ring, and answers the space
    /// requests that arrived before it.
    fn retry_parked(&mut self, now: Time) {
        for (until, id, asker, want) in std::mem::take(&mut self.held_asks) {
            if until > now {
                self.handle_ask(now, id, asker, want);
            }
        }
        let ready: Vec<Ticket> = self
            .parked
            .iter()
            .filter(|(_, p)| !matches!(p.wait, Wait::Answer { .. }))
            .map(|(t, _)| *t)
            .collect();
        for ticket in ready {
            let p = self.parked.remove(&ticket).expect("listed above");
            if let Some(result) = self.attempt(now, ticket, p) {
                self.events.push_back(Event::Allocated(ticket, result));
            }
        }
    }

    fn handle_ring(&mut self, now: Time, from: PeerName, bytes: &[u8]) {
        let Ok(ring) = Ring::decode(bytes) else {
            self.events.push_back(Event::Malformed { from });
            return;
        };
        if let Some((heir, ok)) = &mut self.leaving {
            // A router removed while alive waits for a ring that carries its
            // reset (its surrender of everything).
            *ok |= ring.surrendered_all(self.me);
            *ok |= match ring.reclaim_status(self.me) {
                Some(ReclaimStatus::Pending { candidate, waiting_for }) => {
                    candidate == Some(*heir) && !waiting_for.contains(heir)
                }
                Some(ReclaimStatus::Done { .. }) => true,
                _ => false,
            };
        }
        if ring.pool() != self.pool && self.replica.ring().is_none() {
            // Adopting it would give this router a ring over another pool
            // than it was launched with.
            self.events.push_back(Event::OtherPool {
                from,
                pool: ring.pool(),
            });
            return;
        }
        let had_ring = self.replica.ring().is_some();
        let reclaims = self.replica.ring().map(Ring::reclaims);
        match self.replica.merge(&ring) {
            Ok(out) => {
                if out.changed {
                    self.merged(now, &out, reclaims, None);
                    self.events.push_back(Event::Merged {
                        gained: out.gained.len(),
                        reclaimed: out.reclaimed,
                    });
                    self.retry_unreachable(now);
                }
                if !had_ring {
                    // The ring came from the mesh: announce what changes
                    // from here on, not the whole ring to every neighbour,
                    // which has it or hears of it the way this router did.
                    self.announced = Some(ring.snapshot());
                    self.ring_asked = None;
                    if let Some(lost) = self.lost.take() {
                        let (claimed, elsewhere) = self.claim_pods(now, lost.pods);
                        self.events.push_back(Event::Recovered {
                            file: lost.file,
                            ranges: out.gained.len(),
                            claimed,
                            elsewhere,
                        });
                    }
                    self.set_init(IpamInit {
                        has_ring: true,
                        ..self.init_state.clone()
                    });
                    self.retry_parked(now);
                }
                // Ours holds something theirs lacks: announce the entries
                // (it pulls them), or send the ring if only reclaim records
                // or members differ.
                let mine = self.replica.ring().expect("merged");
                let ours = mine.newer_here(&ring.stamps());
                if !ours.is_empty() && mine.same_records(&ring) {
                    self.out.push_back((Dest::Neighbour(from), IpamMsg::Have(ours)));
                } else if *mine != ring {
                    self.out
                        .push_back((Dest::Neighbour(from), IpamMsg::Ring(mine.encode())));
                }
            }
            Err(error) => self.events.push_back(Event::Refused { from, error }),
        }
    }

    fn handle_ask(&mut self, now: Time, id: u64, asker: PeerName, want: Want) {
        if self.replica.ring().is_none() {
            // The ring was just created and is on its way here (the asker has
            // it, so it names us as a donor): answer once it arrives.
            if self.held_asks.len() >= MAX_UNROUTED {
                self.held_asks.remove(0);
            }
            self.held_asks.push((now + ASK_TIMEOUT, id, asker, want));
            return;
        }
        let before = self.replica.ring().map(Ring::snapshot);
        let (refused, update) = match self.replica.donate(asker, want) {
            Ok(_) => {
                self.changed(now);
                let ring = self.replica.ring().expect("a donor has a ring");
                let update = match before.as_ref().and_then(|b| ring.delta_since(b)) {
                    Some(d) => Update::Delta(d.encode()),
                    None => Update::Ring(ring.encode()),
                };
                (None, update)
            }
            // A refusal carries the whole ring: the asker's view of who has
            // space was out of date.
            Err(e) => (
                Some(Refusal::of(&e)),
                self.replica
                    .ring()
                    .map_or(Update::Nothing, |r| Update::Ring(r.encode())),
            ),
        };
        self.out.push_back((
            Dest::Routed(asker),
            IpamMsg::Gave {
                id,
                from: self.me,
                to: asker,
                refused,
                update,
            },
        ));
    }

    fn handle_gave(&mut self, now: Time, id: u64, donor: PeerName, refused: Option<Refusal>, update: Update) {
        let placed = match update {
            Update::Ring(bytes) => {
                self.handle_ring(now, donor, &bytes);
                true
            }
            Update::Delta(bytes) => self
                .handle_delta(now, donor, &bytes)
                .is_some_and(|o| o.skipped.is_empty()),
            Update::Nothing => true,
        };
        let Some((&ticket, _)) = self
            .parked
            .iter()
            .find(|(_, p)| matches!(p.wait, Wait::Answer { id: i, .. } if i == id))
        else {
            return;
        };
        if !placed {
            // Keep waiting on the same request, for the donor's whole ring.
            let p = self.parked.get_mut(&ticket).expect("found above");
            p.until = now + ASK_TIMEOUT;
            self.out.push_back((
                Dest::Routed(donor),
                IpamMsg::Fetch {
                    id,
                    from: self.me,
                    to: donor,
                },
            ));
            return;
        }
        let mut p = self.parked.remove(&ticket).expect("found above");
        match refused {
            // A claim of an address that is allocated: in use, not unavailable.
            Some(Refusal::InUse { addr, container, iface }) => {
                let by = AllocKey::new(container, iface);
                if let Ok(by) = by {
                    let e = AllocError::InUse { addr, by: Box::new(by) };
                    self.events
                        .push_back(Event::Allocated(ticket, Err(AllocFailure::Refused(e))));
                    return;
                }
                p.last_refusal = Some(format!("router {donor} refused: {addr} is in use"));
            }
            Some(why) => p.last_refusal = Some(format!("router {donor} refused: {why}")),
            None => {}
        }
        if let Some(result) = self.attempt(now, ticket, p) {
            self.events.push_back(Event::Allocated(ticket, result));
        }
    }

    /// Merges a delta from `from`. When part of it could not be placed (or
    /// there is no ring to place it in), asks `from` for its whole ring by
    /// sending our ring hash, which differs from its own.
    fn handle_delta(&mut self, now: Time, from: PeerName, bytes: &[u8]) -> Option<MergeOutcome> {
        let Ok(delta) = Delta::decode(bytes) else {
            self.events.push_back(Event::Malformed { from });
            return None;
        };
        let reclaims = self.replica.ring().map(Ring::reclaims);
        match self.replica.merge_delta(&delta) {
            Ok(out) => {
                if out.changed {
                    let tokens: Vec<u128> = delta.stamps().map(|s| s.token).collect();
                    self.merged(now, &out, reclaims, Some(&tokens));
                    self.events.push_back(Event::Merged {
                        gained: out.gained.len(),
                        reclaimed: out.reclaimed.clone(),
                    });
                    self.retry_unreachable(now);
                }
                if !out.skipped.is_empty() {
                    // What is missing is usually a change pulled from another
                    // neighbour and still on its way: pull again shortly, and
                    // fetch the whole ring only if that fails too.
                    let again = out
                        .skipped
                        .iter()
                        .any(|t| self.repulled.get(t).is_some_and(|at| now.since(*at) <= PULL_TIMEOUT));
                    if again {
                        self.ask_for_ring(from);
                    } else {
                        for t in &out.skipped {
                            self.repulled.insert(*t, now);
                        }
                        self.repull.push((now + REPULL_AFTER, from, out.skipped.clone()));
                    }
                }
                Some(out)
            }
            Err(MergeError::NoRing) => {
                self.ask_for_ring(from);
                None
            }
            Err(error @ (MergeError::OwnEntryChanged { .. } | MergeError::OwnRangeSplit { .. })) => {
                // Our entries rewritten by someone else: a takeover after
                // this router's removal, whose record travels only in whole
                // rings. Fetch one; if it is a takeover, merging it stops
                // this router, otherwise it is refused the same way.
                self.ask_for_ring(from);
                self.events.push_back(Event::Refused { from, error });
                None
            }
            Err(error) => {
                self.events.push_back(Event::Refused { from, error });
                None
            }
        }
    }

    /// An announcement from `from`: pull the entries newer there, unless
    /// another neighbour was asked for them moments ago.
    fn handle_have(&mut self, now: Time, from: PeerName, stamps: &[Stamp]) {
        self.note_told(from, stamps.iter().copied());
        let Some(ring) = self.replica.ring() else {
            self.ask_for_ring(from);
            return;
        };
        let mut want = Vec::new();
        for s in ring.newer_elsewhere(stamps) {
            let asked = self
                .pulled
                .get(&s.token)
                .is_some_and(|(stamp, at)| *stamp >= (s.epoch, s.version) && now.since(*at) <= PULL_TIMEOUT);
            if !asked {
                self.pulled.insert(s.token, ((s.epoch, s.version), now));
                want.push(s.token);
            }
        }
        if !want.is_empty() {
            self.out.push_back((Dest::Neighbour(from), IpamMsg::Pull(want)));
        }
    }

    /// Notes that neighbour `from` holds the entries at `stamps` (it
    /// announced them, or pulled them from us), so the next announcement
    /// skips it if that is all it would tell.
    fn note_told(&mut self, from: PeerName, stamps: impl IntoIterator<Item = Stamp>) {
        let told = self.told.entry(from).or_default();
        for s in stamps {
            let st = told.entry(s.token).or_default();
            *st = (*st).max((s.epoch, s.version));
        }
    }

    /// Asks `peer` for its whole ring. A router without one asks one
    /// neighbour at a time ([`RING_ASK_EVERY`]), not every neighbour that
    /// connects or sends a summary: each would answer with the whole ring.
    fn ask_for_ring(&mut self, peer: PeerName) {
        if self.replica.ring().is_none() {
            let now = self.clock;
            if let Some((asked, at)) = self.ring_asked
                && self.neighbours.contains(&asked)
                && now.since(at) < RING_ASK_EVERY
            {
                return;
            }
            self.ring_asked = Some((peer, now));
        }
        self.out.push_back((Dest::Neighbour(peer), IpamMsg::WantRing));
    }

    /// `from`'s digest, sent because our hashes differ: pull what is newer
    /// there, announce to it what is newer here, and if the entries agree
    /// but the rings do not (reclaim records or members differ), send the
    /// whole ring.
    fn handle_digest(&mut self, now: Time, from: PeerName, hash: u64, stamps: &[Stamp]) {
        let Some(ring) = self.replica.ring() else {
            self.ask_for_ring(from);
            return;
        };
        let want: Vec<Stamp> = ring.newer_elsewhere(stamps).copied().collect();
        let ours = ring.newer_here(stamps);
        self.pull(now, from, &want);
        if !ours.is_empty() {
            self.out.push_back((Dest::Neighbour(from), IpamMsg::Have(ours)));
        } else if want.is_empty() && self.ring_hash().is_some_and(|mine| mine != hash) {
            let ring = self.replica.ring().expect("checked above").encode();
            self.out.push_back((Dest::Neighbour(from), IpamMsg::Ring(ring)));
        }
    }

    /// `from`'s bucket sums, sent because our ring hashes differ: ask for
    /// its entries of the buckets whose sums differ, or send the whole ring
    /// if none does (then the reclaim records or the members differ, and
    /// records travel only in whole rings).
    fn handle_buckets(&mut self, from: PeerName, hash: u64, sums: &[u64]) {
        let Some(count) = u16::try_from(sums.len()).ok().filter(|c| (1..=MAX_BUCKETS).contains(c)) else {
            self.events.push_back(Event::Malformed { from });
            return;
        };
        let Some(ring) = self.replica.ring() else {
            self.ask_for_ring(from);
            return;
        };
        let differ: BTreeSet<u16> = ring
            .bucket_sums(count)
            .iter()
            .zip(sums)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| u16::try_from(i).expect("at most MAX_BUCKETS"))
            .collect();
        if differ.is_empty() {
            if self.ring_hash().is_some_and(|mine| mine != hash) {
                let ring = self.replica.ring().expect("checked above").encode();
                self.out.push_back((Dest::Neighbour(from), IpamMsg::Ring(ring)));
            }
            return;
        }
        self.out.push_back((
            Dest::Neighbour(from),
            IpamMsg::WantPart {
                count,
                buckets: differ.into_iter().collect(),
            },
        ));
    }

    /// `from` asks for the stamps of our entries in `buckets` (of `count`).
    fn handle_want_part(&mut self, from: PeerName, count: u16, buckets: &[u16]) {
        let Some(buckets) = valid_buckets(count, buckets) else {
            self.events.push_back(Event::Malformed { from });
            return;
        };
        if let Some(ring) = self.replica.ring() {
            let stamps = ring.stamps_in(count, &buckets);
            self.out.push_back((
                Dest::Neighbour(from),
                IpamMsg::Part {
                    count,
                    buckets: buckets.into_iter().collect(),
                    stamps,
                },
            ));
        }
    }

    /// `from`'s entries of the buckets whose sums differed: pull what is
    /// newer there, announce to it what is newer here.
    fn handle_part(&mut self, now: Time, from: PeerName, count: u16, buckets: &[u16], stamps: &[Stamp]) {
        let Some(buckets) = valid_buckets(count, buckets) else {
            self.events.push_back(Event::Malformed { from });
            return;
        };
        let Some(ring) = self.replica.ring() else {
            self.ask_for_ring(from);
            return;
        };
        let want: Vec<Stamp> = ring.newer_elsewhere(stamps).copied().collect();
        let ours = ring.newer_here_in(stamps, count, &buckets);
        self.pull(now, from, &want);
        if !ours.is_empty() {
            self.out.push_back((Dest::Neighbour(from), IpamMsg::Have(ours)));
        }
    }

    /// Pulls the entries of `want` from `from`, noting them as asked for.
    fn pull(&mut self, now: Time, from: PeerName, want: &[Stamp]) {
        if want.is_empty() {
            return;
        }
        for s in want {
            self.pulled.insert(s.token, ((s.epoch, s.version), now));
        }
        let tokens = want.iter().map(|s| s.token).collect();
        self.out.push_back((Dest::Neighbour(from), IpamMsg::Pull(tokens)));
    }

    /// [`ring_hash`] of our ring, computed once per change.
    pub fn ring_hash(&mut self) -> Option<u64> {
        if self.hash.is_none() {
            self.hash = self.replica.ring().map(ring_hash);
        }
        self.hash
    }

    /// The replica changed: it must be persisted, and its hash is stale.
    fn mutated(&mut self) {
        self.dirty = true;
        self.hash = None;
        self.since_announced = None;
    }

    /// Tells every neighbour which entries changed since the last
    /// announcement; each pulls those it lacks, so a change crosses each
    /// router once, not once per neighbour. The whole ring goes instead when
    /// the reclaim records changed.
    fn announce(&mut self) {
        let told = std::mem::take(&mut self.told);
        let Some(ring) = self.replica.ring() else { return };
        // Only deltas from others changed the ring: look at their entries alone.
        let since = self.since_announced.replace(BTreeSet::new());
        if let (Some(base), Some(tokens)) = (&mut self.announced, since)
            && let Some(stamps) = ring.changes_at(base, &tokens)
        {
            base.update_at(ring, &stamps);
            if !stamps.is_empty() {
                self.send_have(stamps, &told);
            }
            return;
        }
        let base = self.announced.as_ref();
        let msg = match base.and_then(|b| Some((b, ring.changes_since(b)?))) {
            None => Some(IpamMsg::Ring(ring.encode())),
            Some((_, stamps)) if !stamps.is_empty() => Some(IpamMsg::Have(stamps)),
            // Only members grew (a merged ring named routers that own nothing now).
            Some((b, _)) => ring
                .delta_since(b)
                .filter(|d| !d.is_empty())
                .map(|d| IpamMsg::Delta(d.encode())),
        };
        self.announced = Some(ring.snapshot());
        match msg {
            Some(IpamMsg::Have(stamps)) => self.send_have(stamps, &told),
            Some(msg) => self.out.push_back((Dest::AllNeighbours, msg)),
            None => {}
        }
    }

    /// Announcements go to a few neighbours, a different few each time;
    /// each router that pulls announces in turn, so a change spreads as an
    /// epidemic, and digests repair what it misses.
    fn send_have(&mut self, stamps: Vec<Stamp>, told: &BTreeMap<PeerName, BTreeMap<u128, (u32, u64)>>) {
        // Not to a neighbour that showed it has all of them already.
        let has_all = |peer: &PeerName| {
            told.get(peer).is_some_and(|seen| {
                stamps
                    .iter()
                    .all(|s| seen.get(&s.token).is_some_and(|st| *st >= (s.epoch, s.version)))
            })
        };
        let candidates: Vec<PeerName> = self.neighbours.iter().filter(|p| !has_all(p)).copied().collect();
        // FANOUT of them, the next ones in name order after those chosen
        // last time. (Until issue 21 this took every second or third
        // neighbour, which gave 6 of 12, not 8.)
        let n = candidates.len();
        let chosen: Vec<PeerName> = if n <= FANOUT {
            candidates
        } else {
            let start = self.announce_turn % n;
            self.announce_turn = start + FANOUT;
            (start..start + FANOUT).map(|k| candidates[k % n]).collect()
        };
        for peer in chosen {
            self.out
                .push_back((Dest::Neighbour(peer), IpamMsg::Have(stamps.clone())));
        }
    }

    /// The replica changed: persist, and announce soon.
    fn changed(&mut self, now: Time) {
        self.mutated();
        self.schedule_announce(now);
    }

    /// A merge changed the replica. What this router received (a donation,
    /// an heir's takeover) or did (a vote: `reclaims`, the reclaim records
    /// before, differ from now) is written before anything goes out, as any
    /// change of ours; other routers' entries alone are written lazily (see
    /// the [module docs](self)).
    ///
    /// `tokens`: the entries a merged delta carried, `None` for a whole ring.
    fn merged(
        &mut self,
        now: Time,
        out: &MergeOutcome,
        reclaims: Option<BTreeMap<PeerName, ReclaimStatus>>,
        tokens: Option<&[u128]>,
    ) {
        let ours = !out.gained.is_empty()
            || !out.reclaimed.is_empty()
            || reclaims.is_none()
            || reclaims != self.replica.ring().map(Ring::reclaims);
        if ours {
            self.changed(now);
        } else {
            match (tokens, &mut self.since_announced) {
                (Some(tokens), Some(since)) => since.extend(tokens),
                _ => self.since_announced = None,
            }
            self.hash = None;
            self.foreign_since.get_or_insert(now);
            self.schedule_announce(now);
        }
    }

    fn schedule_announce(&mut self, now: Time) {
        let at = now + BATCH;
        if self.announce_at.is_none_or(|t| t > at) {
            self.announce_at = Some(at);
        }
    }
}

/// Routed IPAM messages waiting for the mesh to learn a route to their
/// destination: a router that launched moments ago knows the ring before
/// its topology shows a path to the donor, and a donor may not know the new
/// router yet. The shell keeps them here, retries them when the topology
/// changes, and drops them after [`ROUTE_WAIT`] (the sender's own timeout
/// then takes over). At most [`MAX_UNROUTED`] wait; the oldest goes first.
#[derive(Debug)]
pub struct Unrouted<M> {
    queue: VecDeque<(Time, PeerName, M)>,
}

impl<M> Default for Unrouted<M> {
    fn default() -> Self {
        Self { queue: VecDeque::new() }
    }
}

impl<M> Unrouted<M> {
    /// Parks `msg` for `to`.
    pub fn push(&mut self, now: Time, to: PeerName, msg: M) {
        if self.queue.len() >= MAX_UNROUTED {
            self.queue.pop_front();
        }
        self.queue.push_back((now + ROUTE_WAIT, to, msg));
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a message waits for a router that `known` accepts: worth
    /// computing routes for (a router must be known before it is routable).
    pub fn waits_for_any(&self, mut known: impl FnMut(PeerName) -> bool) -> bool {
        self.queue.iter().any(|(_, to, _)| known(*to))
    }

    /// Takes the messages whose destination `routable` now accepts, and
    /// drops those that waited too long.
    pub fn take_routable(&mut self, now: Time, mut routable: impl FnMut(PeerName) -> bool) -> Vec<(PeerName, M)> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.queue.len());
        for (until, to, msg) in self.queue.drain(..) {
            if until <= now {
                continue;
            }
            if routable(to) {
                out.push((to, msg));
            } else {
                keep.push_back((until, to, msg));
            }
        }
        self.queue = keep;
        out
    }
}

/// Why an allocation got no space when every donor asked gave nothing.
fn gave_nothing(asked: usize) -> String {
    match asked {
        0 => "no router with free space is left to ask".to_owned(),
        1 => "the router asked gave nothing".to_owned(),
        n => format!("the {n} routers asked gave nothing"),
    }
}

/// The buckets a [`IpamMsg::WantPart`] or [`IpamMsg::Part`] names, if they
/// are buckets of `count` (at most [`MAX_BUCKETS`]).
fn valid_buckets(count: u16, buckets: &[u16]) -> Option<BTreeSet<u16>> {
    ((1..=MAX_BUCKETS).contains(&count) && buckets.iter().all(|b| *b < count))
        .then(|| buckets.iter().copied().collect())
}

/// A 64-bit hash of a ring's wire form (identical states encode identically).
pub fn ring_hash(ring: &Ring) -> u64 {
    let digest = Blake2s256::digest(ring.encode());
    u64::from_le_bytes(digest[..8].try_into().expect("a BLAKE2s digest has 32 bytes"))
}

#[cfg(test)]
mod consensus_model;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    fn key(c: &str) -> AllocKey {
        AllocKey::new(c, "eth0").unwrap()
    }

    /// Agents on a full mesh, on virtual time, with a disk each.
    struct Net {
        agents: Vec<Agent>,
        now: Time,
        disks: Vec<Option<Vec<u8>>>,
        events: Vec<(usize, Event)>,
        /// Agents whose messages are lost.
        mute: BTreeSet<usize>,
        /// Agents that receive nothing.
        deaf: BTreeSet<usize>,
        /// Every message delivered: (from, to, kind, encoded length).
        log: Vec<(usize, usize, &'static str, usize)>,
        /// Each agent's ring-creation state as announced (what its topology entry says).
        inits: Vec<IpamInit>,
        /// The version of the entries [`Net::connect`] last made.
        version: u64,
        /// Each agent's latest view, whose routes the shell gives it
        /// ([`Agent::handle_routes`]) as a `Node` does.
        views: Vec<Option<Topology>>,
    }

    impl Net {
        fn new(pool: Pool, inits: Vec<Init>) -> Self {
            let agents: Vec<Agent> = inits
                .into_iter()
                .enumerate()
                .map(|(i, init)| Agent::new(p(i as u64 + 1), pool, init, None, Time::ZERO).unwrap())
                .collect();
            let n = agents.len();
            let mut net = Self {
                agents,
                now: Time::ZERO,
                disks: vec![None; n],
                events: Vec::new(),
                mute: BTreeSet::new(),
                deaf: BTreeSet::new(),
                log: Vec::new(),
                inits: vec![IpamInit::default(); n],
                version: 1,
                views: vec![None; n],
            };
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        net.agents[i].neighbour_up(p(j as u64 + 1));
                    }
                }
            }
            net
        }

        fn seeded(pool: Pool, n: u64) -> Self {
            let seeds: Vec<PeerRef> = (1..=n).map(|i| PeerRef::Name(p(i))).collect();
            let mut net = Self::new(pool, (0..n).map(|_| Init::Seeds(seeds.clone())).collect());
            for i in 0..net.agents.len() {
                let topo = Topology::new(p(i as u64 + 1), format!("h{i}"), vec![]);
                net.agents[i].handle_topology(Time::ZERO, &topo);
            }
            net.pump();
            net
        }

        fn index(name: PeerName) -> usize {
            usize::try_from(name.to_u64()).unwrap() - 1
        }

        /// Delivers messages (persisting first, as the shell must) until quiet.
        fn pump(&mut self) {
            loop {
                let mut sent = false;
                for i in 0..self.agents.len() {
                    if let Some(bytes) = self.agents[i].take_persist() {
                        self.disks[i] = Some(bytes);
                    }
                    if self.agents[i].take_foreign_due(self.now) {
                        self.disks[i] = Some(self.agents[i].record());
                    }
                    if let Some(init) = self.agents[i].take_announcement() {
                        assert!(!self.agents[i].dirty, "announced before it was persisted");
                        self.inits[i] = init;
                    }
                    if self.agents[i].wants_routes() {
                        let routed = self.views[i].as_ref().map(Topology::next_hops).unwrap_or_default();
                        let neighbours = self.agents[i].neighbours.clone();
                        let now = self.now;
                        self.agents[i].handle_routes(now, |q| neighbours.contains(&q) || routed.contains_key(&q));
                    }
                    while let Some(e) = self.agents[i].poll_event() {
                        self.events.push((i, e));
                    }
                    while let Some((dest, msg)) = self.agents[i].poll_transmit() {
                        assert!(!self.agents[i].dirty, "a message left before the state was persisted");
                        if self.mute.contains(&i) {
                            continue;
                        }
                        sent = true;
                        let to: Vec<usize> = match dest {
                            Dest::Neighbour(n) | Dest::Routed(n) => vec![Self::index(n)],
                            Dest::AllNeighbours => (0..self.agents.len()).filter(|&j| j != i).collect(),
                        };
                        let from = p(i as u64 + 1);
                        // Through the wire form, as the shell carries it.
                        let bytes = msg.encode();
                        let msg = IpamMsg::decode(&bytes).unwrap();
                        let kind = msg.kind();
                        for j in to.into_iter().filter(|j| !self.deaf.contains(j)) {
                            self.log.push((i, j, kind, bytes.len()));
                            self.agents[j].handle_message(self.now, from, msg.clone());
                        }
                    }
                }
                if !sent {
                    return;
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            // What the last call asked for happens now, as in a `Node`'s step.
            self.pump();
            let end = self.now + d;
            while self.now < end {
                let next = self.agents.iter().map(Agent::poll_timeout).min().unwrap().min(end);
                self.now = next.max(self.now + Duration::from_millis(1)).min(end);
                for a in &mut self.agents {
                    if a.poll_timeout() <= self.now {
                        a.handle_timeout(self.now);
                    }
                }
                self.pump();
            }
        }

        /// Agent `i`'s topology when it sees the agents in `visible`.
        fn view(&self, i: usize, visible: &[usize]) -> Topology {
            let mut t = Topology::new(p(i as u64 + 1), format!("h{i}"), vec![]);
            let _ = t.set_ipam(self.inits[i].clone());
            let others = visible.iter().filter(|&&j| j != i).map(|&j| PeerEntry {
                name: p(j as u64 + 1),
                nickname: format!("h{j}"),
                // A fresh view each time, so any version is new to it.
                version: 1,
                endpoints: vec![],
                neighbours: BTreeSet::new(),
                ipam: self.inits[j].clone(),
                data: None,
            });
            let _ = t.merge(others);
            t
        }

        /// Gives agent `i` the view of a mesh whose connections are `links`
        /// (pairs of agents, listed by both ends), and makes its neighbours
        /// those of its own links. Every entry is newer than the last call's,
        /// as in a real view.
        fn connect(&mut self, i: usize, links: &[(usize, usize)]) {
            let n = self.agents.len();
            let adjacent = |k: usize| -> BTreeSet<PeerName> {
                links
                    .iter()
                    .filter_map(|&(a, b)| match k {
                        _ if a == k => Some(b),
                        _ if b == k => Some(a),
                        _ => None,
                    })
                    .map(|j| p(j as u64 + 1))
                    .collect()
            };
            let mut t = Topology::new(p(i as u64 + 1), format!("h{i}"), vec![]);
            let _ = t.set_neighbours(adjacent(i));
            self.version += 1;
            let others = (0..n).filter(|&j| j != i).map(|j| PeerEntry {
                name: p(j as u64 + 1),
                nickname: format!("h{j}"),
                version: self.version,
                endpoints: vec![],
                neighbours: adjacent(j),
                ipam: self.inits[j].clone(),
                data: None,
            });
            let _ = t.merge(others);
            let neighbours = adjacent(i);
            for j in (0..n).filter(|&j| j != i) {
                let peer = p(j as u64 + 1);
                match (neighbours.contains(&peer), self.agents[i].neighbours.contains(&peer)) {
                    (true, false) => self.agents[i].neighbour_up(peer),
                    (false, true) => self.agents[i].neighbour_down(peer),
                    _ => {}
                }
            }
            self.views[i] = Some(t.clone());
            self.agents[i].handle_topology(self.now, &t);
            self.pump();
        }

        /// Allocates every free address of agent `i`.
        fn fill(&mut self, i: usize) {
            let held = self.agents[i].replica().allocated() as u128;
            for c in held..held + self.agents[i].replica().free() {
                let got = self.agents[i].allocate(self.now, key(&format!("fill-{i}-{c}")), Request::Any);
                assert!(matches!(got, Ok(Progress::Done(_))), "{got:?}");
            }
            assert_eq!(self.agents[i].replica().free(), 0);
        }

        /// The routers agent `i` asked for space, in order.
        fn asked_by(&self, i: usize) -> Vec<usize> {
            self.log
                .iter()
                .filter(|m| m.0 == i && m.2 == "ask")
                .map(|m| m.1)
                .collect()
        }

        /// One round of topology: agent `i` sees `views[i]`.
        fn topology_round(&mut self, views: &[Vec<usize>]) {
            for (i, visible) in views.iter().enumerate() {
                let t = self.view(i, visible);
                self.views[i] = Some(t.clone());
                self.agents[i].handle_topology(self.now, &t);
                self.pump();
            }
        }

        fn created(&self) -> Vec<(usize, Vec<PeerName>)> {
            self.events
                .iter()
                .filter_map(|(i, e)| match e {
                    Event::Created(seeds) => Some((*i, seeds.clone())),
                    _ => None,
                })
                .collect()
        }

        fn ring(&self, i: usize) -> &Ring {
            self.agents[i].replica().ring().unwrap()
        }

        /// Lets a batch go by, then keeps every agent from sending its
        /// periodic summary: those repair what announcements miss, and a test
        /// of the announcements alone must not see them.
        fn quiet_summaries(&mut self) {
            self.advance(BATCH * 2);
            for a in &mut self.agents {
                a.next_summary = self.now + Duration::from_secs(3600);
            }
        }

        /// Gives `to` a range of agent `i`'s space, as a donation would, and
        /// announces it.
        fn donate(&mut self, i: usize, to: PeerName) {
            let _ = self.agents[i].replica.donate(to, Want::Any).unwrap();
            self.agents[i].changed(self.now);
        }

        /// Allocates on agent `i` until its ring changes: its advertised
        /// free count is rewritten once the count leaves the band of an
        /// eighth around it. Returns how many allocations that took.
        fn allocate_until_advertised(&mut self, i: usize) -> usize {
            let before = self.ring(i).clone();
            let mut n = 0;
            while *self.ring(i) == before {
                n += 1;
                let got = self.agents[i].allocate(self.now, key(&format!("band-{i}-{n}")), Request::Any);
                assert!(matches!(got, Ok(Progress::Done(_))), "{got:?}");
            }
            n
        }

        fn allocated(&self, ticket: Ticket) -> Option<&Result<Allocation, AllocFailure>> {
            self.events.iter().find_map(|(_, e)| match e {
                Event::Allocated(t, r) if *t == ticket => Some(r),
                _ => None,
            })
        }
    }

    #[test]
    fn seed_list_creates_one_ring_and_allocations_are_unique_and_persisted() {
        let mut net = Net::seeded(pool("10.32.0.0/22"), 3);
        for i in 0..3 {
            assert_eq!(net.ring(i), net.ring(0), "every seed created the same ring");
        }
        let mut seen = BTreeSet::new();
        for i in 0..3 {
            for c in 0..10 {
                let Progress::Done(a) = net.agents[i]
                    .allocate(net.now, key(&format!("{i}-{c}")), Request::Any)
                    .unwrap()
                else {
                    panic!("space is local")
                };
                assert!(seen.insert(a.addr), "{} handed out twice", a.addr);
                assert_eq!(net.ring(i).owner_of(a.addr), Some(p(i as u64 + 1)));
            }
            // On disk before the answer leaves the router.
            let saved = Agent::decode_saved(&net.agents[i].take_persist().unwrap()).unwrap();
            assert_eq!(saved.replica().allocated(), 10);
        }
        net.advance(BATCH * 2);
        for i in 0..3 {
            assert_eq!(net.ring(i), net.ring(0), "rings converge after the announcements");
        }
        assert_eq!(
            net.ring(0).owners()[&p(2)].free,
            341,
            "a third of 1,024, no reserved address; ten allocations stay within an eighth of it, so the advertised \
             count stands"
        );
    }

    #[test]
    fn allocation_waits_for_the_ring_then_completes() {
        let seeds = vec![PeerRef::Name(p(1))];
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Seeds(seeds), Init::Adopt]);
        let Progress::Waiting(t) = net.agents[1].allocate(net.now, key("c"), Request::Any).unwrap() else {
            panic!("no ring yet")
        };
        assert_eq!(net.agents[1].no_ring_reason(), Some(NoRing::Adopting));
        net.advance(Duration::from_secs(5));
        assert!(net.allocated(t).is_none(), "still waiting");
        let topo = Topology::new(p(1), "h1".into(), vec![]);
        net.agents[0].handle_topology(net.now, &topo);
        net.advance(BATCH * 2);
        // p(2) owns nothing (it is not a seed), so it got space from p(1).
        let a = net.allocated(t).unwrap().as_ref().unwrap();
        assert_eq!(net.ring(0).owner_of(a.addr), Some(p(2)));
    }

    #[test]
    fn no_ring_within_the_wait_fails_saying_why() {
        let seeds = vec![PeerRef::Name(p(1)), PeerRef::Nickname("elsewhere".parse().unwrap())];
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Seeds(seeds)]);
        net.agents[0].handle_topology(net.now, &Topology::new(p(1), "h1".into(), vec![]));
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("c"), Request::Any).unwrap() else {
            panic!("no ring yet")
        };
        net.advance(RING_WAIT - Duration::from_millis(1));
        assert!(net.allocated(t).is_none());
        net.advance(Duration::from_millis(1));
        let Some(Err(AllocFailure::NoRing(why))) = net.allocated(t) else {
            panic!("{:?}", net.allocated(t))
        };
        assert_eq!(*why, NoRing::UnknownSeeds(vec!["elsewhere".into()]));
        assert_eq!(why.setting(), Some("ipalloc-init"));
    }

    #[test]
    fn exhausted_router_gets_space_from_a_donor() {
        let mut net = Net::seeded(pool("10.32.0.0/28"), 2);
        // p(1) holds 10.32.0.1-7: fill it.
        for c in 0..7 {
            assert!(matches!(
                net.agents[0].allocate(net.now, key(&format!("c{c}")), Request::Any),
                Ok(Progress::Done(_))
            ));
        }
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("more"), Request::Any).unwrap() else {
            panic!("out of space")
        };
        net.pump();
        let a = *net.allocated(t).unwrap().as_ref().unwrap();
        assert!(a.addr > "10.32.0.7".parse::<IpAddr>().unwrap());
        assert_eq!(net.ring(1).owner_of(a.addr), Some(p(1)), "the donor's ring says so too");
    }

    #[test]
    fn a_silent_donor_fails_the_allocation_at_the_deadline_saying_so() {
        let mut net = Net::seeded(pool("10.32.0.0/28"), 2);
        for c in 0..7 {
            let _ = net.agents[0]
                .allocate(net.now, key(&format!("c{c}")), Request::Any)
                .unwrap();
        }
        net.mute.insert(1);
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("more"), Request::Any).unwrap() else {
            panic!("out of space")
        };
        net.advance(ASK_TIMEOUT);
        assert!(net.allocated(t).is_none(), "the only router with space may answer yet");
        assert_eq!(net.asked_by(0), [1]);
        net.advance(RING_WAIT - ASK_TIMEOUT - Duration::from_millis(1));
        assert!(net.allocated(t).is_none());
        net.advance(Duration::from_millis(1));
        let Some(Err(AllocFailure::NoDonor(why))) = net.allocated(t) else {
            panic!("{:?}", net.allocated(t))
        };
        assert!(why.contains("unreachable") && why.contains("did not answer"), "{why}");
    }

    /// Four seeds over a /24, 64 addresses each; agent 0 has none left, and
    /// agents 1 and 2 hold 44 and 54 free, so agent 3 (63 free) has the
    /// most. Every ring shows it.
    fn four_with_agent_0_full() -> Net {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 4);
        net.fill(0);
        for (i, n) in [(1, 20), (2, 10)] {
            for c in 0..n {
                let _ = net.agents[i].allocate(net.now, key(&format!("{i}-{c}")), Request::Any);
            }
        }
        net.advance(FREE_COUNTS_EVERY + BATCH * 2);
        let owners = net.ring(0).owners();
        let free: Vec<u128> = (1..=4).map(|i| owners[&p(i)].free).collect();
        // As advertised: an owner rewrites its count when it leaves the band
        // of an eighth around the last one (64 -> 55 -> 48 for agent 1,
        // 64 -> 55 for agent 2); agent 3 shows the ring creation's count.
        assert_eq!(free, [0, 48, 55, 63]);
        net.log.clear();
        net
    }

    #[test]
    fn a_donor_with_no_route_is_never_asked() {
        let mut net = four_with_agent_0_full();
        // Agent 3 died; its ranges stay in the ring (nobody ran rmpeer). Agent
        // 0 is connected to 1 only, and reaches 2 through it.
        net.mute.insert(3);
        net.connect(0, &[(0, 1), (1, 2)]);
        assert_eq!(
            net.agents[0].replica().choose_donor(),
            Some(p(4)),
            "the ring alone points at the dead one"
        );
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.pump();
        let a = net.allocated(t).unwrap().as_ref().unwrap();
        assert_eq!(
            net.asked_by(0),
            [2],
            "the reachable router with the most free space, routed"
        );
        assert_eq!(net.ring(2).owner_of(a.addr), Some(p(1)), "agent 2 gave it");
    }

    #[test]
    fn a_silent_donor_is_passed_over_for_the_next_reachable_one() {
        let mut net = four_with_agent_0_full();
        // All four are neighbours; 3 has the most space but its answers are lost.
        net.mute.insert(3);
        let start = net.now;
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.advance(ASK_TIMEOUT - Duration::from_millis(1));
        assert!(net.allocated(t).is_none());
        assert_eq!(net.asked_by(0), [3]);
        net.advance(Duration::from_millis(1));
        assert_eq!(net.asked_by(0), [3, 2], "then the next most free, once");
        let a = net.allocated(t).unwrap().as_ref().unwrap();
        assert_eq!(net.now, start + ASK_TIMEOUT);
        assert_eq!(net.ring(2).owner_of(a.addr), Some(p(1)), "agent 2 gave it");
    }

    /// Three seeds over a /24; agents 0 and 1 are full, agent 2 has space.
    /// Agent 0 is connected to 1 only, and 2 to nobody: nobody reachable
    /// from 0 has free space.
    fn three_with_space_out_of_reach() -> Net {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 3);
        net.fill(0);
        net.fill(1);
        net.advance(FREE_COUNTS_EVERY + BATCH * 2);
        net.connect(0, &[(0, 1)]);
        net.log.clear();
        net
    }

    #[test]
    fn with_no_reachable_donor_the_allocation_waits_for_a_route() {
        let mut net = three_with_space_out_of_reach();
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.advance(RING_WAIT / 2);
        assert!(net.allocated(t).is_none(), "still waiting");
        assert!(net.asked_by(0).is_empty(), "nobody it can reach has space");
        // Agent 2 connects to 1: the new view routes 0 to it.
        net.connect(0, &[(0, 1), (1, 2)]);
        let a = net.allocated(t).expect("answered at once").as_ref().unwrap();
        assert_eq!(net.asked_by(0), [2]);
        assert_eq!(net.ring(2).owner_of(a.addr), Some(p(1)), "agent 2 gave it");
    }

    #[test]
    fn with_no_reachable_donor_the_allocation_fails_at_the_deadline_saying_why() {
        let mut net = three_with_space_out_of_reach();
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.advance(RING_WAIT - Duration::from_millis(1));
        assert!(net.allocated(t).is_none(), "waits until the deadline");
        net.advance(Duration::from_millis(1));
        let Some(Err(AllocFailure::NoDonor(why))) = net.allocated(t) else {
            panic!("{:?}", net.allocated(t))
        };
        assert_eq!(
            why,
            "no reachable router has free space (1 router with free space is unreachable)"
        );
        assert!(net.asked_by(0).is_empty());
    }

    #[test]
    fn donors_are_chosen_by_the_routes_when_space_is_needed() {
        let mut net = three_with_space_out_of_reach();
        net.agents[0].release(net.now, &key("fill-0-0")).unwrap();
        // A view that routes to agent 2 while agent 0 still has space.
        net.connect(0, &[(0, 1), (1, 2)]);
        let Progress::Done(_) = net.agents[0].allocate(net.now, key("last"), Request::Any).unwrap() else {
            panic!("one address is free")
        };
        // Full now: the routes of the moment reach agent 2, which has space.
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.pump();
        assert_eq!(net.asked_by(0), [2]);
        assert!(net.allocated(t).unwrap().is_ok());
        // Out of reach again: not asked, until it is reachable once more.
        net.fill(0);
        net.connect(0, &[(0, 1)]);
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("more"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.pump();
        assert_eq!(net.asked_by(0), [2], "agent 2 is out of reach again");
        net.connect(0, &[(0, 1), (1, 2)]);
        assert_eq!(net.asked_by(0), [2, 2], "and reachable once more, at the next view");
        assert!(net.allocated(t).unwrap().is_ok());
    }

    #[test]
    fn a_release_here_answers_a_waiting_allocation() {
        let mut net = three_with_space_out_of_reach();
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        let freed = net.agents[0].release(net.now, &key("fill-0-0")).unwrap();
        net.pump();
        assert_eq!(net.allocated(t).unwrap().as_ref().unwrap().addr, freed);
        assert!(net.asked_by(0).is_empty());
    }

    #[test]
    fn a_reachable_router_that_frees_space_is_asked() {
        let mut net = three_with_space_out_of_reach();
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        // Agent 1 frees an address; its free count reaches agent 0 with the
        // next announcement, with no change of topology.
        net.agents[1].release(net.now, &key("fill-1-0")).unwrap();
        net.advance(FREE_COUNTS_EVERY + BATCH * 2);
        let a = net.allocated(t).expect("answered").as_ref().unwrap();
        assert_eq!(net.asked_by(0), [1]);
        assert_eq!(net.ring(1).owner_of(a.addr), Some(p(1)), "agent 1 gave it");
    }

    #[test]
    fn specific_address_is_claimed_from_its_owner_or_refused_with_the_reason() {
        let mut net = Net::seeded(pool("10.32.0.0/28"), 2);
        let addr: IpAddr = "10.32.0.12".parse().unwrap();
        let Progress::Done(held) = net.agents[1].allocate(net.now, key("b"), Request::Addr(addr)).unwrap() else {
            panic!("own space")
        };
        assert_eq!(held.addr, addr);
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("a"), Request::Addr(addr)).unwrap() else {
            panic!("p(2) owns it")
        };
        net.pump();
        assert_eq!(
            net.allocated(t),
            Some(&Err(AllocFailure::Refused(AllocError::InUse {
                addr,
                by: Box::new(key("b"))
            }))),
            "in use, not unavailable"
        );
        let free: IpAddr = "10.32.0.13".parse().unwrap();
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("a"), Request::Addr(free)).unwrap() else {
            panic!("p(2) owns it")
        };
        net.pump();
        assert_eq!(net.allocated(t).unwrap().as_ref().unwrap().addr, free);
    }

    #[test]
    fn bad_rings_are_refused_and_reported() {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 1);
        let before = net.ring(0).clone();
        net.agents[0].handle_message(net.now, p(9), IpamMsg::Ring(vec![0xff, 1, 2]));
        let other = Ring::new(pool("10.32.0.0/24"), &[p(9)]).unwrap();
        net.agents[0].handle_message(net.now, p(9), IpamMsg::Ring(other.encode()));
        net.pump();
        assert!(net.events.iter().any(|(_, e)| *e == Event::Malformed { from: p(9) }));
        assert!(net.events.iter().any(|(_, e)| matches!(
            e,
            Event::Refused {
                error: MergeError::DifferentRing { .. },
                ..
            }
        )));
        assert_eq!(*net.ring(0), before);
        // A router with no ring does not adopt one over another pool.
        let mut fresh = Agent::new(p(5), pool("10.40.0.0/24"), Init::Adopt, None, Time::ZERO).unwrap();
        fresh.handle_message(Time::ZERO, p(1), IpamMsg::Ring(before.encode()));
        assert!(fresh.replica().ring().is_none());
        assert!(matches!(fresh.poll_event(), Some(Event::OtherPool { .. })));
    }

    #[test]
    fn a_saved_ring_over_another_pool_is_refused_at_start() {
        let saved = Replica::create(p(1), pool("10.32.0.0/24"), &[p(1)]).unwrap();
        let err = Agent::new(
            p(1),
            pool("10.40.0.0/24"),
            Init::Adopt,
            Some(Saved {
                replica: saved,
                init: IpamInit::default(),
                lost: None,
            }),
            Time::ZERO,
        )
        .unwrap_err();
        assert_eq!((err.state, err.given), (pool("10.32.0.0/24"), pool("10.40.0.0/24")));
        assert!(err.to_string().contains("divides 10.32.0.0/24"), "{err}");
    }

    #[test]
    fn rmpeer_completes_once_every_live_router_voted() {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 3);
        net.mute.insert(2);
        let st = net.agents[0].begin_reclaim(net.now, p(3)).unwrap();
        assert!(matches!(st, ReclaimStatus::Pending { .. }));
        net.advance(BATCH * 4);
        for i in 0..2 {
            assert_eq!(
                net.ring(i).reclaim_status(p(3)),
                Some(ReclaimStatus::Done { heir: p(1) }),
                "agent {i}"
            );
            assert!(!net.ring(i).owners().contains_key(&p(3)));
        }
        assert!(matches!(
            net.agents[0].begin_reclaim(net.now, p(9)),
            Err(ReclaimError::UnknownPeer(_))
        ));
    }

    #[test]
    fn leave_is_confirmed_even_when_the_heir_takes_over_at_once() {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 2);
        assert_eq!(net.agents[0].choose_heir([p(1), p(2), p(7)]), Some(p(2)));
        net.agents[0].leave(net.now, p(2)).unwrap();
        assert!(!net.agents[0].heir_confirmed());
        net.pump();
        // p(2) is the only voter: it took the ranges, and p(1) saw it.
        assert_eq!(
            net.ring(1).reclaim_status(p(1)),
            Some(ReclaimStatus::Done { heir: p(2) })
        );
        assert!(net.agents[0].heir_confirmed());
        assert!(net.agents[0].allocate(net.now, key("x"), Request::Any).is_err());
        // Leaving again just sends the ring again.
        net.agents[0].leave(net.now, p(2)).unwrap();
    }

    fn all(n: usize) -> Vec<Vec<usize>> {
        vec![(0..n).collect(); n]
    }

    #[test]
    fn a_fresh_record_reads_back_as_a_router_that_has_done_nothing() {
        let saved = Agent::decode_saved(&Saved::fresh(p(1)).encode()).expect("decodes");
        assert!(!saved.is_lost());
        assert!(saved.replica().ring().is_none());
        let from_fresh = Agent::new(p(1), pool("10.32.0.0/24"), Init::Consensus(1), Some(saved), Time::ZERO).unwrap();
        let from_nothing = Agent::new(p(1), pool("10.32.0.0/24"), Init::Consensus(1), None, Time::ZERO).unwrap();
        assert_eq!(from_fresh.record(), from_nothing.record());
    }

    /// The seed lists the agents created rings from: all the same one.
    fn one_seed_list(net: &Net) -> Vec<PeerName> {
        let created = net.created();
        let lists: BTreeSet<&Vec<PeerName>> = created.iter().map(|(_, s)| s).collect();
        assert_eq!(lists.len(), 1, "one seed list was created: {created:?}");
        lists.into_iter().next().unwrap().clone()
    }

    #[test]
    fn consensus_of_three_creates_one_ring() {
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Consensus(3); 3]);
        // Two have met: not enough.
        for _ in 0..3 {
            net.topology_round(&[vec![0, 1], vec![0, 1], vec![2]]);
        }
        assert!(net.created().is_empty());
        assert_eq!(
            net.agents[0].no_ring_reason(),
            Some(NoRing::Meeting {
                met: 2,
                count: 3,
                quorum: 2,
                proceed_in: None
            })
        );
        assert!(
            net.inits.iter().all(|i| i.ballot.is_none()),
            "nobody leads before all have met"
        );
        for _ in 0..4 {
            net.topology_round(&all(3));
        }
        assert_eq!(one_seed_list(&net), vec![p(1), p(2), p(3)]);
        net.advance(BATCH * 2);
        for i in 0..3 {
            assert_eq!(net.ring(i), net.ring(0));
        }
        assert!(net.inits.iter().all(|i| i.has_ring));
    }

    #[test]
    fn of_two_leaders_that_did_not_know_each_other_the_lower_one_wins() {
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Consensus(2); 3]);
        // p(2) meets p(3) and runs a ballot; p(3) promises it. p(1) meets
        // p(3) and runs a higher one.
        net.topology_round(&[vec![0], vec![1, 2], vec![1, 2]]);
        let first = Ballot {
            round: 1,
            proposer: p(2),
        };
        assert_eq!(net.inits[1].ballot, Some(first));
        assert_eq!(net.inits[2].promised, Some(first));
        net.topology_round(&[vec![0, 2], vec![1], vec![1]]);
        let second = Ballot {
            round: 2,
            proposer: p(1),
        };
        assert_eq!(net.inits[0].ballot, Some(second), "above every round it saw");
        // Everyone meets: p(2) no longer leads, everyone promises p(1)'s
        // ballot, and p(1)'s seed list is chosen.
        for _ in 0..4 {
            net.topology_round(&all(3));
        }
        assert_eq!(net.inits[1].value, None, "p(2) never proposed a list");
        assert_eq!(one_seed_list(&net), vec![p(1), p(2), p(3)]);
        net.advance(BATCH * 2);
        for i in 0..3 {
            assert_eq!(net.ring(i), net.ring(0), "p(2) adopted the one ring");
        }
    }

    #[test]
    fn a_quorum_creates_the_ring_without_a_silent_member_which_then_adopts_it() {
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Consensus(3); 3]);
        // p(3) was seen, then died before it promised: p(1) runs a ballot,
        // p(2) promises it, and they wait for p(3).
        net.mute.insert(2);
        net.deaf.insert(2);
        let pair = [(0, 1)];
        for _ in 0..2 {
            net.connect(0, &pair);
            net.connect(1, &pair);
        }
        assert!(net.inits[0].ballot.is_some() && net.inits[0].value.is_none());
        assert!(net.created().is_empty(), "not before the wait");
        match net.agents[0].no_ring_reason() {
            Some(NoRing::Proposed {
                members: 3,
                accepted: 2,
                needed: 2,
                proceed_in: Some(d),
            }) => assert!(d > Duration::ZERO && d <= QUORUM_WAIT, "{d:?}"),
            other => panic!("{other:?}"),
        }
        let text = net.agents[0].no_ring_reason().unwrap().to_string();
        assert!(text.contains("or for 2 (a quorum, reachable now) in 10 s"), "{text}");
        // The wait ends on a timer, with no new view: p(1) proposes the two
        // that promised; p(2) accepts, and the two create it between them.
        net.advance(QUORUM_WAIT);
        assert_eq!(net.inits[0].value, Some(vec![p(1), p(2)]));
        net.connect(1, &pair);
        net.connect(0, &pair);
        assert_eq!(one_seed_list(&net), vec![p(1), p(2)], "the quorum created it");
        // p(3) comes back: it holds that ring, though it took no part.
        net.mute.clear();
        net.deaf.clear();
        let all = [(0, 1), (0, 2), (1, 2)];
        for i in [2, 0, 1, 2] {
            net.connect(i, &all);
        }
        net.advance(BATCH * 2);
        assert_eq!(net.ring(2), net.ring(0));
        // (It may create it itself from the acceptances it sees: the same ring.)
        assert_eq!(one_seed_list(&net), vec![p(1), p(2)]);
        assert!(net.inits[2].has_ring && net.inits[2].accepted.is_none());
    }

    /// The limit of the first design (an ack moved only when its proposer
    /// withdrew): a proposer that died after others took its side held them
    /// until it came back. With ballots the next leader goes on, and carries
    /// on the seed list that may already have been chosen.
    #[test]
    fn a_leader_that_dies_after_its_list_was_accepted_holds_nobody() {
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Consensus(5); 5]);
        let all: Vec<(usize, usize)> = (0..5).flat_map(|i| (i + 1..5).map(move |j| (i, j))).collect();
        for i in [0, 1, 2, 3, 4] {
            net.connect(i, &all);
        }
        let promised = net.inits[0].clone();
        net.connect(0, &all);
        net.connect(1, &all);
        // p(1) proposed the five; only p(2) heard it and accepted it (with
        // p(1), two of the three it takes). Then p(1) dies: the others still
        // hold its entry from before the proposal.
        net.inits[0] = promised;
        let first = Ballot {
            round: 1,
            proposer: p(1),
        };
        let five: Vec<PeerName> = (1..=5).map(p).collect();
        assert_eq!(net.inits[1].accepted, Some((first, five.clone())));
        assert!(net.inits[2].accepted.is_none() && net.created().is_empty());
        net.mute.insert(0);
        net.deaf.insert(0);
        let rest: Vec<(usize, usize)> = all.iter().copied().filter(|&(a, _)| a != 0).collect();
        for i in 1..5 {
            net.connect(i, &rest);
        }
        assert!(net.created().is_empty(), "the others wait for p(1) first");
        // After the wait p(2) leads: it runs a higher ballot, learns from
        // its own acceptance that p(1)'s list may have been chosen, and
        // proposes that same list.
        net.advance(QUORUM_WAIT);
        for _ in 0..3 {
            for i in 1..5 {
                net.connect(i, &rest);
            }
        }
        assert_eq!(net.inits[1].ballot.map(|b| b.proposer), Some(p(2)));
        assert!(net.inits[1].ballot > Some(first));
        assert_eq!(one_seed_list(&net), five, "the list p(1) proposed, not a new one");
        assert!(net.created().iter().all(|(i, _)| *i != 0));
    }

    #[test]
    fn a_record_from_ring_creation_by_acks_reads_unless_it_was_midway() {
        #[derive(Serialize)]
        struct AckInit {
            has_ring: bool,
            proposal: Option<Vec<PeerName>>,
            withdrawn: bool,
            ack: Option<PeerName>,
        }
        #[derive(Serialize)]
        struct AckRecord {
            replica: Vec<u8>,
            init: AckInit,
        }
        let v2 = |replica: &Replica, ack: Option<PeerName>| {
            let init = AckInit {
                has_ring: replica.ring().is_some(),
                proposal: None,
                withdrawn: false,
                ack,
            };
            postcard::to_allocvec(&AckRecord {
                replica: replica.encode(),
                init,
            })
            .unwrap()
        };
        // A router with a ring keeps it, allocations and all.
        let mut with_ring = Replica::create(p(1), pool("10.32.0.0/24"), &[p(1), p(2)]).unwrap();
        let _ = with_ring
            .allocate(AllocKey::new("c1", "eth0").unwrap(), Request::Any)
            .unwrap();
        let saved = Agent::decode_saved_v2(&v2(&with_ring, Some(p(1)))).unwrap();
        assert_eq!(saved.replica(), &with_ring);
        assert_eq!(
            saved.init,
            IpamInit {
                has_ring: true,
                ..IpamInit::default()
            }
        );
        // One that had done nothing starts afresh.
        let saved = Agent::decode_saved_v2(&v2(&Replica::new(p(1)), None)).unwrap();
        assert_eq!(saved.init, IpamInit::default());
        // One that acked with no ring yet is told to reset.
        let err = Agent::decode_saved_v2(&v2(&Replica::new(p(1)), Some(p(2)))).unwrap_err();
        assert!(err.contains("weft reset"), "{err}");
        // The current format is not the old one.
        assert!(Agent::decode_saved(&v2(&Replica::new(p(1)), Some(p(2)))).is_err());
    }

    #[test]
    fn ring_creation_state_survives_a_restart() {
        let mut net = Net::new(pool("10.32.0.0/24"), vec![Init::Consensus(2); 2]);
        net.topology_round(&[vec![0], vec![0, 1]]);
        assert_eq!(net.inits[1].promised, None, "nobody leads yet");
        net.topology_round(&[vec![0, 1], vec![1]]);
        let ballot = net.inits[0].ballot.expect("p(1) leads");
        // The promise is on disk before the mesh hears of it: a restart keeps it.
        net.topology_round(&[vec![0], vec![0, 1]]);
        assert_eq!(net.inits[1].promised, Some(ballot));
        let saved = Agent::decode_saved(net.disks[1].as_ref().unwrap()).unwrap();
        let back = Agent::new(p(2), pool("10.32.0.0/24"), Init::Consensus(2), Some(saved), net.now).unwrap();
        assert_eq!(back.init_state.promised, Some(ballot));
    }

    #[test]
    fn summaries_repair_a_missed_announcement() {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 2);
        net.mute.insert(0);
        assert!(net.allocate_until_advertised(0) > 1);
        net.advance(FREE_COUNTS_EVERY + BATCH);
        assert_ne!(net.ring(0), net.ring(1), "the announcement was lost");
        net.mute.clear();
        net.advance(SUMMARY_EVERY * 2);
        assert_eq!(net.ring(0), net.ring(1));
    }

    /// A ring of more entries than a whole digest is sent for: each of the
    /// agents gives the others 20 ranges in turn.
    fn large_ring(n: u64) -> Net {
        let mut net = Net::seeded(pool("10.0.0.0/8"), n);
        let n = net.agents.len();
        for round in 0..20 {
            for i in 0..n {
                let to = (i + 1 + round % (n - 1)) % n;
                net.donate(i, p(to as u64 + 1));
            }
            net.advance(BATCH * 2);
        }
        assert!(net.ring(0).len() > DIGEST_WHOLE, "{} entries", net.ring(0).len());
        assert!((1..n).all(|i| net.ring(i) == net.ring(0)));
        net
    }

    #[test]
    fn a_large_ring_is_repaired_from_the_buckets_that_differ() {
        let mut net = large_ring(4);
        net.mute.insert(0);
        net.donate(0, p(3));
        net.advance(BATCH * 2);
        assert_ne!(net.ring(0), net.ring(1), "the announcement was lost");
        net.mute.clear();
        net.log.clear();
        net.advance(SUMMARY_EVERY * 2);
        assert_eq!(net.ring(0), net.ring(1));
        assert_eq!(net.ring(0), net.ring(2));
        let kinds: BTreeSet<&str> = net.log.iter().map(|m| m.2).collect();
        for kind in ["summary", "buckets", "want_part", "part", "pull", "delta"] {
            assert!(kinds.contains(kind), "{kind} missing: {:?}", net.log);
        }
        assert!(
            !kinds.contains("digest") && !kinds.contains("ring"),
            "neither every stamp nor the whole ring: {:?}",
            net.log
        );
        // The part lists the entries of one bucket or two, not the ring's.
        let whole = net.ring(0).stamps().len();
        let part = net.log.iter().filter(|m| m.2 == "part").map(|m| m.3).max().unwrap();
        let digest = IpamMsg::Digest {
            hash: 0,
            stamps: net.ring(0).stamps(),
        }
        .encode()
        .len();
        assert!(
            part * 4 < digest,
            "a part of {part} bytes against a digest of {digest} ({whole} entries)"
        );
    }

    #[test]
    fn a_router_that_adopts_the_ring_asks_one_neighbour_and_does_not_pass_it_on_whole() {
        let mut net = Net::seeded(pool("10.32.0.0/24"), 2);
        let mut late = Agent::new(p(3), pool("10.32.0.0/24"), Init::Adopt, None, Time::ZERO).unwrap();
        late.neighbour_up(p(1));
        late.neighbour_up(p(2));
        let asks = std::iter::from_fn(|| late.poll_transmit()).collect::<Vec<_>>();
        assert_eq!(
            asks,
            [(Dest::Neighbour(p(1)), IpamMsg::WantRing)],
            "one neighbour at a time"
        );
        // Another neighbour's summary does not make it ask again at once...
        late.handle_message(net.now, p(2), IpamMsg::Summary(7));
        assert_eq!(late.poll_transmit(), None);
        // ...only once the first had time to answer.
        late.handle_message(net.now + RING_ASK_EVERY, p(2), IpamMsg::Summary(7));
        assert_eq!(late.poll_transmit(), Some((Dest::Neighbour(p(2)), IpamMsg::WantRing)));
        net.advance(BATCH);
        late.handle_message(net.now, p(1), IpamMsg::Ring(net.ring(0).encode()));
        assert_eq!(late.replica.ring(), Some(net.ring(0)));
        let _ = late.take_persist();
        let _ = late.take_announcement();
        late.handle_timeout(net.now + BATCH * 2);
        let sent: Vec<_> = std::iter::from_fn(|| late.poll_transmit()).collect();
        assert!(
            !sent.iter().any(|(_, m)| matches!(m, IpamMsg::Ring(_))),
            "its neighbours have the ring: {sent:?}"
        );
    }

    /// Agent 0 gives agent 1 `n` ranges (halving its largest free range each time), announcing each.
    fn donations(net: &mut Net, n: usize) {
        for _ in 0..n {
            net.donate(0, p(2));
            net.advance(BATCH * 2);
        }
    }

    #[test]
    fn an_announcement_goes_to_eight_neighbours_and_the_next_to_the_others_first() {
        let mut net = Net::seeded(pool("10.32.0.0/16"), 13);
        net.quiet_summaries();
        // Agent 0 changes its ring twice, a batch apart; counted are its own
        // announcements (the others pass the entries on among themselves).
        let mut heard = Vec::new();
        for round in 0..2 {
            net.log.clear();
            net.donate(0, p(2 + round));
            net.advance(BATCH * 2);
            let to: BTreeSet<usize> = net
                .log
                .iter()
                .filter(|m| m.0 == 0 && m.2 == "have")
                .map(|m| m.1)
                .collect();
            heard.push(to);
        }
        assert_eq!(heard[0].len(), FANOUT, "{heard:?}");
        assert_eq!(heard[0], (1..=8).collect(), "the first eight in name order");
        // The four passed over come first the next time, then four more.
        assert!((9..=12).all(|i| heard[1].contains(&i)), "{heard:?}");
        assert_eq!(heard[1].len(), FANOUT, "{heard:?}");
    }

    #[test]
    fn changes_travel_as_small_deltas() {
        let mut net = Net::seeded(pool("10.32.0.0/16"), 3);
        // Here nothing is missed, and the summaries would see the change
        // before it is announced.
        net.quiet_summaries();
        net.log.clear();
        assert!(net.allocate_until_advertised(0) > 1);
        net.advance(BATCH * 2);
        assert!(net.log.is_empty(), "a change of free counts alone waits: {:?}", net.log);
        net.advance(FREE_COUNTS_EVERY);
        // Agent 0 announces the changed entry; each neighbour pulls it once.
        let from_0: Vec<_> = net.log.iter().filter(|m| m.0 == 0).map(|m| (m.1, m.2)).collect();
        assert_eq!(
            from_0,
            [(1, "have"), (2, "have"), (1, "delta"), (2, "delta")],
            "{:?}",
            net.log
        );
        let pulls: Vec<_> = net.log.iter().filter(|m| m.2 == "pull").map(|m| (m.0, m.1)).collect();
        assert_eq!(
            pulls,
            [(1, 0), (2, 0)],
            "a change is pulled once by each router: {:?}",
            net.log
        );
        assert!(net.log.iter().all(|m| m.3 < 100), "{:?}", net.log);
        assert!(
            !net.log.iter().any(|m| m.2 == "ring"),
            "nobody needed a whole ring: {:?}",
            net.log
        );
        assert_eq!(net.ring(1), net.ring(0));
        assert_eq!(net.ring(2), net.ring(0));
    }

    #[test]
    fn a_delta_that_cannot_be_placed_fetches_the_whole_ring() {
        let mut net = Net::seeded(pool("10.32.0.0/16"), 3);
        net.deaf.insert(2);
        donations(&mut net, 3);
        assert_ne!(net.ring(2), net.ring(0), "agent 2 missed the donations");
        net.deaf.clear();
        net.log.clear();
        donations(&mut net, 1);
        // The entries are pulled once more (they could have been on their way), then the ring is fetched.
        net.advance(REPULL_AFTER * 2);
        assert!(net.now < Time::ZERO + SUMMARY_EVERY, "no periodic summary ran yet");
        let asked = net.log.iter().position(|m| (m.0, m.1, m.2) == (2, 0, "want_ring"));
        let got = net.log.iter().rposition(|m| (m.0, m.1, m.2) == (0, 2, "ring"));
        assert!(asked.is_some() && got > asked, "{:?}", net.log);
        assert_eq!(net.ring(2), net.ring(0));
        assert_eq!(net.ring(1), net.ring(0));
    }

    #[test]
    fn a_donation_the_asker_cannot_place_is_fetched_whole() {
        let mut net = Net::seeded(pool("10.32.0.0/16"), 3);
        net.deaf.insert(2);
        donations(&mut net, 3);
        net.deaf.clear();
        net.log.clear();
        // Agent 2 claims an address that agent 0 still owns, in a part of the
        // pool whose splits it never heard of.
        let want: IpAddr = "10.32.0.9".parse().unwrap();
        assert_eq!(net.ring(0).owner_of(want), Some(p(1)));
        let Progress::Waiting(t) = net.agents[2].allocate(net.now, key("c"), Request::Addr(want)).unwrap() else {
            panic!("the address is agent 0's")
        };
        net.pump();
        assert_eq!(net.allocated(t).unwrap().as_ref().unwrap().addr, want);
        assert!(
            net.log.iter().any(|m| (m.0, m.1, m.2) == (2, 0, "fetch")),
            "{:?}",
            net.log
        );
        assert_eq!(net.ring(0).owner_of(want), Some(p(3)));
    }

    #[test]
    fn unrouted_messages_wait_for_a_route_then_expire() {
        let mut q = Unrouted::default();
        q.push(Time::ZERO, p(1), "a");
        q.push(Time::ZERO + Duration::from_secs(1), p(2), "b");
        assert!(q.take_routable(Time::ZERO, |_| false).is_empty());
        assert_eq!(q.take_routable(Time::ZERO, |to| to == p(2)), vec![(p(2), "b")]);
        assert!(!q.is_empty());
        assert!(q.take_routable(Time::ZERO + ROUTE_WAIT, |_| true).is_empty(), "expired");
        assert!(q.is_empty());
        for i in 0..=MAX_UNROUTED as u64 {
            q.push(Time::ZERO, p(i), "x");
        }
        let all = q.take_routable(Time::ZERO, |_| true);
        assert_eq!(all.len(), MAX_UNROUTED);
        assert_eq!(all[0].0, p(1), "the oldest was dropped");
    }

    #[test]
    fn a_space_request_that_arrives_before_the_ring_is_answered_when_it_arrives() {
        let net = Net::seeded(pool("10.32.0.0/24"), 2);
        let mut late = Agent::new(p(2), pool("10.32.0.0/24"), Init::Adopt, None, Time::ZERO).unwrap();
        let ask = IpamMsg::Ask {
            id: 7,
            from: p(1),
            to: p(2),
            want: WantWire::Any,
        };
        late.handle_message(Time::ZERO, p(1), ask);
        assert_eq!(late.poll_transmit(), None, "no refusal while the ring is on its way");
        late.handle_message(Time::ZERO, p(1), IpamMsg::Ring(net.ring(0).encode()));
        let mut answers =
            std::iter::from_fn(|| late.poll_transmit()).filter(|(_, m)| matches!(m, IpamMsg::Gave { .. }));
        let (dest, gave) = answers.next().expect("the held request is answered");
        assert_eq!(dest, Dest::Routed(p(1)));
        let IpamMsg::Gave { id, refused, .. } = gave else {
            unreachable!()
        };
        assert_eq!((id, refused), (7, None));
    }

    #[test]
    fn a_claim_from_an_owner_out_of_reach_fails_at_once_naming_it() {
        let mut net = Net::seeded(pool("10.32.0.0/28"), 3);
        let addr: IpAddr = "10.32.0.12".parse().unwrap();
        let owner = net.ring(0).owner_of(addr).unwrap();
        let o = Net::index(owner);
        assert_ne!(o, 0);
        // Agent 0 is connected to the third agent only, and nothing routes to the owner.
        let other = 3 - o;
        net.connect(0, &[(0, other)]);
        let got = net.agents[0].allocate(net.now, key("a"), Request::Addr(addr)).unwrap();
        let Progress::Waiting(t) = got else { panic!("{got:?}") };
        net.pump();
        let want = AllocFailure::Unreachable {
            owner,
            wanted: IpNet::from(addr),
            why: "cannot be reached now",
        };
        assert_eq!(net.allocated(t), Some(&Err(want.clone())), "at once");
        assert!(want.to_string().contains(&owner.to_string()), "{want}");
        assert!(net.asked_by(0).is_empty());
    }

    #[test]
    fn a_claim_from_a_silent_owner_fails_after_the_ask_timeout_naming_it() {
        let mut net = Net::seeded(pool("10.32.0.0/28"), 2);
        let addr: IpAddr = "10.32.0.12".parse().unwrap();
        net.mute.insert(1);
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("a"), Request::Addr(addr)).unwrap() else {
            panic!("p(2) owns it")
        };
        net.advance(ASK_TIMEOUT - Duration::from_millis(1));
        assert!(net.allocated(t).is_none());
        net.advance(Duration::from_millis(1));
        assert_eq!(
            net.allocated(t),
            Some(&Err(AllocFailure::Unreachable {
                owner: p(2),
                wanted: IpNet::from(addr),
                why: "did not answer",
            }))
        );
    }

    #[test]
    fn with_no_space_anywhere_the_allocation_fails_as_exhausted() {
        let mut net = Net::seeded(pool("10.32.0.0/28"), 2);
        net.fill(0);
        net.fill(1);
        net.advance(FREE_COUNTS_EVERY + BATCH * 2);
        let got = net.agents[0].allocate(net.now, key("more"), Request::Any);
        assert_eq!(got, Err(AllocFailure::Refused(AllocError::Exhausted)));
        assert!(net.asked_by(0).is_empty());
    }

    #[test]
    fn a_late_answer_from_a_passed_over_donor_is_used() {
        let mut net = four_with_agent_0_full();
        // Agents 3's and 2's answers are lost.
        net.mute.insert(3);
        net.mute.insert(2);
        let Progress::Waiting(t) = net.agents[0].allocate(net.now, key("new"), Request::Any).unwrap() else {
            panic!("agent 0 is full")
        };
        net.advance(ASK_TIMEOUT);
        assert_eq!(net.asked_by(0), [3, 2]);
        assert!(net.allocated(t).is_none());
        // Agent 3's donation arrives now, late: the allocation takes it.
        let ring3 = net.ring(3).clone();
        net.agents[0].handle_message(net.now, p(4), IpamMsg::Ring(ring3.encode()));
        net.pump();
        let a = net.allocated(t).expect("answered").as_ref().unwrap();
        assert_eq!(net.ring(0).owner_of(a.addr), Some(p(1)));
    }
}
