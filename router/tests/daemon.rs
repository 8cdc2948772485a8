//! The daemon in process, over loopback: meshes form through gossip, a wrong
//! secret is refused and explained, and shutdown cleans up.
//!
//! Each daemon binds port 0 and gets its own temporary data directory and
//! API socket. State is read through the real API client, polled until a
//! deadline; every await is bounded, and nothing sleeps to wait for state.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_api::ClientError;
use weft_api::client::Client;
use weft_api::types::{AllocateRequest, ErrorCode, PeerState, ReclaimState, RingView, Status};
use weft_router::config::PeerRef;
use weft_router::config::{Cli, Command, LaunchConfig};
use weft_router::identity::Identity;
use weft_router::io::daemon::{Daemon, DaemonError};
use weft_router::secret::ClusterSecret;

const SECRET: &str = "correct horse battery staple";

/// Per-test log output, shown only when the test fails.
fn subscribe() -> tracing::subscriber::DefaultGuard {
    let sub = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new("weft_router=debug,quinn=info"))
        .finish();
    tracing::subscriber::set_default(sub)
}

/// Awaits `f`, failing the test after `secs` seconds.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

/// The stop signal and the join handle of a daemon's task.
type Task = (oneshot::Sender<()>, JoinHandle<Result<(), DaemonError>>);

/// A running daemon: its directory, API client, and how to stop it.
struct Running {
    _dir: TempDir,
    name: String,
    control: std::net::SocketAddr,
    api: Client,
    daemon: Option<Task>,
    stats: std::sync::Arc<weft_router::io::control::ControlStats>,
    metrics: std::sync::Arc<weft_router::metrics::Metrics>,
}

fn config(nickname: &str, dir: &Path, peers: &[String]) -> LaunchConfig {
    config_with(nickname, dir, peers, &[])
}

fn config_with(nickname: &str, dir: &Path, peers: &[String], extra: &[&str]) -> LaunchConfig {
    let api = dir.join("api.sock");
    let data = dir.join("data");
    let mut args = vec![
        "weft".to_owned(),
        "launch".to_owned(),
        "--name".to_owned(),
        nickname.to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--metrics-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--api-socket".to_owned(),
        api.display().to_string(),
        "--data-dir".to_owned(),
        data.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(peers.iter().cloned());
    let Command::Launch(launch) = Cli::try_parse_from(args).expect("valid flags").command else {
        panic!("not a launch command");
    };
    let mut config = launch.into_config().expect("valid launch config");
    // These daemons share the test's network namespace: control plane only.
    config.dataplane = false;
    config
}

async fn start(nickname: &str, secret: &str, peers: &[String]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = config(nickname, dir.path(), peers);
    start_with(dir, config, secret).await
}

/// Starts a daemon in `dir`, keeping the identity found there (a restart) or creating one.
async fn start_with(dir: TempDir, config: LaunchConfig, secret: &str) -> Running {
    let api = Client::new(config.api_socket.clone());
    let (identity, created) = Identity::load_or_create(&config.data_dir).unwrap();
    let secret = ClusterSecret::new(secret.as_bytes().to_vec()).unwrap();
    let daemon = within(10, "bind", Daemon::bind(config, identity, created, &secret))
        .await
        .expect("daemon binds");
    let (stop, stopped) = oneshot::channel::<()>();
    let running = Running {
        name: daemon.name().to_string(),
        control: daemon.control_addr(),
        stats: daemon.control_stats(),
        metrics: daemon.metrics(),
        api,
        _dir: dir,
        daemon: None,
    };
    let task = tokio::spawn(daemon.run(async {
        let _ = stopped.await;
    }));
    Running {
        daemon: Some((stop, task)),
        ..running
    }
}

impl Running {
    async fn status(&self) -> Status {
        within(10, "status", self.api.status()).await.expect("status answers")
    }

    /// Polls the status until `ok` holds, failing after `secs` seconds with the last status.
    async fn wait_until(&self, secs: u64, what: &str, ok: impl Fn(&Status) -> bool) -> Status {
        let mut last = None;
        let polled = tokio::time::timeout(Duration::from_secs(secs), async {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                interval.tick().await;
                let status = self.status().await;
                if ok(&status) {
                    return status;
                }
                last = Some(status);
            }
        })
        .await;
        match polled {
            Ok(status) => status,
            Err(_) => panic!("{what}: not within {secs} s; last status of {}: {last:#?}", self.name),
        }
    }

    async fn stop(&mut self) {
        let (stop, task) = self.daemon.take().expect("running");
        let _ = stop.send(());
        within(10, "shutdown", task)
            .await
            .expect("daemon task")
            .expect("clean shutdown");
    }
}

fn state_of(status: &Status, name: &str) -> Option<PeerState> {
    status
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routers_form_a_full_mesh_through_gossip() {
    let _log = subscribe();
    let mut a = start("a", SECRET, &[]).await;
    let peer = [a.control.to_string()];
    let mut b = start("b", SECRET, &peer).await;
    let mut c = start("c", SECRET, &peer).await;

    for (me, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        let names = [others[0].name.clone(), others[1].name.clone()];
        let status = me
            .wait_until(20, "both others established", |s| {
                names.iter().all(|n| state_of(s, n) == Some(PeerState::Established)) && s.connections_established == 2
            })
            .await;
        assert_eq!(status.name, me.name);
        assert_eq!(status.ipam.range, "10.32.0.0/12");
        assert_eq!(status.ipam.allocated, 0);
    }
    // Nicknames travel by gossip.
    let status = c.status().await;
    let b_entry = status
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(&b.name))
        .unwrap();
    assert_eq!(b_entry.nickname.as_deref(), Some("b"));
    assert!(a.metrics.encode().contains("weft_connections{state=\"established\"} 2"));

    // By default (--init-peer-count = PEERs + 1) a, launched alone, creates
    // the ring; b and c adopt it and get space from a when they allocate.
    let addr = allocate(&c, "first-on-c").await;
    let ring = within(10, "ring", c.api.ring()).await.unwrap();
    assert!(ring.owners.iter().any(|o| o.name == a.name), "{ring:#?}");
    assert!(
        ring.owners.iter().any(|o| o.name == c.name && o.owned > 0),
        "c got space for {addr}: {ring:#?}"
    );

    for r in [&mut a, &mut b, &mut c] {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_and_explained() {
    let _log = subscribe();
    let mut good = start("good", SECRET, &[]).await;
    let mut bad = start("bad", "not the cluster secret", &[good.control.to_string()]).await;

    let good_addr = good.control.to_string();
    let status = bad
        .wait_until(20, "retrying with an authentication reason", |s| {
            s.peers.iter().any(|p| {
                p.address.as_deref() == Some(good_addr.as_str())
                    && p.state == PeerState::Retrying
                    && p.reason.as_deref().is_some_and(|r| r.contains("authentication"))
            })
        })
        .await;
    assert_eq!(status.connections_established, 0);
    assert!(status.peers.iter().all(|p| p.state != PeerState::Established));

    // The good side counted the failure and never learned the bad router's name.
    assert!(good.stats.snapshot().handshake.authentication_failed >= 1);
    let status = good.status().await;
    assert_eq!(status.connections_established, 0);
    assert!(
        status
            .peers
            .iter()
            .all(|p| p.name.as_deref() != Some(bad.name.as_str()))
    );
    let scraped = good.metrics.encode();
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("weft_handshake_failures_total{reason=\"auth\"}") && !l.ends_with(" 0")),
        "{scraped}"
    );

    bad.stop().await;
    good.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_the_api_socket() {
    let _log = subscribe();
    let mut r = start("solo", SECRET, &[]).await;
    let path = r.api.path().to_path_buf();
    within(10, "healthz", r.api.healthz()).await.expect("API answers");
    assert!(path.exists());
    r.stop().await;
    assert!(!path.exists(), "{} is still there", path.display());
    assert!(within(10, "status after stop", r.api.status()).await.is_err());
}

/// Starts a daemon in a fresh directory with extra `weft launch` options.
async fn launch_with(nickname: &str, peers: Vec<String>, extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(nickname, dir.path(), &peers, extra);
    start_with(dir, config, SECRET).await
}

/// Polls the rings of `routers` until `ok` holds for them, failing after `secs` seconds with the last views.
/// Routers a, b and c over `range`, seeded `a,b,c`, b and c dialling a.
async fn seeded_three(range: &str) -> [Running; 3] {
    let seed = ["--ipalloc-range", range, "--ipalloc-init", "seed=a,b,c"];
    let a = launch_with("a", vec![], &seed).await;
    let peer = vec![a.control.to_string()];
    let b = launch_with("b", peer.clone(), &seed).await;
    let c = launch_with("c", peer, &seed).await;
    [a, b, c]
}

async fn wait_rings(routers: &[&Running], secs: u64, what: &str, ok: impl Fn(&[RingView]) -> bool) -> Vec<RingView> {
    let mut last = None;
    let polled = tokio::time::timeout(Duration::from_secs(secs), async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let mut views = Vec::with_capacity(routers.len());
            for r in routers {
                views.push(within(10, "ring", r.api.ring()).await.expect("the ring answers"));
            }
            if ok(&views) {
                return views;
            }
            last = Some(views);
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("{what}: not within {secs} s; last rings: {last:#?}"))
}

/// Whether `dead` was reclaimed and owns nothing in every view, and the views agree.
fn reclaimed(views: &[RingView], dead: &str) -> bool {
    views.iter().all(|v| {
        v.reclaims
            .iter()
            .any(|r| r.name == dead && r.state == ReclaimState::Done)
            && v.owners.iter().all(|o| o.name != dead)
    }) && views.windows(2).all(|w| w[0].ranges == w[1].ranges)
}

async fn allocate(r: &Running, id: &str) -> String {
    let req = AllocateRequest {
        id: id.to_owned(),
        iface: None,
        ip: None,
        net: None,
    };
    within(40, "allocate", r.api.allocate(&req))
        .await
        .unwrap_or_else(|e| panic!("allocate {id} on {}: {e}", r.name))
        .address
}

/// Three routers split the range by a seed list of nicknames, hand out
/// unique addresses, and a restarted router keeps what it handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_routers_allocate_unique_addresses_that_survive_a_restart() {
    let _log = subscribe();
    let seed = ["--ipalloc-range", "10.40.0.0/22", "--ipalloc-init", "seed=a,b,c"];
    let launch = |nick: &'static str, peers: Vec<String>| launch_with(nick, peers, &seed);
    let a = launch("a", vec![]).await;
    let peer = vec![a.control.to_string()];
    let b = launch("b", peer.clone()).await;
    let mut c = launch("c", peer).await;

    let mut seen = std::collections::BTreeSet::new();
    for (r, n) in [(&a, 0), (&b, 1), (&c, 2)] {
        for i in 0..3 {
            let addr = allocate(r, &format!("ctr-{n}-{i}")).await;
            assert!(addr.starts_with("10.40.") && addr.ends_with("/22"), "{addr}");
            assert!(seen.insert(addr.clone()), "{addr} handed out twice");
        }
        // A repeated request gets the same address.
        assert_eq!(
            allocate(r, &format!("ctr-{n}-0")).await,
            allocate(r, &format!("ctr-{n}-0")).await
        );
        let status = r.status().await;
        assert_eq!(status.ipam.allocated, 3);
        assert!(status.ipam.owned > 300, "{:?}", status.ipam);
    }
    // Every router's view of the ring converges: three owners, each range as
    // its owner advertises it (`allocated` is known only locally).
    wait_rings(&[&a, &b, &c], 20, "the rings to converge", |v| {
        v.windows(2).all(|w| w[0].ranges == w[1].ranges) && v[0].owners.len() == 3
    })
    .await;

    // c restarts from its data directory and keeps its allocations.
    let before = allocate(&c, "ctr-2-1").await;
    c.stop().await;
    let dir = c._dir;
    let config = config_with("c", dir.path(), &[a.control.to_string()], &seed);
    let mut c = start_with(dir, config, SECRET).await;
    assert_eq!(c.status().await.ipam.allocated, 3);
    assert_eq!(allocate(&c, "ctr-2-1").await, before);
    let mut a = a;
    let mut b = b;
    for r in [&mut a, &mut b, &mut c] {
        r.stop().await;
    }
}

/// `rmpeer` refuses a router that is still connected, and once it is gone
/// for good, the ranges move to the heir after every live router voted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmpeer_refuses_a_connected_router_and_reclaims_a_dead_one() {
    let _log = subscribe();
    let [mut a, mut b, mut c] = seeded_three("10.41.0.0/22").await;
    let c_name = c.name.clone();
    a.wait_until(20, "b and c established", |s| s.connections_established == 2)
        .await;
    let _ = allocate(&c, "doomed").await;

    let by_nick: PeerRef = "c".parse().unwrap();
    match within(10, "rmpeer", a.api.rmpeer(&by_nick.to_string(), false)).await {
        Err(ClientError::Api { error: e, .. }) => {
            assert_eq!(e.code, ErrorCode::Conflict);
            assert!(e.error.contains("connected"), "{}", e.error);
        }
        other => panic!("rmpeer of a connected router: {other:?}"),
    }

    c.stop().await;
    // Once nobody reports a connection to c, rmpeer starts; b votes; a inherits.
    let mut last = None;
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            match a.api.rmpeer(&by_nick.to_string(), false).await {
                Ok(view) => return view,
                Err(e) => last = Some(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("rmpeer never started: {last:?}"));
    assert_eq!(started.name, c_name);
    let done = wait_rings(&[&a, &b], 20, "the reclaim to finish", |v| reclaimed(v, &c_name)).await;
    assert_eq!(done[0].reclaims[0].heir.as_deref(), Some(a.name.as_str()));
    // a owns two thirds now and can hand out what c held.
    assert!(a.status().await.ipam.owned > 600);
    for r in [&mut a, &mut b] {
        r.stop().await;
    }
}

/// `weft reset` hands the router's ranges to a live router, removes its
/// state and stops it; the mesh needs no rmpeer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_hands_the_ranges_over_and_removes_the_state() {
    let _log = subscribe();
    let [mut a, mut b, mut c] = seeded_three("10.42.0.0/22").await;
    let c_name = c.name.clone();
    for r in [&a, &b, &c] {
        r.wait_until(20, "full mesh", |s| s.connections_established == 2).await;
    }
    let _ = allocate(&c, "gone-with-c").await;
    let data = c._dir.path().join("data");
    assert!(data.join("ipam").exists() && data.join("identity").exists());

    within(20, "reset", c.api.reset()).await.expect("reset succeeds");
    // The router stops by itself, its state gone.
    let (_, task) = c.daemon.take().unwrap();
    within(10, "c stops", task).await.unwrap().expect("clean stop");
    assert!(!data.join("ipam").exists(), "IPAM state removed");
    assert!(
        !data.join("identity").exists(),
        "identity removed: it never returns under this name"
    );

    wait_rings(&[&a, &b], 20, "the handover to finish", |v| reclaimed(v, &c_name)).await;
    for r in [&mut a, &mut b] {
        r.stop().await;
    }
}

/// Two rings created apart never merge: each router keeps its own, and
/// `weft status` says why it refuses the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separately_created_rings_refuse_to_merge_and_status_says_why() {
    let _log = subscribe();
    let launch = |nick: &'static str, seed: &'static str, peers: Vec<String>| async move {
        launch_with(
            nick,
            peers,
            &["--ipalloc-range", "10.43.0.0/24", "--ipalloc-init", seed],
        )
        .await
    };
    let mut a = launch("a", "seed=a", vec![]).await;
    let mut b = launch("b", "seed=b", vec![a.control.to_string()]).await;
    for r in [&a, &b] {
        let status = r
            .wait_until(20, "a refusal in the status", |s| {
                s.ipam
                    .problem
                    .as_deref()
                    .is_some_and(|p| p.contains("created separately"))
            })
            .await;
        assert_eq!(status.connections_established, 1, "the routers stay connected");
    }
    // Each still allocates from its own ring.
    assert!(allocate(&a, "x").await.starts_with("10.43.0."));
    assert!(allocate(&b, "x").await.starts_with("10.43.0."));
    let scraped = a.metrics.encode();
    assert!(
        scraped.contains("weft_allocation_duration_seconds_count 1"),
        "allocation latency is measured: {scraped}"
    );
    for r in [&mut a, &mut b] {
        r.stop().await;
    }
}

/// A corrupt IPAM state file stops the router at start, naming the file; it
/// is never silently replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_ipam_state_file_stops_the_router() {
    let _log = subscribe();
    let dir = tempfile::tempdir().unwrap();
    let config = config("a", dir.path(), &[]);
    let (identity, created) = Identity::load_or_create(&config.data_dir).unwrap();
    let path = config.data_dir.join("ipam");
    std::fs::write(&path, b"not an IPAM state file").unwrap();
    let secret = ClusterSecret::new(SECRET.as_bytes().to_vec()).unwrap();
    let err = within(10, "bind", Daemon::bind(config, identity, created, &secret))
        .await
        .expect_err("a corrupt state file must stop the router");
    let message = err.to_string();
    assert!(matches!(err, DaemonError::IpamState { .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"not an IPAM state file",
        "left as it was"
    );
}
