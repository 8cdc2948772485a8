//! # ipam-crdt: Weft's address-space ring
//!
//! Routers split the pod range (default `10.32.0.0/12`) between them with no
//! coordinator, and never hand one address to two pods. This crate is the
//! whole of that logic as plain data: **no I/O, no clock, no randomness**.
//! Everything is deterministic; the router shell feeds it messages and
//! carries out what it returns, and the simulator (`src/bin/ringsim.rs`)
//! runs hundreds of replicas in one process from a seed.
//!
//! ## The ring
//! [`Ring`] cuts the pool at *tokens*. The entry at token `t` covers
//! `[t, next token)` and records its owner, who wrote it, an epoch and a
//! version, and the free count the owner advertises
//! ([within an eighth](advertised_free_holds)). Token 0 always exists
//! (only tokens strictly inside a taken-over range are ever dropped), so
//! ownership is disjoint and covers the pool in every state, by construction.
//!
//! The ring is a state-based CRDT. Merge takes, token by token, the entry with
//! the higher (epoch, version); the member set only grows; reclaim records
//! only move forward (two completions of one reclaim join, below); a token
//! made stale by a takeover is dropped (below). Merge is therefore
//! idempotent, commutative and associative (the property tests check all
//! three). Two entries with the same version and
//! different contents cannot arise from a valid history and are refused.
//!
//! *Only the owner writes its entries.* A router allocates only inside the
//! ranges it owns in its own view, and ownership leaves a router only by that
//! router's own write (a donation), after which its view no longer claims the
//! range. A replica refuses any merge that would change or split its own
//! entries ([`MergeError::OwnEntryChanged`], [`MergeError::OwnRangeSplit`]),
//! so no merge can take space from under a live router. Hence at any moment
//! every address is claimed by at most one live router: no duplicates.
//!
//! ## Creation and identity
//! A ring is created once, from an explicit list of initial owners that
//! split the pool evenly in list order ([`Ring::new`]). Creation is
//! deterministic, so routers that agreed on the list may each create it and
//! obtain the same ring. The pool and the seed list are the ring's identity;
//! rings created apart from different pools or lists never merge
//! ([`MergeError::DifferentRing`]).
//!
//! ## Allocation, donation, claims
//! A [`Replica`] is one router's view: the ring plus its allocations, keyed by
//! (container id, interface), so a repeated ADD gets the same address. Free
//! space is kept as intervals; allocation takes the lowest free address in
//! O(log n). The network and broadcast addresses of the pool are never free.
//!
//! A router out of space gets [`AllocError::AskPeer`] naming the router that
//! advertises the most free space; that router [`donates`](Replica::donate)
//! about half of its largest free range (only free addresses move, with a
//! version bump) and sends its ring; the requester merges it. A specific
//! address (`ip:`) or subnet (`net:`) owned elsewhere is *claimed* the same
//! way: its owner donates the free range holding it, or refuses with the
//! reason (for example [`DonateError::InUse`]).
//!
//! ## Reclaiming a removed router's ranges
//! A router that is gone for good (its disk lost, its host destroyed) holds
//! ranges nobody may use. [`Replica::begin_reclaim`] starts the explicit,
//! operator-driven reclaim (`weft rmpeer`). **No router can tell a dead peer
//! from one that is alive and cut off**, and the operator may be wrong, so
//! the reclaim must never give one address to two pods, even when the
//! "dead" router is alive, allocating on the other side of a partition, and
//! even if reclaims start concurrently on both sides. The mechanism:
//!
//! 1. **Record.** Reclaiming `D` adds a removal record for `D` to the ring,
//!    proposing an heir (the router that started it). Concurrent starts just
//!    add proposals to the same record. From then on `D` is *removed*.
//! 2. **Stop and surrender.** A removed router that learns of its removal
//!    (any merge showing the record) *stops* at once: it allocates, releases
//!    and donates nothing more ([`AllocError::Removed`]), forgets its space,
//!    accepts the takeover of its entries (its merge no longer refuses them,
//!    so its ring converges with everyone's), and writes a *surrender* into
//!    the ring: the free spans it had, which it will never use. Its
//!    allocations are not in it: its pods may still run. A router that
//!    stopped is known to have stopped once its surrender is seen. Two other
//!    routes stop a router: a graceful leave ([`Replica::leave`], `weft
//!    reset`) surrenders everything at once, and so does an operator's
//!    confirmation that the host is gone ([`Replica::confirm_gone`], `weft
//!    rmpeer --gone`); a removed router that is reset surrenders everything
//!    too ([`Replica::surrender_all`]). Surrenders are grow-only.
//! 3. **Vote.** *Members* are every router that ever owned space (a grow-only
//!    set: a router that gave all its space away stays a member). *Voters*
//!    are members that have not stopped, **removed or not**: a removed router
//!    that has not stopped may be alive and acting on what it knows. The
//!    reclaim of `D` counts every voter but `D` ([`Ring::voters_for`]).
//!    Every voter that sees the record votes for the *candidate*: the
//!    lowest-named proposal that has not stopped. A voter's vote is a
//!    register only it writes (sequence-numbered), cast in a *round*
//!    ([`Ring::round_for`]: one more than the number of members other than
//!    `D` that surrendered everything); a vote counts only in the round it
//!    was cast in, and a voter votes again when its round moves. If every
//!    proposed heir has stopped, a voter that sees this proposes itself, so
//!    a reclaim never stalls on a stopped heir.
//! 4. **Act, holding.** Only the candidate acts, and only once its own view
//!    shows every voter voting for it in its current round. It then rewrites
//!    every entry of `D` as its own, **as many epochs up as the round**, with
//!    nothing free: it *holds* the space (neither free nor allocated, not
//!    advertised, refused to requests with [`AllocError::Held`]), and marks
//!    the record done, listing the ranges it took and the round. Done is
//!    final (only its list of taken ranges can grow, and a completion of a
//!    later round supersedes it, see "Rounds") and dominates on merge.
//! 5. **Free what was surrendered.** The heir frees the parts of the space
//!    it holds from `D` that `D`'s surrender covers (all of it if `D` left,
//!    was reset or was confirmed gone), as soon as it sees the surrender,
//!    and that the surrender of every earlier heir of `D`'s reclaim covers
//!    too ("Rounds"). The rest stays held: `D`'s pods' addresses, and
//!    anything `D` gave away in a state the heir never saw.
//!
//! A leave and an `rmpeer` of the same router started elsewhere join into
//! one record instead of racing.
//!
//! **Why a removed router's pods' addresses are never handed out again.**
//! While `D` has not stopped, it allocates only from ranges it owns in its
//! own view, as any router. The heir's rewrite of those ranges holds them, so
//! nothing of them is handed out. When `D` stops, the addresses it still has
//! allocated are exactly those not in its surrender, and it allocates nothing
//! after, so the heir frees only addresses `D` will never use. An address in
//! `D`'s surrender is not used by anyone else: it was `D`'s in `D`'s view,
//! and ownership leaves a router only by its own donation, after which the
//! range is no longer in its space. A router that was wrongly removed
//! therefore keeps every address its pods have, and so does its heir's
//! heir: what an heir holds it can never give away, and if the heir is
//! removed in turn, its own heir holds those ranges from it.
//!
//! **Why a second heir acts only once the first is gone.** Suppose heirs
//! `H1 != H2` both act, `H1` first. When `H1` acts, its record becomes done,
//! so its vote is frozen on `H1` forever. `H2` acts only when its view shows
//! every voter voting `H2`. `H1` is a member in `H2`'s view (below). If `H1`
//! has stopped in that view, `H2`'s view holds `H1`'s surrender, written
//! after `H1` acted (a stopped router never acts), so it holds `H1`'s done
//! record too and `H2` does not act; unless an operator confirmed `H1` gone,
//! which is true only if `H1` died: then `H2` may act without having seen
//! `H1`'s done record, and the two completions join (see "Rounds"). Otherwise
//! `H1` is a voter there, and its vote in that view must be `H2`. A vote for
//! `H2` by `H1` was made before `H1` acted (after that it is frozen on `H1`),
//! and `H1` later voted for itself, which it does only when `H2` has stopped
//! (a lower proposal than `H2` cannot have been `H1`'s own: it proposes
//! itself only when no candidate is left); but a stopped router does not
//! act. Contradiction. This is also why a removed router stays a voter until
//! it stopped: two alive routers that each removed the other would
//! otherwise each be the only voter of a third router's reclaim.
//!
//! `H1` is a member in `H2`'s view because views are joins of states that
//! descend from the genesis state, membership only grows, and every voter's
//! vote carries the voter's state at the time it voted: `H2` collected a vote
//! from every voter it knows, and unless the two sides of the partition share
//! no live member at all, one of those votes came from a router that knew
//! `H1`. (Two groups that have never shared a live router cannot coordinate
//! by any protocol; that case needs an operator, not an algorithm.)
//!
//! **Rounds: two completions of one reclaim join.** `H1`'s done record can
//! outlive `H1` where `H2`'s voters never saw it: `H1` sent it before it died
//! to a router that was no voter of `H2`'s (a removed router that had
//! already stopped and still relays rings, or another router that died and
//! was confirmed gone), and it surfaces later. So merge must join two
//! completions of one reclaim, the same way in every order, and without
//! handing out an address twice.
//!
//! *The later completion has the higher round.* Let `H1` complete in round
//! `r1` on its view `V1`, and `H2` later in round `r2` on `V2`; call `A(V)`
//! the members other than `D` whose surrender in `V` is total, so that
//! `r = 1 + |A(V)|`. `A` only grows along a view's history. `H1` is in
//! `A(V2)`: it has stopped there (above), not by its own surrender (that
//! carries its done record, and `H2` would not have acted), so by an
//! operator's confirmation, which is total. `H1` is not in `A(V1)`: a
//! removed router never acts. Let `X` be a voter whose votes are in both
//! views (above: unless the two sides never shared a live router). A vote
//! counts only in the heir's round, and a view holds the voter's state at
//! its vote, so `A` of `X`'s state at each vote equals `A(V1)` and `A(V2)`
//! (a subset of equal size). If `X` voted in `V1` first, `A(V2)` holds
//! `A(V1)` and `H1` besides: `r2 > r1`. If it voted in `V2` first, `X` knew
//! `H1` confirmed gone before `H1` acted: the operator confirmed gone a
//! router that still ran, which the argument excludes (Limits). Hence two
//! completions of one reclaim never share a round, and the later one, in
//! time, has the higher round.
//!
//! *The join.* A done record keeps its latest completion (heir, round, the
//! ranges taken) and the heirs of earlier rounds. Two records join by
//! keeping the completion of the higher round (in one round, the heir is
//! the same and the taken ranges join) and the union of all other (round,
//! heir) pairs as earlier; two heirs in one round are refused. That is a
//! max and a union, so merge stays idempotent, commutative and associative.
//! At a token both took from `D`'s same entry, the later takeover's entry
//! is `r2 - r1` epochs above the earlier one's, so it dominates everything
//! the earlier heir wrote there (it writes in its takeover's epoch), and
//! tokens the earlier heir cut inside the later heir's ranges are stale. The
//! earlier completion's taken ranges go with it: they make nothing stale
//! any more. Leftovers of `D` are taken in the record's round, so they too
//! dominate what an earlier round's line took of them.
//!
//! *Why no address is handed out twice.* Only the latest heir (or its own
//! heir, for what it left) frees anything of `D`'s ranges. It holds what it
//! took for `D` *and for every earlier heir*: it frees an address only once
//! `D`'s surrender and every earlier heir's surrender cover it, because an
//! earlier heir may have freed the address (by `D`'s surrender) and
//! allocated it before it stopped, exactly as `D` may have. (By the
//! argument above an earlier heir was confirmed gone before the later one
//! acted, so its surrender is total and its pods are gone; the rule does
//! not lean on that.) The earlier heir, stopped, allocates nothing more.
//! A router whose own entries the join rewrites refuses the ring
//! ([`MergeError::OwnEntryChanged`]) rather than lose its addresses.
//! Before the join, the two records made every merge between their sides
//! fail for ever: the join changes which rings merge, and makes an heir
//! free less, never more.
//!
//! **Why the heir never takes a range `D` gave to a live router.** A vote
//! carries the voter's state, so a donation its recipient knew of when it
//! voted is in the heir's view, and the heir leaves it alone. What a voter
//! learns about `D` *after* voting (say `D`'s last state, relayed by a router
//! that then died too) may reach the heir too late; three rules make that
//! harmless:
//! - *The fence.* A range that arrives written by a router whose removal is
//!   pending is not used ([`Replica::merge`] defers it) until the reclaim is
//!   done. Then it is used only if it is still the recipient's; otherwise the
//!   heir's takeover replaced it. A router that gained the range before it
//!   knew of the removal voted after gaining it, so its vote carried it.
//! - *Epochs.* Entries are ordered by (epoch, version), and a takeover raises
//!   the epoch, so the heir's rewrite dominates every version `D` wrote,
//!   whether the heir saw it or not: late state never conflicts with it.
//! - *Stale tokens.* A token strictly inside a range the heir took, at a lower
//!   epoch than the takeover, was cut by `D` (or from its donations) in a
//!   state the heir never saw. Merge drops it, so the heir's range stays
//!   whole. Dropping depends only on the token's epoch and the done records,
//!   both of which only grow, so merge stays a join.
//! - *Leftovers.* Ranges of `D` that surface after its reclaim is done (its
//!   last state relayed late) are still owned by `D` in the merged ring. The
//!   router holding what `D` left (its heir, or the heir's heir) takes them
//!   the same way, held, and adds them to the done record, whose taken
//!   ranges are a grow-only set.
//!
//! The price is liveness, not safety: a reclaim completes only when every
//! voter has voted, so during a partition it waits for the heal, and a
//! removed router that never stops (it is really dead) stays a voter of
//! every *other* reclaim, and its pods' addresses stay held, until an
//! operator confirms it gone. Its own reclaim does not wait for it.
//!
//! **Limits, stated once.** An operator's confirmation that a router is gone
//! (`confirm_gone`) is believed: a confirmed router must never run again
//! with its state, and a done record it made but sent nowhere before it died
//! is lost with it. Replicas persist their state after every change and
//! before sending it. One case stays outside the argument: a router that had
//! never owned space got its first range from `D` just before `D` stopped,
//! and stayed unknown to every voter until the heir acted. No voter could
//! have waited for a router it did not know, so the heir takes that range
//! too; it stays held (it is not in `D`'s surrender), so no address is
//! handed out twice, but the newcomer's merge refuses every ring carrying
//! the takeover ([`MergeError::OwnEntryChanged`]), loudly, and an operator
//! must reset the newcomer. If `D` is then confirmed gone (or left), the
//! heir frees that range while the newcomer may still use it. The router
//! narrows the window by refusing `rmpeer` while it still sees a connection
//! to `D`. The same holds for what an earlier heir, confirmed gone, gave
//! out of `D`'s ranges before it died to a router that voted in the later
//! round before it heard of the gift (a donation delivered late, or what
//! the earlier heir's own heir took of it): the later takeover does not
//! know it and rewrites it, that router refuses the ring, and the later
//! heir frees it by `D`'s surrender. That was so before the join too (the
//! two records then kept the sides apart instead). The join is also exact
//! only where the two heirs saw `D`'s entries alike (the same tokens and
//! epochs); two views that disagree about `D`'s ranges are a case of the
//! same kind.
//!
//! The property tests check all of this on random histories of six replicas
//! with allocations, donations, crashes, deaths, leaves, concurrent reclaims
//! and wrong `rmpeer`s of live routers (which go on allocating until they
//! hear of it, and whose pods' addresses must never be handed out again),
//! including the relayed-late-state histories that the fence and
//! epochs were added for (`late_state_through_a_dead_relay_is_fenced`) and
//! the relayed done record that rounds were added for
//! (`heir_record_relayed_by_a_stopped_router`).
//!
//! ## Wire and disk form
//! [`Ring::encode`] / [`Ring::decode`] and [`Replica::encode`] /
//! [`Replica::decode`]: postcard, a version tag first, length checked before
//! decoding, every invariant validated after. See [`codec`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod delta;
mod peer;
mod pool;
mod replica;
mod ring;
mod space;

pub use codec::{DecodeError, MAX_ENCODED_LEN};
pub use delta::{Delta, MAX_BUCKETS, Snapshot, Stamp};
pub use peer::{ParsePeerNameError, PeerName};
pub use pool::{AddrRange, Pool, PoolError};
pub use replica::{
    AllocError, AllocKey, Allocation, DonateError, Donation, KeyError, MergeOutcome, ReclaimError, Replica, Request,
    Violation, Want,
};
pub use ring::{
    CreateError, MergeError, OwnerStats, RangeInfo, ReclaimStatus, Ring, RingOrigin, advertised_free_holds,
};
