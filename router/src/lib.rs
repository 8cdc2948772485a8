//! The Weft router: the per-host daemon and the `weft` command line.
//!
//! Protocol logic is split from I/O, so every decision can be tested
//! without sockets or a clock:
//!
//! - [`core`]: sans-IO state machines that take events and `now` and return
//!   actions: `topology` and `mesh` (membership and gossip), `handshake`
//!   (control-connection authentication), `wire` (the control codec), `ipam`
//!   (agreeing on the address ring), `data` (data-plane datagrams, Noise IK
//!   sessions, replay window, forwarding decision) and `reconcile` (kernel
//!   routes as a diff).
//! - [`io`]: thin shells that drive the cores: `control` (quinn), `daemon`
//!   (the `weft launch` event loop), `dataplane` (the packet path threads),
//!   `host` (TUN, routes, firewall as the daemon runs them), `tun`,
//!   `netlink`, `sysctl`, `firewall`, and `clock`, the only module allowed
//!   to read the clock (enforced by `clippy.toml`).
//! - [`api`] and [`metrics`]: the local API on a unix socket (its server;
//!   the JSON types and the clients are the `weft-api` crate) and
//!   Prometheus metrics. [`config`], [`identity`], [`secret`] and
//!   [`store`]: command line, keys and durable state. [`install_cni`]:
//!   `weft install-cni`. [`docker_env`]: `weft env`.
//! - `api`, `metrics` and `io` need the cargo feature `daemon` (on by
//!   default, and needed for the `weft` binary); without it the crate is the
//!   sans-IO cores and what they use, without tokio, quinn, rustls, hyper,
//!   axum, nftables or TUN (what the fuzz targets build).
//! - With the cargo feature `proxy` (on by default), `weft launch --proxy`
//!   runs the Docker API proxy of the `weft-proxy` crate inside the router;
//!   its flags are that crate's (`weft_proxy::flags::LaunchFlags`). Without
//!   it, `--proxy` is refused with a message saying how to get the proxy.
//! - With the cargo feature `kube`, `io::kube` feeds Kubernetes Node objects
//!   to the `core::nodes` discovery core and keeps the cluster secret in a
//!   Secret (`weft launch --kube`; docs/kubernetes.md).
//!
//! There is no `unsafe` code: the OS interfaces come through tun-rs,
//! quinn-udp, rtnetlink, socket2 and nix.
//!
//! The design and its status are in `docs/control-plane.md` and
//! `docs/data-plane.md`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "daemon")]
pub mod api;
pub mod config;
pub mod core;
pub mod docker_env;
pub mod identity;
pub mod install_cni;
#[cfg(feature = "daemon")]
pub mod io;
#[cfg(feature = "daemon")]
pub mod metrics;
pub mod secret;
pub mod store;
