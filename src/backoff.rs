//! Retry pacing, written once: exponential growth up to a cap, with jitter so hosts that failed
//! together (an etcd restart, a cloud API outage) do not retry together.
//!
//! The jitter is "full jitter" with a floor: the n-th delay is drawn uniformly from
//! `[first, min(max, first * 2^n)]`, so the first retry is never sooner than `first` and no retry
//! waits longer than `max`.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Exponential backoff with a cap and jitter.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The upper bound of the next delay: `first` doubled once per step, capped at `max`.
    ceiling: Duration,
    /// `None` draws nothing: every delay is its ceiling (for tests and callers that want exact steps).
    rng: Option<StdRng>,
}

impl Backoff {
    /// The agent's pacing for the store and lease acquisition: 200 ms, growing to 10 s.
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(10);

    /// [`Backoff::FIRST`] growing to [`Backoff::MAX`], jittered.
    pub fn new() -> Self {
        Self::exponential(Self::FIRST, Self::MAX)
    }

    /// `first` doubling up to `max` (at least `first`), jittered from the thread's RNG.
    pub fn exponential(first: Duration, max: Duration) -> Self {
        Self::build(first, max, Some(StdRng::from_rng(&mut rand::rng())))
    }

    /// The same growth with the jitter drawn from a seeded RNG: the same delays every run.
    pub fn seeded(first: Duration, max: Duration, seed: u64) -> Self {
        Self::build(first, max, Some(StdRng::seed_from_u64(seed)))
    }

    /// `first`, `2 * first`, `4 * first`, ... up to `max`, exactly.
    pub fn without_jitter(first: Duration, max: Duration) -> Self {
        Self::build(first, max, None)
    }

    fn build(first: Duration, max: Duration, rng: Option<StdRng>) -> Self {
        let max = max.max(first);
        Backoff { first, max, ceiling: first, rng }
    }

    /// The delay before the next retry.
    pub fn step(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        match &mut self.rng {
            Some(rng) if ceiling > self.first => rng.random_range(self.first..=ceiling),
            _ => ceiling,
        }
    }

    /// Starts over from `first`, after a success.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_jitter_doubles_up_to_the_cap() {
        let mut backoff = Backoff::without_jitter(100 * MS, 1000 * MS);
        let delays: Vec<_> = (0..7).map(|_| backoff.step()).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS, 1000 * MS]);
    }

    #[test]
    fn jittered_delays_stay_between_first_and_the_growing_ceiling() {
        let mut backoff = Backoff::seeded(100 * MS, 5000 * MS, 42);
        let mut ceiling = 100 * MS;
        for _ in 0..50 {
            let delay = backoff.step();
            assert!(delay >= 100 * MS && delay <= ceiling, "{delay:?} outside [100ms, {ceiling:?}]");
            ceiling = (ceiling * 2).min(5000 * MS);
        }
    }

    #[test]
    fn the_first_delay_is_first_and_jitter_spreads_the_rest() {
        let mut backoff = Backoff::seeded(100 * MS, 10_000 * MS, 1);
        assert_eq!(backoff.step(), 100 * MS);
        let later: Vec<_> = (0..20).map(|_| backoff.step()).collect();
        let distinct: std::collections::BTreeSet<_> = later.iter().collect();
        assert!(distinct.len() > 10, "jitter should spread the delays: {later:?}");
        assert!(later.iter().any(|d| *d > 5000 * MS), "the delays should grow towards the cap: {later:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let run = |seed| {
            let mut backoff = Backoff::seeded(10 * MS, 1000 * MS, seed);
            (0..10).map(|_| backoff.step()).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::without_jitter(100 * MS, 1000 * MS);
        backoff.step();
        backoff.step();
        backoff.reset();
        assert_eq!(backoff.step(), 100 * MS);
    }

    #[test]
    fn a_cap_below_first_is_first() {
        let mut backoff = Backoff::without_jitter(100 * MS, 10 * MS);
        assert_eq!(backoff.step(), 100 * MS);
        assert_eq!(backoff.step(), 100 * MS);
    }

    #[test]
    fn the_agent_pacing_is_200ms_to_10s() {
        let mut backoff = Backoff::new();
        assert_eq!(backoff.step(), Backoff::FIRST);
        for _ in 0..20 {
            assert!(backoff.step() <= Backoff::MAX);
        }
    }
}
