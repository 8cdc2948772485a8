//! A network namespace of its own for one unit test, outside any testbed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{delete, kill_inside, run};

/// A network namespace `PREFIX<pid>-<n>` made with `ip netns add`, for a test that needs one or two namespaces
/// and none of a [`Testbed`](crate::Testbed)'s hosts, routers or underlay (the proxy's and weft-podlink's
/// tests of veths, routes and `weft-wait`). Its loopback stays down, as in a new namespace.
///
/// Dropping it kills whatever still runs inside and deletes it, with the veths in it, also when the test
/// panics. Call [`root_or_skip`](crate::root_or_skip) first.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Makes the namespace.
    ///
    /// # Panics
    /// If `ip netns add` fails.
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        must(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    /// Its name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args...`, which must succeed; returns its stdout.
    ///
    /// # Panics
    /// If it fails, with its command line and output.
    pub fn ip(&self, args: &[&str]) -> String {
        must(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `args` (program first) inside the namespace, which must succeed; returns its stdout.
    ///
    /// # Panics
    /// If it fails, with its command line and output.
    pub fn exec(&self, args: &[&str]) -> String {
        must(self.cmd(args[0]).args(&args[1..]))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let cleared = kill_inside(&self.name).and_then(|()| delete(&self.name));
        if let Err(e) = cleared
            && !std::thread::panicking()
        {
            panic!("cannot delete the network namespace {}: {e}", self.name);
        }
    }
}

fn must(cmd: &mut Command) -> String {
    run(cmd).unwrap_or_else(|e| panic!("{e}"))
}
