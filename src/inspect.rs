//! `presence-proxy inspect FILE...`: parse each file as one UDP datagram and report
//! what the wire layer understands of it, or exactly what is wrong and where.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;

use crate::sip::header::ContactValue;
use crate::sip::{HeaderName, Message, ParseError, StartLine};

/// The outcome of inspecting one file.
#[derive(Debug)]
pub struct Report {
    /// Human-readable lines: start line, typed headers, then `ok` or the error.
    pub text: String,
    /// Whether the file is a valid SIP message.
    pub ok: bool,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Inspects one datagram's bytes.
pub fn inspect_bytes(bytes: Bytes) -> Report {
    let mut text = String::new();
    let is_response = bytes
        .iter()
        .skip_while(|&&c| c == b'\r' || c == b'\n')
        .take(4)
        .copied()
        .collect::<Vec<u8>>()
        .eq_ignore_ascii_case(b"SIP/");
    let result = Message::parse(bytes).and_then(|msg| {
        describe(&msg, &mut text)?;
        msg.validate()?;
        Ok(msg)
    });
    match result {
        Ok(_) => {
            text.push_str("ok\n");
            Report { text, ok: true }
        }
        Err(e) => {
            if is_response {
                let _ = writeln!(text, "error: {e} (an invalid response is dropped)");
            } else {
                let _ = writeln!(text, "error: {}", describe_error(&e));
            }
            Report { text, ok: false }
        }
    }
}

/// "kind at byte N in header H (would answer 400)".
pub fn describe_error(e: &ParseError) -> String {
    format!(
        "{e} (a request would be answered {} {})",
        e.response_status(),
        e.reason_phrase()
    )
}

fn describe(msg: &Message, out: &mut String) -> Result<(), ParseError> {
    match msg.start_line() {
        StartLine::Request { .. } => {
            let _ = writeln!(
                out,
                "request: {} {}",
                lossy(msg.method_bytes().unwrap_or_default()),
                lossy(msg.request_uri_bytes().unwrap_or_default())
            );
        }
        StartLine::Response { code, .. } => {
            let _ = writeln!(
                out,
                "response: {code} {}",
                lossy(msg.reason().unwrap_or_default())
            );
        }
    }
    for via in msg.vias() {
        let via = via?;
        let _ = writeln!(
            out,
            "  Via: transport={} host={} port={} branch={} received={} rport={}",
            lossy(via.transport()),
            lossy(via.host()),
            via.port().map_or("-".into(), |p| p.to_string()),
            lossy(via.branch().unwrap_or(b"-")),
            lossy(via.received().unwrap_or(b"-")),
            match via.rport() {
                None => "-".to_string(),
                Some(None) => "(requested)".to_string(),
                Some(Some(p)) => p.to_string(),
            }
        );
    }
    for (label, addr) in [("From", msg.from()), ("To", msg.to())] {
        if let Some(addr) = addr {
            let addr = addr?;
            let _ = writeln!(
                out,
                "  {label}: display={:?} uri={} tag={}",
                addr.display_name().unwrap_or_default(),
                lossy(addr.uri().as_bytes()),
                lossy(addr.tag().unwrap_or(b"-"))
            );
        }
    }
    if let Some(call_id) = msg.call_id() {
        let _ = writeln!(out, "  Call-ID: {}", lossy(call_id?));
    }
    if let Some(cseq) = msg.cseq() {
        let cseq = cseq?;
        let _ = writeln!(out, "  CSeq: {} {}", cseq.seq(), lossy(cseq.method_bytes()));
    }
    if let Some(mf) = msg.max_forwards() {
        let _ = writeln!(out, "  Max-Forwards: {}", mf?);
    }
    for contact in msg.contacts() {
        match contact? {
            ContactValue::Wildcard => out.push_str("  Contact: *\n"),
            ContactValue::Address(a) => {
                let _ = writeln!(
                    out,
                    "  Contact: uri={} expires={}",
                    lossy(a.uri().as_bytes()),
                    a.expires().map_or("-".into(), |e| e.to_string())
                );
            }
        }
    }
    for (label, list) in [
        ("Route", msg.routes().collect::<Vec<_>>()),
        ("Record-Route", msg.record_routes().collect()),
    ] {
        for r in list {
            let _ = writeln!(out, "  {label}: {}", lossy(r?.uri().as_bytes()));
        }
    }
    if let Some(expires) = msg.expires() {
        let _ = writeln!(out, "  Expires: {}", expires?);
    }
    if let Some(event) = msg.event() {
        let event = event?;
        let _ = writeln!(
            out,
            "  Event: {} id={}",
            lossy(event.package()),
            lossy(event.id().unwrap_or(b"-"))
        );
    }
    if let Some(state) = msg.subscription_state() {
        let _ = writeln!(out, "  Subscription-State: {}", lossy(state?.state()));
    }
    for (label, name) in [("P-Asserted-Identity", HeaderName::PAssertedIdentity)] {
        for _ in msg.fields_named(name).take(1) {
            for pai in msg.p_asserted_identities() {
                let _ = writeln!(out, "  {label}: {}", lossy(pai?.uri().as_bytes()));
            }
        }
    }
    if let Some(ct) = msg.content_type() {
        let ct = ct?;
        let _ = writeln!(
            out,
            "  Content-Type: {}/{}",
            lossy(ct.media_type()),
            lossy(ct.subtype())
        );
    }
    let _ = writeln!(
        out,
        "  body: {} bytes (Content-Length {})",
        msg.body().len(),
        msg.content_length()
            .map_or("absent".into(), |n| n.to_string())
    );
    Ok(())
}

/// Inspects a file; unreadable files are reported as such.
pub fn inspect_file(path: &Path) -> Report {
    match std::fs::read(path) {
        Ok(bytes) => inspect_bytes(Bytes::from(bytes)),
        Err(e) => Report {
            text: format!("error: cannot read {}: {e}\n", path.display()),
            ok: false,
        },
    }
}
