//! The UDP readers' life cycle: each UDP socket has a reader thread of its own
//! (`src/runtime/udp.rs`); when the proxy stops, or its runtime is dropped without
//! stopping it, the reader lets go of its socket, so the port can be bound again.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

mod e2e_support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use e2e_support::{free_port, start_proxy};

/// Binds `addr` again, retrying until `deadline`: true once it succeeds.
fn rebinds_before(addr: SocketAddr, deadline: Instant) -> bool {
    loop {
        if UdpSocket::bind(addr).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn the_udp_port_is_free_as_soon_as_shutdown_returns() {
    let proxy = start_proxy(free_port(), None).await;
    let udp = proxy.udp;
    assert!(
        UdpSocket::bind(udp).is_err(),
        "the proxy's UDP port should be taken while it runs"
    );
    proxy.shutdown().await;
    UdpSocket::bind(udp).expect("the UDP port is bound again right after shutdown");
}

#[test]
fn dropping_the_runtime_without_shutdown_releases_the_udp_port() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let proxy = runtime.block_on(start_proxy(free_port(), None));
    let udp = proxy.udp;
    assert!(UdpSocket::bind(udp).is_err(), "taken while the reader runs");
    drop(runtime);
    drop(proxy);
    // a reader notices within its idle wait (100 ms); allow for a loaded machine
    assert!(
        rebinds_before(udp, Instant::now() + Duration::from_secs(5)),
        "the reader thread kept {udp} after its runtime was dropped"
    );
}

/// Waits for one datagram on `socket` (a std socket with a read timeout set).
fn receive(socket: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65_535];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("a datagram before the read timeout");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

fn options(phone: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:201@127.0.0.1>;tag=f1\r\nTo: <sip:pbx@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The PBX's 200 to a request it received (its Via lines copied back).
fn ok_for(request: &str) -> String {
    let copied: Vec<&str> = request
        .lines()
        .filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .collect();
    format!(
        "SIP/2.0 200 OK\r\n{}\r\nContent-Length: 0\r\n\r\n",
        copied
            .join("\r\n")
            .replace("To: <sip:pbx@127.0.0.1>", "To: <sip:pbx@127.0.0.1>;tag=p1")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_as_soon_as_a_transaction_open_at_shutdown_is_answered_over_udp() {
    let pbx = UdpSocket::bind("127.0.0.1:0").expect("PBX socket");
    pbx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").expect("phone socket");
    phone
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let proxy = start_proxy(pbx.local_addr().unwrap().port(), None).await;
    let to_proxy = proxy.udp;
    let phone_addr = phone.local_addr().unwrap();
    let stopping = tokio::task::spawn_blocking(move || {
        // the transaction left open over the shutdown
        phone
            .send_to(options(phone_addr, "open-1").as_bytes(), to_proxy)
            .unwrap();
        let (open, pbx_peer) = receive(&pbx);
        assert!(open.starts_with("OPTIONS "), "{open}");
        (phone, pbx, open, pbx_peer)
    })
    .await
    .unwrap();
    let (phone, pbx, open, pbx_peer) = stopping;
    let shutdown = tokio::spawn(proxy.shutdown());
    let (phone, pbx, answered) = tokio::task::spawn_blocking(move || {
        // probe until the proxy drains: a new request gets 503 then (answer the probes
        // it still forwarded before)
        let deadline = Instant::now() + Duration::from_secs(5);
        for n in 0.. {
            assert!(
                Instant::now() < deadline,
                "the proxy never started draining"
            );
            let probe = format!("probe-{n}");
            phone
                .send_to(options(phone_addr, &probe).as_bytes(), to_proxy)
                .unwrap();
            // a 503 comes at once; a forwarded probe reaches the PBX instead
            phone
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = vec![0u8; 65_535];
            let refused = phone
                .recv_from(&mut buf)
                .ok()
                .map(|(n, _)| buf[..n].to_vec());
            phone
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            if let Some(answer) = refused {
                assert!(
                    answer.starts_with(b"SIP/2.0 503"),
                    "{}",
                    String::from_utf8_lossy(&answer)
                );
                break;
            }
            let (forwarded, from) = receive(&pbx);
            pbx.send_to(ok_for(&forwarded).as_bytes(), from).unwrap();
            let (relayed, _) = receive(&phone);
            assert!(relayed.starts_with("SIP/2.0 200"), "{relayed}");
        }
        // now answer the transaction that was open when the shutdown began
        let answered = Instant::now();
        pbx.send_to(ok_for(&open).as_bytes(), pbx_peer).unwrap();
        let (relayed, _) = receive(&phone);
        assert!(relayed.starts_with("SIP/2.0 200"), "{relayed}");
        (phone, pbx, answered)
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown ends")
        .unwrap();
    drop((phone, pbx));
    // the grace is 1 s and the open transaction holds a 500 ms retransmission timer; the
    // drain notices the answer within a tick or so
    assert!(
        answered.elapsed() < Duration::from_millis(400),
        "shutdown waited {:?} after the last open transaction was answered",
        answered.elapsed()
    );
}
