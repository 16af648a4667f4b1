//! Parser throughput (criterion): index only, and index plus the accessors a proxy
//! reads per message (top Via, From/To tags, Call-ID, CSeq, Route), on a ~1 KB INVITE
//! with SDP and on a NOTIFY with a dialog-info body. rsip 0.4 on the same inputs for
//! scale. Figures and the command are recorded in BENCHMARKS.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use presence_proxy::sip::Message;

const INVITE: &[u8] = b"INVITE sip:+4930123456@pbx.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.10.31:5060;branch=z9hG4bK-524287-1---c0a8b1f2d3e4f5a6;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:10.0.0.1:5060;lr>\r\n\
Contact: <sip:201@192.168.10.31:5060;transport=udp>\r\n\
To: <sip:+4930123456@pbx.example.com;user=phone>\r\n\
From: \"Reception 201\" <sip:201@pbx.example.com>;tag=8f9c2a1b\r\n\
Call-ID: MzE2ZDJhNjA1YjQ0ZjQ2YjQ5ZjE1NTM2YzkwNzI3ZGM.\r\n\
CSeq: 2 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
Content-Type: application/sdp\r\n\
Supported: replaces, norefersub, extended-refer, timer, X-cisco-serviceuri\r\n\
User-Agent: Yealink SIP-T54W 96.86.0.70\r\n\
Allow-Events: talk, hold, conference, refer, check-sync\r\n\
P-Preferred-Identity: \"Reception 201\" <sip:201@pbx.example.com>\r\n\
Content-Length: 371\r\n\
\r\n\
v=0\r\n\
o=- 20017 20017 IN IP4 192.168.10.31\r\n\
s=SDP data\r\n\
c=IN IP4 192.168.10.31\r\n\
t=0 0\r\n\
m=audio 11780 RTP/AVP 9 0 8 18 101\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=fmtp:101 0-15\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp:11781\r\n\
a=ssrc:3285421118 cname:5a3f2b1c\r\n\
a=maxptime:40\r\n";

const NOTIFY: &[u8] = b"NOTIFY sip:201@192.168.10.31:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-d8754z-7a8b9c0d1e2f;rport\r\n\
Max-Forwards: 70\r\n\
Record-Route: <sip:10.0.0.2:5060;lr>\r\n\
Contact: <sip:203@10.0.0.1:5060>\r\n\
To: <sip:201@pbx.example.com>;tag=8f9c2a1b\r\n\
From: <sip:203@pbx.example.com>;tag=as5c2f0e11\r\n\
Call-ID: 3c2d4e1f5a6b@192.168.10.31\r\n\
CSeq: 104 NOTIFY\r\n\
Event: dialog\r\n\
Subscription-State: active;expires=1800\r\n\
Content-Type: application/dialog-info+xml\r\n\
Content-Length: 371\r\n\
\r\n\
<?xml version=\"1.0\"?>\r\n\
<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"12\" state=\"full\" entity=\"sip:203@pbx.example.com\">\r\n\
<dialog id=\"1f2e3d4c\" call-id=\"a84b4c76e66710\" local-tag=\"1928301774\" remote-tag=\"456887766\" direction=\"recipient\">\r\n\
<state>confirmed</state>\r\n\
<local><identity>sip:203@pbx.example.com</identity></local>\r\n\
</dialog>\r\n\
</dialog-info>\r\n";

/// What the proxy reads of every message it forwards.
fn proxy_accessors(msg: &Message) -> usize {
    let mut n = 0;
    if let Some(Ok(via)) = msg.top_via() {
        n += via.branch().map_or(0, <[u8]>::len);
    }
    if let Some(Ok(from)) = msg.from() {
        n += from.tag().map_or(0, <[u8]>::len);
    }
    if let Some(Ok(to)) = msg.to() {
        n += to.tag().map_or(0, <[u8]>::len);
    }
    if let Some(Ok(call_id)) = msg.call_id() {
        n += call_id.len();
    }
    if let Some(Ok(cseq)) = msg.cseq() {
        n += cseq.seq() as usize;
    }
    if let Some(Ok(route)) = msg.routes().next() {
        n += route.uri().as_bytes().len();
    }
    n
}

fn bench(c: &mut Criterion) {
    for (name, raw) in [("invite_1k_sdp", INVITE), ("notify_dialog_info", NOTIFY)] {
        assert!(Message::parse(Bytes::from_static(raw)).is_ok_and(|m| m.validate().is_ok()));
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("index", |b| {
            b.iter(|| Message::parse(black_box(Bytes::from_static(raw))).map(|m| m.fields().len()))
        });
        group.bench_function("index+accessors", |b| {
            b.iter(|| Message::parse(black_box(Bytes::from_static(raw))).map(|m| proxy_accessors(&m)))
        });
        group.bench_function("rsip_0.4_parse", |b| {
            b.iter(|| rsip::SipMessage::try_from(black_box(raw)).is_ok())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
