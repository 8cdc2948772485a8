//! I/O shells: the code that owns sockets and tasks and drives the sans-IO
//! cores of [`crate::core`] with real events.
//!
//! - [`clock`]: the only place that reads the clock.
//! - [`control`]: the QUIC endpoint of authenticated control connections.
//! - [`daemon`]: `weft launch`: the task that drives the mesh core over the
//!   control endpoint, and serves the local API and metrics.
//! - [`interfaces`]: the host's interface addresses (what to advertise is
//!   the mesh core's choice).
//! - `kube` (cargo feature `kube`): Node discovery and the cluster Secret
//!   from the Kubernetes API.
//!
//! The kernel plumbing of the data plane:
//!
//! - [`tun`]: the multi-queue TUN device, with virtio-net offloads.
//! - [`netlink`]: applies [`crate::core::reconcile`]'s diff of routes and
//!   addresses, and finds or removes the TUN link.
//! - [`sysctl`]: IPv4 forwarding.
//! - [`firewall`]: masquerading, and getting pod traffic past a host
//!   firewall whose forward policy drops (nftables and iptables).
//!
//! Each acts on the network namespace of the thread that calls it (a
//! netlink socket keeps the namespace it was opened in).

pub mod clock;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod firewall;
pub mod host;
pub mod interfaces;
#[cfg(feature = "kube")]
pub mod kube;
pub mod netlink;
pub mod sysctl;
pub mod tun;
