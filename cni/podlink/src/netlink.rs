//! The netlink shell of [`crate::reconcile`]: reads the [`Actual`] state of
//! a pod's interface, and applies the [`Op`]s of the [diff](reconcile::diff).
//!
//! Every call opens its own netlink sockets: one in the caller's namespace
//! (the host), and one inside the pod's namespace, opened by a short-lived
//! std thread that entered it with `setns` (a socket keeps the namespace it
//! was opened in). No tokio worker thread ever changes namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use nix::libc;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tracing::{debug, warn};

use crate::LinkError;
use crate::reconcile::{
    self, Actual, Address, Desired, GATEWAY_V4, GATEWAY_V6, HostLink, MacAddr, Op, PodLink, Route, Spec,
};

/// What [`attach`] found or did.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The pair was created and wired.
    Created,
    /// It was already as asked for; nothing was changed.
    Existing,
}

/// What [`attach`] did, and the MACs of the two ends.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Attached {
    /// Created or left as it was.
    pub outcome: Outcome,
    /// The host veth's MAC.
    pub host_mac: MacAddr,
    /// The pod interface's MAC.
    pub pod_mac: MacAddr,
}

/// Wires the pod's interface as `spec` says (see [`reconcile::desired`]).
///
/// If it is already so, nothing is changed ([`Outcome::Existing`]).
/// Otherwise it is built again from scratch, in the order of
/// [`reconcile::diff`]: what is in the way is deleted, the pair is created,
/// the host end configured, and the pod end last, its routes via the
/// gateway at the very end ([`Outcome::Created`]).
///
/// If a step fails after the pair was created, the pair is deleted before
/// the error is returned, and also if this future is dropped midway, so
/// nothing half-wired is left behind.
///
/// # Errors
/// [`LinkError::OpenNetns`] if the namespace cannot be opened;
/// [`LinkError::Occupied`] if the pod has another interface of that name
/// and `spec.occupied` is [`Occupied::Fail`](crate::Occupied::Fail);
/// otherwise the [`LinkError`] of the first step that failed.
pub async fn attach(spec: &Spec) -> Result<Attached, LinkError> {
    // Kept open until the veth exists: its fd is how the peer is placed.
    let netns = open_netns(&spec.netns)?;
    let host = Side::host()?;
    let pod = Side::inside(&netns, &spec.netns)?;
    let desired = reconcile::desired(spec);
    let actual = read(&host, &pod, &desired).await?;
    let ops = reconcile::diff(&desired, &actual);
    if ops.is_empty() {
        let (host_link, pod_link) = (actual.host.unwrap_or_default(), actual.pod.unwrap_or_default());
        return Ok(Attached {
            outcome: Outcome::Existing,
            host_mac: host_link.mac.unwrap_or_default(),
            pod_mac: pod_link.mac.unwrap_or_default(),
        });
    }
    if let Some(first) = reconcile::differences(&desired, &actual).first() {
        debug!(host_veth = spec.host_veth, difference = %first, "wiring the pod's interface");
    }
    let mut wiring = Wiring {
        host: &host,
        pod: &pod,
        netns: &netns,
        spec,
        links: None,
        undo: None,
    };
    let applied = wiring.apply(&ops).await;
    if applied.is_err() && wiring.undo.is_some() {
        // Deleting the host end deletes the pod's end too.
        if let Err(cleanup) = host.delete(&spec.host_veth).await {
            warn!(host_veth = spec.host_veth, cause = %cleanup, "cannot remove a half-wired veth");
        }
    }
    if let Some(mut undo) = wiring.undo.take() {
        undo.disarm();
    }
    let links = applied?;
    Ok(Attached {
        outcome: Outcome::Created,
        host_mac: links.host_mac,
        pod_mac: links.pod_mac,
    })
}

/// Compares the pod's interface with what `spec` asks for.
///
/// # Errors
/// [`LinkError::Mismatch`] naming the first of the
/// [differences](reconcile::differences); [`LinkError::OpenNetns`] or
/// another [`LinkError`] if it cannot look.
pub async fn check(spec: &Spec) -> Result<(), LinkError> {
    let netns = open_netns(&spec.netns)?;
    let host = Side::host()?;
    let pod = Side::inside(&netns, &spec.netns)?;
    let desired = reconcile::desired(spec);
    let actual = read(&host, &pod, &desired).await?;
    match reconcile::differences(&desired, &actual).into_iter().next() {
        Some(difference) => Err(LinkError::Mismatch(difference)),
        None => Ok(()),
    }
}

/// Whether the namespace `netns` has `ifname` with a route via the gateway
/// ([`GATEWAY_V4`] or [`GATEWAY_V6`]), the last thing [`attach`] adds.
///
/// # Errors
/// If the namespace cannot be opened or netlink cannot be read there.
pub async fn is_attached(netns: &Path, ifname: &str) -> Result<bool, LinkError> {
    let ns = open_netns(netns)?;
    let pod = Side::inside(&ns, netns)?;
    let Some(link) = pod.link(ifname).await? else {
        return Ok(false);
    };
    let index = link.header.index;
    Ok(pod.routes(ifname).await?.iter().filter_map(route_of).any(|(oif, r)| {
        oif == index
            && r.via
                .is_some_and(|via| via == IpAddr::V4(GATEWAY_V4) || via == IpAddr::V6(GATEWAY_V6))
    }))
}

/// Deletes the host veth `host_veth`, which takes the pod's end with it.
/// Returns whether it existed.
///
/// # Errors
/// If netlink fails for a reason other than the link being absent.
pub async fn detach(host_veth: &str) -> Result<bool, LinkError> {
    Side::host()?.delete(host_veth).await
}

/// An address the host routes to a pod: a route of the address alone
/// (`/32`, `/128`) to one of this crate's host veths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    /// The host veth the route goes to.
    pub host_veth: String,
    /// The pod's address.
    pub addr: IpAddr,
}

/// Every pod address the host (the caller's namespace) routes to a host
/// veth of this crate's naming ([`crate::is_host_veth`]): what the pods
/// wired here hold, as the kernel shows it. The router reads it when its
/// IPAM state was lost, so that it does not hand those addresses out again.
///
/// # Errors
/// If netlink cannot list the links or the routes.
pub async fn pod_addresses() -> Result<Vec<PodAddress>, LinkError> {
    let host = Side::host()?;
    let mut dump = host.handle.link().get().execute();
    let mut veths = BTreeMap::new();
    while let Some(link) = dump.try_next().await.map_err(host.query("links", "the host"))? {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        });
        if let Some(name) = name.filter(|n| crate::is_host_veth(n)) {
            veths.insert(link.header.index, name.clone());
        }
    }
    let routes = host.routes("the host").await?;
    Ok(routes
        .iter()
        .filter_map(route_of)
        .filter_map(|(oif, r)| {
            let host_veth = veths.get(&oif)?.clone();
            (r.via.is_none() && r.dst.prefix_len() == r.dst.max_prefix_len()).then(|| PodAddress {
                host_veth,
                addr: r.dst.addr(),
            })
        })
        .collect())
}

/// Runs `f` (one of this crate's calls) to completion on a new
/// current-thread runtime: for synchronous callers such as the CNI plugin.
///
/// # Errors
/// [`LinkError::Runtime`] if the runtime cannot be started; else `f`'s.
///
/// # Panics
/// Inside a tokio runtime (as any `block_on` does).
pub fn block_on<T>(f: impl Future<Output = Result<T, LinkError>>) -> Result<T, LinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(LinkError::Runtime)?
        .block_on(f)
}

/// The links as [`Wiring`] found them after the pair was created.
#[derive(Clone, Copy)]
struct Links {
    host_index: u32,
    host_mac: MacAddr,
    pod_index: u32,
    pod_mac: MacAddr,
}

/// Applies [`Op`]s, remembering what it made.
struct Wiring<'a> {
    host: &'a Side,
    pod: &'a Side,
    netns: &'a File,
    spec: &'a Spec,
    /// Looked up on first use after the pair exists.
    links: Option<Links>,
    /// Armed once the pair is being created.
    undo: Option<Undo>,
}

impl Wiring<'_> {
    async fn apply(&mut self, ops: &[Op]) -> Result<Links, LinkError> {
        for &op in ops {
            self.apply_one(op).await?;
        }
        self.links().await
    }

    async fn apply_one(&mut self, op: Op) -> Result<(), LinkError> {
        let spec = self.spec;
        let in_pod = || spec.netns.clone();
        match op {
            Op::DeletePodLink => {
                self.pod.delete(&spec.ifname).await?;
            }
            Op::DeleteHostVeth => {
                // Deleting an interface in the way may already have removed it.
                self.host.delete(&spec.host_veth).await?;
            }
            Op::CreateVeth => {
                // Armed before the request: if this future is dropped while
                // the kernel creates the pair, the pair is removed all the same.
                self.undo = Some(Undo::new(&self.host.handle, &spec.host_veth));
                self.links = None;
                if let Err(e) = self.create_veth().await {
                    if let Some(mut undo) = self.undo.take() {
                        undo.disarm();
                    }
                    return Err(e);
                }
            }
            Op::ProxyArp => {
                let path = format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", spec.host_veth);
                // A sysctl write does not block: no need for the blocking pool.
                std::fs::write(&path, "1").map_err(|e| LinkError::ProxyArp {
                    host_veth: spec.host_veth.clone(),
                    source: io::Error::new(e.kind(), format!("{path}: {e}")),
                })?;
            }
            Op::HostUp => {
                let index = self.links().await?.host_index;
                self.host.set_up(index, &spec.host_veth).await?;
            }
            Op::HostRoute(dst) => {
                let index = self.links().await?.host_index;
                let route = Route {
                    dst,
                    via: None,
                    onlink: false,
                };
                self.host
                    .add_route(&route, index)
                    .await
                    .map_err(|source| LinkError::HostRoute {
                        dst,
                        host_veth: spec.host_veth.clone(),
                        source,
                    })?;
            }
            Op::AddAddress(address) => {
                let index = self.links().await?.pod_index;
                let mut add = self
                    .pod
                    .handle
                    .address()
                    .add(index, address.net.addr(), address.net.prefix_len());
                let attributes = &mut add.message_mut().attributes;
                // rtnetlink adds a broadcast address to an IPv4 address
                // shorter than /31; `ip addr add` does not, and no broadcast
                // is ever sent on this point-to-point link.
                attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
                let mut flags = AddressFlags::empty();
                flags.set(AddressFlags::Noprefixroute, address.noprefixroute);
                flags.set(AddressFlags::Nodad, address.nodad);
                if !flags.is_empty() {
                    attributes.push(AddressAttribute::Flags(flags));
                }
                add.execute().await.map_err(|e| LinkError::Address {
                    addr: address.net,
                    ifname: spec.ifname.clone(),
                    netns: in_pod(),
                    source: cause(e),
                })?;
            }
            Op::PodUp => {
                let index = self.links().await?.pod_index;
                self.pod.set_up(index, &spec.ifname).await?;
            }
            Op::Neighbour(gateway) => {
                let Links {
                    pod_index, host_mac, ..
                } = self.links().await?;
                self.pod
                    .handle
                    .neighbours()
                    .add(pod_index, gateway)
                    .link_layer_address(&host_mac.0)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| LinkError::Neighbour {
                        gateway,
                        mac: host_mac.to_string(),
                        ifname: spec.ifname.clone(),
                        netns: in_pod(),
                        source: cause(e),
                    })?;
            }
            Op::AddRoute(route) => {
                let index = self.links().await?.pod_index;
                self.pod
                    .add_route(&route, index)
                    .await
                    .map_err(|source| LinkError::Route {
                        route,
                        ifname: spec.ifname.clone(),
                        netns: in_pod(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Creates the pair, the peer born in the pod under its final name.
    async fn create_veth(&self) -> Result<(), LinkError> {
        let spec = self.spec;
        let peer = LinkUnspec::new_with_name(&spec.ifname)
            .mtu(spec.mtu)
            .setns_by_fd(self.netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_veth.clone())
            .mtu(spec.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let Err(e) = self.host.handle.link().add(veth).execute().await else {
            return Ok(());
        };
        if errno(&e) == Some(libc::EEXIST) && self.pod.link(&spec.ifname).await?.is_some() {
            return Err(LinkError::Occupied {
                host_veth: spec.host_veth.clone(),
                ifname: spec.ifname.clone(),
                netns: spec.netns.clone(),
            });
        }
        Err(LinkError::CreateVeth {
            host_veth: spec.host_veth.clone(),
            ifname: spec.ifname.clone(),
            netns: spec.netns.clone(),
            source: cause(e),
        })
    }

    /// Both ends' indexes and MACs, looked up once after the pair exists.
    async fn links(&mut self) -> Result<Links, LinkError> {
        if let Some(links) = self.links {
            return Ok(links);
        }
        let (host_index, host_mac) = self.host.index_and_mac(&self.spec.host_veth).await?;
        let (pod_index, pod_mac) = self.pod.index_and_mac(&self.spec.ifname).await?;
        let links = Links {
            host_index,
            host_mac,
            pod_index,
            pod_mac,
        };
        self.links = Some(links);
        Ok(links)
    }
}

/// The kernel state of both ends, as [`reconcile::differences`] compares it.
async fn read(host: &Side, pod: &Side, desired: &Desired) -> Result<Actual, LinkError> {
    let mut actual = Actual::default();
    if let Some(link) = host.link(&desired.host_veth).await? {
        let index = link.header.index;
        let routes = host
            .routes(&desired.host_veth)
            .await?
            .iter()
            .filter_map(route_of)
            .filter(|(oif, r)| *oif == index && r.via.is_none())
            .map(|(_, r)| r.dst)
            .collect();
        let proxy_arp = format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", desired.host_veth);
        actual.host = Some(HostLink {
            index,
            peer_index: peer_index(&link),
            up: link.header.flags.contains(LinkFlags::Up),
            mac: mac(&link),
            proxy_arp: std::fs::read_to_string(proxy_arp).is_ok_and(|v| v.trim() == "1"),
            routes,
        });
    }
    if let Some(link) = pod.link(&desired.ifname).await? {
        let index = link.header.index;
        let routes = pod
            .routes(&desired.ifname)
            .await?
            .iter()
            .filter_map(route_of)
            .filter(|(oif, _)| *oif == index)
            .map(|(_, r)| r)
            .collect();
        actual.pod = Some(PodLink {
            index,
            peer_index: peer_index(&link),
            up: link.header.flags.contains(LinkFlags::Up),
            mac: mac(&link),
            addresses: pod.addresses(index, &desired.ifname).await?,
            routes,
            neighbours: pod.neighbours(index, &desired.ifname).await?,
        });
    }
    Ok(actual)
}

/// A netlink socket in one namespace, and which one (for messages).
struct Side {
    handle: Handle,
    /// The pod's namespace, or `None` for the host.
    netns: Option<PathBuf>,
}

impl Side {
    /// A netlink socket in the current (host) namespace.
    fn host() -> Result<Self, LinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| LinkError::Socket { netns: None, source })?;
        tokio::spawn(conn);
        Ok(Self { handle, netns: None })
    }

    /// A netlink socket in the namespace `netns` (opened from `path`),
    /// opened on a throwaway std thread that entered it: never on a tokio
    /// worker.
    fn inside(netns: &File, path: &Path) -> Result<Self, LinkError> {
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
        Ok(Self {
            handle,
            netns: Some(path.to_owned()),
        })
    }

    /// The error of a failed read about `name`.
    fn query(&self, what: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let (name, netns) = (name.to_owned(), self.netns.clone());
        move |e| LinkError::Query {
            what,
            name,
            netns,
            source: cause(e),
        }
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        match self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
        {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.query("link", name)(e)),
        }
    }

    /// The index and MAC of `name`, which was just created.
    async fn index_and_mac(&self, name: &str) -> Result<(u32, MacAddr), LinkError> {
        let vanished = || LinkError::Vanished {
            name: name.to_owned(),
            netns: self.netns.clone(),
        };
        let link = self.link(name).await?.ok_or_else(vanished)?;
        Ok((link.header.index, mac(&link).ok_or_else(vanished)?))
    }

    /// Deletes the link `name`; `Ok(false)` if there is none.
    async fn delete(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            // Gone in between (e.g. with its peer).
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(LinkError::Delete {
                name: name.to_owned(),
                netns: self.netns.clone(),
                source: cause(e),
            }),
        }
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| LinkError::LinkUp {
                name: name.to_owned(),
                netns: self.netns.clone(),
                source: cause(e),
            })
    }

    /// Adds `route` through link `oif` in the main table, replacing one
    /// with the same destination and metric.
    async fn add_route(&self, route: &Route, oif: u32) -> Result<(), io::Error> {
        let msg = route_message(route, oif)?;
        self.handle.route().add(msg).replace().execute().await.map_err(cause)
    }

    /// The IPv4 and IPv6 routes of the main table (a dump returns every
    /// table); `name` is the link they are read for.
    async fn routes(&self, name: &str) -> Result<Vec<RouteMessage>, LinkError> {
        let mut all: Vec<RouteMessage> = Vec::new();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let dump = self.handle.route().get(family).execute();
            all.extend(dump.try_collect::<Vec<_>>().await.map_err(self.query("routes", name))?);
        }
        all.retain(|r| r.header.table == RouteHeader::RT_TABLE_MAIN);
        Ok(all)
    }

    /// The addresses of global scope on link `index` (`name`).
    async fn addresses(&self, index: u32, name: &str) -> Result<Vec<Address>, LinkError> {
        let mut dump = self.handle.address().get().set_link_index_filter(index).execute();
        let mut found = Vec::new();
        while let Some(msg) = dump.try_next().await.map_err(self.query("addresses", name))? {
            // Filtered by the kernel only if it does strict checking: filter again.
            if msg.header.index != index || msg.header.scope != AddressScope::Universe {
                continue;
            }
            let mut flags = AddressFlags::empty();
            let mut ip = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Address(a) => ip = Some(*a),
                    AddressAttribute::Flags(f) => flags = *f,
                    _ => {}
                }
            }
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, msg.header.prefix_len).ok()) {
                found.push(Address {
                    net,
                    noprefixroute: flags.contains(AddressFlags::Noprefixroute),
                    nodad: flags.contains(AddressFlags::Nodad),
                });
            }
        }
        Ok(found)
    }

    /// The permanent neighbour entries on link `index` (`name`).
    async fn neighbours(&self, index: u32, name: &str) -> Result<BTreeMap<IpAddr, MacAddr>, LinkError> {
        let mut dump = self.handle.neighbours().get().execute();
        let mut found = BTreeMap::new();
        while let Some(msg) = dump.try_next().await.map_err(self.query("neighbours", name))? {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut lladdr = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
                    NeighbourAttribute::LinkLayerAddress(mac) => lladdr = MacAddr::try_from(mac.as_slice()).ok(),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, lladdr) {
                found.insert(ip, mac);
            }
        }
        Ok(found)
    }
}

/// Deletes the host veth unless [`disarm`](Self::disarm)ed first: a future
/// of [`attach`] dropped midway leaves nothing behind.
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
        let Some((handle, name)) = self.host.take() else {
            return;
        };
        // Without a runtime (it is shutting down) the veth stays; the next
        // attach of this pod deletes it as stale.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let host = Side { handle, netns: None };
                if let Err(e) = host.delete(&name).await {
                    warn!(host_veth = name, cause = %e, "cannot remove a half-wired veth");
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

/// The request that adds `route` through link `oif`: scope link when it has
/// no gateway (IPv4; IPv6 routes have no scope), `onlink` if asked.
fn route_message(route: &Route, oif: u32) -> Result<RouteMessage, io::Error> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .map_err(io::Error::other)?
        .output_interface(oif);
    match route.via {
        Some(via) => builder = builder.gateway(via).map_err(io::Error::other)?,
        None if route.dst.addr().is_ipv4() => builder = builder.scope(RouteScope::Link),
        None => {}
    }
    if route.onlink {
        builder = builder.onlink();
    }
    Ok(builder.build())
}

/// A dumped route as the pure side sees it, with its output link.
fn route_of(r: &RouteMessage) -> Option<(u32, Route)> {
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Gateway(a) => via = ip_of(a),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    // A default route has no destination attribute.
    let dst = match (dst, r.header.address_family) {
        (Some(ip), _) => ip,
        (None, rtnetlink::packet_route::AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let route = Route {
        dst: IpNet::new(dst, r.header.destination_prefix_length).ok()?,
        via,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
    };
    Some((oif?, route))
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => MacAddr::try_from(mac.as_slice()).ok(),
        _ => None,
    })
}

/// A veth's peer's index, in the peer's namespace (`IFLA_LINK`).
fn peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
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
mod tests {
    use super::*;
    use crate::{Gateway, Occupied};

    #[tokio::test]
    async fn a_missing_namespace_is_named_in_the_error() {
        let missing = Path::new("/run/netns/wtlink-no-such-namespace");
        let spec = Spec {
            netns: missing.to_owned(),
            ifname: "ethwe".into(),
            host_veth: crate::docker_host_veth("wtlink-no-such-container"),
            mtu: 1376,
            addresses: vec!["10.32.0.5/12".parse().unwrap()],
            routes: vec!["10.32.0.0/12".parse().unwrap()],
            gateway: Gateway::Onlink,
            occupied: Occupied::Replace,
        };
        let err = attach(&spec).await.unwrap_err();
        assert!(matches!(err, LinkError::OpenNetns { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot open the network namespace /run/netns/wtlink-no-such-namespace: \
             No such file or directory (os error 2)"
        );
        let err = check(&spec).await.unwrap_err();
        assert!(matches!(err, LinkError::OpenNetns { .. }), "{err:?}");
        let err = is_attached(missing, "ethwe").await.unwrap_err();
        assert!(err.to_string().contains("/run/netns/wtlink-no-such-namespace"), "{err}");
    }

    #[test]
    fn dumped_routes_become_the_pure_routes() {
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(GATEWAY_V4)
            .output_interface(3)
            .build();
        let (oif, route) = route_of(&v4).unwrap();
        assert_eq!(oif, 3);
        assert_eq!(route.dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(route.via, Some(IpAddr::V4(GATEWAY_V4)));
        assert!(!route.onlink);

        let wanted = Route {
            dst: "fd00:32::/64".parse().unwrap(),
            via: Some(IpAddr::V6(GATEWAY_V6)),
            onlink: true,
        };
        assert_eq!(route_of(&route_message(&wanted, 7).unwrap()), Some((7, wanted)));
        let v6_default = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(7).build();
        assert_eq!(route_of(&v6_default).unwrap().1.dst, "::/0".parse::<IpNet>().unwrap());
        let no_oif = RouteMessageBuilder::<Ipv4Addr>::new().build();
        assert_eq!(route_of(&no_oif), None);
    }
}
