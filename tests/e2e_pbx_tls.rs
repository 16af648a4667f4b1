//! TLS towards the PBX: a phone on UDP calls through the proxy to a PBX that only
//! speaks TLS (a tokio-rustls server made for the run). The proxy opens the TLS
//! connection itself and verifies the PBX's certificate against `pbx.tls_ca`; a PBX
//! whose certificate carries another name is refused, and the phone gets 503 at once
//! instead of a call to an impostor.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use presence_proxy::config::Config;
use presence_proxy::runtime;
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::sip::framing::{Frame, StreamFramer};
use presence_proxy::sip::{HeaderName, Message, Method};
use presence_proxy::transport::Transport;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::{TlsAcceptor, rustls};

const DEADLINE: Duration = Duration::from_secs(10);

/// A PBX that accepts one TLS connection and answers the first INVITE with 200 OK.
async fn tls_pbx(
    names: Vec<String>,
    dir: &Path,
) -> (
    SocketAddr,
    std::path::PathBuf,
    tokio::task::JoinHandle<Option<Message>>,
) {
    let generated = rcgen::generate_simple_self_signed(names).expect("certificate");
    let ca = dir.join("pbx-ca.pem");
    std::fs::write(&ca, generated.cert.pem()).expect("write the CA");
    let certs = vec![CertificateDer::from(generated.cert.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(generated.signing_key.serialize_pem().as_bytes())
        .expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        let mut tls = acceptor.accept(tcp).await.ok()?;
        let mut framer = StreamFramer::default();
        loop {
            framer.buffer_mut().reserve(4096);
            if tls.read_buf(framer.buffer_mut()).await.ok()? == 0 {
                return None;
            }
            while let Ok(Some(frame)) = framer.next_frame() {
                let Frame::Message(msg) = frame else { continue };
                if msg.method() == Some(Method::Invite) {
                    let ok = ResponseBuilder::new(&msg, 200, "OK")
                        .to_tag("tls-pbx")
                        .build();
                    tls.write_all(&ok).await.ok()?;
                    tls.flush().await.ok()?;
                    // keep the connection open until the proxy has relayed the answer
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Some(msg);
                }
            }
        }
    });
    (addr, ca, task)
}

async fn proxy_to(pbx: SocketAddr, ca: &Path, server_name: &str) -> runtime::RuntimeHandle {
    let toml = format!(
        r#"
[listen]
udp = ["127.0.0.1:5060"]

[pbx]
host = "127.0.0.1"
port = {}
transport = "tls"
tls_ca = {:?}
tls_server_name = "{server_name}"

[phones]
allowed_networks = ["127.0.0.0/8"]
"#,
        pbx.port(),
        ca.display().to_string()
    );
    let mut config =
        Config::from_toml(&toml, Path::new("pbx-tls.toml")).unwrap_or_else(|e| panic!("{e}"));
    config.listen.udp = vec!["127.0.0.1:0".parse().expect("addr")];
    runtime::start(&config).await.expect("proxy starts")
}

fn invite(phone: SocketAddr) -> Bytes {
    Bytes::from(format!(
        "INVITE sip:+4930123456@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-tlsp;rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=ph\r\nTo: <sip:+4930123456@pbx.example.com>\r\nCall-ID: pbx-tls@{phone}\r\nCSeq: 1 INVITE\r\nContact: <sip:201@{phone}>\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// Sends the INVITE and collects responses until a final one (or the deadline).
async fn call(proxy: SocketAddr) -> Vec<u16> {
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = phone.local_addr().expect("addr");
    phone.send_to(&invite(me), proxy).await.expect("send");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_on_udp_reaches_a_pbx_on_verified_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (pbx, ca, pbx_task) = tls_pbx(vec!["pbx.example.com".into()], dir.path()).await;
    let proxy = proxy_to(pbx, &ca, "pbx.example.com").await;
    let statuses = call(proxy.local_addr(Transport::Udp).expect("udp")).await;
    assert_eq!(
        statuses,
        vec![100, 200],
        "100 from the proxy, then the PBX's 200 over TLS"
    );
    let seen = tokio::time::timeout(DEADLINE, pbx_task)
        .await
        .expect("the PBX task ends within the deadline")
        .expect("PBX task")
        .expect("the PBX got the INVITE over TLS");
    let top = seen.top_via().expect("Via").expect("parses");
    assert_eq!(
        top.transport(),
        b"TLS",
        "the proxy's Via says how it reached the PBX"
    );
    assert!(seen.header(HeaderName::RecordRoute).is_some());
    tokio::time::timeout(DEADLINE, proxy.shutdown())
        .await
        .expect("the proxy shuts down within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (pbx, ca, pbx_task) = tls_pbx(vec!["impostor.example.net".into()], dir.path()).await;
    let proxy = proxy_to(pbx, &ca, "pbx.example.com").await;
    let statuses = call(proxy.local_addr(Transport::Udp).expect("udp")).await;
    assert_eq!(
        statuses,
        vec![100, 503],
        "the failed connection is answered 503 at once (RFC 3261 §16.7)"
    );
    let seen = tokio::time::timeout(DEADLINE, pbx_task)
        .await
        .expect("the impostor's handshake ends within the deadline")
        .expect("PBX task");
    assert!(seen.is_none(), "the impostor saw no INVITE");
    tokio::time::timeout(DEADLINE, proxy.shutdown())
        .await
        .expect("the proxy shuts down within the deadline");
}
