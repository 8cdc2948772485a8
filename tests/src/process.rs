//! Processes started inside namespaces, and the guard that stops them.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;
use crate::netns::{describe, run};

/// Guard for a process started by [`Netns::spawn`](crate::Netns::spawn) (or `Host::spawn`, `Pod::spawn`).
///
/// Dropping it stops the process's whole process group: SIGTERM, then SIGKILL if it is still running after
/// 2 s, and reaps it. If the guard is leaked, or outlives its [`Testbed`](crate::Testbed), the testbed stops the
/// process when it is dropped, before it deletes any namespace.
#[derive(Debug)]
pub struct Process {
    id: u64,
    pid: u32,
    command: String,
    shared: Arc<Shared>,
}

impl Process {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    ///
    /// # Errors
    /// If waiting fails, or if the testbed has already stopped it.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, Error> {
        self.with_child(|child| child.try_wait())
    }

    /// Takes its stdout, if it was spawned with `Stdio::piped()` and not taken before.
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.with_child(|child| Ok(child.stdout.take())).ok().flatten()
    }

    /// Takes its stderr, if it was spawned with `Stdio::piped()` and not taken before.
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.with_child(|child| Ok(child.stderr.take())).ok().flatten()
    }

    /// Stops it as dropping the guard would, and returns how it exited.
    ///
    /// # Errors
    /// If waiting fails, or if the testbed has already stopped it.
    pub fn stop(self) -> Result<ExitStatus, Error> {
        let Some(running) = self.shared.remove_child(self.id) else {
            return Err(self.stopped_by_testbed());
        };
        terminate(vec![running])
            .pop()
            .expect("terminate returns one result per process")
    }

    pub(crate) fn spawn(shared: &Arc<Shared>, cmd: &mut Command) -> Result<Self, Error> {
        let command = describe(cmd);
        // Its own group, so that stopping it also stops anything it started (a shell's children).
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id();
        let id = shared.add_child(Running {
            command: command.clone(),
            child,
        });
        Ok(Self {
            id,
            pid,
            command,
            shared: Arc::clone(shared),
        })
    }

    fn with_child<T>(&self, f: impl FnOnce(&mut Child) -> io::Result<T>) -> Result<T, Error> {
        let mut children = lock(&self.shared.children);
        let running = children
            .running
            .get_mut(&self.id)
            .ok_or_else(|| self.stopped_by_testbed())?;
        f(&mut running.child).map_err(|source| Error::Wait {
            command: self.command.clone(),
            source,
        })
    }

    fn stopped_by_testbed(&self) -> Error {
        Error::Wait {
            command: self.command.clone(),
            source: io::Error::other("already stopped by its testbed"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(running) = self.shared.remove_child(self.id) {
            for result in terminate(vec![running]) {
                if let Err(err) = result {
                    eprintln!("weft-tests: {err}");
                }
            }
        }
    }
}

/// What a testbed shares with its hosts, pods and process guards: the namespaces to delete and the processes
/// to stop.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    children: Mutex<Children>,
    namespaces: Mutex<Vec<String>>,
}

impl Shared {
    /// Records a namespace that now exists and must be deleted with the testbed.
    pub(crate) fn add_netns(&self, name: &str) {
        lock(&self.namespaces).push(name.to_owned());
    }

    /// Every namespace recorded so far, newest first (pods before hosts before the underlay).
    pub(crate) fn take_namespaces(&self) -> Vec<String> {
        let mut names = std::mem::take(&mut *lock(&self.namespaces));
        names.reverse();
        names
    }

    /// Stops every process still running, in parallel; returns the failures.
    pub(crate) fn stop_all(&self) -> Vec<Error> {
        let running: Vec<Running> = lock(&self.children)
            .running
            .drain()
            .map(|(_, running)| running)
            .collect();
        terminate(running).into_iter().filter_map(Result::err).collect()
    }

    fn add_child(&self, running: Running) -> u64 {
        let mut children = lock(&self.children);
        let id = children.next_id;
        children.next_id += 1;
        children.running.insert(id, running);
        id
    }

    fn remove_child(&self, id: u64) -> Option<Running> {
        lock(&self.children).running.remove(&id)
    }
}

/// Sends `SIG{signal}` to `targets` (pids, or `-PGID` for a group) with the shell's `kill` builtin: the only
/// way to send a signal other than SIGKILL without unsafe code or another crate, and `sh` is always there.
pub(crate) fn signal(signal: &str, targets: &[String]) -> Result<(), Error> {
    run(Command::new("sh")
        .args(["-c", r#"kill -s "$0" -- "$@""#, signal])
        .args(targets))
    .map(drop)
}

#[derive(Debug, Default)]
struct Children {
    next_id: u64,
    running: HashMap<u64, Running>,
}

#[derive(Debug)]
struct Running {
    command: String,
    child: Child,
}

/// SIGTERMs each process group, waits up to [`STOP_GRACE`] for the leaders to exit, SIGKILLs the rest, and reaps
/// all of them. Returns one result per process, in order.
fn terminate(mut running: Vec<Running>) -> Vec<Result<ExitStatus, Error>> {
    let mut status: Vec<Option<io::Result<ExitStatus>>> =
        running.iter_mut().map(|r| r.child.try_wait().transpose()).collect();
    let alive = live_groups(&running, &status);
    let grace = if alive.is_empty() {
        Duration::ZERO
    } else {
        match signal("TERM", &alive) {
            Ok(()) => STOP_GRACE,
            // A group that exited meanwhile fails only its own target; the others were signalled.
            Err(_) if alive.len() > 1 => STOP_GRACE,
            // It exited meanwhile (seen below), or `sh` cannot run: go straight to SIGKILL.
            Err(_) => Duration::ZERO,
        }
    };
    let deadline = Instant::now() + grace;
    loop {
        for (r, s) in running.iter_mut().zip(status.iter_mut()).filter(|(_, s)| s.is_none()) {
            *s = r.child.try_wait().transpose();
        }
        if status.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        thread::sleep(STOP_POLL);
    }
    let stubborn = live_groups(&running, &status);
    if !stubborn.is_empty() {
        // Best effort: the leader is killed directly below even if the group signal fails.
        let _ = signal("KILL", &stubborn);
    }
    running
        .iter_mut()
        .zip(status)
        .map(|(r, s)| {
            let s = s.unwrap_or_else(|| {
                // `kill` fails only if it already exited, which `wait` then reports.
                let _ = r.child.kill();
                r.child.wait()
            });
            s.map_err(|source| Error::Wait {
                command: r.command.clone(),
                source,
            })
        })
        .collect()
}

/// `-PGID` for each process that has not exited yet.
fn live_groups(running: &[Running], status: &[Option<io::Result<ExitStatus>>]) -> Vec<String> {
    running
        .iter()
        .zip(status)
        .filter(|(_, s)| s.is_none())
        .map(|(r, _)| format!("-{}", r.child.id()))
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves consistent data behind: every update is one call.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often to check whether it has exited meanwhile.
const STOP_POLL: Duration = Duration::from_millis(10);
