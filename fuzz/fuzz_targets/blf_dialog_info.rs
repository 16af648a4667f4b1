#![no_main]
//! Fuzz target `blf_dialog_info`: one NOTIFY body, read as dialog-info and as PIDF. No
//! panic; rendered documents for every phone profile parse back unchanged and keep the
//! profile rules; the merge state agrees with the parser (see
//! `presence_proxy::fuzzing::blf_dialog_info`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_proxy::fuzzing::blf_dialog_info(data));
