//! Traffic between pods and hosts: ICMP echo with busybox `ping`, and UDP and TCP with this crate's `weft-probe`
//! (echo servers, single asks, steady streams), whose output a [`Running`] collects line by line as it comes.
//!
//! Every pod of a test runs its echo servers on the same ports, [`UDP_PORT`] and [`TCP_PORT`]; each has its
//! own namespace. `weft-probe` is this crate's binary, built by `cargo test -p weft-tests` (and by
//! `cargo test --workspace`) next to the `weft` binary.

use std::io::{BufRead as _, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::router::built_binary;
use crate::{Error, InNamespace, Netns, Pod, Process, wait_until};

/// Where every pod's UDP echo server listens ([`echo_servers`]).
pub const UDP_PORT: u16 = 7000;

/// Where every pod's TCP echo server listens ([`echo_servers`]).
pub const TCP_PORT: u16 = 7001;

/// One ICMP echo from `ns` to `ip` (busybox ping), answered within 2 s.
///
/// # Errors
/// [`Error::Failed`] (with ping's output) when no answer came.
pub fn ping(ns: &impl InNamespace, ip: Ipv4Addr) -> Result<String, Error> {
    ns.exec_ok(["busybox", "ping", "-c", "1", "-W", "2", &ip.to_string()])
}

/// A UDP and a TCP echo server in `pod`, on [`UDP_PORT`] and [`TCP_PORT`], both ready. They stop when the
/// returned values are dropped.
///
/// # Panics
/// If either does not say it is ready within 10 s.
pub fn echo_servers(pod: &Pod) -> Vec<Running> {
    let (udp, tcp) = (UDP_PORT.to_string(), TCP_PORT.to_string());
    let servers = vec![
        Running::start(pod, "udp-echo", &["udp-echo", &udp]),
        Running::start(pod, "tcp-echo", &["tcp-echo", &tcp]),
    ];
    for server in &servers {
        server.wait_line(Duration::from_secs(10), |line| line == "ready");
    }
    servers
}

/// `weft-probe udp-ask --tries 3 --timeout-ms 1000 [OPTS] DEST TEXT` in `ns`: one datagram (tried up to three
/// times) and its echo. Returns its output, `ok attempts=N`; `opts` may override the defaults.
///
/// # Errors
/// [`Error::Failed`] when no echo came (or, with `--dont-fragment`, exit status 3 and `emsgsize`).
pub fn udp_ask(ns: &impl InNamespace, dest: SocketAddr, text: &str, opts: &[&str]) -> Result<String, Error> {
    let dest = dest.to_string();
    let mut args = vec![probe(), "udp-ask", "--tries", "3", "--timeout-ms", "1000"];
    args.extend_from_slice(opts);
    args.extend([dest.as_str(), text]);
    ns.exec_ok(args).map(|out| out.trim().to_owned())
}

/// `weft-probe tcp-ask --timeout-ms 5000 [OPTS] DEST TEXT` in `ns`: connects, sends, half-closes and checks
/// the echo. Returns its output, `ok`; `opts` may override the timeout.
///
/// # Errors
/// [`Error::Failed`] when the connection or the echo failed.
pub fn tcp_ask(ns: &impl InNamespace, dest: SocketAddr, text: &str, opts: &[&str]) -> Result<String, Error> {
    let dest = dest.to_string();
    let mut args = vec![probe(), "tcp-ask", "--timeout-ms", "5000"];
    args.extend_from_slice(opts);
    args.extend([dest.as_str(), text]);
    ns.exec_ok(args).map(|out| out.trim().to_owned())
}

/// The UDP echo server of `pod`.
pub fn udp_addr(pod: &Pod) -> SocketAddr {
    SocketAddr::from((pod.ip(), UDP_PORT))
}

/// The TCP echo server of `pod`.
pub fn tcp_addr(pod: &Pod) -> SocketAddr {
    SocketAddr::from((pod.ip(), TCP_PORT))
}

/// The path of this crate's `weft-probe` binary (see the module doc of `src/bin/weft-probe.rs`).
///
/// # Panics
/// If it has not been built.
pub fn probe() -> &'static str {
    static PROBE: OnceLock<String> = OnceLock::new();
    PROBE.get_or_init(|| {
        let path = built_binary("weft-probe", "cargo build -p weft-tests --bin weft-probe");
        path_str(&path).to_owned()
    })
}

/// A long-running process in a namespace (an echo server, a stream, a capture), with the lines it prints and
/// when each arrived. Stopped when dropped.
#[derive(Debug)]
pub struct Running {
    process: Option<Process>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    netns: String,
    kind: String,
    tag: String,
}

impl Running {
    /// Starts `weft-probe ARGS` in `ns` and collects its stdout. `kind` names it in messages; its last argument
    /// is its [`tag`](Self::tag).
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn start(ns: &impl InNamespace, kind: &str, args: &[&str]) -> Self {
        let mut cmd = ns.cmd(probe());
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        let process = ns.spawn(&mut cmd).unwrap();
        let stdout = process.take_stdout().expect("stdout is piped");
        let mut running = Self::read(process, stdout, ns.netns(), kind);
        running.tag = args.last().map(|s| (*s).to_owned()).unwrap_or_default();
        running
    }

    /// Collects the lines of `output` (the stdout or stderr of `process`, which runs in `netns`) from now on.
    pub fn read(process: Process, output: impl Read + Send + 'static, netns: &Netns, kind: &str) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        // Ends at EOF, when the process exits; never joined, so a stuck pipe cannot hang a test.
        thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((Instant::now(), line));
            }
        });
        Self {
            process: Some(process),
            lines,
            netns: netns.name().to_owned(),
            kind: kind.to_owned(),
            tag: String::new(),
        }
    }

    /// The name of the namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// What it is, as given to [`start`](Self::start) or [`read`](Self::read).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The last argument it was started with (a stream's tag); empty for [`read`](Self::read).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Every line so far, with when it arrived.
    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many lines start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.lines().iter().filter(|(_, l)| l.starts_with(prefix)).count()
    }

    /// When the last line starting with `prefix` arrived.
    pub fn last(&self, prefix: &str) -> Option<Instant> {
        self.lines()
            .iter()
            .rev()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }

    /// When the first line starting with `prefix` arrived at or after `since`.
    pub fn first_after(&self, prefix: &str, since: Instant) -> Option<Instant> {
        self.lines()
            .iter()
            .find(|(t, l)| *t >= since && l.starts_with(prefix))
            .map(|(t, _)| *t)
    }

    /// The longest time without a line starting with `prefix`, from `since` until now.
    pub fn longest_gap(&self, prefix: &str, since: Instant) -> Duration {
        let mut times: Vec<Instant> = vec![since];
        times.extend(
            self.lines()
                .iter()
                .filter(|(t, l)| *t >= since && l.starts_with(prefix))
                .map(|(t, _)| *t),
        );
        times.push(Instant::now());
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    /// Waits for a line for which `matches` holds, and returns it.
    ///
    /// # Panics
    /// If none comes within `timeout`, or the process exits first; with every line it printed.
    pub fn wait_line(&self, timeout: Duration, mut matches: impl FnMut(&str) -> bool) -> String {
        let mut found = None;
        let waited = wait_until(timeout, &format!("a line from {} in {}", self.kind, self.netns), || {
            found = self.lines().into_iter().map(|(_, l)| l).find(|l| matches(l));
            found.is_some() || self.process.as_ref().is_some_and(|p| !matches!(p.try_wait(), Ok(None)))
        });
        match (waited, found) {
            (Ok(()), Some(line)) => line,
            (result, _) => panic!(
                "{} in {}: {result:?}, exited: {:?}; its lines: {:?}",
                self.kind,
                self.netns,
                self.process.as_ref().map(Process::try_wait),
                self.lines()
            ),
        }
    }

    /// Stops the process now, as dropping this would (SIGTERM, then SIGKILL), keeping the lines it printed.
    ///
    /// # Errors
    /// As [`Process::stop`]. Stopping it a second time does nothing.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.process.take().map_or(Ok(()), |process| process.stop().map(drop))
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("the target directory's path is UTF-8")
}
