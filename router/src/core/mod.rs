//! Sans-IO cores: every protocol decision of the router, as plain data.
//!
//! Nothing in this module opens a socket, starts a thread, reads the clock
//! or draws OS randomness. Each core takes events and the current [`Time`]
//! through `handle_*` methods and hands back what to do through `poll_*`
//! methods; randomness comes from a seed the caller passes in. The I/O
//! shells feed real events in and carry actions out; the simulator
//! (`src/bin/meshsim.rs`) runs a thousand routers in one process on virtual
//! time, deterministically, and replays any run from its seed.

pub mod data;
pub mod endpoints;
pub mod handshake;
pub mod ipam;
pub mod ipam_agent;
pub mod mesh;
pub mod names;
pub mod node;
pub mod nodes;
pub mod noise;
pub mod reconcile;
pub mod time;
pub mod topology;
pub mod wire;

pub use time::Time;
