//! Podman 4 with its CNI backend (libcni 1.1.2) runs `weft-net` chained with the reference `portmap`: a
//! `podman run --network weft -p HOST:CONTAINER` container on host 1 gets the address router 1 allocated,
//! reaches a pod on host 2 through the mesh, is reachable through the mapped port, and `podman rm` leaves
//! no allocation and no veth behind.
//!
//! Podman runs inside host 1's namespace (`nsenter --net`), with a private configuration
//! (`tests/clients/podman/containers.conf`, filled in per run), storage, run root, lock files and CNI
//! configuration directory, all under the test's work directory; the image is a `podman import` of a
//! busybox-static root filesystem, so no registry is needed.
//!
//! Needs root, `podman`, `conmon` and `runc` (Debian packages podman, conmon, runc), the reference plugins in
//! `/usr/lib/cni` (containernetworking-plugins), busybox-static, iptables and the router binary
//! (`cargo build -p weft-router --bin weft`). What is missing is reported by `weft_tests::skip_or_fail`: a
//! skip locally, a failure under CI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    DirectPod, NETWORK, REFERENCE_PLUGINS, REMOTE_NETWORK, WEFT_NET, allocated_ip, allocations, launch_mesh, nat_rules,
    pings, socket, weft_veths, write_weft_conflist,
};
use weft_tests::router::workdir;
use weft_tests::runtime::{SETTLE, nsenter, output, remove_cgroup, rootfs_tar, run, unmount_under};
use weft_tests::{Host, InNamespace as _, Testbed, skip_or_fail, wait_until};

const RANGE: &str = "10.47.0.0/16";
const IMAGE: &str = "localhost/weft-busybox:latest";
const CONTAINER: &str = "weft-podman-test";
const HOST_PORT: u16 = 18080;
const PAGE: &str = "served by a podman container on the weft network\n";

#[test]
fn podman_container_reaches_a_pod_on_another_host_and_leaves_nothing() {
    let needed = ["podman", "conmon", "runc", "nsenter", "busybox", "tar", "iptables"];
    if let Some(reason) = common::missing(&needed) {
        skip_or_fail(&reason);
        return;
    }
    let Some(tb) = Testbed::for_test(2) else { return };
    let dir = workdir();
    let _routers = launch_mesh(&tb, dir.path(), RANGE);
    let (sock1, sock2) = (socket(dir.path(), 1), socket(dir.path(), 2));
    let remote = DirectPod::add(&tb, tb.host(2), dir.path(), &sock2);
    let podman = Podman::new(tb.host(1), &dir.path().join("podman"), &sock1);

    let rootfs = rootfs_tar(dir.path(), "busybox", &[], &[("www/index.html", PAGE)]);
    podman.run(&[
        "import",
        "--quiet",
        "-c",
        r#"CMD ["/bin/sh"]"#,
        path_str(&rootfs),
        IMAGE,
    ]);
    let port = format!("{HOST_PORT}:80");
    let id = podman.run(&[
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--cgroup-parent",
        &podman.cgroup_parent,
        "--network",
        NETWORK,
        "-p",
        &port,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let id = id.trim();

    // Podman's CNI_CONTAINERID is the container's id: router 1 holds the address under it, and it is the
    // address on the container's eth0 and the one podman reports.
    let ip = allocated_ip(&sock1, NETWORK, id)
        .unwrap_or_else(|| panic!("router 1 holds no address for {id}: {:?}", allocations(&sock1, NETWORK)));
    let eth0 = podman.run(&["exec", CONTAINER, "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(eth0.contains(&format!(" {ip}/32 ")), "eth0 lacks {ip}/32: {eth0}");
    let inspected = podman.run(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.weft.IPAddress}}",
        CONTAINER,
    ]);
    assert_eq!(inspected.trim(), ip);
    assert!(
        allocations(&sock2, NETWORK).is_empty(),
        "router 2 allocated nothing for it"
    );

    // Through the mesh, both ways.
    wait_until(
        SETTLE,
        &format!("the container to ping {} on host 2", remote.ip),
        || {
            podman
                .output(&["exec", CONTAINER, "ping", "-c1", "-W1", &remote.ip])
                .is_ok()
        },
    )
    .unwrap();
    assert!(pings(&remote.path(), &ip), "the pod on host 2 pings the container");

    // -p reached portmap as runtimeConfig.portMappings, with weft-net's result as its prevResult: its DNAT
    // names the container's address, and host 2 gets the page through host 1's address.
    let nat = nat_rules(tb.host(1));
    assert!(
        nat.contains("CNI-HOSTPORT-DNAT") && nat.contains(&format!("--dport {HOST_PORT}")) && nat.contains(&ip),
        "{nat}"
    );
    // (busybox-static's wget crashes in a static glibc's resolver, so the request is sent with nc.)
    let get = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {} {HOST_PORT}",
        tb.host(1).underlay_ip()
    );
    let mut reply = String::new();
    let fetched = wait_until(Duration::from_secs(10), "host 2 to fetch the page", || {
        reply = output(tb.host(2).cmd("sh").args(["-c", &get])).unwrap_or_else(|e| e);
        reply.starts_with("HTTP/1.1 200") && reply.ends_with(PAGE)
    });
    assert!(fetched.is_ok(), "{get} on host 2: {reply}");

    // podman rm: DEL ran before it returned, for both plugins.
    podman.run(&["rm", "-f", "-t", "0", CONTAINER]);
    assert_eq!(allocations(&sock1, NETWORK), [], "router 1 released the address");
    assert_eq!(allocations(&sock2, NETWORK), [], "router 2 has nothing either");
    assert_eq!(
        weft_veths(tb.host(1)),
        Vec::<String>::new(),
        "no weft veth is left on host 1"
    );
    let nat = nat_rules(tb.host(1));
    assert!(
        !nat.contains(&format!("{ip}/32")) && !nat.contains(&format!("{ip}:80")),
        "{nat}"
    );
    // The check above looked at the right routers: host 2's own pod is still there.
    assert_eq!(allocations(&sock2, REMOTE_NETWORK).len(), 1);
}

/// Podman with a private configuration, storage and CNI configuration under `dir`, run inside a host's
/// namespace. Dropping it removes every container it made and unmounts what is left under `dir`.
struct Podman<'t> {
    host: &'t Host,
    dir: PathBuf,
    conf: PathBuf,
    storage_conf: PathBuf,
    made_var_lib_containers: bool,
    made_run_runc: bool,
    /// The cgroup of its containers (and of their conmon), instead of the shared `/libpod_parent`.
    cgroup_parent: String,
}

impl<'t> Podman<'t> {
    fn new(host: &'t Host, dir: &Path, router_socket: &Path) -> Self {
        let netconf = dir.join("net.d");
        let tmp = dir.join("tmp");
        for sub in [&netconf, &tmp] {
            fs::create_dir_all(sub).unwrap();
        }
        write_weft_conflist(&netconf, router_socket, dir);
        let plugins = Path::new(WEFT_NET).parent().unwrap();
        let conf = include_str!("../../tests/clients/podman/containers.conf")
            .replace("@TMP@", path_str(&tmp))
            .replace("@CNI_CONF@", path_str(&netconf))
            .replace(
                "@CNI_PLUGIN_DIRS@",
                &format!("{:?}, {REFERENCE_PLUGINS:?}", path_str(plugins)),
            )
            .replace("@NOFILE@", &hard_nofile().to_string());
        let conf_path = dir.join("containers.conf");
        fs::write(&conf_path, conf).unwrap();
        // Its own storage.conf too, so that the machine's (if any) is not read.
        let storage_conf = dir.join("storage.conf");
        fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("root").display(),
                dir.join("runroot").display()
            ),
        )
        .unwrap();
        Self {
            host,
            dir: dir.to_owned(),
            conf: conf_path,
            storage_conf,
            made_var_lib_containers: !Path::new(VAR_LIB_CONTAINERS).exists(),
            made_run_runc: !Path::new("/run/runc").exists(),
            cgroup_parent: format!("/weft-podman-{}", std::process::id()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = nsenter(&self.host.netns_path(), "podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env("TMPDIR", self.dir.join("tmp"))
            // runc's state, else in /run/runc.
            .arg("--runtime-flag")
            .arg(format!("root={}", self.dir.join("runc").display()))
            .args(args);
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<String, String> {
        output(&mut self.cmd(args))
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        run(&mut self.cmd(args))
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.output(&["rm", "-a", "-f", "-t", "0"]) {
            eprintln!("cleanup: {e}");
        }
        remove_cgroup(self.cgroup_parent.trim_start_matches('/'));
        unmount_under(&self.dir);
        // Podman 4.3 makes /run/runc (empty, since runc's root is ours) and keeps a blob cache in /var/lib/containers/cache whatever its configuration says (`podman
        // import` writes it): removed if this test made it.
        if self.made_run_runc {
            let _ = fs::remove_dir("/run/runc");
        }
        if self.made_var_lib_containers {
            let _ = fs::remove_file(Path::new(VAR_LIB_CONTAINERS).join("cache/blob-info-cache-v1.boltdb"));
            let _ = fs::remove_dir(Path::new(VAR_LIB_CONTAINERS).join("cache"));
            let _ = fs::remove_dir(VAR_LIB_CONTAINERS);
        }
    }
}

const VAR_LIB_CONTAINERS: &str = "/var/lib/containers";

/// The hard limit of open files, which the container may not exceed without CAP_SYS_RESOURCE.
fn hard_nofile() -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4))
        .map_or(1024, |hard| hard.parse().unwrap_or(u64::MAX))
        .min(1_048_576)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
