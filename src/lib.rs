//! presence-proxy: a stateful SIP outbound proxy between desk phones and any PBX that
//! keeps phone presence (BLF lamps, DND) and Microsoft Teams presence in step.
//!
//! # Layout
//!
//! ```text
//!  phones ──UDP/TCP/TLS──▶ runtime ──(now, message)──▶ proxy core ──▶ transmits ──▶ PBX
//!                         (tokio)    sans-IO, built on the sip wire layer
//! ```
//!
//! - [`sip`]: the wire layer. Bytes in, a zero-copy message view out; edits that
//!   change only what a proxy may change; stream framing. No I/O, no clock.
//! - [`proxy`]: the stateful proxy core (RFC 3261 §16/§17), sans-IO: messages and time
//!   come in as arguments, messages to send and the next deadline go out.
//! - [`runtime`]: the only tokio code: sockets, the driver task, connections, drain.
//! - [`config`]: the configuration file, parsed into validated settings.
//! - [`dns`]: RFC 3263 selection of the PBX's transport, address and port, sans-IO.
//! - [`telemetry`]: logging setup from `[log]`.
//! - [`transport`]: UDP/TCP/TLS as config, Via and URIs name them.
//! - [`inspect`], [`demo`]: the `inspect` and `demo` commands.
//!
//! Layers still to come (observation of phone state, BLF, sync, Graph, store, web)
//! follow the same rule: protocol logic sans-IO, one tokio shell around it.

#![forbid(unsafe_code)]

pub mod app;
pub mod blf;
pub mod config;
pub mod demo;
pub mod dns;
pub mod emulator;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod inspect;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod runtime;
pub mod sip;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod transport;
pub mod web;
