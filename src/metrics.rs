//! Metrics: the snapshot types the proxy, the Graph client and the sync engine hand
//! out, and their rendering as Prometheus text exposition format 0.0.4 for
//! `GET /metrics`.
//!
//! This module owns:
//!
//! - the counters the sans-IO proxy core keeps per message ([`MessageCounters`], indexed
//!   by [`MessageKind`] and [`Transport`]): plain `u64`s in fixed arrays, one increment
//!   per message, no allocation, no atomics (the SIP side runs on one task);
//! - the snapshots: [`ProxyMetrics`] (from `RuntimeControl::metrics`),
//!   [`GraphMetrics`] (from `GraphClient::metrics`) and [`SyncMetrics`] (from
//!   `SyncHandle::metrics`), taken on request;
//! - [`Histogram`] with fixed buckets ([`LAG_BUCKETS`]);
//! - [`render`]: every metric name starts with `presence_proxy_`, counters end in
//!   `_total`, each family has `# HELP` and `# TYPE`, and label values are escaped as
//!   the format requires (`\\`, `\"`, `\n`).
//!
//! Who counts what lives with the counted code: `proxy/core.rs` (messages, parse errors,
//! forwarding), `observe/observer.rs` (calls by class), `runtime/driver.rs` (the
//! snapshot, connections), `graph/client.rs` and `graph/tokens.rs` (requests, retries,
//! 429s, token refreshes), `sync/engine.rs` (writes, lag, polls).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::observe::CallCounts;
use crate::sip::Method;
use crate::transport::Transport;

/// Prefix of every metric name.
pub const PREFIX: &str = "presence_proxy_";

/// The kind of a SIP message, as metrics label it: the request method, or `response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// REGISTER
    Register,
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// PUBLISH
    Publish,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// PRACK
    Prack,
    /// Any other (extension) method.
    Other,
    /// A response, any status.
    Response,
}

impl MessageKind {
    /// Every kind, in label order.
    pub const ALL: [MessageKind; 16] = [
        Self::Register,
        Self::Invite,
        Self::Ack,
        Self::Bye,
        Self::Cancel,
        Self::Options,
        Self::Subscribe,
        Self::Notify,
        Self::Publish,
        Self::Info,
        Self::Update,
        Self::Refer,
        Self::Message,
        Self::Prack,
        Self::Other,
        Self::Response,
    ];

    /// The kind of a request method.
    pub fn of_method(method: Method) -> Self {
        match method {
            Method::Register => Self::Register,
            Method::Invite => Self::Invite,
            Method::Ack => Self::Ack,
            Method::Bye => Self::Bye,
            Method::Cancel => Self::Cancel,
            Method::Options => Self::Options,
            Method::Subscribe => Self::Subscribe,
            Method::Notify => Self::Notify,
            Method::Publish => Self::Publish,
            Method::Info => Self::Info,
            Method::Update => Self::Update,
            Method::Refer => Self::Refer,
            Method::Message => Self::Message,
            Method::Prack => Self::Prack,
            Method::Other => Self::Other,
        }
    }

    /// The kind of a serialized message, read from its first bytes only: `SIP/2.0 `
    /// starts a response, else the method token up to the first space.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        if bytes.starts_with(b"SIP/2.0 ") {
            return Self::Response;
        }
        let head = &bytes[..bytes.len().min(16)];
        match head.iter().position(|&b| b == b' ') {
            Some(end) => Self::of_method(Method::from_bytes(&head[..end])),
            None => Self::Other,
        }
    }

    /// The label value: the method in capitals, `other` or `response`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Register => "REGISTER",
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Options => "OPTIONS",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Publish => "PUBLISH",
            Self::Info => "INFO",
            Self::Update => "UPDATE",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Prack => "PRACK",
            Self::Other => "other",
            Self::Response => "response",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The transports in label order.
pub const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// Messages counted by kind and transport: one `u64` increment per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounters {
    counts: [[u64; 3]; 16],
}

impl MessageCounters {
    /// Counts one message.
    #[inline]
    pub fn count(&mut self, kind: MessageKind, transport: Transport) {
        let cell = &mut self.counts[kind.index()][transport_index(transport)];
        *cell = cell.wrapping_add(1);
    }

    /// Messages of `kind` over `transport`.
    pub fn get(&self, kind: MessageKind, transport: Transport) -> u64 {
        self.counts[kind.index()][transport_index(transport)]
    }

    /// Messages of `kind`, every transport.
    pub fn by_kind(&self, kind: MessageKind) -> u64 {
        self.counts[kind.index()].iter().sum()
    }

    /// Messages over `transport`, every kind.
    pub fn by_transport(&self, transport: Transport) -> u64 {
        let t = transport_index(transport);
        self.counts.iter().map(|row| row[t]).sum()
    }

    /// Every message.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }
}

/// A snapshot of the proxy's counters and sizes (`RuntimeControl::metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyMetrics {
    /// Messages received that parsed, by kind and transport (CRLF keep-alives are not
    /// messages).
    pub received: MessageCounters,
    /// Messages the proxy handed to its sockets and connections, by kind and transport
    /// (forwarded, generated, retransmitted, its own NOTIFYs).
    pub sent: MessageCounters,
    /// Messages dropped or answered 400/505/513 because they did not parse or validate.
    /// A TCP/TLS stream that cannot be framed is closed by its connection task and is
    /// not counted here.
    pub parse_errors: u64,
    /// Requests forwarded (retransmissions excluded).
    pub requests_forwarded: u64,
    /// Responses forwarded.
    pub responses_forwarded: u64,
    /// Responses the proxy generated (100, 4xx, 5xx).
    pub responses_generated: u64,
    /// Retransmissions the proxy sent.
    pub retransmissions: u64,
    /// Requests refused by access control or rate limits.
    pub refused: u64,
    /// INVITEs refused because the called extension's Teams user is busy.
    pub teams_busy_refused: u64,
    /// Open transactions now.
    pub transactions: u64,
    /// Registered bindings now (contacts the PBX accepted, as the observer tracks them).
    pub bindings: u64,
    /// Alias table entries now (aliased contacts and flow tokens).
    pub aliases: u64,
    /// BLF subscriptions tracked now.
    pub blf_subscriptions: u64,
    /// Calls the observer tracks now (every class).
    pub calls_active: u64,
    /// Calls the observer started tracking, by class.
    pub calls: CallCounts,
    /// Open TCP/TLS connections now.
    pub connections: u64,
}

/// What a Graph request ended with, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphStatus {
    /// An HTTP answer with this status.
    Http(u16),
    /// No HTTP answer: connection, TLS or timeout.
    TransportError,
}

impl GraphStatus {
    /// `200`, `429`, ... or `transport_error`.
    pub fn label(self) -> String {
        match self {
            Self::Http(code) => code.to_string(),
            Self::TransportError => "transport_error".into(),
        }
    }
}

/// Requests to one endpoint that ended with one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphRequestCount {
    /// A short stable label of the endpoint (`token`, `setPresence`, `presence`,
    /// `getPresencesByUserId`, `users`, `subscriptions`, ...).
    pub endpoint: String,
    /// The HTTP status or `transport_error`.
    pub status: String,
    /// Attempts (each retry is one more).
    pub count: u64,
}

/// A snapshot of the Graph client's counters (`GraphClient::metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GraphMetrics {
    /// Every attempt by endpoint and status, sorted by endpoint then status.
    pub requests: Vec<GraphRequestCount>,
    /// Attempts made again after a failed one (429, 5xx, transport error, 401 → refresh).
    pub retries: u64,
    /// 429 answers.
    pub throttled: u64,
    /// Access tokens obtained again (client credentials or refresh token) that worked.
    pub token_refreshes_ok: u64,
    /// ... that failed (refused, unreachable, or the rotation not persisted).
    pub token_refreshes_failed: u64,
}

/// The sync-lag buckets, in seconds (Prometheus' defaults).
pub const LAG_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with fixed upper bounds; observations above the last go to `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds`, the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` (`f64::INFINITY`) last.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, c)| {
                total += c;
                (bound, total)
            })
            .collect()
    }

    /// The sum of every observation.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(&LAG_BUCKETS)
    }
}

/// A snapshot of the sync engine's counters (`SyncHandle::metrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncMetrics {
    /// Graph writes (setPresence, clearPresence, preferred presence) Graph accepted.
    pub writes_ok: u64,
    /// Graph writes that failed (retried or blocked).
    pub writes_failed: u64,
    /// Failed writes that will be tried again after a backoff.
    pub retries: u64,
    /// Sync lag, phone event to Graph write confirmed, of the last confirmed write that
    /// followed a phone event.
    pub last_lag: Option<Duration>,
    /// Sync lag in seconds.
    pub lag: Histogram,
    /// Teams presence polls that worked.
    pub polls_ok: u64,
    /// Teams presence polls that failed.
    pub polls_failed: u64,
    /// Extensions whose Teams user makes them DND now.
    pub teams_busy: u64,
}

// ---------------------------------------------------------------------------- render

/// The kind of a metric family.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Writes families and samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.text, "# HELP {PREFIX}{name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {PREFIX}{name} {}", kind.name());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.text.push_str(PREFIX);
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                self.text.push_str(&escape_label(value));
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        value.write(&mut self.text);
        self.text.push('\n');
    }

    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl SampleValue) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in histogram.buckets() {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                float_text(bound)
            };
            self.sample(&bucket, &[("le", &le)], count);
        }
        self.sample(&format!("{name}_sum"), &[], histogram.sum());
        self.sample(&format!("{name}_count"), &[], histogram.count());
    }
}

trait SampleValue {
    fn write(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for f64 {
    fn write(&self, out: &mut String) {
        out.push_str(&float_text(*self));
    }
}

/// A float as the format writes it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest
/// round-trip form.
fn float_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// A label value escaped: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text escaped: backslash and line feed.
fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The Prometheus text exposition (format 0.0.4, `text/plain; version=0.0.4`) of
/// whatever snapshots are given; a part that is `None` (the Teams side not configured,
/// or the proxy stopped) is left out.
pub fn render(
    proxy: Option<&ProxyMetrics>,
    graph: Option<&GraphMetrics>,
    sync: Option<&SyncMetrics>,
) -> String {
    let mut out = Out {
        text: String::with_capacity(16 * 1024),
    };
    if let Some(p) = proxy {
        render_proxy(&mut out, p);
    }
    if let Some(g) = graph {
        render_graph(&mut out, g);
    }
    if let Some(s) = sync {
        render_sync(&mut out, s);
    }
    out.text
}

fn render_messages(out: &mut Out, name: &str, help: &str, counters: &MessageCounters) {
    out.family(name, Kind::Counter, help);
    for kind in MessageKind::ALL {
        for transport in TRANSPORTS {
            out.sample(
                name,
                &[
                    ("method", kind.label()),
                    ("transport", transport.uri_param()),
                ],
                counters.get(kind, transport),
            );
        }
    }
}

fn render_proxy(out: &mut Out, p: &ProxyMetrics) {
    render_messages(
        out,
        "sip_messages_received_total",
        "SIP messages received that parsed, by method (response for responses) and transport.",
        &p.received,
    );
    render_messages(
        out,
        "sip_messages_sent_total",
        "SIP messages sent by the proxy, by method (response for responses) and transport.",
        &p.sent,
    );
    let counters: [(&str, &str, u64); 7] = [
        (
            "sip_parse_errors_total",
            "SIP messages dropped or answered 400 because they did not parse or validate.",
            p.parse_errors,
        ),
        (
            "sip_requests_forwarded_total",
            "SIP requests forwarded (retransmissions excluded).",
            p.requests_forwarded,
        ),
        (
            "sip_responses_forwarded_total",
            "SIP responses forwarded.",
            p.responses_forwarded,
        ),
        (
            "sip_responses_generated_total",
            "SIP responses the proxy generated itself.",
            p.responses_generated,
        ),
        (
            "sip_retransmissions_total",
            "SIP retransmissions the proxy sent.",
            p.retransmissions,
        ),
        (
            "sip_requests_refused_total",
            "SIP requests refused by access control or rate limits.",
            p.refused,
        ),
        (
            "sip_teams_busy_refused_total",
            "INVITEs refused because the called extension's Teams user is busy.",
            p.teams_busy_refused,
        ),
    ];
    for (name, help, value) in counters {
        out.single(name, Kind::Counter, help, value);
    }
    let gauges: [(&str, &str, u64); 6] = [
        ("sip_transactions", "Open SIP transactions.", p.transactions),
        (
            "sip_bindings",
            "Registered bindings (contacts the PBX accepted).",
            p.bindings,
        ),
        (
            "sip_aliases",
            "Alias table entries (aliased contacts and flow tokens).",
            p.aliases,
        ),
        (
            "blf_subscriptions",
            "BLF (dialog and presence) subscriptions tracked.",
            p.blf_subscriptions,
        ),
        (
            "calls_active",
            "Calls the observer tracks now, every class.",
            p.calls_active,
        ),
        (
            "sip_connections",
            "Open TCP and TLS connections.",
            p.connections,
        ),
    ];
    for (name, help, value) in gauges {
        out.single(name, Kind::Gauge, help, value);
    }
    out.family(
        "calls_total",
        Kind::Counter,
        "Calls the observer started tracking, by class (external, internal, star_code).",
    );
    for (class, value) in [
        ("external", p.calls.external),
        ("internal", p.calls.internal),
        ("star_code", p.calls.star_code),
    ] {
        out.sample("calls_total", &[("class", class)], value);
    }
}

fn render_graph(out: &mut Out, g: &GraphMetrics) {
    out.family(
        "graph_requests_total",
        Kind::Counter,
        "Microsoft Graph and token-endpoint requests (each attempt), by endpoint and HTTP status or transport_error.",
    );
    for r in &g.requests {
        out.sample(
            "graph_requests_total",
            &[("endpoint", &r.endpoint), ("status", &r.status)],
            r.count,
        );
    }
    out.single(
        "graph_retries_total",
        Kind::Counter,
        "Graph requests made again after a failed attempt (429, 5xx, transport error, 401).",
        g.retries,
    );
    out.single(
        "graph_throttled_total",
        Kind::Counter,
        "Graph answers 429 Too Many Requests.",
        g.throttled,
    );
    out.family(
        "graph_token_refreshes_total",
        Kind::Counter,
        "Access tokens obtained again (client credentials or refresh token), by outcome.",
    );
    out.sample(
        "graph_token_refreshes_total",
        &[("outcome", "ok")],
        g.token_refreshes_ok,
    );
    out.sample(
        "graph_token_refreshes_total",
        &[("outcome", "failed")],
        g.token_refreshes_failed,
    );
}

fn render_sync(out: &mut Out, s: &SyncMetrics) {
    out.family(
        "sync_writes_total",
        Kind::Counter,
        "Teams presence writes to Graph, by outcome.",
    );
    out.sample("sync_writes_total", &[("outcome", "ok")], s.writes_ok);
    out.sample(
        "sync_writes_total",
        &[("outcome", "failed")],
        s.writes_failed,
    );
    out.single(
        "sync_write_retries_total",
        Kind::Counter,
        "Failed Teams presence writes tried again after a backoff.",
        s.retries,
    );
    out.histogram(
        "sync_lag_seconds",
        "Time from a phone event to the Graph write showing it confirmed.",
        &s.lag,
    );
    out.family(
        "sync_last_lag_seconds",
        Kind::Gauge,
        "Sync lag of the last confirmed write that followed a phone event.",
    );
    if let Some(lag) = s.last_lag {
        out.sample("sync_last_lag_seconds", &[], lag.as_secs_f64());
    }
    out.family(
        "sync_polls_total",
        Kind::Counter,
        "Teams presence polls (getPresencesByUserId rounds), by outcome.",
    );
    out.sample("sync_polls_total", &[("outcome", "ok")], s.polls_ok);
    out.sample("sync_polls_total", &[("outcome", "failed")], s.polls_failed);
    out.single(
        "sync_teams_busy_extensions",
        Kind::Gauge,
        "Extensions whose Teams user makes them DND (calls refused, BLF busy).",
        s.teams_busy,
    );
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// Splits a sample line into name, labels (unescaped) and value; panics on
    /// anything the format does not allow.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, String) {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name {name}"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let consumed;
            loop {
                let key_start = chars.peek().map(|(i, _)| *i).unwrap_or(0);
                let mut key_end = key_start;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = i;
                        break;
                    }
                    assert!(
                        c.is_ascii_alphanumeric() || c == '_',
                        "bad label name in {line}"
                    );
                }
                let key = after[key_start..key_end].to_owned();
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, '\n')) => panic!("raw newline in {line}"),
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line}"),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        consumed = i + 1;
                        break;
                    }
                    other => panic!("bad label separator {other:?} in {line}"),
                }
            }
            rest = &after[consumed..];
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value: {line}"));
        assert!(
            value == "+Inf" || value == "-Inf" || value == "NaN" || value.parse::<f64>().is_ok(),
            "bad value {value}"
        );
        (name.to_owned(), labels, value.to_owned())
    }

    /// Samples by name: (labels, value) each.
    type Samples = HashMap<String, Vec<(Vec<(String, String)>, String)>>;

    /// Checks the exposition and returns the samples by name.
    fn check(text: &str) -> Samples {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut samples = Samples::new();
        let mut seen_series = HashSet::new();
        let mut current: Option<String> = None;
        assert!(text.is_empty() || text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(helped.insert(name.clone()), "HELP twice for {name}");
                assert!(!types.contains_key(&name), "HELP after TYPE for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap_or_default().to_owned();
                let kind = parts.next().unwrap_or_default().to_owned();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&kind.as_str()),
                    "{line}"
                );
                assert!(name.starts_with(PREFIX), "{name}");
                if kind == "counter" {
                    assert!(
                        name.ends_with("_total"),
                        "counter {name} must end in _total"
                    );
                }
                assert!(
                    types.insert(name.clone(), kind).is_none(),
                    "TYPE twice for {name}"
                );
                current = Some(name);
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line}");
            let (name, labels, value) = parse_sample(line);
            let family = current
                .clone()
                .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
            let kind = &types[&family];
            let belongs = name == family
                || (kind == "histogram"
                    && [
                        format!("{family}_bucket"),
                        format!("{family}_sum"),
                        format!("{family}_count"),
                    ]
                    .contains(&name));
            assert!(belongs, "sample {name} outside its family {family}");
            let mut key = labels.clone();
            key.sort();
            assert!(
                seen_series.insert((name.clone(), key)),
                "duplicate series {line}"
            );
            samples.entry(name).or_default().push((labels, value));
        }
        for name in types.keys() {
            assert!(helped.contains(name), "no HELP for {name}");
        }
        samples
    }

    fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> String {
        let full = format!("{PREFIX}{name}");
        samples[&full]
            .iter()
            .find(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {full} {labels:?}"))
    }

    fn sample_metrics() -> (ProxyMetrics, GraphMetrics, SyncMetrics) {
        let mut proxy = ProxyMetrics::default();
        proxy.received.count(MessageKind::Register, Transport::Udp);
        proxy.received.count(MessageKind::Response, Transport::Tls);
        proxy.sent.count(MessageKind::Invite, Transport::Tcp);
        proxy.parse_errors = 2;
        proxy.transactions = 3;
        proxy.calls.external = 4;
        let graph = GraphMetrics {
            requests: vec![
                GraphRequestCount {
                    endpoint: "setPresence".into(),
                    status: "200".into(),
                    count: 5,
                },
                GraphRequestCount {
                    endpoint: "we\"ird\\end\npoint".into(),
                    status: "transport_error".into(),
                    count: 1,
                },
            ],
            retries: 1,
            throttled: 2,
            token_refreshes_ok: 3,
            token_refreshes_failed: 0,
        };
        let mut sync = SyncMetrics::default();
        for lag in [0.003, 0.02, 0.02, 0.7, 30.0] {
            sync.lag.observe(lag);
        }
        sync.last_lag = Some(Duration::from_millis(700));
        sync.writes_ok = 5;
        (proxy, graph, sync)
    }

    #[test]
    fn every_sample_belongs_to_a_declared_family() {
        let (proxy, graph, sync) = sample_metrics();
        let text = render(Some(&proxy), Some(&graph), Some(&sync));
        let samples = check(&text);
        assert_eq!(
            value(
                &samples,
                "sip_messages_received_total",
                &[("method", "REGISTER"), ("transport", "udp")]
            ),
            "1"
        );
        assert_eq!(
            value(
                &samples,
                "sip_messages_received_total",
                &[("method", "response"), ("transport", "tls")]
            ),
            "1"
        );
        assert_eq!(
            value(
                &samples,
                "sip_messages_sent_total",
                &[("method", "INVITE"), ("transport", "tcp")]
            ),
            "1"
        );
        assert_eq!(
            value(
                &samples,
                "sip_messages_sent_total",
                &[("method", "other"), ("transport", "udp")]
            ),
            "0"
        );
        assert_eq!(value(&samples, "sip_parse_errors_total", &[]), "2");
        assert_eq!(value(&samples, "sip_transactions", &[]), "3");
        assert_eq!(
            value(&samples, "calls_total", &[("class", "external")]),
            "4"
        );
        assert_eq!(
            value(
                &samples,
                "graph_requests_total",
                &[("endpoint", "setPresence"), ("status", "200")]
            ),
            "5"
        );
        assert_eq!(value(&samples, "graph_throttled_total", &[]), "2");
        assert_eq!(
            value(&samples, "sync_writes_total", &[("outcome", "ok")]),
            "5"
        );
        assert_eq!(value(&samples, "sync_last_lag_seconds", &[]), "0.7");
        // the parts left out leave nothing behind
        assert_eq!(render(None, None, None), "");
        let proxy_only = check(&render(Some(&proxy), None, None));
        assert!(
            proxy_only
                .keys()
                .all(|k| !k.contains("graph") && !k.contains("sync"))
        );
        // a sync part without a lag yet: the gauge family stays declared, no sample
        let fresh = check(&render(None, None, Some(&SyncMetrics::default())));
        assert!(!fresh.contains_key("presence_proxy_sync_last_lag_seconds"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain"), "plain");
        let (_, graph, _) = sample_metrics();
        let text = render(None, Some(&graph), None);
        assert!(
            text.contains(r#"endpoint="we\"ird\\end\npoint",status="transport_error"} 1"#),
            "{text}"
        );
        // and the checker reads it back to the original value
        let samples = check(&text);
        assert_eq!(
            value(
                &samples,
                "graph_requests_total",
                &[("endpoint", "we\"ird\\end\npoint")]
            ),
            "1"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let (_, _, sync) = sample_metrics();
        let text = render(None, None, Some(&sync));
        let samples = check(&text);
        let buckets = &samples["presence_proxy_sync_lag_seconds_bucket"];
        assert_eq!(buckets.len(), LAG_BUCKETS.len() + 1);
        let mut last = 0u64;
        let mut bounds = Vec::new();
        for (labels, value) in buckets {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let n: u64 = value.parse().unwrap_or_else(|e| panic!("{value}: {e}"));
            assert!(n >= last, "bucket le={le} below the one before");
            last = n;
            bounds.push(le);
        }
        assert_eq!(bounds.first().map(String::as_str), Some("0.005"));
        assert_eq!(bounds.last().map(String::as_str), Some("+Inf"));
        assert_eq!(
            value(&samples, "sync_lag_seconds_bucket", &[("le", "0.005")]),
            "1"
        );
        assert_eq!(
            value(&samples, "sync_lag_seconds_bucket", &[("le", "0.025")]),
            "3"
        );
        assert_eq!(
            value(&samples, "sync_lag_seconds_bucket", &[("le", "10")]),
            "4"
        );
        assert_eq!(
            value(&samples, "sync_lag_seconds_bucket", &[("le", "+Inf")]),
            "5"
        );
        assert_eq!(value(&samples, "sync_lag_seconds_count", &[]), "5");
        let sum: f64 = value(&samples, "sync_lag_seconds_sum", &[])
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((sum - 30.743).abs() < 1e-9, "{sum}");
        // the +Inf bucket is the count
        assert_eq!(last, sync.lag.count());
    }

    #[test]
    fn message_kinds_are_read_from_the_first_bytes() {
        assert_eq!(
            MessageKind::of_bytes(b"SIP/2.0 200 OK\r\n"),
            MessageKind::Response
        );
        assert_eq!(
            MessageKind::of_bytes(b"INVITE sip:a@b SIP/2.0\r\n"),
            MessageKind::Invite
        );
        assert_eq!(
            MessageKind::of_bytes(b"NOTIFY sip:a@b SIP/2.0\r\n"),
            MessageKind::Notify
        );
        assert_eq!(
            MessageKind::of_bytes(b"FOO sip:a@b SIP/2.0\r\n"),
            MessageKind::Other
        );
        assert_eq!(MessageKind::of_bytes(b""), MessageKind::Other);
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::ALL[kind.index()], kind);
        }
        let mut counters = MessageCounters::default();
        counters.count(MessageKind::Bye, Transport::Tcp);
        counters.count(MessageKind::Bye, Transport::Udp);
        counters.count(MessageKind::Ack, Transport::Udp);
        assert_eq!(counters.by_kind(MessageKind::Bye), 2);
        assert_eq!(counters.by_transport(Transport::Udp), 2);
        assert_eq!(counters.total(), 3);
    }
}
