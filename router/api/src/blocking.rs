//! The blocking client (feature `blocking`): std sockets and no runtime,
//! sized for a program that lives a few milliseconds (the CNI plugins).
//!
//! Every request opens one connection, sends `Connection: close` and reads to
//! the end. Connecting is bounded by [`CONNECT_TIMEOUT`] and everything,
//! across all requests of one client, by the deadline the client was made
//! with, so a router that accepts and never answers cannot hang the caller:
//! it gets [`ClientError::Timeout`] by the deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::MAX_REPLY_BYTES;
use crate::error::{ClientError, ProtocolError};
use crate::reply::{decode, encode, error_reply};
use crate::types::{
    AllocateRequest, AllocateResponse, AllocationView, Allocations, Health, ReleaseRequest, ReleaseResponse, Status,
};

/// The router's API socket and the deadline of everything asked of it.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    deadline: Instant,
    /// From creation to the deadline, for messages.
    budget: Duration,
}

impl Client {
    /// A client of the socket at `path` whose requests all end by `deadline`.
    pub fn new(path: impl Into<PathBuf>, deadline: Instant) -> Self {
        Self {
            path: path.into(),
            deadline,
            budget: deadline.saturating_duration_since(Instant::now()),
        }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/healthz`.
    ///
    /// # Errors
    /// [`ClientError`], here and in every method.
    pub fn healthz(&self) -> Result<Health, ClientError> {
        self.call("GET", "/v1/healthz", &[])
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn status(&self) -> Result<Status, ClientError> {
        self.call("GET", "/v1/status", &[])
    }

    /// `POST /v1/ipam/allocate`: idempotent for one id and interface.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn allocate(&self, req: &AllocateRequest) -> Result<AllocateResponse, ClientError> {
        self.call("POST", "/v1/ipam/allocate", &encode(req)?)
    }

    /// `POST /v1/ipam/release`: idempotent.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResponse, ClientError> {
        self.call("POST", "/v1/ipam/release", &encode(req)?)
    }

    /// `GET /v1/ipam/allocations`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn allocations(&self) -> Result<Vec<AllocationView>, ClientError> {
        self.call::<Allocations>("GET", "/v1/ipam/allocations", &[])
            .map(|a| a.allocations)
    }

    fn call<T: DeserializeOwned>(&self, method: &str, route: &str, body: &[u8]) -> Result<T, ClientError> {
        let (status, reply) = self.exchange(method, route, body)?;
        if (200..300).contains(&status) {
            decode(&reply)
        } else {
            Err(error_reply(status, &reply))
        }
    }

    /// Sends one request and returns the status and the (de-chunked) body.
    fn exchange(&self, method: &str, route: &str, body: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
        let mut stream = self.connect()?;
        let mut request = format!(
            "{method} {route} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream
            .set_write_timeout(Some(self.remaining()?))
            .map_err(|e| self.io(e))?;
        stream.write_all(&request).map_err(|e| self.io(e))?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream
                .set_read_timeout(Some(self.remaining()?))
                .map_err(|e| self.io(e))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.len() > MAX_REPLY_BYTES {
                        return Err(ProtocolError::TooLarge { limit: MAX_REPLY_BYTES }.into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(parse_response(&reply)?)
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        let left = self.remaining()?;
        let refused = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path: self.path.clone(),
            },
            io::ErrorKind::TimedOut => self.timeout(),
            _ => ClientError::Connect {
                path: self.path.clone(),
                source,
            },
        };
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(refused)?;
        let addr = SockAddr::unix(&self.path).map_err(refused)?;
        socket
            .connect_timeout(&addr, left.min(CONNECT_TIMEOUT))
            .map_err(refused)?;
        Ok(socket.into())
    }

    /// The time left before the deadline; [`ClientError::Timeout`] once it passed.
    fn remaining(&self) -> Result<Duration, ClientError> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| self.timeout())
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout {
            path: self.path.clone(),
            after: self.budget,
        }
    }

    /// A failed read or write: the deadline, or a broken connection.
    fn io(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout(),
            _ => ProtocolError::Http(Box::new(e)).into(),
        }
    }
}

/// Splits an HTTP/1.1 response read to its end into status and body
/// (de-chunked). Public for the fuzz target (`fuzz/fuzz_targets/cni_input.rs`).
///
/// # Errors
/// [`ProtocolError::Malformed`], saying what is wrong with the reply.
pub fn parse_response(reply: &[u8]) -> Result<(u16, Vec<u8>), ProtocolError> {
    let malformed = |what: &str| ProtocolError::Malformed(what.to_owned());
    let head_end = find(reply, b"\r\n\r\n").ok_or_else(|| malformed("the reply has no complete header"))?;
    let head = std::str::from_utf8(&reply[..head_end]).map_err(|_| malformed("the reply header is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed(&format!("bad status line {status_line:?}")))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &reply[head_end + 4..];
    if chunked {
        dechunk(body).map(|b| (status, b)).map_err(ProtocolError::Malformed)
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

/// How long connecting to the socket may take (within the deadline).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Reply};
    use crate::types::ErrorCode;

    fn client(path: &Path) -> Client {
        Client::new(path, Instant::now() + Duration::from_secs(5))
    }

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
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err());
    }

    #[test]
    fn a_reply_is_read_and_decoded() {
        let server = testing::serve_once(Reply::Json(
            200,
            r#"{"allocations":[{"id":"cni:n:c","iface":"eth0","address":"10.32.0.5/12","new":1}]}"#,
        ));
        let list = client(server.path()).allocations().unwrap();
        assert_eq!(list[0].address, "10.32.0.5/12");
        let request = server.request();
        assert!(
            request.starts_with("GET /v1/ipam/allocations HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn a_request_body_is_the_typed_request() {
        let server = testing::serve_once(Reply::Json(200, r#"{"address":null}"#));
        let req = ReleaseRequest {
            iface: Some("eth0".into()),
            ..ReleaseRequest::new("cni:n:c")
        };
        assert_eq!(client(server.path()).release(&req).unwrap().address, None);
        let request = server.request();
        assert!(request.starts_with("POST /v1/ipam/release HTTP/1.1\r\n"), "{request}");
        assert!(
            request.ends_with("\r\n\r\n{\"id\":\"cni:n:c\",\"iface\":\"eth0\"}"),
            "{request}"
        );
    }

    #[test]
    fn an_error_reply_is_the_routers_error() {
        let server = testing::serve_once(Reply::Json(
            503,
            r#"{"error":"the address ring does not exist yet","code":"no_ring"}"#,
        ));
        let err = client(server.path()).allocate(&AllocateRequest::any("c")).unwrap_err();
        match &err {
            ClientError::Api { status, error } => {
                assert_eq!((*status, &error.code), (503, &ErrorCode::NoRing));
            }
            other => panic!("expected an API error, got {other:?}"),
        }
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "the address ring does not exist yet");
    }

    #[test]
    fn an_error_reply_without_json_is_a_protocol_error() {
        let server = testing::serve_once(Reply::Json(500, "panicked"));
        let err = client(server.path()).status().unwrap_err();
        match &err {
            ClientError::Protocol(ProtocolError::UnexpectedReply { status, body }) => {
                assert_eq!((*status, body.as_str()), (500, "panicked"));
            }
            other => panic!("expected an unexpected reply, got {other:?}"),
        }
        assert!(!err.is_transient());
    }

    #[test]
    fn a_missing_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = client(&path).status().unwrap_err();
        assert!(
            matches!(&err, ClientError::NotRunning { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.is_transient());
    }

    #[test]
    fn a_silent_router_times_out_by_the_deadline() {
        let server = testing::serve_once(Reply::Never);
        let started = Instant::now();
        let silent = Client::new(server.path(), started + Duration::from_millis(300));
        let err = silent.status().unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(err.is_transient());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the deadline bounds the request"
        );
        // The deadline is for every request of the client: the next fails at once.
        assert!(matches!(silent.status(), Err(ClientError::Timeout { .. })));
    }
}
