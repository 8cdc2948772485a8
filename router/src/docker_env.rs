//! `weft env`: shell commands that point the docker CLI at the Docker API
//! proxy, and back (`--restore`), as `weave env` did.
//!
//! `eval $(weft env)` exports `DOCKER_HOST` for the proxy and keeps the
//! previous value in `ORIG_DOCKER_HOST`; running it twice keeps the first
//! original. `eval $(weft env --restore)` puts the original back.

use std::os::unix::net::UnixStream;
use std::path::Path;

/// Why `weft env` prints nothing to evaluate.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Docker API proxy answers at {socket} ({source}); start one with `weft launch --proxy` or `weft-proxy`, \
     or pass --proxy-socket"
)]
pub struct NoProxy {
    socket: String,
    source: std::io::Error,
}

/// The commands for `weft env`: `docker_host` and `orig` are the current
/// `DOCKER_HOST` and `ORIG_DOCKER_HOST`.
///
/// # Errors
/// Nothing answers on `socket` (not checked for `--restore`).
pub fn commands(
    socket: &Path,
    restore: bool,
    docker_host: Option<&str>,
    orig: Option<&str>,
) -> Result<String, NoProxy> {
    let proxy = format!("unix://{}", socket.display());
    if restore {
        return Ok(match orig.filter(|o| !o.is_empty()) {
            Some(orig) => format!("export DOCKER_HOST={}; unset ORIG_DOCKER_HOST", quote(orig)),
            None => "unset DOCKER_HOST ORIG_DOCKER_HOST".to_owned(),
        });
    }
    UnixStream::connect(socket).map_err(|source| NoProxy {
        socket: socket.display().to_string(),
        source,
    })?;
    // Already pointed at the proxy: keep the original that was saved then.
    let orig = if docker_host == Some(proxy.as_str()) {
        orig.unwrap_or("")
    } else {
        docker_host.unwrap_or("")
    };
    Ok(format!(
        "export DOCKER_HOST={} ORIG_DOCKER_HOST={}",
        quote(&proxy),
        quote(orig)
    ))
}

/// `s` as one shell word.
fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/:._-=@,+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn exports_and_remembers_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let err = commands(&socket, false, None, None).unwrap_err().to_string();
        assert!(err.contains("weft launch --proxy"), "{err}");
        let _listener = UnixListener::bind(&socket).unwrap();
        let proxy = format!("unix://{}", socket.display());
        assert_eq!(
            commands(&socket, false, None, None).unwrap(),
            format!("export DOCKER_HOST={proxy} ORIG_DOCKER_HOST=''")
        );
        assert_eq!(
            commands(&socket, false, Some("tcp://10.0.0.1:2375"), None).unwrap(),
            format!("export DOCKER_HOST={proxy} ORIG_DOCKER_HOST=tcp://10.0.0.1:2375")
        );
        // A second eval keeps the first original.
        assert_eq!(
            commands(&socket, false, Some(&proxy), Some("unix:///var/run/docker.sock")).unwrap(),
            format!("export DOCKER_HOST={proxy} ORIG_DOCKER_HOST=unix:///var/run/docker.sock")
        );
    }

    #[test]
    fn restores() {
        let nowhere = Path::new("/nonexistent/docker.sock");
        assert_eq!(
            commands(nowhere, true, None, Some("unix:///var/run/docker.sock")).unwrap(),
            "export DOCKER_HOST=unix:///var/run/docker.sock; unset ORIG_DOCKER_HOST"
        );
        assert_eq!(
            commands(nowhere, true, None, Some("")).unwrap(),
            "unset DOCKER_HOST ORIG_DOCKER_HOST"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("unix:///run/weft/docker.sock"), "unix:///run/weft/docker.sock");
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
