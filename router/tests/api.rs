//! The local API end to end: the real server on a unix socket in a temporary
//! directory, the real client, and a fake backend built on a real
//! `ipam_crdt::Replica`.
//!
//! Every await is bounded by [`within`]; nothing sleeps to wait for state.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clap::Parser;
use ipam_crdt::{AllocKey, PeerName, Pool, Replica, Request};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_api::ClientError;
use weft_api::client::Client;
use weft_api::types::{
    AllocateRequest, AllocateResponse, AllocationView, ApiError, ErrorCode, Health, IpamSummary, PeerData, PeerState,
    PeerStatus, ReclaimState, ReclaimView, ReleaseRequest, ReleaseResponse, RingView, Status, cidr,
};
use weft_router::api::convert;
use weft_router::api::{Backend, BindError, bind_socket, serve};
use weft_router::config::{Cli, PeerAddr, PeerRef};

// ---- the fake router -------------------------------------------------------

const POOL: &str = "10.32.0.0/28";

fn me() -> PeerName {
    PeerName::from_u64(1)
}

fn other() -> PeerName {
    PeerName::from_u64(2)
}

/// A backend whose IPAM is a real replica and whose mesh is a set of addresses.
#[derive(Debug)]
struct Fake {
    pool: Pool,
    state: Mutex<FakeState>,
    /// When set, `status` never answers (for client timeouts).
    hang: bool,
}

#[derive(Debug)]
struct FakeState {
    replica: Replica,
    targets: BTreeSet<String>,
    reset: bool,
}

impl Fake {
    /// A router whose ring exists, split between `me` and `other`.
    fn with_ring() -> Self {
        let pool = Pool::new(POOL.parse().unwrap()).unwrap();
        let replica = Replica::create(me(), pool, &[me(), other()]).unwrap();
        Self::from_replica(pool, replica)
    }

    /// A router still waiting for its ring.
    fn without_ring() -> Self {
        let pool = Pool::new(POOL.parse().unwrap()).unwrap();
        Self::from_replica(pool, Replica::new(me()))
    }

    fn hanging() -> Self {
        Self {
            hang: true,
            ..Self::with_ring()
        }
    }

    fn from_replica(pool: Pool, replica: Replica) -> Self {
        Self {
            pool,
            state: Mutex::new(FakeState {
                replica,
                targets: BTreeSet::new(),
                reset: false,
            }),
            hang: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn nickname(name: PeerName) -> Option<String> {
        (name == me()).then(|| "node-1".to_owned())
    }

    fn peer_list(state: &FakeState) -> Vec<PeerStatus> {
        state
            .targets
            .iter()
            .map(|addr| PeerStatus {
                name: None,
                nickname: None,
                address: Some(addr.clone()),
                state: PeerState::Dialing,
                reason: None,
                data: Some(PeerData::down()),
            })
            .collect()
    }
}

impl Backend for Fake {
    async fn status(&self) -> Result<Status, ApiError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        let state = self.lock();
        Ok(Status {
            name: me().to_string(),
            nickname: "node-1".to_owned(),
            version: "9.9.9".to_owned(),
            peers: Self::peer_list(&state),
            ipam: IpamSummary {
                problem: state
                    .replica
                    .ring()
                    .is_none()
                    .then(|| "waiting for the 3 routers of --init-peer-count to meet".to_owned()),
                ..convert::ipam_summary(self.pool, &state.replica)
            },
            connections_established: 0,
            host_address: Some("10.32.0.14/28".to_owned()),
            dataplane: None,
        })
    }

    async fn peers(&self) -> Result<Vec<PeerStatus>, ApiError> {
        Ok(Self::peer_list(&self.lock()))
    }

    async fn ring(&self) -> Result<RingView, ApiError> {
        Ok(convert::ring_view(self.pool, &self.lock().replica, Self::nickname))
    }

    async fn allocate(&self, key: AllocKey, request: Request) -> Result<AllocateResponse, ApiError> {
        let mut state = self.lock();
        match state.replica.allocate(key, request) {
            Ok(a) => Ok(convert::allocated(a)),
            Err(ipam_crdt::AllocError::NoRing) => Err(ApiError::new(
                ErrorCode::NoRing,
                "the address ring does not exist after 30 s: 1 of the 3 routers of --init-peer-count have met",
            )),
            Err(e) => Err(convert::alloc_error(e)),
        }
    }

    async fn release(&self, key: AllocKey) -> Result<ReleaseResponse, ApiError> {
        let prefix = self.pool.net().prefix_len();
        let address = self.lock().replica.release(&key).map(|a| cidr(a, prefix));
        Ok(ReleaseResponse { address })
    }

    async fn allocations(&self) -> Result<Vec<AllocationView>, ApiError> {
        let prefix = self.pool.net().prefix_len();
        let state = self.lock();
        let mut list: Vec<AllocationView> = (state.replica.allocations())
            .map(|(key, addr)| convert::allocation_view(key, addr, prefix))
            .collect();
        list.sort_by(|a, b| (&a.id, &a.iface).cmp(&(&b.id, &b.iface)));
        Ok(list)
    }

    async fn connect(&self, addr: PeerAddr) -> Result<(), ApiError> {
        self.lock().targets.insert(addr.to_string());
        Ok(())
    }

    async fn forget(&self, addr: PeerAddr) -> Result<(), ApiError> {
        if self.lock().targets.remove(&addr.to_string()) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("{addr} was never added")))
        }
    }

    async fn rmpeer(&self, name: PeerRef, gone: bool) -> Result<ReclaimView, ApiError> {
        let PeerRef::Name(name) = name else {
            return Err(ApiError::not_found(format!("no router is called {name}")));
        };
        let mut state = self.lock();
        let status = state.replica.begin_reclaim(name).map_err(convert::reclaim_error)?;
        if gone {
            state.replica.confirm_gone(name).map_err(convert::reclaim_error)?;
        }
        Ok(convert::reclaim_of(&state.replica, name, &status, Self::nickname))
    }

    async fn reset(&self) -> Result<(), ApiError> {
        self.lock().reset = true;
        Ok(())
    }
}

// ---- harness ---------------------------------------------------------------

/// A server on a socket in a fresh temporary directory.
struct Harness {
    _dir: TempDir,
    path: PathBuf,
    backend: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Harness {
    async fn start(backend: Fake) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/weft/weft.sock");
        let listener = bind_socket(&path).await.unwrap();
        let backend = Arc::new(backend);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, backend.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            _dir: dir,
            path,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.path)
    }

    /// Stops the server and checks that it returned cleanly.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Runs a test body with a deadline, so a hang fails instead of blocking CI.
async fn within<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, body)
        .await
        .expect("test did not finish in time")
}

const TEST_DEADLINE: Duration = Duration::from_secs(20);

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> ApiError {
    match result {
        Err(ClientError::Api { error, .. }) => error,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Sends raw bytes and returns the status code and JSON body of the reply.
async fn raw(path: &Path, request: &[u8]) -> (u16, Value) {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let text = String::from_utf8(reply).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(uri: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {uri} HTTP/1.1\r\nHost: weft\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---- routes ----------------------------------------------------------------

#[tokio::test]
async fn every_route_round_trips() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let c = h.client();

        let health: Health = c.healthz().await.unwrap();
        assert_eq!(health.status, "ok");
        assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

        let status = c.status().await.unwrap();
        assert_eq!(status.name, "00:00:00:00:00:00:00:01");
        assert_eq!(status.version, "9.9.9");
        assert_eq!(status.host_address.as_deref(), Some("10.32.0.14/28"));
        assert_eq!(
            status.ipam,
            IpamSummary {
                range: POOL.to_owned(),
                owned: 8,
                free: 7,
                allocated: 0,
                problem: None,
            }
        );

        let peer: PeerAddr = "192.0.2.7".parse().unwrap();
        c.connect(&peer.to_string()).await.unwrap();
        let peers = c.peers().await.unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].address.as_deref(), Some("192.0.2.7:6783"));
        assert_eq!(peers[0].state, PeerState::Dialing);
        assert_eq!(c.status().await.unwrap().peers, peers);
        c.forget(&peer.to_string()).await.unwrap();
        assert!(c.peers().await.unwrap().is_empty());

        let first = c.allocate(&AllocateRequest::any("c1")).await.unwrap();
        assert_eq!(
            first,
            AllocateResponse {
                address: "10.32.0.1/28".to_owned(),
                existing: false
            }
        );
        let again = c.allocate(&AllocateRequest::any("c1")).await.unwrap();
        assert_eq!(again.address, first.address);
        assert!(again.existing);
        let chosen = AllocateRequest {
            ip: Some("10.32.0.5".to_owned()),
            iface: Some("eth1".to_owned()),
            ..AllocateRequest::any("c2")
        };
        assert_eq!(c.allocate(&chosen).await.unwrap().address, "10.32.0.5/28");
        let within_net = AllocateRequest {
            net: Some("10.32.0.4/30".to_owned()),
            ..AllocateRequest::any("c3")
        };
        // Not 10.32.0.4, the /30's own network address, nor .5, which c2 holds.
        assert_eq!(c.allocate(&within_net).await.unwrap().address, "10.32.0.6/28");

        let ring = c.ring().await.unwrap();
        assert_eq!(ring.range, POOL);
        assert_eq!(ring.ranges.len(), 2);
        assert_eq!(ring.owners[0].allocated, Some(3));
        assert_eq!(ring.owners[0].nickname.as_deref(), Some("node-1"));

        let listed = c.allocations().await.unwrap();
        let view = |id: &str, iface: &str, address: &str| AllocationView {
            id: id.to_owned(),
            iface: iface.to_owned(),
            address: address.to_owned(),
        };
        assert_eq!(
            listed,
            vec![
                view("c1", "ethwe", "10.32.0.1/28"),
                view("c2", "eth1", "10.32.0.5/28"),
                view("c3", "ethwe", "10.32.0.6/28"),
            ]
        );
        let (status, body) = raw(
            &h.path,
            b"GET /v1/ipam/allocations HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["allocations"][1]["iface"], "eth1");

        let released = c.release(&ReleaseRequest::new("c1")).await.unwrap();
        assert_eq!(released.address.as_deref(), Some("10.32.0.1/28"));
        let twice = c.release(&ReleaseRequest::new("c1")).await.unwrap();
        assert_eq!(twice.address, None);
        assert_eq!(c.status().await.unwrap().ipam.allocated, 2);
        let ids: Vec<String> = c.allocations().await.unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["c2", "c3"]);

        let reclaim = c.rmpeer(&PeerRef::Name(other()).to_string(), false).await.unwrap();
        assert_eq!(reclaim.name, other().to_string());
        assert_eq!(reclaim.state, ReclaimState::Done);
        assert_eq!(reclaim.heir, Some(me().to_string()));
        assert_eq!(c.ring().await.unwrap().reclaims, vec![reclaim]);

        c.reset().await.unwrap();
        assert!(h.backend.lock().reset);

        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn no_ring_is_503_with_the_reason() {
    within(async {
        let h = Harness::start(Fake::without_ring()).await;
        let err = api_error(h.client().allocate(&AllocateRequest::any("c1")).await);
        assert_eq!(err.code, ErrorCode::NoRing);
        assert!(err.error.contains("--init-peer-count"), "{}", err.error);

        let (status, body) = raw(&h.path, &post("/v1/ipam/allocate", r#"{"id":"c1"}"#)).await;
        assert_eq!(status, 503);
        assert_eq!(body["code"], "no_ring");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("the address ring does not exist")
        );

        // The ring view and the status still answer while there is no ring.
        assert!(h.client().ring().await.unwrap().ranges.is_empty());
        assert_eq!(h.client().status().await.unwrap().ipam.owned, 0);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn backend_errors_keep_code_and_message() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let c = h.client();
        c.allocate(&AllocateRequest::any("c1")).await.unwrap();

        let taken = AllocateRequest {
            ip: Some("10.32.0.1".to_owned()),
            ..AllocateRequest::any("c2")
        };
        let err = api_error(c.allocate(&taken).await);
        assert_eq!(err, ApiError::new(ErrorCode::InUse, "10.32.0.1 is in use by c1/ethwe"));

        let outside = AllocateRequest {
            ip: Some("192.0.2.1".to_owned()),
            ..AllocateRequest::any("c2")
        };
        assert_eq!(api_error(c.allocate(&outside).await).code, ErrorCode::OutOfRange);

        let err = api_error(
            c.forget(&"192.0.2.9:7000".parse::<PeerAddr>().unwrap().to_string())
                .await,
        );
        assert_eq!(err, ApiError::not_found("192.0.2.9:7000 was never added"));

        let err = api_error(c.rmpeer(&PeerRef::Name(PeerName::from_u64(7)).to_string(), false).await);
        assert_eq!(err.code, ErrorCode::NotFound);
        let err = api_error(c.rmpeer(&PeerRef::Name(me()).to_string(), false).await);
        assert_eq!(err.code, ErrorCode::InvalidRequest);

        let (status, _) = raw(&h.path, &post("/v1/ipam/allocate", r#"{"id":"c2","ip":"10.32.0.1"}"#)).await;
        assert_eq!(status, 409);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn invalid_requests_are_400_before_the_backend() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let c = h.client();
        let bad_ip = AllocateRequest {
            ip: Some("10.32.0.999".to_owned()),
            ..AllocateRequest::any("c1")
        };
        let err = api_error(c.allocate(&bad_ip).await);
        assert_eq!(
            err,
            ApiError::invalid_request("\"ip\": \"10.32.0.999\" is not an IP address")
        );
        assert_eq!(
            api_error(c.allocate(&AllocateRequest::any("")).await).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(h.backend.lock().replica.allocated(), 0);

        for (uri, body) in [
            ("/v1/ipam/allocate", "{not json"),
            ("/v1/ipam/allocate", r#"{"id":"c1","ipaddr":"10.32.0.1"}"#),
            ("/v1/ipam/release", r#"{"iface":"eth0"}"#),
            ("/v1/connect", r#"{"peer":"fd00::1"}"#),
            ("/v1/rmpeer", r#"{"name":"no spaces allowed"}"#),
        ] {
            let (status, reply) = raw(&h.path, &post(uri, body)).await;
            assert_eq!(status, 400, "{uri} {body}: {reply}");
            assert_eq!(reply["code"], "invalid_request", "{uri} {body}: {reply}");
        }

        let (status, reply) = raw(&h.path, &post("/v1/connect", r#"{"peer":"fd00::1"}"#)).await;
        assert_eq!(status, 400);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .contains("put IPv6 addresses in brackets"),
            "{reply}"
        );
        assert!(h.backend.lock().targets.is_empty());
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let (status, reply) = raw(
            &h.path,
            b"GET /v1/nope HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(reply["code"], "not_found");
        assert_eq!(reply["error"], "no API route GET /v1/nope; see docs/api.md");

        let (status, reply) = raw(
            &h.path,
            b"GET /v1/reset HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
        assert_eq!(reply["code"], "method_not_allowed");
        assert!(!h.backend.lock().reset);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn oversize_body_is_rejected() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let huge = AllocateRequest::any("x".repeat(100 * 1024));
        let err = api_error(h.client().allocate(&huge).await);
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(err.error, "the request body is over the limit of 65536 bytes");

        let body = format!(r#"{{"id":"{}"}}"#, "y".repeat(70 * 1024));
        let (status, reply) = raw(&h.path, &post("/v1/ipam/allocate", &body)).await;
        assert_eq!(status, 413);
        assert_eq!(reply["code"], "too_large");
        assert_eq!(h.backend.lock().replica.allocated(), 0);
        h.shutdown().await;
    })
    .await;
}

// ---- the socket ------------------------------------------------------------

#[tokio::test]
async fn socket_mode_and_directory() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let mode = std::fs::metadata(&h.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "{mode:o}");
        let dir = std::fs::metadata(h.path.parent().unwrap()).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.permissions().mode() & 0o700, 0o700);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn second_router_is_refused_while_the_first_answers() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        let err = bind_socket(&h.path).await.unwrap_err();
        assert!(matches!(err, BindError::AlreadyRunning { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "another weft router is running at {}; stop it first, or pass a different --api-socket",
                h.path.display()
            )
        );
        // The first router is untouched.
        assert_eq!(h.client().healthz().await.unwrap().status, "ok");
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.sock");
        // A router that died: its socket file stays, nothing listens.
        drop(bind_socket(&path).await.unwrap());
        assert!(path.exists());
        assert!(matches!(
            Client::new(&path).status().await,
            Err(ClientError::NotRunning { .. })
        ));

        let listener = bind_socket(&path).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Arc::new(Fake::with_ring()), async move {
            let _ = stopped.await;
        }));
        assert_eq!(Client::new(&path).healthz().await.unwrap().status, "ok");
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn other_files_are_left_alone() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.sock");
        std::fs::write(&path, "not a socket").unwrap();
        let err = bind_socket(&path).await.unwrap_err();
        assert!(matches!(err, BindError::NotASocket { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    })
    .await;
}

// ---- the client ------------------------------------------------------------

#[tokio::test]
async fn missing_socket_is_not_running() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = Client::new(&path).status().await.unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no weft router is running (no API socket at {}); start one with `weft launch`",
                path.display()
            )
        );
    })
    .await;
}

#[tokio::test]
async fn slow_router_times_out() {
    within(async {
        let h = Harness::start(Fake::hanging()).await;
        let client = h.client().with_timeout(Duration::from_millis(200));
        let err = client.status().await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        // Other routes still answer.
        assert!(client.peers().await.unwrap().is_empty());
        // Shutdown waits for in-flight requests; the timed-out one was dropped by the client.
        h.shutdown().await;
    })
    .await;
}

// ---- the `weft` commands ---------------------------------------------------

async fn weft(h: &Harness, args: &[&str]) -> Result<String, weft_router::api::cli::CliError> {
    let socket = h.path.to_str().unwrap();
    let tail = ["--api-socket", socket];
    let argv = ["weft"].iter().chain(args).chain(&tail).copied();
    let command = Cli::try_parse_from(argv).unwrap().command;
    let mut out = Vec::new();
    weft_router::api::cli::run(command, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn commands_print_what_scripts_expect() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;

        assert_eq!(weft(&h, &["ipam", "allocate", "c1"]).await.unwrap(), "10.32.0.1/28\n");
        let json = weft(&h, &["ipam", "allocate", "c2", "--ip", "10.32.0.6", "--json"])
            .await
            .unwrap();
        let reply: AllocateResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(reply.address, "10.32.0.6/28");
        assert_eq!(weft(&h, &["ipam", "release", "c2"]).await.unwrap(), "");

        assert_eq!(weft(&h, &["connect", "node-2"]).await.unwrap(), "");
        let peers: Value = serde_json::from_str(&weft(&h, &["peers", "--json"]).await.unwrap()).unwrap();
        assert_eq!(peers["peers"][0]["address"], "node-2:6783");
        assert!(weft(&h, &["peers"]).await.unwrap().contains("node-2:6783  dialing"));
        assert_eq!(weft(&h, &["forget", "node-2"]).await.unwrap(), "");

        let text = weft(&h, &["status"]).await.unwrap();
        assert!(
            text.contains("           Name: 00:00:00:00:00:00:00:01 (node-1)\n"),
            "{text}"
        );
        assert!(
            text.contains("           IPAM: owned 8, free 6, allocated 1\n"),
            "{text}"
        );
        let status: Status = serde_json::from_str(&weft(&h, &["status", "--json"]).await.unwrap()).unwrap();
        assert_eq!(status.ipam.allocated, 1);

        let text = weft(&h, &["ipam"]).await.unwrap();
        assert!(text.starts_with("Range: 10.32.0.0/28\n"), "{text}");
        let ring: RingView = serde_json::from_str(&weft(&h, &["ipam", "--json"]).await.unwrap()).unwrap();
        assert_eq!(ring.owners.len(), 2);

        let text = weft(&h, &["rmpeer", &other().to_string()]).await.unwrap();
        assert_eq!(
            text,
            "00:00:00:00:00:00:00:02: removed; its ranges were taken over by 00:00:00:00:00:00:00:01; \
its addresses stay held (7 held here) (none is handed out) until it hears of its removal, or until \
`weft rmpeer --gone 00:00:00:00:00:00:00:02` confirms its host is gone for good\n"
        );
        // Confirmed gone: nothing is held any more.
        let text = weft(&h, &["rmpeer", "--gone", &other().to_string()]).await.unwrap();
        assert_eq!(
            text,
            "00:00:00:00:00:00:00:02: removed; its ranges were taken over by 00:00:00:00:00:00:00:01\n"
        );

        let err = weft(&h, &["ipam", "allocate", "c3", "--ip", "10.32.0.1"])
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "10.32.0.1 is in use by c1/ethwe");

        assert_eq!(weft(&h, &["reset"]).await.unwrap(), "");
        assert!(h.backend.lock().reset);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn ready_means_the_router_has_a_ring() {
    within(async {
        let h = Harness::start(Fake::with_ring()).await;
        assert_eq!(weft(&h, &["ready"]).await.unwrap(), "ready\n");
        h.shutdown().await;

        let h = Harness::start(Fake::without_ring()).await;
        let err = weft(&h, &["ready"]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "not ready: waiting for the 3 routers of --init-peer-count to meet"
        );
        h.shutdown().await;
    })
    .await;
}

// ---- metrics ---------------------------------------------------------------

#[tokio::test]
async fn metrics_are_served_over_http() {
    use weft_router::metrics::{Direction, Metrics, serve_metrics};
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.gossip(Direction::Out, 42);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_metrics(listener, metrics.clone(), async move {
            let _ = stopped.await;
        }));

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("content-type: application/openmetrics-text"), "{reply}");
        assert!(
            reply.contains("weft_gossip_bytes_total{direction=\"out\"} 42\n"),
            "{reply}"
        );

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    })
    .await;
}
