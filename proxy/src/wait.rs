//! The embedded `weft-wait` binary, and installing it where the proxy
//! bind-mounts it from.
//!
//! A container that joins the mesh starts under `weft-wait` (mounted at
//! [`CONTAINER_PATH`]), which holds the container's own entrypoint until a
//! route on `ethwe` appears in the container, then `exec`s it. [`link`]
//! adds that route as its very last step, so the program starts with its mesh
//! interface working. The source is `proxy/wait/weft-wait.rs`; `build.rs`
//! compiles it into a static binary, because the container may have no libc
//! and no dynamic loader.
//!
//! [`link`]: crate::link

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The static `weft-wait` executable (ELF, no program interpreter).
pub const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weft-wait"));

/// Where the proxy bind-mounts [`BINARY`] inside a container.
pub const CONTAINER_PATH: &str = "/.weft/wait";

/// Installs [`BINARY`] at `path` (mode 0755), creating its parent directories.
///
/// If the file there already has exactly these bytes and mode, nothing is
/// written (its mtime and inode stay as they were, so a bind mount of it in a
/// running container keeps working). Otherwise the binary is written to a
/// temporary file in the same directory, synced, and renamed over `path`, so
/// no reader, and no container started concurrently, ever sees a partial file.
///
/// # Errors
/// Any I/O error creating the directories or writing, syncing or renaming the
/// file, with the path involved in the message.
pub fn install(path: &Path) -> io::Result<()> {
    if is_installed(path) {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(with_path("create the directory", dir))?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot install weft-wait at {}: not a file name", path.display()),
        )
    })?;
    // Unique per process and call, so concurrent installs never share a temp file.
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_synced(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(with_path("rename into", path)));
    if written.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(with_path("sync the directory", dir))
}

/// Whether `path` already holds exactly [`BINARY`] with mode 0755.
fn is_installed(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.permissions().mode() & 0o7777 == MODE
        && meta.len() == BINARY.len() as u64
        && fs::read(path).is_ok_and(|bytes| bytes == BINARY)
}

/// Writes [`BINARY`] to the new file `tmp` with mode 0755 and syncs it.
fn write_synced(tmp: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(tmp)
        .map_err(with_path("create", tmp))?;
    file.write_all(BINARY).map_err(with_path("write", tmp))?;
    // The umask may have cleared bits that `mode` asked for.
    file.set_permissions(fs::Permissions::from_mode(MODE))
        .map_err(with_path("set the mode of", tmp))?;
    file.sync_all().map_err(with_path("sync", tmp))
}

fn with_path(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
}

const MODE: u32 = 0o755;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::process::{Child, Command, Output, Stdio};
    use std::time::Duration;

    use super::*;
    use weft_tests::{TestNetns, root_or_skip};

    #[test]
    fn install_writes_once_and_then_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/weft/wait");
        install(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), BINARY);
        let first = fs::metadata(&path).unwrap();
        assert_eq!(first.permissions().mode() & 0o7777, 0o755);

        install(&path).unwrap();
        let second = fs::metadata(&path).unwrap();
        assert_eq!(second.modified().unwrap(), first.modified().unwrap());
        assert_eq!(second.ino(), first.ino(), "the second install replaced the file");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["wait"]);
    }

    #[test]
    fn install_replaces_a_different_file_or_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wait");
        fs::write(&path, b"old").unwrap();
        install(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), BINARY);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        install(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn the_binary_is_a_static_elf_executable() {
        assert_eq!(&BINARY[..4], b"\x7fELF", "not an ELF file");
        assert_eq!(BINARY[4], 2, "not 64-bit");
        assert_eq!(BINARY[5], 1, "not little-endian");
        let u16_at = |at: usize| usize::from(u16::from_le_bytes(BINARY[at..at + 2].try_into().unwrap()));
        let u64_at = |at: usize| u64::from_le_bytes(BINARY[at..at + 8].try_into().unwrap());
        let (phoff, phentsize, phnum) = (usize::try_from(u64_at(0x20)).unwrap(), u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0, "no program headers");
        let types: Vec<u32> = (0..phnum)
            .map(|i| {
                let at = phoff + i * phentsize;
                u32::from_le_bytes(BINARY[at..at + 4].try_into().unwrap())
            })
            .collect();
        assert!(types.contains(&PT_LOAD), "no PT_LOAD: {types:?}");
        assert!(
            !types.contains(&PT_INTERP),
            "weft-wait has a program interpreter, so it is not static"
        );
    }

    #[test]
    fn runs_in_an_empty_chroot() {
        if !root_or_skip() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        install(&root.path().join("wait")).unwrap();
        // No libc, no loader, no /proc: only the binary. Bad usage proves it started.
        let out = Command::new("chroot").arg(root.path()).arg("/wait").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "weft-wait: missing `-- PROGRAM`; usage: weft-wait [--timeout SECS] -- PROGRAM [ARGS...]\n"
        );
    }

    #[test]
    fn waits_for_a_route_on_ethwe_then_runs_the_program() {
        if !root_or_skip() {
            return;
        }
        let ns = TestNetns::new("wtwait");
        let dir = tempfile::tempdir().unwrap();
        let wait = dir.path().join("wait");
        install(&wait).unwrap();

        let mut child = Killed::spawn(
            ns.cmd(&wait)
                .args(["--timeout", "30", "--", "echo", "hi"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        child.assert_waiting("with no ethwe at all");
        // A veth, not a dummy link as it would be elsewhere: this kernel has no dummy driver.
        ns.ip(&["link", "add", "ethwe", "type", "veth", "peer", "name", "peer"]);
        ns.ip(&["link", "set", "peer", "up"]);
        ns.ip(&["link", "set", "ethwe", "up"]);
        child.assert_waiting("with ethwe up but no route on it");
        ns.ip(&["route", "add", "10.99.0.0/16", "dev", "ethwe"]);
        let out = child.output_within(Duration::from_secs(10));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "");

        // Now that the route is there, the program's failures are the shells' codes.
        let missing = ns.cmd(&wait).args(["--", "weft-no-such-program"]).output().unwrap();
        assert_eq!(missing.status.code(), Some(127), "{missing:?}");
        assert!(
            String::from_utf8_lossy(&missing.stderr).starts_with("weft-wait: cannot run weft-no-such-program: "),
            "{missing:?}"
        );
        let not_executable = dir.path().join("data");
        fs::write(&not_executable, b"").unwrap();
        let denied = ns.cmd(&wait).arg("--").arg(&not_executable).output().unwrap();
        assert_eq!(denied.status.code(), Some(126), "{denied:?}");
    }

    #[test]
    fn times_out_with_a_message_when_ethwe_never_appears() {
        if !root_or_skip() {
            return;
        }
        let ns = TestNetns::new("wtwait");
        let dir = tempfile::tempdir().unwrap();
        let wait = dir.path().join("wait");
        install(&wait).unwrap();
        let out = ns
            .cmd(&wait)
            .args(["--timeout", "1", "--", "echo", "hi"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(out.stdout, b"", "the program ran");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "weft-wait: the mesh interface ethwe did not appear within 1 s; is weft-proxy (or weft launch \
             --proxy) running? The container was not attached to the Weft mesh.\n"
        );
    }

    #[test]
    fn bad_usage_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let wait = dir.path().join("wait");
        install(&wait).unwrap();
        for args in [
            &["echo", "hi"][..],
            &["--timeout", "x", "--", "echo"],
            &["--timeout"],
            &["--"],
        ] {
            let out = Command::new(&wait).args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.starts_with("weft-wait: ") && stderr.lines().count() == 1,
                "{stderr}"
            );
        }
    }

    /// A running weft-wait, killed if the test panics before it exits.
    struct Killed(Option<Child>);

    impl Killed {
        fn spawn(cmd: &mut Command) -> Self {
            Self(Some(cmd.spawn().unwrap()))
        }

        fn child(&mut self) -> &mut Child {
            self.0.as_mut().expect("only output_within takes the child")
        }

        /// Checks over a short window that it does not exit: it is waiting.
        fn assert_waiting(&mut self, state: &str) {
            let exited = weft_tests::wait_until(Duration::from_millis(300), "weft-wait to exit", || {
                self.child().try_wait().unwrap().is_some()
            });
            assert!(exited.is_err(), "weft-wait did not wait {state}");
        }

        /// Waits for it to exit and returns its status and output.
        fn output_within(mut self, timeout: Duration) -> Output {
            weft_tests::wait_until(timeout, "weft-wait to run the program", || {
                self.child().try_wait().unwrap().is_some()
            })
            .unwrap();
            let child = self.0.take().expect("only output_within takes the child");
            child.wait_with_output().unwrap()
        }
    }

    impl Drop for Killed {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    const PT_LOAD: u32 = 1;
    const PT_INTERP: u32 = 3;
}
