//! The floor of a tokio UDP relay under the benchmark's load: forwards SIPp's calls
//! between 127.0.0.1:5090 (caller) and 127.0.0.1:5070 (callee) on 127.0.0.1:5060,
//! adding a Via and Record-Route to requests and popping the top Via of responses, and
//! nothing else. Same socket loop as the proxy's driver; no parsing, no state.
//!
//! ```sh
//! cargo build --release --example relay_floor
//! ../shared/bench/compare-with-kamailio.sh -- target/release/examples/relay_floor
//! ```

use std::net::SocketAddr;

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("blocking") {
        return blocking();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(relay())
}

async fn relay() -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:5060").await?;
    let caller: SocketAddr = ([127, 0, 0, 1], 5090).into();
    let callee: SocketAddr = ([127, 0, 0, 1], 5070).into();
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        relay_one(&socket, &buf[..n], from, caller, callee, &mut out);
        while let Ok((n, from)) = socket.try_recv_from(&mut buf) {
            relay_one(&socket, &buf[..n], from, caller, callee, &mut out);
        }
    }
}

/// The same relay on a plain thread with blocking socket calls: no epoll, no EAGAIN.
fn blocking() -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:5060")?;
    let caller: SocketAddr = ([127, 0, 0, 1], 5090).into();
    let callee: SocketAddr = ([127, 0, 0, 1], 5070).into();
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        if let Some((bytes, to)) = rewrite(&buf[..n], from, caller, callee, &mut out) {
            let _ = socket.send_to(bytes, to);
        }
    }
}

fn relay_one(
    socket: &tokio::net::UdpSocket,
    msg: &[u8],
    from: SocketAddr,
    caller: SocketAddr,
    callee: SocketAddr,
    out: &mut Vec<u8>,
) {
    if let Some((bytes, to)) = rewrite(msg, from, caller, callee, out) {
        let _ = socket.try_send_to(bytes, to);
    }
}

fn rewrite<'o>(
    msg: &[u8],
    from: SocketAddr,
    caller: SocketAddr,
    callee: SocketAddr,
    out: &'o mut Vec<u8>,
) -> Option<(&'o [u8], SocketAddr)> {
    let to = if from == callee { caller } else { callee };
    let line_end = msg.windows(2).position(|w| w == b"\r\n")?;
    out.clear();
    if msg.starts_with(b"SIP/2.0") {
        // drop the first Via line (ours)
        let via = find(msg, b"\r\nVia:")?;
        let end = find(&msg[via + 2..], b"\r\n")?;
        out.extend_from_slice(&msg[..via]);
        out.extend_from_slice(&msg[via + 2 + end..]);
    } else {
        out.extend_from_slice(&msg[..line_end + 2]);
        out.extend_from_slice(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfloor\r\n");
        if msg.starts_with(b"INVITE") {
            out.extend_from_slice(b"Record-Route: <sip:127.0.0.1:5060;lr>\r\n");
        }
        out.extend_from_slice(&msg[line_end + 2..]);
    }
    Some((out, to))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
