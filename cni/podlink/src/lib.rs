//! One pod's interface on a Weft host: the veth pair, the pod's addresses
//! and routes, its gateway's neighbour entry, and the host's side of it,
//! IPv4 and IPv6. The CNI plugin (`weft-net`) and the Docker proxy
//! (`weft-proxy`) both wire pods through this crate.
//!
//! # Layers
//!
//! - [`reconcile`] is pure: a [`Spec`] says what the interface should look
//!   like, [`reconcile::desired`] turns it into the state of both ends,
//!   [`reconcile::differences`] compares that with the [`reconcile::Actual`]
//!   state a dump found, and [`reconcile::diff`] gives the [`reconcile::Op`]s
//!   that take the kernel there. No netlink types, no I/O; unit-tested.
//! - The netlink shell reads the actual state and applies the ops: the
//!   async [`attach`], [`check`], [`is_attached`] and [`detach`], for the
//!   proxy's multi-thread runtime, and [`block_on`] to call them from
//!   synchronous code (the CNI plugin) on a current-thread runtime.
//! - [`cni_host_veth`] and [`docker_host_veth`] name the host end, exactly as
//!   the first versions did, so DEL, GC and detach find older veths.
//!
//! # How a pod is wired
//!
//! A veth pair is created in the caller's namespace (the host) with its
//! peer born directly in the pod's namespace under its final name; nothing
//! is renamed, and nothing with the pod's interface name is ever visible in
//! the host. The host end has no address.
//!
//! - The pod's gateway is link-local, the same on every host and every pod
//!   ([`GATEWAY_V4`] 169.254.1.1, [`GATEWAY_V6`] fe80::1), and the pod
//!   resolves it through a permanent neighbour entry for the host veth's
//!   MAC, so it needs no ARP or neighbour discovery answer at all. No host
//!   address is spent per pod (as Calico does).
//! - The pod's routes go via that gateway, in one of two forms
//!   ([`Gateway`]): the CNI plugin's (`169.254.1.1 dev eth0 scope link` and
//!   `default via 169.254.1.1 dev eth0`, the address a `/32`) or the
//!   proxy's (`10.32.0.0/12 via 169.254.1.1 dev ethwe onlink`, the
//!   addresses keeping the pod range's prefix length with
//!   `IFA_F_NOPREFIXROUTE`, the container's own default route left alone).
//!   IPv6 routes go via fe80::1, which needs no route of its own.
//! - The host has a route per pod address to the host veth (`/32` or
//!   `/128`, scope link, protocol static), and `proxy_arp` on the host veth
//!   when the pod has IPv4, so a pod whose neighbour table was flushed still
//!   gets an answer for its IPv4 gateway. The router's pod-range route sends
//!   the rest of the range to its TUN device, so traffic between pods on one
//!   host never enters the router.
//! - IPv6 addresses are added with `IFA_F_NODAD`: IPAM already made them
//!   unique, and duplicate address detection would hold the pod's first
//!   packets for a second or so.
//!
//! # Namespaces, threads and concurrency
//!
//! The pod's end is configured through a netlink socket opened inside the
//! pod's namespace by a short-lived std thread that entered it with
//! `setns` (a socket keeps the namespace it was opened in). No tokio worker
//! thread ever changes namespace. Calls for different pods are independent:
//! each uses its own sockets and touches only its own veth, routes and
//! sysctl. Calls for the same pod must be serialised by the caller.
//!
//! # Clean-up
//!
//! [`attach`] either leaves the interface fully wired or not at all: a
//! failure after the pair was created deletes it (deleting the host end
//! takes the pod's end with it), and so does dropping the future midway.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod names;
mod netlink;
pub mod reconcile;

pub use error::LinkError;
pub use names::{cni_host_veth, docker_host_veth, is_host_veth};
pub use netlink::{Attached, Outcome, PodAddress, attach, block_on, check, detach, is_attached, pod_addresses};
pub use reconcile::{Difference, GATEWAY_V4, GATEWAY_V6, Gateway, MacAddr, Occupied, Spec, default_routes};
