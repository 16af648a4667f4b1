//! BLF document layer (criterion): the Kamailio presence_dialoginfo-style body with three
//! dialogs (`sip-traces/blf/notify-kamailio-03-two-calls-v2.sip`, 1,445 bytes) parsed,
//! merged into a subscription's view (RFC 4235 §4.3) and rendered for a phone, with and
//! without the Teams injection; each step alone for scale. Figures and the command are
//! recorded in BENCHMARKS.md.

#![allow(clippy::expect_used)] // fixed inputs: a failure is a broken benchmark

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use presence_proxy::blf::{
    DialogInfoState, PhoneFamily, PhoneProfile, TeamsInjection, WatchedExtension,
    parse_dialog_info, render_for_phone,
};
use presence_proxy::sip::Message;

const NOTIFY: &[u8] = include_bytes!("../sip-traces/blf/notify-kamailio-03-two-calls-v2.sip");

const EXT: WatchedExtension<'static> = WatchedExtension {
    number: "203",
    uri: "sip:203@pbx.example.com",
};

fn bench(c: &mut Criterion) {
    let msg = Message::parse(Bytes::from_static(NOTIFY)).expect("fixture parses");
    let body = msg.body().to_vec();
    let idle_body = String::from_utf8(body.clone())
        .expect("UTF-8")
        .replace("<state>confirmed</state>", "<state>terminated</state>")
        .replace("<state>early</state>", "<state>terminated</state>")
        .into_bytes();
    let generic = PhoneProfile::for_family(PhoneFamily::Generic);
    let spa = PhoneProfile::for_family(PhoneFamily::CiscoSpa);
    let injection = TeamsInjection::default();

    let mut group = c.benchmark_group("blf_kamailio_3_dialogs");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| parse_dialog_info(black_box(&body)).map(|d| d.dialogs.len()))
    });
    for (name, input, teams_busy, profile) in [
        ("parse+merge+render", &body, false, &generic),
        (
            "parse+merge+render_teams_injected",
            &idle_body,
            true,
            &generic,
        ),
        ("parse+merge+render_single_dialog", &body, false, &spa),
    ] {
        let mut state = DialogInfoState::new();
        let mut version = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut doc = parse_dialog_info(black_box(input)).expect("parses");
                version = version.wrapping_add(1);
                doc.version = Some(version);
                state.apply(doc);
                render_for_phone(state.view(), version, teams_busy, &EXT, profile, &injection).len()
            })
        });
    }
    let view = parse_dialog_info(&body).expect("parses");
    group.bench_function("render", |b| {
        b.iter(|| {
            render_for_phone(Some(black_box(&view)), 7, false, &EXT, &generic, &injection).len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
