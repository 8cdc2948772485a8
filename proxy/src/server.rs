//! The listeners, the forwarding, and the watch on the daemon's events.
//!
//! Every request goes to the daemon on a connection of its own, exactly as
//! it came (hop-by-hop headers aside): bodies of any length stream both
//! ways, so `docker build` contexts, `docker logs -f` and `docker events`
//! pass through as they are produced. Requests to attach or exec ask to
//! upgrade the connection; when the daemon agrees (101), both connections
//! become raw byte pipes joined by [`tokio::io::copy_bidirectional`], which
//! forwards a half-close: the CLI shuts its write side at the end of stdin
//! and still reads the container's output to the end.
//!
//! Three calls are acted on ([`crate::path`]): `containers/create` may get a
//! rewritten body ([`crate::create`]), and after a successful `start` or
//! `restart` the container is attached before the reply goes back. If that
//! fails, the container is killed (it is waiting in `weft-wait`, and must
//! not go on without the network it was promised) and the CLI gets the
//! reason.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::attach::{self, Attacher, Outcome};
use crate::create::{self, CommandLine, Plan};
use crate::docker::{self, DockerHost};
use crate::error::{ProxyError, StartError};
use crate::path::{self, ApiVersion, Call};
use crate::{router, wait};

/// The body type of every reply.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Largest create request body read (they are a few KiB).
const MAX_CREATE_BODY: usize = 16 << 20;
/// How often everything is reconciled when nothing asks for it sooner.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// How soon a failed reconciliation is tried again.
const RECONCILE_RETRY: Duration = Duration::from_secs(5);
/// Longest wait between attempts to reach the daemon's event stream.
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest event line.
const MAX_EVENT: usize = 1 << 20;

/// Where the proxy listens and what it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The unix socket to listen on (mode 0660, group `docker` if it exists).
    pub socket: PathBuf,
    /// Also listen on this TCP address (checked by the caller to be loopback
    /// unless the operator said otherwise).
    pub tcp: Option<SocketAddr>,
    /// The real daemon.
    pub docker_host: DockerHost,
    /// The router's API socket.
    pub router_socket: PathBuf,
    /// Where `weft-wait` is installed, to be mounted into containers.
    pub wait_binary: PathBuf,
}

impl Config {
    /// The defaults: `/run/weft/docker.sock`, `unix:///var/run/docker.sock`,
    /// `/run/weft/weft.sock`, and `weft-wait` in `/var/lib/weft`.
    pub fn with_defaults() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            tcp: None,
            docker_host: DockerHost::default(),
            router_socket: PathBuf::from(router::DEFAULT_SOCKET),
            wait_binary: PathBuf::from("/var/lib/weft/weft-wait"),
        }
    }
}

/// The proxy's default socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/docker.sock";
/// The TCP address `--tcp` (`--proxy-tcp`) listens on when given no value: Weave's proxy port, on loopback.
pub const DEFAULT_TCP: &str = "127.0.0.1:12375";

/// Checks a TCP listening address: the Docker API is root on the host to
/// anyone who can reach it, and the proxy has no TLS, so only loopback is
/// allowed unless the operator says `dangerous` with the flag `dangerous_flag`.
///
/// # Errors
/// A message saying why the address is refused and how to proceed.
pub fn check_tcp(addr: SocketAddr, dangerous: bool, dangerous_flag: &str) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() || dangerous {
        return Ok(addr);
    }
    Err(format!(
        "refusing to serve the Docker API on {addr}: it is not a loopback address, and anyone who reaches it \
         controls this host (there is no TLS); listen on 127.0.0.1, or add {dangerous_flag} if \
         the network is protected some other way"
    ))
}

/// A bound proxy, ready to [`Proxy::run`].
#[derive(Debug)]
pub struct Proxy {
    unix: UnixListener,
    tcp: Option<TcpListener>,
    socket: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    docker: docker::Client,
    attacher: Attacher,
    reconcile: Notify,
}

impl Proxy {
    /// Installs `weft-wait` and binds the listeners.
    ///
    /// # Errors
    /// As [`StartError`]: the socket is taken, cannot be made, or would loop.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        if config.docker_host == DockerHost::Unix(config.socket.clone()) {
            return Err(StartError::Loop { path: config.socket });
        }
        wait::install(&config.wait_binary).map_err(|source| StartError::Io {
            what: "cannot install weft-wait at",
            path: config.wait_binary.clone(),
            source,
        })?;
        let unix = bind_unix(&config.socket).await?;
        let tcp = match config.tcp {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Io {
                what: "cannot listen on",
                path: PathBuf::from(addr.to_string()),
                source,
            })?),
            None => None,
        };
        let docker = docker::Client::new(config.docker_host.clone());
        let attacher = Attacher::new(docker.clone(), router::Client::new(&config.router_socket));
        info!(
            socket = %config.socket.display(),
            tcp = ?config.tcp,
            docker_host = %config.docker_host,
            "Docker API proxy listening"
        );
        Ok(Self {
            unix,
            tcp,
            socket: config.socket.clone(),
            shared: Arc::new(Shared {
                config,
                docker,
                attacher,
                reconcile: Notify::new(),
            }),
        })
    }

    /// Serves until `shutdown` completes, then removes the socket. Hijacked
    /// connections (attach, exec) that are still open end with the process.
    ///
    /// # Errors
    /// None yet; accept failures are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Self {
            unix,
            tcp,
            socket,
            shared,
        } = self;
        let mut tasks = JoinSet::new();
        tasks.spawn(watch_events(Arc::clone(&shared)));
        tasks.spawn(reconcile_loop(Arc::clone(&shared)));
        let unix_loop = {
            let shared = Arc::clone(&shared);
            async move {
                loop {
                    match unix.accept().await {
                        Ok((stream, _)) => serve(Arc::clone(&shared), stream),
                        Err(e) => accept_failed(&e).await,
                    }
                }
            }
        };
        let tcp_loop = async move {
            let Some(tcp) = tcp else {
                return std::future::pending::<()>().await;
            };
            loop {
                match tcp.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        serve(Arc::clone(&shared), stream);
                    }
                    Err(e) => accept_failed(&e).await,
                }
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = unix_loop => {}
            () = tcp_loop => {}
        }
        tasks.abort_all();
        if let Err(e) = std::fs::remove_file(&socket) {
            warn!(socket = %socket.display(), error = %e, "cannot remove the proxy's socket");
        }
        info!("Docker API proxy stopped");
        Ok(())
    }
}

async fn accept_failed(e: &std::io::Error) {
    // EMFILE and friends: wait a little rather than spin.
    warn!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one client connection on its own task.
fn serve<S>(shared: Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, request).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            debug!(error = %e, "client connection ended with an error");
        }
    });
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<ProxyBody> {
    let path = request.uri().path().to_owned();
    let (api, call) = path::classify(request.method().as_str(), &path);
    let result = match call {
        Call::Create => create(shared, api, request).await,
        Call::Start(id) | Call::Restart(id) => start(shared, id, request).await,
        Call::Other => forward(shared, request).await,
    };
    result.unwrap_or_else(|e| {
        debug!(error = %e, %path, "request failed");
        e.reply()
    })
}

/// `containers/create`: forwarded with the body [`create::plan`] decides on.
async fn create(
    shared: &Shared,
    api: Option<ApiVersion>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, MAX_CREATE_BODY).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ProxyError::TooLarge { limit: MAX_CREATE_BODY }
        } else {
            ProxyError::Request(e.to_string())
        }
    })?;
    let bytes = bytes.to_bytes();
    let wait = &shared.config.wait_binary;
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Err(_) => bytes, // the daemon says what is wrong with it
        Ok(json) => {
            let mut plan = create::plan(&json, None, api, wait)?;
            if let Plan::NeedImage { image } = &plan {
                plan = match shared.docker.inspect_image(image).await {
                    Ok(info) => {
                        let config = CommandLine::of(info.get("Config").unwrap_or(&Value::Null));
                        create::plan(&json, Some(&config), api, wait)?
                    }
                    // Not pulled yet: the daemon answers 404, the CLI pulls and creates again.
                    Err(e) if e.is_not_found() => Plan::Forward,
                    Err(e) => return Err(e.into()),
                };
            }
            match plan {
                Plan::Forward | Plan::NeedImage { .. } => bytes,
                Plan::Attach { body, entries } => {
                    // Said now rather than at start: then no container is left behind.
                    shared.attacher.router().network().await?;
                    debug!(?entries, "container will join the mesh");
                    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
                }
            }
        }
    };
    let len = body.len();
    let mut upstream = Request::from_parts(parts, Full::new(body));
    strip_hop_by_hop(upstream.headers_mut(), false);
    upstream
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let response = docker::send(&shared.config.docker_host, upstream).await?;
    Ok(pass_back(response))
}

/// `containers/{id}/start` and `restart`: attach before the reply goes back.
async fn start(shared: &Shared, id: &str, request: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
    let id = id.to_owned();
    let response = forward(shared, request).await?;
    // 204 started, 304 already running: either way it must be attached.
    if !(response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED) {
        return Ok(response);
    }
    let span = info_span!("attach", container = %id);
    match shared.attacher.attach(&id).instrument(span).await {
        Ok(Outcome::Attached(_) | Outcome::Existing | Outcome::NotOurs | Outcome::NotRunning) => Ok(response),
        Err(source) => {
            let aftermath = match shared.docker.kill(&id).await {
                Ok(()) => "the container was stopped",
                Err(e) if e.is_not_found() => "the container is gone",
                Err(e) => {
                    warn!(container = %id, error = %e, "cannot stop a container that could not be attached");
                    "and it could not be stopped: it waits for its interface until weft-wait gives up"
                }
            };
            Err(ProxyError::Attach {
                container: id,
                source,
                aftermath,
            })
        }
    }
}

/// Any other call: to the daemon and back, upgrades included.
async fn forward(shared: &Shared, mut request: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = wants_upgrade(request.headers());
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut request));
    strip_hop_by_hop(request.headers_mut(), upgrade);
    let mut response = docker::send(&shared.config.docker_host, request).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(pass_back(response));
    }
    let Some(client_side) = client_side else {
        // The daemon switched protocols nobody asked for: refuse to guess.
        return Err(ProxyError::Request(
            "the daemon upgraded a connection the client did not ask to".into(),
        ));
    };
    let daemon_side = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        match tokio::try_join!(client_side, daemon_side) {
            Ok((client, daemon)) => {
                let (mut client, mut daemon) = (TokioIo::new(client), TokioIo::new(daemon));
                match tokio::io::copy_bidirectional(&mut client, &mut daemon).await {
                    Ok((up, down)) => debug!(up, down, "hijacked stream closed"),
                    Err(e) => debug!(error = %e, "hijacked stream ended with an error"),
                }
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        Full::new(Bytes::new()).map_err(|never| match never {}).boxed(),
    ))
}

/// The daemon's reply, streamed back as it comes.
fn pass_back(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body.boxed())
}

/// Whether a request asks to take the connection over (attach, exec).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes headers that describe one hop (RFC 9110 §7.6.1); framing is
/// redone by hyper. `Connection` and `Upgrade` stay on an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade")
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Follows the daemon's container events: attaches on `start` (restart
/// policies, `docker start` straight to the daemon) and releases on
/// `destroy` (`--rm` included). Reconnects with backoff when the daemon
/// goes away, and reconciles on every (re)connection: events missed in
/// between are made up for.
async fn watch_events(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(500);
    let mut reported = false;
    loop {
        match shared.docker.container_events().await {
            Ok(mut body) => {
                info!("following the Docker daemon's container events");
                reported = false;
                backoff = Duration::from_millis(500);
                shared.reconcile.notify_one();
                let mut buf = BytesMut::new();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    let Ok(data) = frame.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line = buf.split_to(end + 1);
                        on_event(&shared, &line);
                    }
                    if buf.len() > MAX_EVENT {
                        warn!(bytes = buf.len(), "dropping an over-long event");
                        buf.clear();
                    }
                }
                warn!("the Docker daemon's event stream ended; reconnecting");
            }
            Err(e) => {
                if !reported {
                    warn!(error = %e, "cannot follow the Docker daemon's events; retrying");
                    reported = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
    }
}

fn on_event(shared: &Arc<Shared>, line: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(line) else {
        debug!("ignoring an event that is not JSON");
        return;
    };
    let action = event
        .get("Action")
        .or_else(|| event.get("status"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(id) = event.get("id").and_then(Value::as_str).map(str::to_owned) else {
        return;
    };
    let shared = Arc::clone(shared);
    match action {
        "start" => {
            tokio::spawn(async move {
                match shared.attacher.attach(&id).await {
                    Ok(outcome) => debug!(container = %attach::short(&id), ?outcome, "start event"),
                    Err(e) => warn!(container = %attach::short(&id), error = %e, "cannot attach a started container"),
                }
            });
        }
        "destroy" => {
            tokio::spawn(async move {
                if let Err(e) = shared.attacher.release(&id).await {
                    // Reconciliation retries, and says once that it cannot.
                    debug!(container = %attach::short(&id), error = %e, "cannot release a removed container's addresses yet");
                    shared.reconcile.notify_one();
                }
            });
        }
        _ => {}
    }
}

/// Reconciles when asked and every [`RECONCILE_EVERY`]; after a failure
/// (router or daemon down) every [`RECONCILE_RETRY`] until one succeeds.
async fn reconcile_loop(shared: Arc<Shared>) {
    let mut next = tokio::time::Instant::now() + RECONCILE_EVERY;
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shared.reconcile.notified() => {}
        }
        match shared.attacher.reconcile().await {
            Ok(done) => {
                if done != attach::Reconciled::default() || failing {
                    info!(
                        released = done.released,
                        attached = done.attached,
                        "reconciled with the Docker daemon"
                    );
                }
                failing = false;
                next = tokio::time::Instant::now() + RECONCILE_EVERY;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot reconcile with the Docker daemon and the router; retrying");
                }
                failing = true;
                next = tokio::time::Instant::now() + RECONCILE_RETRY;
            }
        }
    }
}

/// Binds the unix socket: removes a dead one left behind, refuses a live
/// one, mode 0660 and group `docker` (as dockerd's own socket).
async fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
    let io = |what, source| StartError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(StartError::InUse { path: path.to_owned() });
            }
            std::fs::remove_file(path).map_err(|e| io("cannot remove the stale socket", e))?;
        }
        Ok(_) => return Err(StartError::NotASocket { path: path.to_owned() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot look at", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("cannot listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io("cannot set the mode of", e))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name("docker") {
        nix::unistd::chown(path, None, Some(group.gid))
            .map_err(|e| io("cannot give the docker group", std::io::Error::from(e)))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_loopback_unless_dangerous() {
        let lo: SocketAddr = DEFAULT_TCP.parse().unwrap();
        assert_eq!(check_tcp(lo, false, "--x"), Ok(lo));
        let any: SocketAddr = "0.0.0.0:12375".parse().unwrap();
        assert!(check_tcp(any, false, "--x").unwrap_err().contains("add --x if"));
        assert_eq!(check_tcp(any, true, "--x"), Ok(any));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "tcp");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "Upgrade");
        let mut plain = HeaderMap::new();
        plain.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        assert!(
            !wants_upgrade(&plain),
            "Upgrade without Connection: upgrade is not a request to upgrade"
        );
    }
}
