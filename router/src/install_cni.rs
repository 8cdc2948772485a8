//! `weft install-cni`: put the CNI plugins and the network configuration on the host.
//!
//! Run by the DaemonSet's init container, whose image holds `weft`,
//! `weft-net` and `weft-ipam` side by side, with the host's `/opt/cni/bin`
//! and `/etc/cni/net.d` mounted under `/host`. Every file is written to a
//! temporary name in its target directory, synced, and renamed over the old
//! one, so the container runtime never runs a half-copied plugin or reads a
//! half-written configuration, and re-running the command (every pod
//! restart) is harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The plugin binaries copied, in order.
pub const PLUGINS: [&str; 2] = ["weft-net", "weft-ipam"];

/// The network configuration's file name: sorts before most others, as the
/// runtime uses the first file in name order.
pub const CONFLIST_NAME: &str = "10-weft.conflist";

/// The network configuration written: weft-net, chained with portmap for `hostPort`.
pub const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-net","apiSocket":"/run/weft/weft.sock"},{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}"#;

/// What [`install`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The plugin binaries, in `bin_dir`.
    pub plugins: Vec<PathBuf>,
    /// The network configuration, in `conf_dir`.
    pub conflist: PathBuf,
}

/// Why the plugins or the configuration could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A plugin binary is not next to `weft`.
    #[error(
        "{} not found: the CNI plugins must be in the same directory as weft ({}); \
         build them with `cargo build -p weft-cni` and ship them in the image",
        path.display(),
        dir.display()
    )]
    MissingPlugin {
        /// Where it was looked for.
        path: PathBuf,
        /// The directory of `weft`.
        dir: PathBuf,
    },
    /// A target directory does not exist (the hostPath mount is missing).
    #[error("{} does not exist or is not a directory; mount the host's directory there (or pass {flag})", dir.display())]
    MissingDir {
        /// The directory.
        dir: PathBuf,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Copies [`PLUGINS`] from `source_dir` into `bin_dir` (mode 0755) and
/// writes [`CONFLIST`] as `conf_dir/`[`CONFLIST_NAME`] (mode 0644), each atomically.
///
/// Every source is checked before anything is written.
///
/// # Errors
/// [`InstallError`]; nothing is half-written in any case.
pub fn install(source_dir: &Path, bin_dir: &Path, conf_dir: &Path) -> Result<Installed, InstallError> {
    for (dir, flag) in [(bin_dir, "--bin-dir"), (conf_dir, "--conf-dir")] {
        if !dir.is_dir() {
            return Err(InstallError::MissingDir {
                dir: dir.to_owned(),
                flag,
            });
        }
    }
    let sources: Vec<PathBuf> = PLUGINS.iter().map(|p| source_dir.join(p)).collect();
    for path in &sources {
        if !path.is_file() {
            return Err(InstallError::MissingPlugin {
                path: path.clone(),
                dir: source_dir.to_owned(),
            });
        }
    }
    let mut plugins = Vec::new();
    for (name, source) in PLUGINS.iter().zip(&sources) {
        let bytes = fs::read(source).map_err(|e| io_error(source, e))?;
        let target = bin_dir.join(name);
        write_atomic(&target, &bytes, 0o755)?;
        plugins.push(target);
    }
    let conflist = conf_dir.join(CONFLIST_NAME);
    write_atomic(&conflist, CONFLIST.as_bytes(), 0o644)?;
    Ok(Installed { plugins, conflist })
}

/// Writes `bytes` to a temporary file beside `target`, syncs it, and renames it over `target`.
fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let name = target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.weft-tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // The mode given to open is masked by the umask; set it exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, target) {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(target, e));
    }
    // Make the rename itself durable.
    if let Some(dir) = target.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))?;
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> InstallError {
    InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let [src, bin, conf] = ["src", "bin", "conf"].map(|d| {
            let p = root.path().join(d);
            fs::create_dir(&p).unwrap();
            p
        });
        (root, src, bin, conf)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn copies_plugins_and_writes_the_conflist() {
        let (_root, src, bin, conf) = dirs();
        fs::write(src.join("weft-net"), b"net v1").unwrap();
        fs::write(src.join("weft-ipam"), b"ipam v1").unwrap();
        // An old plugin is replaced, not appended to.
        fs::write(bin.join("weft-net"), b"old old old old").unwrap();
        let done = install(&src, &bin, &conf).unwrap();
        assert_eq!(done.plugins, [bin.join("weft-net"), bin.join("weft-ipam")]);
        assert_eq!(fs::read(bin.join("weft-net")).unwrap(), b"net v1");
        assert_eq!(fs::read(bin.join("weft-ipam")).unwrap(), b"ipam v1");
        assert_eq!(mode(&bin.join("weft-net")), 0o755);
        assert_eq!(mode(&bin.join("weft-ipam")), 0o755);

        assert_eq!(done.conflist, conf.join("10-weft.conflist"));
        let text = fs::read_to_string(&done.conflist).unwrap();
        assert_eq!(text, CONFLIST);
        assert_eq!(mode(&done.conflist), 0o644);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["name"], "weft");
        assert_eq!(json["plugins"][0]["type"], "weft-net");
        assert_eq!(json["plugins"][0]["apiSocket"], "/run/weft/weft.sock");
        assert_eq!(json["plugins"][1]["type"], "portmap");
        assert_eq!(json["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(json["plugins"][1]["snat"], true);

        // No temporary file is left behind, and running it again is harmless.
        install(&src, &bin, &conf).unwrap();
        for dir in [&bin, &conf] {
            let names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.contains("weft-tmp")), "{names:?}");
        }
    }

    #[test]
    fn missing_plugin_is_reported_and_nothing_is_written() {
        let (_root, src, bin, conf) = dirs();
        fs::write(src.join("weft-net"), b"net").unwrap();
        let err = install(&src, &bin, &conf).unwrap_err();
        assert!(matches!(&err, InstallError::MissingPlugin { path, .. } if path == &src.join("weft-ipam")));
        assert!(err.to_string().contains("weft-ipam not found"), "{err}");
        assert_eq!(fs::read_dir(&bin).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&conf).unwrap().count(), 0);
    }

    #[test]
    fn missing_target_directory_is_reported() {
        let (root, src, _bin, conf) = dirs();
        let err = install(&src, &root.path().join("nope"), &conf).unwrap_err();
        assert!(
            matches!(err, InstallError::MissingDir { flag: "--bin-dir", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--bin-dir"));
    }
}
