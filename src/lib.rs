//! presence-proxy: a stateful SIP outbound proxy between desk phones and any PBX that
//! keeps phone presence (BLF lamps, DND) and Microsoft Teams presence in step.
//!
//! # Layout
//!
//! - [`sip`]: the wire layer. Bytes in, a zero-copy message view out; edits that
//!   change only what a proxy may change; stream framing. No I/O, no clock.
//! - [`inspect`]: the `presence-proxy inspect` command: check captured messages.
//! - [`config`]: the configuration file, parsed into validated settings.
//! - [`telemetry`]: logging setup from `[log]`.
//!
//! Later layers (proxy core, observation, BLF, sync, Graph, store, web, runtime) are
//! described in `ARCHITECTURE.md`; each is sans-IO except the runtime.

#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod proxy;
pub mod runtime;
pub mod sip;
pub mod telemetry;
pub mod transport;
