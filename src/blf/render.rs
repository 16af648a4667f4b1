//! The dialog-info documents the proxy sends to a watching phone: the Teams injection,
//! the per-phone rules, and a strict writer.
//!
//! - [`compose_for_phone`] builds the model: the PBX's current view (or an idle one),
//!   plus a `teams-<ext>` dialog while the extension is Teams-busy and the PBX shows it
//!   idle, shaped by the watcher's [`PhoneProfile`].
//! - [`render_dialog_info`] writes a model as bytes: well-formed, the
//!   `urn:ietf:params:xml:ns:dialog-info` namespace, every value escaped,
//!   `state="full"` always (the proxy only sends full state, RFC 4235 §4.3 then makes
//!   the phone replace its whole table), the `version` the caller gives (the proxy owns
//!   the numbering towards the phone, RFC 4235 §4.1).
//! - [`render_for_phone`] is the two in one call.
//!
//! The writer is lossless for the model: parsing its output gives the model back, with
//! the caller's version and full state, for every model whose strings are characters
//! XML 1.0 can carry and whose element texts (identities) have no surrounding white
//! space; other characters become U+FFFD and the parser trims identities. It writes a
//! missing `entity` as no attribute; [`compose_for_phone`] always sets one.

use std::borrow::Cow;

use super::dialog_info::{
    DIALOG_INFO_NAMESPACE, Dialog, DialogInfo, DialogState, Direction, DocumentState, Identity,
    MAX_DIALOGS, Participant,
};
use super::profile::PhoneProfile;
use super::xml::{push_attr, push_escaped_text, xml_safe};

/// The prefix of the dialog id (and, with [`TeamsInjection::with_dialog_ids`], of the
/// call-id) the proxy gives the dialog it injects.
pub const TEAMS_DIALOG_PREFIX: &str = "teams-";

/// The local and remote tags of an injected dialog with [`TeamsInjection::with_dialog_ids`].
pub const TEAMS_DIALOG_TAGS: (&str, &str) = ("teams-local", "teams-remote");

/// The extension a subscription watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedExtension<'a> {
    /// The extension number (`201`): names the injected dialog.
    pub number: &'a str,
    /// Its URI (`sip:201@pbx.example.com`): the entity when the PBX gave none, and the
    /// injected dialog's local identity.
    pub uri: &'a str,
}

/// How the injected Teams dialog looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TeamsInjection {
    /// Give the injected dialog a `call-id` (`teams-<ext>`) and tags
    /// ([`TEAMS_DIALOG_TAGS`]). Phones then offer pickup on the lamp (sip.md §2.2,
    /// §2.3: pickup is an INVITE with `Replaces` built from them), which the proxy must
    /// then recognise by the `teams-` call-id. Off by default: no ids, no pickup.
    pub with_dialog_ids: bool,
}

/// The id of the dialog injected for extension `number`: `teams-<number>`.
pub fn teams_dialog_id(number: &str) -> String {
    format!("{TEAMS_DIALOG_PREFIX}{number}")
}

/// The dialog that shows `extension` busy in Teams: `confirmed`, `direction`
/// recipient, the extension's URI as local identity.
pub fn teams_dialog(extension: &WatchedExtension<'_>, injection: &TeamsInjection) -> Dialog {
    let id = teams_dialog_id(extension.number);
    let (call_id, local_tag, remote_tag) = if injection.with_dialog_ids {
        (
            Some(id.clone()),
            Some(TEAMS_DIALOG_TAGS.0.to_owned()),
            Some(TEAMS_DIALOG_TAGS.1.to_owned()),
        )
    } else {
        (None, None, None)
    };
    Dialog {
        call_id,
        local_tag,
        remote_tag,
        direction: Some(Direction::Recipient),
        local: Some(local_identity(extension.uri)),
        ..Dialog::new(id, DialogState::Confirmed)
    }
}

/// A participant with `uri` as its only identity (trimmed: identities are element text,
/// which readers trim).
fn local_identity(uri: &str) -> Participant {
    Participant {
        identities: vec![Identity {
            uri: uri.trim().to_owned(),
            display: None,
        }],
        target: None,
    }
}

/// The document a watcher of `extension` should see: the PBX's view as it is when the
/// extension is not Teams-busy or the PBX already shows a call; with an added
/// [`teams_dialog`] when it is Teams-busy and the PBX shows it idle (no dialog trying,
/// proceeding, early or confirmed); then shaped by `profile`. Always full state; the
/// entity is the PBX's, or the extension's URI when the PBX gave none; every dialog id
/// is non-empty and unique.
pub fn compose_for_phone(
    pbx_view: Option<&DialogInfo>,
    teams_busy: bool,
    extension: &WatchedExtension<'_>,
    profile: &PhoneProfile,
    injection: &TeamsInjection,
) -> DialogInfo {
    let mut doc = pbx_view.cloned().unwrap_or_else(|| DialogInfo::empty(None));
    doc.state = DocumentState::Full;
    if doc.entity.is_none() {
        doc.entity = Some(extension.uri.to_owned());
    }
    if teams_busy && !doc.shows_call() {
        let teams = teams_dialog(extension, injection);
        // every PBX dialog is terminated here: make room rather than exceed the bound,
        // and keep the injected id for the injected dialog
        if doc.dialogs.len() >= MAX_DIALOGS {
            doc.dialogs.clear();
        }
        doc.dialogs.retain(|d| d.id != teams.id);
        doc.dialogs.push(teams);
    }
    if profile.early_initiator_as_confirmed {
        for dialog in &mut doc.dialogs {
            if dialog.state == DialogState::Early && dialog.direction == Some(Direction::Initiator)
            {
                dialog.state = DialogState::Confirmed;
            }
        }
    }
    if profile.single_dialog && doc.dialogs.len() > 1 {
        if let Some(winner) = most_interesting(&doc.dialogs) {
            let keep = doc.dialogs.swap_remove(winner);
            doc.dialogs = vec![keep];
        }
    }
    if profile.idle_as_terminated_dialog && doc.dialogs.is_empty() {
        let id = if extension.number.is_empty() {
            "idle"
        } else {
            extension.number
        };
        doc.dialogs.push(Dialog::new(id, DialogState::Terminated));
    }
    if profile.always_local_identity {
        let entity = doc
            .entity
            .clone()
            .unwrap_or_else(|| extension.uri.to_owned());
        for dialog in &mut doc.dialogs {
            let local = dialog.local.get_or_insert_with(Participant::default);
            if local.identities.is_empty() {
                local.identities = local_identity(&entity).identities;
            }
        }
    }
    make_ids_unique(&mut doc.dialogs);
    doc
}

/// The index of the dialog a single-dialog phone should see: highest priority first
/// (confirmed > early > proceeding > trying > terminated), earliest in the document on
/// a tie.
fn most_interesting(dialogs: &[Dialog]) -> Option<usize> {
    let priority = |state: DialogState| match state {
        DialogState::Confirmed => 4,
        DialogState::Early => 3,
        DialogState::Proceeding => 2,
        DialogState::Trying => 1,
        DialogState::Terminated => 0,
    };
    let mut best: Option<(usize, u8)> = None;
    for (index, dialog) in dialogs.iter().enumerate() {
        let p = priority(dialog.state);
        if best.is_none_or(|(_, top)| p > top) {
            best = Some((index, p));
        }
    }
    best.map(|(index, _)| index)
}

/// Gives empty ids a name and repeated ids a `-2`, `-3`, … suffix (RFC 4235 §4.1.1:
/// ids are unique; §6.1 breaks it, and a phone keyed on id would merge the forks).
/// Ids are compared as they will be written: characters XML cannot carry are replaced
/// first, so two ids that differ only in those do not come out equal.
fn make_ids_unique(dialogs: &mut [Dialog]) {
    let mut seen: Vec<String> = Vec::with_capacity(dialogs.len());
    for (position, dialog) in dialogs.iter_mut().enumerate() {
        if let Cow::Owned(safe) = xml_safe(&dialog.id) {
            dialog.id = safe;
        }
        if dialog.id.is_empty() {
            dialog.id = format!("dialog-{position}");
        }
        if seen.contains(&dialog.id) {
            let base = dialog.id.clone();
            let mut n = 2usize;
            while seen.contains(&dialog.id) {
                dialog.id = format!("{base}-{n}");
                n += 1;
            }
        }
        seen.push(dialog.id.clone());
    }
}

/// Writes `doc` as a full-state dialog-info document with `version` (see the module
/// documentation). The model's own `version` and `state` are not used. A model with
/// more than [`MAX_DIALOGS`] dialogs is written whole, but the parser refuses it;
/// [`compose_for_phone`] never makes one from a view of [`DialogInfoState`].
///
/// [`DialogInfoState`]: super::merge::DialogInfoState
pub fn render_dialog_info(doc: &DialogInfo, version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + 320 * doc.dialogs.len());
    out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dialog-info");
    push_attr(&mut out, "xmlns", DIALOG_INFO_NAMESPACE);
    push_attr(&mut out, "version", &version.to_string());
    push_attr(&mut out, "state", DocumentState::Full.as_str());
    if let Some(entity) = &doc.entity {
        push_attr(&mut out, "entity", entity);
    }
    out.extend_from_slice(b">\n");
    for dialog in &doc.dialogs {
        push_dialog(&mut out, dialog);
    }
    out.extend_from_slice(b"</dialog-info>\n");
    out
}

fn push_dialog(out: &mut Vec<u8>, dialog: &Dialog) {
    out.extend_from_slice(b"<dialog");
    push_attr(out, "id", &dialog.id);
    for (name, value) in [
        ("call-id", &dialog.call_id),
        ("local-tag", &dialog.local_tag),
        ("remote-tag", &dialog.remote_tag),
    ] {
        if let Some(value) = value {
            push_attr(out, name, value);
        }
    }
    if let Some(direction) = dialog.direction {
        push_attr(out, "direction", direction.as_str());
    }
    out.extend_from_slice(b">\n<state");
    if let Some(event) = &dialog.state_event {
        push_attr(out, "event", event);
    }
    if let Some(code) = dialog.state_code {
        push_attr(out, "code", &code.to_string());
    }
    out.push(b'>');
    out.extend_from_slice(dialog.state.as_str().as_bytes());
    out.extend_from_slice(b"</state>\n");
    if let Some(duration) = dialog.duration {
        out.extend_from_slice(b"<duration>");
        out.extend_from_slice(duration.to_string().as_bytes());
        out.extend_from_slice(b"</duration>\n");
    }
    // schema order (RFC 4235 §4.4): local before remote
    if let Some(local) = &dialog.local {
        push_participant(out, "local", local);
    }
    if let Some(remote) = &dialog.remote {
        push_participant(out, "remote", remote);
    }
    out.extend_from_slice(b"</dialog>\n");
}

fn push_participant(out: &mut Vec<u8>, element: &str, participant: &Participant) {
    out.push(b'<');
    out.extend_from_slice(element.as_bytes());
    if participant.identities.is_empty() && participant.target.is_none() {
        out.extend_from_slice(b"/>\n");
        return;
    }
    out.extend_from_slice(b">\n");
    for identity in &participant.identities {
        out.extend_from_slice(b"<identity");
        if let Some(display) = &identity.display {
            push_attr(out, "display", display);
        }
        out.push(b'>');
        push_escaped_text(out, &identity.uri);
        out.extend_from_slice(b"</identity>\n");
    }
    if let Some(target) = &participant.target {
        out.extend_from_slice(b"<target");
        push_attr(out, "uri", &target.uri);
        if target.params.is_empty() {
            out.extend_from_slice(b"/>\n");
        } else {
            out.extend_from_slice(b">\n");
            for param in &target.params {
                out.extend_from_slice(b"<param");
                push_attr(out, "pname", &param.name);
                push_attr(out, "pval", &param.value);
                out.extend_from_slice(b"/>\n");
            }
            out.extend_from_slice(b"</target>\n");
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(element.as_bytes());
    out.extend_from_slice(b">\n");
}

/// [`compose_for_phone`] then [`render_dialog_info`]: the body of the next NOTIFY to
/// a watcher, with the `version` the proxy numbers for that subscription.
pub fn render_for_phone(
    pbx_view: Option<&DialogInfo>,
    version: u32,
    teams_busy: bool,
    extension: &WatchedExtension<'_>,
    profile: &PhoneProfile,
    injection: &TeamsInjection,
) -> Vec<u8> {
    render_dialog_info(
        &compose_for_phone(pbx_view, teams_busy, extension, profile, injection),
        version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blf::dialog_info::{Target, TargetParam, parse_dialog_info_noting_quirks};
    use crate::blf::profile::PhoneFamily;

    const EXT: WatchedExtension<'static> = WatchedExtension {
        number: "201",
        uri: "sip:201@pbx.example.com",
    };

    fn profile(family: PhoneFamily) -> PhoneProfile {
        PhoneProfile::for_family(family)
    }

    fn reparse(bytes: &[u8]) -> DialogInfo {
        let (doc, quirks) = parse_dialog_info_noting_quirks(bytes).unwrap();
        assert!(quirks.is_empty(), "{:?}", quirks.iter().collect::<Vec<_>>());
        doc
    }

    #[test]
    fn teams_busy_on_an_idle_extension_adds_the_teams_dialog() {
        let out = render_for_phone(
            None,
            5,
            true,
            &EXT,
            &profile(PhoneFamily::Generic),
            &TeamsInjection::default(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"5\" state=\"full\" entity=\"sip:201@pbx.example.com\">\n\
             <dialog id=\"teams-201\" direction=\"recipient\">\n\
             <state>confirmed</state>\n\
             <local>\n<identity>sip:201@pbx.example.com</identity>\n</local>\n\
             </dialog>\n\
             </dialog-info>\n"
        );
    }

    #[test]
    fn pickup_ids_are_optional() {
        let doc = compose_for_phone(
            None,
            true,
            &EXT,
            &profile(PhoneFamily::Yealink),
            &TeamsInjection {
                with_dialog_ids: true,
            },
        );
        let teams = &doc.dialogs[0];
        assert_eq!(teams.call_id.as_deref(), Some("teams-201"));
        assert_eq!(teams.local_tag.as_deref(), Some("teams-local"));
        assert_eq!(teams.remote_tag.as_deref(), Some("teams-remote"));
    }

    #[test]
    fn a_call_on_the_pbx_is_shown_as_it_is() {
        let pbx = DialogInfo {
            version: Some(9),
            state: DocumentState::Full,
            entity: Some("sip:201@10.0.0.1".into()),
            dialogs: vec![Dialog::new("201", DialogState::Early)],
        };
        for busy in [false, true] {
            let doc = compose_for_phone(
                Some(&pbx),
                busy,
                &EXT,
                &profile(PhoneFamily::Generic),
                &TeamsInjection::default(),
            );
            assert_eq!(doc.dialogs, pbx.dialogs);
            assert_eq!(doc.entity, pbx.entity);
        }
        // a terminated PBX dialog is idle: the Teams dialog is added next to it
        let idle = DialogInfo {
            dialogs: vec![Dialog::new("201", DialogState::Terminated)],
            ..pbx
        };
        let doc = compose_for_phone(
            Some(&idle),
            true,
            &EXT,
            &profile(PhoneFamily::Generic),
            &TeamsInjection::default(),
        );
        assert_eq!(doc.dialogs.len(), 2);
        assert_eq!(doc.dialogs[1].id, "teams-201");
    }

    #[test]
    fn idle_is_an_explicit_terminated_dialog_unless_turned_off() {
        let yealink = render_for_phone(
            None,
            0,
            false,
            &EXT,
            &profile(PhoneFamily::Yealink),
            &TeamsInjection::default(),
        );
        let doc = reparse(&yealink);
        assert_eq!(doc.dialogs, [Dialog::new("201", DialogState::Terminated)]);
        let rfc_only = PhoneProfile {
            idle_as_terminated_dialog: false,
            ..PhoneProfile::default()
        };
        let doc = compose_for_phone(None, false, &EXT, &rfc_only, &TeamsInjection::default());
        assert!(doc.dialogs.is_empty());
    }

    #[test]
    fn polycom_gets_local_identity_everywhere() {
        let pbx = DialogInfo {
            version: Some(1),
            state: DocumentState::Full,
            entity: Some("sip:201@10.0.0.1".into()),
            dialogs: vec![Dialog::new("201", DialogState::Confirmed)],
        };
        let doc = compose_for_phone(
            Some(&pbx),
            false,
            &EXT,
            &profile(PhoneFamily::Polycom),
            &TeamsInjection::default(),
        );
        assert_eq!(
            doc.dialogs[0].local.as_ref().unwrap().identities[0].uri,
            "sip:201@10.0.0.1"
        );
        let idle = compose_for_phone(
            None,
            false,
            &EXT,
            &profile(PhoneFamily::Polycom),
            &TeamsInjection::default(),
        );
        assert_eq!(
            idle.dialogs[0].local.as_ref().unwrap().identities[0].uri,
            EXT.uri
        );
    }

    #[test]
    fn spa_collapses_to_one_dialog_by_priority() {
        let states = [
            DialogState::Terminated,
            DialogState::Early,
            DialogState::Trying,
            DialogState::Confirmed,
            DialogState::Proceeding,
        ];
        let dialogs = states
            .iter()
            .enumerate()
            .map(|(i, s)| Dialog::new(format!("d{i}"), *s))
            .collect();
        let pbx = DialogInfo {
            version: Some(1),
            state: DocumentState::Full,
            entity: None,
            dialogs,
        };
        let doc = compose_for_phone(
            Some(&pbx),
            false,
            &EXT,
            &profile(PhoneFamily::CiscoSpa),
            &TeamsInjection::default(),
        );
        assert_eq!(doc.dialogs, [Dialog::new("d3", DialogState::Confirmed)]);
        assert_eq!(doc.entity.as_deref(), Some(EXT.uri));
        // caller side early is shown confirmed
        let calling = DialogInfo {
            dialogs: vec![Dialog {
                direction: Some(Direction::Initiator),
                ..Dialog::new("c", DialogState::Early)
            }],
            ..pbx
        };
        let doc = compose_for_phone(
            Some(&calling),
            false,
            &EXT,
            &profile(PhoneFamily::CiscoSpa),
            &TeamsInjection::default(),
        );
        assert_eq!(doc.dialogs[0].state, DialogState::Confirmed);
    }

    #[test]
    fn ids_become_unique_and_non_empty() {
        let pbx = DialogInfo {
            version: Some(2),
            state: DocumentState::Partial,
            entity: Some("e".into()),
            dialogs: vec![
                Dialog::new("x", DialogState::Early),
                Dialog::new("x", DialogState::Early),
                Dialog::new("x-2", DialogState::Early),
                Dialog::new("", DialogState::Early),
            ],
        };
        let doc = compose_for_phone(
            Some(&pbx),
            false,
            &EXT,
            &profile(PhoneFamily::Generic),
            &TeamsInjection::default(),
        );
        let ids: Vec<_> = doc.dialogs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["x", "x-2", "x-2-2", "dialog-3"]);
        assert_eq!(doc.state, DocumentState::Full);
    }

    #[test]
    fn everything_is_escaped_and_reads_back() {
        let doc = DialogInfo {
            version: None,
            state: DocumentState::Partial,
            entity: Some("sip:\"q\"&'a'<b>@x".into()),
            dialogs: vec![Dialog {
                call_id: Some("c\"1'\t\n\r".into()),
                local_tag: Some("l&".into()),
                remote_tag: Some("r<".into()),
                direction: Some(Direction::Initiator),
                state_event: Some("rejected".into()),
                state_code: Some(486),
                duration: Some(12),
                local: Some(Participant {
                    identities: vec![Identity {
                        uri: "sip:a&b@x".into(),
                        display: Some("Al \"the\" <pal>".into()),
                    }],
                    target: Some(Target {
                        uri: "sip:a@h;x=\"y\"".into(),
                        params: vec![TargetParam {
                            name: "description".into(),
                            value: "Alice's desk & office".into(),
                        }],
                    }),
                }),
                remote: Some(Participant::default()),
                ..Dialog::new("id<&>", DialogState::Terminated)
            }],
        };
        let bytes = render_dialog_info(&doc, 42);
        let back = reparse(&bytes);
        assert_eq!(
            back,
            DialogInfo {
                version: Some(42),
                state: DocumentState::Full,
                ..doc
            }
        );
    }
}
