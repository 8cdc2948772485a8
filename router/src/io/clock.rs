//! The router's clock: the one place that reads the time.
//!
//! Cores see time as [`Time`], milliseconds since an epoch; [`Clock`] picks
//! that epoch (when it is made) and maps between [`Time`] and the runtime's
//! clock. It reads tokio's clock, so tests that pause time
//! (`tokio::time::pause`) move it too. `router/clippy.toml` bans reading the
//! clock anywhere else.

use std::time::Duration;

use tokio::time::Instant;

use crate::core::Time;

/// Maps the runtime clock to the cores' [`Time`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch ([`Time::ZERO`]) is now.
    #[allow(
        clippy::disallowed_methods,
        reason = "the clock module is the one place that reads the clock"
    )]
    pub fn start() -> Self {
        Self { epoch: Instant::now() }
    }

    /// The current time, rounded down to the millisecond.
    #[allow(
        clippy::disallowed_methods,
        reason = "the clock module is the one place that reads the clock"
    )]
    pub fn now(&self) -> Time {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        Time::from_millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// The wall-clock time of `t`, as time since the Unix epoch (for
    /// timestamps that must keep growing across restarts).
    #[allow(
        clippy::disallowed_methods,
        reason = "the clock module is the one place that reads the clock"
    )]
    pub fn wall_at(&self, t: Time) -> Duration {
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let now = self.now();
        (wall_now + Duration::from_millis(t.as_millis())).saturating_sub(Duration::from_millis(now.as_millis()))
    }

    /// The runtime instant of `t`, for `tokio::time::sleep_until`. Times too
    /// far ahead to represent are clamped to [`FAR_FUTURE`] from the epoch.
    pub fn deadline(&self, t: Time) -> Instant {
        let after = Duration::from_millis(t.as_millis()).min(FAR_FUTURE);
        self.epoch.checked_add(after).unwrap_or(self.epoch)
    }
}

/// The latest deadline [`Clock::deadline`] returns: about thirty years, far
/// past any timer a core sets, and small enough for any `Instant`.
pub const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    // tokio's `test-util` (paused time) is not enabled in this workspace, so
    // this runs on the real clock with a short sleep.
    #[tokio::test]
    async fn now_and_deadline_agree() {
        let clock = Clock::start();
        let t = clock.now() + Duration::from_millis(20);
        tokio::time::sleep_until(clock.deadline(t)).await;
        assert!(clock.now() >= t, "woke at {:?}, before {t:?}", clock.now());
        assert_eq!(clock.deadline(Time::ZERO), clock.epoch);
        // A deadline beyond any real timer is clamped rather than overflowing.
        assert!(clock.deadline(Time::from_millis(u64::MAX)) > clock.deadline(t));
    }
}
