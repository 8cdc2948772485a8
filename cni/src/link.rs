//! The pod's interface as `weft-net` asks for it, through `weft-podlink`,
//! with the crate's errors turned into the spec's codes.
//!
//! `weft_podlink` creates, checks and deletes the veth; see its crate docs
//! for how a pod is wired. The plugin's form ([`spec`]): the pod's address
//! as a `/32`, `169.254.1.1 dev CNI_IFNAME scope link` and `default via
//! 169.254.1.1` ([`POD_GATEWAY`]), a permanent neighbour entry for the
//! gateway, `proxy_arp` on the host veth and the host's `/32` route to it.
//! An interface named `CNI_IFNAME` that is already in the pod and not
//! Weft's is left alone, and ADD fails.
//!
//! The plugin is synchronous: each call runs on a current-thread runtime of
//! its own ([`weft_podlink::block_on`]).

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::IpNet;
use weft_podlink::{Attached, Gateway, LinkError, Occupied, Spec};

use crate::error::{CniError, code};

/// The host veth's name for a container's interface: `weft` and 11 hex
/// digits of a hash of both, deterministic, so DEL and GC find it without
/// any saved state.
pub use weft_podlink::cni_host_veth as host_veth_name;

/// The pods' default gateway: link-local, on the host side of every pod's veth.
pub const POD_GATEWAY: Ipv4Addr = weft_podlink::GATEWAY_V4;

/// The plugin's pod interface: `ifname` in `netns` with `addr` as a `/32`
/// and a default route via [`POD_GATEWAY`], the host end `host_veth`.
/// `mtu` is only used when the pair is created (CHECK does not compare it).
pub fn spec(netns: &Path, ifname: &str, host_veth: &str, addr: Ipv4Addr, mtu: u32) -> Spec {
    let addresses = vec![IpNet::from(IpAddr::V4(addr))];
    Spec {
        netns: netns.to_owned(),
        ifname: ifname.to_owned(),
        host_veth: host_veth.to_owned(),
        mtu,
        routes: weft_podlink::default_routes(&addresses),
        addresses,
        gateway: Gateway::LinkRoute,
        occupied: Occupied::Fail,
    }
}

/// Opens the pod's network namespace.
///
/// # Errors
/// Code 4 naming `CNI_NETNS` if it cannot be opened.
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| netns_error(path, &e))
}

/// Creates and configures the pod's interface as `spec` says, or leaves it
/// if it already is so. On failure nothing is left behind.
///
/// # Errors
/// Code 4 if the netns cannot be opened; 5 for a netlink or sysctl failure,
/// such as `CNI_IFNAME` already existing in the pod.
pub fn attach(spec: &Spec) -> Result<Attached, CniError> {
    weft_podlink::block_on(weft_podlink::attach(spec)).map_err(cni_error)
}

/// Deletes the host veth `name` (which takes the pod's end with it).
/// Returns whether it existed.
///
/// # Errors
/// Code 5 for a netlink failure other than "no such device".
pub fn detach(name: &str) -> Result<bool, CniError> {
    weft_podlink::block_on(weft_podlink::detach(name)).map_err(cni_error)
}

/// Verifies what [`attach`] made: both ends up, the address, the routes,
/// the neighbour entry and `proxy_arp`.
///
/// # Errors
/// Code 102 naming the first difference; 4 or 5 if it cannot look.
pub fn check(spec: &Spec) -> Result<(), CniError> {
    weft_podlink::block_on(weft_podlink::check(spec)).map_err(cni_error)
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
    fs::write(IP_FORWARD, "1")
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot set {IP_FORWARD} to 1: {e}")))
}

/// The spec's code for a [`LinkError`]: 4 for a namespace that cannot be
/// opened, 102 for a CHECK difference, 5 for everything else.
fn cni_error(e: LinkError) -> CniError {
    match e {
        LinkError::OpenNetns { netns, source } => netns_error(&netns, &source),
        LinkError::Mismatch(difference) => CniError::new(code::CHECK_MISMATCH, difference.to_string()),
        other => CniError::new(code::IO_FAILURE, other.to_string()),
    }
}

fn netns_error(path: &Path, e: &std::io::Error) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("CNI_NETNS {} cannot be opened: {e}", path.display()),
    )
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_errors_become_the_specs_codes() {
        let gone = cni_error(LinkError::OpenNetns {
            netns: "/run/netns/gone".into(),
            source: std::io::Error::from_raw_os_error(2),
        });
        assert_eq!(gone.code, code::INVALID_ENV);
        assert_eq!(
            gone.msg,
            "CNI_NETNS /run/netns/gone cannot be opened: No such file or directory (os error 2)"
        );
        let differs = cni_error(LinkError::Mismatch(weft_podlink::Difference::NoPodLink {
            ifname: "eth0".into(),
        }));
        assert_eq!(differs.code, code::CHECK_MISMATCH);
        assert_eq!(differs.msg, "the container has no interface eth0");
        let failed = cni_error(LinkError::Runtime(std::io::Error::from_raw_os_error(24)));
        assert_eq!(failed.code, code::IO_FAILURE);
        assert!(failed.msg.contains("Too many open files"), "{failed}");
    }

    #[test]
    fn the_plugins_form() {
        let s = spec(
            Path::new("/run/netns/p"),
            "eth0",
            "weftX",
            Ipv4Addr::new(10, 32, 0, 5),
            1420,
        );
        assert_eq!(s.addresses, ["10.32.0.5/32".parse::<IpNet>().unwrap()]);
        assert_eq!(s.routes, ["0.0.0.0/0".parse::<IpNet>().unwrap()]);
        assert_eq!(s.gateway, Gateway::LinkRoute);
        assert_eq!(s.occupied, Occupied::Fail);
    }
}
