//! The router's local API: HTTP/1.1 and JSON over a unix socket.
//!
//! `weft status` and the other client commands, the CNI plugin and scripts
//! talk to the running router through it. The routes, bodies and error codes
//! are documented in `docs/api.md`; the JSON types are in [`types`].
//!
//! - [`server`]: the routes, served by [`serve`] on a socket bound by
//!   [`bind_socket`], over a [`Backend`] that the daemon implements. The
//!   server knows nothing of the daemon, so it is tested with a fake.
//! - [`client`]: a typed [`Client`] over the same socket.
//! - [`render`] and [`cli`]: the `weft` commands' text output.
//!
//! The socket is the only access control: it is mode 0660 in a directory
//! of mode 0755, so only root and the socket's group may use the API.

pub mod cli;
pub mod client;
pub mod render;
pub mod server;
pub mod types;

pub use client::{Client, ClientError, ProtocolError};
pub use server::{Backend, BindError, bind_socket, serve};
pub use types::{
    AllocateRequest, AllocateResponse, AllocationView, Allocations, ApiError, ErrorCode, IpamSummary, OwnerView,
    PeerState, PeerStatus, RangeView, ReclaimState, ReclaimView, ReleaseRequest, ReleaseResponse, RingView, Status,
};
