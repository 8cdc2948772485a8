//! Deterministic simulation of N routers' mesh cores on virtual time.
//!
//! ```text
//! cargo run --release --example meshsim -- --routers 1000 --seed 1 [--loss 5] [--partition-secs 30]
//! ```
//!
//! Routers launch one by one, each pointed (`weft launch PEER`) at a random
//! router already running. Control connections are modelled as QUIC gives
//! them: a dial succeeds after a round trip if the other router is up and
//! reachable, else fails after a timeout; messages on a connection are
//! reliable, delayed 2-20 ms, and at `--loss` percent each transmission is
//! lost and retransmitted after 200 ms. Every message is encoded with the
//! wire codec to count bytes. Once the views converge, a partition splits
//! the routers in two for `--partition-secs` (connections across it time
//! out after 5 s, dials across it fail) and heals.
//!
//! The last output line is a JSON object: `converged` means every router
//! knows every other with the same versions (equal summaries) and routes to
//! all of them over confirmed connections. Exits 1 if not converged.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use ipam_crdt::PeerName;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_router::core::Time;
use weft_router::core::mesh::{Config, ConnId, Failure, Mesh, Message};

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!(
                "meshsim: {msg}\nusage: meshsim --routers N --seed S [--loss PERCENT] [--partition-secs T] [--join-ms MS]"
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
    let first = sim.run_until_converged(joined_at, Duration::from_secs(600));
    println!(
        "meshsim: all joined at {:?}; views converged {}",
        joined_at,
        first.map_or("never".into(), |t| format!("at {t:?}"))
    );
    let mut after_heal = None;
    if let Some(t) = first {
        let split = t + Duration::from_secs(10);
        sim.run_until(split);
        sim.partition();
        println!("meshsim: partition at {split:?} for {} s", args.partition_secs);
        let heal = split + Duration::from_secs(args.partition_secs);
        sim.run_until(heal);
        sim.heal();
        after_heal = sim
            .run_until_converged(heal, Duration::from_secs(600))
            .map(|c| c.since(heal));
        println!(
            "meshsim: healed at {heal:?}; converged {}",
            after_heal.map_or("never".into(), |d| format!("{} ms later", d.as_millis()))
        );
    }
    // Steady state: bytes over a quiet two minutes.
    let window = Duration::from_secs(120);
    let bytes_before = sim.bytes;
    let from = sim.now;
    sim.run_until(from + window);
    let steady = (sim.bytes - bytes_before) as f64 / args.routers as f64 / window.as_secs_f64();
    let converged = first.is_some() && after_heal.is_some() && sim.converged();
    let degrees: Vec<usize> = sim
        .routers
        .iter()
        .filter_map(|r| r.mesh.as_ref())
        .map(|m| m.neighbours().count())
        .collect();
    let report = serde_json::json!({
        "routers": args.routers,
        "seed": args.seed,
        "loss_percent": args.loss,
        "partition_secs": args.partition_secs,
        "converged": converged,
        "first_converged_ms": first.map(Time::as_millis),
        "converged_after_ms": after_heal.map(|d| d.as_millis() as u64),
        "control_bytes_per_router_per_sec": (steady * 10.0).round() / 10.0,
        "total_control_bytes": sim.bytes,
        "messages": sim.messages,
        "max_degree": degrees.iter().max(),
        "mean_degree": degrees.iter().sum::<usize>() as f64 / degrees.len().max(1) as f64,
        "duplicate_addresses": serde_json::Value::Null,
        "ipam": "not simulated yet: IPAM over the mesh is the next part of this issue",
        "virtual_ms": sim.now.as_millis(),
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{report}");
    if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Args {
    routers: usize,
    seed: u64,
    loss: f64,
    partition_secs: u64,
    join_ms: u64,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut a = Self {
            routers: 0,
            seed: 0,
            loss: 0.0,
            partition_secs: 30,
            join_ms: 50,
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
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        a.routers = routers.ok_or("--routers is required")?;
        a.seed = seed.ok_or("--seed is required")?;
        if a.routers < 2 || a.routers > 60_000 {
            return Err("--routers must be between 2 and 60000".into());
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
    mesh: Option<Mesh>,
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
        msg: Message,
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
    /// Open connections by (router, peer name), newest last.
    by_pair: BTreeMap<(usize, PeerName), Vec<ConnId>>,
    next_conn: u64,
    loss: f64,
    bytes: u64,
    messages: u64,
}

impl Sim {
    fn new(args: &Args) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let routers: Vec<Router> = (0..args.routers)
            .map(|i| Router {
                name: PeerName::from_u64(rng.random()),
                addr: SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i as u32 + 1), 6783)),
                mesh: None,
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
            by_pair: BTreeMap::new(),
            next_conn: 0,
            loss: args.loss / 100.0,
            bytes: 0,
            messages: 0,
        };
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

    /// Runs in 500 ms slices until converged; returns when, or `None` after `limit`.
    fn run_until_converged(&mut self, from: Time, limit: Duration) -> Option<Time> {
        let mut t = from;
        while t <= from + limit {
            self.run_until(t);
            if self.converged() {
                return Some(t);
            }
            t = t + Duration::from_millis(500);
        }
        None
    }

    fn converged(&self) -> bool {
        let n = self.routers.len();
        let Some(first) = self.routers[0].mesh.as_ref() else {
            return false;
        };
        let summary = first.topology().summary();
        self.routers.iter().all(|r| {
            r.mesh
                .as_ref()
                .is_some_and(|m| m.topology().len() == n && m.topology().summary() == summary)
        }) && first.topology().next_hops().len() == n - 1
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Launch(i) => {
                let r = &self.routers[i];
                let seed = self.rng.random();
                let mut mesh = Mesh::new(Config::default(), r.name, format!("r{i}"), vec![r.addr], now, seed);
                if i > 0 {
                    let j = self.rng.random_range(0..i);
                    mesh.connect(now, self.routers[j].addr);
                }
                self.routers[i].mesh = Some(mesh);
                self.drain(i);
            }
            Ev::Wake(i) => {
                if self.routers[i].wake == Some(now) {
                    self.routers[i].wake = None;
                    self.mesh(i).handle_timeout(now);
                    self.drain(i);
                }
            }
            Ev::Dial { from, addr, ok } => self.dial_done(from, addr, ok),
            Ev::Deliver { conn, from, to, msg } => {
                if self.links.contains_key(&conn) {
                    let name = self.routers[from].name;
                    self.mesh(to).handle_message(now, name, msg);
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
        if !ok || self.routers[to].mesh.is_none() || self.routers[from].group != self.routers[to].group {
            self.mesh(from).handle_dial_failed(now, addr, Failure::Unreachable);
            self.drain(from);
            return;
        }
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let (from_name, to_name) = (self.routers[from].name, self.routers[to].name);
        match self.mesh(to).handle_connected(now, from_name, conn, None) {
            Err(refused) => {
                self.drain(to);
                self.mesh(from).handle_dial_failed(now, addr, refused.0);
                self.drain(from);
            }
            Ok(replaced_to) => {
                self.links.insert(conn, (from, to));
                self.by_pair.entry((from, to_name)).or_default().push(conn);
                self.by_pair.entry((to, from_name)).or_default().push(conn);
                match self.mesh(from).handle_connected(now, to_name, conn, Some(addr)) {
                    Err(refused) => {
                        self.drain(from);
                        self.close(conn, refused.0);
                    }
                    Ok(replaced_from) => {
                        for old in [replaced_to, replaced_from].into_iter().flatten() {
                            self.close(old, Failure::Lost("replaced by a newer connection".into()));
                        }
                        self.drain(from);
                    }
                }
                self.drain(to);
            }
        }
    }

    /// Closes a connection on both ends.
    fn close(&mut self, conn: ConnId, reason: Failure) {
        let Some((a, b)) = self.links.remove(&conn) else { return };
        let now = self.now;
        let (na, nb) = (self.routers[a].name, self.routers[b].name);
        for key in [(a, nb), (b, na)] {
            if let Some(v) = self.by_pair.get_mut(&key) {
                v.retain(|c| *c != conn);
                if v.is_empty() {
                    self.by_pair.remove(&key);
                }
            }
        }
        self.mesh(a).handle_disconnected(now, nb, conn, reason.clone());
        self.drain(a);
        self.mesh(b).handle_disconnected(now, na, conn, reason);
        self.drain(b);
    }

    /// Carries out everything router `i`'s core asked for.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some((to_name, msg)) = self.mesh(i).poll_transmit() {
            let Some(conn) = self.conn_between(i, to_name) else {
                continue;
            };
            let (a, b) = self.links[&conn];
            let to = if a == i { b } else { a };
            self.bytes += postcard::to_allocvec(&msg).expect("encodes").len() as u64 + FRAME_OVERHEAD;
            self.messages += 1;
            let mut delay = Duration::from_millis(self.rng.random_range(2..=20));
            while self.rng.random_bool(self.loss) {
                delay += Duration::from_millis(200);
            }
            self.at(now + delay, Ev::Deliver { conn, from: i, to, msg });
        }
        while let Some(addr) = self.mesh(i).poll_dial() {
            let reachable = self.by_addr.get(&addr).is_some_and(|&j| self.routers[j].mesh.is_some());
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
        while self.mesh(i).poll_event().is_some() {}
        let next = self.mesh(i).poll_timeout().max(now + Duration::from_millis(1));
        if self.routers[i].wake.is_none_or(|w| next < w) {
            self.routers[i].wake = Some(next);
            self.at(next, Ev::Wake(i));
        }
    }

    fn conn_between(&self, i: usize, peer: PeerName) -> Option<ConnId> {
        // Newest open connection between the two (the one both cores keep).
        self.by_pair.get(&(i, peer)).and_then(|v| v.last().copied())
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

    fn mesh(&mut self, i: usize) -> &mut Mesh {
        self.routers[i].mesh.as_mut().expect("only launched routers act")
    }
}

/// Length prefix and message type on a QUIC stream, roughly.
const FRAME_OVERHEAD: u64 = 4;
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
