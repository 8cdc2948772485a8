//! The TUN device: one layer-3 link (`weft`), opened once per queue.
//!
//! [`open`] creates the device through tun-rs with:
//!
//! - **`IFF_MULTI_QUEUE`**, always, even for one queue: each worker thread
//!   gets its own file descriptor and the kernel spreads flows over them
//!   (by the flow hash), so workers never share a descriptor. Extra queues
//!   are `try_clone`s, which attach another descriptor to the same device.
//! - **`IFF_VNET_HDR` with offloads** (`TUNSETOFFLOAD` with checksum and
//!   TSO4/6, plus USO4/6 where the kernel has them, Linux 6.2 and later):
//!   the kernel may hand the router a 64 KiB TCP or UDP segment with one
//!   virtio-net header instead of forty packets, and accept the same back.
//!   tun-rs's `recv_multiple` and `send_multiple` split and coalesce these.
//!   If the kernel refuses the offloads altogether, the device is opened
//!   again without them, and [`Tun::vnet_hdr`] says so: the workers must
//!   then use plain `recv` and `send`, since the framing differs.
//! - **IPv6 off before the link goes up**: the pod network is IPv4, and a
//!   link with IPv6 would get the kernel's multicast reports and router
//!   solicitations, which the packet path can only drop (`not_ipv4`).
//! - **No address.** tun-rs would set one by ioctl; addresses and routes
//!   belong to [`crate::core::reconcile`], applied through netlink, so that
//!   one place owns them.
//! - **Blocking descriptors**: a worker waits in the read itself, so a lone
//!   packet costs one system call, not a `poll` and then a read. Stopping
//!   deletes the device, which ends every blocked read (see
//!   [`crate::io::dataplane::Stopper::stop`]).
//!
//! # A link with the same name
//!
//! A TUN device vanishes when the last descriptor closes, so a crash leaves
//! none behind, unless the device was persistent (`ip tuntap add`, or an
//! older version). Before creating the device, [`open`] looks the name up:
//! a TUN device that no process has open is stale and is deleted, then
//! created afresh (reusing it would inherit whatever flags, owner and offload
//! mask its creator left); a TUN device that is open elsewhere means another
//! router is probably running, and a link of another kind is not Weft's to
//! delete. Both are errors that say what to do.

use std::fmt;
use std::io;
use std::path::Path;

use tracing::{info, warn};
use tun_rs::{DeviceBuilder, SyncDevice};

use super::netlink::{LinkKind, Netlink, NetlinkError};

/// An open TUN device and its queues.
pub struct Tun {
    /// One descriptor per queue, each blocking. Hand one to each worker.
    pub queues: Vec<SyncDevice>,
    /// The interface name.
    pub name: String,
    /// The interface index, for routes through the device.
    pub index: u32,
    /// Whether packets carry a virtio-net header (`IFF_VNET_HDR`): use
    /// `recv_multiple`/`send_multiple` and leave room for the header.
    pub vnet_hdr: bool,
    /// Whether the kernel may hand over TCP segments larger than the MTU
    /// (TSO4/6). Equal to `vnet_hdr` with tun-rs.
    pub tcp_gso: bool,
    /// Whether it may hand over UDP segments larger than the MTU (USO4/6;
    /// Linux 6.2 and later).
    pub udp_gso: bool,
    /// Whether a stale device of the same name was deleted first.
    pub replaced_stale: bool,
}

impl fmt::Debug for Tun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("index", &self.index)
            .field("queues", &self.queues.len())
            .field("vnet_hdr", &self.vnet_hdr)
            .field("tcp_gso", &self.tcp_gso)
            .field("udp_gso", &self.udp_gso)
            .field("replaced_stale", &self.replaced_stale)
            .finish()
    }
}

/// Why the TUN device could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// There is no `/dev/net/tun`.
    #[error(
        "{TUN_PATH} is missing: load the tun module (`modprobe tun`); in a container, pass the device in \
         (`docker run --device /dev/net/tun`, or a hostPath volume for /dev/net/tun in Kubernetes)"
    )]
    NoTunDevice,
    /// The name is not a valid interface name.
    #[error("{0:?} is not a valid interface name: use 1 to 15 characters, none of them '/', ':' or whitespace")]
    InvalidName(String),
    /// Zero queues were asked for.
    #[error("a TUN device needs at least one queue")]
    NoQueues,
    /// A link that is not a TUN device has the name.
    #[error(
        "a {kind} link is already named {name:?}, and Weft only replaces its own TUN devices: remove it \
         (`ip link del {name}`) or give Weft another TUN name"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The link's kind.
        kind: String,
    },
    /// A TUN device of that name is open in another process.
    #[error(
        "the TUN device {name:?} is open in another process; is another weft router running? Stop it, \
         or remove the device with `ip link del {name}`"
    )]
    InUse {
        /// The name.
        name: String,
    },
    /// The caller lacks `CAP_NET_ADMIN`.
    #[error("creating the TUN device {name:?}: permission denied; the router needs CAP_NET_ADMIN (run it as root)")]
    PermissionDenied {
        /// The name.
        name: String,
    },
    /// The kernel refused to create the device or a queue.
    #[error("creating the TUN device {name:?}: {source}")]
    Create {
        /// The name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Looking up or deleting a link of the same name failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Creates the TUN device `name` with `queues` queues and MTU `mtu`, up and
/// without addresses, replacing a stale device of the same name (see the
/// module docs).
///
/// # Errors
///
/// See [`TunError`]; each variant says how to fix it.
pub async fn open(netlink: &Netlink, name: &str, mtu: u16, queues: usize) -> Result<Tun, TunError> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        return Err(TunError::InvalidName(name.to_owned()));
    }
    if queues == 0 {
        return Err(TunError::NoQueues);
    }
    if !Path::new(TUN_PATH).exists() {
        return Err(TunError::NoTunDevice);
    }

    let mut replaced_stale = false;
    if let Some(link) = netlink.link(name).await? {
        match link.kind {
            LinkKind::Tun { attached: true, .. } => return Err(TunError::InUse { name: name.to_owned() }),
            LinkKind::Tun { attached: false, .. } => {
                info!(
                    name,
                    index = link.index,
                    "deleting a stale TUN device left by an earlier run"
                );
                netlink.delete_link(link.index).await?;
                replaced_stale = true;
            }
            LinkKind::Other(kind) => {
                return Err(TunError::NameTaken {
                    name: name.to_owned(),
                    kind,
                });
            }
        }
    }

    let first = match build(name, true) {
        Ok(dev) => dev,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // TUNSETOFFLOAD refused even plain TSO (IFF_VNET_HDR itself is
            // older than any kernel we run on); a name race also lands here,
            // and the second attempt reports it.
            warn!(name, cause = %e, "the kernel refused TUN offloads; continuing without them");
            build(name, false).map_err(|e| create_error(name, e))?
        }
        Err(e) => return Err(create_error(name, e)),
    };
    let index = first.if_index().map_err(|e| create_error(name, e))?;
    // MTU and up in one netlink request, and only once IPv6 is off, so that
    // not even the first multicast report of a link coming up reaches the
    // packet path.
    if let Err(e) = super::sysctl::disable_ipv6(name) {
        warn!(name, error = %e, "cannot turn IPv6 off on the TUN device; the kernel's own IPv6 packets will be dropped as not_ipv4");
    }
    netlink.set_link(index, u32::from(mtu), true).await?;
    let vnet_hdr = first.tcp_gso();
    let udp_gso = first.udp_gso();
    let mut all = Vec::with_capacity(queues);
    for _ in 1..queues {
        all.push(first.try_clone().map_err(|e| create_error(name, e))?);
    }
    all.insert(0, first);
    for q in &all {
        q.set_nonblocking(false).map_err(|e| create_error(name, e))?;
    }
    info!(name, index, queues, vnet_hdr, udp_gso, "TUN device open");
    Ok(Tun {
        queues: all,
        name: name.to_owned(),
        index,
        vnet_hdr,
        tcp_gso: vnet_hdr,
        udp_gso,
        replaced_stale,
    })
}

/// The device, down and with the kernel's default MTU: [`open`] sets both.
fn build(name: &str, offload: bool) -> io::Result<SyncDevice> {
    DeviceBuilder::new()
        .name(name)
        .multi_queue(true)
        .offload(offload)
        .enable(false)
        .build_sync()
}

fn create_error(name: &str, source: io::Error) -> TunError {
    let name = name.to_owned();
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied { name },
        // TUNSETIFF answers EBUSY when a single-queue device of that name is
        // open, and EINVAL when the name belongs to a link of another kind
        // or a TUN device with other flags: both were checked just before,
        // so another process created the link in between.
        Some(libc::EBUSY) => TunError::InUse { name },
        _ => TunError::Create { name, source },
    }
}

const TUN_PATH: &str = "/dev/net/tun";
