//! `weft launch`: the router daemon.
//!
//! [`Daemon::bind`] binds everything that can fail at start (the control
//! endpoint, the API socket, the metrics listener), so the caller learns the
//! addresses (tests bind port 0) and bind errors come before anything runs.
//! [`Daemon::run`] then drives the mesh until `shutdown` completes.
//!
//! One task, the *driver*, owns the [`Mesh`] core and the connection table,
//! and `select!`s on:
//!
//! - inputs from helper tasks over one bounded channel: authenticated inbound
//!   connections (an accept loop), dial results (one task per dial), name
//!   resolutions of `host:port` PEERs, messages and closes from each
//!   connection's reader task;
//! - API commands from the [`Backend`] the API server calls;
//! - the core's timer ([`Mesh::poll_timeout`]);
//! - shutdown.
//!
//! After each, it drains the core: messages go to each connection's writer
//! task through a bounded queue (a full queue closes that connection, so the
//! driver never waits on the network), dials are spawned, and events are
//! logged and counted. On shutdown it closes every connection normally, stops
//! the API and metrics servers, and removes the API socket.
//!
//! The driver also owns the IPAM [`Agent`]. After every step it persists the
//! agent's replica to `DATA_DIR/ipam` *before* it sends anything or answers
//! the API, so an answered allocation and a ring version others have seen
//! survive a crash. A failed write stops the router: answering without the
//! state on disk could hand an address out twice after a restart.
//! `Ask`/`Gave` messages for other routers are forwarded along the mesh's
//! shortest paths, and the agent's part in creating the ring by consensus
//! goes into this router's topology entry once it is on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipam_crdt::{AllocKey, PeerName, Pool, Request};
use quinn::VarInt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{Instrument, debug, info, info_span, trace, warn};

use super::clock::Clock;
use super::control::{self, ControlEndpoint, ControlError, ControlReceiver, ControlSender, ControlStats};
use super::host;
use super::interfaces;
use crate::api::types::{
    AllocateResponse, AllocationView, ApiError, DataState, ErrorCode, IpamSummary, PeerData, PeerStatus, ReclaimView,
    ReleaseResponse,
};
use crate::api::{self, Backend, RingView, Status};
use crate::config::IpallocInit;
use crate::config::{Host, LaunchConfig, PeerAddr, PeerRef};
use crate::core::data::session::Reach;
use crate::core::endpoints::Policy;
use crate::core::handshake::HandshakeCounts;
use crate::core::ipam::{Resolution, resolve_seeds};
use crate::core::ipam_agent::{self, Agent, AllocFailure, Dest, IpamMsg, Progress, Ticket};
use crate::core::mesh::{self, ConnId, Event, Failure, Mesh, Refused};
use crate::core::wire::ControlMsg;
use crate::identity::Identity;
use crate::metrics::{self, ConnState, Direction, HandshakeFailure, Metrics};
use crate::secret::ClusterSecret;
use crate::store::{self, Kind, StoreError};

/// Binds everything and runs the router until `shutdown` completes.
///
/// # Errors
/// [`DaemonError`] if something cannot be bound, or the driver fails.
pub async fn run(
    config: LaunchConfig,
    identity: Identity,
    secret: ClusterSecret,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    Daemon::bind(config, identity, &secret).await?.run(shutdown).await
}

/// A router whose sockets are bound, ready to [`run`](Daemon::run).
#[derive(Debug)]
pub struct Daemon {
    config: LaunchConfig,
    endpoint: ControlEndpoint,
    control_addr: SocketAddr,
    api: tokio::net::UnixListener,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    metrics: Arc<Metrics>,
    /// The IPAM state read from `DATA_DIR/ipam`, if any.
    saved_ipam: Option<ipam_agent::Saved>,
    clock: Clock,
    /// The data plane, opened (unless the config turns it off).
    data: Option<host::Prepared>,
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The control endpoint could not be bound (`--listen`).
    #[error("--listen {addr}: {error}")]
    Control {
        /// The address asked for.
        addr: SocketAddr,
        /// Why (its message already names the OS error).
        error: control::BindError,
    },
    /// The local address of the control endpoint could not be read.
    #[error("cannot read the control endpoint's address: {0}")]
    LocalAddr(io::Error),
    /// The API socket could not be bound (`--api-socket`); the message says what to do.
    #[error("{0}")]
    Api(api::BindError),
    /// The IPAM state in the data directory cannot be read or written.
    #[error("IPAM state {path}: {error}")]
    IpamState {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The data plane cannot start (TUN device, data-plane port, firewall).
    #[error("data plane: {0}")]
    DataPlane(#[from] host::HostError),
    /// The metrics listener could not be bound (`--metrics-addr`).
    #[error("--metrics-addr {addr}: cannot listen: {error}")]
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        error: io::Error,
    },
}

impl Daemon {
    /// Binds the control endpoint to `--listen`, the API socket and the
    /// metrics listener. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`DaemonError`], naming the flag and the address.
    pub async fn bind(config: LaunchConfig, identity: Identity, secret: &ClusterSecret) -> Result<Self, DaemonError> {
        let ipam_path = config.data_dir.join(IPAM_FILE);
        let state_error = |error: String| DaemonError::IpamState {
            path: ipam_path.clone(),
            error,
        };
        let saved_ipam = match store::read_state(&ipam_path, Kind::Ipam).map_err(|e| state_error(e.to_string()))? {
            Some(bytes) => {
                let saved = Agent::decode_saved(&bytes).map_err(state_error)?;
                if saved.replica().name() != identity.name() {
                    return Err(state_error(format!(
                        "it belongs to router {}, not to this router {}",
                        saved.replica().name(),
                        identity.name()
                    )));
                }
                Some(saved)
            }
            None => None,
        };
        let clock = Clock::start();
        let data = if config.dataplane {
            Some(host::Prepared::open(&config, &identity, secret, clock).await?)
        } else {
            None
        };
        let endpoint =
            ControlEndpoint::bind(config.listen, Arc::new(identity), secret).map_err(|error| DaemonError::Control {
                addr: config.listen,
                error,
            })?;
        let control_addr = endpoint.local_addr().map_err(DaemonError::LocalAddr)?;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|error| DaemonError::Metrics {
                addr: config.metrics_addr,
                error,
            })?;
        let metrics_addr = metrics_listener.local_addr().map_err(|error| DaemonError::Metrics {
            addr: config.metrics_addr,
            error,
        })?;
        let api = api::bind_socket(&config.api_socket).await.map_err(DaemonError::Api)?;
        Ok(Self {
            config,
            endpoint,
            control_addr,
            api,
            metrics_listener,
            metrics_addr,
            metrics: Arc::new(
                data.as_ref()
                    .map_or_else(Metrics::new, |d| Metrics::with_dataplane(d.stats())),
            ),
            saved_ipam,
            clock,
            data,
        })
    }

    /// The address control connections are accepted on.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The address metrics are served on.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The API socket.
    pub fn api_socket(&self) -> &Path {
        &self.config.api_socket
    }

    /// This router's name.
    pub fn name(&self) -> PeerName {
        self.endpoint.name()
    }

    /// The control endpoint's counters (handshake failures, ...).
    pub fn control_stats(&self) -> Arc<ControlStats> {
        self.endpoint.stats()
    }

    /// The metrics this router serves.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs the router until `shutdown` completes, then closes every
    /// connection, stops the servers and removes the API socket.
    ///
    /// # Errors
    /// None at present; the signature leaves room for fatal driver errors.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let Self {
            config,
            endpoint,
            control_addr,
            api: api_listener,
            metrics_listener,
            metrics_addr,
            metrics,
            saved_ipam,
            clock,
            data,
        } = self;
        let api_path = config.api_socket.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let backend = Arc::new(ApiBackend { commands: cmd_tx });
        let api_task = tokio::spawn(api::serve(api_listener, backend, stopped(stop_rx.clone())));
        let metrics_task = tokio::spawn(metrics::serve_metrics(
            metrics_listener,
            Arc::clone(&metrics),
            stopped(stop_rx),
        ));
        info!(
            peer = %endpoint.name(),
            nickname = %config.nickname,
            listen = %control_addr,
            api = %api_path.display(),
            metrics = %metrics_addr,
            "router running"
        );

        let endpoint = Arc::new(endpoint);
        let data = data.map(|d| d.start(clock)).transpose()?;
        let mut driver = Driver::new(
            &config,
            Arc::clone(&endpoint),
            control_addr,
            metrics,
            saved_ipam,
            clock,
            data,
        )?;
        let outcome = driver.run(cmd_rx, shutdown).await;
        info!("shutting down");
        driver.close_all().await;
        if let Some(data) = driver.data.as_mut() {
            data.stop().await;
            if let Some(reply) = driver.reset_reply.take() {
                let removed = data.remove_kernel_state().await.map_err(|e| {
                    ApiError::new(
                        ErrorCode::Internal,
                        format!("the router left the ring, but removing its routes and firewall rules failed: {e}"),
                    )
                });
                let _ = reply.send(removed);
            }
        }
        drop(driver);

        let _ = stop_tx.send(true);
        for (what, task) in [("API", api_task), ("metrics", metrics_task)] {
            match tokio::time::timeout(SERVER_STOP_TIMEOUT, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(error = %e, "the {what} server failed"),
                Ok(Err(e)) => warn!(error = %e, "the {what} server task failed"),
                Err(_) => debug!("the {what} server did not stop in time"),
            }
        }
        match Arc::try_unwrap(endpoint) {
            Ok(endpoint) => {
                if tokio::time::timeout(SERVER_STOP_TIMEOUT, endpoint.shutdown())
                    .await
                    .is_err()
                {
                    debug!("peers did not acknowledge the close in time");
                }
            }
            Err(endpoint) => endpoint.close(),
        }
        match std::fs::remove_file(&api_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %api_path.display(), error = %e, "cannot remove the API socket"),
        }
        info!("stopped");
        outcome
    }
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

// ---- the driver ----

/// What the helper tasks tell the driver.
#[derive(Debug)]
enum Input {
    /// The accept loop: an inbound connection, authenticated or not.
    Accepted(Result<control::Authenticated, ControlError>),
    /// A dial finished.
    Dialed(SocketAddr, Result<control::Authenticated, ControlError>),
    /// A hostname PEER resolved (`Ok`), or failed to and will be retried (`Err`).
    Resolved(PeerAddr, Result<SocketAddr, String>),
    /// A message from a connection's reader.
    Message(ConnId, mesh::Message),
    /// An IPAM message from a connection's reader, still encoded.
    Ipam(ConnId, Vec<u8>),
    /// A connection's reader or writer ended.
    Closed(ConnId, Failure),
}

/// What the API asks of the driver.
#[derive(Debug)]
enum Command {
    Status(oneshot::Sender<Status>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    Connect(PeerAddr, oneshot::Sender<()>),
    Forget(PeerAddr, oneshot::Sender<Result<(), ApiError>>),
    Ring(oneshot::Sender<RingView>),
    Allocate(AllocKey, Request, AllocReply),
    Release(AllocKey, oneshot::Sender<ReleaseResponse>),
    Allocations(oneshot::Sender<Vec<AllocationView>>),
    Rmpeer(PeerRef, oneshot::Sender<Result<ReclaimView, ApiError>>),
    Reset(oneshot::Sender<Result<(), ApiError>>),
}

/// A `weft reset` waiting for its heir to confirm.
struct Leaving {
    heir: PeerName,
    until: crate::core::Time,
    reply: oneshot::Sender<Result<(), ApiError>>,
}

/// Where the answer to an API allocation goes.
type AllocReply = oneshot::Sender<Result<AllocateResponse, ApiError>>;

/// One authenticated control connection.
#[derive(Debug)]
struct Conn {
    peer: PeerName,
    connection: quinn::Connection,
    outbox: mpsc::Sender<ControlMsg>,
    reader: AbortHandle,
    writer: AbortHandle,
}

/// A PEER given as `host:port`, being resolved.
#[derive(Debug)]
struct Resolving {
    task: AbortHandle,
    /// The last resolution failure, shown in the status.
    reason: Option<String>,
}

/// Owns the mesh core and the connections. Driven by [`Driver::run`].
struct Driver {
    mesh: Mesh,
    clock: Clock,
    endpoint: Arc<ControlEndpoint>,
    nickname: String,
    metrics: Arc<Metrics>,
    conns: BTreeMap<ConnId, Conn>,
    by_peer: BTreeMap<PeerName, ConnId>,
    /// The PEERs the operator gave (command line and `weft connect`), as they wrote them.
    asked: HashSet<PeerAddr>,
    /// Hostname PEERs being resolved.
    resolving: HashMap<PeerAddr, Resolving>,
    /// Hostname PEERs and the address they resolved to.
    resolved: HashMap<PeerAddr, SocketAddr>,
    /// Bumped whenever a control connection comes or goes (the data plane
    /// tries a peer's control address first).
    conns_generation: u64,
    /// When the host's interface addresses are listed again.
    next_local_scan: crate::core::Time,
    tasks: JoinSet<()>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    handshakes_seen: HandshakeCounts,
    timeouts_seen: u64,
    agent: Agent,
    pool: Pool,
    ipam_path: PathBuf,
    /// API answers held until the IPAM state is on disk.
    held: Vec<Box<dyn FnOnce() + Send>>,
    /// Routed IPAM messages waiting for a route.
    unrouted: ipam_agent::Unrouted<Vec<u8>>,
    /// API allocations waiting for the agent, and when they were asked.
    waiting: BTreeMap<Ticket, (AllocReply, crate::core::Time)>,
    /// Set when the IPAM state could not be written: the router must stop.
    fatal: Option<DaemonError>,
    leaving: Option<Leaving>,
    /// Why the last refused ring was refused, for `weft status`.
    ring_refusal: Option<String>,
    /// `weft reset` finished: the driver stops.
    reset_done: bool,
    data_dir: PathBuf,
    /// The data plane, if running.
    data: Option<host::Running>,
    /// The host's own address on the pod network, once allocated.
    host_address: Option<std::net::Ipv4Addr>,
    /// The allocation of the host address, while it waits for space.
    host_ticket: Option<Ticket>,
    /// A finished `weft reset`, answered after the kernel state is removed.
    reset_reply: Option<oneshot::Sender<Result<(), ApiError>>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("me", &self.mesh.topology().me())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    fn new(
        config: &LaunchConfig,
        endpoint: Arc<ControlEndpoint>,
        listen: SocketAddr,
        metrics: Arc<Metrics>,
        saved_ipam: Option<ipam_agent::Saved>,
        clock: Clock,
        data: Option<host::Running>,
    ) -> Result<Self, DaemonError> {
        let now = clock.now();
        let ipam_path = config.data_dir.join(IPAM_FILE);
        let init = match &config.ipalloc_init {
            IpallocInit::Seed(seeds) => ipam_agent::Init::Seeds(seeds.clone()),
            IpallocInit::Consensus { peers } => ipam_agent::Init::Consensus(peers.get()),
        };
        let agent = Agent::new(endpoint.name(), config.ipalloc_range, init, saved_ipam, now).map_err(|e| {
            DaemonError::IpamState {
                path: ipam_path.clone(),
                error: e.to_string(),
            }
        })?;
        let mesh_config = mesh::Config {
            conn_limit: config.conn_limit.get(),
            ..mesh::Config::default()
        };
        let advertise = Policy::new(listen, config.advertise.clone(), vec![config.ipalloc_range.net()]);
        let mut mesh = Mesh::new(
            mesh_config,
            endpoint.name(),
            config.nickname.to_string(),
            advertise,
            now,
            rand::random(),
        );
        if let Some(d) = &data {
            mesh.set_data(
                now,
                Some(crate::core::topology::DataPlane {
                    public_key: endpoint.public_key(),
                    port: d.port(),
                }),
            );
        }
        let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE);
        let mut driver = Self {
            mesh,
            clock,
            endpoint,
            nickname: config.nickname.to_string(),
            metrics,
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            asked: HashSet::new(),
            resolving: HashMap::new(),
            resolved: HashMap::new(),
            conns_generation: 0,
            next_local_scan: now,
            tasks: JoinSet::new(),
            inputs_tx,
            inputs,
            handshakes_seen: HandshakeCounts::default(),
            timeouts_seen: 0,
            agent,
            pool: config.ipalloc_range,
            ipam_path,
            held: Vec::new(),
            unrouted: ipam_agent::Unrouted::default(),
            leaving: None,
            ring_refusal: None,
            reset_done: false,
            data_dir: config.data_dir.clone(),
            waiting: BTreeMap::new(),
            fatal: None,
            data,
            host_address: None,
            host_ticket: None,
            reset_reply: None,
        };
        driver.scan_local_addrs(now);
        let endpoint = Arc::clone(&driver.endpoint);
        let tx = driver.inputs_tx.clone();
        driver.tasks.spawn(accept_loop(endpoint, tx));
        for peer in &config.peers {
            driver.connect(peer.clone());
        }
        let topo = driver.mesh.topology();
        driver.agent.handle_topology(now, topo);
        Ok(driver)
    }

    /// The event loop: one event, then drain the core, until `shutdown`.
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        self.drain();
        loop {
            if let Some(e) = self.fatal.take() {
                warn!(error = %e, "stopping: the IPAM state cannot be saved");
                return Err(e);
            }
            if self.reset_done {
                return Ok(());
            }
            let mut next = (self.mesh.poll_timeout())
                .min(self.agent.poll_timeout())
                .min(self.next_local_scan);
            if let Some(l) = &self.leaving {
                next = next.min(l.until);
            }
            let deadline = self.clock.deadline(next);
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                Some(input) = self.inputs.recv() => self.handle_input(input),
                Some(cmd) = commands.recv() => self.handle_command(cmd),
                () = tokio::time::sleep_until(deadline) => {
                    let now = self.clock.now();
                    if now >= self.next_local_scan {
                        self.scan_local_addrs(now);
                    }
                    self.mesh.handle_timeout(now);
                    self.agent.handle_timeout(now);
                    self.check_leaving(now);
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        warn!(error = %e, "a router task panicked");
                    }
                }
            }
            self.drain();
        }
    }

    fn handle_input(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::Accepted(Ok(auth)) => self.register(auth, None),
            Input::Accepted(Err(e)) => debug!(error = %e, "inbound control connection failed"),
            Input::Dialed(addr, Ok(auth)) => self.register(auth, Some(addr)),
            Input::Dialed(addr, Err(e)) => {
                debug!(%addr, error = %e, "dial failed");
                self.mesh.handle_dial_failed(now, addr, e.failure());
            }
            Input::Resolved(peer, Ok(addr)) => {
                if self.resolving.remove(&peer).is_some() {
                    info!(%peer, %addr, "resolved");
                    self.resolved.insert(peer, addr);
                    self.mesh.connect(now, addr);
                }
            }
            Input::Resolved(peer, Err(reason)) => {
                if let Some(r) = self.resolving.get_mut(&peer) {
                    debug!(%peer, %reason, "cannot resolve; retrying");
                    r.reason = Some(reason);
                }
            }
            Input::Message(id, msg) => {
                if let Some(conn) = self.conns.get(&id) {
                    self.mesh.handle_message(now, conn.peer, msg);
                }
            }
            Input::Ipam(id, bytes) => {
                if let Some(conn) = self.conns.get(&id) {
                    let from = conn.peer;
                    self.handle_ipam(now, from, bytes);
                }
            }
            Input::Closed(id, reason) => self.disconnect(id, reason),
        }
    }

    /// An IPAM message from neighbour `from`: ours, or forwarded towards its destination.
    fn handle_ipam(&mut self, now: crate::core::Time, from: PeerName, bytes: Vec<u8>) {
        let msg = match IpamMsg::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                debug!(peer = %from, error = %e, "malformed IPAM message dropped");
                self.metrics.malformed_ipam();
                return;
            }
        };
        match msg.destination() {
            Some(to) if to != self.mesh.topology().me() => self.route_ipam(to, bytes),
            _ => self.agent.handle_message(now, from, msg),
        }
    }

    /// Sends an encoded IPAM message to `to`: directly if a neighbour, else to the next hop.
    fn route_ipam(&mut self, to: PeerName, bytes: Vec<u8>) {
        let hop = if self.by_peer.contains_key(&to) {
            Some(to)
        } else {
            self.mesh.topology().next_hops().get(&to).copied()
        };
        match hop {
            Some(hop) => self.send_ipam(hop, bytes),
            None => {
                // A router that joined moments ago: wait for the topology to show a path.
                debug!(peer = %to, "no route yet for an IPAM message; holding it");
                let now = self.clock.now();
                self.unrouted.push(now, to, bytes);
            }
        }
    }

    fn send_ipam(&mut self, peer: PeerName, bytes: Vec<u8>) {
        let Some(conn) = self.by_peer.get(&peer).and_then(|id| self.conns.get(id)) else {
            trace!(peer = %peer, "no connection for an IPAM message; dropped");
            return;
        };
        if conn.outbox.try_send(ControlMsg::Ipam(bytes)).is_err() {
            debug!(peer = %peer, "IPAM message dropped: the connection's queue is full");
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_list());
            }
            Command::Connect(peer, reply) => {
                info!(%peer, "connect requested");
                self.connect(peer);
                let _ = reply.send(());
            }
            Command::Forget(peer, reply) => {
                let _ = reply.send(self.forget(&peer));
            }
            Command::Ring(reply) => {
                let view = RingView::from_replica(self.pool, self.agent.replica(), |p| self.nickname_of(p));
                let _ = reply.send(view);
            }
            Command::Allocate(key, request, reply) => {
                let now = self.clock.now();
                match self.agent.allocate(now, key, request) {
                    // Answered in `drain`, once the state is on disk.
                    Ok(Progress::Done(a)) => {
                        self.metrics.observe_allocation(Duration::ZERO);
                        self.hold(reply, Ok(a.into()));
                    }
                    Ok(Progress::Waiting(ticket)) => {
                        self.waiting.insert(ticket, (reply, now));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(alloc_failure(e)));
                    }
                }
            }
            Command::Reset(reply) => self.reset(reply),
            Command::Rmpeer(name, reply) => {
                let answer = self.rmpeer(&name);
                self.hold(reply, answer);
            }
            Command::Allocations(reply) => {
                let prefix = self.pool.net().prefix_len();
                let host = Self::host_key();
                let mut list: Vec<AllocationView> = (self.agent.replica().allocations())
                    .filter(|(key, _)| **key != host)
                    .map(|(key, addr)| AllocationView::new(key, addr, prefix))
                    .collect();
                list.sort_by(|a, b| (&a.id, &a.iface).cmp(&(&b.id, &b.iface)));
                let _ = reply.send(list);
            }
            Command::Release(key, reply) => {
                let now = self.clock.now();
                let address = self.agent.release(now, &key).map(|a| {
                    let prefix = self.pool.net().prefix_len();
                    format!("{a}/{prefix}")
                });
                self.hold(reply, ReleaseResponse { address });
            }
        }
    }

    /// Adds a PEER: dialed at once if it is an IP address, resolved first if a hostname.
    fn connect(&mut self, peer: PeerAddr) {
        self.asked.insert(peer.clone());
        if let Some(addr) = peer.socket_addr() {
            self.mesh.connect(self.clock.now(), addr);
            return;
        }
        if let Some(&addr) = self.resolved.get(&peer) {
            self.mesh.connect(self.clock.now(), addr);
            return;
        }
        if self.resolving.contains_key(&peer) {
            return;
        }
        let task = self
            .tasks
            .spawn(resolve(peer.clone(), self.inputs_tx.clone()).instrument(info_span!("resolve", %peer)));
        self.resolving.insert(peer, Resolving { task, reason: None });
    }

    fn forget(&mut self, peer: &PeerAddr) -> Result<(), ApiError> {
        if !self.asked.remove(peer) {
            return Err(ApiError::not_found(format!(
                "{peer} was never added with `weft launch` or `weft connect`"
            )));
        }
        info!(%peer, "forgetting");
        if let Some(r) = self.resolving.remove(peer) {
            r.task.abort();
        }
        let addr = peer.socket_addr().or_else(|| self.resolved.remove(peer));
        if let Some(addr) = addr {
            self.mesh.forget(addr);
        }
        Ok(())
    }

    /// Hands an authenticated connection to the core, and starts its tasks if the core keeps it.
    fn register(&mut self, auth: control::Authenticated, dialed: Option<SocketAddr>) {
        let now = self.clock.now();
        let peer = auth.peer_name();
        let id = auth.conn_id();
        let connection = auth.connection().clone();
        match self
            .mesh
            .handle_connected(now, peer, id, dialed, connection.remote_address())
        {
            Err(Refused(reason)) => {
                debug!(peer = %peer, ?reason, "closing a refused control connection");
                connection.close(VarInt::from_u32(control::CLOSE_NORMAL), describe(&reason).as_bytes());
                return;
            }
            Ok(Some(old)) => {
                debug!(peer = %peer, "replacing a duplicate control connection");
                if let Some(old) = self.conns.remove(&old) {
                    close_conn(&old, "replaced by a newer connection");
                }
            }
            Ok(None) => {}
        }
        self.conns_generation += 1;
        let (sender, receiver) = auth.into_split();
        let (outbox, queue) = mpsc::channel(OUTBOX_QUEUE);
        let span = info_span!("peer", peer = %peer, conn = id.0);
        let reader = self
            .tasks
            .spawn(read_loop(id, receiver, self.inputs_tx.clone(), Arc::clone(&self.metrics)).instrument(span.clone()));
        let writer = self
            .tasks
            .spawn(write_loop(id, sender, queue, self.inputs_tx.clone(), Arc::clone(&self.metrics)).instrument(span));
        self.by_peer.insert(peer, id);
        self.conns.insert(
            id,
            Conn {
                peer,
                connection,
                outbox,
                reader,
                writer,
            },
        );
    }

    /// Forgets connection `id` and tells the core why it went.
    fn disconnect(&mut self, id: ConnId, reason: Failure) {
        let Some(conn) = self.conns.remove(&id) else { return };
        close_conn(&conn, "closed");
        if self.by_peer.get(&conn.peer) == Some(&id) {
            self.by_peer.remove(&conn.peer);
        }
        debug!(peer = %conn.peer, reason = %describe(&reason), "control connection closed");
        self.conns_generation += 1;
        self.mesh.handle_disconnected(self.clock.now(), conn.peer, id, reason);
    }

    /// Lists the host's interface addresses for the mesh core, which
    /// chooses what to advertise; again every [`LOCAL_ADDRS_EVERY`], so an
    /// address added later (DHCP, a second NIC) is advertised too.
    fn scan_local_addrs(&mut self, now: crate::core::Time) {
        self.next_local_scan = now + LOCAL_ADDRS_EVERY;
        match interfaces::local_addrs() {
            Ok(addrs) => {
                let before = self.mesh.advertised().to_vec();
                self.mesh.set_local_addrs(now, addrs);
                if self.mesh.advertised() != before.as_slice() {
                    info!(endpoints = ?self.mesh.advertised(), "advertising endpoints");
                }
            }
            Err(e) => warn!(error = %e, "cannot list this host's addresses; advertising what other routers see"),
        }
    }

    /// Carries out everything the cores asked for, until they ask for nothing more.
    fn drain(&mut self) {
        loop {
            self.ensure_host_address();
            // The IPAM state goes to disk before anything leaves the router.
            if let Some(bytes) = self.agent.take_persist()
                && let Err(e) = store::write_state(&self.ipam_path, Kind::Ipam, &bytes)
            {
                self.ipam_write_failed(&e);
                return;
            }
            for answer in self.held.drain(..) {
                answer();
            }
            if let Some(init) = self.agent.take_announcement() {
                let now = self.clock.now();
                self.mesh.set_ipam(now, init);
            }
            let mut ipam_out = Vec::new();
            while let Some(out) = self.agent.poll_transmit() {
                ipam_out.push(out);
            }
            let mut more = !ipam_out.is_empty();
            for (dest, msg) in ipam_out {
                let bytes = msg.encode();
                match dest {
                    Dest::Neighbour(p) => self.send_ipam(p, bytes),
                    Dest::AllNeighbours => {
                        let peers: Vec<PeerName> = self.by_peer.keys().copied().collect();
                        for p in peers {
                            self.send_ipam(p, bytes.clone());
                        }
                    }
                    Dest::Routed(p) => self.route_ipam(p, bytes),
                }
            }
            while let Some(event) = self.agent.poll_event() {
                self.ipam_event(event);
            }
            if self.leaving.is_some() {
                let now = self.clock.now();
                self.check_leaving(now);
            }
            let mut failed = Vec::new();
            while let Some((peer, msg)) = self.mesh.poll_transmit() {
                let Some(&id) = self.by_peer.get(&peer) else {
                    trace!(peer = %peer, "no connection for a gossip message; dropped");
                    continue;
                };
                let Some(conn) = self.conns.get(&id) else { continue };
                if let Err(e) = conn.outbox.try_send(ControlMsg::Gossip(msg)) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "its send queue is full",
                        mpsc::error::TrySendError::Closed(_) => "its writer stopped",
                    };
                    failed.push((id, why));
                }
            }
            while let Some(addr) = self.mesh.poll_dial() {
                let endpoint = Arc::clone(&self.endpoint);
                let tx = self.inputs_tx.clone();
                self.tasks.spawn(async move {
                    let result = endpoint.connect(addr).await;
                    let _ = tx.send(Input::Dialed(addr, result)).await;
                });
            }
            let now = self.clock.now();
            while let Some(event) = self.mesh.poll_event() {
                more = true;
                match event {
                    Event::Up(peer) => {
                        let nickname = self.nickname_of(peer).unwrap_or_default();
                        info!(peer = %peer, %nickname, "peer up");
                        self.agent.neighbour_up(peer);
                    }
                    Event::Down(peer) => {
                        info!(peer = %peer, "peer down");
                        self.agent.neighbour_down(peer);
                    }
                    Event::TopologyChanged => {
                        trace!(routers = self.mesh.topology().len(), "topology changed");
                        self.agent.handle_topology(now, self.mesh.topology());
                        let topo = self.mesh.topology();
                        if self.unrouted.waits_for_any(|p| topo.get(p).is_some()) {
                            let hops = self.mesh.topology().next_hops();
                            let by_peer = &self.by_peer;
                            let ready = self
                                .unrouted
                                .take_routable(now, |p| by_peer.contains_key(&p) || hops.contains_key(&p));
                            for (to, bytes) in ready {
                                self.route_ipam(to, bytes);
                            }
                        }
                    }
                }
            }
            if failed.is_empty() && !more {
                break;
            }
            for (id, why) in failed {
                debug!(conn = id.0, why, "closing a control connection that cannot keep up");
                self.disconnect(id, Failure::Lost(format!("closed by this router: {why}")));
            }
        }
        self.sync_data();
        self.update_metrics();
    }

    /// The key the host address is allocated under.
    fn host_key() -> AllocKey {
        AllocKey::new(HOST_CONTAINER, host::TUN_NAME).unwrap_or_else(|_| unreachable!("a valid key"))
    }

    /// Gives the host an address from this router's space once there is a
    /// ring (kept across restarts: the allocation is persisted like a pod's).
    fn ensure_host_address(&mut self) {
        if self.data.is_none() || self.host_address.is_some() || self.host_ticket.is_some() || self.leaving.is_some() {
            return;
        }
        if self.agent.replica().ring().is_none() {
            return;
        }
        let key = Self::host_key();
        if let Some(IpAddr::V4(a)) = self.agent.replica().lookup(&key) {
            self.host_address = Some(a);
            return;
        }
        let now = self.clock.now();
        match self.agent.allocate(now, key, Request::Any) {
            Ok(Progress::Done(a)) => self.set_host_address(a.addr),
            Ok(Progress::Waiting(ticket)) => self.host_ticket = Some(ticket),
            Err(e) => debug!(error = %e, "no host address yet"),
        }
    }

    fn set_host_address(&mut self, addr: IpAddr) {
        if let IpAddr::V4(a) = addr {
            info!(host_address = %a, "the host has an address on the pod network");
            self.host_address = Some(a);
        }
    }

    /// Tells the data plane about the topology and the ring.
    fn sync_data(&mut self) {
        let Some(data) = self.data.as_mut() else { return };
        let mesh = &self.mesh;
        data.update_peers(mesh.topology(), self.conns_generation, |p| {
            mesh.remote_of(p).map(|a| a.ip())
        });
        if let Some(hash) = self.agent.ring_hash()
            && let Some(ring) = self.agent.replica().ring()
        {
            data.update_ring(self.mesh.topology().me(), ring, hash, self.host_address);
        }
    }

    /// Answers an API call once the IPAM state is on disk (in [`Driver::drain`]).
    fn hold<T: Send + 'static>(&mut self, reply: oneshot::Sender<T>, answer: T) {
        self.held.push(Box::new(move || {
            let _ = reply.send(answer);
        }));
    }

    /// `weft reset`: leave the ring, wait for the heir to confirm, remove the
    /// router's state and stop.
    fn reset(&mut self, reply: oneshot::Sender<Result<(), ApiError>>) {
        if self.leaving.is_some() {
            let _ = reply.send(Err(ApiError::new(ErrorCode::Conflict, "a reset is already under way")));
            return;
        }
        let now = self.clock.now();
        if self.agent.replica().ring().is_none() {
            // Nothing to hand over.
            self.finish_reset(reply);
            return;
        }
        let neighbours: Vec<PeerName> = self.by_peer.keys().copied().collect();
        let Some(heir) = self.agent.choose_heir(neighbours) else {
            let _ = reply.send(Err(ApiError::new(
                ErrorCode::Unavailable,
                "no connected router can take this router's address ranges; connect to the mesh and retry, \
                 or stop this router and run `weft rmpeer` on another one",
            )));
            return;
        };
        if let Err(e) = self.agent.leave(now, heir) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        info!(heir = %heir, "leaving the address ring");
        self.leaving = Some(Leaving {
            heir,
            until: now + RESET_CONFIRM,
            reply,
        });
    }

    /// Finishes a reset once the heir has confirmed (or fails it at the deadline).
    fn check_leaving(&mut self, now: crate::core::Time) {
        let Some(l) = &self.leaving else { return };
        if self.agent.heir_confirmed() {
            let l = self.leaving.take().expect("checked");
            info!(heir = %l.heir, "the heir confirmed; removing this router's state");
            self.finish_reset(l.reply);
        } else if now >= l.until {
            let l = self.leaving.take().expect("checked");
            let _ = l.reply.send(Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "router {} did not confirm the handover within {} s; the router keeps its state and stays \
                     out of the ring; run `weft reset` again",
                    l.heir,
                    RESET_CONFIRM.as_secs()
                ),
            )));
        }
    }

    /// Removes the IPAM state and the identity, answers, and stops the driver.
    fn finish_reset(&mut self, reply: oneshot::Sender<Result<(), ApiError>>) {
        for file in [self.ipam_path.clone(), self.data_dir.join(crate::identity::FILE_NAME)] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = reply.send(Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("cannot remove {}: {e}", file.display()),
                    )));
                    return;
                }
            }
        }
        if self.data.is_some() {
            // Answered once the kernel state is gone too (`Daemon::run`).
            self.reset_reply = Some(reply);
        } else {
            let _ = reply.send(Ok(()));
        }
        self.reset_done = true;
    }

    /// `weft rmpeer`: starts the reclaim of a router that is gone for good,
    /// refusing while any router still sees a connection to it.
    fn rmpeer(&mut self, name: &PeerRef) -> Result<ReclaimView, ApiError> {
        let topo = self.mesh.topology();
        // The same resolution as the seed list's: a peer name, or a nickname exactly one known router carries.
        let dead = match resolve_seeds(std::slice::from_ref(name), topo) {
            Resolution::Ready(found) => found[0],
            Resolution::Waiting { .. } => {
                return Err(ApiError::not_found(format!("no router with nickname {name} is known")));
            }
            Resolution::Ambiguous { routers, .. } => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{} routers have nickname {name}; name one by its peer name",
                        routers.len()
                    ),
                ));
            }
        };
        if self.by_peer.contains_key(&dead) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("router {dead} is connected to this router; rmpeer is only for routers that are gone for good"),
            ));
        }
        if let Some(e) = topo.entries().find(|e| e.name != dead && e.neighbours.contains(&dead)) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "router {} ({}) still reports a connection to {dead}; rmpeer is only for routers that are gone for good",
                    e.name, e.nickname
                ),
            ));
        }
        let now = self.clock.now();
        let status = self.agent.begin_reclaim(now, dead)?;
        info!(peer = %dead, "reclaim of a removed router started");
        Ok(ReclaimView::new(dead, &status, |p| self.nickname_of(p)))
    }

    fn ipam_event(&mut self, event: ipam_agent::Event) {
        use ipam_agent::Event as E;
        match event {
            E::Allocated(ticket, result) => {
                if self.host_ticket == Some(ticket) {
                    self.host_ticket = None;
                    match result {
                        Ok(a) => self.set_host_address(a.addr),
                        Err(e) => debug!(error = %e, "no host address yet; will retry"),
                    }
                } else if let Some((reply, asked)) = self.waiting.remove(&ticket) {
                    self.metrics.observe_allocation(self.clock.now().since(asked));
                    let _ = reply.send(result.map(Into::into).map_err(alloc_failure));
                }
            }
            E::Created(seeds) => info!(seeds = seeds.len(), "created the address ring"),
            E::Merged { gained, reclaimed } => {
                debug!(gained, ?reclaimed, "merged a ring update");
                for dead in reclaimed {
                    info!(peer = %dead, "took over the ranges of a removed router");
                }
            }
            E::Refused { from, error } => {
                warn!(peer = %from, %error, "refused a ring");
                self.ring_refusal = Some(format!("refused the ring of router {from}: {error}"));
            }
            E::OtherPool { from, pool } => {
                warn!(
                    peer = %from,
                    %pool,
                    ours = %self.pool,
                    "refused a ring over another range: the routers were launched with different --ipalloc-range"
                );
                self.ring_refusal = Some(format!(
                    "refused the ring of router {from}: it divides {pool}, this router was launched with \
                     --ipalloc-range {}",
                    self.pool
                ));
            }
            E::Malformed { from } => {
                debug!(peer = %from, "malformed ring dropped");
                self.metrics.malformed_ipam();
            }
        }
    }

    fn ipam_write_failed(&mut self, e: &StoreError) {
        self.fatal = Some(DaemonError::IpamState {
            path: self.ipam_path.clone(),
            error: e.to_string(),
        });
        // Nothing may be answered or sent without the state on disk: the
        // held answers are dropped, so their callers see the router stopping.
        self.held.clear();
        while self.agent.poll_transmit().is_some() {}
    }

    fn update_metrics(&mut self) {
        let (mut established, mut dialing, mut retrying) = (0, 0, 0);
        for (_, _, state) in self.mesh.peer_states() {
            match state {
                mesh::PeerState::Established => established += 1,
                mesh::PeerState::Dialing => dialing += 1,
                mesh::PeerState::Retrying { .. } => retrying += 1,
                _ => {}
            }
        }
        retrying += self.resolving.len() as u64;
        self.metrics.set_connections(ConnState::Established, established);
        self.metrics.set_connections(ConnState::Dialing, dialing);
        self.metrics.set_connections(ConnState::Retrying, retrying);
        let ipam = IpamSummary::from_replica(self.pool, self.agent.replica());
        self.metrics.set_ipam(ipam.owned, ipam.free, ipam.allocated);

        // The endpoint counts handshake failures; carry the new ones over.
        let counts = self.endpoint.stats().snapshot();
        let (new, old) = (counts.handshake, self.handshakes_seen);
        for (reason, now, before) in [
            (
                HandshakeFailure::Auth,
                new.authentication_failed,
                old.authentication_failed,
            ),
            (HandshakeFailure::Malformed, new.malformed, old.malformed),
            (HandshakeFailure::Duplicate, new.self_connection, old.self_connection),
            (HandshakeFailure::Incompatible, new.peer_misbehaved, old.peer_misbehaved),
            (HandshakeFailure::Io, new.local, old.local),
            (HandshakeFailure::Timeout, counts.timed_out, self.timeouts_seen),
        ] {
            for _ in before..now {
                self.metrics.handshake_failed(reason);
            }
        }
        self.handshakes_seen = new;
        self.timeouts_seen = counts.timed_out;
    }

    fn nickname_of(&self, peer: PeerName) -> Option<String> {
        self.mesh.topology().get(peer).map(|e| e.nickname.clone())
    }

    fn peer_list(&self) -> Vec<PeerStatus> {
        let reach = self.data.as_ref().map(host::Running::peer_status);
        let data_of = |name: Option<PeerName>| {
            let found = name.and_then(|n| reach.as_ref()?.iter().find(|r| r.name == n));
            Some(found.map_or_else(PeerData::down, |r| PeerData {
                state: match r.reach {
                    Reach::Up => DataState::Up,
                    Reach::Connecting => DataState::Connecting,
                    Reach::Down => DataState::Down,
                },
                endpoint: r.endpoint.map(|e| e.to_string()),
                via: None,
            }))
        };
        let mut peers: Vec<PeerStatus> = self
            .mesh
            .peer_states()
            .into_iter()
            .map(|(name, addr, state)| {
                let (state, reason) = match state {
                    mesh::PeerState::Established => (api::PeerState::Established, None),
                    mesh::PeerState::Dialing => (api::PeerState::Dialing, None),
                    mesh::PeerState::Retrying { reason, .. } => (api::PeerState::Retrying, Some(describe(&reason))),
                    mesh::PeerState::NotNeighbour => (api::PeerState::NotNeighbour, None),
                };
                PeerStatus {
                    name: name.map(|n| n.to_string()),
                    nickname: name.and_then(|n| self.nickname_of(n)),
                    address: addr.map(|a| a.to_string()),
                    state,
                    reason,
                    data: data_of(name),
                }
            })
            .collect();
        for (peer, r) in &self.resolving {
            peers.push(PeerStatus {
                name: None,
                nickname: None,
                address: Some(peer.to_string()),
                state: if r.reason.is_some() {
                    api::PeerState::Retrying
                } else {
                    api::PeerState::Dialing
                },
                reason: r.reason.clone(),
                data: Some(PeerData::down()),
            });
        }
        peers
    }

    fn status(&self) -> Status {
        let peers = self.peer_list();
        let mut ipam_summary = IpamSummary::from_replica(self.pool, self.agent.replica());
        if self.agent.replica().lookup(&Self::host_key()).is_some() {
            // The host address is the router's own, not a pod's.
            ipam_summary.allocated = ipam_summary.allocated.saturating_sub(1);
        }
        let connections_established = peers.iter().filter(|p| p.state == api::PeerState::Established).count();
        Status {
            name: self.mesh.topology().me().to_string(),
            nickname: self.nickname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            peers,
            ipam: IpamSummary {
                problem: self.ring_refusal.clone().or_else(|| self.agent.no_ring_reason()),
                ..ipam_summary
            },
            connections_established,
            host_address: self.host_address.map(|a| a.to_string()),
            dataplane: self.data.as_ref().map(host::Running::status),
        }
    }

    /// Closes every connection normally and stops the helper tasks.
    async fn close_all(&mut self) {
        for conn in std::mem::take(&mut self.conns).into_values() {
            close_conn(&conn, "shutting down");
        }
        self.by_peer.clear();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Closes a connection normally and stops its tasks.
fn close_conn(conn: &Conn, why: &str) {
    conn.connection
        .close(VarInt::from_u32(control::CLOSE_NORMAL), why.as_bytes());
    conn.reader.abort();
    conn.writer.abort();
}

/// A [`Failure`] in words, for `weft status` and the log.
pub fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Unreachable => "unreachable".to_owned(),
        Failure::AuthenticationFailed => {
            "authentication failed: the other router does not share this cluster secret".to_owned()
        }
        Failure::ConnectionLimit => "connection limit reached".to_owned(),
        Failure::Lost(why) => format!("connection lost: {why}"),
    }
}

// ---- helper tasks ----

/// Hands every inbound connection to the driver until the endpoint closes.
async fn accept_loop(endpoint: Arc<ControlEndpoint>, tx: mpsc::Sender<Input>) {
    while let Some(result) = endpoint.accept().await {
        if tx.send(Input::Accepted(result)).await.is_err() {
            break;
        }
    }
}

/// Resolves a hostname PEER, retrying with backoff until it resolves.
async fn resolve(peer: PeerAddr, tx: mpsc::Sender<Input>) {
    let Host::Name(host) = peer.host() else { return };
    let mut delay = RESOLVE_BACKOFF_MIN;
    loop {
        let result = match tokio::net::lookup_host((host.as_str(), peer.port())).await {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| format!("cannot resolve {host}: no addresses")),
            Err(e) => Err(format!("cannot resolve {host}: {e}")),
        };
        let done = result.is_ok();
        if tx.send(Input::Resolved(peer.clone(), result)).await.is_err() || done {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RESOLVE_BACKOFF_MAX);
    }
}

/// Forwards a connection's gossip to the driver, then reports why it ended.
async fn read_loop(id: ConnId, mut receiver: ControlReceiver, tx: mpsc::Sender<Input>, metrics: Arc<Metrics>) {
    let mut counted = 0;
    let reason = loop {
        match receiver.recv_msg().await {
            Ok(Some(msg)) => {
                // Bytes read since the last message: this frame (and any part of the next).
                let len = usize::try_from(receiver.received_bytes() - counted).unwrap_or(usize::MAX);
                counted = receiver.received_bytes();
                metrics.gossip(Direction::In, len);
                let input = match msg {
                    ControlMsg::Gossip(m) => Input::Message(id, m),
                    ControlMsg::Ipam(bytes) => Input::Ipam(id, bytes),
                };
                if tx.send(input).await.is_err() {
                    return;
                }
            }
            Ok(None) => break Failure::Lost("the other router closed the connection".to_owned()),
            Err(e) => break Failure::Lost(e.to_string()),
        }
    };
    let _ = tx.send(Input::Closed(id, reason)).await;
}

/// Sends what the driver queues for a connection; reports a failed write.
async fn write_loop(
    id: ConnId,
    mut sender: ControlSender,
    mut queue: mpsc::Receiver<ControlMsg>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) {
    while let Some(msg) = queue.recv().await {
        match sender.send_msg(&msg).await {
            Ok(len) => metrics.gossip(Direction::Out, len),
            Err(e) => {
                let _ = tx.send(Input::Closed(id, Failure::Lost(e.to_string()))).await;
                return;
            }
        }
    }
}

// ---- the API backend ----

/// The [`Backend`] the API server calls: forwards to the driver.
#[derive(Debug)]
struct ApiBackend {
    commands: mpsc::Sender<Command>,
}

impl ApiBackend {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())
    }
}

fn stopping() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "the router is shutting down")
}

fn alloc_failure(e: AllocFailure) -> ApiError {
    match e {
        AllocFailure::NoRing(_) => ApiError::new(ErrorCode::NoRing, e.to_string()),
        AllocFailure::Refused(e) => e.into(),
        AllocFailure::NoDonor(_) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
    }
}

impl Backend for ApiBackend {
    async fn status(&self) -> Result<Status, ApiError> {
        self.ask(Command::Status).await
    }

    async fn peers(&self) -> Result<Vec<PeerStatus>, ApiError> {
        self.ask(Command::Peers).await
    }

    async fn ring(&self) -> Result<RingView, ApiError> {
        self.ask(Command::Ring).await
    }

    async fn allocate(&self, key: AllocKey, request: Request) -> Result<AllocateResponse, ApiError> {
        self.ask(|reply| Command::Allocate(key, request, reply)).await?
    }

    async fn release(&self, key: AllocKey) -> Result<ReleaseResponse, ApiError> {
        self.ask(|reply| Command::Release(key, reply)).await
    }

    async fn allocations(&self) -> Result<Vec<AllocationView>, ApiError> {
        self.ask(Command::Allocations).await
    }

    async fn connect(&self, addr: PeerAddr) -> Result<(), ApiError> {
        self.ask(|reply| Command::Connect(addr, reply)).await
    }

    async fn forget(&self, addr: PeerAddr) -> Result<(), ApiError> {
        self.ask(|reply| Command::Forget(addr, reply)).await?
    }

    async fn rmpeer(&self, name: PeerRef) -> Result<ReclaimView, ApiError> {
        self.ask(|reply| Command::Rmpeer(name, reply)).await?
    }

    async fn reset(&self) -> Result<(), ApiError> {
        self.ask(Command::Reset).await?
    }
}

/// The container id the host address is allocated under (not a valid
/// container id for runtimes, which use hex).
const HOST_CONTAINER: &str = "weft:host";

/// How long `weft reset` waits for the heir to confirm the handover.
const RESET_CONFIRM: Duration = Duration::from_secs(10);

/// The IPAM state file in the data directory.
const IPAM_FILE: &str = "ipam";

/// Inputs from helper tasks waiting for the driver.
const INPUT_QUEUE: usize = 1024;

/// API commands waiting for the driver.
const COMMAND_QUEUE: usize = 64;

/// Messages waiting to be written to one connection; a peer that falls this
/// far behind is disconnected (it catches up by anti-entropy when it returns).
const OUTBOX_QUEUE: usize = 256;

/// How often the host's interface addresses are listed again.
const LOCAL_ADDRS_EVERY: Duration = Duration::from_secs(30);

/// How long shutdown waits for the servers and for peers to acknowledge the close.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// First retry delay of a hostname PEER that does not resolve; doubles up to [`RESOLVE_BACKOFF_MAX`].
const RESOLVE_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// Longest retry delay of a hostname PEER that does not resolve.
const RESOLVE_BACKOFF_MAX: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_described_in_words() {
        assert!(describe(&Failure::AuthenticationFailed).contains("authentication failed"));
        assert_eq!(describe(&Failure::Unreachable), "unreachable");
        assert_eq!(describe(&Failure::ConnectionLimit), "connection limit reached");
        assert_eq!(describe(&Failure::Lost("reset".into())), "connection lost: reset");
    }
}
