//! Why a request to the router failed: one error type for both clients,
//! and the one rule for which failures a caller should retry.
//!
//! # Retrying
//!
//! [`ClientError::is_transient`] says whether asking again later may give
//! another answer:
//!
//! - no router answers on the socket ([`ClientError::NotRunning`]), or it
//!   did not answer in time ([`ClientError::Timeout`]): yes, it may be
//!   starting or busy;
//! - the router answered with an error: as its code says
//!   ([`ErrorCode::is_transient`](crate::types::ErrorCode::is_transient)):
//!   yes for `no_ring`, `unavailable` and `timeout` (503 and 504), no for
//!   everything else, `internal` included; a code this crate does not know
//!   is judged by its HTTP status (503 and 504 are transient);
//! - the socket cannot be connected to for another reason (permissions):
//!   no, except a full listen backlog, which is a busy router;
//! - the reply breaks the API's contract ([`ClientError::Protocol`]): no.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::types::ApiError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No router listens on the socket: the file is missing, or nothing accepts on it.
    #[error("no weft router is running (no API socket at {}); start one with `weft launch`", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket exists but could not be connected to (for example, permissions).
    #[error("cannot connect to the weft router's API socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No complete reply within the client's time limit.
    #[error("the weft router at {} did not answer within {}", path.display(), Span(*after))]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The time limit.
        after: Duration,
    },
    /// The router refused the request or failed it; the message says why.
    #[error("{error}")]
    Api {
        /// The reply's HTTP status.
        status: u16,
        /// The reply's body.
        error: ApiError,
    },
    /// The reply was not what the API promises, or the connection broke mid-request.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl ClientError {
    /// Whether asking again later may succeed; see the [module](self) for the rule.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotRunning { .. } | Self::Timeout { .. } => true,
            // A unix socket whose listen backlog is full refuses a
            // non-blocking connect with EAGAIN: the router is there, and busy.
            Self::Connect { source, .. } => source.kind() == io::ErrorKind::WouldBlock,
            Self::Api { status, error } => error.code.is_transient(*status),
            Self::Protocol(_) => false,
        }
    }
}

/// The router's reply broke the API's contract, or the connection broke mid-request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The HTTP exchange failed: the connection closed or broke, or the
    /// reply could not be read as HTTP/1.1.
    #[error("HTTP exchange with the weft router failed: {0}")]
    Http(#[source] Box<dyn StdError + Send + Sync>),
    /// The reply is not well-formed HTTP/1.1; the text says where.
    #[error("the weft router's reply is not valid HTTP/1.1: {0}")]
    Malformed(String),
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The reply is larger than a client reads.
    #[error("the weft router's reply is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit, [`MAX_REPLY_BYTES`](crate::MAX_REPLY_BYTES).
        limit: usize,
    },
    /// A success reply that is not the JSON the route promises.
    #[error("the weft router's reply is not the expected JSON: {0}")]
    Decode(#[source] serde_json::Error),
    /// An error reply without an [`ApiError`] body.
    #[error("the weft router answered HTTP {status} without an error body: {body:?}")]
    UnexpectedReply {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// A time limit as people write it: whole seconds as `35 s`, anything else in milliseconds.
struct Span(Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ErrorCode;

    fn api(status: u16, code: &str) -> ClientError {
        ClientError::Api {
            status,
            error: ApiError::new(ErrorCode::from_wire(code), "x"),
        }
    }

    #[test]
    fn the_retry_rule() {
        let path = || PathBuf::from("/run/weft/weft.sock");
        assert!(ClientError::NotRunning { path: path() }.is_transient());
        assert!(
            ClientError::Timeout {
                path: path(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        let connect = |kind| ClientError::Connect {
            path: path(),
            source: io::Error::from(kind),
        };
        assert!(!connect(io::ErrorKind::PermissionDenied).is_transient());
        assert!(connect(io::ErrorKind::WouldBlock).is_transient(), "a full backlog");
        assert!(api(503, "no_ring").is_transient());
        assert!(api(503, "unavailable").is_transient());
        assert!(api(504, "timeout").is_transient());
        assert!(!api(500, "internal").is_transient(), "a bug is not retried");
        assert!(!api(409, "exhausted").is_transient());
        assert!(!api(400, "invalid_request").is_transient());
        assert!(api(503, "quota").is_transient(), "an unknown code by its status");
        assert!(!api(500, "quota").is_transient());
        assert!(!ClientError::from(ProtocolError::Malformed("x".into())).is_transient());
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = ClientError::NotRunning {
            path: "/run/weft/weft.sock".into(),
        };
        assert_eq!(
            e.to_string(),
            "no weft router is running (no API socket at /run/weft/weft.sock); start one with `weft launch`"
        );
        let slow = |after| {
            ClientError::Timeout {
                path: "/s".into(),
                after,
            }
            .to_string()
        };
        assert_eq!(
            slow(Duration::from_secs(35)),
            "the weft router at /s did not answer within 35 s"
        );
        assert_eq!(
            slow(Duration::from_millis(300)),
            "the weft router at /s did not answer within 300 ms"
        );
    }
}
