//! The netlink shell of [`crate::core::reconcile`]: dumps the kernel's
//! routes and addresses, applies the diff, and manages the TUN link.
//!
//! One [`Netlink`] holds one rtnetlink socket. The socket belongs to the
//! network namespace of the thread that opened it, for good: a test can open
//! it on a thread that has just unshared its namespace, and a daemon in a pod
//! opens it in the pod's.
//!
//! # Idempotence
//!
//! [`Netlink::apply`] may be repeated, or run after a crash halfway through:
//! an addition that finds its object already there (`EEXIST`) and a removal
//! that finds it gone (`ESRCH`, `ENOENT`, `EADDRNOTAVAIL`) count as done.
//! The price is that an `EEXIST` can also mean that a route of *another*
//! protocol holds the same destination and metric, and ours was not added.
//! [`Netlink::sync`] therefore dumps again after applying, and reports what
//! did not converge instead of claiming success.
//!
//! # Never touching other routes
//!
//! Every request that adds or deletes a route names protocol
//! [`RTPROT_WEFT`] and the route's metric, and a deletion also names the
//! route's type and output link, so the kernel matches only the route the
//! dump found (the kernel's `fib_table_delete` compares exactly the
//! attributes a request gives; a metric of 0 is the one it reads as "any",
//! see [`reconcile`]'s *Metrics* for why that still hits the right route). A
//! replacement adds the new route in front of the old one (`NLM_F_CREATE`
//! without `NLM_F_EXCL` or `NLM_F_REPLACE`, like `ip route prepend`), then
//! deletes the old one: `NLM_F_REPLACE` would replace the first route with
//! that destination and metric, whoever added it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoTun, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};
use tracing::{debug, info};

use crate::core::reconcile::{self, Actual, Desired, KernelRoute, Op, RTPROT_WEFT, RouteKind};

/// An rtnetlink connection in the current thread's network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

/// What [`Netlink::sync`] changed.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[must_use]
pub struct SyncReport {
    /// Routes and addresses added.
    pub added: usize,
    /// Routes replaced in place (same destination, new shape).
    pub replaced: usize,
    /// Routes and addresses removed.
    pub removed: usize,
}

/// What [`Netlink::remove_all`] removed.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[must_use]
pub struct RemoveReport {
    /// Routes with protocol [`RTPROT_WEFT`] deleted.
    pub routes: usize,
    /// Whether the link existed and was deleted.
    pub link: bool,
}

/// A link found by name, as far as the TUN set-up cares.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LinkState {
    /// The interface index.
    pub index: u32,
    /// What kind of link it is.
    pub kind: LinkKind,
}

/// The kind of a link.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum LinkKind {
    /// A TUN (layer 3) device.
    Tun {
        /// Whether it was created with `IFF_MULTI_QUEUE`.
        multi_queue: bool,
        /// Whether some process has it open: queues attached (multi-queue
        /// devices), or carrier up (single-queue devices, where the kernel
        /// reports no queue count).
        attached: bool,
        /// Whether it outlives the process that opened it (`IFF_PERSIST`).
        persistent: bool,
    },
    /// Any other kind, by its `IFLA_INFO_KIND` name (`"tap"`, `"veth"`,
    /// `"dummy"`, ...), or `"device"` for a physical device, which has none.
    Other(String),
}

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] io::Error),
    /// The caller lacks `CAP_NET_ADMIN`.
    #[error("{what}: permission denied; the router needs CAP_NET_ADMIN (run it as root)")]
    PermissionDenied {
        /// What was being done.
        what: String,
    },
    /// No link has this name.
    #[error("no network link named {0:?}")]
    NoSuchLink(String),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The errno the kernel answered.
        #[source]
        source: io::Error,
    },
    /// The request could not be sent or its answer not understood.
    #[error("{what}: {source}")]
    Request {
        /// What was being done.
        what: String,
        /// The rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// After applying the diff, a second dump still differs: most likely a
    /// route of another protocol holds one of the destinations with the
    /// same metric, which Weft leaves alone.
    #[error(
        "the kernel's routes did not converge; still to do: {remaining:?}. A route added by someone else \
         probably holds the same destination: see `ip route show table main`, and remove it or change the pod range"
    )]
    Unconverged {
        /// The ops a second diff still asked for.
        remaining: Vec<Op>,
    },
}

impl Netlink {
    /// Opens an rtnetlink socket in the current thread's network namespace
    /// and spawns its connection task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`NetlinkError::Connect`] if the socket cannot be opened.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The index of the link named `name`, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// If the dump fails.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link_message(name).await?.map(|m| m.header.index))
    }

    /// The link named `name` and its kind, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// If the dump fails.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        Ok(self.link_message(name).await?.map(|m| LinkState {
            index: m.header.index,
            kind: link_kind(&m),
        }))
    }

    /// Sets the MTU of link `index` and brings it up or down.
    ///
    /// # Errors
    ///
    /// If the kernel refuses (an MTU out of the device's range gives
    /// `EINVAL`).
    pub async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu);
        let msg = if up { msg.up() } else { msg.down() };
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| error(format!("setting link {index} to mtu {mtu}, up={up}"), e))
    }

    /// Deletes link `index`. A link already gone counts as deleted.
    ///
    /// # Errors
    ///
    /// If the kernel refuses.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(|e| error(format!("deleting link {index}"), e)),
        }
    }

    /// The state [`reconcile::diff`] compares with: the IPv4 routes of the
    /// main table whose protocol is [`RTPROT_WEFT`], and, when `link` is
    /// given, the IPv4 addresses on that link.
    ///
    /// # Errors
    ///
    /// If a dump fails.
    pub async fn dump(&self, link: Option<u32>) -> Result<Actual, NetlinkError> {
        let mut actual = Actual::default();
        // The kernel ignores filters in a dump request unless the socket
        // asked for strict checking, so this returns every table; filter here.
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = routes.try_next().await.map_err(|e| error("dumping routes", e))? {
            if let Some(route) = our_route(&msg, link) {
                actual.routes.insert(route);
            }
        }
        if let Some(index) = link {
            let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
            while let Some(msg) = addrs.try_next().await.map_err(|e| error("dumping addresses", e))? {
                if let Some(net) = ipv4_address(&msg) {
                    actual.addresses.insert(net);
                }
            }
        }
        Ok(actual)
    }

    /// Applies `ops` in order; routes of kind `Tun` go through link `link`.
    /// Additions that find their object there and removals that find it gone
    /// succeed (see the module docs).
    ///
    /// # Errors
    ///
    /// The first op the kernel refuses; the ops before it stay applied.
    pub async fn apply(&self, link: u32, ops: &[Op]) -> Result<(), NetlinkError> {
        for op in ops {
            debug!(?op, "netlink");
            match *op {
                Op::AddAddress(net) => {
                    let r = self
                        .handle
                        .address()
                        .add(link, IpAddr::V4(net.addr()), net.prefix_len())
                        .execute()
                        .await;
                    tolerate(r, &[libc::EEXIST], || format!("adding address {net} to link {link}"))?;
                }
                Op::DelAddress(net) => {
                    let msg = AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(link)
                        .address(net.addr(), net.prefix_len())
                        .build();
                    let r = self.handle.address().del(msg).execute().await;
                    tolerate(r, &[libc::EADDRNOTAVAIL, libc::ENOENT, libc::ENODEV], || {
                        format!("removing address {net} from link {link}")
                    })?;
                }
                Op::AddRoute(route) => {
                    let r = self
                        .request(
                            RouteNetlinkMessage::NewRoute(route_message(route, link)),
                            NLM_F_CREATE | NLM_F_EXCL,
                        )
                        .await;
                    tolerate(r, &[libc::EEXIST], || format!("adding route {route:?}"))?;
                }
                Op::ReplaceRoute { old, new } => {
                    // In front of the old one (prepend), then the old one goes.
                    let r = self
                        .request(RouteNetlinkMessage::NewRoute(route_message(new, link)), NLM_F_CREATE)
                        .await;
                    tolerate(r, &[libc::EEXIST], || {
                        format!("adding route {new:?} in place of {old:?}")
                    })?;
                    self.delete_route(old, link).await?;
                }
                Op::DelRoute(route) => self.delete_route(route, link).await?,
            }
        }
        Ok(())
    }

    /// Takes the kernel to `desired`: dump, [`reconcile::diff`], apply, and
    /// a second dump to check.
    ///
    /// # Errors
    ///
    /// If a dump or a change fails, and [`NetlinkError::Unconverged`] if the
    /// second dump still differs.
    pub async fn sync(&self, link: u32, desired: &Desired) -> Result<SyncReport, NetlinkError> {
        let ops = reconcile::diff(desired, &self.dump(Some(link)).await?);
        self.apply(link, &ops).await?;
        let remaining = reconcile::diff(desired, &self.dump(Some(link)).await?);
        if !remaining.is_empty() {
            return Err(NetlinkError::Unconverged { remaining });
        }
        let mut report = SyncReport::default();
        for op in &ops {
            match op {
                Op::AddAddress(_) | Op::AddRoute(_) => report.added += 1,
                Op::ReplaceRoute { .. } => report.replaced += 1,
                Op::DelRoute(_) | Op::DelAddress(_) => report.removed += 1,
            }
        }
        if !ops.is_empty() {
            info!(
                added = report.added,
                replaced = report.replaced,
                removed = report.removed,
                "kernel routes synced"
            );
        }
        Ok(report)
    }

    /// Removes everything [`Netlink::sync`] and the TUN set-up added, for
    /// `weft reset`: every route with protocol [`RTPROT_WEFT`] in the main
    /// table (the leak guard too: this is the only place it goes), then the
    /// link named `link_name` if it is a TUN device (its addresses go with
    /// it). A link of another kind with that name is not
    /// Weft's and stays.
    ///
    /// # Errors
    ///
    /// If a dump or a deletion fails.
    pub async fn remove_all(&self, link_name: &str) -> Result<RemoveReport, NetlinkError> {
        let link = self.link(link_name).await?;
        let actual = self.dump(None).await?;
        let mut report = RemoveReport::default();
        for route in &actual.routes {
            // The dump had no link to compare with, so every route through
            // one is a `Stray` that names its own output link.
            self.delete_route(*route, 0).await?;
            report.routes += 1;
        }
        match link {
            Some(LinkState {
                index,
                kind: LinkKind::Tun { .. },
            }) => {
                self.delete_link(index).await?;
                report.link = true;
            }
            Some(LinkState {
                kind: LinkKind::Other(kind),
                ..
            }) => {
                info!(link = link_name, kind, "leaving a link that is not a TUN device alone");
            }
            None => {}
        }
        Ok(report)
    }

    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(m) => Ok(m),
            // A get by name answers ENODEV when there is no such link.
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(error(format!("looking up link {name:?}"), e)),
        }
    }

    async fn delete_route(&self, route: KernelRoute, link: u32) -> Result<(), NetlinkError> {
        let mut msg = route_message(route, link);
        // Scope "nowhere" matches any scope on deletion (as `ip route del`).
        msg.header.scope = RouteScope::NoWhere;
        let r = self.request(RouteNetlinkMessage::DelRoute(msg), 0).await;
        tolerate(r, &[libc::ESRCH, libc::ENOENT], || format!("deleting route {route:?}"))
    }

    /// Sends one request with `flags` added to `NLM_F_REQUEST | NLM_F_ACK`
    /// and waits for its acknowledgement. (rtnetlink's own route requests
    /// always set `NLM_F_EXCL` or `NLM_F_REPLACE`; a prepend needs neither.)
    async fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(req)?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }
}

/// The message that adds or (with its scope widened) deletes `route`.
fn route_message(route: KernelRoute, link: u32) -> RouteMessage {
    let b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
        .protocol(RouteProtocol::Other(RTPROT_WEFT));
    // No attribute is metric 0, as the kernel reads it.
    let b = if route.metric == 0 { b } else { b.priority(route.metric) };
    match route.kind {
        RouteKind::Tun { src } => {
            let b = b
                .kind(RouteType::Unicast)
                .scope(RouteScope::Link)
                .output_interface(link);
            match src {
                Some(src) => b.pref_source(src).build(),
                None => b.build(),
            }
        }
        RouteKind::Unreachable => b.kind(RouteType::Unreachable).scope(RouteScope::Universe).build(),
        RouteKind::Stray { route_type, oif } => {
            let b = b.kind(RouteType::from(route_type));
            match oif {
                Some(oif) => b.output_interface(oif).build(),
                None => b.build(),
            }
        }
    }
}

/// `msg` as a route of ours in the main table, or `None` if it is not one.
/// A unicast route through `link` with no gateway is `Tun`; anything else
/// of ours that is not `unreachable` is a `Stray`.
fn our_route(msg: &RouteMessage, link: Option<u32>) -> Option<KernelRoute> {
    let h = &msg.header;
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || u8::from(h.protocol) != RTPROT_WEFT {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let (mut oif, mut src, mut has_gateway, mut metric) = (None, None, false, 0);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => src = Some(*a),
            RouteAttribute::Gateway(_) | RouteAttribute::MultiPath(_) | RouteAttribute::Via(_) => has_gateway = true,
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst, h.destination_prefix_length).ok()?;
    let kind = match h.kind {
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Unicast if oif.is_some() && oif == link && !has_gateway => RouteKind::Tun { src },
        other => RouteKind::Stray {
            route_type: u8::from(other),
            oif,
        },
    };
    Some(KernelRoute { dst, metric, kind })
}

fn ipv4_address(msg: &AddressMessage) -> Option<Ipv4Net> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's
    // on point-to-point links, so prefer the former.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
        _ => None,
    });
    let addr = local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
            _ => None,
        })
    })?;
    Ipv4Net::new(addr, msg.header.prefix_len).ok()
}

fn link_kind(msg: &LinkMessage) -> LinkKind {
    let mut kind = None;
    let mut tun = Vec::new();
    let mut carrier = false;
    for a in &msg.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Tun(t)) => tun.clone_from(t),
                        _ => {}
                    }
                }
            }
            LinkAttribute::Carrier(c) => carrier = *c != 0,
            _ => {}
        }
    }
    match kind {
        Some(InfoKind::Tun) => {
            // netlink-packet-route leaves the IFLA_TUN_* attributes raw.
            let attr = |t: u16| {
                tun.iter().find_map(|a| match a {
                    InfoTun::Other(nla) if nla.kind() == t => {
                        let mut value = vec![0; nla.value_len()];
                        nla.emit_value(&mut value);
                        Some(value)
                    }
                    _ => None,
                })
            };
            let flag = |t: u16| attr(t).is_some_and(|v| v.first().is_some_and(|b| *b != 0));
            let tun_type = attr(IFLA_TUN_TYPE).and_then(|v| v.first().copied());
            if tun_type == Some(IFF_TAP) {
                return LinkKind::Other("tap".into());
            }
            let queues = attr(IFLA_TUN_NUM_QUEUES)
                .and_then(|v| v.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
            LinkKind::Tun {
                multi_queue: flag(IFLA_TUN_MULTI_QUEUE),
                attached: queues.map_or(carrier, |q| q > 0),
                persistent: flag(IFLA_TUN_PERSIST),
            }
        }
        Some(k) => LinkKind::Other(k.to_string()),
        None => LinkKind::Other("device".into()),
    }
}

/// The positive errno of a kernel refusal.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn error(what: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    match errno(&e) {
        Some(libc::EPERM | libc::EACCES) => NetlinkError::PermissionDenied { what },
        Some(code) => NetlinkError::Kernel {
            what,
            source: io::Error::from_raw_os_error(code),
        },
        None => NetlinkError::Request { what, source: e },
    }
}

/// `r`, with the listed errnos counted as success.
fn tolerate(r: Result<(), rtnetlink::Error>, ok: &[i32], what: impl FnOnce() -> String) -> Result<(), NetlinkError> {
    match r {
        Err(e) if errno(&e).is_some_and(|c| ok.contains(&c)) => {
            debug!(what = what(), errno = errno(&e), "already done");
            Ok(())
        }
        r => r.map_err(|e| error(what(), e)),
    }
}

// From linux/if_tunnel.h and linux/if_tun.h (not in libc 0.2).
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
const IFF_TAP: u8 = 2;
