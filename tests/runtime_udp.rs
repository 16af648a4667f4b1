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
    drop(runtime);
    drop(proxy);
    assert!(UdpSocket::bind(udp).is_err(), "taken while the reader runs");
    // a reader notices within its idle wait (100 ms); allow for a loaded machine
    assert!(
        rebinds_before(udp, Instant::now() + Duration::from_secs(5)),
        "the reader thread kept {udp} after its runtime was dropped"
    );
}
