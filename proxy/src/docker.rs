//! The upstream Docker daemon: where it is, connections to it, and the few
//! calls the proxy makes on its own account (inspect, kill, list, events).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

/// How long the proxy's own calls (not the forwarded ones) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply the proxy reads whole (inspect, list).
const MAX_REPLY: usize = 64 << 20;

/// Where the real daemon listens: `unix:///var/run/docker.sock` or
/// `tcp://127.0.0.1:2375` (plain TCP; the proxy does not speak TLS upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port` over plain TCP.
    Tcp(String),
}

impl Default for DockerHost {
    fn default() -> Self {
        Self::Unix(PathBuf::from("/var/run/docker.sock"))
    }
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl FromStr for DockerHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const HOW: &str = "write unix:///PATH (e.g. unix:///var/run/docker.sock) or tcp://HOST:PORT";
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: the socket path must be absolute; {HOW}"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    return Ok(Self::Tcp(addr.to_owned()));
                }
                _ => return Err(format!("{s:?}: give a host and a port; {HOW}")),
            }
        }
        Err(format!("{s:?} is not a Docker host; {HOW}"))
    }
}

/// A connection to the daemon, over either transport.
#[derive(Debug)]
pub enum Upstream {
    /// Over a unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl DockerHost {
    /// Opens a connection.
    ///
    /// # Errors
    /// The daemon is not there (refused, no socket, unreachable).
    pub async fn connect(&self) -> io::Result<Upstream> {
        Ok(match self {
            Self::Unix(path) => Upstream::Unix(UnixStream::connect(path).await?),
            Self::Tcp(addr) => {
                let stream = TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(true)?;
                Upstream::Tcp(stream)
            }
        })
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A failed exchange with the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// No connection: the daemon is not running, or not there.
    #[error("Cannot connect to the Docker daemon at {host}. Is the docker daemon running?")]
    Unreachable {
        /// Where it was looked for.
        host: DockerHost,
        /// Why the connection failed.
        #[source]
        source: io::Error,
    },
    /// The connection broke, or HTTP failed, during the exchange.
    #[error("the Docker daemon at {host} failed during {what}: {source}")]
    Http {
        /// Where the daemon is.
        host: DockerHost,
        /// The request.
        what: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error status.
    #[error("the Docker daemon answered {what} with {status}: {message}")]
    Status {
        /// The request.
        what: String,
        /// Its status.
        status: StatusCode,
        /// The daemon's message.
        message: String,
    },
    /// The reply was not what the Engine API documents.
    #[error("the Docker daemon's reply to {what} is not valid: {reason}")]
    Protocol {
        /// The request.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The daemon did not answer in time.
    #[error("the Docker daemon did not answer {what} within {} s", CALL_TIMEOUT.as_secs())]
    Timeout {
        /// The request.
        what: String,
    },
}

impl DockerError {
    /// Whether the daemon said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// Sends `request` on a new connection to `host`; the connection serves
/// this one exchange (and an upgrade, if the daemon agrees to one).
///
/// # Errors
/// [`DockerError::Unreachable`] or [`DockerError::Http`].
pub async fn send<B>(host: &DockerHost, request: Request<B>) -> Result<Response<Incoming>, DockerError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {}", request.method(), request.uri());
    let http = |source| DockerError::Http {
        host: host.clone(),
        what: what.clone(),
        source,
    };
    let stream = host.connect().await.map_err(|source| DockerError::Unreachable {
        host: host.clone(),
        source,
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    sender.send_request(request).await.map_err(http)
}

/// The proxy's own calls to the daemon.
#[derive(Debug, Clone)]
pub struct Client {
    host: DockerHost,
}

impl Client {
    /// A client of the daemon at `host`.
    pub fn new(host: DockerHost) -> Self {
        Self { host }
    }

    /// Where the daemon is.
    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// `GET /containers/{id}/json`.
    ///
    /// # Errors
    /// As [`DockerError`]; [`DockerError::is_not_found`] when there is no such container.
    pub async fn inspect_container(&self, id: &str) -> Result<Value, DockerError> {
        self.call(Method::GET, &format!("/containers/{}/json", escape_path(id)), None)
            .await
    }

    /// `GET /images/{name}/json`.
    ///
    /// # Errors
    /// As [`DockerError`]; [`DockerError::is_not_found`] when the daemon does not have it.
    pub async fn inspect_image(&self, name: &str) -> Result<Value, DockerError> {
        self.call(Method::GET, &format!("/images/{}/json", escape_path(name)), None)
            .await
    }

    /// `GET /containers/json?all=1`: every container, running or not.
    ///
    /// # Errors
    /// As [`DockerError`].
    pub async fn list_containers(&self) -> Result<Vec<Value>, DockerError> {
        let v = self.call(Method::GET, "/containers/json?all=1", None).await?;
        match v {
            Value::Array(items) => Ok(items),
            _ => Err(DockerError::Protocol {
                what: "GET /containers/json".into(),
                reason: "not a list".into(),
            }),
        }
    }

    /// `POST /containers/{id}/kill`: stops a container that must not run on.
    ///
    /// # Errors
    /// As [`DockerError`].
    pub async fn kill(&self, id: &str) -> Result<(), DockerError> {
        self.call(Method::POST, &format!("/containers/{}/kill", escape_path(id)), None)
            .await
            .map(drop)
    }

    /// `GET /events` for container starts and removals: a stream that lasts
    /// as long as the daemon and the connection do.
    ///
    /// # Errors
    /// As [`DockerError`].
    pub async fn container_events(&self) -> Result<Incoming, DockerError> {
        let filters = r#"{"type":["container"],"event":["start","destroy"]}"#;
        let uri = format!("/events?filters={}", escape(filters));
        let request = request(Method::GET, &uri, None);
        let response = send(&self.host, request).await?;
        if !response.status().is_success() {
            let status = response.status();
            let message = read_body(response.into_body()).await.unwrap_or_default();
            return Err(DockerError::Status {
                what: "GET /events".into(),
                status,
                message: error_message(&message),
            });
        }
        Ok(response.into_body())
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Bytes>) -> Result<Value, DockerError> {
        let what = format!("{method} {}", uri.split('?').next().unwrap_or(uri));
        let exchange = async {
            let response = send(&self.host, request(method, uri, body)).await?;
            let status = response.status();
            let bytes = read_body(response.into_body())
                .await
                .map_err(|reason| DockerError::Protocol {
                    what: what.clone(),
                    reason,
                })?;
            if !status.is_success() {
                return Err(DockerError::Status {
                    what: what.clone(),
                    status,
                    message: error_message(&bytes),
                });
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|e| DockerError::Protocol {
                what: what.clone(),
                reason: e.to_string(),
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| DockerError::Timeout { what: what.clone() })?
    }
}

/// A request as the proxy makes it itself.
fn request(method: Method, uri: &str, body: Option<Bytes>) -> Request<Full<Bytes>> {
    let body = Full::new(body.unwrap_or_default());
    Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "docker")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("method, path and headers are valid by construction")
}

/// An empty body, for replies without one.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// Reads a whole body of at most 64 MiB.
///
/// # Errors
/// The connection broke, or the body is larger.
pub async fn read_body(body: Incoming) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, MAX_REPLY);
    limited
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| e.to_string())
}

/// The `message` of a Docker error body, or the body itself.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// Percent-encodes what may not appear raw in a query value.
fn escape(s: &str) -> String {
    escape_keeping(s, b"-._~:@")
}

/// Percent-encodes what may not appear raw in a path: an image name keeps
/// its slashes (`registry/team/app:1`), as the docker CLI sends it.
fn escape_path(s: &str) -> String {
    escape_keeping(s, b"-._~:@/")
}

fn escape_keeping(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_and_print() {
        let unix: DockerHost = "unix:///var/run/docker.sock".parse().unwrap();
        assert_eq!(unix, DockerHost::Unix("/var/run/docker.sock".into()));
        assert_eq!(unix.to_string(), "unix:///var/run/docker.sock");
        let tcp: DockerHost = "tcp://127.0.0.1:2375".parse().unwrap();
        assert_eq!(tcp.to_string(), "tcp://127.0.0.1:2375");
        for bad in [
            "/var/run/docker.sock",
            "unix://relative",
            "tcp://nohost",
            "tcp://:1",
            "ssh://x",
        ] {
            let e = bad.parse::<DockerHost>().unwrap_err();
            assert!(e.contains("unix:///"), "{bad}: {e}");
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("busybox:latest"), "busybox:latest");
        assert_eq!(escape("reg.io/a/b:1"), "reg.io%2Fa%2Fb:1");
        assert_eq!(escape_path("reg.io/a/b:1"), "reg.io/a/b:1");
        assert_eq!(escape_path("a b?#"), "a%20b%3F%23");
        assert_eq!(escape(r#"{"a":["b"]}"#), "%7B%22a%22:%5B%22b%22%5D%7D");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"message":"No such container: x"}"#),
            "No such container: x"
        );
        assert_eq!(error_message(b"plain text\n"), "plain text");
    }

    #[tokio::test]
    async fn unreachable_daemon_says_what_docker_says() {
        let dir = tempfile::tempdir().unwrap();
        let host = DockerHost::Unix(dir.path().join("absent.sock"));
        let err = Client::new(host.clone()).inspect_container("x").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Cannot connect to the Docker daemon at {host}. Is the docker daemon running?")
        );
    }
}
