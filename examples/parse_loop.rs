//! Parses the benchmark messages a fixed number of times, for instruction counting
//! under `valgrind --tool=callgrind` (repeatable whatever else the machine is doing):
//! `cargo build --release --example parse_loop && valgrind --tool=callgrind
//! target/release/examples/parse_loop invite accessors 100000`.

use std::hint::black_box;
use std::process::ExitCode;

use bytes::Bytes;
use presence_proxy::sip::Message;

#[path = "../benches/support/proxy_reads.rs"]
mod support;
use support::proxy_reads;

const INVITE: &[u8] = include_bytes!("../sip-traces/bench/invite-1k-sdp.sip");
const NOTIFY: &[u8] = include_bytes!("../sip-traces/bench/notify-dialog-info.sip");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(which), Some(mode), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: parse_loop invite|notify index|accessors COUNT");
        return ExitCode::from(2);
    };
    let raw = if which == "notify" { NOTIFY } else { INVITE };
    let Ok(count) = count.parse::<u64>() else {
        eprintln!("COUNT must be a number");
        return ExitCode::from(2);
    };
    let mut total = 0usize;
    for _ in 0..count {
        match Message::parse(black_box(Bytes::from_static(raw))) {
            Ok(msg) if mode == "accessors" => total += proxy_reads(&msg),
            Ok(msg) => total += msg.fields().len(),
            Err(e) => {
                eprintln!("benchmark message does not parse: {e}");
                return ExitCode::from(1);
            }
        }
    }
    println!("{total}");
    ExitCode::SUCCESS
}
