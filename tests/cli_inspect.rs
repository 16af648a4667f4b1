//! `presence-proxy inspect`: what it prints and its exit status, run as a user would.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::process::Command;

fn inspect(files: &[&str]) -> (bool, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sip-traces/");
    let out = Command::new(env!("CARGO_BIN_EXE_presence-proxy"))
        .arg("inspect")
        .args(files.iter().map(|f| format!("{dir}{f}")))
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_valid_message_prints_its_typed_headers_and_ok() {
    let (ok, text) = inspect(&["rfc4475/wsinv.dat"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("request: INVITE sip:vivekg@chair-dnrc.example.com;unknownparam"),
        "{text}"
    );
    assert!(
        text.contains("Via: transport=TCP host=spindle.example.com"),
        "{text}"
    );
    assert!(text.contains("tag=98asjd8"), "{text}");
    assert!(text.contains("CSeq: 9 INVITE"), "{text}");
    assert!(text.trim_end().ends_with("ok"), "{text}");
}

#[test]
fn an_invalid_message_prints_kind_offset_header_and_status_and_exits_1() {
    let (ok, text) = inspect(&["rfc4475/wsinv.dat", "rfc4475/badvers.dat"]);
    assert!(!ok, "one invalid file makes the exit status 1");
    assert!(text.contains("error: bad_version at byte 33"), "{text}");
    assert!(text.contains("505"), "{text}");
    let (_, text) = inspect(&["rfc4475/scalar02.dat"]);
    assert!(
        text.contains("error: bad_header_value at byte 174 in header CSeq"),
        "{text}"
    );
    let (_, text) = inspect(&["rfc4475/bigcode.dat"]);
    assert!(
        text.contains("dropped"),
        "an invalid response is dropped, not answered: {text}"
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let (ok, text) = inspect(&["no-such-file.sip"]);
    assert!(!ok);
    assert!(text.contains("cannot read"), "{text}");
}
