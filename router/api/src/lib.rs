//! The Weft router's local API, as its clients and its server share it:
//! HTTP/1.1 with JSON bodies on a unix socket (`/run/weft/weft.sock` by
//! default), documented route by route in `docs/api.md`.
//!
//! - [`types`]: every request and reply body, and [`ApiError`] with its
//!   [`ErrorCode`]: the wire contract. Each code has one HTTP status
//!   ([`ErrorCode::http_status`], the table the router's server applies) and
//!   one retry rule ([`ErrorCode::is_transient`]).
//! - [`error`]: [`ClientError`], why a request failed, the same for both
//!   clients, with [`ClientError::is_transient`]: the one rule for what a
//!   caller retries (see the module for it).
//! - `client` (feature `client`): the async client on tokio and hyper, for
//!   the `weft` command and the Docker proxy.
//! - `blocking` (feature `blocking`): a client on std sockets with one
//!   deadline across all its requests, for the CNI plugins, which live a few
//!   milliseconds and run no runtime.
//!
//! Without features the crate depends on serde and thiserror alone, so the
//! router's sans-IO build (the fuzz targets) carries no runtime through it.
//! The server is the router's (`weft_router::api::server`); turning the
//! router's state into these types is too (`weft_router::api::convert`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
#[cfg(any(feature = "client", feature = "blocking"))]
mod reply;
pub mod types;

#[cfg(all(test, any(feature = "client", feature = "blocking")))]
mod testing;

pub use error::{ClientError, ProtocolError};
pub use types::{ApiError, ErrorCode};

/// The router's API socket unless configured otherwise (`weft launch --api-socket`).
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// Largest reply a client reads, in bytes: room for a ring of tens of
/// thousands of ranges, or the status of a mesh of thousands of routers.
pub const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;
