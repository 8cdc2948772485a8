//! What the runtime tests (`podman.rs`, `cri.rs`) share: two meshed routers, a pod on host 2 attached by
//! `weft-net` itself, registry-free busybox images, daemons started inside a host's namespace, and the
//! checks that a runtime left nothing behind.

#![allow(dead_code, reason = "each test binary uses its own part of this module")]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_cni::api::{AllocationView, RouterClient};
use weft_tests::router::{Router, fully_meshed, wait_for, write_secret};
use weft_tests::{Host, InNamespace as _, Testbed, missing_program, wait_until};

/// The CNI network name of the runtime under test.
pub(crate) const NETWORK: &str = "weft";
/// The network of the pod on host 2 that the runtime's pod reaches: another name, so that "nothing of
/// `NETWORK` is allocated" is checked on both routers while that pod still exists.
pub(crate) const REMOTE_NETWORK: &str = "weftremote";
/// The reference plugins (Debian package `containernetworking-plugins`).
pub(crate) const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// How long the mesh, and a pod's first packets through it, may take.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);
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

/// Launches routers on hosts 1 and 2 with pod range `range` and waits until they are meshed, each with its
/// ring, its host address and a data-plane session with the other.
pub(crate) fn launch_mesh<'t>(tb: &'t Testbed, dir: &Path, range: &str) -> [Router<'t>; 2] {
    let secret = write_secret(dir, "secret", "runtime test secret");
    let extra = ["--ipalloc-range", range, "--ipalloc-init", "seed=h1,h2"];
    let routers = [
        Router::launch_with(tb.host(1), dir, &secret, &[], &extra),
        Router::launch_with(tb.host(2), dir, &secret, &[tb.host(1)], &extra),
    ];
    let refs: Vec<&Router<'_>> = routers.iter().collect();
    wait_for(&refs, SETTLE, "two routers meshed, with rings and data planes", |s| {
        fully_meshed(s)
            && s.iter().all(|s| {
                s.ipam.problem.is_none()
                    && s.host_address.is_some()
                    && s.dataplane.as_ref().is_some_and(|d| d.peers == 1)
            })
    });
    routers
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

/// `program` in the network namespace at `netns`, through `nsenter --net` (no new mount namespace).
pub(crate) fn nsenter(netns: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).arg(program);
    cmd
}

/// Runs `cmd`; its stdout, or its command line, status and output.
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// [`output`] that panics on failure.
#[track_caller]
pub(crate) fn run(cmd: &mut Command) -> String {
    output(cmd).unwrap_or_else(|e| panic!("{e}"))
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

/// A static `busybox` on `PATH` (Debian package busybox-static), for images with nothing else in them.
pub(crate) fn static_busybox() -> PathBuf {
    let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("busybox"))
        .find(|file| file.is_file())
        .expect("busybox is on PATH");
    let elf = fs::read(&path).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} is linked dynamically; images need busybox-static",
        path.display()
    );
    path
}

/// Whether a 64-bit little-endian ELF file has a program interpreter (a `PT_INTERP` header): whether it
/// is linked dynamically.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| {
        elf.get(at..at + len).map_or(0, |b| {
            b.iter().rev().fold(0_usize, |n, &byte| (n << 8) | usize::from(byte))
        })
    };
    let (phoff, phentsize, phnum) = (field(0x20, 8), field(0x36, 2), field(0x38, 2));
    (0..phnum).any(|i| field(phoff + i * phentsize, 4) == PT_INTERP as usize)
}

/// A tar of a root filesystem holding a static busybox with a link for each of `applets` (every applet
/// if empty) in `/bin`, `/etc/passwd` and `/etc/group`, and `files` (path, contents).
pub(crate) fn rootfs_tar(dir: &Path, name: &str, applets: &[&str], files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join(format!("rootfs-{name}"));
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    let busybox = static_busybox();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let list;
    let applets: Vec<&str> = if applets.is_empty() {
        list = run(Command::new(&busybox).arg("--list"));
        list.lines().collect()
    } else {
        applets.to_vec()
    };
    for applet in applets.into_iter().filter(|a| *a != "busybox") {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    for (path, contents) in files {
        let file = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, contents).unwrap();
    }
    let tar = dir.join(format!("{name}.tar"));
    run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."));
    tar
}

/// A long-running daemon started with `nsenter --net` into a host's namespace (not `ip netns exec`, whose
/// new mount namespace remounts /sys and hides the cgroups that runtimes need), in its own process group,
/// logging to a file. Dropping it sends SIGTERM, and SIGKILL after 10 s.
pub(crate) struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args` in `host`'s namespace.
    pub(crate) fn start(host: &Host, program: &str, args: &[&str], log: PathBuf) -> Self {
        let file = fs::File::create(&log).unwrap();
        let child = nsenter(&host.netns_path(), program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Self {
            child,
            name: program.to_owned(),
            log,
        }
    }

    /// Panics, with the end of its log, if it has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    /// The last 60 lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}\n-----", self.name, self.log_tail());
        }
        self.signal("TERM");
        let child = &mut self.child;
        if wait_until(Duration::from_secs(10), "the daemon to exit", || {
            !matches!(child.try_wait(), Ok(None))
        })
        .is_err()
        {
            self.signal("KILL");
            let _ = self.child.wait();
        }
    }
}

/// Unmounts everything mounted under `dir` (deepest first): what a runtime that was killed or failed
/// left mounted, so that the directory can be removed.
pub(crate) fn unmount_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.to_string_lossy();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| point.starts_with(&*dir))
        .collect();
    points.sort_unstable_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}

/// The symlink `dir/name` to `target`, for a plugin directory of one's own.
pub(crate) fn link_plugin(dir: &Path, name: &str, target: &Path) {
    fs::create_dir_all(dir).unwrap();
    symlink(target, dir.join(name)).unwrap();
}

/// Kills every process left in the top-level cgroup `name` (in any hierarchy: a runtime's containers and
/// monitors, when the runtime could not remove them), then removes that cgroup and the ones under it.
pub(crate) fn remove_cgroup(name: &str) {
    let inside = || -> Vec<String> {
        let top = format!("/{name}");
        let sub = format!("/{name}/");
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
            .filter(|entry| {
                fs::read_to_string(entry.path().join("cgroup")).is_ok_and(|cgroups| {
                    cgroups
                        .lines()
                        .filter_map(|line| line.splitn(3, ':').nth(2))
                        .any(|path| path == top || path.starts_with(&sub))
                })
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let pids = inside();
    if !pids.is_empty() {
        eprintln!("cleanup: killing {pids:?}, left in cgroup {name}");
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        let _ = wait_until(Duration::from_secs(5), "the cgroup's processes to exit", || {
            inside().is_empty()
        });
    }
    let roots = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|hierarchy| hierarchy.path())
        .chain([PathBuf::from("/sys/fs/cgroup")]);
    for root in roots {
        let mut dirs = Vec::new();
        collect_dirs(&root.join(name), &mut dirs);
        // Children before parents.
        for dir in dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// `dir` and every directory under it, parents before children.
fn collect_dirs(dir: &Path, dirs: &mut Vec<PathBuf>) {
    if !dir.is_dir() || dir.is_symlink() {
        return;
    }
    dirs.push(dir.to_owned());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), dirs);
        }
    }
}
