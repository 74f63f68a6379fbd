//! The staleness rule of every cloud backend: a route whose subnet nobody leases is removed only
//! when two passes in a row found it so, the first at least [`STALE_GRACE`] before. A host that
//! just took a lease may have made its route before this agent's view of the leases caught up;
//! passes run on every lease event too, so two passes alone can be milliseconds apart.

use std::collections::BTreeMap;
use std::time::Duration;

// tokio's clock: paused in tests that pace rechecks, the system's otherwise.
use tokio::time::Instant;

/// How long a route must have been seen without a lease before it goes (at most: a backend
/// rechecking faster waits one recheck, [`grace`]).
pub const STALE_GRACE: Duration = Duration::from_secs(5);

/// The grace for a backend rechecking every `recheck`.
pub fn grace(recheck: Duration) -> Duration {
    STALE_GRACE.min(recheck)
}

#[derive(Debug)]
pub struct StaleTracker<K> {
    /// Each suspect and when it was first seen without a lease (in an unbroken run of passes).
    suspects: BTreeMap<K, Instant>,
    grace: Duration,
}

impl<K> Default for StaleTracker<K> {
    /// Two passes in a row suffice (passes far apart: unit tests, the cloud benchmark).
    fn default() -> Self {
        StaleTracker { suspects: BTreeMap::new(), grace: Duration::ZERO }
    }
}

impl<K: Ord + Clone> StaleTracker<K> {
    /// The agents' tracker: suspects are confirmed once seen for `grace` ([`grace`]).
    pub fn with_grace(grace: Duration) -> Self {
        StaleTracker { suspects: BTreeMap::new(), grace }
    }

    /// Takes this pass's stale candidates; returns those that were candidates on the previous
    /// pass too, first seen at least the grace ago (to remove now). The others are remembered.
    pub fn confirm(&mut self, candidates: impl IntoIterator<Item = K>) -> Vec<K> {
        let now = Instant::now();
        let mut next = BTreeMap::new();
        let mut confirmed = Vec::new();
        for key in candidates {
            let since = self.suspects.get(&key).copied();
            if since.is_some_and(|since| now.duration_since(since) >= self.grace) {
                confirmed.push(key.clone());
            }
            next.insert(key, since.unwrap_or(now));
        }
        self.suspects = next;
        confirmed
    }

    /// Forgets every suspect (leadership lost: the next leader keeps its own count).
    pub fn clear(&mut self) {
        self.suspects.clear();
    }

    /// Whether `key`, a candidate again, would be confirmed now (seen on the last pass, long enough ago).
    pub fn is_due(&self, key: &K) -> bool {
        self.suspects.get(key).is_some_and(|since| since.elapsed() >= self.grace)
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
    fn with_grace_a_second_pass_right_away_confirms_nothing() {
        let mut tracker = StaleTracker::with_grace(STALE_GRACE);
        assert!(tracker.confirm(["x"]).is_empty());
        assert!(tracker.suspects.contains_key("x") && !tracker.is_due(&"x"));
        assert!(tracker.confirm(["x"]).is_empty(), "a pass milliseconds later (a lease event)");
        // First seen long enough ago: confirmed (the first sighting is kept across passes).
        let long_ago = Instant::now().checked_sub(STALE_GRACE).expect("a clock past 5 s");
        tracker.suspects.insert("x", long_ago);
        assert!(tracker.is_due(&"x"));
        assert_eq!(tracker.confirm(["x"]), ["x"]);
    }

    #[test]
    fn cleared_on_lost_leadership() {
        let mut tracker = StaleTracker::default();
        assert!(tracker.confirm(["x"]).is_empty());
        assert!(tracker.suspects.contains_key("x"));
        tracker.clear();
        assert!(tracker.confirm(["x"]).is_empty());
    }
}
