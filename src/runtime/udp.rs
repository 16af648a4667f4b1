//! UDP: one reader thread per socket, making blocking reads and handing each datagram
//! to the shared driver.
//!
//! Blocking reads on a thread of their own, as Kamailio's UDP workers do, cost one
//! system call per datagram. Through the tokio reactor the same datagram cost three
//! (`epoll_wait`, the read, and a read that finds the socket empty), which measured
//! about 9 µs per benchmark call on the relay floor (BENCHMARKS.md, issue 3). A reader
//! also serves the core's timers once per tick while it waits, so deadlines it created
//! need no wake-up of the tokio side.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::driver::{SharedDriver, TIMER_TICK};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// How long a reader waits for a datagram when the core holds no timers: the delay
/// with which it notices that it should stop.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The longest a send waits for room in the socket's send buffer before the datagram
/// is dropped (SIP over UDP retransmits).
const SEND_WAIT: Duration = Duration::from_millis(20);

/// The reader threads of every UDP socket, stopped together, at the latest when this
/// is dropped.
#[derive(Debug, Default)]
pub(super) struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts the reader of `socket` (bound to `local`), feeding `driver`.
    pub(super) fn start(
        &mut self,
        socket: Arc<UdpSocket>,
        local: SocketAddr,
        driver: SharedDriver,
    ) -> std::io::Result<()> {
        socket.set_write_timeout(Some(SEND_WAIT))?;
        socket.set_read_timeout(Some(IDLE_WAIT))?;
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("udp {local}"))
            .spawn(move || read_loop(&socket, local, &driver, &stop))?;
        self.threads.push(thread);
        Ok(())
    }

    /// Stops the readers and waits until they have let go of their sockets.
    pub(super) async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Dropped without [`Readers::stop`] (the driver task dropped with its runtime, or
/// never run): the readers stop within their idle wait.
impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_loop(socket: &UdpSocket, local: SocketAddr, driver: &SharedDriver, stop: &AtomicBool) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut wait = IDLE_WAIT;
    while !stop.load(Ordering::Relaxed) {
        let received = socket.recv_from(&mut buf);
        let now = Instant::now();
        let mut core = driver.lock();
        match received {
            Ok((n, remote)) => core.datagram(now, local, remote, &buf[..n]),
            Err(e) if is_timeout(&e) => {}
            // e.g. ICMP port unreachable reported on a later receive: not fatal
            Err(e) => debug!(local = %local, error = %e, "udp receive error"),
        }
        core.serve_timers(now);
        core.flush();
        // wake up once per tick while timers are pending, else only to check `stop`
        let next_wait = if core.has_timers() {
            TIMER_TICK
        } else {
            IDLE_WAIT
        };
        drop(core);
        if next_wait != wait {
            wait = next_wait;
            if let Err(e) = socket.set_read_timeout(Some(wait)) {
                warn!(local = %local, error = %e, "cannot set the udp read timeout");
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}
