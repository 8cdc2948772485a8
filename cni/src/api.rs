//! The router's local API as the plugins use it: the blocking client of the
//! `weft-api` crate ([`weft_api::blocking::Client`]: one deadline across all
//! requests, no runtime), the plugins' requests, and what a failed request
//! means in CNI terms.
//!
//! Whether a failure is worth retrying is the API's rule
//! ([`ClientError::is_transient`]), the same for every client; here it
//! becomes code 11, which tells the runtime to try again later.

use weft_api::types::{AllocateRequest, ReleaseRequest};
use weft_api::{ClientError, ErrorCode};

use crate::error::{CniError, code};

/// The allocation of an address for `id` on interface `ifname`.
pub fn allocate_request(id: &str, ifname: &str) -> AllocateRequest {
    AllocateRequest {
        iface: Some(ifname.to_owned()),
        ..AllocateRequest::any(id)
    }
}

/// The release of the address of `id` on interface `ifname`.
pub fn release_request(id: &str, ifname: &str) -> ReleaseRequest {
    ReleaseRequest {
        iface: Some(ifname.to_owned()),
        ..ReleaseRequest::new(id)
    }
}

/// The CNI error for `e`, a failure while doing `what`: 11 (try again
/// later) when retrying may help, 101 for a full pod range, 6 for a reply
/// that breaks the API, 100 for every other refusal. A refusal's message
/// carries the router's words, code and HTTP status.
pub fn cni_error(e: ClientError, what: &str) -> CniError {
    let code = match &e {
        e if e.is_transient() => code::TRY_AGAIN_LATER,
        ClientError::Api { error, .. } if error.code == ErrorCode::Exhausted => code::POOL_EXHAUSTED,
        ClientError::Protocol(_) => code::DECODING_FAILURE,
        _ => code::ROUTER_REFUSED,
    };
    let msg = match &e {
        ClientError::Api { status, error } => format!(
            "{what}: the weft router refused: {} ({}, HTTP {status})",
            error.error, error.code
        ),
        other => format!("{what}: {other}"),
    };
    CniError::new(code, msg)
}

#[cfg(test)]
mod tests {
    use std::io;

    use weft_api::{ApiError, ProtocolError};

    use super::*;

    #[test]
    fn errors_map_to_cni_codes() {
        let api = |status, code: &str| ClientError::Api {
            status,
            error: ApiError::new(ErrorCode::from_wire(code), "x"),
        };
        assert_eq!(cni_error(api(503, "no_ring"), "allocate").code, code::TRY_AGAIN_LATER);
        assert_eq!(cni_error(api(504, "timeout"), "allocate").code, code::TRY_AGAIN_LATER);
        assert_eq!(cni_error(api(409, "exhausted"), "allocate").code, code::POOL_EXHAUSTED);
        assert_eq!(
            cni_error(api(400, "invalid_request"), "allocate").code,
            code::ROUTER_REFUSED
        );
        // A bug in the router does not go away by asking again.
        assert_eq!(cni_error(api(500, "internal"), "allocate").code, code::ROUTER_REFUSED);
        let gone = ClientError::NotRunning { path: "/x".into() };
        assert_eq!(cni_error(gone, "allocate").code, code::TRY_AGAIN_LATER);
        let denied = ClientError::Connect {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(cni_error(denied, "allocate").code, code::ROUTER_REFUSED);
        let garbled = ClientError::from(ProtocolError::Malformed("no header".into()));
        assert_eq!(cni_error(garbled, "allocate").code, code::DECODING_FAILURE);
    }

    #[test]
    fn a_refusal_says_what_the_router_said() {
        let full = ClientError::Api {
            status: 409,
            error: ApiError::new(ErrorCode::Exhausted, "no free address is left"),
        };
        assert_eq!(
            cni_error(full, "cannot allocate an address").msg,
            "cannot allocate an address: the weft router refused: no free address is left (exhausted, HTTP 409)"
        );
    }

    #[test]
    fn requests_name_the_interface() {
        let req = allocate_request("cni:n:c", "eth0");
        assert_eq!((req.id.as_str(), req.iface.as_deref()), ("cni:n:c", Some("eth0")));
        assert_eq!((req.ip, req.net), (None, None));
        let req = release_request("cni:n:c", "eth0");
        assert_eq!((req.id.as_str(), req.iface.as_deref()), ("cni:n:c", Some("eth0")));
    }
}
