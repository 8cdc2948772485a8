//! What tests of container runtimes (podman, containerd, dockerd) share: daemons started inside a host's
//! namespace, registry-free busybox images, two meshed routers, and cleanup of what a runtime leaves behind
//! (mounts, cgroups).

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::router::{Router, fully_meshed, wait_for, write_secret};
use crate::{Host, InNamespace as _, Testbed, wait_until};

/// How long the mesh, and a container's first packets through it, may take.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Launches routers on hosts 1 and 2 with pod range `range` (ring seeded by both), each with its own `extra`
/// `weft launch` options, and waits until they are meshed, each with its ring, its host address and a
/// data-plane session with the other.
///
/// # Panics
/// If they are not meshed within [`SETTLE`].
pub fn launch_mesh<'t>(tb: &'t Testbed, dir: &Path, range: &str, extra: [&[&str]; 2]) -> [Router<'t>; 2] {
    let secret = write_secret(dir, "secret", "runtime test secret");
    let common = ["--ipalloc-range", range, "--ipalloc-init", "seed=h1,h2"];
    let args = |index: usize| -> Vec<&str> { common.iter().chain(extra[index]).copied().collect() };
    let routers = [
        Router::launch_with(tb.host(1), dir, &secret, &[], &args(0)),
        Router::launch_with(tb.host(2), dir, &secret, &[tb.host(1)], &args(1)),
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

/// `program` in the network namespace at `netns`, through `nsenter --net` (no new mount namespace).
pub fn nsenter(netns: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).arg(program);
    cmd
}

/// Runs `cmd`; its stdout, or its command line, status and output.
pub fn output(cmd: &mut Command) -> Result<String, String> {
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
pub fn run(cmd: &mut Command) -> String {
    output(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// A static `busybox` on `PATH` (Debian package busybox-static), for images with nothing else in them.
pub fn static_busybox() -> PathBuf {
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
pub fn rootfs_tar(dir: &Path, name: &str, applets: &[&str], files: &[(&str, &str)]) -> PathBuf {
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
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args` in `host`'s namespace.
    pub fn start(host: &Host, program: &str, args: &[&str], log: PathBuf) -> Self {
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

    /// Its process id (that of the program: `nsenter --net` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics, with the end of its log, if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    /// The last 60 lines of its log.
    pub fn log_tail(&self) -> String {
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
pub fn unmount_under(dir: &Path) {
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

/// Kills every process left in the top-level cgroup `name` (in any hierarchy: a runtime's containers and
/// monitors, when the runtime could not remove them), then removes that cgroup and the ones under it.
pub fn remove_cgroup(name: &str) {
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
