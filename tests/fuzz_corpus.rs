//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' functions on
//! stable: every input the fuzzer kept, and every crash it once found, stays harmless.

use std::path::Path;

use weft::fuzzing::{Target, CLOUD_TARGETS, TARGETS};

fn all_targets() -> impl Iterator<Item = &'static (&'static str, Target)> {
    TARGETS.iter().chain(CLOUD_TARGETS)
}

#[test]
fn every_corpus_input_replays_without_a_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in all_targets() {
        let dir = corpus.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(outcome.is_ok(), "fuzz target {name} panicked on {}", path.display());
            replayed += 1;
        }
        assert!(replayed > 0, "no corpus for fuzz target {name} in {}", dir.display());
    }
    // No corpus without its target: a renamed target would otherwise stop being replayed.
    for entry in std::fs::read_dir(&corpus).expect("fuzz/corpus") {
        let name = entry.expect("corpus dir").file_name().into_string().expect("UTF-8 name");
        assert!(all_targets().any(|(t, _)| *t == name), "fuzz/corpus/{name} has no target in weft::fuzzing");
    }
}
