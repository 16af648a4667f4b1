//! End to end over TLS. SIPp is built without TLS, so the phone is this test: a
//! tokio-rustls client that trusts a self-signed certificate made for the run (rcgen,
//! for 127.0.0.1 and localhost). The proxy listens on TLS with that certificate and
//! relays to a SIPp UAS playing the PBX over UDP (`tests/sipp/pbx_call.xml`).
//!
//! The phone sends an INVITE over TLS, reads 100, 180 and 200 on the same connection
//! (framed with the crate's own `StreamFramer`), sends the ACK and the BYE through
//! the route set the 200 carried (the proxy's double Record-Route: TLS towards the
//! phone, UDP towards the PBX), and gets 200 for the BYE.
//!
//! Needs `sipp` (Debian: sip-tester); `scripts/test.sh` installs it.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

mod e2e_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_support::{
    DEADLINE, SippRun, TlsFiles, assert_success, fail, free_port, require_sipp, spawn_sipp,
    start_proxy, test_dir, wait_bound,
};
use presence_proxy::sip::framing::{Frame, StreamFramer};
use presence_proxy::sip::header::ContactValue;
use presence_proxy::sip::{HeaderName, Message, Method};
use presence_proxy::transport::Transport;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsConnector, rustls};

/// The phone's side of one TLS connection: writes requests, reads framed messages.
struct TlsPhone {
    stream: TlsStream<TcpStream>,
    framer: StreamFramer,
    local: SocketAddr,
    /// When reading gives up.
    deadline: tokio::time::Instant,
    /// Everything sent and received, for failure messages.
    transcript: String,
}

impl TlsPhone {
    async fn connect(proxy: SocketAddr, certificate: CertificateDer<'static>) -> TlsPhone {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).expect("trust the test certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(proxy)
            .await
            .expect("connect to the TLS listener");
        let local = tcp.local_addr().expect("local address");
        // the certificate names 127.0.0.1 (an IP SAN): the proxy is checked against it
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the proxy");
        TlsPhone {
            stream,
            framer: StreamFramer::default(),
            local,
            deadline: tokio::time::Instant::now() + Duration::from_secs(15),
            transcript: String::new(),
        }
    }

    async fn send(&mut self, text: &str) {
        let text = text.replace('\n', "\r\n");
        self.transcript.push_str(&format!(">>>>>>>> sent\n{text}"));
        self.stream
            .write_all(text.as_bytes())
            .await
            .expect("write to the proxy");
        self.stream.flush().await.expect("flush");
    }

    /// The next SIP message on the connection (keep-alives skipped).
    async fn receive(&mut self) -> Message {
        loop {
            match self.framer.next_frame() {
                Ok(Some(Frame::Message(msg))) => {
                    self.transcript.push_str(&format!(
                        "<<<<<<<< received\n{}",
                        String::from_utf8_lossy(msg.as_bytes())
                    ));
                    return msg;
                }
                Ok(Some(Frame::Ping | Frame::Pong)) => continue,
                Ok(None) => {}
                Err(e) => panic!(
                    "the proxy sent a stream that does not frame: {e}\n{}",
                    self.transcript
                ),
            }
            let mut buf = [0u8; 8192];
            let read = tokio::time::timeout_at(self.deadline, self.stream.read(&mut buf)).await;
            let Ok(read) = read else {
                panic!(
                    "nothing more from the proxy within 15 s\n{}",
                    self.transcript
                )
            };
            let n = read.expect("read from the proxy");
            assert!(
                n > 0,
                "the proxy closed the TLS connection\n{}",
                self.transcript
            );
            self.framer.push(&buf[..n]);
        }
    }

    /// The next response whose CSeq method is `method`, skipping retransmissions of
    /// earlier ones.
    async fn response_to(&mut self, method: Method) -> Message {
        loop {
            let msg = self.receive().await;
            let cseq_method = msg.cseq().and_then(Result::ok).map(|c| c.method());
            if msg.status().is_some() && cseq_method == Some(method) {
                return msg;
            }
        }
    }
}

fn header(msg: &Message, name: HeaderName) -> String {
    String::from_utf8_lossy(msg.header(name).unwrap_or_default()).into_owned()
}

const SDP: &str = "v=0
o=phone 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 40000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

/// Plays the call from the phone's side, asserting every answer.
async fn call(phone: &mut TlsPhone, pbx: SocketAddr) {
    let local = phone.local;
    let call_id = format!("e2e-tls-{}-{}@127.0.0.1", std::process::id(), local.port());
    let from = format!("\"Desk 200\" <sip:200@{pbx}>;tag=tls-phone");
    let contact = format!("<sip:200@{local};transport=tls>");
    let sdp = SDP.replace('\n', "\r\n");
    phone
        .send(&format!(
            "INVITE sip:201@{pbx} SIP/2.0
Via: SIP/2.0/TLS {local};branch=z9hG4bK-tls-invite;rport
Max-Forwards: 70
From: {from}
To: <sip:201@{pbx}>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: {contact}
Content-Type: application/sdp
Content-Length: {}

{SDP}",
            sdp.len()
        ))
        .await;

    let trying = phone.receive().await;
    assert_eq!(
        trying.status(),
        Some(100),
        "the proxy's 100 first\n{}",
        phone.transcript
    );
    let ringing = phone.response_to(Method::Invite).await;
    assert_eq!(ringing.status(), Some(180), "{}", phone.transcript);
    let ok = phone.response_to(Method::Invite).await;
    assert_eq!(ok.status(), Some(200), "{}", phone.transcript);

    // the route set: Record-Route reversed (RFC 3261 §12.1.2); the remote target: Contact
    let mut route_set: Vec<String> = ok
        .record_routes()
        .map(|rr| {
            format!(
                "<{}>",
                String::from_utf8_lossy(rr.expect("Record-Route").uri().as_bytes())
            )
        })
        .collect();
    route_set.reverse();
    assert_eq!(
        route_set.len(),
        2,
        "double Record-Route (TLS side, UDP side)\n{}",
        phone.transcript
    );
    assert!(
        route_set[0].contains(";transport=tls"),
        "the phone's first hop is the proxy's TLS side: {route_set:?}"
    );
    let target = match ok.contacts().next() {
        Some(Ok(ContactValue::Address(a))) => {
            String::from_utf8_lossy(a.uri().as_bytes()).into_owned()
        }
        _ => panic!("the 200 has no Contact\n{}", phone.transcript),
    };
    let to = header(&ok, HeaderName::To);
    let route = route_set.join(", ");

    for (cseq, method, branch) in [(1, "ACK", "z9hG4bK-tls-ack"), (2, "BYE", "z9hG4bK-tls-bye")] {
        phone
            .send(&format!(
                "{method} {target} SIP/2.0
Via: SIP/2.0/TLS {local};branch={branch};rport
Route: {route}
Max-Forwards: 70
From: {from}
To: {to}
Call-ID: {call_id}
CSeq: {cseq} {method}
Contact: {contact}
Content-Length: 0

"
            ))
            .await;
    }
    let bye_ok = phone.response_to(Method::Bye).await;
    assert_eq!(bye_ok.status(), Some(200), "{}", phone.transcript);
    let via = header(&bye_ok, HeaderName::Via);
    assert!(
        via.contains("z9hG4bK-tls-bye"),
        "the 200 answers our BYE: {via}"
    );
    assert_eq!(bye_ok.header_count(HeaderName::Via), 1, "only our Via left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_from_a_phone_on_tls_to_a_pbx_on_udp() {
    require_sipp();
    let mut dir = test_dir("presence-e2e-tls-");

    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    let certificate = dir.path().join("cert.pem");
    let private_key = dir.path().join("key.pem");
    std::fs::write(&certificate, generated.cert.pem()).expect("write the certificate");
    std::fs::write(&private_key, generated.signing_key.serialize_pem()).expect("write the key");

    let pbx_port = free_port();
    let proxy = start_proxy(
        pbx_port,
        Some(TlsFiles {
            certificate: &certificate,
            private_key: &private_key,
        }),
    )
    .await;
    let tls = proxy.tls.expect("TLS listener");

    let mut pbx = spawn_sipp(
        dir.path(),
        &SippRun {
            name: "pbx",
            scenario: "pbx_call.xml",
            port: pbx_port,
            remote: None,
            send_to: None,
            extra: &[],
        },
    );
    if let Err(e) = wait_bound(&mut pbx, Transport::Udp, pbx_port).await {
        fail(&mut dir, &e);
    }

    let pbx_addr: SocketAddr = ([127, 0, 0, 1], pbx_port).into();
    let der = CertificateDer::from(generated.cert.der().to_vec());
    // the phone runs as a task: when one of its checks fails, the PBX's logs are
    // printed too
    let phone = tokio::spawn(async move {
        let mut phone = TlsPhone::connect(tls, der).await;
        call(&mut phone, pbx_addr).await;
    });
    if let Err(e) = phone.await {
        pbx.stop();
        fail(&mut dir, &format!("the TLS phone failed: {e}"));
    }
    let status = pbx.wait_until(Instant::now() + DEADLINE).await;
    pbx.stop();
    proxy.shutdown().await;
    assert_success("the PBX's SIPp", status, &mut dir);
}
