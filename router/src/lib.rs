//! The Weft router: the per-host daemon and the `weft` command line.
//!
//! Nothing is implemented yet. The planned module layout splits protocol
//! logic from I/O, so every decision can be tested without sockets or a clock:
//!
//! - `core/`: sans-IO state machines that take events and `now` and return
//!   actions: `gossip` (membership and topology), `handshake` and `session`
//!   (Noise tunnels), `forward` (destination to next hop) and `reconcile`
//!   (desired versus kernel state).
//! - `io/`: thin shells that drive the cores: `control` (quinn), `udp`,
//!   `tun`, `netlink` and `clock`, the only module allowed to read the clock
//!   (enforced by `clippy.toml`).
//! - `sys/`: the only module allowed to use `unsafe` (ioctls, fd set-up).

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
