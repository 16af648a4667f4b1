//! Parser throughput (criterion): index only, and index plus the accessors a proxy
//! reads per message (top Via, From/To tags, Call-ID, CSeq, Route), on a ~1 KB INVITE
//! with SDP and on a NOTIFY with a dialog-info body. rsip 0.4 on the same inputs for
//! scale. Figures and the command are recorded in BENCHMARKS.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use presence_proxy::sip::Message;

#[path = "support/proxy_reads.rs"]
mod support;
use support::proxy_reads;

const INVITE: &[u8] = include_bytes!("../sip-traces/bench/invite-1k-sdp.sip");

const NOTIFY: &[u8] = include_bytes!("../sip-traces/bench/notify-dialog-info.sip");

fn bench(c: &mut Criterion) {
    for (name, raw) in [("invite_1k_sdp", INVITE), ("notify_dialog_info", NOTIFY)] {
        assert!(Message::parse(Bytes::from_static(raw)).is_ok_and(|m| m.validate().is_ok()));
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("index", |b| {
            b.iter(|| Message::parse(black_box(Bytes::from_static(raw))).map(|m| m.fields().len()))
        });
        group.bench_function("index+accessors", |b| {
            b.iter(|| Message::parse(black_box(Bytes::from_static(raw))).map(|m| proxy_reads(&m)))
        });
        group.bench_function("rsip_0.4_parse", |b| {
            b.iter(|| rsip::SipMessage::try_from(black_box(raw)).is_ok())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
