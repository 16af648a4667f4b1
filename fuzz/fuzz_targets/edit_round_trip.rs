//! Fuzz target `edit_round_trip`: the checks live in `presence_proxy::fuzzing::edit_round_trip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::edit_round_trip(data));
