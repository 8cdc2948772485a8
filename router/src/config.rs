//! The `weft` command line, and its conversion into a typed [`LaunchConfig`].
//!
//! clap turns `argv` into [`Cli`]. For `weft launch`, the raw [`LaunchArgs`]
//! are then parsed once, by [`LaunchArgs::into_config`], into a
//! [`LaunchConfig`] whose fields cannot be wrong: a [`Pool`] rather than a
//! string, a [`SocketAddr`], [`PeerAddr`]s, non-zero counts. Every rejected
//! flag gets a [`ConfigError`] that names the flag and says what to write
//! instead. Nothing past this module reads flags, files or the environment,
//! except [`ClusterSecret::load`](crate::secret::ClusterSecret::load), which
//! reads the secret from where [`LaunchConfig::secret`] says.
//!
//! The flag and command names are an interface: scripts depend on them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use ipam_crdt::{Pool, PoolError};
use ipnet::IpNet;

pub use crate::core::names::{
    Host, Mtu, NICKNAME_RULE, Nickname, NicknameError, PeerAddr, PeerAddrError, PeerRef, PeerRefError,
};
use crate::secret::SecretSource;

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Weft: an encrypted mesh network for containers")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `weft` subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Start the router on this host and join the mesh through the given peers.
    Launch(Box<LaunchArgs>),
    /// Show the local router's status.
    Status(ShowArgs),
    /// List the routers in the mesh and the connections to them.
    Peers(ShowArgs),
    /// Add a peer address for the local router to connect to.
    Connect(PeerArgs),
    /// Stop connecting to a peer address added by `launch` or `connect`.
    Forget(PeerArgs),
    /// Remove a dead router from the mesh for good and reclaim its addresses.
    Rmpeer(RmpeerArgs),
    /// Show the address allocator's state, or allocate and release addresses.
    Ipam(IpamArgs),
    /// Stop the local router and delete its persisted state.
    Reset(ApiArgs),
    /// Exit 0 if the local router answers and has an address ring (a readiness probe).
    Ready(ApiArgs),
    /// Print a new random cluster secret, e.g. `weft secret > /etc/weft/secret`.
    Secret,
    /// Copy the CNI plugins next to `weft` into the host's plugin directory and write the network
    /// configuration (the DaemonSet's init container runs this).
    InstallCni(InstallCniArgs),
    /// Print shell commands that point the docker CLI at the Docker API proxy: `eval $(weft env)`.
    Env(EnvArgs),
}

impl Command {
    /// The local API socket for commands that talk to a running router;
    /// `None` for `launch` and `secret`.
    pub fn api_socket(&self) -> Option<&Path> {
        let api = match self {
            Self::Launch(_) | Self::Secret | Self::InstallCni(_) | Self::Env(_) => return None,
            Self::Status(a) | Self::Peers(a) => &a.api,
            Self::Connect(a) | Self::Forget(a) => &a.api,
            Self::Rmpeer(a) => &a.api,
            Self::Ipam(a) => match &a.command {
                None => &a.api,
                Some(
                    IpamCommand::Allocate { api, .. }
                    | IpamCommand::Allocations { api, .. }
                    | IpamCommand::Release { api, .. },
                ) => api,
            },
            Self::Reset(a) | Self::Ready(a) => a,
        };
        Some(&api.api_socket)
    }
}

/// Arguments of `install-cni`.
#[derive(Debug, Clone, Args)]
pub struct InstallCniArgs {
    /// Where the container runtime looks for CNI plugins (the host's /opt/cni/bin, mounted).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CNI_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// Where the container runtime reads network configurations (the host's /etc/cni/net.d, mounted).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CNI_CONF_DIR)]
    pub conf_dir: PathBuf,
}

/// Arguments of `env`.
#[derive(Debug, Clone, Args)]
pub struct EnvArgs {
    /// The Docker API proxy's socket (`weft launch --proxy-socket`, `weft-proxy --socket`).
    #[arg(long, env = "WEFT_PROXY_SOCKET", value_name = "PATH", default_value = DEFAULT_PROXY_SOCKET)]
    pub proxy_socket: PathBuf,
    /// Print commands that point the docker CLI back where it pointed before `eval $(weft env)`.
    #[arg(long)]
    pub restore: bool,
}

/// Where to find the local router.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The local router's API socket.
    #[arg(long, env = API_SOCKET_ENV, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
}

/// Arguments of commands that show state.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The router to ask.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Arguments of `connect` and `forget`.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// The peer's address, `host[:port]`.
    #[arg(
        value_name = "PEER",
        help = "The peer's address, host[:port] (port 6783 if omitted; IPv6 in brackets)"
    )]
    pub peer: PeerAddr,
    /// The router to tell.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Arguments of `rmpeer`.
#[derive(Debug, Clone, Args)]
pub struct RmpeerArgs {
    /// The dead router's nickname or peer name.
    #[arg(value_name = "NAME")]
    pub name: PeerRef,
    /// Confirm that the router's host is gone for good (destroyed, or its
    /// Weft state deleted): its heir may then hand out the addresses its pods
    /// had. Without it they stay held until the router hears of its removal.
    /// Never use it for a router that may come back with its state: its
    /// pods' addresses would be handed out twice.
    #[arg(long)]
    pub gone: bool,
    /// The router to tell.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Arguments of `ipam`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IpamArgs {
    /// Allocate or release; without one, show the allocator's state.
    #[command(subcommand)]
    pub command: Option<IpamCommand>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The router to ask.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `weft ipam` subcommands.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum IpamCommand {
    /// Allocate an address for a container (idempotent for the same ID).
    Allocate {
        /// The container ID.
        #[arg(value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// Ask for this address rather than any free one.
        #[arg(long, value_name = "ADDR")]
        ip: Option<IpAddr>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The router to ask.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List this router's allocations: container ID, interface, address.
    Allocations {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The router to ask.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Release a container's address.
    Release {
        /// The container ID.
        #[arg(value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// The router to ask.
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `weft launch` as typed on the command line, before parsing.
///
/// Values are kept as text so that [`LaunchArgs::into_config`] can explain
/// every mistake in its own words; use that, not these fields.
#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    /// Routers to connect to, each `host[:port]`.
    #[arg(
        value_name = "PEER",
        help = "Routers to connect to: host[:port] (port 6783 if omitted; IPv6 in brackets, hostnames allowed)"
    )]
    pub peers: Vec<String>,
    /// This router's nickname, shown by `weft status` and usable in --ipalloc-init [default: the hostname].
    #[arg(long, value_name = "NICKNAME")]
    pub name: Option<String>,
    /// Where the identity and IPAM state are kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The address range that pods get their addresses from; the same on every router.
    #[arg(long, env = "IPALLOC_RANGE", value_name = "CIDR", default_value = Pool::DEFAULT_CIDR)]
    pub ipalloc_range: String,
    /// Split the range at once among the named routers (nicknames or peer names) instead of waiting
    /// for --init-peer-count routers to meet.
    #[arg(long, value_name = "seed=NAME,...")]
    pub ipalloc_init: Option<String>,
    /// How many routers, this one included, start the mesh; the range is split when they have all met, or
    /// when a majority of them has been reachable for 10 s [default: number of PEERs + 1].
    #[arg(long, value_name = "N")]
    pub init_peer_count: Option<String>,
    /// File holding the cluster secret [default: the WEFT_PASSWORD environment variable].
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Address for control connections from other routers.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Addresses other routers reach this one at, ADDR or ADDR:PORT (port: --listen's), instead of those
    /// learned from this host's interfaces and from what other routers see; repeat or separate with
    /// commas. For a host behind a NAT or load balancer that forwards to it.
    #[arg(long, value_name = "ADDR[:PORT]", value_delimiter = ',')]
    pub advertise: Vec<String>,
    /// UDP port for encrypted pod traffic.
    #[arg(long, value_name = "PORT", default_value = DEFAULT_DATAPLANE_PORT)]
    pub dataplane_port: String,
    /// The local API socket that `weft status` and friends talk to.
    #[arg(long, env = API_SOCKET_ENV, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// Address to serve Prometheus metrics on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: String,
    /// Most connections to other routers at once.
    #[arg(long, env = "CONN_LIMIT", value_name = "N", default_value = DEFAULT_CONN_LIMIT)]
    pub conn_limit: String,
    /// MTU of the pod network, in bytes [default: chosen from the underlay].
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<String>,
    /// Do not masquerade traffic from pods to outside the pod range.
    #[arg(long)]
    pub no_masquerade: bool,
    /// Kubernetes mode, for the DaemonSet: connect to the router of every Node object, reclaim the
    /// address space of deleted nodes' routers, and take the cluster secret from a Secret (created
    /// if absent) unless --password-file or WEFT_PASSWORD gives one. Needs a weft built with the
    /// `kube` feature.
    #[arg(long)]
    pub kube: bool,
    /// With --kube: this router's Node name (set it from spec.nodeName) [default: the hostname].
    /// Also the default --name, so that the router of a deleted node can be found.
    #[arg(long, env = "WEFT_NODE_NAME", value_name = "NODE")]
    pub kube_node_name: Option<String>,
    /// With --kube: the Secret that holds the cluster secret (key `weft-passwd`).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_KUBE_SECRET)]
    pub kube_secret: String,
    /// With --kube: the Secret's namespace [default: the pod's namespace].
    #[arg(long, env = "WEFT_NAMESPACE", value_name = "NS")]
    pub kube_namespace: Option<String>,
    /// The Docker API proxy's flags (`--proxy`, `--proxy-socket`, ...), owned by the proxy crate.
    #[cfg(feature = "proxy")]
    #[command(flatten)]
    pub proxy: weft_proxy::flags::LaunchFlags,
    /// Without the `proxy` feature, `--proxy` is still understood, to say
    /// that this weft cannot run the proxy and how to get one that can.
    #[cfg(not(feature = "proxy"))]
    #[arg(long, hide = true)]
    pub proxy: bool,
}

/// A finished `weft launch` configuration: every value parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// This router's nickname.
    pub nickname: Nickname,
    /// Addresses to connect to, in the order given.
    pub peers: Vec<PeerAddr>,
    /// Directory of the identity and state files.
    pub data_dir: PathBuf,
    /// The pod address range.
    pub ipalloc_range: Pool,
    /// How the range is first divided.
    pub ipalloc_init: IpallocInit,
    /// Where to read the cluster secret from; read by the caller, not here.
    pub secret: SecretSource,
    /// Control-plane listen address.
    pub listen: SocketAddr,
    /// `--advertise`: the control endpoints to advertise instead of learned
    /// ones (empty: learn them).
    pub advertise: Vec<SocketAddr>,
    /// Data-plane UDP port; never the same as the listen port.
    pub dataplane_port: NonZeroU16,
    /// The local API socket.
    pub api_socket: PathBuf,
    /// Metrics listen address (loopback by default).
    pub metrics_addr: SocketAddr,
    /// Most simultaneous connections to other routers.
    pub conn_limit: NonZeroUsize,
    /// Pod network MTU, if set by the operator.
    pub mtu: Option<Mtu>,
    /// Whether to masquerade pod traffic leaving the pod range (on unless `--no-masquerade`).
    pub masquerade: bool,
    /// Whether to run the data plane (TUN device, routes, encrypted UDP).
    /// Always on from the command line; in-process tests of the control
    /// plane turn it off, since it changes the host's network namespace.
    pub dataplane: bool,
    /// Kubernetes mode (`--kube`), if on.
    pub kube: Option<KubeConfig>,
    /// The Docker API proxy (`--proxy`), if on.
    #[cfg(feature = "proxy")]
    pub proxy: Option<weft_proxy::Config>,
}

/// `weft launch --kube`: where the router's Node and Secret are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// This router's Node name: never connected to, never reclaimed.
    pub node_name: String,
    /// The Secret holding the cluster secret.
    pub secret_name: String,
    /// The Secret's namespace; `None` for the pod's own.
    pub namespace: Option<String>,
    /// Whether `--init-peer-count` is to be the number of Node objects at
    /// start (neither it nor `--ipalloc-init` was given).
    pub init_from_nodes: bool,
}

impl LaunchArgs {
    /// Parse every flag into a [`LaunchConfig`].
    ///
    /// Without `--name`, the nickname is this machine's hostname.
    ///
    /// # Errors
    /// The first [`ConfigError`] found; its message names the flag and says how to fix it.
    pub fn into_config(self) -> Result<LaunchConfig, ConfigError> {
        self.into_config_with(system_hostname)
    }

    /// [`LaunchArgs::into_config`] with the hostname lookup passed in, for tests.
    fn into_config_with(self, hostname: impl FnOnce() -> io::Result<String>) -> Result<LaunchConfig, ConfigError> {
        if self.kube && !cfg!(feature = "kube") {
            return Err(ConfigError::KubeUnsupported);
        }
        let given_node = self
            .kube_node_name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        // The hostname is the default nickname, and with --kube the default node name.
        let host = if self.name.is_none() || (self.kube && given_node.is_none()) {
            Some(hostname().map_err(|source| ConfigError::HostnameUnreadable { source })?)
        } else {
            None
        };
        let kube_node_name = if self.kube {
            given_node.or_else(|| host.clone())
        } else {
            None
        };
        let nickname = match (self.name, &kube_node_name, host) {
            (Some(given), _, _) => given.parse().map_err(|_| ConfigError::Name { given })?,
            (None, Some(node), _) => node
                .parse()
                .map_err(|_| ConfigError::NodeNameNotNickname { node: node.clone() })?,
            (None, None, Some(host)) => host
                .parse()
                .map_err(|_| ConfigError::HostnameNotNickname { hostname: host })?,
            (None, None, None) => unreachable!("the hostname is read whenever --name is missing"),
        };

        let peers = self
            .peers
            .iter()
            .map(|given| {
                given.parse().map_err(|source| ConfigError::Peer {
                    given: given.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<PeerAddr>, _>>()?;

        let net: IpNet = self
            .ipalloc_range
            .trim()
            .parse()
            .map_err(|_| ConfigError::IpallocRangeSyntax {
                given: self.ipalloc_range.clone(),
            })?;
        let ipalloc_range = Pool::new(net).map_err(ConfigError::IpallocRange)?;

        let init_peer_count = self
            .init_peer_count
            .map(|given| {
                given
                    .trim()
                    .parse::<NonZeroUsize>()
                    .map_err(|_| ConfigError::InitPeerCount { given })
            })
            .transpose()?;
        let init_given = self.ipalloc_init.is_some() || init_peer_count.is_some();
        let ipalloc_init = match (self.ipalloc_init, init_peer_count) {
            (Some(_), Some(_)) => return Err(ConfigError::InitPeerCountWithSeed),
            (Some(given), None) => IpallocInit::parse_flag(&given)?,
            (None, Some(peers)) => IpallocInit::Consensus { peers },
            (None, None) => IpallocInit::Consensus {
                peers: NonZeroUsize::MIN.saturating_add(peers.len()),
            },
        };

        let listen: SocketAddr = self
            .listen
            .trim()
            .parse()
            .map_err(|_| ConfigError::Listen { given: self.listen })?;
        let dataplane_port: NonZeroU16 =
            self.dataplane_port
                .trim()
                .parse()
                .map_err(|_| ConfigError::DataplanePort {
                    given: self.dataplane_port,
                })?;
        let advertise = self
            .advertise
            .iter()
            .map(|given| parse_advertise(given, listen.port()))
            .collect::<Result<Vec<_>, _>>()?;
        if listen.port() == dataplane_port.get() {
            return Err(ConfigError::PortClash { port: listen.port() });
        }
        let metrics_addr: SocketAddr = self.metrics_addr.trim().parse().map_err(|_| ConfigError::MetricsAddr {
            given: self.metrics_addr,
        })?;
        let conn_limit: NonZeroUsize = self
            .conn_limit
            .trim()
            .parse()
            .map_err(|_| ConfigError::ConnLimit { given: self.conn_limit })?;
        let mtu = self
            .mtu
            .map(|given| {
                given
                    .trim()
                    .parse()
                    .ok()
                    .and_then(Mtu::new)
                    .ok_or(ConfigError::Mtu { given })
            })
            .transpose()?;
        #[cfg(feature = "proxy")]
        let proxy = self.proxy.into_config(&self.api_socket, &self.data_dir)?;
        #[cfg(not(feature = "proxy"))]
        if self.proxy {
            return Err(ConfigError::ProxyUnsupported);
        }

        Ok(LaunchConfig {
            nickname,
            peers,
            data_dir: self.data_dir,
            ipalloc_range,
            ipalloc_init,
            secret: self.password_file.map_or(SecretSource::Env, SecretSource::File),
            listen,
            advertise,
            dataplane_port,
            api_socket: self.api_socket,
            metrics_addr,
            conn_limit,
            mtu,
            masquerade: !self.no_masquerade,
            dataplane: true,
            kube: kube_node_name.map(|node_name| KubeConfig {
                node_name,
                secret_name: self.kube_secret,
                namespace: self.kube_namespace,
                init_from_nodes: !init_given,
            }),
            #[cfg(feature = "proxy")]
            proxy,
        })
    }
}

/// A mistake on the `weft launch` command line. Each message names the flag
/// and says what to write instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--name` is not a valid nickname.
    #[error("--name {given:?} is not a valid nickname: use {NICKNAME_RULE}")]
    Name {
        /// What was given.
        given: String,
    },
    /// No `--name`, and the hostname could not be read.
    #[error("cannot read this machine's hostname ({source}); pass --name NICKNAME")]
    HostnameUnreadable {
        /// The OS error.
        source: io::Error,
    },
    /// No `--name`, and the hostname is not a valid nickname.
    #[error("this machine's hostname {hostname:?} cannot be a nickname ({NICKNAME_RULE}); pass --name NICKNAME")]
    HostnameNotNickname {
        /// The hostname.
        hostname: String,
    },
    /// A PEER argument is not `host[:port]`.
    #[error("peer {given:?}: {source}")]
    Peer {
        /// What was given.
        given: String,
        /// What is wrong with it.
        source: PeerAddrError,
    },
    /// `--ipalloc-range` is not CIDR notation.
    #[error("--ipalloc-range {given:?} is not a CIDR; write it like {}", Pool::DEFAULT_CIDR)]
    IpallocRangeSyntax {
        /// What was given.
        given: String,
    },
    /// `--ipalloc-range` is a CIDR but not a usable pod range.
    #[error("--ipalloc-range {0}")]
    IpallocRange(PoolError),
    /// `--ipalloc-init` is not `seed=NAME[,NAME...]`.
    #[error(
        "--ipalloc-init {given:?} is not understood: --ipalloc-init takes seed=NAME[,NAME...], \
         each NAME a nickname or a peer name"
    )]
    IpallocInitSyntax {
        /// What was given.
        given: String,
    },
    /// A NAME in `--ipalloc-init seed=` is neither a peer name nor a nickname.
    #[error("--ipalloc-init: {0}")]
    IpallocInitName(PeerRefError),
    /// A NAME appears twice in `--ipalloc-init seed=`.
    #[error("--ipalloc-init names {name} twice; list each router once")]
    IpallocInitDuplicate {
        /// The repeated NAME.
        name: String,
    },
    /// `--init-peer-count` is not a whole number of at least 1.
    #[error(
        "--init-peer-count {given:?} is not a whole number of at least 1; it counts the routers that start \
         the mesh, this one included"
    )]
    InitPeerCount {
        /// What was given.
        given: String,
    },
    /// Both `--init-peer-count` and `--ipalloc-init seed=` were given.
    #[error(
        "--init-peer-count has no effect with --ipalloc-init seed=...: the seed list already says which \
         routers start the mesh; drop one of the two"
    )]
    InitPeerCountWithSeed,
    /// `--listen` is not an address and port.
    #[error("--listen {given:?} is not an IP address and port like {DEFAULT_LISTEN} or [::]:6783")]
    Listen {
        /// What was given.
        given: String,
    },
    /// `--advertise` is not an address others can reach.
    #[error(
        "--advertise {given:?} {reason}; name an address of this host as other routers reach it, like \
         192.0.2.10 or 192.0.2.10:6783 (the port defaults to --listen's)"
    )]
    Advertise {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--dataplane-port` is not a port number.
    #[error("--dataplane-port {given:?} is not a port number from 1 to 65535")]
    DataplanePort {
        /// What was given.
        given: String,
    },
    /// `--dataplane-port` equals the `--listen` port; both are UDP.
    #[error(
        "--dataplane-port {port} is also the --listen port; they must differ (the defaults are \
         {DEFAULT_DATAPLANE_PORT} and 6783)"
    )]
    PortClash {
        /// The shared port.
        port: u16,
    },
    /// `--metrics-addr` is not an address and port.
    #[error("--metrics-addr {given:?} is not an IP address and port like {DEFAULT_METRICS_ADDR}")]
    MetricsAddr {
        /// What was given.
        given: String,
    },
    /// `--conn-limit` is not a whole number of at least 1.
    #[error("--conn-limit {given:?} is not a whole number of at least 1 (the default is {DEFAULT_CONN_LIMIT})")]
    ConnLimit {
        /// What was given.
        given: String,
    },
    /// `--kube` was given to a `weft` built without the `kube` feature.
    #[error("--kube: this weft was built without Kubernetes support; build it with `--features kube`")]
    KubeUnsupported,
    /// A Docker API proxy flag (`--proxy-tcp`, `--docker-host`) cannot be used as given.
    #[cfg(feature = "proxy")]
    #[error(transparent)]
    Proxy(#[from] weft_proxy::flags::FlagError),
    /// `--proxy` was given to a `weft` built without the `proxy` feature.
    #[error(
        "--proxy: this weft was built without the Docker API proxy; build it with the default features \
         (or `--features proxy`), or run `weft-proxy` beside it"
    )]
    ProxyUnsupported,
    /// With `--kube` and no `--name`, the Node name cannot be a nickname.
    #[error("the node name {node:?} cannot be a nickname ({NICKNAME_RULE}); pass --name NICKNAME")]
    NodeNameNotNickname {
        /// The Node name.
        node: String,
    },
    /// `--mtu` is not a number in range.
    #[error(
        "--mtu {given:?} is not a number from {} to {}; leave it out to use the default",
        Mtu::MIN,
        Mtu::MAX
    )]
    Mtu {
        /// What was given.
        given: String,
    },
}

/// How the pod range is first divided between routers (`--ipalloc-init`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpallocInit {
    /// Wait until this many routers, this one included, have met; then they
    /// agree on a split. The default, with `peers` from `--init-peer-count`.
    Consensus {
        /// How many routers start the mesh.
        peers: NonZeroUsize,
    },
    /// Split the range at once between these routers (`seed=NAME,...`);
    /// non-empty, no router twice.
    Seed(Vec<PeerRef>),
}

impl IpallocInit {
    fn parse_flag(given: &str) -> Result<Self, ConfigError> {
        let syntax = || ConfigError::IpallocInitSyntax {
            given: given.to_owned(),
        };
        let list = given.trim().strip_prefix("seed=").ok_or_else(syntax)?;
        let mut seeds: Vec<PeerRef> = Vec::new();
        for name in list.split(',') {
            let name = name.trim();
            if name.is_empty() {
                return Err(syntax());
            }
            let peer: PeerRef = name.parse().map_err(ConfigError::IpallocInitName)?;
            if seeds.contains(&peer) {
                return Err(ConfigError::IpallocInitDuplicate { name: name.to_owned() });
            }
            seeds.push(peer);
        }
        Ok(Self::Seed(seeds))
    }
}

/// One `--advertise` value: `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`;
/// the port defaults to `listen_port`.
fn parse_advertise(given: &str, listen_port: u16) -> Result<SocketAddr, ConfigError> {
    let text = given.trim();
    let bad = |reason| ConfigError::Advertise {
        given: given.to_owned(),
        reason,
    };
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    let addr = match (text.parse::<SocketAddr>(), bare.parse::<IpAddr>()) {
        (Ok(a), _) => a,
        (_, Ok(ip)) => SocketAddr::new(ip, listen_port),
        _ => return Err(bad("is not an IP address with an optional port")),
    };
    if addr.port() == 0 {
        return Err(bad("has port 0"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(bad("is not an address a router can be reached at"));
    }
    Ok(addr)
}

/// This machine's hostname, from the kernel, else from `/etc/hostname`.
fn system_hostname() -> io::Result<String> {
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "no hostname is set");
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        match std::fs::read_to_string(path) {
            Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_owned()),
            Ok(_) => {}
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Default `install-cni --bin-dir`: the host's /opt/cni/bin as the init container mounts it.
pub const DEFAULT_CNI_BIN_DIR: &str = "/host/opt/cni/bin";
/// Default `install-cni --conf-dir`: the host's /etc/cni/net.d as the init container mounts it.
pub const DEFAULT_CNI_CONF_DIR: &str = "/host/etc/cni/net.d";
/// Default `--kube-secret`.
pub const DEFAULT_KUBE_SECRET: &str = "weft-passwd";

/// The environment variable that may set `--api-socket`.
pub const API_SOCKET_ENV: &str = "WEFT_API_SOCKET";
/// Default `--api-socket`: root-only by directory permissions.
pub const DEFAULT_API_SOCKET: &str = weft_api::DEFAULT_SOCKET;
/// Default `weft env --proxy-socket`: where `weft launch --proxy` and
/// `weft-proxy` listen unless told otherwise. Kept here so that `weft env`
/// works in a weft built without the proxy.
pub const DEFAULT_PROXY_SOCKET: &str = "/run/weft/docker.sock";
/// Default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft";
/// Default `--listen`: all interfaces, Weave's control port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:6783";
/// Default `--dataplane-port`: Weave's data port.
pub const DEFAULT_DATAPLANE_PORT: &str = "6784";
/// Default `--metrics-addr`: loopback only, so metrics are not exposed by accident.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:6782";
/// Default `--conn-limit`: as Weave's; raise it for meshes of more than 64 routers.
pub const DEFAULT_CONN_LIMIT: &str = "64";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use ipam_crdt::PeerName;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied())).unwrap()
    }

    fn launch_args(args: &[&str]) -> LaunchArgs {
        let argv = ["weft", "launch"].into_iter().chain(args.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Launch(a) => *a,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn config(args: &[&str]) -> Result<LaunchConfig, ConfigError> {
        launch_args(args).into_config_with(|| Ok("node-1".to_owned()))
    }

    fn error(args: &[&str]) -> String {
        config(args).unwrap_err().to_string()
    }

    #[test]
    #[cfg(feature = "proxy")]
    fn proxy_flags() {
        assert_eq!(DEFAULT_PROXY_SOCKET, weft_proxy::server::DEFAULT_SOCKET);
        assert_eq!(config(&[]).unwrap().proxy, None);
        let p = config(&["--proxy", "--data-dir", "/d"]).unwrap().proxy.unwrap();
        assert_eq!(p.socket, Path::new("/run/weft/docker.sock"));
        assert_eq!(p.tcp, None);
        assert_eq!(p.docker_host.to_string(), "unix:///var/run/docker.sock");
        assert_eq!(p.router_socket, Path::new(DEFAULT_API_SOCKET));
        assert_eq!(p.wait_binary, Path::new("/d/weft-wait"));
        let p = config(&["--proxy", "--proxy-tcp", "--docker-host", "tcp://127.0.0.1:2375"])
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!(p.tcp, Some("127.0.0.1:12375".parse().unwrap()));
        assert_eq!(p.docker_host.to_string(), "tcp://127.0.0.1:2375");
        assert!(error(&["--proxy", "--proxy-tcp", "0.0.0.0:12375"]).contains("--dangerous-proxy-tcp-any-address"));
        let p = config(&[
            "--proxy",
            "--proxy-tcp",
            "0.0.0.0:1",
            "--dangerous-proxy-tcp-any-address",
        ])
        .unwrap();
        assert_eq!(p.proxy.unwrap().tcp, Some("0.0.0.0:1".parse().unwrap()));
        assert!(error(&["--proxy", "--proxy-tcp", "nope"]).starts_with("--proxy-tcp \"nope\": not an IP address"));
        assert!(error(&["--proxy", "--docker-host", "/var/run/docker.sock"]).contains("unix:///PATH"));
        // The proxy's flags mean nothing without --proxy: an error, not a silent no-op.
        let argv = ["weft", "launch", "--proxy-socket", "/x"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    #[cfg(not(feature = "proxy"))]
    fn proxy_flag_without_the_proxy_says_how_to_get_one() {
        let err = error(&["--proxy"]);
        assert!(err.starts_with("--proxy: this weft was built without"), "{err}");
        assert!(err.contains("weft-proxy"), "{err}");
        assert!(config(&[]).is_ok());
    }

    #[test]
    fn env_command() {
        match cli(&["env", "--proxy-socket", "/p", "--restore"]).command {
            Command::Env(a) => {
                assert_eq!(a.proxy_socket, Path::new("/p"));
                assert!(a.restore);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn launch_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.nickname.as_str(), "node-1");
        assert!(c.peers.is_empty());
        assert_eq!(c.data_dir, Path::new("/var/lib/weft"));
        assert_eq!(c.ipalloc_range, Pool::default_v4());
        assert_eq!(
            c.ipalloc_init,
            IpallocInit::Consensus {
                peers: NonZeroUsize::MIN
            }
        );
        assert_eq!(c.secret, SecretSource::Env);
        assert_eq!(c.listen, "0.0.0.0:6783".parse().unwrap());
        assert_eq!(c.dataplane_port.get(), 6784);
        assert_eq!(c.metrics_addr, "127.0.0.1:6782".parse().unwrap());
        assert_eq!(c.conn_limit.get(), 64);
        assert_eq!(c.mtu, None);
        assert!(c.masquerade);
        if std::env::var_os(API_SOCKET_ENV).is_none() {
            assert_eq!(c.api_socket, Path::new("/run/weft/weft.sock"));
        }
    }

    #[test]
    fn launch_every_flag() {
        let c = config(&[
            "--name",
            "edge.example",
            "--data-dir",
            "/tmp/w",
            "--ipalloc-range",
            "10.40.0.0/16",
            "--init-peer-count",
            "5",
            "--password-file",
            "/etc/weft/secret",
            "--listen",
            "[::]:7000",
            "--dataplane-port",
            "7001",
            "--api-socket",
            "/tmp/w.sock",
            "--metrics-addr",
            "0.0.0.0:9100",
            "--conn-limit",
            "10",
            "--mtu",
            "1400",
            "--no-masquerade",
            "192.0.2.1",
            "node-2:7000",
            "[fd00::2]",
        ])
        .unwrap();
        assert_eq!(c.nickname.as_str(), "edge.example");
        assert_eq!(c.data_dir, Path::new("/tmp/w"));
        assert_eq!(c.ipalloc_range.to_string(), "10.40.0.0/16");
        assert_eq!(
            c.ipalloc_init,
            IpallocInit::Consensus {
                peers: NonZeroUsize::new(5).unwrap()
            }
        );
        assert_eq!(c.secret, SecretSource::File("/etc/weft/secret".into()));
        assert_eq!(c.listen, "[::]:7000".parse().unwrap());
        assert_eq!(c.dataplane_port.get(), 7001);
        assert_eq!(c.api_socket, Path::new("/tmp/w.sock"));
        assert_eq!(c.metrics_addr, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(c.conn_limit.get(), 10);
        assert_eq!(c.mtu.map(Mtu::get), Some(1400));
        assert!(!c.masquerade);
        let peers: Vec<String> = c.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["192.0.2.1:6783", "node-2:7000", "[fd00::2]:6783"]);
        assert!(c.advertise.is_empty(), "learned unless named");
    }

    #[test]
    fn advertise_takes_addresses_with_the_listen_port_by_default() {
        let c = config(&[
            "--listen",
            "0.0.0.0:7000",
            "--advertise",
            "203.0.113.5",
            "--advertise",
            "198.51.100.1:443,[2001:db8::1]",
        ])
        .unwrap();
        let want: Vec<SocketAddr> = ["203.0.113.5:7000", "198.51.100.1:443", "[2001:db8::1]:7000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(c.advertise, want);
        for (bad, says) in [
            ("host.example", "is not an IP address"),
            ("0.0.0.0", "is not an address a router can be reached at"),
            ("224.0.0.1:6783", "is not an address a router can be reached at"),
            ("192.0.2.1:0", "port 0"),
        ] {
            let msg = error(&["--advertise", bad]);
            assert!(msg.contains("--advertise") && msg.contains(says), "{bad}: {msg}");
            assert!(msg.contains("like 192.0.2.10"), "says what to write: {msg}");
        }
    }

    #[test]
    fn init_peer_count_defaults_to_peers_plus_one() {
        let c = config(&["a", "b", "c"]).unwrap();
        assert_eq!(
            c.ipalloc_init,
            IpallocInit::Consensus {
                peers: NonZeroUsize::new(4).unwrap()
            }
        );
    }

    #[test]
    fn ipalloc_init_seed() {
        let c = config(&["--ipalloc-init", "seed=node-1,3f:2a:9c:1e:0b:7d:44:e1, node-3"]).unwrap();
        assert_eq!(
            c.ipalloc_init,
            IpallocInit::Seed(vec![
                PeerRef::Nickname("node-1".parse().unwrap()),
                PeerRef::Name(PeerName::from_u64(0x3f2a_9c1e_0b7d_44e1)),
                PeerRef::Nickname("node-3".parse().unwrap()),
            ])
        );
    }

    #[test]
    fn ipalloc_init_errors() {
        let want = "--ipalloc-init takes seed=NAME[,NAME...]";
        for bad in ["consensus", "seed=", "seed=a,,b", "seeds=a", "a,b"] {
            let msg = error(&["--ipalloc-init", bad]);
            assert!(msg.contains(want), "{bad}: {msg}");
        }
        assert_eq!(
            error(&["--ipalloc-init", "seed=a,b,a"]),
            "--ipalloc-init names a twice; list each router once"
        );
        assert!(error(&["--ipalloc-init", "seed=a b"]).starts_with("--ipalloc-init: \"a b\" is neither a peer name"));
        assert_eq!(
            error(&["--ipalloc-init", "seed=a", "--init-peer-count", "2"]),
            ConfigError::InitPeerCountWithSeed.to_string()
        );
    }

    #[test]
    fn ipalloc_range_errors() {
        assert_eq!(
            error(&["--ipalloc-range", "10.32.0.1/12"]),
            "--ipalloc-range 10.32.0.1/12 has host bits set; did you mean 10.32.0.0/12?"
        );
        assert_eq!(
            error(&["--ipalloc-range", "10.32.0.0"]),
            "--ipalloc-range \"10.32.0.0\" is not a CIDR; write it like 10.32.0.0/12"
        );
        assert_eq!(
            error(&["--ipalloc-range", "10.0.0.0/31"]),
            "--ipalloc-range 10.0.0.0/31 is too small for a pod range: use a prefix of /30 or shorter"
        );
        assert!(error(&["--ipalloc-range", "fd00::/64"]).contains("IPv6 pod ranges are not supported yet"));
    }

    #[test]
    fn number_and_address_errors() {
        assert_eq!(
            error(&["--init-peer-count", "0"]),
            "--init-peer-count \"0\" is not a whole number of at least 1; it counts the routers that start \
             the mesh, this one included"
        );
        assert!(error(&["--init-peer-count=-1"]).starts_with("--init-peer-count \"-1\""));
        assert_eq!(
            error(&["--listen", "6783"]),
            "--listen \"6783\" is not an IP address and port like 0.0.0.0:6783 or [::]:6783"
        );
        assert_eq!(
            error(&["--dataplane-port", "0"]),
            "--dataplane-port \"0\" is not a port number from 1 to 65535"
        );
        assert!(error(&["--dataplane-port", "70000"]).starts_with("--dataplane-port \"70000\""));
        assert_eq!(
            error(&["--dataplane-port", "6783"]),
            "--dataplane-port 6783 is also the --listen port; they must differ (the defaults are 6784 and 6783)"
        );
        assert_eq!(
            error(&["--metrics-addr", "localhost:6782"]),
            "--metrics-addr \"localhost:6782\" is not an IP address and port like 127.0.0.1:6782"
        );
        assert_eq!(
            error(&["--conn-limit", "0"]),
            "--conn-limit \"0\" is not a whole number of at least 1 (the default is 64)"
        );
        assert_eq!(
            error(&["--mtu", "100"]),
            "--mtu \"100\" is not a number from 576 to 65000; leave it out to use the default"
        );
        assert!(error(&["--mtu", "big"]).starts_with("--mtu \"big\""));
        assert!(config(&["--mtu", "576"]).is_ok());
        assert!(config(&["--mtu", "65000"]).is_ok());
        assert!(config(&["--mtu", "65001"]).is_err());
    }

    #[test]
    fn name_errors() {
        assert_eq!(
            error(&["--name", "my node"]),
            "--name \"my node\" is not a valid nickname: use 1 to 64 letters, digits, '.', '-' or '_'"
        );
        assert!(config(&["--name", &"n".repeat(64)]).is_ok());
        assert!(config(&["--name", &"n".repeat(65)]).is_err());
        let err = launch_args(&[])
            .into_config_with(|| Ok("bad host!".to_owned()))
            .unwrap_err();
        assert!(matches!(err, ConfigError::HostnameNotNickname { .. }));
        assert!(err.to_string().ends_with("pass --name NICKNAME"), "{err}");
        let err = launch_args(&[])
            .into_config_with(|| Err(io::Error::new(io::ErrorKind::NotFound, "gone")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read this machine's hostname (gone); pass --name NICKNAME"
        );
    }

    #[test]
    fn peer_errors() {
        assert_eq!(
            error(&["fd00::1"]),
            "peer \"fd00::1\": \"fd00::1\" has several colons; put IPv6 addresses in brackets, like [fd00::1]:6783"
        );
        assert_eq!(
            error(&["node:http"]),
            "peer \"node:http\": port \"http\" is not a number from 1 to 65535"
        );
    }

    #[test]
    fn client_commands() {
        let c = cli(&["status", "--json", "--api-socket", "/tmp/s"]);
        assert!(matches!(&c.command, Command::Status(ShowArgs { json: true, .. })));
        assert_eq!(c.command.api_socket(), Some(Path::new("/tmp/s")));

        let c = cli(&["connect", "[fd00::1]:7000"]);
        let Command::Connect(args) = &c.command else {
            panic!("{c:?}")
        };
        assert_eq!(args.peer.to_string(), "[fd00::1]:7000");
        if std::env::var_os(API_SOCKET_ENV).is_none() {
            assert_eq!(c.command.api_socket(), Some(Path::new(DEFAULT_API_SOCKET)));
        }

        assert!(matches!(cli(&["forget", "node-2"]).command, Command::Forget(_)));
        assert!(matches!(
            cli(&["rmpeer", "node-2"]).command,
            Command::Rmpeer(RmpeerArgs {
                name: PeerRef::Nickname(_),
                ..
            })
        ));
        assert!(matches!(
            cli(&["peers"]).command,
            Command::Peers(ShowArgs { json: false, .. })
        ));
        assert!(matches!(cli(&["reset"]).command, Command::Reset(_)));
        assert!(matches!(cli(&["secret"]).command, Command::Secret));
        assert_eq!(cli(&["secret"]).command.api_socket(), None);
        assert_eq!(cli(&["launch"]).command.api_socket(), None);

        assert!(Cli::try_parse_from(["weft", "connect", "fd00::1"]).is_err());
        assert!(Cli::try_parse_from(["weft", "rmpeer", "no spaces"]).is_err());
        assert!(Cli::try_parse_from(["weft", "connect"]).is_err());
    }

    #[test]
    fn ipam_commands() {
        let c = cli(&["ipam", "allocations", "--json", "--api-socket", "/tmp/s"]);
        assert!(matches!(
            &c.command,
            Command::Ipam(IpamArgs {
                command: Some(IpamCommand::Allocations { json: true, .. }),
                ..
            })
        ));
        assert_eq!(c.command.api_socket(), Some(Path::new("/tmp/s")));
        let c = cli(&["ipam", "--json"]);
        assert!(matches!(
            &c.command,
            Command::Ipam(IpamArgs {
                command: None,
                json: true,
                ..
            })
        ));

        let c = cli(&[
            "ipam",
            "allocate",
            "abc123",
            "--ip",
            "10.32.0.5",
            "--json",
            "--api-socket",
            "/tmp/s",
        ]);
        let Command::Ipam(IpamArgs {
            command: Some(IpamCommand::Allocate { id, ip, json, .. }),
            ..
        }) = &c.command
        else {
            panic!("{c:?}")
        };
        assert_eq!(id, "abc123");
        assert_eq!(*ip, Some("10.32.0.5".parse().unwrap()));
        assert!(*json);
        assert_eq!(c.command.api_socket(), Some(Path::new("/tmp/s")));

        let c = cli(&["ipam", "release", "abc123"]);
        assert!(matches!(
            &c.command,
            Command::Ipam(IpamArgs { command: Some(IpamCommand::Release { id, .. }), .. }) if id == "abc123"
        ));

        assert!(Cli::try_parse_from(["weft", "ipam", "allocate", ""]).is_err());
        assert!(Cli::try_parse_from(["weft", "ipam", "allocate", "x", "--ip", "nope"]).is_err());
        assert!(Cli::try_parse_from(["weft", "ipam", "--json", "release", "x"]).is_err());
    }

    #[test]
    fn kube_mode() {
        assert_eq!(config(&[]).unwrap().kube, None);
        if !cfg!(feature = "kube") {
            assert!(matches!(config(&["--kube"]), Err(ConfigError::KubeUnsupported)));
            return;
        }
        // The router is named after its node, so a deleted node's router can be found.
        let c = config(&["--kube", "--kube-node-name", "worker-7"]).unwrap();
        assert_eq!(c.nickname.as_str(), "worker-7");
        assert_eq!(
            c.kube,
            Some(KubeConfig {
                node_name: "worker-7".to_owned(),
                secret_name: "weft-passwd".to_owned(),
                namespace: None,
                init_from_nodes: true,
            })
        );
        // The node name defaults to the hostname; --name still wins for the nickname.
        let c = config(&["--kube", "--name", "r1", "--kube-secret", "s", "--kube-namespace", "ns"]).unwrap();
        assert_eq!(c.nickname.as_str(), "r1");
        let k = c.kube.unwrap();
        assert_eq!((k.node_name.as_str(), k.secret_name.as_str()), ("node-1", "s"));
        assert_eq!(k.namespace.as_deref(), Some("ns"));
        // An explicit ring start is kept.
        assert!(
            !config(&["--kube", "--init-peer-count", "3"])
                .unwrap()
                .kube
                .unwrap()
                .init_from_nodes
        );
        assert!(
            !config(&["--kube", "--ipalloc-init", "seed=a"])
                .unwrap()
                .kube
                .unwrap()
                .init_from_nodes
        );
        assert_eq!(
            error(&["--kube", "--kube-node-name", &"n".repeat(65)]),
            format!(
                "the node name {:?} cannot be a nickname ({NICKNAME_RULE}); pass --name NICKNAME",
                "n".repeat(65)
            )
        );
    }

    #[test]
    fn weave_environment_names() {
        let cmd = Cli::command();
        let launch = cmd.find_subcommand("launch").unwrap();
        let env = |id: &str| {
            launch
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("ipalloc_range").as_deref(), Some("IPALLOC_RANGE"));
        assert_eq!(env("conn_limit").as_deref(), Some("CONN_LIMIT"));
        assert_eq!(env("kube_node_name").as_deref(), Some("WEFT_NODE_NAME"));
        assert_eq!(env("kube_namespace").as_deref(), Some("WEFT_NAMESPACE"));
    }

    #[test]
    fn install_cni_and_ready() {
        let c = cli(&["install-cni"]);
        let Command::InstallCni(args) = &c.command else {
            panic!("{c:?}")
        };
        assert_eq!(args.bin_dir, Path::new("/host/opt/cni/bin"));
        assert_eq!(args.conf_dir, Path::new("/host/etc/cni/net.d"));
        assert_eq!(c.command.api_socket(), None);
        let c = cli(&["install-cni", "--bin-dir", "/b", "--conf-dir", "/c"]);
        let Command::InstallCni(args) = &c.command else {
            panic!("{c:?}")
        };
        assert_eq!(
            (args.bin_dir.as_path(), args.conf_dir.as_path()),
            (Path::new("/b"), Path::new("/c"))
        );
        let c = cli(&["ready", "--api-socket", "/tmp/s"]);
        assert!(matches!(c.command, Command::Ready(_)));
        assert_eq!(c.command.api_socket(), Some(Path::new("/tmp/s")));
    }

    #[test]
    fn version_flag_exists() {
        let err = Cli::try_parse_from(["weft", "--version"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")));
    }
}
