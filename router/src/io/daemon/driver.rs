//! The driver: the one task that owns the router core ([`Node`]) and the
//! connections, and moves everything between them (see the module docs of
//! [`super`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipam_crdt::PeerName;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, trace, warn};
use weft_api::types::{ApiError, ErrorCode};

use super::backend::{self, Command, Waiting, describe};
use super::tasks::{Conn, Input, accept_loop, close_conn, read_loop, resolve, write_loop};
use super::{DaemonError, IPAM_FILE};
use crate::api::convert;
use crate::config::{IpallocInit, LaunchConfig};
use crate::core::endpoints::Policy;
use crate::core::handshake::HandshakeCounts;
use crate::core::ipam_agent::{self, IpamMsg};
use crate::core::mesh::{self, ConnId, Failure, PeerState};
use crate::core::names::PeerAddr;
use crate::core::node::{self, Event, Node, Outgoing, Output, ReplyTo};
use crate::core::topology::DataPlane;
use crate::core::wire::ControlMsg;
use crate::io::clock::Clock;
use crate::io::control::{self, ControlEndpoint};
use crate::io::{host, interfaces};
use crate::metrics::{ConnState, HandshakeFailure, Metrics};
use crate::store::{self, Kind};

/// Owns the router core and the connections. Driven by [`Driver::run`].
pub(super) struct Driver {
    node: Node,
    clock: Clock,
    endpoint: Arc<ControlEndpoint>,
    metrics: Arc<Metrics>,
    /// Every connection with its tasks; which one is a router's is the core's say.
    conns: BTreeMap<ConnId, Conn>,
    /// Hostname PEERs being resolved, by task.
    resolving: HashMap<PeerAddr, AbortHandle>,
    tasks: JoinSet<()>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    /// API calls waiting for the core's answer.
    waiting: BTreeMap<ReplyTo, Waiting>,
    next_reply: u64,
    ipam_path: PathBuf,
    data_dir: PathBuf,
    /// The data plane, if running.
    pub(super) data: Option<host::Running>,
    handshakes_seen: HandshakeCounts,
    timeouts_seen: u64,
    /// When the host's interface addresses are listed again.
    next_local_scan: crate::core::Time,
    /// When the data plane last heard each peer, at the last look, and when
    /// the next look is ([`Driver::check_data_reach`]).
    data_heard: BTreeMap<PeerName, crate::core::Time>,
    next_data_check: crate::core::Time,
    /// `weft reset` is done: the driver stops, and this answer waits for the
    /// kernel state to be removed (`Daemon::run`).
    pub(super) reset_reply: Option<oneshot::Sender<Result<(), ApiError>>>,
    reset_done: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("me", &self.node.me())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(super) fn new(
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
        let node_config = node::Config {
            me: endpoint.name(),
            nickname: config.nickname.to_string(),
            pool: config.ipalloc_range,
            init,
            mesh: mesh::Config {
                conn_limit: config.conn_limit.get(),
                ..mesh::Config::default()
            },
            advertise: Policy::new(listen, config.advertise.clone(), vec![config.ipalloc_range.net()]),
            data: data.as_ref().map(|d| DataPlane {
                public_key: endpoint.public_key(),
                port: d.port(),
            }),
        };
        let node = Node::new(node_config, saved_ipam, now, rand::random()).map_err(|e| DaemonError::IpamState {
            path: ipam_path.clone(),
            error: format!(
                "{e}: launch with --ipalloc-range {}, or run `weft reset` to leave the ring and start afresh",
                e.state
            ),
        })?;
        let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE);
        let mut driver = Self {
            node,
            clock,
            endpoint,
            metrics,
            conns: BTreeMap::new(),
            resolving: HashMap::new(),
            tasks: JoinSet::new(),
            inputs_tx,
            inputs,
            waiting: BTreeMap::new(),
            next_reply: 0,
            ipam_path,
            data_dir: config.data_dir.clone(),
            data,
            handshakes_seen: HandshakeCounts::default(),
            timeouts_seen: 0,
            next_local_scan: now,
            data_heard: BTreeMap::new(),
            next_data_check: now,
            reset_reply: None,
            reset_done: false,
        };
        driver.scan_local_addrs(now);
        let endpoint = Arc::clone(&driver.endpoint);
        let tx = driver.inputs_tx.clone();
        driver.tasks.spawn(accept_loop(endpoint, tx));
        for peer in &config.peers {
            driver.node.connect(now, peer.clone());
        }
        Ok(driver)
    }

    /// The event loop: one event, then the core's outputs, until `shutdown`.
    pub(super) async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        self.drain();
        loop {
            if self.reset_done {
                return Ok(());
            }
            let mut next = self.node.poll_timeout().min(self.next_local_scan);
            if self.data.is_some() {
                next = next.min(self.next_data_check);
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
                        self.scan_pods();
                    }
                    if now >= self.next_data_check {
                        self.check_data_reach(now);
                    }
                    self.node.handle_timeout(now);
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
                self.node.handle_dial_failed(now, addr, e.failure());
            }
            Input::Resolved(peer, result) => {
                if result.is_ok() {
                    self.resolving.remove(&peer);
                }
                if let Err(reason) = &result {
                    debug!(%peer, %reason, "cannot resolve; retrying");
                }
                self.node.handle_resolved(now, peer, result);
            }
            Input::Message(id, msg) => {
                let Some(from) = self.conns.get(&id).map(|c| c.peer) else {
                    return;
                };
                match msg {
                    ControlMsg::Gossip(m) => self.node.handle_gossip(now, from, m),
                    ControlMsg::Ipam(bytes) => match IpamMsg::decode(&bytes) {
                        Ok(m) => self.node.handle_ipam(now, from, m),
                        Err(e) => {
                            debug!(peer = %from, error = %e, "malformed IPAM message dropped");
                            self.metrics.malformed_ipam();
                        }
                    },
                }
            }
            Input::Closed(id, reason) => self.disconnect(id, reason),
            Input::Persisted(seq, Ok(())) => {
                self.metrics.ipam_write(true);
                self.node.handle_persisted(seq);
            }
            Input::Persisted(seq, Err(error)) => {
                self.metrics.ipam_write(false);
                self.node.handle_persist_failed(now, seq, &error);
            }
            Input::Pods(Ok(present)) => {
                for addr in self.node.pods_present(now, &present) {
                    info!(%addr, "released an address taken back after lost IPAM state: its pod is gone");
                }
            }
            Input::Pods(Err(error)) => {
                warn!(%error, "cannot list this host's pod routes; the addresses taken back after lost IPAM state stay held");
            }
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = self.clock.now();
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(backend::status(&self.node, self.data.as_ref()));
            }
            Command::Peers(reply) => {
                let _ = reply.send(backend::peer_list(&self.node, self.data.as_ref()));
            }
            Command::Ring(reply) => {
                let _ = reply.send(backend::ring(&self.node));
            }
            Command::Allocations(reply) => {
                let _ = reply.send(backend::allocations(&self.node));
            }
            Command::Connect(peer, reply) => {
                info!(%peer, "connect requested");
                self.node.connect(now, peer);
                let _ = reply.send(());
            }
            Command::Forget(peer, reply) => {
                let answer = self
                    .node
                    .forget(now, &peer)
                    .map_err(|e| ApiError::not_found(e.to_string()));
                if answer.is_ok() {
                    info!(%peer, "forgetting");
                }
                let _ = reply.send(answer);
            }
            Command::Allocate(key, request, reply) => {
                let to = self.wait(Waiting::Allocate { reply, since: now });
                self.node.allocate(now, to, key, request);
            }
            Command::Release(key, reply) => {
                let to = self.wait(Waiting::Release(reply));
                self.node.release(now, to, &key);
            }
            Command::Rmpeer(name, gone, reply) => {
                let to = self.wait(Waiting::Rmpeer(reply));
                self.node.rmpeer(now, to, &name, gone);
            }
            Command::Reset(reply) => {
                let to = self.wait(Waiting::Reset(reply));
                self.node.reset(now, to);
            }
        }
    }

    /// Files an API call that the core answers later.
    fn wait(&mut self, waiting: Waiting) -> ReplyTo {
        self.next_reply += 1;
        let to = ReplyTo(self.next_reply);
        self.waiting.insert(to, waiting);
        to
    }

    /// Carries out the core's outputs until it has none it may give now.
    fn drain(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Persist { seq, bytes } => self.persist(seq, bytes),
                Output::Send { to, msg } => self.send(to, msg),
                Output::Dial(addr) => {
                    let endpoint = Arc::clone(&self.endpoint);
                    let tx = self.inputs_tx.clone();
                    self.tasks.spawn(async move {
                        let result = endpoint.connect(addr).await;
                        let _ = tx.send(Input::Dialed(addr, result)).await;
                    });
                }
                Output::Close { conn, why } => self.close(conn, &why),
                Output::Resolve(peer) => {
                    let task = self
                        .tasks
                        .spawn(resolve(peer.clone(), self.inputs_tx.clone()).instrument(info_span!("resolve", %peer)));
                    self.resolving.insert(peer, task);
                }
                Output::StopResolving(peer) => {
                    if let Some(task) = self.resolving.remove(&peer) {
                        task.abort();
                    }
                }
                Output::Reply { to, reply } => {
                    if let Some(waiting) = self.waiting.remove(&to)
                        && let Some(took) = waiting.answer(&self.node, self.clock.now(), reply)
                    {
                        self.metrics.observe_allocation(took);
                    }
                }
                Output::DataPeers(peers) => {
                    if let Some(d) = &self.data {
                        d.set_peers(peers);
                    }
                }
                Output::Routes(routes) => {
                    if let Some(d) = &self.data {
                        d.set_routes(routes);
                    }
                }
                Output::ResetDone(to) => self.finish_reset(to),
                Output::Event(e) => self.log(e),
            }
        }
        self.update_metrics();
    }

    /// Writes the IPAM record on a blocking thread; the core holds back
    /// what must follow it until [`Input::Persisted`].
    fn persist(&mut self, seq: u64, bytes: Vec<u8>) {
        let path = self.ipam_path.clone();
        let tx = self.inputs_tx.clone();
        self.tasks.spawn(async move {
            let written = tokio::task::spawn_blocking(move || store::write_state(&path, Kind::Ipam, &bytes))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.map_err(|e| {
                        warn!(error = %e, "cannot write the IPAM state");
                        os_cause(&e)
                    })
                });
            let _ = tx.send(Input::Persisted(seq, written)).await;
        });
    }

    fn send(&mut self, to: PeerName, msg: Outgoing) {
        let Some((id, conn)) = self
            .node
            .connection_of(to)
            .and_then(|id| Some((id, self.conns.get(&id)?)))
        else {
            trace!(peer = %to, "no connection for a message; dropped");
            return;
        };
        let msg = match msg {
            Outgoing::Gossip(m) => ControlMsg::Gossip(m),
            Outgoing::Ipam(m) => ControlMsg::Ipam(m.encode()),
        };
        if let Err(e) = conn.outbox.try_send(msg) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "its send queue is full",
                mpsc::error::TrySendError::Closed(_) => "its writer stopped",
            };
            debug!(conn = id.0, why, "closing a control connection that cannot keep up");
            self.disconnect(id, Failure::Lost(format!("closed by this router: {why}")));
        }
    }

    fn log(&self, event: Event) {
        match event {
            Event::Up(peer) => {
                let nickname = self.node.nickname_of(peer).unwrap_or_default();
                info!(peer = %peer, %nickname, "peer up");
            }
            Event::Down(peer) => info!(peer = %peer, "peer down"),
            Event::Refused { peer, why } => {
                debug!(peer = %peer, reason = %describe(&why), "refused a control connection");
            }
            Event::Advertising(endpoints) => info!(?endpoints, "advertising endpoints"),
            Event::HostAddress(a) => info!(host_address = %a, "the host has an address on the pod network"),
            Event::Resolved { peer, addr } => info!(%peer, %addr, "resolved"),
            Event::Leaving { heir } => info!(heir = %heir, "leaving the address ring"),
            Event::PersistFailed { error, undone: true } => warn!(
                %error,
                "the IPAM state could not be saved: undid the changes that waited for it and answered their calls \
                 with 'cannot persist'; free space in the data directory (or make it writable) and try again"
            ),
            Event::PersistFailed { error, undone: false } => {
                warn!(%error, "the IPAM state could not be saved; other routers' entries will be written again later");
            }
            Event::Ipam(e) => {
                use ipam_agent::Event as E;
                match e {
                    E::Created(seeds) => info!(seeds = seeds.len(), "created the address ring"),
                    E::Merged { gained, reclaimed } => {
                        debug!(gained, ?reclaimed, "merged a ring update");
                        for dead in reclaimed {
                            info!(peer = %dead, "took over the ranges of a removed router");
                        }
                    }
                    E::Refused { from, error } => warn!(peer = %from, %error, "refused a ring"),
                    E::OtherPool { from, pool } => warn!(
                        peer = %from,
                        %pool,
                        ours = %self.node.pool(),
                        "refused a ring over another range: the routers were launched with different --ipalloc-range"
                    ),
                    E::Recovered {
                        file,
                        ranges,
                        claimed,
                        elsewhere,
                    } => {
                        warn!(
                            %file,
                            ranges,
                            claimed,
                            "took this router's ranges back from the mesh's ring after its IPAM state was lost; the \
                             addresses the host routes to pods were allocated again (keys weft:recovered/VETH, freed \
                             when the pod's veth is gone), and the rest of the ranges is free"
                        );
                        for (addr, why) in elsewhere {
                            error!(
                                %addr,
                                %why,
                                "a pod on this host holds an address this router could not take back: another router \
                                 may hand it out, or has; restart that pod to give it a new address"
                            );
                        }
                    }
                    E::Malformed { from } => {
                        debug!(peer = %from, "malformed ring dropped");
                        self.metrics.malformed_ipam();
                    }
                    E::Allocated(..) => {}
                }
            }
        }
    }

    /// Hands an authenticated connection to the core, and starts its tasks
    /// (the core closes it through an [`Output::Close`] if it refuses it).
    fn register(&mut self, auth: control::Authenticated, dialed: Option<SocketAddr>) {
        let now = self.clock.now();
        let peer = auth.peer_name();
        let id = auth.conn_id();
        let connection = auth.connection().clone();
        let (sender, receiver) = auth.into_split();
        let (outbox, queue) = mpsc::channel(OUTBOX_QUEUE);
        let span = info_span!("peer", peer = %peer, conn = id.0);
        let reader = self
            .tasks
            .spawn(read_loop(id, receiver, self.inputs_tx.clone(), Arc::clone(&self.metrics)).instrument(span.clone()));
        let writer = self
            .tasks
            .spawn(write_loop(id, sender, queue, self.inputs_tx.clone(), Arc::clone(&self.metrics)).instrument(span));
        let remote = connection.remote_address();
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
        // A refused or replaced connection comes back as Output::Close.
        self.node.handle_connected(now, peer, id, dialed, remote);
    }

    /// Closes connection `id` and stops its tasks, without telling the core.
    fn close(&mut self, id: ConnId, why: &Failure) {
        if let Some(conn) = self.conns.remove(&id) {
            close_conn(&conn, &describe(why));
        }
    }

    /// Connection `id` ended: closes it and tells the core why.
    fn disconnect(&mut self, id: ConnId, reason: Failure) {
        let Some(peer) = self.conns.get(&id).map(|c| c.peer) else {
            return;
        };
        debug!(peer = %peer, reason = %describe(&reason), "control connection closed");
        self.close(id, &reason);
        self.node.handle_disconnected(self.clock.now(), peer, id, reason);
    }

    /// Lists the host's interface addresses for the core, which chooses
    /// what to advertise; again every [`LOCAL_ADDRS_EVERY`], so an address
    /// added later (DHCP, a second NIC) is advertised too.
    /// While addresses taken back after lost IPAM state are held, lists
    /// the host's pod routes off the event loop, so that those whose pods
    /// went are released ([`Node::pods_present`]).
    fn scan_pods(&mut self) {
        if !self.node.has_recovered_pods() {
            return;
        }
        let tx = self.inputs_tx.clone();
        self.tasks.spawn(async move {
            let pods = super::host_pods().await.map_err(|e| e.to_string());
            let _ = tx.send(Input::Pods(pods)).await;
        });
    }

    fn scan_local_addrs(&mut self, now: crate::core::Time) {
        self.next_local_scan = now + LOCAL_ADDRS_EVERY;
        match interfaces::local_addrs() {
            Ok(addrs) => self.node.set_local_addrs(now, addrs),
            Err(e) => warn!(error = %e, "cannot list this host's addresses; advertising what other routers see"),
        }
    }

    /// `weft reset` is done: removes the IPAM state and the identity, and
    /// stops the driver (the kernel state goes in `Daemon::run`).
    fn finish_reset(&mut self, to: ReplyTo) {
        let Some(Waiting::Reset(reply)) = self.waiting.remove(&to) else {
            return;
        };
        info!("the heir confirmed (or there was nothing to hand over); removing this router's state");
        for file in [self.ipam_path.clone(), self.data_dir.join(crate::identity::FILE_NAME)] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = reply.send(Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("cannot remove {}: {e}", file.display()),
                    )));
                    self.reset_done = true;
                    return;
                }
            }
        }
        if self.data.is_some() {
            // Answered once the kernel state is gone too.
            self.reset_reply = Some(reply);
        } else {
            let _ = reply.send(Ok(()));
        }
        self.reset_done = true;
    }

    /// Tells the core of every peer the data plane heard from since the
    /// last look (an authenticated datagram): it is alive and reachable, so
    /// a control connection to it that waits out a backoff (a partition just
    /// healed) is dialed at once.
    fn check_data_reach(&mut self, now: crate::core::Time) {
        self.next_data_check = now + DATA_CHECK_EVERY;
        let Some(data) = &self.data else { return };
        let heard: BTreeMap<PeerName, crate::core::Time> = data
            .peer_status()
            .iter()
            .filter_map(|s| Some((s.name, s.heard?)))
            .collect();
        for (&peer, &at) in &heard {
            if self.data_heard.get(&peer).is_some_and(|&before| before < at) {
                self.node.handle_heard(now, peer);
            }
        }
        self.data_heard = heard;
    }

    fn update_metrics(&mut self) {
        let (mut established, mut dialing, mut retrying) = (0, 0, 0);
        for row in self.node.peer_rows() {
            match row.state {
                Some(PeerState::Established) => established += 1,
                Some(PeerState::Dialing) => dialing += 1,
                Some(PeerState::Retrying { .. }) | None => retrying += 1,
                _ => {}
            }
        }
        self.metrics.set_connections(ConnState::Established, established);
        self.metrics.set_connections(ConnState::Dialing, dialing);
        self.metrics.set_connections(ConnState::Retrying, retrying);
        let ipam = convert::ipam_summary(self.node.pool(), self.node.replica());
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

    /// Closes every connection normally and stops the helper tasks.
    pub(super) async fn close_all(&mut self) {
        for conn in std::mem::take(&mut self.conns).into_values() {
            close_conn(&conn, "shutting down");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How often the data plane's sessions are looked at for peers that came up
/// ([`Driver::check_data_reach`]).
const DATA_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Inputs from helper tasks waiting for the driver.
const INPUT_QUEUE: usize = 1024;

/// Messages waiting to be written to one connection; a peer that falls this
/// far behind is disconnected (it catches up by anti-entropy when it returns).
const OUTBOX_QUEUE: usize = 256;

/// How often the host's interface addresses are listed again.
const LOCAL_ADDRS_EVERY: Duration = Duration::from_secs(30);

/// What went wrong in a failed write, in the OS's words in lower case
/// (`no space left on device`, `read-only file system`): the caller's error
/// says `cannot persist: ` and this.
fn os_cause(e: &store::StoreError) -> String {
    let source = match e {
        store::StoreError::Write { source, .. } | store::StoreError::CreateDir { source, .. } => source,
        other => return other.to_string(),
    };
    let text = source.to_string();
    let text = match source.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map_or_else(|| text.clone(), str::to_owned),
        None => text,
    };
    text.to_lowercase()
}
