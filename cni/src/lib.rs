//! CNI plugins for Weft: `weft-net` (the main plugin) and `weft-ipam` (the
//! IPAM half alone, for the reference `bridge` or `ptp` plugins).
//!
//! Both speak CNI spec 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0 (ADD, DEL, CHECK,
//! VERSION, STATUS, GC) and get addresses from the local router's API
//! (`docs/api.md`). A plugin is a short-lived process started for every pod
//! event, so this crate is small: `weft-api`'s blocking client over the
//! unix socket ([`api`]), the pod's interface through `weft-podlink` on a
//! current-thread runtime ([`link`]), and serde for the spec's JSON
//! ([`config`], [`result`], [`error`]).
//!
//! The feature `plugin` (on by default) holds the plugins and what only they
//! need: [`link`] and [`plugin`], the binaries, `weft-podlink` (tokio,
//! rtnetlink, nix) and the blocking client. Without it the crate is the
//! spec's JSON and the API mapping alone, which the fuzz crate decodes.
//!
//! # Decisions
//!
//! - **Allocation ids** are `cni:<network name>:<CNI_CONTAINERID>` with
//!   `CNI_IFNAME` as the interface, so an address belongs to one network's
//!   attachment and GC of one network never releases another's (or the
//!   router's own `weft:host`). Network names follow the spec's rule, which
//!   keeps `:` out of them.
//! - **Addressing** (`weft-net`): a `/32` on the pod's interface, a default
//!   route via the link-local gateway 169.254.1.1 on-link through the veth
//!   (as Calico does), a permanent neighbour entry for the gateway, and
//!   `proxy_arp` on the host veth; the host routes the `/32` to the veth. See
//!   [`link`], and `weft_podlink`, which wires it (and the Docker proxy's
//!   containers). CHECK compares the pod with that desired state and names
//!   the first difference.
//! - **MTU**: the router's data-plane MTU (`GET /v1/status`); without a data
//!   plane, the config's `mtu`, else [`plugin::DEFAULT_MTU`].
//! - **Timeouts**: everything asked of the router ends within
//!   [`plugin::ROUTER_DEADLINE`] (8 s), so a router that does not answer
//!   fails ADD with code 11 inside 10 s. ADD reads the router's status first
//!   and fails at once with code 11 when the ring does not exist yet (the
//!   router's allocate would wait 30 s for it).
//! - **Rollback**: an ADD that fails after allocating or creating the veth
//!   deletes the veth and releases the address (unless the address was
//!   already this container's: a repeated ADD leaves it alone).
//! - **DEL with the router down**: interfaces are removed, and DEL fails
//!   with code 11 saying the address was not released. Runtimes retry a
//!   failed DEL, so the address is released once the router is back instead
//!   of leaking silently; GC cleans up whatever a runtime gave up on. A DEL
//!   whose container was never attached, or whose interfaces are gone,
//!   succeeds.
//! - **Errors** are the spec's JSON on stdout with the spec's codes; this
//!   crate's own codes (100 and up) are in [`error::code`]. STATUS uses the
//!   spec's 50 for "cannot serve ADD".
//! - **Logs**: one line per request and one per outcome, with the container
//!   id, in `logFile` (default `/var/log/weft/cni.log`); a log that cannot be
//!   written is skipped. A request whose config cannot be parsed is not
//!   logged (the config names the log); its error goes to stdout as always.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod error;
#[cfg(feature = "plugin")]
pub mod link;
pub mod log;
#[cfg(feature = "plugin")]
pub mod plugin;
pub mod result;
