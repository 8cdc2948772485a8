//! Why wiring, checking or removing a pod's interface failed.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::reconcile::{Difference, Route};

/// Why wiring, checking or removing a pod's interface failed.
///
/// Each message names the operation and the links, addresses and namespace
/// involved, and ends with the kernel's reason; it reads well after
/// "cannot attach container ID: ". [`LinkError::OpenNetns`] (the pod is
/// gone, or the path is wrong) and [`LinkError::Mismatch`] (a check found a
/// difference) are the two a caller usually tells apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The pod's network namespace could not be opened (the pod has
    /// probably exited, or the path is wrong).
    #[error("cannot open the network namespace {}: {source}", netns.display())]
    OpenNetns {
        /// The namespace's path.
        netns: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// [`check`](crate::check) found the pod's interface different from
    /// what was asked for; the first difference.
    #[error("{0}")]
    Mismatch(Difference),
    /// The runtime for [`block_on`](crate::block_on) could not be started.
    #[error("cannot start a tokio runtime for netlink: {0}")]
    Runtime(#[source] io::Error),
    /// A netlink socket could not be opened in the host or the pod.
    #[error("cannot open a netlink socket in {}: {source}", place(netns.as_deref()))]
    Socket {
        /// The pod's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// Why.
        source: io::Error,
    },
    /// Looking up or listing something about a link failed.
    #[error("cannot list the {what} of {name} in {}: {source}", place(netns.as_deref()))]
    Query {
        /// What was being read: "link", "addresses", "routes", "neighbours".
        what: &'static str,
        /// The link.
        name: String,
        /// The pod's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// The kernel's reason.
        source: io::Error,
    },
    /// A link (left over from an earlier attempt, or being detached) could
    /// not be deleted.
    #[error("cannot delete {name} in {}: {source}", place(netns.as_deref()))]
    Delete {
        /// The link.
        name: String,
        /// The pod's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The veth pair could not be created.
    #[error(
        "cannot create the veth pair {host_veth} (host) and {ifname} (in {}): {source}",
        netns.display()
    )]
    CreateVeth {
        /// The host end.
        host_veth: String,
        /// The pod's end.
        ifname: String,
        /// The pod's namespace, where the peer was to be born.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The pod already has an interface of that name that is not Weft's, and
    /// the spec says to leave it alone ([`Occupied::Fail`](crate::Occupied::Fail)).
    #[error(
        "cannot create the veth pair {host_veth} (host) and {ifname} (in {}): {ifname} already exists there \
         and is not Weft's; remove it or use another interface name",
        netns.display()
    )]
    Occupied {
        /// The host end.
        host_veth: String,
        /// The pod's interface name.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
    },
    /// A link that had just been created could not be found.
    #[error("{name} was created but is missing from {}", place(netns.as_deref()))]
    Vanished {
        /// The link.
        name: String,
        /// The pod's namespace, or `None` for the host.
        netns: Option<PathBuf>,
    },
    /// `proxy_arp` could not be turned on for the host veth.
    #[error("cannot turn on proxy ARP for {host_veth}: {source}")]
    ProxyArp {
        /// The host end.
        host_veth: String,
        /// Why the sysctl could not be written, with its path.
        source: io::Error,
    },
    /// A link could not be set up.
    #[error("cannot set {name} up in {}: {source}", place(netns.as_deref()))]
    LinkUp {
        /// The link.
        name: String,
        /// The pod's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The host's route to one of the pod's addresses could not be added.
    #[error("cannot add the route {dst} dev {host_veth} in the host: {source}")]
    HostRoute {
        /// The pod's address as a `/32` or `/128`.
        dst: IpNet,
        /// The host end.
        host_veth: String,
        /// The kernel's reason.
        source: io::Error,
    },
    /// An address could not be added to the pod's interface.
    #[error("cannot add the address {addr} to {ifname} in {}: {source}", netns.display())]
    Address {
        /// The address and its prefix length.
        addr: IpNet,
        /// The pod's interface.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The pod's neighbour entry for its gateway could not be added.
    #[error("cannot add the neighbour {gateway} lladdr {mac} on {ifname} in {}: {source}", netns.display())]
    Neighbour {
        /// The gateway.
        gateway: IpAddr,
        /// The host veth's MAC.
        mac: String,
        /// The pod's interface.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
    /// A route could not be added in the pod.
    #[error("cannot add the route {} in {}: {source}", route.on(ifname), netns.display())]
    Route {
        /// The route.
        route: Route,
        /// The pod's interface.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
}

/// Where a step ran, for messages.
fn place(netns: Option<&Path>) -> String {
    match netns {
        Some(path) => format!("the network namespace {}", path.display()),
        None => "the host".to_owned(),
    }
}
