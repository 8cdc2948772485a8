//! The router's values as the API's types, and the API's requests as the
//! router's: the one place where `ipam_crdt` meets [`weft_api::types`].
//!
//! `weft_api` is the wire contract alone and knows nothing of the router,
//! so these are functions here rather than methods and `From` impls there.
//! Each IPAM error maps to one [`ErrorCode`], and so to one HTTP status
//! ([`ErrorCode::http_status`]).

use std::net::IpAddr;

use ipam_crdt::{
    AllocError, AllocKey, Allocation, DonateError, KeyError, PeerName, Pool, ReclaimError, ReclaimStatus, Replica,
    Request,
};
use ipnet::IpNet;
use weft_api::types::{
    AllocateRequest, AllocateResponse, AllocationView, ApiError, DEFAULT_IFACE, ErrorCode, IpamSummary, OwnerView,
    RangeView, ReclaimState, ReclaimView, ReleaseRequest, RingView, cidr,
};

use crate::core::node;

/// The summary of `replica`, whose ring (if any) divides `pool`.
pub fn ipam_summary(pool: Pool, replica: &Replica) -> IpamSummary {
    let owned = replica
        .ring()
        .and_then(|ring| ring.owners().get(&replica.name()).map(|s| s.owned))
        .unwrap_or(0);
    IpamSummary {
        range: pool.to_string(),
        owned: saturate(owned),
        free: saturate(replica.free()),
        allocated: saturate(replica.allocated() as u128),
        problem: None,
    }
}

/// The view of `replica`'s ring over `pool`; `nickname` names the peers it can.
pub fn ring_view(pool: Pool, replica: &Replica, nickname: impl Fn(PeerName) -> Option<String>) -> RingView {
    let Some(ring) = replica.ring() else {
        return RingView {
            range: pool.to_string(),
            ranges: Vec::new(),
            owners: Vec::new(),
            reclaims: Vec::new(),
        };
    };
    let me = replica.name();
    let ranges = ring
        .ranges()
        .map(|r| RangeView {
            first: r.range.first.to_string(),
            last: r.range.last.to_string(),
            owner: r.owner.to_string(),
            owner_nickname: nickname(r.owner),
            free: saturate(r.free),
        })
        .collect();
    let owners = ring
        .owners()
        .into_iter()
        .map(|(name, stats)| OwnerView {
            name: name.to_string(),
            nickname: nickname(name),
            owned: saturate(stats.owned),
            free: saturate(stats.free),
            allocated: (name == me).then(|| saturate(replica.allocated() as u128)),
        })
        .collect();
    let reclaims = ring
        .reclaims()
        .iter()
        .map(|(dead, status)| reclaim_of(replica, *dead, status, &nickname))
        .collect();
    RingView {
        range: ring.pool().to_string(),
        ranges,
        owners,
        reclaims,
    }
}

/// The view of the reclaim of `dead` as `replica` sees it: whether `dead`
/// stopped, and what `replica` holds for it.
pub fn reclaim_of(
    replica: &Replica,
    dead: PeerName,
    status: &ReclaimStatus,
    nickname: impl Fn(PeerName) -> Option<String>,
) -> ReclaimView {
    let stopped = replica.ring().is_some_and(|r| r.has_stopped(dead));
    let held = replica.held().get(&dead).copied().unwrap_or(0);
    reclaim_view(dead, status, stopped, saturate(held), nickname)
}

/// The view of the reclaim of `dead`, which `stopped` or not, with `held`
/// of its addresses held here.
pub fn reclaim_view(
    dead: PeerName,
    status: &ReclaimStatus,
    stopped: bool,
    held: u64,
    nickname: impl Fn(PeerName) -> Option<String>,
) -> ReclaimView {
    let (state, heir, waiting_for) = match status {
        ReclaimStatus::Pending { candidate, waiting_for } => (
            ReclaimState::Pending,
            candidate.map(|c| c.to_string()),
            waiting_for.iter().map(ToString::to_string).collect(),
        ),
        ReclaimStatus::Done { heir } => (ReclaimState::Done, Some(heir.to_string()), Vec::new()),
        _ => (ReclaimState::Unknown, None, Vec::new()),
    };
    ReclaimView {
        name: dead.to_string(),
        nickname: nickname(dead),
        state,
        heir,
        waiting_for,
        stopped,
        held,
    }
}

/// The view of `key`'s allocation of `addr` in a pool of `prefix_len`.
pub fn allocation_view(key: &AllocKey, addr: IpAddr, prefix_len: u8) -> AllocationView {
    AllocationView {
        id: key.container().to_owned(),
        iface: key.iface().to_owned(),
        address: cidr(addr, prefix_len),
    }
}

/// The reply to an allocation.
pub fn allocated(a: Allocation) -> AllocateResponse {
    AllocateResponse {
        address: cidr(a.addr, a.prefix_len),
        existing: a.existing,
    }
}

/// Parses an allocation request into the allocation key and what is asked for.
///
/// # Errors
/// [`ErrorCode::InvalidRequest`], saying which field is wrong.
pub fn parse_allocate(req: &AllocateRequest) -> Result<(AllocKey, Request), ApiError> {
    let key = alloc_key(&req.id, req.iface.as_deref())?;
    let request = match (&req.ip, &req.net) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request("give either \"ip\" or \"net\", not both"));
        }
        (Some(ip), None) => Request::Addr(
            ip.trim()
                .parse::<IpAddr>()
                .map_err(|_| ApiError::invalid_request(format!("\"ip\": {ip:?} is not an IP address")))?,
        ),
        (None, Some(net)) => Request::Within(
            net.trim()
                .parse::<IpNet>()
                .map_err(|_| ApiError::invalid_request(format!("\"net\": {net:?} is not a CIDR like 10.32.4.0/24")))?,
        ),
        (None, None) => Request::Any,
    };
    Ok((key, request))
}

/// Parses a release request into the allocation key to release.
///
/// # Errors
/// [`ErrorCode::InvalidRequest`], saying which field is wrong.
pub fn parse_release(req: &ReleaseRequest) -> Result<AllocKey, ApiError> {
    alloc_key(&req.id, req.iface.as_deref())
}

/// An allocation key that is not valid: the request's fault.
pub fn key_error(e: KeyError) -> ApiError {
    ApiError::invalid_request(e.to_string())
}

/// A failed allocation.
pub fn alloc_error(e: AllocError) -> ApiError {
    let code = match &e {
        AllocError::NoRing => ErrorCode::NoRing,
        AllocError::Removed => ErrorCode::Removed,
        AllocError::OutsidePool { .. } | AllocError::Reserved { .. } => ErrorCode::OutOfRange,
        // A removed router's pod may still use a held address.
        AllocError::InUse { .. } | AllocError::Held { .. } => ErrorCode::InUse,
        AllocError::KeyBound { .. } => ErrorCode::AlreadyAllocated,
        AllocError::Exhausted => ErrorCode::Exhausted,
        // The backend asks the peer itself; reaching the API means it could not.
        AllocError::AskPeer { .. } => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// A peer's refusal to give space this router asked for on a client's behalf.
pub fn donate_error(e: DonateError) -> ApiError {
    let code = match &e {
        DonateError::NoRing => ErrorCode::NoRing,
        DonateError::RecipientRemoved(_) => ErrorCode::Removed,
        DonateError::NothingFree | DonateError::NothingFreeIn(_) => ErrorCode::Exhausted,
        DonateError::OutsidePool(_) | DonateError::Reserved(_) => ErrorCode::OutOfRange,
        DonateError::InUse { .. } | DonateError::Held { .. } => ErrorCode::InUse,
        DonateError::Removed | DonateError::NotOwner { .. } => ErrorCode::Conflict,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// A reclaim (`weft rmpeer`) that cannot start.
pub fn reclaim_error(e: ReclaimError) -> ApiError {
    let code = match &e {
        ReclaimError::NoRing => ErrorCode::NoRing,
        ReclaimError::IsSelf => ErrorCode::InvalidRequest,
        ReclaimError::Removed => ErrorCode::Removed,
        ReclaimError::UnknownPeer(_) => ErrorCode::NotFound,
        ReclaimError::NoVoters | ReclaimError::NotAMember => ErrorCode::Conflict,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// The key of an allocate or release call: a valid key, and not one of the
/// router's own ([`node::is_reserved`]), so no client can take or free the
/// host's address on the pod network.
fn alloc_key(id: &str, iface: Option<&str>) -> Result<AllocKey, ApiError> {
    let key = AllocKey::new(id, iface.unwrap_or(DEFAULT_IFACE)).map_err(key_error)?;
    if node::is_reserved(&key) {
        return Err(ApiError::invalid_request(format!(
            "container id {id:?}: the prefix {:?} is reserved for the router's own addresses (the host's \
             address on the pod network); use another id",
            node::RESERVED_PREFIX
        )));
    }
    Ok(key)
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn allocate_request_parse() {
        let (key, req) = parse_allocate(&AllocateRequest::any("abc")).unwrap();
        assert_eq!((key.container(), key.iface()), ("abc", DEFAULT_IFACE));
        assert_eq!(req, Request::Any);

        let r: AllocateRequest =
            serde_json::from_value(json!({"id": "abc", "iface": "eth1", "ip": "10.32.0.5"})).unwrap();
        let (key, req) = parse_allocate(&r).unwrap();
        assert_eq!(key.iface(), "eth1");
        assert_eq!(req, Request::Addr("10.32.0.5".parse().unwrap()));

        let r: AllocateRequest = serde_json::from_value(json!({"id": "abc", "net": "10.32.4.0/24"})).unwrap();
        assert_eq!(
            parse_allocate(&r).unwrap().1,
            Request::Within("10.32.4.0/24".parse().unwrap())
        );

        let bad =
            |v: serde_json::Value| parse_allocate(&serde_json::from_value::<AllocateRequest>(v).unwrap()).unwrap_err();
        assert_eq!(bad(json!({"id": ""})).code, ErrorCode::InvalidRequest);
        assert_eq!(
            bad(json!({"id": "a", "ip": "nope"})).error,
            "\"ip\": \"nope\" is not an IP address"
        );
        assert_eq!(
            bad(json!({"id": "a", "net": "10.0.0.0"})).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            bad(json!({"id": "a", "ip": "10.32.0.1", "net": "10.32.0.0/24"})).code,
            ErrorCode::InvalidRequest
        );
        assert!(serde_json::from_value::<AllocateRequest>(json!({"id": "a", "ipaddr": "x"})).is_err());
    }

    #[test]
    fn release_request_parse() {
        let key = parse_release(&ReleaseRequest::new("abc")).unwrap();
        assert_eq!((key.container(), key.iface()), ("abc", DEFAULT_IFACE));
        let bad = ReleaseRequest {
            iface: Some(String::new()),
            ..ReleaseRequest::new("abc")
        };
        assert_eq!(parse_release(&bad).unwrap_err().code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn the_routers_own_keys_are_refused() {
        let host = node::Node::host_key();
        assert!(node::is_reserved(&host), "the host key is reserved");
        let release = ReleaseRequest {
            iface: Some(host.iface().to_owned()),
            ..ReleaseRequest::new(host.container())
        };
        let e = parse_release(&release).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(
            e.error.contains("reserved for the router's own addresses"),
            "{}",
            e.error
        );
        for id in ["weft:host", "weft:anything"] {
            assert_eq!(
                parse_allocate(&AllocateRequest::any(id)).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{id}"
            );
            let claim: AllocateRequest = serde_json::from_value(json!({"id": id, "ip": "10.32.0.5"})).unwrap();
            assert_eq!(
                parse_allocate(&claim).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{id}"
            );
            assert_eq!(
                parse_release(&ReleaseRequest::new(id)).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
        }
        // Only the prefix is reserved: the CNI plugin's ids look like "cni:weft:...".
        assert!(parse_allocate(&AllocateRequest::any("cni:weft:abc")).is_ok());
        assert!(parse_allocate(&AllocateRequest::any("weft")).is_ok());
    }

    #[test]
    fn views_from_replica() {
        let pool = pool("10.32.0.0/28");
        let mut replica = Replica::create(p(1), pool, &[p(1), p(2)]).unwrap();
        let key = AllocKey::new("c1", DEFAULT_IFACE).unwrap();
        let alloc = replica.allocate(key, Request::Any).unwrap();
        assert_eq!(allocated(alloc).address, "10.32.0.1/28");

        let summary = ipam_summary(pool, &replica);
        assert_eq!(
            summary,
            IpamSummary {
                range: "10.32.0.0/28".into(),
                owned: 8,
                free: 6,
                allocated: 1,
                problem: None,
            }
        );

        let nick = |n: PeerName| (n == p(1)).then(|| "node-1".to_owned());
        let view = ring_view(pool, &replica, nick);
        assert_eq!(view.range, "10.32.0.0/28");
        assert_eq!(view.ranges.len(), 2);
        assert_eq!(view.ranges[0].first, "10.32.0.0");
        assert_eq!(view.ranges[0].last, "10.32.0.7");
        assert_eq!(view.ranges[0].owner_nickname.as_deref(), Some("node-1"));
        assert_eq!(view.owners[0].allocated, Some(1));
        assert_eq!(view.owners[1].allocated, None);
        assert_eq!(view.owners[1].nickname, None);
        assert!(view.reclaims.is_empty());

        let empty = Replica::new(p(3));
        assert_eq!(ipam_summary(pool, &empty).owned, 0);
        assert!(ring_view(pool, &empty, |_| None).ranges.is_empty());
    }

    /// The heir of a router removed while it may be alive shows what it holds
    /// for it, until the operator confirms it gone.
    #[test]
    fn the_heir_shows_what_it_holds() {
        let pool = Pool::new("10.32.0.0/28".parse().unwrap()).unwrap();
        let mut heir = Replica::create(p(1), pool, &[p(1), p(2)]).unwrap();
        heir.begin_reclaim(p(2)).unwrap();
        let status = heir.ring().unwrap().reclaim_status(p(2)).unwrap();
        let view = reclaim_of(&heir, p(2), &status, |_| None);
        assert_eq!(view.state, ReclaimState::Done);
        assert!(!view.stopped);
        assert_eq!(u128::from(view.held), heir.held()[&p(2)]);
        assert!(view.held > 0, "{view:?}");
        heir.confirm_gone(p(2)).unwrap();
        let view = reclaim_of(&heir, p(2), &status, |_| None);
        assert!(view.stopped);
        assert_eq!(view.held, 0, "{view:?}");
        // Any other router holds nothing for it.
        let mut other = Replica::new(p(3));
        let _ = other.merge(heir.ring().unwrap()).unwrap();
        assert_eq!(reclaim_of(&other, p(2), &status, |_| None).held, 0);
    }

    #[test]
    fn reclaims() {
        let done = reclaim_view(p(2), &ReclaimStatus::Done { heir: p(1) }, false, 12, |_| None);
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            json!({"name": p(2).to_string(), "nickname": null, "state": "done",
                   "heir": p(1).to_string(), "waiting_for": [], "stopped": false, "held": 12})
        );
        let pending = reclaim_view(
            p(2),
            &ReclaimStatus::Pending {
                candidate: None,
                waiting_for: vec![p(3)],
            },
            true,
            0,
            |_| Some("n".into()),
        );
        assert_eq!(pending.state, ReclaimState::Pending);
        assert_eq!(pending.waiting_for, vec![p(3).to_string()]);
    }

    #[test]
    fn alloc_errors_map_to_codes() {
        assert_eq!(alloc_error(AllocError::NoRing).code, ErrorCode::NoRing);
        assert_eq!(alloc_error(AllocError::Exhausted).code, ErrorCode::Exhausted);
        let in_use = AllocError::InUse {
            addr: "10.32.0.1".parse().unwrap(),
            by: Box::new(AllocKey::new("c", "ethwe").unwrap()),
        };
        let e = alloc_error(in_use);
        assert_eq!(
            (e.code, e.error.as_str()),
            (ErrorCode::InUse, "10.32.0.1 is in use by c/ethwe")
        );
        assert_eq!(reclaim_error(ReclaimError::UnknownPeer(p(9))).code, ErrorCode::NotFound);
        assert_eq!(donate_error(DonateError::NothingFree).code, ErrorCode::Exhausted);
    }
}
