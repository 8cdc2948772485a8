//! The API client: one HTTP/1.1 request per connection over the unix socket.
//!
//! Each method mirrors one route, sends typed values and returns typed
//! replies. A request, from connecting to the last byte of the reply, is
//! bounded by [`REQUEST_TIMEOUT`] (longer than the server's own deadline, so
//! a slow router answers with an error rather than a dropped connection).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::http::Method;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::types::{
    AllocateRequest, AllocateResponse, AllocationView, Allocations, ApiError, Health, PeerRequest, PeerStatus, Peers,
    ReclaimView, ReleaseRequest, ReleaseResponse, RingView, RmpeerRequest, Status,
};
use crate::config::{PeerAddr, PeerRef};

/// A client for the router's API socket.
///
/// Cheap to create; holds no connection between requests.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the socket at `path`, with the default [`REQUEST_TIMEOUT`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The same client with another per-request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/healthz`.
    ///
    /// # Errors
    /// [`ClientError`], here and in every other method.
    pub async fn healthz(&self) -> Result<Health, ClientError> {
        self.get("/v1/healthz").await
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/peers`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, ClientError> {
        self.get::<Peers>("/v1/peers").await.map(|p| p.peers)
    }

    /// `GET /v1/ipam`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn ring(&self) -> Result<RingView, ClientError> {
        self.get("/v1/ipam").await
    }

    /// `POST /v1/ipam/allocate`.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Api`] with [`ErrorCode::NoRing`](super::ErrorCode::NoRing)
    /// if the ring still did not exist after the router's wait.
    pub async fn allocate(&self, req: &AllocateRequest) -> Result<AllocateResponse, ClientError> {
        self.post("/v1/ipam/allocate", req).await
    }

    /// `GET /v1/ipam/allocations`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn allocations(&self) -> Result<Vec<AllocationView>, ClientError> {
        self.get::<Allocations>("/v1/ipam/allocations")
            .await
            .map(|a| a.allocations)
    }

    /// `POST /v1/ipam/release`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResponse, ClientError> {
        self.post("/v1/ipam/release", req).await
    }

    /// `POST /v1/connect`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn connect(&self, peer: &PeerAddr) -> Result<(), ClientError> {
        let req = PeerRequest { peer: peer.to_string() };
        self.post_no_reply("/v1/connect", &req).await
    }

    /// `POST /v1/forget`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn forget(&self, peer: &PeerAddr) -> Result<(), ClientError> {
        let req = PeerRequest { peer: peer.to_string() };
        self.post_no_reply("/v1/forget", &req).await
    }

    /// `POST /v1/rmpeer`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn rmpeer(&self, name: &PeerRef) -> Result<ReclaimView, ClientError> {
        let req = RmpeerRequest { name: name.to_string() };
        self.post("/v1/rmpeer", &req).await
    }

    /// `POST /v1/reset`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn reset(&self) -> Result<(), ClientError> {
        self.request(Method::POST, "/v1/reset", Bytes::new()).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.request(Method::GET, path, Bytes::new()).await?;
        decode(&body)
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, req: &impl Serialize) -> Result<T, ClientError> {
        let body = self.request(Method::POST, path, encode(req)?).await?;
        decode(&body)
    }

    async fn post_no_reply(&self, path: &str, req: &impl Serialize) -> Result<(), ClientError> {
        self.request(Method::POST, path, encode(req)?).await.map(drop)
    }

    /// One request on a fresh connection: the reply's body if the status is
    /// a success, else the router's [`ApiError`].
    async fn request(&self, method: Method, uri: &str, body: Bytes) -> Result<Bytes, ClientError> {
        let (status, reply) = tokio::time::timeout(self.timeout, self.exchange(method, uri, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                after: self.timeout,
            })??;
        if status.is_success() {
            return Ok(reply);
        }
        match serde_json::from_slice::<ApiError>(&reply) {
            Ok(err) => Err(ClientError::Api(err)),
            Err(_) => Err(ProtocolError::UnexpectedReply {
                status,
                body: String::from_utf8_lossy(&reply[..reply.len().min(ERROR_EXCERPT)]).into_owned(),
            }
            .into()),
        }
    }

    async fn exchange(&self, method: Method, uri: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                    path: self.path.clone(),
                },
                _ => ClientError::Connect {
                    path: self.path.clone(),
                    source,
                },
            })?;
        let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(ProtocolError::Http)?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, "weft")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(ProtocolError::Request)?;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(ProtocolError::Http)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(ProtocolError::Body)?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        drive(conn, exchange).await
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No router listens on the socket: the file is missing, or nothing accepts on it.
    #[error("no weft router is running (no API socket at {}); start one with `weft launch`", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket exists but could not be connected to (for example, permissions).
    #[error("cannot connect to the weft router's API socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The router refused the request or failed it; the message says why.
    #[error(transparent)]
    Api(ApiError),
    /// No complete reply within the timeout.
    #[error("the weft router at {} did not answer within {} s", path.display(), after.as_secs())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// The reply was not what the API promises.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// The router's reply broke the API contract, or the connection broke mid-request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// HTTP failed (connection closed, malformed reply).
    #[error("HTTP exchange with the weft router failed: {0}")]
    Http(#[source] hyper::Error),
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Request(#[source] hyper::http::Error),
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The reply body could not be read, or is over [`MAX_REPLY_BYTES`].
    #[error("cannot read the weft router's reply: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
    /// A success reply that is not the JSON the route promises.
    #[error("the weft router's reply is not the expected JSON: {0}")]
    Decode(#[source] serde_json::Error),
    /// An error reply without an [`ApiError`] body.
    #[error("the weft router answered {status} without an error body: {body:?}")]
    UnexpectedReply {
        /// The HTTP status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
}

/// Runs `exchange` while driving the connection it uses, without spawning a task.
async fn drive<C, E, T>(conn: C, exchange: E) -> Result<T, ClientError>
where
    C: Future<Output = hyper::Result<()>>,
    E: Future<Output = Result<T, ClientError>>,
{
    tokio::pin!(conn, exchange);
    tokio::select! {
        out = &mut exchange => out,
        closed = &mut conn => match closed {
            Err(e) => Err(ProtocolError::Http(e).into()),
            // The connection ended first; the exchange now finishes (or fails) at once.
            Ok(()) => exchange.await,
        },
    }
}

fn encode(req: &impl Serialize) -> Result<Bytes, ClientError> {
    serde_json::to_vec(req)
        .map(Bytes::from)
        .map_err(|e| ProtocolError::Encode(e).into())
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Decode(e).into())
}

/// The default per-request timeout: longer than the server's 33 s deadline
/// (an allocation may wait 30 s for the ring).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);

/// Largest reply accepted, in bytes: room for a ring of tens of thousands of ranges.
pub const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// How much of an unexpected error body to keep.
const ERROR_EXCERPT: usize = 200;
