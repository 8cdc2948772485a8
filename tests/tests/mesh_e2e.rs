//! End-to-end tests of the real `weft` binary: routers in host namespaces form a mesh, keep strangers out, hand out
//! unique pod addresses, recover from a crash and from a partition, and leave the mesh with `weft reset`.
//!
//! Each router runs `weft launch` inside its host's namespace; its status is read from the root namespace with
//! `weft status --json` over its API socket (a unix socket is reachable from any namespace). Needs root, like
//! every testbed test, and the binary built by `cargo build -p weft-router --bin weft` (which
//! `cargo test --workspace` does). When a test fails, every router's log is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use weft_tests::router::{
    Launch, Router, fully_meshed, mesh_of_three, mesh_of_three_with, none_established_with, peer_addr, wait_for,
    wait_for_rings, weft_binary, workdir, write_secret,
};
use weft_tests::{require_program, testbed_or_skip, wait_until};

const SECRET: &str = "correct horse battery staple";
const OTHER_SECRET: &str = "a different cluster entirely";

#[test]
fn three_routers_reach_established() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let start = Instant::now();
    let [h1, h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    eprintln!("meshed {:?} after launch", start.elapsed());
    for router in [&h1, &h2, &h3] {
        let status = router.status().unwrap();
        assert_eq!(status.nickname, router.nickname(), "{status:#?}");
    }
    // With the default --init-peer-count the routers agree on one ring by themselves, and every one allocates.
    let addrs: BTreeSet<String> = [&h1, &h2, &h3].iter().map(|r| r.allocate("first")).collect();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    assert!(
        addrs.iter().all(|a| a.starts_with("10.") && a.ends_with("/12")),
        "{addrs:?}"
    );
}

/// A fourth router with the wrong secret never joins and learns nothing: not a connection, not a router's name,
/// not the address ring. The three good routers list each other, so the default --init-peer-count is 3 and
/// they create the ring by consensus.
#[test]
fn wrong_secret_never_joins() {
    let tb = testbed_or_skip!(4);
    let dir = workdir();
    let good = write_secret(dir.path(), "secret", SECRET);
    let bad = write_secret(dir.path(), "other-secret", OTHER_SECRET);
    let h1 = Router::launch(tb.host(1), dir.path(), &good, &[tb.host(2), tb.host(3)]);
    let h2 = Router::launch(tb.host(2), dir.path(), &good, &[tb.host(1), tb.host(3)]);
    let h3 = Router::launch(tb.host(3), dir.path(), &good, &[tb.host(1), tb.host(2)]);
    let h4 = Router::launch(tb.host(4), dir.path(), &bad, &[tb.host(1), tb.host(2)]);
    let good_routers = [&h1, &h2, &h3];
    let routers = [&h1, &h2, &h3, &h4];

    let start = Instant::now();
    wait_for(
        &good_routers,
        Duration::from_secs(30),
        "h1, h2 and h3 to be established",
        fully_meshed,
    );
    let good_names: BTreeSet<String> = good_routers.iter().map(|r| r.status().unwrap().name).collect();
    wait_for_rings(&good_routers, Duration::from_secs(30), "the consensus ring", |ring| {
        ring.owners == good_names
    });
    eprintln!(
        "meshed, with one ring of three owners, {:?} after launch",
        start.elapsed()
    );
    let addrs: BTreeSet<String> = good_routers.iter().map(|r| r.allocate("x")).collect();
    assert_eq!(addrs.len(), 3, "the good routers got duplicate addresses: {addrs:?}");

    let h4_name = h4.status().unwrap().name;
    assert!(!good_names.contains(&h4_name), "h4 has a good router's name {h4_name}");
    let h1_addr = peer_addr(tb.host(1));
    let window = Duration::from_secs(10);
    let observing = Instant::now();
    let mut refused = false;
    // A check on every poll: h4 must never get in, not merely be out at the end.
    wait_for(
        &routers,
        window + Duration::from_secs(10),
        "the observation window to pass",
        |s| {
            let (good, [s4]) = s.split_at(3) else {
                unreachable!("four routers")
            };
            for (i, status) in good.iter().enumerate() {
                let others: BTreeSet<&str> = good
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, other)| other.name.as_str())
                    .collect();
                let who = good_routers[i].nickname();
                assert_eq!(
                    status.established(),
                    others,
                    "{who} lets in only the other good routers"
                );
                assert_eq!(status.connections_established, 2, "{who}: {status:#?}");
                // Not even as an unconnected router known through gossip.
                assert!(
                    status
                        .peers
                        .iter()
                        .all(|peer| peer.name.as_deref() != Some(h4_name.as_str())
                            && peer.nickname.as_deref() != Some("h4")),
                    "{who} knows of h4: {:#?}",
                    status.peers
                );
                assert_eq!(status.ipam.problem, None, "{who} has an IPAM problem");
                let ring = good_routers[i].ring();
                assert_eq!(ring.owners, good_names, "{who}'s ring has other owners: {ring:#?}");
                assert!(
                    ring.ranges.iter().all(|(_, _, owner)| *owner != h4_name),
                    "{who}'s ring gives h4 a range: {ring:#?}"
                );
            }
            assert!(s4.established().is_empty(), "h4 has the wrong secret but got in");
            assert_eq!(s4.connections_established, 0);
            // It learns nothing: no router's name (let alone topology) reaches it.
            assert!(
                s4.peers.iter().all(|peer| peer.name.is_none()),
                "h4 learned a router's name: {:?}",
                s4.peers
            );
            // Nor the ring: it has none, owns nothing and says why.
            assert_eq!((s4.ipam.owned, s4.ipam.allocated), (0, 0), "h4 owns addresses: {s4:#?}");
            assert!(
                s4.ipam.problem.as_deref().is_some_and(|p| !p.is_empty()),
                "h4 reports no IPAM problem although it can have no ring: {s4:#?}"
            );
            let ring = h4.ring();
            assert!(
                ring.ranges.is_empty() && ring.owners.is_empty(),
                "h4 has a ring: {ring:#?}"
            );
            refused |= s4.peers.iter().any(|peer| {
                peer.address.as_deref() == Some(h1_addr.as_str())
                    && peer
                        .reason
                        .as_deref()
                        .is_some_and(|reason| reason.to_lowercase().contains("authenticat"))
            });
            observing.elapsed() >= window
        },
    );
    assert!(
        refused,
        "h4's status never showed {h1_addr} refused for authentication: {:#?}",
        h4.status()
    );
    // What was handed out before is still held, and by the same routers.
    let again: BTreeSet<String> = good_routers.iter().map(|r| r.allocate("x")).collect();
    assert_eq!(again, addrs, "the good routers' allocations changed");
}

#[test]
fn kill_and_restart_rejoins() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let [h1, mut h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    let name = h2.status().unwrap().name;

    h2.kill();
    let restart = Instant::now();
    h2.start();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "the restarted h2 to be established with both others",
        fully_meshed,
    );
    eprintln!("h2 rejoined {:?} after its restart", restart.elapsed());
    assert_eq!(
        h2.status().unwrap().name,
        name,
        "h2 lost its identity across the restart"
    );
}

#[test]
fn cut_link_then_restore_reconverges() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let [h1, h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    let routers = [&h1, &h2, &h3];
    let h3_name = h3.status().unwrap().name;

    tb.cut(3).unwrap();
    let cut = Instant::now();
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(40),
        "h1 and h2 to drop the cut-off h3",
        |s| {
            let [s1, s2] = s else { unreachable!("two routers") };
            s1.established() == BTreeSet::from([s2.name.as_str()])
                && s2.established() == BTreeSet::from([s1.name.as_str()])
        },
    );
    eprintln!("h3 ({h3_name}) dropped {:?} after the cut", cut.elapsed());

    tb.restore(3).unwrap();
    let restore = Instant::now();
    wait_for(
        &routers,
        Duration::from_secs(90),
        "all three routers to be established again",
        fully_meshed,
    );
    eprintln!("meshed again {:?} after the restore", restore.elapsed());
}

/// Routers on three hosts split the pod range by a seed list and hand out unique addresses; a router killed with
/// SIGKILL keeps what it handed out, and a partition and its heal create no duplicates.
#[test]
fn ipam_addresses_stay_unique_across_crash_and_partition() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let seed = ["--ipalloc-range", "10.44.0.0/22", "--ipalloc-init", "seed=h1,h2,h3"];
    let [h1, mut h2, h3] = mesh_of_three_with(&tb, dir.path(), &secret, &seed);
    let mut seen = BTreeSet::new();
    let mut remember = |addr: String| assert!(seen.insert(addr.clone()), "{addr} handed out twice");
    for (router, n) in [(&h1, 1), (&h2, 2), (&h3, 3)] {
        for i in 0..3 {
            let addr = router.allocate(&format!("ctr-{n}-{i}"));
            assert!(addr.starts_with("10.44.") && addr.ends_with("/22"), "{addr}");
            remember(addr);
        }
    }

    // SIGKILL: what was answered was on disk.
    let kept = h2.allocate("ctr-2-1");
    h2.kill();
    h2.start();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "the restarted h2 to rejoin",
        fully_meshed,
    );
    assert_eq!(h2.allocate("ctr-2-1"), kept, "h2 lost an allocation in the crash");

    // A partition: both sides keep allocating from their own space, and healing merges without duplicates.
    tb.cut(3).unwrap();
    let h3_name = h3.status().unwrap().name;
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(40),
        "h1 and h2 to drop the cut-off h3",
        none_established_with(&h3_name),
    );
    for i in 3..6 {
        remember(h3.allocate(&format!("ctr-3-{i}")));
        remember(h1.allocate(&format!("ctr-1-{i}")));
    }
    tb.restore(3).unwrap();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(90),
        "all three routers to be established again",
        fully_meshed,
    );
    // Every view of the ring converges.
    let mut last = Vec::new();
    let converged = wait_until(Duration::from_secs(30), "the rings to converge", || {
        last = [&h1, &h2, &h3].iter().map(|r| r.ring_ranges()).collect();
        last.iter().all(|r| *r == last[0])
    });
    if let Err(err) = converged {
        panic!("{err}: {last:#?}");
    }
}

/// Whatever `weft ipam allocate` answered before a crash is there after it, and what it did not answer may or
/// may not be: the router writes an allocation to disk before it answers (the write runs off its event loop, and
/// the answer waits for it). The router runs under strace, which makes every `fsync` take 300 ms, so that it is
/// in the middle of a write most of the time; four clients stream allocations, and the router is killed
/// (SIGKILL) in the middle of the stream, three times over. After every restart each answered allocation has the
/// address it was answered with, and no two ids share one. A router that answered before its write was durable
/// loses answered allocations to the first kill.
#[test]
fn allocations_answered_before_a_crash_survive_it() {
    require_program!("strace");
    let tb = testbed_or_skip!(1);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let slow_fsync = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync",
        "-e",
        "inject=fsync:delay_enter=300000",
    ];
    let mut h1 = Launch::new(tb.host(1), dir.path(), &secret)
        .listen(peer_addr(tb.host(1)))
        .under(&slow_fsync)
        .start();
    wait_for(&[&h1], Duration::from_secs(30), "h1 to have the ring", |s| {
        s[0].ipam.problem.is_none()
    });
    let mut answered: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
                let socket = h1.api_socket().to_owned();
                thread::spawn(move || allocate_until(&socket, &format!("r{round}-c{c}"), &stop, &count))
            })
            .collect();
        wait_until(Duration::from_secs(30), "answers to stream in", || {
            count.load(Ordering::Relaxed) >= 8
        })
        .unwrap();
        h1.kill();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            answered.extend(client.join().expect("a client thread"));
        }
        h1.start();
        wait_for(&[&h1], Duration::from_secs(30), "the restarted h1 to answer", |s| {
            s[0].ipam.problem.is_none()
        });
        // What the router has after the restart, before anyone allocates again (allocating a lost id again
        // would likely give it its old address back: the lowest free one).
        let kept: BTreeMap<String, String> = h1.allocations().into_iter().collect();
        for (id, addr) in &answered {
            assert_eq!(
                kept.get(id),
                Some(addr),
                "round {round}: {id} was answered, then lost in the crash"
            );
        }
        let distinct: BTreeSet<&String> = answered.values().collect();
        assert_eq!(distinct.len(), answered.len(), "an address was handed out twice");
    }
    eprintln!(
        "{} allocations answered across three crashes, none lost",
        answered.len()
    );
}

/// Allocates `PREFIX-0`, `PREFIX-1`, ... one after the other through `weft ipam allocate` until `stop`, counting
/// answers in `count`; returns the answered ones (id, address). Failures (the router killed) end nothing.
fn allocate_until(socket: &PathBuf, prefix: &str, stop: &AtomicBool, count: &AtomicUsize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("{prefix}-{i}");
        let out = Command::new(weft_binary())
            .args(["ipam", "allocate", &id, "--api-socket"])
            .arg(socket)
            .stdin(Stdio::null())
            .output()
            .expect("weft runs");
        if out.status.success() {
            got.push((id, String::from_utf8_lossy(&out.stdout).trim().to_owned()));
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    got
}

/// `weft reset` on a router in the mesh: it hands its ranges to an heir, deletes its state and stops by itself;
/// the others take its ranges without `rmpeer`, agree on the ring and keep their own allocations.
#[test]
fn reset_hands_ranges_over_and_removes_state() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let [h1, h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    let kept: Vec<String> = [&h1, &h2, &h3].iter().map(|r| r.allocate("before-reset")).collect();
    assert_eq!(kept.iter().collect::<BTreeSet<_>>().len(), 3, "{kept:?}");
    let names: Vec<String> = [&h1, &h2, &h3].iter().map(|r| r.status().unwrap().name).collect();
    let h3_name = names[2].clone();
    // h3 allocated, so it owns space, and every view of the ring says so.
    wait_for_rings(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "h3's space to be known",
        |ring| ring.owns(&h3_name),
    );
    let h3_ranges: Vec<(String, String)> = h1
        .ring()
        .ranges
        .into_iter()
        .filter(|(_, _, owner)| *owner == h3_name)
        .map(|(first, last, _)| (first, last))
        .collect();
    let h3_data = dir.path().join("h3");
    for file in ["ipam", "identity"] {
        assert!(h3_data.join(file).is_file(), "h3 has no {file} file before the reset");
    }

    let reset = Instant::now();
    let out = h3.cli(&["reset"]);
    eprintln!("weft reset answered {:?} after it started", reset.elapsed());
    assert!(
        out.status.success(),
        "weft reset on h3 ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "weft reset prints nothing: {out:?}");
    let exit = h3.wait_exit(Duration::from_secs(15));
    eprintln!("h3 exited ({exit}) {:?} after the reset started", reset.elapsed());
    assert!(exit.success(), "h3 exited with {exit} after its reset");
    for file in ["ipam", "identity"] {
        assert!(
            !h3_data.join(file).exists(),
            "h3's {file} file is still there after the reset"
        );
    }

    // The heir takes h3's ranges once h1 and h2 have both voted: no `rmpeer` needed.
    let survivors = BTreeSet::from([names[0].clone(), names[1].clone()]);
    wait_for_rings(
        &[&h1, &h2],
        Duration::from_secs(30),
        "h3's ranges to go to its heir",
        |ring| !ring.owns(&h3_name) && ring.owners == survivors,
    );
    eprintln!(
        "h1 and h2 showed h3's ranges handed over {:?} after the reset started (polled once h3 had exited)",
        reset.elapsed()
    );
    // The reclaim is recorded as done, and its heir, a survivor, holds all that h3 held.
    let ring = h1.ring();
    let heirs: Vec<&Option<String>> = ring
        .reclaims
        .iter()
        .filter(|(name, state, _, _)| *name == h3_name && state == "done")
        .map(|(_, _, heir, _)| heir)
        .collect();
    let [Some(heir)] = heirs[..] else {
        panic!("h1's ring has no one finished reclaim of h3: {ring:#?}");
    };
    assert!(survivors.contains(heir), "h3's heir {heir} is not h1 or h2");
    for (first, last) in &h3_ranges {
        assert_eq!(
            ring.owners_within(first, last),
            BTreeSet::from([heir.as_str()]),
            "{first}-{last}, once h3's, is not all its heir's: {ring:#?}"
        );
    }
    // Allocation is idempotent per ID: the same address again means it was kept.
    assert_eq!(h1.allocate("before-reset"), kept[0], "h1 lost its allocation");
    assert_eq!(h2.allocate("before-reset"), kept[1], "h2 lost its allocation");
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(5),
        "h1 and h2 to stay established",
        fully_meshed,
    );
}

/// `weft rmpeer h3` on h1 while h3 is only cut off (a real partition: its link is down), not dead. Both sides
/// allocate during the cut, h3 before and after the rmpeer (it cannot know). The heir (h1) takes h3's ranges but
/// holds them: it hands none of h3's pods' addresses out. After the heal h3 hears of its removal, stops and
/// surrenders its free space; the rings agree within 5 s of the routers meeting again; every allocation and
/// release on h3 answers `removed` with what to do; no address was handed out twice; and h1 may now use what h3
/// left free, but still none of h3's pods' addresses.
#[test]
fn forced_rmpeer_of_a_live_router_across_a_partition() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let seed = ["--ipalloc-range", "10.45.0.0/22", "--ipalloc-init", "seed=h1,h2,h3"];
    let [h1, h2, h3] = mesh_of_three_with(&tb, dir.path(), &secret, &seed);
    // Every answered allocation, as (router, id, address): each is a pod using that address.
    let mut answered: Vec<(String, String, String)> = Vec::new();
    let allocate = |router: &Router<'_>, id: String, answered: &mut Vec<(String, String, String)>| {
        let addr = router.allocate(&id);
        answered.push((router.nickname().to_owned(), id, addr));
    };
    for (router, n) in [(&h1, 1), (&h2, 2), (&h3, 3)] {
        for i in 0..2 {
            allocate(router, format!("pod-{n}-{i}"), &mut answered);
        }
    }
    let h3_name = h3.status().unwrap().name;

    tb.cut(3).unwrap();
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(40),
        "h1 and h2 to drop the cut-off h3",
        none_established_with(&h3_name),
    );
    allocate(&h3, "pod-3-2".into(), &mut answered);

    // rmpeer starts once no router reports a connection to h3 any more.
    let mut last = None;
    wait_until(Duration::from_secs(30), "weft rmpeer h3 to be accepted", || {
        let out = h1.cli(&["rmpeer", "h3"]);
        let ok = out.status.success();
        last = Some(out);
        ok
    })
    .unwrap_or_else(|err| panic!("{err}: {last:?}"));
    let out = last.expect("rmpeer ran");
    let line = String::from_utf8_lossy(&out.stdout);
    eprintln!("weft rmpeer h3: {line}");
    assert!(
        line.contains("held") && line.contains("rmpeer --gone"),
        "rmpeer says what is held and how to free it: {line}"
    );
    // h3 is not a voter on its own removal: h1 and h2 complete it during the cut.
    wait_until(Duration::from_secs(20), "h1 to take h3's ranges", || {
        h1.ring()
            .reclaims
            .iter()
            .any(|(name, state, _, _)| *name == h3_name && state == "done")
    })
    .unwrap();
    allocate(&h3, "pod-3-3".into(), &mut answered);
    for i in 2..4 {
        allocate(&h1, format!("pod-1-{i}"), &mut answered);
        allocate(&h2, format!("pod-2-{i}"), &mut answered);
    }
    // The heir holds h3's pods' addresses: asking for one is refused.
    let h3_pods: Vec<String> = answered
        .iter()
        .filter(|(r, _, _)| *r == "h3")
        .map(|(_, _, a)| a.clone())
        .collect();
    for addr in &h3_pods {
        let out = h1.cli(&["ipam", "allocate", "probe", "--ip", bare(addr)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("held"),
            "h1 gave out h3's {addr}: {out:?}"
        );
    }

    tb.restore(3).unwrap();
    let restored = Instant::now();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(90),
        "all three routers to be established again",
        fully_meshed,
    );
    let met = Instant::now();
    eprintln!("established again {:?} after the restore", met.duration_since(restored));
    let mut views = Vec::new();
    let agreed = wait_until(Duration::from_secs(5), "the rings to agree, with h3 stopped", || {
        views = [&h1, &h2, &h3].iter().map(|r| ring_state(r)).collect();
        views.iter().all(|v| *v == views[0]) && views[0].1.iter().any(|(n, _, _, stopped)| *n == h3_name && *stopped)
    });
    if let Err(err) = agreed {
        panic!("{err}: {views:#?}");
    }
    eprintln!(
        "rings equal {:?} after the routers met again ({:?} after the restore)",
        met.elapsed(),
        restored.elapsed()
    );

    // Every API call on h3 answers `removed`, saying what to do.
    for args in [
        &["ipam", "allocate", "pod-3-9"][..],
        &["ipam", "allocate", "pod-3-0"][..],
        &["ipam", "release", "pod-3-0"][..],
    ] {
        let out = h3.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("removed") && err.contains("weft reset"),
            "weft {args:?} on the removed h3: {out:?}"
        );
    }
    let problem = h3.status().unwrap().ipam.problem;
    assert!(problem.as_deref().is_some_and(|p| p.contains("removed")), "{problem:?}");

    // h1 uses what h3 left free, never its pods' addresses; nothing was handed out twice.
    let freed = h1.cli(&["ipam", "allocate", "after-heal", "--ip", "10.45.3.254"]);
    assert!(freed.status.success(), "h1 cannot use what h3 surrendered: {freed:?}");
    answered.push((
        "h1".into(),
        "after-heal".into(),
        String::from_utf8_lossy(&freed.stdout).trim().to_owned(),
    ));
    for addr in &h3_pods {
        let out = h1.cli(&["ipam", "allocate", "probe", "--ip", bare(addr)]);
        assert!(!out.status.success(), "h1 gave out h3's {addr} after the heal: {out:?}");
    }
    for i in 4..8 {
        allocate(&h1, format!("pod-1-{i}"), &mut answered);
        allocate(&h2, format!("pod-2-{i}"), &mut answered);
    }
    let mut seen = BTreeMap::new();
    for (router, id, addr) in &answered {
        if let Some(first) = seen.insert(addr.clone(), (router, id)) {
            panic!("{addr} handed out twice: {first:?} and ({router}, {id})");
        }
    }
    eprintln!("{} allocations, no duplicate", answered.len());

    // `weft reset` on the removed h3: its pods are gone, and h1 may now hand out their addresses.
    h3.cli_ok(&["reset"]);
    let exit = h3.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "h3 exited with {exit} after its reset");
    let pod = bare(&h3_pods[0]).to_owned();
    let mut last = None;
    wait_until(
        Duration::from_secs(10),
        "h1 to use h3's pod address after h3's reset",
        || {
            let out = h1.cli(&["ipam", "allocate", "after-reset", "--ip", &pod]);
            let ok = out.status.success();
            last = Some(out);
            ok
        },
    )
    .unwrap_or_else(|err| panic!("{err}: {last:?}"));
}

/// An address without its prefix length (`10.45.0.1/22` -> `10.45.0.1`).
fn bare(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// What must agree on every router: each range's owner, and each reclaim's state, heir and whether the removed
/// router stopped (from `weft ipam --json`).
fn ring_state(router: &Router<'_>) -> RingState {
    let ring = router.ring();
    (ring.ranges, ring.reclaims)
}

/// [`ring_state`]'s ranges (first, last, owner) and reclaims (removed router, state, heir, stopped).
type RingState = (
    Vec<(String, String, String)>,
    Vec<(String, String, Option<String>, bool)>,
);
