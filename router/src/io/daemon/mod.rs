//! `weft launch`: the router daemon.
//!
//! [`Daemon::bind`] binds everything that can fail at start (the control
//! endpoint, the API socket, the metrics listener, the data plane), so the
//! caller learns the addresses (tests bind port 0) and bind errors come
//! before anything runs. [`Daemon::run`] then drives the router until
//! `shutdown` completes.
//!
//! Every decision is the router core's ([`Node`]); this module only moves
//! things between it and the world. One task, the *driver* (`driver.rs`),
//! owns the `Node` and the connection handles, and `select!`s on:
//!
//! - inputs from helper tasks (`tasks.rs`) over one bounded channel:
//!   authenticated connections (an accept loop, one task per dial), name
//!   resolutions of hostname PEERs, messages and closes from each
//!   connection's reader, and finished writes of the IPAM record;
//! - API commands from the backend the API server calls (`backend.rs`,
//!   which also turns the core's typed answers into the API's);
//! - the core's timer ([`Node::poll_timeout`]) and the rescan of the host's
//!   interface addresses;
//! - shutdown.
//!
//! After each, it carries out the core's [`Output`]s in order: messages go
//! to each connection's writer task through a bounded queue (a full queue
//! closes that connection, so the driver never waits on the network), dials
//! and resolutions become tasks, replies go back to the API, the data plane
//! and the kernel get the core's peers and routes. A write of the IPAM
//! record runs on a blocking thread, and the core holds back everything
//! queued after it until the write is done ([`Node::handle_persisted`]): an
//! answered allocation, or a ring version others have seen, is on disk
//! first. A failed write (a full or read-only disk) does not stop the
//! router: the core undoes what waited for it and fails those calls with
//! `unavailable: cannot persist: ...` ([`Node::handle_persist_failed`]).
//! An `ipam` file missing beside an existing identity is reported to the
//! core as lost state ([`ipam_agent::Saved::lost`]), which then creates no
//! ring; a damaged one stops the launch, naming the file.
//!
//! [`Node`]: crate::core::node::Node
//! [`Node::poll_timeout`]: crate::core::node::Node::poll_timeout
//! [`Node::handle_persisted`]: crate::core::node::Node::handle_persisted
//! [`Node::handle_persist_failed`]: crate::core::node::Node::handle_persist_failed
//! [`Output`]: crate::core::node::Output

mod backend;
mod driver;
mod tasks;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipam_crdt::PeerName;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use weft_api::types::{ApiError, ErrorCode};

use self::backend::ApiBackend;
use self::driver::Driver;
use super::clock::Clock;
use super::control::{self, ControlEndpoint, ControlStats};
use super::host;
use crate::api;
use crate::config::LaunchConfig;
use crate::core::ipam_agent;
use crate::identity::{Created, Identity};
use crate::metrics::{self, Metrics};
use crate::secret::ClusterSecret;
use crate::store::{self, Kind};

/// Binds everything and runs the router until `shutdown` completes.
/// `created` says whether the identity was made just now, or was there
/// (the router ran before, so its IPAM state should be there too).
///
/// # Errors
/// [`DaemonError`] if something cannot be bound, or the driver fails.
pub async fn run(
    config: LaunchConfig,
    identity: Identity,
    created: Created,
    secret: ClusterSecret,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    Daemon::bind(config, identity, created, &secret)
        .await?
        .run(shutdown)
        .await
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

/// The addresses the host routes to its pods, each with its host veth, as
/// the router core takes them ([`ipam_agent::Saved::with_pods`],
/// `Node::pods_present`).
async fn host_pods() -> Result<Vec<(std::net::IpAddr, String)>, weft_podlink::LinkError> {
    let pods = weft_podlink::pod_addresses().await?;
    Ok(pods.into_iter().map(|p| (p.addr, p.host_veth)).collect())
}

impl Daemon {
    /// Binds the control endpoint to `--listen`, the API socket and the
    /// metrics listener. Must be called inside a tokio runtime. `created`
    /// says whether the identity was made just now ([`Identity::load_or_create`]):
    /// if it was loaded, the router ran before, and a missing `ipam` file
    /// is lost state ([`ipam_agent::Saved::lost`]), not a first launch.
    ///
    /// # Errors
    /// [`DaemonError`], naming the flag and the address.
    pub async fn bind(
        config: LaunchConfig,
        identity: Identity,
        created: Created,
        secret: &ClusterSecret,
    ) -> Result<Self, DaemonError> {
        let ipam_path = config.data_dir.join(IPAM_FILE);
        let state_error = |error: String| DaemonError::IpamState {
            path: ipam_path.clone(),
            error,
        };
        let saved_ipam = match store::read_state_versioned(&ipam_path, Kind::Ipam)
            .map_err(|e| state_error(e.to_string()))?
        {
            Some((version, bytes)) => {
                let saved = if version == Kind::Ipam.version() {
                    ipam_agent::Agent::decode_saved(&bytes)
                } else {
                    ipam_agent::Agent::decode_saved_v2(&bytes)
                }
                .map_err(state_error)?;
                if saved.replica().name() != identity.name() {
                    return Err(state_error(format!(
                        "it belongs to router {}, not to this router {}",
                        saved.replica().name(),
                        identity.name()
                    )));
                }
                Some(saved)
            }
            None if created == Created::Loaded => {
                // What the host's pods hold is in the kernel: take it back
                // with the ranges, or it would be handed out again.
                let pods = host_pods().await.map_err(|e| {
                    state_error(format!(
                        "it is missing, and the addresses of this host's pods cannot be listed to take them back: {e}"
                    ))
                })?;
                let saved = ipam_agent::Saved::lost(identity.name(), ipam_path.display().to_string()).with_pods(pods);
                warn!(
                    path = %ipam_path.display(),
                    "the IPAM state file is missing although this router's identity is there: it ran before and \
                     its state was lost. It will not start a new ring; launch it with a PEER of the mesh to take \
                     its ranges back, or run `weft reset` and launch it again as a new router"
                );
                Some(saved)
            }
            None => {
                // The first launch: write the empty record now, so that an
                // `ipam` file missing later always means lost state, even
                // if this router stops before its first change.
                let fresh = ipam_agent::Saved::fresh(identity.name());
                store::write_state(&ipam_path, Kind::Ipam, &fresh.encode()).map_err(|e| state_error(e.to_string()))?;
                Some(fresh)
            }
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
            metrics: Arc::new(data.as_ref().map_or_else(Metrics::new, |d| {
                let stats = d.stats();
                Metrics::with_dataplane(move || stats.counts())
            })),
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
/// The IPAM state file in the data directory.
const IPAM_FILE: &str = "ipam";

/// API commands waiting for the driver.
const COMMAND_QUEUE: usize = 64;

/// How long shutdown waits for the servers and for peers to acknowledge the close.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(3);
