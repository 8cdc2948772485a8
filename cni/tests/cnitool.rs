//! A real CNI runtime (upstream `cnitool`, libcni 1.1.2) drives `weft-net` chained with the reference
//! `portmap` and `bandwidth` plugins on pods of two hosts, which then reach each other through the mesh.
//!
//! Needs root, `cnitool` (`tests/clients/build-cnitool.sh`, or any build of upstream cnitool on
//! `PATH`), the reference plugins in `/usr/lib/cni` (Debian package `containernetworking-plugins`), `busybox`,
//! iptables (for `portmap`) and the router binary (`cargo build -p weft-router --bin weft`). What is missing
//! is reported by `weft_tests::skip_or_fail`: a skip locally, a failure under CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use weft_tests::router::workdir;
use weft_tests::runtime::launch_mesh;
use weft_tests::{Host, InNamespace as _, Testbed, require_program, skip_or_fail, wait_until};

const RANGE: &str = "10.46.0.0/16";
const NETWORK: &str = "weftmesh";
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

#[test]
fn cnitool_pods_on_two_hosts_ping_each_other_through_the_mesh() {
    require_program!("cnitool");
    require_program!("busybox");
    if !Path::new(REFERENCE_PLUGINS).join("portmap").is_file() {
        skip_or_fail("the reference CNI plugins are not installed (apt package containernetworking-plugins)");
        return;
    }
    let Some(tb) = Testbed::for_test(2) else { return };
    let dir = workdir();
    let routers = launch_mesh(&tb, dir.path(), RANGE, [&[], &[]]);

    // Pod a's conflist chains portmap; pod b's is weft-net alone, so that `cnitool check` can run on it:
    // portmap 1.1.1's CHECK fails on any IPv4-only pod, looking for IPv6 rules it never made
    // (containernetworking/plugins#819).
    let pods = [Pod::add(&tb, &dir, 1, true), Pod::add(&tb, &dir, 2, false)];
    let (a, b) = (&pods[0], &pods[1]);
    assert_ne!(a.ip, b.ip);
    for (from, to) in [(a, b), (b, a)] {
        wait_until(SETTLE, &format!("{} to reach {}", from.ip, to.ip), || from.ping(&to.ip)).unwrap();
    }
    b.cnitool("check")
        .unwrap_or_else(|e| panic!("cnitool check on h2: {e}"));
    // portmap ran after weft-net, with weft-net's result as its prevResult: its DNAT chain names the pod.
    let nat = tb.host(1).exec_ok(["iptables", "-t", "nat", "-S"]).unwrap();
    assert!(nat.contains("CNI-HOSTPORT-DNAT") && nat.contains(&a.ip), "{nat}");
    // bandwidth found weft-net's host veth in its prevResult and shaped the pod's ingress there.
    let qdisc = tb
        .host(1)
        .exec_ok(["tc", "qdisc", "show", "dev", &a.host_veth])
        .unwrap();
    assert!(qdisc.contains("tbf"), "{qdisc}");
    for pod in &pods {
        pod.cnitool("del")
            .unwrap_or_else(|e| panic!("cnitool del on h{}: {e}", pod.host));
    }
    let nat = tb.host(1).exec_ok(["iptables", "-t", "nat", "-S"]).unwrap();
    assert!(!nat.contains(&format!("{}/32", a.ip)), "portmap's DEL ran too: {nat}");
    for router in &routers {
        let out = router.cli(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["ipam"]["allocated"], 0, "DEL released every address");
    }
}

/// A pod namespace on a host, attached by `cnitool add` with the conflist of its host.
struct Pod<'t> {
    host: usize,
    tb: &'t Testbed,
    netns: String,
    confdir: PathBuf,
    ip: String,
    host_veth: String,
}

impl<'t> Pod<'t> {
    fn add(tb: &'t Testbed, dir: &TempDir, host: usize, portmap: bool) -> Self {
        let confdir = dir.path().join(format!("net.d-h{host}"));
        std::fs::create_dir_all(&confdir).unwrap();
        let mut plugins = vec![json!({
            "type": "weft-net",
            "apiSocket": dir.path().join(format!("h{host}.sock")),
            "logFile": dir.path().join(format!("cni-h{host}.log")),
        })];
        if portmap {
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
            plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
        }
        let conflist = json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": plugins});
        std::fs::write(confdir.join("10-weft.conflist"), conflist.to_string()).unwrap();
        let netns = format!("{}-h{host}-cni", tb.prefix());
        let status = Command::new("ip").args(["netns", "add", &netns]).status().unwrap();
        assert!(status.success());
        let mut pod = Self {
            host,
            tb,
            netns,
            confdir,
            ip: String::new(),
            host_veth: String::new(),
        };
        let result: Value = serde_json::from_str(&pod.cnitool("add").unwrap()).unwrap();
        let address = result["ips"][0]["address"].as_str().unwrap();
        pod.ip = address.trim_end_matches("/32").to_owned();
        pod.host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
        pod
    }

    fn host(&self) -> &Host {
        self.tb.host(self.host)
    }

    fn cnitool(&self, command: &str) -> Result<String, String> {
        let plugins = Path::new(env!("CARGO_BIN_EXE_weft-net")).parent().unwrap();
        let out = self
            .host()
            .cmd("cnitool")
            .args([command, NETWORK, &format!("/run/netns/{}", self.netns)])
            .env("NETCONFPATH", &self.confdir)
            .env("CNI_PATH", format!("{}:{REFERENCE_PLUGINS}", plugins.display()))
            .env(
                "CAP_ARGS",
                json!({
                    "portMappings": [{"hostPort": 8080 + self.host, "containerPort": 80, "protocol": "tcp"}],
                    // Pod ingress only: shaped on the host veth, so no ifb device is needed.
                    "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000},
                })
                .to_string(),
            )
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn ping(&self, to: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "busybox", "ping", "-c1", "-W1", to])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        // Best effort when a test failed before its DEL; the namespace goes in any case.
        if std::thread::panicking() {
            let _ = self.cnitool("del");
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}

const SETTLE: Duration = Duration::from_secs(30);
