//! End-to-end tests of how routers find each other, with the real `weft` binary: routers launched as users
//! launch them, `weft launch [PEER...]` without `--listen`, each naming a single router, mesh with every router,
//! in the control plane and in the data plane. A chain of five (which outlives its first router and takes in a
//! sixth), twenty naming the first, three on two underlay networks of which only one joins each pair, and a
//! newcomer that gets addresses while the router with the most free space is dead.
//!
//! What a router knows of its data-plane session with each other router is read from `weft status --json`,
//! `peers[].data` ([`PeerData`](weft_tests::router::PeerData)): `state` is `up` once it has keys to send with,
//! and `endpoint` is the other router's data-plane address in use. Pods are plugged in as the CNI plugin does
//! ([`Router::add_pod`]) and reached by ICMP (busybox `ping`) and TCP (`weft-probe`).
//!
//! Needs root, busybox and nft (`tests/run.sh` installs them), and the `weft` binary
//! (`cargo build -p weft-router --bin weft`). When a test fails, every router's log is printed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use weft_tests::router::{DATAPLANE_PORT, Launch, Router, Status, wait_for, workdir, write_secret};
use weft_tests::traffic::{Running, echo_servers, ping, tcp_addr, tcp_ask};
use weft_tests::{Error, Host, Pod, require_program, testbed_or_skip, wait_until};

const SECRET: &str = "correct horse battery staple";
/// How long a state the routers should reach within seconds may take on a loaded CI machine.
const SETTLE: Duration = Duration::from_secs(60);

/// h1 names no peer, h2 names h1, h3 names h2, h4 names h3 and h5 names h4: every pod reaches every pod on every
/// other host (ICMP and TCP, all 20 ordered pairs), and every router has a data-plane session up with every
/// other at its underlay address. Then h1 dies for good (SIGKILL): the four others keep reaching each other,
/// and h6, naming only h5, gets sessions with all four, an address from a live router's space (h1 still owns
/// part of the ring and cannot give any), and its pod reaches theirs and back.
#[test]
fn a_chain_of_five_meshes_fully_and_survives_the_first_router() {
    require_program!("busybox");
    let tb = testbed_or_skip!(6);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);

    let first_launch = Instant::now();
    let mut routers: Vec<Router<'_>> = Vec::new();
    for h in 1..=5 {
        let mut launch = Launch::new(tb.host(h), dir.path(), &secret);
        if h > 1 {
            launch = launch.peer(tb.host(h - 1).underlay_ip().to_string());
        }
        routers.push(launch.start());
        // The next router names this one only once it has the ring: two routers that meet before either has
        // heard of h1's ring would make one of their own by consensus (--init-peer-count 2), and refuse h1's.
        wait_for_ring(&routers[h - 1]);
    }
    let last_launch = Instant::now();
    let (pods, _servers) = plug_all(&routers);
    let placed = place(&routers, &pods);

    wait_for_reachability(&placed, "every pod to reach every pod on the other hosts");
    eprintln!(
        "all 20 ordered pod pairs reached each other (ICMP and TCP) {:?} after the first launch, {:?} after the last",
        first_launch.elapsed(),
        last_launch.elapsed()
    );
    let all: Vec<&Router<'_>> = routers.iter().collect();
    let statuses = wait_for_data_plane(&all, "every router to have a session up with every other", |s| {
        let mut problems = data_problems(&all, s, at_underlay_address);
        problems.extend(row_problems(s));
        problems
    });
    let names: Vec<String> = statuses.into_iter().map(|s| s.name).collect();

    routers[0].kill();
    let killed = Instant::now();
    let survivors: Vec<&Router<'_>> = routers[1..].iter().collect();
    let placed = place(&routers[1..], &pods[1..]);
    wait_for_reachability(&placed, "the pods of h2 to h5 to reach each other without h1");
    wait_for_data_plane(&survivors, "h2 to h5 to keep their sessions without h1", |s| {
        data_problems(&survivors, s, at_underlay_address)
    });
    eprintln!("h2 to h5 still meshed {:?} after h1 was killed", killed.elapsed());

    let h6 = Launch::new(tb.host(6), dir.path(), &secret)
        .peer(tb.host(5).underlay_ip().to_string())
        .start();
    let joined = Instant::now();
    let mut live: Vec<&Router<'_>> = survivors.clone();
    live.push(&h6);
    wait_for_data_plane(&live, "h6 and h2 to h5 to have sessions up with each other", |s| {
        data_problems(&live, s, at_underlay_address)
    });
    eprintln!("h6 has sessions with h2 to h5 {:?} after its launch", joined.elapsed());
    let pod6 = plug(&h6);
    let _servers6 = echo_servers(&pod6);
    let h6_name = h6.status().unwrap().name;
    let ring = h6.ring();
    assert!(
        ring.owns(&names[0]),
        "h1 owns no part of the ring, so h6 could not have asked it for space and this test proves less \
         than it means to: {ring:#?}"
    );
    assert_eq!(
        ring.owner_of(pod6.ip()),
        Some(h6_name.as_str()),
        "h6's pod address {} is not from space h6 owns: {ring:#?}",
        pod6.ip()
    );
    let six: Placed<'_> = (h6.nickname(), &pod6);
    let pairs: Vec<(Placed<'_>, Placed<'_>)> = placed.iter().flat_map(|&other| [(other, six), (six, other)]).collect();
    wait_for_pairs(&pairs, "h6's pod and the pods of h2 to h5 to reach each other");
    eprintln!(
        "h6's pod reaches h2 to h5 and back {:?} after h6's launch",
        joined.elapsed()
    );
}

/// Twenty routers, h2 to h20 each naming only h1 (which names no one): every router holds at least
/// min(8, 19) established control connections, and every pair of routers has a data-plane session up both
/// ways, at their underlay addresses.
#[test]
fn twenty_routers_naming_the_first_mesh_with_every_pair() {
    const ROUTERS: usize = 20;
    let tb = testbed_or_skip!(ROUTERS);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let launched = Instant::now();
    let routers: Vec<Router<'_>> = (1..=ROUTERS)
        .map(|h| {
            let launch = Launch::new(tb.host(h), dir.path(), &secret);
            if h == 1 {
                launch.start()
            } else {
                launch.peer(tb.host(1).underlay_ip().to_string()).start()
            }
        })
        .collect();
    let all: Vec<&Router<'_>> = routers.iter().collect();
    let connections = MIN_CONNECTIONS.min(ROUTERS as u64 - 1);
    wait_for_data_plane(
        &all,
        "every router to hold enough connections and a session up with every other",
        |s| {
            let mut problems: Vec<(usize, String)> = s
                .iter()
                .enumerate()
                .filter(|(_, s)| s.connections_established < connections)
                .map(|(i, s)| {
                    let held = s.connections_established;
                    (
                        i,
                        format!("holds {held} established connections, fewer than {connections}"),
                    )
                })
                .collect();
            problems.extend(row_problems(s));
            problems.extend(data_problems(&all, s, at_underlay_address));
            problems
        },
    );
    eprintln!(
        "{ROUTERS} routers meshed, each with >= {connections} connections and {} sessions up, {:?} after launch",
        ROUTERS - 1,
        launched.elapsed()
    );
}

/// Three hosts on two underlay networks, 10.99.0.0/24 (eth0) and 10.98.0.0/24 (eth1), where a firewall leaves
/// one network to each pair: h1 and h2 meet on 10.99 only, h1 and h3 and h2 and h3 on 10.98 only. h1 names no
/// peer, h2 names h1's 10.99 address and h3 h1's 10.98 address. Every pair ends up with sessions up both ways,
/// each at the other's address on the network that works for the pair, and their pods reach each other.
#[test]
fn routers_with_two_networks_find_the_address_that_works() {
    require_program!("busybox");
    require_program!("nft");
    let mut tb = testbed_or_skip!(3);
    let second = tb.add_network(SECOND_NETWORK.parse().unwrap()).unwrap();
    let first = tb.networks()[0].clone();
    for (a, b, network) in [(1, 3, &first), (2, 3, &first), (1, 2, &second)] {
        tb.sever(a, b, network).unwrap();
    }
    // The one network that works for two hosts.
    let works = |a: &Host, b: &Host| {
        if a.index().min(b.index()) == 1 && a.index().max(b.index()) == 2 {
            &first
        } else {
            &second
        }
    };
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let (h1, h2, h3) = (tb.host(1), tb.host(2), tb.host(3));
    let launched = Instant::now();
    let routers = [
        Launch::new(h1, dir.path(), &secret).start(),
        Launch::new(h2, dir.path(), &secret)
            .peer(first.ip(h1).to_string())
            .start(),
        Launch::new(h3, dir.path(), &secret)
            .peer(second.ip(h1).to_string())
            .start(),
    ];
    let (pods, _servers) = plug_all(&routers);
    let placed = place(&routers, &pods);

    wait_for_reachability(&placed, "the pods of every pair of hosts to reach each other");
    eprintln!(
        "the pods of all three pairs reached each other {:?} after launch",
        launched.elapsed()
    );
    let all: Vec<&Router<'_>> = routers.iter().collect();
    wait_for_data_plane(
        &all,
        "every pair to have sessions up on the network that works for it",
        |s| {
            let mut problems = data_problems(&all, s, |from, to| {
                SocketAddr::from((works(from, to).ip(to), DATAPLANE_PORT))
            });
            problems.extend(row_problems(s));
            problems
        },
    );
    eprintln!(
        "every session up at the address that works {:?} after launch",
        launched.elapsed()
    );
}

/// The router with the most free space dies, still owning its ranges (nobody ran `weft rmpeer`): a newcomer
/// that names the survivor gets its addresses from the survivor, the one router it can reach, instead of
/// waiting on the dead one that the ring alone would choose as the donor; and its pod reaches the survivor's.
#[test]
fn a_newcomer_gets_addresses_while_the_richest_router_is_dead() {
    require_program!("busybox");
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let mut routers: Vec<Router<'_>> = Vec::new();
    for h in 1..=2 {
        let mut launch = Launch::new(tb.host(h), dir.path(), &secret);
        if h > 1 {
            launch = launch.peer(tb.host(1).underlay_ip().to_string());
        }
        routers.push(launch.start());
    }
    // h2 has space of its own (a donation from h1) once it owns more than nothing.
    let statuses = wait_for(&[&routers[0], &routers[1]], SETTLE, "h2 to own space", |s| {
        s.iter().all(|s| s.ipam.problem.is_none() && s.ipam.owned > 0)
    });
    let names: Vec<String> = statuses.iter().map(|s| s.name.clone()).collect();
    // The one the ring would choose as the donor dies: the most free space as advertised, the lower name on a
    // tie (`Replica::choose_donor`; names are fixed-width hex, so they sort as the numbers do).
    let richest = |view: &BTreeMap<String, u64>| {
        (0..2)
            .max_by_key(|&i| (view[&names[i]], std::cmp::Reverse(names[i].as_str())))
            .expect("two routers")
    };
    let victim = richest(&free_by_owner(&routers[0]));
    let survivor = 1 - victim;
    routers[victim].kill();
    let inherited = free_by_owner(&routers[survivor]);
    assert_eq!(
        richest(&inherited),
        victim,
        "in {}'s view the ring alone would not choose the dead router as the donor, and this test would prove less \
         than it means to: {inherited:?}",
        routers[survivor].nickname()
    );

    let newcomer = Launch::new(tb.host(3), dir.path(), &secret)
        .peer(tb.host(survivor + 1).underlay_ip().to_string())
        .start();
    let joined = Instant::now();
    let pod = plug(&newcomer);
    eprintln!(
        "the newcomer had an address for its pod {:?} after its launch, with the richest router dead",
        joined.elapsed()
    );
    let new_name = newcomer.status().unwrap().name;
    let ring = newcomer.ring();
    assert_eq!(ring.owner_of(pod.ip()), Some(new_name.as_str()), "{ring:#?}");
    assert!(
        ring.owns(&names[victim]),
        "the dead router still owns its ranges: {ring:#?}"
    );
    let _servers: Vec<Running> = [&pod].into_iter().flat_map(echo_servers).collect();
    let other = plug(&routers[survivor]);
    let _other_servers = echo_servers(&other);
    let (a, b): (Placed<'_>, Placed<'_>) = ((newcomer.nickname(), &pod), (routers[survivor].nickname(), &other));
    wait_for_pairs(
        &[(a, b), (b, a)],
        "the newcomer's pod and the survivor's to reach each other",
    );
}

/// Free addresses per owner (peer name), as `weft ipam --json` on `router` shows them.
fn free_by_owner(router: &Router<'_>) -> BTreeMap<String, u64> {
    let out = router.cli(&["ipam", "--json"]);
    assert!(
        out.status.success(),
        "weft ipam --json on {}: {out:?}",
        router.nickname()
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["owners"]
        .as_array()
        .unwrap_or_else(|| panic!("no owners in {json}"))
        .iter()
        .map(|o| {
            let name = o["name"].as_str().expect("an owner's name").to_owned();
            (name, o["free"].as_u64().expect("an owner's free count"))
        })
        .collect()
}

/// A pod and the nickname of its host's router.
type Placed<'a> = (&'a str, &'a Pod);

/// Waits until the router has a ring (its status names no IPAM problem), and returns that status.
fn wait_for_ring(router: &Router<'_>) -> Status {
    let mut held = wait_for(
        &[router],
        SETTLE,
        &format!("{} to have the ring", router.nickname()),
        |s| s[0].ipam.problem.is_none(),
    );
    held.pop().expect("one status per router")
}

/// Plugs a pod into each router's host ([`plug`]), with its echo servers.
fn plug_all(routers: &[Router<'_>]) -> (Vec<Pod>, Vec<Running>) {
    let pods: Vec<Pod> = routers.iter().map(plug).collect();
    let servers = pods.iter().flat_map(echo_servers).collect();
    (pods, servers)
}

/// Each router's pod, with the router's nickname.
fn place<'a>(routers: &'a [Router<'_>], pods: &'a [Pod]) -> Vec<Placed<'a>> {
    routers.iter().zip(pods).map(|(r, p)| (r.nickname(), p)).collect()
}

/// Plugs pod `a` into the router's host, with the router's data-plane MTU, once the router has the ring.
fn plug(router: &Router<'_>) -> Pod {
    let status = wait_for_ring(router);
    let mtu = status
        .dataplane
        .as_ref()
        .unwrap_or_else(|| panic!("{} reports no data plane: {}", router.nickname(), status.json))
        .mtu;
    router.add_pod("a", Some(mtu))
}

/// Waits until every pod in `pods` reaches every other (one per host) by ICMP and TCP; see [`wait_for_pairs`].
fn wait_for_reachability(pods: &[Placed<'_>], what: &str) {
    let pairs: Vec<(Placed<'_>, Placed<'_>)> = pods
        .iter()
        .flat_map(|&from| pods.iter().map(move |&to| (from, to)))
        .filter(|(from, to)| from.0 != to.0)
        .collect();
    wait_for_pairs(&pairs, what);
}

/// Polls the pairs (from, to) that do not work yet, all at once, until each has worked (a ping and a TCP echo
/// from `from`'s pod to `to`'s), then checks once more that all of them work.
///
/// # Panics
/// After [`SETTLE`], with why each pair still failed; or if a pair fails the last check.
fn wait_for_pairs(pairs: &[(Placed<'_>, Placed<'_>)], what: &str) {
    let mut failing: Vec<(Placed<'_>, Placed<'_>)> = pairs.to_vec();
    let mut why = Vec::new();
    let waited = wait_until(SETTLE, what, || {
        let results = check_pairs(&failing, "2000");
        why = results.iter().filter_map(|r| r.clone().err()).collect();
        failing = failing
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_err())
            .map(|(&pair, _)| pair)
            .collect();
        failing.is_empty()
    });
    if let Err(err) = waited {
        panic!(
            "{err}: {} of {} pairs never worked:\n  {}",
            why.len(),
            pairs.len(),
            why.join("\n  ")
        );
    }
    let again: Vec<String> = check_pairs(pairs, "5000").into_iter().filter_map(Result::err).collect();
    assert!(
        again.is_empty(),
        "every pair worked once, but then these failed:\n  {}",
        again.join("\n  ")
    );
}

/// Checks each pair in a thread of its own: a ping, then a TCP echo within `tcp_timeout_ms`.
fn check_pairs(pairs: &[(Placed<'_>, Placed<'_>)], tcp_timeout_ms: &str) -> Vec<Result<(), String>> {
    thread::scope(|scope| {
        let checks: Vec<_> = pairs
            .iter()
            .map(|&((from_host, from), (to_host, to))| {
                scope.spawn(move || {
                    let what = format!("{} ({from_host}) -> {} ({to_host})", from.ip(), to.ip());
                    ping(from, to.ip()).map_err(|err| format!("ping {what}: {}", brief(&err)))?;
                    tcp_ask(
                        from,
                        tcp_addr(to),
                        &format!("tcp {what}"),
                        &["--timeout-ms", tcp_timeout_ms],
                    )
                    .map_err(|err| format!("TCP {what}: {}", brief(&err)))?;
                    Ok(())
                })
            })
            .collect();
        checks
            .into_iter()
            .map(|check| check.join().expect("a pair check panicked"))
            .collect()
    })
}

/// The gist of a failed ping or ask: what it wrote to stderr, or else its last line (ping's statistics).
fn brief(err: &Error) -> String {
    match err {
        Error::Failed { stderr, stdout, .. } if !stderr.is_empty() || !stdout.is_empty() => {
            let said = if stderr.is_empty() { stdout } else { stderr };
            said.lines().last().unwrap_or_default().to_owned()
        }
        other => other.to_string(),
    }
}

/// Polls every router's status until `problems` finds none, and returns the statuses of that poll. A problem is
/// the index of the router it is about and what is wrong.
///
/// # Panics
/// After [`SETTLE`], with the last poll's problems and the status of the first router that had one.
fn wait_for_data_plane(
    routers: &[&Router<'_>],
    what: &str,
    mut problems: impl FnMut(&[Status]) -> Vec<(usize, String)>,
) -> Vec<Status> {
    let mut last = Vec::new();
    let mut held = Vec::new();
    let mut statuses: Vec<Result<Status, String>> = Vec::new();
    let started = Instant::now();
    let waited = wait_until(SETTLE, what, || {
        statuses = routers.iter().map(|router| router.status()).collect();
        last = match statuses.iter().cloned().collect::<Result<Vec<Status>, String>>() {
            Ok(all) => {
                let found = problems(&all);
                if found.is_empty() {
                    held = all;
                }
                found
            }
            Err(_) => statuses
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().err().map(|err| (i, err.clone())))
                .collect(),
        };
        last.is_empty()
    });
    if let Err(err) = waited {
        let first = last.first().map_or(0, |&(i, _)| i);
        let listed: Vec<String> = last
            .iter()
            .map(|(i, problem)| format!("{}: {problem}", routers[*i].nickname()))
            .collect();
        panic!(
            "{err}; {} problems at the last poll:\n  {}\nthe last status of {}: {:#}",
            listed.len(),
            listed.join("\n  "),
            routers[first].nickname(),
            statuses[first]
                .as_ref()
                .map_or_else(|e| e.clone().into(), |s| s.json.clone())
        );
    }
    eprintln!("{what}: held {:?} after the first poll", started.elapsed());
    held
}

/// Where a router reaches another's data plane when their hosts share one network: at the other host's
/// underlay address.
fn at_underlay_address(_: &Host, to: &Host) -> SocketAddr {
    SocketAddr::from((to.underlay_ip(), DATAPLANE_PORT))
}

/// What keeps each of `routers` (by its index; `statuses` are theirs, in order) from having a session up with
/// every other one, at `endpoint(its host, the other's host)`: one problem per router, naming each router it
/// lacks a good session with and what it has instead.
fn data_problems(
    routers: &[&Router<'_>],
    statuses: &[Status],
    endpoint: impl Fn(&Host, &Host) -> SocketAddr,
) -> Vec<(usize, String)> {
    statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let wrong: Vec<String> = statuses
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(j, other)| {
                    let (them, want) = (&other.nickname, endpoint(routers[i].host(), routers[j].host()));
                    match s.peer(&other.name).map(|peer| peer.data.as_ref()) {
                        None => Some(format!("{them} (no row)")),
                        Some(None) => Some(format!("{them} (no peers[].data)")),
                        Some(Some(data)) if data.state == "up" && data.endpoint == Some(want) => None,
                        Some(Some(data)) => Some(format!(
                            "{them} ({} at {}, not up at {want})",
                            data.state,
                            data.endpoint
                                .map_or_else(|| "no endpoint".to_owned(), |e| e.to_string())
                        )),
                    }
                })
                .collect();
            (!wrong.is_empty()).then(|| (i, format!("no data-plane session up with {}", wrong.join(", "))))
        })
        .collect()
}

/// Each router has one row per other router, by name, and no other row: a PEER address it was given shows as
/// the row of the router there once that is known.
fn row_problems(statuses: &[Status]) -> Vec<(usize, String)> {
    statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let mut rows: BTreeMap<Option<&str>, usize> = BTreeMap::new();
            for peer in &s.peers {
                *rows.entry(peer.name.as_deref()).or_default() += 1;
            }
            let others: BTreeMap<Option<&str>, usize> = statuses
                .iter()
                .filter(|other| other.name != s.name)
                .map(|other| (Some(other.name.as_str()), 1))
                .collect();
            (rows != others).then(|| {
                let addresses: Vec<String> = s
                    .peers
                    .iter()
                    .map(|p| format!("{} {:?}", p.nickname.as_deref().unwrap_or("(unnamed)"), p.address))
                    .collect();
                (i, format!("has rows {addresses:?}, not one per other router"))
            })
        })
        .collect()
}

/// How many established control connections each router should hold at least (or all others, if fewer).
const MIN_CONNECTIONS: u64 = 8;

/// The second underlay network of the two-network test.
const SECOND_NETWORK: &str = "10.98.0.0/24";
