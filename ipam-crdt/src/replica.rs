//! One router's IPAM state: the ring plus its own allocations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::peer::PeerName;
use crate::pool::{AddrRange, Pool};
use crate::ring::{
    CreateError, Entry, MergeError, MergePlan, ReclaimStatus, Removal, Ring, Surrender, Taken, Vote,
    advertised_free_holds,
};
use crate::space::Space;

/// One router's view of the ring and its own allocations. Pure state: no I/O,
/// no clock, no randomness.
///
/// # Driving it
/// - Create the ring with [`Replica::create`] (the genesis routers) or adopt
///   one through [`Replica::merge`] (everyone else).
/// - [`Replica::allocate`] / [`Replica::release`] for containers. When it
///   answers [`AllocError::AskPeer`], send that peer a space request; the peer
///   answers with [`Replica::donate`] and sends its ring, which the requester
///   [`merge`](Replica::merge)s, and then allocates again. For
///   [`Want::Any`] any donor will do: a caller that knows whom it can reach
///   picks among those with [`Replica::choose_donor_where`].
/// - Gossip [`Replica::ring`] to neighbours whenever a call reports a change,
///   and merge whatever arrives.
/// - [`Replica::begin_reclaim`] for a router that is dead for good.
///
/// **Persist** the replica ([`Replica::encode`]) after every mutating call and
/// before sending its ring anywhere or answering the caller: an answered
/// allocation, or a ring version seen by others, must survive a crash.
#[derive(Clone, PartialEq, Eq)]
pub struct Replica {
    pub(crate) me: PeerName,
    pub(crate) ring: Option<Ring>,
    pub(crate) space: Space,
    /// Own entries not yet usable: written by a router whose removal is
    /// pending when they arrived (see [`Replica::merge`]). Not in `space`.
    pub(crate) deferred: BTreeSet<u128>,
    /// Spans of own ranges taken as heir and not usable yet: start -> (end,
    /// the removed router they came from). Neither free nor allocated, and
    /// not in `space`, until that router's surrender frees them.
    pub(crate) held: BTreeMap<u128, (u128, PeerName)>,
}

/// What an allocation is keyed by: a container and one of its interfaces.
/// The same key gets the same address again.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocKey {
    container: String,
    iface: String,
}

impl AllocKey {
    /// Longest container id accepted, in bytes.
    pub const MAX_CONTAINER_LEN: usize = 256;
    /// Longest interface name accepted, in bytes.
    pub const MAX_IFACE_LEN: usize = 64;

    /// A key; both parts must be non-empty, within the length limits and free of control characters.
    ///
    /// # Errors
    /// [`KeyError`] saying which part is wrong.
    pub fn new(container: impl Into<String>, iface: impl Into<String>) -> Result<Self, KeyError> {
        let (container, iface) = (container.into(), iface.into());
        check_part("container id", &container, Self::MAX_CONTAINER_LEN)?;
        check_part("interface", &iface, Self::MAX_IFACE_LEN)?;
        Ok(Self { container, iface })
    }

    /// The container id.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }
}

impl fmt::Display for AllocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container, self.iface)
    }
}

impl fmt::Debug for AllocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllocKey({self})")
    }
}

fn check_part(what: &'static str, s: &str, max: usize) -> Result<(), KeyError> {
    if s.is_empty() {
        return Err(KeyError {
            what,
            reason: "is empty",
        });
    }
    if s.len() > max {
        return Err(KeyError {
            what,
            reason: "is too long",
        });
    }
    if s.chars().any(char::is_control) {
        return Err(KeyError {
            what,
            reason: "contains control characters",
        });
    }
    Ok(())
}

/// An allocation key part was unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allocation key {what} {reason}")]
pub struct KeyError {
    what: &'static str,
    reason: &'static str,
}

/// What address a container asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Request {
    /// Any free address (Weave's default).
    Any,
    /// This address (`ip:ADDR`).
    Addr(IpAddr),
    /// Any address in this subnet (`net:CIDR`), other than the subnet's
    /// own network and broadcast addresses.
    Within(IpNet),
}

/// What space a router asks another to donate. Mirrors [`Request`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Want {
    /// Any free range: the donor gives about half of its largest free range.
    Any,
    /// The one address.
    Addr(IpAddr),
    /// A free range inside this subnet.
    Within(IpNet),
}

impl From<Request> for Want {
    fn from(r: Request) -> Self {
        match r {
            Request::Any => Self::Any,
            Request::Addr(a) => Self::Addr(a),
            Request::Within(n) => Self::Within(n),
        }
    }
}

/// An address handed out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Allocation {
    /// The address.
    pub addr: IpAddr,
    /// The pool's prefix length, for the CIDR form (`10.32.0.1/12`).
    pub prefix_len: u8,
    /// True when the key already had this address (a repeated ADD).
    pub existing: bool,
}

/// A range given to another router.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Donation {
    /// The recipient.
    pub to: PeerName,
    /// What it got.
    pub range: AddrRange,
}

/// What a merge did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[must_use]
pub struct MergeOutcome {
    /// The ring changed (merged data, or this replica voted): gossip it.
    pub changed: bool,
    /// Ranges this router received.
    pub gained: Vec<AddrRange>,
    /// Removed routers whose ranges this router took as heir.
    pub reclaimed: Vec<PeerName>,
    /// Tokens of the spans of a [`Delta`](crate::Delta) left out because this
    /// view could not place them exactly: pull them again once the rest
    /// arrived, or fetch the sender's whole ring.
    pub skipped: Vec<u128>,
}

impl Replica {
    /// A replica with no ring yet; it adopts the first ring it merges.
    pub fn new(me: PeerName) -> Self {
        Self {
            me,
            ring: None,
            space: Space::default(),
            deferred: BTreeSet::new(),
            held: BTreeMap::new(),
        }
    }

    /// A replica that creates the ring over `pool` split between `seeds`
    /// ([`Ring::new`]). `me` need not be a seed.
    ///
    /// # Errors
    /// As [`Ring::new`].
    pub fn create(me: PeerName, pool: Pool, seeds: &[PeerName]) -> Result<Self, CreateError> {
        let mut r = Self::new(me);
        let _ = r
            .merge(&Ring::new(pool, seeds)?)
            .expect("a replica with no ring adopts any ring");
        Ok(r)
    }

    /// This router's name.
    pub fn name(&self) -> PeerName {
        self.me
    }

    /// The ring, once created or adopted.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// Whether the ring says this router was removed (`rmpeer` ran against it,
    /// or it left). A removed router allocates nothing more; it must be reset.
    pub fn is_removed(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| r.is_removed(self.me))
    }

    /// The spans this router holds as heir ([`Replica::held`]), in address
    /// order, each with the removed router it came from.
    pub fn held_ranges(&self) -> impl Iterator<Item = (AddrRange, PeerName)> + '_ {
        let pool = self.ring.as_ref().map(Ring::pool);
        self.held
            .iter()
            .map(move |(s, (e, from))| (pool.expect("held spans imply a ring").range(*s, *e), *from))
    }

    /// Addresses this router holds as heir of removed routers and may not
    /// hand out yet, by the router they came from: each is freed when that
    /// router surrenders (it learned of its removal), is reset, or an
    /// operator confirms it gone ([`Replica::confirm_gone`]).
    pub fn held(&self) -> BTreeMap<PeerName, u128> {
        let mut out = BTreeMap::new();
        for (s, (e, from)) in &self.held {
            *out.entry(*from).or_default() += e - s;
        }
        out
    }

    /// The address of `key`, if allocated here.
    pub fn lookup(&self, key: &AllocKey) -> Option<IpAddr> {
        let pool = self.ring.as_ref()?.pool;
        self.space.offset_of(key).map(|o| pool.addr_at(o))
    }

    /// Every allocation of this router.
    pub fn allocations(&self) -> impl Iterator<Item = (&AllocKey, IpAddr)> + '_ {
        let pool = self.ring.as_ref().map(Ring::pool);
        self.space
            .allocations()
            .map(move |(k, o)| (k, pool.expect("allocations imply a ring").addr_at(o)))
    }

    /// Number of addresses allocated here.
    pub fn allocated(&self) -> usize {
        self.space.allocated()
    }

    /// Number of free addresses in this router's ranges.
    pub fn free(&self) -> u128 {
        self.space.free_total()
    }

    /// Allocates an address for `key`.
    ///
    /// Repeating a request for the same key returns the same address. O(log n)
    /// in ring entries and allocations, except when the answer is `AskPeer`
    /// with [`Request::Any`], which scans the ring to choose a donor.
    ///
    /// # Errors
    /// [`AllocError`]; [`AllocError::AskPeer`] is not a failure but the next
    /// protocol step: the space belongs to another router.
    pub fn allocate(&mut self, key: AllocKey, req: Request) -> Result<Allocation, AllocError> {
        let me = self.me;
        let ring = self.ring.as_ref().ok_or(AllocError::NoRing)?;
        if ring.is_removed(me) {
            return Err(AllocError::Removed);
        }
        let pool = ring.pool;
        let prefix_len = pool.net().prefix_len();
        if let Some(off) = self.space.offset_of(&key) {
            let addr = pool.addr_at(off);
            let fits = match req {
                Request::Any => true,
                Request::Addr(a) => a == addr,
                Request::Within(net) => net.contains(&addr),
            };
            return if fits {
                Ok(Allocation {
                    addr,
                    prefix_len,
                    existing: true,
                })
            } else {
                Err(AllocError::KeyBound {
                    key: Box::new(key),
                    addr,
                })
            };
        }
        let off = match req {
            Request::Any => match self.space.lowest_free() {
                Some(off) => off,
                None => return Err(self.no_space(Want::Any, 0, pool.size())),
            },
            Request::Addr(addr) => {
                let off = pool.offset_of(addr).ok_or(AllocError::OutsidePool {
                    requested: IpNet::from(addr),
                    pool,
                })?;
                if pool.is_reserved(off) {
                    return Err(AllocError::Reserved { addr, pool });
                }
                let owner = ring.entry_containing(off).1.owner;
                if owner != me {
                    return Err(AllocError::AskPeer {
                        peer: owner,
                        want: Want::Addr(addr),
                    });
                }
                if let Some(holder) = self.space.holder_of(off) {
                    return Err(AllocError::InUse {
                        addr,
                        by: Box::new(holder.clone()),
                    });
                }
                if let Some(from) = self.held_from(off) {
                    return Err(AllocError::Held { addr, from });
                }
                if !self.space.is_free(off) {
                    // A deferred entry: it came from a router whose removal
                    // is pending, and waits for that reclaim.
                    let from = ring.entry_containing(off).1.writer;
                    return Err(AllocError::Held { addr, from });
                }
                off
            }
            Request::Within(net) => {
                let (s, e) = pool
                    .host_span_of(net)
                    .ok_or(AllocError::OutsidePool { requested: net, pool })?;
                match self.space.lowest_free_in(s, e) {
                    Some(off) => off,
                    None => return Err(self.no_space(Want::Within(net), s, e)),
                }
            }
        };
        self.space.allocate(key, off);
        self.advertise_free_at(off);
        Ok(Allocation {
            addr: pool.addr_at(off),
            prefix_len,
            existing: false,
        })
    }

    /// Releases `key`'s address. Idempotent: an unknown key returns `None`.
    pub fn release(&mut self, key: &AllocKey) -> Option<IpAddr> {
        let ring = self.ring.as_ref()?;
        let pool = ring.pool;
        let off = self.space.release(key)?;
        self.advertise_free_at(off);
        Some(pool.addr_at(off))
    }

    /// Rewrites the advertised free count of the own entry covering `off`
    /// after an allocation or release there, if the count left its band
    /// ([`advertised_free_holds`]).
    fn advertise_free_at(&mut self, off: u128) {
        let ring = self.ring.as_mut().expect("callers checked");
        let (t, _) = ring.entry_containing(off);
        let count = self.space.count_free(t, ring.end_of(t));
        ring.advertise_free(t, count);
    }

    /// The router to ask for space: the one advertising the most free
    /// addresses (lowest name on ties), never this one or a removed one.
    pub fn choose_donor(&self) -> Option<PeerName> {
        self.choose_donor_where(|_| true)
    }

    /// As [`Replica::choose_donor`], among the routers `eligible` accepts.
    /// The caller's filter says whom it can ask now (for example the routers
    /// it has a route to and has not asked yet); this replica knows nothing
    /// of the network. O(ring entries).
    pub fn choose_donor_where(&self, mut eligible: impl FnMut(PeerName) -> bool) -> Option<PeerName> {
        self.donors()
            .filter(|(p, _)| eligible(*p))
            .max_by(|(pa, a), (pb, b)| a.cmp(b).then(pb.cmp(pa)))
            .map(|(p, _)| p)
    }

    /// Every router that could donate, with the free addresses it
    /// advertises, in name order: those with free space, never this one or a
    /// removed one. Empty without a ring. O(ring entries).
    pub fn donors(&self) -> impl Iterator<Item = (PeerName, u128)> + '_ {
        self.ring.iter().flat_map(move |ring| {
            ring.owners()
                .into_iter()
                .filter(move |(p, s)| *p != self.me && s.free > 0 && !ring.is_removed(*p))
                .map(|(p, s)| (p, s.free))
        })
    }

    /// Gives `to` a free range of this router's space, as asked. Allocated
    /// addresses never move. Send the ring to `to` afterwards.
    ///
    /// # Errors
    /// [`DonateError`] saying why nothing was given.
    pub fn donate(&mut self, to: PeerName, want: Want) -> Result<Donation, DonateError> {
        let me = self.me;
        let ring = self.ring.as_ref().ok_or(DonateError::NoRing)?;
        if ring.is_removed(me) {
            return Err(DonateError::Removed);
        }
        if to == me {
            return Err(DonateError::ToSelf);
        }
        if ring.is_removed(to) {
            return Err(DonateError::RecipientRemoved(to));
        }
        let pool = ring.pool;
        let (s, e) = match want {
            Want::Any => {
                let (s, e) = self.space.largest_free().ok_or(DonateError::NothingFree)?;
                (split_point(s, e), e)
            }
            Want::Addr(addr) => {
                let off = pool
                    .offset_of(addr)
                    .ok_or(DonateError::OutsidePool(IpNet::from(addr)))?;
                let owner = ring.entry_containing(off).1.owner;
                if owner != me {
                    return Err(DonateError::NotOwner { owner });
                }
                if let Some(holder) = self.space.holder_of(off) {
                    return Err(DonateError::InUse {
                        addr,
                        by: Box::new(holder.clone()),
                    });
                }
                if let Some(from) = self.held_from(off) {
                    return Err(DonateError::Held { addr, from });
                }
                if !self.space.is_free(off) {
                    return Err(DonateError::Reserved(addr));
                }
                (off, off + 1)
            }
            Want::Within(net) => {
                let (s, e) = pool.host_span_of(net).ok_or(DonateError::OutsidePool(net))?;
                self.space
                    .first_free_span_in(s, e)
                    .ok_or(DonateError::NothingFreeIn(net))?
            }
        };
        self.hand_over(s, e, to);
        Ok(Donation {
            to,
            range: pool.range(s, e),
        })
    }

    /// Merges a ring received from another router.
    ///
    /// With no ring yet, adopts it. Afterwards this replica votes on pending
    /// reclaims and, if it is the agreed heir with every vote in, takes the
    /// removed router's ranges.
    ///
    /// **The fence.** A range that arrives written by a router whose removal
    /// is pending (its donation, learned late) is not used until that reclaim
    /// is done: this replica's vote may already be on its way without it, and
    /// the heir may take the range. Once done, the range is used if it is
    /// still ours; otherwise the heir's takeover has replaced it.
    ///
    /// # Errors
    /// [`MergeError`]; the replica is then unchanged. Besides the ring-level
    /// errors, refuses a ring that changes, splits or drops this router's own
    /// entries: only this router writes those.
    pub fn merge(&mut self, other: &Ring) -> Result<MergeOutcome, MergeError> {
        let plan = match &self.ring {
            Some(ring) => Some(ring.plan_merge(other)?),
            None => None,
        };
        self.merge_planned(other, plan)
    }

    /// [`Replica::merge`] with the plan already made by `plan_merge` on this
    /// replica's ring (`None`: make it here).
    pub(crate) fn merge_planned(
        &mut self,
        other: &Ring,
        plan: Option<MergePlan<'_>>,
    ) -> Result<MergeOutcome, MergeError> {
        let me = self.me;
        let (changed, arrived) = match (&mut self.ring, plan) {
            (None, _) => {
                let tokens = other
                    .entries
                    .iter()
                    .filter(|(_, e)| e.owner == me)
                    .map(|(t, _)| *t)
                    .collect();
                self.ring = Some(other.clone());
                (true, tokens)
            }
            (Some(ring), plan) => {
                let plan = match plan {
                    Some(plan) => plan,
                    None => ring.plan_merge(other)?,
                };
                // A router that is (or, with this merge, becomes) removed
                // accepts the takeover of its entries: it stops using them,
                // and refusing would keep its ring apart forever.
                let removed = ring.is_removed(me) || plan.removals.iter().any(|(d, _)| *d == me);
                let usable = |t: u128, owner: PeerName| !removed && owner == me && !self.deferred.contains(&t);
                let mut tokens = Vec::new();
                for (t, theirs) in &plan.entries {
                    match ring.entries.get(t) {
                        Some(mine) if usable(*t, mine.owner) => {
                            return Err(MergeError::OwnEntryChanged {
                                at: ring.pool.addr_at(*t),
                            });
                        }
                        None => {
                            let (ct, ce) = ring.entry_containing(*t);
                            if usable(ct, ce.owner) {
                                return Err(MergeError::OwnRangeSplit {
                                    at: ring.pool.addr_at(*t),
                                });
                            }
                        }
                        _ => {}
                    }
                    if theirs.owner == me && !removed {
                        // Space moves wholly free (donations and takeovers alike).
                        let end = plan.next_token(ring, *t);
                        if theirs.free != end - t - ring.pool.reserved_in(*t, end) {
                            return Err(MergeError::GainedInUse {
                                at: ring.pool.addr_at(*t),
                            });
                        }
                        tokens.push(*t);
                    }
                }
                if let Some(t) = plan.dropped.iter().find(|t| usable(**t, ring.entries[*t].owner)) {
                    return Err(MergeError::OwnEntryChanged {
                        at: ring.pool.addr_at(*t),
                    });
                }
                (ring.apply_merge(plan), tokens)
            }
        };
        let ring = self.ring.as_ref().expect("set above");
        let mut gained = Vec::with_capacity(arrived.len());
        let arrived = if ring.is_removed(me) { Vec::new() } else { arrived };
        for t in arrived {
            if self.deferred.contains(&t) {
                continue;
            }
            let e = ring.entries[&t];
            if ring.is_pending_removal(e.writer) {
                self.deferred.insert(t);
                continue;
            }
            let end = ring.end_of(t);
            add_owned(&mut self.space, ring.pool, t, end);
            gained.push(ring.pool.range(t, end));
        }
        let stopped = self.stop_if_removed();
        if stopped {
            gained.clear();
        }
        let (voted, reclaimed) = self.settle_reclaims();
        self.release_deferred(&mut gained);
        let freed = self.free_surrendered();
        Ok(MergeOutcome {
            changed: changed || voted || stopped || freed,
            gained,
            reclaimed,
            skipped: Vec::new(),
        })
    }

    /// Drops deferred entries that are no longer ours, and starts using those
    /// whose writer's reclaim is done.
    fn release_deferred(&mut self, gained: &mut Vec<AddrRange>) {
        if self.deferred.is_empty() {
            return;
        }
        let me = self.me;
        let ring = self.ring.as_ref().expect("deferred entries imply a ring");
        self.deferred
            .retain(|t| ring.entries.get(t).is_some_and(|e| e.owner == me));
        let ready: Vec<u128> = self
            .deferred
            .iter()
            .copied()
            .filter(|t| !ring.is_pending_removal(ring.entries[t].writer))
            .collect();
        for t in ready {
            self.deferred.remove(&t);
            let end = ring.end_of(t);
            add_owned(&mut self.space, ring.pool, t, end);
            gained.push(ring.pool.range(t, end));
        }
    }

    /// Starts (or joins) the reclaim of `dead`, a router that is gone for good.
    ///
    /// This replica proposes itself as heir (or, if it owns nothing and so
    /// cannot vote, the lowest-named voter). The ranges move only once every
    /// live member has voted for the same heir; see the [crate docs](crate).
    /// Calling it again, here or on any other router, is harmless.
    ///
    /// # Errors
    /// [`ReclaimError`] when there is no ring, `dead` is this router or unknown.
    pub fn begin_reclaim(&mut self, dead: PeerName) -> Result<ReclaimStatus, ReclaimError> {
        let me = self.me;
        let ring = self.ring.as_mut().ok_or(ReclaimError::NoRing)?;
        if dead == me {
            return Err(ReclaimError::IsSelf);
        }
        if ring.is_removed(me) {
            return Err(ReclaimError::Removed);
        }
        if !ring.members.contains(&dead) {
            return Err(ReclaimError::UnknownPeer(dead));
        }
        let done = matches!(ring.removals.get(&dead), Some(Removal::Done { .. }));
        if !done && ring.candidate(dead).is_none() {
            // Propose ourselves; a router that owns nothing cannot vote, so it
            // proposes the lowest-named voter instead.
            let heir = if ring.members.contains(&me) {
                me
            } else {
                ring.voters().find(|v| *v != dead).ok_or(ReclaimError::NoVoters)?
            };
            let record = ring.removals.entry(dead).or_insert_with(|| Removal::Pending {
                proposals: Default::default(),
                votes: Default::default(),
            });
            if let Removal::Pending { proposals, .. } = record {
                proposals.insert(heir);
            }
        }
        let _ = self.settle_reclaims();
        Ok(self
            .ring
            .as_ref()
            .expect("checked above")
            .reclaim_status(dead)
            .expect("record exists"))
    }

    /// Leaves the ring gracefully (`weft reset`): records this router's own
    /// removal with `heir` proposed as its heir, and stops allocating at once.
    /// Gossip the ring before going; the heir takes the ranges once every live
    /// member has voted, exactly as for [`Replica::begin_reclaim`], so a leave
    /// and an `rmpeer` of the same router started elsewhere join into one
    /// reclaim instead of racing.
    ///
    /// # Errors
    /// [`ReclaimError`] when there is no ring, this router is already
    /// removed (or being reclaimed), or `heir` is not a live member.
    pub fn leave(&mut self, heir: PeerName) -> Result<ReclaimStatus, ReclaimError> {
        let me = self.me;
        let ring = self.ring.as_mut().ok_or(ReclaimError::NoRing)?;
        if ring.is_removed(me) {
            return Err(ReclaimError::Removed);
        }
        if heir == me {
            return Err(ReclaimError::IsSelf);
        }
        if !ring.members.contains(&me) {
            return Err(ReclaimError::NotAMember);
        }
        if !ring.members.contains(&heir) || ring.is_removed(heir) {
            return Err(ReclaimError::UnknownPeer(heir));
        }
        ring.removals.insert(
            me,
            Removal::Pending {
                proposals: BTreeSet::from([heir]),
                votes: Default::default(),
            },
        );
        // A leaving router takes its pods with it: everything it had is
        // free for the heir at once (the fast path of a reset).
        ring.surrenders.insert(
            me,
            Surrender {
                spans: BTreeSet::new(),
                all: true,
                by_self: true,
            },
        );
        let status = ring.reclaim_status(me).expect("just recorded");
        self.forget_own_space();
        Ok(status)
    }

    /// After this router was removed (`weft rmpeer` ran against it while it
    /// was alive) and is being reset: its pods are gone, so everything it
    /// had is free for its heir. Idempotent. Returns whether the ring changed.
    ///
    /// # Errors
    /// [`ReclaimError::NoRing`]; [`ReclaimError::NotRemoved`] when this
    /// router was not removed (a live router leaves with [`Replica::leave`]).
    pub fn surrender_all(&mut self) -> Result<bool, ReclaimError> {
        let me = self.me;
        let ring = self.ring.as_mut().ok_or(ReclaimError::NoRing)?;
        if !ring.is_removed(me) {
            return Err(ReclaimError::NotRemoved(me));
        }
        let s = ring.surrenders.entry(me).or_default();
        let changed = !s.all || !s.by_self;
        s.all = true;
        s.by_self = true;
        Ok(changed)
    }

    /// The operator's confirmation that the removed router `dead` is gone
    /// for good (its host destroyed, or its state deleted): its heir may hand
    /// out everything it held from `dead`, and a reclaim waiting on `dead` as
    /// its proposed heir moves on once `dead`'s own reclaim is done (`dead`
    /// may have completed it before it went). **Only safe if `dead` will never run
    /// again with its state**: a live `dead` keeps its pods' addresses, and
    /// they would be handed out twice. Returns whether the ring changed.
    ///
    /// # Errors
    /// [`ReclaimError::NoRing`], [`ReclaimError::IsSelf`], or
    /// [`ReclaimError::NotRemoved`] when `dead` was not removed first
    /// (`weft rmpeer`).
    pub fn confirm_gone(&mut self, dead: PeerName) -> Result<bool, ReclaimError> {
        if dead == self.me {
            return Err(ReclaimError::IsSelf);
        }
        let ring = self.ring.as_mut().ok_or(ReclaimError::NoRing)?;
        if !ring.is_removed(dead) {
            return Err(ReclaimError::NotRemoved(dead));
        }
        let s = ring.surrenders.entry(dead).or_default();
        let changed = !s.all;
        s.all = true;
        let _ = self.settle_reclaims();
        let _ = self.free_surrendered();
        Ok(changed)
    }

    /// Checks every invariant of this replica: its entries' free counts match
    /// its space, its free space and allocations lie in its own unreserved
    /// addresses, and every such address is either free or allocated.
    ///
    /// # Errors
    /// [`Violation`] describing the first broken invariant.
    pub fn verify(&self) -> Result<(), Violation> {
        let Some(ring) = &self.ring else {
            return if self.space == Space::default() {
                Ok(())
            } else {
                Err(violation("space without a ring"))
            };
        };
        let pool = ring.pool;
        if ring.is_removed(self.me) {
            // A removed router surrendered and forgot its space at once.
            if !ring.surrenders.contains_key(&self.me) {
                return Err(violation("removed without a surrender"));
            }
            if self.space != Space::default() || !self.deferred.is_empty() || !self.held.is_empty() {
                return Err(violation("a removed router still keeps space"));
            }
            return Ok(());
        }
        let mut held_total = 0u128;
        let mut prev_end = 0u128;
        for (s, (e, _)) in &self.held {
            if *s < prev_end || s >= e || pool.is_reserved(*s) || pool.is_reserved(e - 1) {
                return Err(violation("held spans overlap, are empty or hold a reserved address"));
            }
            prev_end = *e;
            held_total += e - s;
            if self.space.count_free(*s, *e) > 0 || self.space.allocations().any(|(_, o)| *s <= o && o < *e) {
                return Err(violation(format!(
                    "held span at {} is also free or allocated",
                    pool.addr_at(*s)
                )));
            }
            let mut t = ring.entry_containing(*s).0;
            while t < *e {
                if ring.entries[&t].owner != self.me || self.deferred.contains(&t) {
                    return Err(violation(format!(
                        "held span at {} lies outside own ranges",
                        pool.addr_at(*s)
                    )));
                }
                t = ring.end_of(t);
            }
        }
        if let Some(t) = self
            .deferred
            .iter()
            .find(|t| ring.entries.get(t).is_none_or(|e| e.owner != self.me))
        {
            return Err(violation(format!("deferred entry at {} is not ours", pool.addr_at(*t))));
        }
        let mut usable_owned = 0u128;
        for (s, e, entry) in ring.spans() {
            if entry.free > e - s - pool.reserved_in(s, e) {
                return Err(violation(format!(
                    "entry at {} advertises more free than it holds",
                    pool.addr_at(s)
                )));
            }
            if entry.owner == self.me && !self.deferred.contains(&s) {
                usable_owned += e - s - pool.reserved_in(s, e);
                let count = self.space.count_free(s, e);
                if !advertised_free_holds(entry.free, count) {
                    return Err(violation(format!(
                        "own entry at {} advertises {} free, space has {count}",
                        pool.addr_at(s),
                        entry.free,
                    )));
                }
            }
            if !ring.members.contains(&entry.owner) {
                return Err(violation(format!("owner {} is not a member", entry.owner)));
            }
        }
        for (s, e) in self.space.free_spans() {
            if pool.is_reserved(s) || pool.is_reserved(e - 1) {
                return Err(violation("a reserved address is free"));
            }
            let (t, _) = ring.entry_containing(s);
            let mut t = t;
            while t < e {
                if ring.entries[&t].owner != self.me || self.deferred.contains(&t) {
                    return Err(violation(format!(
                        "free space at {} lies outside own ranges",
                        pool.addr_at(t.max(s))
                    )));
                }
                t = ring.end_of(t);
            }
        }
        for (key, off) in self.space.allocations() {
            let (t, entry) = ring.entry_containing(off);
            if pool.is_reserved(off) || self.space.is_free(off) || entry.owner != self.me || self.deferred.contains(&t)
            {
                return Err(violation(format!(
                    "allocation {key} at {} is misplaced",
                    pool.addr_at(off)
                )));
            }
        }
        if usable_owned != self.space.free_total() + self.space.allocated() as u128 + held_total {
            return Err(violation(format!(
                "own ranges hold {usable_owned} usable addresses but {} free + {} allocated + {held_total} held",
                self.space.free_total(),
                self.space.allocated()
            )));
        }
        Ok(())
    }

    // ---- helpers ----

    /// The removed router a held address came from.
    fn held_from(&self, off: u128) -> Option<PeerName> {
        self.held
            .range(..=off)
            .next_back()
            .filter(|(_, (e, _))| off < *e)
            .map(|(_, (_, from))| *from)
    }

    /// If the ring says this router was removed and it has not stopped yet:
    /// stops. It writes its surrender (its free space, which it will never
    /// use) and forgets its space, so it allocates, releases and donates
    /// nothing more and accepts the takeover of its entries. Its allocations
    /// stay held by its heir. Returns whether it stopped now.
    fn stop_if_removed(&mut self) -> bool {
        let me = self.me;
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        let keeps_space = self.space != Space::default() || !self.held.is_empty() || !self.deferred.is_empty();
        if !ring.is_removed(me) || (!keeps_space && ring.surrenders.get(&me).is_some_and(|s| s.by_self)) {
            return false;
        }
        let mut s = Surrender {
            by_self: true,
            ..Surrender::default()
        };
        s.spans.extend(self.space.free_spans());
        ring.surrenders.entry(me).or_default().join(&s);
        self.forget_own_space();
        true
    }

    fn forget_own_space(&mut self) {
        self.space = Space::default();
        self.deferred.clear();
        self.held.clear();
    }

    /// Frees what the surrenders allow of the spans this router holds, and
    /// advertises the new free counts. Returns whether anything was freed.
    fn free_surrendered(&mut self) -> bool {
        let me = self.me;
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        if self.held.is_empty() || ring.is_removed(me) {
            return false;
        }
        // Per held span, the parts its router's surrender frees, and the
        // surrenders of the heirs of earlier rounds of its reclaim too: such
        // an heir may have freed and allocated them before it stopped.
        // (held start, held end, its router, the freed parts).
        type Freed = (u128, u128, PeerName, Vec<(u128, u128)>);
        let mut plan: Vec<Freed> = Vec::new();
        for (s, (e, from)) in &self.held {
            let mut parts = surrendered_parts(ring, *from, *s, *e);
            for earlier in ring.earlier_heirs(*from) {
                if parts.is_empty() {
                    break;
                }
                parts = intersect(&parts, &surrendered_parts(ring, earlier, *s, *e));
            }
            if parts.is_empty() {
                continue;
            }
            plan.push((*s, *e, *from, parts));
        }
        if plan.is_empty() {
            return false;
        }
        let mut freed = Vec::new();
        for (s, e, from, parts) in plan {
            self.held.remove(&s);
            let mut at = s;
            for (x, y) in parts {
                if at < x {
                    self.held.insert(at, (x, from));
                }
                self.space.add_free(x, y);
                freed.push((x, y));
                at = y;
            }
            if at < e {
                self.held.insert(at, (e, from));
            }
        }
        let merged = freed;
        // Recount the free addresses of every own entry the freed spans touch.
        let mut tokens = BTreeSet::new();
        for &(x, y) in &merged {
            tokens.insert(ring.entry_containing(x).0);
            tokens.extend(ring.entries.range(x..y).map(|(t, _)| *t));
        }
        for t in tokens {
            let end = ring.end_of(t);
            ring.write(t, me, me, self.space.count_free(t, end));
        }
        true
    }

    /// The answer when this router has no space for `want` in `[s, e)`: the peer to ask, or exhaustion.
    fn no_space(&self, want: Want, s: u128, e: u128) -> AllocError {
        let ring = self.ring.as_ref().expect("callers checked");
        let peer = match want {
            Want::Any => self.choose_donor(),
            _ => ring
                .spans()
                .filter(|(a, b, en)| *a < e && s < *b && en.owner != self.me && en.free > 0)
                .map(|(_, _, en)| en.owner)
                .find(|p| !ring.is_removed(*p)),
        };
        match peer {
            Some(peer) => AllocError::AskPeer { peer, want },
            None => AllocError::Exhausted,
        }
    }

    /// Moves free `[s, e)` of this router's space to `to` in the ring.
    fn hand_over(&mut self, s: u128, e: u128, to: PeerName) {
        let me = self.me;
        self.space.remove_free(s, e);
        let ring = self.ring.as_mut().expect("callers checked");
        let pool = ring.pool;
        let split_start = ring.split_at(s, 0);
        let split_end = e < pool.size() && ring.split_at(e, 0);
        let tokens: Vec<u128> = ring.entries.range(s..e).map(|(t, _)| *t).collect();
        for t in tokens {
            let end = ring.end_of(t);
            ring.write(t, me, to, end - t - pool.reserved_in(t, end));
        }
        // The remainders on either side are still ours; recount their free space.
        let mut mine = Vec::with_capacity(2);
        if split_start && s > 0 {
            mine.push(ring.entry_containing(s - 1).0);
        }
        if split_end {
            mine.push(e);
        }
        for t in mine {
            let end = ring.end_of(t);
            ring.write(t, me, me, self.space.count_free(t, end));
        }
        ring.members.insert(to);
    }

    /// Votes on every pending reclaim and completes those where this router
    /// is the agreed heir. Returns (whether the ring changed, reclaimed routers).
    fn settle_reclaims(&mut self) -> (bool, Vec<PeerName>) {
        let me = self.me;
        let Some(ring) = self.ring.as_mut() else {
            return (false, Vec::new());
        };
        if ring.removals.is_empty() || !ring.members.contains(&me) || ring.is_removed(me) {
            return (false, Vec::new());
        }
        let pending: Vec<PeerName> = ring
            .removals
            .iter()
            .filter(|(_, r)| matches!(r, Removal::Pending { .. }))
            .map(|(d, _)| *d)
            .collect();
        let mut changed = false;
        let mut reclaimed = Vec::new();
        for dead in pending {
            // Every proposed heir was itself removed: the operator's intent
            // stands, so propose ourselves (the lowest live proposal wins).
            let candidate = match ring.candidate(dead) {
                Some(c) => c,
                None => {
                    if let Some(Removal::Pending { proposals, .. }) = ring.removals.get_mut(&dead) {
                        proposals.insert(me);
                    }
                    changed = true;
                    me
                }
            };
            // A vote counts only in its round: vote again when it moved.
            let round = ring.round_for(dead);
            let Some(Removal::Pending { votes, .. }) = ring.removals.get_mut(&dead) else {
                continue;
            };
            match votes.get(&me) {
                Some(v) if v.heir == candidate && v.round == round => {}
                other => {
                    let seq = other.map_or(1, |v| v.seq + 1);
                    votes.insert(
                        me,
                        Vote {
                            seq,
                            heir: candidate,
                            round,
                        },
                    );
                    changed = true;
                }
            }
            if candidate != me {
                continue;
            }
            let Some(Removal::Pending { votes, .. }) = ring.removals.get(&dead) else {
                continue;
            };
            if ring
                .voters_for(dead)
                .all(|v| votes.get(&v).is_some_and(|x| x.heir == me && x.round == round))
            {
                take_over(ring, &mut self.held, me, dead, round);
                reclaimed.push(dead);
                changed = true;
            }
        }
        // Ranges of a removed router that surfaced after its reclaim was
        // done (its last state relayed late): whoever holds what it left
        // takes them too. No live router can hold them: every voter's state
        // was in the heir's view, and what arrived later was fenced.
        let leftovers: BTreeSet<PeerName> = ring
            .entries
            .values()
            .filter(|e| {
                matches!(ring.removals.get(&e.owner), Some(Removal::Done { .. }))
                    && ring.final_heir(e.owner) == Some(me)
                    && takeable(ring, e, e.owner)
            })
            .map(|e| e.owner)
            .collect();
        for dead in leftovers {
            // In the record's round, so that they dominate whatever an
            // earlier round's line took of them.
            let Some(&Removal::Done { round, .. }) = ring.removals.get(&dead) else {
                continue;
            };
            let more = take_all(ring, &mut self.held, me, dead, round);
            if let Some(Removal::Done { taken, .. }) = ring.removals.get_mut(&dead) {
                taken.extend(more);
            }
            changed = true;
        }
        (changed, reclaimed)
    }
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("me", &self.me)
            .field("ring", &self.ring)
            .field("allocated", &self.space.allocated())
            .field("free", &self.space.free_total())
            .finish()
    }
}

/// The heir's act: every entry of `dead` becomes `heir`'s, held (not free:
/// `dead` may be alive and cut off, with pods on its addresses), `round`
/// epochs up, and the record is final with the ranges taken. `dead`'s
/// surrender frees what it may ([`Replica::free_surrendered`]).
fn take_over(ring: &mut Ring, held: &mut BTreeMap<u128, (u128, PeerName)>, heir: PeerName, dead: PeerName, round: u32) {
    let taken = take_all(ring, held, heir, dead, round);
    ring.removals.insert(
        dead,
        Removal::Done {
            heir,
            round,
            taken,
            earlier: BTreeMap::new(),
        },
    );
}

/// Whether `e` is `dead`'s and may be taken now. Not while it was written by
/// another router whose removal is pending (its donation, learned late): the
/// fence of [`Replica::merge`] for takeovers. That reclaim's heir may take the
/// range from a view without the donation; once it is done, the entry is
/// either stale or a leftover taken then.
fn takeable(ring: &Ring, e: &Entry, dead: PeerName) -> bool {
    e.owner == dead && (e.writer == dead || !ring.is_pending_removal(e.writer))
}

/// Rewrites every [takeable](takeable) entry of `dead` as `taker`'s,
/// `round` epochs up ([`Ring::take`]), and adds it to `held`.
fn take_all(
    ring: &mut Ring,
    held: &mut BTreeMap<u128, (u128, PeerName)>,
    taker: PeerName,
    dead: PeerName,
    round: u32,
) -> BTreeSet<Taken> {
    let pool = ring.pool;
    let tokens: Vec<u128> = ring
        .entries
        .iter()
        .filter(|(_, e)| takeable(ring, e, dead))
        .map(|(t, _)| *t)
        .collect();
    let mut taken = BTreeSet::new();
    for t in tokens {
        let k = ring.take(t, taker, round);
        let s = if k.start == 0 { 1 } else { k.start };
        let e = if k.end == pool.size() { k.end - 1 } else { k.end };
        if s < e {
            held.insert(s, (e, dead));
        }
        taken.insert(k);
    }
    taken
}

/// The parts of `[s, e)` that `who`'s surrender covers (everything if it
/// surrendered all), ascending, disjoint and not adjacent; empty without a
/// surrender.
fn surrendered_parts(ring: &Ring, who: PeerName, s: u128, e: u128) -> Vec<(u128, u128)> {
    let Some(sur) = ring.surrender_of(who) else {
        return Vec::new();
    };
    if sur.all {
        return vec![(s, e)];
    }
    // Surrendered spans may overlap (a grow-only set): merge them.
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (x, y) in sur.spans.iter().map(|(a, b)| ((*a).max(s), (*b).min(e))) {
        if x >= y {
            continue;
        }
        match merged.last_mut() {
            Some(last) if x <= last.1 => last.1 = last.1.max(y),
            _ => merged.push((x, y)),
        }
    }
    merged
}

/// The intersection of two ascending, disjoint lists of spans.
fn intersect(a: &[(u128, u128)], b: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if x < y {
            out.push((x, y));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Adds newly owned `[s, e)` to `space` as free, minus the reserved addresses.
pub(crate) fn add_owned(space: &mut Space, pool: Pool, s: u128, e: u128) {
    let s = if s == 0 { 1 } else { s };
    let e = if e == pool.size() { e - 1 } else { e };
    space.add_free(s, e);
}

/// Where to cut a free range `[s, e)`: the donor keeps the part below and
/// gives the part above, at least half, cut on the most aligned boundary
/// that leaves the donor something (so ranges stay CIDR-like).
fn split_point(s: u128, e: u128) -> u128 {
    let len = e - s;
    if len <= 1 {
        return s;
    }
    let mid = e - len / 2;
    let mut align = 1u128 << (127 - (len / 2).leading_zeros());
    while align > 1 {
        let m = mid / align * align;
        if m > s {
            return m;
        }
        align >>= 1;
    }
    mid
}

fn violation(s: impl Into<String>) -> Violation {
    Violation(s.into())
}

/// A broken replica invariant, found by [`Replica::verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IPAM invariant broken: {0}")]
pub struct Violation(String);

/// Why an allocation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// No ring yet: this router has not created or joined one.
    #[error("the address ring does not exist yet: the router has not agreed on one with its peers")]
    NoRing,
    /// This router was removed from the ring and may not allocate.
    #[error(
        "this router was removed from the address ring (weft rmpeer ran against it), so it allocates and releases nothing: \
its pods keep their addresses (its heir holds them), but other routers no longer route to them. \
Run `weft reset` on this host (its pods' addresses are then freed), then launch it again to rejoin under a new name"
    )]
    Removed,
    /// The request lies outside the pool.
    #[error("{requested} is outside the pod range {pool}")]
    OutsidePool {
        /// What was asked for.
        requested: IpNet,
        /// The pool.
        pool: Pool,
    },
    /// The network or broadcast address of the pool.
    #[error("{addr} is the network or broadcast address of {pool}")]
    Reserved {
        /// The address.
        addr: IpAddr,
        /// The pool.
        pool: Pool,
    },
    /// The address is allocated to another key.
    #[error("{addr} is in use by {by}")]
    InUse {
        /// The address.
        addr: IpAddr,
        /// Who holds it.
        by: Box<AllocKey>,
    },
    /// The key already holds a different address.
    #[error("{key} already has {addr}; release it first")]
    KeyBound {
        /// The key.
        key: Box<AllocKey>,
        /// Its address.
        addr: IpAddr,
    },
    /// The space is another router's: ask it to donate `want`, merge its
    /// ring, and allocate again.
    #[error("the space is owned by router {peer}; it must be asked to donate")]
    AskPeer {
        /// Whom to ask.
        peer: PeerName,
        /// What to ask for.
        want: Want,
    },
    /// No router known has free space for the request.
    #[error("no free addresses left for this request in the pod range")]
    Exhausted,
    /// The address is held for a removed router that may still use it.
    #[error(
        "{addr} is held for removed router {from}, which may still use it; it is freed when {from} hears of its removal or is reset, or when an operator confirms {from} gone (weft rmpeer --gone)"
    )]
    Held {
        /// The address.
        addr: IpAddr,
        /// The removed router.
        from: PeerName,
    },
}

/// Why a donation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DonateError {
    /// No ring yet.
    #[error("the address ring does not exist yet")]
    NoRing,
    /// This router was removed from the ring.
    #[error("this router was removed from the address ring")]
    Removed,
    /// A router asked itself.
    #[error("a router cannot donate to itself")]
    ToSelf,
    /// The recipient was removed from the ring.
    #[error("router {0} was removed from the address ring")]
    RecipientRemoved(PeerName),
    /// This router has no free space.
    #[error("this router has no free addresses to give")]
    NothingFree,
    /// No free space in the requested subnet.
    #[error("this router has no free addresses in {0}")]
    NothingFreeIn(IpNet),
    /// The request lies outside the pool.
    #[error("{0} is outside the pod range")]
    OutsidePool(IpNet),
    /// The requested address belongs to someone else.
    #[error("the address belongs to router {owner}")]
    NotOwner {
        /// Its owner.
        owner: PeerName,
    },
    /// The requested address is allocated.
    #[error("{addr} is in use by {by}")]
    InUse {
        /// The address.
        addr: IpAddr,
        /// Who holds it.
        by: Box<AllocKey>,
    },
    /// The requested address is the network or broadcast address.
    #[error("{0} is the network or broadcast address of the pod range")]
    Reserved(IpAddr),
    /// The address is held for a removed router that may still use it.
    #[error("{addr} is held for removed router {from}, which may still use it")]
    Held {
        /// The address.
        addr: IpAddr,
        /// The removed router.
        from: PeerName,
    },
}

/// Why a reclaim could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReclaimError {
    /// No ring yet.
    #[error("the address ring does not exist yet")]
    NoRing,
    /// A router cannot remove itself this way (use a graceful leave).
    #[error("a router cannot reclaim its own ranges")]
    IsSelf,
    /// This router was itself removed.
    #[error("this router was removed from the address ring")]
    Removed,
    /// The name never owned space in this ring.
    #[error("router {0} never owned space in this ring")]
    UnknownPeer(PeerName),
    /// Every member is removed: nobody can inherit.
    #[error("no live member is left to inherit the ranges")]
    NoVoters,
    /// This router never owned space in this ring: it has nothing to hand
    /// over, and no removal to record.
    #[error("this router never owned space in this ring: it has nothing to hand over")]
    NotAMember,
    /// The router was not removed: remove it first (`weft rmpeer`).
    #[error("router {0} was not removed from the address ring; remove it first")]
    NotRemoved(PeerName),
}

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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Two replicas of one fresh ring over a /22, split between p(1) and p(2).
    fn pair() -> (Replica, Replica) {
        let a = Replica::create(p(1), pool("10.32.0.0/22"), &[p(1), p(2)]).unwrap();
        let mut b = Replica::new(p(2));
        let _ = b.merge(a.ring().unwrap()).unwrap();
        (a, b)
    }

    fn sync(a: &mut Replica, b: &mut Replica) {
        let _ = b.merge(a.ring().unwrap()).unwrap();
        let _ = a.merge(b.ring().unwrap()).unwrap();
        a.verify().unwrap();
        b.verify().unwrap();
    }

    #[test]
    fn allocation_is_idempotent_per_key_and_skips_network_address() {
        let (mut a, _) = pair();
        let first = a.allocate(key("c1"), Request::Any).unwrap();
        assert_eq!(first.addr, ip("10.32.0.1"), "10.32.0.0 is the network address");
        assert_eq!(first.prefix_len, 22);
        assert!(!first.existing);
        let again = a.allocate(key("c1"), Request::Any).unwrap();
        assert_eq!(again.addr, first.addr);
        assert!(again.existing);
        let other = a.allocate(AllocKey::new("c1", "eth1").unwrap(), Request::Any).unwrap();
        assert_eq!(other.addr, ip("10.32.0.2"));
        a.verify().unwrap();
    }

    #[test]
    fn specific_address_honoured_or_refused_with_reason() {
        let (mut a, _) = pair();
        assert_eq!(
            a.allocate(key("c1"), Request::Addr(ip("10.32.1.7"))).unwrap().addr,
            ip("10.32.1.7")
        );
        assert!(matches!(
            a.allocate(key("c2"), Request::Addr(ip("10.32.1.7"))),
            Err(AllocError::InUse { by, .. }) if *by == key("c1")
        ));
        assert!(matches!(
            a.allocate(key("c2"), Request::Addr(ip("10.32.0.0"))),
            Err(AllocError::Reserved { .. })
        ));
        assert!(matches!(
            a.allocate(key("c2"), Request::Addr(ip("10.40.0.1"))),
            Err(AllocError::OutsidePool { .. })
        ));
        assert_eq!(
            a.allocate(key("c2"), Request::Addr(ip("10.32.2.9"))),
            Err(AllocError::AskPeer {
                peer: p(2),
                want: Want::Addr(ip("10.32.2.9"))
            })
        );
        assert!(matches!(
            a.allocate(key("c1"), Request::Addr(ip("10.32.1.8"))),
            Err(AllocError::KeyBound { .. })
        ));
        a.verify().unwrap();
    }

    #[test]
    fn broadcast_address_is_never_handed_out() {
        let (_, mut b) = pair();
        assert!(matches!(
            b.allocate(key("x"), Request::Addr(ip("10.32.3.255"))),
            Err(AllocError::Reserved { .. })
        ));
        let mut last = None;
        for i in 0..511 {
            last = Some(b.allocate(key(&format!("c{i}")), Request::Any).unwrap().addr);
        }
        assert_eq!(last, Some(ip("10.32.3.254")));
        assert_eq!(b.free(), 0);
        // p(1) has the most free space, so b is told to ask it.
        assert_eq!(
            b.allocate(key("more"), Request::Any),
            Err(AllocError::AskPeer {
                peer: p(1),
                want: Want::Any
            })
        );
        b.verify().unwrap();
    }

    #[test]
    fn donor_choice_under_a_filter_keeps_the_order() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3), p(4)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        // Quarters of 256; the network and broadcast addresses are p(1)'s and p(4)'s.
        assert_eq!(
            a.donors().collect::<Vec<_>>(),
            vec![(p(2), 256), (p(3), 256), (p(4), 255)],
            "never itself"
        );
        assert_eq!(a.choose_donor(), Some(p(2)), "lowest name on ties");
        assert_eq!(a.choose_donor_where(|d| d != p(2)), Some(p(3)));
        // 40 allocations take p(2) out of its advertised count's band: it
        // advertises 223, the count when it left it.
        for i in 0..40 {
            b.allocate(key(&format!("b{i}")), Request::Any).unwrap();
        }
        let _ = a.merge(b.ring().unwrap()).unwrap();
        assert_eq!(a.donors().next(), Some((p(2), 223)));
        assert_eq!(a.choose_donor(), Some(p(3)));
        assert_eq!(a.choose_donor_where(|d| d != p(3)), Some(p(4)), "255 free beats 223");
        assert_eq!(a.choose_donor_where(|d| d == p(2)), Some(p(2)));
        assert_eq!(a.choose_donor_where(|_| false), None);
        a.begin_reclaim(p(3)).unwrap();
        assert!(a.donors().all(|(d, _)| d != p(3)), "a removed router gives nothing");
        assert_eq!(a.choose_donor_where(|d| d != p(4)), Some(p(2)));
        // Drained of free space, a router is no donor either.
        for i in 0..216 {
            b.allocate(key(&format!("c{i}")), Request::Any).unwrap();
        }
        let _ = a.merge(b.ring().unwrap()).unwrap();
        assert_eq!(a.donors().collect::<Vec<_>>(), vec![(p(4), 255)]);
        assert_eq!(a.choose_donor_where(|d| d != p(4)), None);
        assert_eq!(Replica::new(p(9)).choose_donor_where(|_| true), None, "no ring");
    }

    #[test]
    fn an_owner_rewrites_its_entry_only_when_its_free_count_leaves_the_band() {
        for c in 0..16 {
            assert!(advertised_free_holds(c, c));
            assert!(!advertised_free_holds(c, c + 1) && !advertised_free_holds(c + 1, c));
        }
        assert!(advertised_free_holds(16, 18) && !advertised_free_holds(16, 19) && !advertised_free_holds(16, 15));
        assert!(advertised_free_holds(511, 448) && !advertised_free_holds(511, 447));
        assert!(advertised_free_holds(511, 574) && !advertised_free_holds(511, 575));
        assert!(advertised_free_holds(u128::MAX, u128::MAX - (u128::MAX >> 3)));

        let (mut a, mut b) = pair();
        let entry = |a: &Replica| {
            let e = a.ring().unwrap().entries[&0];
            (e.version, e.free)
        };
        assert_eq!(entry(&a), (1, 511), "the ring's creation states the exact count");
        let mut writes = 0;
        for i in 0..511 {
            let before = entry(&a);
            a.allocate(key(&format!("a{i}")), Request::Any).unwrap();
            a.verify().unwrap();
            let after = entry(&a);
            assert!(advertised_free_holds(after.1, a.free()));
            if after != before {
                assert_eq!(after, (before.0 + 1, a.free()), "a rewrite states the exact count");
                writes += 1;
            }
            match i {
                62 => assert_eq!(after, (1, 511), "448 free: no rewrite yet"),
                63 => assert_eq!(after, (2, 447), "447 free"),
                _ => {}
            }
        }
        // Each rewrite more than an eighth below the last, from 511 down to
        // 16, then one for each of the last 16.
        assert_eq!(writes, 40);
        assert_eq!(entry(&a).1, 0, "nothing free is advertised exactly");
        let _ = b.merge(a.ring().unwrap()).unwrap();
        assert!(b.donors().all(|(d, _)| d != p(1)));
        assert!(a.release(&key("a7")).is_some());
        assert_eq!(entry(&a).1, 1);
        let _ = b.merge(a.ring().unwrap()).unwrap();
        assert_eq!(
            b.choose_donor_where(|d| d == p(1)),
            Some(p(1)),
            "one free address makes a donor"
        );
        a.verify().unwrap();
    }

    #[test]
    fn release_frees_and_is_idempotent() {
        let (mut a, _) = pair();
        let addr = a.allocate(key("c1"), Request::Any).unwrap().addr;
        let free = a.free();
        assert_eq!(a.release(&key("c1")), Some(addr));
        assert_eq!(a.free(), free + 1);
        assert_eq!(a.release(&key("c1")), None);
        assert_eq!(a.allocate(key("c2"), Request::Any).unwrap().addr, addr);
        a.verify().unwrap();
    }

    #[test]
    fn donation_moves_free_space_only() {
        let (mut a, mut b) = pair();
        for i in 0..10 {
            a.allocate(key(&format!("a{i}")), Request::Any).unwrap();
        }
        let d = a.donate(p(2), Want::Any).unwrap();
        assert_eq!(
            d.range.to_string(),
            "10.32.1.0-10.32.1.255",
            "upper half of a's largest free range, aligned"
        );
        a.verify().unwrap();
        let out = b.merge(a.ring().unwrap()).unwrap();
        assert_eq!(out.gained, vec![d.range]);
        b.verify().unwrap();
        assert_eq!(b.ring().unwrap().owner_of(ip("10.32.1.9")), Some(p(2)));
        assert_eq!(
            b.allocate(key("b"), Request::Addr(ip("10.32.1.9"))).unwrap().addr,
            ip("10.32.1.9")
        );
        for (k, addr) in a.allocations() {
            assert_eq!(
                a.ring().unwrap().owner_of(addr),
                Some(p(1)),
                "{k} stayed with its owner"
            );
        }
        sync(&mut a, &mut b);
    }

    #[test]
    fn claim_specific_address_from_its_owner() {
        let (mut a, mut b) = pair();
        let want = match a.allocate(key("c"), Request::Addr(ip("10.32.2.9"))) {
            Err(AllocError::AskPeer { peer, want }) => {
                assert_eq!(peer, p(2));
                want
            }
            other => panic!("expected AskPeer, got {other:?}"),
        };
        let d = b.donate(p(1), want).unwrap();
        assert_eq!(d.range.to_string(), "10.32.2.9-10.32.2.9");
        let out = a.merge(b.ring().unwrap()).unwrap();
        assert_eq!(out.gained.len(), 1);
        assert_eq!(
            a.allocate(key("c"), Request::Addr(ip("10.32.2.9"))).unwrap().addr,
            ip("10.32.2.9")
        );
        sync(&mut a, &mut b);
        // A held address is refused with the reason.
        b.allocate(key("held"), Request::Addr(ip("10.32.2.10"))).unwrap();
        assert!(matches!(
            b.donate(p(1), Want::Addr(ip("10.32.2.10"))),
            Err(DonateError::InUse { by, .. }) if *by == key("held")
        ));
    }

    #[test]
    fn claim_subnet_from_its_owner() {
        let (mut a, mut b) = pair();
        let net: IpNet = "10.32.3.0/28".parse().unwrap();
        let Err(AllocError::AskPeer { peer, want }) = a.allocate(key("c"), Request::Within(net)) else {
            panic!("expected AskPeer")
        };
        assert_eq!(peer, p(2));
        let d = b.donate(p(1), want).unwrap();
        // The subnet's own network and broadcast addresses are not host addresses in it.
        assert_eq!(d.range.to_string(), "10.32.3.1-10.32.3.14");
        let _ = a.merge(b.ring().unwrap()).unwrap();
        let got = a.allocate(key("c"), Request::Within(net)).unwrap();
        assert_eq!(got.addr.to_string(), "10.32.3.1");
        sync(&mut a, &mut b);
    }

    #[test]
    fn merge_refuses_changes_to_own_entries() {
        let (mut a, b) = pair();
        let mut forged = b.ring().unwrap().clone();
        forged.write(0, p(2), p(2), 5);
        let before = a.clone();
        assert!(matches!(a.merge(&forged), Err(MergeError::OwnEntryChanged { .. })));
        assert_eq!(a, before);
        let mut split = b.ring().unwrap().clone();
        split.split_at(100, 0);
        split.write(100, p(2), p(2), 0);
        assert!(matches!(a.merge(&split), Err(MergeError::OwnRangeSplit { .. })));
        assert_eq!(a, before);
    }

    #[test]
    fn reclaim_needs_every_live_vote_then_heir_takes_over() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        // p(3) is dead. a starts the reclaim; it cannot finish without b's vote.
        let st = a.begin_reclaim(p(3)).unwrap();
        assert_eq!(
            st,
            ReclaimStatus::Pending {
                candidate: Some(p(1)),
                waiting_for: vec![p(2)]
            }
        );
        assert_eq!(a.ring().unwrap().owners()[&p(3)].ranges, 1);
        // b sees it and votes.
        let out = b.merge(a.ring().unwrap()).unwrap();
        assert!(out.changed && out.reclaimed.is_empty());
        let out = a.merge(b.ring().unwrap()).unwrap();
        assert_eq!(out.reclaimed, vec![p(3)]);
        assert!(!a.ring().unwrap().owners().contains_key(&p(3)));
        a.verify().unwrap();
        assert_eq!(
            a.ring().unwrap().reclaim_status(p(3)),
            Some(ReclaimStatus::Done { heir: p(1) })
        );
        let _ = b.merge(a.ring().unwrap()).unwrap();
        assert_eq!(a.ring(), b.ring());
        // The heir holds the range: p(3) may be alive and cut off, with pods on it.
        assert_eq!(a.held().get(&p(3)).copied(), Some(341));
        assert_eq!(
            a.allocate(key("x"), Request::Addr(ip("10.32.3.1"))),
            Err(AllocError::Held {
                addr: ip("10.32.3.1"),
                from: p(3)
            })
        );
        assert_eq!(
            a.ring().unwrap().owners()[&p(1)].free,
            a.free(),
            "held space is not advertised"
        );
        // The operator confirms p(3) gone: the heir allocates from the reclaimed range.
        assert_eq!(b.confirm_gone(p(3)), Ok(true));
        let _ = a.merge(b.ring().unwrap()).unwrap();
        a.verify().unwrap();
        assert!(a.held().is_empty());
        assert_eq!(
            a.allocate(key("x"), Request::Addr(ip("10.32.3.1"))).unwrap().addr,
            ip("10.32.3.1")
        );
        let _ = b.merge(a.ring().unwrap()).unwrap();
        assert_eq!(a.ring(), b.ring());
    }

    #[test]
    fn concurrent_reclaims_agree_on_one_heir() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3), p(4)];
        let mut reps: Vec<_> = (1..=3).map(|i| Replica::create(p(i), pl, &seeds).unwrap()).collect();
        // p(4) died; p(3) and p(2) start reclaims on opposite sides of a partition.
        reps[2].begin_reclaim(p(4)).unwrap();
        reps[1].begin_reclaim(p(4)).unwrap();
        // Full exchange until quiet.
        for _ in 0..4 {
            for i in 0..3 {
                for j in 0..3 {
                    if i != j {
                        let r = reps[i].ring().unwrap().clone();
                        let _ = reps[j].merge(&r).unwrap();
                    }
                }
            }
        }
        for r in &reps {
            r.verify().unwrap();
            assert_eq!(
                r.ring().unwrap().reclaim_status(p(4)),
                Some(ReclaimStatus::Done { heir: p(2) })
            );
            assert_eq!(r.ring(), reps[0].ring());
        }
    }

    /// An operator wrongly removes the live router a while it is cut off. a
    /// allocates during the cut; the heir takes a's ranges held, never free;
    /// once a hears of its removal it stops and surrenders its free space,
    /// the heir frees that and keeps a's pods' addresses held; all converge.
    #[test]
    fn removed_while_alive_no_duplicate_and_converges() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        let mut c = Replica::create(p(3), pl, &seeds).unwrap();
        let before = a.allocate(key("before"), Request::Any).unwrap().addr;
        let _ = b.merge(a.ring().unwrap()).unwrap();
        // The cut: b removes a; c votes; b takes a's ranges.
        b.begin_reclaim(p(1)).unwrap();
        let during = a.allocate(key("during"), Request::Any).unwrap().addr;
        let _ = c.merge(b.ring().unwrap()).unwrap();
        let out = b.merge(c.ring().unwrap()).unwrap();
        assert_eq!(out.reclaimed, vec![p(1)]);
        b.verify().unwrap();
        assert_eq!(b.held().get(&p(1)).copied(), Some(340));
        // The heir hands out nothing of a's range meanwhile.
        for i in 0..600 {
            match b.allocate(key(&format!("b{i}")), Request::Any) {
                Ok(x) => assert_eq!(b.ring().unwrap().owner_of(x.addr), Some(p(2)), "{}", x.addr),
                Err(AllocError::AskPeer { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(matches!(
            b.allocate(key("x"), Request::Addr(during)),
            Err(AllocError::Held { from, .. }) if from == p(1)
        ));
        // The heal: a hears of its removal and the takeover, and accepts it.
        let out = a.merge(b.ring().unwrap()).unwrap();
        assert!(out.changed);
        assert!(a.is_removed());
        a.verify().unwrap();
        assert_eq!(a.allocated(), 0, "a forgot its space");
        assert_eq!(a.allocate(key("after"), Request::Any), Err(AllocError::Removed));
        assert_eq!(a.release(&key("before")), None);
        assert_eq!(a.donate(p(2), Want::Any), Err(DonateError::Removed));
        // b learns of a's surrender: it frees all but a's two addresses.
        let _ = b.merge(a.ring().unwrap()).unwrap();
        b.verify().unwrap();
        assert_eq!(b.held().get(&p(1)).copied(), Some(2));
        for addr in [before, during] {
            assert!(matches!(
                b.allocate(key("y"), Request::Addr(addr)),
                Err(AllocError::Held { .. })
            ));
        }
        let got = b.allocate(key("z"), Request::Addr(ip("10.32.0.200"))).unwrap();
        assert_eq!(got.addr, ip("10.32.0.200"));
        for _ in 0..2 {
            let _ = c.merge(b.ring().unwrap()).unwrap();
            let _ = a.merge(c.ring().unwrap()).unwrap();
            let _ = b.merge(a.ring().unwrap()).unwrap();
        }
        assert_eq!(a.ring(), b.ring());
        assert_eq!(b.ring(), c.ring());
        // a is reset: its pods are gone, and b may use their addresses.
        assert_eq!(a.surrender_all(), Ok(true));
        let _ = b.merge(a.ring().unwrap()).unwrap();
        b.verify().unwrap();
        assert!(b.held().is_empty());
        assert_eq!(b.allocate(key("w"), Request::Addr(during)).unwrap().addr, during);
    }

    /// A removed heir stays the candidate until it is known to have stopped:
    /// alive and cut off, it may still act, and moving the votes to another
    /// heir could let two heirs take the same ranges.
    #[test]
    fn a_removed_heir_is_replaced_only_once_it_stopped() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3), p(4)];
        let mut r: Vec<Replica> = (1..=4).map(|i| Replica::create(p(i), pl, &seeds).unwrap()).collect();
        // p(4) died; p(1) removes it, confirming it gone, proposes itself,
        // and then is wrongly removed by p(2).
        r[0].begin_reclaim(p(4)).unwrap();
        r[0].confirm_gone(p(4)).unwrap();
        let ring = r[0].ring().unwrap().clone();
        let _ = r[1].merge(&ring).unwrap();
        r[1].begin_reclaim(p(1)).unwrap();
        let ring = r[1].ring().unwrap().clone();
        let _ = r[2].merge(&ring).unwrap();
        assert!(
            matches!(
                r[2].ring().unwrap().reclaim_status(p(4)),
                Some(ReclaimStatus::Pending { candidate: Some(c), .. }) if c == p(1)
            ),
            "p(1) is still the candidate"
        );
        // p(1) hears of its removal and stops: the others move on.
        let ring = r[2].ring().unwrap().clone();
        let _ = r[0].merge(&ring).unwrap();
        assert!(r[0].is_removed());
        let ring = r[0].ring().unwrap().clone();
        for _ in 0..3 {
            let _ = r[1].merge(&ring).unwrap();
            let ring2 = r[1].ring().unwrap().clone();
            let _ = r[2].merge(&ring2).unwrap();
            let ring3 = r[2].ring().unwrap().clone();
            let _ = r[1].merge(&ring3).unwrap();
        }
        for i in [1, 2] {
            let st = r[i].ring().unwrap().reclaims();
            assert!(st.values().all(|s| matches!(s, ReclaimStatus::Done { .. })), "{st:?}");
            r[i].verify().unwrap();
        }
        assert_eq!(r[1].ring(), r[2].ring());
    }

    #[test]
    fn leaving_hands_every_range_to_the_heir_once_all_vote() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        let mut c = Replica::create(p(3), pl, &seeds).unwrap();
        a.allocate(key("gone"), Request::Any).unwrap();
        let d = a.donate(p(3), Want::Any).unwrap();
        let _ = c.merge(a.ring().unwrap()).unwrap();
        let st = a.leave(p(2)).unwrap();
        assert_eq!(
            st,
            ReclaimStatus::Pending {
                candidate: Some(p(2)),
                waiting_for: vec![p(2), p(3)]
            }
        );
        assert!(a.is_removed());
        assert_eq!(a.allocate(key("x"), Request::Any), Err(AllocError::Removed));
        a.verify().unwrap();
        // The heir votes for itself, but c's vote is missing: nothing moves yet.
        let out = b.merge(a.ring().unwrap()).unwrap();
        assert!(out.gained.is_empty() && out.reclaimed.is_empty());
        let _ = c.merge(b.ring().unwrap()).unwrap();
        let out = b.merge(c.ring().unwrap()).unwrap();
        assert_eq!(out.reclaimed, vec![p(1)]);
        b.verify().unwrap();
        assert!(!b.ring().unwrap().owners().contains_key(&p(1)));
        assert_eq!(
            b.ring().unwrap().owner_of(d.range.first),
            Some(p(3)),
            "what a gave away stays given"
        );
        // The heir can allocate the address a's departed container held.
        assert_eq!(
            b.allocate(key("new"), Request::Addr(ip("10.32.0.1"))).unwrap().addr,
            ip("10.32.0.1")
        );
        let _ = c.merge(b.ring().unwrap()).unwrap();
        let _ = b.merge(c.ring().unwrap()).unwrap();
        assert_eq!(b.ring(), c.ring());
        assert_eq!(a.leave(p(2)), Err(ReclaimError::Removed), "leaving twice is refused");
        assert_eq!(
            c.leave(p(1)),
            Err(ReclaimError::UnknownPeer(p(1))),
            "a removed router cannot inherit"
        );
    }

    /// Names out of index order, as in the property tests: 40, 10, 30, 20.
    fn four() -> Vec<Replica> {
        let names = [40, 10, 30, 20].map(p);
        let genesis = Replica::create(names[0], pool("10.32.0.0/24"), &names).unwrap();
        names
            .iter()
            .map(|n| {
                let mut r = Replica::new(*n);
                let _ = r.merge(genesis.ring().unwrap()).unwrap();
                r
            })
            .collect()
    }

    /// The name of replica `i` of [`four`].
    fn n(i: usize) -> PeerName {
        p([40, 10, 30, 20][i])
    }

    fn send(reps: &mut [Replica], from: usize, to: usize) {
        let ring = reps[from].ring().unwrap().clone();
        let _ = reps[to].merge(&ring).unwrap();
        reps[to].verify().unwrap();
    }

    fn heal(reps: &mut [Replica], live: &[usize]) {
        for _ in 0..6 {
            for &i in live {
                for &j in live {
                    if i != j {
                        send(reps, i, j);
                    }
                }
            }
        }
        for &i in live {
            assert_eq!(reps[i].ring(), reps[live[0]].ring(), "replicas converge");
            assert!(
                reps[i]
                    .ring()
                    .unwrap()
                    .reclaims()
                    .values()
                    .all(|s| matches!(s, ReclaimStatus::Done { .. }))
            );
        }
    }

    /// Found by the property tests: a voter learns the removed router's last
    /// state from a relay after it voted, and the relay then dies too. The
    /// heir acts on the older vote; the fence and the takeover epoch keep the
    /// rings mergeable and every range with one owner.
    #[test]
    fn late_state_through_a_dead_relay_is_fenced() {
        let mut r = four();
        r[0].allocate(key("c"), Request::Any).unwrap();
        r[0].leave(n(1)).unwrap();
        send(&mut r, 0, 1);
        // r0 is gone. r2 starts an rmpeer of it, r3 votes on what r2 showed it.
        r[2].begin_reclaim(n(0)).unwrap();
        send(&mut r, 2, 3);
        let d = r[3].donate(n(2), Want::Any).unwrap();
        send(&mut r, 3, 2);
        // r1 (which saw r0's leave) reaches r3, then dies.
        send(&mut r, 1, 3);
        // The operator removes r1 and confirms it gone (it is): a dead router
        // that never stopped would otherwise stay a voter.
        r[2].begin_reclaim(n(1)).unwrap();
        r[2].confirm_gone(n(1)).unwrap();
        heal(&mut r, &[2, 3]);
        let ring = r[2].ring().unwrap();
        assert!(!ring.owners().contains_key(&n(0)));
        assert!(!ring.owners().contains_key(&n(1)));
        assert_eq!(ring.owner_of(d.range.first), Some(n(2)));
    }

    /// A leave and an rmpeer of the same router, started apart, join into one reclaim.
    #[test]
    fn leave_and_rmpeer_of_one_router_do_not_race() {
        let mut r = four();
        r[2].leave(n(1)).unwrap();
        send(&mut r, 2, 1);
        r[0].begin_reclaim(n(2)).unwrap();
        send(&mut r, 0, 3);
        r[1].leave(n(3)).unwrap();
        send(&mut r, 1, 3);
        r[0].begin_reclaim(n(1)).unwrap();
        heal(&mut r, &[0, 3]);
        let ring = r[0].ring().unwrap();
        for gone in [1, 2] {
            assert!(!ring.owners().contains_key(&n(gone)));
        }
    }

    /// A router that adopted the ring but never owned space has nothing to
    /// hand over: its leave is refused, and the ring it holds still encodes
    /// (a removal naming a non-member once made encoding panic).
    #[test]
    fn a_router_that_never_owned_space_cannot_leave() {
        let pl = pool("10.32.0.0/22");
        let owner = Replica::create(p(1), pl, &[p(1)]).unwrap();
        let mut newcomer = Replica::new(p(2));
        let _ = newcomer.merge(owner.ring().unwrap()).unwrap();
        assert_eq!(newcomer.leave(p(1)), Err(ReclaimError::NotAMember));
        let decoded = Replica::decode(&newcomer.encode()).unwrap();
        assert_eq!(decoded.ring(), newcomer.ring());
    }

    /// A donation that arrives from a router whose removal is pending is not
    /// used until the reclaim is done, and then only if the heir left it alone.
    #[test]
    fn donation_seen_by_the_heir_is_kept_after_the_reclaim() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        let mut c = Replica::create(p(3), pl, &seeds).unwrap();
        let d = c.donate(p(2), Want::Any).unwrap();
        a.begin_reclaim(p(3)).unwrap();
        let _ = b.merge(a.ring().unwrap()).unwrap();
        let out = b.merge(c.ring().unwrap()).unwrap();
        assert!(out.gained.is_empty(), "fenced until the reclaim is done");
        // b's ring, now carrying the donation, reaches a: a leaves it to b.
        let out = a.merge(b.ring().unwrap()).unwrap();
        assert_eq!(out.reclaimed, vec![p(3)]);
        let out = b.merge(a.ring().unwrap()).unwrap();
        assert_eq!(out.gained, vec![d.range]);
        b.verify().unwrap();
        assert_eq!(
            b.allocate(key("x"), Request::Addr(d.range.first)).unwrap().addr,
            d.range.first
        );
    }

    /// When the heir acted without the late donation, the donation's token is
    /// stale inside the heir's takeover and vanishes; the fenced recipient
    /// never used it.
    #[test]
    fn donation_from_a_router_being_removed_waits_for_the_reclaim() {
        let pl = pool("10.32.0.0/22");
        let seeds = [p(1), p(2), p(3)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        let mut c = Replica::create(p(3), pl, &seeds).unwrap();
        // c donates to b, but that ring reaches b only after b voted on c's removal.
        let d = c.donate(p(2), Want::Any).unwrap();
        let late = c.ring().unwrap().clone();
        a.begin_reclaim(p(3)).unwrap();
        let _ = b.merge(a.ring().unwrap()).unwrap();
        let vote = b.ring().unwrap().clone();
        let free = b.free();
        let out = b.merge(&late).unwrap();
        assert!(out.gained.is_empty(), "fenced: {out:?}");
        assert_eq!(b.free(), free);
        b.verify().unwrap();
        // A copy of b's ring from before the donation arrived, with its vote,
        // was relayed to a: a acts on it and takes all of c's old range.
        let out = a.merge(&vote).unwrap();
        assert_eq!(out.reclaimed, vec![p(3)]);
        let out = b.merge(a.ring().unwrap()).unwrap();
        assert!(out.gained.is_empty());
        b.verify().unwrap();
        let _ = a.merge(b.ring().unwrap()).unwrap();
        assert_eq!(a.ring(), b.ring());
        assert_eq!(a.ring().unwrap().owner_of(d.range.first), Some(p(1)));
        assert!(!b.ring().unwrap().owners().contains_key(&p(3)));
    }

    /// Two completions of the reclaim of p(4), as in the property test
    /// `heir_record_relayed_by_a_stopped_router`: p(3) completes it in round
    /// 1, and its record reaches only p(2), which had stopped; p(3) dies and
    /// is confirmed gone, and p(1) completes its own reclaim and then p(4)'s,
    /// in round 2. p(4) stopped when it heard of its removal, with two pods.
    /// Returns (p(1), p(2), p(4)).
    fn two_completions() -> (Replica, Replica, Replica) {
        let pl = pool("10.32.0.0/24");
        let seeds = [p(1), p(2), p(3), p(4)];
        let mut a = Replica::create(p(1), pl, &seeds).unwrap();
        let mut b = Replica::create(p(2), pl, &seeds).unwrap();
        let mut c = Replica::create(p(3), pl, &seeds).unwrap();
        let mut d = Replica::create(p(4), pl, &seeds).unwrap();
        for pod in ["d1", "d2"] {
            d.allocate(key(pod), Request::Any).unwrap();
        }
        c.begin_reclaim(p(4)).unwrap();
        c.begin_reclaim(p(2)).unwrap();
        // d and b hear of their removals and stop; a votes p(3) as heir.
        let _ = d.merge(c.ring().unwrap()).unwrap();
        let _ = b.merge(d.ring().unwrap()).unwrap();
        assert!(b.is_removed() && d.is_removed());
        let _ = a.merge(b.ring().unwrap()).unwrap();
        let out = c.merge(a.ring().unwrap()).unwrap();
        assert!(out.reclaimed.contains(&p(4)), "{out:?}");
        assert!(matches!(
            c.ring().unwrap().removals[&p(4)],
            Removal::Done { heir, round: 1, .. } if heir == p(3)
        ));
        // Only the stopped b hears of it; then c dies.
        let _ = b.merge(c.ring().unwrap()).unwrap();
        drop(c);
        a.begin_reclaim(p(3)).unwrap();
        a.confirm_gone(p(3)).unwrap();
        a.verify().unwrap();
        // p(3)'s confirmation counts: p(1) completes in round 2, two epochs up.
        assert!(matches!(
            &a.ring().unwrap().removals[&p(4)],
            Removal::Done { heir, round: 2, earlier, .. } if *heir == p(1) && earlier.is_empty()
        ));
        assert_eq!(a.ring().unwrap().owner_of(ip("10.32.0.200")), Some(p(1)));
        assert_eq!(a.held().get(&p(4)).copied(), Some(2), "p(4)'s pods");
        (a, b, d)
    }

    /// Two completions of one reclaim join into the same ring in either
    /// order: the later round's heir and takeover win, the earlier heir is
    /// kept as earlier, and the latest heir accepts the earlier record.
    #[test]
    fn two_completions_of_one_reclaim_join_in_either_order() {
        let (mut a, b, _) = two_completions();
        let (ra, rb) = (a.ring().unwrap().clone(), b.ring().unwrap().clone());
        let mut ab = ra.clone();
        assert_eq!(ab.merge(&rb), Ok(true));
        let mut ba = rb.clone();
        assert_eq!(ba.merge(&ra), Ok(true));
        assert_eq!(ab, ba, "the join does not depend on the order");
        let mut again = ab.clone();
        assert_eq!(again.merge(&ra), Ok(false), "idempotent");
        assert_eq!(again.merge(&rb), Ok(false));
        assert!(matches!(
            &ab.removals[&p(4)],
            Removal::Done { heir, round: 2, earlier, .. }
                if *heir == p(1) && *earlier == BTreeMap::from([(1, p(3))])
        ));
        assert_eq!(ab.reclaim_status(p(4)), Some(ReclaimStatus::Done { heir: p(1) }));
        // The later takeover dominates the earlier one's entry, and the
        // latest heir's range stays whole.
        let r = ab.ranges().find(|r| r.range.first == ip("10.32.0.192")).unwrap();
        assert_eq!(
            (r.owner, r.epoch, r.range.to_string()),
            (p(1), 2, "10.32.0.192-10.32.0.255".to_owned())
        );
        let out = a.merge(&rb).unwrap();
        assert!(out.changed);
        a.verify().unwrap();
        assert_eq!(a.ring(), Some(&ab));
        assert_eq!(a.held().get(&p(4)).copied(), Some(2), "p(4)'s pods stay held");
    }

    /// The latest heir frees what it took only where the removed router's
    /// surrender and every earlier heir's cover it: an earlier heir may have
    /// freed and allocated those addresses before it stopped. (An earlier
    /// heir is confirmed gone when a later round completes, so in a real
    /// history its surrender is total; the rule does not lean on that. The
    /// earlier heir's surrender is forged here: it kept one of the two.)
    #[test]
    fn the_latest_heir_holds_for_an_earlier_heir() {
        let (mut a, b, mut d) = two_completions();
        let _ = a.merge(b.ring().unwrap()).unwrap();
        let held: Vec<AddrRange> = a.held_ranges().map(|(r, _)| r).collect();
        assert_eq!(held.len(), 1, "p(4)'s two pods, side by side");
        let (kept, free) = (held[0].first, held[0].last);
        assert_ne!(kept, free);
        let off = |addr| a.ring().unwrap().pool().offset_of(addr).unwrap();
        let spans = BTreeSet::from([(off(free), off(free) + 1)]);
        a.ring.as_mut().unwrap().surrenders.insert(
            p(3),
            Surrender {
                spans,
                all: false,
                by_self: true,
            },
        );
        // p(4) is reset: its pods are gone. p(3)'s may not be.
        assert_eq!(d.surrender_all(), Ok(true));
        let _ = a.merge(d.ring().unwrap()).unwrap();
        a.verify().unwrap();
        assert_eq!(a.held().get(&p(4)).copied(), Some(1));
        assert_eq!(
            a.allocate(key("x"), Request::Addr(kept)),
            Err(AllocError::Held { addr: kept, from: p(4) })
        );
        assert_eq!(a.allocate(key("y"), Request::Addr(free)).unwrap().addr, free);
        a.verify().unwrap();
    }

    #[test]
    fn split_point_prefers_aligned_halves() {
        assert_eq!(split_point(1, 1023), 512);
        assert_eq!(split_point(0, 1 << 20), 1 << 19);
        assert_eq!(split_point(5, 6), 5);
        assert_eq!(split_point(5, 8), 7);
        assert_eq!(split_point(11, 512), 256);
        for (s, e) in [(1, 3), (7, 100), (1000, 1001), (3, 1 << 19)] {
            let m = split_point(s, e);
            assert!(s <= m && m < e, "{s}..{e} -> {m}");
        }
    }

    #[test]
    fn key_validation() {
        assert!(AllocKey::new("", "eth0").is_err());
        assert!(AllocKey::new("c", "").is_err());
        assert!(AllocKey::new("c".repeat(257), "eth0").is_err());
        assert!(AllocKey::new("c\n", "eth0").is_err());
        assert!(AllocKey::new("c".repeat(256), "eth0").is_ok());
    }
}
