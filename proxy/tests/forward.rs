//! The proxy between a client and a scripted daemon, in one process, no
//! root: streaming, upgrades with half-close, the create rewrite, and the
//! errors the CLI gets. The real dockerd and docker CLI are in `docker.rs`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use weft_proxy::docker::DockerHost;
use weft_proxy::{Config, Proxy};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the scripted daemon saw and can be told to send.
#[derive(Default)]
struct Daemon {
    /// Bodies of create requests, as received.
    creates: Mutex<Vec<Value>>,
    /// Chunks for the next `GET /stream`.
    stream: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

fn full(v: impl Into<Bytes>) -> Body {
    Full::new(v.into()).boxed()
}

async fn daemon_handle(daemon: Arc<Daemon>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/v1.41/containers/create") => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            daemon
                .creates
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            Response::builder()
                .status(201)
                .body(full(r#"{"Id":"c0ffee","Warnings":[]}"#))
                .unwrap()
        }
        ("GET", "/images/busybox/json") => Response::new(full(r#"{"Config":{"Cmd":["/bin/sh"]}}"#)),
        ("GET", "/stream") => {
            let rx = daemon.stream.lock().unwrap().take().unwrap();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            Response::new(StreamBody::new(stream).boxed())
        }
        ("POST", "/v1.41/containers/c0ffee/attach") => {
            // Echo everything until the client's EOF, then say so: output after a half-close.
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut seen = Vec::new();
                io.read_to_end(&mut seen).await.unwrap();
                io.write_all(&seen).await.unwrap();
                io.write_all(b"|eof seen").await.unwrap();
                io.shutdown().await.unwrap();
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", "tcp")
                .body(full(""))
                .unwrap()
        }
        ("GET", "/events") => {
            let never = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            Response::new(StreamBody::new(never).boxed())
        }
        ("GET", "/containers/json") => Response::new(full("[]")),
        _ => Response::builder()
            .status(404)
            .body(full(format!(r#"{{"message":"no such route {path}"}}"#)))
            .unwrap(),
    }
}

async fn router_handle(req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/v1/status" => Response::new(full(STATUS)),
        "/v1/ipam/allocations" => Response::new(full(r#"{"allocations":[]}"#)),
        _ => Response::builder().status(404).body(full("{}")).unwrap(),
    }
}

/// A router's `GET /v1/status` (docs/api.md): pod range 10.40.0.0/16, MTU 1376.
const STATUS: &str = r#"{
    "name": "00:00:00:00:00:00:00:01", "nickname": "h1", "version": "0.1.0", "peers": [],
    "ipam": {"range": "10.40.0.0/16", "owned": 65536, "free": 65534, "allocated": 0},
    "connections_established": 0, "host_address": null,
    "dataplane": {"port": 6784, "mtu": 1376, "queues": 1, "offload": false, "sessions": 0, "peers": 0,
                  "tx_packets": 0, "rx_packets": 0, "drops": {}}
}"#;

/// Serves `handle` on a unix socket at `path`.
fn serve<F, Fut>(path: &Path, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

struct Fixture {
    _dir: tempfile::TempDir,
    proxy: PathBuf,
    wait: PathBuf,
    daemon: Arc<Daemon>,
}

/// A scripted daemon and router, and a proxy between the test and them.
async fn fixture(with_router: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Arc::new(Daemon::default());
    let docker = dir.path().join("docker.sock");
    let d = Arc::clone(&daemon);
    serve(&docker, move |req| daemon_handle(Arc::clone(&d), req));
    let router = dir.path().join("weft.sock");
    if with_router {
        serve(&router, router_handle);
    }
    let config = Config {
        socket: dir.path().join("proxy/docker.sock"),
        tcp: None,
        docker_host: DockerHost::Unix(docker),
        router_socket: router,
        wait_binary: dir.path().join("lib/weft-wait"),
    };
    let proxy = Proxy::bind(config.clone()).await.unwrap();
    tokio::spawn(proxy.run(std::future::pending()));
    Fixture {
        proxy: config.socket,
        wait: config.wait_binary,
        _dir: dir,
        daemon,
    }
}

/// Sends one request through the proxy.
async fn send(proxy: &Path, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = UnixStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.unwrap()
}

fn request(method: &str, uri: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "docker")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn json_body(resp: Response<Incoming>) -> Value {
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn create_is_rewritten_to_wait_for_the_interface() {
    let f = fixture(true).await;
    let body = json!({"Image": "busybox", "Cmd": null, "Env": ["WEFT_CIDR=net:10.40.8.0/24"]});
    let resp = send(&f.proxy, request("POST", "/v1.41/containers/create", &body.to_string())).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(json_body(resp).await["Id"], "c0ffee");
    let seen = f.daemon.creates.lock().unwrap().pop().unwrap();
    assert_eq!(seen["Entrypoint"], json!(["/.weft/wait", "--"]));
    assert_eq!(seen["Cmd"], json!(["/bin/sh"]));
    assert_eq!(seen["HostConfig"]["Mounts"][0]["Source"], f.wait.to_str().unwrap());
    assert_eq!(seen["Env"], json!(["WEFT_CIDR=net:10.40.8.0/24"]));
    // The binary mounted into containers was installed where the mount says.
    let installed = std::fs::read(&f.wait).unwrap();
    assert_eq!(installed, weft_proxy::wait::BINARY);
}

#[tokio::test]
async fn create_with_weft_cidr_none_is_forwarded_unchanged() {
    let f = fixture(true).await;
    let body = json!({"Image": "busybox", "Env": ["WEFT_CIDR=none"], "Unknown": {"kept": 1}});
    let resp = send(&f.proxy, request("POST", "/v1.41/containers/create", &body.to_string())).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(f.daemon.creates.lock().unwrap().pop().unwrap(), body);
}

#[tokio::test]
async fn create_errors_say_what_failed() {
    let f = fixture(false).await;
    let bad = json!({"Image": "busybox", "Env": ["WEFT_CIDR=ip:10.40.1.300"]});
    let resp = send(&f.proxy, request("POST", "/v1.41/containers/create", &bad.to_string())).await;
    assert_eq!(resp.status(), 400);
    let msg = json_body(resp).await["message"].as_str().unwrap().to_owned();
    assert!(msg.starts_with("weft: WEFT_CIDR=\"ip:10.40.1.300\""), "{msg}");
    // No router: refused at create, so no container is left behind.
    let good = json!({"Image": "busybox"});
    let resp = send(&f.proxy, request("POST", "/v1.41/containers/create", &good.to_string())).await;
    assert_eq!(resp.status(), 503);
    let msg = json_body(resp).await["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("the weft router is not running"), "{msg}");
    assert!(f.daemon.creates.lock().unwrap().is_empty());
}

#[tokio::test]
async fn responses_stream_as_they_come() {
    let f = fixture(true).await;
    let (tx, rx) = mpsc::channel(4);
    *f.daemon.stream.lock().unwrap() = Some(rx);
    let resp = send(&f.proxy, request("GET", "/stream", "")).await;
    let mut body = resp.into_body();
    for chunk in ["first\n", "second\n"] {
        tx.send(Bytes::from(chunk)).await.unwrap();
        // Each chunk arrives while the daemon's response is still open.
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a chunk held back by the proxy")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn hijacked_streams_half_close() {
    let f = fixture(true).await;
    let req = Request::builder()
        .method("POST")
        .uri("/v1.41/containers/c0ffee/attach?stream=1&stdin=1&stdout=1")
        .header("host", "docker")
        .header("connection", "Upgrade")
        .header("upgrade", "tcp")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resp = send(&f.proxy, req).await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
    let input: Vec<u8> = (0..200_000u32).flat_map(u32::to_le_bytes).collect();
    let (mut r, mut w) = tokio::io::split(&mut io);
    let writer = async {
        w.write_all(&input).await.unwrap();
        // stdin is done: shut the write side only, as the CLI does.
        w.shutdown().await.unwrap();
    };
    let mut output = Vec::new();
    let reader = r.read_to_end(&mut output);
    let ((), read) = tokio::join!(writer, reader);
    read.unwrap();
    assert_eq!(output.len(), input.len() + b"|eof seen".len());
    assert!(output.starts_with(&input));
    assert!(output.ends_with(b"|eof seen"));
}

#[tokio::test]
async fn daemon_down_reads_like_docker() {
    let dir = tempfile::tempdir().unwrap();
    let host = DockerHost::Unix(dir.path().join("absent.sock"));
    let config = Config {
        socket: dir.path().join("docker.sock"),
        tcp: None,
        docker_host: host.clone(),
        router_socket: dir.path().join("weft.sock"),
        wait_binary: dir.path().join("weft-wait"),
    };
    let proxy = Proxy::bind(config.clone()).await.unwrap();
    tokio::spawn(proxy.run(std::future::pending()));
    let resp = send(&config.socket, request("GET", "/v1.41/containers/json", "")).await;
    assert_eq!(resp.status(), 503);
    let msg = json_body(resp).await["message"].as_str().unwrap().to_owned();
    assert_eq!(
        msg,
        format!("Cannot connect to the Docker daemon at {host}. Is the docker daemon running?")
    );
}

#[tokio::test]
async fn a_second_proxy_on_the_same_socket_is_refused() {
    let f = fixture(true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket: f.proxy.clone(),
        tcp: None,
        docker_host: DockerHost::Unix(dir.path().join("d.sock")),
        router_socket: dir.path().join("w.sock"),
        wait_binary: dir.path().join("weft-wait"),
    };
    let err = Proxy::bind(config).await.unwrap_err().to_string();
    assert!(err.starts_with("another Docker API proxy is running at"), "{err}");
    // Pointed at itself: requests would loop.
    let looped = Config {
        socket: dir.path().join("p.sock"),
        tcp: None,
        docker_host: DockerHost::Unix(dir.path().join("p.sock")),
        router_socket: dir.path().join("w.sock"),
        wait_binary: dir.path().join("weft-wait"),
    };
    assert!(
        Proxy::bind(looped)
            .await
            .unwrap_err()
            .to_string()
            .contains("also its --docker-host")
    );
}

#[tokio::test]
async fn the_socket_has_dockerds_permissions() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let f = fixture(true).await;
    let meta = std::fs::metadata(&f.proxy).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "mode of {}",
        f.proxy.display()
    );
    // Group docker where there is one (docker.io makes it), as dockerd's own socket.
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let docker_gid = group
        .lines()
        .find_map(|l| l.strip_prefix("docker:x:")?.split(':').next()?.parse::<u32>().ok());
    if let Some(gid) = docker_gid {
        assert_eq!(meta.gid(), gid, "group of {}", f.proxy.display());
    }
}
