//! `weft launch --kube`: the Kubernetes shell (cargo feature `kube`).
//!
//! - [`run_discovery`] lists and watches Node objects (kube-runtime's
//!   watcher: list, then watch from the list's `resourceVersion`, relisting
//!   with backoff when the watch breaks) and feeds them to the
//!   [`Discovery`] core, which decides whom to connect to and when a deleted
//!   node's router may be reclaimed. Its actions go to the local router
//!   through a [`PeerControl`]: in the daemon, the router's own API socket, so
//!   discovery uses exactly the path of `weft connect`, `weft forget` and
//!   `weft rmpeer`; in tests, a recorder.
//! - [`cluster_secret`] reads the cluster secret from a Secret, creating it
//!   with a random value if it does not exist. Creation is
//!   create-if-absent through the API server: of several routers starting at
//!   once, exactly one create succeeds and the others get `AlreadyExists`
//!   and read the winner's value.
//!
//! Permissions needed (see `deploy/kubernetes/weft.yaml`): `get`, `list`,
//! `watch` on nodes; `get` on the Secret and `create` on secrets in its
//! namespace.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use ipam_crdt::PeerName;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node as KubeNode, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};
use weft_api::ClientError;
use weft_api::client::Client as RouterClient;
use weft_api::types::{ErrorCode, PeerState};

use super::clock::Clock;
use crate::config::{PeerAddr, PeerRef};
use crate::core::Time;
use crate::core::nodes::{self, Action, Discovery, Node, NodeAddress, PeerView, ReclaimOutcome};
use crate::secret::ClusterSecret;

/// The key of the cluster secret in the Secret's `data`.
pub const SECRET_KEY: &str = "weft-passwd";

/// What discovery asks of the local router. [`RouterClient`] implements it
/// over the API socket; tests implement it with a recorder.
pub trait PeerControl: Send + Sync {
    /// `weft connect ADDR`.
    fn connect(&self, addr: &PeerAddr) -> impl Future<Output = Result<(), String>> + Send;
    /// `weft forget ADDR`; an address the router does not have is not an error.
    fn forget(&self, addr: &PeerAddr) -> impl Future<Output = Result<(), String>> + Send;
    /// `weft rmpeer PEER`, with `--gone` if `gone`.
    fn rmpeer(&self, peer: PeerName, gone: bool) -> impl Future<Output = ReclaimOutcome> + Send;
    /// `weft peers`, reduced.
    fn peers(&self) -> impl Future<Output = Result<Vec<PeerView>, String>> + Send;
}

impl PeerControl for RouterClient {
    async fn connect(&self, addr: &PeerAddr) -> Result<(), String> {
        Self::connect(self, &addr.to_string()).await.map_err(|e| e.to_string())
    }

    async fn forget(&self, addr: &PeerAddr) -> Result<(), String> {
        match Self::forget(self, &addr.to_string()).await {
            Ok(()) => Ok(()),
            Err(ClientError::Api { error: e, .. }) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn rmpeer(&self, peer: PeerName, gone: bool) -> ReclaimOutcome {
        match Self::rmpeer(self, &PeerRef::Name(peer).to_string(), gone).await {
            Ok(view) => {
                info!(%peer, state = ?view.state, heir = ?view.heir, "reclaim under way");
                ReclaimOutcome::Started
            }
            Err(ClientError::Api { error: e, .. }) if e.code == ErrorCode::NotFound => ReclaimOutcome::Unknown,
            Err(ClientError::Api { error: e, .. }) if e.code == ErrorCode::Conflict => {
                debug!(%peer, error = %e.error, "reclaim refused for now");
                ReclaimOutcome::Refused
            }
            Err(e) => {
                warn!(%peer, error = %e, "reclaim failed; will retry");
                ReclaimOutcome::Failed
            }
        }
    }

    async fn peers(&self) -> Result<Vec<PeerView>, String> {
        let peers = Self::peers(self).await.map_err(|e| e.to_string())?;
        Ok(peers
            .into_iter()
            .map(|p| PeerView {
                name: p.name.and_then(|n| n.parse().ok()),
                nickname: p.nickname,
                ip: p.address.and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip()),
                established: p.state == PeerState::Established,
            })
            .collect())
    }
}

/// Why the Kubernetes API could not give what the router needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    // kube's errors spell out their whole chain in their message, so they
    // are shown, not chained as a `source` (which would print each cause twice).
    /// No cluster configuration: not in a pod, and no kubeconfig.
    #[error("cannot find the Kubernetes API (not in a pod, and no kubeconfig): {0}")]
    Config(kube::Error),
    /// An API request failed.
    #[error("Kubernetes API: {what}: {error}")]
    Api {
        /// What was being done.
        what: String,
        /// Why it failed.
        error: kube::Error,
    },
    /// The Secret exists but holds no usable secret.
    #[error("Secret {namespace}/{name}: {problem}")]
    BadSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Whether [`cluster_secret`] created the Secret or read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretOrigin {
    /// This router created it.
    Created,
    /// It existed (or another router created it first).
    Read,
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Read => "read",
        })
    }
}

/// The Kubernetes API client.
pub use kube::Client as KubeClient;

/// A client for the cluster this pod runs in (or the kubeconfig's, outside a pod).
///
/// # Errors
/// [`KubeError::Config`].
pub async fn client() -> Result<Client, KubeError> {
    Client::try_default().await.map_err(KubeError::Config)
}

/// The cluster secret from Secret `namespace/name` (key [`SECRET_KEY`]),
/// created with a random value if absent.
///
/// # Errors
/// [`KubeError`]: the API failed, or the Secret holds no valid secret.
pub async fn cluster_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<(ClusterSecret, SecretOrigin), KubeError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let failed = |what: &str| {
        let what = format!("{what} Secret {namespace}/{name}");
        move |error| KubeError::Api { what, error }
    };
    if let Some(secret) = api.get_opt(name).await.map_err(failed("read"))? {
        return Ok((read_secret(&secret, namespace, name)?, SecretOrigin::Read));
    }
    let value = ClusterSecret::generate();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "weft".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_owned(),
            ByteString(value.into_bytes()),
        )])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        // Use what the API server stored, not what was sent.
        Ok(created) => Ok((read_secret(&created, namespace, name)?, SecretOrigin::Created)),
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
            debug!(namespace, name, "another router created the Secret first");
            let secret = api.get(name).await.map_err(failed("read"))?;
            Ok((read_secret(&secret, namespace, name)?, SecretOrigin::Read))
        }
        Err(e) => Err(failed("create")(e)),
    }
}

fn read_secret(secret: &Secret, namespace: &str, name: &str) -> Result<ClusterSecret, KubeError> {
    let bad = |problem: String| KubeError::BadSecret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        problem,
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_KEY))
        .ok_or_else(|| bad(format!("it has no key {SECRET_KEY:?}")))?;
    ClusterSecret::new(bytes.0.clone()).map_err(|e| bad(e.to_string()))
}

/// The names of the Node objects now (for `--init-peer-count` at start).
///
/// # Errors
/// [`KubeError::Api`].
pub async fn node_names(client: Client) -> Result<Vec<String>, KubeError> {
    let api: Api<KubeNode> = Api::all(client);
    let list = api
        .list_metadata(&ListParams::default())
        .await
        .map_err(|error| KubeError::Api {
            what: "list nodes".to_owned(),
            error,
        })?;
    Ok(list.items.iter().map(ResourceExt::name_any).collect())
}

/// Keeps the router connected to every node's router, and reclaims the
/// routers of deleted nodes, until `shutdown` completes.
///
/// API failures are logged and retried (the watcher relists with backoff);
/// this returns only at shutdown.
pub async fn run_discovery(
    client: Client,
    config: nodes::Config,
    router: impl PeerControl,
    shutdown: impl Future<Output = ()>,
) {
    let clock = Clock::start();
    let retry_after = config.poll;
    let mut core = Discovery::new(config);
    let api: Api<KubeNode> = Api::all(client);
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::pin!(events, shutdown);
    let mut listing: Vec<Node> = Vec::new();
    // Connects and forgets the router did not take (it was starting or stopping).
    let mut retry: VecDeque<Action> = VecDeque::new();
    // When the kept actions are tried again (fixed when the first is kept,
    // so a busy watch cannot keep pushing it back).
    let mut retry_at: Option<Time> = None;
    loop {
        if retry.is_empty() {
            retry_at = None;
        } else if retry_at.is_none() {
            retry_at = Some(clock.now() + retry_after);
        }
        let peers_due = core.poll_timeout().map(|t| clock.deadline(t));
        let retry_due = retry_at.map(|t| clock.deadline(t));
        tokio::select! {
            () = &mut shutdown => return,
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listing.clear(),
                Some(Ok(Event::InitApply(node))) => listing.push(convert(&node)),
                Some(Ok(Event::InitDone)) => {
                    info!(nodes = listing.len(), "listed the cluster's nodes");
                    core.handle_listed(clock.now(), std::mem::take(&mut listing));
                }
                Some(Ok(Event::Apply(node))) => core.handle_applied(convert(&node)),
                Some(Ok(Event::Delete(node))) => core.handle_deleted(clock.now(), &node.name_any()),
                Some(Err(e)) => warn!(error = %e, "watching nodes failed; retrying"),
                None => {
                    warn!("the node watch ended; peer discovery stops");
                    return;
                }
            },
            () = sleep_until(peers_due) => match router.peers().await {
                Ok(peers) => core.handle_peers(clock.now(), &peers),
                Err(e) => {
                    debug!(error = %e, "cannot read the router's peers; retrying");
                    core.handle_peers_failed(clock.now());
                }
            },
            () = sleep_until(retry_due) => {
                retry_at = None;
                let failed: Vec<Action> = retry.drain(..).collect();
                for action in failed {
                    carry_out(&mut core, &clock, &router, action, &mut retry).await;
                }
            }
        }
        while let Some(action) = core.poll_action() {
            carry_out(&mut core, &clock, &router, action, &mut retry).await;
        }
    }
}

/// Asks the router for one action; a connect or forget that fails is kept for a retry.
async fn carry_out(
    core: &mut Discovery,
    clock: &Clock,
    router: &impl PeerControl,
    action: Action,
    retry: &mut VecDeque<Action>,
) {
    let result = match &action {
        Action::Connect(addr) => router.connect(addr).await,
        Action::Forget(addr) => router.forget(addr).await,
        Action::Rmpeer { node, peer, gone } => {
            let outcome = router.rmpeer(*peer, *gone).await;
            core.handle_reclaim(clock.now(), node, *peer, outcome);
            return;
        }
    };
    if let Err(e) = result {
        warn!(?action, error = %e, "the router did not take a discovery change; retrying");
        retry.push_back(action);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A Node object as the core sees it.
fn convert(node: &KubeNode) -> Node {
    Node {
        name: node.name_any(),
        addresses: node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|a| NodeAddress {
                        kind: a.type_.clone(),
                        address: a.address.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// How long [`cluster_secret`] callers may wait for the API at start before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
