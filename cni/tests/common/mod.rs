//! What the CNI runtime tests (`podman.rs`, `cri.rs`) share beyond `weft_tests::runtime`: the weft
//! conflist, a pod on host 2 attached by `weft-net` itself, and the checks that a runtime left nothing
//! behind.

#![allow(dead_code, reason = "each test binary uses its own part of this module")]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_api::blocking::Client as RouterClient;
use weft_api::types::AllocationView;
use weft_tests::router::Router;
use weft_tests::runtime::{self, nsenter, output, run};
use weft_tests::{Host, InNamespace as _, Testbed, missing_program};

/// The CNI network name of the runtime under test.
pub(crate) const NETWORK: &str = "weft";
/// The network of the pod on host 2 that the runtime's pod reaches: another name, so that "nothing of
/// `NETWORK` is allocated" is checked on both routers while that pod still exists.
pub(crate) const REMOTE_NETWORK: &str = "weftremote";
/// The reference plugins (Debian package `containernetworking-plugins`).
pub(crate) const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// `weft-net` as built by cargo for this test.
pub(crate) const WEFT_NET: &str = env!("CARGO_BIN_EXE_weft-net");

/// Why the runtime tests cannot run here (a program or the reference plugins missing), if they cannot.
pub(crate) fn missing(programs: &[&str]) -> Option<String> {
    for program in programs {
        if let Some(reason) = missing_program(program) {
            return Some(reason);
        }
    }
    if !Path::new(REFERENCE_PLUGINS).join("portmap").is_file() {
        return Some("the reference CNI plugins are not installed (apt package containernetworking-plugins)".into());
    }
    None
}

/// Writes `10-weft.conflist` into `conf_dir`: network [`NETWORK`], weft-net on `router_socket` (logging to
/// `log_dir/cni.log`) chained with portmap, as a runtime's CNI configuration would have it.
pub(crate) fn write_weft_conflist(conf_dir: &Path, router_socket: &Path, log_dir: &Path) {
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {"type": "weft-net", "apiSocket": router_socket, "logFile": log_dir.join("cni.log")},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    });
    fs::write(conf_dir.join("10-weft.conflist"), conflist.to_string()).unwrap();
}

/// The API socket of host `index`'s router.
pub(crate) fn socket(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("h{index}.sock"))
}

/// Launches routers on hosts 1 and 2 with pod range `range` and waits until they are meshed.
pub(crate) fn launch_mesh<'t>(tb: &'t Testbed, dir: &Path, range: &str) -> [Router<'t>; 2] {
    runtime::launch_mesh(tb, dir, range, [&[], &[]])
}

/// The router's allocations of CNI network `network` (ids `cni:NETWORK:CONTAINER`).
pub(crate) fn allocations(socket: &Path, network: &str) -> Vec<AllocationView> {
    let prefix = format!("cni:{network}:");
    RouterClient::new(socket, Instant::now() + Duration::from_secs(10))
        .allocations()
        .unwrap_or_else(|e| panic!("GET /v1/ipam/allocations on {}: {e:?}", socket.display()))
        .into_iter()
        .filter(|a| a.id.starts_with(&prefix))
        .collect()
}

/// The address (without its prefix length) the router holds for `container` on `network`.
pub(crate) fn allocated_ip(socket: &Path, network: &str, container: &str) -> Option<String> {
    let id = format!("cni:{network}:{container}");
    allocations(socket, network)
        .into_iter()
        .find(|a| a.id == id)
        .map(|a| a.address.split('/').next().unwrap_or_default().to_owned())
}

/// The `weft*` veths (host ends made by `weft-net`) in `host`'s namespace; the router's TUN device `weft`
/// is not a veth.
pub(crate) fn weft_veths(host: &Host) -> Vec<String> {
    let out = host.exec_ok(["ip", "-o", "link", "show", "type", "veth"]).unwrap();
    out.lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with("weft"))
        .collect()
}

/// `iptables -t nat -S` in `host`'s namespace.
pub(crate) fn nat_rules(host: &Host) -> String {
    host.exec_ok(["iptables", "-t", "nat", "-S"]).unwrap()
}

/// Whether `busybox ping` from the namespace at `from` gets an answer from `to`.
pub(crate) fn pings(from: &Path, to: &str) -> bool {
    output(nsenter(from, "busybox").args(["ping", "-c1", "-W1", to])).is_ok()
}

/// A pod namespace on a host attached by running `weft-net` directly (as any runtime would), on network
/// [`REMOTE_NETWORK`]; DEL and the namespace's removal happen on drop.
pub(crate) struct DirectPod<'t> {
    host: &'t Host,
    netns: String,
    conf: Value,
    /// Its address.
    pub(crate) ip: String,
}

impl<'t> DirectPod<'t> {
    /// Attaches a new namespace `PREFIX-hI-direct` to `host`, whose router's socket is `socket`.
    pub(crate) fn add(tb: &Testbed, host: &'t Host, dir: &Path, socket: &Path) -> Self {
        let netns = format!("{}-h{}-direct", tb.prefix(), host.index());
        run(Command::new("ip").args(["netns", "add", &netns]));
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": REMOTE_NETWORK,
            "type": "weft-net",
            "apiSocket": socket,
            "logFile": dir.join(format!("cni-direct-h{}.log", host.index())),
        });
        let mut pod = Self {
            host,
            netns,
            conf,
            ip: String::new(),
        };
        let result: Value = serde_json::from_str(&pod.plugin("ADD").unwrap()).unwrap();
        let address = result["ips"][0]["address"].as_str().unwrap();
        pod.ip = address.split('/').next().unwrap().to_owned();
        pod
    }

    /// Its namespace's path.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    fn plugin(&self, command: &str) -> Result<String, String> {
        let mut cmd = self.host.cmd(WEFT_NET);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("direct-{}", self.netns))
            .env("CNI_NETNS", self.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", Path::new(WEFT_NET).parent().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.conf.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "weft-net {command}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for DirectPod<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.plugin("DEL") {
            eprintln!("cleanup: {e}");
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}

/// The symlink `dir/name` to `target`, for a plugin directory of one's own.
pub(crate) fn link_plugin(dir: &Path, name: &str, target: &Path) {
    fs::create_dir_all(dir).unwrap();
    symlink(target, dir.join(name)).unwrap();
}
