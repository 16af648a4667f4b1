//! Replays every `sip-traces/observe/*.trace` file through the observer and checks the
//! exact sequence of events each one states (`# expect ...` lines). The format is
//! described in `sip-traces/observe/README.md`.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use presence_proxy::observe::{Direction, ObserveConfig, Observer, PhoneAddr};
use presence_proxy::sip::Message;
use presence_proxy::transport::Transport;

/// The stale-call timeout the traces are written for.
const STALE_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug)]
enum Step {
    Message {
        line: usize,
        from: String,
        to: String,
        at: Duration,
        text: String,
    },
    Tick {
        at: Duration,
    },
}

#[derive(Debug, Default)]
struct Trace {
    phones: HashMap<String, PhoneAddr>,
    expect: Vec<String>,
    steps: Vec<Step>,
}

fn parse_at(text: &str, path: &Path, line: usize) -> Duration {
    let secs: f64 = text
        .trim()
        .strip_prefix('@')
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{}:{line}: bad time {text:?}", path.display()));
    Duration::from_secs_f64(secs)
}

fn parse_trace(path: &Path) -> Trace {
    let text = fs::read_to_string(path).unwrap();
    let mut trace = Trace::default();
    let mut current: Option<Step> = None;
    let mut body_lines: Vec<&str> = Vec::new();
    let finish = |step: Option<Step>, lines: &mut Vec<&str>, trace: &mut Trace| {
        if let Some(mut step) = step {
            if let Step::Message { text, .. } = &mut step {
                *text = lines.join("\n");
            }
            trace.steps.push(step);
        }
        lines.clear();
    };
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some(rest) = line.strip_prefix("--- ") {
            finish(current.take(), &mut body_lines, &mut trace);
            if let Some(at) = rest.strip_prefix("tick ") {
                current = Some(Step::Tick {
                    at: parse_at(at, path, number),
                });
                continue;
            }
            let (route, at) = rest
                .split_once(" @")
                .unwrap_or_else(|| panic!("{}:{number}: no @time", path.display()));
            let (from, to) = route
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("{}:{number}: no `A -> B`", path.display()));
            current = Some(Step::Message {
                line: number,
                from: from.trim().to_owned(),
                to: to.trim().to_owned(),
                at: parse_at(&format!("@{at}"), path, number),
                text: String::new(),
            });
        } else if current.is_some() {
            if matches!(current, Some(Step::Message { .. })) {
                body_lines.push(line);
            }
        } else if let Some(rest) = line.strip_prefix("# phone ") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(
                parts.len(),
                3,
                "{}:{number}: `# phone NAME TRANSPORT IP:PORT`",
                path.display()
            );
            let transport = Transport::from_token(parts[1].as_bytes())
                .unwrap_or_else(|| panic!("{}:{number}: transport", path.display()));
            let remote: SocketAddr = parts[2].parse().unwrap();
            trace
                .phones
                .insert(parts[0].to_owned(), PhoneAddr { transport, remote });
        } else if let Some(rest) = line.strip_prefix("# expect ") {
            trace.expect.push(rest.trim().to_owned());
        }
    }
    finish(current.take(), &mut body_lines, &mut trace);
    trace
}

/// LF → CRLF, Content-Length set to the body's length.
fn wire_bytes(text: &str) -> Bytes {
    let lines: Vec<&str> = text.lines().collect();
    let blank = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    let mut body_lines = lines[(blank + 1).min(lines.len())..].to_vec();
    while body_lines.last().is_some_and(|l| l.trim().is_empty()) {
        body_lines.pop();
    }
    let body = if body_lines.is_empty() {
        String::new()
    } else {
        format!("{}\r\n", body_lines.join("\r\n"))
    };
    let mut out = String::new();
    for line in &lines[..blank] {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length:") || lower.starts_with("l:") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Bytes::from(out)
}

fn replay(path: &Path) -> Vec<String> {
    let trace = parse_trace(path);
    let mut observer = Observer::new(ObserveConfig {
        stale_call_timeout: STALE_CALL_TIMEOUT,
        ..ObserveConfig::default()
    });
    let start = Instant::now();
    let mut events = Vec::new();
    let advance = |observer: &mut Observer, now: Instant, events: &mut Vec<String>| {
        while let Some(at) = observer.poll_timeout().filter(|&at| at <= now) {
            observer.handle_timeout(at);
        }
        observer.handle_timeout(now);
        while let Some(event) = observer.poll_event() {
            events.push(event.to_string());
        }
    };
    for step in &trace.steps {
        match step {
            Step::Tick { at } => advance(&mut observer, start + *at, &mut events),
            Step::Message {
                line,
                from,
                to,
                at,
                text,
            } => {
                let now = start + *at;
                advance(&mut observer, now, &mut events);
                let (direction, phone) = if from == "pbx" {
                    (Direction::ToPhone, to)
                } else {
                    assert_eq!(to, "pbx", "{}:{line}: one side must be pbx", path.display());
                    (Direction::FromPhone, from)
                };
                let phone = *trace
                    .phones
                    .get(phone)
                    .unwrap_or_else(|| panic!("{}:{line}: unknown phone {phone}", path.display()));
                let msg = Message::parse(wire_bytes(text))
                    .unwrap_or_else(|e| panic!("{}:{line}: {e}", path.display()));
                let checked = if msg.is_request() {
                    msg.validate()
                } else {
                    msg.validate_response()
                };
                checked.unwrap_or_else(|e| panic!("{}:{line}: invalid: {e}", path.display()));
                observer.on_message(now, direction, phone, &msg);
                while let Some(event) = observer.poll_event() {
                    events.push(event.to_string());
                }
            }
        }
    }
    events
}

fn traces() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-traces/observe");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "trace"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn every_trace_produces_its_expected_events() {
    let paths = traces();
    assert!(
        paths.len() >= 20,
        "expected the observe traces, found {}",
        paths.len()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let expected = parse_trace(path).expect;
        let got = replay(path);
        if got != expected {
            failures.push(format!(
                "{}\n  expected: {expected:#?}\n  got:      {got:#?}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
