//! The host's interface addresses, as `getifaddrs(3)` lists them, for the
//! mesh core to choose what to advertise ([`crate::core::endpoints`]).
//! Interfaces that are down are left out; every other rule is the core's.

use std::io;
use std::net::IpAddr;

use nix::net::if_::InterfaceFlags;

use crate::core::endpoints::LocalAddr;

/// Every address on an interface that is up, in the order the system lists them.
///
/// # Errors
/// If the system refuses to list them.
pub fn local_addrs() -> io::Result<Vec<LocalAddr>> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if !a.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(addr) = a.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.push(LocalAddr::new(a.interface_name, ip));
    }
    Ok(out)
}
