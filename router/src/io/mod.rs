//! I/O shells: the code that owns sockets and tasks and drives the sans-IO
//! cores of [`crate::core`] with real events.
//!
//! - [`clock`]: the only place that reads the clock.
//! - [`control`]: the QUIC endpoint of authenticated control connections.
//! - [`daemon`]: `weft launch`: the task that drives the mesh core over the
//!   control endpoint, and serves the local API and metrics.

pub mod clock;
pub mod control;
pub mod daemon;
pub mod firewall;
pub mod netlink;
pub mod sysctl;
pub mod tun;
