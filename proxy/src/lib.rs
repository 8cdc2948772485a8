//! Docker API proxy for Weft: `docker run` containers join the mesh on plain
//! Docker hosts.
//!
//! The proxy listens where the docker CLI is pointed (a unix socket, and
//! optionally loopback TCP) and forwards every Docker Engine API call to the
//! real daemon, byte streams and hijacked attach/exec connections included.
//! It changes exactly one thing on the way: the body of `containers/create`,
//! so that a container that is to join the mesh starts under `weft-wait`, a
//! tiny static program bind-mounted into it that holds the container's first
//! instruction until its mesh interface is ready. When the container starts,
//! the proxy takes addresses from the local router and wires the interface
//! `ethwe` into the container's network namespace; when the container is
//! destroyed, it gives the addresses back.
//!
//! Modules, pure decisions first:
//!
//! - [`cidr`]: `WEFT_CIDR` / `WEAVE_CIDR` in Weave's semantics.
//! - [`create`]: what to do with a create request, and the rewritten body.
//! - [`path`]: which Docker API call a request is, for any API version.
//! - [`link`]: the container's `ethwe` and the host's side of it, as the
//!   proxy asks `weft-podlink` (shared with the CNI plugin) to wire them.
//! - [`wait`]: the embedded `weft-wait` binary and where it is installed.
//! - [`docker`] and [`router`]: clients of the Docker daemon and of the
//!   router's local API.
//! - [`attach`]: attach and release, serialised per container, and the
//!   reconciliation after a restart of the proxy, the router or the daemon.
//! - [`flags`]: the command-line flags, of `weft-proxy` and of `weft launch --proxy`.
//! - [`server`]: the listeners, the forwarding, and the event watch.
//! - [`error`]: every failure, and the one place it becomes a Docker API
//!   error reply.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod cidr;
pub mod create;
pub mod docker;
pub mod error;
pub mod flags;
pub mod link;
pub mod path;
pub mod router;
pub mod server;
pub mod wait;

pub use error::{ProxyError, StartError};
pub use server::{Config, Proxy};
