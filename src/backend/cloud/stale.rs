//! The staleness rule of every cloud backend: a route whose subnet nobody leases is removed only
//! when two passes in a row found it so. A host that just took a lease may have made its route
//! before this agent's view of the leases caught up.

use std::collections::BTreeSet;

#[derive(Debug)]
pub struct StaleTracker<K> {
    suspects: BTreeSet<K>,
}

impl<K> Default for StaleTracker<K> {
    fn default() -> Self {
        StaleTracker { suspects: BTreeSet::new() }
    }
}

impl<K: Ord + Clone> StaleTracker<K> {
    /// Takes this pass's stale candidates; returns those that were candidates on the previous
    /// pass too (to remove now). The others are remembered for the next pass.
    pub fn confirm(&mut self, candidates: impl IntoIterator<Item = K>) -> Vec<K> {
        let now: BTreeSet<K> = candidates.into_iter().collect();
        let confirmed = now.intersection(&self.suspects).cloned().collect();
        self.suspects = now;
        confirmed
    }

    /// Forgets every suspect (leadership lost: the next leader keeps its own count).
    pub fn clear(&mut self) {
        self.suspects.clear();
    }

    pub fn is_suspect(&self, key: &K) -> bool {
        self.suspects.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_only_when_seen_twice_in_a_row() {
        let mut tracker = StaleTracker::default();
        // (this pass's candidates, what is confirmed)
        let table: [(&[&str], &[&str]); 5] = [
            (&["a", "b"], &[]),
            (&["b", "c"], &["b"]),
            // `c` came back with a lease in between: a new suspect next time, not confirmed.
            (&["a"], &[]),
            (&["a"], &["a"]),
            (&[], &[]),
        ];
        for (pass, (candidates, confirmed)) in table.iter().enumerate() {
            let got = tracker.confirm(candidates.iter().copied());
            assert_eq!(got, confirmed.to_vec(), "pass {pass}");
        }
    }

    #[test]
    fn cleared_on_lost_leadership() {
        let mut tracker = StaleTracker::default();
        assert!(tracker.confirm(["x"]).is_empty());
        assert!(tracker.is_suspect(&"x"));
        tracker.clear();
        assert!(tracker.confirm(["x"]).is_empty());
    }
}
