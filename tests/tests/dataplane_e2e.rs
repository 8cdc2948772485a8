//! End-to-end tests of the data plane with the real `weft` binary: pods on different hosts reach each other
//! through the routers' TUN devices and Noise-encrypted UDP, and what crosses the underlay is ciphertext only.
//!
//! Every test launches routers on a testbed's hosts with the pod range split by a seed list, plugs pods in as
//! a routed CNI plugin would (an address allocated through the router, a veth, a /32 route on the host; the
//! pod's MTU set to the router's, as the CNI plugin will), and sends real traffic: busybox and iputils `ping`,
//! and this crate's `weft-probe` for UDP and TCP echo, steady streams and raw datagrams. Captures on the
//! underlay are made with `tcpdump` and read with [`weft_tests::pcap`]; datagrams are checked with the
//! router's own parser, [`wire::parse`].
//!
//! Needs root, `tcpdump`, iputils `ping` and busybox (`tests/run.sh` installs them), and the `weft` binary
//! (`cargo build -p weft-router --bin weft`). When a test fails, every router's log is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use weft_router::core::data::session::{PARK_TIME, Sessions};
use weft_router::core::data::wire::{self, Packet};
use weft_router::core::time::Time;
use weft_router::identity::Identity;
use weft_router::secret::{ClusterSecret, DATA_PSK_LABEL, SecretSource};
use weft_tests::pcap::{self, Frame};
use weft_tests::router::{DATAPLANE_PORT, Dataplane, Router, Status, fully_meshed, wait_for, workdir, write_secret};
use weft_tests::traffic::{Running, echo_servers, ping, probe, tcp_addr, tcp_ask, udp_addr, udp_ask};
use weft_tests::{Error, Host, InNamespace, Pod, Testbed, require_program, wait_until};

const SECRET: &str = "correct horse battery staple";
/// The pod range. Each test has its own namespaces, so every test uses the same range.
const RANGE: &str = "10.40.0.0/16";
/// How long a state the routers should reach quickly may take on a loaded CI machine.
const SETTLE: Duration = Duration::from_secs(30);

/// ICMP, UDP and TCP between six pods on three hosts, every pod to every pod on another host, both ways; a
/// megabyte over TCP between each pair of hosts; and each host to the pods of the others, from its own
/// pod-network address.
#[test]
fn pods_on_three_hosts_reach_each_other_by_icmp_udp_and_tcp() {
    require_program!("busybox");
    let Some(tb) = Testbed::for_test(3) else { return };
    let mesh = Mesh::launch(&tb, 3);
    let pods: Vec<(usize, Pod)> = (1..=3).flat_map(|h| ["a", "b"].map(|s| (h, mesh.plug(h, s)))).collect();
    let servers: Vec<Running> = pods.iter().flat_map(|(_, pod)| echo_servers(pod)).collect();
    mesh.wait_for_sessions();

    let started = Instant::now();
    for (from_host, from) in &pods {
        for (to_host, to) in pods.iter().filter(|(h, _)| h != from_host) {
            let what = format!("{} (h{from_host}) -> {} (h{to_host})", from.ip(), to.ip());
            ping(from, to.ip()).unwrap_or_else(|err| panic!("ping {what}: {err}"));
            let text = format!("udp {what}");
            udp_ask(from, udp_addr(to), &text, &[]).unwrap_or_else(|err| panic!("UDP {what}: {err}"));
            let text = format!("tcp {what}");
            tcp_ask(from, tcp_addr(to), &text, &[]).unwrap_or_else(|err| panic!("TCP {what}: {err}"));
        }
    }
    eprintln!("24 pod pairs x ICMP, UDP, TCP in {:?}", started.elapsed());

    // Bulk TCP: a megabyte each way, with segments far larger than the MTU handed to the TUN device.
    let started = Instant::now();
    for (from, to) in [(0, 2), (2, 4), (4, 0)] {
        let (from, to) = (&pods[from].1, &pods[to].1);
        tcp_ask(
            from,
            tcp_addr(to),
            "bulk-",
            &["--size", "1048576", "--timeout-ms", "20000"],
        )
        .unwrap_or_else(|err| panic!("1 MiB over TCP {} -> {}: {err}", from.ip(), to.ip()));
    }
    eprintln!("3 x 1 MiB TCP echoes in {:?}", started.elapsed());

    // A host reaches other hosts' pods from the address its router gave it (kubelet probes need this).
    for h in 1..=3 {
        let host = tb.host(h);
        let host_address = mesh.status(h).host_address.expect("checked at launch");
        for (_, to) in pods.iter().filter(|(p, _)| *p != h) {
            ping(host, to.ip()).unwrap_or_else(|err| panic!("ping from host h{h} to pod {}: {err}", to.ip()));
        }
        let (_, to) = pods.iter().find(|(p, _)| *p != h).expect("pods on other hosts");
        let text = format!("from host h{h}");
        udp_ask(host, udp_addr(to), &text, &[]).unwrap_or_else(|err| panic!("UDP from host h{h}: {err}"));
        let server = servers
            .iter()
            .find(|s| s.netns() == to.name() && s.kind() == "udp-echo")
            .expect("every pod has a UDP server");
        let seen = server.wait_line(Duration::from_secs(5), |line| line.ends_with(&text));
        assert!(
            seen.split_whitespace()
                .nth(2)
                .is_some_and(|from| from.starts_with(&format!("{host_address}:"))),
            "the host's datagram came from another address than its host_address {host_address}: {seen}"
        );
    }

    // Clean traffic leaves no drop for a reason that means an attack or a bug.
    for h in 1..=3 {
        let dp = mesh.dataplane(h);
        assert_eq!(
            dp.sessions, 2,
            "h{h} should have a session with each other router: {dp:#?}"
        );
        assert!(dp.tx_packets > 0 && dp.rx_packets > 0, "h{h}: {dp:#?}");
        let bad: BTreeMap<&str, u64> = ALARMING_DROPS
            .iter()
            .map(|&reason| (reason, dp.drops(reason)))
            .filter(|&(_, n)| n > 0)
            .collect();
        assert!(bad.is_empty(), "h{h} dropped clean traffic: {bad:?}; {dp:#?}");
    }
}

/// Packets of exactly the tunnel MTU with Don't Fragment set cross whole, ICMP and UDP, pod to pod and host to
/// pod; one byte more is refused by the sender's kernel (`EMSGSIZE`), not fragmented; and a pod that does not
/// know the MTU (its link at 1500) learns it by path MTU discovery instead of losing its packets.
#[test]
fn packets_at_the_tunnel_mtu_cross_whole_and_larger_ones_are_refused() {
    require_program!("busybox");
    require_iputils_ping!();
    let Some(tb) = Testbed::for_test(2) else { return };
    let mesh = Mesh::launch(&tb, 2);
    let mtu = mesh.dataplane(1).mtu;
    assert_eq!(
        mesh.dataplane(2).mtu,
        mtu,
        "both routers have the same underlay, so the same MTU"
    );
    assert!(
        (1280..=1500 - 20 - 8 - 32).contains(&mtu),
        "the tunnel MTU {mtu} must leave room for IPv4, UDP and the 32-byte transport header in a 1500-byte underlay"
    );
    for h in 1..=2 {
        let tun_mtu = tb.host(h).exec_ok(["cat", "/sys/class/net/weft/mtu"]).unwrap();
        assert_eq!(
            tun_mtu.trim(),
            mtu.to_string(),
            "h{h}'s TUN device has another MTU than its status says"
        );
    }
    let a = mesh.plug(1, "a");
    let b = mesh.plug(2, "b");
    let _servers: Vec<Running> = [&a, &b].into_iter().flat_map(echo_servers).collect();
    mesh.wait_for_sessions();
    let fits = usize::from(mtu) - 28; // IPv4 and ICMP (or UDP) headers
    let fits_arg = fits.to_string();
    let over_arg = (fits + 1).to_string();

    for (from, to) in [(&a, &b), (&b, &a)] {
        let what = format!("{} -> {}", from.ip(), to.ip());
        let out = df_ping(from, to.ip(), fits).unwrap_or_else(|err| panic!("ping -M do -s {fits} {what}: {err}"));
        assert!(
            out.contains(&format!("{} bytes from {}", fits + 8, to.ip())),
            "{what}: {out}"
        );
        let err = df_ping(from, to.ip(), fits + 1).expect_err("one byte over the MTU with DF must not be sent");
        assert!(
            err.to_string().contains("message too long") && err.to_string().contains(&format!("mtu={mtu}")),
            "ping -M do -s {} {what} should fail locally with EMSGSIZE (mtu={mtu}): {err}",
            fits + 1
        );
        let text = format!("df {what} ");
        udp_ask(from, udp_addr(to), &text, &["--dont-fragment", "--size", &fits_arg])
            .unwrap_or_else(|err| panic!("a {fits}-byte UDP datagram with DF {what}: {err}"));
        match udp_ask(from, udp_addr(to), &text, &["--dont-fragment", "--size", &over_arg]) {
            Err(Error::Failed { stdout, .. }) if stdout == "emsgsize" => {}
            other => panic!(
                "a {}-byte UDP datagram with DF {what} should get EMSGSIZE: {other:?}",
                fits + 1
            ),
        }
    }
    // The host's own packets to a remote pod go through the same route, at the same MTU.
    df_ping(tb.host(1), b.ip(), fits).unwrap_or_else(|err| panic!("ping -M do -s {fits} from host h1: {err}"));

    // A pod whose link says 1500 sends a full-size DF packet: the host answers "fragmentation needed" with the
    // tunnel MTU, the pod's kernel remembers it, and the next packet that fits goes through.
    let c = mesh.plug_with_mtu(1, "c", None);
    let err = df_ping(&c, b.ip(), 1500 - 28).expect_err("1500 bytes with DF cannot cross a smaller tunnel");
    assert!(
        err.to_string().contains(&format!("mtu = {mtu}")) || err.to_string().contains(&format!("mtu={mtu}")),
        "the pod should learn the tunnel MTU {mtu} by path MTU discovery: {err}"
    );
    df_ping(&c, b.ip(), fits).unwrap_or_else(|err| panic!("after path MTU discovery, {fits} bytes with DF: {err}"));
}

/// While a marker string crosses the tunnel in UDP and TCP payloads (small, MTU-sized and bulk), a capture on
/// the underlay bridge never contains it, and every datagram on the data-plane port is one of ours
/// ([`wire::parse`]), whole and unfragmented. A capture on the receiving pod's veth does contain the marker,
/// so the first check could have failed.
#[test]
fn the_underlay_carries_only_well_formed_ciphertext() {
    require_program!("busybox");
    require_program!("tcpdump");
    let Some(tb) = Testbed::for_test(3) else { return };
    // Started before the routers, so the handshakes are in it too.
    let (mesh, underlay) = Mesh::launch_capturing(&tb, 3);
    let pods: Vec<Pod> = (1..=3).map(|h| mesh.plug(h, "a")).collect();
    let _servers: Vec<Running> = pods.iter().flat_map(echo_servers).collect();
    let plain = Capture::start(tb.host(3), pods[2].host_veth(), &mesh.dir.path().join("pod-h3.pcap"));

    let mtu = mesh.dataplane(1).mtu;
    let full = (usize::from(mtu) - 28).to_string();
    let mut sent = 0;
    for (from, to) in [(0, 2), (1, 2), (2, 0), (0, 1)] {
        let (from, to) = (&pods[from], &pods[to]);
        for size in ["64", "700", full.as_str()] {
            udp_ask(from, udp_addr(to), MARKER, &["--size", size]).unwrap();
            sent += 2; // the datagram and its echo, at least
        }
        tcp_ask(
            from,
            tcp_addr(to),
            MARKER,
            &["--size", "200000", "--timeout-ms", "20000"],
        )
        .unwrap();
    }
    udp_ask(tb.host(1), udp_addr(&pods[2]), MARKER, &[]).unwrap();
    sent += 2;
    plain.wait_for("the marker in the plaintext capture on h3's pod veth", |bytes| {
        contains(bytes, MARKER.as_bytes())
    });
    let sentinel = underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "end");
    let frames = underlay.stop();
    drop(plain);

    let raw = fs::read(mesh.dir.path().join("underlay.pcap")).unwrap();
    assert!(
        contains(&raw, sentinel.as_bytes()),
        "the capture file lacks the sentinel"
    );
    assert!(
        !contains(&raw, MARKER.as_bytes()),
        "the marker crossed the underlay in clear"
    );
    let counts = check_dataplane_datagrams(&frames);
    eprintln!(
        "{} frames on the underlay; data-plane datagrams by type: {counts:?}",
        frames.len()
    );
    assert!(
        counts.get("initiation").is_some_and(|&n| n >= 2),
        "no handshakes captured: {counts:?}"
    );
    assert!(
        counts.get("response").is_some_and(|&n| n >= 2),
        "no handshakes captured: {counts:?}"
    );
    let transport = counts.get("transport").copied().unwrap_or(0);
    assert!(
        transport >= sent,
        "{sent} UDP datagrams crossed between pods, but only {transport} transport datagrams were captured"
    );
}

/// Two routers that have never talked shake hands as soon as they learn of each other, before any pod sends,
/// each at most once (both start, so the two handshakes may cross), with no retry and no "stale session"
/// notice; and the first pod packet then arrives at the first try. (A receiver that answers a handshake before
/// its packet path knows the new keys drops the next datagram as `unknown_session`, says "stale", and both
/// sides shake hands again.)
#[test]
fn the_first_handshake_needs_no_retry_and_the_first_packet_arrives() {
    require_program!("busybox");
    require_program!("tcpdump");
    let Some(tb) = Testbed::for_test(2) else { return };
    let (mesh, underlay) = Mesh::launch_capturing(&tb, 2);
    let a = mesh.plug(1, "a");
    let b = mesh.plug(2, "b");
    let _servers = echo_servers(&b);
    let first = udp_ask(
        &a,
        udp_addr(&b),
        "the very first",
        &["--tries", "1", "--timeout-ms", "5000"],
    );
    underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "end");
    let frames = underlay.stop();
    let captured = describe_dataplane(&frames);
    let counts = check_dataplane_datagrams(&frames);
    assert!(
        first.is_ok(),
        "the first datagram got no echo ({first:?}); the capture:\n{captured}"
    );
    let (initiations, responses) = (counts.get("initiation"), counts.get("response"));
    assert!(
        matches!(initiations, Some(1 | 2)) && responses == initiations && !counts.contains_key("stale"),
        "one handshake from each side at most, each answered once, no stale notice; the capture:\n{captured}"
    );
    for (from, to) in [(1, 2), (2, 1)] {
        let (src, dst) = (tb.host(from).underlay_ip(), tb.host(to).underlay_ip());
        let inits = dataplane_payloads(&frames, src, dst)
            .into_iter()
            .filter(|d| matches!(wire::parse(d), Ok(Packet::Initiation(_))))
            .count();
        assert!(
            inits <= 1,
            "h{from} sent {inits} initiations to h{to}; the capture:\n{captured}"
        );
    }
    for h in 1..=2 {
        let dp = mesh.dataplane(h);
        assert_eq!(
            dp.drops("unknown_session"),
            0,
            "h{h} dropped a packet of the new session: {dp:#?}"
        );
    }
}

/// Routers started alike (the same identities, data directories and flags) never make the same ephemeral key:
/// every handshake initiation on the underlay, from two launches of the same two routers, carries a key of its
/// own. The session core draws them from the RNG its caller gives it, which the router seeds from the OS; a
/// fixed or predictable seed would repeat them from one launch to the next.
#[test]
fn routers_started_alike_never_repeat_an_ephemeral_key() {
    require_program!("busybox");
    require_program!("tcpdump");
    let Some(tb) = Testbed::for_test(2) else { return };
    let (mut mesh, underlay) = Mesh::launch_capturing(&tb, 2);
    mesh.wait_for_sessions();
    let restart = underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "restart");
    for r in &mut mesh.routers {
        r.kill();
    }
    for r in &mut mesh.routers {
        r.start();
    }
    let refs: Vec<&Router<'_>> = mesh.routers.iter().collect();
    wait_for(&refs, SETTLE, "the restarted routers to mesh again", fully_meshed);
    mesh.wait_for_sessions();
    underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "end");
    let frames = underlay.stop();
    let mark = frames
        .iter()
        .position(|f| contains(&f.data, restart.as_bytes()))
        .expect("the sentinel is in the capture");
    let (h1, h2) = (tb.host(1).underlay_ip(), tb.host(2).underlay_ip());
    // An initiation is an 8-byte header, then the Noise message, which opens with the ephemeral public key.
    let ephemeral_keys = |frames: &[Frame]| -> Vec<Vec<u8>> {
        dataplane_payloads(frames, h1, h2)
            .into_iter()
            .chain(dataplane_payloads(frames, h2, h1))
            .filter(|d| matches!(wire::parse(d), Ok(Packet::Initiation(_))))
            .map(|d| d[8..8 + 32].to_vec())
            .collect()
    };
    let (first, second) = (ephemeral_keys(&frames[..mark]), ephemeral_keys(&frames[mark..]));
    assert!(
        !first.is_empty() && !second.is_empty(),
        "a handshake in each launch at least; the capture:\n{}",
        describe_dataplane(&frames)
    );
    let keys: Vec<Vec<u8>> = first.into_iter().chain(second).collect();
    let distinct: BTreeSet<&Vec<u8>> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "an ephemeral key was used twice in {} initiations",
        keys.len()
    );
}

/// On a bare host the router adds no forward rules (they would cost every packet). Docker starting after it
/// sets the filter FORWARD policy to DROP, which cuts that host's pods off; the router notices within its
/// check interval (5 s) and puts in its accepts, and the pods reach the other host again.
#[test]
fn a_forward_drop_policy_set_after_launch_is_let_through_within_seconds() {
    require_program!("busybox");
    require_program!("iptables");
    let Some(tb) = Testbed::for_test(2) else { return };
    let mesh = Mesh::launch(&tb, 2);
    let a = mesh.plug(1, "a");
    let b = mesh.plug(2, "b");
    let _servers = echo_servers(&b);
    let quick = ["--tries", "1", "--timeout-ms", "500"];
    udp_ask(&a, udp_addr(&b), "before", &["--timeout-ms", "5000"]).expect("a reaches b before the policy");
    let h1 = tb.host(1);
    let forward = || h1.netns().exec_ok(["iptables", "-w", "-S", "FORWARD"]).unwrap();
    assert!(
        !forward().contains("WEFT-FORWARD"),
        "a bare host needs no rules: {}",
        forward()
    );

    h1.netns().exec_ok(["iptables", "-w", "-P", "FORWARD", "DROP"]).unwrap();
    let set = Instant::now();
    wait_until(Duration::from_secs(15), "a to reach b through the DROP policy", || {
        udp_ask(&a, udp_addr(&b), "after", &quick).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}; FORWARD:\n{}\nh1's log:\n{}", forward(), mesh.router(1).log()));
    eprintln!("pods passed the new DROP policy {:?} after it was set", set.elapsed());
    assert!(
        forward().contains("-A FORWARD -m comment --comment weft -j WEFT-FORWARD"),
        "{}",
        forward()
    );
}

/// Transport datagrams captured on the underlay and sent again to the receiving router are dropped and
/// counted as replayed, none reaches the pod again, and the session carries on. Replayed handshake
/// initiations are refused too, without disturbing the session.
#[test]
fn replayed_datagrams_are_dropped_and_not_delivered() {
    require_program!("busybox");
    require_program!("tcpdump");
    let Some(tb) = Testbed::for_test(2) else { return };
    // From the start, to have the handshake in it for the initiations replayed below.
    let (mesh, underlay) = Mesh::launch_capturing(&tb, 2);
    let a = mesh.plug(1, "a");
    let b = mesh.plug(2, "b");
    let _a_servers = echo_servers(&a);
    let b_servers = echo_servers(&b);
    mesh.wait_for_sessions();
    udp_ask(&a, udp_addr(&b), "warming up", &[]).unwrap();
    // The datagrams to replay are those after this mark: of a session both routers hold.
    let settled = underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "settled");
    let unknown_before = mesh.dataplane(2).drops("unknown_session");
    for i in 0..5 {
        udp_ask(&a, udp_addr(&b), &format!("original {i}"), &[]).unwrap();
    }
    underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "done");
    let frames = underlay.stop();
    assert_eq!(
        mesh.dataplane(2).drops("unknown_session"),
        unknown_before,
        "h2 did not know the session of some of the originals, so replaying them would not be a replay"
    );
    let (h1, h2) = (tb.host(1).underlay_ip(), tb.host(2).underlay_ip());
    let captured = describe_dataplane(&frames);
    let mark = frames
        .iter()
        .position(|f| contains(&f.data, settled.as_bytes()))
        .expect("the sentinel is in the capture");
    let to_h2: Vec<Vec<u8>> = dataplane_payloads(&frames[mark..], h1, h2)
        .into_iter()
        .filter(|d| matches!(wire::parse(d), Ok(Packet::Transport { .. })))
        .collect();
    assert!(
        to_h2.len() >= 5,
        "only {} transport datagrams from h1 to h2 captured after the mark:\n{captured}",
        to_h2.len()
    );

    // Printed only if the test fails.
    eprintln!("the capture:\n{captured}");
    let server = &b_servers[0];
    let delivered = server.count("recv ");
    let before = mesh.dataplane(2);
    eprintln!("h2 before the replay: {before:?}");
    send_datagrams(tb.host(1), SocketAddr::from((h2, DATAPLANE_PORT)), &to_h2, &mesh.dir);
    let n = to_h2.len() as u64;
    let after = mesh.wait_for_dataplane(2, "h2 to drop the replayed datagrams", |dp| {
        dp.total_drops() >= before.total_drops() + n
    });
    assert_eq!(
        after.drops_since(&before),
        BTreeMap::from([("replayed".to_owned(), n)]),
        "each of the {n} replayed datagrams should count once, as replayed; the capture:\n{captured}"
    );
    assert_eq!(after.rx_packets, before.rx_packets, "a replayed datagram was delivered");
    assert_eq!(
        server.count("recv "),
        delivered,
        "the pod got a replayed datagram: {:?}",
        server.lines()
    );

    // Replayed handshake initiations, to whichever router got them.
    let mut replayed = 0;
    for (src, dst, host) in [(h1, h2, 1), (h2, h1, 2)] {
        let inits: Vec<Vec<u8>> = dataplane_payloads(&frames, src, dst)
            .into_iter()
            .filter(|d| matches!(wire::parse(d), Ok(Packet::Initiation(_))))
            .collect();
        if inits.is_empty() {
            continue;
        }
        replayed += inits.len();
        let receiver = 3 - host;
        let before = mesh.dataplane(receiver);
        send_datagrams(
            tb.host(host),
            SocketAddr::from((dst, DATAPLANE_PORT)),
            &inits,
            &mesh.dir,
        );
        let k = inits.len() as u64;
        let after = mesh.wait_for_dataplane(receiver, "the replayed initiations to be refused", |dp| {
            dp.total_drops() >= before.total_drops() + k
        });
        assert_eq!(
            after.drops_since(&before),
            BTreeMap::from([("replayed_initiation".to_owned(), k)]),
            "h{receiver} should refuse each replayed initiation, for that reason only"
        );
    }
    assert!(replayed > 0, "no handshake initiation was captured");
    // The session survived both: fresh datagrams go through, both ways, at the first try.
    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = udp_ask(from, udp_addr(to), "after the replay", &["--timeout-ms", "2000"]).unwrap();
        assert_eq!(out, "ok attempts=1", "{} -> {} after the replay", from.ip(), to.ip());
    }
}

/// Datagrams that arrive out of order, but within the replay window, are each delivered once: host 2 is
/// unplugged while host 1 seals a burst for it (captured on host 1's side of the bridge), then the burst is
/// delivered in reverse order. Sent once more, every one is refused as replayed. The session then carries on
/// both ways (the reversed datagrams came from another port, so router 2 followed them there and back).
#[test]
fn reordered_datagrams_within_the_window_are_delivered_once() {
    require_program!("busybox");
    require_program!("tcpdump");
    let Some(tb) = Testbed::for_test(2) else { return };
    let mesh = Mesh::launch(&tb, 2);
    let a = mesh.plug(1, "a");
    let b = mesh.plug(2, "b");
    let _a_servers = echo_servers(&a);
    let b_servers = echo_servers(&b);
    mesh.wait_for_sessions();
    udp_ask(&a, udp_addr(&b), "before the burst", &[]).unwrap();

    let capture = Capture::start(tb.underlay(), "h1", &mesh.dir.path().join("h1-port.pcap"));
    tb.cut(2).unwrap();
    let burst: Vec<Vec<u8>> = (0..BURST).map(|i| format!("burst {i:03}").into_bytes()).collect();
    send_datagrams(&a, udp_addr(&b), &burst, &mesh.dir);
    capture.sentinel(tb.host(1), tb.host(2), &mesh.dir, "end");
    let frames = capture.stop();
    tb.restore(2).unwrap();
    let (h1, h2) = (tb.host(1).underlay_ip(), tb.host(2).underlay_ip());
    let mut sealed: Vec<Vec<u8>> = dataplane_payloads(&frames, h1, h2)
        .into_iter()
        .filter(|d| matches!(wire::parse(d), Ok(Packet::Transport { .. })) && d.len() > wire::TRANSPORT_OVERHEAD)
        .collect();
    assert_eq!(
        sealed.len(),
        BURST,
        "router 1 should have sealed the burst while h2 was away:\n{}",
        describe_dataplane(&frames)
    );
    sealed.reverse();

    let server = &b_servers[0];
    let before = mesh.dataplane(2);
    send_datagrams(tb.host(1), SocketAddr::from((h2, DATAPLANE_PORT)), &sealed, &mesh.dir);
    wait_until(SETTLE, "the reversed burst to reach pod b", || {
        server.count("recv ") > BURST
    })
    .unwrap_or_else(|err| panic!("{err}; {:#?}", mesh.dataplane(2)));
    let received: Vec<String> = server
        .lines()
        .into_iter()
        .filter_map(|(_, line)| line.split_once(" burst ").map(|(_, n)| n.to_owned()))
        .collect();
    let mut expected: Vec<String> = (0..BURST).map(|i| format!("{i:03}")).collect();
    expected.reverse();
    assert_eq!(received, expected, "each datagram once, in the order they came");
    let after = mesh.dataplane(2);
    assert_eq!(
        after.drops_since(&before),
        BTreeMap::new(),
        "h2 dropped some of the reordered datagrams"
    );

    send_datagrams(tb.host(1), SocketAddr::from((h2, DATAPLANE_PORT)), &sealed, &mesh.dir);
    let again = mesh.wait_for_dataplane(2, "h2 to refuse the burst sent again", |dp| {
        dp.total_drops() >= after.total_drops() + BURST as u64
    });
    assert_eq!(
        again.drops_since(&after),
        BTreeMap::from([("replayed".to_owned(), BURST as u64)]),
        "the second time, each datagram is a replay"
    );
    assert_eq!(server.count("recv "), BURST + 1, "a replay reached the pod");
    // Router 2 follows authenticated datagrams to their source port; a's next datagram brings it back.
    for (from, to) in [(&a, &b), (&b, &a)] {
        udp_ask(from, udp_addr(to), "after the burst", &[]).unwrap_or_else(|err| {
            panic!("{} -> {} after the burst: {err}", from.ip(), to.ip());
        });
    }
}

/// Datagrams in the reordering test's burst.
const BURST: usize = 40;

/// A pod on host 1 sends with a source address from host 2's range (and one from host 3's own): router 1
/// seals it, and router 3 drops it as spoofed instead of delivering it.
#[test]
fn a_spoofed_inner_source_is_dropped() {
    require_program!("busybox");
    let Some(tb) = Testbed::for_test(3) else { return };
    let mesh = Mesh::launch(&tb, 3);
    let a = mesh.plug(1, "a");
    let c = mesh.plug(3, "c");
    let servers = echo_servers(&c);
    mesh.wait_for_sessions();
    udp_ask(&a, udp_addr(&c), "honest", &[]).expect("the pod's own address is let through");

    let ring = mesh.router(1).ring();
    for (owner, id) in [(2, "spoof-h2"), (3, "spoof-h3")] {
        let spoofed = mesh.router(owner).allocate_net(id).addr();
        let owner_name = mesh.status(owner).name;
        assert_eq!(
            ring.owner_of(spoofed),
            Some(owner_name.as_str()),
            "{spoofed} should belong to h{owner}'s range"
        );
        a.exec_ok(["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
            .unwrap();
        let (tx_before, before) = (mesh.dataplane(1).tx_packets, mesh.dataplane(3));
        let text = format!("spoofed from {spoofed}");
        let from = spoofed.to_string();
        let sent = udp_ask(
            &a,
            udp_addr(&c),
            &text,
            &["--from", &from, "--tries", "3", "--timeout-ms", "300"],
        );
        assert!(sent.is_err(), "a datagram from {spoofed} was answered: {sent:?}");
        let after = mesh.wait_for_dataplane(3, "h3 to drop the spoofed datagrams", |dp| {
            dp.total_drops() >= before.total_drops() + 3
        });
        assert_eq!(
            after.drops_since(&before),
            BTreeMap::from([("spoofed_source".to_owned(), 3)]),
            "h3 should drop the 3 datagrams from {spoofed} as spoofed, and nothing else"
        );
        assert!(
            mesh.dataplane(1).tx_packets >= tx_before + 3,
            "router 1 should have sealed the spoofed datagrams (the drop is the receiver's)"
        );
        assert_eq!(after.rx_packets, before.rx_packets, "h3 delivered a spoofed packet");
        assert!(
            servers[0].lines().iter().all(|(_, line)| !line.contains("spoofed")),
            "the pod got a spoofed datagram: {:?}",
            servers[0].lines()
        );
    }
    udp_ask(&a, udp_addr(&c), "honest again", &[]).expect("the pod's own address still works");
}

/// Router 2 is killed (SIGKILL) and started again with the same data directory: traffic between the pods of
/// hosts 1 and 3 never stops for a second, and traffic to host 2's pods resumes within 5 s of router 2
/// answering `weft status` again.
#[test]
fn a_router_restart_stops_no_one_else_and_its_pods_are_back_within_5s() {
    require_program!("busybox");
    let Some(tb) = Testbed::for_test(3) else { return };
    let mut mesh = Mesh::launch(&tb, 3);
    let pods: Vec<Pod> = (1..=3).map(|h| mesh.plug(h, "a")).collect();
    let _servers: Vec<Running> = pods.iter().flat_map(echo_servers).collect();
    mesh.wait_for_sessions();
    let stream = |from: &Pod, to: &Pod, tag: &str| {
        let dest = udp_addr(to).to_string();
        Running::start(from, "udp-stream", &["udp-stream", "--interval-ms", "50", &dest, tag])
    };
    let s13 = stream(&pods[0], &pods[2], "s13");
    let s31 = stream(&pods[2], &pods[0], "s31");
    let s12 = stream(&pods[0], &pods[1], "s12");
    let s32 = stream(&pods[2], &pods[1], "s32");
    let all = [&s13, &s31, &s12, &s32];
    wait_until(SETTLE, "every stream to get replies", || {
        all.iter().all(|s| s.count("reply ") >= 5)
    })
    .unwrap();

    let killed = Instant::now();
    mesh.routers[1].kill();
    wait_until(Duration::from_secs(5), "the streams to h2 to stop", || {
        [&s12, &s32].iter().all(|s| {
            s.last("reply ")
                .is_some_and(|t| t.elapsed() > Duration::from_millis(500))
        })
    })
    .unwrap();
    let started = Instant::now();
    mesh.routers[1].start();
    wait_until(SETTLE, "the restarted h2 to answer weft status", || {
        mesh.routers[1].status().is_ok()
    })
    .unwrap();
    let up = Instant::now();
    wait_until(Duration::from_secs(15), "the streams to h2 to resume", || {
        [&s12, &s32].iter().all(|s| s.first_after("reply ", up).is_some())
    })
    .unwrap_or_else(|err| panic!("{err}; h2 status: {:#?}", mesh.routers[1].status()));
    let resumed = [&s12, &s32]
        .iter()
        .map(|s| s.first_after("reply ", started).expect("it resumed"))
        .max()
        .expect("two streams");
    eprintln!(
        "h2 answered its status {:?} after its start; traffic to it resumed {:?} after that",
        up - started,
        resumed.saturating_duration_since(up)
    );
    assert!(
        resumed.saturating_duration_since(up) < Duration::from_secs(5),
        "traffic to h2's pod resumed {:?} after h2 answered its status",
        resumed.saturating_duration_since(up)
    );
    // Keep watching h1 <-> h3 for another 20 replies (a second), then look for gaps since just before the kill.
    let seen = [s13.count("reply "), s31.count("reply ")];
    wait_until(SETTLE, "20 more replies between h1 and h3", || {
        s13.count("reply ") >= seen[0] + 20 && s31.count("reply ") >= seen[1] + 20
    })
    .unwrap();
    for s in [&s13, &s31] {
        let gap = s.longest_gap("reply ", killed - Duration::from_millis(200));
        assert!(
            gap < Duration::from_secs(1),
            "traffic between h1 and h3 stopped for {gap:?} while h2 restarted ({})",
            s.tag()
        );
    }
}

/// Malformed, truncated, oversized and random datagrams, handshakes made with a wrong secret or an unknown
/// key, and corrupted or replayed transport datagrams, sent to router 1 from a host that runs no router: each
/// is dropped and counted for its reason (in `weft status` and in the metrics), the router keeps running, and
/// pod traffic still flows.
#[test]
fn garbage_on_the_dataplane_port_is_counted_and_harmless() {
    require_program!("busybox");
    require_program!("tcpdump");
    let Some(tb) = Testbed::for_test(3) else { return };
    // From the start, for a handshake initiation; then a transport datagram of the settled session, which
    // router 1 has seen (so that sending it again is a replay).
    let (mesh, underlay) = Mesh::launch_capturing(&tb, 2);
    let a = mesh.plug(1, "a");
    let b = mesh.plug(2, "b");
    let _servers: Vec<Running> = [&a, &b].into_iter().flat_map(echo_servers).collect();
    mesh.wait_for_sessions();
    udp_ask(&b, udp_addr(&a), "warming up", &[]).unwrap();
    let settled = underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "settled");
    udp_ask(&b, udp_addr(&a), "to learn an index", &[]).unwrap();
    underlay.sentinel(tb.host(1), tb.host(2), &mesh.dir, "end");
    let frames = underlay.stop();
    let (h1, h2) = (tb.host(1).underlay_ip(), tb.host(2).underlay_ip());
    let mark = frames
        .iter()
        .position(|f| contains(&f.data, settled.as_bytes()))
        .expect("the sentinel is in the capture");
    let transport = dataplane_payloads(&frames[mark..], h2, h1)
        .into_iter()
        .find(|d| d.len() > wire::TRANSPORT_OVERHEAD && matches!(wire::parse(d), Ok(Packet::Transport { .. })))
        .expect("a transport datagram from h2 to h1 was captured");
    let initiation = dataplane_payloads(&frames, h1, h2)
        .into_iter()
        .chain(dataplane_payloads(&frames, h2, h1))
        .find(|d| matches!(wire::parse(d), Ok(Packet::Initiation(_))))
        .expect("a handshake initiation was captured");

    let attacker = tb.host(3);
    let target = SocketAddr::from((h1, DATAPLANE_PORT));
    let secret = ClusterSecret::load(&SecretSource::File(mesh.secret.clone())).unwrap();
    let (h1_identity, _) = Identity::load_or_create(mesh.router(1).data_dir()).unwrap();
    let (h2_identity, _) = Identity::load_or_create(mesh.router(2).data_dir()).unwrap();
    let stranger = Identity::generate().unwrap();
    let wrong_secret = ClusterSecret::new(b"not the cluster secret".to_vec()).unwrap();

    let mut flipped_mac = initiation.clone();
    flipped_mac[40] ^= 1;
    let mut forged = transport.clone();
    *forged.last_mut().expect("not empty") ^= 1;
    let mut long = transport.clone();
    long.extend_from_slice(&[0; 100]);
    let mut random_index = transport.clone();
    random_index[4..8].copy_from_slice(&0x5eed_f00d_u32.to_le_bytes());
    let mut rng = XorShift(0x243f_6a88_85a3_08d3);
    let cases: Vec<(&str, &str, Vec<Vec<u8>>)> = vec![
        ("empty datagrams", "truncated", vec![vec![], vec![]]),
        ("shorter than a header", "truncated", vec![vec![4, 0, 0]]),
        (
            "a transport header cut short",
            "truncated",
            vec![transport[..20].to_vec(), transport[..31].to_vec()],
        ),
        (
            "an unknown type",
            "unknown_type",
            vec![vec![9, 0, 0, 0, 1, 2, 3, 4], vec![0; 40], vec![0xff; 200]],
        ),
        (
            "reserved bytes set",
            "unknown_type",
            vec![with_byte(&transport, 2, 1), with_byte(&initiation, 1, 7)],
        ),
        (
            "handshake messages of the wrong size",
            "bad_length",
            vec![
                initiation[..wire::INITIATION_LEN - 1].to_vec(),
                [&initiation[..], &[0u8][..]].concat(),
                sized(2, wire::RESPONSE_LEN + 1),
                sized(3, wire::COOKIE_LEN - 1),
                sized(5, wire::STALE_LEN + 4),
            ],
        ),
        (
            "random initiations",
            "bad_mac",
            vec![rng.typed(1, wire::INITIATION_LEN), rng.typed(1, wire::INITIATION_LEN)],
        ),
        ("a captured initiation with a flipped bit", "bad_mac", vec![flipped_mac]),
        (
            "initiations made with the wrong cluster secret",
            "bad_mac",
            vec![forged_initiation(&wrong_secret, &stranger, &h1_identity, target)],
        ),
        (
            "an initiation keyed for another router",
            "bad_mac",
            vec![forged_initiation(&secret, &stranger, &h2_identity, target)],
        ),
        (
            "an initiation from a key that is not in the mesh",
            "unknown_peer",
            vec![forged_initiation(&secret, &stranger, &h1_identity, target)],
        ),
        (
            "a transport datagram with a flipped bit",
            "auth_failed",
            vec![forged, long],
        ),
        (
            "a transport datagram replayed from elsewhere",
            "replayed",
            vec![transport.clone()],
        ),
        (
            "a transport datagram for no session",
            "unknown_session",
            vec![random_index],
        ),
    ];
    // Every case runs, and the miscounted ones are listed together at the end.
    let mut miscounted = Vec::new();
    for (what, reason, datagrams) in &cases {
        let before = mesh.dataplane(1);
        send_datagrams(attacker, target, datagrams, &mesh.dir);
        let n = datagrams.len() as u64;
        let mut after = before.clone();
        // An idle router counts a datagram within milliseconds (an initiation from a key it does not know once
        // it has held it for PARK_TIME, in case the key's entry is on its way); one it does not count never shows.
        let counted = wait_until(PARK_TIME + Duration::from_secs(5), what, || {
            after = mesh.dataplane(1);
            after.total_drops() >= before.total_drops() + n
        });
        let grew = after.drops_since(&before);
        if counted.is_err() || grew != BTreeMap::from([((*reason).to_owned(), n)]) {
            miscounted.push(format!(
                "{what}: {n} should count as {reason}, the drops grew by {grew:?}"
            ));
        }
    }

    // The largest datagrams UDP can carry (fragmented on the underlay and reassembled), and random ones.
    let mut random: Vec<Vec<u8>> = vec![sized(9, wire::MAX_DATAGRAM), rng.typed(4, wire::MAX_DATAGRAM)];
    for i in 0..300 {
        let len = 1 + rng.below(1499); // empty datagrams are a case above
        random.push(if i % 3 == 0 {
            rng.bytes(len)
        } else {
            // A valid type and zero reserved bytes, to get past the first check. Not 5: a stale notice for an
            // unknown index is not an error.
            let kind = [1, 2, 3, 4][rng.below(4)];
            rng.typed(kind, len)
        });
    }
    let before = mesh.dataplane(1);
    for chunk in random.chunks(50) {
        let (n, chunk_before) = (chunk.len() as u64, mesh.dataplane(1));
        send_datagrams(attacker, target, chunk, &mesh.dir);
        mesh.wait_for_dataplane(1, "h1 to count every random datagram", |dp| {
            dp.total_drops() >= chunk_before.total_drops() + n
        });
    }
    let after = mesh.dataplane(1);
    let grew = after.drops_since(&before);
    eprintln!("{} random datagrams were dropped as: {grew:?}", random.len());
    assert_eq!(
        after.total_drops() - before.total_drops(),
        random.len() as u64,
        "each random datagram counts once: {grew:?}"
    );

    // The metrics say what the status says.
    let metrics = tb
        .host(1)
        .exec_ok(["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:6782/metrics"])
        .unwrap();
    let status = mesh.dataplane(1);
    for reason in [
        "truncated",
        "unknown_type",
        "bad_length",
        "bad_mac",
        "unknown_peer",
        "auth_failed",
        "replayed",
    ] {
        let series = format!(
            "weft_dataplane_drops_total{{reason=\"{reason}\"}} {}",
            status.drops(reason)
        );
        assert!(
            metrics.lines().any(|line| line == series),
            "the metrics lack `{series}`:\n{metrics}"
        );
    }
    // System calls are counted per kind; each UDP send carries at least one sealed packet.
    let series = |name: &str| -> u64 {
        let prefix = format!("{name} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("the metrics lack `{name}`:\n{metrics}"))
    };
    let sends = series("weft_dataplane_syscalls_total{call=\"udp_send\"}");
    let sealed = series("weft_dataplane_packets_total{direction=\"out\"}");
    assert!(
        0 < sends && sends <= sealed,
        "{sends} UDP sends for {sealed} sealed packets"
    );
    assert!(
        series("weft_dataplane_syscalls_total{call=\"tun_read\"}") > 0,
        "{metrics}"
    );
    assert!(
        series("weft_dataplane_syscalls_total{call=\"udp_recv\"}") >= random.len() as u64,
        "every random datagram took a receive of its own:\n{metrics}"
    );
    // Still running, still carrying traffic, still in session with h2 (nothing above made it roam or rekey).
    assert!(!mesh.router(1).exited(), "router 1 died");
    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = udp_ask(from, udp_addr(to), "after the garbage", &[]).unwrap();
        assert_eq!(out, "ok attempts=1", "{} -> {} after the garbage", from.ip(), to.ip());
    }
    assert_eq!(mesh.dataplane(1).sessions, 1, "{:#?}", mesh.dataplane(1));
    assert!(miscounted.is_empty(), "miscounted garbage:\n{}", miscounted.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------------
// The mesh and its pods.

/// Routers on hosts 1 to n of a testbed, the pod range split among them by a seed list, and the directory of
/// their data, sockets, logs and captures.
struct Mesh<'t> {
    /// Dropped first, so that the directory outlives them.
    routers: Vec<Router<'t>>,
    dir: TempDir,
    secret: PathBuf,
}

impl<'t> Mesh<'t> {
    /// Launches the routers (hosts 2..n dial host 1) and waits until they are fully meshed, each has a host
    /// address and a data plane that knows every other router.
    fn launch(tb: &'t Testbed, n: usize) -> Self {
        Self::launch_in(tb, n, workdir())
    }

    /// [`Mesh::launch`], with a capture of the underlay bridge (`underlay.pcap` in the mesh's directory)
    /// started before the first router: the routers shake hands as soon as they learn of each other, so a
    /// capture that is to hold their handshakes must be running by then.
    fn launch_capturing(tb: &'t Testbed, n: usize) -> (Self, Capture) {
        let dir = workdir();
        let underlay = Capture::start(tb.underlay(), "br0", &dir.path().join("underlay.pcap"));
        (Self::launch_in(tb, n, dir), underlay)
    }

    fn launch_in(tb: &'t Testbed, n: usize, dir: TempDir) -> Self {
        let secret = write_secret(dir.path(), "secret", SECRET);
        let seeds: Vec<String> = (1..=n).map(|h| format!("h{h}")).collect();
        let init = format!("seed={}", seeds.join(","));
        let extra = ["--ipalloc-range", RANGE, "--ipalloc-init", init.as_str()];
        let routers: Vec<Router<'t>> = (1..=n)
            .map(|h| {
                let peers: Vec<&Host> = if h == 1 { vec![] } else { vec![tb.host(1)] };
                Router::launch_with(tb.host(h), dir.path(), &secret, &peers, &extra)
            })
            .collect();
        let mesh = Self { routers, dir, secret };
        let started = Instant::now();
        let refs: Vec<&Router<'_>> = mesh.routers.iter().collect();
        wait_for(
            &refs,
            SETTLE,
            "the routers to mesh, with host addresses and data planes",
            |s| {
                fully_meshed(s)
                    && s.iter().all(|s| {
                        s.host_address.is_some() && s.dataplane.as_ref().is_some_and(|dp| dp.peers == n as u64 - 1)
                    })
            },
        );
        eprintln!(
            "{n} routers meshed with data planes {:?} after launch",
            started.elapsed()
        );
        mesh
    }

    fn router(&self, host: usize) -> &Router<'t> {
        &self.routers[host - 1]
    }

    /// Host `host`'s router's status.
    fn status(&self, host: usize) -> Status {
        let router = self.router(host);
        router
            .status()
            .unwrap_or_else(|err| panic!("{}: {err}", router.nickname()))
    }

    /// Host `host`'s router's data plane status.
    fn dataplane(&self, host: usize) -> Dataplane {
        let status = self.status(host);
        status
            .dataplane
            .unwrap_or_else(|| panic!("h{host} reports no data plane: {}", status.json))
    }

    /// Polls host `host`'s data plane until `done` holds; returns that status.
    fn wait_for_dataplane(&self, host: usize, what: &str, mut done: impl FnMut(&Dataplane) -> bool) -> Dataplane {
        let mut last = None;
        let waited = wait_until(SETTLE, what, || {
            let dp = self.dataplane(host);
            let ok = done(&dp);
            last = Some(dp);
            ok
        });
        let last = last.expect("polled at least once");
        if let Err(err) = waited {
            panic!("{err}; h{host}'s data plane: {last:#?}");
        }
        last
    }

    /// Waits until every router has a session with every other (pods reach each other at once from then on).
    fn wait_for_sessions(&self) {
        let n = self.routers.len();
        for (i, from) in self.routers.iter().enumerate() {
            for to in self.routers.iter().skip(i + 1) {
                // A ping from host to host through the tunnel starts the handshake.
                let addr = to.status().unwrap().host_address.expect("checked at launch");
                wait_until(
                    SETTLE,
                    &format!("{} to reach {}'s host address", from.nickname(), to.nickname()),
                    || ping(from.host(), addr).is_ok(),
                )
                .unwrap_or_else(|err| panic!("{err}; {:#?}", from.status()));
            }
        }
        let refs: Vec<&Router<'_>> = self.routers.iter().collect();
        wait_for(&refs, SETTLE, "every router to have a session with every other", |s| {
            s.iter()
                .all(|s| s.dataplane.as_ref().is_some_and(|dp| dp.sessions == n as u64 - 1))
        });
    }

    /// Allocates an address on host `host`'s router and plugs pod `suffix` in there with the router's MTU.
    fn plug(&self, host: usize, suffix: &str) -> Pod {
        self.plug_with_mtu(host, suffix, Some(self.dataplane(host).mtu))
    }

    /// [`Mesh::plug`], with the pod's link MTU left at 1500 when `mtu` is `None`.
    fn plug_with_mtu(&self, host: usize, suffix: &str, mtu: Option<u16>) -> Pod {
        self.router(host).add_pod(suffix, mtu)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Traffic.

/// Text that must never be seen on the underlay.
const MARKER: &str = "WEFT-PLAINTEXT-MARKER-5f1c0a39|";

/// Drop reasons that clean traffic between healthy routers must never produce.
const ALARMING_DROPS: [&str; 10] = [
    // The kernel's own IPv6 packets into the TUN device (IPv6 is off there).
    "not_ipv4",
    "auth_failed",
    "replayed",
    "spoofed_source",
    "unknown_session",
    "bad_inner_packet",
    "bad_mac",
    "handshake_failed",
    "unknown_peer",
    "replayed_initiation",
];

/// One ICMP echo of `size` payload bytes with Don't Fragment set (iputils `ping -M do`).
fn df_ping(ns: &impl InNamespace, ip: Ipv4Addr, size: usize) -> Result<String, Error> {
    ns.exec_ok([
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        &size.to_string(),
        &ip.to_string(),
    ])
}

/// `require_iputils_ping!();` skips (or under CI fails) the test unless `ping` is iputils' (`-M do`).
macro_rules! require_iputils_ping {
    () => {
        let version = std::process::Command::new("ping").arg("-V").output();
        if !version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("iputils")) {
            weft_tests::skip_or_fail("`ping` is not iputils' ping (apt package iputils-ping), which has -M do");
            return;
        }
    };
}
use require_iputils_ping;

/// Sends `datagrams` from `ns` to `dest`, one UDP datagram each, from one ephemeral port.
fn send_datagrams(ns: &impl InNamespace, dest: SocketAddr, datagrams: &[Vec<u8>], dir: &TempDir) {
    let file = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    let mut text = String::new();
    for d in datagrams {
        for b in d {
            write!(text, "{b:02x}").expect("writing to a String");
        }
        text.push('\n');
    }
    fs::write(file.path(), text).unwrap();
    let out = ns
        .exec_ok([probe(), "send", &dest.to_string(), path_str(file.path())])
        .unwrap_or_else(|err| panic!("sending {} datagrams to {dest}: {err}", datagrams.len()));
    assert_eq!(out.trim(), format!("sent {}", datagrams.len()));
}

// ---------------------------------------------------------------------------------------------------------------
// Captures.

/// `tcpdump -w FILE` on one interface of a namespace.
struct Capture {
    running: Running,
    file: PathBuf,
}

impl Capture {
    /// Starts the capture and waits until tcpdump listens.
    fn start(ns: &impl InNamespace, interface: &str, file: &Path) -> Self {
        let mut cmd = ns.cmd("tcpdump");
        // -Z root: stay root, to write into the test's private directory. -U: write each packet at once.
        cmd.args([
            "-n",
            "-U",
            "-s",
            "0",
            "-Z",
            "root",
            "-i",
            interface,
            "-w",
            path_str(file),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let process = ns.spawn(&mut cmd).unwrap();
        let stderr = process.take_stderr().expect("stderr is piped");
        let running = Running::read(process, stderr, ns.netns(), "tcpdump");
        running.wait_line(Duration::from_secs(10), |line| line.contains("listening on"));
        Self {
            running,
            file: file.to_owned(),
        }
    }

    /// Waits until the capture file's bytes satisfy `done`.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&[u8]) -> bool) {
        wait_until(SETTLE, what, || fs::read(&self.file).is_ok_and(|bytes| done(&bytes)))
            .unwrap_or_else(|err| panic!("{err}; tcpdump said: {:?}", self.running.lines()));
    }

    /// Sends a datagram in clear from host `from` to host `to` across the capture, and waits until it is in
    /// the file: everything that crossed before it is in there too. Returns its text, which holds `label`.
    fn sentinel(&self, from: &Host, to: &Host, dir: &TempDir, label: &str) -> String {
        let text = format!("weft-capture-sentinel-{label}-{}", self.file.display());
        send_datagrams(
            from,
            SocketAddr::from((to.underlay_ip(), 9)),
            &[text.as_bytes().to_vec()],
            dir,
        );
        self.wait_for("the sentinel in the capture", |bytes| contains(bytes, text.as_bytes()));
        text
    }

    /// Stops tcpdump and returns every frame it captured.
    fn stop(mut self) -> Vec<Frame> {
        self.running.stop().unwrap();
        let bytes = fs::read(&self.file).unwrap();
        pcap::read(&bytes).unwrap_or_else(|err| panic!("{}: {err}", self.file.display()))
    }
}

/// Checks every UDP datagram to or from the data-plane port in `frames`: whole, not a fragment, no larger
/// than the underlay's MTU (once a GSO batch is split), and well-formed by [`wire::parse`]. Returns how many
/// of each type were seen.
fn check_dataplane_datagrams(frames: &[Frame]) -> BTreeMap<&'static str, usize> {
    for (i, frame) in frames.iter().enumerate() {
        if let Some(ip) = frame.ipv4() {
            assert!(
                !ip.is_fragment(),
                "frame {i}: an IPv4 fragment on the underlay ({} -> {}, {} bytes): the tunnel MTU is too large",
                ip.src,
                ip.dst,
                ip.total_len
            );
        }
    }
    let mut counts = BTreeMap::new();
    for d in dataplane_datagrams(frames) {
        assert!(
            d.bytes.len() + 28 <= UNDERLAY_MTU,
            "{d}: a {}-byte datagram exceeds the underlay MTU",
            d.bytes.len()
        );
        let kind = match wire::parse(&d.bytes) {
            Ok(Packet::Initiation(_)) => "initiation",
            Ok(Packet::Response(_)) => "response",
            Ok(Packet::Cookie(_)) => "cookie",
            Ok(Packet::Transport { .. }) => "transport",
            Ok(Packet::Stale { .. }) => "stale",
            Err(err) => panic!(
                "{d}: a datagram on the data-plane port is not one of ours ({err}): {:02x?}",
                &d.bytes[..d.bytes.len().min(64)]
            ),
        };
        *counts.entry(kind).or_insert(0) += 1;
        if d.batched {
            *counts.entry("transport in GSO batches").or_insert(0) += 1;
        }
    }
    counts
}

/// One data-plane datagram seen in a capture.
struct Datagram {
    /// Which frame of the capture carried it.
    frame: usize,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
    /// Whether it was one of several in a UDP GSO batch.
    batched: bool,
}

impl std::fmt::Display for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame {} {} -> {}", self.frame, self.src, self.dst)
    }
}

/// Every UDP datagram to or from the data-plane port in `frames`, in capture order, with GSO batches split.
///
/// # Panics
/// If one was not captured whole, or a packet larger than the underlay MTU is not a batch of transport
/// datagrams.
fn dataplane_datagrams(frames: &[Frame]) -> Vec<Datagram> {
    let mut out = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let Some(ip) = frame.ipv4() else { continue };
        let Some(udp) = ip.udp() else { continue };
        if udp.src_port != DATAPLANE_PORT && udp.dst_port != DATAPLANE_PORT {
            continue;
        }
        let (src, dst) = (
            SocketAddr::from((ip.src, udp.src_port)),
            SocketAddr::from((ip.dst, udp.dst_port)),
        );
        assert!(udp.is_whole(), "frame {i} {src} -> {dst}: not captured whole");
        let segments = if usize::from(ip.total_len) <= UNDERLAY_MTU {
            vec![udp.payload]
        } else {
            split_gso(udp.payload).unwrap_or_else(|| {
                panic!(
                    "frame {i} {src} -> {dst}: a {}-byte packet, larger than the underlay MTU and not a GSO batch \
                     of transport datagrams",
                    ip.total_len
                )
            })
        };
        let batched = segments.len() > 1;
        out.extend(segments.into_iter().map(|bytes| Datagram {
            frame: i,
            src,
            dst,
            bytes: bytes.to_vec(),
            batched,
        }));
    }
    out
}

/// Splits a UDP GSO batch: a router may hand the kernel one buffer of equal-sized datagrams (`UDP_SEGMENT`),
/// which stays one packet across veths and bridges until a device segments it, so a capture there sees the
/// whole batch. The stride is the one at which every segment starts with the first one's transport header
/// (type, reserved bytes, receiver index); `None` if there is none.
fn split_gso(payload: &[u8]) -> Option<Vec<&[u8]>> {
    let head = payload.get(..8)?;
    if head[0] != wire::TYPE_TRANSPORT {
        return None;
    }
    (wire::TRANSPORT_OVERHEAD..=UNDERLAY_MTU - 28)
        .filter(|&stride| stride < payload.len())
        .find_map(|stride| {
            let segments: Vec<&[u8]> = payload.chunks(stride).collect();
            segments
                .iter()
                .all(|seg| seg.len() >= wire::TRANSPORT_OVERHEAD && seg[..8] == *head)
                .then_some(segments)
        })
}

/// One line per data-plane datagram in `frames`: who sent it, its type and its indices and counter.
fn describe_dataplane(frames: &[Frame]) -> String {
    let mut out = String::new();
    for d in dataplane_datagrams(frames) {
        let what = match wire::parse(&d.bytes) {
            Ok(Packet::Initiation(init)) => format!("initiation sender={:08x}", init.sender),
            Ok(Packet::Response(resp)) => format!("response sender={:08x} receiver={:08x}", resp.sender, resp.receiver),
            Ok(Packet::Cookie(c)) => format!("cookie receiver={:08x}", c.receiver),
            Ok(Packet::Transport { receiver, counter }) => {
                format!("transport receiver={receiver:08x} counter={counter}")
            }
            Ok(Packet::Stale { receiver }) => format!("stale receiver={receiver:08x}"),
            Err(err) => format!("malformed ({err})"),
        };
        let batch = if d.batched { " (GSO batch)" } else { "" };
        let _ = writeln!(out, "{d}{batch}: {} bytes, {what}", d.bytes.len());
    }
    out
}

/// The data-plane datagrams from `src` to `dst`'s data-plane port, in capture order.
fn dataplane_payloads(frames: &[Frame], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Vec<u8>> {
    dataplane_datagrams(frames)
        .into_iter()
        .filter(|d| d.src.ip() == src && d.dst == SocketAddr::from((dst, DATAPLANE_PORT)))
        .map(|d| d.bytes)
        .collect()
}

/// The MTU of every host's underlay link (veth defaults).
const UNDERLAY_MTU: usize = 1500;

// ---------------------------------------------------------------------------------------------------------------
// Forged datagrams.

/// A handshake initiation from `from` to the router with identity `to`, made by the router's own session core
/// with the data-plane key of `secret`: what a router with that key and secret would send.
fn forged_initiation(secret: &ClusterSecret, from: &Identity, to: &Identity, endpoint: SocketAddr) -> Vec<u8> {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut sessions = Sessions::new(
        from,
        secret.derive(DATA_PSK_LABEL),
        since_epoch,
        rand::make_rng(),
        Time::ZERO,
    );
    let peer = sessions
        .upsert_peer(Time::ZERO, to.name(), to.public_key(), &[endpoint])
        .unwrap();
    sessions.need_session(Time::ZERO, peer, None);
    let transmit = sessions.poll_transmit().expect("a handshake starts at once");
    assert!(matches!(wire::parse(&transmit.bytes), Ok(Packet::Initiation(_))));
    transmit.bytes
}

/// `len` zero bytes of type `kind` (reserved bytes zero).
fn sized(kind: u8, len: usize) -> Vec<u8> {
    let mut d = vec![0; len];
    if let Some(first) = d.first_mut() {
        *first = kind;
    }
    d
}

/// `d` with byte `at` set to `value`.
fn with_byte(d: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut d = d.to_vec();
    d[at] = value;
    d
}

/// A fixed-seed xorshift64: the same "random" datagrams on every run, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }

    /// `len` random bytes of type `kind`, reserved bytes zero.
    fn typed(&mut self, kind: u8, len: usize) -> Vec<u8> {
        let mut d = self.bytes(len);
        for (i, b) in d.iter_mut().take(4).enumerate() {
            *b = if i == 0 { kind } else { 0 };
        }
        d
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn xorshift_is_fixed() {
    let mut rng = XorShift(1);
    let first = rng.next_u64();
    assert_eq!(XorShift(1).next_u64(), first);
    assert_eq!(rng.typed(4, 8)[..4], [4, 0, 0, 0]);
    assert!(contains(b"abcdef", b"cde") && !contains(b"abc", b"abcd"));
}
