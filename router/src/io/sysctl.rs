//! The kernel switches the data plane needs: IPv4 forwarding, and IPv6 off
//! on the TUN device.
//!
//! Pod packets are forwarded between the TUN device and the pods' veths,
//! so `net.ipv4.ip_forward` must be 1. The file under `/proc/sys/net` is per
//! network namespace, resolved for the thread that opens it, so
//! [`enable_ip_forwarding`] changes the namespace the router runs in and no
//! other. Writing it also sets `forwarding` on every interface, as the
//! kernel does for any write of `ip_forward`.
//!
//! # Why `rp_filter` is left alone
//!
//! Reverse-path filtering drops a packet when the route back to its source
//! does not leave through the interface it came in on (strict, 1) or when
//! there is no route back at all (loose, 2). With the routes of
//! [`crate::core::reconcile`], every legitimate source checks out in both
//! modes: a packet from a remote pod arrives on the TUN device, and the
//! route back to it is the pod range route through that device; a packet
//! from a local pod arrives on its veth, and the CNI plugin's /32 route
//! points back there. What fails the check is a packet on the TUN device
//! claiming a source in one of this router's own ranges, whose route back is
//! `unreachable`: a spoof, which the data plane drops too. So Weft neither
//! needs to loosen the host's setting nor should it; the effective value
//! is the larger of `conf.all` and `conf.<dev>`, and whatever the operator
//! chose keeps working.

use std::fs;
use std::io;

use tracing::info;

/// Whether [`enable_ip_forwarding`] had to change anything.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Forwarding {
    /// It was already on.
    AlreadyOn,
    /// It was off and is now on.
    Enabled,
}

/// Why a kernel switch could not be read or set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SysctlError {
    /// `/proc/sys` could not be read or written.
    #[error(
        "cannot set {path} to {value}: {source}. Run the router as root with a writable /proc/sys \
         (in Kubernetes, a privileged pod with hostNetwork), or set it on the host: `sysctl -w {name}={value}`"
    )]
    Write {
        /// The file.
        path: &'static str,
        /// The sysctl name.
        name: &'static str,
        /// The value wanted.
        value: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// Turns IPv4 forwarding on in the current thread's network namespace, and
/// says whether it was off.
///
/// # Errors
///
/// [`SysctlError::Write`] if the file cannot be read or written, as in an
/// unprivileged container.
pub fn enable_ip_forwarding() -> Result<Forwarding, SysctlError> {
    let err = |source| SysctlError::Write {
        path: IP_FORWARD,
        name: "net.ipv4.ip_forward",
        value: "1",
        source,
    };
    if fs::read_to_string(IP_FORWARD).map_err(err)?.trim() == "1" {
        return Ok(Forwarding::AlreadyOn);
    }
    fs::write(IP_FORWARD, "1\n").map_err(err)?;
    info!("enabled IPv4 forwarding (net.ipv4.ip_forward=1)");
    Ok(Forwarding::Enabled)
}

/// Turns IPv6 off on link `dev` (`net.ipv6.conf.<dev>.disable_ipv6`) in
/// the current thread's network namespace. The pod network is IPv4: with
/// IPv6 on, the kernel would send the TUN device its own multicast listener
/// reports and router solicitations as soon as the link is up, and the
/// packet path would read and drop them. A kernel without IPv6 has no such
/// file, which is as good.
///
/// # Errors
///
/// If the file exists but cannot be written.
pub fn disable_ipv6(dev: &str) -> io::Result<()> {
    match fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1\n") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
