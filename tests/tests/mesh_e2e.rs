//! End-to-end tests of the real `weft` binary: routers in host namespaces form a mesh, keep strangers out, hand out
//! unique pod addresses, and recover from a crash and from a partition.
//!
//! Each router runs `weft launch` inside its host's namespace; its status is read from the root namespace with
//! `weft status --json` over its API socket (a unix socket is reachable from any namespace). Needs root, like
//! every testbed test, and the binary built by `cargo build -p weft-router --bin weft` (which
//! `cargo test --workspace` does). When a test fails, every router's log is printed.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use weft_tests::{Host, InNamespace as _, Process, Testbed, testbed_or_skip, wait_until};

/// The control port every router listens on.
const PORT: u16 = 6783;
const SECRET: &str = "correct horse battery staple";
const OTHER_SECRET: &str = "a different cluster entirely";

#[test]
fn three_routers_reach_established() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let start = Instant::now();
    let [h1, h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    eprintln!("meshed {:?} after launch", start.elapsed());
    for router in [&h1, &h2, &h3] {
        let status = router.status().unwrap();
        assert_eq!(status.nickname, router.nickname, "{status:#?}");
    }
    // With the default --init-peer-count the routers agree on one ring by themselves, and every one allocates.
    let addrs: BTreeSet<String> = [&h1, &h2, &h3].iter().map(|r| r.allocate("first")).collect();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    assert!(
        addrs.iter().all(|a| a.starts_with("10.") && a.ends_with("/12")),
        "{addrs:?}"
    );
}

#[test]
fn wrong_secret_never_joins() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let good = write_secret(dir.path(), "secret", SECRET);
    let bad = write_secret(dir.path(), "other-secret", OTHER_SECRET);
    let h1 = Router::launch(tb.host(1), dir.path(), &good, &[]);
    let h2 = Router::launch(tb.host(2), dir.path(), &good, &[tb.host(1)]);
    let h3 = Router::launch(tb.host(3), dir.path(), &bad, &[tb.host(1)]);
    let routers = [&h1, &h2, &h3];

    wait_for(
        &routers[..2],
        Duration::from_secs(30),
        "h1 and h2 to be established",
        fully_meshed,
    );

    let h1_addr = peer_addr(tb.host(1));
    let window = Duration::from_secs(10);
    let observing = Instant::now();
    let mut refused = false;
    // A check on every poll: h3 must never get in, not merely be out at the end.
    wait_for(
        &routers,
        window + Duration::from_secs(5),
        "the observation window to pass",
        |s| {
            let [s1, s2, s3] = s else { unreachable!("three routers") };
            assert_eq!(
                s1.established(),
                BTreeSet::from([s2.name.as_str()]),
                "h1 lets in only h2"
            );
            assert_eq!(
                s2.established(),
                BTreeSet::from([s1.name.as_str()]),
                "h2 lets in only h1"
            );
            assert_eq!((s1.connections_established, s2.connections_established), (1, 1));
            assert!(s3.established().is_empty(), "h3 has the wrong secret but got in");
            assert_eq!(s3.connections_established, 0);
            // It learns nothing: no router's name (let alone topology) reaches it.
            assert!(
                s3.peers.iter().all(|peer| peer.name.is_none()),
                "h3 learned a router's name: {:?}",
                s3.peers
            );
            refused |= s3.peers.iter().any(|peer| {
                peer.address.as_deref() == Some(h1_addr.as_str())
                    && peer
                        .reason
                        .as_deref()
                        .is_some_and(|reason| reason.to_lowercase().contains("authenticat"))
            });
            observing.elapsed() >= window
        },
    );
    assert!(
        refused,
        "h3's status never showed {h1_addr} refused for authentication: {:#?}",
        h3.status()
    );
}

#[test]
fn kill_and_restart_rejoins() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let [h1, mut h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    let name = h2.status().unwrap().name;

    h2.kill();
    let restart = Instant::now();
    h2.start();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "the restarted h2 to be established with both others",
        fully_meshed,
    );
    eprintln!("h2 rejoined {:?} after its restart", restart.elapsed());
    assert_eq!(
        h2.status().unwrap().name,
        name,
        "h2 lost its identity across the restart"
    );
}

#[test]
fn cut_link_then_restore_reconverges() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let [h1, h2, h3] = mesh_of_three(&tb, dir.path(), &secret);
    let routers = [&h1, &h2, &h3];
    let h3_name = h3.status().unwrap().name;

    tb.cut(3).unwrap();
    let cut = Instant::now();
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(40),
        "h1 and h2 to drop the cut-off h3",
        |s| {
            let [s1, s2] = s else { unreachable!("two routers") };
            s1.established() == BTreeSet::from([s2.name.as_str()])
                && s2.established() == BTreeSet::from([s1.name.as_str()])
        },
    );
    eprintln!("h3 ({h3_name}) dropped {:?} after the cut", cut.elapsed());

    tb.restore(3).unwrap();
    let restore = Instant::now();
    wait_for(
        &routers,
        Duration::from_secs(90),
        "all three routers to be established again",
        fully_meshed,
    );
    eprintln!("meshed again {:?} after the restore", restore.elapsed());
}

/// Routers on three hosts split the pod range by a seed list and hand out unique addresses; a router killed with
/// SIGKILL keeps what it handed out, and a partition and its heal create no duplicates.
#[test]
fn ipam_addresses_stay_unique_across_crash_and_partition() {
    let tb = testbed_or_skip!(3);
    let dir = workdir();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let seed = ["--ipalloc-range", "10.44.0.0/22", "--ipalloc-init", "seed=h1,h2,h3"];
    let [h1, mut h2, h3] = mesh_of_three_with(&tb, dir.path(), &secret, &seed);
    let mut seen = BTreeSet::new();
    let mut remember = |addr: String| assert!(seen.insert(addr.clone()), "{addr} handed out twice");
    for (router, n) in [(&h1, 1), (&h2, 2), (&h3, 3)] {
        for i in 0..3 {
            let addr = router.allocate(&format!("ctr-{n}-{i}"));
            assert!(addr.starts_with("10.44.") && addr.ends_with("/22"), "{addr}");
            remember(addr);
        }
    }

    // SIGKILL: what was answered was on disk.
    let kept = h2.allocate("ctr-2-1");
    h2.kill();
    h2.start();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "the restarted h2 to rejoin",
        fully_meshed,
    );
    assert_eq!(h2.allocate("ctr-2-1"), kept, "h2 lost an allocation in the crash");

    // A partition: both sides keep allocating from their own space, and healing merges without duplicates.
    tb.cut(3).unwrap();
    let h3_name = h3.status().unwrap().name;
    wait_for(
        &[&h1, &h2],
        Duration::from_secs(40),
        "h1 and h2 to drop the cut-off h3",
        |s| s.iter().all(|status| !status.established().contains(h3_name.as_str())),
    );
    for i in 3..6 {
        remember(h3.allocate(&format!("ctr-3-{i}")));
        remember(h1.allocate(&format!("ctr-1-{i}")));
    }
    tb.restore(3).unwrap();
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(90),
        "all three routers to be established again",
        fully_meshed,
    );
    // Every view of the ring converges.
    let mut last = Vec::new();
    let converged = wait_until(Duration::from_secs(30), "the rings to converge", || {
        last = [&h1, &h2, &h3].iter().map(|r| r.ring_ranges()).collect();
        last.iter().all(|r| *r == last[0])
    });
    if let Err(err) = converged {
        panic!("{err}: {last:#?}");
    }
}

/// Launches routers on hosts 1-3 (2 and 3 given only host 1 as PEER) and waits until all three are established.
fn mesh_of_three<'t>(tb: &'t Testbed, dir: &Path, secret: &Path) -> [Router<'t>; 3] {
    mesh_of_three_with(tb, dir, secret, &[])
}

/// [`mesh_of_three`], with more `weft launch` options.
fn mesh_of_three_with<'t>(tb: &'t Testbed, dir: &Path, secret: &Path, extra: &[&str]) -> [Router<'t>; 3] {
    let h1 = Router::launch_with(tb.host(1), dir, secret, &[], extra);
    let h2 = Router::launch_with(tb.host(2), dir, secret, &[tb.host(1)], extra);
    let h3 = Router::launch_with(tb.host(3), dir, secret, &[tb.host(1)], extra);
    wait_for(
        &[&h1, &h2, &h3],
        Duration::from_secs(30),
        "all three routers to be established",
        fully_meshed,
    );
    [h1, h2, h3]
}

/// One `weft launch` in a host's namespace, restartable with the same arguments and data directory. When it is
/// dropped during a panic it prints its log.
struct Router<'t> {
    host: &'t Host,
    nickname: String,
    args: Vec<String>,
    socket: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl<'t> Router<'t> {
    /// Starts `weft launch` on `host` as `hN`, with its data, API socket and log under `dir`, dialling `peers`.
    fn launch(host: &'t Host, dir: &Path, secret: &Path, peers: &[&Host]) -> Self {
        Self::launch_with(host, dir, secret, peers, &[])
    }

    /// [`Router::launch`], with more `weft launch` options.
    fn launch_with(host: &'t Host, dir: &Path, secret: &Path, peers: &[&Host], extra: &[&str]) -> Self {
        let nickname = format!("h{}", host.index());
        let socket = dir.join(format!("{nickname}.sock"));
        let mut args: Vec<String> = vec![
            "launch".into(),
            "--name".into(),
            nickname.clone(),
            "--data-dir".into(),
            path_arg(&dir.join(&nickname)),
            "--password-file".into(),
            path_arg(secret),
            "--api-socket".into(),
            path_arg(&socket),
            "--listen".into(),
            peer_addr(host),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args.extend(peers.iter().map(|peer| peer_addr(peer)));
        let mut router = Self {
            host,
            log: dir.join(format!("{nickname}.log")),
            nickname,
            args,
            socket,
            process: None,
        };
        router.start();
        router
    }

    /// Starts the router, appending to its log.
    fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.nickname);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = self.host.cmd(weft());
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.process = Some(self.host.spawn(&mut cmd).unwrap());
    }

    /// SIGKILLs the router, as a crash would, and reaps it.
    fn kill(&mut self) {
        let process = self.process.take().expect("the router is running");
        let group = format!("-{}", process.pid());
        let status = Command::new("kill").args(["-KILL", "--", &group]).status().unwrap();
        assert!(status.success(), "kill -KILL -- {group} failed");
        wait_until(Duration::from_secs(5), "the killed router to exit", || {
            process.try_wait().unwrap().is_some()
        })
        .unwrap();
    }

    /// The router's status, or why it could not be read (not listening yet, an error reply).
    ///
    /// # Panics
    /// If the router has exited: nothing would come of waiting for it.
    fn status(&self) -> Result<Status, String> {
        if let Some(process) = &self.process
            && let Some(exit) = process.try_wait().unwrap()
        {
            panic!("router {} exited ({exit})", self.nickname);
        }
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return Err(format!(
                "weft status ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Status::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Runs `weft ARGS --api-socket SOCKET` against this router, from the root namespace.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(weft())
            .args(args)
            .arg("--api-socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `weft ipam allocate ID`: the address in CIDR form, the only line it prints.
    fn allocate(&self, id: &str) -> String {
        let out = self.cli(&["ipam", "allocate", id]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "weft ipam allocate {id} on {} ({}): {}{}",
            self.nickname,
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "allocate prints one line: {stdout:?}");
        lines[0].to_owned()
    }

    /// The ring's ranges as `weft ipam --json` shows them (first, last, owner), in address order.
    fn ring_ranges(&self) -> Vec<(String, String, String)> {
        let out = self.cli(&["ipam", "--json"]);
        assert!(out.status.success(), "weft ipam --json on {}", self.nickname);
        let value: Value = serde_json::from_slice(&out.stdout).unwrap();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        value
            .get("ranges")
            .and_then(Value::as_array)
            .expect("ranges")
            .iter()
            .map(|r| (text(r, "first"), text(r, "last"), text(r, "owner")))
            .collect()
    }

    /// The last lines of its log.
    fn log(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(no log: {err})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

impl Drop for Router<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Stopped first, so that the log is complete.
            drop(self.process.take());
            eprintln!(
                "----- log of router {} (last {LOG_TAIL} lines) -----\n{}\n----- end of log of {} -----",
                self.nickname,
                self.log(),
                self.nickname
            );
        }
    }
}

const LOG_TAIL: usize = 300;

/// What the tests read from `weft status --json`.
#[derive(Debug, Clone)]
struct Status {
    name: String,
    nickname: String,
    peers: Vec<Peer>,
    connections_established: u64,
}

#[derive(Debug, Clone)]
#[expect(dead_code, reason = "nickname is read through Debug, in failure messages")]
struct Peer {
    name: Option<String>,
    nickname: Option<String>,
    address: Option<String>,
    state: String,
    reason: Option<String>,
}

impl Status {
    fn parse(json: &str) -> Result<Self, String> {
        let bad = |what: &str| format!("status has no {what}: {json}");
        let text = |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let value: Value = serde_json::from_str(json).map_err(|err| format!("status is not JSON ({err}): {json}"))?;
        let peers = value
            .get("peers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("peers"))?
            .iter()
            .map(|peer| {
                Ok(Peer {
                    name: text(peer, "name"),
                    nickname: text(peer, "nickname"),
                    address: text(peer, "address"),
                    state: text(peer, "state").ok_or_else(|| bad("state for a peer"))?,
                    reason: text(peer, "reason"),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            name: text(&value, "name").ok_or_else(|| bad("name"))?,
            nickname: text(&value, "nickname").ok_or_else(|| bad("nickname"))?,
            peers,
            connections_established: value
                .get("connections_established")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("connections_established"))?,
        })
    }

    /// The peer names of the routers it is established with.
    fn established(&self) -> BTreeSet<&str> {
        self.peers
            .iter()
            .filter(|peer| peer.state == "established")
            .map(|peer| peer.name.as_deref().unwrap_or("<established without a name>"))
            .collect()
    }
}

/// Every router is established with every other one, and with nothing else.
fn fully_meshed(statuses: &[Status]) -> bool {
    statuses.iter().enumerate().all(|(i, status)| {
        let others: BTreeSet<&str> = statuses
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, other)| other.name.as_str())
            .collect();
        status.established() == others && status.connections_established == others.len() as u64
    })
}

/// Polls every router's status until `done` holds for all of them at once; panics after `timeout` with the
/// last statuses seen. `done` may assert, to check something on every poll.
fn wait_for(routers: &[&Router<'_>], timeout: Duration, what: &str, mut done: impl FnMut(&[Status]) -> bool) {
    let mut last = Vec::new();
    let waited = wait_until(timeout, what, || {
        last = routers
            .iter()
            .map(|router| (router.nickname.as_str(), router.status()))
            .collect();
        let statuses: Result<Vec<Status>, String> = last.iter().map(|(_, status)| status.clone()).collect();
        statuses.is_ok_and(|statuses| done(&statuses))
    });
    if let Err(err) = waited {
        panic!("{err}; last statuses: {last:#?}");
    }
}

/// `10.99.0.N:6783`: where host N's router listens, and how the others name it.
fn peer_addr(host: &Host) -> String {
    format!("{}:{PORT}", host.underlay_ip())
}

/// The `weft` binary of this workspace's debug build.
fn weft() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    let weft = target.join("debug").join("weft");
    assert!(
        weft.is_file(),
        "{} is missing: run `cargo build -p weft-router --bin weft` first",
        weft.display()
    );
    weft
}

/// A fresh directory for one test's secrets, data directories, sockets and logs; removed when dropped.
fn workdir() -> TempDir {
    tempfile::Builder::new().prefix("weft-e2e-").tempdir().unwrap()
}

/// Writes `secret` to `dir/name`, readable by its owner only, and returns the path.
fn write_secret(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(file, "{secret}").unwrap();
    path
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_owned()
}
