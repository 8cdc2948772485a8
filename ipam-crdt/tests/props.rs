//! Property tests: the CRDT laws of `Ring::merge`, and the allocator's
//! invariants after every operation of random multi-replica histories.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipam_crdt::{
    AllocError, AllocKey, DecodeError, Delta, MergeError, PeerName, Pool, Replica, Request, Ring, Snapshot, Want,
};
use ipnet::IpNet;
use proptest::prelude::*;

const REPLICAS: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        r: usize,
        req: Req,
    },
    Release {
        r: usize,
        nth: usize,
    },
    Sync {
        from: usize,
        to: usize,
    },
    /// What `from` changed since it last announced, as a delta.
    Announce {
        from: usize,
        to: usize,
    },
    Donate {
        from: usize,
        to: usize,
    },
    Crash {
        r: usize,
    },
    Kill {
        r: usize,
    },
    Reclaim {
        r: usize,
        dead: usize,
    },
    Leave {
        r: usize,
        heir: usize,
    },
    /// A wrong `weft rmpeer` of `victim`, which is alive (cut off, say): it
    /// goes on allocating until it hears of its removal.
    Rmpeer {
        r: usize,
        victim: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum Req {
    Any,
    Addr(u32),
    Within(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPLICAS;
    prop_oneof![
        6 => (r.clone(), prop_oneof![
            3 => Just(Req::Any),
            1 => (0u32..256).prop_map(Req::Addr),
            1 => (0u32..16).prop_map(Req::Within),
        ]).prop_map(|(r, req)| Op::Alloc { r, req }),
        3 => (r.clone(), 0usize..64).prop_map(|(r, nth)| Op::Release { r, nth }),
        4 => (r.clone(), r.clone()).prop_map(|(from, to)| Op::Sync { from, to }),
        4 => (r.clone(), r.clone()).prop_map(|(from, to)| Op::Announce { from, to }),
        3 => (r.clone(), r.clone()).prop_map(|(from, to)| Op::Donate { from, to }),
        1 => r.clone().prop_map(|r| Op::Crash { r }),
        2 => r.clone().prop_map(|r| Op::Kill { r }),
        3 => (r.clone(), r.clone()).prop_map(|(r, dead)| Op::Reclaim { r, dead }),
        2 => (r.clone(), r.clone()).prop_map(|(r, heir)| Op::Leave { r, heir }),
        1 => (r.clone(), r).prop_map(|(r, victim)| Op::Rmpeer { r, victim }),
    ]
}

fn name(i: usize) -> PeerName {
    // Names out of index order, so "lowest name" is not "lowest index".
    PeerName::from_u64([40, 10, 30, 20, 50, 5][i])
}

fn pool() -> Pool {
    Pool::new("10.32.0.0/24".parse().unwrap()).unwrap()
}

struct World {
    reps: Vec<Replica>,
    dead: Vec<bool>,
    /// Acknowledged allocations not released: (replica, key) -> address.
    acked: BTreeMap<(usize, AllocKey), IpAddr>,
    /// Ring states seen over the run, by replica.
    snapshots: Vec<(usize, Ring)>,
    /// Each replica's ring when it last announced (the base of its next delta).
    announced: Vec<Option<Snapshot>>,
    next: u64,
}

impl World {
    fn new() -> Self {
        let seeds: Vec<_> = (0..REPLICAS).map(name).collect();
        let genesis = Replica::create(name(0), pool(), &seeds).unwrap();
        let reps = (0..REPLICAS)
            .map(|i| {
                let mut r = Replica::new(name(i));
                let _ = r.merge(genesis.ring().unwrap()).unwrap();
                r
            })
            .collect();
        Self {
            reps,
            dead: vec![false; REPLICAS],
            acked: BTreeMap::new(),
            snapshots: Vec::new(),
            announced: vec![None; REPLICAS],
            next: 0,
        }
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..REPLICAS).filter(|&i| !self.dead[i])
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc { r, req } if !self.dead[r] => {
                self.next += 1;
                let key = AllocKey::new(format!("c{}", self.next), "eth0").unwrap();
                let req = match req {
                    Req::Any => Request::Any,
                    Req::Addr(o) => Request::Addr(IpAddr::from([10, 32, 0, o as u8])),
                    Req::Within(n) => {
                        Request::Within(IpNet::new(IpAddr::from([10, 32, 0, (n * 16) as u8]), 28).unwrap())
                    }
                };
                let mut res = self.reps[r].allocate(key.clone(), req);
                // The request/donate/merge round trip, done at once.
                if let Err(AllocError::AskPeer { peer, want }) = res {
                    let d = (0..REPLICAS).find(|&i| name(i) == peer).unwrap();
                    let before = self.reps[d].ring().unwrap().snapshot();
                    if !self.dead[d] && self.reps[d].donate(name(r), want).is_ok() {
                        self.send_since(d, r, &before)?;
                        res = self.reps[r].allocate(key.clone(), req);
                    }
                }
                if let Ok(a) = res {
                    self.acked.insert((r, key), a.addr);
                }
            }
            Op::Release { r, nth } if !self.dead[r] => {
                let n = self.reps[r].allocated();
                if n > 0 {
                    let key = self.reps[r].allocations().nth(nth % n).unwrap().0.clone();
                    let addr = self.reps[r].release(&key);
                    prop_assert_eq!(addr, self.acked.remove(&(r, key)));
                }
            }
            Op::Sync { from, to } if from != to && !self.dead[from] && !self.dead[to] => {
                let ring = self.reps[from].ring().unwrap().clone();
                let _ = self.reps[to]
                    .merge(&ring)
                    .map_err(|e| TestCaseError::fail(format!("merge refused: {e}")))?;
            }
            Op::Announce { from, to } if from != to && !self.dead[from] && !self.dead[to] => {
                let now = self.reps[from].ring().unwrap().clone();
                match self.announced[from].take() {
                    Some(base) => self.send_since(from, to, &base)?,
                    None => {
                        let _ = self.reps[to]
                            .merge(&now)
                            .map_err(|e| TestCaseError::fail(format!("merge refused: {e}")))?;
                    }
                }
                self.announced[from] = Some(now.snapshot());
            }
            Op::Donate { from, to } if from != to && !self.dead[from] && !self.dead[to] => {
                let before = self.reps[from].ring().unwrap().snapshot();
                if self.reps[from].donate(name(to), Want::Any).is_ok() {
                    self.send_since(from, to, &before)?;
                }
            }
            Op::Crash { r } if !self.dead[r] => {
                self.reps[r] =
                    Replica::decode(&self.reps[r].encode()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Kill { r } if !self.dead[r] && self.live().count() > 2 => {
                self.dead[r] = true;
                self.acked.retain(|(i, _), _| *i != r);
            }
            Op::Reclaim { r, dead } if !self.dead[r] && self.dead[dead] => {
                let _ = self.reps[r].begin_reclaim(name(dead));
            }
            Op::Rmpeer { r, victim } if r != victim && !self.dead[r] && !self.dead[victim] => {
                let _ = self.reps[r].begin_reclaim(name(victim));
            }
            Op::Leave { r, heir } if r != heir && !self.dead[r] && !self.dead[heir] && self.live().count() > 2 => {
                // `weft reset`: hand everything over, tell the heir, and go.
                let left = self.reps[r].leave(name(heir)).is_ok();
                if left {
                    let ring = self.reps[r].ring().unwrap().clone();
                    let _ = self.reps[heir]
                        .merge(&ring)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    self.dead[r] = true;
                    self.acked.retain(|(i, _), _| *i != r);
                }
            }
            _ => {}
        }
        for i in self.live().collect::<Vec<_>>() {
            self.snapshots.push((i, self.reps[i].ring().unwrap().clone()));
        }
        self.check()
    }

    /// Sends `to` what `from` changed since `base` (an earlier state of its
    /// ring) as a delta through the wire form, as the router does; falls back to
    /// the whole ring when the delta cannot do, as the router does.
    fn send_since(&mut self, from: usize, to: usize, base: &Snapshot) -> Result<(), TestCaseError> {
        let ring = self.reps[from].ring().unwrap().clone();
        if let Some(delta) = ring.delta_since(base) {
            let delta = Delta::decode(&delta.encode()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match self.reps[to].merge_delta(&delta) {
                Ok(out) if out.skipped.is_empty() => return Ok(()),
                // The router fetches the whole ring when a delta could not be
                // placed, and when it rewrites our entries: a takeover after
                // our removal, whose record travels only in whole rings.
                Ok(_)
                | Err(MergeError::NoRing | MergeError::OwnEntryChanged { .. } | MergeError::OwnRangeSplit { .. }) => {}
                Err(e) => return Err(TestCaseError::fail(format!("delta refused: {e}"))),
            }
        }
        let _ = self.reps[to]
            .merge(&ring)
            .map_err(|e| TestCaseError::fail(format!("merge refused: {e}")))?;
        Ok(())
    }

    /// The invariants that must hold after every operation.
    fn check(&self) -> Result<(), TestCaseError> {
        let pool = pool();
        let mut owned_by_self: Vec<(u32, u32, usize)> = Vec::new();
        let mut addrs = BTreeSet::new();
        for i in self.live() {
            let rep = &self.reps[i];
            rep.verify()
                .map_err(|v| TestCaseError::fail(format!("replica {i}: {v}")))?;
            let ring = rep.ring().unwrap();
            // In every view the ranges tile the pool exactly.
            let mut next = u32::from(std::net::Ipv4Addr::new(10, 32, 0, 0));
            for r in ring.ranges() {
                let (IpAddr::V4(first), IpAddr::V4(last)) = (r.range.first, r.range.last) else {
                    unreachable!()
                };
                prop_assert_eq!(u32::from(first), next, "ranges leave a gap or overlap");
                next = u32::from(last) + 1;
                // A removed router stopped using its ranges (its pods'
                // addresses are checked below) even where its view still
                // names it the owner.
                // An heir holds a removed router's ranges without using
                // them (the router may be alive): only what it may hand out
                // counts.
                if r.owner == name(i) && !rep.is_removed() {
                    // The pool's network and broadcast addresses are never used.
                    let lo = u32::from(std::net::Ipv4Addr::new(10, 32, 0, 1));
                    let hi = u32::from(std::net::Ipv4Addr::new(10, 32, 0, 254));
                    let (first, last) = (u32::from(first).max(lo), u32::from(last).min(hi));
                    let mut at = first;
                    for (h, _) in rep.held_ranges() {
                        let (IpAddr::V4(hf), IpAddr::V4(hl)) = (h.first, h.last) else {
                            unreachable!()
                        };
                        let (hf, hl) = (u32::from(hf), u32::from(hl));
                        if hl < at || hf > last {
                            continue;
                        }
                        if at < hf {
                            owned_by_self.push((at, hf - 1, i));
                        }
                        at = hl + 1;
                    }
                    if at <= last {
                        owned_by_self.push((at, last, i));
                    }
                }
            }
            prop_assert_eq!(
                next,
                u32::from(std::net::Ipv4Addr::new(10, 32, 1, 0)),
                "ranges do not end at the pool's end"
            );
            prop_assert_eq!(ring.owners().values().map(|s| s.owned).sum::<u128>(), pool.size());
            for (_, addr) in rep.allocations() {
                prop_assert!(addrs.insert(addr), "{} allocated twice", addr);
            }
        }
        // A removed router that is alive forgot its space, but its pods keep
        // their addresses: nobody else may hold them.
        for ((i, key), addr) in &self.acked {
            if self.reps[*i].is_removed() {
                prop_assert!(
                    addrs.insert(*addr),
                    "{} of removed router's pod {} handed out again",
                    addr,
                    key
                );
            }
        }
        // What each live router believes it may use is disjoint from what every other believes.
        owned_by_self.sort_unstable();
        for w in owned_by_self.windows(2) {
            let (x, y) = (w[0], w[1]);
            prop_assert!(
                x.1 < y.0,
                "replicas {} and {} both own addresses in {:?}",
                x.2,
                y.2,
                (y.0, x.1)
            );
        }
        // No acknowledged allocation of a live replica is lost.
        for ((i, key), addr) in &self.acked {
            if !self.reps[*i].is_removed() {
                prop_assert_eq!(self.reps[*i].lookup(key), Some(*addr), "lost allocation {}", key);
            }
        }
        Ok(())
    }

    /// Reclaims every dead replica, with the operator's confirmation that it
    /// is gone (it is), and exchanges state until nothing changes. Routers
    /// removed while alive get no confirmation: their pods' addresses stay held.
    fn heal(&mut self) -> Result<(), TestCaseError> {
        let first = self.live().find(|&i| !self.reps[i].is_removed()).unwrap_or(0);
        for d in (0..REPLICAS).filter(|&d| self.dead[d]) {
            let _ = self.reps[first].begin_reclaim(name(d));
            let _ = self.reps[first].confirm_gone(name(d));
        }
        for _ in 0..20 {
            let mut changed = false;
            for from in self.live().collect::<Vec<_>>() {
                for to in self.live().collect::<Vec<_>>() {
                    if from != to {
                        let ring = self.reps[from].ring().unwrap().clone();
                        let out = self.reps[to]
                            .merge(&ring)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        changed |= out.changed;
                    }
                }
            }
            self.check()?;
            if !changed {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("replicas did not stop changing"))
    }
}

/// 300 cases by default; `PROPTEST_CASES=N` runs more (or fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn merged(a: &Ring, b: &Ring) -> Ring {
    let mut m = a.clone();
    m.merge(b).expect("rings of one valid history always merge");
    m
}

/// Applies `ops`, checking the invariants after each; heals and checks
/// convergence; then checks the merge laws on states `picks` chooses.
fn check_history(ops: &[Op], picks: &[prop::sample::Index]) -> Result<(), TestCaseError> {
    let mut w = World::new();
    for op in ops {
        w.apply(op)?;
    }
    w.heal()?;
    let live: Vec<usize> = w.live().collect();
    // Routers that removed each other while alive can leave nobody to
    // inherit: then the reclaims wait (for ever), but the rings still agree.
    let voter_left = live.iter().any(|&i| !w.reps[i].is_removed());
    for &i in &live {
        prop_assert_eq!(
            w.reps[i].ring(),
            w.reps[live[0]].ring(),
            "live replicas did not converge"
        );
        let reclaims = w.reps[i].ring().unwrap().reclaims();
        let all_done = reclaims
            .values()
            .all(|s| matches!(s, ipam_crdt::ReclaimStatus::Done { .. }));
        prop_assert!(all_done || !voter_left, "a reclaim is still pending after healing");
    }
    for d in (0..REPLICAS).filter(|&d| voter_left && (w.dead[d] || w.reps[d].is_removed())) {
        let ring = w.reps[live[0]].ring().unwrap();
        prop_assert!(
            !ring.owners().contains_key(&name(d)),
            "dead router {} still owns space: {:?} {:?}",
            name(d),
            ring.ranges().collect::<Vec<_>>(),
            ring.reclaims()
        );
    }

    // CRDT laws on states of replicas that stayed alive (a dead replica's
    // last state may hold changes nobody saw, which died with it).
    let states: Vec<&Ring> = w
        .snapshots
        .iter()
        .filter(|(i, _)| !w.dead[*i])
        .map(|(_, r)| r)
        .collect();
    for t in picks.chunks(3) {
        let (a, b, c) = (t[0].get(&states), t[1].get(&states), t[2].get(&states));
        prop_assert_eq!(&merged(a, a), *a, "merge is not idempotent");
        prop_assert_eq!(merged(a, b), merged(b, a), "merge is not commutative");
        prop_assert_eq!(
            merged(&merged(a, b), c),
            merged(a, &merged(b, c)),
            "merge is not associative"
        );
        prop_assert_eq!(&Ring::decode(&a.encode()).unwrap(), *a, "wire form does not round-trip");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Invariants after every operation, convergence after healing, and the
    /// merge laws on every state the run produced.
    #[test]
    fn histories_keep_invariants_and_converge(ops in proptest::collection::vec(op(), 1..160), picks in proptest::collection::vec(any::<prop::sample::Index>(), 9)) {
        check_history(&ops, &picks)?;
    }

    /// Arbitrary bytes never panic the decoders; they are refused or decode to a valid state.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = Ring::decode(&bytes) {
            prop_assert_eq!(Ring::decode(&r.encode()).unwrap(), r);
        }
        if let Ok(r) = Replica::decode(&bytes) {
            r.verify().unwrap();
        }
        if let Ok(d) = Delta::decode(&bytes) {
            prop_assert_eq!(Delta::decode(&d.encode()).unwrap(), d);
        }
    }

    /// A corrupted delta of the right ring is refused, or merges into a replica that stays consistent.
    #[test]
    fn corrupted_deltas_never_break_a_replica(flip in any::<prop::sample::Index>(), to in any::<u8>()) {
        let mut donor = Replica::create(name(0), pool(), &[name(0), name(1)]).unwrap();
        let mut r = Replica::new(name(2));
        let _ = r.merge(donor.ring().unwrap()).unwrap();
        let base = donor.ring().unwrap().snapshot();
        donor.allocate(AllocKey::new("c", "eth0").unwrap(), Request::Any).unwrap();
        let _ = donor.donate(name(2), Want::Any).unwrap();
        let mut bytes = donor.ring().unwrap().delta_since(&base).unwrap().encode();
        let i = flip.index(bytes.len());
        bytes[i] = to;
        if let Ok(d) = Delta::decode(&bytes) && r.merge_delta(&d).is_ok() {
            r.verify().unwrap();
        }
    }

    /// Flipping any byte of a valid encoding is caught or yields a valid state.
    #[test]
    fn corrupted_encodings_are_refused_or_valid(flip in any::<prop::sample::Index>(), to in any::<u8>()) {
        let mut r = Replica::create(name(0), pool(), &[name(0), name(1)]).unwrap();
        r.allocate(AllocKey::new("c", "eth0").unwrap(), Request::Any).unwrap();
        let mut bytes = r.encode();
        let i = flip.index(bytes.len());
        bytes[i] = to;
        match Replica::decode(&bytes) {
            Ok(back) => back.verify().unwrap(),
            Err(DecodeError::Malformed(_) | DecodeError::Invalid(_) | DecodeError::UnsupportedVersion(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

/// Found by CI: a router removed while alive had donated to a router that
/// then left to an heir that died; a third router that knew none of it
/// reclaims the dead ones while the removed donor still runs.
#[test]
fn removed_donor_whose_recipient_left_to_a_dead_heir() {
    let ops = [
        Op::Donate { from: 5, to: 2 },
        Op::Rmpeer { r: 1, victim: 5 },
        Op::Leave { r: 2, heir: 4 },
        Op::Kill { r: 4 },
        Op::Sync { from: 1, to: 0 },
    ];
    check_history(&ops, &[]).unwrap();
}

/// A reclaim's heir completed it and died, seen only by the removed router;
/// the operator confirms the heir gone. The reclaim must not move on to
/// another heir before the dead heir's own reclaim is done.
#[test]
fn heir_that_completed_then_died_is_not_passed_over_early() {
    let ops = [
        Op::Rmpeer { r: 2, victim: 5 },
        Op::Leave { r: 0, heir: 1 },
        Op::Announce { from: 2, to: 4 },
        Op::Leave { r: 1, heir: 2 },
        Op::Sync { from: 4, to: 2 },
        Op::Leave { r: 3, heir: 2 },
        Op::Announce { from: 2, to: 5 },
        Op::Kill { r: 2 },
    ];
    check_history(&ops, &[]).unwrap();
}

/// A removed router hears of its takeover through a delta, which carries no
/// removal record: it fetches the whole ring, as the router does.
#[test]
fn takeover_heard_first_through_a_delta() {
    let ops = [
        Op::Leave { r: 4, heir: 0 },
        Op::Rmpeer { r: 3, victim: 2 },
        Op::Sync { from: 3, to: 0 },
        Op::Alloc { r: 0, req: Req::Any },
        Op::Leave { r: 0, heir: 1 },
        Op::Sync { from: 1, to: 5 },
        Op::Sync { from: 5, to: 3 },
        Op::Announce { from: 3, to: 5 },
        Op::Alloc { r: 0, req: Req::Any },
        Op::Alloc { r: 3, req: Req::Any },
        Op::Announce { from: 3, to: 2 },
    ];
    check_history(&ops, &[]).unwrap();
}

/// Two routers that removed each other and died, both confirmed gone: each
/// reclaim's proposed heir waits on the other's, so a survivor moves first.
#[test]
fn mutual_removals_confirmed_gone_do_not_wait_on_each_other() {
    let ops = [
        Op::Rmpeer { r: 3, victim: 1 },
        Op::Alloc {
            r: 2,
            req: Req::Within(8),
        },
        Op::Rmpeer { r: 1, victim: 3 },
        Op::Announce { from: 1, to: 2 },
        Op::Kill { r: 1 },
        Op::Kill { r: 3 },
    ];
    check_history(&ops, &[]).unwrap();
}

/// Issue 21: a heir completed a reclaim, the news reached a removed router
/// that had already surrendered, and the heir died. Its own reclaim
/// completes without that router's vote, the first reclaim moves on to a
/// second heir, and the relayed record later meets it. The two completions
/// join: the later one has the higher round (see the crate docs, "Rounds").
#[test]
fn heir_record_relayed_by_a_stopped_router() {
    let ops = [
        Op::Rmpeer { r: 2, victim: 0 },
        Op::Rmpeer { r: 2, victim: 1 },
        Op::Leave { r: 5, heir: 1 },
        Op::Leave { r: 4, heir: 1 },
        Op::Announce { from: 2, to: 1 },
        Op::Alloc { r: 0, req: Req::Any },
        Op::Sync { from: 1, to: 3 },
        Op::Announce { from: 3, to: 2 },
        Op::Announce { from: 2, to: 0 },
        Op::Sync { from: 0, to: 1 },
        Op::Kill { r: 2 },
        Op::Kill { r: 0 },
    ];
    check_history(&ops, &[]).unwrap();
}

/// Known open, found by a run of 6,000 cases; it fails the same way on the
/// branch before reclaim rounds (there as `OwnRangeSplit`). A router wrongly
/// removed while alive (replica 5) had donated to a router that then died
/// (replica 0) and was confirmed gone; after healing, a merge rewrites a
/// live router's entry at 10.32.0.224 (`OwnEntryChanged`).
#[test]
#[ignore = "known open: a donation by a wrongly removed router to a router confirmed gone"]
fn donation_of_a_wrongly_removed_router_to_one_confirmed_gone() {
    let ops = [
        Op::Alloc {
            r: 4,
            req: Req::Within(8),
        },
        Op::Donate { from: 5, to: 0 },
        Op::Alloc {
            r: 5,
            req: Req::Within(14),
        },
        Op::Leave { r: 1, heir: 2 },
        Op::Kill { r: 0 },
        Op::Rmpeer { r: 3, victim: 5 },
        Op::Donate { from: 3, to: 2 },
    ];
    check_history(&ops, &[]).unwrap();
}
