//! The Kubernetes shell (`io::kube`) against a small fake API server.
//!
//! The fake answers what the shell asks: the Node list (with a
//! `resourceVersion`), the Node watch (one JSON event per line, streamed as
//! the real API server does), and Secret get/create (404, 201, 409
//! `AlreadyExists`). Discovery acts on a recorder instead of a router, so
//! the test checks exactly which connect, forget and rmpeer calls the router
//! would get, without network namespaces.
//!
//! Run with `cargo test -p weft-router --features kube --test kube_shell`.

#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipam_crdt::PeerName;
use serde_json::{Value, json};
use tokio::sync::{Barrier, mpsc};
use weft_router::config::PeerAddr;
use weft_router::core::nodes::{self, PeerView, ReclaimOutcome};
use weft_router::io::kube::{self, PeerControl, SecretOrigin};

// ---- the fake API server ----

#[derive(Default)]
struct Fake {
    resource_version: u64,
    nodes: BTreeMap<String, Value>,
    watchers: Vec<mpsc::UnboundedSender<String>>,
    secrets: BTreeMap<(String, String), Value>,
    secret_creates: usize,
    secret_conflicts: usize,
    /// Holds Secret GETs until this many have arrived (to force a create race).
    get_barrier: Option<Arc<Barrier>>,
    /// Answer the next watch with `410 Expired`, as the API server does when
    /// the resource version is too old; the watcher must then relist.
    expire_next_watch: bool,
    lists: usize,
}

type Shared = Arc<Mutex<Fake>>;

impl Fake {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Adds or changes a node and tells every watcher.
    fn put_node(&mut self, name: &str, addresses: &[(&str, &str)]) {
        let rv = self.bump();
        let kind = if self.nodes.contains_key(name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "resourceVersion": rv, "uid": format!("uid-{name}")},
            "status": {"addresses": addresses},
        });
        self.nodes.insert(name.to_owned(), node.clone());
        self.send(kind, node);
    }

    fn delete_node(&mut self, name: &str) {
        let rv = self.bump();
        let mut node = self.nodes.remove(name).expect("deleting a node that exists");
        node["metadata"]["resourceVersion"] = json!(rv);
        self.send("DELETED", node);
    }

    fn send(&mut self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }
}

#[derive(serde::Deserialize)]
struct NodeQuery {
    watch: Option<String>,
}

async fn nodes(State(fake): State<Shared>, Query(q): Query<NodeQuery>) -> Response {
    let mut f = fake.lock().unwrap();
    if q.watch.as_deref() == Some("true") || q.watch.as_deref() == Some("1") {
        if std::mem::take(&mut f.expire_next_watch) {
            let gone = json!({"type": "ERROR", "object": {
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410,
            }});
            return ([("content-type", "application/json")], format!("{gone}\n")).into_response();
        }
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        f.watchers.push(tx);
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|line| (Ok::<_, Infallible>(Bytes::from(line)), rx))
        });
        return ([("content-type", "application/json")], Body::from_stream(lines)).into_response();
    }
    f.lists += 1;
    let list = json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": {"resourceVersion": f.resource_version.to_string()},
        "items": f.nodes.values().cloned().collect::<Vec<_>>(),
    });
    axum::Json(list).into_response()
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn get_secret(State(fake): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let barrier = fake.lock().unwrap().get_barrier.clone();
    if let Some(b) = barrier {
        b.wait().await;
    }
    let f = fake.lock().unwrap();
    match f.secrets.get(&(ns, name.clone())) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("secrets \"{name}\" not found"),
        ),
    }
}

async fn create_secret(
    State(fake): State<Shared>,
    Path(ns): Path<String>,
    axum::Json(mut secret): axum::Json<Value>,
) -> Response {
    let mut f = fake.lock().unwrap();
    // Later reads of a raced Secret are not held.
    f.get_barrier = None;
    let name = secret["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let key = (ns, name.clone());
    if f.secrets.contains_key(&key) {
        f.secret_conflicts += 1;
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("secrets \"{name}\" already exists"),
        );
    }
    f.secret_creates += 1;
    secret["metadata"]["resourceVersion"] = json!(f.bump());
    f.secrets.insert(key, secret.clone());
    (StatusCode::CREATED, axum::Json(secret)).into_response()
}

/// Starts the fake; returns its state and a kube client pointed at it.
async fn start_fake() -> (Shared, kube::KubeClient) {
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/namespaces/{ns}/secrets/{name}", get(get_secret))
        .route("/api/v1/namespaces/{ns}/secrets", axum::routing::post(create_secret))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = ::kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::KubeClient::try_from(config).unwrap();
    (fake, client)
}

// ---- a router that records what discovery asks ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Connect(String),
    Forget(String),
    /// `weft rmpeer PEER`, and whether with `--gone`.
    Rmpeer(PeerName, bool),
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    peers: Mutex<Vec<PeerView>>,
    peer_queries: Mutex<usize>,
    /// Refuse this many connects (a router still starting).
    refuse_connects: Mutex<usize>,
}

/// The recorder as the router discovery talks to.
struct Handle(Arc<Recorder>);

impl PeerControl for Handle {
    async fn connect(&self, addr: &PeerAddr) -> Result<(), String> {
        {
            let mut refuse = self.0.refuse_connects.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                return Err("no weft router is running".to_owned());
            }
        }
        self.0.calls.lock().unwrap().push(Call::Connect(addr.to_string()));
        Ok(())
    }

    async fn forget(&self, addr: &PeerAddr) -> Result<(), String> {
        self.0.calls.lock().unwrap().push(Call::Forget(addr.to_string()));
        Ok(())
    }

    async fn rmpeer(&self, peer: PeerName, gone: bool) -> ReclaimOutcome {
        self.0.calls.lock().unwrap().push(Call::Rmpeer(peer, gone));
        ReclaimOutcome::Started
    }

    async fn peers(&self) -> Result<Vec<PeerView>, String> {
        *self.0.peer_queries.lock().unwrap() += 1;
        Ok(self.0.peers.lock().unwrap().clone())
    }
}

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn queries(&self) -> usize {
        *self.peer_queries.lock().unwrap()
    }

    fn set_peers(&self, peers: Vec<PeerView>) {
        *self.peers.lock().unwrap() = peers;
    }
}

/// Polls `check` until it holds, failing the test after a deadline.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(Duration::from_secs(20), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting until {what}");
}

fn peer(id: u64, nickname: &str, ip: &str, established: bool) -> PeerView {
    PeerView {
        name: Some(PeerName::from_u64(id)),
        nickname: Some(nickname.to_owned()),
        ip: Some(ip.parse().unwrap()),
        established,
    }
}

fn connect(a: &str) -> Call {
    Call::Connect(a.to_owned())
}

#[tokio::test]
async fn discovery_connects_to_nodes_and_reclaims_only_dead_deleted_ones() {
    let (fake, client) = start_fake().await;
    {
        let mut f = fake.lock().unwrap();
        f.put_node("n1", &[("InternalIP", "10.0.0.1"), ("Hostname", "n1")]);
        f.put_node("n2", &[("InternalIP", "10.0.0.2"), ("Hostname", "n2")]);
        f.put_node("n3", &[("ExternalIP", "203.0.113.3"), ("InternalIP", "10.0.0.3")]);
    }
    let router = Arc::new(Recorder::default());
    router.set_peers(vec![peer(2, "n2", "10.0.0.2", true), peer(3, "n3", "10.0.0.3", true)]);
    let config = nodes::Config {
        grace: Duration::from_millis(300),
        poll: Duration::from_millis(20),
        ..nodes::Config::new("n1")
    };
    let task = tokio::spawn(kube::run_discovery(
        client,
        config,
        Handle(Arc::clone(&router)),
        std::future::pending(),
    ));

    // Listed nodes: their InternalIPs, not this router's own node.
    eventually("the listed nodes are connected", || router.calls().len() >= 2).await;
    assert_eq!(router.calls(), [connect("10.0.0.2:6783"), connect("10.0.0.3:6783")]);

    // A node added through the watch.
    eventually("the watch is open", || !fake.lock().unwrap().watchers.is_empty()).await;
    fake.lock().unwrap().put_node("n4", &[("InternalIP", "10.0.0.4")]);
    eventually("the new node is connected", || {
        router.calls().contains(&connect("10.0.0.4:6783"))
    })
    .await;

    // n2 and n3 are deleted; n2's router is still connected, n3's is dead.
    router.set_peers(vec![peer(2, "n2", "10.0.0.2", true), peer(3, "n3", "10.0.0.3", false)]);
    {
        let mut f = fake.lock().unwrap();
        f.delete_node("n2");
        f.delete_node("n3");
    }
    let n3 = PeerName::from_u64(3);
    eventually("the dead router is reclaimed", || {
        // Confirmed gone: a deleted Node's pods are deleted by Kubernetes.
        router.calls().contains(&Call::Rmpeer(n3, true))
    })
    .await;
    assert!(router.calls().contains(&Call::Forget("10.0.0.2:6783".into())));
    assert!(router.calls().contains(&Call::Forget("10.0.0.3:6783".into())));
    // n2 was judged on the same peers lists all along; give it several more
    // looks past its grace period, and it must still not be reclaimed.
    let n2 = PeerName::from_u64(2);
    let seen = router.queries();
    let grace_polls = 300 / 20;
    eventually("the peers list was read past n2's grace", || {
        let calls = router.calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Rmpeer(p, _) if *p == n2)),
            "a live router was reclaimed: {calls:?}"
        );
        router.queries() >= seen + 2 * grace_polls
    })
    .await;

    // n2's router dies: now it is reclaimed, once.
    router.set_peers(vec![peer(2, "n2", "10.0.0.2", false)]);
    eventually("the now dead router is reclaimed", || {
        router.calls().contains(&Call::Rmpeer(n2, true))
    })
    .await;
    let reclaims = router.calls().iter().filter(|c| matches!(c, Call::Rmpeer(..))).count();
    assert_eq!(reclaims, 2, "{:?}", router.calls());
    task.abort();
}

#[tokio::test]
async fn two_routers_racing_for_the_secret_share_one() {
    let (fake, client) = start_fake().await;
    // Both reads answer 404 only once both have asked: both then create.
    fake.lock().unwrap().get_barrier = Some(Arc::new(Barrier::new(2)));
    let (a, b) = tokio::join!(
        kube::cluster_secret(client.clone(), "kube-system", "weft-passwd"),
        kube::cluster_secret(client.clone(), "kube-system", "weft-passwd"),
    );
    let (a, a_origin) = a.unwrap();
    let (b, b_origin) = b.unwrap();
    assert_eq!(a.derive("test"), b.derive("test"), "both routers have the same secret");
    let mut origins = [a_origin, b_origin];
    origins.sort_by_key(|o| *o == SecretOrigin::Read);
    assert_eq!(origins, [SecretOrigin::Created, SecretOrigin::Read]);
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.secret_creates, 1, "exactly one router created the Secret");
        assert_eq!(f.secret_conflicts, 1, "the other got AlreadyExists");
        let stored = &f.secrets[&("kube-system".to_owned(), "weft-passwd".to_owned())];
        let value = stored["data"][kube::SECRET_KEY].as_str().unwrap();
        assert_eq!(value.len(), 88, "base64 of 64 hex characters: {value}");
    }

    // A third router, later: reads it, creates nothing.
    let (c, origin) = kube::cluster_secret(client, "kube-system", "weft-passwd")
        .await
        .unwrap();
    assert_eq!(origin, SecretOrigin::Read);
    assert_eq!(c.derive("test"), a.derive("test"));
    assert_eq!(fake.lock().unwrap().secret_creates, 1);
}

#[tokio::test]
async fn a_secret_without_the_key_is_an_error() {
    let (fake, client) = start_fake().await;
    fake.lock().unwrap().secrets.insert(
        ("ns".into(), "s".into()),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}, "data": {}}),
    );
    let err = kube::cluster_secret(client, "ns", "s").await.unwrap_err();
    assert!(err.to_string().contains("has no key \"weft-passwd\""), "{err}");
}

#[tokio::test]
async fn node_names_counts_every_node_for_the_ring_start() {
    let (fake, client) = start_fake().await;
    {
        let mut f = fake.lock().unwrap();
        f.put_node("n1", &[("InternalIP", "10.0.0.1")]);
        f.put_node("n2", &[]);
    }
    let mut names = kube::node_names(client).await.unwrap();
    names.sort();
    assert_eq!(names, ["n1", "n2"]);
}

#[tokio::test]
async fn a_node_deleted_while_the_watch_was_down_is_found_by_the_relist() {
    let (fake, client) = start_fake().await;
    {
        let mut f = fake.lock().unwrap();
        f.put_node("n2", &[("InternalIP", "10.0.0.2")]);
        f.put_node("n3", &[("InternalIP", "10.0.0.3")]);
    }
    let router = Arc::new(Recorder::default());
    let task = tokio::spawn(kube::run_discovery(
        client,
        nodes::Config::new("n1"),
        Handle(Arc::clone(&router)),
        std::future::pending(),
    ));
    eventually("the watch is open", || !fake.lock().unwrap().watchers.is_empty()).await;
    assert_eq!(router.calls(), [connect("10.0.0.2:6783"), connect("10.0.0.3:6783")]);

    // The watch breaks; n3 goes and n4 comes while nobody watches; the
    // resource version the watcher holds has expired by the time it returns.
    {
        let mut f = fake.lock().unwrap();
        f.watchers.clear();
        f.nodes.remove("n3");
        f.put_node("n4", &[("InternalIP", "10.0.0.4")]);
        f.expire_next_watch = true;
    }
    eventually("the relist forgets n3 and connects n4", || {
        let calls = router.calls();
        calls.contains(&Call::Forget("10.0.0.3:6783".into())) && calls.contains(&connect("10.0.0.4:6783"))
    })
    .await;
    assert!(fake.lock().unwrap().lists >= 2, "the nodes were listed again");
    assert!(!router.calls().contains(&Call::Forget("10.0.0.2:6783".into())));
    task.abort();
}

#[tokio::test]
async fn a_connect_the_router_refused_is_retried() {
    let (fake, client) = start_fake().await;
    fake.lock().unwrap().put_node("n2", &[("InternalIP", "10.0.0.2")]);
    let router = Arc::new(Recorder::default());
    *router.refuse_connects.lock().unwrap() = 2;
    let config = nodes::Config {
        poll: Duration::from_millis(20),
        ..nodes::Config::new("n1")
    };
    let task = tokio::spawn(kube::run_discovery(
        client,
        config,
        Handle(Arc::clone(&router)),
        std::future::pending(),
    ));
    eventually("the connect got through", || !router.calls().is_empty()).await;
    assert_eq!(router.calls(), [connect("10.0.0.2:6783")]);
    assert_eq!(*router.refuse_connects.lock().unwrap(), 0, "refused twice first");
    task.abort();
}
