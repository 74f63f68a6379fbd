//! Waiting for agents, kernels and clouds to get somewhere: poll a condition, fail with a name.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::time::{Duration, Instant};

/// How often [`until`] looks.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` every [`POLL`] until it holds; panics naming `what` after `within`. Returns how
/// long it took.
pub fn until(what: &str, within: Duration, check: impl FnMut() -> bool) -> Duration {
    until_every(what, within, POLL, check, String::new)
}

/// Like [`until`], polling every `poll` (checks that cost an API call poll less often), with
/// `context()` — logs, say — added to the panic message.
pub fn until_every(
    what: &str,
    within: Duration,
    poll: Duration,
    mut check: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) -> Duration {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > within {
            panic!("{what}: not within {within:?}\n{}", context());
        }
        std::thread::sleep(poll);
    }
    start.elapsed()
}
