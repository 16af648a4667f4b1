//! Phone-side state per extension, read from the SIP the proxy carries: which calls
//! are external, internal or star codes; where each call stands; DND from star codes,
//! feature-key sync and presence. Knows nothing of Teams: it reports edge-triggered
//! [`ObserveEvent`]s that the sync engine turns into Graph calls.
//!
//! - [`observer`]: the [`Observer`], fed by the proxy core with every message it
//!   forwards or answers, sans-IO.
//! - [`classify`]: star code / internal / external, caller identity, number
//!   normalisation.
//! - [`call`]: one call leg at one phone, its states and termination reasons.
//! - [`bindings`]: which extension each phone registered.
//! - [`dnd`]: DND read from feature-key sync and PIDF bodies.
//! - [`event`]: the events and the per-extension snapshot.

pub mod bindings;
pub mod call;
pub mod classify;
pub mod dnd;
pub mod event;
pub mod observer;

pub use call::{CallDirection, CallState, Direction, PhoneAddr, TerminationReason};
pub use classify::{CallClass, ClassifyRules, DndAction, IdentitySource};
pub use event::{CallPhase, CallView, Extension, ExtensionView, ObserveEvent, RecentEvent};
pub use observer::{CallCounts, ObserveConfig, Observer};
