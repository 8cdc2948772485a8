//! The API server: routes, the [`Backend`] they call, and the socket it listens on.
//!
//! The server parses every request body into typed values (an
//! [`AllocKey`], a [`PeerAddr`], ...) before the backend sees it, bounds every
//! request in size and time, and turns every failure into an [`ApiError`]
//! reply in one place, [`ErrorReply`], with the status the API gives its
//! code ([`ErrorCode::http_status`]).

use std::fs::{DirBuilder, Permissions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request as HttpRequest, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use ipam_crdt::{AllocKey, Request};
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};
use weft_api::types::{
    AllocateRequest, AllocateResponse, AllocationView, Allocations, ApiError, ErrorCode, Health, PeerRequest,
    PeerStatus, Peers, ReclaimView, ReleaseRequest, ReleaseResponse, RingView, RmpeerRequest, Status,
};

use super::convert;
use crate::config::{PeerAddr, PeerRef};

/// What the API asks of the router. The daemon implements it; tests use a fake.
///
/// Methods are `async fn`s in the trait, written out as `impl Future + Send`
/// so that the server can run them on any tokio worker; implementations may
/// simply write `async fn status(&self) -> Result<Status, ApiError>`. The
/// trait is therefore not object-safe, and [`serve`] is generic over it.
///
/// Each call is bounded by the server ([`BACKEND_DEADLINE`]): one that takes
/// longer is answered with [`ErrorCode::Timeout`] and its future is dropped,
/// so implementations must be cancel-safe (not hold a half-done change
/// across an `.await`).
pub trait Backend: Send + Sync + 'static {
    /// `GET /v1/status`.
    fn status(&self) -> impl Future<Output = Result<Status, ApiError>> + Send;

    /// `GET /v1/peers`.
    fn peers(&self) -> impl Future<Output = Result<Vec<PeerStatus>, ApiError>> + Send;

    /// `GET /v1/ipam`.
    fn ring(&self) -> impl Future<Output = Result<RingView, ApiError>> + Send;

    /// `POST /v1/ipam/allocate`: an address for `key`, the same one again if it already has one.
    ///
    /// Waits up to [`RING_WAIT`] for the address ring to exist, then fails with
    /// [`ErrorCode::NoRing`] and a message saying what the ring is waiting for
    /// (for example, how many of the `--init-peer-count` routers have met).
    fn allocate(
        &self,
        key: AllocKey,
        request: Request,
    ) -> impl Future<Output = Result<AllocateResponse, ApiError>> + Send;

    /// `GET /v1/ipam/allocations`: this router's allocations, ordered by
    /// container id then interface, without the router's own host address.
    fn allocations(&self) -> impl Future<Output = Result<Vec<AllocationView>, ApiError>> + Send;

    /// `POST /v1/ipam/release`: frees `key`'s address, if it has one. Idempotent.
    fn release(&self, key: AllocKey) -> impl Future<Output = Result<ReleaseResponse, ApiError>> + Send;

    /// `POST /v1/connect`: add `addr` to the addresses the router keeps connecting to.
    fn connect(&self, addr: PeerAddr) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// `POST /v1/forget`: stop connecting to `addr`; [`ErrorCode::NotFound`] if it was never added.
    fn forget(&self, addr: PeerAddr) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// `POST /v1/rmpeer`: start reclaiming a dead router's ranges (`gone`: the
    /// operator confirms its host is gone for good), and report how far that got.
    fn rmpeer(&self, name: PeerRef, gone: bool) -> impl Future<Output = Result<ReclaimView, ApiError>> + Send;

    /// `POST /v1/reset`: stop the router and delete its persisted state, after this reply is sent.
    fn reset(&self) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// the requests in flight and returns.
///
/// Bind the listener with [`bind_socket`]; tests may bind one anywhere.
///
/// # Errors
/// Only if the listener fails for good; a failed request never stops the server.
pub async fn serve<B: Backend>(
    listener: UnixListener,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(backend))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes, for [`serve`] or for driving the API without a socket.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/v1/status", get(status::<B>))
        .route("/v1/peers", get(peers::<B>))
        .route("/v1/ipam", get(ring::<B>))
        .route("/v1/ipam/allocate", post(allocate::<B>))
        .route("/v1/ipam/allocations", get(allocations::<B>))
        .route("/v1/ipam/release", post(release::<B>))
        .route("/v1/connect", post(connect::<B>))
        .route("/v1/forget", post(forget::<B>))
        .route("/v1/rmpeer", post(rmpeer::<B>))
        .route("/v1/reset", post(reset::<B>))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(backend)
}

/// Prepares `path` for the API socket and binds it, mode 0660.
///
/// Creates the parent directory (mode 0755) if it is missing. A socket file
/// already at `path` is removed only if nothing answers on it (a router that
/// crashed leaves one behind); if a router answers, binding is refused, so
/// two routers never share a socket. Any other kind of file is left alone.
///
/// # Errors
/// [`BindError`], naming the path and what to do.
pub async fn bind_socket(path: &Path) -> Result<UnixListener, BindError> {
    let owned = || path.to_path_buf();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| BindError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(BindError::NotASocket { path: owned() }),
        Ok(_) => match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!(path = %path.display(), "removing a stale API socket");
                std::fs::remove_file(path).map_err(|source| BindError::RemoveStale { path: owned(), source })?;
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(Err(source)) => return Err(BindError::Probe { path: owned(), source }),
            // Connected, or the connection hangs (a live listener with a full backlog).
            Ok(Ok(_)) | Err(_) => return Err(BindError::AlreadyRunning { path: owned() }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(BindError::Probe { path: owned(), source }),
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind { path: owned(), source })?;
    std::fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE))
        .map_err(|source| BindError::Permissions { path: owned(), source })?;
    Ok(listener)
}

/// Why the API socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A live router answers on the socket.
    #[error("another weft router is running at {}; stop it first, or pass a different --api-socket", path.display())]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("{} exists and is not a socket; remove it or pass a different --api-socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket's directory could not be created.
    #[error("cannot create the API socket's directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The existing socket could not be checked.
    #[error("cannot check the existing API socket {}: {source}", path.display())]
    Probe {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stale socket could not be removed.
    #[error("cannot remove the stale API socket {}: {source}", path.display())]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Binding failed.
    #[error("cannot listen on the API socket {}: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket's mode could not be set.
    #[error("cannot set the mode of the API socket {}: {source}", path.display())]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// An [`ApiError`] on its way out: the one place errors become replies,
/// with the status of their code ([`ErrorCode::http_status`]).
#[derive(Debug)]
pub struct ErrorReply(pub ApiError);

impl From<ApiError> for ErrorReply {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        let Self(e) = self;
        // The table has only valid statuses; a 500 if that ever breaks.
        let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() && e.code != ErrorCode::NoRing {
            warn!(code = %e.code, error = %e.error, "API request failed");
        } else {
            debug!(code = %e.code, error = %e.error, "API request refused");
        }
        (status, Json(e)).into_response()
    }
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

async fn status<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Status>, ErrorReply> {
    deadline(b.status()).await.map(Json)
}

async fn peers<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Peers>, ErrorReply> {
    deadline(b.peers()).await.map(|peers| Json(Peers { peers }))
}

async fn ring<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<RingView>, ErrorReply> {
    deadline(b.ring()).await.map(Json)
}

async fn allocate<B: Backend>(
    State(b): State<Arc<B>>,
    JsonBody(req): JsonBody<AllocateRequest>,
) -> Result<Json<AllocateResponse>, ErrorReply> {
    let (key, request) = convert::parse_allocate(&req)?;
    deadline(b.allocate(key, request)).await.map(Json)
}

async fn allocations<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Allocations>, ErrorReply> {
    deadline(b.allocations())
        .await
        .map(|allocations| Json(Allocations { allocations }))
}

async fn release<B: Backend>(
    State(b): State<Arc<B>>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<ReleaseResponse>, ErrorReply> {
    let key = convert::parse_release(&req)?;
    deadline(b.release(key)).await.map(Json)
}

async fn connect<B: Backend>(
    State(b): State<Arc<B>>,
    JsonBody(req): JsonBody<PeerRequest>,
) -> Result<StatusCode, ErrorReply> {
    let addr = parse_peer(&req)?;
    deadline(b.connect(addr)).await.map(|()| StatusCode::NO_CONTENT)
}

async fn forget<B: Backend>(
    State(b): State<Arc<B>>,
    JsonBody(req): JsonBody<PeerRequest>,
) -> Result<StatusCode, ErrorReply> {
    let addr = parse_peer(&req)?;
    deadline(b.forget(addr)).await.map(|()| StatusCode::NO_CONTENT)
}

async fn rmpeer<B: Backend>(
    State(b): State<Arc<B>>,
    JsonBody(req): JsonBody<RmpeerRequest>,
) -> Result<Json<ReclaimView>, ErrorReply> {
    let name: PeerRef = req
        .name
        .parse()
        .map_err(|e| ApiError::invalid_request(format!("\"name\": {e}")))?;
    deadline(b.rmpeer(name, req.gone)).await.map(Json)
}

async fn reset<B: Backend>(State(b): State<Arc<B>>) -> Result<StatusCode, ErrorReply> {
    deadline(b.reset()).await.map(|()| StatusCode::NO_CONTENT)
}

async fn no_route(method: Method, uri: Uri) -> ErrorReply {
    ErrorReply(ApiError::not_found(format!(
        "no API route {method} {}; see docs/api.md",
        uri.path()
    )))
}

async fn wrong_method(method: Method, uri: Uri) -> ErrorReply {
    ErrorReply(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {method}; see docs/api.md", uri.path()),
    ))
}

fn parse_peer(req: &PeerRequest) -> Result<PeerAddr, ApiError> {
    req.peer
        .parse()
        .map_err(|e| ApiError::invalid_request(format!("\"peer\": {:?}: {e}", req.peer)))
}

/// Runs a backend call, giving up after [`BACKEND_DEADLINE`].
async fn deadline<T>(call: impl Future<Output = Result<T, ApiError>>) -> Result<T, ErrorReply> {
    let answer = tokio::time::timeout(BACKEND_DEADLINE, call).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the router did not answer within {} s; see its log",
                BACKEND_DEADLINE.as_secs()
            ),
        ))
    });
    answer.map_err(ErrorReply)
}

/// A JSON request body, at most [`MAX_BODY_BYTES`], parsed into `T`; every
/// failure is an [`ApiError`] (no `Content-Type` is required).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ErrorReply;

    async fn from_request(req: HttpRequest, state: &S) -> Result<Self, ErrorReply> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => ApiError::new(
                    ErrorCode::TooLarge,
                    format!("the request body is over the limit of {MAX_BODY_BYTES} bytes"),
                ),
                other => ApiError::invalid_request(format!("cannot read the request body: {other}")),
            })?;
        serde_json::from_slice(&body)
            .map(Self)
            .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")).into())
    }
}

/// Largest request body accepted, in bytes. The largest real request (an
/// allocation with a 256-byte container ID) is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long an allocation waits for the address ring to exist before failing with [`ErrorCode::NoRing`].
pub const RING_WAIT: Duration = Duration::from_secs(30);

/// How long the server waits for any backend call: [`RING_WAIT`] plus room
/// to answer, and less than the client's timeout, so the client gets a reply
/// rather than a dropped connection.
pub const BACKEND_DEADLINE: Duration = Duration::from_secs(33);

/// The API socket's mode: the owner (root) and its group may connect.
pub const SOCKET_MODE: u32 = 0o660;

// The client must outlast the server's deadline to receive its reply.
const _: () = assert!(RING_WAIT.as_secs() < BACKEND_DEADLINE.as_secs());
const _: () = assert!(BACKEND_DEADLINE.as_secs() < weft_api::client::REQUEST_TIMEOUT.as_secs());

/// How long [`bind_socket`] waits for an existing socket to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
