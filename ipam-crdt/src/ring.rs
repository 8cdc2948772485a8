//! The ring: the gossiped state, a state-based CRDT.
//!
//! The pool is cut at *tokens* (offsets); the entry at token `t` covers
//! `[t, next token)`, and token 0 always exists, so every address has exactly
//! one entry and ownership is disjoint and complete by construction. An entry
//! carries its owner, its writer, an epoch and version, and the owner's
//! advertised free count (see [`advertised_free_holds`]). Only the owner of
//! an entry writes it (donation hands it over with a version bump); the one
//! exception is the heir of a completed reclaim, which rewrites the entry
//! its round's number of epochs up, see [`crate`] docs. A token is dropped
//! only when a takeover makes it stale.
//!
//! [`Ring::merge`] is a join: per token the higher (epoch, version) wins,
//! members and reclaim records are grow-only or monotone (two completions of
//! one reclaim join: the later round wins), and stale tokens go. Equal
//! stamps with different contents can only come from a broken invariant,
//! and are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::peer::PeerName;
use crate::pool::{AddrRange, Pool};

/// Below this many free addresses, an owner's advertised count is exact.
const EXACT_BELOW: u128 = 16;

/// Whether an owner's advertised free count `advertised` still stands for
/// `count`, the free addresses the range has now: exact below 16 (on
/// either side), otherwise within an eighth of `advertised`, so never 0
/// while anything is free.
///
/// Other routers use advertised counts only to choose whom to ask for space
/// and whether a range has any, and every change to an entry crosses the
/// whole mesh; so an allocation or release rewrites the owner's entry (with
/// the exact count) only when the count leaves that band, instead of at
/// each address: about 40 rewrites to fill a range of 511, and none for the
/// first 63 allocations from it.
pub fn advertised_free_holds(advertised: u128, count: u128) -> bool {
    if advertised < EXACT_BELOW || count < EXACT_BELOW {
        advertised == count
    } else {
        advertised.abs_diff(count) <= advertised / 8
    }
}

/// The replicated address-space ring. See the [crate docs](crate) for the design.
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    pub(crate) pool: Pool,
    /// The genesis owners, in the order that split the pool. With `pool`, the ring's identity.
    pub(crate) seeds: Vec<PeerName>,
    pub(crate) entries: BTreeMap<u128, Entry>,
    /// Every router that ever owned space: a grow-only set.
    pub(crate) members: BTreeSet<PeerName>,
    pub(crate) removals: BTreeMap<PeerName, Removal>,
    /// What each removed router gave up: written by the router itself when it
    /// learns of its removal (or leaves), or by an operator who confirms it is
    /// gone. Grow-only; keys are removed routers.
    pub(crate) surrenders: BTreeMap<PeerName, Surrender>,
}

/// What a removed router gave up, so that its heir may hand the space out
/// again. Until one exists, the heir holds the removed router's ranges
/// without using them: the router may be alive and cut off, with pods on
/// those addresses (see the [crate docs](crate)).
///
/// A join-semilattice: spans are a grow-only set, `all` only turns on.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct Surrender {
    /// Spans `[start, end)` the router will never use again: its free space
    /// at the moment it stopped allocating.
    pub(crate) spans: BTreeSet<(u128, u128)>,
    /// Everything it had is free: it left (`weft reset`), or it was reset
    /// after its removal, or an operator confirmed it gone for good.
    pub(crate) all: bool,
    /// The router wrote this itself (it left, heard of its removal, or was
    /// reset), so whatever it did before, a reclaim it completed included,
    /// travels with it. An operator's confirmation alone does not set it.
    pub(crate) by_self: bool,
}

impl Surrender {
    /// Whether joining `other` would change `self`.
    fn grows_by(&self, other: &Self) -> bool {
        (other.all && !self.all) || (other.by_self && !self.by_self) || !other.spans.is_subset(&self.spans)
    }

    pub(crate) fn join(&mut self, other: &Self) {
        self.all |= other.all;
        self.by_self |= other.by_self;
        self.spans.extend(other.spans.iter().copied());
    }
}

/// One token's entry: the range from this token to the next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Entry {
    pub(crate) owner: PeerName,
    /// Who wrote this version: the owner, a donor handing the range over, or
    /// the heir of a reclaim.
    pub(crate) writer: PeerName,
    /// Raised at each takeover of the entry by an heir, by the round of the
    /// reclaim ([`Ring::round_for`]); ordered before `version`, so a takeover
    /// dominates every version the removed router wrote, seen or not, and a
    /// later round's takeover dominates an earlier one's.
    pub(crate) epoch: u32,
    pub(crate) version: u64,
    /// Free addresses in the range, as last advertised by the owner.
    pub(crate) free: u128,
}

impl Entry {
    /// What merge orders entries by.
    pub(crate) fn stamp(&self) -> (u32, u64) {
        (self.epoch, self.version)
    }
}

/// The reclaim record of one removed router.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Removal {
    /// Proposed, collecting votes.
    Pending {
        /// Proposed heirs (grow-only). The smallest one whose own name is not removed is the candidate.
        proposals: BTreeSet<PeerName>,
        /// Each voter's current vote; written only by that voter, higher `seq` wins.
        votes: BTreeMap<PeerName, Vote>,
    },
    /// The heir took the removed router's ranges. Final, except that ranges
    /// of the removed router learned later are taken too (a grow-only set),
    /// and that a completion of a later round supersedes it (see the
    /// [crate docs](crate), "Rounds").
    Done {
        /// The heir of the latest completion known: it holds the ranges.
        heir: PeerName,
        /// The round it completed in; its takeover wrote each entry this many epochs up.
        round: u32,
        /// The ranges it took, as the taker's view showed them.
        taken: BTreeSet<Taken>,
        /// Earlier completions of this reclaim that the latest superseded,
        /// round -> heir (grow-only; empty but for a relayed record, see
        /// the crate docs). The heir holds what it took for these too.
        earlier: BTreeMap<u32, PeerName>,
    },
}

/// One range an heir took over: `[start, end)` in its view, rewritten at `epoch`.
///
/// A token strictly inside it with a lower epoch was created by the removed
/// router (or from its donations) in a state the heir never saw, and is
/// stale: merge drops it, so the heir's range stays whole.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Taken {
    pub(crate) start: u128,
    pub(crate) end: u128,
    pub(crate) epoch: u32,
}

impl Taken {
    /// Whether a token at `t` with `epoch` is stale under this takeover.
    pub(crate) fn makes_stale(&self, t: u128, epoch: u32) -> bool {
        self.start < t && t < self.end && epoch < self.epoch
    }
}

/// A voter's vote on a removal: which heir it accepts, in which round. It
/// counts only while the round is the current one ([`Ring::round_for`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Vote {
    pub(crate) seq: u64,
    pub(crate) heir: PeerName,
    /// The voter's round when it voted; 0 for a vote decoded from a format
    /// without rounds (it never counts, so the voter votes again).
    pub(crate) round: u32,
}

/// Where a ring came from: its pool and genesis owners. Rings of different
/// origins never merge.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RingOrigin {
    /// The pool the ring divides.
    pub pool: Pool,
    /// The genesis owners, in split order.
    pub seeds: Vec<PeerName>,
}

impl fmt::Display for RingOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ring over {} seeded by [", self.pool)?;
        for (i, s) in self.seeds.iter().take(4).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s}")?;
        }
        if self.seeds.len() > 4 {
            write!(f, ", ... {} in all", self.seeds.len())?;
        }
        f.write_str("]")
    }
}

/// One range of the ring, for display and routing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RangeInfo {
    /// The addresses.
    pub range: AddrRange,
    /// Who owns them.
    pub owner: PeerName,
    /// Free addresses, as the owner last advertised.
    pub free: u128,
    /// The entry's takeover epoch: 0 until an heir takes it over, raised by
    /// each takeover (by the reclaim's round).
    pub epoch: u32,
    /// The entry's version within its epoch.
    pub version: u64,
}

/// What one owner holds, summed over its ranges.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct OwnerStats {
    /// Addresses owned (reserved network/broadcast addresses included where owned).
    pub owned: u128,
    /// Free addresses, as advertised.
    pub free: u128,
    /// Number of ranges.
    pub ranges: usize,
}

/// Progress of the reclaim of one removed router.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ReclaimStatus {
    /// Waiting for every live member to vote for the same heir.
    Pending {
        /// The heir that will act, if any proposal is still valid.
        candidate: Option<PeerName>,
        /// Live members whose vote for `candidate` is still missing.
        waiting_for: Vec<PeerName>,
    },
    /// The heir has taken the ranges.
    Done {
        /// Who took them.
        heir: PeerName,
    },
}

impl Ring {
    /// Creates a ring over `pool`, split evenly between `seeds` in their order
    /// (`seed=a,b` over `10.32.0.0/22` gives `a` `10.32.0.0-10.32.1.255`).
    ///
    /// Creation is deterministic: routers that agree on the pool and the seed
    /// list create the same ring, which is what lets the initial routers each
    /// create it once they agree.
    ///
    /// # Errors
    /// [`CreateError`] when `seeds` is empty, repeats a name, or has more names than addresses.
    pub fn new(pool: Pool, seeds: &[PeerName]) -> Result<Self, CreateError> {
        if seeds.is_empty() {
            return Err(CreateError::NoSeeds);
        }
        let mut members = BTreeSet::new();
        for s in seeds {
            if !members.insert(*s) {
                return Err(CreateError::DuplicateSeed(*s));
            }
        }
        let n = seeds.len() as u128;
        if n > pool.usable() {
            return Err(CreateError::TooManySeeds {
                seeds: seeds.len(),
                pool,
            });
        }
        let size = pool.size();
        let mut entries = BTreeMap::new();
        for (i, s) in seeds.iter().enumerate() {
            let start = size * i as u128 / n;
            let end = size * (i as u128 + 1) / n;
            let free = end - start - pool.reserved_in(start, end);
            entries.insert(
                start,
                Entry {
                    owner: *s,
                    writer: *s,
                    epoch: 0,
                    version: 1,
                    free,
                },
            );
        }
        Ok(Self {
            pool,
            seeds: seeds.to_vec(),
            entries,
            members,
            removals: BTreeMap::new(),
            surrenders: BTreeMap::new(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// Pool and genesis owners: the ring's identity.
    pub fn origin(&self) -> RingOrigin {
        RingOrigin {
            pool: self.pool,
            seeds: self.seeds.clone(),
        }
    }

    /// The router that owns `addr`, or `None` outside the pool. The data plane
    /// routes by this.
    ///
    /// O(log n) in entries.
    pub fn owner_of(&self, addr: IpAddr) -> Option<PeerName> {
        let off = self.pool.offset_of(addr)?;
        Some(self.entry_containing(off).1.owner)
    }

    /// Every range, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInfo> + '_ {
        self.spans().map(|(start, end, e)| RangeInfo {
            range: self.pool.range(start, end),
            owner: e.owner,
            free: e.free,
            epoch: e.epoch,
            version: e.version,
        })
    }

    /// Number of entries (ranges).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a ring covers its pool with at least one range.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Owned, free and range count per owner.
    pub fn owners(&self) -> BTreeMap<PeerName, OwnerStats> {
        let mut out: BTreeMap<PeerName, OwnerStats> = BTreeMap::new();
        for (start, end, e) in self.spans() {
            let s = out.entry(e.owner).or_default();
            s.owned += end - start;
            s.free += e.free;
            s.ranges += 1;
        }
        out
    }

    /// Every router that ever owned space, removed ones included.
    pub fn members(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.members.iter().copied()
    }

    /// Whether `peer` has been removed (reclaim started or done, or it left).
    pub fn is_removed(&self, peer: PeerName) -> bool {
        self.removals.contains_key(&peer)
    }

    /// Who holds what `dead` left: the heir of its reclaim, or that heir's
    /// heir if it was removed in turn. `None` while a reclaim on the way is
    /// pending.
    pub(crate) fn final_heir(&self, dead: PeerName) -> Option<PeerName> {
        let mut at = dead;
        // Each hop is a removed member, so the chain is at most that long.
        for _ in 0..=self.removals.len() {
            match self.removals.get(&at) {
                None => return Some(at),
                Some(Removal::Pending { .. }) => return None,
                Some(Removal::Done { heir, .. }) => at = *heir,
            }
        }
        None
    }

    /// Whether `peer` was removed and is known to have stopped: it wrote its
    /// surrender, left, or an operator confirmed it gone. Until then its
    /// heir holds its addresses.
    pub fn has_stopped(&self, peer: PeerName) -> bool {
        self.removals.contains_key(&peer) && self.surrenders.contains_key(&peer)
    }

    /// What the heir of `dead` may free of the ranges it holds from it: `None`
    /// until `dead` surrendered (or was confirmed gone).
    pub(crate) fn surrender_of(&self, dead: PeerName) -> Option<&Surrender> {
        self.surrenders.get(&dead)
    }

    /// Whether `peer` surrendered everything it had: it left, was reset
    /// after its removal, or an operator confirmed it gone.
    pub fn surrendered_all(&self, peer: PeerName) -> bool {
        self.surrenders.get(&peer).is_some_and(|s| s.all)
    }

    /// Whether both rings hold the same reclaim records and surrenders
    /// (which travel only in whole rings).
    pub fn same_records(&self, other: &Self) -> bool {
        self.removals == other.removals && self.surrenders == other.surrenders
    }

    /// Whether `peer`'s removal is recorded but its ranges not yet taken.
    pub(crate) fn is_pending_removal(&self, peer: PeerName) -> bool {
        matches!(self.removals.get(&peer), Some(Removal::Pending { .. }))
    }

    /// Members that have not stopped: the routers whose vote a reclaim
    /// needs. A removed router stays a voter until it is known to have
    /// stopped (its surrender, or an operator's confirmation that it is
    /// gone): until then it may be alive and cut off, acting on what it
    /// knows, and a reclaim decided without it could give one range to two
    /// heirs. A reclaim counts the votes of every voter but the removed
    /// router itself ([`Ring::voters_for`]).
    pub fn voters(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.members.iter().copied().filter(|m| !self.has_stopped(*m))
    }

    /// The voters whose votes the reclaim of `dead` needs: every voter but `dead`.
    pub fn voters_for(&self, dead: PeerName) -> impl Iterator<Item = PeerName> + '_ {
        self.voters().filter(move |v| *v != dead)
    }

    /// The round of the reclaim of `dead` in this view: one more than the
    /// number of members other than `dead` that surrendered everything
    /// (they left, were reset, or were confirmed gone). A vote counts only
    /// in the round it was cast in, and a takeover raises epochs by its
    /// round, so of two completions of one reclaim the later one has the
    /// higher round and dominates (the argument is in the [crate docs](crate),
    /// "Rounds"). Grows with the view, never shrinks.
    pub fn round_for(&self, dead: PeerName) -> u32 {
        let total = self.surrenders.iter().filter(|(m, s)| **m != dead && s.all).count();
        // At most MAX_MEMBERS surrenders in a decoded ring.
        u32::try_from(total).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// The heirs of earlier completions of the reclaim of `dead` that a
    /// later one superseded: the latest heir holds what it took for them
    /// too. Empty unless two completions met.
    pub(crate) fn earlier_heirs(&self, dead: PeerName) -> impl Iterator<Item = PeerName> + '_ {
        self.removals
            .get(&dead)
            .into_iter()
            .flat_map(|r| match r {
                Removal::Done { earlier, .. } => Some(earlier.values().copied()),
                Removal::Pending { .. } => None,
            })
            .flatten()
    }

    /// The reclaim of each removed router.
    pub fn reclaims(&self) -> BTreeMap<PeerName, ReclaimStatus> {
        self.removals
            .keys()
            .map(|d| (*d, self.reclaim_status(*d).expect("key exists")))
            .collect()
    }

    /// The reclaim of `dead`, if one was started.
    pub fn reclaim_status(&self, dead: PeerName) -> Option<ReclaimStatus> {
        Some(match self.removals.get(&dead)? {
            Removal::Done { heir, .. } => ReclaimStatus::Done { heir: *heir },
            Removal::Pending { votes, .. } => {
                let candidate = self.candidate(dead);
                let round = self.round_for(dead);
                let waiting_for = self
                    .voters_for(dead)
                    .filter(|v| {
                        candidate.is_none() || votes.get(v).map(|x| (x.heir, x.round)) != candidate.map(|c| (c, round))
                    })
                    .collect();
                ReclaimStatus::Pending { candidate, waiting_for }
            }
        })
    }

    /// Merges `other` into `self`. Returns whether anything changed.
    ///
    /// Idempotent, commutative and associative on rings of one origin. The
    /// merge is atomic: on error `self` is unchanged.
    ///
    /// # Errors
    /// [`MergeError::DifferentRing`] for a ring of another origin;
    /// [`MergeError::ConflictingEntry`] / [`MergeError::ConflictingReclaim`]
    /// when the two rings disagree at equal versions (a broken invariant:
    /// reused identity or a bug).
    pub fn merge(&mut self, other: &Self) -> Result<bool, MergeError> {
        let plan = self.plan_merge(other)?;
        Ok(self.apply_merge(plan))
    }

    /// Checks `other` against `self` and lists what a merge would change.
    pub(crate) fn plan_merge<'a>(&self, other: &'a Self) -> Result<MergePlan<'a>, MergeError> {
        if self.pool != other.pool || self.seeds != other.seeds {
            return Err(MergeError::DifferentRing {
                ours: Box::new(self.origin()),
                theirs: Box::new(other.origin()),
            });
        }
        // Removals first: the takeovers the merged ring will hold decide
        // which tokens are stale.
        let mut removals = Vec::new();
        for (d, theirs) in &other.removals {
            let joined = match self.removals.get(d) {
                Some(mine) => {
                    let grows = mine
                        .check_join(theirs)
                        .map_err(|heirs| MergeError::ConflictingReclaim { dead: *d, heirs })?;
                    if !grows {
                        continue;
                    }
                    let mut joined = mine.clone();
                    joined.join(theirs);
                    joined
                }
                None => theirs.clone(),
            };
            removals.push((*d, joined));
        }
        // The takeovers in force after the merge (a later round's supersede
        // an earlier one's), and those of them that are new here.
        let mut new_taken: Vec<Taken> = Vec::new();
        for (d, joined) in &removals {
            if let Removal::Done { taken, .. } = joined {
                match self.removals.get(d) {
                    Some(Removal::Done { taken: known, .. }) => {
                        new_taken.extend(taken.iter().filter(|k| !known.contains(k)));
                    }
                    _ => new_taken.extend(taken),
                }
            }
        }
        // Entries: O(n + m) in lockstep when both are whole rings, O(m log n)
        // by lookup for a small part (a delta).
        let mut entries = Vec::new();
        let mut conflicts = Vec::new();
        let mut compare = |t: u128, mine: Option<&Entry>, theirs: &'a Entry| match mine {
            Some(m) if m.stamp() == theirs.stamp() && m != theirs => conflicts.push((t, m.stamp())),
            Some(m) if m.stamp() >= theirs.stamp() => {}
            _ => entries.push((t, theirs)),
        };
        if other.entries.len() * 8 < self.entries.len() {
            for (&t, theirs) in &other.entries {
                compare(t, self.entries.get(&t), theirs);
            }
        } else {
            let mut mine = self.entries.iter().peekable();
            for (&t, theirs) in &other.entries {
                while mine.next_if(|(mt, _)| **mt < t).is_some() {}
                let m = mine.peek().filter(|(mt, _)| **mt == t).map(|(_, m)| *m);
                compare(t, m, theirs);
            }
        }
        if !entries.is_empty() || !conflicts.is_empty() {
            let kept = self
                .removals
                .iter()
                .filter(|(d, _)| removals.binary_search_by_key(*d, |(x, _)| *x).is_err())
                .flat_map(|(_, r)| r.taken());
            let taken: Vec<&Taken> = kept.chain(removals.iter().flat_map(|(_, r)| r.taken())).collect();
            let stale = |t: u128, epoch: u32| taken.iter().any(|k| k.makes_stale(t, epoch));
            if let Some(&(t, (epoch, version))) = conflicts.iter().find(|(t, (epoch, _))| !stale(*t, *epoch)) {
                return Err(MergeError::ConflictingEntry {
                    at: self.pool.addr_at(t),
                    epoch,
                    version,
                });
            }
            entries.retain(|(t, e)| !stale(*t, e.epoch));
        }
        // Our tokens that the new takeovers make stale (unless a newer entry replaces them).
        let mut dropped = Vec::new();
        for k in &new_taken {
            for (&t, e) in self.entries.range(k.start + 1..k.end) {
                let epoch = match entries.binary_search_by_key(&t, |(x, _)| *x) {
                    Ok(i) => entries[i].1.epoch,
                    Err(_) => e.epoch,
                };
                if epoch < k.epoch {
                    dropped.push(t);
                }
            }
        }
        dropped.sort_unstable();
        dropped.dedup();
        let surrenders = other
            .surrenders
            .iter()
            .filter(|(d, theirs)| self.surrenders.get(d).is_none_or(|mine| mine.grows_by(theirs)))
            .map(|(d, theirs)| (*d, theirs))
            .collect();
        let members = if other.members.len() * 8 < self.members.len() {
            other
                .members
                .iter()
                .filter(|m| !self.members.contains(m))
                .copied()
                .collect()
        } else {
            other.members.difference(&self.members).copied().collect()
        };
        Ok(MergePlan {
            entries,
            removals,
            surrenders,
            members,
            dropped,
        })
    }

    pub(crate) fn apply_merge(&mut self, plan: MergePlan<'_>) -> bool {
        let changed = !plan.entries.is_empty()
            || !plan.removals.is_empty()
            || !plan.surrenders.is_empty()
            || !plan.members.is_empty()
            || !plan.dropped.is_empty();
        for (t, e) in plan.entries {
            self.entries.insert(t, *e);
        }
        for t in plan.dropped {
            self.entries.remove(&t);
        }
        for (d, joined) in plan.removals {
            self.removals.insert(d, joined);
        }
        for (d, theirs) in plan.surrenders {
            self.surrenders.entry(d).or_default().join(theirs);
        }
        self.members.extend(plan.members);
        changed
    }

    /// Every range taken over by an heir in force, over all completed
    /// reclaims (an earlier round's takeovers are superseded).
    pub(crate) fn taken(&self) -> impl Iterator<Item = &Taken> + '_ {
        self.removals.values().flat_map(Removal::taken)
    }

    // ---- crate-internal helpers used by the replica ----

    /// `(token, entry)` of the entry covering `off`. Token 0 always exists, so this never fails for offsets in the pool.
    pub(crate) fn entry_containing(&self, off: u128) -> (u128, &Entry) {
        let (t, e) = self.entries.range(..=off).next_back().expect("token 0 always exists");
        (*t, e)
    }

    /// End (exclusive) of the entry starting at `token`.
    pub(crate) fn end_of(&self, token: u128) -> u128 {
        self.entries
            .range(token + 1..)
            .next()
            .map_or(self.pool.size(), |(t, _)| *t)
    }

    /// `(start, end, entry)` for every entry in order.
    pub(crate) fn spans(&self) -> impl Iterator<Item = (u128, u128, &Entry)> + '_ {
        let size = self.pool.size();
        let mut it = self.entries.iter().peekable();
        std::iter::from_fn(move || {
            let (t, e) = it.next()?;
            let end = it.peek().map_or(size, |(n, _)| **n);
            Some((*t, end, e))
        })
    }

    /// Makes `at` a token, splitting the entry that covers it. The new entry
    /// copies the owner and epoch, starts at version 1 and gets the free count
    /// the caller gives; the caller fixes the old entry's count. Returns false
    /// if `at` was a token.
    ///
    /// Only the owner splits its range, and a token is deleted only when a
    /// takeover at a higher epoch makes it stale, so (epoch, 1) is new
    /// everywhere.
    pub(crate) fn split_at(&mut self, at: u128, free_new: u128) -> bool {
        if self.entries.contains_key(&at) {
            return false;
        }
        let old = *self.entry_containing(at).1;
        self.entries.insert(
            at,
            Entry {
                owner: old.owner,
                writer: old.owner,
                epoch: old.epoch,
                version: 1,
                free: free_new,
            },
        );
        true
    }

    /// Rewrites the entry at `token` (which must exist) as `writer`, with a version bump.
    pub(crate) fn write(&mut self, token: u128, writer: PeerName, owner: PeerName, free: u128) {
        let e = self.entries.get_mut(&token).expect("caller passes an existing token");
        e.owner = owner;
        e.writer = writer;
        e.free = free;
        e.version += 1;
    }

    /// The heir's rewrite of a removed router's entry at `token`: the heir
    /// owns it, `round` epochs up, with nothing free (it holds the range
    /// until the removed router's surrender frees it). Returns what was taken.
    pub(crate) fn take(&mut self, token: u128, heir: PeerName, round: u32) -> Taken {
        let end = self.end_of(token);
        let free = 0;
        let e = self.entries.get_mut(&token).expect("caller passes an existing token");
        *e = Entry {
            owner: heir,
            writer: heir,
            epoch: e.epoch.saturating_add(round.max(1)),
            version: 1,
            free,
        };
        Taken {
            start: token,
            end,
            epoch: e.epoch,
        }
    }

    /// The entry at `token` has `count` free addresses now (after an
    /// allocation or release by its owner): rewrites its advertised count,
    /// exact, with a version bump, if it no longer stands for that
    /// ([`advertised_free_holds`]).
    pub(crate) fn advertise_free(&mut self, token: u128, count: u128) {
        let e = self.entries.get_mut(&token).expect("caller passes an existing token");
        if !advertised_free_holds(e.free, count) {
            e.free = count;
            e.writer = e.owner;
            e.version += 1;
        }
    }

    /// The heir a reclaim of `dead` would give the ranges to: the smallest
    /// proposal that has not *stopped*. A proposed heir that was removed
    /// stays the candidate until its surrender shows it stopped (it learned
    /// of its removal, or an operator confirmed it gone): a removed heir that
    /// is alive and cut off may still act, and moving the votes to another
    /// heir before it stopped could let two heirs act.
    /// Whether `p` stopped on an operator's word alone (`confirm_gone`)
    /// with its own reclaim not done: what it did before it went may not be
    /// known yet. It may have completed a reclaim as heir, seen only by a
    /// router not heard from since.
    fn stopped_unseen(&self, p: PeerName) -> bool {
        self.has_stopped(p)
            && !self.surrenders[&p].by_self
            && !matches!(self.removals.get(&p), Some(Removal::Done { .. }))
    }

    /// Whether the reclaim of `dead` may pass over `p` as heir: `p` has
    /// stopped and whatever it did is known (it wrote its surrender itself,
    /// or its own reclaim is done: every voter's state, with any record of
    /// `p`'s it carried, was in that heir's view). Or `p`'s reclaim waits,
    /// through heirs stopped the same way, on `dead`'s (routers removed in a
    /// ring and confirmed gone): someone must move first. A record of `p`'s
    /// that only a router with no vote carried can still surface later; the
    /// two completions then join (crate docs, "Rounds").
    fn passed_over(&self, p: PeerName, dead: PeerName) -> bool {
        self.has_stopped(p) && (!self.stopped_unseen(p) || self.waits_on(p, dead))
    }

    /// Whether the reclaim of `from` waits on the reclaim of `target`: some
    /// chain of proposed heirs stopped unseen leads from one to the other.
    fn waits_on(&self, from: PeerName, target: PeerName) -> bool {
        let mut stack = vec![from];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            let Some(Removal::Pending { proposals, .. }) = self.removals.get(&x) else {
                continue;
            };
            for &q in proposals {
                if q == target {
                    return true;
                }
                if self.stopped_unseen(q) {
                    stack.push(q);
                }
            }
        }
        false
    }

    pub(crate) fn candidate(&self, dead: PeerName) -> Option<PeerName> {
        match self.removals.get(&dead)? {
            Removal::Pending { proposals, .. } => proposals.iter().copied().find(|p| !self.passed_over(*p, dead)),
            Removal::Done { heir, .. } => Some(*heir),
        }
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("pool", &self.pool)
            .field("seeds", &self.seeds.len())
            .field("entries", &self.entries.len())
            .field("members", &self.members.len())
            .field("removals", &self.removals)
            .field("surrenders", &self.surrenders)
            .finish()
    }
}

impl Removal {
    /// The takeovers in force: those of the latest completion.
    pub(crate) fn taken(&self) -> impl Iterator<Item = &Taken> + '_ {
        match self {
            Self::Done { taken, .. } => Some(taken.iter()),
            Self::Pending { .. } => None,
        }
        .into_iter()
        .flatten()
    }

    /// Every completion a done record knows, round -> heir: the latest and
    /// the earlier ones.
    fn completions(&self) -> impl Iterator<Item = (u32, PeerName)> + '_ {
        match self {
            Self::Done {
                heir, round, earlier, ..
            } => Some(earlier.iter().map(|(r, h)| (*r, *h)).chain([(*round, *heir)])),
            Self::Pending { .. } => None,
        }
        .into_iter()
        .flatten()
    }

    /// Checks that `other` can be joined into `self`, without allocating.
    /// Returns whether the join would change `self`; errs with the two heirs
    /// where they disagree as they cannot (two completions in one round, or
    /// one voter's two different votes under one sequence number).
    fn check_join(&self, other: &Self) -> Result<bool, Vec<PeerName>> {
        match (self, other) {
            (
                Self::Done {
                    heir: ha,
                    round: ra,
                    taken: ta,
                    earlier: ea,
                },
                Self::Done {
                    heir: hb,
                    round: rb,
                    taken: tb,
                    earlier: eb,
                },
            ) => {
                // Two heirs in one round cannot both have acted (see the
                // crate docs, "Rounds"); the rounds of both records together
                // must name one heir each, whichever order they meet in.
                for (r, h) in other.completions() {
                    let mine = if r == *ra { Some(ha) } else { ea.get(&r) };
                    if let Some(m) = mine.filter(|m| **m != h) {
                        return Err(vec![*m, h]);
                    }
                }
                let earlier_grows = !eb.iter().all(|(r, h)| ea.get(r) == Some(h));
                Ok(match rb.cmp(ra) {
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Equal => earlier_grows || !tb.is_subset(ta),
                    std::cmp::Ordering::Less => earlier_grows || ea.get(rb) != Some(hb),
                })
            }
            (Self::Done { .. }, _) => Ok(false),
            (_, Self::Done { .. }) => Ok(true),
            (
                Self::Pending {
                    proposals: pa,
                    votes: va,
                },
                Self::Pending {
                    proposals: pb,
                    votes: vb,
                },
            ) => {
                let mut changes = !pb.is_subset(pa);
                // Both vote maps are sorted by voter: walk them in lockstep.
                let mut mine = va.iter().peekable();
                for (voter, theirs) in vb {
                    while mine.next_if(|(v, _)| *v < voter).is_some() {}
                    match mine.peek() {
                        Some(&(v, m)) if v == voter => {
                            if m.seq == theirs.seq && m != theirs {
                                return Err(vec![m.heir, theirs.heir]);
                            }
                            changes |= m.seq < theirs.seq;
                        }
                        _ => changes = true,
                    }
                }
                Ok(changes)
            }
        }
    }

    /// Joins `other` into `self`; [`Removal::check_join`] has passed.
    ///
    /// Two done records keep the completion of the higher round, with its
    /// taken ranges (joined, in one round), and every other completion as
    /// earlier: max on rounds and union on the rest, so a join.
    fn join(&mut self, other: &Self) {
        match (&mut *self, other) {
            (
                Self::Done {
                    heir,
                    round,
                    taken,
                    earlier,
                },
                Self::Done {
                    heir: hb,
                    round: rb,
                    taken: tb,
                    earlier: eb,
                },
            ) => {
                earlier.extend(eb.iter().map(|(r, h)| (*r, *h)));
                if *rb > *round {
                    earlier.insert(*round, *heir);
                    *heir = *hb;
                    *round = *rb;
                    taken.clone_from(tb);
                } else if *rb == *round {
                    taken.extend(tb.iter().copied());
                } else {
                    earlier.insert(*rb, *hb);
                }
                earlier.remove(&*round);
            }
            (Self::Done { .. }, _) => {}
            (_, Self::Done { .. }) => *self = other.clone(),
            (
                Self::Pending {
                    proposals: pa,
                    votes: va,
                },
                Self::Pending {
                    proposals: pb,
                    votes: vb,
                },
            ) => {
                pa.extend(pb.iter().copied());
                for (voter, theirs) in vb {
                    let mine = va.entry(*voter).or_insert(*theirs);
                    if mine.seq < theirs.seq {
                        *mine = *theirs;
                    }
                }
            }
        }
    }
}

/// What a merge would change; built by [`Ring::plan_merge`].
#[derive(Debug)]
pub(crate) struct MergePlan<'a> {
    pub(crate) entries: Vec<(u128, &'a Entry)>,
    /// Each reclaim record that changes, as it will be after the merge.
    pub(crate) removals: Vec<(PeerName, Removal)>,
    pub(crate) surrenders: Vec<(PeerName, &'a Surrender)>,
    pub(crate) members: Vec<PeerName>,
    /// Our tokens that new takeovers make stale.
    pub(crate) dropped: Vec<u128>,
}

impl MergePlan<'_> {
    /// The token after `t` in the view merging this plan into `ours` (the
    /// ring it was planned on) would give: the end of the entry at `t`.
    pub(crate) fn next_token(&self, ours: &Ring, t: u128) -> u128 {
        let kept = ours
            .entries
            .range(t + 1..)
            .map(|(x, _)| *x)
            .find(|x| self.dropped.binary_search(x).is_err());
        let i = self.entries.partition_point(|(x, _)| *x <= t);
        let new = self.entries.get(i).map(|(x, _)| *x);
        [kept, new].into_iter().flatten().min().unwrap_or(ours.pool.size())
    }
}

/// Why a ring cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The seed list is empty.
    #[error("a ring needs at least one initial owner")]
    NoSeeds,
    /// A name appears twice in the seed list.
    #[error("initial owner {0} is listed twice")]
    DuplicateSeed(PeerName),
    /// More seeds than usable addresses.
    #[error("{seeds} initial owners cannot split {pool}: it has fewer usable addresses")]
    TooManySeeds {
        /// How many seeds were given.
        seeds: usize,
        /// The pool.
        pool: Pool,
    },
}

/// Why a merge was refused. The ring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The other ring was created separately (another pool or other genesis
    /// owners). Merging would hand the same addresses out twice.
    #[error("refusing to merge rings created separately: ours is the {ours}, theirs is the {theirs}")]
    DifferentRing {
        /// Our ring's origin.
        ours: Box<RingOrigin>,
        /// The other ring's origin.
        theirs: Box<RingOrigin>,
    },
    /// The rings hold different contents for one entry at the same version.
    #[error(
        "ring entry at {at} differs at the same epoch {epoch} and version {version}: a router identity was reused or state was lost"
    )]
    ConflictingEntry {
        /// Start of the entry.
        at: IpAddr,
        /// The epoch both claim.
        epoch: u32,
        /// The version both claim.
        version: u64,
    },
    /// Two different outcomes for one reclaim.
    #[error("conflicting reclaim records for removed router {dead}: heirs {heirs:?}")]
    ConflictingReclaim {
        /// The removed router.
        dead: PeerName,
        /// The heirs in conflict.
        heirs: Vec<PeerName>,
    },
    /// The other ring changed one of our own entries: only we write those.
    #[error(
        "the other ring changed our entry at {at}: another router is using our identity, or we were removed while alive"
    )]
    OwnEntryChanged {
        /// Start of the entry.
        at: IpAddr,
    },
    /// The other ring splits one of our ranges: only we split those.
    #[error("the other ring splits our range at {at}: another router is using our identity")]
    OwnRangeSplit {
        /// Where the split is.
        at: IpAddr,
    },
    /// A [`Delta`](crate::Delta) reached a replica that has no ring yet.
    #[error("an update to a ring arrived before the ring itself")]
    NoRing,
    /// A [`Delta`](crate::Delta) of a ring created apart from ours.
    #[error("refusing an update to a ring created separately (another pool or other genesis owners)")]
    OtherOrigin,
    /// The other ring gives us the range at `at` with some of it in use:
    /// space only ever moves wholly free.
    #[error("the other ring gives this router the range at {at} with addresses in use")]
    GainedInUse {
        /// Start of the range.
        at: IpAddr,
    },
    /// A [`Delta`](crate::Delta) that cannot describe our ring.
    #[error("malformed ring update: {0}")]
    MalformedUpdate(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn genesis_splits_evenly_in_seed_order() {
        let r = Ring::new(pool("10.32.0.0/22"), &[p(2), p(1)]).unwrap();
        let ranges: Vec<_> = r.ranges().map(|x| (x.range.to_string(), x.owner, x.free)).collect();
        assert_eq!(
            ranges,
            vec![
                ("10.32.0.0-10.32.1.255".to_owned(), p(2), 511),
                ("10.32.2.0-10.32.3.255".to_owned(), p(1), 511)
            ]
        );
        assert_eq!(r.owner_of("10.32.1.255".parse().unwrap()), Some(p(2)));
        assert_eq!(r.owner_of("10.32.2.0".parse().unwrap()), Some(p(1)));
        assert_eq!(r.owner_of("10.33.0.0".parse().unwrap()), None);
    }

    #[test]
    fn uneven_split_covers_the_pool() {
        let r = Ring::new(pool("10.32.0.0/24"), &[p(1), p(2), p(3)]).unwrap();
        let owned: u128 = r.owners().values().map(|s| s.owned).sum();
        assert_eq!(owned, 256);
        let free: u128 = r.owners().values().map(|s| s.free).sum();
        assert_eq!(free, 254);
    }

    #[test]
    fn creation_errors() {
        assert_eq!(Ring::new(pool("10.32.0.0/24"), &[]), Err(CreateError::NoSeeds));
        assert_eq!(
            Ring::new(pool("10.32.0.0/24"), &[p(1), p(1)]),
            Err(CreateError::DuplicateSeed(p(1)))
        );
        let many: Vec<_> = (0..3).map(p).collect();
        assert!(matches!(
            Ring::new(pool("10.32.0.0/30"), &many),
            Err(CreateError::TooManySeeds { .. })
        ));
    }

    #[test]
    fn same_genesis_merges_different_genesis_refused() {
        let mut a = Ring::new(pool("10.32.0.0/22"), &[p(1), p(2)]).unwrap();
        let b = Ring::new(pool("10.32.0.0/22"), &[p(1), p(2)]).unwrap();
        assert_eq!(a.merge(&b), Ok(false));
        let c = Ring::new(pool("10.32.0.0/22"), &[p(2), p(1)]).unwrap();
        let d = Ring::new(pool("10.32.0.0/21"), &[p(1), p(2)]).unwrap();
        for other in [c, d] {
            let before = a.clone();
            let err = a.merge(&other).unwrap_err();
            assert!(matches!(err, MergeError::DifferentRing { .. }), "{err}");
            assert_eq!(a, before, "a refused merge changes nothing");
        }
    }

    #[test]
    fn newer_version_wins_and_equal_version_must_agree() {
        let mut a = Ring::new(pool("10.32.0.0/22"), &[p(1), p(2)]).unwrap();
        let mut b = a.clone();
        b.write(0, p(1), p(1), 100);
        assert_eq!(a.merge(&b), Ok(true));
        assert_eq!(a.entries[&0].free, 100);
        let mut c = Ring::new(pool("10.32.0.0/22"), &[p(1), p(2)]).unwrap();
        c.write(0, p(1), p(1), 99);
        let before = a.clone();
        assert!(matches!(
            a.merge(&c),
            Err(MergeError::ConflictingEntry { version: 2, .. })
        ));
        assert_eq!(a, before);
    }
}
