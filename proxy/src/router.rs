//! The local router's API (docs/api.md): the calls the proxy makes.
//!
//! The proxy depends on the API, not on the router's crate, so that it runs
//! as well beside a router as inside one (`weft launch --proxy`).

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// The router's default API socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";
/// The router answers within 33 s (docs/api.md); a little more.
const TIMEOUT: Duration = Duration::from_secs(35);
/// Largest reply read.
const MAX_REPLY: usize = 16 << 20;

/// A client of the router's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// What the proxy needs from `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The pod range.
    pub range: Ipv4Net,
    /// The MTU of pod interfaces.
    pub mtu: u32,
}

/// One allocation, from `GET /v1/ipam/allocations`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Allocation {
    /// The container id it is for.
    pub id: String,
    /// The interface it is for.
    pub iface: String,
    /// The address, with the pod range's prefix length.
    pub address: String,
}

/// What to ask the router for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Any free address.
    Any,
    /// This address.
    Addr(Ipv4Addr),
    /// Any free address in this subnet.
    Within(Ipv4Net),
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// Nothing answers on the socket.
    #[error(
        "the weft router is not running (nothing answers at {}: {source}); start it with `weft launch`",
        socket.display()
    )]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// Why connecting failed.
        #[source]
        source: io::Error,
    },
    /// The router refused the request; `message` says why.
    #[error("the weft router refused: {message}")]
    Refused {
        /// The API's error `code` (`exhausted`, `out_of_range`, `no_ring`, …).
        code: String,
        /// The API's error message.
        message: String,
        /// The HTTP status.
        status: StatusCode,
    },
    /// The exchange failed, or the reply is not what the API documents.
    #[error("the weft router's API at {} failed: {reason}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("the weft router did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
}

impl RouterError {
    /// Whether trying again later may work (router down, busy, no ring yet).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotRunning { .. } | Self::Timeout => true,
            Self::Refused { status, .. } => status.is_server_error(),
            Self::Protocol { .. } => false,
        }
    }
}

#[derive(Serialize)]
struct AllocateBody<'a> {
    id: &'a str,
    iface: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<String>,
}

#[derive(Serialize)]
struct KeyBody<'a> {
    id: &'a str,
    iface: &'a str,
}

#[derive(Deserialize)]
struct Allocated {
    address: String,
}

#[derive(Deserialize)]
struct Allocations {
    allocations: Vec<Allocation>,
}

#[derive(Deserialize)]
struct Status {
    ipam: StatusIpam,
    #[serde(default)]
    dataplane: Option<StatusDataplane>,
}

#[derive(Deserialize)]
struct StatusIpam {
    range: String,
    #[serde(default)]
    problem: Option<String>,
}

#[derive(Deserialize)]
struct StatusDataplane {
    mtu: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    code: String,
}

impl Client {
    /// A client of the router listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The pod range and MTU; an error while the router cannot allocate
    /// (no ring yet), saying why.
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn network(&self) -> Result<Network, RouterError> {
        let status: Status = self.call(Method::GET, "/v1/status", None).await?;
        if let Some(problem) = status.ipam.problem {
            return Err(RouterError::Refused {
                code: "no_ring".into(),
                message: format!("it cannot give out addresses yet: {problem}"),
                status: StatusCode::SERVICE_UNAVAILABLE,
            });
        }
        let range = status
            .ipam
            .range
            .parse()
            .map_err(|_| self.protocol("the pod range does not parse"))?;
        let mtu = status
            .dataplane
            .map(|d| d.mtu)
            .ok_or_else(|| self.protocol("it runs no data plane"))?;
        Ok(Network { range, mtu })
    }

    /// An address for container `id` on interface `iface`; the same key gets
    /// the same address again.
    ///
    /// # Errors
    /// As [`RouterError`]; `Refused` with code `exhausted`, `in_use`,
    /// `out_of_range`… when the router cannot give what is asked.
    pub async fn allocate(&self, id: &str, iface: &str, want: Want) -> Result<Ipv4Net, RouterError> {
        let (ip, net) = match want {
            Want::Any => (None, None),
            Want::Addr(ip) => (Some(ip.to_string()), None),
            Want::Within(net) => (None, Some(net.to_string())),
        };
        let body = serde_json::to_vec(&AllocateBody { id, iface, ip, net }).expect("plain strings serialize");
        let reply: Allocated = self.call(Method::POST, "/v1/ipam/allocate", Some(body)).await?;
        reply
            .address
            .parse()
            .map_err(|_| self.protocol(&format!("allocated address {:?} does not parse", reply.address)))
    }

    /// Gives the address of `id` on `iface` back (nothing if it has none).
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn release(&self, id: &str, iface: &str) -> Result<(), RouterError> {
        let body = serde_json::to_vec(&KeyBody { id, iface }).expect("plain strings serialize");
        let _: serde_json::Value = self.call(Method::POST, "/v1/ipam/release", Some(body)).await?;
        Ok(())
    }

    /// Every allocation this router holds.
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn allocations(&self) -> Result<Vec<Allocation>, RouterError> {
        let reply: Allocations = self.call(Method::GET, "/v1/ipam/allocations", None).await?;
        Ok(reply.allocations)
    }

    /// Whether a router answers `GET /v1/healthz`.
    ///
    /// # Errors
    /// As [`RouterError`].
    pub async fn health(&self) -> Result<(), RouterError> {
        let _: serde_json::Value = self.call(Method::GET, "/v1/healthz", None).await?;
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RouterError> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| RouterError::Timeout)?
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RouterError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| RouterError::NotRunning {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(&e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "weft")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("method, path and headers are valid by construction");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.protocol(&e.to_string()))?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| self.protocol(&e.to_string()))?
            .to_bytes();
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes).map_err(|e| self.protocol(&format!("{path}: {e}")));
        }
        let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
            error: String::from_utf8_lossy(&bytes).into_owned(),
            code: String::new(),
        });
        Err(RouterError::Refused {
            code: err.code,
            message: err.error,
            status,
        })
    }

    fn protocol(&self, reason: &str) -> RouterError {
        RouterError::Protocol {
            socket: self.socket.clone(),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_router_says_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("weft.sock"));
        let err = client.health().await.unwrap_err();
        assert!(err.is_transient());
        let msg = err.to_string();
        assert!(msg.starts_with("the weft router is not running"), "{msg}");
        assert!(msg.contains("weft launch"), "{msg}");
    }

    #[tokio::test]
    async fn refusals_keep_the_routers_message() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            let body = r#"{"error":"no free address is left","code":"exhausted"}"#;
            let reply = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let err = Client::new(&path)
            .allocate("docker:x", "ethwe", Want::Any)
            .await
            .unwrap_err();
        match &err {
            RouterError::Refused { code, status, .. } => {
                assert_eq!(code, "exhausted");
                assert_eq!(*status, StatusCode::CONFLICT);
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert!(!err.is_transient());
        assert_eq!(err.to_string(), "the weft router refused: no free address is left");
    }
}
