//! Secrets never reach a log: the etcd password, the AWS secret key, a GCE access token.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::path::Path;

/// Asserts that no file directly under `dir` holds `secret`, but those in `except` (the config
/// file that carries it). At least one file must have been read, or the check proves nothing.
pub fn assert_absent_under(dir: &Path, secret: &str, except: &[&Path]) {
    let mut read = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if except.contains(&path.as_path()) || !path.is_file() {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        assert!(!text.contains(secret), "{} holds a secret", path.display());
        read += 1;
    }
    assert!(read > 0, "no file to look at in {}", dir.display());
}

/// Asserts that none of `logs` (name, text) holds `secret`; every log must have something in it.
pub fn assert_absent_from(logs: impl IntoIterator<Item = (String, String)>, secret: &str) {
    let mut read = 0;
    for (name, text) in logs {
        assert!(!text.is_empty(), "{name} is empty: nothing to look at");
        assert!(!text.contains(secret), "{name} holds a secret");
        read += 1;
    }
    assert!(read > 0, "no log to look at");
}
