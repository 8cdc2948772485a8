//! The proxy's failures, and the one place they become Docker API errors.
//!
//! The docker CLI prints an error reply's `message` after "Error response
//! from daemon: ", so every message says what failed and, where it can,
//! what to do. Messages of the proxy's own making start with `weft: ` so
//! that nobody looks for them in dockerd's log. Status codes avoid 404,
//! which the CLI takes for "image not found" on create and answers by
//! pulling.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::json;
use weft_api::ClientError;

use crate::attach::AttachError;
use crate::cidr::CidrError;
use crate::docker::DockerError;
use crate::router::RouterError;
use crate::server::ProxyBody;

/// A request the proxy could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The upstream daemon failed (Docker's own words when it is down).
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The container's `WEFT_CIDR` is wrong.
    #[error("weft: {0}")]
    Cidr(#[from] CidrError),
    /// The router cannot attach containers now.
    #[error("weft: {0}")]
    Router(#[from] RouterError),
    /// A started container could not be attached, and was stopped.
    #[error("weft: cannot attach container {container} to the mesh: {source}; {aftermath}")]
    Attach {
        /// The container as the request named it.
        container: String,
        /// What failed.
        #[source]
        source: AttachError,
        /// What the proxy did about it.
        aftermath: &'static str,
    },
    /// A create request's body is larger than the proxy reads.
    #[error("weft: the create request's body is over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The client's request broke off.
    #[error("weft: reading the request failed: {0}")]
    Request(String),
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Another proxy answers on the socket.
    #[error("another Docker API proxy is running at {}; stop it first, or pass a different socket", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket; remove it or pass a different socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The listening socket would be the upstream one: requests would loop.
    #[error(
        "the proxy's socket {} is also its --docker-host; point --docker-host at the real daemon",
        path.display()
    )]
    Loop {
        /// The socket.
        path: PathBuf,
    },
    /// A file system or socket operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ProxyError {
    /// The reply's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Docker(DockerError::Unreachable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Docker(DockerError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Docker(_) => StatusCode::BAD_GATEWAY,
            Self::Cidr(_) => StatusCode::BAD_REQUEST,
            Self::Router(e) => router_status(e),
            Self::Attach { source, .. } => match source {
                AttachError::Cidr(_) => StatusCode::BAD_REQUEST,
                AttachError::Allocate { source, .. } | AttachError::Router(source) => router_status(source),
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Request(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The Docker API error reply: the status, and `{"message": …}`.
    pub fn reply(&self) -> Response<ProxyBody> {
        let body = json!({ "message": self.to_string() }).to_string();
        Response::builder()
            .status(self.status())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
            .expect("status and header are valid by construction")
    }
}

fn router_status(e: &RouterError) -> StatusCode {
    match e {
        RouterError::Call(ClientError::NotRunning { .. } | ClientError::Connect { .. })
        | RouterError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RouterError::Call(ClientError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        // The router's own status (409 exhausted, 400 out_of_range, 503 no_ring), but never 404.
        RouterError::Call(ClientError::Api { status, .. }) if *status != StatusCode::NOT_FOUND.as_u16() => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_never_say_not_found() {
        let refused = |status: StatusCode| {
            RouterError::Call(ClientError::Api {
                status: status.as_u16(),
                error: weft_api::ApiError::new(weft_api::ErrorCode::NotFound, "x"),
            })
        };
        assert_eq!(
            ProxyError::Router(refused(StatusCode::NOT_FOUND)).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ProxyError::Router(refused(StatusCode::CONFLICT)).status(),
            StatusCode::CONFLICT
        );
        let cidr = crate::cidr::parse("WEFT_CIDR", "bogus").unwrap_err();
        let e = ProxyError::Cidr(cidr);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().starts_with("weft: WEFT_CIDR=\"bogus\": "), "{e}");
    }
}
