//! The data plane's cores: how pod packets cross between routers.
//!
//! - [`wire`]: the datagram formats on the data-plane port.
//! - [`session`]: Noise IK handshakes, keys and timers per peer (sans-IO).
//! - [`keypair`]: one session's transport keys, used by the packet path on
//!   any thread without allocating.
//! - [`replay`]: the sliding replay window.
//! - [`cookie`]: `mac1`, cookies and rate limits that keep handshakes cheap
//!   to refuse.
//! - [`forward`]: destination address to owning router to next hop, and the
//!   anti-spoofing check on the way in.
//!
//! The design is written down in `docs/data-plane.md`.

pub mod cookie;
pub mod forward;
pub mod keypair;
pub mod replay;
pub mod session;
pub mod wire;
