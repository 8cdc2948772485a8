//! The harness's one error type.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything the harness can fail at. Each variant keeps the context a test author needs: the command line
/// that failed and what it printed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command could not be started, usually because its program is not installed.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line, as a shell would show it.
        command: String,
        /// Why the operating system refused.
        #[source]
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}); stderr: {stderr}; stdout: {stdout}")]
    Failed {
        /// The command line, as a shell would show it.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
        /// What it wrote to stdout, trimmed (ping reports its failures here).
        stdout: String,
    },
    /// Waiting for, or stopping, a spawned process failed.
    #[error("could not wait for `{command}`: {source}")]
    Wait {
        /// The command line of the process.
        command: String,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// A condition polled by [`wait_until`](crate::wait_until) did not hold before its deadline.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was being waited for, as the caller described it.
        what: String,
        /// How long the caller was prepared to wait.
        timeout: Duration,
    },
    /// A command given to `spawn` would not run inside that namespace; build it with `cmd()` instead.
    #[error("refusing to spawn `{command}`: it does not run inside namespace {netns}; build it with cmd()")]
    OutsideNamespace {
        /// The command line that was refused.
        command: String,
        /// The namespace it should have entered.
        netns: String,
    },
    /// A caller passed a value the harness cannot use (a pod name, a host count).
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}
