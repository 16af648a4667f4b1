//! `presence-proxy demo`: until the proxy runtime exists, shows the wire layer at work
//! on the bundled traces: each message parsed and validated, one line per file, and
//! one INVITE edited for forwarding the way the proxy will.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;

use crate::inspect::{describe_error, inspect_bytes};
use crate::sip::Message;
use crate::sip::edit::Editor;

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("sip" | "dat")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Runs the demo over `traces`.
pub fn demo(traces: &Path) -> ExitCode {
    let mut files = Vec::new();
    if let Err(e) = collect(traces, &mut files) {
        eprintln!("cannot read {}: {e}", traces.display());
        return ExitCode::from(2);
    }
    files.sort();
    let (mut valid, mut rejected) = (0, 0);
    let mut sample: Option<Message> = None;
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let bytes = Bytes::from(bytes);
        let report = inspect_bytes(bytes.clone());
        let last = report.text.lines().last().unwrap_or_default().to_string();
        println!("{:<60} {}", file.display(), last);
        if report.ok {
            valid += 1;
            if let Ok(msg) = Message::parse(bytes) {
                if sample.is_none() && msg.method() == Some(crate::sip::Method::Invite) {
                    sample = Some(msg);
                }
            }
        } else {
            rejected += 1;
        }
    }
    println!(
        "\n{valid} messages valid, {rejected} rejected (the RFC 4475 invalid ones are meant to be)"
    );
    if let Some(msg) = sample {
        let mut editor = Editor::new(&msg);
        editor
            .push_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-demo;rport")
            .prepend_record_route(b"<sip:127.0.0.1:5060;lr>");
        let forwarded = match editor.set_max_forwards(
            msg.max_forwards()
                .and_then(Result::ok)
                .unwrap_or(70)
                .saturating_sub(1),
        ) {
            Ok(_) => editor.finish(),
            Err(e) => {
                eprintln!("edit failed: {e}");
                return ExitCode::from(1);
            }
        };
        println!("\nThe first INVITE, as the proxy would forward it:\n");
        println!("{}", String::from_utf8_lossy(&forwarded));
        if let Err(e) = Message::parse(forwarded) {
            println!("forwarded copy does not parse: {}", describe_error(&e));
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
