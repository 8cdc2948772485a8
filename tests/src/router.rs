//! The router under test: `weft launch` in a host's namespace, and what `weft status --json` and
//! `weft ipam --json` say about it.
//!
//! Each router runs `weft launch` inside its host's namespace; its status is read from the root namespace
//! over its API socket (a unix socket is reachable from any namespace). The binary is this workspace's debug
//! build (`cargo build -p weft-router --bin weft`, which `cargo test --workspace` does). When a test panics,
//! every router it launched prints its log.
//!
//! The JSON is read with `serde_json::Value`, not with the router's own types, so a renamed field fails here
//! as it would fail a user's script.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use tempfile::TempDir;

use crate::{Host, InNamespace as _, Pod, Process, Testbed, wait_until};

/// The control port every router listens on.
pub const CONTROL_PORT: u16 = 6783;

/// The data-plane port (`--dataplane-port`'s default).
pub const DATAPLANE_PORT: u16 = 6784;

/// One `weft launch` in a host's namespace, restartable with the same arguments and data directory. When it is
/// dropped during a panic it prints the end of its log.
#[derive(Debug)]
pub struct Router<'t> {
    host: &'t Host,
    nickname: String,
    args: Vec<String>,
    /// A program (and its arguments) the router runs under, like `strace`.
    wrapper: Vec<String>,
    data_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl<'t> Router<'t> {
    /// Starts `weft launch` on `host` as `hN`, with its data, API socket and log under `dir`, dialling `peers`.
    pub fn launch(host: &'t Host, dir: &Path, secret: &Path, peers: &[&Host]) -> Self {
        Self::launch_with(host, dir, secret, peers, &[])
    }

    /// [`Router::launch`], with more `weft launch` options. It listens on `10.99.0.N:6783`
    /// (`--listen`) and names each peer by that address; [`Launch`] launches it as users do.
    pub fn launch_with(host: &'t Host, dir: &Path, secret: &Path, peers: &[&Host], extra: &[&str]) -> Self {
        peers
            .iter()
            .fold(
                Launch::new(host, dir, secret).listen(peer_addr(host)).args(extra),
                |launch, peer| launch.peer(peer_addr(peer)),
            )
            .start()
    }

    /// Its nickname, `hN` for host N.
    pub fn nickname(&self) -> &str {
        &self.nickname
    }

    /// The host it runs on.
    pub fn host(&self) -> &'t Host {
        self.host
    }

    /// Its data directory (`--data-dir`), which holds its identity and state.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its API socket (`--api-socket`), for clients running apart from the test's thread.
    pub fn api_socket(&self) -> &Path {
        &self.socket
    }

    /// Starts the router, appending to its log.
    ///
    /// # Panics
    /// If it is running already, or cannot be started.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.nickname);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = match self.wrapper.split_first() {
            None => self.host.cmd(weft_binary()),
            Some((program, args)) => {
                let mut cmd = self.host.cmd(program);
                cmd.args(args).arg(weft_binary());
                cmd
            }
        };
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.process = Some(self.host.spawn(&mut cmd).unwrap());
    }

    /// SIGKILLs the router, as a crash would, and reaps it.
    ///
    /// # Panics
    /// If it is not running, or does not exit within 5 s.
    pub fn kill(&mut self) {
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
    /// # Errors
    /// `weft status` failed, or printed something that is not a status.
    ///
    /// # Panics
    /// If the router has exited: nothing would come of waiting for it.
    pub fn status(&self) -> Result<Status, String> {
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
    ///
    /// # Panics
    /// If `weft` cannot be run.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(weft_binary())
            .args(args)
            .arg("--api-socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Router::cli`] that must succeed: what it printed on standard output.
    ///
    /// # Panics
    /// If `weft` fails; the message has both outputs.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "weft {} on {} ({}): {stdout}{}",
            args.join(" "),
            self.nickname,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `weft ipam allocate ID`: the address in CIDR form, the only line it prints.
    ///
    /// # Panics
    /// If the allocation fails or prints anything else.
    pub fn allocate(&self, id: &str) -> String {
        let stdout = self.cli_ok(&["ipam", "allocate", id]);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "allocate prints one line: {stdout:?}");
        lines[0].to_owned()
    }

    /// [`Router::allocate`], parsed.
    ///
    /// # Panics
    /// As [`Router::allocate`], and if the address is not IPv4 CIDR.
    pub fn allocate_net(&self, id: &str) -> Ipv4Net {
        let addr = self.allocate(id);
        addr.parse()
            .unwrap_or_else(|err| panic!("{} allocated {addr:?}, not an IPv4 CIDR: {err}", self.nickname))
    }

    /// Plugs pod `suffix` into its host as the CNI plugin does: an address allocated here for the ID
    /// `hN-suffix`, and the link MTU `mtu` on both ends of its veth (the router's data-plane MTU, which pods
    /// must use; `None` leaves the veth's 1500).
    ///
    /// # Panics
    /// As [`Router::allocate_net`], and if the pod cannot be made.
    pub fn add_pod(&self, suffix: &str, mtu: Option<u16>) -> Pod {
        let addr = self.allocate_net(&format!("{}-{suffix}", self.nickname));
        let pod = self
            .host
            .add_pod(suffix, addr)
            .unwrap_or_else(|err| panic!("pod {suffix} on {}: {err}", self.nickname));
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            pod.exec_ok(["ip", "link", "set", "eth0", "mtu", &mtu]).unwrap();
            self.host
                .exec_ok(["ip", "link", "set", pod.host_veth(), "mtu", &mtu])
                .unwrap();
        }
        pod
    }

    /// The ring's ranges as `weft ipam --json` shows them (first, last, owner), in address order.
    pub fn ring_ranges(&self) -> Vec<(String, String, String)> {
        self.ring().ranges
    }

    /// The ring as `weft ipam --json` shows it.
    ///
    /// # Panics
    /// If `weft ipam --json` fails or prints something else.
    pub fn ring(&self) -> Ring {
        Ring::parse(&self.cli_ok(&["ipam", "--json"]))
    }

    /// `weft ipam allocations --json`: (id, address) of each allocation on this router, in the order it lists
    /// them; the router's own (`weft:` ids) among them.
    ///
    /// # Panics
    /// If the command fails or prints something else.
    pub fn allocations(&self) -> Vec<(String, String)> {
        let json = self.cli_ok(&["ipam", "allocations", "--json"]);
        let value: Value = serde_json::from_str(&json)
            .unwrap_or_else(|err| panic!("weft ipam allocations --json is not JSON ({err}): {json}"));
        let must = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no {k} in {v} of {json}"))
        };
        value
            .get("allocations")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("weft ipam allocations --json has no allocations: {json}"))
            .iter()
            .map(|a| (must(a, "id"), must(a, "address")))
            .collect()
    }

    /// Waits up to `timeout` for the router to exit by itself, and returns how it exited.
    ///
    /// # Panics
    /// If it was never started or does not exit in time.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let process = self.process.as_ref().expect("the router was started");
        let mut exit = None;
        let exited = wait_until(timeout, "the router to exit", || {
            exit = process.try_wait().unwrap();
            exit.is_some()
        });
        if let Err(err) = exited {
            panic!("{}: {err}", self.nickname);
        }
        exit.expect("it exited")
    }

    /// Whether it has exited (or was never started, or was killed).
    pub fn exited(&self) -> bool {
        self.process
            .as_ref()
            .is_none_or(|process| !matches!(process.try_wait(), Ok(None)))
    }

    /// The last lines of its log.
    pub fn log(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(no log: {err})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

/// A `weft launch` as users type it, `weft launch [OPTIONS] [PEER...]`, plus what every test router gets: the
/// name `hN`, and its data directory, API socket and log under the test's directory. Without
/// [`listen`](Self::listen) the router binds `0.0.0.0:6783` and has to find its own addresses, as it does on a
/// user's host.
///
/// ```no_run
/// # use weft_tests::router::{Launch, workdir, write_secret};
/// # let tb = weft_tests::Testbed::new(2).unwrap();
/// # let dir = workdir();
/// # let secret = write_secret(dir.path(), "secret", "s");
/// let h1 = Launch::new(tb.host(1), dir.path(), &secret).start();
/// let h2 = Launch::new(tb.host(2), dir.path(), &secret).peer("10.99.0.1").start(); // weft launch 10.99.0.1
/// ```
#[derive(Debug, Clone)]
#[must_use = "a launch does nothing until it is started"]
pub struct Launch<'t> {
    host: &'t Host,
    dir: PathBuf,
    secret: PathBuf,
    listen: Option<String>,
    options: Vec<String>,
    peers: Vec<String>,
    wrapper: Vec<String>,
}

impl<'t> Launch<'t> {
    /// A launch on `host`, with its data, API socket and log under `dir` and the cluster secret in the file
    /// `secret`; no peer, no other option.
    pub fn new(host: &'t Host, dir: &Path, secret: &Path) -> Self {
        Self {
            host,
            dir: dir.to_owned(),
            secret: secret.to_owned(),
            listen: None,
            options: Vec::new(),
            peers: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// `--listen ADDR`, e.g. [`peer_addr`] of its own host.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// One more PEER, as a user writes it: `10.99.0.1`, `10.98.0.3:6783`, a host name.
    pub fn peer(mut self, addr: impl Into<String>) -> Self {
        self.peers.push(addr.into());
        self
    }

    /// More `weft launch` options (they go before the PEERs).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.options.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// Runs the router under `program ARGS... weft launch ...` (and again
    /// so on every restart), e.g. `strace` to slow some system call down.
    pub fn under(mut self, program: &[&str]) -> Self {
        self.wrapper = program.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }

    /// Starts the router.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn start(self) -> Router<'t> {
        let nickname = format!("h{}", self.host.index());
        let data_dir = self.dir.join(&nickname);
        let socket = self.dir.join(format!("{nickname}.sock"));
        let mut args: Vec<String> = vec![
            "launch".into(),
            "--name".into(),
            nickname.clone(),
            "--data-dir".into(),
            path_arg(&data_dir),
            "--password-file".into(),
            path_arg(&self.secret),
            "--api-socket".into(),
            path_arg(&socket),
        ];
        if let Some(listen) = self.listen {
            args.extend(["--listen".into(), listen]);
        }
        args.extend(self.options);
        args.extend(self.peers);
        let mut router = Router {
            host: self.host,
            log: self.dir.join(format!("{nickname}.log")),
            nickname,
            args,
            wrapper: self.wrapper,
            data_dir,
            socket,
            process: None,
        };
        router.start();
        router
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
pub struct Status {
    /// `name`: the peer name.
    pub name: String,
    /// `nickname`.
    pub nickname: String,
    /// `peers`: every router known, and the connection to it.
    pub peers: Vec<Peer>,
    /// `connections_established`.
    pub connections_established: u64,
    /// `ipam`.
    pub ipam: IpamSummary,
    /// `host_address`: the host's own address on the pod network, if it has one yet.
    pub host_address: Option<Ipv4Addr>,
    /// `dataplane`, if the router reports one.
    pub dataplane: Option<Dataplane>,
    /// The whole answer, for what has no field here and for failure messages.
    pub json: Value,
}

/// `status.ipam`: this router's share of the pod range.
#[derive(Debug, Clone)]
pub struct IpamSummary {
    /// Addresses it owns.
    pub owned: u64,
    /// Addresses it handed out.
    pub allocated: u64,
    /// Why it has no ring, or refuses one; `None` when all is well.
    pub problem: Option<String>,
}

/// One entry of `status.peers`.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its peer name, once known.
    pub name: Option<String>,
    /// Its nickname, once known.
    pub nickname: Option<String>,
    /// The address connected to or dialled.
    pub address: Option<String>,
    /// `established`, `dialing`, ...
    pub state: String,
    /// Why it is not established.
    pub reason: Option<String>,
    /// `data`: the data-plane session with it; `None` from a router that does not report one per peer.
    pub data: Option<PeerData>,
}

/// `peers[].data`: this router's data-plane session with one other router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerData {
    /// `up` (keys to send with), `connecting` or `down`.
    pub state: String,
    /// The other router's data-plane address in use (its UDP port is [`DATAPLANE_PORT`] by default).
    pub endpoint: Option<SocketAddr>,
    /// What the session goes through when it is not direct; `None` when it is.
    pub via: Option<String>,
}

/// `status.dataplane`: the encrypted UDP tunnels and the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    /// The UDP port of encrypted pod traffic.
    pub port: u16,
    /// The MTU of the TUN device, which pods must use.
    pub mtu: u16,
    /// Routers with a data-plane session.
    pub sessions: u64,
    /// Routers the data plane knows.
    pub peers: u64,
    /// Inner packets sent to other routers.
    pub tx_packets: u64,
    /// Inner packets received from other routers and delivered.
    pub rx_packets: u64,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
}

impl Dataplane {
    /// The drop counter `reason`; a reason the router does not list counts 0.
    pub fn drops(&self, reason: &str) -> u64 {
        self.drops.get(reason).copied().unwrap_or(0)
    }

    /// Every drop counter.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }

    /// How each drop counter grew since `before`, leaving out those that did not.
    pub fn drops_since(&self, before: &Self) -> BTreeMap<String, u64> {
        self.drops
            .iter()
            .map(|(reason, &n)| (reason.clone(), n.saturating_sub(before.drops(reason))))
            .filter(|&(_, grew)| grew > 0)
            .collect()
    }
}

impl Status {
    /// Parses `weft status --json`.
    ///
    /// # Errors
    /// If it is not JSON or lacks a field every status has.
    pub fn parse(json: &str) -> Result<Self, String> {
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
                    data: match peer.get("data") {
                        None | Some(Value::Null) => None,
                        Some(data) => Some(PeerData::parse(data).map_err(|what| bad(&format!("peers[].data.{what}")))?),
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        let ipam = value.get("ipam").ok_or_else(|| bad("ipam"))?;
        let count = |key: &str| {
            ipam.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(&format!("ipam.{key}")))
        };
        let ipam = IpamSummary {
            owned: count("owned")?,
            allocated: count("allocated")?,
            problem: text(ipam, "problem"),
        };
        let host_address = match value.get("host_address") {
            None | Some(Value::Null) => None,
            Some(addr) => Some(
                addr.as_str()
                    .and_then(|addr| addr.split('/').next()?.parse().ok())
                    .ok_or_else(|| bad("IPv4 host_address"))?,
            ),
        };
        let dataplane = match value.get("dataplane") {
            None | Some(Value::Null) => None,
            Some(dp) => Some(Dataplane::parse(dp).map_err(|what| bad(&format!("dataplane.{what}")))?),
        };
        Ok(Self {
            name: text(&value, "name").ok_or_else(|| bad("name"))?,
            nickname: text(&value, "nickname").ok_or_else(|| bad("nickname"))?,
            peers,
            ipam,
            connections_established: value
                .get("connections_established")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("connections_established"))?,
            host_address,
            dataplane,
            json: value,
        })
    }

    /// The peer names of the routers it is established with.
    pub fn established(&self) -> BTreeSet<&str> {
        self.peers
            .iter()
            .filter(|peer| peer.state == "established")
            .map(|peer| peer.name.as_deref().unwrap_or("<established without a name>"))
            .collect()
    }

    /// The peer names of the routers it has a data-plane session with (`peers[].data.state` is `up`).
    pub fn data_up(&self) -> BTreeSet<&str> {
        self.peers
            .iter()
            .filter(|peer| peer.data.as_ref().is_some_and(|data| data.state == "up"))
            .filter_map(|peer| peer.name.as_deref())
            .collect()
    }

    /// The row of the router named `name`, if it has one.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.name.as_deref() == Some(name))
    }
}

impl PeerData {
    /// Parses `peers[].data`; the error names the missing or malformed field.
    fn parse(data: &Value) -> Result<Self, String> {
        let optional = |key: &str| match data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(key.to_owned()),
        };
        let state = optional("state")?.ok_or_else(|| "state".to_owned())?;
        let endpoint = optional("endpoint")?
            .map(|addr| addr.parse().map_err(|_| "endpoint".to_owned()))
            .transpose()?;
        Ok(Self {
            state,
            endpoint,
            via: optional("via")?,
        })
    }
}

impl Dataplane {
    /// Parses `status.dataplane`; the error names the missing or malformed field.
    fn parse(dp: &Value) -> Result<Self, String> {
        let count = |key: &str| dp.get(key).and_then(Value::as_u64).ok_or_else(|| key.to_owned());
        let small = |key: &str| count(key).and_then(|n| u16::try_from(n).map_err(|_| key.to_owned()));
        let drops = dp
            .get("drops")
            .and_then(Value::as_object)
            .ok_or_else(|| "drops".to_owned())?
            .iter()
            .map(|(reason, n)| Ok((reason.clone(), n.as_u64().ok_or_else(|| format!("drops.{reason}"))?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            port: small("port")?,
            mtu: small("mtu")?,
            sessions: count("sessions")?,
            peers: count("peers")?,
            tx_packets: count("tx_packets")?,
            rx_packets: count("rx_packets")?,
            drops,
        })
    }
}

/// What the tests read from `weft ipam --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// (first, last, owner), in address order.
    pub ranges: Vec<(String, String, String)>,
    /// The peer names of the routers that own space.
    pub owners: BTreeSet<String>,
    /// (removed router, state, heir, whether the removed router is known to have stopped) for each reclaim.
    pub reclaims: Vec<(String, String, Option<String>, bool)>,
}

impl Ring {
    /// Parses `weft ipam --json`.
    ///
    /// # Panics
    /// If it is not JSON or lacks a field.
    pub fn parse(json: &str) -> Self {
        let value: Value =
            serde_json::from_str(json).unwrap_or_else(|err| panic!("weft ipam --json is not JSON ({err}): {json}"));
        let list = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("weft ipam --json has no {key}: {json}"))
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let must = |v: &Value, k: &str| text(v, k).unwrap_or_else(|| panic!("no {k} in {v} of {json}"));
        let flag = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_bool)
                .unwrap_or_else(|| panic!("no {k} in {v} of {json}"))
        };
        Self {
            ranges: list("ranges")
                .iter()
                .map(|r| (must(r, "first"), must(r, "last"), must(r, "owner")))
                .collect(),
            owners: list("owners").iter().map(|o| must(o, "name")).collect(),
            reclaims: list("reclaims")
                .iter()
                .map(|r| (must(r, "name"), must(r, "state"), text(r, "heir"), flag(r, "stopped")))
                .collect(),
        }
    }

    /// The owners of the ranges that overlap `first..=last`.
    ///
    /// # Panics
    /// If an address is not IPv4.
    pub fn owners_within(&self, first: &str, last: &str) -> BTreeSet<&str> {
        let (first, last) = (ip(first), ip(last));
        self.ranges
            .iter()
            .filter(|(f, l, _)| ip(f) <= last && first <= ip(l))
            .map(|(_, _, owner)| owner.as_str())
            .collect()
    }

    /// Whether `name` owns any range.
    pub fn owns(&self, name: &str) -> bool {
        self.ranges.iter().any(|(_, _, owner)| owner == name)
    }

    /// The owner of the range holding `addr`, if any.
    ///
    /// # Panics
    /// If an address is not IPv4.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(f, l, _)| ip(f) <= addr && addr <= ip(l))
            .map(|(_, _, owner)| owner.as_str())
    }
}

fn ip(addr: &str) -> Ipv4Addr {
    addr.parse().unwrap_or_else(|err| panic!("{addr}: {err}"))
}

/// Polls every router's ring until they are all equal (in ranges and owners) and `done` holds for it.
///
/// # Panics
/// After `timeout`, with the last rings seen.
pub fn wait_for_rings(routers: &[&Router<'_>], timeout: Duration, what: &str, mut done: impl FnMut(&Ring) -> bool) {
    let mut last = Vec::new();
    let waited = wait_until(timeout, what, || {
        last = routers.iter().map(|r| (r.nickname(), r.ring())).collect();
        let (_, first) = &last[0];
        last.iter()
            .all(|(_, ring)| ring.ranges == first.ranges && ring.owners == first.owners)
            && done(first)
    });
    if let Err(err) = waited {
        panic!("{err} (all rings equal); last rings: {last:#?}");
    }
}

/// Every router is established with every other one, and with nothing else.
pub fn fully_meshed(statuses: &[Status]) -> bool {
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

/// For [`wait_for`]: no router is established with the one named `name` (cut off, say, or stopped).
pub fn none_established_with(name: &str) -> impl Fn(&[Status]) -> bool + '_ {
    move |statuses| statuses.iter().all(|status| !status.established().contains(name))
}

/// Polls every router's status until `done` holds for all of them at once; returns the statuses it held for.
/// `done` may assert, to check something on every poll.
///
/// # Panics
/// After `timeout`, with the last statuses seen.
pub fn wait_for(
    routers: &[&Router<'_>],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[Status]) -> bool,
) -> Vec<Status> {
    let mut last = Vec::new();
    let mut held = Vec::new();
    let waited = wait_until(timeout, what, || {
        last = routers
            .iter()
            .map(|router| (router.nickname(), router.status()))
            .collect();
        let statuses: Result<Vec<Status>, String> = last.iter().map(|(_, status)| status.clone()).collect();
        statuses.is_ok_and(|statuses| {
            let ok = done(&statuses);
            if ok {
                held = statuses;
            }
            ok
        })
    });
    if let Err(err) = waited {
        panic!("{err}; last statuses: {last:#?}");
    }
    held
}

/// Launches routers on hosts 1-3 of `tb` (h1 with no PEER, h2 and h3 given only h1), each with its data, API
/// socket and log under `dir`, and waits up to 30 s until all three are established with each other
/// ([`fully_meshed`]).
///
/// # Panics
/// If a router cannot be started, or the three do not mesh in time (with their last statuses).
pub fn mesh_of_three<'t>(tb: &'t Testbed, dir: &Path, secret: &Path) -> [Router<'t>; 3] {
    mesh_of_three_with(tb, dir, secret, &[])
}

/// [`mesh_of_three`], with more `weft launch` options for every router.
///
/// # Panics
/// As [`mesh_of_three`].
pub fn mesh_of_three_with<'t>(tb: &'t Testbed, dir: &Path, secret: &Path, extra: &[&str]) -> [Router<'t>; 3] {
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

/// `10.99.0.N:6783`: where host N's router listens, and how the others name it.
pub fn peer_addr(host: &Host) -> String {
    format!("{}:{CONTROL_PORT}", host.underlay_ip())
}

/// The `weft` binary of this workspace's debug build.
///
/// # Panics
/// If it has not been built.
pub fn weft_binary() -> PathBuf {
    built_binary("weft", "cargo build -p weft-router --bin weft")
}

/// The binary `name` of this workspace's debug build (in `CARGO_TARGET_DIR`, or the workspace's `target`).
///
/// # Panics
/// If it has not been built; the message says to run `build`.
pub(crate) fn built_binary(name: &str, build: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    let binary = target.join("debug").join(name);
    assert!(binary.is_file(), "{} is missing: run `{build}` first", binary.display());
    binary
}

/// A fresh directory for one test's secrets, data directories, sockets and logs; removed when dropped.
///
/// # Panics
/// If it cannot be made.
pub fn workdir() -> TempDir {
    tempfile::Builder::new().prefix("weft-e2e-").tempdir().unwrap()
}

/// Writes `secret` to `dir/name`, readable by its owner only, and returns the path.
///
/// # Panics
/// If the file exists or cannot be written.
pub fn write_secret(dir: &Path, name: &str, secret: &str) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as `weft status --json` prints it, with `PEERS` for its peer list.
    const STATUS: &str = r#"{
        "name": "00:00:00:00:00:00:00:01", "nickname": "h1", "version": "0.1.0", "peers": PEERS,
        "ipam": {"range": "10.32.0.0/12", "owned": 4, "free": 2, "allocated": 1},
        "connections_established": 1, "host_address": "10.32.0.1", "dataplane": null
    }"#;

    fn status(peers: &str) -> Result<Status, String> {
        Status::parse(&STATUS.replace("PEERS", peers))
    }

    #[test]
    fn peer_data_is_read_and_data_up_lists_only_named_peers_that_are_up() {
        let s = status(
            r#"[
            {"name": "00:00:00:00:00:00:00:02", "nickname": "h2", "address": "10.99.0.2:6783",
             "state": "established", "reason": null,
             "data": {"state": "up", "endpoint": "10.98.0.2:6784", "via": null}},
            {"name": "00:00:00:00:00:00:00:03", "nickname": "h3", "address": null,
             "state": "not_neighbour", "reason": null,
             "data": {"state": "connecting", "endpoint": null, "via": null}},
            {"name": null, "nickname": null, "address": "10.99.0.9:6783", "state": "retrying",
             "reason": "timed out", "data": {"state": "down", "endpoint": null, "via": null}}
        ]"#,
        )
        .unwrap();
        assert_eq!(s.data_up(), BTreeSet::from(["00:00:00:00:00:00:00:02"]));
        assert_eq!(
            s.peer("00:00:00:00:00:00:00:02").and_then(|p| p.data.clone()),
            Some(PeerData {
                state: "up".into(),
                endpoint: Some("10.98.0.2:6784".parse().unwrap()),
                via: None,
            })
        );
        assert_eq!(s.peers[2].data.as_ref().map(|d| d.state.as_str()), Some("down"));
        assert!(s.peer("00:00:00:00:00:00:00:09").is_none());
    }

    #[test]
    fn a_router_without_peer_data_still_parses() {
        let s = status(
            r#"[{"name": "00:00:00:00:00:00:00:02", "nickname": "h2", "address": "10.99.0.2:6783",
                 "state": "established", "reason": null}]"#,
        )
        .unwrap();
        assert_eq!(s.peers[0].data, None);
        assert!(s.data_up().is_empty());
        assert_eq!(s.established(), BTreeSet::from(["00:00:00:00:00:00:00:02"]));
    }

    #[test]
    fn none_established_with_looks_only_at_established_peers_of_that_name() {
        let s = status(
            r#"[{"name": "00:00:00:00:00:00:00:02", "nickname": "h2", "address": "10.99.0.2:6783",
                 "state": "established", "reason": null},
                {"name": "00:00:00:00:00:00:00:03", "nickname": "h3", "address": "10.99.0.3:6783",
                 "state": "retrying", "reason": "timed out"}]"#,
        )
        .unwrap();
        let statuses = [s];
        assert!(!none_established_with("00:00:00:00:00:00:00:02")(&statuses));
        assert!(none_established_with("00:00:00:00:00:00:00:03")(&statuses));
        assert!(none_established_with("00:00:00:00:00:00:00:04")(&statuses));
    }

    #[test]
    fn malformed_peer_data_is_an_error_naming_the_field() {
        let peer = |data: &str| {
            format!(
                r#"[{{"name": "00:00:00:00:00:00:00:02", "nickname": null, "address": null, "state": "established", "reason": null, "data": {data}}}]"#
            )
        };
        for (data, field) in [
            (r#"{"endpoint": null, "via": null}"#, "data.state"),
            (
                r#"{"state": "up", "endpoint": "10.98.0.2", "via": null}"#,
                "data.endpoint",
            ),
            (r#"{"state": "up", "endpoint": null, "via": 7}"#, "data.via"),
        ] {
            let err = status(&peer(data)).unwrap_err();
            assert!(err.contains(field), "{data}: {err}");
        }
    }
}
