//! One named network namespace, and the `ip` plumbing underneath everything else.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::Error;
use crate::process::{Process, Shared};

/// Something that lives in one network namespace (a host, a pod, or the
/// namespace itself): run commands and processes there without naming it.
pub trait InNamespace {
    /// Its namespace.
    fn netns(&self) -> &Netns;

    /// Its namespace's path, `/run/netns/NAME`. See [`Netns::path`].
    fn netns_path(&self) -> PathBuf {
        self.netns().path()
    }

    /// See [`Netns::cmd`].
    fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.netns().cmd(program)
    }

    /// See [`Netns::exec_ok`].
    ///
    /// # Errors
    /// As [`Netns::exec_ok`].
    fn exec_ok<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.netns().exec_ok(args)
    }

    /// See [`Netns::spawn`].
    ///
    /// # Errors
    /// As [`Netns::spawn`].
    fn spawn(&self, cmd: &mut Command) -> Result<Process, Error> {
        self.netns().spawn(cmd)
    }
}

impl InNamespace for Netns {
    fn netns(&self) -> &Netns {
        self
    }
}

/// A named network namespace (`/run/netns/NAME`) made by a [`Testbed`](crate::Testbed).
///
/// Commands built with [`cmd`](Self::cmd) run inside it through `ip netns exec`, so nothing a test starts runs
/// in the root namespace. The namespace is deleted by the testbed that made it, not by this value.
#[derive(Debug)]
pub struct Netns {
    name: String,
    shared: Arc<Shared>,
}

impl Netns {
    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/NAME`, for tools that take a path (CNI's `CNI_NETNS`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside this namespace: `ip netns exec NAME program`. Add arguments,
    /// environment and stdio as with any [`Command`].
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args` (program first) inside this namespace, waits for it, and returns its stdout.
    ///
    /// # Errors
    /// [`Error::Failed`] with the command line, exit status, stderr and stdout if it exits unsuccessfully;
    /// [`Error::Spawn`] if `ip` cannot be started.
    pub fn exec_ok<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        run(&mut cmd)
    }

    /// Starts `cmd`, which must have been built by [`cmd`](Self::cmd) on this namespace, in its own process
    /// group. The returned guard stops it (SIGTERM, then SIGKILL after a bounded wait) when dropped, and the
    /// testbed stops it too if the guard is leaked.
    ///
    /// # Errors
    /// [`Error::OutsideNamespace`] if `cmd` does not start with `ip netns exec NAME`; [`Error::Spawn`] if it
    /// cannot be started.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process, Error> {
        if !self.runs_inside(cmd) {
            return Err(Error::OutsideNamespace {
                command: describe(cmd),
                netns: self.name.clone(),
            });
        }
        Process::spawn(&self.shared, cmd)
    }

    /// The ids of every process whose network namespace this is (`ip netns pids`).
    ///
    /// # Errors
    /// If `ip netns pids` fails, e.g. because the namespace is gone.
    pub fn pids(&self) -> Result<Vec<u32>, Error> {
        pids(&self.name)
    }

    /// Creates the namespace `name`, records it in `shared` for deletion, and brings its loopback up.
    pub(crate) fn create(name: String, shared: &Arc<Shared>) -> Result<Self, Error> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        shared.add_netns(&name);
        let netns = Self {
            name,
            shared: Arc::clone(shared),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs `ip -n NAME args...`.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run(&mut cmd)
    }

    fn runs_inside(&self, cmd: &Command) -> bool {
        let args: Vec<&OsStr> = cmd.get_args().take(3).collect();
        cmd.get_program() == "ip" && args == [OsStr::new("netns"), OsStr::new("exec"), OsStr::new(&self.name)]
    }
}

/// The names of all named network namespaces on this machine (`ip netns list`).
///
/// # Errors
/// If `ip netns list` cannot be run.
pub fn netns_names() -> Result<Vec<String>, Error> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(parse_netns_list(&out))
}

/// Removes every namespace that belongs to `prefix`: named exactly `prefix` or starting with `prefix-`. Any
/// process still inside one is killed first, since a namespace with processes outlives its name.
///
/// [`Testbed::new`](crate::Testbed::new) calls this on its own prefix, which clears what an earlier run with the
/// same process id left behind when it crashed. Returns the names removed.
///
/// # Errors
/// If listing, killing or deleting fails; namespaces already removed are not retried.
pub fn sweep(prefix: &str) -> Result<Vec<String>, Error> {
    let stale: Vec<String> = netns_names()?
        .into_iter()
        .filter(|name| belongs_to(name, prefix))
        .collect();
    for name in &stale {
        kill_inside(name)?;
        delete(name)?;
    }
    Ok(stale)
}

/// Deletes the namespace `name`; its veths go with it.
pub(crate) fn delete(name: &str) -> Result<(), Error> {
    run(Command::new("ip").args(["netns", "delete", name])).map(drop)
}

/// SIGKILLs every process inside the namespace `name`.
pub(crate) fn kill_inside(name: &str) -> Result<(), Error> {
    let pids = pids(name)?;
    if pids.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    crate::process::signal("KILL", &pids)
}

/// Runs `cmd` to completion and returns its stdout, or an error with its command line and output.
pub(crate) fn run(cmd: &mut Command) -> Result<String, Error> {
    let output = cmd.output().map_err(|source| Error::Spawn {
        command: describe(cmd),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(Error::Failed {
            command: describe(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            stdout: stdout.trim().to_owned(),
        })
    }
}

/// The command line of `cmd` as a shell would show it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", arg.replace('\'', r"'\''"))
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pids(name: &str) -> Result<Vec<u32>, Error> {
    let out = run(Command::new("ip").args(["netns", "pids", name]))?;
    Ok(out.split_whitespace().filter_map(|pid| pid.parse().ok()).collect())
}

/// `ip netns list` prints `NAME` or `NAME (id: N)` per line.
fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn belongs_to(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

const NETNS_DIR: &str = "/run/netns";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netns_list_with_and_without_ids() {
        let out = "wt12-3-h2 (id: 2)\nwt12-3-h1 (id: 1)\nplain\n\n";
        assert_eq!(parse_netns_list(out), ["wt12-3-h2", "wt12-3-h1", "plain"]);
    }

    #[test]
    fn prefix_ownership_needs_a_dash_boundary() {
        assert!(belongs_to("wt12-1", "wt12-1"));
        assert!(belongs_to("wt12-1-h1", "wt12-1"));
        assert!(belongs_to("wt12-1-h1-a", "wt12-1"));
        assert!(
            !belongs_to("wt12-13-h1", "wt12-1"),
            "testbed 13 must survive a sweep of testbed 1"
        );
        assert!(!belongs_to("wt12", "wt12-1"));
    }

    #[test]
    fn describe_quotes_only_what_needs_it() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo it's", ""]);
        assert_eq!(describe(&cmd), r"sh -c 'echo it'\''s' ''");
    }
}
