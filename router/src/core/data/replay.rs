//! The sliding replay window of one receiving session (RFC 6479's bitmap).
//!
//! Each transport datagram carries its sender's counter, which never repeats
//! within a session. The window remembers which of the last
//! [`WINDOW`] counters below the highest seen have arrived, so a datagram
//! that arrives late (reordered, up to [`WINDOW`] behind) is still accepted
//! once, and a replayed one never is. Counters further behind are refused:
//! the window cannot tell whether they arrived.
//!
//! The bitmap is a ring of [`WORDS`] 64-bit words. Moving the window forward
//! clears only the words it passes over, so a jump costs at most [`WORDS`]
//! word writes, and a step costs one. Call [`ReplayWindow::accept`] only after
//! the datagram authenticated; an unauthenticated counter must never move the
//! window.

/// Words in the bitmap.
pub const WORDS: usize = 128;
const BITS: u64 = 64;
const RING_BITS: u64 = WORDS as u64 * BITS;
/// How far behind the highest counter seen a counter may be and still be
/// accepted (once): the bitmap less one word, which is always being reused.
pub const WINDOW: u64 = RING_BITS - BITS;

/// Replay state of one session.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest counter accepted, plus one (0: none yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// A window that has seen nothing.
    pub const fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Whether `counter` is new, and if so records it. `false` means a replay
    /// or a counter too far behind: drop the datagram.
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false; // `next` could not exceed it
        }
        let word = ((counter / BITS) % WORDS as u64) as usize;
        let bit = 1u64 << (counter % BITS);
        if counter >= self.next {
            // Move forward: clear every word between the current top word and
            // the new one (all of them if the jump is a whole ring or more).
            let top = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / BITS)
            };
            let new_top = counter / BITS;
            match top {
                Some(top) if new_top > top => {
                    let steps = (new_top - top).min(WORDS as u64);
                    for i in 1..=steps {
                        self.bitmap[((top + i) % WORDS as u64) as usize] = 0;
                    }
                }
                None => self.bitmap = [0; WORDS],
                Some(_) => {}
            }
            self.next = counter + 1;
            self.bitmap[word] |= bit;
            return true;
        }
        if self.next - 1 - counter >= WINDOW {
            return false;
        }
        if self.bitmap[word] & bit != 0 {
            return false;
        }
        self.bitmap[word] |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn in_order_reordered_and_replayed() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(1));
        assert!(!w.accept(5));
    }

    #[test]
    fn the_window_is_at_least_2048_wide() {
        const _: () = assert!(WINDOW >= 2048);
        let mut w = ReplayWindow::new();
        assert!(w.accept(10_000));
        assert!(w.accept(10_000 - WINDOW + 1), "just inside the window");
        assert!(!w.accept(10_000 - WINDOW), "just outside");
        assert!(!w.accept(0));
    }

    #[test]
    fn a_long_jump_forgets_everything_behind() {
        let mut w = ReplayWindow::new();
        for c in 0..200 {
            assert!(w.accept(c));
        }
        assert!(w.accept(1_000_000));
        assert!(w.accept(1_000_000 - 100), "a slot reused after the jump is empty");
        assert!(!w.accept(150));
    }

    #[test]
    fn the_last_counter_is_refused() {
        let mut w = ReplayWindow::new();
        assert!(!w.accept(u64::MAX));
        assert!(w.accept(u64::MAX - 1));
        assert!(!w.accept(u64::MAX - 1));
    }

    proptest! {
        /// Against a model that remembers every counter: accept iff never
        /// accepted and not more than WINDOW behind the highest.
        #[test]
        fn matches_a_model_that_remembers_everything(
            steps in proptest::collection::vec((0u64..3, 0u64..20_000), 1..400),
        ) {
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            let mut top: Option<u64> = None;
            let mut base = 0u64;
            for (kind, n) in steps {
                let c = match kind {
                    0 => base + n % 64,              // near the front
                    1 => base.saturating_sub(n),     // behind, maybe far
                    _ => { base += n; base },        // jump ahead
                };
                let expect = !seen.contains(&c) && top.is_none_or(|t| c > t || t - c < WINDOW);
                prop_assert_eq!(w.accept(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
                base = base.max(c);
            }
        }
    }
}
