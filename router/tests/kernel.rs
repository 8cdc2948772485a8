//! The kernel plumbing of the data plane against a real kernel: the TUN
//! device, routes and addresses through netlink, IPv4 forwarding, and the
//! firewall rules, including past an iptables FORWARD policy of DROP.
//!
//! Every test works inside network namespaces of its own. A namespace here
//! is a thread that unshared `CLONE_NEWNET` first thing ([`Ns`]): namespaces
//! belong to threads, so the test's namespace is private, nothing touches
//! the host's, and it disappears with the thread. Sockets (netlink, TCP)
//! stay in the namespace of the thread that opened them, and child
//! processes (`ip`, `nft`, `iptables`) start in the namespace of the thread
//! that spawns them, which [`children_inherit_the_threads_namespace`] checks.
//!
//! The tests need root, `/dev/net/tun`, and `ip`, `nft` and `iptables`
//! (Debian packages iproute2, nftables, iptables). Without them a test prints
//! `skipping: <reason>` and passes, except under CI (`CI` set), where it
//! fails instead. Nothing sleeps to wait: state is polled until a deadline.

use std::any::Any;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::Ipv4Net;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use tokio::runtime::Runtime;
use weft_router::core::reconcile::{self, GUARD_METRIC, KernelRoute, RTPROT_WEFT, RouteKind};
use weft_router::io::firewall::{self, Iptables, Removed};
use weft_router::io::netlink::{LinkKind, Netlink, NetlinkError, RemoveReport, SyncReport};
use weft_router::io::sysctl::{self, Forwarding};
use weft_router::io::tun::{self, TunError};

const POD: &str = "10.32.0.0/12";
const TUN: &str = "weft";

#[test]
fn children_inherit_the_threads_namespace() {
    require!("ip");
    let ns = Ns::new();
    let links = ns.run(|_| sh("ip", &["-o", "link", "show"]));
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names, ["lo"], "a fresh namespace holds only lo:\n{links}");
}

#[test]
fn tun_opens_with_two_queues_offloads_and_no_address() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        let tun = tun::open(&nl, TUN, 1400, 2).await.unwrap();
        assert_eq!(tun.queues.len(), 2);
        assert!(!tun.replaced_stale);
        // Kernel 4.x has TSO through IFF_VNET_HDR; USO needs 6.2.
        assert!(tun.vnet_hdr && tun.tcp_gso, "{tun:?}");
        if kernel_at_least(6, 2) {
            assert!(tun.udp_gso, "{tun:?}");
        }
        for q in &tun.queues {
            assert!(
                !q.is_nonblocking().unwrap(),
                "the outbound thread blocks in the read itself"
            );
        }
        let link = nl.link(TUN).await.unwrap().expect("the link exists");
        assert_eq!(link.index, tun.index);
        assert_eq!(
            link.kind,
            LinkKind::Tun {
                multi_queue: true,
                attached: true,
                persistent: false
            }
        );
        let details = sh("ip", &["-d", "link", "show", TUN]);
        assert!(details.contains("mtu 1400"), "{details}");
        assert!(details.contains("state UP") || details.contains(",UP"), "{details}");
        assert!(details.contains("multi_queue numqueues 2"), "{details}");
        assert!(details.contains("vnet_hdr"), "{details}");
        assert!(
            nl.dump(Some(tun.index)).await.unwrap().addresses.is_empty(),
            "tun-rs set no address"
        );
        // IPv6 was off before the link came up: no link-local address, and
        // so none of the kernel's own IPv6 packets for the packet path.
        let v6 = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{TUN}/disable_ipv6")).unwrap();
        assert_eq!(v6.trim(), "1");
        let v6_addresses = sh("ip", &["-6", "-o", "addr", "show", "dev", TUN]);
        assert!(v6_addresses.trim().is_empty(), "{v6_addresses}");

        // A second router on the same device is refused.
        match tun::open(&nl, TUN, 1400, 1).await {
            Err(TunError::InUse { name }) => assert_eq!(name, TUN),
            other => panic!("expected InUse, got {other:?}"),
        }

        // The device goes with its last descriptor.
        drop(tun);
        poll("the TUN link to vanish", || async {
            nl.link(TUN).await.unwrap().is_none()
        })
        .await;
    });
}

#[test]
fn a_missing_dev_net_tun_is_explained() {
    require!();
    // A private mount namespace too, where an empty tmpfs hides /dev/net.
    let ns = Ns::with(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS);
    ns.block_on(|| async {
        let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        mount(Some("tmpfs"), "/dev/net", Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        let nl = Netlink::new().unwrap();
        let e = tun::open(&nl, TUN, 1400, 1).await.unwrap_err();
        assert!(matches!(e, TunError::NoTunDevice), "{e:?}");
        assert!(
            e.to_string().contains("modprobe tun") && e.to_string().contains("--device /dev/net/tun"),
            "{e}"
        );
    });
    assert!(
        Path::new("/dev/net/tun").exists(),
        "the host's /dev/net/tun is untouched"
    );
}

#[test]
fn tun_replaces_a_stale_persistent_device_and_refuses_foreign_links() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        // A persistent single-queue TUN no one has open: what an older
        // version or `ip tuntap add` leaves.
        sh("ip", &["tuntap", "add", "dev", TUN, "mode", "tun"]);
        sh("ip", &["addr", "add", "192.0.2.1/24", "dev", TUN]);
        assert!(matches!(
            nl.link(TUN).await.unwrap().unwrap().kind,
            LinkKind::Tun {
                attached: false,
                persistent: true,
                multi_queue: false
            }
        ));
        let tun = tun::open(&nl, TUN, 1380, 1).await.unwrap();
        assert!(tun.replaced_stale);
        assert!(
            nl.dump(Some(tun.index)).await.unwrap().addresses.is_empty(),
            "the stale device's address went with it"
        );
        assert!(sh("ip", &["-d", "link", "show", TUN]).contains("multi_queue"));
        drop(tun);
        poll("the TUN link to vanish", || async {
            nl.link(TUN).await.unwrap().is_none()
        })
        .await;

        sh("ip", &["link", "add", TUN, "type", "veth", "peer", "name", "weft-peer"]);
        match tun::open(&nl, TUN, 1400, 1).await {
            Err(TunError::NameTaken { name, kind }) => assert_eq!((name.as_str(), kind.as_str()), (TUN, "veth")),
            other => panic!("expected NameTaken, got {other:?}"),
        }
        assert!(nl.link(TUN).await.unwrap().is_some(), "the veth is left alone");
        assert!(!nl.remove_all(TUN).await.unwrap().link, "so is it by a reset");
        assert!(nl.link(TUN).await.unwrap().is_some());
        let e = tun::open(&nl, TUN, 1400, 1).await.unwrap_err();
        assert!(
            e.to_string().contains("ip link del weft"),
            "the error says how to fix it: {e}"
        );
    });
}

#[test]
fn sync_creates_exactly_our_routes_and_leaves_foreign_ones() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        let tun = tun::open(&nl, TUN, 1400, 1).await.unwrap();
        // Routes of other protocols, one through our link, one not.
        sh("ip", &["route", "add", "10.40.0.0/16", "dev", TUN, "proto", "static"]);
        sh(
            "ip",
            &["route", "add", "unreachable", "10.44.0.0/16", "proto", "static"],
        );
        let foreign_before = routes_not_ours();

        let d = reconcile::desired(net(POD), &[net("10.32.0.0/14")], Some(ip("10.32.0.1")));
        let report = nl.sync(tun.index, &d).await.unwrap();
        assert_eq!(
            report,
            SyncReport {
                added: 4,
                replaced: 0,
                removed: 0
            }
        );

        let ours = sh(
            "ip",
            &[
                "-o",
                "route",
                "show",
                "table",
                "main",
                "proto",
                &RTPROT_WEFT.to_string(),
            ],
        );
        let lines: Vec<&str> = ours.lines().map(str::trim).collect();
        assert_eq!(lines.len(), 3, "{ours}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("10.32.0.0/12 dev weft") && l.contains("src 10.32.0.1")),
            "{ours}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("unreachable 10.32.0.0/14")),
            "{ours}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("unreachable 10.32.0.0/12") && l.ends_with(&format!("metric {GUARD_METRIC}"))),
            "the leak guard: {ours}"
        );
        let actual = nl.dump(Some(tun.index)).await.unwrap();
        assert_eq!(actual.addresses, d.addresses);
        assert_eq!(actual.routes, d.kernel_routes());
        assert_eq!(routes_not_ours(), foreign_before, "foreign routes are untouched");
        assert!(
            foreign_before
                .iter()
                .any(|r| r.starts_with("10.40.0.0/16 dev weft proto static"))
        );
        assert!(
            foreign_before
                .iter()
                .any(|r| r.starts_with("unreachable 10.44.0.0/16 proto static"))
        );

        // Idempotent.
        assert_eq!(nl.sync(tun.index, &d).await.unwrap(), SyncReport::default());
    });
}

#[test]
fn a_foreign_route_in_the_way_is_reported_not_replaced() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        let tun = tun::open(&nl, TUN, 1400, 1).await.unwrap();
        // A route of someone else's where ours goes: same destination, same metric.
        let metric = reconcile::OWN_METRIC.to_string();
        sh(
            "ip",
            &[
                "route",
                "add",
                "10.32.0.0/14",
                "dev",
                TUN,
                "proto",
                "static",
                "metric",
                &metric,
            ],
        );
        let d = reconcile::desired(net(POD), &[net("10.32.0.0/14")], None);
        match nl.sync(tun.index, &d).await {
            Err(NetlinkError::Unconverged { remaining }) => assert_eq!(remaining.len(), 1, "{remaining:?}"),
            other => panic!("expected Unconverged, got {other:?}"),
        }
        let all = sh("ip", &["-o", "route", "show", "10.32.0.0/14"]);
        assert!(all.contains("proto static"), "the foreign route stays: {all}");
    });
}

#[test]
fn a_ring_change_converges_with_a_minimal_diff() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        let tun = tun::open(&nl, TUN, 1400, 1).await.unwrap();
        let host = Some(ip("10.32.0.1"));
        let before = reconcile::desired(net(POD), &[net("10.32.0.0/14"), net("10.36.0.0/15")], host);
        assert_eq!(nl.sync(tun.index, &before).await.unwrap().added, 5);

        // Ownership of one block moves to another router, another arrives.
        let after = reconcile::desired(net(POD), &[net("10.32.0.0/14"), net("10.38.0.0/15")], host);
        assert_eq!(
            nl.sync(tun.index, &after).await.unwrap(),
            SyncReport {
                added: 1,
                replaced: 0,
                removed: 1
            }
        );
        let expected = reconcile::diff(&after, &nl.dump(Some(tun.index)).await.unwrap());
        assert!(expected.is_empty(), "{expected:?}");

        // A new host address: the pod range route is replaced in place.
        let moved = reconcile::desired(
            net(POD),
            &[net("10.32.0.0/14"), net("10.38.0.0/15")],
            Some(ip("10.32.0.9")),
        );
        assert_eq!(
            nl.sync(tun.index, &moved).await.unwrap(),
            SyncReport {
                added: 1,
                replaced: 1,
                removed: 1
            }
        );
        let shown = sh("ip", &["-o", "route", "show", POD, "dev", TUN]);
        assert!(
            shown.contains("src 10.32.0.9") && !shown.contains("10.32.0.1 "),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 1, "exactly one pod range route: {shown}");
        let guard = sh("ip", &["-o", "route", "show", "type", "unreachable", POD]);
        assert_eq!(guard.lines().count(), 1, "and the guard, untouched: {guard}");
    });
}

#[test]
fn remove_all_removes_only_ours() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        let tun = tun::open(&nl, TUN, 1400, 1).await.unwrap();
        sh(
            "ip",
            &["route", "add", "unreachable", "10.44.0.0/16", "proto", "static"],
        );
        let d = reconcile::desired(
            net(POD),
            &[net("10.32.0.0/14"), net("10.40.0.0/16")],
            Some(ip("10.32.0.1")),
        );
        assert_eq!(nl.sync(tun.index, &d).await.unwrap().added, 5);

        let report = nl.remove_all(TUN).await.unwrap();
        assert_eq!(report, RemoveReport { routes: 4, link: true });
        assert!(nl.dump(None).await.unwrap().routes.is_empty());
        assert!(nl.link(TUN).await.unwrap().is_none());
        let left = sh("ip", &["-o", "route", "show", "table", "main"]);
        assert!(left.contains("unreachable 10.44.0.0/16 proto static"), "{left}");

        // Again, with nothing left: nothing to do.
        drop(tun);
        assert_eq!(nl.remove_all(TUN).await.unwrap(), RemoveReport::default());
    });
}

/// The leak guard. The namespace plays a host with an underlay link and a
/// default route through it, and a pod on a veth:
///
/// ```text
/// pod0 (10.32.1.2/32 route, as the CNI plugin adds) -- host -- under0 192.168.99.1/24, default via 192.168.99.2
/// ```
///
/// Without the guard, a packet for a pod on another host (10.40.0.5) takes
/// the default route in clear once the TUN device is gone. With it, the
/// lookup says unreachable, for the pod's forwarded packets and for the
/// host's own, until `weft reset`.
#[test]
fn the_leak_guard_outlives_the_tun_device_and_only_a_reset_removes_it() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        const REMOTE: &str = "10.40.0.5";
        const POD_ADDR: &str = "10.32.1.2";
        let nl = Netlink::new().unwrap();
        sh("ip", &["link", "set", "lo", "up"]);
        sh(
            "ip",
            &["link", "add", "under0", "type", "veth", "peer", "name", "under1"],
        );
        sh("ip", &["link", "add", "pod0", "type", "veth", "peer", "name", "pod1"]);
        for dev in ["under0", "under1", "pod0", "pod1"] {
            sh("ip", &["link", "set", dev, "up"]);
        }
        sh("ip", &["addr", "add", "192.168.99.1/24", "dev", "under0"]);
        sh("ip", &["route", "add", "default", "via", "192.168.99.2"]);
        sh("ip", &["route", "add", POD_ADDR, "dev", "pod0", "proto", "static"]);
        // Someone else's route at the guard's metric: it must survive every
        // change to ours.
        sh(
            "ip",
            &[
                "route",
                "add",
                "10.44.0.0/16",
                "via",
                "192.168.99.2",
                "proto",
                "static",
                "metric",
                "4096",
            ],
        );
        assert_eq!(sysctl::enable_ip_forwarding().unwrap(), Forwarding::Enabled);
        let from_pod = ["route", "get", REMOTE, "from", POD_ADDR, "iif", "pod0"];

        // The leak the guard is for: with no Weft route, both lookups take
        // the default route (the only route that covers REMOTE).
        let leaks = |args: &[&str]| {
            let (ok, out, err) = try_sh("ip", args);
            assert!(
                ok && out.contains("via 192.168.99.2 dev under0"),
                "{args:?} takes the default route: {out}{err}"
            );
        };
        leaks(&["route", "get", REMOTE]);
        leaks(&from_pod);

        let tun = tun::open(&nl, TUN, 1400, 1).await.unwrap();
        let index = tun.index;
        nl.set_link(index, 1400, true).await.unwrap();
        let d = reconcile::desired(net(POD), &[net("10.32.0.0/14")], Some(ip("10.32.0.1")));
        assert_eq!(nl.sync(index, &d).await.unwrap().added, 4);
        let foreign_before = routes_not_ours();
        let guard = KernelRoute {
            dst: net(POD),
            metric: GUARD_METRIC,
            kind: RouteKind::Unreachable,
        };
        assert!(nl.dump(None).await.unwrap().routes.contains(&guard));
        let shown = sh(
            "ip",
            &["-o", "route", "show", "type", "unreachable", POD, "proto", "87"],
        );
        assert_eq!(
            shown.trim(),
            format!("unreachable {POD} metric {GUARD_METRIC}"),
            "{shown}"
        );

        // The router runs: the TUN route wins over the guard.
        for args in [&["route", "get", REMOTE][..], &from_pod[..]] {
            let (ok, out, err) = try_sh("ip", args);
            assert!(ok && out.contains("dev weft"), "{args:?}: {out}{err}");
        }

        // The router stops: the device goes, and the kernel flushes its routes.
        drop(tun);
        poll("the TUN link to vanish", || async {
            nl.link(TUN).await.unwrap().is_none()
        })
        .await;
        let left = nl.dump(None).await.unwrap().routes;
        assert!(left.contains(&guard), "the guard stays: {left:?}");
        assert!(
            !left
                .iter()
                .any(|r| matches!(r.kind, RouteKind::Tun { .. } | RouteKind::Stray { .. })),
            "the TUN route went with the device: {left:?}"
        );
        for args in [&["route", "get", REMOTE][..], &from_pod[..]] {
            let (ok, out, err) = try_sh("ip", args);
            assert!(
                !ok && err.contains("No route to host") && !out.contains("via"),
                "{args:?} is refused, not sent via the default route: {out}{err}"
            );
        }
        // The host's own sockets get EHOSTUNREACH at once, too.
        let e = std::net::UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"secret", (ip(REMOTE), 9))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EHOSTUNREACH), "{e}");
        assert_eq!(routes_not_ours(), foreign_before, "foreign routes are untouched");

        // A reset removes the guard (and the own ranges' routes), and only ours.
        let report = nl.remove_all(TUN).await.unwrap();
        assert_eq!(report, RemoveReport { routes: 2, link: false });
        assert!(nl.dump(None).await.unwrap().routes.is_empty());
        assert_eq!(routes_not_ours(), foreign_before, "foreign routes are untouched");
        leaks(&["route", "get", REMOTE]);
    });
}

/// Our routes that share the pod range and differ in metric: the kernel
/// reads metric 0 in a deletion as "any metric", so removing a metric-0
/// route must not take the guard instead.
#[test]
fn routes_that_differ_in_metric_are_deleted_exactly() {
    require!("ip");
    let ns = Ns::new();
    ns.block_on(|| async {
        let nl = Netlink::new().unwrap();
        let tun = tun::open(&nl, TUN, 1400, 1).await.unwrap();
        let guard = KernelRoute {
            dst: net(POD),
            metric: GUARD_METRIC,
            kind: RouteKind::Unreachable,
        };
        // What an older version leaves for a single router: the whole
        // range `unreachable` at metric 0. The sync adds the guard and
        // removes the old route, not the guard.
        let proto = RTPROT_WEFT.to_string();
        sh("ip", &["route", "add", "unreachable", POD, "proto", &proto]);
        let single = reconcile::desired(net(POD), &[net(POD)], None);
        assert_eq!(
            nl.sync(tun.index, &single).await.unwrap(),
            SyncReport {
                added: 1,
                replaced: 0,
                removed: 1
            }
        );
        assert_eq!(
            nl.dump(Some(tun.index)).await.unwrap().routes,
            [guard].into_iter().collect()
        );

        // A peer arrives and the single router's range shrinks: the TUN
        // route joins the guard; then it goes again, and the guard stays.
        let multi = reconcile::desired(net(POD), &[net("10.32.0.0/14")], None);
        assert_eq!(nl.sync(tun.index, &multi).await.unwrap().added, 2);
        assert_eq!(nl.dump(Some(tun.index)).await.unwrap().routes, multi.kernel_routes());
        assert_eq!(nl.sync(tun.index, &single).await.unwrap().removed, 2);
        assert_eq!(
            nl.dump(Some(tun.index)).await.unwrap().routes,
            [guard].into_iter().collect()
        );
        assert_eq!(
            sh("ip", &["-o", "route", "show", POD]).trim(),
            format!("unreachable {POD} proto {RTPROT_WEFT} metric {GUARD_METRIC}")
        );
    });
}

#[test]
fn ip_forwarding_is_enabled_in_this_namespace_only() {
    let ns = Ns::new();
    let outside = read_ip_forward();
    let (first, second, inside) = ns.run(|_| {
        let first = sysctl::enable_ip_forwarding().unwrap();
        let second = sysctl::enable_ip_forwarding().unwrap();
        (first, second, read_ip_forward())
    });
    assert_eq!(
        (first, second, inside.as_str()),
        (Forwarding::Enabled, Forwarding::AlreadyOn, "1")
    );
    assert_eq!(read_ip_forward(), outside, "the host's namespace is unchanged");
}

#[test]
fn firewall_apply_and_remove_are_idempotent() {
    require!("nft", "iptables");
    let ns = Ns::new();
    ns.run(|_| {
        // Removing what was never there is fine, and creates nothing.
        assert_eq!(firewall::remove().unwrap(), Removed::default());
        assert_eq!(sh("nft", &["list", "ruleset"]).trim(), "", "remove created no table");

        // A bare host: FORWARD accepts and holds nothing, so only the
        // masquerading goes in, and no hook on forwarded packets.
        assert_eq!(firewall::apply(net(POD), TUN, true).unwrap(), Iptables::NotNeeded);
        assert_eq!(firewall::apply(net(POD), TUN, true).unwrap(), Iptables::NotNeeded);
        let table = nft_table().expect("table ip weft exists");
        let chains: Vec<&str> = table.iter().filter_map(|o| o["chain"]["name"].as_str()).collect();
        assert_eq!(chains, ["postrouting"], "{table:#?}");
        let rules: Vec<&serde_json::Value> = table.iter().filter_map(|o| o.get("rule")).collect();
        assert_eq!(rules.len(), 1, "one masquerade, not doubled: {table:#?}");
        assert!(
            rules[0]["expr"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.get("masquerade").is_some())
        );
        assert!(!sh("iptables", &["-w", "-S"]).contains("weft"));
        assert!(!sh("nft", &["list", "ruleset"]).contains("hook forward"));

        // Docker's policy: now the accepts go in, stateful ones included.
        sh("iptables", &["-w", "-P", "FORWARD", "DROP"]);
        assert_eq!(firewall::apply(net(POD), TUN, true).unwrap(), Iptables::Installed);
        assert_eq!(firewall::apply(net(POD), TUN, true).unwrap(), Iptables::Installed);
        let forward = sh("iptables", &["-w", "-S", "FORWARD"]);
        let jumps = forward.lines().filter(|l| l.contains("-j WEFT-FORWARD")).count();
        assert_eq!(jumps, 1, "{forward}");
        assert!(
            forward.contains("-A FORWARD -m comment --comment weft -j WEFT-FORWARD"),
            "{forward}"
        );
        let chain = sh("iptables", &["-w", "-S", "WEFT-FORWARD"]);
        assert!(
            chain.contains("-A WEFT-FORWARD -d 10.32.0.0/12 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            "{chain}"
        );
        assert_eq!(chain.lines().filter(|l| l.starts_with("-A")).count(), 4, "{chain}");
        assert_eq!(firewall::forward_can_refuse_now().unwrap(), Some(true));

        // Without masquerading the nat chain goes, in the same transaction;
        // the DROP still needs the accepts.
        assert_eq!(firewall::apply(net(POD), TUN, false).unwrap(), Iptables::Installed);
        let table = nft_table().unwrap();
        assert!(table.iter().all(|o| o.get("chain").is_none()), "{table:#?}");
        assert_eq!(sh("iptables", &["-w", "-S", "WEFT-FORWARD"]).lines().count(), 5);

        // The policy back to ACCEPT: the chain and the jump go again.
        sh("iptables", &["-w", "-P", "FORWARD", "ACCEPT"]);
        assert_eq!(
            firewall::forward_can_refuse_now().unwrap(),
            Some(false),
            "our jump is not a refusal"
        );
        assert_eq!(firewall::apply(net(POD), TUN, false).unwrap(), Iptables::NotNeeded);
        assert!(!sh("iptables", &["-w", "-S"]).contains("WEFT-FORWARD"));

        sh("iptables", &["-w", "-P", "FORWARD", "DROP"]);
        assert_eq!(firewall::apply(net(POD), TUN, true).unwrap(), Iptables::Installed);
        let removed = firewall::remove().unwrap();
        assert_eq!((removed.table, removed.jumps, removed.chain), (true, 1, true));
        assert!(nft_table().is_none());
        assert!(!sh("iptables", &["-w", "-S"]).contains("weft"));
        assert_eq!(firewall::remove().unwrap(), Removed::default());
    });
}

/// A [`Forwarder`] whose router has `iptables -P FORWARD DROP`, as on a
/// Docker host.
#[test]
fn pod_traffic_passes_a_forward_drop_policy() {
    require!("ip", "nft", "iptables");
    let Forwarder {
        pod,
        router,
        outside,
        listener,
    } = Forwarder::new();
    router.run(|_| sh("iptables", &["-w", "-P", "FORWARD", "DROP"]));
    let connect = |timeout: Duration| pod.run(move |_| TcpStream::connect_timeout(&Forwarder::server(), timeout));

    // Without Weft's rules the DROP policy wins. (A dropped SYN gets no
    // answer, so this can only end by its timeout.)
    assert!(
        connect(Duration::from_millis(800)).is_err(),
        "the drop policy is in force"
    );

    // Why Weft's accepts go into iptables: an accept in a table of its own
    // (as Weft's table could have) is not final, and the DROP still wins.
    router.run(|_| {
        sh("nft", &["add", "table", "ip", "own"]);
        sh(
            "nft",
            &["add chain ip own forward { type filter hook forward priority 0; policy accept; }"],
        );
        sh("nft", &["add", "rule", "ip", "own", "forward", "accept"]);
    });
    assert!(
        connect(Duration::from_millis(800)).is_err(),
        "an accept in another table does not beat the DROP"
    );
    router.run(|_| sh("nft", &["delete", "table", "ip", "own"]));

    // With the iptables half too, pods reach out, masqueraded.
    assert_eq!(
        router.run(|_| firewall::apply(net(POD), TUN, true).unwrap()),
        Iptables::Installed
    );
    let stream = connect(Duration::from_secs(5)).expect("pod traffic passes the DROP policy");
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), ip("192.168.99.1"), "masqueraded behind the router");
    drop(stream);

    // Without masquerading the outside sees the pod's own address, and
    // needs a route back.
    outside.run(|_| sh("ip", &["route", "add", POD, "via", "192.168.99.1"]));
    assert_eq!(
        router.run(|_| firewall::apply(net(POD), TUN, false).unwrap()),
        Iptables::Installed,
        "the DROP policy needs the stateful accept of replies"
    );
    let _stream = connect(Duration::from_secs(5)).expect("pod traffic passes unmasqueraded");
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), ip("10.32.1.2"));

    // New connections from outside to the pod stay refused by the policy.
    let probe =
        outside.run(|_| TcpStream::connect_timeout(&"10.32.1.2:7001".parse().unwrap(), Duration::from_millis(800)));
    assert!(
        matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "only replies may enter: {probe:?}"
    );
}

/// Netfilter hooks cost every forwarded and tunnelled packet, connection
/// tracking most: so without masquerading, on a host whose FORWARD chain
/// refuses nothing, Weft must add neither; masquerading must track.
#[test]
fn without_masquerading_an_open_host_tracks_no_connections() {
    require!("ip", "nft", "iptables");
    let Forwarder {
        pod,
        router,
        outside,
        listener,
    } = Forwarder::new();
    outside.run(|_| sh("ip", &["route", "add", POD, "via", "192.168.99.1"]));
    let connect = || {
        let stream = pod
            .run(|_| TcpStream::connect_timeout(&Forwarder::server(), Duration::from_secs(5)))
            .expect("the pod reaches outside");
        let (_, peer) = listener.accept().unwrap();
        drop(stream);
        peer.ip()
    };

    assert_eq!(
        router.run(|_| firewall::apply(net(POD), TUN, false).unwrap()),
        Iptables::NotNeeded
    );
    let ruleset = router.run(|_| sh("nft", &["list", "ruleset"]));
    assert!(!ruleset.contains("hook"), "no base chain, so no hook: {ruleset}");
    assert_eq!(connect(), ip("10.32.1.2"));
    assert_eq!(router.run(|_| conntrack_count()), 0, "nothing was tracked");

    // The same traffic with masquerading is tracked (so the count above
    // could have been anything but zero).
    assert_eq!(
        router.run(|_| firewall::apply(net(POD), TUN, true).unwrap()),
        Iptables::NotNeeded
    );
    assert_eq!(connect(), ip("192.168.99.1"));
    let tracked = router.run(|_| conntrack_count());
    assert!(tracked >= 1, "masquerading tracks connections: {tracked}");
}

// ---------------------------------------------------------------- helpers

/// A pod, a router and a host outside, in three namespaces joined by veths,
/// with a TCP listener outside on port 7000:
///
/// ```text
/// pod 10.32.1.2 --- 10.32.1.1 router 192.168.99.1 --- 192.168.99.2 outside
/// ```
///
/// The router forwards; it has no firewall rules yet.
struct Forwarder {
    pod: Ns,
    router: Ns,
    outside: Ns,
    listener: TcpListener,
}

impl Forwarder {
    fn new() -> Self {
        let pod = Ns::new();
        let router = Ns::new();
        let outside = Ns::new();
        veth(&router, "r-pod", &pod, "p0");
        veth(&router, "r-out", &outside, "o0");
        pod.run(|_| {
            sh("ip", &["link", "set", "lo", "up"]);
            sh("ip", &["addr", "add", "10.32.1.2/24", "dev", "p0"]);
            sh("ip", &["link", "set", "p0", "up"]);
            sh("ip", &["route", "add", "default", "via", "10.32.1.1"]);
        });
        router.run(|_| {
            sh("ip", &["addr", "add", "10.32.1.1/24", "dev", "r-pod"]);
            sh("ip", &["addr", "add", "192.168.99.1/24", "dev", "r-out"]);
            sh("ip", &["link", "set", "r-pod", "up"]);
            sh("ip", &["link", "set", "r-out", "up"]);
            assert_eq!(sysctl::enable_ip_forwarding().unwrap(), Forwarding::Enabled);
        });
        let listener = outside.run(|_| {
            sh("ip", &["link", "set", "lo", "up"]);
            sh("ip", &["addr", "add", "192.168.99.2/24", "dev", "o0"]);
            sh("ip", &["link", "set", "o0", "up"]);
            TcpListener::bind(Self::server()).unwrap()
        });
        Self {
            pod,
            router,
            outside,
            listener,
        }
    }

    /// Where the listener outside listens.
    fn server() -> SocketAddr {
        "192.168.99.2:7000".parse().expect("a literal address")
    }
}

/// The calling namespace's count of tracked connections; 0 where the
/// conntrack module is not even loaded.
fn conntrack_count() -> u64 {
    match std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count") {
        Ok(s) => s.trim().parse().expect("a count"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("reading nf_conntrack_count: {e}"),
    }
}

/// Skips the test (fails it under CI) unless it runs as root with
/// `/dev/net/tun` and the named tools.
macro_rules! require {
    ($($tool:expr),* $(,)?) => {
        if let Some(reason) = missing(&[$($tool),*]) {
            skip(&reason);
            return;
        }
    };
}
use require;

fn missing(tools: &[&str]) -> Option<String> {
    // /proc/self is owned by the process's effective user.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if euid != 0 {
        return Some("needs root (network namespaces, TUN, netlink)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    for tool in tools {
        let flag = if *tool == "ip" { "-V" } else { "--version" };
        if Command::new(tool).arg(flag).output().is_err() {
            let package = match *tool {
                "ip" => "iproute2",
                "nft" => "nftables",
                other => other,
            };
            return Some(format!("`{tool}` is not installed (apt-get install {package})"));
        }
    }
    None
}

fn skip(reason: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{reason} (CI is set, so this test may not be skipped)");
    }
    eprintln!("skipping: {reason}");
}

type Job = Box<dyn FnOnce(&Runtime) + Send>;

/// A thread in a network namespace of its own, running closures on request.
/// The namespace ends with the thread, when the `Ns` is dropped.
struct Ns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The thread's id, for `ip link set ... netns <tid>`.
    tid: u32,
}

impl Ns {
    fn new() -> Self {
        Self::with(CloneFlags::CLONE_NEWNET)
    }

    /// As [`Ns::new`], unsharing `flags` (which should include
    /// `CLONE_NEWNET`).
    fn with(flags: CloneFlags) -> Self {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Err(e) = unshare(flags) {
                ready.send(Err(format!("unshare({flags:?}): {e}"))).unwrap();
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // /proc/thread-self links to "<pid>/task/<tid>".
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
                .expect("/proc/thread-self names this thread");
            ready.send(Ok(tid)).unwrap();
            for job in inbox {
                job(&rt);
            }
        });
        let tid = match started.recv().unwrap() {
            Ok(tid) => tid,
            Err(reason) => {
                skip(&reason);
                panic!("{reason}");
            }
        };
        Self {
            jobs: Some(jobs),
            thread: Some(thread),
            tid,
        }
    }

    /// Runs `f` in the namespace and returns its result; a panic in `f`
    /// fails the test with its message.
    fn run<T: Send + 'static>(&self, f: impl FnOnce(&Runtime) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel::<Result<T, Box<dyn Any + Send>>>();
        let job: Job = Box::new(move |rt| {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| f(rt))));
        });
        self.jobs.as_ref().unwrap().send(job).unwrap();
        match rx.recv().unwrap() {
            Ok(v) => v,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Runs the future `f()` makes on the namespace's runtime, bounded by a
    /// generous deadline.
    fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.run(|rt| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), f())
                    .await
                    .expect("the test finished within 60 s")
            })
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A veth pair with `a_name` in `a` and `b_name` in `b`, both down.
fn veth(a: &Ns, a_name: &'static str, b: &Ns, b_name: &'static str) {
    let b_tid = b.tid.to_string();
    a.run(move |_| {
        sh("ip", &["link", "add", a_name, "type", "veth", "peer", "name", b_name]);
        sh("ip", &["link", "set", b_name, "netns", &b_tid]);
    });
}

/// Runs a command in the calling thread's namespace; its stdout. Fails the
/// test with stderr if it fails.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command in the calling thread's namespace; whether it succeeded,
/// its stdout and its stderr.
fn try_sh(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `check` until it holds, failing after 10 s.
async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let wait = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// The objects of `nft -j list table ip weft`, or `None` if it does not exist.
fn nft_table() -> Option<Vec<serde_json::Value>> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", "weft"])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["nftables"].as_array().unwrap().clone())
}

/// Every main-table route whose protocol is not ours, as `ip -o` lines.
fn routes_not_ours() -> Vec<String> {
    let all = sh("ip", &["-o", "route", "show", "table", "main"]);
    let mine = format!("proto {RTPROT_WEFT}");
    let mut v: Vec<String> = all
        .lines()
        .filter(|l| !l.contains(&mine))
        .map(|l| l.trim().to_owned())
        .collect();
    v.sort_unstable();
    v
}

fn read_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_owned()
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
