//! Deciding whether a namespace test can run here, and skipping (or, under CI, failing) when it cannot.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::sync::OnceLock;

use crate::netns::run;
use crate::testbed::next_prefix;

/// Why network namespace tests cannot run in this process (not root, no `ip`, `ip netns add` refused), or
/// `None` if they can. Probes once per process by creating and deleting a namespace.
pub fn netns_unavailable() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

/// Why `program` cannot be run (it is not an executable file on `PATH`), or `None` if it can.
pub fn missing_program(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .any(|file| fs::metadata(file).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0));
    (!found).then(|| format!("`{program}` is not installed (not found on PATH)"))
}

/// Reports that the calling test cannot run, for `reason`.
///
/// Under CI (the `CI` environment variable is set and not empty), where everything must run, this panics with
/// the reason. Elsewhere it prints `skipping: <reason>` to stderr and returns, and the caller returns early.
///
/// # Panics
/// Under CI, always.
pub fn skip_or_fail(reason: &str) {
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        panic!("{reason} (CI is set, so this test may not be skipped)");
    }
    eprintln!("skipping: {reason}");
}

/// Whether network namespace tests can run here; if not, says why through [`skip_or_fail`] (so under CI the
/// test fails) and returns `false`, and the caller returns early. For tests that make their own
/// [`TestNetns`](crate::TestNetns) rather than a testbed.
pub fn root_or_skip() -> bool {
    match netns_unavailable() {
        Some(reason) => {
            skip_or_fail(&reason);
            false
        }
        None => true,
    }
}

/// `let testbed = testbed_or_skip!(hosts);` builds a [`Testbed`](crate::Testbed) of `hosts` hosts, or returns
/// from the calling test (which must return `()`) after [`skip_or_fail`](crate::skip_or_fail) when network
/// namespaces are unavailable. A testbed that fails to build panics the test.
///
/// Tests returning `Result` use `let Some(testbed) = Testbed::for_test(n) else { return Ok(()) };`.
#[macro_export]
macro_rules! testbed_or_skip {
    ($hosts:expr) => {
        match $crate::Testbed::for_test($hosts) {
            ::core::option::Option::Some(testbed) => testbed,
            ::core::option::Option::None => return,
        }
    };
}

/// `require_program!("busybox");` returns from the calling test (which must return `()`) after
/// [`skip_or_fail`](crate::skip_or_fail) when `program` is not on `PATH`.
#[macro_export]
macro_rules! require_program {
    ($program:expr) => {
        if let ::core::option::Option::Some(reason) = $crate::missing_program($program) {
            $crate::skip_or_fail(&reason);
            return;
        }
    };
}

fn probe() -> Option<String> {
    if let Some(uid) = effective_uid().filter(|&uid| uid != 0) {
        return Some(format!(
            "network namespace tests need root, and the effective uid is {uid}"
        ));
    }
    let name = format!("{}-probe", next_prefix());
    if let Err(err) = run(Command::new("ip").args(["netns", "add", &name])) {
        return Some(format!("cannot create a network namespace: {err}"));
    }
    if let Err(err) = run(Command::new("ip").args(["netns", "delete", &name])) {
        return Some(format!("cannot delete network namespace {name}: {err}"));
    }
    None
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`), if it can be read.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_uid(&status)
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_field() {
        let status = "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn finds_sh_but_not_a_made_up_program() {
        assert_eq!(missing_program("sh"), None);
        let reason = missing_program("weft-no-such-program").unwrap();
        assert!(reason.contains("weft-no-such-program"), "{reason}");
    }
}
