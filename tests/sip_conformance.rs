//! RFC 4475 torture messages: every message gets exactly the outcome its manifest
//! entry (`sip-traces/rfc4475/manifest.toml`) states, derived from the RFC's text.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use presence_proxy::sip::header::ContactValue;
use presence_proxy::sip::{HeaderName, Message, ParseError, Scheme};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Manifest {
    message: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    file: String,
    section: String,
    #[allow(dead_code)]
    title: String,
    verdict: String,
    status: Option<u16>,
    error: Option<String>,
    header: Option<String>,
    #[serde(default)]
    expect: BTreeMap<String, String>,
    why: String,
}

/// `Option::expect` with the manifest key in the message.
trait Need<T> {
    fn need(self, key: &str) -> T;
}

impl<T> Need<T> for Option<T> {
    fn need(self, key: &str) -> T {
        self.unwrap_or_else(|| panic!("{key}: the header this key reads is absent"))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn joined(
    items: impl Iterator<Item = Result<&'static [u8], ParseError>>,
) -> Result<String, ParseError> {
    let tokens: Result<Vec<String>, ParseError> = items.map(|r| r.map(text)).collect();
    Ok(tokens?.join(","))
}

/// The value of one manifest check key, read through the public API.
fn field(msg: &'static Message, key: &str) -> Result<String, ParseError> {
    Ok(match key {
        "method" => text(msg.method_bytes().need(key)),
        "request_uri" => text(msg.request_uri_bytes().need(key)),
        "ruri.scheme" => {
            let uri = msg.request_uri().need(key)?;
            match uri.scheme() {
                Scheme::Other => text(uri.scheme_raw()),
                _ => text(uri.scheme_raw()).to_ascii_lowercase(),
            }
        }
        "ruri.user" => {
            let uri = msg.request_uri().need(key)?;
            text(&uri.user_unescaped().unwrap_or_default())
        }
        "ruri.host" => text(msg.request_uri().need(key)?.host()),
        "status" => msg.status().need(key).to_string(),
        "reason" => text(msg.reason().need(key)),
        "call_id" => text(msg.call_id().need(key)?),
        "cseq" => {
            let c = msg.cseq().need(key)?;
            format!("{} {}", c.seq(), text(c.method_bytes()))
        }
        "max_forwards" => msg.max_forwards().need(key)?.to_string(),
        "from.tag" | "from.display" | "from.uri" | "to.tag" | "to.display" | "to.uri" => {
            let (which, part) = key.split_once('.').unwrap_or_default();
            let addr = if which == "from" {
                msg.from()
            } else {
                msg.to()
            };
            let addr = addr.need(key)?;
            match part {
                "tag" => text(addr.tag().unwrap_or_default()),
                "display" => addr.display_name().unwrap_or_default(),
                _ => text(addr.uri().as_bytes()),
            }
        }
        "via.count" => msg.vias().collect::<Result<Vec<_>, _>>()?.len().to_string(),
        "via.branch" | "via.transport" | "via.host" | "via.port" => {
            let via = msg.top_via().need(key)?;
            match key {
                "via.branch" => text(via.branch().unwrap_or_default()),
                "via.transport" => text(via.transport()),
                "via.host" => text(via.host()),
                _ => via.port().map(|p| p.to_string()).unwrap_or_default(),
            }
        }
        "contact.count" => msg
            .contacts()
            .collect::<Result<Vec<_>, _>>()?
            .len()
            .to_string(),
        "contact.uri" | "contact.expires" => {
            let contact = msg.contacts().next().need(key)?;
            match contact {
                ContactValue::Wildcard => "*".to_string(),
                ContactValue::Address(a) if key == "contact.uri" => text(a.uri().as_bytes()),
                ContactValue::Address(a) => a.expires().map(|e| e.to_string()).unwrap_or_default(),
            }
        }
        "content_length" => msg.content_length().need(key).to_string(),
        "body.len" => msg.body().len().to_string(),
        "content_type" => {
            let ct = msg.content_type().need(key)?;
            format!("{}/{}", text(ct.media_type()), text(ct.subtype()))
        }
        "proxy_require" => joined(msg.proxy_require())?,
        "require" => joined(msg.require())?,
        "supported" => joined(msg.supported())?,
        "expires" => msg.expires().need(key)?.to_string(),
        _ => {
            if let Some(name) = key.strip_prefix("header_count.") {
                msg.header_count(known(name)).to_string()
            } else if let Some(name) = key.strip_prefix("header.") {
                text(msg.header(known(name)).need(key))
            } else {
                panic!("unknown manifest key {key}")
            }
        }
    })
}

fn known(name: &str) -> HeaderName {
    let h = HeaderName::from_bytes(name.as_bytes());
    assert_ne!(
        h,
        HeaderName::Other,
        "manifest names a header this layer does not know: {name}"
    );
    h
}

fn rfc4475_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sip-traces/rfc4475"))
}

#[test]
fn every_torture_message_gets_its_manifest_outcome() {
    let manifest: Manifest = toml::from_str(
        &std::fs::read_to_string(rfc4475_dir().join("manifest.toml")).expect("manifest readable"),
    )
    .expect("manifest is valid TOML");
    assert_eq!(manifest.message.len(), 50, "one entry per RFC 4475 message");
    let mut failures = Vec::new();
    for entry in &manifest.message {
        assert!(
            !entry.why.is_empty() && !entry.section.is_empty(),
            "{}: needs section and why",
            entry.file
        );
        let bytes = std::fs::read(rfc4475_dir().join(&entry.file)).expect("message file readable");
        let outcome = Message::parse(Bytes::from(bytes)).and_then(|m| m.validate().map(|()| m));
        match (entry.verdict.as_str(), outcome) {
            ("ok", Ok(msg)) => {
                // the accessors return views borrowing the message; keep it for the test
                let msg: &'static Message = Box::leak(Box::new(msg));
                for (key, want) in &entry.expect {
                    match field(msg, key) {
                        Ok(got) if &got == want => {}
                        Ok(got) => failures.push(format!(
                            "{}: {key} = {got:?}, manifest says {want:?}",
                            entry.file
                        )),
                        Err(e) => {
                            failures.push(format!("{}: {key} does not parse: {e}", entry.file))
                        }
                    }
                }
            }
            ("ok", Err(e)) => {
                failures.push(format!("{}: rejected ({e}), manifest says ok", entry.file))
            }
            ("reject", Ok(_)) => {
                failures.push(format!("{}: accepted, manifest says reject", entry.file))
            }
            ("reject", Err(e)) => {
                let is_response = entry.status == Some(0);
                let want_kind = entry
                    .error
                    .as_deref()
                    .expect("a reject names its error kind");
                if e.kind.as_str() != want_kind {
                    failures.push(format!(
                        "{}: error {}, manifest says {want_kind}",
                        entry.file, e.kind
                    ));
                }
                if !is_response && Some(e.response_status()) != entry.status {
                    failures.push(format!(
                        "{}: answered {}, manifest says {:?}",
                        entry.file,
                        e.response_status(),
                        entry.status
                    ));
                }
                if let Some(header) = &entry.header {
                    if e.header.map(|h| h.as_str()) != Some(header.as_str()) {
                        failures.push(format!(
                            "{}: error in {:?}, manifest says {header}",
                            entry.file, e.header
                        ));
                    }
                }
            }
            (other, _) => failures.push(format!("{}: unknown verdict {other}", entry.file)),
        }
    }
    assert!(
        failures.is_empty(),
        "manifest mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_torture_file_is_in_the_manifest() {
    let manifest =
        std::fs::read_to_string(rfc4475_dir().join("manifest.toml")).expect("manifest readable");
    for entry in std::fs::read_dir(rfc4475_dir()).expect("folder readable") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".dat") {
            assert!(
                manifest.contains(&format!("file = \"{name}\"")),
                "{name} has no manifest entry"
            );
        }
    }
}
