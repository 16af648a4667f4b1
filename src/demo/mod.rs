//! `presence-proxy demo`: the proxy on loopback with an embedded configuration, a small
//! PBX stand-in behind it, and one scripted phone in front of it. The phone registers,
//! calls out, is called back and dials `*78`, every message crossing the proxy. A
//! transcript shows what each side saw and what the proxy observed of extension 201
//! (its external calls and DND); then the proxy keeps running for real phones or SIPp
//! until Ctrl-C, printing what it observes.

pub mod pbx;
pub mod phones;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::broadcast;

use crate::config::Config;
use crate::observe::ObserveEvent;
use crate::runtime;
use crate::sip::build::ResponseBuilder;
use crate::sip::{HeaderName, Message, Method};
use crate::transport::Transport;

/// The demo's configuration: phones on udp/tcp 127.0.0.1:5060, the PBX stand-in on
/// udp 127.0.0.1:5070 (the same as `config/loopback.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../config/loopback.toml");

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded configuration did not load.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The proxy could not start.
    #[error("{0}")]
    Runtime(#[from] runtime::RuntimeError),
    /// A demo socket failed.
    #[error("demo socket: {0}")]
    Io(#[from] std::io::Error),
    /// The scripted exchange did not go as expected.
    #[error("the scripted call failed: {0}")]
    Script(String),
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One end of the demo: a UDP socket, a name for the transcript, and a peer to send to.
struct Endpoint {
    name: &'static str,
    socket: UdpSocket,
    peer: SocketAddr,
}

impl Endpoint {
    async fn send(&self, bytes: Bytes) -> Result<(), DemoError> {
        if let Ok(msg) = Message::parse(bytes.clone()) {
            println!("  {:<5} → {}", self.name, summary(&msg));
        }
        self.socket.send_to(&bytes, self.peer).await?;
        Ok(())
    }

    /// The next message, skipping retransmissions' noise, within a deadline.
    async fn recv(&self) -> Result<Message, DemoError> {
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf))
            .await
            .map_err(|_| DemoError::Script(format!("{} heard nothing for 5 s", self.name)))??;
        let msg = Message::parse(Bytes::copy_from_slice(&buf[..n])).map_err(|e| {
            DemoError::Script(format!("{} got an unparseable message: {e}", self.name))
        })?;
        println!("  {:<5} ← {}", self.name, summary(&msg));
        Ok(msg)
    }

    /// Receives until a message satisfies `want` (provisional responses, 100s, ...).
    async fn recv_until(&self, want: impl Fn(&Message) -> bool) -> Result<Message, DemoError> {
        loop {
            let msg = self.recv().await?;
            if want(&msg) {
                return Ok(msg);
            }
        }
    }
}

fn summary(msg: &Message) -> String {
    let first = match (msg.method_bytes(), msg.status()) {
        (Some(m), _) => format!(
            "{} {}",
            text(m),
            text(msg.request_uri_bytes().unwrap_or_default())
        ),
        (None, Some(code)) => format!("{code} {}", text(msg.reason().unwrap_or_default())),
        _ => String::new(),
    };
    let mut extra = Vec::new();
    if let Some(Ok(c)) = msg.contacts().next() {
        if let Some(a) = c.address() {
            extra.push(format!("Contact {}", text(a.uri().as_bytes())));
        }
    }
    let rr = msg.record_routes().count();
    if rr > 0 {
        extra.push(format!("{rr} Record-Route"));
    }
    let routes = msg.routes().count();
    if routes > 0 {
        extra.push(format!("{routes} Route"));
    }
    if extra.is_empty() {
        first
    } else {
        format!("{first}   [{}]", extra.join(", "))
    }
}

fn header(msg: &Message, name: HeaderName) -> String {
    text(msg.header(name).unwrap_or_default())
}

/// A response echoing the request's Record-Route (what a UAS does, RFC 3261 §12.1.1).
fn answer(req: &Message, code: u16, reason: &str, tag: &str, contact: Option<&str>) -> Bytes {
    let rr: Vec<Vec<u8>> = req
        .fields_named(HeaderName::RecordRoute)
        .map(|f| req.field_value(f).to_vec())
        .collect();
    let contact = contact.map(|c| format!("<{c}>"));
    let mut builder = ResponseBuilder::new(req, code, reason).to_tag(tag);
    for value in &rr {
        builder = builder.header("Record-Route", value);
    }
    if let Some(contact) = &contact {
        builder = builder.header("Contact", contact.as_bytes());
    }
    builder.build()
}

/// The route set a UAC takes from a 2xx: its Record-Route, reversed (§12.1.2).
fn uac_routes(ok: &Message) -> String {
    let mut routes: Vec<String> = ok
        .values(HeaderName::RecordRoute)
        .map(|(_, span)| text(ok.slice(span)))
        .collect();
    routes.reverse();
    routes.iter().map(|r| format!("Route: {r}\r\n")).collect()
}

/// Prints what the proxy observed since the last call (every event of a step is sent
/// before the message that caused it is forwarded, so a finished step has them all).
fn show_events(events: &mut broadcast::Receiver<ObserveEvent>, seen: &mut Vec<ObserveEvent>) {
    while let Ok(event) = events.try_recv() {
        println!("   observed: {event}");
        seen.push(event);
    }
}

/// The phone dials `dialled`; the PBX rings and answers; the phone hangs up.
async fn outgoing_call(
    phone: &Endpoint,
    pbx_side: &Endpoint,
    dialled: &str,
    call: &str,
) -> Result<(), DemoError> {
    let me = phone.socket.local_addr()?;
    let pbx = pbx_side.socket.local_addr()?;
    let contact = format!("sip:201@{me}");
    phone
        .send(Bytes::from(format!(
            "INVITE sip:{dialled}@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call}-i1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=ph201c\r\nTo: <sip:{dialled}@pbx.example.com>\r\nCall-ID: {call}@{me}\r\nCSeq: 1 INVITE\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n"
        )))
        .await?;
    let invite = pbx_side
        .recv_until(|m| m.method() == Some(Method::Invite))
        .await?;
    pbx_side
        .send(answer(&invite, 180, "Ringing", "pbx-out", None))
        .await?;
    pbx_side
        .send(answer(
            &invite,
            200,
            "OK",
            "pbx-out",
            Some(&format!("sip:pbx@{pbx}")),
        ))
        .await?;
    let ok = phone.recv_until(|m| m.status() == Some(200)).await?;
    let routes = uac_routes(&ok);
    for (method, cseq, branch) in [("ACK", 1, "a1"), ("BYE", 2, "b1")] {
        phone
            .send(Bytes::from(format!(
                "{method} sip:pbx@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call}-{branch};rport\r\n{routes}Max-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=ph201c\r\nTo: {}\r\nCall-ID: {call}@{me}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                header(&ok, HeaderName::To)
            )))
            .await?;
        let got = pbx_side.recv().await?;
        if method == "BYE" {
            pbx_side
                .send(ResponseBuilder::new(&got, 200, "OK").build())
                .await?;
            phone.recv_until(|m| m.status() == Some(200)).await?;
        }
    }
    Ok(())
}

async fn script(
    proxy: SocketAddr,
    pbx: SocketAddr,
    events: &mut broadcast::Receiver<ObserveEvent>,
) -> Result<Vec<ObserveEvent>, DemoError> {
    let mut seen = Vec::new();
    let phone = Endpoint {
        name: "phone",
        socket: UdpSocket::bind("127.0.0.1:0").await?,
        peer: proxy,
    };
    let pbx_side = Endpoint {
        name: "pbx",
        socket: UdpSocket::bind(pbx).await?,
        peer: proxy,
    };
    let me = phone.socket.local_addr()?;
    let contact = format!("sip:201@{me}");

    println!("\n1. Extension 201 registers through the proxy:");
    phone
        .send(Bytes::from(format!(
            "REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-demo-r1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=ph201\r\nTo: <sip:201@pbx.example.com>\r\nCall-ID: demo-reg@{me}\r\nCSeq: 1 REGISTER\r\nContact: <{contact}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
        )))
        .await?;
    let register = pbx_side.recv().await?;
    let alias = register
        .contacts()
        .next()
        .and_then(Result::ok)
        .and_then(|c| c.address().map(|a| text(a.uri().as_bytes())))
        .ok_or_else(|| {
            DemoError::Script("the REGISTER reached the PBX without a Contact".into())
        })?;
    let mut ok = ResponseBuilder::new(&register, 200, "OK").to_tag("pbx-reg");
    let contact_back = format!("<{alias}>;expires=600");
    ok = ok.header("Contact", contact_back.as_bytes());
    pbx_side.send(ok.build()).await?;
    phone.recv_until(|m| m.status() == Some(200)).await?;
    println!("   The PBX stored {alias}: the proxy's alias for the phone.");

    println!("\n2. 201 calls an external number; the PBX answers and 201 hangs up:");
    outgoing_call(&phone, &pbx_side, "+4930123456", "demo-out").await?;
    show_events(events, &mut seen);

    println!("\n3. The PBX calls 201 at the alias; the proxy finds the phone; the PBX hangs up:");
    pbx_side
        .send(Bytes::from(format!(
            "INVITE {alias} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx};branch=z9hG4bK-demo-pi1\r\nMax-Forwards: 70\r\nFrom: <sip:+4930999@pbx.example.com>;tag=pbx-in\r\nTo: <sip:201@pbx.example.com>\r\nCall-ID: demo-in@{pbx}\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@{pbx}>\r\nContent-Length: 0\r\n\r\n"
        )))
        .await?;
    let incoming = phone
        .recv_until(|m| m.method() == Some(Method::Invite))
        .await?;
    println!(
        "   The phone sees its own Contact as Request-URI: {}",
        text(incoming.request_uri_bytes().unwrap_or_default())
    );
    phone
        .send(answer(&incoming, 180, "Ringing", "ph201in", None))
        .await?;
    phone
        .send(answer(&incoming, 200, "OK", "ph201in", Some(&contact)))
        .await?;
    let ok = pbx_side.recv_until(|m| m.status() == Some(200)).await?;
    let routes = uac_routes(&ok);
    let to = header(&ok, HeaderName::To);
    for (method, cseq, branch) in [
        ("ACK", 1, "z9hG4bK-demo-pa1"),
        ("BYE", 2, "z9hG4bK-demo-pb1"),
    ] {
        pbx_side
            .send(Bytes::from(format!(
                "{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx};branch={branch}\r\n{routes}Max-Forwards: 70\r\nFrom: <sip:+4930999@pbx.example.com>;tag=pbx-in\r\nTo: {to}\r\nCall-ID: demo-in@{pbx}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
            )))
            .await?;
        let got = phone.recv().await?;
        if method == "BYE" {
            phone
                .send(ResponseBuilder::new(&got, 200, "OK").build())
                .await?;
            pbx_side.recv_until(|m| m.status() == Some(200)).await?;
        }
    }
    show_events(events, &mut seen);

    println!("\n4. 201 dials *78 (DND on); the PBX accepts the code:");
    outgoing_call(&phone, &pbx_side, "*78", "demo-dnd").await?;
    show_events(events, &mut seen);
    Ok(seen)
}

async fn demo_async() -> Result<(), DemoError> {
    let config = Config::from_toml(DEMO_CONFIG, Path::new("config/loopback.toml (embedded)"))?;
    let keep_running = std::env::var_os("PRESENCE_PROXY_DEMO_ONCE").is_none();
    run(&config, keep_running).await.map(|_| ())
}

/// Starts the proxy with `config`, runs the scripted phone and PBX stand-in through it
/// (the PBX stand-in binds `pbx.host:pbx.port`), and returns what the proxy observed.
/// With `keep_running`, the proxy then serves real phones until Ctrl-C.
pub async fn run(config: &Config, keep_running: bool) -> Result<Vec<ObserveEvent>, DemoError> {
    let handle = runtime::start(config).await?;
    let proxy = handle
        .local_addr(Transport::Udp)
        .ok_or_else(|| DemoError::Script("no UDP listener".into()))?;
    let pbx = SocketAddr::new(
        config.pbx.host_ip().unwrap_or(proxy.ip()),
        config.pbx.port_or_default(),
    );
    println!("presence-proxy is running: phones → udp/tcp {proxy}, PBX stand-in at udp {pbx}.");
    let mut events = handle.phone_events();
    let outcome = script(proxy, pbx, &mut events).await;
    match &outcome {
        Ok(_) => println!(
            "\nEvery message above crossed the proxy. It keeps running on {proxy}: point a phone's outbound proxy (or SIPp) at it. Ctrl-C stops it."
        ),
        Err(e) => println!("\n{e}"),
    }
    if outcome.is_ok() && keep_running {
        // from here on, what real phones do through the proxy
        let live = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => println!("observed: {event}"),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        println!("observed: ({missed} events missed)");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        runtime::shutdown_signal().await;
        live.abort();
    }
    handle.shutdown().await;
    outcome
}

/// Runs the demo.
pub fn demo() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(demo_async()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::from(1)
        }
    }
}
