//! Deterministic simulation of N routers on virtual time: each is the router
//! core the daemon runs ([`Node`]: mesh, IPAM agent, message routing), fed
//! by a simulated network instead of sockets.
//!
//! ```text
//! cargo run --release -p weft-router --bin meshsim -- --routers 1000 --seed 1 [--loss 5] [--partition-secs 30]
//!     [--init-peer-count N] [--allocs K] [--silent-router I]
//! ```
//!
//! Routers launch one by one, each pointed (`weft launch PEER`) at a random
//! router already running. The IPAM ring is created as `weft launch` creates
//! it: by consensus among `--init-peer-count` routers, by default the launch
//! default (PEER arguments + 1, so the first router creates it alone). Every
//! router allocates `--allocs` addresses as soon as it runs, and one more on
//! each side of the partition while it lasts. `--silent-router I` keeps router
//! `I` cut off from everyone from its launch until some router has a ring, as
//! a member of `--init-peer-count` that died before it acked and comes back
//! later (the others create the ring by a quorum, and it adopts it). Control connections are modelled as QUIC gives
//! them: a dial succeeds after a round trip if the other router is up and
//! reachable, else fails after a timeout; messages on a connection are
//! reliable, delayed 2-20 ms, and at `--loss` percent each transmission is
//! lost and retransmitted after 200 ms. Every message is encoded with the
//! wire codec to count bytes. Once the views converge, a partition splits
//! the routers in two for `--partition-secs` (connections across it time
//! out after 5 s, dials across it fail) and heals.
//!
//! IPAM messages travel on the same connections, routed by the same `Node`
//! as the daemon's. Writes of the IPAM record are acknowledged at once:
//! nothing crashes here, so nothing needs the disk.
//!
//! The last output line is a JSON object: `converged` means every router
//! knows every other with the same versions (equal summaries), routes to all
//! of them over confirmed connections, and holds the same ring;
//! `converged_after_ms` is when after the heal, and
//! `views_converged_after_ms` / `rings_converged_after_ms` when each half
//! first held (which one is the tail).
//! `duplicate_addresses` counts addresses allocated by more than one router;
//! `misplaced_addresses` those allocated outside the ring's ranges of their
//! router. `allocation_failures_with_space` counts allocations that failed
//! although a router on the requester's side of the partition (any router,
//! outside one) had free space then; `max_allocation_ms` is the longest an
//! allocation took, in virtual time, among those asked for by a router that
//! had the ring (before it, an allocation waits for the ring);
//! `ipam_bytes_by_kind` splits `ipam_bytes` by message kind, and
//! `ring_entries` is the size of the largest ring at the end (every router
//! must learn about each entry, so IPAM bytes per router grow at least
//! with it). Exits 1 unless
//! converged with none of either and no failure with space, and with
//! `--heal-within-secs T`, unless converged within T s of the heal.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use ipam_crdt::{AllocKey, PeerName, Pool, Request};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_router::core::Time;
use weft_router::core::endpoints::{LocalAddr, Policy};
use weft_router::core::ipam_agent::Init;
use weft_router::core::mesh::{self, ConnId, Failure};
use weft_router::core::names::PeerAddr;
use weft_router::core::node::{self, Node, Outgoing, Output, Reply, ReplyTo};

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!(
                "meshsim: {msg}\nusage: meshsim --routers N --seed S [--loss PERCENT] [--partition-secs T] [--join-ms MS] \\\n               [--init-peer-count N] [--allocs K] [--silent-router I] \\\n               [--heal-within-secs T]"
            );
            return ExitCode::from(2);
        }
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "wall-clock run time of the simulator itself, not a core"
    )]
    let started = std::time::Instant::now();
    let mut sim = Sim::new(&args);
    println!(
        "meshsim: {} routers join one by one, {} ms apart; seed {}",
        args.routers, args.join_ms, args.seed
    );
    let joined_at = Time::from_millis(args.join_ms * args.routers as u64);
    sim.run_until(joined_at);
    let first = sim.run_until_converged(joined_at, Duration::from_secs(600)).both;
    println!(
        "meshsim: all joined at {:?}; views converged {} ({:.1} s run time)",
        joined_at,
        first.map_or("never".into(), |t| format!("at {t:?}")),
        started.elapsed().as_secs_f64()
    );
    let mut after_heal = None;
    let mut heal_parts: (Option<Duration>, Option<Duration>) = (None, None);
    if let Some(t) = first {
        let split = t + Duration::from_secs(10);
        sim.run_until(split);
        sim.partition();
        println!("meshsim: partition at {split:?} for {} s", args.partition_secs);
        // Allocation goes on on both sides.
        sim.run_until(split + Duration::from_secs(args.partition_secs / 2));
        for i in 0..sim.routers.len() {
            sim.allocate(i);
        }
        let heal = split + Duration::from_secs(args.partition_secs);
        sim.run_until(heal);
        sim.heal();
        let c = sim.run_until_converged(heal, Duration::from_secs(600));
        after_heal = c.both.map(|c| c.since(heal));
        heal_parts = (c.views.map(|t| t.since(heal)), c.rings.map(|t| t.since(heal)));
        let ms = |d: Option<Duration>| d.map_or("never".into(), |d| format!("{} ms later", d.as_millis()));
        println!(
            "meshsim: healed at {heal:?}; converged {} (views {}, rings {}; {:.1} s run time)",
            ms(after_heal),
            ms(heal_parts.0),
            ms(heal_parts.1),
            started.elapsed().as_secs_f64()
        );
    }
    // Steady state: bytes over a quiet two minutes.
    let window = Duration::from_secs(120);
    let bytes_before = sim.bytes;
    let from = sim.now;
    sim.run_until(from + window);
    let steady = (sim.bytes - bytes_before) as f64 / args.routers as f64 / window.as_secs_f64();
    let converged = first.is_some() && after_heal.is_some() && sim.converged();
    let (duplicates, misplaced) = sim.address_check();
    let converged = converged && duplicates == 0 && misplaced == 0;
    let healed_in_time = args
        .heal_within
        .is_none_or(|limit| after_heal.is_some_and(|d| d <= limit));
    if !healed_in_time {
        println!(
            "meshsim: converged {} after the heal: later than --heal-within-secs {}",
            after_heal.map_or("never".into(), |d| format!("{} ms", d.as_millis())),
            args.heal_within.map_or(0, |d| d.as_secs())
        );
    }
    let ok = converged && sim.failures_with_space == 0 && healed_in_time;
    let origins: std::collections::BTreeSet<String> = sim
        .routers
        .iter()
        .filter_map(|r| r.node.as_ref()?.replica().ring().map(|g| g.origin().to_string()))
        .collect();
    let ring_entries = sim
        .routers
        .iter()
        .filter_map(|r| r.node.as_ref()?.replica().ring().map(|g| g.len()))
        .max();
    let degrees: Vec<usize> = sim
        .routers
        .iter()
        .filter_map(|r| r.node.as_ref())
        .map(|n| n.neighbours().count())
        .collect();
    let report = serde_json::json!({
        "routers": args.routers,
        "seed": args.seed,
        "loss_percent": args.loss,
        "partition_secs": args.partition_secs,
        "converged": converged,
        "first_converged_ms": first.map(Time::as_millis),
        "converged_after_ms": after_heal.map(|d| d.as_millis() as u64),
        "views_converged_after_ms": heal_parts.0.map(|d| d.as_millis() as u64),
        "rings_converged_after_ms": heal_parts.1.map(|d| d.as_millis() as u64),
        "control_bytes_per_router_per_sec": (steady * 10.0).round() / 10.0,
        "total_control_bytes": sim.bytes,
        "messages": sim.messages,
        "max_degree": degrees.iter().max(),
        "mean_degree": degrees.iter().sum::<usize>() as f64 / degrees.len().max(1) as f64,
        "ipam_bytes": sim.ipam_bytes,
        "ipam_messages_and_bytes_by_kind": sim.ipam_kinds,
        "ipam_bytes_by_kind": sim.ipam_kinds.iter().map(|(k, (_, b))| (*k, *b)).collect::<BTreeMap<_, _>>(),
        "rings": origins.len(),
        "ring_entries": ring_entries,
        "allocations": sim.allocations.len(),
        "allocation_failures": sim.failures,
        "allocation_failures_with_space": sim.failures_with_space,
        "allocation_failure_examples": sim.failure_examples,
        "max_allocation_ms": sim.max_alloc.as_millis() as u64,
        "duplicate_addresses": duplicates,
        "misplaced_addresses": misplaced,
        "virtual_ms": sim.now.as_millis(),
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{report}");
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// When a run converged ([`Sim::run_until_converged`]), in parts.
#[derive(Default)]
struct Convergence {
    /// The topology views first agreed.
    views: Option<Time>,
    /// The rings first agreed.
    rings: Option<Time>,
    /// Both at once: converged.
    both: Option<Time>,
}

struct Args {
    routers: usize,
    seed: u64,
    loss: f64,
    partition_secs: u64,
    join_ms: u64,
    /// `--init-peer-count` of every router; `None` is the launch default.
    init_peer_count: Option<usize>,
    allocs: usize,
    /// A router cut off from its launch until a ring exists.
    silent: Option<usize>,
    /// Fail unless views and rings converge this soon after the heal.
    heal_within: Option<Duration>,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut a = Self {
            routers: 0,
            seed: 0,
            loss: 0.0,
            partition_secs: 30,
            join_ms: 50,
            init_peer_count: None,
            allocs: 2,
            silent: None,
            heal_within: None,
        };
        let (mut routers, mut seed) = (None, None);
        while let Some(flag) = it.next() {
            let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag} takes a non-negative integer, got {v:?}"))
            };
            match flag.as_str() {
                "--routers" => routers = Some(num(&v)? as usize),
                "--seed" => seed = Some(num(&v)?),
                "--loss" => a.loss = v.parse().map_err(|_| "--loss takes a percentage, e.g. 5".to_owned())?,
                "--partition-secs" => a.partition_secs = num(&v)?,
                "--join-ms" => a.join_ms = num(&v)?,
                "--init-peer-count" => a.init_peer_count = Some((num(&v)? as usize).max(1)),
                "--allocs" => a.allocs = num(&v)? as usize,
                "--silent-router" => a.silent = Some(num(&v)? as usize),
                "--heal-within-secs" => a.heal_within = Some(Duration::from_secs(num(&v)?)),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        a.routers = routers.ok_or("--routers is required")?;
        a.seed = seed.ok_or("--seed is required")?;
        if a.routers < 2 || a.routers > 60_000 {
            return Err("--routers must be between 2 and 60000".into());
        }
        if a.silent.is_some_and(|i| i >= a.routers) {
            return Err("--silent-router takes the index of a router, below --routers".into());
        }
        if !(0.0..100.0).contains(&a.loss) {
            return Err("--loss must be in [0, 100)".into());
        }
        Ok(a)
    }
}

struct Router {
    name: PeerName,
    addr: SocketAddr,
    node: Option<Node>,
    /// Allocations asked for so far.
    asked: usize,
    group: u8,
    /// The wake-up currently scheduled.
    wake: Option<Time>,
}

#[derive(Debug)]
enum Ev {
    Launch(usize),
    Wake(usize),
    Dial {
        from: usize,
        addr: SocketAddr,
        ok: bool,
    },
    Deliver {
        conn: ConnId,
        from: usize,
        to: usize,
        msg: Outgoing,
    },
    CutAcross,
}

struct Sim {
    rng: ChaCha8Rng,
    routers: Vec<Router>,
    by_addr: BTreeMap<SocketAddr, usize>,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    bodies: BTreeMap<u64, Ev>,
    /// Open connections: id -> (dialer, acceptor).
    links: BTreeMap<ConnId, (usize, usize)>,
    /// Why a router closed a connection (a refusal), for the dialer.
    closed_why: BTreeMap<ConnId, Failure>,
    next_conn: u64,
    loss: f64,
    bytes: u64,
    ipam_bytes: u64,
    /// IPAM messages and bytes by kind.
    ipam_kinds: BTreeMap<&'static str, (u64, u64)>,
    messages: u64,
    init_peer_count: Option<usize>,
    allocs: usize,
    /// Acknowledged allocations: (router, key) -> address.
    allocations: BTreeMap<(usize, String), std::net::IpAddr>,
    /// Allocations not answered yet: reply handle -> (router, key).
    waiting: BTreeMap<ReplyTo, (usize, String)>,
    next_reply: u64,
    failures: u64,
    /// The router kept cut off until a ring exists (`--silent-router`).
    silent: Option<usize>,
    /// Failures while a router on the requester's side had free space.
    failures_with_space: u64,
    /// The first few failures' reasons.
    failure_examples: Vec<String>,
    /// When each waiting allocation was asked for, if its router had the ring then.
    asked_at: BTreeMap<ReplyTo, Time>,
    /// The longest of those, answered.
    max_alloc: Duration,
}

impl Sim {
    fn new(args: &Args) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let routers: Vec<Router> = (0..args.routers)
            .map(|i| Router {
                name: PeerName::from_u64(rng.random()),
                addr: SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i as u32 + 1), 6783)),
                node: None,
                asked: 0,
                group: 0,
                wake: None,
            })
            .collect();
        let by_addr = routers.iter().enumerate().map(|(i, r)| (r.addr, i)).collect();
        let mut sim = Self {
            rng,
            routers,
            by_addr,
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            bodies: BTreeMap::new(),
            links: BTreeMap::new(),
            closed_why: BTreeMap::new(),
            next_conn: 0,
            loss: args.loss / 100.0,
            bytes: 0,
            ipam_bytes: 0,
            ipam_kinds: BTreeMap::new(),
            messages: 0,
            init_peer_count: args.init_peer_count,
            allocs: args.allocs,
            allocations: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_reply: 0,
            failures: 0,
            silent: args.silent,
            failures_with_space: 0,
            failure_examples: Vec::new(),
            asked_at: BTreeMap::new(),
            max_alloc: Duration::ZERO,
        };
        if let Some(i) = args.silent {
            sim.routers[i].group = SILENT_GROUP;
        }
        for i in 0..args.routers {
            sim.at(Time::from_millis(i as u64 * args.join_ms), Ev::Launch(i));
        }
        sim
    }

    fn at(&mut self, t: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.bodies.insert(self.seq, ev);
    }

    fn run_until(&mut self, end: Time) {
        while let Some(&Reverse((t, seq))) = self.queue.peek() {
            if t > end {
                break;
            }
            self.queue.pop();
            self.now = t;
            let ev = self.bodies.remove(&seq).expect("every event has a body");
            self.handle(ev);
        }
        self.now = end;
    }

    /// Runs in 500 ms slices until converged, or for `limit`; says when the
    /// views first agreed, when the rings did, and when both did.
    fn run_until_converged(&mut self, from: Time, limit: Duration) -> Convergence {
        let mut c = Convergence::default();
        let mut t = from;
        while t <= from + limit {
            self.run_until(t);
            self.end_silence();
            let (views, rings) = (self.views_agree(), self.rings_agree());
            if views {
                c.views.get_or_insert(t);
            }
            if rings {
                c.rings.get_or_insert(t);
            }
            if views && rings {
                c.both = Some(t);
                break;
            }
            t = t + Duration::from_millis(500);
        }
        c
    }

    fn converged(&self) -> bool {
        self.views_agree() && self.rings_agree()
    }

    /// Every router knows every router, with the same topology, and the
    /// first has a route to each.
    fn views_agree(&self) -> bool {
        let n = self.routers.len();
        let Some(first) = self.routers[0].node.as_ref() else {
            return false;
        };
        let summary = first.topology().summary();
        self.routers.iter().all(|r| {
            r.node
                .as_ref()
                .is_some_and(|node| node.topology().len() == n && node.topology().summary() == summary)
        }) && first.topology().next_hops().len() == n - 1
    }

    /// Every router holds the same ring.
    fn rings_agree(&self) -> bool {
        let Some(ring) = self.routers[0].node.as_ref().and_then(|n| n.replica().ring()) else {
            return false;
        };
        self.routers
            .iter()
            .all(|r| r.node.as_ref().is_some_and(|node| node.replica().ring() == Some(ring)))
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Launch(i) => {
                let r = &self.routers[i];
                let seed = self.rng.random();
                let peer = (i > 0).then(|| {
                    let mut j = self.rng.random_range(0..i);
                    // Not the silent router, so that nobody waits on it alone.
                    if self.silent == Some(j) {
                        j = (j + 1) % i;
                    }
                    self.routers[j].addr
                });
                let count = self.init_peer_count.unwrap_or(usize::from(peer.is_some()) + 1);
                // As `weft launch` with the default --listen: the router
                // advertises what it learns, here its one interface address.
                let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, r.addr.port()));
                let config = node::Config {
                    me: r.name,
                    nickname: format!("r{i}"),
                    pool: pool(),
                    init: Init::Consensus(count),
                    mesh: mesh::Config::default(),
                    advertise: Policy::new(listen, Vec::new(), vec![pool().net()]),
                    data: None,
                };
                let ip = r.addr.ip();
                let mut node = Node::new(config, None, now, seed).expect("no saved state to mismatch");
                node.set_local_addrs(now, vec![LocalAddr::new("eth0", ip)]);
                if let Some(addr) = peer {
                    node.connect(
                        now,
                        PeerAddr::try_from(addr).expect("every router listens on port 6783"),
                    );
                }
                self.routers[i].node = Some(node);
                for _ in 0..self.allocs {
                    self.allocate(i);
                }
                self.drain(i);
            }
            Ev::Wake(i) => {
                if self.routers[i].wake == Some(now) {
                    self.routers[i].wake = None;
                    self.node(i).handle_timeout(now);
                    self.drain(i);
                }
            }
            Ev::Dial { from, addr, ok } => self.dial_done(from, addr, ok),
            Ev::Deliver { conn, from, to, msg } => {
                if self.links.contains_key(&conn) {
                    let name = self.routers[from].name;
                    match msg {
                        Outgoing::Gossip(m) => self.node(to).handle_gossip(now, name, m),
                        Outgoing::Ipam(m) => self.node(to).handle_ipam(now, name, m),
                    }
                    self.drain(to);
                }
            }
            Ev::CutAcross => {
                let cut: Vec<ConnId> = self
                    .links
                    .iter()
                    .filter(|(_, (a, b))| self.routers[*a].group != self.routers[*b].group)
                    .map(|(c, _)| *c)
                    .collect();
                for c in cut {
                    self.close(c, Failure::Lost("idle timeout".into()));
                }
            }
        }
    }

    fn dial_done(&mut self, from: usize, addr: SocketAddr, ok: bool) {
        let now = self.now;
        let Some(&to) = self.by_addr.get(&addr) else { return };
        if !ok || self.routers[to].node.is_none() || self.routers[from].group != self.routers[to].group {
            self.node(from).handle_dial_failed(now, addr, Failure::Unreachable);
            self.drain(from);
            return;
        }
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let (from_name, to_name) = (self.routers[from].name, self.routers[to].name);
        self.links.insert(conn, (from, to));
        // Each router's QUIC endpoint sends from its listening port.
        let from_addr = self.routers[from].addr;
        self.node(to).handle_connected(now, from_name, conn, None, from_addr);
        if self.node(to).connection_of(from_name) != Some(conn) {
            // Refused by the acceptor: it closes it, and the dialer learns why.
            self.drain(to);
            let why = self.closed_why.remove(&conn).unwrap_or(Failure::Unreachable);
            self.node(from).handle_dial_failed(now, addr, why);
            self.drain(from);
            return;
        }
        // Both ends take it before either closes what it replaces, as the
        // handshake completes on both before a close can cross the network.
        self.node(from).handle_connected(now, to_name, conn, Some(addr), addr);
        self.drain(from);
        self.drain(to);
    }

    /// Closes a connection on both ends.
    fn close(&mut self, conn: ConnId, reason: Failure) {
        let Some((a, b)) = self.links.remove(&conn) else { return };
        let now = self.now;
        let (na, nb) = (self.routers[a].name, self.routers[b].name);
        self.node(a).handle_disconnected(now, nb, conn, reason.clone());
        self.drain(a);
        self.node(b).handle_disconnected(now, na, conn, reason);
        self.drain(b);
    }

    /// Carries out everything router `i`'s core asked for.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(out) = self.node(i).poll_output() {
            match out {
                // Nothing crashes here: every write is durable at once.
                Output::Persist { seq, .. } => self.node(i).handle_persisted(seq),
                Output::Send { to, msg } => self.send(i, to, msg),
                Output::Dial(addr) => {
                    let reachable = self.by_addr.get(&addr).is_some_and(|&j| self.routers[j].node.is_some());
                    let delay = if reachable {
                        Duration::from_millis(self.rng.random_range(4..=40))
                    } else {
                        DIAL_TIMEOUT
                    };
                    self.at(
                        now + delay,
                        Ev::Dial {
                            from: i,
                            addr,
                            ok: reachable,
                        },
                    );
                }
                Output::Close { conn, why } => {
                    self.closed_why.insert(conn, why.clone());
                    self.close(conn, why);
                }
                Output::Reply {
                    to,
                    reply: Reply::Allocate(result),
                } => {
                    let (router, key) = self.waiting.remove(&to).expect("every allocation was recorded");
                    if let Some(at) = self.asked_at.remove(&to) {
                        self.max_alloc = self.max_alloc.max(now.since(at));
                    }
                    if let Err(e) = &result {
                        if self.side_has_space(router) {
                            self.failures_with_space += 1;
                        }
                        if self.failure_examples.len() < 5 {
                            self.failure_examples.push(e.to_string());
                        }
                    }
                    self.record(router, key, result.map(|a| a.addr).ok());
                }
                _ => {}
            }
        }
        let next = self.node(i).poll_timeout().max(now + Duration::from_millis(1));
        if self.routers[i].wake.is_none_or(|w| next < w) {
            self.routers[i].wake = Some(next);
            self.at(next, Ev::Wake(i));
        }
    }

    /// Sends a message from router `i` to its neighbour `to`, on the
    /// connection its core keeps, counting its encoded size.
    fn send(&mut self, i: usize, to: PeerName, msg: Outgoing) {
        let Some(conn) = self.node(i).connection_of(to) else {
            return;
        };
        let Some(&(a, b)) = self.links.get(&conn) else { return };
        let other = if a == i { b } else { a };
        let size = match &msg {
            Outgoing::Gossip(m) => encoded_len(m) + FRAME_OVERHEAD,
            Outgoing::Ipam(m) => {
                let size = encoded_len(m) + FRAME_OVERHEAD;
                let tally = self.ipam_kinds.entry(m.kind()).or_default();
                tally.0 += 1;
                tally.1 += size;
                self.ipam_bytes += size;
                size
            }
        };
        self.bytes += size;
        self.messages += 1;
        let mut delay = Duration::from_millis(self.rng.random_range(2..=20));
        while self.rng.random_bool(self.loss) {
            delay += Duration::from_millis(200);
        }
        self.at(
            self.now + delay,
            Ev::Deliver {
                conn,
                from: i,
                to: other,
                msg,
            },
        );
    }

    /// Router `i` asks for one more address.
    fn allocate(&mut self, i: usize) {
        let now = self.now;
        self.routers[i].asked += 1;
        let key = format!("r{i}-c{}", self.routers[i].asked);
        let alloc_key = AllocKey::new(key.clone(), "eth0").expect("a valid key");
        self.next_reply += 1;
        let to = ReplyTo(self.next_reply);
        self.waiting.insert(to, (i, key));
        if self.node(i).replica().ring().is_some() {
            self.asked_at.insert(to, now);
        }
        self.node(i).allocate(now, to, alloc_key, Request::Any);
        self.drain(i);
    }

    fn record(&mut self, i: usize, key: String, addr: Option<std::net::IpAddr>) {
        match addr {
            Some(a) => {
                self.allocations.insert((i, key), a);
            }
            None => self.failures += 1,
        }
    }

    /// Addresses held by more than one router, and addresses held outside the
    /// holder's ranges in router 0's ring. Every replica's own allocations are
    /// read from the replica itself, not from the acknowledgements.
    fn address_check(&self) -> (usize, usize) {
        let mut holders: BTreeMap<std::net::IpAddr, usize> = BTreeMap::new();
        let mut misplaced = 0;
        let ring = self.routers[0].node.as_ref().and_then(|n| n.replica().ring());
        for r in &self.routers {
            let Some(node) = &r.node else { continue };
            for (_, addr) in node.replica().allocations() {
                *holders.entry(addr).or_default() += 1;
                if ring.is_none_or(|g| g.owner_of(addr) != Some(r.name)) {
                    misplaced += 1;
                }
            }
        }
        for ((i, key), addr) in &self.allocations {
            let held = self.routers[*i]
                .node
                .as_ref()
                .and_then(|n| n.replica().lookup(&AllocKey::new(key.clone(), "eth0").expect("valid")));
            if held != Some(*addr) {
                misplaced += 1;
            }
        }
        (holders.values().filter(|n| **n > 1).count(), misplaced)
    }

    /// Brings the `--silent-router` back once another router has a ring.
    fn end_silence(&mut self) {
        let Some(i) = self.silent else { return };
        let ring = self
            .routers
            .iter()
            .enumerate()
            .any(|(j, r)| j != i && r.node.as_ref().is_some_and(|n| n.replica().ring().is_some()));
        if ring {
            self.silent = None;
            self.routers[i].group = 0;
            println!(
                "meshsim: router {i} was cut off until the ring existed; reachable from {:?}",
                self.now
            );
        }
    }

    /// Whether a router on router `i`'s side of the partition (or any
    /// router, when there is none) owns free addresses now.
    fn side_has_space(&self, i: usize) -> bool {
        let group = self.routers[i].group;
        self.routers
            .iter()
            .filter(|r| r.group == group)
            .filter_map(|r| r.node.as_ref())
            .any(|n| n.replica().free() > 0)
    }

    fn partition(&mut self) {
        for r in &mut self.routers {
            r.group = self.rng.random_range(0..2);
        }
        self.at(self.now + Duration::from_secs(5), Ev::CutAcross);
    }

    fn heal(&mut self) {
        for r in &mut self.routers {
            r.group = 0;
        }
    }

    fn node(&mut self, i: usize) -> &mut Node {
        self.routers[i].node.as_mut().expect("only launched routers act")
    }
}

/// The postcard length of a message, without encoding it.
fn encoded_len<T: serde::Serialize>(msg: &T) -> u64 {
    postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        msg,
        postcard::ser_flavors::Size::default(),
    )
    .expect("every message encodes") as u64
}

/// `weft launch`'s default `--ipalloc-range`.
fn pool() -> Pool {
    Pool::new("10.32.0.0/12".parse().expect("a valid CIDR")).expect("a valid pool")
}

/// The group of the `--silent-router` while it is cut off: no other router's.
const SILENT_GROUP: u8 = u8::MAX;

/// Length prefix and message type on a QUIC stream, roughly.
const FRAME_OVERHEAD: u64 = 4;
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
