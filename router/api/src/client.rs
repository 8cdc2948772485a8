//! The async client (feature `client`): one HTTP/1.1 request per
//! connection over the unix socket, on tokio and hyper.
//!
//! Each method mirrors one route, sends typed values and returns typed
//! replies. A request, from connecting to the last byte of the reply, is
//! bounded by [`REQUEST_TIMEOUT`] (longer than the server's own deadline, so
//! a slow router answers with an error rather than a dropped connection).
//! No task is spawned: the connection is driven by the request's own future.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::http::Method;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::MAX_REPLY_BYTES;
use crate::error::{ClientError, ProtocolError};
use crate::reply::{decode, encode, error_reply};
use crate::types::{
    AllocateRequest, AllocateResponse, AllocationView, Allocations, Health, PeerRequest, PeerStatus, Peers,
    ReclaimView, ReleaseRequest, ReleaseResponse, RingView, RmpeerRequest, Status,
};

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
        self.call(Method::GET, "/v1/healthz", None).await
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// `GET /v1/peers`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, ClientError> {
        let reply: Peers = self.call(Method::GET, "/v1/peers", None).await?;
        Ok(reply.peers)
    }

    /// `GET /v1/ipam`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn ring(&self) -> Result<RingView, ClientError> {
        self.call(Method::GET, "/v1/ipam", None).await
    }

    /// `POST /v1/ipam/allocate`.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Api`] with [`ErrorCode::NoRing`](crate::types::ErrorCode::NoRing)
    /// if the ring still did not exist after the router's wait.
    pub async fn allocate(&self, req: &AllocateRequest) -> Result<AllocateResponse, ClientError> {
        self.call(Method::POST, "/v1/ipam/allocate", Some(&encode(req)?)).await
    }

    /// `GET /v1/ipam/allocations`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn allocations(&self) -> Result<Vec<AllocationView>, ClientError> {
        let reply: Allocations = self.call(Method::GET, "/v1/ipam/allocations", None).await?;
        Ok(reply.allocations)
    }

    /// `POST /v1/ipam/release`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResponse, ClientError> {
        self.call(Method::POST, "/v1/ipam/release", Some(&encode(req)?)).await
    }

    /// `POST /v1/connect`: keep connecting to `peer` (`host[:port]`).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn connect(&self, peer: &str) -> Result<(), ClientError> {
        self.post_peer("/v1/connect", peer).await
    }

    /// `POST /v1/forget`: stop connecting to `peer`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn forget(&self, peer: &str) -> Result<(), ClientError> {
        self.post_peer("/v1/forget", peer).await
    }

    /// `POST /v1/rmpeer`: reclaim the ranges of the dead router `name` (a
    /// peer name or a nickname); `gone` confirms that its host is gone for
    /// good, so its heir may hand out the addresses it held for it.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn rmpeer(&self, name: &str, gone: bool) -> Result<ReclaimView, ClientError> {
        let req = RmpeerRequest {
            name: name.to_owned(),
            gone,
        };
        self.call(Method::POST, "/v1/rmpeer", Some(&encode(&req)?)).await
    }

    /// `POST /v1/reset`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn reset(&self) -> Result<(), ClientError> {
        self.call(Method::POST, "/v1/reset", None).await
    }

    async fn post_peer(&self, route: &str, peer: &str) -> Result<(), ClientError> {
        let req = PeerRequest { peer: peer.to_owned() };
        self.call(Method::POST, route, Some(&encode(&req)?)).await
    }

    /// One request on a fresh connection: the reply decoded as `T` if its
    /// status is a success, else the router's error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let body = Bytes::copy_from_slice(body.unwrap_or_default());
        let (status, reply) = tokio::time::timeout(self.timeout, self.exchange(method, route, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                after: self.timeout,
            })??;
        if status.is_success() {
            decode(&reply)
        } else {
            Err(error_reply(status.as_u16(), &reply))
        }
    }

    async fn exchange(
        &self,
        method: Method,
        route: &str,
        body: Bytes,
    ) -> Result<(hyper::StatusCode, Bytes), ClientError> {
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
            .map_err(http)?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(route)
            .header(HOST, "weft")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(http)?;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        ProtocolError::TooLarge { limit: MAX_REPLY_BYTES }
                    } else {
                        ProtocolError::Http(e)
                    }
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        drive(conn, exchange).await
    }
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
            Err(e) => Err(http(e).into()),
            // The connection ended first; the exchange now finishes (or fails) at once.
            Ok(()) => exchange.await,
        },
    }
}

fn http(e: impl std::error::Error + Send + Sync + 'static) -> ProtocolError {
    ProtocolError::Http(Box::new(e))
}

/// The default per-request timeout: longer than the server's 33 s deadline
/// (an allocation may wait 30 s for the ring).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::{self, Reply};
    use crate::types::ErrorCode;

    #[tokio::test]
    async fn a_reply_is_read_and_decoded() {
        let server = testing::serve_once(Reply::Json(
            200,
            r#"{"allocations":[{"id":"c","iface":"ethwe","address":"10.32.0.5/12","new":1}]}"#,
        ));
        let list = Client::new(server.path()).allocations().await.unwrap();
        assert_eq!(list[0].address, "10.32.0.5/12");
        let request = server.request();
        assert!(
            request.starts_with("GET /v1/ipam/allocations HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_request_body_is_the_typed_request() {
        let server = testing::serve_once(Reply::Json(204, ""));
        Client::new(server.path()).connect("node-2:6783").await.unwrap();
        let request = server.request();
        assert!(request.starts_with("POST /v1/connect HTTP/1.1\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"peer\":\"node-2:6783\"}"), "{request}");
    }

    #[tokio::test]
    async fn an_error_reply_is_the_routers_error() {
        let server = testing::serve_once(Reply::Json(
            409,
            r#"{"error":"no free address is left","code":"exhausted"}"#,
        ));
        let err = Client::new(server.path())
            .allocate(&AllocateRequest::any("c"))
            .await
            .unwrap_err();
        match &err {
            ClientError::Api { status, error } => {
                assert_eq!((*status, &error.code), (409, &ErrorCode::Exhausted));
                assert_eq!(error.error, "no free address is left");
            }
            other => panic!("expected an API error, got {other:?}"),
        }
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn an_error_reply_without_json_is_a_protocol_error() {
        let server = testing::serve_once(Reply::Json(502, "<html>bad gateway</html>"));
        let err = Client::new(server.path()).status().await.unwrap_err();
        match &err {
            ClientError::Protocol(ProtocolError::UnexpectedReply { status, body }) => {
                assert_eq!((*status, body.as_str()), (502, "<html>bad gateway</html>"));
            }
            other => panic!("expected an unexpected reply, got {other:?}"),
        }
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_missing_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = Client::new(&path).status().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::NotRunning { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn a_silent_router_times_out() {
        let server = testing::serve_once(Reply::Never);
        let started = Instant::now();
        let limit = Duration::from_millis(300);
        let err = Client::new(server.path())
            .with_timeout(limit)
            .status()
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout { after, .. } if after == limit),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the timeout bounds the request"
        );
    }
}
