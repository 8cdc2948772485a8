//! The Docker API proxy with real dockerd and the real docker CLI: two hosts (network namespaces), each
//! with its own dockerd started inside it, a router, and a proxy in front of the daemon: the standalone
//! `weft-proxy` on host 1, the one inside the router (`weft launch --proxy`) on host 2. Every check goes
//! through a proxy with `docker` as a user would run it.
//!
//! `containers_join_the_mesh`: the container's first instruction sees `ethwe` (busybox and FROM-scratch
//! images), containers reach each other across hosts by mesh address (ping, TCP), `WEFT_CIDR` /
//! `WEAVE_CIDR` do what Weave's did, `--network host` is left alone, addresses are released on `rm` and
//! `--rm` and kept across restarts, a bad `WEFT_CIDR` and an address in use are API errors, a container
//! started straight on dockerd is attached from the event stream, `weft env` points the CLI at the
//! proxy, the loopback TCP listener answers, and a restarted proxy releases the address of a container
//! removed while it was down and keeps the others.
//!
//! `the_docker_cli_works_through_the_proxy`: `docker run -i` gets all of its output after stdin's EOF
//! (half-close), `logs -f`, `exec`, `events` and `build` work, an unreachable daemon gives the CLI's own
//! message, and a stopped router is named in the error.
//!
//! Each dockerd has a private socket, data root (under /var/tmp: overlay2 needs a real file system), exec
//! root and cgroup parent, with `--bridge=none` and no iptables or forwarding changes; images are made from
//! busybox-static, so no registry is needed. Everything is removed on drop, also when a check panics.
//!
//! Needs root, `dockerd` (Debian package docker.io), the `docker` CLI, busybox-static, `nsenter`,
//! `timeout`, `tar` and the router binary (`cargo build -p weft-router --bin weft`). What is missing is
//! reported by `weft_tests::skip_or_fail`: a skip locally, a failure under CI.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use tempfile::TempDir;
use weft_api::blocking::Client as RouterClient;
use weft_api::types::AllocationView;
use weft_tests::router::{Router, weft_binary, workdir};
use weft_tests::runtime::{
    Daemon, SETTLE, launch_mesh, nsenter, output, remove_cgroup, rootfs_tar, run, static_busybox, unmount_under,
};
use weft_tests::{Host, InNamespace as _, Testbed, missing_program, skip_or_fail, wait_until};

const PROXY: &str = env!("CARGO_BIN_EXE_weft-proxy");
const RANGE: &str = "10.40.0.0/16";
/// Every applet, `/bin/sh` included.
const BUSYBOX: &str = "weft-busybox:latest";
/// `FROM scratch` with `/bin/busybox` alone: no shell, no libc, no applet links.
const SCRATCH: &str = "weft-scratch:latest";
/// How long the proxies and daemons may take to answer for the first time.
const START: Duration = Duration::from_secs(30);
/// How long one docker CLI command may take before `timeout` kills it: a hung request fails the test.
const CLI_TIMEOUT: &str = "120";
/// weft-proxy's loopback TCP listener on host 1.
const TCP_PORT: u16 = 12375;

#[test]
fn containers_join_the_mesh() {
    let Some(tb) = testbed() else { return };
    let site = Site::new(&tb);
    let [p1, p2] = [&site.proxied[0], &site.proxied[1]];

    // 1. The first instruction sees ethwe with the router's address, on both proxies, with a shell and
    // without one.
    for (host, docker) in [(1, p1), (2, p2)] {
        for (image, cmd) in [
            (BUSYBOX, &["ip", "-o", "-4", "addr", "show", "ethwe"][..]),
            (
                SCRATCH,
                &["/bin/busybox", "ip", "-o", "-4", "addr", "show", "ethwe"][..],
            ),
        ] {
            let cidfile = site
                .dir
                .path()
                .join(format!("first-{host}-{}.cid", image.replace([':', '-'], "")));
            let mut args = vec!["run", "--rm", "--cidfile", path_str(&cidfile), image];
            args.extend(cmd);
            let shown = docker.run(&args);
            let addrs = inet(&shown);
            assert_eq!(addrs.len(), 1, "host {host}, {image}: one address on ethwe: {shown}");
            assert!(site.range().contains(&addrs[0].addr()), "host {host}, {image}: {shown}");
            let id = fs::read_to_string(&cidfile).unwrap();
            // ... and the --rm container's address was released after it exited.
            site.wait_released(host, &id);
        }
    }
    // The wait step keeps the command's exit status, and an --entrypoint.
    let status = p1.output_of(&["run", "--rm", BUSYBOX, "sh", "-c", "exit 3"]).status;
    assert_eq!(status.code(), Some(3), "the container's exit status comes back");
    let out = p1.run(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/echo",
        BUSYBOX,
        "from",
        "entrypoint",
    ]);
    assert_eq!(out, "from entrypoint\n");

    // 2. A long-running container on host 1 reaches one on host 2 by mesh address: ping, then TCP.
    p2.run(&["run", "-d", "--name", "server", BUSYBOX, "nc", "-l", "-p", "7000"]);
    p1.run(&["run", "-d", "--name", "client", BUSYBOX, "sleep", "600"]);
    let server_ip = p2.ethwe("server")[0].addr();
    let client_ip = p1.ethwe("client")[0].addr();
    assert_eq!(
        site.allocated(2, &p2.id("server")),
        [server_ip],
        "router 2 holds the server's address"
    );
    assert_eq!(
        site.allocated(1, &p1.id("client")),
        [client_ip],
        "router 1 holds the client's address"
    );
    assert_eq!(
        site.allocated(1, &p2.id("server")),
        Vec::<Ipv4Addr>::new(),
        "router 1 holds nothing for the server"
    );
    let target = server_ip.to_string();
    wait_until(SETTLE, &format!("the client to ping {target}"), || {
        p1.output(&["exec", "client", "ping", "-c1", "-W1", &target]).is_ok()
    })
    .unwrap();
    let payload = "sent across the weft mesh";
    let send = format!("echo '{payload}' | nc -w 3 {target} 7000");
    p1.run(&["exec", "client", "sh", "-c", &send]);
    wait_until(Duration::from_secs(10), "the payload to reach the server", || {
        p2.output(&["logs", "server"]).is_ok_and(|logs| logs.contains(payload))
    })
    .unwrap_or_else(|e| panic!("{e}: server logs: {:?}", p2.output(&["logs", "server"])));

    // 3. WEFT_CIDR and WEAVE_CIDR, on whichever host's router owns the addresses asked for.
    let ring = site.routers[0].ring();
    let owner = |addr: &str| -> usize {
        let name = ring.owner_of(addr.parse().unwrap()).expect("the ring covers the range");
        1 + site
            .routers
            .iter()
            .position(|r| r.status().unwrap().name == name)
            .expect("a router owns it")
    };
    let has_ethwe = "if ip link show ethwe >/dev/null 2>&1; then echo ethwe; else echo no-ethwe; fi";
    let none = p1.run(&[
        "run",
        "--name",
        "unattached",
        "-e",
        "WEFT_CIDR=none",
        BUSYBOX,
        "sh",
        "-c",
        has_ethwe,
    ]);
    assert_eq!(none, "no-ethwe\n", "WEFT_CIDR=none: not attached");
    assert_eq!(
        site.allocated(1, &p1.id("unattached")),
        Vec::<Ipv4Addr>::new(),
        "WEFT_CIDR=none: no address"
    );
    let chosen = [
        ("WEFT_CIDR=ip:10.40.7.7/16", "10.40.7.7", "ip:"),
        ("WEAVE_CIDR=ip:10.40.7.9/16", "10.40.7.9", "WEAVE_CIDR ip:"),
    ];
    for (env, want, what) in chosen {
        let host = owner(want);
        let docker = &site.proxied[host - 1];
        let shown = docker.run(&[
            "run", "--rm", "-e", env, BUSYBOX, "ip", "-o", "-4", "addr", "show", "ethwe",
        ]);
        let addrs = inet(&shown);
        assert_eq!(
            addrs,
            [format!("{want}/16").parse().unwrap()],
            "{what} on host {host}: {shown}"
        );
    }
    let subnet: Ipv4Net = "10.40.8.0/24".parse().unwrap();
    let host = owner("10.40.8.1");
    let docker = &site.proxied[host - 1];
    let shown = docker.run(&[
        "run",
        "--rm",
        "-e",
        "WEFT_CIDR=net:10.40.8.0/24",
        BUSYBOX,
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "ethwe",
    ]);
    let addrs = inet(&shown);
    assert!(
        addrs.len() == 1 && subnet.contains(&addrs[0].addr()),
        "net:{subnet} on host {host}: {shown}"
    );
    // Two entries: two addresses on ethwe, allocations ethwe and ethwe:1.
    let host = owner("10.40.7.8");
    assert_eq!(owner("10.40.8.1"), host, "the test assumes one router owns both");
    let docker = &site.proxied[host - 1];
    docker.run(&[
        "run",
        "-d",
        "--name",
        "two",
        "-e",
        "WEFT_CIDR=ip:10.40.7.8/16 net:10.40.8.0/24",
        BUSYBOX,
        "sleep",
        "600",
    ]);
    let addrs = docker.ethwe("two");
    assert_eq!(addrs.len(), 2, "two entries, two addresses: {addrs:?}");
    assert_eq!(addrs[0], "10.40.7.8/16".parse().unwrap());
    assert!(subnet.contains(&addrs[1].addr()), "{addrs:?}");
    let mut ifaces: Vec<String> = site
        .allocations(host, &docker.id("two"))
        .into_iter()
        .map(|a| a.iface)
        .collect();
    ifaces.sort();
    assert_eq!(ifaces, ["ethwe", "ethwe:1"]);
    docker.run(&["rm", "-f", "two"]);
    // --network host: no ethwe, the host's own interfaces, no address taken.
    let links_before = links(tb.host(1));
    let shown = p1.run(&[
        "run",
        "--name",
        "hostnet",
        "--network",
        "host",
        BUSYBOX,
        "sh",
        "-c",
        "ip -o link show",
    ]);
    assert!(!shown.contains("ethwe"), "--network host: no ethwe: {shown}");
    assert!(
        shown.contains(": weft"),
        "--network host runs in host 1's namespace: {shown}"
    );
    assert_eq!(
        site.allocated(1, &p1.id("hostnet")),
        Vec::<Ipv4Addr>::new(),
        "--network host: no address"
    );
    let added: Vec<String> = links(tb.host(1))
        .into_iter()
        .filter(|l| !links_before.contains(l))
        .collect();
    assert_eq!(
        added,
        Vec::<String>::new(),
        "--network host: no interface was added to host 1"
    );
    // --network container:client: the client's namespace, its one address, nothing allocated.
    let shown = p1.run(&[
        "run",
        "--name",
        "joiner",
        "--network",
        "container:client",
        BUSYBOX,
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "ethwe",
    ]);
    assert_eq!(
        inet(&shown).iter().map(Ipv4Net::addr).collect::<Vec<_>>(),
        [client_ip],
        "{shown}"
    );
    assert_eq!(
        site.allocated(1, &p1.id("joiner")),
        Vec::<Ipv4Addr>::new(),
        "--network container: no address of its own"
    );

    // An address in use is an API error at start, and the container is not left running.
    let taken = format!("WEFT_CIDR=ip:{client_ip}/16");
    let out = p1.output_of(&["run", "--name", "taken", "-e", &taken, BUSYBOX, "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{taken} while the client holds it must fail");
    assert!(
        stderr.contains("Error response from daemon: weft:"),
        "{taken}: {stderr}"
    );
    let running = p1.run(&["inspect", "-f", "{{.State.Running}}", "taken"]);
    assert_eq!(running.trim(), "false", "the container that got no address was stopped");

    // A container created through the proxy but started straight on dockerd is attached from the event
    // stream.
    p1.run(&["create", "--name", "latecomer", BUSYBOX, "sleep", "600"]);
    site.direct[0].run(&["start", "latecomer"]);
    let late = p1.ethwe("latecomer");
    assert_eq!(site.allocated(1, &p1.id("latecomer")), [late[0].addr()]);

    // 6. Kept across restart and stop/start, released on rm -f.
    let id = p1.id("client");
    p1.run(&["restart", "-t", "0", "client"]);
    assert_eq!(
        p1.ethwe("client")[0].addr(),
        client_ip,
        "docker restart keeps the address"
    );
    p1.run(&["stop", "-t", "0", "client"]);
    p1.run(&["start", "client"]);
    assert_eq!(
        p1.ethwe("client")[0].addr(),
        client_ip,
        "docker stop + start keeps the address"
    );
    assert_eq!(site.allocated(1, &id), [client_ip]);
    p1.run(&["rm", "-f", "client"]);
    site.wait_released(1, &id);

    // 7. A bad WEFT_CIDR is an API error, and no container is left.
    let out = p1.output_of(&[
        "run",
        "--rm",
        "--name",
        "bogus",
        "-e",
        "WEFT_CIDR=bogus",
        BUSYBOX,
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "WEFT_CIDR=bogus must fail");
    assert!(
        stderr.contains("Error response from daemon") && stderr.contains("WEFT_CIDR"),
        "WEFT_CIDR=bogus: {stderr}"
    );
    let left = site.direct[0].run(&["ps", "-a", "-q", "--filter", "name=bogus"]);
    assert_eq!(left, "", "WEFT_CIDR=bogus created no container");

    // 8. weft env points the CLI at the proxy.
    let env = Command::new(weft_binary())
        .args(["env", "--proxy-socket"])
        .arg(&site.proxy_sockets[0])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.status.success(),
        "weft env: {printed}{}",
        String::from_utf8_lossy(&env.stderr)
    );
    assert!(
        printed.contains(&format!("DOCKER_HOST=unix://{}", site.proxy_sockets[0].display())),
        "weft env: {printed}"
    );
    let script = format!(
        "eval \"$(\"$1\" env --proxy-socket '{}')\"; docker version --format '{{{{.Server.Version}}}}'",
        site.proxy_sockets[0].display()
    );
    let version = run(Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(weft_binary())
        .env_remove("DOCKER_HOST")
        .env("DOCKER_CONFIG", &site.docker_config));
    let direct = site.direct[0].run(&["version", "--format", "{{.Server.Version}}"]);
    assert_eq!(version, direct, "eval $(weft env) reaches host 1's daemon");
    let nothing = site.dir.path().join("nothing.sock");
    let env = Command::new(weft_binary())
        .args(["env", "--proxy-socket"])
        .arg(&nothing)
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(1), "weft env with nothing at the socket fails");

    // The loopback TCP listener, inside host 1's namespace.
    let over_tcp = Docker::over_tcp(tb.host(1), TCP_PORT, &site.docker_config);
    let version = over_tcp.run(&["version", "--format", "{{.Server.Version}}"]);
    assert_eq!(version, direct, "--tcp 127.0.0.1:{TCP_PORT} reaches host 1's daemon");

    // Restarting the proxy: it removed its socket on SIGTERM; started again it releases the address of a
    // container removed meanwhile and keeps the address of one that is still there.
    p1.run(&["run", "-d", "--name", "keeper", BUSYBOX, "sleep", "600"]);
    p1.run(&["run", "-d", "--name", "goner", BUSYBOX, "sleep", "600"]);
    let (keeper, goner) = (p1.id("keeper"), p1.id("goner"));
    let keeper_ip = p1.ethwe("keeper")[0].addr();
    assert_eq!(site.allocated(1, &goner).len(), 1);
    let mut site = site;
    drop(site.proxy.take());
    assert!(
        !site.proxy_sockets[0].exists(),
        "weft-proxy removed its socket on SIGTERM"
    );
    site.direct[0].run(&["rm", "-f", "goner"]);
    site.start_proxy();
    site.wait_released(1, &goner);
    assert_eq!(
        site.allocated(1, &keeper),
        [keeper_ip],
        "the running container keeps its address"
    );
    let p1 = &site.proxied[0];
    assert_eq!(p1.ethwe("keeper")[0].addr(), keeper_ip);
}

#[test]
fn the_docker_cli_works_through_the_proxy() {
    let Some(tb) = testbed() else { return };
    let mut site = Site::new(&tb);
    let p1 = site.proxied[0].clone();
    let p2 = site.proxied[1].clone();

    // 4. Half-close: all of stdin reaches the container, and all of its output comes back after the EOF.
    let short = p1.run_with_stdin(&["run", "-i", "--rm", BUSYBOX, "cat"], b"one short line\n");
    assert_eq!(short, b"one short line\n");
    let big = pattern(1 << 20);
    let back = p1.run_with_stdin(&["run", "-i", "--rm", BUSYBOX, "cat"], &big);
    assert!(
        back.len() == big.len() && back == big,
        "1 MiB through cat: {} bytes came back",
        back.len()
    );
    let back = p2.run_with_stdin(
        &["run", "-i", "--rm", BUSYBOX, "sh", "-c", "wc -c; echo after-eof"],
        &big,
    );
    assert_eq!(
        String::from_utf8_lossy(&back),
        format!("{}\nafter-eof\n", big.len()),
        "host 2"
    );
    let back = p2.run_with_stdin(&["run", "-i", "--rm", BUSYBOX, "md5sum"], &big);
    assert!(
        String::from_utf8_lossy(&back).starts_with(&md5(&big)),
        "md5sum in the container: {back:?}"
    );

    // 5. logs -f follows a running container: a line written after the follow began arrives.
    let since = unix_now();
    p1.run(&[
        "run",
        "-d",
        "--name",
        "talker",
        BUSYBOX,
        "sh",
        "-c",
        "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo marker; exec sleep 600",
    ]);
    let mut follow = p1.cmd(&["logs", "-f", "talker"]);
    let mut follow = follow
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("docker logs -f: no {what} line: {e}"))
    };
    assert_eq!(next("first"), "first");
    p1.run(&["exec", "talker", "touch", "/tmp/go"]);
    assert_eq!(next("marker"), "marker");
    let _ = follow.kill();
    let _ = follow.wait();

    // exec: output and exit status, and stdin.
    let out = p1.output_of(&["exec", "talker", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "docker exec's exit status");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let back = p1.run_with_stdin(&["exec", "-i", "talker", "cat"], b"to exec\n");
    assert_eq!(back, b"to exec\n");

    // events: the container's start and die, between two times.
    p1.run(&["run", "--rm", "--name", "eventful", BUSYBOX, "true"]);
    let until = unix_now() + 1;
    let events = p1.run(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "container=eventful",
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = events.lines().collect();
    for action in ["create", "start", "die", "destroy"] {
        assert!(actions.contains(&action), "docker events lack {action}: {actions:?}");
    }

    // build: a Dockerfile with RUN and a COPY of a context file, and the image runs (and joins the mesh).
    let context = site.dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("hello.txt"), "copied from the build context\n").unwrap();
    fs::write(
        context.join("Dockerfile"),
        format!("FROM {BUSYBOX}\nRUN echo built by RUN > /built\nCOPY hello.txt /hello.txt\nCMD [\"cat\", \"/built\", \"/hello.txt\"]\n"),
    )
    .unwrap();
    p2.run(&["build", "-q", "-t", "weft-built:latest", path_str(&context)]);
    let out = p2.run(&["run", "--rm", "weft-built:latest"]);
    assert_eq!(out, "built by RUN\ncopied from the build context\n");
    let shown = p2.run(&[
        "run",
        "--rm",
        "weft-built:latest",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "ethwe",
    ]);
    assert_eq!(
        inet(&shown).len(),
        1,
        "the built image's container is attached: {shown}"
    );

    // 7. A proxy whose daemon is not there answers as the CLI would say of a missing daemon.
    let lost = site.dir.path().join("lost-proxy.sock");
    let missing = format!("unix://{}", site.dir.path().join("no-dockerd.sock").display());
    let mut lost_proxy = spawn_proxy(
        tb.host(1),
        &lost,
        &missing,
        &site.api_socket(1),
        &site.dir.path().join("lost-weft-wait"),
        &site.dir.path().join("lost-proxy.log"),
        &[],
    );
    // Only once the proxy accepts: the CLI says the same of a socket nobody listens on.
    wait_until(START, "the proxy without a daemon to listen", || {
        lost_proxy.assert_running();
        UnixStream::connect(&lost).is_ok()
    })
    .unwrap();
    let lost_cli = Docker::new(&lost, &site.docker_config);
    let out = lost_cli.output_of(&["ps"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "docker ps through a proxy without a daemon must fail"
    );
    assert!(stderr.contains("Cannot connect to the Docker daemon"), "{stderr}");
    drop(lost_proxy);

    // A stopped router is named in the error, and a started one serves again; a container removed while
    // it was down has its address released once it is back (reconciliation), one still there keeps it.
    p1.run(&["run", "-d", "--name", "gone", BUSYBOX, "sleep", "600"]);
    p1.run(&["run", "-d", "--name", "stays", BUSYBOX, "sleep", "600"]);
    let (gone, stays) = (p1.id("gone"), p1.id("stays"));
    assert_eq!(
        site.allocated(1, &gone).len(),
        1,
        "the container to remove has its address"
    );
    let kept = site.allocated(1, &stays);
    assert_eq!(kept.len(), 1, "the container that stays has its address");
    site.routers[0].kill();
    p1.run(&["rm", "-f", "gone"]);
    let out = p1.output_of(&["run", "--rm", BUSYBOX, "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "docker run with router 1 stopped must fail");
    assert!(
        stderr.contains("Error response from daemon") && stderr.contains("weft router"),
        "{stderr}"
    );
    site.routers[0].start();
    wait_until(SETTLE, "router 1 to serve the proxy again", || {
        p1.output(&["run", "--rm", BUSYBOX, "true"]).is_ok()
    })
    .unwrap();
    site.wait_released(1, &gone);
    assert_eq!(
        site.allocated(1, &stays),
        kept,
        "a container that still exists keeps its address"
    );
    p1.run(&["rm", "-f", "stays"]);
    site.wait_released(1, &stays);
}

/// The testbed, if everything the tests need is here.
fn testbed() -> Option<Testbed> {
    let needed = ["dockerd", "docker", "busybox", "nsenter", "timeout", "tar"];
    if let Some(reason) = needed.iter().find_map(|program| missing_program(program)) {
        skip_or_fail(&reason);
        return None;
    }
    Testbed::for_test(2)
}

/// Two hosts, each with a dockerd and a router, a proxy on each (standalone on host 1, in the router on
/// host 2), and both images loaded. Fields drop in order: proxy, routers, daemons (which remove their
/// containers, mounts and cgroups first), directories.
struct Site<'t> {
    tb: &'t Testbed,
    /// `weft-proxy` on host 1.
    proxy: Option<Daemon>,
    routers: [Router<'t>; 2],
    /// Only their sockets are used: the CLIs below talk to them.
    _daemons: [Dockerd; 2],
    /// The CLI through each host's proxy.
    proxied: [Docker; 2],
    /// The CLI straight to each host's daemon.
    direct: [Docker; 2],
    proxy_sockets: [PathBuf; 2],
    docker_config: PathBuf,
    /// The daemons' data and exec roots.
    _docker_dir: TempDir,
    /// Sockets, logs, router data, images' sources.
    dir: TempDir,
}

impl<'t> Site<'t> {
    fn new(tb: &'t Testbed) -> Self {
        let dir = workdir();
        let docker_dir = tempfile::Builder::new()
            .prefix("weft-docker-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let docker_config = dir.path().join("docker-config");
        fs::create_dir_all(&docker_config).unwrap();
        let mut daemons = [1, 2].map(|i| Dockerd::start(tb.host(i), docker_dir.path(), &docker_config));
        for daemon in &mut daemons {
            daemon.wait_ready();
        }
        let direct = [daemons[0].cli.clone(), daemons[1].cli.clone()];
        let busybox = rootfs_tar(dir.path(), "busybox", &[], &[]);
        let scratch = dir.path().join("scratch");
        fs::create_dir_all(&scratch).unwrap();
        fs::copy(static_busybox(), scratch.join("busybox")).unwrap();
        fs::write(scratch.join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\n").unwrap();
        for docker in &direct {
            docker.run(&["import", "-c", r#"CMD ["/bin/sh"]"#, path_str(&busybox), BUSYBOX]);
            docker.run(&["build", "-q", "-t", SCRATCH, path_str(&scratch)]);
        }

        let proxy_sockets = [1, 2].map(|i| dir.path().join(format!("h{i}-proxy.sock")));
        let docker_host_2 = format!("unix://{}", daemons[1].socket.display());
        let in_router = [
            "--proxy",
            "--proxy-socket",
            path_str(&proxy_sockets[1]),
            "--docker-host",
            &docker_host_2,
        ];
        let routers = launch_mesh(tb, dir.path(), RANGE, [&[], &in_router]);
        let proxied = [0, 1].map(|i| Docker::new(&proxy_sockets[i], &docker_config));
        let mut site = Self {
            tb,
            proxy: None,
            routers,
            _daemons: daemons,
            proxied,
            direct,
            proxy_sockets,
            docker_config,
            _docker_dir: docker_dir,
            dir,
        };
        site.start_proxy();
        let docker = &site.proxied[1];
        let mut last = String::new();
        let ready = wait_until(START, "the proxy in router 2 to answer", || {
            assert!(!site.routers[1].exited(), "router 2 exited");
            docker.output(&["version"]).map_err(|e| last = e).is_ok()
        });
        if let Err(e) = ready {
            panic!("{e}: {last}");
        }
        site
    }

    /// Starts `weft-proxy` on host 1 (also on loopback TCP port [`TCP_PORT`] in host 1's namespace) and
    /// waits until it answers.
    fn start_proxy(&mut self) {
        assert!(self.proxy.is_none(), "weft-proxy is running already");
        let docker_host = format!("unix://{}", self._daemons[0].socket.display());
        let proxy = spawn_proxy(
            self.tb.host(1),
            &self.proxy_sockets[0],
            &docker_host,
            &self.api_socket(1),
            &self.dir.path().join("h1-weft-wait"),
            &self.dir.path().join("h1-proxy.log"),
            &["--tcp", &format!("127.0.0.1:{TCP_PORT}")],
        );
        let proxy = self.proxy.insert(proxy);
        let docker = &self.proxied[0];
        let mut last = String::new();
        let ready = wait_until(START, "weft-proxy on host 1 to answer", || {
            proxy.assert_running();
            docker.output(&["version"]).map_err(|e| last = e).is_ok()
        });
        if let Err(e) = ready {
            panic!("{e}: {last}");
        }
    }

    fn range(&self) -> Ipv4Net {
        RANGE.parse().unwrap()
    }

    fn api_socket(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("h{host}.sock"))
    }

    /// Router `host`'s allocations for container `id` (ids `docker:ID`).
    fn allocations(&self, host: usize, id: &str) -> Vec<AllocationView> {
        let socket = self.api_socket(host);
        let want = format!("docker:{}", id.trim());
        RouterClient::new(&socket, Instant::now() + Duration::from_secs(10))
            .allocations()
            .unwrap_or_else(|e| panic!("GET /v1/ipam/allocations on {}: {e:?}", socket.display()))
            .into_iter()
            .filter(|a| a.id == want)
            .collect()
    }

    /// The addresses router `host` holds for container `id`.
    fn allocated(&self, host: usize, id: &str) -> Vec<Ipv4Addr> {
        self.allocations(host, id)
            .iter()
            .map(|a| a.address.parse::<Ipv4Net>().unwrap().addr())
            .collect()
    }

    /// Waits until router `host` holds nothing for container `id`.
    #[track_caller]
    fn wait_released(&self, host: usize, id: &str) {
        let mut left = Vec::new();
        let released = wait_until(
            Duration::from_secs(10),
            "the container's address to be released",
            || {
                left = self.allocations(host, id);
                left.is_empty()
            },
        );
        if let Err(e) = released {
            panic!("{e}: router {host} still holds {left:?} for {id}");
        }
    }
}

/// Starts `weft-proxy` in `host`'s namespace (it makes the host ends of the veths where it runs).
fn spawn_proxy(
    host: &Host,
    socket: &Path,
    docker_host: &str,
    api_socket: &Path,
    wait_binary: &Path,
    log: &Path,
    extra: &[&str],
) -> Daemon {
    let mut args = vec![
        "--socket",
        path_str(socket),
        "--docker-host",
        docker_host,
        "--api-socket",
        path_str(api_socket),
        "--wait-binary",
        path_str(wait_binary),
    ];
    args.extend(extra);
    Daemon::start(host, PROXY, &args, log.to_owned())
}

/// A dockerd inside a host's namespace, with its own socket, data and exec roots and cgroup parent. Dropping
/// it removes its containers, stops it, and unmounts and removes what it left.
struct Dockerd {
    daemon: Option<Daemon>,
    root: PathBuf,
    socket: PathBuf,
    cgroup: String,
    cli: Docker,
}

impl Dockerd {
    fn start(host: &Host, dir: &Path, docker_config: &Path) -> Self {
        let name = format!("h{}", host.index());
        let root = dir.join(&name);
        fs::create_dir_all(&root).unwrap();
        let socket = root.join("docker.sock");
        // The namespace name is unique to the testbed, so tests running side by side have cgroups of their own.
        let cgroup = format!("weft-docker-{}", host.name());
        let (data, exec, pidfile) = (root.join("data"), root.join("exec"), root.join("dockerd.pid"));
        let host_arg = format!("unix://{}", socket.display());
        let cgroup_parent = format!("/{cgroup}");
        let daemon = Daemon::start(
            host,
            "dockerd",
            &[
                "-H",
                &host_arg,
                "--data-root",
                path_str(&data),
                "--exec-root",
                path_str(&exec),
                "--pidfile",
                path_str(&pidfile),
                "--cgroup-parent",
                &cgroup_parent,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--storage-driver=overlay2",
                "--log-level=warn",
            ],
            root.join("dockerd.log"),
        );
        Self {
            daemon: Some(daemon),
            cli: Docker::new(&socket, docker_config),
            root,
            socket,
            cgroup,
        }
    }

    fn wait_ready(&mut self) {
        let daemon = self.daemon.as_mut().unwrap();
        let cli = &self.cli;
        wait_until(START, "dockerd to answer", || {
            daemon.assert_running();
            cli.output(&["version"]).is_ok()
        })
        .unwrap();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.cli.output(&["ps", "-a", "-q"])
            && !ids.trim().is_empty()
        {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.split_whitespace());
            if let Err(e) = self.cli.output(&args) {
                eprintln!("cleanup: {e}");
            }
        }
        drop(self.daemon.take());
        unmount_under(&self.root);
        remove_cgroup(&self.cgroup);
    }
}

/// The docker CLI pointed at one socket, with a private configuration directory, the legacy builder, and a
/// time limit per command.
#[derive(Debug, Clone)]
struct Docker {
    host: String,
    config: PathBuf,
    /// The network namespace to run the CLI in, if not this process's.
    netns: Option<PathBuf>,
}

impl Docker {
    fn new(socket: &Path, config: &Path) -> Self {
        Self {
            host: format!("unix://{}", socket.display()),
            config: config.to_owned(),
            netns: None,
        }
    }

    /// The CLI inside `host`'s namespace, to TCP `127.0.0.1:port` there.
    fn over_tcp(host: &Host, port: u16, config: &Path) -> Self {
        Self {
            host: format!("tcp://127.0.0.1:{port}"),
            config: config.to_owned(),
            netns: Some(host.netns_path()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(netns) => nsenter(netns, "timeout"),
            None => Command::new("timeout"),
        };
        cmd.args(["-k", "5", CLI_TIMEOUT, "docker"])
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config)
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<String, String> {
        output(&mut self.cmd(args))
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        run(&mut self.cmd(args))
    }

    /// The command's whole result, whatever its status (stdin empty).
    fn output_of(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs the command with `input` on its stdin (written from a thread, closed at its end) and returns its
    /// stdout; panics on failure.
    #[track_caller]
    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        let written = writer.join().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        written.unwrap_or_else(|e| panic!("docker {args:?}: writing stdin: {e}"));
        out.stdout
    }

    /// The full id of container `name`.
    #[track_caller]
    fn id(&self, name: &str) -> String {
        self.run(&["inspect", "-f", "{{.Id}}", name]).trim().to_owned()
    }

    /// The IPv4 addresses on the running container's `ethwe`, polled briefly: after a restart the proxy
    /// attaches the interface as the container starts.
    #[track_caller]
    fn ethwe(&self, name: &str) -> Vec<Ipv4Net> {
        let mut last = String::new();
        let found = wait_until(Duration::from_secs(10), &format!("{name} to have ethwe"), || match self
            .output(&["exec", name, "ip", "-o", "-4", "addr", "show", "ethwe"])
        {
            Ok(shown) if !inet(&shown).is_empty() => {
                last = shown;
                true
            }
            Ok(shown) => {
                last = shown;
                false
            }
            Err(e) => {
                last = e;
                false
            }
        });
        if let Err(e) = found {
            panic!("{e}: {last}");
        }
        inet(&last)
    }
}

/// The `inet` addresses in `ip -o -4 addr` output.
fn inet(shown: &str) -> Vec<Ipv4Net> {
    shown
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// The interface names in `host`'s namespace.
fn links(host: &Host) -> Vec<String> {
    let shown = host.exec_ok(["ip", "-o", "link", "show"]).unwrap();
    shown
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// `len` bytes that are not all alike (a linear congruential sequence), for stdin.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state.to_be_bytes()[0]
        })
        .collect()
}

/// The MD5 of `data` in hex, as `md5sum` prints it (busybox's, here on the host).
fn md5(data: &[u8]) -> String {
    let mut child = Command::new("busybox")
        .arg("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
