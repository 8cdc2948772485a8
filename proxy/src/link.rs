//! The container's mesh interface `ethwe` and the host's side of it.
//!
//! [`attach`] wires a running container into the mesh, [`is_attached`] tells
//! whether that has been done, and [`detach`] undoes it. They are async and
//! run on the caller's tokio runtime over rtnetlink.
//!
//! # How a container is wired
//!
//! A veth pair is created in the host (the proxy's own namespace) with its
//! peer born directly in the container's namespace as [`IFNAME`]; nothing is
//! renamed and nothing with the container's interface name is ever visible in
//! the host. The host end is named after the container ([`host_veth_name`]),
//! so [`detach`] finds it again without any saved state.
//!
//! - The container's addresses keep their prefix length (`10.32.0.5/12`, so
//!   programs see the pod range's netmask) but are added with
//!   `IFA_F_NOPREFIXROUTE`: the kernel adds no connected route for them.
//!   Instead the pod range is routed via the link-local gateway [`GATEWAY`]
//!   on-link (`pod_range via 169.254.1.1 dev ethwe onlink`), and a permanent
//!   neighbour entry resolves the gateway to the host veth's MAC, so the
//!   container needs no ARP answer. The container's default route (Docker's)
//!   is left alone: only mesh traffic takes `ethwe`.
//! - The host end has no address. It has `proxy_arp` on, so a container whose
//!   neighbour table was flushed still gets an answer for the gateway, and a
//!   `/32` route (`scope link`, protocol static as the CNI plugin's) for each
//!   of the container's addresses. The router's pod-range route sends the rest
//!   of the range to its TUN device.
//!
//! The pod-range route in the container is added last, when everything else
//! already works: `weft-wait` (see [`wait`](crate::wait)) releases the
//! container's first instruction as soon as a route on `ethwe` appears.
//!
//! # Namespaces and threads
//!
//! The container side is configured through a second netlink socket opened
//! inside the container's namespace by a short-lived std thread that entered
//! it with `setns` (a socket keeps the namespace it was opened in). No tokio
//! worker thread ever changes namespace.
//!
//! # Concurrency
//!
//! Calls for different containers are independent: each uses its own netlink
//! sockets and touches only its own veth, routes and sysctl. Calls for the
//! same container must be serialised by the caller.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use nix::libc;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

/// The name of the mesh interface inside the container.
pub const IFNAME: &str = "ethwe";

/// The container's gateway to the pod range: link-local, on the host side of
/// every container's veth (which has no address of its own).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The host veth's name for a container: `weftd` and 10 hex digits of the
/// FNV-1a 64 hash of the container id, 15 bytes (the kernel's limit).
/// Deterministic, so [`detach`] finds the veth from the id alone.
pub fn host_veth_name(container_id: &str) -> String {
    // FNV-1a 64: stable across Rust versions, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("weftd{:010x}", hash >> 24)
}

/// What to wire: one container's interface and the host's side of it.
#[derive(Debug, Clone, Copy)]
pub struct Wiring<'a> {
    /// The container's network namespace, e.g. `/proc/PID/ns/net`.
    pub netns: &'a Path,
    /// The host end of the veth, normally [`host_veth_name`] of the container.
    pub host_veth: &'a str,
    /// The container's addresses, each with its own prefix length (e.g.
    /// `10.32.0.5/12`).
    pub addrs: &'a [Ipv4Net],
    /// The mesh's pod range, routed via [`GATEWAY`] in the container.
    pub pod_range: Ipv4Net,
    /// The MTU of both ends of the veth.
    pub mtu: u32,
}

/// What [`attach`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The interface was created and wired.
    Created,
    /// The container was already wired with these addresses and pod range;
    /// nothing was changed.
    Existing,
}

/// Why wiring, checking or removing a container's interface failed.
///
/// Each message names the operation and the links, addresses and namespace
/// involved, and ends with the kernel's reason; it reads well after
/// "cannot attach container ID: ".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The container's network namespace could not be opened (the container
    /// has probably exited).
    #[error("cannot open the network namespace {}: {source}", netns.display())]
    OpenNetns {
        /// The namespace's path.
        netns: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A netlink socket could not be opened in the host or the container.
    #[error("cannot open a netlink socket in {}: {source}", place(netns.as_deref()))]
    Socket {
        /// The container's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// Why.
        source: io::Error,
    },
    /// Looking up or listing something about a link failed.
    #[error("cannot list the {what} of {name} in {}: {source}", place(netns.as_deref()))]
    Query {
        /// What was being read: "link", "addresses", "routes".
        what: &'static str,
        /// The link.
        name: String,
        /// The container's namespace, or `None` for the host.
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
        /// The container's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The veth pair could not be created.
    #[error(
        "cannot create the veth pair {host_veth} (host) and {IFNAME} (in {}): {source}",
        netns.display()
    )]
    CreateVeth {
        /// The host end.
        host_veth: String,
        /// The container's namespace, where the peer was to be born.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
    /// A link that had just been created could not be found.
    #[error("{name} was created but is missing from {}", place(netns.as_deref()))]
    Vanished {
        /// The link.
        name: String,
        /// The container's namespace, or `None` for the host.
        netns: Option<PathBuf>,
    },
    /// `proxy_arp` could not be turned on for the host veth.
    #[error("cannot turn on proxy ARP for {host_veth}: {source}")]
    ProxyArp {
        /// The host end.
        host_veth: String,
        /// Why the sysctl could not be written.
        source: io::Error,
    },
    /// A link could not be set up.
    #[error("cannot set {name} up in {}: {source}", place(netns.as_deref()))]
    LinkUp {
        /// The link.
        name: String,
        /// The container's namespace, or `None` for the host.
        netns: Option<PathBuf>,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The host's route to one of the container's addresses could not be added.
    #[error("cannot add the route {addr}/32 dev {host_veth} in the host: {source}")]
    HostRoute {
        /// The container's address.
        addr: Ipv4Addr,
        /// The host end.
        host_veth: String,
        /// The kernel's reason.
        source: io::Error,
    },
    /// An address could not be added to the container's interface.
    #[error("cannot add the address {addr} to {IFNAME} in {}: {source}", netns.display())]
    Address {
        /// The address and its prefix length.
        addr: Ipv4Net,
        /// The container's namespace.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The container's neighbour entry for the gateway could not be added.
    #[error("cannot add the neighbour {GATEWAY} lladdr {mac} on {IFNAME} in {}: {source}", netns.display())]
    Neighbour {
        /// The host veth's MAC.
        mac: String,
        /// The container's namespace.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
    /// The container's route to the pod range could not be added.
    #[error("cannot add the route {pod_range} via {GATEWAY} dev {IFNAME} onlink in {}: {source}", netns.display())]
    Route {
        /// The pod range.
        pod_range: Ipv4Net,
        /// The container's namespace.
        netns: PathBuf,
        /// The kernel's reason.
        source: io::Error,
    },
}

/// Wires the container's [`IFNAME`] as the module doc describes, in that
/// order, the pod-range route last.
///
/// A host veth named `w.host_veth` that is left over is deleted first, and
/// so is an [`IFNAME`] in the container, unless the container is already
/// wired: if the host veth exists and [`IFNAME`] carries every address in
/// `w.addrs` and the route to `w.pod_range`, nothing is changed and the
/// result is [`Attach::Existing`].
///
/// If a step fails after the veth pair was created, the pair is deleted
/// before the error is returned (and also if this future is dropped midway),
/// so nothing half-wired is left behind.
///
/// # Errors
/// The [`LinkError`] of the first step that failed.
pub async fn attach(w: &Wiring<'_>) -> Result<Attach, LinkError> {
    // Kept open until the veth exists: its fd is how the peer is placed.
    let netns = open_netns(w.netns)?;
    let host = connect()?;
    let container = connect_in(&netns, w.netns)?;

    let old_host = link_by_name(&host, w.host_veth, None).await?;
    if let Some(ethwe) = link_by_name(&container, IFNAME, Some(w.netns)).await? {
        if old_host.is_some() && is_wired(&container, &ethwe, w).await? {
            return Ok(Attach::Existing);
        }
        // Partly wired (a crash midway) or not ours: start again.
        delete(&container, IFNAME, Some(w.netns)).await?;
    }
    if old_host.is_some() {
        // Stale; deleting its peer above may already have removed it.
        delete(&host, w.host_veth, None).await?;
    }

    let peer = LinkUnspec::new_with_name(IFNAME)
        .mtu(w.mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(w.host_veth.to_owned())
        .mtu(w.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    // Armed before the request: if this future is dropped while the kernel
    // creates the pair, the pair is removed all the same.
    let mut undo = Undo::new(&host, w.host_veth);
    if let Err(e) = host.link().add(veth).execute().await {
        undo.disarm();
        return Err(LinkError::CreateVeth {
            host_veth: w.host_veth.to_owned(),
            netns: w.netns.to_owned(),
            source: cause(e),
        });
    }
    let wired = wire(&host, &container, w).await;
    if wired.is_err() {
        // Deleting the host end deletes the container's end too.
        if let Err(cleanup) = delete(&host, w.host_veth, None).await {
            tracing::warn!(host_veth = w.host_veth, cause = %cleanup, "cannot remove a half-wired veth");
        }
    }
    undo.disarm();
    wired.map(|()| Attach::Created)
}

/// Whether the namespace `netns` has [`IFNAME`] with its route via
/// [`GATEWAY`], the last thing [`attach`] adds.
///
/// # Errors
/// If the namespace cannot be opened or netlink cannot be read there.
pub async fn is_attached(netns: &Path) -> Result<bool, LinkError> {
    let ns = open_netns(netns)?;
    let container = connect_in(&ns, netns)?;
    let Some(ethwe) = link_by_name(&container, IFNAME, Some(netns)).await? else {
        return Ok(false);
    };
    let index = ethwe.header.index;
    let routes = main_routes(&container, Some(netns)).await?;
    Ok(routes
        .iter()
        .any(|r| route_oif(r) == Some(index) && route_gateway(r) == Some(GATEWAY)))
}

/// Deletes the host veth `host_veth`, which takes the container's end with
/// it. Returns whether it existed.
///
/// # Errors
/// If netlink fails for a reason other than the link being absent.
pub async fn detach(host_veth: &str) -> Result<bool, LinkError> {
    let host = connect()?;
    delete(&host, host_veth, None).await
}

/// Configures a freshly created pair: host side, then container side, the
/// pod-range route last.
async fn wire(host: &Handle, container: &Handle, w: &Wiring<'_>) -> Result<(), LinkError> {
    let host_link = link_by_name(host, w.host_veth, None)
        .await?
        .ok_or_else(|| LinkError::Vanished {
            name: w.host_veth.to_owned(),
            netns: None,
        })?;
    let host_index = host_link.header.index;
    let host_mac = mac(&host_link).ok_or_else(|| LinkError::Vanished {
        name: w.host_veth.to_owned(),
        netns: None,
    })?;

    let proxy_arp = format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", w.host_veth);
    tokio::fs::write(&proxy_arp, "1")
        .await
        .map_err(|e| LinkError::ProxyArp {
            host_veth: w.host_veth.to_owned(),
            source: io::Error::new(e.kind(), format!("{proxy_arp}: {e}")),
        })?;
    set_up(host, host_index, w.host_veth, None).await?;
    for addr in w.addrs {
        let to_container = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr.addr(), 32)
            .output_interface(host_index)
            .scope(RouteScope::Link)
            .build();
        host.route()
            .add(to_container)
            .replace()
            .execute()
            .await
            .map_err(|e| LinkError::HostRoute {
                addr: addr.addr(),
                host_veth: w.host_veth.to_owned(),
                source: cause(e),
            })?;
    }

    let ethwe = link_by_name(container, IFNAME, Some(w.netns))
        .await?
        .ok_or_else(|| LinkError::Vanished {
            name: IFNAME.to_owned(),
            netns: Some(w.netns.to_owned()),
        })?;
    let index = ethwe.header.index;
    for addr in w.addrs {
        let mut add = container
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len());
        let attributes = &mut add.message_mut().attributes;
        // No connected route for the prefix: the pod range is routed via the gateway.
        attributes.push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        // rtnetlink adds a broadcast address; `ip addr add` does not, and no
        // broadcast is ever sent on this point-to-point link.
        attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        add.execute().await.map_err(|e| LinkError::Address {
            addr: *addr,
            netns: w.netns.to_owned(),
            source: cause(e),
        })?;
    }
    set_up(container, index, IFNAME, Some(w.netns)).await?;
    container
        .neighbours()
        .add(index, IpAddr::V4(GATEWAY))
        .link_layer_address(&host_mac)
        .replace()
        .execute()
        .await
        .map_err(|e| LinkError::Neighbour {
            mac: format_mac(&host_mac),
            netns: w.netns.to_owned(),
            source: cause(e),
        })?;
    // Last: weft-wait lets the container's program run as soon as this exists.
    let pod_range = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(w.pod_range.network(), w.pod_range.prefix_len())
        .gateway(GATEWAY)
        .output_interface(index)
        .onlink()
        .build();
    container
        .route()
        .add(pod_range)
        .replace()
        .execute()
        .await
        .map_err(|e| LinkError::Route {
            pod_range: w.pod_range,
            netns: w.netns.to_owned(),
            source: cause(e),
        })
}

/// Whether `ethwe` carries every address of `w` (with its prefix length) and
/// the route to the pod range via [`GATEWAY`].
async fn is_wired(container: &Handle, ethwe: &LinkMessage, w: &Wiring<'_>) -> Result<bool, LinkError> {
    let index = ethwe.header.index;
    let query = |what| {
        move |e| LinkError::Query {
            what,
            name: IFNAME.to_owned(),
            netns: Some(w.netns.to_owned()),
            source: cause(e),
        }
    };
    let mut present = Vec::new();
    let mut dump = container.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = dump.try_next().await.map_err(query("addresses"))? {
        // Filtered by the kernel only if it does strict checking: filter again.
        if msg.header.index != index {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr
                && let Ok(net) = Ipv4Net::new(*ip, msg.header.prefix_len)
            {
                present.push(net);
            }
        }
    }
    if !w.addrs.iter().all(|a| present.contains(a)) {
        return Ok(false);
    }
    let routes = main_routes(container, Some(w.netns)).await?;
    Ok(routes.iter().any(|r| {
        route_oif(r) == Some(index)
            && route_gateway(r) == Some(GATEWAY)
            && route_dst(r).unwrap_or(Ipv4Addr::UNSPECIFIED) == w.pod_range.network()
            && r.header.destination_prefix_length == w.pod_range.prefix_len()
    }))
}

/// Deletes the veth `host_veth` in the host unless [`disarm`](Self::disarm)ed
/// first: a future of [`attach`] dropped midway leaves nothing behind.
struct Undo {
    host: Option<(Handle, String)>,
}

impl Undo {
    fn new(host: &Handle, host_veth: &str) -> Self {
        Self {
            host: Some((host.clone(), host_veth.to_owned())),
        }
    }

    fn disarm(&mut self) {
        self.host = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some((host, name)) = self.host.take() else {
            return;
        };
        // Without a runtime (it is shutting down) the veth stays; the next
        // attach of this container deletes it as stale.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = delete(&host, &name, None).await {
                    tracing::warn!(host_veth = name, cause = %e, "cannot remove a half-wired veth");
                }
            });
        }
    }
}

fn open_netns(path: &Path) -> Result<File, LinkError> {
    File::open(path).map_err(|source| LinkError::OpenNetns {
        netns: path.to_owned(),
        source,
    })
}

/// A netlink socket in the current (host) namespace.
fn connect() -> Result<Handle, LinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| LinkError::Socket { netns: None, source })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink socket in the namespace `netns` (opened from `path`), opened on a
/// throwaway std thread that entered it: never on a tokio worker.
fn connect_in(netns: &File, path: &Path) -> Result<Handle, LinkError> {
    let socket_error = |source| LinkError::Socket {
        netns: Some(path.to_owned()),
        source,
    };
    let runtime = tokio::runtime::Handle::current();
    let ns = netns.try_clone().map_err(socket_error)?;
    let (conn, handle) = std::thread::spawn(move || -> io::Result<_> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        // The socket registers with the runtime's reactor.
        let _entered = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok((conn, handle))
    })
    .join()
    .map_err(|_| socket_error(io::Error::other("the thread entering the namespace panicked")))?
    .map_err(socket_error)?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_by_name(h: &Handle, name: &str, netns: Option<&Path>) -> Result<Option<LinkMessage>, LinkError> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(LinkError::Query {
            what: "link",
            name: name.to_owned(),
            netns: netns.map(Path::to_owned),
            source: cause(e),
        }),
    }
}

/// Deletes the link `name`; `Ok(false)` if there is none.
async fn delete(h: &Handle, name: &str, netns: Option<&Path>) -> Result<bool, LinkError> {
    let Some(link) = link_by_name(h, name, netns).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        // Gone in between (e.g. with its peer).
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(LinkError::Delete {
            name: name.to_owned(),
            netns: netns.map(Path::to_owned),
            source: cause(e),
        }),
    }
}

async fn set_up(h: &Handle, index: u32, name: &str, netns: Option<&Path>) -> Result<(), LinkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| LinkError::LinkUp {
            name: name.to_owned(),
            netns: netns.map(Path::to_owned),
            source: cause(e),
        })
}

/// The IPv4 routes of the main table (a dump returns every table).
async fn main_routes(h: &Handle, netns: Option<&Path>) -> Result<Vec<RouteMessage>, LinkError> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| LinkError::Query {
            what: "routes",
            name: IFNAME.to_owned(),
            netns: netns.map(Path::to_owned),
            source: cause(e),
        })?;
    Ok(all
        .into_iter()
        .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN)
        .collect())
}

fn route_dst(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_gateway(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn mac(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    })
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Where a step ran, for messages.
fn place(netns: Option<&Path>) -> String {
    match netns {
        Some(path) => format!("the network namespace {}", path.display()),
        None => "the host".to_owned(),
    }
}

/// The positive errno of a kernel refusal.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A netlink failure as an `io::Error`: the errno's own message ("File
/// exists (os error 17)") when the kernel refused, else rtnetlink's.
fn cause(e: rtnetlink::Error) -> io::Error {
    match errno(&e) {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::other(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        // FNV-1a 64 of "" is the offset basis, cbf29ce484222325; of "a", af63dc4c8601ec8c.
        assert_eq!(host_veth_name(""), "weftdcbf29ce484");
        assert_eq!(host_veth_name("a"), "weftdaf63dc4c86");
        let id = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
        let name = host_veth_name(id);
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("weftd"));
        assert_eq!(name, host_veth_name(id));
        assert_ne!(name, host_veth_name(&id[..63]));
    }

    #[tokio::test]
    async fn a_missing_namespace_is_named_in_the_error() {
        let missing = Path::new("/run/netns/wtlink-no-such-namespace");
        let addrs = ["10.32.0.5/12".parse().unwrap()];
        let wiring = Wiring {
            netns: missing,
            host_veth: &host_veth_name("wtlink-no-such-container"),
            addrs: &addrs,
            pod_range: "10.32.0.0/12".parse().unwrap(),
            mtu: 1376,
        };
        let err = attach(&wiring).await.unwrap_err();
        assert!(matches!(err, LinkError::OpenNetns { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot open the network namespace /run/netns/wtlink-no-such-namespace: \
             No such file or directory (os error 2)"
        );
        let err = is_attached(missing).await.unwrap_err();
        assert!(err.to_string().contains("/run/netns/wtlink-no-such-namespace"), "{err}");
    }

    #[test]
    fn attach_wires_the_container_and_detach_removes_it() {
        let Some((host, container)) = namespaces() else {
            return;
        };
        let cpath = container.path();
        let host_veth = host_veth_name(container.name());
        run_in(&host, {
            let (cpath, host_veth) = (cpath.clone(), host_veth.clone());
            async move {
                let w = wiring(&cpath, &host_veth, &ADDRS);
                assert_eq!(attach(&w).await.unwrap(), Attach::Created);
            }
        });

        let (host_link, mac) = link_line(&host, &host_veth);
        let (ethwe, ethwe_mac) = link_line(&container, IFNAME);
        assert_ne!(mac, ethwe_mac);
        // ethwe is the only link in the container after lo, so its index is 2.
        assert_eq!(
            host_link,
            format!(
                "{host_veth}@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1376 qdisc noqueue state UP mode DEFAULT \
                 group default qlen 1000\\    link/ether {mac} brd ff:ff:ff:ff:ff:ff link-netns {}",
                container.name()
            )
        );
        assert!(
            ethwe.starts_with("ethwe@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1376 qdisc noqueue state UP "),
            "{ethwe}"
        );
        assert_eq!(
            host.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp")]),
            "1\n"
        );
        assert_eq!(
            host.ip(&["route"]),
            format!(
                "10.32.0.5 dev {host_veth} proto static scope link \n\
                 10.33.1.2 dev {host_veth} proto static scope link \n"
            )
        );
        let addrs: Vec<String> = container
            .ip(&["-o", "addr", "show", "dev", "ethwe"])
            .lines()
            .filter(|line| !line.contains(" inet6 "))
            .map(|line| without_index(line).to_owned())
            .collect();
        assert_eq!(
            addrs,
            [
                "ethwe    inet 10.32.0.5/12 scope global noprefixroute ethwe\\       valid_lft forever preferred_lft forever",
                // The kernel marks a second address in the same prefix "secondary".
                "ethwe    inet 10.33.1.2/12 scope global secondary noprefixroute ethwe\\       valid_lft forever preferred_lft forever",
            ]
        );
        assert_eq!(
            container.ip(&["neigh"]),
            format!("169.254.1.1 dev ethwe lladdr {mac} PERMANENT \n")
        );
        // The only route: no connected route for the /12, no default route.
        assert_eq!(
            container.ip(&["route"]),
            "10.32.0.0/12 via 169.254.1.1 dev ethwe proto static onlink \n"
        );

        run_in(&host, async move {
            let w = wiring(&cpath, &host_veth, &ADDRS);
            assert_eq!(attach(&w).await.unwrap(), Attach::Existing);
            assert!(is_attached(&cpath).await.unwrap());
            assert!(detach(&host_veth).await.unwrap());
            assert!(!is_attached(&cpath).await.unwrap());
            assert!(!detach(&host_veth).await.unwrap());
        });
        assert_eq!(host.ip(&["-o", "link", "show"]).lines().count(), 1);
        assert_eq!(container.ip(&["-o", "link", "show"]).lines().count(), 1);
    }

    #[test]
    fn leftovers_of_an_earlier_attempt_are_replaced() {
        let Some((host, container)) = namespaces() else {
            return;
        };
        let host_veth = host_veth_name(container.name());
        // A stale host veth, and an ethwe in the container that is not ours
        // (veths: this kernel has no dummy links).
        host.ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", "stale"]);
        container.ip(&["link", "add", "ethwe", "type", "veth", "peer", "name", "notours"]);
        let cpath = container.path();
        run_in(&host, {
            let host_veth = host_veth.clone();
            async move {
                let w = wiring(&cpath, &host_veth, &ADDRS[..1]);
                assert!(!is_attached(&cpath).await.unwrap());
                assert_eq!(attach(&w).await.unwrap(), Attach::Created);
                assert!(is_attached(&cpath).await.unwrap());
                // Wired, but with other addresses than asked for: wired again.
                let w = wiring(&cpath, &host_veth, &ADDRS[1..]);
                assert_eq!(attach(&w).await.unwrap(), Attach::Created);
                assert_eq!(attach(&w).await.unwrap(), Attach::Existing);
            }
        });
        let (link, _) = link_line(&host, &host_veth);
        assert!(
            link.contains("mtu 1376") && link.contains(&format!("link-netns {}", container.name())),
            "{link}"
        );
        assert_eq!(
            host.ip(&["route"]),
            format!("10.33.1.2 dev {host_veth} proto static scope link \n")
        );
        let addrs = container.ip(&["-4", "-o", "addr", "show", "dev", "ethwe"]);
        assert!(
            addrs.contains(" inet 10.33.1.2/12 ") && !addrs.contains("10.32.0.5"),
            "{addrs}"
        );
    }

    #[test]
    fn a_failure_midway_removes_the_veth() {
        let Some((host, container)) = namespaces() else {
            return;
        };
        let host_veth = host_veth_name(container.name());
        let cpath = container.path();
        run_in(&host, async move {
            // The second copy of the address fails in the container, after
            // the veth, the host routes and the first address exist.
            let twice = [ADDRS[0], ADDRS[0]];
            let err = attach(&wiring(&cpath, &host_veth, &twice)).await.unwrap_err();
            assert!(matches!(err, LinkError::Address { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot add the address 10.32.0.5/12 to ethwe in {}: File exists (os error 17)",
                    cpath.display()
                )
            );
            assert!(!is_attached(&cpath).await.unwrap());
            assert!(!detach(&host_veth).await.unwrap(), "the veth was left behind");
        });
        assert_eq!(host.ip(&["-o", "link", "show"]).lines().count(), 1, "only lo");
        assert_eq!(container.ip(&["-o", "link", "show"]).lines().count(), 1, "only lo");
        assert_eq!(host.ip(&["route"]), "");
    }

    #[test]
    fn containers_are_attached_concurrently() {
        if !root_or_skip() {
            return;
        }
        let host = TestNetns::new("wtlink");
        let containers: Vec<TestNetns> = (0..4).map(|_| TestNetns::new("wtlink")).collect();
        let jobs: Vec<(PathBuf, String, Ipv4Net)> = containers
            .iter()
            .zip(1u8..)
            .map(|(c, i)| {
                (
                    c.path(),
                    host_veth_name(c.name()),
                    Ipv4Net::new_assert(Ipv4Addr::new(10, 32, 1, i), 12),
                )
            })
            .collect();
        run_in(&host, async move {
            let tasks: Vec<_> = jobs
                .into_iter()
                .map(|(netns, host_veth, addr)| {
                    tokio::spawn(async move {
                        let attached = attach(&wiring(&netns, &host_veth, &[addr])).await.unwrap();
                        assert_eq!(attached, Attach::Created);
                        assert!(is_attached(&netns).await.unwrap());
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        assert_eq!(host.ip(&["route"]).lines().count(), 4);
        for c in &containers {
            assert_eq!(
                c.ip(&["route"]),
                "10.32.0.0/12 via 169.254.1.1 dev ethwe proto static onlink \n"
            );
        }
    }

    /// `ip -o link show NAME` without the index, and the link's MAC.
    fn link_line(ns: &TestNetns, name: &str) -> (String, String) {
        let out = ns.ip(&["-o", "link", "show", name]);
        let line = without_index(out.trim_end()).to_owned();
        let mac = line
            .split_whitespace()
            .skip_while(|&w| w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {line}"))
            .to_owned();
        (line, mac)
    }

    /// An `ip -o` line without its leading "N: " interface index.
    fn without_index(line: &str) -> &str {
        line.split_once(": ").map_or(line, |(_, rest)| rest)
    }

    const ADDRS: [Ipv4Net; 2] = [
        Ipv4Net::new_assert(Ipv4Addr::new(10, 32, 0, 5), 12),
        Ipv4Net::new_assert(Ipv4Addr::new(10, 33, 1, 2), 12),
    ];

    fn wiring<'a>(netns: &'a Path, host_veth: &'a str, addrs: &'a [Ipv4Net]) -> Wiring<'a> {
        Wiring {
            netns,
            host_veth,
            addrs,
            pod_range: Ipv4Net::new_assert(Ipv4Addr::new(10, 32, 0, 0), 12),
            mtu: 1376,
        }
    }

    /// A "host" and a "container" namespace, or `None` (after saying why) if
    /// namespaces cannot be made here. The host namespace keeps the test's
    /// veths and routes out of the real host's.
    fn namespaces() -> Option<(TestNetns, TestNetns)> {
        root_or_skip().then(|| (TestNetns::new("wtlink"), TestNetns::new("wtlink")))
    }

    /// Runs `test` on a multi-thread runtime whose threads (and the thread
    /// that drives it) are all in `host`'s namespace, as the proxy's are in
    /// the real host's.
    fn run_in(host: &TestNetns, test: impl Future<Output = ()> + Send + 'static) {
        let ns = Arc::new(File::open(host.path()).unwrap());
        let enter = move || nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::thread::spawn(move || {
            enter();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(enter)
                .build()
                .unwrap()
                .block_on(test);
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }

    /// Whether namespace tests can run; if not, says why (and under CI, fails).
    pub(crate) fn root_or_skip() -> bool {
        match weft_tests::netns_unavailable() {
            Some(reason) => {
                weft_tests::skip_or_fail(&reason);
                false
            }
            None => true,
        }
    }

    /// A network namespace `PREFIX<pid>-<n>` made with `ip netns add`, deleted
    /// (with whatever is in it) on drop, also when the test panics.
    #[derive(Debug)]
    pub(crate) struct TestNetns {
        name: String,
    }

    impl TestNetns {
        pub(crate) fn new(prefix: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "{prefix}{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            run(Command::new("ip").args(["netns", "add", &name]));
            Self { name }
        }

        pub(crate) fn name(&self) -> &str {
            &self.name
        }

        pub(crate) fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.name)
        }

        /// `ip -n NAME args...`, which must succeed; returns its stdout.
        pub(crate) fn ip(&self, args: &[&str]) -> String {
            run(Command::new("ip").args(["-n", &self.name]).args(args))
        }

        /// `args` run inside the namespace, which must succeed; returns its stdout.
        pub(crate) fn exec(&self, args: &[&str]) -> String {
            run(self.cmd(args[0]).args(&args[1..]))
        }

        /// A command that runs `program` inside the namespace (`ip netns exec`).
        pub(crate) fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.name]).arg(program);
            cmd
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let deleted = Command::new("ip").args(["netns", "delete", &self.name]).output();
            if !deleted.is_ok_and(|out| out.status.success()) && !std::thread::panicking() {
                panic!("cannot delete the network namespace {}", self.name);
            }
        }
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}
