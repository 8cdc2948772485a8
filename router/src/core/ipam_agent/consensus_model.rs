//! A model check of ring creation by consensus (`docs/control-plane.md`,
//! "Ring creation by consensus"): several [`Agent`]s launched with the same
//! `--init-peer-count`, on virtual time, under random orders of crashes and
//! restarts (a restarted router resumes from what it wrote, and its entry
//! starts blank as a new life's does), partitions and heals, gossip that
//! arrives late or not at all, lost and delayed IPAM messages, and the
//! quorum's wait firing wherever it falls.
//!
//! Safety, checked after every write: at most one seed list is ever
//! chosen (accepted by a quorum under one ballot), and at most one ring
//! origin is ever durable anywhere. Liveness, checked once the faults stop with a majority
//! alive and connected: a ring exists within [`QUORUM_WAIT`] and a bound,
//! and every live router holds it. A failing seed is printed; replay it with
//! `WEFT_MODEL_SEED=<seed>`; `WEFT_MODEL_SEEDS=<n>` runs `n` seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipam_crdt::{PeerName, Pool};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Agent, Dest, IpamMsg, QUORUM_WAIT, quorum};
use crate::core::Time;
use crate::core::topology::{Ballot, IpamInit, PeerEntry, Topology};

fn p(i: usize) -> PeerName {
    PeerName::from_u64(i as u64 + 1)
}

fn pool() -> Pool {
    Pool::new("10.40.0.0/22".parse().unwrap()).unwrap()
}

/// The routers, their disks, what each has heard of the others, the wire.
struct Model {
    count: usize,
    /// `None` while crashed.
    agents: Vec<Option<Agent>>,
    /// What each wrote last: what a restart resumes from.
    disks: Vec<Option<Vec<u8>>>,
    /// Each router's own entry, as it announced it (blank after a restart
    /// until it announces again).
    entry: Vec<IpamInit>,
    /// `heard[i][j]`: router `i`'s copy of `j`'s entry, if it heard of `j`.
    heard: Vec<Vec<Option<IpamInit>>>,
    /// Routers on the same side of the partition reach each other.
    side: Vec<u8>,
    /// IPAM messages on the way: when they arrive, from, to.
    wire: Vec<(Time, usize, usize, IpamMsg)>,
    now: Time,
    version: u64,
    rng: ChaCha8Rng,
    /// Per mille of messages lost.
    loss: u32,
    /// Messages take up to this many ms.
    delay: u64,
    /// How often each kind of event is chosen (swarm testing: each seed
    /// weighs them differently, which reaches more orders than one mix).
    weights: [u32; 5],
    /// How long a partition lasts on average, in ms (each seed its own, so
    /// that some outlast [`QUORUM_WAIT`] and some do not).
    partition_ms: u64,
    /// Every ring origin (its genesis owners) ever written, and by whom first.
    origins: Vec<(Vec<PeerName>, usize)>,
    /// Every seed list ever written as accepted, by ballot, with the routers
    /// that wrote it.
    accepted: BTreeMap<(Ballot, Vec<PeerName>), BTreeSet<usize>>,
    seed: u64,
    /// Routers may crash in the middle of a step (before their write).
    faults: bool,
}

impl Model {
    fn new(seed: u64, n: usize, count: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let loss = rng.random_range(0..300);
        let delay = rng.random_range(2..5000);
        let weights = std::array::from_fn(|_| rng.random_range(1..10));
        let partition_ms = rng.random_range(1_000..40_000);
        Self {
            count,
            agents: (0..n)
                .map(|i| Some(Agent::new(p(i), pool(), super::Init::Consensus(count), None, Time::ZERO).unwrap()))
                .collect(),
            disks: vec![None; n],
            entry: vec![IpamInit::default(); n],
            heard: vec![vec![None; n]; n],
            side: vec![0; n],
            wire: Vec::new(),
            now: Time::ZERO,
            version: 1,
            rng,
            loss,
            delay,
            weights,
            partition_ms,
            origins: Vec::new(),
            accepted: BTreeMap::new(),
            seed,
            faults: true,
        }
    }

    fn n(&self) -> usize {
        self.agents.len()
    }

    fn alive(&self, i: usize) -> bool {
        self.agents[i].is_some()
    }

    fn connected(&self, i: usize, j: usize) -> bool {
        i != j && self.alive(i) && self.alive(j) && self.side[i] == self.side[j]
    }

    /// Router `i` hears `j`'s entry as it is now (gossip that got through).
    fn gossip(&mut self, i: usize, j: usize) {
        if self.connected(i, j) {
            self.heard[i][j] = Some(self.entry[j].clone());
        }
    }

    /// Router `i` gets a view: the entries it heard, its connections, and
    /// those of the routers it reaches.
    fn view(&mut self, i: usize) {
        let n = self.n();
        let links = |m: &Self, k: usize| -> BTreeSet<PeerName> {
            (0..n)
                .filter(|&j| m.connected(k, j) && m.heard[i][j].is_some())
                .map(p)
                .collect()
        };
        self.version += 1;
        let mine = links(self, i);
        let mut t = Topology::new(p(i), format!("r{i}"), vec![]);
        let _ = t.set_ipam(self.entry[i].clone());
        let _ = t.set_neighbours(mine.clone());
        let others: Vec<PeerEntry> = (0..n)
            .filter(|&j| j != i)
            .filter_map(|j| {
                let ipam = self.heard[i][j].clone()?;
                let neighbours = if self.connected(i, j) {
                    let mut l = links(self, j);
                    l.insert(p(i));
                    l
                } else {
                    BTreeSet::new()
                };
                Some(PeerEntry {
                    name: p(j),
                    nickname: format!("r{j}"),
                    version: self.version,
                    endpoints: vec![],
                    neighbours,
                    ipam,
                    data: None,
                })
            })
            .collect();
        let _ = t.merge(others);
        let agent = self.agents[i].as_mut().expect("only live routers get views");
        for j in (0..n).filter(|&j| j != i) {
            match (mine.contains(&p(j)), agent.neighbours.contains(&p(j))) {
                (true, false) => agent.neighbour_up(p(j)),
                (false, true) => agent.neighbour_down(p(j)),
                _ => {}
            }
        }
        agent.handle_topology(self.now, &t);
        self.process(i);
    }

    /// Carries out what router `i` asked for, in the shell's order: write,
    /// then announce and send. Now and then it crashes before the write.
    fn process(&mut self, i: usize) {
        if self.faults && self.rng.random_range(0..100) < 2 {
            self.crash(i);
            return;
        }
        let agent = self.agents[i].as_mut().expect("processing a live router");
        let must_sync = agent.must_sync();
        if let Some(bytes) = agent.take_persist() {
            let saved = Agent::decode_saved(&bytes).unwrap();
            if let Some(ring) = saved.replica().ring() {
                let seeds = ring.origin().seeds;
                if !self.origins.iter().any(|(o, _)| *o == seeds) {
                    self.origins.push((seeds, i));
                }
                assert!(
                    self.origins.len() <= 1,
                    "seed {}: two rings were created: {:?} (count {}, loss {}‰); replay with WEFT_MODEL_SEED={}",
                    self.seed,
                    self.origins,
                    self.count,
                    self.loss,
                    self.seed
                );
            }
            // Paxos's own invariant, stronger than one ring: every list a
            // quorum ever accepted under one ballot (chosen, whether or not
            // anyone created a ring from it) is the same list.
            if let Some(a) = saved.init.accepted {
                self.accepted.entry(a).or_default().insert(i);
                let chosen: BTreeSet<&Vec<PeerName>> = self
                    .accepted
                    .iter()
                    .filter(|(_, by)| by.len() >= quorum(self.count))
                    .map(|((_, v), _)| v)
                    .collect();
                assert!(
                    chosen.len() <= 1,
                    "seed {}: two seed lists were chosen: {chosen:?}; replay with WEFT_MODEL_SEED={}",
                    self.seed,
                    self.seed
                );
            }
            self.disks[i] = Some(bytes);
        } else {
            assert!(!must_sync, "a consensus step was not written");
        }
        let agent = self.agents[i].as_mut().expect("still live");
        if let Some(init) = agent.take_announcement() {
            self.entry[i] = init;
        }
        while agent.poll_event().is_some() {}
        let mut out = Vec::new();
        while let Some(m) = agent.poll_transmit() {
            out.push(m);
        }
        for (dest, msg) in out {
            let to: Vec<usize> = match dest {
                Dest::Neighbour(n) | Dest::Routed(n) => vec![usize::try_from(n.to_u64()).unwrap() - 1],
                Dest::AllNeighbours => (0..self.n()).filter(|&j| self.connected(i, j)).collect(),
            };
            for j in to {
                let at = self.now + Duration::from_millis(self.rng.random_range(1..self.delay));
                self.wire.push((at, i, j, msg.clone()));
            }
        }
    }

    fn crash(&mut self, i: usize) {
        self.agents[i] = None;
    }

    fn restart(&mut self, i: usize) {
        let saved = self.disks[i].as_ref().map(|b| Agent::decode_saved(b).unwrap());
        self.agents[i] = Some(Agent::new(p(i), pool(), super::Init::Consensus(self.count), saved, self.now).unwrap());
        // A new life's entry says nothing of ring creation until it
        // announces, and its view starts empty.
        self.entry[i] = IpamInit::default();
        self.heard[i] = vec![None; self.n()];
    }

    /// Delivers the messages due, losing some and those whose ends are cut.
    fn deliver(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire).into_iter().partition(|m| m.0 <= now);
        self.wire = later;
        for (_, from, to, msg) in due {
            if !self.connected(from, to) || self.rng.random_range(0..1000) < self.loss {
                continue;
            }
            if let Some(agent) = self.agents[to].as_mut() {
                agent.handle_message(now, p(from), msg);
                self.process(to);
            }
        }
    }

    /// Time passes: timers fire, messages arrive, and while faults run the
    /// partition may change.
    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.faults && self.rng.random_range(0..self.partition_ms) < ms {
            self.repartition();
        }
        for i in 0..self.n() {
            if let Some(a) = self.agents[i].as_mut()
                && a.poll_timeout() <= self.now
            {
                a.handle_timeout(self.now);
                self.process(i);
            }
        }
        self.deliver();
    }

    fn pick(&mut self, f: impl Fn(&Self, usize) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.n()).filter(|&i| f(self, i)).collect();
        (!c.is_empty()).then(|| c[self.rng.random_range(0..c.len())])
    }

    /// One random event.
    fn step(&mut self) {
        let n = self.n();
        let total: u32 = self.weights.iter().sum();
        let mut roll = self.rng.random_range(0..total);
        let kind = self
            .weights
            .iter()
            .position(|&w| {
                let hit = roll < w;
                roll = roll.saturating_sub(w);
                hit
            })
            .expect("the roll is below the total");
        match kind {
            0 => {
                let (i, j) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
                self.gossip(i, j);
            }
            1 => {
                if let Some(i) = self.pick(Self::alive) {
                    self.view(i);
                }
            }
            2 => {
                let d = Duration::from_millis(self.rng.random_range(0..3000));
                self.advance(d);
            }
            3 => {
                if let Some(i) = self.pick(Self::alive) {
                    self.crash(i);
                }
            }
            4 => {
                if let Some(i) = self.pick(|m, i| !m.alive(i)) {
                    self.restart(i);
                }
            }
            _ => unreachable!("five kinds"),
        }
    }

    /// Heals, or cuts the routers into up to three sides.
    fn repartition(&mut self) {
        let n = self.n();
        if self.rng.random_bool(0.3) {
            self.side = vec![0; n];
        } else {
            for s in &mut self.side {
                *s = self.rng.random_range(0..3);
            }
        }
    }

    /// What router `i` wrote of its part in creating the ring.
    fn saved_init(&self, i: usize) -> IpamInit {
        self.disks[i]
            .as_ref()
            .map(|b| Agent::decode_saved(b).unwrap().init)
            .unwrap_or_default()
    }

    /// Ends the faults: heals, restarts all but `dead`, and runs with full
    /// gossip until every live router holds a ring or `bound` passes.
    /// Returns how long it took, if it did.
    fn settle(&mut self, dead: &BTreeSet<usize>, bound: Duration) -> Option<Duration> {
        let n = self.n();
        self.side = vec![0; n];
        self.loss = 0;
        self.delay = 400;
        self.faults = false;
        for i in 0..n {
            if !self.alive(i) && !dead.contains(&i) {
                self.restart(i);
            }
        }
        let start = self.now;
        while self.now.since(start) <= bound {
            for i in 0..n {
                for j in 0..n {
                    self.gossip(i, j);
                }
            }
            for i in 0..n {
                if self.alive(i) {
                    self.view(i);
                }
            }
            // Crashes stop here: `process` crashes only while faults run.
            self.advance(Duration::from_millis(200));
            if (0..n).all(|i| self.agents[i].as_ref().is_none_or(|a| a.replica().ring().is_some())) {
                return Some(self.now.since(start));
            }
        }
        None
    }
}

/// Runs one seed: faults, then settling. Returns how long the ring took
/// once the faults stopped.
fn run(seed: u64) -> Duration {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let count = rng.random_range(1..=7);
    // Exactly `count` routers take part, or one fewer (a member never came).
    let n = count - usize::from(count > 2 && rng.random_bool(0.3));
    let mut m = Model::new(seed, n, count);
    for _ in 0..rng.random_range(0..600) {
        m.step();
        // Past this point nothing can be created any more.
        if m.agents
            .iter()
            .all(|a| a.as_ref().is_some_and(|a| a.replica().ring().is_some()))
        {
            break;
        }
    }
    // Leave dead a minority of the count, any of them: leaders and routers
    // that promised or accepted included (with ballots, nobody waits on a
    // dead router's part).
    let q = quorum(count);
    let mut dead = BTreeSet::new();
    for i in 0..n {
        if n - dead.len() > q && rng.random_bool(0.4) {
            dead.insert(i);
        }
    }
    for &i in &dead {
        m.crash(i);
    }
    let bound = QUORUM_WAIT * 2 + Duration::from_secs(10);
    let Some(took) = m.settle(&dead, bound) else {
        panic!(
            "seed {seed}: no ring {bound:?} after the faults stopped with {} of {count} routers alive and connected \
             (dead: {dead:?}); states: {:?}; replay with WEFT_MODEL_SEED={seed}",
            n - dead.len(),
            (0..n).map(|i| m.saved_init(i)).collect::<Vec<_>>()
        );
    };
    // Every live router holds the one ring.
    let origins: BTreeSet<Vec<PeerName>> = m
        .agents
        .iter()
        .flatten()
        .map(|a| a.replica().ring().expect("settled").origin().seeds)
        .collect();
    assert_eq!(origins.len(), 1, "seed {seed}: live routers hold different rings");
    took
}

#[test]
fn consensus_creates_at_most_one_ring_and_a_quorum_creates_it() {
    let seeds: Vec<u64> = match std::env::var("WEFT_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_MODEL_SEED is a number")],
        Err(_) => {
            let n = std::env::var("WEFT_MODEL_SEEDS")
                .map_or(MODEL_SEEDS, |s| s.parse().expect("WEFT_MODEL_SEEDS is a number"));
            (0..n).collect()
        }
    };
    let took: Vec<Duration> = seeds.iter().map(|&seed| run(seed)).collect();
    let slowest = took.iter().max().copied().unwrap_or_default();
    println!(
        "{} seeds; a ring on every one after the faults stopped, the slowest in {slowest:?}",
        seeds.len()
    );
}

/// Seeds run by the test (each up to 600 random events); `WEFT_MODEL_SEEDS`
/// runs more.
const MODEL_SEEDS: u64 = 2000;
