//! Whole calls through the sans-IO proxy core, for counting instructions per call with
//! callgrind (deterministic, unlike CPU time on a shared VM):
//!
//! ```sh
//! cargo build --release --example call_loop
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/call_loop 2000
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg0.out target/release/examples/call_loop 0
//! ```
//!
//! (the difference of the two totals divided by the calls is the core's cost per call).
//! Each call is the benchmark's: INVITE / 100 / 180 / 200 / ACK / BYE / 200 between a
//! phone and the PBX, to an external number, so the observer tracks it. A second
//! argument `untracked` sets the observer's call limit to 0: the difference between the
//! two runs is what observing a call costs. A second argument `cold` writes over a
//! 16 MiB buffer after every message, so that each message meets cold data caches as
//! it does in the benchmark, where the reader sleeps between datagrams. Under callgrind
//! with tiny first-level caches, the last-level misses inside `Proxy::handle_datagram`
//! (`ILmr`, `DLmr`) are then the cache lines of code and data one message touches
//! (BENCHMARKS.md, session 10):
//!
//! ```sh
//! valgrind --tool=callgrind --cache-sim=yes --I1=1024,2,64 --D1=1024,2,64 \
//!     --LL=8388608,16,64 --callgrind-out-file=/tmp/cold.out \
//!     target/release/examples/call_loop 300 cold
//! callgrind_annotate --inclusive=yes --show=Ir,ILmr,DLmr /tmp/cold.out | grep handle_datagram
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use presence_proxy::config::Cidr;
use presence_proxy::observe::ObserveConfig;
use presence_proxy::proxy::{Flow, Listener, Proxy, ProxyConfig};
use presence_proxy::sip::build::ResponseBuilder;
use presence_proxy::sip::{HeaderName, Message};
use presence_proxy::transport::Transport;

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5060)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let mode = args.next();
    let tracked = mode.as_deref() != Some("untracked");
    let cold = mode.as_deref() == Some("cold");
    let mut scratch = if cold {
        vec![0u8; 16 << 20]
    } else {
        Vec::new()
    };
    let proxy_addr = addr("10.0.0.1:5060");
    let pbx = addr("10.0.0.100:5070");
    let phone = addr("10.1.0.5:5062");
    let mut observe = ObserveConfig::default();
    if !tracked {
        observe.max_calls = 0;
    }
    let mut proxy = Proxy::new(ProxyConfig {
        listeners: vec![Listener {
            transport: Transport::Udp,
            local: proxy_addr,
            advertised: proxy_addr,
        }],
        pbx,
        pbx_transport: Transport::Udp,
        pbx_path: false,
        allowed_networks: "10.1.0.0/16".parse::<Cidr>().into_iter().collect(),
        max_transactions: 100_000,
        max_bindings: 100_000,
        max_requests_per_second_per_source: 1_000_000,
        seed: 3,
        observe,
        teams_busy_response: Some((486, "Busy Here")),
        blf: presence_proxy::blf::DocumentRenderer::default(),
    });
    let flow = |remote| Flow {
        transport: Transport::Udp,
        remote,
        local: proxy_addr,
        conn: None,
    };
    let mut now = Instant::now();
    let mut sent = 0usize;
    let mut deliver = |proxy: &mut Proxy, now: Instant, from: SocketAddr, bytes: Bytes| {
        proxy.handle_datagram(now, flow(from), bytes);
        let mut last_to_pbx = None;
        let mut last_to_phone = None;
        while let Some(t) = proxy.poll_transmit() {
            sent += 1;
            if t.flow.remote == pbx {
                last_to_pbx = Some(t.bytes);
            } else {
                last_to_phone = Some(t.bytes);
            }
        }
        while proxy.poll_event().is_some() {}
        evict_caches(&mut scratch);
        (last_to_pbx, last_to_phone)
    };
    for i in 0..calls {
        let invite = format!(
            "INVITE sip:+4930123456@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.5:5062;branch=z9hG4bK-{i}-i;rport\r\nMax-Forwards: 70\r\nFrom: \"Desk 201\" <sip:201@pbx.example.com>;tag=a{i}\r\nTo: <sip:+4930123456@pbx.example.com>\r\nCall-ID: call-{i}@10.1.0.5\r\nCSeq: 1 INVITE\r\nContact: <sip:201@10.1.0.5:5062>\r\nContent-Length: 0\r\n\r\n"
        );
        let (Some(fwd), _) = deliver(&mut proxy, now, phone, Bytes::from(invite)) else {
            eprintln!("call {i}: INVITE not forwarded");
            return;
        };
        let Ok(fwd) = Message::parse(fwd) else { return };
        let tag = format!("b{i}");
        for code in [100u16, 180] {
            let r = ResponseBuilder::new(&fwd, code, "Ringing")
                .to_tag(&tag)
                .build();
            deliver(&mut proxy, now, pbx, r);
        }
        let record_route = fwd.header(HeaderName::RecordRoute).unwrap_or_default();
        let ok = ResponseBuilder::new(&fwd, 200, "OK")
            .to_tag(&tag)
            .header("Record-Route", record_route)
            .header("Contact", b"<sip:pbx@10.0.0.100:5070>")
            .build();
        let (_, Some(ok)) = deliver(&mut proxy, now, pbx, ok) else {
            eprintln!("call {i}: 200 not relayed");
            return;
        };
        let Ok(ok) = Message::parse(ok) else { return };
        let route = ok
            .header(HeaderName::RecordRoute)
            .map(|rr| String::from_utf8_lossy(rr).into_owned())
            .unwrap_or_default();
        let to = ok
            .header(HeaderName::To)
            .map(|to| String::from_utf8_lossy(to).into_owned())
            .unwrap_or_default();
        for (method, seq) in [("ACK", 1), ("BYE", 2)] {
            let request = format!(
                "{method} sip:pbx@10.0.0.100:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.5:5062;branch=z9hG4bK-{i}-{method};rport\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: \"Desk 201\" <sip:201@pbx.example.com>;tag=a{i}\r\nTo: {to}\r\nCall-ID: call-{i}@10.1.0.5\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
            );
            let (fwd, _) = deliver(&mut proxy, now, phone, Bytes::from(request));
            if method == "BYE" {
                let Some(Ok(bye)) = fwd.map(Message::parse) else {
                    eprintln!("call {i}: BYE not forwarded");
                    return;
                };
                let r = ResponseBuilder::new(&bye, 200, "OK").build();
                deliver(&mut proxy, now, pbx, r);
            }
        }
        now += Duration::from_millis(1);
        while let Some(at) = proxy.poll_timeout().filter(|&at| at <= now) {
            proxy.handle_timeout(at);
            while proxy.poll_transmit().is_some() {}
        }
    }
    println!(
        "{calls} calls, {sent} messages sent, observer tracking: {tracked}, calls left: {}",
        proxy.observer().call_count()
    );
}

/// Writes one byte in every cache line of `scratch`, pushing everything else out of the
/// data caches.
#[inline(never)]
fn evict_caches(scratch: &mut [u8]) {
    for line in scratch.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(scratch);
}
