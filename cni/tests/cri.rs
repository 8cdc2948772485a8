//! The kubelet's path: containerd's CRI plugin (go-cni, libcni 1.1.2) runs `weft-net` chained with the
//! reference `portmap` for a pod sandbox on host 1. RunPodSandbox gives the pod the address router 1
//! allocated, and the pod reaches a pod on host 2 through the mesh; StopPodSandbox (DEL) releases it and
//! removes the veth; RemovePodSandbox sends the second DEL, with an empty `CNI_NETNS` and no
//! `prevResult`, which must succeed.
//!
//! containerd runs inside host 1's namespace (`nsenter --net`) with its root, state, socket, CNI plugin and
//! configuration directories under the test's work directory (`tests/clients/cri/containerd.toml`, filled in
//! per run). Its pause image is a docker-format archive of a busybox-static `sleep` that the test assembles
//! and loads with `ctr images import`, so neither a registry nor docker is needed. The CRI calls are made
//! by `tests/clients/cri/cri.py` (Debian has no crictl), whose stubs `grpc_tools` generates from
//! `tests/clients/cri/runtime.proto`.
//!
//! Needs root, `containerd`, `ctr`, `containerd-shim-runc-v2` and `runc` (Debian packages containerd, runc),
//! the reference plugins in `/usr/lib/cni` (containernetworking-plugins), busybox-static, iptables,
//! `sha256sum`, a Python venv with PyPI's grpcio-tools in `$WEFT_TEST_VENV` (default `/tmp/ct-venv`), and
//! the router binary (`cargo build -p weft-router --bin weft`). What is missing is reported by
//! `weft_tests::skip_or_fail`: a skip locally, a failure under CI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    DirectPod, NETWORK, REFERENCE_PLUGINS, WEFT_NET, allocated_ip, allocations, launch_mesh, link_plugin, nat_rules,
    pings, socket, weft_veths, write_weft_conflist,
};
use serde_json::{Value, json};
use weft_tests::router::workdir;
use weft_tests::runtime::{Daemon, SETTLE, nsenter, output, remove_cgroup, rootfs_tar, run, unmount_under};
use weft_tests::{Host, Testbed, skip_or_fail, wait_until};

const RANGE: &str = "10.48.0.0/16";
const PAUSE_IMAGE: &str = "docker.io/library/weft-pause:latest";
const HOST_PORT: u16 = 18081;

#[test]
fn cri_pod_sandbox_gets_its_address_reaches_host_2_and_is_torn_down() {
    let needed = [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "nsenter",
        "busybox",
        "tar",
        "sha256sum",
        "iptables",
    ];
    if let Some(reason) = common::missing(&needed) {
        skip_or_fail(&reason);
        return;
    }
    let Some(python) = cri_python() else { return };
    let Some(tb) = Testbed::for_test(2) else { return };
    let dir = workdir();
    let _routers = launch_mesh(&tb, dir.path(), RANGE);
    let (sock1, sock2) = (socket(dir.path(), 1), socket(dir.path(), 2));
    let remote = DirectPod::add(&tb, tb.host(2), dir.path(), &sock2);
    let cri = Cri::start(tb.host(1), &dir.path().join("cri"), &sock1, python);

    let id = cri.call(&["run", "weft-cri-pod", "--port", &format!("{HOST_PORT}:80")])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = cri.call(&["status", &id]);
    assert_eq!(status["state"], "SANDBOX_READY", "{status}");
    // go-cni's CNI_CONTAINERID is the sandbox id: router 1 holds the address CRI reports for the pod.
    let ip = status["ip"].as_str().unwrap().to_owned();
    assert_eq!(
        allocated_ip(&sock1, NETWORK, &id).as_deref(),
        Some(ip.as_str()),
        "CRI's pod address is router 1's allocation for {id}: {:?}",
        allocations(&sock1, NETWORK)
    );
    let netns = PathBuf::from(status["netns"].as_str().unwrap());
    assert!(netns.exists(), "the sandbox's network namespace {}", netns.display());
    let eth0 = run(nsenter(&netns, "ip").args(["-4", "-o", "addr", "show", "eth0"]));
    assert!(eth0.contains(&format!(" {ip}/32 ")), "eth0 lacks {ip}/32: {eth0}");
    wait_until(SETTLE, &format!("the CRI pod to ping {} on host 2", remote.ip), || {
        pings(&netns, &remote.ip)
    })
    .unwrap();
    assert!(pings(&remote.path(), &ip), "the pod on host 2 pings the CRI pod");
    // The sandbox's port mapping went through as runtimeConfig.portMappings (containerd's capitalized
    // spelling): portmap, after weft-net, made a DNAT for the pod's address.
    let nat = nat_rules(tb.host(1));
    assert!(
        nat.contains("CNI-HOSTPORT-DNAT") && nat.contains(&format!("--dport {HOST_PORT}")) && nat.contains(&ip),
        "{nat}"
    );
    assert_eq!(weft_veths(tb.host(1)).len(), 1, "one weft veth for the pod");

    // StopPodSandbox: DEL with the netns and prevResult.
    cri.call(&["stop", &id]);
    assert_eq!(allocations(&sock1, NETWORK), [], "StopPodSandbox released the address");
    assert_eq!(weft_veths(tb.host(1)), Vec::<String>::new(), "and removed the veth");
    // RemovePodSandbox: the second DEL, with CNI_NETNS empty and no prevResult, succeeded.
    cri.call(&["rm", &id]);
    assert_eq!(cri.call(&["ls"]), json!([]));
    let log = fs::read_to_string(cri.dir.join("cni.log")).unwrap();
    let del_without_netns = deletes_without_netns(&log, &id);
    assert_eq!(
        del_without_netns.len(),
        1,
        "one DEL without a netns for {id} in:\n{log}"
    );
    assert!(del_without_netns[0].1, "the DEL without a netns succeeded:\n{log}");
    assert_eq!(allocations(&sock1, NETWORK), []);
    assert_eq!(allocations(&sock2, NETWORK), []);
    assert_eq!(weft_veths(tb.host(1)), Vec::<String>::new());
    assert!(
        !nat_rules(tb.host(1)).contains(&format!("{ip}/32")),
        "portmap's DEL ran too"
    );
}

/// From `weft-net`'s log: for each DEL of `container` with no `CNI_NETNS` (`netns=-`), whether it ended
/// with `ok`.
fn deletes_without_netns(log: &str, container: &str) -> Vec<(String, bool)> {
    let start = format!(" DEL container={container} ");
    log.lines()
        .filter(|line| line.contains(&start) && line.contains(" netns=- "))
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|who| {
            let ok = log
                .lines()
                .any(|line| line.split_whitespace().nth(1) == Some(who) && line.contains(" ok in "));
            (who.to_owned(), ok)
        })
        .collect()
}

/// The venv's Python, if it has grpcio-tools; otherwise `None` after `skip_or_fail`.
fn cri_python() -> Option<PathBuf> {
    let venv = std::env::var_os("WEFT_TEST_VENV").map_or_else(|| PathBuf::from("/tmp/ct-venv"), PathBuf::from);
    let python = venv.join("bin/python3");
    let works = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
        .is_ok_and(|out| out.status.success());
    if works {
        Some(python)
    } else {
        skip_or_fail(&format!(
            "{} cannot import grpc and grpc_tools (python3 -m venv {0} && {0}/bin/pip install grpcio-tools)",
            venv.display()
        ));
        None
    }
}

/// containerd with its CRI plugin in a host's namespace, everything of it under `dir`. Dropping it
/// removes the sandboxes, stops containerd and its shims, and unmounts what is left under `dir`.
struct Cri {
    dir: PathBuf,
    socket: PathBuf,
    python: PathBuf,
    cgroup_parent: String,
    daemon: Option<Daemon>,
    made_dirs: Vec<PathBuf>,
}

/// Where containerd 1.6's shims put their sockets, whatever containerd's configuration says (parent first).
const SHIM_DIRS: [&str; 2] = ["/run/containerd", "/run/containerd/s"];

impl Cri {
    fn start(host: &Host, dir: &Path, router_socket: &Path, python: PathBuf) -> Self {
        let (bin, conf) = (dir.join("cni-bin"), dir.join("net.d"));
        fs::create_dir_all(&conf).unwrap();
        // go-cni takes one plugin directory: weft-net and the reference plugins it chains, and `loopback`,
        // which the CRI plugin runs for every sandbox's lo.
        link_plugin(&bin, "weft-net", Path::new(WEFT_NET));
        for plugin in ["portmap", "loopback"] {
            link_plugin(&bin, plugin, &Path::new(REFERENCE_PLUGINS).join(plugin));
        }
        write_weft_conflist(&conf, router_socket, dir);
        let socket = dir.join("containerd.sock");
        let text = |path: &Path| path.to_str().expect("test paths are UTF-8").to_owned();
        let config = include_str!("../../tests/clients/cri/containerd.toml")
            .replace("@ROOT@", &text(&dir.join("root")))
            .replace("@STATE@", &text(&dir.join("state")))
            .replace("@SOCKET@", &text(&socket))
            .replace("@CNI_BIN@", &text(&bin))
            .replace("@CNI_CONF@", &text(&conf));
        let config_path = dir.join("containerd.toml");
        fs::write(&config_path, config).unwrap();
        // The shims put their sockets in /run/containerd/s whatever the configuration says; the directories
        // this run creates there are removed again.
        let made_dirs = SHIM_DIRS
            .iter()
            .filter(|d| !Path::new(d).exists())
            .map(PathBuf::from)
            .collect();
        let daemon = Daemon::start(
            host,
            "containerd",
            &["--config", &text(&config_path)],
            dir.join("containerd.log"),
        );
        let mut cri = Self {
            dir: dir.to_owned(),
            socket,
            python,
            cgroup_parent: format!("/weft-cri-{}", std::process::id()),
            daemon: Some(daemon),
            made_dirs,
        };
        let mut last = String::new();
        let up = wait_until(Duration::from_secs(30), "containerd's CRI to answer", || {
            cri.daemon.as_mut().unwrap().assert_running();
            cri.try_call(&["version"]).map_err(|e| last = e).is_ok()
        });
        assert!(up.is_ok(), "containerd's CRI did not answer within 30 s: {last}");
        cri.load_pause_image();
        cri
    }

    /// Assembles a docker-format archive (manifest.json, config, one layer) of busybox `sleep` as the pause
    /// process, and imports it into the CRI plugin's namespace `k8s.io`.
    fn load_pause_image(&self) {
        let work = self.dir.join("pause");
        fs::create_dir_all(&work).unwrap();
        let layer = rootfs_tar(&work, "layer", &["sleep"], &[]);
        let diff_id = sha256(&layer);
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        })
        .to_string();
        let config_file = work.join("config.json");
        fs::write(&config_file, &config).unwrap();
        let config_name = format!("{}.json", sha256(&config_file));
        fs::rename(&config_file, work.join(&config_name)).unwrap();
        let manifest = json!([{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]);
        fs::write(work.join("manifest.json"), manifest.to_string()).unwrap();
        let archive = self.dir.join("pause.tar");
        run(Command::new("tar").arg("-C").arg(&work).arg("-cf").arg(&archive).args([
            "manifest.json",
            &config_name,
            "layer.tar",
        ]));
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive));
        // The CRI plugin learns of the image from containerd's events.
        wait_until(
            Duration::from_secs(10),
            "the CRI plugin to know the pause image",
            || {
                self.try_call(&["image", PAUSE_IMAGE])
                    .is_ok_and(|image| image["id"].as_str().is_some_and(|id| !id.is_empty()))
            },
        )
        .unwrap();
    }

    fn try_call(&self, args: &[&str]) -> Result<Value, String> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/cri/cri.py"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--gen")
            .arg(self.dir.join("gen"))
            .args(&args[..1]);
        if args[0] == "run" {
            cmd.args(["--cgroup-parent", &self.cgroup_parent])
                .arg("--log-dir")
                .arg(self.dir.join("logs"));
        }
        cmd.args(&args[1..]);
        let out = output(&mut cmd)?;
        serde_json::from_str(&out).map_err(|e| format!("cri.py {args:?} printed {out:?}: {e}"))
    }

    #[track_caller]
    fn call(&self, args: &[&str]) -> Value {
        self.try_call(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        if let Ok(Value::Array(sandboxes)) = self.try_call(&["ls"]) {
            for id in sandboxes.iter().filter_map(|s| s["id"].as_str()) {
                for op in ["stop", "rm"] {
                    if let Err(e) = self.try_call(&[op, id]) {
                        eprintln!("cleanup: {e}");
                    }
                }
            }
        }
        drop(self.daemon.take());
        // Shims outlive containerd by design; theirs name its socket.
        for pid in shims_of(&self.socket) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        remove_cgroup(self.cgroup_parent.trim_start_matches('/'));
        unmount_under(&self.dir);
        // Only if empty: another containerd may have started to use them meanwhile.
        for made in self.made_dirs.iter().rev() {
            let _ = fs::remove_dir(made);
        }
    }
}

/// The pids of `containerd-shim-runc-v2` processes started by the containerd at `socket`.
fn shims_of(socket: &Path) -> Vec<String> {
    let socket = socket.to_string_lossy();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|entry| {
            fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("containerd-shim") && cmdline.split('\0').any(|arg| arg == socket)
            })
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The hex SHA-256 of a file, by `sha256sum`.
fn sha256(file: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(file));
    out.split_whitespace().next().unwrap().to_owned()
}
