//! The whole router's decisions, composed: one sans-IO core that the daemon
//! (`io::daemon`) and the simulator (`bin/meshsim.rs`) both drive.
//!
//! A [`Node`] owns the mesh ([`Mesh`]), the IPAM agent ([`Agent`]) and the
//! glue between them that used to live in the daemon: routing IPAM messages
//! along cached next hops, the host's own address on the pod network,
//! `weft reset` and its heir, the `weft rmpeer` safety rule, the PEERs the
//! operator gave (hostnames included), which addresses to try for every
//! other router's data plane, and the kernel state the ring asks for.
//!
//! # Driving it
//!
//! Like `quinn_proto::Connection`: feed events in through `handle_*`
//! (connections, messages, timeouts, name resolutions, finished writes) and
//! commands (the local API's: [`Node::allocate`], [`Node::rmpeer`], ...),
//! then drain [`Node::poll_output`] until it returns `None`, and call
//! [`Node::handle_timeout`] at [`Node::poll_timeout`]. Queries
//! ([`Node::peer_rows`], [`Node::replica`], ...) change nothing.
//!
//! # Durable before visible
//!
//! An answered allocation, or a ring version others have seen, must survive
//! a crash. So when the IPAM state changes, the outputs hold an
//! [`Output::Persist`]: the shell writes those bytes durably (off its event
//! loop if it likes) and then calls [`Node::handle_persisted`]. Until then
//! [`Node::poll_output`] hands out nothing queued after it: no reply, no
//! message, no dial. Writes are whole snapshots, so a later write queued
//! while an earlier one waits to be handed out is folded into it: however
//! many allocations arrive while one write is in flight, they all wait for
//! the one next write (group commit).
//!
//! Other routers' entries merged from gossip are written lazily
//! ([`ipam_agent`]'s module docs say why that is safe): with the next write,
//! or on their own write, which holds nothing back.
//!
//! A write that fails ([`Node::handle_persist_failed`]: a full or read-only
//! disk) fails what waited for it, not the router: the IPAM state goes back
//! to the last record on disk, every reply waiting for the write answers
//! `cannot persist: ...` ([`Reply::CannotPersist`]), the IPAM messages
//! waiting for it are dropped (they may carry the undone changes), and the
//! router keeps serving; the next change writes again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipam_crdt::{
    AllocError, AllocKey, Allocation, MergeError, PeerName, Pool, ReclaimError, ReclaimStatus, Replica, Request, Ring,
};
use ipnet::{IpNet, Ipv4Net};

use super::Time;
use super::endpoints::{self, LocalAddr, Policy};
use super::ipam::{Resolution, resolve_seeds};
use super::ipam_agent::{self, Agent, AllocFailure, Dest, Init, IpamMsg, PoolMismatch, Progress, Saved, Ticket};
use super::mesh::{self, ConnId, Failure, Mesh, PeerState, Refused};
use super::names::{PeerAddr, PeerRef};
use super::reconcile::{self, Desired, TUN_NAME};
use super::topology::{DataPlane, Topology};

/// What a [`Node`] is made from.
#[derive(Clone, Debug)]
pub struct Config {
    /// This router's name.
    pub me: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// The pod range.
    pub pool: Pool,
    /// How the ring is first divided.
    pub init: Init,
    /// The mesh's tuning.
    pub mesh: mesh::Config,
    /// How it chooses the endpoints it advertises.
    pub advertise: Policy,
    /// Its data plane, if it runs one: published in its entry, and the host
    /// then gets an address on the pod network.
    pub data: Option<DataPlane>,
}

/// The shell's handle on an API call whose answer comes later, as an
/// [`Output::Reply`] (or [`Output::ResetDone`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyTo(pub u64);

/// Something the shell must do, in the order given.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
#[non_exhaustive]
pub enum Output {
    /// Write the IPAM record (`DATA_DIR/ipam`) durably, then call
    /// [`Node::handle_persisted`] with `seq`. Nothing after it comes out
    /// before.
    Persist {
        /// Which write this is.
        seq: u64,
        /// The record.
        bytes: Vec<u8>,
    },
    /// Send `msg` on the control connection to neighbour `to`.
    Send {
        /// The neighbour.
        to: PeerName,
        /// The message.
        msg: Outgoing,
    },
    /// Dial this control endpoint; report with [`Node::handle_connected`]
    /// or [`Node::handle_dial_failed`].
    Dial(SocketAddr),
    /// Close this control connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the other side and the log.
        why: Failure,
    },
    /// Resolve this hostname PEER, and keep trying until it resolves; report
    /// each outcome with [`Node::handle_resolved`].
    Resolve(PeerAddr),
    /// Stop resolving this PEER (it was forgotten).
    StopResolving(PeerAddr),
    /// The answer to an API call.
    Reply {
        /// The call.
        to: ReplyTo,
        /// The answer.
        reply: Reply,
    },
    /// The data plane's peers, and where to try each, changed.
    DataPeers(Vec<DataPeer>),
    /// The ring or the host address changed: the forwarding table and the
    /// kernel's routes and addresses.
    Routes(Routes),
    /// `weft reset` is done: the heir has this router's ranges. Remove the
    /// IPAM record, the identity and the kernel state, answer `to`, and stop.
    ResetDone(ReplyTo),
    /// Something to log or count.
    Event(Event),
}

/// A message for a neighbour, before encoding (`core::wire`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Mesh gossip.
    Gossip(mesh::Message),
    /// IPAM.
    Ipam(IpamMsg),
}

/// The answer to an API call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// [`Node::allocate`].
    Allocate(Result<Allocation, AllocFailure>),
    /// [`Node::release`]: the address freed, if the key had one; refused
    /// ([`AllocError::Removed`]) on a router removed from the ring.
    Release(Result<Option<IpAddr>, AllocError>),
    /// [`Node::rmpeer`]: the reclaim of this router, and how far it got.
    Rmpeer(Result<(PeerName, ReclaimStatus), RmpeerError>),
    /// [`Node::reset`] failed (success is [`Output::ResetDone`]).
    Reset(ResetError),
    /// Any call: the IPAM record could not be written, so what the call did
    /// was undone ([`Node::handle_persist_failed`]). Says why, starting
    /// `cannot persist: `.
    CannotPersist(String),
}

/// A router's data plane as the packet path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPeer {
    /// Its name.
    pub name: PeerName,
    /// Its static public key.
    pub public_key: [u8; 32],
    /// Where to try it, in order ([`endpoints::data_candidates`]).
    pub candidates: Vec<SocketAddr>,
}

/// What the ring asks of the packet path and the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// The pod range.
    pub pod_range: Ipv4Net,
    /// Every range of the ring: first and last address, and its owner.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr, PeerName)>,
    /// The routes and addresses the host should have ([`reconcile::desired`]).
    pub desired: Desired,
}

/// Something worth logging or counting.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A neighbour's control connection is up.
    Up(PeerName),
    /// A neighbour's control connection is gone.
    Down(PeerName),
    /// A control connection was refused (duplicate, over the limit).
    Refused {
        /// The router at the other end.
        peer: PeerName,
        /// Why.
        why: Failure,
    },
    /// The endpoints this router advertises changed.
    Advertising(Vec<SocketAddr>),
    /// The host has its address on the pod network.
    HostAddress(Ipv4Addr),
    /// A hostname PEER resolved.
    Resolved {
        /// The PEER.
        peer: PeerAddr,
        /// Its address.
        addr: SocketAddr,
    },
    /// `weft reset`: this router leaves the ring to `heir`.
    Leaving {
        /// The router taking its ranges.
        heir: PeerName,
    },
    /// The IPAM agent's news (never [`ipam_agent::Event::Allocated`], which
    /// becomes a reply).
    Ipam(ipam_agent::Event),
    /// A write of the IPAM record failed ([`Node::handle_persist_failed`]).
    PersistFailed {
        /// Why, as the shell said.
        error: String,
        /// Changes of this router's waited for it and were undone (else only
        /// other routers' entries did, and they are written again later).
        undone: bool,
    },
}

/// Why `weft rmpeer` refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RmpeerError {
    /// No known router has that nickname.
    #[error("no router with nickname {0} is known")]
    Unknown(String),
    /// Several routers have that nickname.
    #[error("{} routers have nickname {nickname}; name one by its peer name", routers.len())]
    Ambiguous {
        /// The nickname.
        nickname: String,
        /// The routers that carry it.
        routers: Vec<PeerName>,
    },
    /// This router is connected to it: it is alive.
    #[error("router {0} is connected to this router; rmpeer is only for routers that are gone for good")]
    Connected(PeerName),
    /// Another router still reports a connection to it: it may be alive.
    #[error(
        "router {by} ({nickname}) still reports a connection to {dead}; rmpeer is only for routers that are gone for good"
    )]
    ReportedBy {
        /// The router to reclaim.
        dead: PeerName,
        /// The router that reports a connection to it.
        by: PeerName,
        /// That router's nickname.
        nickname: String,
    },
    /// The ring refused the reclaim.
    #[error(transparent)]
    Reclaim(#[from] ReclaimError),
}

/// Why `weft reset` failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// A reset is under way already.
    #[error("a reset is already under way")]
    InProgress,
    /// No connected router can take this router's ranges.
    #[error("no connected router can take this router's address ranges")]
    NoHeir,
    /// The ring refused the handover.
    #[error(transparent)]
    Reclaim(#[from] ReclaimError),
    /// The heir did not confirm in time; the router keeps its state and
    /// stays out of the ring.
    #[error("router {heir} did not confirm the handover within {} s", waited.as_secs())]
    HeirSilent {
        /// The heir.
        heir: PeerName,
        /// How long it was waited for.
        waited: Duration,
    },
}

/// `weft forget` of an address never given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} was never added with `weft launch` or `weft connect`")]
pub struct NotAdded(pub PeerAddr);

/// Why this router has no usable ring, for `weft status`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpamProblem {
    /// A neighbour's ring was refused.
    Refused {
        /// The neighbour.
        from: PeerName,
        /// Why.
        error: MergeError,
    },
    /// A neighbour's ring divides another pod range.
    OtherPool {
        /// The neighbour.
        from: PeerName,
        /// Its range.
        pool: Pool,
        /// Ours.
        ours: Pool,
    },
    /// No ring yet, and why ([`Agent::no_ring_reason`]).
    NoRing(ipam_agent::NoRing),
    /// The ring says this router was removed (`weft rmpeer` ran against it):
    /// it stopped, and answers every allocation and release with `removed`.
    Removed,
}

/// One router (or an operator's address) as `weft status` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    /// Its name, once known.
    pub name: Option<PeerName>,
    /// Its nickname, once known.
    pub nickname: Option<String>,
    /// The address of its connection, the one being dialed, or the PEER as given.
    pub address: Option<String>,
    /// The control connection's state; `None` while a hostname resolves.
    pub state: Option<PeerState>,
    /// Why a hostname does not resolve, while it does not.
    pub resolve_error: Option<String>,
}

/// The composite router core. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    me: PeerName,
    pool: Pool,
    data: Option<DataPlane>,
    mesh: Mesh,
    agent: Agent,
    hops: Hops,
    unrouted: ipam_agent::Unrouted<IpamMsg>,
    operator: OperatorPeers,
    host: HostAddress,
    leaving: Option<Leaving>,
    ring_refusal: Option<IpamProblem>,
    /// API allocations waiting for the agent.
    waiting: BTreeMap<Ticket, ReplyTo>,
    /// Bumped whenever a control connection comes or goes.
    conns_generation: u64,
    /// The topology summary and connection generation of the last [`Output::DataPeers`].
    data_pushed: Option<(u64, u64)>,
    /// The ring hash and host address of the last [`Output::Routes`].
    routes_pushed: Option<(u64, Option<Ipv4Addr>)>,
    /// Set once reset is done: inputs are ignored.
    stopped: bool,
    /// The last IPAM record known to be on disk (`None`: none was written),
    /// what a failed write goes back to.
    durable: Option<Vec<u8>>,
    /// The record of the write in flight.
    writing: Option<(u64, Vec<u8>)>,
    out: Outbox,
}

impl Node {
    /// A router core. `saved` is the IPAM record from the data directory,
    /// if any; `seed` seeds its random choices (the daemon passes OS
    /// randomness, the simulator a test seed).
    ///
    /// # Errors
    /// [`PoolMismatch`] when the saved record divides another pod range.
    pub fn new(cfg: Config, saved: Option<Saved>, now: Time, seed: u64) -> Result<Self, PoolMismatch> {
        let on_disk = saved.as_ref().is_some_and(|s| !s.is_lost());
        let agent = Agent::new(cfg.me, cfg.pool, cfg.init, saved, now)?;
        let durable = on_disk.then(|| agent.record());
        let mut mesh = Mesh::new(cfg.mesh, cfg.me, cfg.nickname, cfg.advertise, now, seed);
        mesh.set_data(now, cfg.data);
        let mut node = Self {
            me: cfg.me,
            pool: cfg.pool,
            data: cfg.data,
            mesh,
            agent,
            hops: Hops::default(),
            unrouted: ipam_agent::Unrouted::default(),
            operator: OperatorPeers::default(),
            host: HostAddress::default(),
            leaving: None,
            ring_refusal: None,
            waiting: BTreeMap::new(),
            conns_generation: 0,
            data_pushed: None,
            routes_pushed: None,
            stopped: false,
            durable,
            writing: None,
            out: Outbox::default(),
        };
        node.agent.handle_topology(now, node.mesh.topology());
        node.step(now);
        Ok(node)
    }

    // ---- queries ----

    /// This router's name.
    pub fn me(&self) -> PeerName {
        self.me
    }

    /// The pod range.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// The topology as this router knows it.
    pub fn topology(&self) -> &Topology {
        self.mesh.topology()
    }

    /// The IPAM replica.
    pub fn replica(&self) -> &Replica {
        self.agent.replica()
    }

    /// The endpoints this router advertises.
    pub fn advertised(&self) -> &[SocketAddr] {
        self.mesh.advertised()
    }

    /// Established neighbours.
    pub fn neighbours(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.mesh.neighbours()
    }

    /// The control connection the mesh holds to `peer`, if one is up
    /// (messages for `peer` go on it).
    pub fn connection_of(&self, peer: PeerName) -> Option<ConnId> {
        self.mesh.connection_of(peer)
    }

    /// The host's address on the pod network, once it has one.
    pub fn host_address(&self) -> Option<Ipv4Addr> {
        self.host.addr
    }

    /// The key the host address is allocated under (not a container id a
    /// runtime would use: those are hex).
    pub fn host_key() -> AllocKey {
        AllocKey::new(HOST_CONTAINER, TUN_NAME).unwrap_or_else(|_| unreachable!("a valid key"))
    }

    /// The nickname of `peer`, if known.
    pub fn nickname_of(&self, peer: PeerName) -> Option<&str> {
        self.mesh.topology().get(peer).map(|e| e.nickname.as_str())
    }

    /// Why there is no usable ring, if there is none.
    pub fn ipam_problem(&self) -> Option<IpamProblem> {
        if self.agent.replica().is_removed() && self.leaving.is_none() {
            return Some(IpamProblem::Removed);
        }
        self.ring_refusal
            .clone()
            .or_else(|| self.agent.no_ring_reason().map(IpamProblem::NoRing))
    }

    /// Every router known or being reached, and the PEERs still resolving:
    /// one row each.
    pub fn peer_rows(&self) -> Vec<PeerRow> {
        let mut rows: Vec<PeerRow> = self
            .mesh
            .peer_states()
            .into_iter()
            .map(|(name, addr, state)| PeerRow {
                name,
                nickname: name.and_then(|n| self.nickname_of(n)).map(str::to_owned),
                address: addr.map(|a| a.to_string()),
                state: Some(state),
                resolve_error: None,
            })
            .collect();
        for (peer, error) in &self.operator.resolving {
            rows.push(PeerRow {
                name: None,
                nickname: None,
                address: Some(peer.to_string()),
                state: None,
                resolve_error: error.clone(),
            });
        }
        rows
    }

    /// The IPAM state's hash, if there is a ring (cached between changes).
    pub fn ring_hash(&mut self) -> Option<u64> {
        self.agent.ring_hash()
    }

    /// When [`Node::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Time {
        let mut next = self.mesh.poll_timeout().min(self.agent.poll_timeout());
        if let Some(l) = &self.leaving {
            next = next.min(l.until);
        }
        if let Some(t) = self.unrouted_retry_at() {
            next = next.min(t);
        }
        next
    }

    /// The next thing to do, if any may be done now (see the [module
    /// docs](self) on writes that must be durable first).
    pub fn poll_output(&mut self) -> Option<Output> {
        let mut out = self.out.pop()?;
        if let Output::Persist { seq, bytes } = &mut out {
            // Encoded now, once for every change queued since the last write.
            *bytes = self.agent.record();
            self.writing = Some((*seq, bytes.clone()));
        }
        Some(out)
    }

    // ---- network and shell input ----

    /// An authenticated control connection `conn` to `peer` is up. `dialed`
    /// is the address dialed, `None` for an inbound connection; `remote`
    /// is the far end's address as the shell sees it.
    pub fn handle_connected(
        &mut self,
        now: Time,
        peer: PeerName,
        conn: ConnId,
        dialed: Option<SocketAddr>,
        remote: SocketAddr,
    ) {
        if self.stopped {
            return self.out.push(Output::Close {
                conn,
                why: Failure::Lost("shutting down".into()),
            });
        }
        match self.mesh.handle_connected(now, peer, conn, dialed, remote) {
            Err(Refused(why)) => {
                self.out.push(Output::Event(Event::Refused { peer, why: why.clone() }));
                self.out.push(Output::Close { conn, why });
            }
            Ok(replaced) => {
                if let Some(old) = replaced {
                    self.out.push(Output::Close {
                        conn: old,
                        why: Failure::Lost("replaced by a newer connection".into()),
                    });
                }
                self.conns_generation += 1;
            }
        }
        self.step(now);
    }

    /// A dial to `addr` failed.
    pub fn handle_dial_failed(&mut self, now: Time, addr: SocketAddr, why: Failure) {
        self.mesh.handle_dial_failed(now, addr, why);
        self.step(now);
    }

    /// Control connection `conn` to `peer` closed.
    pub fn handle_disconnected(&mut self, now: Time, peer: PeerName, conn: ConnId, why: Failure) {
        self.conns_generation += 1;
        self.mesh.handle_disconnected(now, peer, conn, why);
        self.step(now);
    }

    /// An authenticated datagram from `peer` arrived outside the control
    /// connections (on the data plane): it is alive, so a
    /// control connection to it that waits out a backoff is dialed at once
    /// ([`Mesh::handle_alive`](mesh::Mesh::handle_alive)).
    pub fn handle_heard(&mut self, now: Time, peer: PeerName) {
        self.mesh.handle_alive(now, peer);
        self.step(now);
    }

    /// A gossip message from neighbour `from`.
    pub fn handle_gossip(&mut self, now: Time, from: PeerName, msg: mesh::Message) {
        self.mesh.handle_message(now, from, msg);
        self.step(now);
    }

    /// An IPAM message from neighbour `from`: this router's, or passed on
    /// towards its destination.
    pub fn handle_ipam(&mut self, now: Time, from: PeerName, msg: IpamMsg) {
        match msg.destination() {
            Some(to) if to != self.me => self.route(now, to, msg),
            _ => self.agent.handle_message(now, from, msg),
        }
        self.step(now);
    }

    /// The host's interface addresses, as listed now.
    pub fn set_local_addrs(&mut self, now: Time, addrs: Vec<LocalAddr>) {
        let before = self.mesh.advertised().to_vec();
        self.mesh.set_local_addrs(now, addrs);
        if self.mesh.advertised() != before.as_slice() {
            self.out
                .push(Output::Event(Event::Advertising(self.mesh.advertised().to_vec())));
        }
        self.step(now);
    }

    /// A hostname PEER resolved (`Ok`), or failed to and is tried again (`Err`).
    pub fn handle_resolved(&mut self, now: Time, peer: PeerAddr, result: Result<SocketAddr, String>) {
        match result {
            Ok(addr) => {
                if self.operator.resolving.remove(&peer).is_some() {
                    self.out.push(Output::Event(Event::Resolved {
                        peer: peer.clone(),
                        addr,
                    }));
                    self.operator.resolved.insert(peer, addr);
                    self.mesh.connect(now, addr);
                }
            }
            Err(reason) => {
                if let Some(r) = self.operator.resolving.get_mut(&peer) {
                    *r = Some(reason);
                }
            }
        }
        self.step(now);
    }

    /// Write `seq` ([`Output::Persist`]) is durable: what waited for it may go.
    pub fn handle_persisted(&mut self, seq: u64) {
        if self.out.persisted(seq)
            && let Some((s, bytes)) = self.writing.take()
        {
            if s == seq {
                self.durable = Some(bytes);
            } else {
                self.writing = Some((s, bytes));
            }
        }
    }

    /// Write `seq` ([`Output::Persist`]) failed with `error` (the OS's words,
    /// e.g. `no space left on device`). The router goes on: every change
    /// since the last record on disk is undone, the replies waiting for the
    /// write answer [`Reply::CannotPersist`], and the IPAM messages waiting
    /// for it are dropped (see the [module docs](self)). If only other
    /// routers' entries waited for it, nothing is undone and they are written
    /// again later.
    pub fn handle_persist_failed(&mut self, now: Time, seq: u64, error: &str) {
        let Some(barrier) = self.out.failed(seq) else {
            return;
        };
        if self.writing.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.writing = None;
        }
        self.out.push(Output::Event(Event::PersistFailed {
            error: error.to_owned(),
            undone: barrier,
        }));
        if !barrier {
            self.agent.foreign_unwritten(now);
            self.step(now);
            return;
        }
        // The gossip of our part in ring creation, if that changed since the
        // record on disk, must not go out either.
        let init_undone = self.agent.roll_back(self.durable.as_deref());
        let why = format!("cannot persist: {error}");
        for out in self.out.take_queue() {
            match out {
                Output::Reply { to, .. } => self.out.push(Output::Reply {
                    to,
                    reply: Reply::CannotPersist(why.clone()),
                }),
                // A reset whose end waited for the write: it did not happen.
                Output::ResetDone(to) => {
                    self.stopped = false;
                    self.out.push(Output::Reply {
                        to,
                        reply: Reply::CannotPersist(why.clone()),
                    });
                }
                Output::Send {
                    msg: Outgoing::Ipam(_), ..
                }
                | Output::Persist { .. } => {}
                Output::Send {
                    msg: Outgoing::Gossip(_),
                    ..
                } if init_undone => {}
                other => self.out.push(other),
            }
        }
        // A reset whose leave was undone.
        let removed = (self.agent.replica().ring()).is_some_and(|r| r.is_removed(self.me));
        if !removed && let Some(l) = self.leaving.take() {
            self.out.push(Output::Reply {
                to: l.reply,
                reply: Reply::CannotPersist(why),
            });
        }
        // The host's address may have been undone: allocated again next step.
        let host = self.agent.replica().lookup(&Self::host_key());
        if self.host.addr.is_some_and(|a| host != Some(IpAddr::V4(a))) {
            self.host.addr = None;
        }
        self.step(now);
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Time) {
        self.mesh.handle_timeout(now);
        self.agent.handle_timeout(now);
        if self.unrouted_retry_at().is_some_and(|t| t <= now) {
            self.retry_unrouted(now, true);
        }
        self.check_leaving(now);
        self.step(now);
    }

    // ---- commands (the local API) ----

    /// `weft launch PEER`, `weft connect`: keep connecting to `peer`.
    pub fn connect(&mut self, now: Time, peer: PeerAddr) {
        self.operator.asked.insert(peer.clone());
        if let Some(addr) = peer
            .socket_addr()
            .or_else(|| self.operator.resolved.get(&peer).copied())
        {
            self.mesh.connect(now, addr);
        } else if !self.operator.resolving.contains_key(&peer) {
            self.operator.resolving.insert(peer.clone(), None);
            self.out.push(Output::Resolve(peer));
        }
        self.step(now);
    }

    /// `weft forget`: stop connecting to `peer` (a connection stays).
    ///
    /// # Errors
    /// [`NotAdded`] if it was never given.
    pub fn forget(&mut self, now: Time, peer: &PeerAddr) -> Result<(), NotAdded> {
        if !self.operator.asked.remove(peer) {
            return Err(NotAdded(peer.clone()));
        }
        if self.operator.resolving.remove(peer).is_some() {
            self.out.push(Output::StopResolving(peer.clone()));
        }
        let addr = peer.socket_addr().or_else(|| self.operator.resolved.remove(peer));
        if let Some(addr) = addr {
            self.mesh.forget(addr);
        }
        self.step(now);
        Ok(())
    }

    /// `weft ipam allocate`: answered with [`Reply::Allocate`], once the
    /// allocation is durable.
    pub fn allocate(&mut self, now: Time, to: ReplyTo, key: AllocKey, req: Request) {
        match self.agent.allocate(now, key, req) {
            Ok(Progress::Done(a)) => self.reply_durably(to, Reply::Allocate(Ok(a))),
            Ok(Progress::Waiting(ticket)) => {
                self.waiting.insert(ticket, to);
            }
            Err(e) => self.out.push(Output::Reply {
                to,
                reply: Reply::Allocate(Err(e)),
            }),
        }
        self.step(now);
    }

    /// Whether pod addresses allocated again after lost IPAM state are
    /// still held ([`ipam_agent::Saved::with_pods`]): the shell then reports
    /// the host's pod routes now and then ([`Node::pods_present`]).
    pub fn has_recovered_pods(&self) -> bool {
        self.agent.has_recovered()
    }

    /// The pod addresses the host routes now, each with its host veth: the
    /// addresses allocated again after lost state whose pods are gone are
    /// released ([`ipam_agent::Agent::pods_present`]). Returns them.
    pub fn pods_present(&mut self, now: Time, present: &[(IpAddr, String)]) -> Vec<IpAddr> {
        if self.stopped || self.agent.replica().is_removed() {
            return Vec::new();
        }
        let freed = self.agent.pods_present(now, present);
        if !freed.is_empty() {
            self.step(now);
        }
        freed
    }

    /// `weft ipam release`: answered with [`Reply::Release`], once durable.
    pub fn release(&mut self, now: Time, to: ReplyTo, key: &AllocKey) {
        if self.agent.replica().is_removed() {
            // It stopped: it frees nothing, since its heir holds what it had.
            self.out.push(Output::Reply {
                to,
                reply: Reply::Release(Err(AllocError::Removed)),
            });
            return;
        }
        let freed = self.agent.release(now, key);
        self.reply_durably(to, Reply::Release(Ok(freed)));
        self.step(now);
    }

    /// `weft rmpeer`: start reclaiming a router that is gone for good. Refused
    /// while this router, or any router it hears of, still shows a
    /// connection to it: reclaiming a live router's ranges would hand its
    /// addresses out twice. Answered with [`Reply::Rmpeer`].
    ///
    /// With `gone`, the operator also confirms that the router is gone for
    /// good ([`Agent::confirm_gone`]): its heir may then hand out the
    /// addresses it held for it. Without it they stay held until the router
    /// hears of its removal (it may be alive and cut off).
    pub fn rmpeer(&mut self, now: Time, to: ReplyTo, name: &PeerRef, gone: bool) {
        let reply = self.begin_rmpeer(now, name).and_then(|(dead, status)| {
            if gone {
                self.agent.confirm_gone(now, dead)?;
            }
            let status = self
                .agent
                .replica()
                .ring()
                .and_then(|r| r.reclaim_status(dead))
                .unwrap_or(status);
            Ok((dead, status))
        });
        self.reply_durably(to, Reply::Rmpeer(reply));
        self.step(now);
    }

    /// `weft reset`: leave the ring, handing this router's ranges to the
    /// connected router with the most free space, and stop once it has
    /// confirmed ([`Output::ResetDone`]), or fail after [`RESET_CONFIRM`]
    /// ([`Reply::Reset`]).
    pub fn reset(&mut self, now: Time, to: ReplyTo) {
        if self.leaving.is_some() {
            self.out.push(Output::Reply {
                to,
                reply: Reply::Reset(ResetError::InProgress),
            });
            return;
        }
        let member = (self.agent.replica().ring()).is_some_and(|r| r.members().any(|m| m == self.me));
        if !member {
            // No ring, or no space in it: nothing to hand over.
            self.finish_reset(to);
            return;
        }
        let neighbours: Vec<PeerName> = self.mesh.neighbours().collect();
        let Some(heir) = self.agent.choose_heir(neighbours) else {
            self.out.push(Output::Reply {
                to,
                reply: Reply::Reset(ResetError::NoHeir),
            });
            return;
        };
        if let Err(e) = self.agent.leave(now, heir) {
            self.out.push(Output::Reply {
                to,
                reply: Reply::Reset(e.into()),
            });
            return;
        }
        self.out.push(Output::Event(Event::Leaving { heir }));
        self.leaving = Some(Leaving {
            heir,
            until: now + RESET_CONFIRM,
            reply: to,
        });
        self.step(now);
    }

    // ---- the step: everything the cores asked for ----

    /// Carries the cores' outputs between each other and into the outbox,
    /// until they ask for nothing more.
    fn step(&mut self, now: Time) {
        if self.stopped {
            return;
        }
        loop {
            self.ensure_host_address(now);
            self.sync_persist();
            if let Some(init) = self.agent.take_announcement() {
                self.mesh.set_ipam(now, init);
            }
            let mut more = false;
            while let Some((dest, msg)) = self.agent.poll_transmit() {
                more = true;
                match dest {
                    Dest::Neighbour(p) => self.send(p, Outgoing::Ipam(msg)),
                    Dest::AllNeighbours => {
                        let all: Vec<PeerName> = self.mesh.neighbours().collect();
                        for p in all {
                            self.send(p, Outgoing::Ipam(msg.clone()));
                        }
                    }
                    Dest::Routed(p) => self.route(now, p, msg),
                }
            }
            if self.agent.wants_routes() {
                more = true;
                self.give_routes(now);
            }
            while let Some(event) = self.agent.poll_event() {
                more = true;
                self.ipam_event(event);
            }
            self.check_leaving(now);
            while let Some((to, msg)) = self.mesh.poll_transmit() {
                self.send(to, Outgoing::Gossip(msg));
            }
            while let Some(addr) = self.mesh.poll_dial() {
                self.out.push(Output::Dial(addr));
            }
            while let Some(event) = self.mesh.poll_event() {
                more = true;
                match event {
                    mesh::Event::Up(peer) => {
                        self.agent.neighbour_up(peer);
                        self.out.push(Output::Event(Event::Up(peer)));
                    }
                    mesh::Event::Down(peer) => {
                        self.agent.neighbour_down(peer);
                        self.out.push(Output::Event(Event::Down(peer)));
                    }
                    mesh::Event::TopologyChanged => {
                        self.hops.stale = true;
                        self.agent.handle_topology(now, self.mesh.topology());
                        self.retry_unrouted(now, false);
                    }
                }
            }
            if !more {
                break;
            }
        }
        self.sync_persist();
        if self.agent.take_foreign_due(now) {
            self.out.persist_lazy();
        }
        self.push_data_peers();
        self.push_routes();
    }

    /// Queues a write of the IPAM record if it changed: everything after
    /// waits for it. A step of ring creation ([`Agent::must_sync`]: a
    /// proposal, withdrawal or ack) must always take this path, durable
    /// before the mesh entry that announces it goes out.
    fn sync_persist(&mut self) {
        if self.agent.take_dirty() {
            self.out.persist();
        }
    }

    /// Queues a reply behind the IPAM record, if the call changed it.
    fn reply_durably(&mut self, to: ReplyTo, reply: Reply) {
        self.sync_persist();
        self.out.push(Output::Reply { to, reply });
    }

    fn send(&mut self, to: PeerName, msg: Outgoing) {
        self.out.push(Output::Send { to, msg });
    }

    /// Sends an IPAM message for `to` one hop on: straight to it if it is a
    /// neighbour, else to the next hop of the cached routes, else holds it
    /// until a route shows up ([`ipam_agent::ROUTE_WAIT`]).
    fn route(&mut self, now: Time, to: PeerName, msg: IpamMsg) {
        match self.next_hop(now, to) {
            Some(hop) => self.send(hop, Outgoing::Ipam(msg)),
            None => self.unrouted.push(now, to, msg),
        }
    }

    fn next_hop(&mut self, now: Time, to: PeerName) -> Option<PeerName> {
        if self.mesh.remote_of(to).is_some() {
            return Some(to);
        }
        let hop = self.hops.get(now, self.mesh.topology(), false).get(&to).copied();
        match hop {
            // A next hop whose connection went since the routes were computed.
            Some(h) if self.mesh.remote_of(h).is_none() => {
                self.hops.stale = true;
                let hop = self.hops.get(now, self.mesh.topology(), true).get(&to).copied();
                hop.filter(|h| self.mesh.remote_of(*h).is_some())
            }
            hop => hop,
        }
    }

    /// Tells the IPAM agent which routers it can reach now, to choose whom
    /// to ask for space: the neighbours, and the routers the current
    /// topology routes to through a neighbour still connected (computed
    /// afresh if the topology changed since the last search: a donor chosen
    /// from a stale view may be on the far side of a partition).
    fn give_routes(&mut self, now: Time) {
        let mesh = &self.mesh;
        let hops = self.hops.get(now, mesh.topology(), true);
        self.agent.handle_routes(now, |p| {
            mesh.remote_of(p).is_some() || hops.get(&p).is_some_and(|h| mesh.remote_of(*h).is_some())
        });
    }

    /// When held IPAM messages should be tried again on routes computed
    /// afresh (the cached ones are stale and were not recomputed for them).
    fn unrouted_retry_at(&self) -> Option<Time> {
        (!self.unrouted.is_empty() && self.hops.stale).then(|| self.hops.at + HOPS_EVERY)
    }

    /// Sends the held IPAM messages that now have a route; `force` computes
    /// the routes afresh.
    fn retry_unrouted(&mut self, now: Time, force: bool) {
        if self.unrouted.is_empty() {
            return;
        }
        let topo = self.mesh.topology();
        if !force && !self.unrouted.waits_for_any(|p| topo.get(p).is_some()) {
            return;
        }
        let hops = self.hops.get(now, self.mesh.topology(), force).clone();
        let mesh = &self.mesh;
        let ready = self
            .unrouted
            .take_routable(now, |p| mesh.remote_of(p).is_some() || hops.contains_key(&p));
        for (to, msg) in ready {
            self.route(now, to, msg);
        }
    }

    fn ipam_event(&mut self, event: ipam_agent::Event) {
        use ipam_agent::Event as E;
        match event {
            E::Allocated(ticket, result) => {
                if self.host.ticket == Some(ticket) {
                    self.host.ticket = None;
                    if let Ok(a) = result {
                        self.set_host_address(a.addr);
                    }
                } else if let Some(to) = self.waiting.remove(&ticket) {
                    self.out.push(Output::Reply {
                        to,
                        reply: Reply::Allocate(result),
                    });
                }
            }
            E::Refused { from, error } => {
                self.ring_refusal = Some(IpamProblem::Refused {
                    from,
                    error: error.clone(),
                });
                self.out.push(Output::Event(Event::Ipam(E::Refused { from, error })));
            }
            E::OtherPool { from, pool } => {
                self.ring_refusal = Some(IpamProblem::OtherPool {
                    from,
                    pool,
                    ours: self.pool,
                });
                self.out.push(Output::Event(Event::Ipam(E::OtherPool { from, pool })));
            }
            other => self.out.push(Output::Event(Event::Ipam(other))),
        }
    }

    /// Gives the host an address from this router's space once there is a
    /// ring (kept across restarts: it is persisted like a pod's).
    fn ensure_host_address(&mut self, now: Time) {
        if self.data.is_none() || self.host.addr.is_some() || self.host.ticket.is_some() || self.leaving.is_some() {
            return;
        }
        if self.agent.replica().ring().is_none() {
            return;
        }
        let key = Self::host_key();
        if let Some(IpAddr::V4(a)) = self.agent.replica().lookup(&key) {
            self.host.addr = Some(a);
            return;
        }
        match self.agent.allocate(now, key, Request::Any) {
            Ok(Progress::Done(a)) => self.set_host_address(a.addr),
            Ok(Progress::Waiting(ticket)) => self.host.ticket = Some(ticket),
            // Tried again on the next step (a ring change, a donor).
            Err(_) => {}
        }
    }

    fn set_host_address(&mut self, addr: IpAddr) {
        if let IpAddr::V4(a) = addr {
            self.host.addr = Some(a);
            self.out.push(Output::Event(Event::HostAddress(a)));
        }
    }

    fn begin_rmpeer(&mut self, now: Time, name: &PeerRef) -> Result<(PeerName, ReclaimStatus), RmpeerError> {
        let topo = self.mesh.topology();
        // The same resolution as the seed list's: a peer name, or a
        // nickname exactly one known router carries.
        let dead = match resolve_seeds(std::slice::from_ref(name), topo) {
            Resolution::Ready(found) => found[0],
            Resolution::Waiting { .. } => return Err(RmpeerError::Unknown(name.to_string())),
            Resolution::Ambiguous { nickname, routers } => {
                return Err(RmpeerError::Ambiguous { nickname, routers });
            }
        };
        if self.mesh.remote_of(dead).is_some() {
            return Err(RmpeerError::Connected(dead));
        }
        if let Some(e) = topo.entries().find(|e| e.name != dead && e.neighbours.contains(&dead)) {
            return Err(RmpeerError::ReportedBy {
                dead,
                by: e.name,
                nickname: e.nickname.clone(),
            });
        }
        let status = self.agent.begin_reclaim(now, dead)?;
        Ok((dead, status))
    }

    /// Finishes a reset once the heir has confirmed, or fails it at the deadline.
    fn check_leaving(&mut self, now: Time) {
        let Some(l) = &self.leaving else { return };
        if self.agent.heir_confirmed() {
            let reply = l.reply;
            self.leaving = None;
            self.finish_reset(reply);
        } else if now >= l.until {
            let (heir, reply) = (l.heir, l.reply);
            self.leaving = None;
            self.out.push(Output::Reply {
                to: reply,
                reply: Reply::Reset(ResetError::HeirSilent {
                    heir,
                    waited: RESET_CONFIRM,
                }),
            });
        }
    }

    fn finish_reset(&mut self, to: ReplyTo) {
        // After the leave record, so the heir's takeover is on disk first.
        self.sync_persist();
        self.out.push(Output::ResetDone(to));
        self.stopped = true;
    }

    /// Tells the packet path about every other router's data plane, if the
    /// topology or the connections changed.
    fn push_data_peers(&mut self) {
        if self.data.is_none() {
            return;
        }
        let key = (self.mesh.topology().summary(), self.conns_generation);
        if self.data_pushed == Some(key) {
            return;
        }
        self.data_pushed = Some(key);
        let me = self.me;
        let peers = self
            .mesh
            .topology()
            .entries()
            .filter(|e| e.name != me)
            .filter_map(|e| {
                let data = e.data?;
                let seen_at = self.mesh.remote_of(e.name).map(|a| a.ip());
                Some(DataPeer {
                    name: e.name,
                    public_key: data.public_key,
                    candidates: endpoints::data_candidates(e, seen_at),
                })
            })
            .collect();
        self.out.push(Output::DataPeers(peers));
    }

    /// Tells the packet path and the kernel about the ring and the host
    /// address, if either changed.
    fn push_routes(&mut self) {
        if self.data.is_none() {
            return;
        }
        let IpNet::V4(pod_range) = self.pool.net() else {
            return;
        };
        let Some(hash) = self.agent.ring_hash() else { return };
        let key = (hash, self.host.addr);
        if self.routes_pushed == Some(key) {
            return;
        }
        self.routes_pushed = Some(key);
        let Some(ring) = self.agent.replica().ring() else {
            return;
        };
        self.out
            .push(Output::Routes(routes(self.me, pod_range, ring, self.host.addr)));
    }
}

/// Whether `key` is one of the router's own allocations
/// ([`RESERVED_PREFIX`]), which only the router itself allocates and releases.
pub fn is_reserved(key: &AllocKey) -> bool {
    key.container().starts_with(RESERVED_PREFIX)
}

/// The forwarding ranges and the desired kernel state for router `me`.
fn routes(me: PeerName, pod_range: Ipv4Net, ring: &Ring, host: Option<Ipv4Addr>) -> Routes {
    let mut ranges = Vec::new();
    let mut own = Vec::new();
    for r in ring.ranges() {
        let (IpAddr::V4(first), IpAddr::V4(last)) = (r.range.first, r.range.last) else {
            continue;
        };
        ranges.push((first, last, r.owner));
        if r.owner == me {
            own.push(first..=last);
        }
    }
    let own_blocks = reconcile::cidr_blocks(own);
    Routes {
        pod_range,
        ranges,
        desired: reconcile::desired(pod_range, &own_blocks, host),
    }
}

/// The PEERs the operator gave, as written, and the hostnames among them.
#[derive(Debug, Default)]
struct OperatorPeers {
    asked: BTreeSet<PeerAddr>,
    /// Hostnames being resolved, with the last failure.
    resolving: BTreeMap<PeerAddr, Option<String>>,
    /// Hostnames and the address they resolved to.
    resolved: BTreeMap<PeerAddr, SocketAddr>,
}

/// The host's own address on the pod network.
#[derive(Debug, Default)]
struct HostAddress {
    addr: Option<Ipv4Addr>,
    /// Its allocation, while it waits for space.
    ticket: Option<Ticket>,
}

/// A `weft reset` waiting for its heir.
#[derive(Debug)]
struct Leaving {
    heir: PeerName,
    until: Time,
    reply: ReplyTo,
}

/// Next hops over confirmed connections ([`Topology::next_hops`]), computed
/// again after the topology changed, but at most every [`HOPS_EVERY`]: a
/// breadth-first search over a thousand routers on every gossip merge would
/// cost more than everything else a router does.
#[derive(Debug, Default)]
struct Hops {
    table: BTreeMap<PeerName, PeerName>,
    at: Time,
    computed: bool,
    stale: bool,
}

impl Hops {
    fn get(&mut self, now: Time, topo: &Topology, force: bool) -> &BTreeMap<PeerName, PeerName> {
        let due = !self.computed || (self.stale && (force || now.since(self.at) >= HOPS_EVERY));
        if due {
            self.table = topo.next_hops();
            self.at = now;
            self.computed = true;
            self.stale = false;
        }
        &self.table
    }
}

/// Outputs in order, held behind the first write not yet durable.
///
/// Writes go one at a time. One of only other routers' entries (lazy, see
/// the [module docs](self)) holds back the next write but nothing else.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Output>,
    next_seq: u64,
    /// A write handed out and not yet durable, and whether what follows
    /// waits for it.
    in_flight: Option<(u64, bool)>,
    /// The lazy write, queued or in flight.
    lazy: Option<u64>,
}

impl Outbox {
    fn push(&mut self, out: Output) {
        self.queue.push_back(out);
    }

    /// Queues a write of the record that what follows waits for, unless one
    /// is queued and not handed out yet: the record is encoded when a write
    /// is handed out, so that one takes this change too, and what follows
    /// waits for it (a lazy one becomes one that holds back).
    fn persist(&mut self) {
        if let Some(seq) = self.queued_write() {
            if self.lazy == Some(seq) {
                self.lazy = None;
            }
            return;
        }
        self.next_seq += 1;
        self.queue.push_back(Output::Persist {
            seq: self.next_seq,
            bytes: Vec::new(),
        });
    }

    /// Queues a write that nothing waits for, unless one is queued already.
    fn persist_lazy(&mut self) {
        if self.queued_write().is_some() {
            return;
        }
        self.next_seq += 1;
        self.lazy = Some(self.next_seq);
        self.queue.push_back(Output::Persist {
            seq: self.next_seq,
            bytes: Vec::new(),
        });
    }

    fn queued_write(&self) -> Option<u64> {
        self.queue.iter().find_map(|o| match o {
            Output::Persist { seq, .. } => Some(*seq),
            _ => None,
        })
    }

    fn pop(&mut self) -> Option<Output> {
        match (self.in_flight, self.queue.front()?) {
            (Some((_, true)), _) | (Some(_), Output::Persist { .. }) => return None,
            _ => {}
        }
        let out = self.queue.pop_front()?;
        if let Output::Persist { seq, .. } = &out {
            self.in_flight = Some((*seq, self.lazy != Some(*seq)));
        }
        Some(out)
    }

    /// Write `seq` is durable; whether it was the one in flight.
    fn persisted(&mut self, seq: u64) -> bool {
        self.finished(seq).is_some()
    }

    /// Write `seq` failed: whether what follows waited for it, if it was the
    /// one in flight.
    fn failed(&mut self, seq: u64) -> Option<bool> {
        self.finished(seq)
    }

    fn finished(&mut self, seq: u64) -> Option<bool> {
        let (s, barrier) = self.in_flight?;
        if s != seq {
            return None;
        }
        self.in_flight = None;
        if self.lazy == Some(seq) {
            self.lazy = None;
        }
        Some(barrier)
    }

    /// Everything queued, taken out.
    fn take_queue(&mut self) -> VecDeque<Output> {
        if self.lazy.is_some_and(|l| self.in_flight.is_none_or(|(s, _)| s != l)) {
            self.lazy = None;
        }
        std::mem::take(&mut self.queue)
    }
}

/// Container ids that start with this are the router's own (the host
/// address, [`Node::host_key`]): the API may neither allocate nor release
/// them ([`is_reserved`]).
pub const RESERVED_PREFIX: &str = "weft:";

/// The container id the host address is allocated under.
const HOST_CONTAINER: &str = "weft:host";

/// How long `weft reset` waits for the heir to confirm the handover.
pub const RESET_CONFIRM: Duration = Duration::from_secs(10);

/// The routes for IPAM messages are computed again at most this often.
const HOPS_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn addr(n: u64) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n as u8], 6783))
    }

    fn pool() -> Pool {
        Pool::new("10.32.0.0/24".parse().unwrap()).unwrap()
    }

    fn key(c: &str) -> AllocKey {
        AllocKey::new(c, "eth0").unwrap()
    }

    /// Routers `1..=n` on virtual time. Router `i` is `p(i)` at `addr(i)`;
    /// `links` says which pairs the network lets connect. Messages arrive
    /// after 5 ms; writes are durable at once unless `hold_writes`.
    struct Net {
        nodes: Vec<Node>,
        now: Time,
        links: BTreeSet<(u64, u64)>,
        /// Open connections: id -> (dialer, acceptor).
        conns: BTreeMap<ConnId, (u64, u64)>,
        next_conn: u64,
        /// Messages on their way: (due, from, to, message).
        wire: Vec<(Time, u64, u64, Outgoing)>,
        replies: Vec<(u64, ReplyTo, Reply)>,
        resets_done: Vec<(u64, ReplyTo)>,
        events: Vec<(u64, Event)>,
        /// Every write asked for: router, when.
        writes: Vec<(u64, Time)>,
        /// Every merge that changed a replica: router, when.
        merges: Vec<(u64, Time)>,
        hold_writes: bool,
        /// The next write of this router fails, with this error.
        fail_write: Option<(u64, &'static str)>,
    }

    fn config(i: u64, init: Init, data: bool) -> Config {
        Config {
            me: p(i),
            nickname: format!("h{i}"),
            pool: pool(),
            init,
            mesh: mesh::Config::default(),
            advertise: Policy::fixed(vec![addr(i)]),
            data: data.then_some(DataPlane {
                public_key: [i as u8; 32],
                port: 6784,
            }),
        }
    }

    impl Net {
        fn new(n: u64, init: impl Fn(u64) -> Init, links: &[(u64, u64)], data: bool) -> Self {
            let nodes = (1..=n)
                .map(|i| Node::new(config(i, init(i), data), None, Time::ZERO, i).unwrap())
                .collect();
            let links = links.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
            Self {
                nodes,
                now: Time::ZERO,
                links,
                conns: BTreeMap::new(),
                next_conn: 0,
                wire: Vec::new(),
                replies: Vec::new(),
                resets_done: Vec::new(),
                events: Vec::new(),
                writes: Vec::new(),
                merges: Vec::new(),
                hold_writes: false,
                fail_write: None,
            }
        }

        fn node(&mut self, i: u64) -> &mut Node {
            &mut self.nodes[i as usize - 1]
        }

        /// Carries out router `i`'s outputs; returns the writes it was asked for.
        fn drain(&mut self, i: u64) -> Vec<u64> {
            let mut writes = Vec::new();
            while let Some(out) = self.node(i).poll_output() {
                match out {
                    Output::Persist { seq, bytes } => {
                        assert!(!bytes.is_empty(), "a write carries the record");
                        writes.push(seq);
                        self.writes.push((i, self.now));
                        if let Some((_, error)) = self.fail_write.take_if(|f| f.0 == i) {
                            let now = self.now;
                            self.node(i).handle_persist_failed(now, seq, error);
                        } else if !self.hold_writes {
                            self.node(i).handle_persisted(seq);
                        }
                    }
                    Output::Send { to, msg } => {
                        let due = self.now + Duration::from_millis(5);
                        self.wire.push((due, i, to.to_u64(), msg));
                    }
                    Output::Dial(a) => self.dial(i, a),
                    Output::Close { conn, why } => self.close(conn, why),
                    Output::Reply { to, reply } => self.replies.push((i, to, reply)),
                    Output::ResetDone(to) => self.resets_done.push((i, to)),
                    Output::Event(e) => {
                        if let Event::Ipam(ipam_agent::Event::Merged { .. }) = e {
                            self.merges.push((i, self.now));
                        }
                        self.events.push((i, e));
                    }
                    _ => {}
                }
            }
            writes
        }

        fn dial(&mut self, from: u64, a: SocketAddr) {
            let to = u64::from(match a.ip() {
                IpAddr::V4(v4) => v4.octets()[3],
                IpAddr::V6(_) => unreachable!("IPv4 addresses only"),
            });
            let now = self.now;
            if !self.links.contains(&(from, to)) {
                self.node(from).handle_dial_failed(now, a, Failure::Unreachable);
                return;
            }
            self.next_conn += 1;
            let conn = ConnId(self.next_conn);
            self.conns.insert(conn, (from, to));
            self.node(to).handle_connected(now, p(from), conn, None, addr(from));
            self.node(from).handle_connected(now, p(to), conn, Some(a), a);
        }

        fn close(&mut self, conn: ConnId, why: Failure) {
            let Some((a, b)) = self.conns.remove(&conn) else { return };
            let now = self.now;
            self.node(a).handle_disconnected(now, p(b), conn, why.clone());
            self.node(b).handle_disconnected(now, p(a), conn, why);
        }

        /// Cuts the link between `a` and `b`, closing their connections.
        fn cut(&mut self, a: u64, b: u64) {
            self.links.remove(&(a, b));
            self.links.remove(&(b, a));
            let gone: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, (x, y))| (*x, *y) == (a, b) || (*x, *y) == (b, a))
                .map(|(c, _)| *c)
                .collect();
            for c in gone {
                self.close(c, Failure::Lost("cut".into()));
            }
        }

        /// Runs every router for `d` in 5 ms steps.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                let n = self.nodes.len() as u64;
                for i in 1..=n {
                    self.drain(i);
                }
                let now = self.now;
                let (due, later): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.wire).into_iter().partition(|w| w.0 <= now);
                self.wire = later;
                for (_, from, to, msg) in due {
                    let connected = self.node(to).connection_of(p(from)).is_some();
                    if !connected {
                        continue;
                    }
                    match msg {
                        Outgoing::Gossip(m) => self.node(to).handle_gossip(now, p(from), m),
                        Outgoing::Ipam(m) => self.node(to).handle_ipam(now, p(from), m),
                    }
                }
                for i in 1..=n {
                    if self.node(i).poll_timeout() <= now {
                        self.node(i).handle_timeout(now);
                    }
                }
                self.now = self.now + Duration::from_millis(5);
            }
            for i in 1..=self.nodes.len() as u64 {
                self.drain(i);
            }
        }

        fn reply(&mut self, to: ReplyTo) -> Option<Reply> {
            let i = self.replies.iter().position(|(_, t, _)| *t == to)?;
            Some(self.replies.remove(i).2)
        }

        fn allocate(&mut self, i: u64, id: u64, container: &str) -> Option<Result<Allocation, AllocFailure>> {
            let now = self.now;
            self.node(i).allocate(now, ReplyTo(id), key(container), Request::Any);
            self.run(Duration::from_secs(8));
            match self.reply(ReplyTo(id))? {
                Reply::Allocate(r) => Some(r),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Router 1 names nobody and creates the ring alone; the others name router 1.
    fn star(n: u64, links: &[(u64, u64)], data: bool) -> Net {
        let mut net = Net::new(n, |i| Init::Consensus(if i == 1 { 1 } else { 2 }), links, data);
        for i in 2..=n {
            net.node(i).connect(Time::ZERO, PeerAddr::try_from(addr(1)).unwrap());
        }
        net.run(Duration::from_secs(3));
        net
    }

    #[test]
    fn an_answer_waits_until_its_allocation_is_on_disk() {
        let mut net = star(1, &[], false);
        net.hold_writes = true;
        let now = net.now;
        net.node(1).allocate(now, ReplyTo(7), key("a"), Request::Any);
        let writes = net.drain(1);
        assert_eq!(writes.len(), 1, "one write for the allocation");
        assert!(net.replies.is_empty(), "no answer before the write is durable");
        // More calls meanwhile queue behind it, still unanswered.
        let now = net.now;
        net.node(1).release(now, ReplyTo(8), &key("nothing"));
        assert!(net.drain(1).is_empty() && net.replies.is_empty());
        net.node(1).handle_persisted(writes[0]);
        net.drain(1);
        let got: Vec<ReplyTo> = net.replies.iter().map(|r| r.1).collect();
        assert_eq!(got, vec![ReplyTo(7), ReplyTo(8)], "answered in order, once durable");
    }

    #[test]
    fn a_hundred_allocations_during_one_write_share_the_next() {
        let mut net = star(1, &[], false);
        net.hold_writes = true;
        let now = net.now;
        net.node(1).allocate(now, ReplyTo(0), key("first"), Request::Any);
        let first = net.drain(1);
        assert_eq!(first.len(), 1);
        for i in 1..=100 {
            net.node(1)
                .allocate(now, ReplyTo(i), key(&format!("pod{i}")), Request::Any);
            net.node(1).release(now, ReplyTo(1000 + i), &key("never-allocated"));
        }
        assert!(
            net.drain(1).is_empty(),
            "nothing goes out while the first write is in flight"
        );
        net.node(1).handle_persisted(first[0]);
        let second = net.drain(1);
        assert_eq!(second.len(), 1, "two hundred calls, one more write: {second:?}");
        assert_eq!(net.replies.len(), 1, "the others wait for the second write");
        net.node(1).handle_persisted(second[0]);
        assert!(net.drain(1).is_empty(), "no write after the last");
        assert_eq!(net.replies.len(), 201);
        let addrs: BTreeSet<IpAddr> = net
            .replies
            .iter()
            .filter_map(|(_, _, r)| match r {
                Reply::Allocate(Ok(a)) => Some(a.addr),
                _ => None,
            })
            .collect();
        assert_eq!(addrs.len(), 101, "every allocation answered, each its own address");
    }

    #[test]
    fn other_routers_entries_are_written_in_a_batch_not_at_once() {
        // Router 3 gets space from router 1; router 2 only hears of it.
        let mut net = star(3, &[(1, 2), (1, 3)], false);
        net.run(Duration::from_secs(2));
        net.writes.clear();
        net.merges.clear();
        let cleared = net.now;
        let got = net.allocate(3, 1, "pod");
        assert!(matches!(got, Some(Ok(_))), "{got:?}");
        let start = net.now;
        net.run(Duration::from_secs(3));
        let merges: Vec<Time> = net.merges.iter().filter(|m| m.0 == 2).map(|m| m.1).collect();
        let writes: Vec<Time> = net.writes.iter().filter(|w| w.0 == 2).map(|w| w.1).collect();
        assert!(!merges.is_empty(), "router 2 merged the donation");
        assert!(!writes.is_empty(), "router 2 wrote the merged entries in the end");
        assert!(
            writes.len() < merges.len() + 1 && writes.len() <= 3,
            "{writes:?} for {merges:?}"
        );
        // Each write takes a batch: the merges since the write before it.
        // The batch is written once its first merge has waited
        // FOREIGN_PERSIST_EVERY, never at once; merges after the first fold
        // into the same write.
        let mut previous = cleared;
        for w in &writes {
            let first = merges.iter().filter(|m| **m >= previous && *m <= w).min();
            let waited = first.map(|m| w.since(*m));
            assert!(
                waited.is_some_and(|d| d >= ipam_agent::FOREIGN_PERSIST_EVERY),
                "a write at {w:?} came {waited:?} after the first merge of others' entries it holds"
            );
            previous = *w;
        }
        // Routers 1 and 3, whose own entries changed, wrote at once.
        for i in [1, 3] {
            let first_merge_or_change = net.writes.iter().find(|w| w.0 == i);
            assert!(
                first_merge_or_change.is_some_and(|w| w.1 < start),
                "router {i} wrote the donation"
            );
        }
        let rings: Vec<_> = (1..=3).map(|i| net.node(i).replica().ring().cloned()).collect();
        assert!(rings.iter().all(|r| *r == rings[0]), "the rings agree");
    }

    #[test]
    fn a_failed_write_undoes_what_waited_for_it_and_the_router_goes_on() {
        let mut net = star(1, &[], false);
        let now = net.now;
        net.node(1).allocate(now, ReplyTo(1), key("kept"), Request::Any);
        net.drain(1);
        net.hold_writes = true;
        net.node(1).allocate(now, ReplyTo(2), key("a"), Request::Any);
        let write = net.drain(1);
        let a = net.node(1).replica().lookup(&key("a")).expect("allocated in memory");
        net.node(1).allocate(now, ReplyTo(3), key("b"), Request::Any);
        net.node(1).release(now, ReplyTo(4), &key("kept"));
        assert!(net.drain(1).is_empty());
        net.node(1)
            .handle_persist_failed(now, write[0], "no space left on device");
        assert!(net.drain(1).is_empty(), "nothing to write: memory is what is on disk");
        let why = Reply::CannotPersist("cannot persist: no space left on device".into());
        for to in 2..=4 {
            assert_eq!(net.reply(ReplyTo(to)), Some(why.clone()), "call {to}");
        }
        let replica = net.node(1).replica();
        assert_eq!(replica.lookup(&key("a")), None, "the failed allocation is undone");
        assert_eq!(replica.lookup(&key("b")), None);
        assert!(replica.lookup(&key("kept")).is_some(), "the failed release is undone");
        assert!(net.events.iter().any(|e| matches!(
            &e.1,
            Event::PersistFailed { error, undone: true } if error == "no space left on device"
        )));
        // Space again: the next allocation succeeds, and may have the address that was undone.
        net.hold_writes = false;
        let now = net.now;
        net.node(1).allocate(now, ReplyTo(5), key("c"), Request::Any);
        net.drain(1);
        match net.reply(ReplyTo(5)) {
            Some(Reply::Allocate(Ok(c))) => assert_eq!(c.addr, a, "the undone address was free again"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_write_of_others_entries_undoes_nothing_and_is_tried_again() {
        let mut net = star(3, &[(1, 2), (1, 3)], false);
        net.run(Duration::from_secs(2));
        net.writes.clear();
        net.fail_write = Some((2, "read-only file system"));
        let got = net.allocate(3, 1, "pod");
        assert!(matches!(got, Some(Ok(_))), "{got:?}");
        net.run(Duration::from_secs(3));
        let failed = net.fail_write.is_none();
        assert!(failed, "router 2 wrote the entries it merged");
        assert!(
            net.events
                .iter()
                .any(|e| e.0 == 2 && matches!(e.1, Event::PersistFailed { undone: false, .. }))
        );
        let writes = net.writes.iter().filter(|w| w.0 == 2).count();
        assert!(writes >= 2, "router 2 wrote again after the failure: {writes} writes");
        let theirs = net.node(1).replica().ring().cloned();
        assert_eq!(
            net.node(2).replica().ring(),
            theirs.as_ref(),
            "router 2 kept what it merged"
        );
    }

    #[test]
    fn a_router_that_lost_its_state_creates_no_ring_but_takes_its_ranges_back_from_the_mesh() {
        // Alone, it waits, and says why.
        let lost = || Some(Saved::lost(p(1), "/var/lib/weft/ipam"));
        let mut alone = Node::new(config(1, Init::Consensus(1), false), lost(), Time::ZERO, 1).unwrap();
        alone.handle_timeout(Time::ZERO + Duration::from_secs(1));
        assert!(
            alone.replica().ring().is_none(),
            "a lone router that lost its state started a ring"
        );
        match alone.ipam_problem() {
            Some(IpamProblem::NoRing(why @ ipam_agent::NoRing::StateLost { .. })) => {
                let text = why.to_string();
                for needed in ["/var/lib/weft/ipam", "PEER", "weft reset"] {
                    assert!(text.contains(needed), "{needed:?} missing from {text:?}");
                }
            }
            other => panic!("{other:?}"),
        }

        // In a mesh: router 1 owns everything, then loses its state and comes back with a PEER.
        let mut net = star(2, &[(1, 2)], false);
        let Some(Ok(mine)) = net.allocate(1, 1, "before") else {
            panic!("router 1 allocates")
        };
        let Some(Ok(theirs)) = net.allocate(2, 3, "theirs") else {
            panic!("router 2 allocates from a donation")
        };
        net.run(Duration::from_secs(6));
        let owned = |n: &Node| n.replica().ring().map(|r| r.owners().get(&p(1)).map(|s| s.free));
        let before = owned(net.node(2));
        assert!(before.is_some_and(|f| f.is_some()), "router 2 knows router 1's space");
        let conns: Vec<ConnId> = net.conns.keys().copied().collect();
        for c in conns {
            net.close(c, Failure::Lost("restarted".into()));
        }
        let now = net.now;
        // The kernel shows three pod routes: the pod that had `mine`, one
        // with an address router 2 owns, one outside the pool.
        let pods = [
            (mine.addr, "weft00000000001"),
            (theirs.addr, "weft00000000002"),
            ("10.99.0.1".parse().unwrap(), "weft00000000003"),
        ]
        .map(|(a, v)| (a, v.to_owned()));
        let saved = lost().map(|s| s.with_pods(pods.clone()));
        net.nodes[0] = Node::new(config(1, Init::Consensus(1), false), saved, now, 9).unwrap();
        net.node(1).connect(now, PeerAddr::try_from(addr(2)).unwrap());
        net.run(Duration::from_secs(3));
        assert!(net.node(1).ipam_problem().is_none(), "{:?}", net.node(1).ipam_problem());
        let recovered = net.events.iter().find_map(|e| match &e.1 {
            Event::Ipam(ipam_agent::Event::Recovered {
                ranges,
                claimed,
                elsewhere,
                ..
            }) if e.0 == 1 => Some((*ranges, *claimed, elsewhere.clone())),
            _ => None,
        });
        let Some((ranges, claimed, elsewhere)) = recovered else {
            panic!("no recovery: {:?}", net.events)
        };
        assert!(ranges > 0);
        assert_eq!(claimed, 1, "the pod's address in router 1's ranges");
        assert_eq!(elsewhere.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [theirs.addr]);
        assert!(matches!(elsewhere[0].1, AllocError::AskPeer { peer, .. } if peer == p(2)));
        let held: Vec<(String, IpAddr)> = net
            .node(1)
            .replica()
            .allocations()
            .map(|(k, a)| (format!("{}/{}", k.container(), k.iface()), a))
            .collect();
        assert!(
            held.contains(&("weft:recovered/weft00000000001".to_owned(), mine.addr)),
            "{held:?}"
        );
        assert!(net.node(1).has_recovered_pods());
        assert_eq!(
            net.node(1).replica().ring().map(|r| r.owners().contains_key(&p(1))),
            Some(true),
            "router 1 owns its ranges again"
        );
        let got = net.allocate(1, 2, "after");
        assert!(
            matches!(got, Some(Ok(ref a)) if a.addr != mine.addr),
            "the pod's address is not handed out again: {got:?}"
        );
        // The pod goes: its route with it. Its address is released.
        let now = net.now;
        assert_eq!(net.node(1).pods_present(now, &pods[1..]), [mine.addr]);
        assert!(!net.node(1).has_recovered_pods());
        assert!(
            net.node(1).pods_present(now, &[]).is_empty(),
            "nothing else was taken back"
        );
    }

    #[test]
    fn ipam_messages_reach_a_router_that_is_not_a_neighbour_along_the_routes() {
        // 1 - 2 - 3 only: router 3 has no space and no connection to 1.
        let mut net = star(3, &[(1, 2), (2, 3)], false);
        // Router 3 cannot reach router 1, which it named; it is given router 2 too.
        let now = net.now;
        net.node(3).connect(now, PeerAddr::try_from(addr(2)).unwrap());
        net.run(Duration::from_secs(5));
        assert!(net.node(3).connection_of(p(1)).is_none());
        for i in 1..=3 {
            assert!(net.node(i).replica().ring().is_some(), "router {i} has the ring");
        }
        // Exhaust routers 2's and 3's own space so that 3 must ask 1, two hops away.
        let mut id = 100;
        for i in [2, 3] {
            while net.node(i).replica().free() > 0 {
                id += 1;
                let now = net.now;
                net.node(i)
                    .allocate(now, ReplyTo(id), key(&format!("fill-{id}")), Request::Any);
                net.drain(i);
            }
        }
        let got = net.allocate(3, 1, "far");
        let a = got.expect("answered").expect("space came from router 1");
        assert_eq!(net.node(3).replica().ring().unwrap().owner_of(a.addr), Some(p(3)));
    }

    #[test]
    fn rmpeer_is_refused_while_any_router_shows_a_connection() {
        let mut net = star(3, &[(1, 2), (2, 3)], false);
        let now = net.now;
        net.node(3).connect(now, PeerAddr::try_from(addr(2)).unwrap());
        net.run(Duration::from_secs(5));
        // Router 3 owns space once it has allocated (a donation through 2).
        assert!(matches!(net.allocate(3, 50, "a"), Some(Ok(_))));
        let now = net.now;
        // Connected to this router: alive.
        net.node(1).rmpeer(now, ReplyTo(1), &PeerRef::Name(p(2)), false);
        net.drain(1);
        assert_eq!(
            net.reply(ReplyTo(1)),
            Some(Reply::Rmpeer(Err(RmpeerError::Connected(p(2)))))
        );
        // Reported by a neighbour: maybe alive.
        net.node(1).rmpeer(now, ReplyTo(2), &"h3".parse().unwrap(), false);
        net.drain(1);
        assert!(
            matches!(net.reply(ReplyTo(2)), Some(Reply::Rmpeer(Err(RmpeerError::ReportedBy { dead, by, .. }))) if dead == p(3) && by == p(2)),
        );
        net.node(1).rmpeer(now, ReplyTo(3), &"nobody".parse().unwrap(), false);
        net.drain(1);
        assert_eq!(
            net.reply(ReplyTo(3)),
            Some(Reply::Rmpeer(Err(RmpeerError::Unknown("nobody".into()))))
        );
        // Router 3 dies: once 2's entry stops listing it, the reclaim starts.
        net.cut(2, 3);
        net.run(Duration::from_secs(2));
        let now = net.now;
        net.node(1).rmpeer(now, ReplyTo(4), &"h3".parse().unwrap(), false);
        net.drain(1);
        let got = net.reply(ReplyTo(4));
        assert!(
            matches!(got, Some(Reply::Rmpeer(Ok((dead, _)))) if dead == p(3)),
            "{got:?}"
        );
        net.run(Duration::from_secs(5));
        assert!(
            !net.node(1).replica().ring().unwrap().owners().contains_key(&p(3)),
            "3's ranges went to an heir"
        );
    }

    /// The operator removes router 3 while it is only cut off. Both sides
    /// allocate during the cut; after the heal router 3 learns of its
    /// removal, stops, answers `removed`, and every ring agrees, with no
    /// address handed out twice.
    #[test]
    fn forced_rmpeer_of_a_live_router_across_a_partition() {
        let mut net = star(3, &[(1, 2), (1, 3), (2, 3)], false);
        let mut answered: Vec<(u64, IpAddr)> = Vec::new();
        let mut id = 100;
        let mut alloc = |net: &mut Net, i: u64, answered: &mut Vec<(u64, IpAddr)>| {
            id += 1;
            let got = net.allocate(i, id, &format!("c{id}"));
            let a = got.expect("answered").expect("allocated");
            answered.push((i, a.addr));
        };
        for i in 1..=3 {
            alloc(&mut net, i, &mut answered);
        }
        net.cut(1, 3);
        net.cut(2, 3);
        // Once nobody reports a connection to router 3, rmpeer starts.
        let mut started = None;
        for n in 0..40 {
            net.run(Duration::from_millis(500));
            let now = net.now;
            net.node(1).rmpeer(now, ReplyTo(n), &"h3".parse().unwrap(), false);
            net.drain(1);
            if let Some(Reply::Rmpeer(Ok(st))) = net.reply(ReplyTo(n)) {
                started = Some(st);
                break;
            }
        }
        assert!(started.is_some(), "rmpeer never started");
        for _ in 0..3 {
            alloc(&mut net, 3, &mut answered);
            alloc(&mut net, 1, &mut answered);
            alloc(&mut net, 2, &mut answered);
        }
        let ring1 = net.node(1).replica().ring().unwrap().clone();
        assert_eq!(ring1.reclaim_status(p(3)), Some(ReclaimStatus::Done { heir: p(1) }));
        assert!(!ring1.has_stopped(p(3)), "router 3 cannot know yet");
        assert!(
            net.node(1).replica().held()[&p(3)] > 0,
            "the heir holds router 3's space"
        );
        // The heal.
        for (a, b) in [(1, 3), (2, 3)] {
            net.links.insert((a, b));
            net.links.insert((b, a));
        }
        let healed = net.now;
        let mut reconnected = None;
        let mut equal = None;
        for _ in 0..1200 {
            net.run(Duration::from_millis(100));
            if reconnected.is_none() && [1, 2].iter().any(|&i| net.node(i).connection_of(p(3)).is_some()) {
                reconnected = Some(net.now);
            }
            let rings: Vec<Ring> = (1..=3).map(|i| net.node(i).replica().ring().unwrap().clone()).collect();
            if rings.iter().all(|r| *r == rings[0]) && rings[0].has_stopped(p(3)) {
                equal = Some(net.now);
                break;
            }
        }
        if equal.is_none() {
            for i in 1..=3u64 {
                let conns: Vec<u64> = (1..=3u64)
                    .filter(|j| net.nodes[i as usize - 1].connection_of(p(*j)).is_some())
                    .collect();
                let r = net.nodes[i as usize - 1].replica();
                eprintln!(
                    "{i}: removed {} conns {:?} reclaims {:?} stopped {} held {:?} events {:?}",
                    r.is_removed(),
                    conns,
                    r.ring().unwrap().reclaims(),
                    r.ring().unwrap().has_stopped(p(3)),
                    r.held(),
                    net.events
                        .iter()
                        .filter(|(n, _)| *n == i)
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                );
            }
        }
        let equal = equal.expect("the rings never agreed after the heal");
        let reconnected = reconnected.expect("router 3 reconnected");
        eprintln!(
            "rings equal {:?} after router 3 reconnected ({:?} after the links came back)",
            equal.since(reconnected),
            equal.since(healed)
        );
        assert!(
            equal.since(reconnected) <= Duration::from_secs(5),
            "rings took too long to agree"
        );
        assert!(net.node(3).replica().is_removed());
        assert_eq!(net.node(3).ipam_problem(), Some(IpamProblem::Removed));
        // Router 3 answers `removed` to every call.
        let now = net.now;
        net.node(3).release(now, ReplyTo(900), &key("c103"));
        net.drain(3);
        assert_eq!(net.reply(ReplyTo(900)), Some(Reply::Release(Err(AllocError::Removed))));
        let got = net.allocate(3, 901, "late");
        assert!(
            matches!(got, Some(Err(AllocFailure::Refused(AllocError::Removed)))),
            "{got:?}"
        );
        // Router 3's pods keep their addresses: nobody hands them out again.
        for _ in 0..3 {
            alloc(&mut net, 1, &mut answered);
            alloc(&mut net, 2, &mut answered);
        }
        let mut seen = BTreeSet::new();
        for (i, a) in &answered {
            assert!(
                seen.insert(*a),
                "{a} handed out twice (last by router {i}): {answered:?}"
            );
        }
        let heir = net.node(1).replica();
        for (i, a) in answered.iter().filter(|(i, _)| *i == 3) {
            let key = key("probe");
            let mut probe = heir.clone();
            assert!(
                matches!(probe.allocate(key, Request::Addr(*a)), Err(AllocError::Held { .. })),
                "router {i}'s {a} is not held by its heir"
            );
        }
        // Router 3 is reset: its pods are gone, and the heir may use their addresses.
        let now = net.now;
        net.node(3).reset(now, ReplyTo(950));
        net.run(Duration::from_secs(3));
        let failed = net.reply(ReplyTo(950));
        assert_eq!(net.resets_done, vec![(3, ReplyTo(950))], "{failed:?}");
        assert!(
            net.node(1).replica().held().is_empty(),
            "the heir still holds router 3's pods' addresses"
        );
        let pod = answered.iter().find(|(i, _)| *i == 3).expect("router 3 allocated").1;
        let now = net.now;
        net.node(1)
            .allocate(now, ReplyTo(951), key("reuse"), Request::Addr(pod));
        net.run(Duration::from_secs(1));
        assert!(
            matches!(net.reply(ReplyTo(951)), Some(Reply::Allocate(Ok(a))) if a.addr == pod),
            "the heir cannot use {pod} after router 3's reset"
        );
    }

    #[test]
    fn reset_hands_the_ranges_to_the_heir_and_then_stops() {
        let mut net = star(2, &[(1, 2)], false);
        // Router 2 owns space once it has allocated.
        assert!(matches!(net.allocate(2, 1, "a"), Some(Ok(_))));
        let now = net.now;
        net.node(2).reset(now, ReplyTo(9));
        net.run(Duration::from_secs(3));
        assert_eq!(net.resets_done, vec![(2, ReplyTo(9))]);
        assert!(
            net.events.iter().any(|e| *e == (2, Event::Leaving { heir: p(1) })),
            "{:?}",
            net.events
        );
        let ring = net.node(1).replica().ring().unwrap().clone();
        assert!(
            ring.owners().keys().all(|o| *o == p(1)),
            "router 1 owns everything: {ring:?}"
        );
        // A second reset, on a router with no one to hand over to, says so.
        let now = net.now;
        net.node(1).reset(now, ReplyTo(10));
        net.drain(1);
        assert_eq!(net.reply(ReplyTo(10)), Some(Reply::Reset(ResetError::NoHeir)));
    }

    #[test]
    fn a_reset_the_heir_never_confirms_fails_after_the_wait() {
        let mut net = star(2, &[(1, 2)], false);
        assert!(matches!(net.allocate(2, 1, "a"), Some(Ok(_))));
        let now = net.now;
        net.node(2).reset(now, ReplyTo(9));
        net.drain(2);
        // The heir is cut off before it hears of it.
        net.wire.clear();
        net.cut(1, 2);
        net.run(RESET_CONFIRM + Duration::from_secs(1));
        assert!(net.resets_done.is_empty());
        assert_eq!(
            net.reply(ReplyTo(9)),
            Some(Reply::Reset(ResetError::HeirSilent {
                heir: p(1),
                waited: RESET_CONFIRM
            }))
        );
    }

    #[test]
    fn a_router_that_owns_no_space_resets_at_once() {
        let mut net = star(2, &[(1, 2)], false);
        assert!(!net.node(2).replica().ring().unwrap().members().any(|m| m == p(2)));
        let now = net.now;
        net.node(2).reset(now, ReplyTo(3));
        net.drain(2);
        assert_eq!(net.resets_done, vec![(2, ReplyTo(3))], "nothing to hand over");
    }

    #[test]
    fn the_host_gets_an_address_once_there_is_a_ring_and_the_kernel_hears_of_it() {
        let mut net = Net::new(1, |_| Init::Consensus(1), &[], true);
        net.run(Duration::from_millis(50));
        let host = net
            .node(1)
            .host_address()
            .expect("a host address from the router's own space");
        assert!(net.events.contains(&(1, Event::HostAddress(host))));
        assert_eq!(
            net.node(1).replica().lookup(&Node::host_key()),
            Some(IpAddr::V4(host)),
            "kept like a pod's allocation"
        );
        // The routes output carries it as the preferred source.
        let mut node = Net::new(1, |_| Init::Consensus(1), &[], true).nodes.remove(0);
        let mut routes = None;
        while let Some(out) = node.poll_output() {
            match out {
                Output::Persist { seq, .. } => node.handle_persisted(seq),
                Output::Routes(r) => routes = Some(r),
                _ => {}
            }
        }
        let routes = routes.expect("routes for the kernel");
        let host = node.host_address().unwrap();
        assert!(
            format!("{:?}", routes.desired).contains(&host.to_string()),
            "{routes:?}"
        );
        assert_eq!(routes.ranges.len(), 1, "{routes:?}");
    }

    #[test]
    fn a_hostname_peer_is_resolved_then_dialed_and_can_be_forgotten() {
        let mut net = Net::new(1, |_| Init::Consensus(1), &[], false);
        net.drain(1);
        let peer: PeerAddr = "node-2:7000".parse().unwrap();
        let now = net.now;
        net.node(1).connect(now, peer.clone());
        assert_eq!(net.node(1).poll_output(), Some(Output::Resolve(peer.clone())));
        let rows = net.node(1).peer_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].address.as_deref(), Some("node-2:7000"));
        net.node(1)
            .handle_resolved(now, peer.clone(), Err("no such host".into()));
        assert_eq!(
            net.node(1).peer_rows()[0].resolve_error.as_deref(),
            Some("no such host")
        );
        let resolved: SocketAddr = "192.0.2.2:7000".parse().unwrap();
        net.node(1).handle_resolved(now, peer.clone(), Ok(resolved));
        let outs: Vec<Output> = std::iter::from_fn(|| net.node(1).poll_output()).collect();
        assert!(outs.contains(&Output::Dial(resolved)), "{outs:?}");
        assert_eq!(net.node(1).forget(now, &peer), Ok(()));
        assert_eq!(net.node(1).forget(now, &peer), Err(NotAdded(peer)));
    }
}
