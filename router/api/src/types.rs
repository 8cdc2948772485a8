//! The JSON bodies of the local API: its wire contract.
//!
//! Field names are an interface (scripts, the CNI plugin and the tests read
//! them); rename nothing. Peer names are display strings of eight hex bytes
//! (`3f:2a:9c:1e:0b:7d:44:e1`), addresses are text, and optional values are
//! `null` rather than absent. Replies tolerate fields they do not know, so an
//! older `weft` can read a newer router; requests refuse unknown fields, so a
//! typo is an error rather than a silent default.
//!
//! Address counts are `u64`: an IPv4 pool has at most 2^32 addresses; counts
//! above `u64::MAX` (IPv6 pools, not supported yet) are shown as `u64::MAX`.
//!
//! These are plain values: turning the router's state into them (and
//! requests into allocation keys) is the router's business
//! (`weft_router::api::convert`), so this module depends on serde alone.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `GET /v1/status`: the local router at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This router's peer name.
    pub name: String,
    /// This router's nickname.
    pub nickname: String,
    /// The router's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Every router known to the mesh and this router's connection to it.
    pub peers: Vec<PeerStatus>,
    /// This router's share of the pod range.
    pub ipam: IpamSummary,
    /// Connections to other routers that completed their handshake.
    pub connections_established: usize,
    /// The address this router gave itself on the pod network, if any.
    pub host_address: Option<String>,
    /// The data plane, if this router runs one.
    #[serde(default)]
    pub dataplane: Option<DataplaneStatus>,
}

/// The data plane's state (`Status::dataplane`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    /// The UDP port of encrypted pod traffic.
    pub port: u16,
    /// The MTU of the TUN device and of pods.
    pub mtu: u16,
    /// TUN queues, one per packet-path worker.
    pub queues: usize,
    /// Whether the TUN device uses virtio-net offloads (TSO/USO/GRO).
    pub offload: bool,
    /// Routers with a data-plane session (keys to send with).
    pub sessions: u64,
    /// Routers the data plane knows.
    pub peers: u64,
    /// Inner packets sent to other routers.
    pub tx_packets: u64,
    /// Inner packets received from other routers and delivered.
    pub rx_packets: u64,
    /// Packets and datagrams dropped, by reason (every reason listed).
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// One router, or one address being dialled, as the local router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its peer name; `null` while dialling an address not yet identified.
    pub name: Option<String>,
    /// Its nickname, if known.
    pub nickname: Option<String>,
    /// The address connected to or dialled, if any.
    pub address: Option<String>,
    /// The control connection's state.
    pub state: PeerState,
    /// Why the connection is not established (last error), if known.
    pub reason: Option<String>,
    /// The data-plane session with it: whether this host's pods can reach
    /// that host's pods. `null` only from routers older than this field.
    #[serde(default)]
    pub data: Option<PeerData>,
}

/// The local router's data-plane session with a peer (`PeerStatus::data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerData {
    /// `up`, `connecting` or `down`.
    pub state: DataState,
    /// Where its datagrams go: the address that last answered, `IP:PORT`.
    pub endpoint: Option<String>,
    /// The router traffic to it is relayed through; `null` when direct.
    pub via: Option<String>,
}

impl PeerData {
    /// No session: the router is not known to the data plane (an address
    /// being dialed, or a router without one).
    pub fn down() -> Self {
        Self {
            state: DataState::Down,
            endpoint: None,
            via: None,
        }
    }
}

/// Whether a peer's data plane can be reached (`PeerData::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DataState {
    /// A session with keys, and something heard from it within the last
    /// 30 s: `"up"`.
    Up,
    /// A handshake is under way, unanswered for less than 90 s: `"connecting"`.
    Connecting,
    /// No address to try, or no answer for 90 s or more: `"down"`.
    Down,
    /// A state this `weft` does not know (a newer router); never sent.
    #[serde(other)]
    Unknown,
}

impl DataState {
    /// The wire name (`"up"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Connecting => "connecting",
            Self::Down => "down",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DataState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of the local router's connection to a peer (`PeerStatus::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerState {
    /// Connected and handshake done: `"established"`.
    Established,
    /// A connection attempt is under way: `"dialing"`.
    Dialing,
    /// The last attempt failed; waiting to try again: `"retrying"`.
    Retrying,
    /// Known through gossip, but not a direct neighbour: `"not_neighbour"`.
    NotNeighbour,
    /// A state this `weft` does not know (a newer router); never sent.
    #[serde(other)]
    Unknown,
}

impl PeerState {
    /// The wire name (`"established"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Dialing => "dialing",
            Self::Retrying => "retrying",
            Self::NotNeighbour => "not_neighbour",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// The same list as [`Status::peers`].
    pub peers: Vec<PeerStatus>,
}

/// The local router's share of the pod range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamSummary {
    /// The pod range (`10.32.0.0/12`).
    pub range: String,
    /// Addresses in the ranges this router owns.
    pub owned: u64,
    /// Owned addresses not allocated (network and broadcast addresses excluded).
    pub free: u64,
    /// Addresses allocated to containers on this router.
    pub allocated: u64,
    /// Why this router has no ring yet, or why it refuses another router's
    /// ring (created separately, over another range); absent when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `GET /v1/ipam`: the whole address ring as this router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    /// The pod range.
    pub range: String,
    /// Every range of the ring, in address order; empty while there is no ring yet.
    pub ranges: Vec<RangeView>,
    /// Per owner totals, in peer-name order.
    pub owners: Vec<OwnerView>,
    /// Reclaims of removed routers (`weft rmpeer`), in peer-name order.
    pub reclaims: Vec<ReclaimView>,
}

/// One range of the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeView {
    /// First address (inclusive).
    pub first: String,
    /// Last address (inclusive).
    pub last: String,
    /// The owner's peer name.
    pub owner: String,
    /// The owner's nickname, if known.
    pub owner_nickname: Option<String>,
    /// Free addresses, as the owner last advertised: exact below 16, else
    /// within an eighth (an owner rewrites it only when its count leaves
    /// that band).
    pub free: u64,
}

/// One owner's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerView {
    /// Peer name.
    pub name: String,
    /// Nickname, if known.
    pub nickname: Option<String>,
    /// Addresses owned.
    pub owned: u64,
    /// Free addresses, as advertised (see [`RangeView::free`]); the local
    /// router's exact count is the status's `ipam.free`.
    pub free: u64,
    /// Addresses allocated; known only for the local router, `null` for others.
    pub allocated: Option<u64>,
}

/// The reclaim of a removed router's ranges (`weft rmpeer`); also the reply to `POST /v1/rmpeer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimView {
    /// The removed router's peer name.
    pub name: String,
    /// Its nickname, if known.
    pub nickname: Option<String>,
    /// How far the reclaim got.
    pub state: ReclaimState,
    /// The router that takes (or took) the ranges, once one is chosen.
    pub heir: Option<String>,
    /// Live routers whose vote is still missing; empty once done.
    pub waiting_for: Vec<String>,
    /// Whether the removed router is known to have stopped: it heard of its
    /// removal, was reset, or an operator confirmed it gone (`rmpeer
    /// --gone`). Until then its heir holds its addresses and hands none out.
    #[serde(default)]
    pub stopped: bool,
    /// Addresses of the removed router's that this router holds as its heir
    /// and hands none out (its pods may still use them); 0 on every other
    /// router.
    #[serde(default)]
    pub held: u64,
}

/// How far a reclaim got (`ReclaimView::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReclaimState {
    /// Waiting for every live router to vote for the heir: `"pending"`.
    Pending,
    /// The heir took the ranges: `"done"`.
    Done,
    /// A state this `weft` does not know.
    #[serde(other)]
    Unknown,
}

/// `POST /v1/ipam/allocate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    /// The container ID.
    pub id: String,
    /// The interface inside the container; [`DEFAULT_IFACE`] if `null` or absent.
    #[serde(default)]
    pub iface: Option<String>,
    /// Ask for this address (`10.32.0.5`) rather than any free one.
    #[serde(default)]
    pub ip: Option<String>,
    /// Ask for any free address inside this subnet (`10.32.4.0/24`).
    #[serde(default)]
    pub net: Option<String>,
}

impl AllocateRequest {
    /// A request for any free address for container `id` on [`DEFAULT_IFACE`].
    pub fn any(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            iface: None,
            ip: None,
            net: None,
        }
    }
}

/// `POST /v1/ipam/allocate` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateResponse {
    /// The address with the pod range's prefix length (`10.32.0.1/12`).
    pub address: String,
    /// True when the container already had this address (a repeated request).
    pub existing: bool,
}

/// `GET /v1/ipam/allocations`: the addresses this router gave to containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Every allocation of this router, ordered by container id then
    /// interface; the router's own host address is not listed.
    pub allocations: Vec<AllocationView>,
}

/// One allocation (`Allocations::allocations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    /// The container id it was allocated for.
    pub id: String,
    /// The interface inside the container.
    pub iface: String,
    /// The address with the pod range's prefix length (`10.32.0.5/12`).
    pub address: String,
}

/// `POST /v1/ipam/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The container ID.
    pub id: String,
    /// The interface; [`DEFAULT_IFACE`] if `null` or absent.
    #[serde(default)]
    pub iface: Option<String>,
}

impl ReleaseRequest {
    /// The release of container `id`'s address on [`DEFAULT_IFACE`].
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            iface: None,
        }
    }
}

/// `POST /v1/ipam/release` reply. Releasing is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// The address released, in CIDR form; `null` if the container had none.
    pub address: Option<String>,
}

/// `POST /v1/connect` and `POST /v1/forget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    /// The peer's address, `host[:port]` (`node-2`, `192.0.2.2:6783`, `[2001:db8::2]:6783`).
    pub peer: String,
}

/// `POST /v1/rmpeer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmpeerRequest {
    /// The dead router's peer name or nickname (`3f:2a:9c:1e:0b:7d:44:e1`, `node-3`).
    pub name: String,
    /// The operator confirms the router is gone for good (its host destroyed
    /// or its state deleted): its heir may hand out every address it held
    /// for it. Only safe if the router never runs again with its state.
    #[serde(default)]
    pub gone: bool,
}

/// `GET /v1/healthz` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"`: the router answers.
    pub status: String,
    /// The router's version.
    pub version: String,
}

/// The body of every error reply.
///
/// `code` is for programs, `error` for people: it says what went wrong and,
/// where it can, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    /// What went wrong, in words.
    pub error: String,
    /// What went wrong, for programs.
    pub code: ErrorCode,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            code,
        }
    }

    /// An [`ErrorCode::InvalidRequest`] error.
    pub fn invalid_request(error: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, error)
    }

    /// An [`ErrorCode::NotFound`] error.
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, error)
    }

    /// An [`ErrorCode::Internal`] error.
    pub fn internal(error: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, error)
    }
}

/// The machine-readable kind of an [`ApiError`] (`"no_ring"`, ...).
///
/// Each code has one HTTP status, [`ErrorCode::http_status`] (the table in
/// `docs/api.md`), and one answer to "may a client retry?",
/// [`ErrorCode::is_transient`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid: `"invalid_request"`.
    InvalidRequest,
    /// The request body is over the size limit: `"too_large"`.
    TooLarge,
    /// No such route, peer, container or target: `"not_found"`.
    NotFound,
    /// The route exists but not with this method: `"method_not_allowed"`.
    MethodNotAllowed,
    /// The address ring does not exist yet: `"no_ring"`.
    NoRing,
    /// No free address is left for the request: `"exhausted"`.
    Exhausted,
    /// The requested address belongs to another container: `"in_use"`.
    InUse,
    /// The container already has a different address: `"already_allocated"`.
    AlreadyAllocated,
    /// The address or subnet is outside the pod range, or reserved: `"out_of_range"`.
    OutOfRange,
    /// This router was removed from the ring and must be reset: `"removed"`.
    Removed,
    /// The request conflicts with the mesh's state: `"conflict"`.
    Conflict,
    /// The router did not finish in time: `"timeout"`.
    Timeout,
    /// The router cannot serve this now (starting, stopping, peer unreachable): `"unavailable"`.
    Unavailable,
    /// A bug or an unexpected failure in the router: `"internal"`.
    Internal,
    /// A code this `weft` does not know (a newer router), kept verbatim.
    Other(String),
}

impl ErrorCode {
    /// The wire form.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::TooLarge => "too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NoRing => "no_ring",
            Self::Exhausted => "exhausted",
            Self::InUse => "in_use",
            Self::AlreadyAllocated => "already_allocated",
            Self::OutOfRange => "out_of_range",
            Self::Removed => "removed",
            Self::Conflict => "conflict",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Other(s) => s,
        }
    }

    /// The HTTP status of a reply with this code: the one table the server
    /// applies. A code this crate does not know is a 500 (internal).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidRequest | Self::OutOfRange => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::TooLarge => 413,
            Self::InUse | Self::AlreadyAllocated | Self::Exhausted | Self::Removed | Self::Conflict => 409,
            Self::NoRing | Self::Unavailable => 503,
            Self::Timeout => 504,
            Self::Internal | Self::Other(_) => 500,
        }
    }

    /// Whether a client may retry a request that failed with this code in a
    /// reply of HTTP `status`: the API's one retry rule.
    ///
    /// Only a router that is not ready yet or is too busy is worth asking
    /// again: `no_ring`, `unavailable` and `timeout` (the 503 and 504
    /// codes). Every other known code is the request's fault or the mesh's
    /// state, and asking again gets the same answer; that includes
    /// `internal`, since a bug does not go away by asking again. A code
    /// this crate does not know (from a newer router) is judged by `status`
    /// alone: 503 and 504 are transient, anything else is not. A known
    /// code ignores `status`.
    pub fn is_transient(&self, status: u16) -> bool {
        match self {
            Self::NoRing | Self::Unavailable | Self::Timeout => true,
            Self::Other(_) => is_transient_status(status),
            _ => false,
        }
    }

    /// The code with this wire form; unknown forms become [`ErrorCode::Other`].
    pub fn from_wire(s: &str) -> Self {
        match s {
            "invalid_request" => Self::InvalidRequest,
            "too_large" => Self::TooLarge,
            "not_found" => Self::NotFound,
            "method_not_allowed" => Self::MethodNotAllowed,
            "no_ring" => Self::NoRing,
            "exhausted" => Self::Exhausted,
            "in_use" => Self::InUse,
            "already_allocated" => Self::AlreadyAllocated,
            "out_of_range" => Self::OutOfRange,
            "removed" => Self::Removed,
            "conflict" => Self::Conflict,
            "timeout" => Self::Timeout,
            "unavailable" => Self::Unavailable,
            "internal" => Self::Internal,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::from_wire(&s))
    }
}

/// Whether a reply's HTTP status says "try again later": 503 (not ready,
/// unavailable) or 504 (timeout). The statuses of the transient codes.
fn is_transient_status(status: u16) -> bool {
    matches!(status, 503 | 504)
}

/// `addr/prefix_len`, the form CNI and `weft ipam allocate` print.
pub fn cidr(addr: IpAddr, prefix_len: u8) -> String {
    format!("{addr}/{prefix_len}")
}

/// The interface an allocation is for when a request names none, as in Weave.
pub const DEFAULT_IFACE: &str = "ethwe";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every code this crate knows, with its status and whether it is transient.
    const CODES: [(ErrorCode, u16, bool); 14] = [
        (ErrorCode::InvalidRequest, 400, false),
        (ErrorCode::OutOfRange, 400, false),
        (ErrorCode::NotFound, 404, false),
        (ErrorCode::MethodNotAllowed, 405, false),
        (ErrorCode::TooLarge, 413, false),
        (ErrorCode::InUse, 409, false),
        (ErrorCode::AlreadyAllocated, 409, false),
        (ErrorCode::Exhausted, 409, false),
        (ErrorCode::Removed, 409, false),
        (ErrorCode::Conflict, 409, false),
        (ErrorCode::NoRing, 503, true),
        (ErrorCode::Unavailable, 503, true),
        (ErrorCode::Timeout, 504, true),
        (ErrorCode::Internal, 500, false),
    ];

    #[test]
    fn status_field_names() {
        let status = Status {
            name: "00:00:00:00:00:00:00:01".into(),
            nickname: "node-1".into(),
            version: "0.1.0".into(),
            peers: vec![PeerStatus {
                name: None,
                nickname: None,
                address: Some("192.0.2.2:6783".into()),
                state: PeerState::NotNeighbour,
                reason: Some("refused".into()),
                data: Some(PeerData {
                    state: DataState::Up,
                    endpoint: Some("192.0.2.2:6784".into()),
                    via: None,
                }),
            }],
            ipam: IpamSummary {
                range: "10.32.0.0/12".into(),
                owned: 4,
                free: 2,
                allocated: 1,
                problem: None,
            },
            connections_established: 0,
            host_address: Some("10.32.0.1".into()),
            dataplane: Some(DataplaneStatus {
                port: 6784,
                mtu: 1440,
                queues: 2,
                offload: true,
                sessions: 1,
                peers: 2,
                tx_packets: 10,
                rx_packets: 9,
                drops: [("replayed".to_owned(), 3)].into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({
                "name": "00:00:00:00:00:00:00:01",
                "nickname": "node-1",
                "version": "0.1.0",
                "peers": [{
                    "name": null, "nickname": null, "address": "192.0.2.2:6783",
                    "state": "not_neighbour", "reason": "refused",
                    "data": {"state": "up", "endpoint": "192.0.2.2:6784", "via": null}
                }],
                "ipam": {"range": "10.32.0.0/12", "owned": 4, "free": 2, "allocated": 1},
                "connections_established": 0,
                "host_address": "10.32.0.1",
                "dataplane": {
                    "port": 6784, "mtu": 1440, "queues": 2, "offload": true, "sessions": 1, "peers": 2,
                    "tx_packets": 10, "rx_packets": 9, "drops": {"replayed": 3}
                }
            })
        );
    }

    #[test]
    fn unknown_states_and_codes_are_kept() {
        let peer: PeerStatus =
            serde_json::from_value(json!({"name": null, "nickname": null, "address": null, "state": "warp"})).unwrap();
        assert_eq!(peer.state, PeerState::Unknown);
        assert_eq!(peer.reason, None);
        assert_eq!(peer.data, None, "a router older than `data`");
        let peer: PeerStatus = serde_json::from_value(json!({
            "name": null, "nickname": null, "address": null, "state": "dialing",
            "data": {"state": "relayed", "endpoint": null, "via": "x"}
        }))
        .unwrap();
        assert_eq!(peer.data.map(|d| d.state), Some(DataState::Unknown));
        let err: ApiError = serde_json::from_value(json!({"error": "x", "code": "quota"})).unwrap();
        assert_eq!(err.code, ErrorCode::Other("quota".into()));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"error": "x", "code": "quota"})
        );
    }

    #[test]
    fn error_codes_round_trip() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::TooLarge,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::NoRing,
            ErrorCode::Exhausted,
            ErrorCode::InUse,
            ErrorCode::AlreadyAllocated,
            ErrorCode::OutOfRange,
            ErrorCode::Removed,
            ErrorCode::Conflict,
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::from_wire(code.as_str()), code);
        }
    }

    #[test]
    fn every_code_has_one_status() {
        for (code, status, _) in CODES {
            assert_eq!(code.http_status(), status, "{code}");
        }
        assert_eq!(ErrorCode::Other("quota".into()).http_status(), 500);
    }

    #[test]
    fn only_not_ready_busy_and_slow_are_retried() {
        for (code, status, transient) in CODES {
            assert_eq!(code.is_transient(status), transient, "{code}");
            // A known code decides by itself, whatever status came with it.
            assert_eq!(code.is_transient(503), transient, "{code} at 503");
            assert_eq!(code.is_transient(500), transient, "{code} at 500");
        }
        let unknown = ErrorCode::from_wire("quota");
        assert!(!unknown.is_transient(500), "an unknown code at 500 is a failure");
        assert!(unknown.is_transient(503), "an unknown code at 503 is worth retrying");
        assert!(unknown.is_transient(504));
        assert!(!unknown.is_transient(409));
        assert!(!unknown.is_transient(400));
    }

    #[test]
    fn requests_round_trip_and_refuse_unknown_fields() {
        let req = AllocateRequest {
            iface: Some("eth1".into()),
            net: Some("10.32.4.0/24".into()),
            ..AllocateRequest::any("abc")
        };
        let wire = json!({"id": "abc", "iface": "eth1", "ip": null, "net": "10.32.4.0/24"});
        assert_eq!(serde_json::to_value(&req).unwrap(), wire);
        assert_eq!(serde_json::from_value::<AllocateRequest>(wire).unwrap(), req);
        let bare: AllocateRequest = serde_json::from_value(json!({"id": "abc"})).unwrap();
        assert_eq!(bare, AllocateRequest::any("abc"));
        assert!(serde_json::from_value::<AllocateRequest>(json!({"id": "a", "ipaddr": "x"})).is_err());

        let release = ReleaseRequest::new("abc");
        assert_eq!(
            serde_json::to_value(&release).unwrap(),
            json!({"id": "abc", "iface": null})
        );
        assert!(serde_json::from_value::<ReleaseRequest>(json!({"id": "a", "if": "x"})).is_err());
        assert!(serde_json::from_value::<PeerRequest>(json!({"peer": "a", "port": 1})).is_err());
        assert!(serde_json::from_value::<RmpeerRequest>(json!({"name": "a", "force": true})).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let ring = RingView {
            range: "10.32.0.0/28".into(),
            ranges: vec![RangeView {
                first: "10.32.0.0".into(),
                last: "10.32.0.7".into(),
                owner: "00:00:00:00:00:00:00:01".into(),
                owner_nickname: None,
                free: 6,
            }],
            owners: vec![OwnerView {
                name: "00:00:00:00:00:00:00:01".into(),
                nickname: Some("node-1".into()),
                owned: 8,
                free: 6,
                allocated: Some(1),
            }],
            reclaims: vec![ReclaimView {
                name: "00:00:00:00:00:00:00:02".into(),
                nickname: None,
                state: ReclaimState::Pending,
                heir: None,
                waiting_for: vec!["00:00:00:00:00:00:00:03".into()],
                stopped: false,
                held: 0,
            }],
        };
        let wire = serde_json::to_value(&ring).unwrap();
        assert_eq!(wire["reclaims"][0]["state"], "pending");
        assert_eq!(wire["ranges"][0]["owner_nickname"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<RingView>(wire).unwrap(), ring);

        let allocated = AllocateResponse {
            address: cidr("10.32.0.1".parse().unwrap(), 12),
            existing: false,
        };
        assert_eq!(
            serde_json::to_value(&allocated).unwrap(),
            json!({"address": "10.32.0.1/12", "existing": false})
        );
        // A newer router's extra fields are ignored.
        let list: Allocations = serde_json::from_value(json!({
            "allocations": [{"id": "c", "iface": "ethwe", "address": "10.32.0.5/12", "since": 1}]
        }))
        .unwrap();
        assert_eq!(list.allocations[0].address, "10.32.0.5/12");
    }
}
