//! Deterministic simulation of N IPAM replicas on a lossy, partitionable network.
//!
//! ```text
//! cargo run --release -p ipam-crdt --bin ringsim -- --peers 300 --steps 100000 --seed 7
//! ```
//!
//! Replica 0 creates the ring with every replica as a seed; the others adopt
//! it by gossip. Each step delivers due messages, then does one random thing:
//! allocate (any address, a specific `ip:`, or a `net:` subnet), release,
//! gossip to a random peer, crash (state kept, restarted later), partition
//! or heal, declare a replica dead for good, or start reclaims of the dead on
//! one or two random replicas (on both sides of a partition when there is
//! one). Messages are encoded and decoded with the real wire format, delayed
//! 1-5 steps and dropped at `--loss` percent; a crash restarts from the
//! encoded disk form. At the end every partition heals, every crashed replica
//! restarts, every dead one is reclaimed, and gossip runs until all replicas
//! converge.
//!
//! The last output line is one JSON object. The run exits 1 if replicas did
//! not converge or any address was duplicated, any acknowledged allocation of
//! a live replica was lost, any merge was refused, or any invariant broke.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::IpAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use ipam_crdt::{AllocError, AllocKey, PeerName, Pool, Replica, Request, Ring, Want};
use ipnet::IpNet;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("ringsim: {msg}\nusage: ringsim --peers N --steps K --seed S [--loss PERCENT] [--pool CIDR]");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut sim = Sim::new(&args);
    println!(
        "ringsim: {} replicas share {} ({} addresses); seed {}, {}% message loss",
        args.peers,
        sim.pool,
        sim.pool.size(),
        args.seed,
        args.loss
    );
    let tenth = (args.steps / 10).max(1);
    for step in 1..=args.steps {
        sim.step();
        if step % tenth == 0 {
            sim.progress();
        }
    }
    println!(
        "ringsim: healing every partition, restarting every replica, reclaiming the dead; gossiping until converged"
    );
    let rounds = sim.converge();
    let report = sim.report(&args, rounds, started.elapsed().as_millis());
    let ok = report["converged"] == true
        && report["duplicate_addresses"] == 0
        && report["lost_allocations"] == 0
        && report["merge_errors"] == 0
        && report["invariant_violations"] == 0;
    eprintln!(
        "ringsim: {} peers, {} steps, seed {}: {}",
        args.peers,
        args.steps,
        args.seed,
        if ok {
            "ok"
        } else {
            "FAILED (replay with the same --seed)"
        }
    );
    println!("{report}");
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

struct Args {
    peers: usize,
    steps: u64,
    seed: u64,
    loss: f64,
    pool: Option<IpNet>,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let (mut peers, mut steps, mut seed, mut loss, mut pool) = (None, None, None, 10.0, None);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--peers" => peers = Some(num(&flag, &value()?)?),
                "--steps" => steps = Some(num(&flag, &value()?)?),
                "--seed" => seed = Some(num(&flag, &value()?)?),
                "--loss" => {
                    loss = value()?
                        .parse()
                        .map_err(|_| "--loss takes a percentage, e.g. 10".to_owned())?;
                }
                "--pool" => pool = Some(value()?.parse().map_err(|_| "--pool takes a CIDR, e.g. 10.32.0.0/16")?),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        let peers = peers.ok_or("--peers is required")? as usize;
        if peers < 2 {
            return Err("--peers must be at least 2".into());
        }
        if !(0.0..100.0).contains(&loss) {
            return Err("--loss must be in [0, 100)".into());
        }
        Ok(Self {
            peers,
            steps: steps.ok_or("--steps is required")?,
            seed: seed.ok_or("--seed is required")?,
            loss,
            pool,
        })
    }
}

fn num(flag: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{flag} takes a non-negative integer, got {v:?}"))
}

/// A message between replicas. Rings travel encoded, as on the wire.
enum Msg {
    Gossip(Rc<[u8]>),
    SpaceRequest(Want),
    SpaceReply(Rc<[u8]>),
}

struct Node {
    replica: Replica,
    /// Declared dead: never returns, its in-flight messages are lost.
    dead: bool,
    /// Crashed until this step (state kept on "disk").
    down_until: Option<u64>,
    /// Partition group; messages cross only within a group.
    group: u32,
    /// Allocations waiting for a donation (at most one request outstanding).
    waiting: Vec<(AllocKey, Request)>,
    /// The encoded ring, until the replica changes.
    wire: Option<Rc<[u8]>>,
}

#[derive(Default)]
struct Counters {
    allocations: u64,
    alloc_refused: u64,
    releases: u64,
    donations: u64,
    donations_refused: u64,
    claims: u64,
    crashes: u64,
    partitions: u64,
    deaths: u64,
    reclaims_started: u64,
    reclaims_completed: u64,
    sent: u64,
    sent_bytes: u64,
    lost: u64,
    merge_errors: u64,
}

struct Sim {
    rng: ChaCha8Rng,
    pool: Pool,
    nodes: Vec<Node>,
    names: Vec<PeerName>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// Message bodies by sequence number: (from, to, msg).
    bodies: BTreeMap<u64, (usize, usize, Msg)>,
    loss: f64,
    partition_until: Option<u64>,
    /// Acknowledged allocations still held: (node, key) -> address.
    acked: BTreeMap<(usize, AllocKey), IpAddr>,
    next_container: u64,
    c: Counters,
}

impl Sim {
    fn new(args: &Args) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        // Names from the seed, so that "lowest name" choices vary between seeds.
        let mut names: Vec<PeerName> = Vec::with_capacity(args.peers);
        let mut seen = BTreeSet::new();
        while names.len() < args.peers {
            let n = PeerName::from_u64(rng.random());
            if seen.insert(n) {
                names.push(n);
            }
        }
        let pool = match args.pool {
            Some(net) => Pool::new(net).unwrap_or_else(|e| panic!("--pool: {e}")),
            None => {
                // About 64 addresses per peer: tight enough that donations and exhaustion happen.
                let bits = (args.peers as u64 * 64)
                    .next_power_of_two()
                    .trailing_zeros()
                    .clamp(8, 20) as u8;
                Pool::new(format!("10.32.0.0/{}", 32 - bits).parse().expect("valid")).expect("valid pool")
            }
        };
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, n)| Node {
                replica: if i == 0 {
                    Replica::create(*n, pool, &names).expect("valid genesis")
                } else {
                    Replica::new(*n)
                },
                dead: false,
                down_until: None,
                group: 0,
                waiting: Vec::new(),
                wire: None,
            })
            .collect();
        Self {
            rng,
            pool,
            nodes,
            names,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            bodies: BTreeMap::new(),
            loss: args.loss / 100.0,
            partition_until: None,
            acked: BTreeMap::new(),
            next_container: 0,
            c: Counters::default(),
        }
    }

    fn step(&mut self) {
        self.now += 1;
        self.deliver_due();
        self.restart_due();
        if self.partition_until.is_some_and(|t| t <= self.now) {
            self.heal();
        }
        let Some(i) = self.random_up() else { return };
        let roll = self.rng.random_range(0..1000u32);
        match roll {
            0..350 => self.allocate(i, Request::Any),
            350..400 => {
                let off = self.rng.random_range(0..self.pool.size() as u64);
                let addr = nth_addr(self.pool, off);
                self.allocate(i, Request::Addr(addr));
            }
            400..420 => {
                let off = self.rng.random_range(0..self.pool.size() as u64) & !15;
                let net = IpNet::new(nth_addr(self.pool, off), 28).expect("valid /28");
                self.allocate(i, Request::Within(net));
            }
            420..670 => self.release(i),
            670..890 => {
                let j = self.random_peer(i);
                self.gossip(i, j);
            }
            890..970 => {}
            970..985 => self.crash(i),
            985 if self.partition_until.is_none() => self.partition(),
            986 if self.rng.random_bool(0.5) => self.kill(i),
            987..1000 => self.start_reclaims(),
            _ => {}
        }
    }

    /// Heals everything, restarts everyone, reclaims every dead replica, and
    /// gossips until all live replicas hold the same ring. Returns the rounds taken.
    fn converge(&mut self) -> Option<u64> {
        self.heal();
        for n in &mut self.nodes {
            n.down_until = None;
        }
        let dead: Vec<usize> = (0..self.nodes.len()).filter(|&d| self.nodes[d].dead).collect();
        for d in dead {
            let Some(i) = self.random_up() else { break };
            let name = self.names[d];
            if self.nodes[i].replica.begin_reclaim(name).is_ok() {
                // Dead for good: the operator confirms it (`weft rmpeer
                // --gone`), so the heir may use its space and the reclaims
                // it was a voter or candidate of move on.
                let _ = self.nodes[i].replica.confirm_gone(name);
                self.c.reclaims_started += 1;
                self.nodes[i].wire = None;
            }
        }
        for round in 1..=2_000u64 {
            let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.nodes[i].dead).collect();
            for &i in &live {
                for _ in 0..2 {
                    let j = self.random_peer(i);
                    self.gossip(i, j);
                }
            }
            for _ in 0..6 {
                self.now += 1;
                self.deliver_due();
            }
            if self.converged() {
                return Some(round);
            }
        }
        None
    }

    /// One line on the state of the run.
    fn progress(&self) {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| !n.dead).collect();
        let down = live.iter().filter(|n| n.down_until.is_some()).count();
        let held: usize = live.iter().map(|n| n.replica.allocated()).sum();
        let view = live.iter().find_map(|n| n.replica.ring());
        let pending = view.map_or(0, |r| {
            r.reclaims()
                .values()
                .filter(|s| matches!(s, ipam_crdt::ReclaimStatus::Pending { .. }))
                .count()
        });
        println!(
            "step {:>7}: {} live ({} down, {} dead), {}, {} addresses held, {} ranges in view, {} donations, {} reclaims pending",
            self.now,
            live.len(),
            down,
            self.nodes.len() - live.len(),
            if self.partition_until.is_some() {
                "partitioned"
            } else {
                "connected"
            },
            held,
            view.map_or(0, Ring::len),
            self.c.donations,
            pending,
        );
    }

    fn converged(&self) -> bool {
        let mut live = self.nodes.iter().filter(|n| !n.dead).map(|n| n.replica.ring());
        let Some(Some(first)) = live.next() else { return false };
        let pending = first
            .reclaims()
            .values()
            .any(|s| matches!(s, ipam_crdt::ReclaimStatus::Pending { .. }));
        !pending && live.all(|r| r == Some(first))
    }

    fn report(&self, args: &Args, rounds: Option<u64>, elapsed_ms: u128) -> serde_json::Value {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.nodes[i].dead).collect();
        // Duplicates: one address held by two live replicas (or twice by one).
        let mut holders: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for &i in &live {
            for (_, addr) in self.nodes[i].replica.allocations() {
                *holders.entry(addr).or_default() += 1;
            }
        }
        let duplicates = holders.values().filter(|&&n| n > 1).count();
        // Lost: acknowledged, never released, but no longer held by a live replica.
        let lost = self
            .acked
            .iter()
            .filter(|((i, key), addr)| !self.nodes[*i].dead && self.nodes[*i].replica.lookup(key) != Some(**addr))
            .count();
        let violations = live
            .iter()
            .filter(|&&i| self.nodes[i].replica.verify().is_err())
            .count();
        // Misplaced: a live allocation outside its holder's ranges in the (converged) ring of node 0's view.
        let ring: Option<&Ring> = live.first().and_then(|&i| self.nodes[i].replica.ring());
        let misplaced = live
            .iter()
            .flat_map(|&i| self.nodes[i].replica.allocations().map(move |(_, a)| (i, a)))
            .filter(|(i, a)| ring.and_then(|r| r.owner_of(*a)) != Some(self.names[*i]))
            .count();
        serde_json::json!({
            "peers": args.peers,
            "steps": args.steps,
            "seed": args.seed,
            "pool": self.pool.to_string(),
            "loss_percent": args.loss,
            "converged": rounds.is_some() && misplaced == 0,
            "converge_rounds": rounds,
            "duplicate_addresses": duplicates + misplaced,
            "lost_allocations": lost,
            "allocations": self.c.allocations,
            "live_allocations": holders.values().map(|&n| u64::from(n)).sum::<u64>(),
            "alloc_refused": self.c.alloc_refused,
            "releases": self.c.releases,
            "donations": self.c.donations,
            "donations_refused": self.c.donations_refused,
            "claims": self.c.claims,
            "crashes": self.c.crashes,
            "partitions": self.c.partitions,
            "deaths": self.c.deaths,
            "reclaims_started": self.c.reclaims_started,
            "reclaims_completed": self.c.reclaims_completed,
            "messages_sent": self.c.sent,
            "messages_lost": self.c.lost,
            "mean_message_bytes": self.c.sent_bytes / self.c.sent.max(1),
            "merge_errors": self.c.merge_errors,
            "invariant_violations": violations,
            "ring_entries": ring.map_or(0, Ring::len),
            "ring_bytes": ring.map_or(0, |r| r.encode().len()),
            "elapsed_ms": elapsed_ms,
        })
    }

    // ---- actions ----

    fn allocate(&mut self, i: usize, req: Request) {
        self.next_container += 1;
        let key = AllocKey::new(format!("c{}", self.next_container), "eth0").expect("valid key");
        self.try_allocate(i, key, req, true);
    }

    fn try_allocate(&mut self, i: usize, key: AllocKey, req: Request, may_ask: bool) {
        match self.nodes[i].replica.allocate(key.clone(), req) {
            Ok(a) => {
                self.nodes[i].wire = None;
                self.c.allocations += 1;
                let prev = self.acked.insert((i, key), a.addr);
                assert!(prev.is_none() || prev == Some(a.addr), "a key's address changed");
            }
            Err(AllocError::AskPeer { peer, want }) if may_ask && self.nodes[i].waiting.is_empty() => {
                if !matches!(want, Want::Any) {
                    self.c.claims += 1;
                }
                self.nodes[i].waiting.push((key, req));
                let j = self.index_of(peer);
                self.send(i, j, Msg::SpaceRequest(want));
            }
            Err(_) => self.c.alloc_refused += 1,
        }
    }

    fn release(&mut self, i: usize) {
        let n = self.nodes[i].replica.allocated();
        if n == 0 {
            return;
        }
        let k = self.rng.random_range(0..n);
        let key = self.nodes[i]
            .replica
            .allocations()
            .nth(k)
            .map(|(k, _)| k.clone())
            .expect("k < n");
        self.nodes[i].replica.release(&key).expect("held");
        self.nodes[i].wire = None;
        self.acked.remove(&(i, key));
        self.c.releases += 1;
    }

    fn gossip(&mut self, i: usize, j: usize) {
        if let Some(bytes) = self.wire(i) {
            self.send(i, j, Msg::Gossip(bytes));
        }
    }

    /// Node `i`'s encoded ring, encoded once per change.
    fn wire(&mut self, i: usize) -> Option<Rc<[u8]>> {
        let n = &mut self.nodes[i];
        if n.wire.is_none() {
            n.wire = n.replica.ring().map(|r| Rc::from(r.encode()));
        }
        n.wire.clone()
    }

    fn crash(&mut self, i: usize) {
        self.c.crashes += 1;
        let down = self.rng.random_range(20..200);
        let n = &mut self.nodes[i];
        n.down_until = Some(self.now + down);
        // Everything was persisted before it was acknowledged or sent: restart from disk.
        let disk = n.replica.encode();
        n.replica = Replica::decode(&disk).expect("own disk form decodes");
        n.waiting.clear();
    }

    fn partition(&mut self) {
        self.c.partitions += 1;
        for n in &mut self.nodes {
            n.group = self.rng.random_range(0..2);
        }
        self.partition_until = Some(self.now + self.rng.random_range(200..2_000));
    }

    fn heal(&mut self) {
        self.partition_until = None;
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// Declares `i` dead for good, keeping at least two thirds of the replicas alive.
    fn kill(&mut self, i: usize) {
        let dead = self.nodes.iter().filter(|n| n.dead).count();
        if (dead + 1) * 3 > self.nodes.len() || i == 0 && self.nodes.len() < 3 {
            return;
        }
        self.c.deaths += 1;
        self.nodes[i].dead = true;
    }

    /// Starts the reclaim of a random dead replica on one or two live ones,
    /// on both sides of the partition if there is one.
    fn start_reclaims(&mut self) {
        let dead: Vec<usize> = (0..self.nodes.len()).filter(|&d| self.nodes[d].dead).collect();
        if dead.is_empty() {
            return;
        }
        let d = dead[self.rng.random_range(0..dead.len())];
        let starters = self.rng.random_range(1..=2);
        for g in 0..starters {
            let candidates: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.is_up(i) && (self.partition_until.is_none() || self.nodes[i].group == g))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let i = candidates[self.rng.random_range(0..candidates.len())];
            let name = self.names[d];
            if self.nodes[i].replica.begin_reclaim(name).is_ok() {
                // Dead for good: the operator confirms it (`weft rmpeer
                // --gone`), so the heir may use its space and the reclaims
                // it was a voter or candidate of move on.
                let _ = self.nodes[i].replica.confirm_gone(name);
                self.c.reclaims_started += 1;
                self.nodes[i].wire = None;
            }
        }
    }

    // ---- network ----

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.c.sent += 1;
        self.c.sent_bytes += match &msg {
            Msg::Gossip(b) | Msg::SpaceReply(b) => b.len() as u64,
            Msg::SpaceRequest(_) => 32,
        };
        if self.rng.random_bool(self.loss) {
            self.c.lost += 1;
            return;
        }
        self.seq += 1;
        let at = self.now + self.rng.random_range(1..=5);
        self.queue.push(Reverse((at, self.seq, to)));
        self.bodies.insert(self.seq, (from, to, msg));
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse((at, seq, _))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let (from, to, msg) = self.bodies.remove(&seq).expect("every queued message has a body");
            // Dead senders' in-flight messages are lost; so are messages to
            // down or dead replicas and across a partition.
            if self.nodes[from].dead || !self.is_up(to) || self.nodes[from].group != self.nodes[to].group {
                self.c.lost += 1;
                continue;
            }
            self.handle(from, to, msg);
        }
    }

    fn handle(&mut self, from: usize, to: usize, msg: Msg) {
        match msg {
            Msg::Gossip(bytes) => {
                self.merge(to, &bytes);
            }
            Msg::SpaceRequest(want) => {
                let asker = self.names[from];
                match self.nodes[to].replica.donate(asker, want) {
                    Ok(_) => {
                        self.c.donations += 1;
                        self.nodes[to].wire = None;
                        let bytes = self.wire(to).expect("donor has a ring");
                        self.send(to, from, Msg::SpaceReply(bytes));
                    }
                    Err(_) => {
                        self.c.donations_refused += 1;
                        // Tell the asker by gossip: it learns the donor's state and can ask elsewhere.
                        self.gossip(to, from);
                    }
                }
            }
            Msg::SpaceReply(bytes) => {
                self.merge(to, &bytes);
                for (key, req) in std::mem::take(&mut self.nodes[to].waiting) {
                    self.try_allocate(to, key, req, false);
                }
            }
        }
    }

    fn merge(&mut self, i: usize, bytes: &[u8]) {
        let ring = Ring::decode(bytes).expect("replicas send valid rings");
        match self.nodes[i].replica.merge(&ring) {
            Ok(out) => {
                self.c.reclaims_completed += out.reclaimed.len() as u64;
                if out.changed {
                    self.nodes[i].wire = None;
                }
            }
            Err(e) => {
                self.c.merge_errors += 1;
                eprintln!("ringsim: step {}: replica {i} refused a merge: {e}", self.now);
            }
        }
    }

    // ---- helpers ----

    fn restart_due(&mut self) {
        for n in &mut self.nodes {
            if n.down_until.is_some_and(|t| t <= self.now) {
                n.down_until = None;
            }
        }
    }

    fn is_up(&self, i: usize) -> bool {
        !self.nodes[i].dead && self.nodes[i].down_until.is_none()
    }

    fn random_up(&mut self) -> Option<usize> {
        for _ in 0..64 {
            let i = self.rng.random_range(0..self.nodes.len());
            if self.is_up(i) {
                return Some(i);
            }
        }
        (0..self.nodes.len()).find(|&i| self.is_up(i))
    }

    fn random_peer(&mut self, i: usize) -> usize {
        let j = self.rng.random_range(0..self.nodes.len() - 1);
        if j >= i { j + 1 } else { j }
    }

    fn index_of(&self, name: PeerName) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .expect("every owner is a simulated replica")
    }
}

fn nth_addr(pool: Pool, off: u64) -> IpAddr {
    match pool.net() {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + off as u32).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + u128::from(off)).into()),
    }
}
