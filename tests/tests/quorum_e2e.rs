//! End-to-end test of ring creation by a quorum (`docs/control-plane.md`, "Ring creation by consensus") with the
//! real `weft` binary on netns hosts: three routers launched with `--init-peer-count 3`, one of them silent:
//! cut off before the others can reach it (alive, which no router can tell from dead), or killed after one of
//! them met it and before it acked anything. The other two create the ring after the quorum's wait and
//! allocate; the silent one creates nothing, and once it is back it adopts the same ring and allocates from it,
//! with no duplicate address.
//!
//! Needs root, like every testbed test, and the binary built by `cargo build -p weft-router --bin weft`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weft_tests::router::{Router, fully_meshed, wait_for, wait_for_rings, workdir, write_secret};
use weft_tests::{testbed_or_skip, wait_until};

const SECRET: &str = "correct horse battery staple";

#[test]
fn a_quorum_creates_the_ring_without_a_silent_member_which_adopts_it_later() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let count = ["--init-peer-count", "3"];

    // h3 is cut off from the start: it never hears of the others, nor they of it.
    tb.cut(3).unwrap();
    let start = Instant::now();
    let h3 = Router::launch_with(tb.host(3), dir.path(), &secret, &[tb.host(1), tb.host(2)], &count);
    let h1 = Router::launch_with(tb.host(1), dir.path(), &secret, &[tb.host(2), tb.host(3)], &count);
    let h2 = Router::launch_with(tb.host(2), dir.path(), &secret, &[tb.host(1), tb.host(3)], &count);
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(30),
        "h1 and h2 to be established",
        fully_meshed,
    );
    // While they wait, the status says for what, and when the quorum goes on (the proposer's; the other
    // says whose proposal it accepted).
    let problems: Vec<Option<String>> = [&h1, &h2].iter().map(|r| r.status().unwrap().ipam.problem).collect();
    eprintln!("h1 and h2 while waiting: {problems:?}");
    if problems.iter().all(Option::is_some) {
        assert!(problems.iter().flatten().any(|p| p.contains("quorum")), "{problems:?}");
    }

    let (quorum, addrs) = ring_of_two(&h1, &h2, start, "after launch, without h3");

    // h3, alone, has made no ring of its own.
    let alone = h3.status().unwrap();
    assert!(
        alone.ipam.owned == 0 && alone.ipam.problem.is_some(),
        "h3 alone: {:#?}",
        alone.json
    );

    tb.restore(3).unwrap();
    let restored = Instant::now();
    third_adopts_and_allocates(
        [&h1, &h2, &h3],
        &quorum,
        addrs,
        restored,
        "after it was reachable again",
    );
}

/// A member that dies before it acks (issue 21: it used to stall ring creation until it came back). h3 meets h1,
/// so h1 knows it by name, and is killed (SIGKILL) while no proposal exists yet (two of three routers known, the
/// quorum's wait not over); then h2 launches. h1 and h2 create the ring by a quorum after the wait, without h3;
/// h3, started again from its own record, adopts that ring and allocates from it, with no duplicate address.
#[test]
fn a_member_killed_before_it_acks_does_not_stall_the_ring_and_adopts_it_when_back() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let count = ["--init-peer-count", "3"];

    let mut h3 = Router::launch_with(tb.host(3), dir.path(), &secret, &[tb.host(1), tb.host(2)], &count);
    let h1 = Router::launch_with(tb.host(1), dir.path(), &secret, &[tb.host(2), tb.host(3)], &count);
    let met = Instant::now();
    wait_for(
        &[&h1, &h3],
        Duration::from_secs(8),
        "h1 and h3 to be established",
        fully_meshed,
    );
    // Before the quorum's wait (10 s after two routers reach each other) runs out, nothing is proposed: no ring.
    let before = h1.status().unwrap();
    assert!(
        before.ipam.owned == 0 && before.ipam.problem.is_some(),
        "h1 has a ring before the third member came: {:#?}",
        before.json
    );
    h3.kill();
    eprintln!("h3 killed {:?} after meeting h1", met.elapsed());

    let start = Instant::now();
    let h2 = Router::launch_with(tb.host(2), dir.path(), &secret, &[tb.host(1), tb.host(3)], &count);
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(30),
        "h1 and h2 to be established",
        fully_meshed,
    );
    let (quorum, addrs) = ring_of_two(&h1, &h2, start, "after h2's launch, h3 dead");

    h3.start();
    let back = Instant::now();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "h3, started again, to be established with h1 and h2",
        fully_meshed,
    );
    third_adopts_and_allocates([&h1, &h2, &h3], &quorum, addrs, back, "after it started again");
}

/// Waits until `a` and `b` hold a ring of the two of them alone, printing how long after `since` (`when`), and
/// allocates one address on each: the ring's owners, and those addresses.
fn ring_of_two(a: &Router<'_>, b: &Router<'_>, since: Instant, when: &str) -> (BTreeSet<String>, Vec<String>) {
    let quorum: BTreeSet<String> = [a, b].iter().map(|r| r.status().unwrap().name).collect();
    wait_for_rings(
        &[a, b],
        Duration::from_secs(40),
        "the two to create the ring without the third",
        |ring| ring.owners == quorum,
    );
    eprintln!("ring of the two {:?} {when}", since.elapsed());
    let addrs = [a, b].iter().map(|r| r.allocate("before")).collect();
    (quorum, addrs)
}

/// The third router, back since `since` (`when`), adopts the ring of `quorum` (equal rings on all three: a ring
/// of another origin is refused, so they would differ; it may own space by now, given to it for its host
/// address) and allocates; one more address on each, and none of them, nor of `addrs`, is handed out twice.
fn third_adopts_and_allocates(
    routers: [&Router<'_>; 3],
    quorum: &BTreeSet<String>,
    mut addrs: Vec<String>,
    since: Instant,
    when: &str,
) {
    wait_for_rings(
        &routers,
        Duration::from_secs(60),
        "the third to adopt the ring of the two",
        |ring| quorum.is_subset(&ring.owners),
    );
    eprintln!("the third adopted the ring {:?} {when}", since.elapsed());
    wait_until(Duration::from_secs(30), "the third to allocate", || {
        routers[2].status().is_ok_and(|s| s.ipam.problem.is_none())
    })
    .unwrap();
    addrs.extend(routers.iter().map(|r| r.allocate("after")));
    let unique: BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(unique.len(), addrs.len(), "duplicate addresses: {addrs:?}");
}
