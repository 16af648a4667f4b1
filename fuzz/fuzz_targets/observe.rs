#![no_main]
//! The phone-state observer fed random message sequences between four phones and the
//! PBX at random times: no panic, bounded state, an `external_phase` that matches the
//! calls, edge-triggered events, no call left once every timer has run out (see
//! `presence_proxy::fuzzing::observe`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::observe(data));
