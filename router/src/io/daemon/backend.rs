//! The local API's [`Backend`] as the daemon serves it: each call becomes a
//! [`Command`] for the driver (`io::daemon`), and the router core's typed
//! answers become the API's types here, in one place, with the hints about
//! which flag or command to use that the core leaves to the shell.

use std::collections::BTreeMap;
use std::time::Duration;

use ipam_crdt::{AllocKey, Request};
use tokio::sync::{mpsc, oneshot};
use weft_api::types::{
    self as api, AllocateResponse, AllocationView, ApiError, DataState, ErrorCode, IpamSummary, PeerData, PeerStatus,
    ReclaimView, ReleaseResponse, RingView, Status,
};

use crate::api::Backend;
use crate::api::convert;
use crate::core::data::session::{self, Reach};
use crate::core::ipam_agent::{AllocFailure, NoRing};
use crate::core::mesh::{Failure, PeerState};
use crate::core::names::{PeerAddr, PeerRef};
use crate::core::node::{IpamProblem, Node, Reply, ResetError, RmpeerError};
use crate::io::host;

/// What the API asks of the driver.
#[derive(Debug)]
pub(super) enum Command {
    Status(oneshot::Sender<Status>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    Connect(PeerAddr, oneshot::Sender<()>),
    Forget(PeerAddr, oneshot::Sender<Result<(), ApiError>>),
    Ring(oneshot::Sender<RingView>),
    Allocate(AllocKey, Request, oneshot::Sender<Result<AllocateResponse, ApiError>>),
    Release(AllocKey, oneshot::Sender<Result<ReleaseResponse, ApiError>>),
    Allocations(oneshot::Sender<Vec<AllocationView>>),
    Rmpeer(PeerRef, bool, oneshot::Sender<Result<ReclaimView, ApiError>>),
    Reset(oneshot::Sender<Result<(), ApiError>>),
}

/// The [`Backend`] the API server calls: forwards to the driver.
#[derive(Debug)]
pub(super) struct ApiBackend {
    pub(super) commands: mpsc::Sender<Command>,
}

impl ApiBackend {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())
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
        self.ask(|reply| Command::Release(key, reply)).await?
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

    async fn rmpeer(&self, name: PeerRef, gone: bool) -> Result<ReclaimView, ApiError> {
        self.ask(|reply| Command::Rmpeer(name, gone, reply)).await?
    }

    async fn reset(&self) -> Result<(), ApiError> {
        self.ask(Command::Reset).await?
    }
}

/// An API call waiting for the core's [`Reply`].
#[derive(Debug)]
pub(super) enum Waiting {
    Allocate {
        reply: oneshot::Sender<Result<AllocateResponse, ApiError>>,
        /// When it was asked, for `weft_allocation_duration_seconds`.
        since: crate::core::Time,
    },
    Release(oneshot::Sender<Result<ReleaseResponse, ApiError>>),
    Rmpeer(oneshot::Sender<Result<ReclaimView, ApiError>>),
    Reset(oneshot::Sender<Result<(), ApiError>>),
}

impl Waiting {
    /// Answers with the core's reply; returns how long an allocation took.
    pub(super) fn answer(self, node: &Node, now: crate::core::Time, reply: Reply) -> Option<Duration> {
        let prefix = node.pool().net().prefix_len();
        match (self, reply) {
            (Self::Allocate { reply, since }, Reply::Allocate(result)) => {
                let _ = reply.send(result.map(convert::allocated).map_err(alloc_failure));
                return Some(now.since(since));
            }
            (Self::Release(reply), Reply::Release(freed)) => {
                let _ = reply.send(
                    freed
                        .map(|freed| ReleaseResponse {
                            address: freed.map(|a| api::cidr(a, prefix)),
                        })
                        .map_err(convert::alloc_error),
                );
            }
            (Self::Rmpeer(reply), Reply::Rmpeer(result)) => {
                let view = result
                    .map(|(dead, status)| convert::reclaim_of(node.replica(), dead, &status, |p| nickname(node, p)))
                    .map_err(rmpeer_error);
                let _ = reply.send(view);
            }
            (Self::Reset(reply), Reply::Reset(e)) => {
                let _ = reply.send(Err(reset_error(e)));
            }
            // A full or read-only disk: the call was undone, the router goes on.
            (waiting, Reply::CannotPersist(why)) => {
                let e = ApiError::new(ErrorCode::Unavailable, why);
                match waiting {
                    Self::Allocate { reply, .. } => drop(reply.send(Err(e))),
                    Self::Release(reply) => drop(reply.send(Err(e))),
                    Self::Rmpeer(reply) => drop(reply.send(Err(e))),
                    Self::Reset(reply) => drop(reply.send(Err(e))),
                }
            }
            (waiting, reply) => unreachable!("the core answers a call with its own kind: {waiting:?} got {reply:?}"),
        }
        None
    }
}

/// `weft status`: the core's view, with the data plane's.
pub(super) fn status(node: &Node, data: Option<&host::Running>) -> Status {
    let peers = peer_list(node, data);
    let mut ipam = convert::ipam_summary(node.pool(), node.replica());
    if node.replica().lookup(&Node::host_key()).is_some() {
        // The host address is the router's own, not a pod's.
        ipam.allocated = ipam.allocated.saturating_sub(1);
    }
    let connections_established = peers.iter().filter(|p| p.state == api::PeerState::Established).count();
    Status {
        name: node.me().to_string(),
        nickname: node.topology().own().nickname.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        peers,
        ipam: IpamSummary {
            problem: node.ipam_problem().map(|p| problem(&p)),
            ..ipam
        },
        connections_established,
        host_address: node.host_address().map(|a| a.to_string()),
        dataplane: data.map(host::Running::status),
    }
}

/// `weft peers`: one row per router (and per PEER still resolving), with
/// the data plane's view of each.
pub(super) fn peer_list(node: &Node, data: Option<&host::Running>) -> Vec<PeerStatus> {
    let reach: BTreeMap<_, session::PeerStatus> = data
        .map(|d| d.peer_status().iter().map(|s| (s.name, *s)).collect())
        .unwrap_or_default();
    node.peer_rows()
        .into_iter()
        .map(|row| {
            let (state, reason) = match (&row.state, &row.resolve_error) {
                (Some(PeerState::Established), _) => (api::PeerState::Established, None),
                (Some(PeerState::Dialing), _) => (api::PeerState::Dialing, None),
                (Some(PeerState::Retrying { reason, .. }), _) => (api::PeerState::Retrying, Some(describe(reason))),
                (Some(PeerState::NotNeighbour), _) => (api::PeerState::NotNeighbour, None),
                // A hostname PEER: resolving, or retrying after a failure.
                (None, None) => (api::PeerState::Dialing, None),
                (None, Some(why)) => (api::PeerState::Retrying, Some(why.clone())),
            };
            let data = row
                .name
                .and_then(|n| reach.get(&n))
                .map_or_else(PeerData::down, |r| PeerData {
                    state: match r.reach {
                        Reach::Up => DataState::Up,
                        Reach::Connecting => DataState::Connecting,
                        Reach::Down => DataState::Down,
                    },
                    endpoint: r.endpoint.map(|e| e.to_string()),
                    via: None,
                });
            PeerStatus {
                name: row.name.map(|n| n.to_string()),
                nickname: row.nickname,
                address: row.address,
                state,
                reason,
                data: Some(data),
            }
        })
        .collect()
}

/// `weft ipam allocations`: this router's, without the host's own address.
pub(super) fn allocations(node: &Node) -> Vec<AllocationView> {
    let prefix = node.pool().net().prefix_len();
    let host = Node::host_key();
    let mut list: Vec<AllocationView> = (node.replica().allocations())
        .filter(|(key, _)| **key != host)
        .map(|(key, addr)| convert::allocation_view(key, addr, prefix))
        .collect();
    list.sort_by(|a, b| (&a.id, &a.iface).cmp(&(&b.id, &b.iface)));
    list
}

/// `weft ipam`: the ring.
pub(super) fn ring(node: &Node) -> RingView {
    convert::ring_view(node.pool(), node.replica(), |p| nickname(node, p))
}

fn nickname(node: &Node, peer: ipam_crdt::PeerName) -> Option<String> {
    node.nickname_of(peer).map(str::to_owned)
}

/// A [`Failure`] in words, for `weft status` and the log.
pub(super) fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Unreachable => "unreachable".to_owned(),
        Failure::AuthenticationFailed => {
            "authentication failed: the other router does not share this cluster secret".to_owned()
        }
        Failure::ConnectionLimit => "connection limit reached".to_owned(),
        Failure::Lost(why) => format!("connection lost: {why}"),
    }
}

/// Why there is no usable ring, in words, with the flag to look at.
pub(super) fn problem(p: &IpamProblem) -> String {
    match p {
        IpamProblem::Refused { from, error } => format!("refused the ring of router {from}: {error}"),
        IpamProblem::OtherPool { from, pool, ours } => format!(
            "refused the ring of router {from}: it divides {pool}, this router was launched with --ipalloc-range {ours}"
        ),
        IpamProblem::NoRing(why) => no_ring(why),
        IpamProblem::Removed => ipam_crdt::AllocError::Removed.to_string(),
    }
}

/// Why there is no ring, with the `weft launch` flag it depends on.
fn no_ring(why: &NoRing) -> String {
    match why.setting() {
        Some(setting) => format!("{why} (--{setting})"),
        None => why.to_string(),
    }
}

pub(super) fn stopping() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "the router is shutting down")
}

pub(super) fn alloc_failure(e: AllocFailure) -> ApiError {
    match e {
        AllocFailure::NoRing(why) => ApiError::new(
            ErrorCode::NoRing,
            format!("the address ring does not exist yet: {}", no_ring(&why)),
        ),
        AllocFailure::Refused(e) => convert::alloc_error(e),
        AllocFailure::NoDonor(_) | AllocFailure::Unreachable { .. } => {
            ApiError::new(ErrorCode::Unavailable, e.to_string())
        }
    }
}

fn rmpeer_error(e: RmpeerError) -> ApiError {
    match e {
        RmpeerError::Unknown(_) => ApiError::not_found(e.to_string()),
        RmpeerError::Reclaim(e) => convert::reclaim_error(e),
        _ => ApiError::new(ErrorCode::Conflict, e.to_string()),
    }
}

fn reset_error(e: ResetError) -> ApiError {
    match e {
        ResetError::InProgress => ApiError::new(ErrorCode::Conflict, e.to_string()),
        ResetError::NoHeir => ApiError::new(
            ErrorCode::Unavailable,
            format!("{e}; connect to the mesh and retry, or stop this router and run `weft rmpeer` on another one"),
        ),
        ResetError::HeirSilent { .. } => ApiError::new(
            ErrorCode::Timeout,
            format!("{e}; the router keeps its state and stays out of the ring; run `weft reset` again"),
        ),
        ResetError::Reclaim(e) => convert::reclaim_error(e),
    }
}

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

    #[test]
    fn reset_errors_say_what_to_do() {
        let heir = ipam_crdt::PeerName::from_u64(2);
        let silent = reset_error(ResetError::HeirSilent {
            heir,
            waited: Duration::from_secs(10),
        });
        assert_eq!(silent.code, ErrorCode::Timeout);
        assert!(silent.error.contains("within 10 s") && silent.error.contains("run `weft reset` again"));
        let none = reset_error(ResetError::NoHeir);
        assert_eq!(none.code, ErrorCode::Unavailable);
        assert!(none.error.contains("weft rmpeer"), "{}", none.error);
    }
}
