//! A one-request HTTP server on a unix socket, for the clients' tests: it
//! reads one request and answers as told, on a plain thread, so the same
//! server serves the async and the blocking client.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use tempfile::TempDir;

/// What the server answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reply {
    /// This status and body (a 204 gets no `content-length`).
    Json(u16, &'static str),
    /// Nothing: it reads the request and waits for the client to hang up.
    Never,
}

/// A server for one request, on a socket in its own temporary directory.
#[derive(Debug)]
pub(crate) struct Server {
    path: PathBuf,
    thread: JoinHandle<String>,
    _dir: TempDir,
}

impl Server {
    /// The socket.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The request the server received, head and body, once it has answered.
    pub(crate) fn request(self) -> String {
        self.thread.join().expect("the test server panicked")
    }
}

/// Serves one request with `reply`.
pub(crate) fn serve_once(reply: Reply) -> Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("weft.sock");
    let listener = UnixListener::bind(&path).expect("bind the test socket");
    let thread = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let request = read_request(&mut conn);
        match reply {
            Reply::Json(status, body) => {
                let length = if status == 204 {
                    String::new()
                } else {
                    format!("content-length: {}\r\n", body.len())
                };
                write!(
                    conn,
                    "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n{length}\r\n{body}"
                )
                .expect("write the reply");
            }
            Reply::Never => {
                // Returns when the client hangs up.
                let _ = conn.read_to_end(&mut Vec::new());
            }
        }
        request
    });
    Server {
        path,
        thread,
        _dir: dir,
    }
}

/// Reads a request's head and its `content-length` bytes of body.
fn read_request(conn: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text.into_owned();
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}
