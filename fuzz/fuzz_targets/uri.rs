//! Fuzz target `uri`: the checks live in `presence_proxy::fuzzing::uri`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::uri(data));
