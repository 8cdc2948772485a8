//! I/O shells: the code that owns sockets and tasks and drives the sans-IO
//! cores of [`crate::core`] with real events.
//!
//! - [`control`]: the QUIC endpoint of authenticated control connections.

pub mod control;
