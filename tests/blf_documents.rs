//! The BLF document layer (`presence_proxy::blf`) on the fixtures of `sip-traces/blf/`
//! (RFC 4235 §6 flows and notifier styles: Asterisk, FreeSWITCH, Kamailio, a
//! partial-state notifier, a Yealink phone, PIDF presence) and `sip-traces/rfc4235/`:
//!
//! - every body parses, with exactly the quirks expected of it;
//! - each flow merges, NOTIFY by NOTIFY, into the expected views and outcomes
//!   (RFC 4235 §4.3, including a version gap);
//! - every view, rendered for every phone profile with and without Teams-busy, parses
//!   back into the composed model with no quirk, and shows the elements each profile
//!   requires; a few renderings are checked byte for byte;
//! - PIDF bodies: busy or not, passed through or replaced.
//!
//! Property tests (proptest): the parsers never panic on arbitrary bytes or on fixture
//! bodies with bytes changed, inserted or deleted (through `fuzzing::blf_dialog_info`,
//! the fuzz target's checks), render → parse gives back any model, and merging random
//! sequences of fixture documents keeps the view full, bounded and its version ordered.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use presence_proxy::blf::pidf::{Activity, Basic};
use presence_proxy::blf::{
    Dialog, DialogInfo, DialogInfoState, DialogState, Direction, DocumentState, Identity,
    MergeOutcome, Participant, PhoneFamily, PhoneProfile, Quirk, Target, TargetParam,
    TeamsInjection, WatchedExtension, compose_for_phone, parse_dialog_info,
    parse_dialog_info_noting_quirks, parse_pidf, peek_dialog_info_version, render_dialog_info,
    render_for_phone, render_presence_for_phone, teams_dialog_id,
};
use presence_proxy::fuzzing;
use presence_proxy::sip::{HeaderName, Message};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// One NOTIFY fixture of `sip-traces/blf/`.
struct Fixture {
    /// The file name without `notify-` and `.sip`: `kamailio-03-two-calls-v2`.
    name: String,
    /// The flow: the name's first part (`kamailio`).
    flow: String,
    content_type: String,
    body: Bytes,
}

fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-traces/blf");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("sip-traces/blf readable")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sip"))
            .collect();
        paths.sort();
        let all: Vec<Fixture> = paths
            .iter()
            .map(|path| {
                let raw = std::fs::read(path).expect("fixture readable");
                let msg = Message::parse(Bytes::from(raw))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let stem = path.file_stem().unwrap().to_str().unwrap();
                let name = stem.strip_prefix("notify-").unwrap_or(stem).to_owned();
                let flow = name.split('-').next().unwrap().to_owned();
                let content_type =
                    String::from_utf8_lossy(msg.header(HeaderName::ContentType).unwrap())
                        .into_owned();
                let body = msg.as_bytes().slice(msg.body_span().range());
                Fixture {
                    name,
                    flow,
                    content_type,
                    body,
                }
            })
            .collect();
        assert!(all.len() >= 40, "only {} BLF fixtures", all.len());
        all
    })
}

fn dialog_info_fixtures() -> impl Iterator<Item = &'static Fixture> {
    fixtures()
        .iter()
        .filter(|f| f.content_type == "application/dialog-info+xml")
}

fn flow(name: &str) -> Vec<&'static Fixture> {
    let steps: Vec<_> = fixtures().iter().filter(|f| f.flow == name).collect();
    assert!(!steps.is_empty(), "no fixtures for flow {name}");
    steps
}

const EXT: WatchedExtension<'static> = WatchedExtension {
    number: "201",
    uri: "sip:201@pbx.example.com",
};

fn profiles() -> impl Iterator<Item = PhoneProfile> {
    PhoneFamily::ALL.into_iter().map(PhoneProfile::for_family)
}

// ---------------------------------------------------------------------------------
// parsing

/// The quirks each fixture needs; every other dialog-info fixture needs none.
fn expected_quirks(name: &str) -> Vec<Quirk> {
    match name {
        "basic-06-dialog-info-v2" => vec![Quirk::DuplicateDialogId],
        "sharedline-06-dialog-info-v5" => vec![
            Quirk::ReasonAttribute,
            Quirk::ReceiverDirection,
            Quirk::ParamOutsideTarget,
        ],
        "sharedline-07-dialog-info-v6" => vec![Quirk::ReceiverDirection],
        "sharedline-08-dialog-info-v7" => vec![
            Quirk::ReceiverDirection,
            Quirk::ParamOutsideTarget,
            Quirk::StrayEndTag,
        ],
        "sharedline-05-dialog-info-v4" => vec![Quirk::ReasonAttribute],
        "sharedline-09-dialog-info-v8" => {
            vec![Quirk::ReasonAttribute, Quirk::ReceiverDirection]
        }
        "asterisk-04-on-hold-v3"
        | "freeswitch-01-ringing-v1"
        | "freeswitch-02-answered-v2"
        | "freeswitch-03-on-hold-v3" => vec![Quirk::PvalueAttribute],
        _ => vec![],
    }
}

#[test]
fn every_dialog_info_body_parses_with_the_expected_quirks() {
    let mut count = 0;
    for fixture in dialog_info_fixtures() {
        let (doc, quirks) = parse_dialog_info_noting_quirks(&fixture.body)
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
        assert_eq!(
            quirks.iter().collect::<Vec<_>>(),
            expected_quirks(&fixture.name),
            "{}",
            fixture.name
        );
        // the version is the one in the file name
        let version = fixture
            .name
            .rsplit("-v")
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap();
        assert_eq!(doc.version, Some(version), "{}", fixture.name);
        assert_eq!(
            peek_dialog_info_version(&fixture.body),
            Some(version),
            "{}",
            fixture.name
        );
        count += 1;
    }
    assert!(count >= 38, "only {count} dialog-info fixtures");
}

#[test]
fn the_bare_rfc_4235_documents_read_like_their_notify_bodies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-traces/rfc4235");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let xml = std::fs::read(&path).unwrap();
        let bare = parse_dialog_info(&xml).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let wrapped = fixtures()
            .iter()
            .find(|f| f.name == stem)
            .unwrap_or_else(|| panic!("no NOTIFY fixture for {stem}"));
        assert_eq!(parse_dialog_info(&wrapped.body).unwrap(), bare, "{stem}");
        checked += 1;
    }
    assert_eq!(checked, 18);
}

#[test]
fn notifier_styles_read_as_their_pbx_meant() {
    let body = |name: &str| {
        let fixture = fixtures().iter().find(|f| f.name == name).unwrap();
        parse_dialog_info(&fixture.body).unwrap()
    };
    // Asterisk: one dialog named after the extension, hold in a pvalue param
    let hold = body("asterisk-04-on-hold-v3");
    assert_eq!(hold.dialogs.len(), 1);
    assert_eq!(hold.dialogs[0].id, "201");
    let target = hold.dialogs[0]
        .local
        .as_ref()
        .unwrap()
        .target
        .as_ref()
        .unwrap();
    assert_eq!(
        target.params,
        [TargetParam {
            name: "+sip.rendering".into(),
            value: "no".into()
        }]
    );
    let ringing = body("asterisk-02-ringing-v1");
    let dialog = &ringing.dialogs[0];
    assert_eq!(
        (dialog.state, dialog.direction),
        (DialogState::Early, Some(Direction::Recipient))
    );
    assert_eq!(
        dialog.remote.as_ref().unwrap().identities,
        [Identity {
            uri: "sip:203@pbx.example.com".into(),
            display: Some("Carol".into())
        }]
    );
    // Kamailio: three dialogs, with call-ids and tags
    let two_calls = body("kamailio-03-two-calls-v2");
    let states: Vec<_> = two_calls.dialogs.iter().map(|d| d.state).collect();
    assert_eq!(
        states,
        [
            DialogState::Confirmed,
            DialogState::Early,
            DialogState::Terminated
        ]
    );
    assert_eq!(two_calls.dialogs[1].remote_tag, None);
    assert_eq!(
        two_calls.dialogs[0].call_id.as_deref(),
        Some("9f8e7d6c5b4a@192.0.2.33")
    );
    // the partial notifier's prefixed namespace, code and event
    let rings = body("partial-02-second-call-rings-v11");
    assert_eq!(rings.state, DocumentState::Partial);
    assert_eq!(rings.dialogs[0].state_code, Some(180));
    let ends = body("partial-03-first-call-ends-v12");
    assert_eq!(ends.dialogs[0].state_event.as_deref(), Some("local-bye"));
    assert_eq!(
        body("partial-01-subscribe-full-v10").dialogs[0].duration,
        Some(12)
    );
    // the Yealink admin guide's own partial NOTIFY
    let yealink = body("yealink-01-partial-v3");
    assert_eq!(yealink.state, DocumentState::Partial);
    assert_eq!(yealink.dialogs[0].remote_tag.as_deref(), Some("1132018898"));
}

// ---------------------------------------------------------------------------------
// merging

/// Applies a flow's bodies in order; returns each outcome and the view after it as
/// (id, state) pairs.
fn merge_flow(name: &str) -> Vec<(MergeOutcome, Vec<(String, DialogState)>)> {
    let mut state = DialogInfoState::new();
    flow(name)
        .into_iter()
        .map(|fixture| {
            let outcome = state.apply_body(&fixture.body).unwrap();
            let view = state.view().unwrap();
            assert_eq!(view.state, DocumentState::Full);
            let rows = view
                .dialogs
                .iter()
                .map(|d| (d.id.clone(), d.state))
                .collect();
            (outcome, rows)
        })
        .collect()
}

fn rows(list: &[(&str, DialogState)]) -> Vec<(String, DialogState)> {
    list.iter().map(|(id, s)| ((*id).to_owned(), *s)).collect()
}

#[test]
fn rfc_4235_flows_merge() {
    use DialogState::*;
    use MergeOutcome::*;
    let basic = merge_flow("basic");
    let got: Vec<_> = basic.iter().map(|(o, _)| *o).collect();
    assert_eq!(got, [Applied, Applied, Applied, Applied, Applied]);
    // v2: two forks share the id; v3 confirms the second (tag hh76a), v4 ends it
    assert_eq!(
        basic[3].1,
        rows(&[("as7d900as8", Early), ("as7d900as8", Confirmed)])
    );
    assert_eq!(
        basic[4].1,
        rows(&[("as7d900as8", Early), ("as7d900as8", Terminated)])
    );

    let shared = merge_flow("sharedline");
    let got: Vec<_> = shared.iter().map(|(o, _)| *o).collect();
    assert_eq!(got, [Applied; 10]);
    assert_eq!(shared[0].1, []);
    assert_eq!(shared[3].1, rows(&[("as7d900as8", Early)]));
    assert_eq!(
        shared[4].1,
        rows(&[("as7d900as8", Terminated), ("zxcvbnm3", Confirmed)])
    );
    assert_eq!(
        shared[5].1,
        rows(&[("zxcvbnm3", Terminated), ("sfhjsjk12", Confirmed)])
    );
    assert_eq!(
        shared[8].1,
        rows(&[("sfhjsjk12", Terminated), ("08hjh1345", Trying)])
    );
    assert_eq!(shared[9].1, []);

    let privacy = merge_flow("privacy");
    assert_eq!(privacy[1].1, rows(&[("1", Confirmed)]));
    assert_eq!(privacy[2].1, []);
}

#[test]
fn partial_updates_keep_what_they_leave_out() {
    // §6.2: "Ringing" (v3) gives only a remote target; the identities of "Dialing"
    // (v2) stay. "Alice puts Cathy on hold" (v7, the malformed one) sets hold.
    let mut state = DialogInfoState::new();
    let steps = flow("sharedline");
    for fixture in &steps[..4] {
        state.apply_body(&fixture.body).unwrap();
    }
    let dialog = &state.view().unwrap().dialogs[0];
    let remote = dialog.remote.as_ref().unwrap();
    assert_eq!(remote.identities[0].uri, "sip:bob@example.net");
    assert_eq!(
        remote.target.as_ref().unwrap().uri,
        "sip:bobster@host2.example.net"
    );
    let local = dialog.local.as_ref().unwrap();
    assert_eq!(local.identities[0].display.as_deref(), Some("Alice Smith"));
    for fixture in &steps[4..8] {
        state.apply_body(&fixture.body).unwrap();
    }
    let cathy = &state.view().unwrap().dialogs[0];
    assert_eq!(cathy.id, "sfhjsjk12");
    let local_target = cathy.local.as_ref().unwrap().target.as_ref().unwrap();
    assert_eq!(local_target.params[0].value, "no");
    // the remote target of v6 (conference focus) is kept through v7
    assert_eq!(
        cathy.remote.as_ref().unwrap().target.as_ref().unwrap().uri,
        "sip:confid-34579@host3.example.net"
    );
}

#[test]
fn notifier_style_flows_merge() {
    use DialogState::*;
    use MergeOutcome::*;
    let asterisk = merge_flow("asterisk");
    let got: Vec<_> = asterisk.iter().map(|(o, r)| (*o, r.clone())).collect();
    assert_eq!(
        got,
        [
            (Applied, rows(&[("201", Terminated)])),
            (Applied, rows(&[("201", Early)])),
            (Applied, rows(&[("201", Confirmed)])),
            (Applied, rows(&[("201", Confirmed)])),
            (Applied, rows(&[("201", Terminated)])),
        ]
    );

    let uuid = "3f1c2a7e-5b0d-4e8f-9a61-2c7d4b9e0f13";
    let freeswitch = merge_flow("freeswitch");
    let states: Vec<_> = freeswitch.iter().map(|(o, r)| (*o, r.clone())).collect();
    assert_eq!(
        states,
        [
            (Applied, rows(&[(uuid, Early)])),
            (Applied, rows(&[(uuid, Confirmed)])),
            (Applied, rows(&[(uuid, Confirmed)])),
            (Applied, rows(&[(uuid, Terminated)])),
        ]
    );

    let kamailio = merge_flow("kamailio");
    let got: Vec<_> = kamailio.iter().map(|(o, r)| (*o, r.clone())).collect();
    assert_eq!(
        got,
        [
            (
                Applied,
                rows(&[("5d6e7f8091a2b3c4d5e6f708192a3b4c", Terminated)])
            ),
            (Applied, rows(&[("d7c3e1a04b2f", Early)])),
            (
                Applied,
                rows(&[
                    ("d7c3e1a04b2f", Confirmed),
                    ("e4a9b0c1d2f3", Early),
                    ("c0ffee000001", Terminated)
                ])
            ),
            (
                Applied,
                rows(&[("d7c3e1a04b2f", Terminated), ("e4a9b0c1d2f3", Confirmed)])
            ),
            (Applied, rows(&[("e4a9b0c1d2f3", Terminated)])),
        ]
    );

    // full, partial, partial, (v13 lost) partial, full after the refresh
    let partial = merge_flow("partial");
    let got: Vec<_> = partial.iter().map(|(o, r)| (*o, r.clone())).collect();
    assert_eq!(
        got,
        [
            (Applied, rows(&[("a1", Confirmed)])),
            (Applied, rows(&[("a1", Confirmed), ("b2", Early)])),
            (Applied, rows(&[("a1", Terminated), ("b2", Early)])),
            (NeedFullState, rows(&[("b2", Confirmed)])),
            (Applied, rows(&[("b2", Confirmed)])),
        ]
    );

    // the Yealink phone's partial document alone: processed, but not a full view
    let yealink = merge_flow("yealink");
    assert_eq!(yealink[0], (NeedFullState, rows(&[("74", Confirmed)])));
}

#[test]
fn replays_and_reordering_are_ignored() {
    let steps = flow("partial");
    let mut state = DialogInfoState::new();
    state.apply_body(&steps[0].body).unwrap();
    state.apply_body(&steps[1].body).unwrap();
    assert_eq!(
        state.apply_body(&steps[1].body),
        Ok(MergeOutcome::Duplicate)
    );
    state.apply_body(&steps[3].body).unwrap();
    let before = state.clone();
    assert_eq!(state.apply_body(&steps[2].body), Ok(MergeOutcome::Stale));
    assert_eq!(state, before);
    assert!(!state.is_coherent());
    state.apply_body(&steps[4].body).unwrap();
    assert!(state.is_coherent());
}

// ---------------------------------------------------------------------------------
// rendering

/// Every view every flow passes through: (fixture name, view).
fn all_views() -> Vec<(String, DialogInfo)> {
    let mut views = Vec::new();
    let mut flows: Vec<&str> = dialog_info_fixtures().map(|f| f.flow.as_str()).collect();
    flows.dedup();
    for name in flows {
        let mut state = DialogInfoState::new();
        for fixture in flow(name) {
            state.apply_body(&fixture.body).unwrap();
            views.push((fixture.name.clone(), state.view().unwrap().clone()));
        }
    }
    views
}

/// What a profile requires of a composed document, checked on the rendered bytes
/// (parsed back) as the phone would read them.
fn check_profile_rules(
    context: &str,
    pbx: &DialogInfo,
    teams_busy: bool,
    profile: &PhoneProfile,
    phone_sees: &DialogInfo,
) {
    let dialogs = &phone_sees.dialogs;
    let teams_id = teams_dialog_id(EXT.number);
    let teams = dialogs.iter().find(|d| d.id == teams_id);
    if teams_busy && !pbx.shows_call() {
        let teams = teams.unwrap_or_else(|| panic!("{context}: no teams dialog"));
        assert_eq!(teams.state, DialogState::Confirmed, "{context}");
        assert_eq!(teams.direction, Some(Direction::Recipient), "{context}");
        assert_eq!(
            teams.local.as_ref().unwrap().identities[0].uri,
            EXT.uri,
            "{context}"
        );
    } else {
        assert!(teams.is_none(), "{context}: teams dialog without reason");
    }
    assert_eq!(
        phone_sees.shows_call(),
        pbx.shows_call() || teams_busy,
        "{context}"
    );
    assert_eq!(
        phone_sees.entity, pbx.entity,
        "{context}: the PBX's entity is kept"
    );
    let mut ids: Vec<_> = dialogs.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), dialogs.len(), "{context}: ids not unique");
    match profile.family {
        PhoneFamily::Yealink | PhoneFamily::Grandstream => {
            assert!(!dialogs.is_empty(), "{context}: an empty document");
        }
        PhoneFamily::Polycom => {
            assert!(
                dialogs
                    .iter()
                    .all(|d| d.local.as_ref().is_some_and(|l| !l.identities.is_empty())),
                "{context}: a dialog without local identity"
            );
        }
        PhoneFamily::CiscoSpa => {
            assert_eq!(dialogs.len(), 1, "{context}: not exactly one dialog");
            let best = pbx
                .dialogs
                .iter()
                .map(|d| match d.state {
                    DialogState::Early if d.direction == Some(Direction::Initiator) => 4,
                    DialogState::Confirmed => 4,
                    DialogState::Early => 3,
                    DialogState::Proceeding => 2,
                    DialogState::Trying => 1,
                    DialogState::Terminated => 0,
                })
                .max();
            if let (Some(best), false) = (best, teams_busy) {
                let shown = match dialogs[0].state {
                    DialogState::Confirmed => 4,
                    DialogState::Early => 3,
                    DialogState::Proceeding => 2,
                    DialogState::Trying => 1,
                    DialogState::Terminated => 0,
                };
                assert_eq!(shown, best, "{context}: not the most interesting dialog");
            }
            assert!(
                dialogs.iter().all(|d| !(d.state == DialogState::Early
                    && d.direction == Some(Direction::Initiator))),
                "{context}: caller-side early shown as early"
            );
        }
        PhoneFamily::Generic | PhoneFamily::Snom => {
            if !teams_busy && !pbx.dialogs.is_empty() {
                // only repeated ids are renamed
                let without_ids = |list: &[Dialog]| -> Vec<Dialog> {
                    list.iter()
                        .map(|d| Dialog {
                            id: String::new(),
                            ..d.clone()
                        })
                        .collect()
                };
                assert_eq!(
                    without_ids(dialogs),
                    without_ids(&pbx.dialogs),
                    "{context}: changed without reason"
                );
            }
        }
    }
    if !pbx.dialogs.is_empty() || teams_busy {
        return;
    }
    // an idle PBX view: every built-in profile shows one explicit terminated dialog
    assert_eq!(dialogs.len(), 1, "{context}");
    assert_eq!(dialogs[0].id, EXT.number, "{context}");
    assert_eq!(dialogs[0].state, DialogState::Terminated, "{context}");
}

#[test]
fn every_view_renders_for_every_profile_and_reads_back() {
    let views = all_views();
    assert!(views.len() >= 38);
    let mut version = 0u32;
    for (name, view) in &views {
        for profile in profiles() {
            for teams_busy in [false, true] {
                for with_dialog_ids in [false, true] {
                    let injection = TeamsInjection { with_dialog_ids };
                    let context = format!(
                        "{name}, {}, teams_busy {teams_busy}, ids {with_dialog_ids}",
                        profile.name()
                    );
                    version += 1;
                    let composed =
                        compose_for_phone(Some(view), teams_busy, &EXT, &profile, &injection);
                    let bytes = render_for_phone(
                        Some(view),
                        version,
                        teams_busy,
                        &EXT,
                        &profile,
                        &injection,
                    );
                    assert_eq!(bytes, render_dialog_info(&composed, version), "{context}");
                    let text = std::str::from_utf8(&bytes).unwrap();
                    assert!(text.starts_with(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dialog-info \
                         xmlns=\"urn:ietf:params:xml:ns:dialog-info\""
                    ));
                    assert!(
                        text.contains(&format!(" version=\"{version}\" state=\"full\" ")),
                        "{context}"
                    );
                    let (back, quirks) = parse_dialog_info_noting_quirks(&bytes)
                        .unwrap_or_else(|e| panic!("{context}: {e}\n{text}"));
                    assert!(
                        quirks.is_empty(),
                        "{context}: {:?}",
                        quirks.iter().collect::<Vec<_>>()
                    );
                    assert_eq!(
                        back,
                        DialogInfo {
                            version: Some(version),
                            ..composed.clone()
                        },
                        "{context}"
                    );
                    check_profile_rules(&context, view, teams_busy, &profile, &back);
                    let teams = back.dialogs.iter().find(|d| d.id == "teams-201");
                    if let Some(teams) = teams {
                        let ids = (&teams.call_id, &teams.local_tag, &teams.remote_tag);
                        if with_dialog_ids {
                            assert_eq!(ids.0.as_deref(), Some("teams-201"), "{context}");
                            assert!(ids.1.is_some() && ids.2.is_some(), "{context}");
                        } else {
                            assert_eq!(ids, (&None, &None, &None), "{context}");
                        }
                    }
                }
            }
        }
    }
}

fn view_after(name: &str) -> DialogInfo {
    all_views()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no view {name}"))
}

#[test]
fn exact_bodies_for_some_phones() {
    let render = |view: &DialogInfo, busy, family| {
        String::from_utf8(render_for_phone(
            Some(view),
            12,
            busy,
            &EXT,
            &PhoneProfile::for_family(family),
            &TeamsInjection::default(),
        ))
        .unwrap()
    };
    // Asterisk idle, Teams-busy, a Yealink: the PBX's terminated dialog and ours
    assert_eq!(
        render(
            &view_after("asterisk-01-idle-v0"),
            true,
            PhoneFamily::Yealink
        ),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"12\" state=\"full\" entity=\"sip:201@pbx.example.com\">\n\
         <dialog id=\"201\">\n<state>terminated</state>\n</dialog>\n\
         <dialog id=\"teams-201\" direction=\"recipient\">\n<state>confirmed</state>\n\
         <local>\n<identity>sip:201@pbx.example.com</identity>\n</local>\n</dialog>\n\
         </dialog-info>\n"
    );
    // Asterisk in use, Teams-busy too: the PBX's document as it is
    assert_eq!(
        render(
            &view_after("asterisk-03-in-use-v2"),
            true,
            PhoneFamily::Yealink
        ),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"12\" state=\"full\" entity=\"sip:201@pbx.example.com\">\n\
         <dialog id=\"201\">\n<state>confirmed</state>\n</dialog>\n\
         </dialog-info>\n"
    );
    // Kamailio's three dialogs on an SPA: the call in progress only
    let spa = render(
        &view_after("kamailio-03-two-calls-v2"),
        false,
        PhoneFamily::CiscoSpa,
    );
    assert_eq!(spa.matches("<dialog ").count(), 1);
    assert!(spa.contains(
        "<dialog id=\"d7c3e1a04b2f\" call-id=\"9f8e7d6c5b4a@192.0.2.33\" local-tag=\"as1f2e3d\" \
         remote-tag=\"b2c4d6e8\" direction=\"initiator\">\n<state>confirmed</state>\n"
    ));
    // the Kamailio caller-side early: confirmed for an SPA, early for the others
    let calling = view_after("kamailio-02-calling-v1");
    assert!(render(&calling, false, PhoneFamily::CiscoSpa).contains("<state>confirmed</state>"));
    assert!(render(&calling, false, PhoneFamily::Snom).contains("<state>early</state>"));
    // Polycom on Asterisk's minimal dialog: the entity as local identity
    let polycom = render(
        &view_after("asterisk-03-in-use-v2"),
        false,
        PhoneFamily::Polycom,
    );
    assert!(polycom.contains(
        "<dialog id=\"201\">\n<state>confirmed</state>\n<local>\n<identity>sip:201@pbx.example.com</identity>\n</local>\n</dialog>\n"
    ));
    // FreeSWITCH's pvalue comes out as the RFC's pval
    let hold = render(
        &view_after("freeswitch-03-on-hold-v3"),
        false,
        PhoneFamily::Generic,
    );
    assert!(hold.contains("<param pname=\"+sip.rendering\" pval=\"no\"/>"));
    // Teams-busy after the RFC's forked example: both forks, unique ids
    let forks = render(
        &view_after("basic-06-dialog-info-v2"),
        false,
        PhoneFamily::Generic,
    );
    assert!(
        forks.contains("<dialog id=\"as7d900as8\" ")
            && forks.contains("<dialog id=\"as7d900as8-2\" ")
    );
}

#[test]
fn no_view_yet_is_idle_or_teams_busy() {
    for profile in profiles() {
        let idle = compose_for_phone(None, false, &EXT, &profile, &TeamsInjection::default());
        assert_eq!(idle.entity.as_deref(), Some(EXT.uri));
        assert_eq!(
            idle.dialogs,
            [Dialog::new("201", DialogState::Terminated)].map(|d| {
                if profile.always_local_identity {
                    Dialog {
                        local: Some(Participant {
                            identities: vec![Identity {
                                uri: EXT.uri.into(),
                                display: None,
                            }],
                            target: None,
                        }),
                        ..d
                    }
                } else {
                    d
                }
            })
        );
        let busy = compose_for_phone(None, true, &EXT, &profile, &TeamsInjection::default());
        assert_eq!(busy.dialogs.len(), 1);
        assert_eq!(busy.dialogs[0].id, "teams-201");
    }
}

// ---------------------------------------------------------------------------------
// PIDF

#[test]
fn presence_bodies() {
    let presence: Vec<_> = fixtures()
        .iter()
        .filter(|f| f.content_type == "application/pidf+xml")
        .collect();
    assert_eq!(presence.len(), 2);
    let ready = parse_pidf(&presence[0].body).unwrap();
    let on_phone = parse_pidf(&presence[1].body).unwrap();
    assert!(!ready.shows_busy() && on_phone.shows_busy());
    assert_eq!(ready.tuples[0].basic, Some(Basic::Open));
    assert_eq!(on_phone.activities, [Activity::OnThePhone]);
    assert_eq!(ready.entity.as_deref(), Some("sip:2001@pbx.example.com"));

    let ext = WatchedExtension {
        number: "2001",
        uri: "sip:2001@pbx.example.com",
    };
    // not Teams-busy: the PBX's body as it came, byte for byte
    for fixture in &presence {
        let out = render_presence_for_phone(Some(&fixture.body), false, &ext);
        assert_eq!(&*out, &fixture.body[..]);
    }
    // Teams-busy: our document, built on the PBX's entity and tuple
    let out = render_presence_for_phone(Some(&presence[0].body), true, &ext);
    let doc = parse_pidf(&out).unwrap();
    assert!(doc.shows_busy());
    assert_eq!(doc.tuples[0].id, "2001");
    assert_eq!(doc.tuples[0].basic, Some(Basic::Open));
    assert_eq!(doc.entity, ready.entity);
    let text = String::from_utf8(out.into_owned()).unwrap();
    assert!(text.contains("<rpid:activities><rpid:on-the-phone/></rpid:activities>"));
    assert!(text.contains("<note>On the phone</note>"));
    assert!(
        !text.contains("busy"),
        "RPID busy reads as DND to the observer"
    );
}

#[test]
fn the_fuzz_checks_pass_on_every_fixture_body() {
    for fixture in fixtures() {
        fuzzing::blf_dialog_info(&fixture.body);
    }
}

// ---------------------------------------------------------------------------------
// properties

/// One change to a body: overwrite, insert or delete a byte.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // bytes that matter to XML are likelier than others
    let byte = prop_oneof![
        3 => prop::sample::select(&b"<>/=\"'&;! ?-:\r\nx"[..]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

fn mutate(body: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = body.to_vec();
    for m in mutations {
        match *m {
            Mutation::Set(i, b) if !out.is_empty() => {
                let at = i.index(out.len());
                out[at] = b;
            }
            Mutation::Insert(i, b) => {
                let at = i.index(out.len() + 1);
                out.insert(at, b);
            }
            Mutation::Delete(i) if !out.is_empty() => {
                let at = i.index(out.len());
                out.remove(at);
            }
            _ => {}
        }
    }
    out
}

/// Strings as a PBX might put them in attributes: markup, quotes, white space,
/// non-ASCII.
fn attr_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9@:;=.+-]{0,12}", "[ -~\t\n\r]{0,10}", "\\PC{0,6}",]
}

fn element_text() -> impl Strategy<Value = String> {
    attr_text().prop_map(|s| s.trim().to_owned())
}

fn dialog_state() -> impl Strategy<Value = DialogState> {
    prop::sample::select(vec![
        DialogState::Trying,
        DialogState::Proceeding,
        DialogState::Early,
        DialogState::Confirmed,
        DialogState::Terminated,
    ])
}

fn participant() -> impl Strategy<Value = Participant> {
    let identity = (element_text(), prop::option::of(attr_text()))
        .prop_map(|(uri, display)| Identity { uri, display });
    let param = (attr_text(), attr_text()).prop_map(|(name, value)| TargetParam { name, value });
    let target = (attr_text(), vec(param, 0..3)).prop_map(|(uri, params)| Target { uri, params });
    (vec(identity, 0..3), prop::option::of(target))
        .prop_map(|(identities, target)| Participant { identities, target })
}

fn dialog() -> impl Strategy<Value = Dialog> {
    (
        (
            attr_text().prop_filter("ids are non-empty", |s| !s.is_empty()),
            prop::option::of(attr_text()),
            prop::option::of(attr_text()),
            prop::option::of(attr_text()),
            prop::option::of(prop::sample::select(vec![
                Direction::Initiator,
                Direction::Recipient,
            ])),
        ),
        (
            dialog_state(),
            prop::option::of(attr_text()),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u64>()),
            prop::option::of(participant()),
            prop::option::of(participant()),
        ),
    )
        .prop_map(
            |(
                (id, call_id, local_tag, remote_tag, direction),
                (state, state_event, state_code, duration, local, remote),
            )| Dialog {
                id,
                call_id,
                local_tag,
                remote_tag,
                direction,
                state,
                state_event,
                state_code,
                duration,
                local,
                remote,
            },
        )
}

fn document() -> impl Strategy<Value = DialogInfo> {
    (
        prop::option::of(any::<u32>()),
        prop::sample::select(vec![DocumentState::Full, DocumentState::Partial]),
        prop::option::of(attr_text()),
        vec(dialog(), 0..5),
    )
        .prop_map(|(version, state, entity, dialogs)| DialogInfo {
            version,
            state,
            entity,
            dialogs,
        })
}

fn fixture_bodies() -> Vec<Bytes> {
    fixtures().iter().map(|f| f.body.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        fuzzing::blf_dialog_info(&data);
    }

    #[test]
    fn arbitrary_markup_never_panics(
        parts in vec(prop::sample::select(vec![
            "<dialog-info version=\"1\" state=\"full\">", "</dialog-info>", "<dialog id=\"a\">",
            "</dialog>", "<state>", "</state>", "confirmed", "early", "<local>", "</local>",
            "<remote>", "</remote>", "<identity>", "</identity>", "<target uri=\"x\">",
            "<target/>", "</target>", "<param pname=\"p\" pval=\"v\"/>", "<duration>",
            "</duration>", "12", "&amp;", "&#0;", "&bogus;", "<![CDATA[x]]>", "<!-- c -->",
            "<presence>", "</presence>", "<tuple id=\"t\">", "</tuple>", "<status>",
            "<basic>", "open", "</basic>", "<note>", "</note>", "<activities>",
            "<rpid:on-the-phone/>", "</activities>", "<other>", "</other>", " ", "\"", "<",
        ]), 0..40),
    ) {
        fuzzing::blf_dialog_info(parts.concat().as_bytes());
    }

    #[test]
    fn mutated_fixture_bodies_never_panic(
        which in any::<Index>(),
        mutations in vec(mutation(), 1..6),
    ) {
        let bodies = fixture_bodies();
        let body = &bodies[which.index(bodies.len())];
        fuzzing::blf_dialog_info(&mutate(body, &mutations));
    }

    #[test]
    fn render_then_parse_gives_the_model_back(doc in document(), version in any::<u32>()) {
        let bytes = render_dialog_info(&doc, version);
        let (back, quirks) = parse_dialog_info_noting_quirks(&bytes)
            .unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&bytes)));
        prop_assert_eq!(
            &back,
            &DialogInfo { version: Some(version), state: DocumentState::Full, ..doc.clone() }
        );
        let mut ids: Vec<_> = doc.dialogs.iter().map(|d| &d.id).collect();
        ids.sort();
        ids.dedup();
        if ids.len() == doc.dialogs.len() && doc.entity.is_some() {
            prop_assert!(quirks.is_empty(), "{:?}", quirks.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn composing_keeps_the_profile_rules(
        doc in document(),
        teams_busy in any::<bool>(),
        family in prop::sample::select(PhoneFamily::ALL.to_vec()),
    ) {
        let profile = PhoneProfile::for_family(family);
        let composed = compose_for_phone(Some(&doc), teams_busy, &EXT, &profile, &TeamsInjection::default());
        let bytes = render_dialog_info(&composed, 1);
        let (back, quirks) = parse_dialog_info_noting_quirks(&bytes).unwrap();
        prop_assert!(quirks.is_empty() || doc.entity.is_none() && quirks.iter().all(|q| q == Quirk::MissingEntity));
        prop_assert_eq!(&back, &DialogInfo { version: Some(1), ..composed.clone() });
        prop_assert_eq!(back.shows_call(), doc.shows_call() || teams_busy);
        if profile.single_dialog {
            prop_assert!(back.dialogs.len() <= 1);
        }
        prop_assert!(!back.dialogs.is_empty());
    }

    #[test]
    fn merging_any_sequence_keeps_the_view_sound(
        steps in vec((any::<Index>(), prop::option::of(0u32..40), any::<bool>()), 1..30),
    ) {
        let docs: Vec<DialogInfo> = dialog_info_fixtures()
            .map(|f| parse_dialog_info(&f.body).unwrap())
            .collect();
        let mut state = DialogInfoState::new();
        let mut last_version = None;
        for (which, version, full) in steps {
            let mut doc = docs[which.index(docs.len())].clone();
            doc.version = version;
            doc.state = if full { DocumentState::Full } else { DocumentState::Partial };
            let outcome = state.apply(doc.clone());
            let view = state.view().unwrap();
            prop_assert_eq!(view.state, DocumentState::Full);
            prop_assert!(view.dialogs.len() <= presence_proxy::blf::dialog_info::MAX_DIALOGS);
            match (last_version, version) {
                (Some(last), Some(v)) if v < last => prop_assert_eq!(outcome, MergeOutcome::Stale),
                (Some(last), Some(v)) if v == last => prop_assert_eq!(outcome, MergeOutcome::Duplicate),
                _ => {
                    prop_assert!(outcome.was_processed());
                    if full {
                        prop_assert_eq!(&view.dialogs, &doc.dialogs);
                        prop_assert_eq!(outcome, MergeOutcome::Applied);
                    }
                    if version.is_some() {
                        last_version = version;
                    }
                }
            }
            prop_assert_eq!(state.version(), last_version);
            if outcome == MergeOutcome::Applied {
                prop_assert!(state.is_coherent());
            }
        }
    }
}
