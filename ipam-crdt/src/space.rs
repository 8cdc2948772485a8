//! One router's own address space: which of its addresses are free and which
//! are allocated to whom. Local state, persisted, never gossiped (the ring
//! carries only the free counts).

use std::collections::BTreeMap;

use crate::replica::AllocKey;

/// Free intervals and allocations inside the ranges one router owns.
///
/// `free` holds disjoint, non-adjacent half-open intervals `start -> end`.
/// Reserved offsets (network, broadcast) are never in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Space {
    free: BTreeMap<u128, u128>,
    free_total: u128,
    by_key: BTreeMap<AllocKey, u128>,
    by_offset: BTreeMap<u128, AllocKey>,
}

impl Space {
    /// Adds `[start, end)` as free. It must not overlap anything already free.
    pub(crate) fn add_free(&mut self, start: u128, end: u128) {
        if start >= end {
            return;
        }
        debug_assert_eq!(self.count_free(start, end), 0, "adding space that is already free");
        self.free_total += end - start;
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = self.free.range(..start).next_back()
            && pe == start
        {
            self.free.remove(&ps);
            s = ps;
        }
        if let Some(ne) = self.free.remove(&end) {
            e = ne;
        }
        self.free.insert(s, e);
    }

    /// Removes `[start, end)`, which must lie inside one free interval.
    pub(crate) fn remove_free(&mut self, start: u128, end: u128) {
        let (&s, &e) = self
            .free
            .range(..=start)
            .next_back()
            .expect("span lies in a free interval");
        assert!(s <= start && end <= e, "span lies in a free interval");
        self.free.remove(&s);
        if s < start {
            self.free.insert(s, start);
        }
        if end < e {
            self.free.insert(end, e);
        }
        self.free_total -= end - start;
    }

    /// Whether `off` is free.
    pub(crate) fn is_free(&self, off: u128) -> bool {
        self.free.range(..=off).next_back().is_some_and(|(_, &e)| off < e)
    }

    /// The lowest free offset. O(log n).
    pub(crate) fn lowest_free(&self) -> Option<u128> {
        self.free.keys().next().copied()
    }

    /// The lowest free offset in `[start, end)`. O(log n).
    pub(crate) fn lowest_free_in(&self, start: u128, end: u128) -> Option<u128> {
        if let Some((_, &e)) = self.free.range(..=start).next_back()
            && start < e
        {
            return Some(start);
        }
        self.free.range(start..end).next().map(|(s, _)| *s)
    }

    /// The first free interval meeting `[start, end)`, clipped to it.
    pub(crate) fn first_free_span_in(&self, start: u128, end: u128) -> Option<(u128, u128)> {
        let s = self.lowest_free_in(start, end)?;
        let (_, &e) = self.free.range(..=s).next_back().expect("s is free");
        Some((s, e.min(end)))
    }

    /// The largest free interval (lowest on ties). O(intervals): used only when donating.
    pub(crate) fn largest_free(&self) -> Option<(u128, u128)> {
        let mut best: Option<(u128, u128)> = None;
        for (&s, &e) in &self.free {
            if best.is_none_or(|(bs, be)| e - s > be - bs) {
                best = Some((s, e));
            }
        }
        best
    }

    /// Number of free offsets in `[start, end)`.
    pub(crate) fn count_free(&self, start: u128, end: u128) -> u128 {
        let mut n = 0;
        let first = self.free.range(..=start).next_back().map_or(start, |(s, _)| *s);
        for (&s, &e) in self.free.range(first..end) {
            let (a, b) = (s.max(start), e.min(end));
            if a < b {
                n += b - a;
            }
        }
        n
    }

    /// Total free offsets.
    pub(crate) fn free_total(&self) -> u128 {
        self.free_total
    }

    /// Free intervals, in order.
    pub(crate) fn free_spans(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.free.iter().map(|(s, e)| (*s, *e))
    }

    /// Marks free `off` allocated to `key`.
    pub(crate) fn allocate(&mut self, key: AllocKey, off: u128) {
        self.remove_free(off, off + 1);
        self.by_offset.insert(off, key.clone());
        self.by_key.insert(key, off);
    }

    /// Frees `key`'s address; returns it.
    pub(crate) fn release(&mut self, key: &AllocKey) -> Option<u128> {
        let off = self.by_key.remove(key)?;
        self.by_offset.remove(&off);
        self.add_free(off, off + 1);
        Some(off)
    }

    pub(crate) fn offset_of(&self, key: &AllocKey) -> Option<u128> {
        self.by_key.get(key).copied()
    }

    pub(crate) fn holder_of(&self, off: u128) -> Option<&AllocKey> {
        self.by_offset.get(&off)
    }

    pub(crate) fn allocations(&self) -> impl Iterator<Item = (&AllocKey, u128)> + '_ {
        self.by_key.iter().map(|(k, o)| (k, *o))
    }

    pub(crate) fn allocated(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AllocKey {
        AllocKey::new(s, "eth0").unwrap()
    }

    #[test]
    fn add_coalesces_and_counts() {
        let mut s = Space::default();
        s.add_free(10, 20);
        s.add_free(30, 40);
        s.add_free(20, 30);
        assert_eq!(s.free_spans().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(s.free_total(), 30);
        s.add_free(0, 5);
        assert_eq!(s.free_total(), 35);
        assert_eq!(s.count_free(3, 12), 4);
    }

    #[test]
    fn allocate_release_round_trip() {
        let mut s = Space::default();
        s.add_free(1, 5);
        let off = s.lowest_free().unwrap();
        assert_eq!(off, 1);
        s.allocate(key("a"), off);
        assert_eq!(s.lowest_free(), Some(2));
        assert!(!s.is_free(1));
        assert_eq!(s.holder_of(1), Some(&key("a")));
        assert_eq!(s.free_total(), 3);
        assert_eq!(s.release(&key("a")), Some(1));
        assert_eq!(s.free_spans().collect::<Vec<_>>(), vec![(1, 5)]);
        assert_eq!(s.release(&key("a")), None);
    }

    #[test]
    fn lowest_free_in_window() {
        let mut s = Space::default();
        s.add_free(1, 5);
        s.add_free(10, 20);
        assert_eq!(s.lowest_free_in(0, 3), Some(1));
        assert_eq!(s.lowest_free_in(3, 12), Some(3));
        assert_eq!(s.lowest_free_in(5, 10), None);
        assert_eq!(s.lowest_free_in(6, 11), Some(10));
        assert_eq!(s.first_free_span_in(12, 15), Some((12, 15)));
        assert_eq!(s.largest_free(), Some((10, 20)));
    }

    #[test]
    fn remove_splits() {
        let mut s = Space::default();
        s.add_free(0, 10);
        s.remove_free(3, 6);
        assert_eq!(s.free_spans().collect::<Vec<_>>(), vec![(0, 3), (6, 10)]);
        assert_eq!(s.free_total(), 7);
    }
}
