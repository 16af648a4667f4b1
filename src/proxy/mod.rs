//! The stateful proxy core, sans-IO: RFC 3261 §16 request and response processing and
//! §17 transactions between desk phones and one PBX.
//!
//! The runtime hands in what arrived ([`Proxy::handle_datagram`],
//! [`Proxy::handle_message`]), the time ([`Proxy::handle_timeout`]) and closed
//! connections; it drains [`Proxy::poll_transmit`] and sleeps until
//! [`Proxy::poll_timeout`]. Nothing here opens a socket, spawns a task or reads a clock.
//!
//! - [`core`]: request routing, forwarding, responses, CANCEL/ACK, limits.
//! - [`transaction`]: the transaction records and their keys.
//! - [`flow`]: flows, flow tokens and contact aliases (how the PBX reaches a phone).
//! - [`timers`]: RFC 3261 timer values and the deadline queue.
//! - [`limits`]: per-source rate limiting.

pub mod core;
pub mod flow;
pub mod limits;
pub mod timers;
pub mod transaction;

pub use self::core::{Listener, Proxy, ProxyConfig, Stats, Transmit};
pub use flow::{ConnId, Flow};
