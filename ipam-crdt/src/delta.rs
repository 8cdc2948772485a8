//! Deltas: the part of a ring that changed, so that gossip does not resend
//! the whole ring on every allocation.
//!
//! A ring of 1,000 owners is about 20 KB on the wire; one allocation changes
//! one entry. [`Ring::delta_since`] lists the entries that differ from an
//! earlier state of the same ring (the one last announced), each with its
//! neighbours, and [`Replica::merge_delta`] merges such a part into a full
//! replica.
//!
//! A delta is a part of a valid state, and merging a part is the same join as
//! merging the whole ring restricted to those tokens, with three rules that
//! keep a partial view safe:
//!
//! - **Spans carry their end.** An entry covers `[token, next token)`, and the
//!   receiver may not know the sender's next token. Each span states its end
//!   as the sender saw it, and the neighbours of every changed entry travel
//!   too, so the receiver learns the tokens that bound it. A receiver merges
//!   a span only if its merged view ends it exactly where the sender's did,
//!   and merges a span that brings a new token only together with the span
//!   that ends at that token. Otherwise a gained range could run past its
//!   end into someone else's, or an older entry could shrink under its free
//!   count. What cannot be placed is skipped and counted
//!   ([`MergeOutcome::skipped`]); the caller then fetches the whole ring.
//! - **Reclaim records travel only in whole rings.** Votes, proposals and done
//!   records are what the reclaim safety argument counts, and it relies on a
//!   vote arriving together with the voter's whole state. So
//!   [`Ring::delta_since`] answers `None` (send the whole ring) whenever the
//!   removals or the surrenders of removed routers changed (a surrender
//!   changes who votes and who may be heir), or a token was dropped. A
//!   router that gets a delta rewriting its own entries (a takeover after
//!   its removal, whose record it has not seen) fetches the whole ring.
//! - **Members travel in deltas.** The member set is grow-only and decides who
//!   votes, so every member new since the base travels, along with everyone
//!   the spans name.
//!
//! Free counts in a partial view may describe a range that the receiver sees
//! wider or narrower than the owner did; they are advisory everywhere except
//! on the owner, which recomputes its own from its allocations.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::peer::PeerName;
use crate::replica::{MergeOutcome, Replica};
use crate::ring::{Entry, MergeError, Ring};

/// Changed entries of a ring and their neighbours, each with the range it
/// covered in the sender's view; see the [module docs](self).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delta {
    /// [`Ring::origin_hash`] of the sender's ring.
    pub(crate) origin: u64,
    /// `(start, end, entry)`, ascending and disjoint.
    pub(crate) spans: Vec<(u128, u128, Entry)>,
    /// Members new since the base, and every router the spans name.
    pub(crate) members: BTreeSet<PeerName>,
}

impl Delta {
    /// Whether the delta carries nothing (nothing changed since the base).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.members.is_empty()
    }

    /// Number of entries it carries.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The stamps of the entries it carries.
    pub fn stamps(&self) -> impl Iterator<Item = Stamp> + '_ {
        self.spans.iter().map(|(token, _, e)| Stamp::of(*token, e))
    }
}

impl Ring {
    /// A 64-bit digest of the ring's identity (pool and genesis owners), so a
    /// delta names its ring in 8 bytes. FNV-1a: this guards against merging
    /// rings created apart by mistake, over connections already
    /// authenticated, not against an attacker.
    pub fn origin_hash(&self) -> u64 {
        let mut h = FNV_OFFSET;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        };
        match self.pool.net() {
            ipnet::IpNet::V4(n) => {
                eat(&n.network().octets());
                eat(&[n.prefix_len()]);
            }
            ipnet::IpNet::V6(n) => {
                eat(&n.network().octets());
                eat(&[n.prefix_len()]);
            }
        }
        for s in &self.seeds {
            eat(&s.to_u64().to_be_bytes());
        }
        h
    }

    /// A flat copy of what [`Ring::changes_since`] compares, much cheaper to
    /// take and keep than a clone of the ring.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            pool: self.pool,
            seeds: self.seeds.len(),
            entries: self.entries.iter().map(|(t, e)| (*t, *e)).collect(),
            members: self.members.iter().copied().collect(),
            removals: self.removals.clone(),
            surrenders: self.surrenders.clone(),
        }
    }

    /// What changed since `base`, a snapshot of an earlier state of this
    /// replica's ring: every entry that differs, with the entries before and
    /// after it, and the new members. `None` when only the whole ring will
    /// do: `base` is of another ring, the reclaim records changed, a token
    /// was dropped, or the delta would carry most of the ring anyway.
    pub fn delta_since(&self, base: &Snapshot) -> Option<Delta> {
        let changed = self.changes_since(base)?;
        let tokens: Vec<u128> = changed.iter().map(|s| s.token).collect();
        let mut delta = self.delta_of(&tokens);
        if delta.spans.len() * 2 > self.entries.len().max(8) {
            return None;
        }
        // Members only grow, so equal counts mean equal sets.
        if self.members.len() != base.members.len() {
            delta
                .members
                .extend(self.members.iter().filter(|m| base.members.binary_search(m).is_err()));
        }
        Some(delta)
    }

    /// The stamps of the entries that changed since `base`, a snapshot of an
    /// earlier state of this replica's ring (what an announcement lists).
    /// `None` when only the whole ring will do, as for [`Ring::delta_since`].
    pub fn changes_since(&self, base: &Snapshot) -> Option<Vec<Stamp>> {
        if self.pool != base.pool
            || self.seeds.len() != base.seeds
            || self.removals != base.removals
            || self.surrenders != base.surrenders
        {
            return None;
        }
        // Both are sorted: compare them in one walk. Tokens only appear
        // (split) unless dropped by a takeover, which changes the removals.
        let mut changed = Vec::new();
        let mut old = base.entries.iter().peekable();
        for (t, e) in &self.entries {
            if old.next_if(|(b, _)| b < t).is_some() {
                return None; // a base token is gone
            }
            if old.next_if(|(b, be)| b == t && be == e).is_none() {
                old.next_if(|(b, _)| b == t);
                changed.push(Stamp::of(*t, e));
            }
        }
        if old.next().is_some() {
            return None;
        }
        Some(changed)
    }

    /// As [`Ring::changes_since`], when only the entries at `tokens` can
    /// have changed since `base` (deltas merged from other routers change
    /// nothing else): a lookup per token instead of a walk over the whole
    /// ring, which at 2,000 routers was a tenth of meshsim's time. `None`
    /// when the reclaim records or the seeds differ from `base`, a token is
    /// not in this ring, or only the members grew (they travel in a delta of
    /// their own): then compare the whole ring.
    pub fn changes_at(&self, base: &Snapshot, tokens: &BTreeSet<u128>) -> Option<Vec<Stamp>> {
        if self.pool != base.pool
            || self.seeds.len() != base.seeds
            || self.removals != base.removals
            || self.surrenders != base.surrenders
        {
            return None;
        }
        let mut changed = Vec::new();
        for t in tokens {
            let e = self.entries.get(t)?;
            let same = base
                .entries
                .binary_search_by_key(t, |(bt, _)| *bt)
                .is_ok_and(|i| base.entries[i].1 == *e);
            if !same {
                changed.push(Stamp::of(*t, e));
            }
        }
        // Members only grow, so equal counts mean equal sets; new ones
        // travel with the entries that name them, when pulled.
        (!changed.is_empty() || self.members.len() == base.members.len()).then_some(changed)
    }

    /// Whether anything but `me`'s own advertised free counts changed since
    /// `base` (a snapshot of an earlier state of this replica's ring): a
    /// token appeared or went, an entry changed owner or epoch, the reclaim
    /// records changed, or another router's entry changed at all. Own free
    /// counts change with every allocation and release, and other routers
    /// use them only to choose a donor, so they may wait to be announced;
    /// what came from elsewhere is passed on at once, or each hop of the
    /// gossip would add that wait.
    pub fn changed_beyond_own_free_counts(&self, base: &Snapshot, me: PeerName) -> bool {
        self.entries.len() != base.entries.len()
            || self.removals != base.removals
            || self.surrenders != base.surrenders
            || self.entries.iter().zip(&base.entries).any(|((t, e), (bt, be))| {
                t != bt || (e != be && (e.owner != me || be.owner != me || e.epoch != be.epoch))
            })
    }

    /// Of `stamps` (another replica's announcement), those where that
    /// replica's entry is newer than ours: what to ask it for.
    pub fn newer_elsewhere<'a>(&'a self, stamps: &'a [Stamp]) -> impl Iterator<Item = &'a Stamp> + 'a {
        stamps.iter().filter(|s| {
            self.entries
                .get(&s.token)
                .is_none_or(|e| e.stamp() < (s.epoch, s.version))
        })
    }

    /// Of our entries, those newer here than in `stamps` (another replica's
    /// whole list, in token order) or missing there.
    pub fn newer_here(&self, stamps: &[Stamp]) -> Vec<Stamp> {
        self.newer_here_where(stamps, |_| true)
    }

    fn newer_here_where(&self, stamps: &[Stamp], include: impl Fn(u128) -> bool) -> Vec<Stamp> {
        let mut theirs = stamps.iter().peekable();
        let mut out = Vec::new();
        for (t, e) in self.entries.iter().filter(|(t, _)| include(**t)) {
            while theirs.next_if(|s| s.token < *t).is_some() {}
            let older_there = match theirs.peek() {
                Some(s) if s.token == *t => (s.epoch, s.version) < e.stamp(),
                _ => true,
            };
            if older_there {
                out.push(Stamp::of(*t, e));
            }
        }
        out
    }

    /// How many buckets a digest of this ring splits the entries into
    /// ([`Ring::bucket_sums`]): about 32 entries a bucket, 8 to 128
    /// buckets. A router that finds its ring hash differs from a
    /// neighbour's compares these sums first and then lists only the
    /// entries of the buckets that differ, so repairing one or two entries
    /// costs about a kilobyte whatever the ring's size, not a stamp for
    /// every entry.
    pub fn digest_buckets(&self) -> u16 {
        let n = u16::try_from(self.entries.len() / 32).unwrap_or(u16::MAX);
        n.checked_next_power_of_two().unwrap_or(MAX_BUCKETS).clamp(8, 128)
    }

    /// One sum per bucket of the stamps of the entries in it; `count`
    /// buckets of equal width split the pool's offsets (see
    /// [`Ring::bucket_of`]). Two rings whose entries are equal have equal
    /// sums; a differing sum names the bucket to compare entry by entry.
    /// The sum of FNV-1a digests is not collision-proof against an
    /// attacker, which the authenticated connections rule out; a chance
    /// collision only delays a repair until the bucket changes again.
    pub fn bucket_sums(&self, count: u16) -> Vec<u64> {
        let mut sums = vec![0u64; usize::from(count.max(1))];
        // Tokens ascend, so buckets do: step to the next bucket's start
        // instead of dividing every token.
        let width = self.pool.size().div_ceil(u128::from(count.max(1))).max(1);
        let (mut b, mut next) = (0usize, width);
        for (t, e) in &self.entries {
            while *t >= next && b + 1 < sums.len() {
                b += 1;
                next = next.saturating_add(width);
            }
            sums[b] = sums[b].wrapping_add(stamp_digest(*t, e.epoch, e.version));
        }
        sums
    }

    /// The bucket of `token` among `count` (at least 1) equal slices of the
    /// pool's offsets.
    pub fn bucket_of(&self, token: u128, count: u16) -> u16 {
        let width = self.pool.size().div_ceil(u128::from(count.max(1))).max(1);
        u16::try_from(token / width).unwrap_or(u16::MAX).min(count.max(1) - 1)
    }

    /// The stamps of the entries in `buckets` (of `count`), in token order.
    pub fn stamps_in(&self, count: u16, buckets: &BTreeSet<u16>) -> Vec<Stamp> {
        self.entries
            .iter()
            .filter(|(t, _)| buckets.contains(&self.bucket_of(**t, count)))
            .map(|(t, e)| Stamp::of(*t, e))
            .collect()
    }

    /// Of our entries in `buckets` (of `count`), those newer here than in
    /// `stamps` (another replica's entries of the same buckets, in token
    /// order) or missing there.
    pub fn newer_here_in(&self, stamps: &[Stamp], count: u16, buckets: &BTreeSet<u16>) -> Vec<Stamp> {
        self.newer_here_where(stamps, |t| buckets.contains(&self.bucket_of(t, count)))
    }

    /// Every entry's stamp, in token order (a digest of the entries).
    pub fn stamps(&self) -> Vec<Stamp> {
        self.entries.iter().map(|(t, e)| Stamp::of(*t, e)).collect()
    }

    /// A delta carrying the entries at `tokens` (those that exist here),
    /// each with the entries before and after it.
    pub fn delta_of(&self, tokens: &[u128]) -> Delta {
        let mut starts = BTreeSet::new();
        for t in tokens {
            if !self.entries.contains_key(t) {
                continue;
            }
            starts.insert(*t);
            if let Some((p, _)) = self.entries.range(..*t).next_back() {
                starts.insert(*p);
            }
            if let Some((n, _)) = self.entries.range(t + 1..).next() {
                starts.insert(*n);
            }
        }
        let mut members = BTreeSet::new();
        let spans = starts
            .into_iter()
            .map(|s| {
                let e = self.entries[&s];
                members.insert(e.owner);
                members.insert(e.writer);
                (s, self.end_of(s), e)
            })
            .collect();
        Delta {
            origin: self.origin_hash(),
            spans,
            members,
        }
    }
}

/// A ring's entries, members and reclaim records at one moment: the base
/// of the next announcement ([`Ring::snapshot`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Snapshot {
    pool: crate::pool::Pool,
    seeds: usize,
    entries: Vec<(u128, Entry)>,
    members: Vec<PeerName>,
    removals: BTreeMap<PeerName, crate::ring::Removal>,
    surrenders: BTreeMap<PeerName, crate::ring::Surrender>,
}

impl Snapshot {
    /// Brings the snapshot up to date with `ring` at `stamps` (what
    /// [`Ring::changes_at`] found changed), as [`Ring::snapshot`] would.
    pub fn update_at(&mut self, ring: &Ring, stamps: &[Stamp]) {
        if ring.members.len() != self.members.len() {
            self.members = ring.members.iter().copied().collect();
        }
        for s in stamps {
            let Some(e) = ring.entries.get(&s.token) else { continue };
            match self.entries.binary_search_by_key(&s.token, |(t, _)| *t) {
                Ok(i) => self.entries[i].1 = *e,
                Err(i) => self.entries.insert(i, (s.token, *e)),
            }
        }
    }
}

/// An entry's token and stamp, as announcements list them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Stamp {
    /// The entry's token (offset into the pool).
    pub token: u128,
    /// Its takeover epoch.
    pub epoch: u32,
    /// Its version within the epoch.
    pub version: u64,
}

impl Stamp {
    /// The stamp of `entry`, at `token`.
    fn of(token: u128, entry: &Entry) -> Self {
        Self {
            token,
            epoch: entry.epoch,
            version: entry.version,
        }
    }
}

impl Replica {
    /// Merges a delta from another router (see the [module docs](self)).
    ///
    /// Spans that this view cannot place exactly are skipped, not guessed:
    /// a span is merged only if, in the merged view, it ends where the
    /// sender's did, and a span that brings a new token comes with the span
    /// that ends at it (so no entry of ours silently shrinks under its free
    /// count). [`MergeOutcome::skipped`] counts what was left out; the caller
    /// then fetches the sender's whole ring.
    ///
    /// # Errors
    /// - [`MergeError::NoRing`]: this replica has no ring yet; it needs a
    ///   whole ring first.
    /// - [`MergeError::OtherOrigin`]: the delta is of a ring created apart.
    /// - [`MergeError::MalformedUpdate`]: spans outside the pool or with
    ///   impossible free counts.
    /// - Every refusal of [`Replica::merge`].
    ///
    /// On error the replica is unchanged.
    pub fn merge_delta(&mut self, delta: &Delta) -> Result<MergeOutcome, MergeError> {
        let ring = self.ring.as_ref().ok_or(MergeError::NoRing)?;
        if delta.origin != ring.origin_hash() {
            return Err(MergeError::OtherOrigin);
        }
        let pool = ring.pool;
        for (s, e, entry) in &delta.spans {
            if *e > pool.size() || entry.free > e - s - pool.reserved_in(*s, *e) {
                return Err(MergeError::MalformedUpdate(format!(
                    "the entry at {} lies outside the pool or claims more free addresses than it holds",
                    pool.addr_at(*s)
                )));
            }
        }
        let ends: BTreeMap<u128, u128> = delta.spans.iter().map(|(s, e, _)| (*s, *e)).collect();
        let mut part = Ring {
            pool,
            seeds: ring.seeds.clone(),
            entries: delta.spans.iter().map(|(s, _, e)| (*s, *e)).collect(),
            members: delta.members.clone(),
            removals: Default::default(),
            surrenders: Default::default(),
        };
        let mut skipped = Vec::new();
        loop {
            let plan = ring.plan_merge(&part)?;
            let applied: Vec<u128> = plan.entries.iter().map(|(t, _)| *t).collect();
            let placed = |s: u128| {
                let comes_with_predecessor = ring.entries.contains_key(&s)
                    || part
                        .entries
                        .range(..s)
                        .next_back()
                        .is_some_and(|(p, _)| ends[p] == s && applied.binary_search(p).is_ok());
                plan.next_token(ring, s) == ends[&s] && comes_with_predecessor
            };
            let unplaced: Vec<u128> = applied.iter().copied().filter(|s| !placed(*s)).collect();
            if unplaced.is_empty() {
                let mut out = self.merge_planned(&part, Some(plan))?;
                skipped.sort_unstable();
                out.skipped = skipped;
                return Ok(out);
            }
            drop(plan);
            for t in unplaced {
                part.entries.remove(&t);
                skipped.push(t);
            }
        }
    }
}

/// The most buckets a digest may have; more is malformed.
pub const MAX_BUCKETS: u16 = 1024;

/// FNV-1a of an entry's token and stamp, summed per bucket by
/// [`Ring::bucket_sums`].
fn stamp_digest(token: u128, epoch: u32, version: u64) -> u64 {
    let mut h = FNV_OFFSET;
    for b in token
        .to_le_bytes()
        .into_iter()
        .chain(epoch.to_le_bytes())
        .chain(version.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use crate::replica::Request;
    use crate::{AllocKey, Want};

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn pool() -> Pool {
        Pool::new("10.32.0.0/16".parse().unwrap()).unwrap()
    }

    fn key(n: u32) -> AllocKey {
        AllocKey::new(format!("c{n}"), "eth0").unwrap()
    }

    /// Replicas 1..=n on one genesis ring seeded by all of them.
    fn replicas(n: u64) -> Vec<Replica> {
        let seeds: Vec<PeerName> = (1..=n).map(p).collect();
        let genesis = Replica::create(p(1), pool(), &seeds).unwrap();
        (1..=n)
            .map(|i| {
                let mut r = Replica::new(p(i));
                let _ = r.merge(genesis.ring().unwrap()).unwrap();
                r
            })
            .collect()
    }

    /// Looking only at the entries a merged delta carried finds what a walk
    /// over the whole ring finds, and brings the base to the same state.
    #[test]
    fn changes_at_the_tokens_of_merged_deltas_match_a_whole_comparison() {
        let mut r = replicas(3);
        let mut base = r[1].ring().unwrap().snapshot();
        let before = r[0].ring().unwrap().snapshot();
        let _ = r[0].donate(p(3), Want::Any).unwrap();
        let _ = r[0].allocate(key(1), Request::Any).unwrap();
        let d = r[0].ring().unwrap().delta_since(&before).unwrap();
        assert!(r[1].merge_delta(&d).unwrap().changed);
        let ring = r[1].ring().unwrap();
        let tokens: BTreeSet<u128> = d.stamps().map(|s| s.token).collect();
        let at = ring.changes_at(&base, &tokens).unwrap();
        assert!(!at.is_empty());
        assert_eq!(Some(at.clone()), ring.changes_since(&base));
        base.update_at(ring, &at);
        assert_eq!(base, ring.snapshot());
        assert_eq!(ring.changes_at(&base, &tokens), Some(vec![]));
        // A reclaim record changed: only the whole comparison will do.
        let _ = r[1].begin_reclaim(p(3)).unwrap();
        assert_eq!(r[1].ring().unwrap().changes_at(&base, &tokens), None);
    }

    /// The entries listed for the buckets whose sums differ find every
    /// entry newer on either side, as a digest of every stamp would.
    #[test]
    fn differing_bucket_sums_name_every_differing_entry() {
        let mut r = replicas(4);
        for i in 0..40u64 {
            let donor = usize::try_from(i % 4).unwrap();
            let _ = r[donor].donate(p(100 + i), Want::Any).unwrap();
            let ring = r[donor].ring().unwrap().clone();
            for x in &mut r {
                let _ = x.merge(&ring).unwrap();
            }
        }
        let mut other = r[1].clone();
        let ring0 = r[0].ring().unwrap().clone();
        let _ = other.merge(&ring0).unwrap();
        let _ = r[1].merge(&ring0).unwrap();
        assert_eq!(r[1].ring(), other.ring());
        let ours = r[1].ring().unwrap();
        let count = ours.digest_buckets();
        assert_eq!(ours.bucket_sums(count), other.ring().unwrap().bucket_sums(count));
        // Each side changes something the other lacks.
        let _ = r[1].allocate(key(1), Request::Any).unwrap();
        let _ = other.merge(r[2].ring().unwrap()).unwrap();
        let _ = r[0].allocate(key(2), Request::Any).unwrap();
        let _ = r[0].donate(p(99), Want::Any).unwrap();
        let _ = other.merge(r[0].ring().unwrap()).unwrap();
        let (a, b) = (r[1].ring().unwrap(), other.ring().unwrap());
        let count = a.digest_buckets();
        let (sums_a, sums_b) = (a.bucket_sums(count), b.bucket_sums(count));
        let differ: BTreeSet<u16> = (0..count)
            .filter(|i| sums_a[usize::from(*i)] != sums_b[usize::from(*i)])
            .collect();
        assert!(
            !differ.is_empty() && differ.len() < usize::from(count),
            "{differ:?} of {count}"
        );
        // The sums put each entry in its bucket_of.
        let mut by_division = vec![0u64; usize::from(count)];
        for st in a.stamps() {
            let i = usize::from(a.bucket_of(st.token, count));
            by_division[i] = by_division[i].wrapping_add(stamp_digest(st.token, st.epoch, st.version));
        }
        assert_eq!(sums_a, by_division);
        let whole_here = a.newer_here(&b.stamps());
        let whole_there = b.newer_here(&a.stamps());
        assert!(!whole_here.is_empty() && !whole_there.is_empty());
        assert_eq!(
            a.newer_here_in(&b.stamps_in(count, &differ), count, &differ),
            whole_here
        );
        assert_eq!(
            b.newer_here_in(&a.stamps_in(count, &differ), count, &differ),
            whole_there
        );
        let there: Vec<Stamp> = a.newer_elsewhere(&b.stamps_in(count, &differ)).copied().collect();
        assert_eq!(there, whole_there);
    }

    #[test]
    fn an_allocation_travels_as_a_small_delta_and_merges_like_the_ring() {
        let mut r = replicas(3);
        let base = r[0].ring().unwrap().snapshot();
        // The owner's entry changes when its free count leaves the band of
        // the advertised one: more than an eighth of it.
        let mut allocated = 0;
        while r[0].ring().unwrap().changes_since(&base).is_none_or(|c| c.is_empty()) {
            allocated += 1;
            r[0].allocate(key(allocated), Request::Any).unwrap();
        }
        assert!(allocated > 1, "one allocation moved the advertised count");
        let d = r[0].ring().unwrap().delta_since(&base).unwrap();
        // The changed entry and its two neighbours.
        assert_eq!(d.len(), 2, "{d:?}"); // the first entry has no predecessor
        let bytes = d.encode();
        assert!(bytes.len() < 100, "{} bytes", bytes.len());
        let d = Delta::decode(&bytes).unwrap();
        let out = r[1].merge_delta(&d).unwrap();
        assert!(out.changed);
        assert_eq!(r[1].ring(), r[0].ring());
        // Merging it again changes nothing.
        assert!(!r[1].merge_delta(&d).unwrap().changed);
    }

    #[test]
    fn a_donation_by_delta_gives_the_recipient_exactly_the_range() {
        let mut r = replicas(2);
        let mut newcomer = Replica::new(p(9));
        let _ = newcomer.merge(r[0].ring().unwrap()).unwrap();
        let base = r[0].ring().unwrap().snapshot();
        let given = r[0].donate(p(9), Want::Any).unwrap();
        let d = r[0].ring().unwrap().delta_since(&base).unwrap();
        let out = newcomer.merge_delta(&d).unwrap();
        assert_eq!(out.gained, vec![given.range]);
        assert_eq!(newcomer.ring(), r[0].ring());
        let a = newcomer.allocate(key(1), Request::Any).unwrap();
        assert_eq!(r[0].ring().unwrap().owner_of(a.addr), Some(p(9)));
    }

    #[test]
    fn a_gain_whose_end_the_receiver_does_not_know_is_skipped() {
        let mut r = replicas(2);
        let mut newcomer = Replica::new(p(9));
        let _ = newcomer.merge(r[0].ring().unwrap()).unwrap();
        // r0 gives part of its range to a third router, which the newcomer never hears of...
        let _ = r[0].donate(p(8), Want::Any).unwrap();
        let base = r[0].ring().unwrap().snapshot();
        // ...then a part to the newcomer, ending where the third router's begins.
        let _ = r[0].donate(p(9), Want::Any).unwrap();
        let mut d = r[0].ring().unwrap().delta_since(&base).unwrap();
        // Strip the neighbour after the gained range: the newcomer cannot know where it ends.
        let gained = d.spans.iter().position(|(_, _, e)| e.owner == p(9)).unwrap();
        d.spans.truncate(gained + 1);
        let before = newcomer.clone();
        let out = newcomer.merge_delta(&d).unwrap();
        // Neither the gained range nor the shrunk one before it can be placed.
        assert_eq!(out.skipped.len(), 2);
        assert!(out.gained.is_empty());
        assert_eq!(newcomer.free(), 0);
        let ranges = |r: &Replica| r.ring().unwrap().ranges().collect::<Vec<_>>();
        assert_eq!(ranges(&newcomer), ranges(&before), "no range was merged");
        // The whole ring still works.
        let _ = newcomer.merge(r[0].ring().unwrap()).unwrap();
        assert!(newcomer.free() > 0);
    }

    #[test]
    fn reclaim_records_and_other_rings_need_the_whole_ring() {
        let mut r = replicas(3);
        let base = r[0].ring().unwrap().snapshot();
        let _ = r[0].begin_reclaim(p(3)).unwrap();
        assert_eq!(r[0].ring().unwrap().delta_since(&base), None);
        let other = Replica::create(p(1), pool(), &[p(1)]).unwrap();
        assert_eq!(other.ring().unwrap().delta_since(&base), None);
        let d = r[1].ring().unwrap().delta_since(&base).unwrap();
        assert!(d.is_empty());
        let mut stranger = other;
        assert_eq!(stranger.merge_delta(&d), Err(MergeError::OtherOrigin));
        assert_eq!(Replica::new(p(7)).merge_delta(&d), Err(MergeError::NoRing));
    }
}
