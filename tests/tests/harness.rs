//! The harness's own tests: they build real namespaces, so they need root (and skip without it, outside CI).

use std::os::unix::process::ExitStatusExt as _;
use std::panic;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_tests::{
    Error, Host, InNamespace as _, Network, netns_names, netns_unavailable, require_program, skip_or_fail, sweep,
    testbed_or_skip, wait_until,
};

#[test]
fn hosts_reach_each_other_over_the_underlay() {
    require_program!("busybox");
    let testbed = testbed_or_skip!(2);
    let (one, two) = (testbed.host(1), testbed.host(2));
    assert_eq!(one.underlay_ip().to_string(), "10.99.0.1");
    assert_eq!(two.underlay_ip().to_string(), "10.99.0.2");
    wait_until(SETTLE, "host 1 to reach host 2", || {
        pings(one, &two.underlay_ip().to_string())
    })
    .unwrap();
    ping(two, &one.underlay_ip().to_string()).unwrap();
}

#[test]
fn cut_partitions_a_host_and_restore_heals_it() {
    require_program!("busybox");
    let testbed = testbed_or_skip!(2);
    let (one, two) = (testbed.host(1), testbed.host(2));
    let two_ip = two.underlay_ip().to_string();
    wait_until(SETTLE, "host 1 to reach host 2", || pings(one, &two_ip)).unwrap();

    testbed.cut(2).unwrap();
    wait_until(SETTLE, "host 2 to become unreachable after cut(2)", || {
        !pings(one, &two_ip)
    })
    .unwrap();
    let err = ping(one, &two_ip).unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err}");
    // A pulled cable: host 2 keeps its address.
    let addrs = two.exec_ok(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addrs.contains("10.99.0.2/24"), "{addrs}");

    testbed.restore(2).unwrap();
    wait_until(SETTLE, "host 2 to be reachable again after restore(2)", || {
        pings(one, &two_ip)
    })
    .unwrap();
}

#[test]
fn pods_reach_their_host_and_each_other() {
    require_program!("busybox");
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    let a = host.add_pod("a", "10.32.1.5/24".parse().unwrap()).unwrap();
    let b = host.add_pod("b", "10.32.1.6/24".parse().unwrap()).unwrap();
    assert_eq!(a.host_veth(), "pod-a");
    assert!(a.netns_path().ends_with(a.name()), "{}", a.netns_path().display());

    let host_ip = host.underlay_ip().to_string();
    wait_until(SETTLE, "pod a to reach its host", || {
        a.exec_ok(["busybox", "ping", "-c1", "-W1", &host_ip]).is_ok()
    })
    .unwrap();
    ping(host, &a.ip().to_string()).unwrap();
    // Through the host: the pod has no subnet route, so this also checks that the host forwards.
    a.exec_ok(["busybox", "ping", "-c1", "-W1", &b.ip().to_string()])
        .unwrap();
    let routes = a.exec_ok(["ip", "route"]).unwrap();
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
}

#[test]
fn a_second_network_joins_every_host_and_sever_parts_one_pair_on_it() {
    require_program!("busybox");
    require_program!("nft");
    let mut testbed = testbed_or_skip!(3);
    let second = testbed.add_network("10.98.0.0/24".parse().unwrap()).unwrap();
    let first = testbed.networks()[0].clone();
    let (one, two, three) = (testbed.host(1), testbed.host(2), testbed.host(3));
    let addrs = two.exec_ok(["ip", "-4", "-o", "addr", "show", "dev", "eth1"]).unwrap();
    assert!(addrs.contains("10.98.0.2/24"), "{addrs}");
    let on = |network: &Network, host: &Host| network.ip(host).to_string();
    wait_until(SETTLE, "host 1 to reach host 2 on the second network", || {
        pings(one, &on(&second, two))
    })
    .unwrap();

    testbed.sever(1, 2, &second).unwrap();
    assert!(!pings(one, &on(&second, two)), "host 1 still reaches host 2 on 10.98");
    assert!(!pings(two, &on(&second, one)), "host 2 still reaches host 1 on 10.98");
    ping(one, &on(&first, two)).unwrap();
    ping(one, &on(&second, three)).unwrap();
    ping(three, &on(&second, two)).unwrap();
    let tables = one.exec_ok(["nft", "list", "tables"]).unwrap();
    assert_eq!(tables.trim(), "table inet wt-drop");

    // Both ends drop: letting one end through is not enough.
    one.allow_from(&[second.ip(two)]).unwrap();
    assert!(!pings(one, &on(&second, two)), "host 2 still drops host 1");
    two.allow_from(&[second.ip(one)]).unwrap();
    ping(one, &on(&second, two)).unwrap();
    for host in [one, two] {
        let tables = host.exec_ok(["nft", "list", "tables"]).unwrap();
        assert_eq!(tables.trim(), "", "an empty drop list leaves no table behind");
    }

    // A cut unplugs a host from every network.
    testbed.cut(3).unwrap();
    wait_until(SETTLE, "host 3 to become unreachable on both networks", || {
        !pings(one, &on(&first, three)) && !pings(one, &on(&second, three))
    })
    .unwrap();
    testbed.restore(3).unwrap();
    wait_until(SETTLE, "host 3 to be reachable again on both networks", || {
        pings(one, &on(&first, three)) && pings(one, &on(&second, three))
    })
    .unwrap();
}

#[test]
fn dropping_the_testbed_removes_every_namespace() {
    let testbed = testbed_or_skip!(2);
    let pod = testbed.host(2).add_pod("p", "10.32.2.9/32".parse().unwrap()).unwrap();
    let mut ours = vec![testbed.underlay().name().to_owned(), pod.name().to_owned()];
    ours.extend(testbed.hosts().map(|host| host.name().to_owned()));
    let prefix = testbed.prefix().to_owned();

    let before = netns_names().unwrap();
    for name in &ours {
        assert!(name.starts_with(&prefix), "{name} lacks prefix {prefix}");
        assert!(before.contains(name), "{name} missing from {before:?}");
        assert!(Path::new("/run/netns").join(name).exists());
    }
    drop(testbed);

    let after = netns_names().unwrap();
    let left: Vec<&String> = after
        .iter()
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_panicking_test_still_removes_its_namespaces() {
    let names = Mutex::new(Vec::new());
    let result = panic::catch_unwind(|| {
        let testbed = testbed_or_skip!(1);
        let pod = testbed.host(1).add_pod("x", "10.32.3.3/32".parse().unwrap()).unwrap();
        let (host, underlay) = (testbed.host(1).name(), testbed.underlay().name());
        names
            .lock()
            .unwrap()
            .extend([host, underlay, pod.name()].map(str::to_owned));
        panic!("deliberate panic with a testbed alive");
    });
    let names = names.into_inner().unwrap();
    match result {
        Ok(()) => return, // skipped
        Err(payload) if names.is_empty() => panic::resume_unwind(payload),
        Err(_) => {}
    }
    let after = netns_names().unwrap();
    let left: Vec<&String> = names.iter().filter(|name| after.contains(name)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn sweep_removes_what_a_crashed_run_left_and_nothing_else() {
    if let Some(reason) = netns_unavailable() {
        skip_or_fail(&reason);
        return;
    }
    let prefix = format!("wtsw{}", std::process::id() % 10_000);
    let [own, child, other] = [prefix.clone(), format!("{prefix}-h1"), format!("{prefix}0-h1")];
    for name in [&own, &child, &other] {
        run_ok(Command::new("ip").args(["netns", "add", name]));
    }
    // A process left running inside, as after a crash; sweep must kill it or the namespace lives on.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &child, "sleep", "1000"])
        .spawn()
        .unwrap();
    wait_until(SETTLE, "the orphan to enter its namespace", || {
        run_ok(Command::new("ip").args(["netns", "pids", &child])).contains(&orphan.id().to_string())
    })
    .unwrap();

    let mut swept = sweep(&prefix).unwrap();
    swept.sort();
    let names = netns_names().unwrap();
    run_ok(Command::new("ip").args(["netns", "delete", &other]));
    assert_eq!(swept, [own.clone(), child.clone()]);
    assert!(!names.contains(&own) && !names.contains(&child), "{names:?}");
    assert!(names.contains(&other), "{other} does not belong to {prefix}");
    assert_eq!(orphan.wait().unwrap().signal(), Some(9));
}

#[test]
fn testbeds_side_by_side_do_not_meet() {
    let first = testbed_or_skip!(1);
    let second = testbed_or_skip!(1);
    assert_ne!(first.prefix(), second.prefix());
    // Same underlay address, different namespaces.
    assert_eq!(first.host(1).underlay_ip(), second.host(1).underlay_ip());
    assert_ne!(first.host(1).name(), second.host(1).name());
    let names = netns_names().unwrap();
    assert!(names.iter().any(|name| name == first.host(1).name()));
    assert!(names.iter().any(|name| name == second.host(1).name()));
}

#[test]
fn dropping_the_guard_kills_the_process() {
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    let sleeper = host.spawn(host.cmd("sleep").arg("1000")).unwrap();
    let pid = sleeper.pid();
    assert_eq!(sleeper.try_wait().unwrap(), None);
    // `ip netns exec` enters the namespace and then execs sleep, with the same pid.
    wait_until(SETTLE, "sleep to run inside the host namespace", || {
        host.netns().pids().is_ok_and(|pids| pids.contains(&pid))
    })
    .unwrap();

    drop(sleeper);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} was neither killed nor reaped"
    );
    assert_eq!(host.netns().pids().unwrap(), Vec::<u32>::new());
}

#[test]
fn dropping_the_guard_stops_the_whole_process_group() {
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    let shell = host.spawn(host.cmd("sh").args(["-c", "sleep 1000 & wait"])).unwrap();
    wait_until(SETTLE, "the shell and its sleep to run", || {
        host.netns().pids().is_ok_and(|p| p.len() == 2)
    })
    .unwrap();

    let status = shell.stop().unwrap();
    assert_eq!(status.signal(), Some(15), "SIGTERM is enough: {status}");
    wait_until(SETTLE, "the shell's child to be gone", || {
        host.netns().pids().is_ok_and(|p| p.is_empty())
    })
    .unwrap();
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    // Ignored signals stay ignored across exec, so sleep ignores SIGTERM too. The `exit` keeps the shell from
    // exec'ing sleep, so there are two processes.
    let stubborn = host
        .spawn(host.cmd("sh").args(["-c", "trap '' TERM; sleep 1000; exit 0"]))
        .unwrap();
    // Once sleep runs, the trap is set.
    wait_until(SETTLE, "the shell to start sleep", || {
        host.netns().pids().is_ok_and(|p| p.len() == 2)
    })
    .unwrap();

    let started = Instant::now();
    let status = stubborn.stop().unwrap();
    let took = started.elapsed();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "stopping took {took:?}"
    );
    wait_until(SETTLE, "the group to be gone", || {
        host.netns().pids().is_ok_and(|p| p.is_empty())
    })
    .unwrap();
}

#[test]
fn dropping_the_testbed_stops_a_leaked_process() {
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    let sleeper = host.spawn(host.cmd("sleep").arg("1000")).unwrap();
    let pid = sleeper.pid();
    std::mem::forget(sleeper);

    drop(testbed);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} outlived its testbed"
    );
}

#[test]
fn spawn_refuses_a_command_outside_the_namespace() {
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    let err = host.spawn(&mut Command::new("sleep")).unwrap_err();
    assert!(
        matches!(&err, Error::OutsideNamespace { netns, .. } if netns == host.name()),
        "{err:?}"
    );
    let other = testbed_or_skip!(1);
    let err = host.spawn(&mut other.host(1).cmd("sleep")).unwrap_err();
    assert!(matches!(err, Error::OutsideNamespace { .. }), "{err:?}");
}

#[test]
fn exec_ok_returns_stdout_and_reports_stderr() {
    let testbed = testbed_or_skip!(1);
    let host = testbed.host(1);
    assert_eq!(host.exec_ok(["sh", "-c", "echo hello"]).unwrap(), "hello\n");

    let err = host.exec_ok(["sh", "-c", "echo oops >&2; exit 3"]).unwrap_err();
    let Error::Failed {
        command,
        status,
        stderr,
        ..
    } = &err
    else {
        panic!("expected Failed, got {err:?}")
    };
    assert!(
        command.starts_with(&format!("ip netns exec {} sh -c", host.name())),
        "{command}"
    );
    assert_eq!(status.code(), Some(3));
    assert_eq!(stderr, "oops");
    assert!(err.to_string().contains("oops"), "{err}");
}

#[test]
fn add_pod_rejects_names_that_do_not_fit() {
    let testbed = testbed_or_skip!(1);
    let err = testbed
        .host(1)
        .add_pod("much-too-long-name", "10.32.0.2/32".parse().unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                what: "pod name suffix",
                ..
            }
        ),
        "{err:?}"
    );
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ping(from: &Host, to: &str) -> Result<String, Error> {
    from.exec_ok(["busybox", "ping", "-c1", "-W1", to])
}

fn pings(from: &Host, to: &str) -> bool {
    ping(from, to).is_ok()
}

/// Generous: these states take milliseconds, but CI machines stall.
const SETTLE: Duration = Duration::from_secs(10);
