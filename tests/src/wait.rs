//! Polling with a deadline, instead of sleeping and hoping.

use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// Calls `done` every 50 ms until it returns `true` or `timeout` has passed; `done` is always called at least
/// once, and once more at the deadline.
///
/// # Errors
/// [`Error::Timeout`] naming `what` if `done` never returned `true`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(10), "third call", || {
            calls += 1;
            calls == 3
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn times_out_naming_what_it_waited_for() {
        let mut calls = 0;
        let err = wait_until(Duration::from_millis(120), "the moon to turn blue", || {
            calls += 1;
            false
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { what, .. } if what == "the moon to turn blue"),
            "{err:?}"
        );
        assert!(err.to_string().contains("the moon to turn blue"));
        // 0, 50 and 100 ms, then once more at the 120 ms deadline.
        assert!((3..=5).contains(&calls), "polled {calls} times");
    }
}
