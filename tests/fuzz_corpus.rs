//! Replays the named seeds of every fuzz target's corpus (`fuzz/corpus/<target>/`)
//! through the same checks the fuzz targets run (`presence_proxy::fuzzing`), on stable
//! Rust: CI without nightly still runs every target's seeds and every regression seed
//! (`regression-crash-*`) a fuzzing run has found.
//!
//! Files whose name starts with a hex digit are libFuzzer's own hash-named finds; they
//! are not committed (see `.gitignore`) and are skipped here so a local fuzzing run does
//! not change what this test checks. That is why a named seed must not start with a hex
//! digit (not even `crash-`: `c` is one).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use presence_proxy::fuzzing;

/// Regression seeds of bugs not fixed yet, as `(target, file name)`. Each must still
/// fail its check: once the fix lands the test fails until its entry is removed here,
/// which turns the seed into an ordinary regression test.
const KNOWN_OPEN: &[(&str, &str)] = &[];

/// Whether a corpus file is a named seed (not one of libFuzzer's hash-named finds).
fn is_named_seed(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| !matches!(c, '0'..='9' | 'a'..='f'))
}

/// The named seeds of one target, sorted.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_named_seed)
        })
        .collect();
    files.sort();
    files
}

/// Runs every named seed of `target` through `check`; reports every failure at once.
fn replay(target: &str, check: fn(&[u8])) {
    let files = seeds(target);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/{target} holds only {} named seeds",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let data = std::fs::read(path).expect("seed readable");
        let failed = catch_unwind(|| check(&data)).is_err();
        let open = KNOWN_OPEN.contains(&(target, name));
        match (failed, open) {
            (true, false) => failures.push(format!("{name}: check failed (see panic above)")),
            (false, true) => failures.push(format!(
                "{name}: passes now; remove it from KNOWN_OPEN in tests/fuzz_corpus.rs"
            )),
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz/corpus/{target}:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn datagram_corpus() {
    replay("datagram", fuzzing::datagram);
}

#[test]
fn stream_corpus() {
    replay("stream", fuzzing::stream);
}

#[test]
fn uri_corpus() {
    replay("uri", fuzzing::uri);
}

#[test]
fn edit_round_trip_corpus() {
    replay("edit_round_trip", fuzzing::edit_round_trip);
}

#[test]
fn every_known_open_seed_exists_and_is_replayed() {
    for (target, name) in KNOWN_OPEN {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
            .join(name);
        assert!(path.is_file(), "{} is listed but missing", path.display());
        assert!(
            is_named_seed(name),
            "{name} starts with a hex digit: git ignores it and replay skips it"
        );
    }
}

#[test]
fn proxy_core_corpus() {
    replay("proxy_core", fuzzing::proxy_core);
}

#[test]
fn observe_corpus() {
    replay("observe", fuzzing::observe);
}

#[test]
fn blf_dialog_info_corpus() {
    replay("blf_dialog_info", fuzzing::blf_dialog_info);
}
