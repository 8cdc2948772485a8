//! The pod's veth, its address and routes, and the host's side of it, over
//! rtnetlink on a current-thread runtime.
//!
//! The veth is created in the host namespace with its peer born directly in
//! the pod's namespace under its final name (`CNI_IFNAME`); nothing is ever
//! visible in the host under the pod's interface name. The pod side is then
//! configured through a second netlink socket opened inside the pod's
//! namespace, on a short-lived thread that entered it with `setns` (the
//! socket keeps the namespace of the thread that opened it; the main thread
//! never changes namespace).
//!
//! # The pod's addressing (as Calico does)
//!
//! - The pod gets its address as a `/32` and a default route via the
//!   link-local gateway [`POD_GATEWAY`] (169.254.1.1), reached on-link
//!   through the veth (`169.254.1.1 dev eth0 scope link`). Every pod on every
//!   host has the same two routes, and no host address is spent per pod.
//! - The host side of the veth has no address. The pod resolves the gateway
//!   through a permanent neighbour entry pointing at the host veth's MAC, so
//!   it needs no ARP answer at all; `proxy_arp` is also on for the host veth,
//!   so a pod whose neighbour table was flushed still gets an answer wherever
//!   the host has a route.
//! - The host routes the pod's `/32` to the host veth (`scope link`). The
//!   router's pod-range route sends the rest of the range to its TUN device,
//!   so pod-to-pod traffic on one host never enters the router.

use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::{CniError, code};

/// The pods' default gateway: link-local, on the host side of every pod's veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// One pod's link, as ADD makes it and CHECK expects it.
#[derive(Debug, Clone, Copy)]
pub struct PodLink<'a> {
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: &'a Path,
    /// The interface in the pod (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// The host side's name ([`host_veth_name`]).
    pub host_veth: &'a str,
    /// The pod's address (a /32).
    pub addr: Ipv4Addr,
    /// The MTU of both ends.
    pub mtu: u32,
}

/// What [`attach`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The host veth's MAC.
    pub host_mac: String,
    /// The pod interface's MAC.
    pub pod_mac: String,
}

/// The host veth's name for a container's interface: `weft` and 11 hex
/// digits of a hash of both, 15 bytes (the kernel's limit). Deterministic, so
/// DEL and GC find it without any saved state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a 64: stable across Rust versions, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("weft{:011x}", hash >> 20)
}

/// Opens the pod's network namespace.
///
/// # Errors
/// Code 4 naming `CNI_NETNS` if it cannot be opened.
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {} cannot be opened: {e}", path.display()),
        )
    })
}

/// Creates and configures the pod's veth, its address and routes, and the
/// host's route to it. A veth left by an earlier ADD of the same container
/// and interface is replaced. On failure nothing is left behind.
///
/// # Errors
/// Code 4 if the netns cannot be opened; 5 for a netlink or sysctl failure.
pub fn attach(link: &PodLink<'_>) -> Result<Attached, CniError> {
    let netns = open_netns(link.netns)?;
    block_on(async {
        let host = connect()?;
        if let Some(old) = link_by_name(&host, link.host_veth)
            .await
            .map_err(nl("look up the host veth"))?
        {
            host.link()
                .del(old.header.index)
                .execute()
                .await
                .map_err(nl("delete the old host veth"))?;
        }
        let peer = LinkUnspec::new_with_name(link.ifname)
            .mtu(link.mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(link.host_veth.to_owned())
            .mtu(link.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.link().add(veth).execute().await.map_err(|e| {
            let err = nl("create the veth pair")(e);
            if err.details.contains("File exists") {
                CniError::new(
                    code::IO_FAILURE,
                    format!(
                        "cannot create the veth pair: {} already exists in the container's namespace",
                        link.ifname
                    ),
                )
            } else {
                err
            }
        })?;
        let configured = configure(&host, &netns, link).await;
        if configured.is_err() {
            // Deleting one end deletes the peer in the pod too.
            let _ = delete(&host, link.host_veth).await;
        }
        configured
    })
}

/// Deletes the host veth `name` (which takes the pod's end with it). Returns
/// whether it existed.
///
/// # Errors
/// Code 5 for a netlink failure other than "no such device".
pub fn detach(name: &str) -> Result<bool, CniError> {
    block_on(async {
        let host = connect()?;
        delete(&host, name).await
    })
}

/// Verifies what [`attach`] made: the pod's interface is up with the address
/// and the default route via [`POD_GATEWAY`], and the host veth is up with
/// the route to the pod.
///
/// # Errors
/// Code 102 naming the first difference; 4 or 5 if it cannot look.
pub fn check(link: &PodLink<'_>) -> Result<(), CniError> {
    let netns = open_netns(link.netns)?;
    block_on(async {
        let mismatch = |what: String| CniError::new(code::CHECK_MISMATCH, what);
        let host = connect()?;
        let host_link = link_by_name(&host, link.host_veth)
            .await
            .map_err(nl("look up the host veth"))?
            .ok_or_else(|| mismatch(format!("the host veth {} is missing", link.host_veth)))?;
        let routes = main_routes(&host).await?;
        let to_pod = routes.iter().any(|r| {
            r.header.destination_prefix_length == 32
                && route_dst(r) == Some(link.addr)
                && route_oif(r) == Some(host_link.header.index)
        });
        if !to_pod {
            return Err(mismatch(format!(
                "the host has no route {}/32 dev {}",
                link.addr, link.host_veth
            )));
        }
        let pod = connect_in(&netns)?;
        let pod_link = link_by_name(&pod, link.ifname)
            .await
            .map_err(nl("look up the pod interface"))?
            .ok_or_else(|| mismatch(format!("the container has no interface {}", link.ifname)))?;
        let index = pod_link.header.index;
        if !pod_link.header.flags.contains(LinkFlags::Up) {
            return Err(mismatch(format!("{} in the container is down", link.ifname)));
        }
        let mut addrs = pod.address().get().set_link_index_filter(index).execute();
        let mut found = false;
        while let Some(msg) = addrs.try_next().await.map_err(nl("list the pod's addresses"))? {
            let is_ours = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == link.addr));
            found |= is_ours && msg.header.prefix_len == 32;
        }
        if !found {
            return Err(mismatch(format!(
                "{} in the container does not have {}/32",
                link.ifname, link.addr
            )));
        }
        let routes = main_routes(&pod).await?;
        let default = routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && route_gateway(r) == Some(POD_GATEWAY)
                && route_oif(r) == Some(index)
        });
        if !default {
            return Err(mismatch(format!(
                "the container has no default route via {POD_GATEWAY} dev {}",
                link.ifname
            )));
        }
        Ok(())
    })
}

/// Turns IPv4 forwarding on in the host namespace if it is off, as the
/// reference bridge plugin does for `isGateway`: pod packets are forwarded
/// between the veths and the router's TUN device.
///
/// # Errors
/// Code 5 if it cannot be written.
pub fn enable_ip_forward() -> Result<(), CniError> {
    if fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    write_sysctl(IP_FORWARD, "1")
}

async fn configure(host: &Handle, netns: &File, link: &PodLink<'_>) -> Result<Attached, CniError> {
    let host_link = link_by_name(host, link.host_veth)
        .await
        .map_err(nl("look up the new host veth"))?
        .ok_or_else(|| {
            CniError::new(
                code::IO_FAILURE,
                format!("the new host veth {} vanished", link.host_veth),
            )
        })?;
    let host_index = host_link.header.index;
    let host_mac = mac_of(&host_link).unwrap_or_default();
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", link.host_veth), "1")?;
    host.link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await
        .map_err(nl("set the host veth up"))?;

    let pod = connect_in(netns)?;
    let pod_link = link_by_name(&pod, link.ifname)
        .await
        .map_err(nl("look up the pod interface"))?
        .ok_or_else(|| {
            CniError::new(
                code::IO_FAILURE,
                format!("{} did not appear in the container", link.ifname),
            )
        })?;
    let index = pod_link.header.index;
    let pod_mac = mac_of(&pod_link).unwrap_or_default();
    pod.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("set the pod interface up"))?;
    pod.address()
        .add(index, IpAddr::V4(link.addr), 32)
        .replace()
        .execute()
        .await
        .map_err(nl("add the pod's address"))?;
    let gateway_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    pod.route()
        .add(gateway_route)
        .replace()
        .execute()
        .await
        .map_err(nl("add the pod's route to the gateway"))?;
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(index)
        .build();
    pod.route()
        .add(default_route)
        .replace()
        .execute()
        .await
        .map_err(nl("add the pod's default route"))?;
    if let Some(mac) = mac_bytes(&host_link) {
        pod.neighbours()
            .add(index, IpAddr::V4(POD_GATEWAY))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(nl("add the pod's neighbour entry for the gateway"))?;
    }

    let to_pod = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(link.addr, 32)
        .output_interface(host_index)
        .scope(RouteScope::Link)
        .build();
    host.route()
        .add(to_pod)
        .replace()
        .execute()
        .await
        .map_err(nl("add the host's route to the pod"))?;
    Ok(Attached { host_mac, pod_mac })
}

async fn delete(host: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(found) = link_by_name(host, name).await.map_err(nl("look up the host veth"))? else {
        return Ok(false);
    };
    match host.link().del(found.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl("delete the host veth")(e)),
    }
}

/// A netlink socket in the current (host) namespace.
fn connect() -> Result<Handle, CniError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io_failure("open a netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink socket in `netns`, opened on a thread that entered it.
fn connect_in(netns: &File) -> Result<Handle, CniError> {
    let runtime = tokio::runtime::Handle::current();
    let ns = netns.try_clone().map_err(io_failure("duplicate the netns handle"))?;
    std::thread::spawn(move || -> io::Result<Handle> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let _entered = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(handle)
    })
    .join()
    .map_err(|_| {
        CniError::new(
            code::IO_FAILURE,
            "the thread entering the container's namespace panicked",
        )
    })?
    .map_err(io_failure("open a netlink socket in the container's namespace"))
}

fn block_on<T>(f: impl Future<Output = Result<T, CniError>>) -> Result<T, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io_failure("start the netlink runtime"))?
        .block_on(f)
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        other => other,
    }
}

async fn main_routes(h: &Handle) -> Result<Vec<RouteMessage>, CniError> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
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

fn mac_bytes(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    })
}

fn mac_of(link: &LinkMessage) -> Option<String> {
    let mac = mac_bytes(link)?;
    Some(mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

fn write_sysctl(path: &str, value: &str) -> Result<(), CniError> {
    fs::write(path, value).map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot set {path} to {value}: {e}")))
}

/// The positive errno of a kernel refusal.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |e| {
        let details = match errno(&e) {
            Some(n) => io::Error::from_raw_os_error(n).to_string(),
            None => e.to_string(),
        };
        CniError::new(code::IO_FAILURE, format!("cannot {what}")).details(details)
    }
}

fn io_failure(what: &'static str) -> impl FnOnce(io::Error) -> CniError {
    move |e| CniError::new(code::IO_FAILURE, format!("cannot {what}")).details(e.to_string())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weft"));
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        assert_ne!(a, host_veth_name("0123456789abcdee", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
    }
}
