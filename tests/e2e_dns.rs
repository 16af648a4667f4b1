//! RFC 3263 end to end: `pbx.host` is a bare domain, and a small authoritative DNS
//! server inside the test (hand-built answers, on a loopback port the system picks)
//! serves its NAPTR, SRV and A records. The proxy, pointed at that server with
//! `pbx.dns_server`, finds the PBX by NAPTR → SRV → A and relays a phone's INVITE to
//! the socket the SRV record names. When the first SRV target refuses connections, the
//! proxy fails over and the request that found it dead is sent again to the second
//! target (RFC 3263 §4.3). A PBX sending from another server of its SRV set still
//! counts as the PBX.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::proto::op::{Message as DnsMessage, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, NAPTR, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record};
use presence_proxy::config::Config;
use presence_proxy::runtime::{self, RuntimeHandle};
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::sip::framing::{Frame, StreamFramer};
use presence_proxy::sip::{HeaderName, Message, Method};
use presence_proxy::transport::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(10);

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a domain name")
}

fn naptr(owner: &str, order: u16, services: &str, replacement: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::NAPTR(NAPTR::new(
            order,
            10,
            b"s".to_vec().into_boxed_slice(),
            services.as_bytes().to_vec().into_boxed_slice(),
            Vec::new().into_boxed_slice(),
            name(replacement),
        )),
    )
}

fn srv(owner: &str, priority: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::SRV(SRV::new(priority, 0, port, name(target))),
    )
}

fn a(owner: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A::new(127, 0, 0, 1)))
}

/// An authoritative DNS server for `records` on a free loopback UDP port. It answers
/// every query from the records (NXDOMAIN for a name it has nothing for) and logs
/// each question it was asked.
struct DnsServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl DnsServer {
    async fn start(records: Vec<Record>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("addr");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = DnsMessage::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = DnsMessage::new();
                response
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_authoritative(true)
                    .set_recursion_desired(query.recursion_desired());
                for q in query.queries() {
                    let wanted = q.name().to_ascii().to_ascii_lowercase();
                    log.lock()
                        .unwrap()
                        .push(format!("{} {}", q.query_type(), wanted));
                    response.add_query(q.clone());
                    let same_name =
                        |r: &&Record| r.name().to_ascii().to_ascii_lowercase() == wanted;
                    if !records.iter().any(|r| same_name(&r)) {
                        response.set_response_code(ResponseCode::NXDomain);
                    }
                    response.add_answers(
                        records
                            .iter()
                            .filter(same_name)
                            .filter(|r| r.record_type() == q.query_type())
                            .cloned(),
                    );
                }
                let Ok(bytes) = response.to_vec() else {
                    continue;
                };
                let _ = socket.send_to(&bytes, from).await;
            }
        });
        Self { addr, asked, task }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy on a free loopback UDP port, with `pbx.host = host` (no port, no
/// transport) resolved through `dns`.
async fn proxy_for(host: &str, dns: SocketAddr) -> RuntimeHandle {
    let toml = format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "{host}"
dns_server = "{dns}"

[phones]
allowed_networks = ["127.0.0.0/8"]

[limits]
shutdown_grace_seconds = 1
"#
    );
    let mut config =
        Config::from_toml(&toml, Path::new("e2e-dns.toml")).unwrap_or_else(|e| panic!("{e}"));
    config.listen.udp = vec!["127.0.0.1:0".parse().expect("addr")];
    runtime::start(&config)
        .await
        .unwrap_or_else(|e| panic!("the proxy did not start: {e}"))
}

fn invite(phone: SocketAddr, call: &str) -> Bytes {
    Bytes::from(format!(
        "INVITE sip:+4930123456@pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-{call};rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.test>;tag=ph\r\nTo: <sip:+4930123456@pbx.test>\r\nCall-ID: {call}@{phone}\r\nCSeq: 1 INVITE\r\nContact: <sip:201@{phone}>\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// A phone on UDP: sends an INVITE through the proxy and collects the statuses of the
/// responses until a final one (or the deadline).
async fn call(proxy: SocketAddr, call: &str) -> Vec<u16> {
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = phone.local_addr().expect("addr");
    phone.send_to(&invite(me, call), proxy).await.expect("send");
    let mut statuses = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, phone.recv_from(&mut buf)).await {
        let msg = Message::parse(Bytes::copy_from_slice(&buf[..n])).expect("a response");
        let status = msg.status().expect("a response");
        statuses.push(status);
        if status >= 200 {
            break;
        }
    }
    statuses
}

/// A PBX on UDP that answers the first INVITE it gets with 200 OK.
async fn udp_pbx() -> (SocketAddr, Arc<UdpSocket>, JoinHandle<Message>) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind PBX"));
    let addr = socket.local_addr().expect("addr");
    let pbx = socket.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = pbx.recv_from(&mut buf).await.expect("PBX receives");
            let Ok(msg) = Message::parse(Bytes::copy_from_slice(&buf[..n])) else {
                continue;
            };
            if msg.method() == Some(Method::Invite) {
                let ok = ResponseBuilder::new(&msg, 200, "OK").to_tag("pbx").build();
                pbx.send_to(&ok, from).await.expect("PBX answers");
                return msg;
            }
        }
    });
    (addr, socket, task)
}

/// A PBX on TCP that accepts one connection and answers its first INVITE with 200 OK.
/// The task returns the INVITE with the connection, so that it stays open until the
/// test is done with it.
async fn tcp_pbx() -> (SocketAddr, JoinHandle<(Message, TcpStream)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind PBX");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut framer = StreamFramer::default();
        loop {
            framer.buffer_mut().reserve(4096);
            let n = stream
                .read_buf(framer.buffer_mut())
                .await
                .expect("PBX reads");
            assert!(n > 0, "the proxy closed the connection without an INVITE");
            while let Ok(Some(frame)) = framer.next_frame() {
                let Frame::Message(msg) = frame else { continue };
                if msg.method() == Some(Method::Invite) {
                    let ok = ResponseBuilder::new(&msg, 200, "OK").to_tag("pbx").build();
                    stream.write_all(&ok).await.expect("PBX answers");
                    stream.flush().await.expect("flush");
                    return (msg, stream);
                }
            }
        }
    });
    (addr, task)
}

/// A loopback TCP port nobody listens on: connections to it are refused.
async fn dead_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_domain_is_found_by_naptr_srv_and_a() {
    let (pbx, _socket, pbx_task) = udp_pbx().await;
    let dns = DnsServer::start(vec![
        // the lowest order is TLS, which this proxy cannot use here (no pbx.tls_ca)
        naptr("pbx.test.", 5, "SIPS+D2T", "_sips._tcp.pbx.test."),
        naptr("pbx.test.", 10, "SIP+D2U", "_sip._udp.pbx.test."),
        srv("_sips._tcp.pbx.test.", 10, 5061, "tls.pbx.test."),
        srv("_sip._udp.pbx.test.", 10, pbx.port(), "sip1.pbx.test."),
        a("sip1.pbx.test."),
        a("tls.pbx.test."),
    ])
    .await;
    let proxy = proxy_for("pbx.test", dns.addr).await;
    let statuses = call(proxy.local_addr(Transport::Udp).expect("udp"), "naptr").await;
    assert_eq!(statuses, vec![100, 200], "the PBX named by SRV answered");
    let seen = within("the PBX gets the INVITE", pbx_task)
        .await
        .expect("PBX task");
    let via = seen.top_via().expect("Via").expect("parses");
    assert_eq!(via.transport(), b"UDP", "NAPTR chose UDP");
    let asked = dns.asked();
    assert_eq!(
        asked.first().map(String::as_str),
        Some("NAPTR pbx.test."),
        "{asked:?}"
    );
    assert!(
        asked.contains(&"SRV _sip._udp.pbx.test.".to_owned()),
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|q| q.contains("_sips._tcp")),
        "the unusable SIPS record was skipped: {asked:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_srv_target_fails_over_to_the_second() {
    let dead = dead_tcp_port().await;
    let (live, pbx_task) = tcp_pbx().await;
    let dns = DnsServer::start(vec![
        naptr("pbx2.test.", 10, "SIP+D2T", "_sip._tcp.pbx2.test."),
        srv("_sip._tcp.pbx2.test.", 10, dead, "dead.pbx2.test."),
        srv("_sip._tcp.pbx2.test.", 20, live.port(), "live.pbx2.test."),
        a("dead.pbx2.test."),
        a("live.pbx2.test."),
    ])
    .await;
    let proxy = proxy_for("pbx2.test", dns.addr).await;
    let udp = proxy.local_addr(Transport::Udp).expect("udp");
    // the first target (priority 10) refuses: the proxy moves to the next target
    // (priority 20) and sends the waiting call there, over TCP; the phone never
    // hears of the dead one
    assert_eq!(call(udp, "first").await, vec![100, 200]);
    let (seen, _connection) = within("the live PBX gets the INVITE", pbx_task)
        .await
        .expect("PBX task");
    let call_id = seen.header(HeaderName::CallId).expect("Call-ID");
    assert!(
        call_id.starts_with(b"first@"),
        "the call that met the dead target"
    );
    let via = seen.top_via().expect("Via").expect("parses");
    assert_eq!(via.transport(), b"TCP", "NAPTR chose TCP");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_another_server_of_the_srv_set_count_as_the_pbx() {
    let (first, _first_socket, first_task) = udp_pbx().await;
    let second = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let dns = DnsServer::start(vec![
        srv("_sip._udp.pbx3.test.", 10, first.port(), "a.pbx3.test."),
        srv(
            "_sip._udp.pbx3.test.",
            20,
            second.local_addr().expect("addr").port(),
            "b.pbx3.test.",
        ),
        a("a.pbx3.test."),
        a("b.pbx3.test."),
    ])
    .await;
    // no NAPTR at all: SRV for each transport, UDP found
    let proxy = proxy_for("pbx3.test", dns.addr).await;
    let udp = proxy.local_addr(Transport::Udp).expect("udp");
    assert_eq!(call(udp, "to-first").await, vec![100, 200]);
    within("the first PBX server gets the INVITE", first_task)
        .await
        .expect("PBX task");
    // the second server (not the one in use) calls a phone by its address: as a PBX
    // request, it goes to the phone, not back to the PBX
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let phone_addr = phone.local_addr().expect("addr");
    let me = second.local_addr().expect("addr");
    let incoming = format!(
        "INVITE sip:201@{phone_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-from-b\r\nMax-Forwards: 70\r\nFrom: <sip:+4930999@pbx3.test>;tag=b\r\nTo: <sip:201@pbx3.test>\r\nCall-ID: from-b@{me}\r\nCSeq: 1 INVITE\r\nContact: <sip:+4930999@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    second
        .send_to(incoming.as_bytes(), udp)
        .await
        .expect("send");
    let mut buf = vec![0u8; 65_535];
    let (n, _) = within("the phone gets the PBX's INVITE", phone.recv_from(&mut buf))
        .await
        .expect("recv");
    let msg = Message::parse(Bytes::copy_from_slice(&buf[..n])).expect("a request");
    assert_eq!(msg.method(), Some(Method::Invite));
    proxy.shutdown().await;
}
