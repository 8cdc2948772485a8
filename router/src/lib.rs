//! The Weft router: the per-host daemon and the `weft` command line.
//!
//! Protocol logic is split from I/O, so every decision can be tested
//! without sockets or a clock:
//!
//! - [`core`]: sans-IO state machines that take events and `now` and return
//!   actions: `topology` and `mesh` (membership and gossip), `handshake`
//!   (control-connection authentication), `wire` (the control codec), `ipam`
//!   (agreeing on the address ring). Still to come: data-plane `session`,
//!   `forward` and `reconcile`.
//! - [`io`]: thin shells that drive the cores: `control` (quinn), `daemon`
//!   (the `weft launch` event loop) and `clock`, the only module allowed to
//!   read the clock (enforced by `clippy.toml`). Still to come: `udp`,
//!   `tun`, `netlink`.
//! - [`api`] and [`metrics`]: the local API on a unix socket and Prometheus
//!   metrics. [`config`], [`identity`], [`secret`] and [`store`]: command
//!   line, keys and durable state.
//! - `sys/` (to come) will be the only module allowed to use `unsafe`.
//!
//! The design and its status are in `docs/control-plane.md`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod core;
pub mod identity;
pub mod io;
pub mod metrics;
pub mod secret;
pub mod store;
