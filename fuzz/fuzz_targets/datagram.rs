//! Fuzz target `datagram`: the checks live in `presence_proxy::fuzzing::datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::datagram(data));
