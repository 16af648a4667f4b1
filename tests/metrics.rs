//! Metrics end to end. The proxy's counters: a real proxy on free loopback ports, a
//! phone and a PBX played by plain sockets in this test, and `RuntimeControl::metrics`
//! read while they talk. The Graph client's counters: requests against the Graph
//! emulator with injected 429s and 503s, and token refreshes that work and fail. Each
//! wait looks at its condition again every few milliseconds and gives up at a deadline.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod emulator_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use emulator_support::{ALICE, BOB, Env, REDIRECT};
use presence_proxy::emulator::{CONTOSO_CLIENT_ID, CONTOSO_CLIENT_SECRET};
use presence_proxy::graph::{
    GraphClient, GraphConfig, GraphMetrics, SessionPresence, TokenSet, TokenSink, Tokens,
    USER_SCOPES,
};
use presence_proxy::metrics::{MessageKind, ProxyMetrics, render};
use presence_proxy::runtime::RuntimeControl;
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::sip::{HeaderName, Message};
use presence_proxy::store::Secret;
use presence_proxy::transport::Transport;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

/// How long any one wait may take.
const WITHIN: Duration = Duration::from_secs(10);
/// How often a wait looks again.
const LOOK: Duration = Duration::from_millis(5);

/// Reads metrics until `condition` holds; the last snapshot.
async fn metrics_until(
    control: &RuntimeControl,
    what: &str,
    condition: impl Fn(&ProxyMetrics) -> bool,
) -> ProxyMetrics {
    let start = Instant::now();
    loop {
        let metrics = control.metrics().await.expect("the proxy is running");
        if condition(&metrics) {
            return metrics;
        }
        assert!(
            start.elapsed() < WITHIN,
            "timed out waiting for {what}: {metrics:#?}"
        );
        tokio::time::sleep(LOOK).await;
    }
}

/// The next SIP message on `socket`, within the deadline.
async fn receive(socket: &UdpSocket, who: &str) -> (Message, SocketAddr) {
    let mut buf = vec![0u8; 65_535];
    let (n, from) = tokio::time::timeout(WITHIN, socket.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{who} received nothing"))
        .unwrap();
    let msg = Message::parse(bytes::Bytes::copy_from_slice(&buf[..n]))
        .unwrap_or_else(|e| panic!("{who} received an unparseable message: {e}"));
    (msg, from)
}

/// The next message on `socket` that is a request of `method` (skipping e.g. a 100).
async fn receive_request(socket: &UdpSocket, who: &str, method: &str) -> (Message, SocketAddr) {
    loop {
        let (msg, from) = receive(socket, who).await;
        if msg.method_bytes() == Some(method.as_bytes()) {
            return (msg, from);
        }
    }
}

fn request(method: &str, uri: &str, phone: SocketAddr, call_id: &str, extra: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=f-{call_id}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:201@{phone}>\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_what_crosses_the_proxy() {
    let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pbx_port = pbx.local_addr().unwrap().port();
    let proxy = e2e_support::start_proxy(pbx_port, None).await;
    let control = proxy.control();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_addr = phone.local_addr().unwrap();

    let start = control.metrics().await.unwrap();
    assert_eq!(start.received.total(), 0);
    assert_eq!(start.sent.total(), 0);
    assert_eq!(start.parse_errors, 0);

    // one REGISTER over UDP, answered 200 by the PBX
    let register = request(
        "REGISTER",
        "sip:pbx.example.com",
        phone_addr,
        "reg-1",
        "Expires: 3600\r\n",
    )
    .replace("To: <sip:pbx.example.com>", "To: <sip:201@pbx.example.com>");
    phone.send_to(register.as_bytes(), proxy.udp).await.unwrap();
    let (forwarded, from) = receive_request(&pbx, "the PBX", "REGISTER").await;
    let m = control.metrics().await.unwrap();
    assert_eq!(m.received.get(MessageKind::Register, Transport::Udp), 1);
    assert_eq!(m.received.total(), 1, "one REGISTER in, nothing else");
    assert_eq!(m.sent.get(MessageKind::Register, Transport::Udp), 1);
    assert_eq!(m.transactions, 1, "the REGISTER's transaction is open");
    let contact = String::from_utf8_lossy(forwarded.header(HeaderName::Contact).unwrap());
    let contact = format!("{contact};expires=3600");
    let ok = ResponseBuilder::new(&forwarded, 200, "OK")
        .to_tag("pbx-reg")
        .header("Contact", contact.as_bytes())
        .build();
    pbx.send_to(&ok, from).await.unwrap();
    let (answer, _) = receive(&phone, "the phone").await;
    assert_eq!(answer.status(), Some(200));
    let m = metrics_until(&control, "the registration", |m| m.bindings == 1).await;
    assert_eq!(m.received.get(MessageKind::Register, Transport::Udp), 1);
    assert_eq!(m.received.get(MessageKind::Response, Transport::Udp), 1);
    assert_eq!(m.sent.get(MessageKind::Response, Transport::Udp), 1);
    assert_eq!(m.requests_forwarded, 1);
    assert_eq!(m.responses_forwarded, 1);
    assert_eq!(m.parse_errors, 0);

    // garbage is dropped, a request with two Call-IDs is answered 400: both parse errors
    phone
        .send_to(b"this is not SIP\r\n\r\n", proxy.udp)
        .await
        .unwrap();
    let twice = request("OPTIONS", "sip:pbx.example.com", phone_addr, "bad-1", "")
        .replace("Call-ID: bad-1\r\n", "Call-ID: bad-1\r\nCall-ID: bad-2\r\n");
    phone.send_to(twice.as_bytes(), proxy.udp).await.unwrap();
    let (answer, _) = receive(&phone, "the phone").await;
    assert_eq!(answer.status(), Some(400));
    let m = metrics_until(&control, "two parse errors", |m| m.parse_errors == 2).await;
    assert_eq!(m.responses_generated, 1, "the 400");
    assert_eq!(
        m.received.get(MessageKind::Options, Transport::Udp),
        1,
        "the OPTIONS parsed, then failed validation"
    );

    // calls by class: external, internal and a star code from the registered phone
    for (number, call_id) in [
        ("004930123456", "ext-1"),
        ("202", "int-1"),
        ("*97", "star-1"),
    ] {
        let invite = request(
            "INVITE",
            &format!("sip:{number}@pbx.example.com"),
            phone_addr,
            call_id,
            "",
        );
        phone.send_to(invite.as_bytes(), proxy.udp).await.unwrap();
        receive_request(&pbx, "the PBX", "INVITE").await;
    }
    let m = metrics_until(&control, "three calls", |m| {
        m.calls.external + m.calls.internal + m.calls.star_code == 3
    })
    .await;
    assert_eq!(
        (m.calls.external, m.calls.internal, m.calls.star_code),
        (1, 1, 1)
    );
    assert_eq!(m.calls_active, 3);
    assert_eq!(m.received.get(MessageKind::Invite, Transport::Udp), 3);
    assert_eq!(m.sent.get(MessageKind::Invite, Transport::Udp), 3);
    assert!(m.transactions >= 3, "{}", m.transactions);

    // an OPTIONS over TCP: counted under tcp, forwarded over UDP, one connection open
    let mut tcp = TcpStream::connect(proxy.tcp).await.unwrap();
    let tcp_local = tcp.local_addr().unwrap();
    let options = request("OPTIONS", "sip:pbx.example.com", tcp_local, "tcp-1", "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    tcp.write_all(options.as_bytes()).await.unwrap();
    receive_request(&pbx, "the PBX", "OPTIONS").await;
    let m = metrics_until(&control, "the TCP OPTIONS", |m| {
        m.received.get(MessageKind::Options, Transport::Tcp) == 1
    })
    .await;
    assert_eq!(m.connections, 1);
    assert_eq!(m.sent.get(MessageKind::Options, Transport::Udp), 1);
    assert_eq!(m.received.by_transport(Transport::Tcp), 1);

    // the exposition carries the same figures
    let text = render(Some(&m), None, None);
    for line in [
        r#"presence_proxy_sip_messages_received_total{method="REGISTER",transport="udp"} 1"#,
        r#"presence_proxy_sip_messages_received_total{method="OPTIONS",transport="tcp"} 1"#,
        r#"presence_proxy_sip_messages_received_total{method="response",transport="udp"} 1"#,
        r#"presence_proxy_sip_parse_errors_total 2"#,
        r#"presence_proxy_sip_bindings 1"#,
        r#"presence_proxy_calls_total{class="external"} 1"#,
        r#"presence_proxy_calls_total{class="star_code"} 1"#,
        r#"presence_proxy_sip_connections 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    drop(tcp);
    proxy.shutdown().await;
    assert!(
        control.metrics().await.is_none(),
        "no metrics from a stopped proxy"
    );
}

// ----------------------------------------------------------------------------- Graph

fn graph_client(env: &Env) -> GraphClient {
    let mut config = GraphConfig::new(
        "contoso.example",
        CONTOSO_CLIENT_ID,
        CONTOSO_CLIENT_SECRET,
        REDIRECT,
    )
    .with_bases(env.emu.login_url(), env.emu.graph_url());
    config.retry.base_delay = Duration::from_millis(20);
    config.retry.max_delay = Duration::from_millis(100);
    GraphClient::new(config).unwrap()
}

async fn faults(env: &Env, body: serde_json::Value) {
    let (status, body) = env
        .control_json(reqwest::Method::PUT, "/faults", Some(body))
        .await;
    assert!(status < 300, "{body}");
}

/// Attempts to `endpoint` answered `status`.
fn requests(metrics: &GraphMetrics, endpoint: &str, status: &str) -> u64 {
    metrics
        .requests
        .iter()
        .find(|r| r.endpoint == endpoint && r.status == status)
        .map_or(0, |r| r.count)
}

/// A sink for a credential whose refresh is refused anyway.
struct NoSink;

impl TokenSink for NoSink {
    fn rotated(&self, _tokens: &TokenSet) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_counters_follow_requests_retries_429s_and_token_refreshes() {
    let env = emulator_support::start().await;
    env.consent(true).await;
    let graph = graph_client(&env);
    assert_eq!(graph.metrics(), GraphMetrics::default());

    // the first access token: one token request, one refresh that worked
    let tokens = Tokens::app_only(&graph);
    tokens.access_token().await.unwrap();
    let m = graph.metrics();
    assert_eq!(requests(&m, "token", "200"), 1, "{m:?}");
    assert_eq!((m.token_refreshes_ok, m.token_refreshes_failed), (1, 0));

    // a 429 waited out: two attempts, one retry, one throttled
    faults(
        &env,
        serde_json::json!({ "throttle_next": { "count": 1, "retry_after": 1 } }),
    )
    .await;
    graph.presence(&tokens, ALICE).await.unwrap();
    let m = graph.metrics();
    assert_eq!(requests(&m, "presence", "429"), 1, "{m:?}");
    assert_eq!(requests(&m, "presence", "200"), 1, "{m:?}");
    assert_eq!((m.throttled, m.retries), (1, 1));

    // a 503 backed off: setPresence counted under its own label
    faults(
        &env,
        serde_json::json!({ "fail_next": { "count": 1, "status": 503 } }),
    )
    .await;
    graph
        .set_presence(
            &tokens,
            ALICE,
            SessionPresence::InACall,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    graph.clear_presence(&tokens, ALICE).await.unwrap();
    graph
        .presences_by_user_id(&tokens, &[ALICE.to_owned(), BOB.to_owned()])
        .await
        .unwrap();
    graph
        .resolve_user(&tokens, "bob@contoso.example")
        .await
        .unwrap()
        .unwrap();
    let m = graph.metrics();
    assert_eq!(requests(&m, "setPresence", "503"), 1, "{m:?}");
    assert_eq!(requests(&m, "setPresence", "200"), 1, "{m:?}");
    assert_eq!(requests(&m, "clearPresence", "200"), 1, "{m:?}");
    assert_eq!(requests(&m, "getPresencesByUserId", "200"), 1, "{m:?}");
    assert_eq!(requests(&m, "users", "200"), 1, "{m:?}");
    assert_eq!((m.throttled, m.retries), (1, 2));

    // a delegated credential whose refresh token is refused: a failed refresh
    let now = tokio::time::Instant::now();
    let stale = TokenSet {
        access_token: Secret::new("expired".to_owned()),
        refresh_token: Some(Secret::new("not-a-refresh-token".to_owned())),
        id_token: None,
        scopes: Vec::new(),
        expires_in: Duration::from_secs(3600),
        expires_at: now,
        expires_at_wall: SystemTime::now(),
    };
    let user = Tokens::delegated(&graph, stale, USER_SCOPES, Arc::new(NoSink));
    user.access_token().await.unwrap_err();
    let m = graph.metrics();
    assert_eq!((m.token_refreshes_ok, m.token_refreshes_failed), (1, 1));
    assert!(
        m.requests
            .iter()
            .any(|r| r.endpoint == "token" && r.status.starts_with('4')),
        "{m:?}"
    );

    // clones share the counters, and the exposition carries them
    assert_eq!(graph.clone().metrics(), m);
    let text = render(None, Some(&m), None);
    for line in [
        r#"presence_proxy_graph_requests_total{endpoint="presence",status="429"} 1"#,
        r#"presence_proxy_graph_requests_total{endpoint="setPresence",status="503"} 1"#,
        r#"presence_proxy_graph_retries_total 2"#,
        r#"presence_proxy_graph_throttled_total 1"#,
        r#"presence_proxy_graph_token_refreshes_total{outcome="ok"} 1"#,
        r#"presence_proxy_graph_token_refreshes_total{outcome="failed"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}
