//! The data plane's I/O: the packet path threads and the session driver.
//!
//! # Threads
//!
//! Per TUN queue there is one *worker*: a queue of the multi-queue TUN
//! device and a UDP socket bound to the data-plane port with `SO_REUSEPORT`,
//! served by two plain OS threads:
//!
//! - **outbound** (TUN → UDP): reads a batch from its queue (with
//!   `IFF_VNET_HDR`, one read returns a TCP or UDP super-packet of up to
//!   64 KB, which tun-rs splits into MTU-sized packets), looks up each
//!   destination's owner in the [`ForwardTable`], seals each packet in place
//!   with that peer's [`Keypair`], and sends each run of datagrams to one
//!   endpoint with one `sendmsg` using UDP GSO.
//! - **inbound** (UDP → TUN): receives with `recvmsg` and UDP GRO (a
//!   sender's GSO batch arrives whole, up to 64 KB), opens each datagram in
//!   place, drops inner packets whose
//!   source is not in the sending router's ranges, and writes the batch to
//!   the TUN queue, where tun-rs coalesces TCP segments back into
//!   super-packets (GRO) so the kernel sees few, large packets.
//!
//! Both threads block in the read itself (`read` on the TUN queue,
//! `recvmsg` on the socket), never in `poll` first:
//! a lone packet then costs one system call to receive instead of two,
//! which is most of what a latency-bound exchange (a ping-pong, a
//! request and its reply) spends in the router. [`Stopper::stop`] wakes
//! them: `shutdown(SHUT_RD)` on each socket makes a blocked `recvmsg`
//! return, and deleting the TUN device makes the kernel end every blocked
//! queue read with `EFAULT`; a thread then sees the stop flag and returns.
//!
//! The threads share one immutable [`View`] (forwarding table, keys and
//! endpoints), swapped whole by the driver whenever something changes
//! (`arc-swap`: a load is a few atomic operations, once per batch). Buffers
//! are allocated once per thread; the packet path allocates nothing except
//! a copy of a packet that has to wait for a handshake.
//!
//! # Driver
//!
//! A tokio task owns the sans-IO [`Sessions`]. The threads hand it what the
//! packet path cannot decide alone, over one bounded channel (a full channel
//! drops and counts, so a flood of handshakes cannot grow memory): handshake
//! datagrams, packets waiting for a session, datagrams for unknown sessions,
//! and the first datagram on new keys or from a new address. The daemon
//! hands it the peers (from the topology) and the ring (as ranges).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use ipam_crdt::PeerName;
use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn};
use quinn_udp::{Transmit as UdpTransmit, UdpSockRef, UdpSocketState};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use tun_rs::{GROTable, SyncDevice};

use super::clock::Clock;
use super::netlink::Netlink;
use crate::core::Time;
use crate::core::data::forward::{Decision, ForwardTable, Owner};
use crate::core::data::keypair::{Activity, Keypair, OpenError, PeerId};
use crate::core::data::session::{self, Event, HandshakeDrop, REKEY_AFTER_TIME, Sessions};
use crate::core::data::wire::{self, Malformed, Packet, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD};

/// Packets per TUN read batch (tun-rs splits one super-packet into at most
/// this many).
const TUN_BATCH: usize = 128;
/// Room in front of a packet written to the TUN device (at least the
/// virtio-net header).
const TUN_OFFSET: usize = 16;
/// Inner packets written to the TUN device per batch.
const TUN_WRITE_BATCH: usize = 128;
/// The most bytes of datagrams one GSO send carries.
const GSO_MAX_BYTES: usize = 65_000;
/// Events from the packet path the driver may have waiting.
const PATH_QUEUE: usize = 4096;
/// How long a send waits for room in a full socket buffer before the
/// packet path looks again (`SO_SNDTIMEO`: the sockets block).
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);
/// How long [`Stopper::stop`] waits for the threads.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// UDP socket buffers (set with the *FORCE options, as root).
const SOCKET_BUFFER: usize = 8 << 20;

/// What the packet path sees, replaced whole on every change.
#[derive(Debug, Default)]
pub struct View {
    forward: ForwardTable,
    peers: Vec<Option<PeerView>>,
    recv: HashMap<u32, Arc<Keypair>>,
}

#[derive(Debug)]
struct PeerView {
    send: Option<Arc<Keypair>>,
    endpoint: Option<SocketAddr>,
    activity: Arc<Activity>,
}

impl View {
    fn peer(&self, id: PeerId) -> Option<&PeerView> {
        self.peers.get(id.0 as usize).and_then(Option::as_ref)
    }
}

/// Why the packet path dropped a packet. One counter each, shown in
/// `weft status` and as `weft_dataplane_drops_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// A datagram that is not one of ours ([`Malformed`]).
    Malformed(Malformed),
    /// A transport datagram that did not authenticate.
    AuthFailed,
    /// A transport datagram seen before (or too far behind).
    Replayed,
    /// A transport datagram for keys past their lifetime.
    ExpiredKeys,
    /// A transport datagram for no session we have.
    UnknownSession,
    /// An inner packet whose source is not the sending router's.
    SpoofedSource,
    /// A decrypted inner packet that is not a well-formed IPv4 packet.
    BadInnerPacket,
    /// A packet from the TUN device that is not IPv4.
    NotIpv4,
    /// A packet for an address of ours that has no pod.
    NoLocalPod,
    /// A packet for a router we cannot reach.
    Unreachable,
    /// A packet for an address outside the pod range.
    OutsideRange,
    /// A packet that could not wait for a handshake (queue full).
    NoSession,
    /// A handshake datagram the driver had no room for.
    HandshakeOverload,
    /// A handshake datagram the session core refused.
    Handshake(HandshakeDrop),
    /// The UDP socket refused a send.
    SendFailed,
    /// The TUN device refused a write.
    TunWriteFailed,
    /// A read from the TUN device failed (for example a super-packet
    /// tun-rs cannot split).
    TunReadFailed,
}

impl DropReason {
    /// The reason's name in metrics and `weft status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(Malformed::Truncated) => "truncated",
            Self::Malformed(Malformed::Oversized) => "oversized",
            Self::Malformed(Malformed::UnknownType) => "unknown_type",
            Self::Malformed(Malformed::BadLength) => "bad_length",
            Self::AuthFailed => "auth_failed",
            Self::Replayed => "replayed",
            Self::ExpiredKeys => "expired_keys",
            Self::UnknownSession => "unknown_session",
            Self::SpoofedSource => "spoofed_source",
            Self::BadInnerPacket => "bad_inner_packet",
            Self::NotIpv4 => "not_ipv4",
            Self::NoLocalPod => "no_local_pod",
            Self::Unreachable => "unreachable",
            Self::OutsideRange => "outside_range",
            Self::NoSession => "no_session",
            Self::HandshakeOverload => "handshake_overload",
            Self::Handshake(h) => h.as_str(),
            Self::SendFailed => "send_failed",
            Self::TunWriteFailed => "tun_write_failed",
            Self::TunReadFailed => "tun_read_failed",
        }
    }

    /// Every reason, in a fixed order.
    pub fn all() -> impl Iterator<Item = Self> {
        [
            Malformed::Truncated,
            Malformed::Oversized,
            Malformed::UnknownType,
            Malformed::BadLength,
        ]
        .into_iter()
        .map(Self::Malformed)
        .chain([
            Self::AuthFailed,
            Self::Replayed,
            Self::ExpiredKeys,
            Self::UnknownSession,
            Self::SpoofedSource,
            Self::BadInnerPacket,
            Self::NotIpv4,
            Self::NoLocalPod,
            Self::Unreachable,
            Self::OutsideRange,
            Self::NoSession,
            Self::HandshakeOverload,
        ])
        .chain(HandshakeDrop::ALL.into_iter().map(Self::Handshake))
        .chain([Self::SendFailed, Self::TunWriteFailed, Self::TunReadFailed])
    }

    /// The counter's index: its place in [`DropReason::all`], by a match
    /// rather than a search, since every drop on the packet path counts.
    fn slot(self) -> usize {
        match self {
            Self::Malformed(m) => m as usize,
            Self::AuthFailed => 4,
            Self::Replayed => 5,
            Self::ExpiredKeys => 6,
            Self::UnknownSession => 7,
            Self::SpoofedSource => 8,
            Self::BadInnerPacket => 9,
            Self::NotIpv4 => 10,
            Self::NoLocalPod => 11,
            Self::Unreachable => 12,
            Self::OutsideRange => 13,
            Self::NoSession => 14,
            Self::HandshakeOverload => 15,
            Self::Handshake(h) => 16 + h as usize,
            Self::SendFailed => 16 + HandshakeDrop::ALL.len(),
            Self::TunWriteFailed => 17 + HandshakeDrop::ALL.len(),
            Self::TunReadFailed => 18 + HandshakeDrop::ALL.len(),
        }
    }
}

const DROP_KINDS: usize = 4 + 12 + HandshakeDrop::ALL.len() + 3;

/// The most TUN queues (and so packet-path workers) a router runs.
pub const MAX_QUEUES: usize = 8;

/// One packet thread's counters. Only that thread writes them, so a count is
/// a plain load and store rather than a locked read-modify-write, and each
/// lane has its cache lines to itself (128 bytes covers the adjacent-line
/// prefetch on x86): threads that shared a line would pass it back and
/// forth on every packet.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane {
    /// Inner packets: sent to peers (outbound) or written to the TUN
    /// device (inbound).
    packets: AtomicU64,
    /// Reads: from the TUN queue (outbound) or the UDP socket (inbound).
    reads: AtomicU64,
    /// UDP sends, one per GSO batch (outbound only: how many writes a
    /// batch for the TUN device takes is tun-rs's business).
    sends: AtomicU64,
}

impl Lane {
    /// Adds `n` to `counter`, one of this lane's. Only the lane's own
    /// thread may call this: it is not atomic against another writer.
    fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// Counters of the packet path: drops, shared by all threads (each is a
/// rare event), and one lane per thread for the per-packet counts.
#[derive(Debug)]
pub struct DataStats {
    drops: [AtomicU64; DROP_KINDS],
    outbound: [Lane; MAX_QUEUES],
    inbound: [Lane; MAX_QUEUES],
    /// Peers with keys to send with (as of the last change).
    pub sessions: AtomicU64,
    /// Peers known to the data plane.
    pub peers: AtomicU64,
    /// Peers by reachability: up, connecting, down (as of the driver's last step).
    pub reach: [AtomicU64; 3],
}

impl Default for DataStats {
    fn default() -> Self {
        Self {
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            outbound: std::array::from_fn(|_| Lane::default()),
            inbound: std::array::from_fn(|_| Lane::default()),
            sessions: AtomicU64::new(0),
            peers: AtomicU64::new(0),
            reach: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl DataStats {
    /// Every counter as plain numbers, for the metrics.
    pub fn counts(&self) -> crate::metrics::DataplaneCounts {
        crate::metrics::DataplaneCounts {
            drops: self.drops().into_iter().collect(),
            packets_in: self.rx_packets(),
            packets_out: self.tx_packets(),
            syscalls: Syscall::ALL.iter().map(|&c| (c.as_str(), self.syscalls(c))).collect(),
            sessions: self.sessions.load(Ordering::Relaxed),
            peers: self.reach().to_vec(),
        }
    }

    /// How many peers are up, connecting and down, with their label values.
    pub fn reach(&self) -> [(&'static str, u64); 3] {
        let n = |i: usize| self.reach[i].load(Ordering::Relaxed);
        [("up", n(0)), ("connecting", n(1)), ("down", n(2))]
    }
}

/// The system calls of the packet path, as `weft_dataplane_syscalls_total`
/// labels them: packets per call shows how well batching works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    /// Reads from a TUN queue (one may bring a 64 KB super-packet).
    TunRead,
    /// UDP sends (one per GSO batch).
    UdpSend,
    /// UDP receives (one may bring a whole GRO batch).
    UdpRecv,
}

impl Syscall {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 3] = [Self::TunRead, Self::UdpSend, Self::UdpRecv];

    /// The kind's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TunRead => "tun_read",
            Self::UdpSend => "udp_send",
            Self::UdpRecv => "udp_recv",
        }
    }
}

impl DataStats {
    /// Counts a drop.
    pub fn count(&self, why: DropReason) {
        self.drops[why.slot()].fetch_add(1, Ordering::Relaxed);
    }

    /// Every drop reason with its count (zeros included).
    pub fn drops(&self) -> BTreeMap<&'static str, u64> {
        DropReason::all()
            .map(|d| (d.as_str(), self.drops[d.slot()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Inner packets sent to peers.
    pub fn tx_packets(&self) -> u64 {
        sum(&self.outbound, |l| &l.packets)
    }

    /// Inner packets received from peers and written to the TUN device.
    pub fn rx_packets(&self) -> u64 {
        sum(&self.inbound, |l| &l.packets)
    }

    /// System calls of one kind, by all threads.
    pub fn syscalls(&self, kind: Syscall) -> u64 {
        match kind {
            Syscall::TunRead => sum(&self.outbound, |l| &l.reads),
            Syscall::UdpSend => sum(&self.outbound, |l| &l.sends),
            Syscall::UdpRecv => sum(&self.inbound, |l| &l.reads),
        }
    }
}

#[cfg(test)]
impl DataStats {
    /// Counts as outbound thread `lane` does.
    pub(crate) fn count_outbound(&self, lane: usize, packets: u64, reads: u64, sends: u64) {
        let l = &self.outbound[lane];
        Lane::add(&l.packets, packets);
        Lane::add(&l.reads, reads);
        Lane::add(&l.sends, sends);
    }

    /// Counts as inbound thread `lane` does.
    pub(crate) fn count_inbound(&self, lane: usize, packets: u64, reads: u64) {
        let l = &self.inbound[lane];
        Lane::add(&l.packets, packets);
        Lane::add(&l.reads, reads);
    }
}

fn sum(lanes: &[Lane], counter: impl Fn(&Lane) -> &AtomicU64) -> u64 {
    lanes
        .iter()
        .map(|l| counter(l).load(Ordering::Relaxed))
        .fold(0, u64::wrapping_add)
}

/// What the packet path tells the driver.
#[derive(Debug)]
enum FromPath {
    Handshake { from: SocketAddr, bytes: Vec<u8> },
    Need { peer: PeerId, packet: Option<Vec<u8>> },
    Unknown { from: SocketAddr, receiver: u32 },
    Authenticated { peer: PeerId, index: u32, from: SocketAddr },
}

/// A range of the ring: first and last address, and its owner.
pub type RingRange = (Ipv4Addr, Ipv4Addr, PeerName);

/// A peer as the topology describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its name.
    pub name: PeerName,
    /// Its static public key.
    pub public_key: [u8; 32],
    /// Where to try its data plane, in order
    /// ([`crate::core::endpoints::data_candidates`]).
    pub candidates: Vec<SocketAddr>,
}

/// A snapshot for `weft status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataStatus {
    /// Peers with a session (keys to send with).
    pub sessions: u64,
    /// Peers known.
    pub peers: u64,
    /// Drops by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// Inner packets sent.
    pub tx_packets: u64,
    /// Inner packets received.
    pub rx_packets: u64,
}

/// What the daemon tells the driver.
#[derive(Debug)]
enum Control {
    Peers(Vec<PeerInfo>),
    Ring { pod_range: Ipv4Net, ranges: Vec<RingRange> },
}

/// How the data plane was set up.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// MTU of the TUN device (inner packets).
    pub mtu: u16,
    /// Whether the TUN queues carry virtio-net headers (offloads).
    pub vnet_hdr: bool,
    /// The TUN device's interface index ([`Stopper::stop`] deletes it).
    pub tun_index: u32,
}

/// A handle on the running data plane.
#[derive(Debug, Clone)]
pub struct DataPlane {
    control: mpsc::Sender<Control>,
    stats: Arc<DataStats>,
    reach: Arc<ArcSwap<Vec<session::PeerStatus>>>,
}

/// What stops the data plane's threads.
pub struct Stopper {
    stop: Arc<AtomicBool>,
    sockets: Vec<Arc<UdpSocket>>,
    tun_index: u32,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("threads", &self.threads.len())
            .field("tun_index", &self.tun_index)
            .finish_non_exhaustive()
    }
}

impl Stopper {
    /// Stops the threads and waits for them, at most 5 s: a
    /// thread still blocked then is left to the process's exit, so a
    /// shutdown never hangs. This deletes the TUN device (the only way to
    /// wake a thread blocked reading a queue), which the kernel would do
    /// anyway once the queues close; the routes through it go with it, and
    /// the next start creates it afresh.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &self.sockets {
            // On an unconnected UDP socket this reports ENOTCONN, but the
            // kernel still marks the socket shut for reading and wakes its
            // readers (inet_shutdown), which is all that is wanted here.
            let _ = socket2::SockRef::from(&**s).shutdown(std::net::Shutdown::Read);
        }
        match Netlink::new() {
            Ok(netlink) => {
                if let Err(e) = netlink.delete_link(self.tun_index).await {
                    warn!(error = %e, "cannot delete the TUN device to stop the packet path");
                }
            }
            Err(e) => warn!(error = %e, "cannot open netlink to stop the packet path"),
        }
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(STOP_WAIT, joined).await.is_err() {
            warn!("the packet path's threads did not stop in time; leaving them to the process's exit");
        }
    }
}

/// Binds `workers` UDP sockets to `port` on every address with
/// `SO_REUSEPORT`, blocking (sends time out after 10 ms), with large
/// buffers.
///
/// # Errors
/// If the port is taken by another program, or sockets cannot be made.
pub fn bind_sockets(port: u16, workers: usize) -> io::Result<Vec<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    (0..workers.max(1))
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_port(true)?;
            // Blocking, so the inbound thread waits in `recvmsg` itself;
            // a send into a full buffer waits at most SEND_TIMEOUT.
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            force_buffers(&s);
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            Ok(s.into())
        })
        .collect()
}

/// Large socket buffers: with root the *FORCE options pass `rmem_max`; if
/// they fail, the plain options get what the system allows.
fn force_buffers(s: &socket2::Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(s, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    }
}

/// Starts the packet path on `queues` (one TUN queue each) and `sockets`
/// (as many), and returns the handle, the stopper, and the driver to spawn.
///
/// # Errors
/// If a socket cannot be set up for batching, or a thread cannot start.
pub fn start(
    settings: Settings,
    queues: Vec<SyncDevice>,
    sockets: Vec<UdpSocket>,
    sessions: Sessions,
    clock: Clock,
    stats: Arc<DataStats>,
) -> io::Result<(DataPlane, Stopper, impl Future<Output = ()> + Send + 'static)> {
    // Each thread counts in a lane of its own, and there are this many.
    if queues.len() > MAX_QUEUES {
        return Err(io::Error::other(format!(
            "{} TUN queues asked for; the packet path runs at most {MAX_QUEUES}",
            queues.len()
        )));
    }
    let view = Arc::new(ArcSwap::from_pointee(View::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (path_tx, path_rx) = mpsc::channel(PATH_QUEUE);
    let (control_tx, control_rx) = mpsc::channel(64);
    let driver_socket = sockets
        .first()
        .ok_or_else(|| io::Error::other("no UDP socket"))?
        .try_clone()?;
    let mut threads = Vec::new();
    let mut shared_sockets = Vec::new();
    let queues: Vec<Arc<SyncDevice>> = queues.into_iter().map(Arc::new).collect();
    for (i, (queue, socket)) in queues.iter().zip(sockets).enumerate() {
        let socket = Arc::new(socket);
        let state = Arc::new(UdpSocketState::new(UdpSockRef::from(&*socket))?);
        // quinn-udp's set-up makes the socket non-blocking; the inbound
        // thread waits in the receive itself, so make it blocking again.
        socket2::SockRef::from(&*socket).set_nonblocking(false)?;
        // It also asks for the packet-info and TOS control messages, which
        // its own receive path reads and ours does not: the kernel would
        // build both on every receive for nothing.
        {
            use nix::sys::socket::{setsockopt, sockopt};
            setsockopt(&*socket, sockopt::Ipv4PacketInfo, &false)?;
            setsockopt(&*socket, sockopt::IpRecvTos, &false)?;
        }
        shared_sockets.push(socket.clone());
        let out = Outbound {
            settings,
            queue: queue.clone(),
            socket: socket.clone(),
            state: state.clone(),
            view: view.clone(),
            stats: stats.clone(),
            path: path_tx.clone(),
            clock,
            stop: stop.clone(),
            lane: i,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("weft-out-{i}"))
                .spawn(move || out.run())?,
        );
        let inb = Inbound {
            vnet_hdr: settings.vnet_hdr,
            queue: queue.clone(),
            socket,
            view: view.clone(),
            stats: stats.clone(),
            path: path_tx.clone(),
            clock,
            stop: stop.clone(),
            lane: i,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("weft-in-{i}"))
                .spawn(move || inb.run())?,
        );
    }
    let reach = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let driver = Driver {
        sessions,
        view,
        stats: stats.clone(),
        reach: reach.clone(),
        socket: driver_socket,
        clock,
        ring: None,
    };
    let fut = driver.run(path_rx, control_rx);
    Ok((
        DataPlane {
            control: control_tx,
            stats,
            reach,
        },
        Stopper {
            stop,
            sockets: shared_sockets,
            tun_index: settings.tun_index,
            threads,
        },
        fut,
    ))
}

impl DataPlane {
    /// Replaces the set of peers (from the topology).
    pub fn set_peers(&self, peers: Vec<PeerInfo>) {
        let _ = self.control.try_send(Control::Peers(peers));
    }

    /// Replaces the ring's ranges.
    pub fn set_ring(&self, pod_range: Ipv4Net, ranges: Vec<RingRange>) {
        let _ = self.control.try_send(Control::Ring { pod_range, ranges });
    }

    /// A snapshot for `weft status`.
    pub fn snapshot(&self) -> DataStatus {
        let s = &self.stats;
        DataStatus {
            sessions: s.sessions.load(Ordering::Relaxed),
            peers: s.peers.load(Ordering::Relaxed),
            drops: s.drops(),
            tx_packets: s.tx_packets(),
            rx_packets: s.rx_packets(),
        }
    }

    /// The packet path's counters.
    pub fn stats(&self) -> &Arc<DataStats> {
        &self.stats
    }

    /// Whether each peer's data plane can be reached, and where its
    /// datagrams go, as of the driver's last step (at most [`session::TICK`] old).
    pub fn peer_status(&self) -> Arc<Vec<session::PeerStatus>> {
        self.reach.load_full()
    }
}

// ---- the driver ----

struct Driver {
    sessions: Sessions,
    view: Arc<ArcSwap<View>>,
    stats: Arc<DataStats>,
    /// What [`DataPlane::peer_status`] reads.
    reach: Arc<ArcSwap<Vec<session::PeerStatus>>>,
    socket: UdpSocket,
    clock: Clock,
    ring: Option<(Ipv4Net, Vec<RingRange>)>,
}

impl Driver {
    async fn run(mut self, mut path: mpsc::Receiver<FromPath>, mut control: mpsc::Receiver<Control>) {
        loop {
            let deadline = self.clock.deadline(self.sessions.poll_timeout());
            let mut publish = false;
            tokio::select! {
                ev = path.recv() => match ev {
                    Some(ev) => self.handle_path(ev),
                    None => return,
                },
                c = control.recv() => match c {
                    Some(Control::Peers(peers)) => { self.set_peers(peers); publish = true; }
                    Some(Control::Ring { pod_range, ranges }) => { self.ring = Some((pod_range, ranges)); publish = true; }
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => {
                    self.sessions.handle_timeout(self.clock.now());
                }
            }
            self.drain(publish);
        }
    }

    fn handle_path(&mut self, ev: FromPath) {
        let now = self.clock.now();
        match ev {
            FromPath::Handshake { from, bytes } => self.sessions.handle_datagram(now, from, &bytes),
            FromPath::Need { peer, packet } => self.sessions.need_session(now, peer, packet),
            FromPath::Unknown { from, receiver } => self.sessions.unknown_index(now, from, receiver),
            FromPath::Authenticated { peer, index, from } => self.sessions.authenticated(now, peer, index, from),
        }
    }

    fn set_peers(&mut self, peers: Vec<PeerInfo>) {
        let keep: std::collections::HashSet<PeerName> = peers.iter().map(|p| p.name).collect();
        let gone: Vec<PeerName> = self
            .sessions
            .peers()
            .map(|(_, name, _, _)| name)
            .filter(|n| !keep.contains(n))
            .collect();
        for name in gone {
            self.sessions.remove_peer(name);
        }
        let now = self.clock.now();
        for p in peers {
            if let Err(e) = self.sessions.upsert_peer(now, p.name, p.public_key, &p.candidates) {
                warn!(peer = %p.name, "ignoring a peer's data plane: {e}");
            }
        }
    }

    fn drain(&mut self, publish: bool) {
        // Keys before datagrams: a handshake response must not reach the
        // initiator before the packet path knows the keys its first
        // datagram will use (it would be dropped as unknown_session).
        if self.sessions.take_changed() || publish {
            self.publish();
        }
        while let Some(t) = self.sessions.poll_transmit() {
            // The socket blocks (for the packet path's sake); this task
            // runs on the async runtime, so it never waits for room.
            let sent =
                socket2::SockRef::from(&self.socket).send_to_with_flags(&t.bytes, &t.to.into(), libc::MSG_DONTWAIT);
            if sent.is_err() {
                self.stats.count(DropReason::SendFailed);
            }
        }
        while let Some(ev) = self.sessions.poll_event() {
            match ev {
                Event::Dropped(why) => self.stats.count(DropReason::Handshake(why)),
                Event::Established { peer, initiator } => debug!(%peer, initiator, "data-plane session established"),
                Event::GaveUp { peer, dropped } => {
                    info!(%peer, dropped, "no answer to data-plane handshakes for 90 s; the peer is down, still trying now and then");
                }
                Event::Roamed { peer, to } => info!(%peer, %to, "peer's data-plane endpoint moved"),
                Event::Unsendable { packets, .. } => {
                    for _ in 0..packets {
                        self.stats.count(DropReason::NoSession);
                    }
                }
            }
        }
        if self.sessions.take_changed() {
            self.publish();
        }
        let reach: Vec<session::PeerStatus> = self.sessions.peer_status(self.clock.now()).collect();
        if **self.reach.load() != reach {
            let mut counts = [0u64; 3];
            for r in &reach {
                counts[match r.reach {
                    session::Reach::Up => 0,
                    session::Reach::Connecting => 1,
                    session::Reach::Down => 2,
                }] += 1;
            }
            for (slot, n) in self.stats.reach.iter().zip(counts) {
                slot.store(n, Ordering::Relaxed);
            }
            self.reach.store(Arc::new(reach));
        }
    }

    fn publish(&mut self) {
        let now = self.clock.now();
        let mut peers: Vec<Option<PeerView>> = Vec::new();
        for (id, _, endpoint, activity) in self.sessions.peers() {
            let i = id.0 as usize;
            if peers.len() <= i {
                peers.resize_with(i + 1, || None);
            }
            peers[i] = Some(PeerView {
                send: self.sessions.send_keys(id, now).cloned(),
                endpoint,
                activity: activity.clone(),
            });
        }
        let recv = self.sessions.recv_keys().map(|k| (k.local_index, k.clone())).collect();
        let forward = match &self.ring {
            Some((pod_range, ranges)) => ForwardTable::new(
                *pod_range,
                ranges.iter().map(|&(a, b, owner)| {
                    let o = if owner == self.sessions.me() {
                        Owner::Local
                    } else {
                        self.sessions.peer_id(owner).map_or(Owner::Unknown, Owner::Peer)
                    };
                    (a, b, o)
                }),
            ),
            None => ForwardTable::default(),
        };
        let sessions = peers.iter().flatten().filter(|p| p.send.is_some()).count();
        self.stats.sessions.store(sessions as u64, Ordering::Relaxed);
        self.stats
            .peers
            .store(peers.iter().flatten().count() as u64, Ordering::Relaxed);
        self.view.store(Arc::new(View { forward, peers, recv }));
    }
}

// ---- outbound: TUN -> UDP ----

struct Outbound {
    settings: Settings,
    queue: Arc<SyncDevice>,
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    view: Arc<ArcSwap<View>>,
    stats: Arc<DataStats>,
    path: mpsc::Sender<FromPath>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    /// This thread's counters: `stats.outbound[lane]`.
    lane: usize,
}

/// A run of sealed datagrams to one endpoint, gathered for one GSO send.
struct Run {
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    closed: bool,
    bytes: Vec<u8>,
}

impl Outbound {
    fn run(self) {
        let stride = usize::from(self.settings.mtu) + TRANSPORT_OVERHEAD;
        let mut big = vec![0u8; TUN_BATCH * stride];
        let mut original = vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65_535];
        let mut sizes = [0usize; TUN_BATCH];
        let max_segments = self.state.max_gso_segments().max(1);
        let mut run = Run {
            to: None,
            segment: 0,
            count: 0,
            closed: false,
            bytes: Vec::with_capacity(GSO_MAX_BYTES + stride),
        };
        // The queue blocks: the read itself waits for the next packet.
        loop {
            let n = {
                let mut chunks = big.chunks_mut(stride);
                let mut bufs: [&mut [u8]; TUN_BATCH] = std::array::from_fn(|_| chunks.next().unwrap_or_default());
                let read = self
                    .queue
                    .recv_multiple(&mut original, &mut bufs, &mut sizes, TRANSPORT_HEADER_LEN);
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                match read {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => {
                        continue;
                    }
                    // The device is gone (EFAULT for a reader it woke on
                    // the way out, EBADFD after): nothing will come again.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EFAULT | libc::EBADFD)) => {
                        warn!("the TUN device was deleted under the packet path; this queue's outbound thread ends");
                        return;
                    }
                    Err(e) => {
                        debug!("TUN read: {e}");
                        self.stats.count(DropReason::TunReadFailed);
                        continue;
                    }
                }
            };
            Lane::add(&self.lane().reads, 1);
            let now = self.clock.now();
            let view = self.view.load();
            for (i, &len) in sizes.iter().enumerate().take(n) {
                let buf = &mut big[i * stride..(i + 1) * stride];
                let Some(sealed) = self.seal_one(&view, now, buf, len) else {
                    continue;
                };
                let (to, dlen) = sealed;
                let fits = run.to == Some(to)
                    && !run.closed
                    && dlen <= run.segment
                    && run.count < max_segments
                    && run.bytes.len() + dlen <= GSO_MAX_BYTES;
                if !fits {
                    self.flush(&mut run);
                    run.to = Some(to);
                    run.segment = dlen;
                }
                run.bytes.extend_from_slice(&buf[..dlen]);
                run.count += 1;
                if dlen < run.segment {
                    run.closed = true;
                }
            }
            self.flush(&mut run);
        }
    }

    /// Seals the packet in `buf` (at [`TRANSPORT_HEADER_LEN`], `len` bytes)
    /// for its destination, or drops it or hands it to the driver. Returns
    /// where to send the datagram now in `buf[..n]`.
    fn seal_one(&self, view: &View, now: Time, buf: &mut [u8], len: usize) -> Option<(SocketAddr, usize)> {
        let inner = &buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        let Some(dst) = ipv4_dst(inner) else {
            self.stats.count(DropReason::NotIpv4);
            return None;
        };
        let via = match view.forward.decide(dst) {
            Decision::Send { via, .. } => via,
            Decision::Local => return self.dropped(DropReason::NoLocalPod),
            Decision::Unreachable => return self.dropped(DropReason::Unreachable),
            Decision::OutsideRange => return self.dropped(DropReason::OutsideRange),
        };
        let Some(peer) = view.peer(via) else {
            return self.dropped(DropReason::Unreachable);
        };
        let keys = peer.send.as_ref().filter(|k| k.usable(now));
        let (Some(keys), Some(to)) = (keys, peer.endpoint) else {
            // Hand a copy to the driver, which queues it until a handshake.
            let packet = session::staged_packet(inner);
            if self
                .path
                .try_send(FromPath::Need {
                    peer: via,
                    packet: Some(packet),
                })
                .is_err()
            {
                self.stats.count(DropReason::NoSession);
            }
            return None;
        };
        if keys.wants_rekey(now, REKEY_AFTER_TIME) && once_per(&peer.activity.last_asked, now, 100) {
            let _ = self.path.try_send(FromPath::Need {
                peer: via,
                packet: None,
            });
        }
        match keys.seal(now, buf, len) {
            Ok(n) => {
                Lane::add(&self.lane().packets, 1);
                Some((to, n))
            }
            Err(_) => {
                let _ = self.path.try_send(FromPath::Need {
                    peer: via,
                    packet: Some(session::staged_packet(
                        &buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len],
                    )),
                });
                None
            }
        }
    }

    fn lane(&self) -> &Lane {
        &self.stats.outbound[self.lane]
    }

    fn dropped(&self, why: DropReason) -> Option<(SocketAddr, usize)> {
        self.stats.count(why);
        None
    }

    fn flush(&self, run: &mut Run) {
        if let Some(to) = run.to
            && run.count > 0
        {
            let sent = if run.count == 1 {
                // A lone datagram (a ping, a request, its reply: what
                // latency is made of) goes out with a plain `sendto`.
                // quinn-udp's `sendmsg` always attaches an IP_TOS control
                // message, which the kernel would parse for nothing.
                send_with_retry(|| self.socket.send_to(&run.bytes, to).map(drop))
            } else {
                let t = UdpTransmit {
                    destination: to,
                    ecn: None,
                    contents: &run.bytes,
                    segment_size: Some(run.segment),
                    src_ip: None,
                };
                send_with_retry(|| self.state.send(UdpSockRef::from(&*self.socket), &t))
            };
            if sent.is_err() {
                self.stats.count(DropReason::SendFailed);
            }
            Lane::add(&self.lane().sends, 1);
        }
        run.to = None;
        run.count = 0;
        run.closed = false;
        run.bytes.clear();
    }
}

/// Sends, waiting for room if the socket buffer is full: each attempt
/// blocks for up to [`SEND_TIMEOUT`], so this gives up after about half a
/// second, and the caller counts the drop.
fn send_with_retry(mut send: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    for _ in 0..50 {
        match send() {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            other => return other,
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}

/// Whether at least `every_ms` passed since the time in `last`, which then
/// becomes `now`: the packet path tells the driver something at most that
/// often per peer (racing threads may both tell it, which is harmless).
fn once_per(last: &AtomicU64, now: Time, every_ms: u64) -> bool {
    if now.as_millis().saturating_sub(last.load(Ordering::Relaxed)) < every_ms {
        return false;
    }
    last.store(now.as_millis(), Ordering::Relaxed);
    true
}

/// The destination of an IPv4 packet, if it is one.
fn ipv4_dst(p: &[u8]) -> Option<Ipv4Addr> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
}

/// The source and total length of a well-formed IPv4 packet of at most
/// `p.len()` bytes.
fn ipv4_src_len(p: &[u8]) -> Option<(Ipv4Addr, usize)> {
    if p.len() < 20 || p[0] >> 4 != 4 || usize::from(p[0] & 0x0f) * 4 < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total < usize::from(p[0] & 0x0f) * 4 || total > p.len() {
        return None;
    }
    Some((Ipv4Addr::new(p[12], p[13], p[14], p[15]), total))
}

// ---- inbound: UDP -> TUN ----

struct Inbound {
    /// Whether the queue carries virtio-net headers.
    vnet_hdr: bool,
    queue: Arc<SyncDevice>,
    socket: Arc<UdpSocket>,
    view: Arc<ArcSwap<View>>,
    stats: Arc<DataStats>,
    path: mpsc::Sender<FromPath>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    /// This thread's counters: `stats.inbound[lane]`.
    lane: usize,
}

impl Inbound {
    fn run(self) {
        let mut buf = vec![0u8; 65_535];
        // Room for the one control message the socket still asks for (see
        // `start`): the GRO segment size.
        let mut cmsgs = nix::cmsg_space!(libc::c_int);
        let mut out: Vec<Vec<u8>> = (0..TUN_WRITE_BATCH)
            .map(|_| Vec::with_capacity(TUN_OFFSET + 65_535))
            .collect();
        let mut gro = GROTable::default();
        let fd = self.socket.as_raw_fd();
        loop {
            // Blocks until a datagram comes: one system call for a lone
            // packet. Under load the sender's GSO batches arrive whole (the
            // socket has UDP_GRO), so one receive still brings up to 64 KB.
            let result = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                nix::sys::socket::recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsgs), MsgFlags::empty()).map(|msg| {
                    let gro = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok(),
                            _ => None,
                        })
                    });
                    let from = msg.address.map(|a| SocketAddr::from((a.ip(), a.port())));
                    (msg.bytes, gro.unwrap_or(msg.bytes), from)
                })
            };
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let (len, stride, from) = match result {
                Ok((len, stride, Some(from))) => (len, stride, from),
                Ok(_) => continue,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => {
                    debug!("UDP receive: {e}");
                    continue;
                }
            };
            Lane::add(&self.lane().reads, 1);
            if len == 0 {
                self.stats.count(DropReason::Malformed(Malformed::Truncated));
                continue;
            }
            let now = self.clock.now();
            let view = self.view.load();
            let mut k = 0;
            for seg in buf[..len].chunks_mut(stride.max(1)) {
                if let Some(len) = self.open_one(&view, now, from, seg) {
                    let o = &mut out[k];
                    o.clear();
                    o.resize(TUN_OFFSET, 0);
                    o.extend_from_slice(&seg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]);
                    k += 1;
                    if k == out.len() {
                        self.write(&mut gro, &mut out[..k]);
                        k = 0;
                    }
                }
            }
            if k > 0 {
                self.write(&mut gro, &mut out[..k]);
            }
        }
    }

    fn lane(&self) -> &Lane {
        &self.stats.inbound[self.lane]
    }

    /// Writes `out` (each packet at [`TUN_OFFSET`], zeros in front) to the
    /// TUN queue.
    fn write(&self, gro: &mut GROTable, out: &mut [Vec<u8>]) {
        let n = out.len() as u64;
        let written = match out {
            // A lone packet has nothing to coalesce with: it goes straight
            // to the queue, behind an all-zero virtio-net header (no
            // offload asked for), without a pass through the GRO tables.
            [one] => {
                let start = TUN_OFFSET - if self.vnet_hdr { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 };
                self.queue.send(&one[start..]).map(drop)
            }
            _ => self.queue.send_multiple(gro, out, TUN_OFFSET).map(drop),
        };
        match written {
            Ok(()) => Lane::add(&self.lane().packets, n),
            Err(e) => {
                debug!("TUN write: {e}");
                self.stats.count(DropReason::TunWriteFailed);
            }
        }
    }

    /// Handles one datagram; returns the length of the inner packet now at
    /// `seg[TRANSPORT_HEADER_LEN..]` if it is to be written to the TUN device.
    fn open_one(&self, view: &View, now: Time, from: SocketAddr, seg: &mut [u8]) -> Option<usize> {
        let (receiver, counter) = match wire::parse(seg) {
            Ok(Packet::Transport { receiver, counter }) => (receiver, counter),
            Ok(_) => {
                if self
                    .path
                    .try_send(FromPath::Handshake {
                        from,
                        bytes: seg.to_vec(),
                    })
                    .is_err()
                {
                    self.stats.count(DropReason::HandshakeOverload);
                }
                return None;
            }
            Err(m) => {
                self.stats.count(DropReason::Malformed(m));
                return None;
            }
        };
        let Some(keys) = view.recv.get(&receiver) else {
            self.stats.count(DropReason::UnknownSession);
            let _ = self.path.try_send(FromPath::Unknown { from, receiver });
            return None;
        };
        let was_confirmed = keys.confirmed();
        let len = match keys.open(now, counter, seg) {
            Ok(len) => len,
            Err(e) => {
                self.stats.count(match e {
                    OpenError::Auth => DropReason::AuthFailed,
                    OpenError::Replayed => DropReason::Replayed,
                    OpenError::Expired => DropReason::ExpiredKeys,
                });
                return None;
            }
        };
        let moved = view.peer(keys.peer).is_none_or(|p| p.endpoint != Some(from));
        let promote = !was_confirmed || view.peer(keys.peer).is_none_or(|p| p.send.is_none());
        if (moved || promote)
            && view
                .peer(keys.peer)
                .is_none_or(|p| once_per(&p.activity.last_noticed, now, 50))
        {
            let _ = self.path.try_send(FromPath::Authenticated {
                peer: keys.peer,
                index: keys.local_index,
                from,
            });
        }
        if len == 0 {
            return None; // keepalive
        }
        let inner = &seg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
        let Some((src, total)) = ipv4_src_len(inner) else {
            self.stats.count(DropReason::BadInnerPacket);
            return None;
        };
        if !view.forward.may_send_from(keys.peer, src) {
            self.stats.count(DropReason::SpoofedSource);
            return None;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_a_distinct_name_and_slot() {
        let names: std::collections::BTreeSet<_> = DropReason::all().map(DropReason::as_str).collect();
        assert_eq!(names.len(), DropReason::all().count());
        assert_eq!(DropReason::all().count(), DROP_KINDS);
        for (i, d) in DropReason::all().enumerate() {
            assert_eq!(d.slot(), i, "{d:?}");
        }
        let stats = DataStats::default();
        stats.count(DropReason::SpoofedSource);
        stats.count(DropReason::Handshake(HandshakeDrop::BadMac));
        let d = stats.drops();
        assert_eq!(d["spoofed_source"], 1);
        assert_eq!(d["bad_mac"], 1);
        assert_eq!(d.values().sum::<u64>(), 2);
    }

    #[test]
    fn each_thread_counts_in_its_own_lane_and_readers_see_the_sums() {
        // One lane per cache-line pair: no two threads write the same line.
        assert_eq!(align_of::<Lane>(), 128);
        assert_eq!(size_of::<Lane>(), 128);
        let stats = DataStats::default();
        stats.count_outbound(0, 100, 2, 3);
        stats.count_outbound(MAX_QUEUES - 1, 5, 5, 5);
        stats.count_inbound(1, 40, 7);
        stats.count_inbound(0, 2, 1);
        assert_eq!(stats.tx_packets(), 105);
        assert_eq!(stats.rx_packets(), 42);
        assert_eq!(stats.syscalls(Syscall::TunRead), 7);
        assert_eq!(stats.syscalls(Syscall::UdpSend), 8);
        assert_eq!(stats.syscalls(Syscall::UdpRecv), 8);
        let names: std::collections::BTreeSet<_> = Syscall::ALL.into_iter().map(Syscall::as_str).collect();
        assert_eq!(names.len(), Syscall::ALL.len());
        // The metrics read the same sums.
        stats.count(DropReason::Replayed);
        stats.reach[0].store(2, Ordering::Relaxed);
        let c = stats.counts();
        assert_eq!((c.packets_out, c.packets_in), (105, 42));
        assert_eq!(c.syscalls, vec![("tun_read", 7), ("udp_send", 8), ("udp_recv", 8)]);
        assert!(c.drops.contains(&("replayed", 1)), "{:?}", c.drops);
        assert_eq!(c.peers, vec![("up", 2), ("connecting", 0), ("down", 0)]);
    }

    #[test]
    fn inner_packets_are_checked_before_use() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[12..16].copy_from_slice(&[10, 32, 1, 2]);
        p[16..20].copy_from_slice(&[10, 32, 2, 2]);
        assert_eq!(ipv4_src_len(&p), Some((Ipv4Addr::new(10, 32, 1, 2), 28)));
        assert_eq!(ipv4_dst(&p), Some(Ipv4Addr::new(10, 32, 2, 2)));
        // Trailing bytes beyond the total length are cut off.
        let mut long = p.to_vec();
        long.extend_from_slice(&[0; 5]);
        assert_eq!(ipv4_src_len(&long).map(|x| x.1), Some(28));
        // Claims more than it has; IPv6; too short; bad header length.
        p[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(ipv4_src_len(&p), None);
        assert_eq!(ipv4_dst(&[0x60; 40]), None);
        assert_eq!(ipv4_src_len(&[0x45; 10]), None);
        let mut bad_ihl = [0u8; 28];
        bad_ihl[0] = 0x44;
        assert_eq!(ipv4_src_len(&bad_ihl), None);
    }
}
