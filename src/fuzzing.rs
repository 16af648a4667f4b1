//! Checks shared by the cargo-fuzz targets in `fuzz/` and the stable regression tests
//! that replay their corpus (`tests/fuzz_corpus.rs`). Not part of the product API.
