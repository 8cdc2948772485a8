//! weft-wait: hold a container's first instruction until its Weft mesh
//! interface is ready, then become that instruction.
//!
//! Docker starts a container's process as soon as the container starts, but
//! weft-proxy can only wire the interface `ethwe` into the container's network
//! namespace once the namespace exists, that is after the start. A program
//! that talks to the mesh at once would find no route. So the proxy makes this
//! program the container's entrypoint (bind-mounted at `/.weft/wait`) and the
//! original entrypoint and command its arguments: it polls
//! `/proc/net/route` until a route on `ethwe` appears (the proxy adds the
//! pod-range route last, when everything else works) and then `exec`s the
//! original program, which keeps the pid, the environment and the stdio.
//! Weave's proxy did the same with `weavewait`.
//!
//! It must run in any image, including `FROM scratch` ones with no shell and
//! no libc, so it uses std only and `proxy/build.rs` links it statically.
//!
//! Usage: `weft-wait [--timeout SECS] -- PROGRAM [ARGS...]`

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use std::{env, fs, io, thread};

const IFACE: &str = "ethwe";
const ROUTES: &str = "/proc/net/route";
const DEFAULT_TIMEOUT_SECS: u64 = 60;
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(20);
const USAGE: &str = "usage: weft-wait [--timeout SECS] -- PROGRAM [ARGS...]";

fn main() -> ExitCode {
    let (timeout_secs, program, args) = match parse(env::args_os().skip(1).collect()) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("weft-wait: {why}; {USAGE}");
            return ExitCode::from(2);
        }
    };
    if !wait_for_route(Duration::from_secs(timeout_secs)) {
        eprintln!(
            "weft-wait: the mesh interface {IFACE} did not appear within {timeout_secs} s; \
             is weft-proxy (or weft launch --proxy) running? \
             The container was not attached to the Weft mesh."
        );
        return ExitCode::from(1);
    }
    // `exec` searches PATH as execvp does and returns only on failure.
    let err = Command::new(&program).args(args).exec();
    eprintln!("weft-wait: cannot run {}: {err}", program.to_string_lossy());
    // As shells do: 127 when the program is not found, 126 when it cannot be run.
    ExitCode::from(if err.kind() == io::ErrorKind::NotFound { 127 } else { 126 })
}

/// Splits the command line into the timeout in seconds, the program and its arguments.
fn parse(mut argv: Vec<OsString>) -> Result<(u64, OsString, Vec<OsString>), String> {
    let mut timeout = DEFAULT_TIMEOUT_SECS;
    let mut rest = argv.drain(..);
    loop {
        let Some(arg) = rest.next() else {
            return Err("missing `-- PROGRAM`".into());
        };
        match arg.to_str() {
            Some("--") => break,
            Some("--timeout") => {
                let value = rest.next().ok_or("--timeout needs a number of seconds")?;
                timeout = value
                    .to_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("--timeout {}: not a whole number of seconds", value.to_string_lossy()))?;
            }
            _ => return Err(format!("unexpected argument {:?}", arg.to_string_lossy())),
        }
    }
    let program = rest.next().ok_or("no PROGRAM after `--`")?;
    Ok((timeout, program, rest.collect()))
}

/// Polls the routing table until it has a route on [`IFACE`]: first after 1 ms,
/// then backing off to every 20 ms. Returns false if `timeout` passes first.
fn wait_for_route(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        if has_route() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Whether `/proc/net/route` lists a route whose Iface column is exactly [`IFACE`].
/// An unreadable table counts as no route yet.
fn has_route() -> bool {
    fs::read_to_string(ROUTES).is_ok_and(|table| {
        // The first line is the header ("Iface\tDestination\t...").
        table.lines().skip(1).any(|line| line.split_whitespace().next() == Some(IFACE))
    })
}
