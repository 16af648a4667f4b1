//! Fuzz target `stream`: the checks live in `presence_proxy::fuzzing::stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::stream(data));
