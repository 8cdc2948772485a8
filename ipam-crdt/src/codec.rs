//! Wire and disk forms: versioned serde types encoded with postcard.
//!
//! Every encoding starts with a version tag (the postcard enum variant). A
//! newer router keeps decoding the old variants; an older router refuses a
//! newer one with [`DecodeError::UnsupportedVersion`] instead of guessing.
//! Decoding checks the length against a limit before postcard runs, so
//! nothing is allocated for an oversized input, and then validates every
//! structural invariant before a [`Ring`] or [`Replica`] exists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::delta::Delta;
use crate::peer::PeerName;
use crate::pool::Pool;
use crate::replica::{AllocKey, Replica, add_owned};
use crate::ring::{Entry, Removal, Ring, Surrender, Taken, Vote};
use crate::space::Space;

/// Largest encoded ring or replica accepted, in bytes (16 MiB). A ring of
/// 1,000 owners is about 30 KiB; this leaves room for heavy fragmentation.
pub const MAX_ENCODED_LEN: usize = 16 << 20;

/// Most members a ring may name.
pub const MAX_MEMBERS: usize = 1 << 16;

impl Ring {
    /// The wire form of the ring (what routers gossip). Each format is
    /// written only when the ring needs it, so that older routers keep
    /// reading what they can: a ring with no surrenders and no reclaim
    /// rounds is V2, byte for byte what routers without them write; one
    /// with surrenders but no rounds is V3; one with rounds (a vote cast in
    /// a round, or a completion in a round other than 1) is V4.
    pub fn encode(&self) -> Vec<u8> {
        let wire = if self.removals.values().any(has_rounds) {
            RingWire::V4(RingV4::from(self))
        } else if self.surrenders.is_empty() {
            RingWire::V2(RingV2::from(self))
        } else {
            RingWire::V3(RingV3::from(self))
        };
        postcard::to_allocvec(&wire).expect("encoding to a Vec cannot fail")
    }

    /// Decodes and validates a ring received from the network or disk.
    ///
    /// # Errors
    /// [`DecodeError`]: too large, a newer version, malformed, or structurally invalid.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match decode_bounded::<RingWire>(bytes, RingWire::VERSIONS)? {
            RingWire::V1(v1) => RingV2::from(v1).into_ring(),
            RingWire::V2(v2) => v2.into_ring(),
            RingWire::V3(v3) => v3.into_ring(),
            RingWire::V4(v4) => v4.into_ring(),
        }
    }
}

impl Replica {
    /// The disk form of the replica: ring, allocations, deferred entries
    /// and held spans.
    pub fn encode(&self) -> Vec<u8> {
        let v4 = ReplicaV4 {
            me: self.me,
            ring: self.ring.as_ref().map(RingV4::from),
            allocations: self
                .space
                .allocations()
                .map(|(k, off)| AllocV1 {
                    container: k.container().to_owned(),
                    iface: k.iface().to_owned(),
                    offset: off,
                })
                .collect(),
            deferred: self.deferred.iter().copied().collect(),
            held: self
                .held
                .iter()
                .map(|(s, (e, from))| HeldV3 {
                    start: *s,
                    end: *e,
                    from: *from,
                })
                .collect(),
        };
        postcard::to_allocvec(&ReplicaDisk::V4(v4)).expect("encoding to a Vec cannot fail")
    }

    /// Decodes and validates a replica from disk. A corrupt file is an error,
    /// never an empty replica.
    ///
    /// # Errors
    /// [`DecodeError`], as for [`Ring::decode`], plus allocations that do not
    /// fit the ring.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let v2 = match decode_bounded::<ReplicaDisk>(bytes, ReplicaDisk::VERSIONS)? {
            ReplicaDisk::V1(v1) => ReplicaV4 {
                me: v1.me,
                ring: v1.ring.map(|r| RingV4::from_v3(RingV3::from_v2(RingV2::from(r)))),
                allocations: v1.allocations,
                deferred: Vec::new(),
                held: Vec::new(),
            },
            ReplicaDisk::V2(v2) => ReplicaV4 {
                me: v2.me,
                ring: v2.ring.map(|r| RingV4::from_v3(RingV3::from_v2(r))),
                allocations: v2.allocations,
                deferred: v2.deferred,
                held: Vec::new(),
            },
            ReplicaDisk::V3(v3) => ReplicaV4 {
                me: v3.me,
                ring: v3.ring.map(RingV4::from_v3),
                allocations: v3.allocations,
                deferred: v3.deferred,
                held: v3.held,
            },
            ReplicaDisk::V4(v4) => v4,
        };
        let me = v2.me;
        let Some(ring) = v2.ring else {
            if !v2.allocations.is_empty() || !v2.deferred.is_empty() || !v2.held.is_empty() {
                return Err(invalid("allocations without a ring"));
            }
            return Ok(Self::new(me));
        };
        let ring = ring.into_ring()?;
        let pool = ring.pool;
        if v2.deferred.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("deferred entries must ascend strictly"));
        }
        let deferred: BTreeSet<u128> = v2.deferred.into_iter().collect();
        let removed = ring.is_removed(me);
        let mut space = Space::default();
        for (s, e, entry) in ring.spans() {
            if entry.owner == me && !deferred.contains(&s) && !removed {
                add_owned(&mut space, pool, s, e);
            }
        }
        let mut held = BTreeMap::new();
        for h in v2.held {
            if h.start >= h.end || h.end > pool.size() || space.count_free(h.start, h.end) != h.end - h.start {
                return Err(invalid(
                    "a held span lies outside this router's own free space, or overlaps another",
                ));
            }
            space.remove_free(h.start, h.end);
            held.insert(h.start, (h.end, h.from));
        }
        for a in v2.allocations {
            let key = AllocKey::new(a.container, a.iface).map_err(|e| invalid(e.to_string()))?;
            if a.offset >= pool.size() || !space.is_free(a.offset) || space.offset_of(&key).is_some() {
                return Err(invalid(format!("allocation {key} does not fit this router's space")));
            }
            space.allocate(key, a.offset);
        }
        let replica = Self {
            me,
            ring: Some(ring),
            space,
            deferred,
            held,
        };
        replica.verify().map_err(|v| invalid(v.to_string()))?;
        Ok(replica)
    }
}

impl Delta {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let members: Vec<PeerName> = self.members.iter().copied().collect();
        let ix = |p: &PeerName| members.binary_search(p).expect("spans name only listed members") as u32;
        let mut prev_end = 0;
        let spans = self
            .spans
            .iter()
            .map(|(s, e, entry)| {
                let span = SpanV1 {
                    gap: s - prev_end,
                    len: e - s,
                    owner: ix(&entry.owner),
                    writer: if entry.writer == entry.owner {
                        0
                    } else {
                        ix(&entry.writer) + 1
                    },
                    epoch: entry.epoch,
                    version: entry.version,
                    free: entry.free,
                };
                prev_end = *e;
                span
            })
            .collect();
        let wire = DeltaWire::V1(DeltaV1 {
            origin: self.origin,
            members: Names(members),
            spans,
        });
        postcard::to_allocvec(&wire).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a delta and checks its structure; the spans are checked
    /// against the receiver's pool when merged.
    ///
    /// # Errors
    /// [`DecodeError`], as for [`Ring::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let DeltaWire::V1(v1) = decode_bounded::<DeltaWire>(bytes, DeltaWire::VERSIONS)?;
        let members = v1.members.0;
        if members.len() > MAX_MEMBERS || members.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("members must ascend strictly and stay within bounds"));
        }
        let name = |i: u32| {
            members
                .get(i as usize)
                .copied()
                .ok_or_else(|| invalid(format!("member index {i} out of range")))
        };
        let mut spans = Vec::with_capacity(v1.spans.len());
        let mut prev_end = 0u128;
        for sp in &v1.spans {
            let start = prev_end.checked_add(sp.gap).ok_or_else(|| invalid("token overflows"))?;
            let end = start.checked_add(sp.len).ok_or_else(|| invalid("token overflows"))?;
            if sp.len == 0 || sp.version == 0 || sp.free > sp.len {
                return Err(invalid("a span is empty, or has an impossible version or free count"));
            }
            let owner = name(sp.owner)?;
            let writer = match sp.writer {
                0 => owner,
                w => name(w - 1)?,
            };
            spans.push((
                start,
                end,
                Entry {
                    owner,
                    writer,
                    epoch: sp.epoch,
                    version: sp.version,
                    free: sp.free,
                },
            ));
            prev_end = end;
        }
        Ok(Self {
            origin: v1.origin,
            spans,
            members: members.into_iter().collect(),
        })
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than [`MAX_ENCODED_LEN`]; nothing was decoded.
    #[error("encoded IPAM state is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Written by a newer Weft.
    #[error("IPAM state format version {0} is newer than this Weft understands; upgrade Weft")]
    UnsupportedVersion(u64),
    /// Not a valid encoding.
    #[error("IPAM state is malformed: {0}")]
    Malformed(String),
    /// Decoded, but breaks an invariant.
    #[error("IPAM state is invalid: {0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> DecodeError {
    DecodeError::Invalid(s.into())
}

/// Checks size and version tag, decodes, and refuses trailing bytes.
fn decode_bounded<'de, T: Deserialize<'de>>(bytes: &'de [u8], versions: u64) -> Result<T, DecodeError> {
    if bytes.len() > MAX_ENCODED_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_ENCODED_LEN,
        });
    }
    let tag = read_varint(bytes).ok_or_else(|| DecodeError::Malformed("missing version tag".into()))?;
    if tag >= versions {
        // Versions count from 1; a tag of u64::MAX (found by fuzz/ipam_ring) must not overflow.
        return Err(DecodeError::UnsupportedVersion(tag.saturating_add(1)));
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// The leading postcard varint (the enum tag), if well formed.
fn read_varint(bytes: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

// ---- wire types; V1 is frozen: add V2 beside it, never change it ----

#[derive(Serialize, Deserialize)]
enum RingWire {
    V1(RingV1),
    V2(RingV2),
    V3(RingV3),
    V4(RingV4),
}

impl RingWire {
    const VERSIONS: u64 = 4;
}

#[derive(Serialize, Deserialize)]
enum ReplicaDisk {
    V1(ReplicaV1),
    V2(ReplicaV2),
    V3(ReplicaV3),
    V4(ReplicaV4),
}

impl ReplicaDisk {
    const VERSIONS: u64 = 4;
}

#[derive(Serialize, Deserialize)]
struct ReplicaV4 {
    me: PeerName,
    ring: Option<RingV4>,
    allocations: Vec<AllocV1>,
    /// Own tokens not usable yet, ascending.
    deferred: Vec<u128>,
    /// Spans held as heir, ascending and disjoint.
    held: Vec<HeldV3>,
}

/// The ring since reclaim rounds: V3 plus the round of every vote and
/// completion, one [`RoundsV4`] per removal of the base, in its order.
#[derive(Serialize, Deserialize)]
struct RingV4 {
    base: RingV3,
    rounds: Vec<RoundsV4>,
}

#[derive(Serialize, Deserialize)]
enum RoundsV4 {
    /// The round of each vote, in the order of the removal's votes.
    Pending(Vec<u32>),
    /// The round of the latest completion, and the earlier ones it superseded.
    Done { round: u32, earlier: Vec<EarlierV4> },
}

/// An earlier completion: its round and its heir's member index.
#[derive(Serialize, Deserialize)]
struct EarlierV4 {
    round: u32,
    heir: u32,
}

/// Whether a reclaim record has rounds that V2 and V3 cannot carry: they
/// decode every completion as round 1 and every vote as round 0.
fn has_rounds(r: &Removal) -> bool {
    match r {
        Removal::Pending { votes, .. } => votes.values().any(|v| v.round != 0),
        Removal::Done { round, earlier, .. } => *round != 1 || !earlier.is_empty(),
    }
}

impl RingV4 {
    fn from_v3(base: RingV3) -> Self {
        Self {
            base,
            rounds: Vec::new(),
        }
    }

    fn into_ring(self) -> Result<Ring, DecodeError> {
        let members = self.base.base.members.0.clone();
        let mut ring = self.base.into_ring()?;
        if self.rounds.is_empty() {
            // From V1 to V3, or a ring without reclaims.
            return Ok(ring);
        }
        if self.rounds.len() != ring.removals.len() {
            return Err(invalid("one set of rounds per reclaim record"));
        }
        for (rm, rounds) in ring.removals.values_mut().zip(self.rounds) {
            match (rm, rounds) {
                (Removal::Pending { votes, .. }, RoundsV4::Pending(rs)) if rs.len() == votes.len() => {
                    for (v, r) in votes.values_mut().zip(rs) {
                        v.round = r;
                    }
                }
                (
                    Removal::Done {
                        round, earlier, heir, ..
                    },
                    RoundsV4::Done { round: r, earlier: e },
                ) => {
                    if r == 0
                        || e.windows(2).any(|w| w[0].round >= w[1].round)
                        || e.last().is_some_and(|l| l.round >= r)
                    {
                        return Err(invalid(
                            "earlier completions must ascend, before the latest, in rounds from 1",
                        ));
                    }
                    *round = r;
                    for x in e {
                        let h = members
                            .get(x.heir as usize)
                            .copied()
                            .ok_or_else(|| invalid(format!("member index {} out of range", x.heir)))?;
                        if x.round == 0 || h == *heir {
                            return Err(invalid("an earlier completion has round 0 or the latest heir"));
                        }
                        earlier.insert(x.round, h);
                    }
                }
                _ => return Err(invalid("rounds do not match their reclaim record")),
            }
        }
        Ok(ring)
    }
}

impl From<&Ring> for RingV4 {
    fn from(r: &Ring) -> Self {
        let members: Vec<PeerName> = r.members.iter().copied().collect();
        let ix = |p: &PeerName| members.binary_search(p).expect("every named peer is a member") as u32;
        let rounds = if r.removals.values().any(has_rounds) {
            r.removals
                .values()
                .map(|rm| match rm {
                    Removal::Pending { votes, .. } => RoundsV4::Pending(votes.values().map(|v| v.round).collect()),
                    Removal::Done { round, earlier, .. } => RoundsV4::Done {
                        round: *round,
                        earlier: earlier
                            .iter()
                            .map(|(round, h)| EarlierV4 {
                                round: *round,
                                heir: ix(h),
                            })
                            .collect(),
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            base: RingV3::from(r),
            rounds,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ReplicaV3 {
    me: PeerName,
    ring: Option<RingV3>,
    allocations: Vec<AllocV1>,
    /// Own tokens not usable yet, ascending.
    deferred: Vec<u128>,
    /// Spans held as heir, ascending and disjoint.
    held: Vec<HeldV3>,
}

#[derive(Serialize, Deserialize)]
struct HeldV3 {
    start: u128,
    end: u128,
    from: PeerName,
}

/// The ring since surrenders: V2 plus what removed routers gave up.
#[derive(Serialize, Deserialize)]
struct RingV3 {
    base: RingV2,
    surrenders: Vec<SurrenderV3>,
}

#[derive(Serialize, Deserialize)]
struct SurrenderV3 {
    /// Member index of the removed router.
    dead: u32,
    all: bool,
    by_self: bool,
    /// `[start, end)` spans, ascending.
    spans: Vec<(u128, u128)>,
}

impl RingV3 {
    fn from_v2(base: RingV2) -> Self {
        Self {
            base,
            surrenders: Vec::new(),
        }
    }

    fn into_ring(self) -> Result<Ring, DecodeError> {
        let members = self.base.members.0.clone();
        let mut ring = self.base.into_ring()?;
        let size = ring.pool.size();
        let mut last: Option<PeerName> = None;
        for sv in self.surrenders {
            let dead = members
                .get(sv.dead as usize)
                .copied()
                .ok_or_else(|| invalid(format!("member index {} out of range", sv.dead)))?;
            if last.is_some_and(|l| l >= dead) || !ring.removals.contains_key(&dead) {
                return Err(invalid("surrenders must ascend strictly and name removed routers"));
            }
            last = Some(dead);
            if sv.spans.windows(2).any(|w| w[0] >= w[1]) || sv.spans.iter().any(|(s, e)| s >= e || *e > size) {
                return Err(invalid("surrendered spans must ascend and lie in the pool"));
            }
            ring.surrenders.insert(
                dead,
                Surrender {
                    spans: sv.spans.into_iter().collect(),
                    all: sv.all,
                    by_self: sv.by_self,
                },
            );
        }
        Ok(ring)
    }
}

impl From<&Ring> for RingV3 {
    fn from(r: &Ring) -> Self {
        let members: Vec<PeerName> = r.members.iter().copied().collect();
        let ix = |p: &PeerName| members.binary_search(p).expect("every named peer is a member") as u32;
        Self {
            surrenders: r
                .surrenders
                .iter()
                .map(|(d, s)| SurrenderV3 {
                    dead: ix(d),
                    all: s.all,
                    by_self: s.by_self,
                    spans: s.spans.iter().copied().collect(),
                })
                .collect(),
            base: RingV2::from(r),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ReplicaV2 {
    me: PeerName,
    ring: Option<RingV2>,
    allocations: Vec<AllocV1>,
    /// Own tokens not usable yet, ascending.
    deferred: Vec<u128>,
}

#[derive(Serialize, Deserialize)]
struct ReplicaV1 {
    me: PeerName,
    ring: Option<RingV1>,
    allocations: Vec<AllocV1>,
}

#[derive(Serialize, Deserialize)]
struct AllocV1 {
    container: String,
    iface: String,
    offset: u128,
}

/// The ring on the wire. Peer names appear once, in `members` (sorted);
/// everything else refers to them by index, a varint of one or two bytes.
/// Tokens are stored as gaps from the previous token.
#[derive(Serialize, Deserialize)]
struct RingV1 {
    pool: PoolV1,
    members: Names,
    seeds: Vec<u32>,
    entries: Vec<EntryV1>,
    removals: Vec<RemovalV1>,
}

#[derive(Serialize, Deserialize)]
enum PoolV1 {
    V4 { addr: [u8; 4], prefix: u8 },
    V6 { addr: [u8; 16], prefix: u8 },
}

#[derive(Serialize, Deserialize)]
struct EntryV1 {
    gap: u128,
    owner: u32,
    version: u64,
    free: u128,
}

#[derive(Serialize, Deserialize)]
struct RemovalV1 {
    dead: u32,
    state: RemovalStateV1,
}

#[derive(Serialize, Deserialize)]
enum RemovalStateV1 {
    Pending { proposals: Vec<u32>, votes: Vec<VoteV1> },
    Done { heir: u32 },
}

#[derive(Serialize, Deserialize)]
struct VoteV1 {
    voter: u32,
    seq: u64,
    heir: u32,
}

/// The ring on the wire since takeover epochs: entries name their writer and
/// epoch, and done reclaims list the ranges the heir took.
#[derive(Serialize, Deserialize)]
struct RingV2 {
    pool: PoolV1,
    members: Names,
    seeds: Vec<u32>,
    entries: Vec<EntryV2>,
    removals: Vec<RemovalV2>,
}

#[derive(Serialize, Deserialize)]
struct EntryV2 {
    gap: u128,
    owner: u32,
    /// 0 when the owner wrote the entry (the common case, one byte), else
    /// the writer's member index + 1.
    writer: u32,
    epoch: u32,
    version: u64,
    free: u128,
}

#[derive(Serialize, Deserialize)]
struct RemovalV2 {
    dead: u32,
    state: RemovalStateV2,
}

#[derive(Serialize, Deserialize)]
enum RemovalStateV2 {
    Pending { proposals: Vec<u32>, votes: Vec<VoteV1> },
    Done { heir: u32, taken: Vec<TakenV2> },
}

#[derive(Serialize, Deserialize)]
struct TakenV2 {
    start: u128,
    end: u128,
    epoch: u32,
}

/// A ring delta on the wire: spans ascend and do not overlap; each starts
/// `gap` after the previous one's end (the first, after 0).
#[derive(Serialize, Deserialize)]
enum DeltaWire {
    V1(DeltaV1),
}

impl DeltaWire {
    const VERSIONS: u64 = 1;
}

#[derive(Serialize, Deserialize)]
struct DeltaV1 {
    origin: u64,
    members: Names,
    spans: Vec<SpanV1>,
}

#[derive(Serialize, Deserialize)]
struct SpanV1 {
    gap: u128,
    len: u128,
    owner: u32,
    /// As in [`EntryV2`]: 0 for the owner, else member index + 1.
    writer: u32,
    epoch: u32,
    version: u64,
    free: u128,
}

impl From<RingV1> for RingV2 {
    /// A V1 ring predates epochs: every entry is epoch 0 and written by its
    /// owner as far as anyone can tell, and done reclaims list no ranges.
    fn from(v1: RingV1) -> Self {
        Self {
            pool: v1.pool,
            members: v1.members,
            seeds: v1.seeds,
            entries: v1
                .entries
                .into_iter()
                .map(|e| EntryV2 {
                    gap: e.gap,
                    owner: e.owner,
                    writer: 0,
                    epoch: 0,
                    version: e.version,
                    free: e.free,
                })
                .collect(),
            removals: v1
                .removals
                .into_iter()
                .map(|r| RemovalV2 {
                    dead: r.dead,
                    state: match r.state {
                        RemovalStateV1::Pending { proposals, votes } => RemovalStateV2::Pending { proposals, votes },
                        RemovalStateV1::Done { heir } => RemovalStateV2::Done {
                            heir,
                            taken: Vec::new(),
                        },
                    },
                })
                .collect(),
        }
    }
}

/// Peer names as one byte string of 8-byte names: one length and one copy
/// instead of a serde call per byte.
struct Names(Vec<PeerName>);

impl Serialize for Names {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|p| p.to_u64().to_be_bytes()).collect();
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Names;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string of 8-byte peer names")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Names, E> {
                if !b.len().is_multiple_of(8) {
                    return Err(E::invalid_length(b.len(), &self));
                }
                let names = b
                    .chunks_exact(8)
                    .map(|c| PeerName::from_u64(u64::from_be_bytes(c.try_into().expect("chunks of 8"))));
                Ok(Names(names.collect()))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl From<&Ring> for RingV2 {
    fn from(r: &Ring) -> Self {
        let pool = match r.pool.net() {
            IpNet::V4(n) => PoolV1::V4 {
                addr: n.network().octets(),
                prefix: n.prefix_len(),
            },
            IpNet::V6(n) => PoolV1::V6 {
                addr: n.network().octets(),
                prefix: n.prefix_len(),
            },
        };
        let members: Vec<PeerName> = r.members.iter().copied().collect();
        let ix = |p: &PeerName| members.binary_search(p).expect("every named peer is a member") as u32;
        let mut prev = 0;
        let entries = r
            .entries
            .iter()
            .map(|(t, e)| {
                let gap = t - prev;
                prev = *t;
                EntryV2 {
                    gap,
                    owner: ix(&e.owner),
                    writer: if e.writer == e.owner { 0 } else { ix(&e.writer) + 1 },
                    epoch: e.epoch,
                    version: e.version,
                    free: e.free,
                }
            })
            .collect();
        let removals = r
            .removals
            .iter()
            .map(|(d, rm)| RemovalV2 {
                dead: ix(d),
                state: match rm {
                    Removal::Done { heir, taken, .. } => RemovalStateV2::Done {
                        heir: ix(heir),
                        taken: taken
                            .iter()
                            .map(|k| TakenV2 {
                                start: k.start,
                                end: k.end,
                                epoch: k.epoch,
                            })
                            .collect(),
                    },
                    Removal::Pending { proposals, votes } => RemovalStateV2::Pending {
                        proposals: proposals.iter().map(ix).collect(),
                        votes: votes
                            .iter()
                            .map(|(v, x)| VoteV1 {
                                voter: ix(v),
                                seq: x.seq,
                                heir: ix(&x.heir),
                            })
                            .collect(),
                    },
                },
            })
            .collect();
        Self {
            pool,
            seeds: r.seeds.iter().map(ix).collect(),
            members: Names(members),
            entries,
            removals,
        }
    }
}

impl RingV2 {
    fn into_ring(self) -> Result<Ring, DecodeError> {
        let net = match self.pool {
            PoolV1::V4 { addr, prefix } => {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), prefix).map_err(|e| invalid(e.to_string()))?)
            }
            PoolV1::V6 { addr, prefix } => {
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), prefix).map_err(|e| invalid(e.to_string()))?)
            }
        };
        let pool = Pool::new(net).map_err(|e| invalid(e.to_string()))?;
        let members = self.members.0;
        if self.seeds.is_empty() || members.len() > MAX_MEMBERS {
            return Err(invalid("seed or member count out of bounds"));
        }
        if members.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("members must ascend strictly"));
        }
        let name = |i: u32| {
            members
                .get(i as usize)
                .copied()
                .ok_or_else(|| invalid(format!("member index {i} out of range")))
        };
        let seeds = self.seeds.iter().map(|&i| name(i)).collect::<Result<Vec<_>, _>>()?;
        let mut seen = BTreeSet::new();
        if !seeds.iter().all(|s| seen.insert(*s)) {
            return Err(invalid("seeds repeat"));
        }
        let size = pool.size();
        let mut entries = Vec::with_capacity(self.entries.len());
        let mut token = 0u128;
        for (i, e) in self.entries.iter().enumerate() {
            token = token.checked_add(e.gap).ok_or_else(|| invalid("token overflows"))?;
            let next = match self.entries.get(i + 1) {
                Some(n) => token.checked_add(n.gap).ok_or_else(|| invalid("token overflows"))?,
                None => size,
            };
            if (i == 0 && e.gap != 0) || (i > 0 && e.gap == 0) || next > size || token >= next {
                return Err(invalid(
                    "entry tokens must start at 0, ascend strictly and lie in the pool",
                ));
            }
            if e.version == 0 || e.free > next - token - pool.reserved_in(token, next) {
                return Err(invalid(format!(
                    "entry at {} has an impossible version or free count",
                    pool.addr_at(token)
                )));
            }
            let owner = name(e.owner)?;
            let writer = match e.writer {
                0 => owner,
                w => name(w - 1)?,
            };
            entries.push((
                token,
                Entry {
                    owner,
                    writer,
                    epoch: e.epoch,
                    version: e.version,
                    free: e.free,
                },
            ));
        }
        if entries.is_empty() {
            return Err(invalid("a ring has at least one entry"));
        }
        let mut removals = Vec::with_capacity(self.removals.len());
        for r in self.removals {
            let dead = name(r.dead)?;
            if removals.last().is_some_and(|(l, _)| *l >= dead) {
                return Err(invalid("removals must ascend strictly"));
            }
            let rm = match r.state {
                RemovalStateV2::Done { heir, taken } => {
                    let key = |k: &TakenV2| (k.start, k.end, k.epoch);
                    if taken.windows(2).any(|w| key(&w[0]) >= key(&w[1]))
                        || taken.iter().any(|k| k.start >= k.end || k.end > size || k.epoch == 0)
                    {
                        return Err(invalid("taken ranges must ascend, lie in the pool and have an epoch"));
                    }
                    Removal::Done {
                        heir: name(heir)?,
                        // V2 predates rounds: its completions took over one epoch up.
                        round: 1,
                        earlier: BTreeMap::new(),
                        taken: taken
                            .into_iter()
                            .map(|k| Taken {
                                start: k.start,
                                end: k.end,
                                epoch: k.epoch,
                            })
                            .collect(),
                    }
                }
                RemovalStateV2::Pending { proposals, votes } => {
                    let proposals = proposals.into_iter().map(name).collect::<Result<Vec<_>, _>>()?;
                    if proposals.is_empty() || proposals.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(invalid("proposals must be present and ascend strictly"));
                    }
                    let mut vs = Vec::with_capacity(votes.len());
                    for v in votes {
                        let voter = name(v.voter)?;
                        if vs.last().is_some_and(|(l, _)| *l >= voter) {
                            return Err(invalid("votes must ascend strictly by voter"));
                        }
                        vs.push((
                            voter,
                            Vote {
                                seq: v.seq,
                                heir: name(v.heir)?,
                                // Cast before rounds: it never counts, and the voter votes again.
                                round: 0,
                            },
                        ));
                    }
                    Removal::Pending {
                        proposals: proposals.into_iter().collect(),
                        votes: vs.into_iter().collect(),
                    }
                }
            };
            removals.push((dead, rm));
        }
        // Inputs are validated as sorted, so these collects bulk-build in linear time.
        let ring = Ring {
            pool,
            seeds,
            entries: entries.into_iter().collect(),
            members: members.into_iter().collect(),
            removals: removals.into_iter().collect::<BTreeMap<_, _>>(),
            surrenders: BTreeMap::new(),
        };
        // Merge never keeps a stale token; a ring holding one was not made by merge.
        for k in ring.taken() {
            if let Some((t, _)) = ring.entries.range(k.start + 1..k.end).find(|(_, e)| e.epoch < k.epoch) {
                return Err(invalid(format!(
                    "entry at {} lies in a range taken over at a later epoch",
                    pool.addr_at(*t)
                )));
            }
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Request;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn small_ring() -> Ring {
        Ring::new(Pool::new("10.32.0.0/22".parse().unwrap()).unwrap(), &[p(1), p(2)]).unwrap()
    }

    /// The exact bytes of a V1 ring, which a newer Weft still reads.
    #[test]
    fn ring_v1_bytes_still_decode() {
        #[rustfmt::skip]
        let v1: Vec<u8> = vec![
            0,                                  // RingWire::V1
            0, 10, 32, 0, 0, 22,                // PoolV1::V4 10.32.0.0/22
            16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2,  // members p1, p2: 16 bytes
            2, 0, 1,                            // seeds: members 0, 1
            2,                                  // two entries
            0, 0, 1, 0xff, 0x03,                // gap 0, member 0, v1, free 511
            0x80, 0x04, 1, 1, 0xff, 0x03,       // gap 512, member 1, v1, free 511
            0,                                  // no removals
        ];
        assert_eq!(Ring::decode(&v1).unwrap(), small_ring());
    }

    /// The exact bytes of a V2 ring: the format is frozen, so this must never change.
    #[test]
    fn ring_v2_bytes_are_stable() {
        let bytes = small_ring().encode();
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            1,                                  // RingWire::V2
            0, 10, 32, 0, 0, 22,                // PoolV1::V4 10.32.0.0/22
            16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2,  // members p1, p2: 16 bytes
            2, 0, 1,                            // seeds: members 0, 1
            2,                                  // two entries
            0, 0, 0, 0, 1, 0xff, 0x03,          // gap 0, owner 0, written by the owner, epoch 0, v1, free 511
            0x80, 0x04, 1, 0, 0, 1, 0xff, 0x03, // gap 512, owner 1, written by the owner, epoch 0, v1, free 511
            0,                                  // no removals
        ];
        assert_eq!(bytes, expected);
        assert_eq!(Ring::decode(&expected).unwrap(), small_ring());
    }

    /// A V2 ring and a V3 replica with reclaim records, as written before
    /// reclaim rounds (p(1) took p(3)'s range and votes to take p(2)'s):
    /// they still decode, a completion as round 1 and a vote as round 0,
    /// which never counts, so the voter votes again. Without rounds to
    /// carry, the ring is written as V2 again, byte for byte.
    #[test]
    fn records_from_before_rounds_still_decode() {
        #[rustfmt::skip]
        let ring_v2: Vec<u8> = vec![
            1, 0, 10, 32, 0, 0, 24, 24, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2,
            0, 0, 0, 0, 0, 0, 0, 3, 3, 0, 1, 2, 3, 0, 0, 0, 0, 1, 84, 85, 1, 0, 0, 1,
            85, 85, 0, 0, 1, 1, 0, 2, 1, 0, 1, 0, 1, 0, 1, 0, 2, 1, 0, 1, 170, 1, 128, 2,
            1,
        ];
        #[rustfmt::skip]
        let replica_v3: Vec<u8> = vec![
            2, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 10, 32, 0, 0, 24, 24, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 3, 0, 1, 2, 3, 0, 0,
            0, 0, 1, 84, 85, 1, 0, 0, 1, 85, 85, 0, 0, 1, 1, 0, 2, 1, 0, 1, 0, 1, 0, 1,
            0, 2, 1, 0, 1, 170, 1, 128, 2, 1, 0, 1, 2, 99, 49, 4, 101, 116, 104, 48, 1, 0, 1, 170,
            1, 255, 1, 0, 0, 0, 0, 0, 0, 0, 3,
        ];
        let ring = Ring::decode(&ring_v2).unwrap();
        assert!(matches!(
            &ring.removals[&p(3)],
            Removal::Done { heir, round: 1, taken, earlier }
                if *heir == p(1) && taken.len() == 1 && earlier.is_empty()
        ));
        let Removal::Pending { votes, .. } = &ring.removals[&p(2)] else {
            panic!("p(2)'s reclaim is pending")
        };
        assert_eq!(votes[&p(1)].round, 0);
        assert_eq!(ring.encode(), ring_v2);
        let mut replica = Replica::decode(&replica_v3).unwrap();
        assert_eq!(replica.ring(), Some(&ring));
        assert_eq!(replica.held().get(&p(3)).copied(), Some(85));
        assert_eq!(replica.allocated(), 1);
        // The old vote does not count; voting again puts the ring in V4.
        let status = replica.begin_reclaim(p(2)).unwrap();
        assert_eq!(
            status,
            crate::ReclaimStatus::Pending {
                candidate: Some(p(1)),
                waiting_for: vec![p(3)],
            },
            "p(3) never stopped: it is a voter still"
        );
        let Removal::Pending { votes, .. } = &replica.ring().unwrap().removals[&p(2)] else {
            panic!("p(2)'s reclaim is pending")
        };
        assert_eq!((votes[&p(1)].seq, votes[&p(1)].round), (2, 1));
        let bytes = replica.ring().unwrap().encode();
        assert_eq!(bytes[0], 3, "RingWire::V4");
        assert_eq!(Ring::decode(&bytes).as_ref(), Ok(replica.ring().unwrap()));
        assert_eq!(Replica::decode(&replica.encode()), Ok(replica));
    }

    #[test]
    fn replica_round_trips() {
        let mut r = Replica::create(p(1), small_ring().pool(), &[p(1), p(2)]).unwrap();
        r.allocate(AllocKey::new("c1", "eth0").unwrap(), Request::Any).unwrap();
        r.allocate(
            AllocKey::new("c2", "eth0").unwrap(),
            Request::Addr("10.32.1.9".parse().unwrap()),
        )
        .unwrap();
        r.begin_reclaim(p(2)).unwrap();
        let back = Replica::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            Replica::decode(&Replica::new(p(9)).encode()).unwrap(),
            Replica::new(p(9))
        );
    }

    #[test]
    fn refuses_newer_versions_oversize_and_trailing_bytes() {
        let mut bytes = small_ring().encode();
        bytes[0] = 4;
        assert_eq!(Ring::decode(&bytes), Err(DecodeError::UnsupportedVersion(5)));
        // The largest tag a varint can hold (the input fuzz/ipam_ring found).
        let max_tag = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Ring::decode(&max_tag), Err(DecodeError::UnsupportedVersion(u64::MAX)));
        let big = vec![0u8; MAX_ENCODED_LEN + 1];
        assert!(matches!(Ring::decode(&big), Err(DecodeError::TooLarge { .. })));
        let mut trailing = small_ring().encode();
        trailing.push(0);
        assert!(matches!(Ring::decode(&trailing), Err(DecodeError::Malformed(_))));
        assert!(matches!(Ring::decode(&[]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn refuses_structurally_invalid_rings() {
        let good = small_ring().encode();
        // Owner, then writer, of the second entry is not a member.
        for (pos, was, to) in [(good.len() - 7, 1, 2), (good.len() - 6, 0, 3)] {
            let mut bad = good.clone();
            assert_eq!(bad[pos], was);
            bad[pos] = to;
            assert!(matches!(Ring::decode(&bad), Err(DecodeError::Invalid(_))));
        }
        // The last range holds 511 usable addresses (the broadcast address is
        // reserved); advertising 512 free (varint 0x80 0x04) is impossible.
        let mut bad = good;
        let n = bad.len();
        assert_eq!(bad[n - 3..n - 1], [0xff, 0x03]);
        bad[n - 3] = 0x80;
        bad[n - 2] = 0x04;
        assert!(matches!(Ring::decode(&bad), Err(DecodeError::Invalid(_))));
    }

    /// A token inside a range taken over at a later epoch is stale; merge
    /// drops it, so a ring that holds one is refused.
    #[test]
    fn refuses_a_stale_token() {
        let mut r = small_ring();
        let k = r.take(0, p(2), 1);
        r.removals.insert(
            p(1),
            Removal::Done {
                heir: p(2),
                round: 1,
                taken: BTreeSet::from([k]),
                earlier: BTreeMap::new(),
            },
        );
        assert_eq!(Ring::decode(&r.encode()).unwrap(), r);
        r.split_at(100, 0);
        r.entries.get_mut(&100).unwrap().epoch = 0;
        assert!(matches!(Ring::decode(&r.encode()), Err(DecodeError::Invalid(_))));
    }

    /// A ring with a surrender is V3 and round-trips; the replica keeps its held spans.
    #[test]
    fn surrenders_and_held_spans_round_trip() {
        let pl = small_ring().pool();
        let mut a = Replica::create(p(1), pl, &[p(1), p(2), p(3)]).unwrap();
        let mut b = Replica::create(p(2), pl, &[p(1), p(2), p(3)]).unwrap();
        let mut c = Replica::create(p(3), pl, &[p(1), p(2), p(3)]).unwrap();
        c.allocate(AllocKey::new("c1", "eth0").unwrap(), Request::Any).unwrap();
        a.begin_reclaim(p(3)).unwrap();
        let _ = b.merge(a.ring().unwrap()).unwrap();
        let _ = a.merge(b.ring().unwrap()).unwrap();
        assert!(!a.held().is_empty(), "the heir holds what it took");
        let back = Replica::decode(&a.encode()).unwrap();
        assert_eq!(back, a);
        // c hears of it: it surrenders its free space.
        let _ = c.merge(a.ring().unwrap()).unwrap();
        let ring = c.ring().unwrap();
        assert_eq!(ring.encode()[0], 2, "a ring with a surrender is V3");
        assert_eq!(&Ring::decode(&ring.encode()).unwrap(), ring);
        assert_eq!(Replica::decode(&c.encode()).unwrap(), c);
        let _ = a.merge(ring).unwrap();
        assert_eq!(Replica::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn corrupt_replica_is_an_error_not_an_empty_state() {
        let mut r = Replica::create(p(1), small_ring().pool(), &[p(1), p(2)]).unwrap();
        r.allocate(AllocKey::new("c1", "eth0").unwrap(), Request::Any).unwrap();
        let bytes = r.encode();
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(Replica::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
    }
}
