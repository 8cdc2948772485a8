//! weft-podlink against the kernel: a "host" and "pod" network namespaces
//! per test, wired by the crate as the proxy and the CNI plugin wire them,
//! and read back with `ip` as an operator would.
//!
//! Needs root; elsewhere the tests say why and return, and under CI they
//! fail instead (`weft_tests::root_or_skip`). The namespaces (and the veths
//! in them, and any process the test started there) go when a test ends,
//! also when it fails.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;

use ipnet::IpNet;
use weft_podlink::{
    Attached, Difference, Gateway, LinkError, Occupied, Outcome, Spec, attach, block_on, check, default_routes, detach,
    docker_host_veth, is_attached,
};
use weft_tests::{TestNetns, root_or_skip};

// ---- The proxy's form: ethwe, the pod range onlink, addresses with their prefix.

#[test]
fn attach_wires_the_container_and_detach_removes_it() {
    let Some((host, container)) = namespaces() else {
        return;
    };
    let cpath = container.path();
    let host_veth = docker_host_veth(container.name());
    run_in(&host, {
        let spec = proxy(&cpath, &host_veth, &ADDRS);
        async move {
            assert_eq!(attach(&spec).await.unwrap().outcome, Outcome::Created);
        }
    });

    let (host_link, mac) = link_line(&host, &host_veth);
    let (ethwe, ethwe_mac) = link_line(&container, "ethwe");
    assert_ne!(mac, ethwe_mac);
    // ethwe is the only link in the container after lo, so its index is 2.
    assert_eq!(
        host_link,
        format!(
            "{host_veth}@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1376 qdisc noqueue state UP mode DEFAULT \
             group default qlen 1000\\    link/ether {mac} brd ff:ff:ff:ff:ff:ff link-netns {}",
            container.name()
        )
    );
    assert!(
        ethwe.starts_with("ethwe@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1376 qdisc noqueue state UP "),
        "{ethwe}"
    );
    assert_eq!(
        host.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp")]),
        "1\n"
    );
    assert_eq!(
        host.ip(&["route"]),
        format!(
            "10.32.0.5 dev {host_veth} proto static scope link \n\
             10.33.1.2 dev {host_veth} proto static scope link \n"
        )
    );
    let addrs: Vec<String> = container
        .ip(&["-o", "addr", "show", "dev", "ethwe"])
        .lines()
        .filter(|line| !line.contains(" inet6 "))
        .map(|line| without_index(line).to_owned())
        .collect();
    assert_eq!(
        addrs,
        [
            "ethwe    inet 10.32.0.5/12 scope global noprefixroute ethwe\\       valid_lft forever preferred_lft forever",
            // The kernel marks a second address in the same prefix "secondary".
            "ethwe    inet 10.33.1.2/12 scope global secondary noprefixroute ethwe\\       valid_lft forever preferred_lft forever",
        ]
    );
    assert_eq!(
        container.ip(&["neigh"]),
        format!("169.254.1.1 dev ethwe lladdr {mac} PERMANENT \n")
    );
    // The only route: no connected route for the /12, no default route.
    assert_eq!(
        container.ip(&["route"]),
        "10.32.0.0/12 via 169.254.1.1 dev ethwe proto static onlink \n"
    );

    run_in(&host, async move {
        let spec = proxy(&cpath, &host_veth, &ADDRS);
        let again = attach(&spec).await.unwrap();
        assert_eq!(again.outcome, Outcome::Existing);
        assert_eq!(again.host_mac.to_string(), mac);
        assert_eq!(again.pod_mac.to_string(), ethwe_mac);
        check(&spec).await.unwrap();
        assert!(is_attached(&cpath, "ethwe").await.unwrap());
        assert!(detach(&host_veth).await.unwrap());
        assert!(!is_attached(&cpath, "ethwe").await.unwrap());
        assert!(!detach(&host_veth).await.unwrap());
    });
    assert_eq!(host.ip(&["-o", "link", "show"]).lines().count(), 1);
    assert_eq!(container.ip(&["-o", "link", "show"]).lines().count(), 1);
}

#[test]
fn leftovers_of_an_earlier_attempt_are_replaced() {
    let Some((host, container)) = namespaces() else {
        return;
    };
    let host_veth = docker_host_veth(container.name());
    // A stale host veth, and an ethwe in the container that is not ours
    // (veths: this kernel has no dummy links).
    host.ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", "stale"]);
    container.ip(&["link", "add", "ethwe", "type", "veth", "peer", "name", "notours"]);
    let cpath = container.path();
    run_in(&host, {
        let host_veth = host_veth.clone();
        async move {
            let spec = proxy(&cpath, &host_veth, &ADDRS[..1]);
            assert!(!is_attached(&cpath, "ethwe").await.unwrap());
            assert_eq!(attach(&spec).await.unwrap().outcome, Outcome::Created);
            assert!(is_attached(&cpath, "ethwe").await.unwrap());
            // Wired, but with other addresses than asked for: wired again.
            let spec = proxy(&cpath, &host_veth, &ADDRS[1..]);
            assert_eq!(attach(&spec).await.unwrap().outcome, Outcome::Created);
            assert_eq!(attach(&spec).await.unwrap().outcome, Outcome::Existing);
        }
    });
    let (link, _) = link_line(&host, &host_veth);
    assert!(
        link.contains("mtu 1376") && link.contains(&format!("link-netns {}", container.name())),
        "{link}"
    );
    assert_eq!(
        host.ip(&["route"]),
        format!("10.33.1.2 dev {host_veth} proto static scope link \n")
    );
    let addrs = container.ip(&["-4", "-o", "addr", "show", "dev", "ethwe"]);
    assert!(
        addrs.contains(" inet 10.33.1.2/12 ") && !addrs.contains("10.32.0.5"),
        "{addrs}"
    );
}

#[test]
fn a_failure_midway_removes_the_veth() {
    let Some((host, container)) = namespaces() else {
        return;
    };
    let host_veth = docker_host_veth(container.name());
    let cpath = container.path();
    run_in(&host, async move {
        // The second copy of the address fails in the container, after
        // the veth, the host routes and the first address exist.
        let twice = [ADDRS[0], ADDRS[0]];
        let err = attach(&proxy(&cpath, &host_veth, &twice)).await.unwrap_err();
        assert!(matches!(err, LinkError::Address { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot add the address 10.32.0.5/12 to ethwe in {}: File exists (os error 17)",
                cpath.display()
            )
        );
        assert!(!is_attached(&cpath, "ethwe").await.unwrap());
        assert!(!detach(&host_veth).await.unwrap(), "the veth was left behind");
    });
    assert_eq!(host.ip(&["-o", "link", "show"]).lines().count(), 1, "only lo");
    assert_eq!(container.ip(&["-o", "link", "show"]).lines().count(), 1, "only lo");
    assert_eq!(host.ip(&["route"]), "");
}

#[test]
fn containers_are_attached_concurrently() {
    if !root_or_skip() {
        return;
    }
    let host = TestNetns::new("wtpl");
    let containers: Vec<TestNetns> = (0..4).map(|_| TestNetns::new("wtpl")).collect();
    let specs: Vec<Spec> = containers
        .iter()
        .zip(1u8..)
        .map(|(c, i)| {
            let addr = net(&format!("10.32.1.{i}/12"));
            proxy(&c.path(), &docker_host_veth(c.name()), &[addr])
        })
        .collect();
    run_in(&host, async move {
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                tokio::spawn(async move {
                    assert_eq!(attach(&spec).await.unwrap().outcome, Outcome::Created);
                    assert!(is_attached(&spec.netns, "ethwe").await.unwrap());
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!(host.ip(&["route"]).lines().count(), 4);
    for c in &containers {
        assert_eq!(
            c.ip(&["route"]),
            "10.32.0.0/12 via 169.254.1.1 dev ethwe proto static onlink \n"
        );
    }
}

// ---- The CNI plugin's form: a /32, a route to the gateway and a default route via it.

#[test]
fn the_cni_form_and_an_interface_in_the_way() {
    let Some((host, pod)) = namespaces() else {
        return;
    };
    let host_veth = weft_podlink::cni_host_veth(pod.name(), "eth0");
    let spec = cni(&pod.path(), &host_veth, &[net("10.32.0.5/32")]);
    let made = attach_in(&host, &spec).unwrap();
    assert_eq!(made.outcome, Outcome::Created);

    let (_, mac) = link_line(&host, &host_veth);
    let (eth0, eth0_mac) = link_line(&pod, "eth0");
    assert_eq!(made.host_mac.to_string(), mac);
    assert_eq!(made.pod_mac.to_string(), eth0_mac);
    assert!(
        eth0.starts_with("eth0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1420 qdisc noqueue state UP "),
        "{eth0}"
    );
    assert_eq!(
        host.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp")]),
        "1\n"
    );
    assert_eq!(
        host.ip(&["route"]),
        format!("10.32.0.5 dev {host_veth} proto static scope link \n")
    );
    assert_eq!(
        without_index(pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]).trim_end()),
        "eth0    inet 10.32.0.5/32 scope global eth0\\       valid_lft forever preferred_lft forever"
    );
    assert_eq!(
        pod.ip(&["route"]),
        "default via 169.254.1.1 dev eth0 proto static \n\
         169.254.1.1 dev eth0 proto static scope link \n"
    );
    assert_eq!(
        pod.ip(&["neigh"]),
        format!("169.254.1.1 dev eth0 lladdr {mac} PERMANENT \n")
    );

    // A repeated ADD finds it as asked for and changes nothing.
    let again = attach_in(&host, &spec).unwrap();
    assert_eq!(
        again,
        Attached {
            outcome: Outcome::Existing,
            ..made
        }
    );

    // The CNI plugin leaves an interface of another plugin alone.
    let other = TestNetns::new("wtpl");
    other.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
    let other_veth = weft_podlink::cni_host_veth(other.name(), "eth0");
    let err = attach_in(&host, &cni(&other.path(), &other_veth, &[net("10.32.0.6/32")])).unwrap_err();
    assert!(matches!(err, LinkError::Occupied { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot create the veth pair {other_veth} (host) and eth0 (in {}): eth0 already exists there and is not \
             Weft's; remove it or use another interface name",
            other.path().display()
        )
    );
    assert!(other.ip(&["-o", "link", "show", "eth0"]).contains("eth0@peer0"));
    assert_eq!(
        host.ip(&["-o", "link", "show"]).lines().count(),
        2,
        "lo and the first pod's veth"
    );
}

#[test]
fn check_names_the_first_difference() {
    let Some((host, pod)) = namespaces() else {
        return;
    };
    let host_veth = weft_podlink::cni_host_veth(pod.name(), "eth0");
    let spec = cni(&pod.path(), &host_veth, &[net("10.32.0.5/32"), net("fd00::5/128")]);
    let checked = || check_in(&host, &spec);
    let err = checked().unwrap_err();
    assert_eq!(err.to_string(), format!("the host veth {host_veth} is missing"));

    assert_eq!(attach_in(&host, &spec).unwrap().outcome, Outcome::Created);
    checked().unwrap();

    pod.ip(&["route", "del", "default"]);
    let err = checked().unwrap_err();
    assert!(
        matches!(&err, LinkError::Mismatch(Difference::NoRoute { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the container has no default route via 169.254.1.1 dev eth0"
    );

    host.ip(&["-6", "route", "del", "fd00::5/128"]);
    assert_eq!(
        checked().unwrap_err().to_string(),
        format!("the host has no route fd00::5/128 dev {host_veth}")
    );

    // Wiring again puts everything back.
    assert_eq!(attach_in(&host, &spec).unwrap().outcome, Outcome::Created);
    checked().unwrap();
}

// ---- IPv6.

#[test]
fn an_ipv6_pod() {
    let Some((host, a)) = namespaces() else {
        return;
    };
    let b = TestNetns::new("wtpl");
    let (veth_a, veth_b) = (
        weft_podlink::cni_host_veth(a.name(), "eth0"),
        weft_podlink::cni_host_veth(b.name(), "eth0"),
    );
    for spec in [
        cni(&a.path(), &veth_a, &[net("fd00::5/128")]),
        cni(&b.path(), &veth_b, &[net("fd00::6/128")]),
    ] {
        assert_eq!(attach_in(&host, &spec).unwrap().outcome, Outcome::Created);
    }

    let (_, mac) = link_line(&host, &veth_a);
    assert_eq!(
        without_index(
            a.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"])
                .trim_end()
        ),
        "eth0    inet6 fd00::5/128 scope global nodad \\       valid_lft forever preferred_lft forever"
    );
    // The kernel's own routes for the address and the link-local prefix, and ours.
    assert_eq!(
        a.ip(&["-6", "route"]),
        "fd00::5 dev eth0 proto kernel metric 256 pref medium\n\
         fe80::/64 dev eth0 proto kernel metric 256 pref medium\n\
         default via fe80::1 dev eth0 proto static metric 1024 pref medium\n"
    );
    assert_eq!(a.ip(&["-4", "route"]), "", "no IPv4 route for an IPv6 pod");
    assert_eq!(
        a.ip(&["-6", "neigh"]),
        format!("fe80::1 dev eth0 lladdr {mac} PERMANENT \n")
    );
    assert_eq!(
        host.ip(&["-6", "route", "show", "fd00::5/128"]),
        format!("fd00::5 dev {veth_a} proto static metric 1024 pref medium\n")
    );
    assert_eq!(
        host.exec(&["cat", &format!("/proc/sys/net/ipv4/conf/{veth_a}/proxy_arp")]),
        "0\n",
        "no proxy ARP without IPv4"
    );

    // Pod to pod through the host, which forwards as a Weft host does.
    host.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!(udp_echo(&a, &b, "fd00::6"), "fd00::5 -> fd00::6");
    assert_eq!(udp_echo(&b, &a, "fd00::5"), "fd00::6 -> fd00::5");
}

#[test]
fn a_dual_stack_pod_in_each_form() {
    let Some((host, a)) = namespaces() else {
        return;
    };
    let b = TestNetns::new("wtpl");
    let (veth_a, veth_b) = (
        weft_podlink::cni_host_veth(a.name(), "eth0"),
        docker_host_veth(b.name()),
    );
    let spec_a = cni(&a.path(), &veth_a, &[net("10.32.0.5/32"), net("fd00::5/128")]);
    let spec_b = Spec {
        routes: vec![net("10.32.0.0/12"), net("fd00::/64")],
        ..proxy(&b.path(), &veth_b, &[net("10.32.0.6/12"), net("fd00::6/64")])
    };
    run_in(&host, async move {
        let (made_a, made_b) = tokio::join!(attach(&spec_a), attach(&spec_b));
        assert_eq!(made_a.unwrap().outcome, Outcome::Created);
        assert_eq!(made_b.unwrap().outcome, Outcome::Created);
        check(&spec_a).await.unwrap();
        check(&spec_b).await.unwrap();
    });

    let (_, mac_a) = link_line(&host, &veth_a);
    let (_, mac_b) = link_line(&host, &veth_b);
    assert_eq!(
        a.ip(&["route"]),
        "default via 169.254.1.1 dev eth0 proto static \n\
         169.254.1.1 dev eth0 proto static scope link \n"
    );
    assert_eq!(
        a.ip(&["-6", "route"]),
        "fd00::5 dev eth0 proto kernel metric 256 pref medium\n\
         fe80::/64 dev eth0 proto kernel metric 256 pref medium\n\
         default via fe80::1 dev eth0 proto static metric 1024 pref medium\n"
    );
    assert_eq!(
        a.ip(&["neigh"]),
        format!("169.254.1.1 dev eth0 lladdr {mac_a} PERMANENT \nfe80::1 dev eth0 lladdr {mac_a} PERMANENT \n")
    );
    // The proxy's form: both prefixes kept without a connected route, both ranges onlink.
    let global: Vec<String> = b
        .ip(&["-o", "addr", "show", "dev", "ethwe", "scope", "global"])
        .lines()
        .map(|line| without_index(line).to_owned())
        .collect();
    assert_eq!(
        global,
        [
            "ethwe    inet 10.32.0.6/12 scope global noprefixroute ethwe\\       valid_lft forever preferred_lft forever",
            "ethwe    inet6 fd00::6/64 scope global nodad noprefixroute \\       valid_lft forever preferred_lft forever",
        ]
    );
    assert_eq!(
        b.ip(&["route"]),
        "10.32.0.0/12 via 169.254.1.1 dev ethwe proto static onlink \n"
    );
    assert_eq!(
        b.ip(&["-6", "route"]),
        "fd00::/64 via fe80::1 dev ethwe proto static metric 1024 onlink pref medium\n\
         fe80::/64 dev ethwe proto kernel metric 256 pref medium\n"
    );
    assert_eq!(
        b.ip(&["neigh"]),
        format!("169.254.1.1 dev ethwe lladdr {mac_b} PERMANENT \nfe80::1 dev ethwe lladdr {mac_b} PERMANENT \n")
    );
    assert_eq!(
        host.ip(&["route"]),
        format!(
            "10.32.0.5 dev {veth_a} proto static scope link \n\
             10.32.0.6 dev {veth_b} proto static scope link \n"
        )
    );
    for (addr, veth) in [("fd00::5", &veth_a), ("fd00::6", &veth_b)] {
        assert_eq!(
            host.ip(&["-6", "route", "show", &format!("{addr}/128")]),
            format!("{addr} dev {veth} proto static metric 1024 pref medium\n")
        );
    }

    host.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    host.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!(udp_echo(&a, &b, "10.32.0.6"), "10.32.0.5 -> 10.32.0.6");
    assert_eq!(udp_echo(&b, &a, "10.32.0.5"), "10.32.0.6 -> 10.32.0.5");
    assert_eq!(udp_echo(&a, &b, "fd00::6"), "fd00::5 -> fd00::6");
    assert_eq!(udp_echo(&b, &a, "fd00::5"), "fd00::6 -> fd00::5");
}

// ---- Helpers.

const ADDRS: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::new(10, 32, 0, 5)), 12),
    IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::new(10, 33, 1, 2)), 12),
];

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The proxy's spec: `ethwe`, the pod range 10.32.0.0/12 onlink.
fn proxy(netns: &Path, host_veth: &str, addresses: &[IpNet]) -> Spec {
    Spec {
        netns: netns.to_owned(),
        ifname: "ethwe".into(),
        host_veth: host_veth.into(),
        mtu: 1376,
        addresses: addresses.to_vec(),
        routes: vec![net("10.32.0.0/12")],
        gateway: Gateway::Onlink,
        occupied: Occupied::Replace,
    }
}

/// The CNI plugin's spec: `eth0`, a default route per family.
fn cni(netns: &Path, host_veth: &str, addresses: &[IpNet]) -> Spec {
    Spec {
        netns: netns.to_owned(),
        ifname: "eth0".into(),
        host_veth: host_veth.into(),
        mtu: 1420,
        addresses: addresses.to_vec(),
        routes: default_routes(addresses),
        gateway: Gateway::LinkRoute,
        occupied: Occupied::Fail,
    }
}

/// Sends a datagram from `client` to `server_addr` in `server`, which echoes
/// it, retrying until the echo comes back (10 s at most). Returns "CLIENT ->
/// SERVER" as the client saw the addresses: its own source address and
/// where the echo came from.
fn udp_echo(client: &TestNetns, server: &TestNetns, server_addr: &str) -> String {
    let _echo = Running(
        server
            .cmd("python3")
            .args(["-c", ECHO_SERVER, server_addr])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    client
        .exec(&["python3", "-c", ECHO_CLIENT, server_addr])
        .trim()
        .to_owned()
}

/// Binds the address it is given (port 7777) and echoes every datagram.
const ECHO_SERVER: &str = "
import socket, sys
a = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a, 7777))
while True:
    d, peer = s.recvfrom(2048)
    s.sendto(d, peer)
";

/// Sends to the address it is given every 200 ms until an echo comes back
/// (the server may not be listening yet: then the kernel answers "port
/// unreachable", which the next send or receive reports), for 10 s at most. Connected, so that it knows its source
/// address.
const ECHO_CLIENT: &str = "
import socket, sys, time
a = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
s.connect((a, 7777))
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        s.send(b'weft')
        d, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    except ConnectionRefusedError:
        time.sleep(0.2)
        continue
    assert d == b'weft', d
    print(s.getsockname()[0], '->', peer[0])
    sys.exit(0)
sys.exit('no echo from ' + a + ' within 10 s')
";

/// A child process, killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ip -o link show NAME` without the index, and the link's MAC.
fn link_line(ns: &TestNetns, name: &str) -> (String, String) {
    let out = ns.ip(&["-o", "link", "show", name]);
    let line = without_index(out.trim_end()).to_owned();
    let mac = line
        .split_whitespace()
        .skip_while(|&w| w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {line}"))
        .to_owned();
    (line, mac)
}

/// An `ip -o` line without its leading "N: " interface index.
fn without_index(line: &str) -> &str {
    line.split_once(": ").map_or(line, |(_, rest)| rest)
}

/// A "host" and a "pod" namespace, or `None` (after saying why) if
/// namespaces cannot be made here. The host namespace keeps the test's
/// veths and routes out of the real host's.
fn namespaces() -> Option<(TestNetns, TestNetns)> {
    root_or_skip().then(|| (TestNetns::new("wtpl"), TestNetns::new("wtpl")))
}

/// Runs `test` on a multi-thread runtime whose threads (and the thread
/// that drives it) are all in `host`'s namespace, as the proxy's are in
/// the real host's.
fn run_in(host: &TestNetns, test: impl Future<Output = ()> + Send + 'static) {
    let enter = enterer(&host.path());
    std::thread::spawn(move || {
        enter();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(enter)
            .build()
            .unwrap()
            .block_on(test);
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// [`attach`] as the CNI plugin calls it: from synchronous code through
/// [`block_on`], on a thread in `host`'s namespace.
fn attach_in(host: &TestNetns, spec: &Spec) -> Result<Attached, LinkError> {
    sync_in(host, spec, |spec| block_on(attach(spec)))
}

/// [`check`] as the CNI plugin calls it (see [`attach_in`]).
fn check_in(host: &TestNetns, spec: &Spec) -> Result<(), LinkError> {
    sync_in(host, spec, |spec| block_on(check(spec)))
}

/// Runs `call(spec)` on a new thread in `host`'s namespace.
fn sync_in<T: Send + 'static>(host: &TestNetns, spec: &Spec, call: fn(&Spec) -> T) -> T {
    let (enter, spec) = (enterer(&host.path()), spec.clone());
    std::thread::spawn(move || {
        enter();
        call(&spec)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A function that moves the calling thread into the namespace at `path`.
fn enterer(path: &Path) -> impl Fn() + Clone + Send + Sync + 'static {
    let ns = Arc::new(File::open(path).unwrap());
    move || nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap()
}
