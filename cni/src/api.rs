//! A blocking client for the router's local API (HTTP/1.1 and JSON over a
//! unix socket; see `docs/api.md`), sized for a plugin that lives a few
//! milliseconds.
//!
//! Every request opens one connection, sends `Connection: close` and reads to
//! the end. Connecting is bounded by [`CONNECT_TIMEOUT`] and everything,
//! across all requests of one invocation, by the deadline the client was
//! made with, so a router that accepts and never answers cannot hang a
//! runtime.
//!
//! The reply types are the few fields the plugins read, duplicated from
//! `weft_router::api::types` rather than imported: that crate is the whole
//! daemon (tokio's multi-thread runtime, axum, hyper, quinn, rustls), and the
//! plugin should not carry it. Like the router's own client, they tolerate
//! fields they do not know.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{CniError, code};

/// The router's API socket and the deadline of everything asked of it.
#[derive(Debug, Clone)]
pub struct RouterClient {
    path: PathBuf,
    deadline: Instant,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Nothing accepts on the socket, or it is missing.
    #[error("no weft router answers at {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The deadline passed before the reply was complete.
    #[error("the weft router at {path} did not answer in time")]
    Timeout {
        /// The socket.
        path: PathBuf,
    },
    /// The router answered with an error.
    #[error("the weft router refused: {error} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The router's error code (`no_ring`, `exhausted`, ...).
        code: String,
        /// Its message.
        error: String,
    },
    /// The reply was not the HTTP and JSON expected.
    #[error("unexpected reply from the weft router: {0}")]
    Protocol(String),
}

impl RouterError {
    /// Whether waiting and retrying may help: the router is down, slow, starting, or has no ring yet.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Api { status, .. } => matches!(status, 503 | 504),
            Self::Protocol(_) => false,
        }
    }

    /// The CNI error for this failure while doing `what`: 11 when retrying
    /// may help, 101 for a full pod range, 100 for other refusals.
    pub fn into_cni(self, what: &str) -> CniError {
        let code = match &self {
            e if e.is_transient() => code::TRY_AGAIN_LATER,
            Self::Api { code, .. } if code == "exhausted" => code::POOL_EXHAUSTED,
            Self::Protocol(_) => code::DECODING_FAILURE,
            _ => code::ROUTER_REFUSED,
        };
        CniError::new(code, format!("{what}: {self}"))
    }
}

/// `GET /v1/status`, the fields the plugins read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    /// The pod range and whether the ring exists.
    #[serde(default)]
    pub ipam: IpamSummary,
    /// The router's own address on the pod network (`10.32.0.1/12`), if any.
    #[serde(default)]
    pub host_address: Option<String>,
    /// The data plane, if the router runs one.
    #[serde(default)]
    pub dataplane: Option<Dataplane>,
}

/// `Status::ipam`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamSummary {
    /// The pod range.
    #[serde(default)]
    pub range: String,
    /// Why the router cannot allocate (no ring yet, or a refused ring); absent when it can.
    #[serde(default)]
    pub problem: Option<String>,
}

/// `Status::dataplane`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Dataplane {
    /// The pod MTU.
    pub mtu: u32,
}

/// `POST /v1/ipam/allocate` reply.
#[derive(Debug, Clone, Deserialize)]
pub struct Allocated {
    /// The address with the pod range's prefix (`10.32.0.5/12`).
    pub address: String,
    /// Whether this id and interface had it already.
    #[serde(default)]
    pub existing: bool,
}

/// One entry of `GET /v1/ipam/allocations`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AllocationView {
    /// The allocation id.
    pub id: String,
    /// The interface.
    pub iface: String,
    /// The address with the pod range's prefix.
    pub address: String,
}

#[derive(Deserialize)]
struct Allocations {
    allocations: Vec<AllocationView>,
}

#[derive(Deserialize)]
struct Released {
    address: Option<String>,
}

#[derive(Serialize)]
struct KeyBody<'a> {
    id: &'a str,
    iface: &'a str,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    code: String,
}

impl RouterClient {
    /// A client of the socket at `path` whose requests all end by `deadline`.
    pub fn new(path: impl Into<PathBuf>, deadline: Instant) -> Self {
        Self {
            path: path.into(),
            deadline,
        }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// [`RouterError`], here and in every method.
    pub fn status(&self) -> Result<Status, RouterError> {
        self.request("GET", "/v1/status", None)
    }

    /// `POST /v1/ipam/allocate` for `id` on `iface`: idempotent.
    ///
    /// # Errors
    /// [`RouterError`].
    pub fn allocate(&self, id: &str, iface: &str) -> Result<Allocated, RouterError> {
        let body = serde_json::to_vec(&KeyBody { id, iface }).map_err(|e| RouterError::Protocol(e.to_string()))?;
        self.request("POST", "/v1/ipam/allocate", Some(&body))
    }

    /// `POST /v1/ipam/release`: the address released, `None` if there was none.
    ///
    /// # Errors
    /// [`RouterError`].
    pub fn release(&self, id: &str, iface: &str) -> Result<Option<String>, RouterError> {
        let body = serde_json::to_vec(&KeyBody { id, iface }).map_err(|e| RouterError::Protocol(e.to_string()))?;
        self.request::<Released>("POST", "/v1/ipam/release", Some(&body))
            .map(|r| r.address)
    }

    /// `GET /v1/ipam/allocations`.
    ///
    /// # Errors
    /// [`RouterError`].
    pub fn allocations(&self) -> Result<Vec<AllocationView>, RouterError> {
        self.request::<Allocations>("GET", "/v1/ipam/allocations", None)
            .map(|a| a.allocations)
    }

    fn request<T: DeserializeOwned>(&self, method: &str, route: &str, body: Option<&[u8]>) -> Result<T, RouterError> {
        let (status, reply) = self.exchange(method, route, body)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&reply).map_err(|e| RouterError::Protocol(format!("{method} {route}: {e}")));
        }
        let err: ErrorBody = serde_json::from_slice(&reply).unwrap_or(ErrorBody {
            error: String::from_utf8_lossy(&reply).chars().take(200).collect(),
            code: String::new(),
        });
        Err(RouterError::Api {
            status,
            code: err.code,
            error: err.error,
        })
    }

    /// Sends one request and returns the status and the (de-chunked) body.
    fn exchange(&self, method: &str, route: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), RouterError> {
        let timeout = || RouterError::Timeout {
            path: self.path.clone(),
        };
        let remaining = || {
            self.deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
        };
        let unreachable = |source| RouterError::Unreachable {
            path: self.path.clone(),
            source,
        };
        let left = remaining().ok_or_else(timeout)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(unreachable)?;
        let addr = SockAddr::unix(&self.path).map_err(unreachable)?;
        match socket.connect_timeout(&addr, left.min(CONNECT_TIMEOUT)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(timeout()),
            Err(e) => return Err(unreachable(e)),
        }
        let mut stream: UnixStream = socket.into();
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {route} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let io_err = |e: io::Error| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                timeout()
            } else {
                RouterError::Protocol(format!("{method} {route}: {e}"))
            }
        };
        stream
            .set_write_timeout(Some(remaining().ok_or_else(timeout)?))
            .map_err(io_err)?;
        stream.write_all(&request).map_err(io_err)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream
                .set_read_timeout(Some(remaining().ok_or_else(timeout)?))
                .map_err(io_err)?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.len() > MAX_REPLY_BYTES {
                        return Err(RouterError::Protocol(format!(
                            "{method} {route}: the reply is too large"
                        )));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        parse_response(&reply).map_err(|e| RouterError::Protocol(format!("{method} {route}: {e}")))
    }
}

/// Splits an HTTP/1.1 response read to its end into status and body
/// (de-chunked). Public for the fuzz target.
///
/// # Errors
/// Says what is wrong with the reply.
pub fn parse_response(reply: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = find(reply, b"\r\n\r\n").ok_or("the reply has no complete header")?;
    let head = std::str::from_utf8(&reply[..head_end]).map_err(|_| "the reply header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &reply[head_end + 4..];
    if chunked {
        dechunk(body).map(|b| (status, b))
    } else {
        Ok((status, body.to_vec()))
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("a chunk size line is cut")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "a chunk size is not text")?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("a chunk is cut")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk is cut")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How long connecting to the socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest reply read (a big mesh's status is a few hundred KiB).
const MAX_REPLY_BYTES: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    #[test]
    fn plain_and_chunked_replies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x\r\n\":1}\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_slice()), (503, &b"{\"a\":1}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn errors_map_to_cni_codes() {
        let api = |status, code: &str| RouterError::Api {
            status,
            code: code.into(),
            error: "x".into(),
        };
        assert_eq!(api(503, "no_ring").into_cni("allocate").code, code::TRY_AGAIN_LATER);
        assert_eq!(api(504, "timeout").into_cni("allocate").code, code::TRY_AGAIN_LATER);
        assert_eq!(api(409, "exhausted").into_cni("allocate").code, code::POOL_EXHAUSTED);
        assert_eq!(
            api(400, "invalid_request").into_cni("allocate").code,
            code::ROUTER_REFUSED
        );
        let gone = RouterError::Unreachable {
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(gone.into_cni("allocate").code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn missing_socket_is_unreachable_and_a_silent_router_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let missing = RouterClient::new(dir.path().join("none.sock"), Instant::now() + Duration::from_secs(5));
        assert!(matches!(missing.status(), Err(RouterError::Unreachable { .. })));

        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let holder = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            // Reads the request and never answers; returns when the client hangs up.
            let _ = (&conn).take(1 << 20).read_to_end(&mut sink);
        });
        let started = Instant::now();
        let silent = RouterClient::new(&path, started + Duration::from_millis(300));
        let err = silent.status().unwrap_err();
        assert!(matches!(err, RouterError::Timeout { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the deadline bounds the request"
        );
        holder.join().unwrap();
    }

    #[test]
    fn a_reply_is_read_and_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = r#"{"allocations":[{"id":"cni:n:c","iface":"eth0","address":"10.32.0.5/12","new":1}]}"#;
            write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
            request
        });
        let c = RouterClient::new(&path, Instant::now() + Duration::from_secs(5));
        let list = c.allocations().unwrap();
        assert_eq!(list[0].address, "10.32.0.5/12");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v1/ipam/allocations HTTP/1.1\r\n"),
            "{request}"
        );
    }
}
