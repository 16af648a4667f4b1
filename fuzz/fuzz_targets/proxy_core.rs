#![no_main]
//! The sans-IO proxy core fed random message sequences from random sources at random
//! times: no panic, bounded state, no open relay (see `presence_proxy::fuzzing::proxy_core`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::proxy_core(data));
