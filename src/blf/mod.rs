//! BLF lamps (issue 7): the phones' `Event: dialog` (and `Event: presence`)
//! subscriptions to the PBX, with the proxy showing Teams-busy inside them.
//!
//! This part is the **document layer**, sans-IO: bytes of a NOTIFY body in, a typed
//! model out; a per-subscription merged view; the bytes of the body the proxy sends to
//! a phone. No SIP, no clock, no tokio. Which NOTIFY carries what, CSeq and version
//! numbering, and the rate limit belong to the subscription tracking that drives it.
//!
//! | file | owns |
//! |---|---|
//! | [`dialog_info`] | the RFC 4235 `dialog-info` model ([`DialogInfo`], [`Dialog`], …) and its lenient parser ([`parse_dialog_info`]): what RFC 4235's own examples and real PBXs get wrong is accepted and noted as a [`Quirk`]; what cannot be understood is a typed [`DialogInfoError`] |
//! | [`merge`] | [`DialogInfoState`]: one subscription's table under RFC 4235 §4.3, full and partial documents, version order, "need full state" after a gap |
//! | [`render`] | the documents sent to a phone: the Teams injection ([`compose_for_phone`]), the strict writer ([`render_dialog_info`]), both at once ([`render_for_phone`]) |
//! | [`profile`] | [`PhoneProfile`]: per-phone rendering rules chosen by `User-Agent` or by name, each rule's source in `../shared/reference/sip.md` §2 |
//! | [`pidf`] | PIDF/RPID for phones that use `Event: presence` for BLF (sip.md §2.8): lenient parser, strict writer, the Teams-busy document |
//! | [`renderer`] | [`DocumentRenderer`]: the tracker's renderer on top of this layer (dialog-info with the Teams dialog per phone profile, PIDF) |
//! | [`subscription`] | tracking every BLF subscription through the proxy, CSeq and version numbering, injection decisions, the rate limit (the proxy core's side; see its module docs) |
//! | `xml` (private) | the lenient quick-xml reader set-up, text decoding and escaping the others share |
//!
//! # Use from the proxy
//!
//! ```
//! use presence_proxy::blf::{
//!     DialogInfoState, MergeOutcome, PhoneProfile, TeamsInjection, WatchedExtension,
//!     render_for_phone,
//! };
//!
//! // a watcher subscribed; the PBX's NOTIFY bodies come in
//! let mut pbx = DialogInfoState::new();
//! let body = br#"<?xml version="1.0"?>
//! <dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="7" state="full"
//!   entity="sip:201@pbx.example.com"><dialog id="201"><state>terminated</state></dialog>
//! </dialog-info>"#;
//! assert_eq!(pbx.apply_body(body), Ok(MergeOutcome::Applied));
//!
//! // Teams says 201 is busy: the next NOTIFY body towards this phone
//! let profile = PhoneProfile::from_user_agent(b"Yealink SIP-T54W 96.86.0.100");
//! let extension = WatchedExtension { number: "201", uri: "sip:201@pbx.example.com" };
//! let next_version = 3; // the proxy numbers the versions the phone sees
//! let out = render_for_phone(
//!     pbx.view(), next_version, true, &extension, &profile, &TeamsInjection::default(),
//! );
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.contains(r#"<dialog id="teams-201" direction="recipient">"#));
//! assert!(text.contains("<state>confirmed</state>"));
//! ```

pub mod dialog_info;
pub mod merge;
pub mod pidf;
pub mod profile;
pub mod render;
pub mod renderer;
pub mod subscription;
pub(crate) mod xml;

pub use dialog_info::{
    DIALOG_INFO_CONTENT_TYPE, DIALOG_INFO_NAMESPACE, Dialog, DialogInfo, DialogInfoError,
    DialogState, Direction, DocumentState, Identity, Participant, Quirk, Quirks, Target,
    TargetParam, parse_dialog_info, parse_dialog_info_noting_quirks, peek_dialog_info_is_partial,
    peek_dialog_info_version,
};
pub use merge::{DialogInfoState, MergeOutcome};
pub use pidf::{
    PIDF_CONTENT_TYPE, PidfError, PresenceDocument, parse_pidf, render_pidf,
    render_presence_for_phone,
};
pub use profile::{PhoneFamily, PhoneProfile, UnknownPhoneProfile};
pub use render::{
    TEAMS_DIALOG_PREFIX, TeamsInjection, WatchedExtension, compose_for_phone, render_dialog_info,
    render_for_phone, teams_dialog, teams_dialog_id,
};
pub use renderer::DocumentRenderer;
