//! The data plane as the daemon runs it: the TUN device, the kernel's
//! routes and firewall, the host address, and the packet path.
//!
//! [`Prepared::open`] does everything that can fail at launch, before the
//! router announces itself: it picks the MTU, opens the TUN device (one
//! queue per core), binds the data-plane sockets, enables IPv4 forwarding
//! and installs the firewall rules. [`Prepared::start`] then starts the
//! packet path ([`super::dataplane`]) and a *kernel task* that keeps the
//! routes and the host address in step with the ring: the daemon sends it
//! the desired state ([`Desired`]) whenever the ring changes, and it applies
//! the difference through netlink, and again every [`RESYNC`] so that a
//! route someone deleted by hand comes back.

use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::clock::Clock;
use super::dataplane::{self, DataPlane, DataStats, PeerInfo, Settings, Stopper};
use super::firewall::{self, Iptables};
use super::netlink::Netlink;
use crate::config::LaunchConfig;
use crate::core::data::session::{Mode, PERSISTENT_KEEPALIVE, Sessions};
use crate::core::data::wire::TRANSPORT_OVERHEAD;
use crate::core::node::{DataPeer, Routes};
use crate::core::reconcile::{self, Desired};
use crate::identity::Identity;
use crate::secret::{ClusterSecret, DATA_PSK_LABEL};

/// The TUN device's name.
pub const TUN_NAME: &str = reconcile::TUN_NAME;
/// How often the kernel task re-applies the desired state, and the
/// firewall task the firewall rules.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How often the firewall task looks whether the `FORWARD` chain can refuse
/// traffic: the longest a firewall started after Weft can drop pod traffic.
pub const FORWARD_CHECK: Duration = Duration::from_secs(5);
/// How long stopping waits for an apply in progress (`iptables -w` may wait
/// for another program's lock).
const FIREWALL_STOP_WAIT: Duration = Duration::from_secs(10);
/// IPv4 and UDP headers in front of every data-plane datagram.
const UDP_IPV4_OVERHEAD: u16 = 28;

/// Why the data plane cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The TUN device cannot be made.
    #[error(transparent)]
    Tun(#[from] super::tun::TunError),
    /// Netlink cannot be opened or refused a change.
    #[error(transparent)]
    Netlink(#[from] super::netlink::NetlinkError),
    /// The data-plane port cannot be bound.
    #[error(
        "cannot bind the data-plane port udp/{port}: {error}; is another router running? Choose another port with \
         --dataplane-port"
    )]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        error: std::io::Error,
    },
    /// Forwarding cannot be enabled.
    #[error(transparent)]
    Forwarding(#[from] super::sysctl::SysctlError),
    /// The firewall rules cannot be installed.
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
    /// The packet path cannot start.
    #[error("cannot start the packet path: {0}")]
    Start(std::io::Error),
}

/// The data plane, opened but not started.
#[derive(Debug)]
pub struct Prepared {
    netlink: Netlink,
    tun: super::tun::Tun,
    sockets: Vec<std::net::UdpSocket>,
    sessions: Sessions,
    settings: Settings,
    port: u16,
    pod_range: Ipv4Net,
    masquerade: bool,
    iptables: Iptables,
    stats: Arc<DataStats>,
}

impl Prepared {
    /// The packet path's counters (for metrics).
    pub fn stats(&self) -> Arc<DataStats> {
        self.stats.clone()
    }

    /// Opens the TUN device and sockets and installs the firewall rules.
    ///
    /// # Errors
    /// [`HostError`], saying what to fix.
    pub async fn open(
        config: &LaunchConfig,
        identity: &Identity,
        secret: &ClusterSecret,
        clock: Clock,
    ) -> Result<Self, HostError> {
        let IpNet::V4(pod_range) = config.ipalloc_range.net() else {
            unreachable!("pools are IPv4 (Pool::new refuses IPv6)")
        };
        let mtu = config.mtu.map_or_else(default_mtu, |m| m.get());
        let queues = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(dataplane::MAX_QUEUES);
        let netlink = Netlink::new()?;
        let tun = super::tun::open(&netlink, TUN_NAME, mtu, queues).await?;
        let port = config.dataplane_port.get();
        let sockets =
            dataplane::bind_sockets(port, tun.queues.len()).map_err(|error| HostError::Bind { port, error })?;
        if super::sysctl::enable_ip_forwarding()? == super::sysctl::Forwarding::Enabled {
            info!("enabled IPv4 forwarding");
        }
        let masquerade = config.masquerade;
        let iptables = tokio::task::spawn_blocking(move || firewall::apply(pod_range, TUN_NAME, masquerade))
            .await
            .map_err(|e| HostError::Start(std::io::Error::other(e)))??;
        info!(masquerade, ?iptables, "firewall rules installed");
        let now = clock.now();
        let sessions = Sessions::new(
            identity,
            secret.derive(DATA_PSK_LABEL),
            clock.wall_at(crate::core::Time::ZERO),
            rand::make_rng(),
            now,
        )
        .with_mode(Mode::Eager {
            keepalive: PERSISTENT_KEEPALIVE,
        });
        info!(
            mtu,
            queues = tun.queues.len(),
            vnet_hdr = tun.vnet_hdr,
            tcp_offload = tun.tcp_gso,
            udp_offload = tun.udp_gso,
            port,
            "data plane ready"
        );
        Ok(Self {
            netlink,
            settings: Settings {
                mtu,
                vnet_hdr: tun.vnet_hdr,
                tun_index: tun.index,
            },
            tun,
            sockets,
            sessions,
            port,
            pod_range,
            masquerade,
            iptables,
            stats: Arc::new(DataStats::default()),
        })
    }

    /// Starts the packet path and the kernel task.
    ///
    /// # Errors
    /// If a thread cannot start.
    pub fn start(self, clock: Clock) -> Result<Running, HostError> {
        let Self {
            netlink,
            tun,
            sockets,
            sessions,
            settings,
            port,
            pod_range,
            masquerade,
            iptables,
            stats,
        } = self;
        let queues = tun.queues.len();
        let index = tun.index;
        let vnet_hdr = tun.vnet_hdr;
        let (plane, stopper, driver) =
            dataplane::start(settings, tun.queues, sockets, sessions, clock, stats).map_err(HostError::Start)?;
        tokio::spawn(driver);
        let (want_tx, want_rx) = watch::channel(None);
        let (firewall_stop, stop_rx) = watch::channel(false);
        let firewall_task = tokio::spawn(firewall_task(pod_range, masquerade, iptables, stop_rx));
        tokio::spawn(kernel_task(netlink, index, settings.mtu, want_rx));
        Ok(Running {
            plane,
            stopper: Some(stopper),
            firewall: Some((firewall_stop, firewall_task)),
            want: want_tx,
            port,
            mtu: settings.mtu,
            queues,
            vnet_hdr,
        })
    }
}

/// The running data plane, as the daemon's driver holds it.
#[derive(Debug)]
pub struct Running {
    plane: DataPlane,
    stopper: Option<Stopper>,
    /// Stops the firewall task, and the task to wait for.
    firewall: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    want: watch::Sender<Option<Desired>>,
    port: u16,
    mtu: u16,
    queues: usize,
    vnet_hdr: bool,
}

impl Running {
    /// Tells the packet path about the other routers' data planes (the
    /// core's [`Output::DataPeers`](crate::core::node::Output::DataPeers)).
    pub fn set_peers(&self, peers: Vec<DataPeer>) {
        let peers = peers
            .into_iter()
            .map(|p| PeerInfo {
                name: p.name,
                public_key: p.public_key,
                candidates: p.candidates,
            })
            .collect();
        self.plane.set_peers(peers);
    }

    /// Tells the packet path and the kernel task about the ring and the
    /// host address (the core's [`Output::Routes`](crate::core::node::Output::Routes)).
    pub fn set_routes(&self, routes: Routes) {
        self.plane.set_ring(routes.pod_range, routes.ranges);
        let _ = self.want.send(Some(routes.desired));
    }

    /// Whether each peer's data plane can be reached, and where its datagrams go.
    pub fn peer_status(&self) -> Arc<Vec<crate::core::data::session::PeerStatus>> {
        self.plane.peer_status()
    }

    /// The data-plane port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What `weft status` shows.
    pub fn status(&self) -> weft_api::types::DataplaneStatus {
        let snap = self.plane.snapshot();
        weft_api::types::DataplaneStatus {
            port: self.port,
            mtu: self.mtu,
            queues: self.queues,
            offload: self.vnet_hdr,
            sessions: snap.sessions,
            peers: snap.peers,
            tx_packets: snap.tx_packets,
            rx_packets: snap.rx_packets,
            drops: snap.drops.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// The packet path's counters, for metrics.
    pub fn plane(&self) -> &DataPlane {
        &self.plane
    }

    /// Removes what the data plane put in the kernel: our routes, the TUN
    /// device and the firewall rules (`weft reset`).
    pub async fn remove_kernel_state(&mut self) -> Result<(), String> {
        self.stop().await;
        let netlink = Netlink::new().map_err(|e| e.to_string())?;
        let routes = netlink.remove_all(TUN_NAME).await.map_err(|e| e.to_string())?;
        let firewall = tokio::task::spawn_blocking(firewall::remove)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        info!(?routes, ?firewall, "removed the data plane's kernel state");
        Ok(())
    }

    /// Stops the packet path's threads. The TUN device goes (as it would
    /// when the process exits); the rest of the kernel state stays: pods
    /// keep their routes and the firewall rules stay while the router
    /// restarts.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stopper.take() {
            s.stop().await;
        }
        // Waited for, so that no re-apply can land after `weft reset`
        // removed the rules.
        if let Some((stop, task)) = self.firewall.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(FIREWALL_STOP_WAIT, task).await.is_err() {
                warn!("the firewall task did not stop within 10 s");
            }
        }
    }
}

/// The MTU for pods when `--mtu` is not given: the underlay's (the link of
/// the default route, else 1500) less the tunnel's overhead.
fn default_mtu() -> u16 {
    let underlay = underlay_mtu().unwrap_or(1500);
    underlay
        .saturating_sub(UDP_IPV4_OVERHEAD + TRANSPORT_OVERHEAD as u16)
        .max(crate::config::Mtu::MIN)
}

/// The MTU of the link the default IPv4 route leaves through.
fn underlay_mtu() -> Option<u16> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = routes.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace();
        let (dev, dst) = (f.next()?, f.next()?);
        (dst == "00000000").then(|| dev.to_owned())
    })?;
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Applies the desired kernel state whenever it changes, and every
/// [`RESYNC`].
async fn kernel_task(netlink: Netlink, link: u32, mtu: u16, mut want: watch::Receiver<Option<Desired>>) {
    if let Err(e) = netlink.set_link(link, u32::from(mtu), true).await {
        warn!(error = %e, "cannot bring the TUN device up");
    }
    loop {
        let desired = want.borrow_and_update().clone();
        if let Some(desired) = desired {
            match netlink.sync(link, &desired).await {
                Ok(r) if r.added + r.replaced + r.removed > 0 => {
                    info!(
                        added = r.added,
                        replaced = r.replaced,
                        removed = r.removed,
                        "kernel routes updated"
                    );
                }
                Ok(_) => debug!("kernel routes in step"),
                Err(e) => warn!(error = %e, "cannot update kernel routes; retrying"),
            }
        }
        tokio::select! {
            changed = want.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Keeps the firewall rules in place (see [`super::firewall`]): applies
/// them again every [`RESYNC`], since a firewall reload (firewalld, an
/// `iptables-restore`) may have wiped them, and at once when the `FORWARD`
/// chain, looked at every [`FORWARD_CHECK`], starts or stops being able to
/// refuse traffic (Docker starting after Weft sets its policy to DROP).
/// Ends when `stop` changes or its sender goes, never in the middle of an
/// apply.
async fn firewall_task(pod_range: Ipv4Net, masquerade: bool, applied: Iptables, mut stop: watch::Receiver<bool>) {
    let mut refuses = applied.forward_can_refuse();
    let checks_per_resync = (RESYNC.as_secs() / FORWARD_CHECK.as_secs()).max(1);
    let mut tick = tokio::time::interval(FORWARD_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is now; the rules were just applied
    for n in 1u64.. {
        tokio::select! {
            // Only ever set to true: any change, or the sender gone, means stop.
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let resync = n % checks_per_resync == 0;
        let known = refuses;
        let outcome = tokio::task::spawn_blocking(move || {
            if !resync && firewall::forward_can_refuse_now()? == known {
                return Ok(None);
            }
            firewall::apply(pod_range, TUN_NAME, masquerade).map(Some)
        })
        .await;
        match outcome {
            Ok(Ok(Some(iptables))) => {
                if iptables.forward_can_refuse() != refuses {
                    info!(?iptables, "the FORWARD chain changed; firewall rules applied again");
                }
                refuses = iptables.forward_can_refuse();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot re-apply the firewall rules"),
            Err(e) => warn!(error = %e, "the firewall check did not finish"),
        }
    }
}
