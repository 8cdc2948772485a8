//! The container's mesh interface `ethwe` as the proxy asks `weft-podlink`
//! to wire it.
//!
//! `weft_podlink` creates, checks and deletes the veth; see its crate docs
//! for how a container is wired, and the namespace and thread rules. The
//! proxy's form ([`spec`]): the container's addresses keep their prefix
//! length (`10.32.0.5/12`, so programs see the pod range's netmask) with
//! `IFA_F_NOPREFIXROUTE`, the pod range is routed via the link-local
//! gateway on-link (`10.32.0.0/12 via 169.254.1.1 dev ethwe onlink`), and
//! the container's default route (Docker's) is left alone: only mesh
//! traffic takes `ethwe`. An `ethwe` that is not the veth's peer (a
//! leftover) is replaced.
//!
//! The pod-range route is added last, when everything else already works:
//! `weft-wait` (see [`wait`](crate::wait)) releases the container's first
//! instruction as soon as a route on `ethwe` appears ([`is_attached`]).

use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use weft_podlink::{Gateway, LinkError, Occupied, Spec};

/// The host veth's name for a container: `weftd` and 10 hex digits of a
/// hash of the container id, so a detach finds it from the id alone.
pub use weft_podlink::docker_host_veth as host_veth_name;

/// The name of the mesh interface inside the container.
pub const IFNAME: &str = "ethwe";

/// The container's `ethwe` in `netns` (e.g. `/proc/PID/ns/net`) with
/// `addrs`, each with its own prefix length, the pod range routed via the
/// gateway, and the host end `host_veth`; `mtu` for both ends.
pub fn spec(netns: &Path, host_veth: &str, addrs: &[Ipv4Net], pod_range: Ipv4Net, mtu: u32) -> Spec {
    Spec {
        netns: netns.to_owned(),
        ifname: IFNAME.to_owned(),
        host_veth: host_veth.to_owned(),
        mtu,
        addresses: addrs.iter().copied().map(IpNet::V4).collect(),
        routes: vec![IpNet::V4(pod_range)],
        gateway: Gateway::Onlink,
        occupied: Occupied::Replace,
    }
}

/// Whether the namespace `netns` has [`IFNAME`] with its route via the
/// gateway, the last thing an attach adds.
///
/// # Errors
/// If the namespace cannot be opened or netlink cannot be read there.
pub async fn is_attached(netns: &Path) -> Result<bool, LinkError> {
    weft_podlink::is_attached(netns, IFNAME).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_form() {
        let addrs = ["10.32.0.5/12".parse().unwrap(), "10.33.1.2/16".parse().unwrap()];
        let s = spec(
            Path::new("/proc/1/ns/net"),
            "weftd0123456789",
            &addrs,
            "10.32.0.0/12".parse().unwrap(),
            1376,
        );
        assert_eq!(s.ifname, "ethwe");
        assert_eq!(
            s.addresses,
            [
                "10.32.0.5/12".parse::<IpNet>().unwrap(),
                "10.33.1.2/16".parse().unwrap()
            ]
        );
        assert_eq!(s.routes, ["10.32.0.0/12".parse::<IpNet>().unwrap()]);
        assert_eq!((s.gateway, s.occupied), (Gateway::Onlink, Occupied::Replace));
    }
}
