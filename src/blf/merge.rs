//! The subscriber side of RFC 4235 §4.3 ("Constructing Coherent State") for one
//! subscription: [`DialogInfoState`] takes the PBX's documents in arrival order and
//! keeps the current full view.
//!
//! Rules (RFC 4235 §4.3, `../shared/reference/sip.md` §1.4):
//!
//! - the first document sets the local version;
//! - a version one above the local one is processed and the local version follows;
//! - a version more than one above is processed too and the local version jumps to it;
//!   if that document is partial, rows may be missing: [`MergeOutcome::NeedFullState`]
//!   (the RFC says the subscriber SHOULD refresh its SUBSCRIBE to get full state);
//! - a version below the local one is discarded ([`MergeOutcome::Stale`]); the RFC is
//!   silent on an equal one, read here as a retransmission ([`MergeOutcome::Duplicate`]);
//! - a document without a version (a quirk) is processed in arrival order and leaves
//!   the local version as it was;
//! - full state flushes the table and refills it; partial state updates rows by dialog
//!   `id` and adds the new ones. When several rows share an id (RFC 4235 §6.1 gives
//!   both forks one id), the row whose call-id and tags agree with the update is the
//!   one updated; none agreeing adds a row. An update without `<identity>` or
//!   `<target>` keeps the row's old ones (§4.1.6.1, §4.1.6.2).
//! - rows already terminated before a document arrives are dropped when it is applied
//!   (the RFC lets them go "at any time"): the view shows a termination once, in the
//!   document that reported it, and the table cannot grow without bound. It never holds
//!   more than [`MAX_DIALOGS`] rows; past that the oldest go and the view is marked
//!   incoherent until the next full document.

use super::dialog_info::{
    Dialog, DialogInfo, DialogInfoError, DocumentState, MAX_DIALOGS, Participant, parse_dialog_info,
};

/// What [`DialogInfoState::apply`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Processed; the view is complete.
    Applied,
    /// Processed, but the view may miss changes: a partial document after a version
    /// gap, or partial documents only since the subscription started. Refresh the
    /// SUBSCRIBE to get full state (RFC 4235 §4.3).
    NeedFullState,
    /// The same version as the last one: not processed.
    Duplicate,
    /// An older version than the last one: discarded unprocessed.
    Stale,
}

impl MergeOutcome {
    /// Whether the document changed (or may have changed) the view.
    pub fn was_processed(self) -> bool {
        matches!(self, Self::Applied | Self::NeedFullState)
    }
}

/// One subscription's merged dialog-info table (RFC 4235 §4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialogInfoState {
    /// The merged view: always `state = Full`, `version` = the local version.
    view: Option<DialogInfo>,
    /// Whether a full document has been applied and nothing was lost since.
    coherent: bool,
}

impl DialogInfoState {
    /// No document seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current full view (`state` full, `version` the last processed version),
    /// or `None` before the first document.
    pub fn view(&self) -> Option<&DialogInfo> {
        self.view.as_ref()
    }

    /// The local version (RFC 4235 §4.3): the version of the last processed document.
    pub fn version(&self) -> Option<u32> {
        self.view.as_ref().and_then(|v| v.version)
    }

    /// Whether the view is known to be complete: a full document was applied and no
    /// version gap or overflow happened since.
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }

    /// Whether the view shows the extension in (or about to be in) a call.
    pub fn shows_call(&self) -> bool {
        self.view.as_ref().is_some_and(DialogInfo::shows_call)
    }

    /// Parses `body` ([`parse_dialog_info`]) and applies it; a body that does not parse
    /// leaves the state untouched.
    pub fn apply_body(&mut self, body: &[u8]) -> Result<MergeOutcome, DialogInfoError> {
        parse_dialog_info(body).map(|doc| self.apply(doc))
    }

    /// Applies one document under the rules of the module documentation.
    pub fn apply(&mut self, doc: DialogInfo) -> MergeOutcome {
        let local = self.version();
        let gap = match (local, doc.version) {
            (None, _) | (_, None) => false,
            (Some(local), Some(version)) => {
                if version < local {
                    return MergeOutcome::Stale;
                }
                if version == local {
                    return MergeOutcome::Duplicate;
                }
                version - local > 1
            }
        };
        let first = self.view.is_none();
        let view = self.view.get_or_insert_with(|| DialogInfo::empty(None));
        view.dialogs.retain(|d| d.state.is_active());
        if doc.version.is_some() {
            view.version = doc.version;
        }
        if doc.entity.is_some() {
            view.entity = doc.entity;
        }
        match doc.state {
            DocumentState::Full => {
                view.dialogs = doc.dialogs;
                self.coherent = true;
            }
            DocumentState::Partial => {
                for dialog in doc.dialogs {
                    upsert(&mut view.dialogs, dialog);
                }
                if first || gap {
                    self.coherent = false;
                }
            }
        }
        if view.dialogs.len() > MAX_DIALOGS {
            let excess = view.dialogs.len() - MAX_DIALOGS;
            view.dialogs.drain(..excess);
            self.coherent = false;
        }
        if self.coherent {
            MergeOutcome::Applied
        } else {
            MergeOutcome::NeedFullState
        }
    }
}

/// Updates the row `update` is about, or adds it.
fn upsert(rows: &mut Vec<Dialog>, update: Dialog) {
    let same_dialog = |row: &&mut Dialog| {
        row.id == update.id
            && agrees(&row.call_id, &update.call_id)
            && agrees(&row.local_tag, &update.local_tag)
            && agrees(&row.remote_tag, &update.remote_tag)
    };
    match rows.iter_mut().find(same_dialog) {
        Some(row) => {
            let local = carry_over(row.local.take(), update.local.clone());
            let remote = carry_over(row.remote.take(), update.remote.clone());
            *row = Dialog {
                local,
                remote,
                ..update
            };
        }
        None => rows.push(update),
    }
}

/// Whether two optional dialog identifiers can be the same dialog's: equal, or one
/// not given (a half-dialog gains its remote tag later).
fn agrees(row: &Option<String>, update: &Option<String>) -> bool {
    match (row, update) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// A participant after an update: identities and target kept from `old` where the
/// update leaves them out (RFC 4235 §4.1.6.1, §4.1.6.2).
fn carry_over(old: Option<Participant>, update: Option<Participant>) -> Option<Participant> {
    match (old, update) {
        (old, None) => old,
        (None, Some(update)) => Some(update),
        (Some(old), Some(update)) => Some(Participant {
            identities: if update.identities.is_empty() {
                old.identities
            } else {
                update.identities
            },
            target: update.target.or(old.target),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blf::dialog_info::{DialogState, Identity, Target};

    fn doc(version: Option<u32>, state: DocumentState, dialogs: Vec<Dialog>) -> DialogInfo {
        DialogInfo {
            version,
            state,
            entity: Some("sip:201@pbx".into()),
            dialogs,
        }
    }

    fn states(state: &DialogInfoState) -> Vec<(String, DialogState)> {
        state
            .view()
            .unwrap()
            .dialogs
            .iter()
            .map(|d| (d.id.clone(), d.state))
            .collect()
    }

    #[test]
    fn full_then_partials_in_order() {
        let mut state = DialogInfoState::new();
        assert_eq!(state.view(), None);
        let full = doc(
            Some(4),
            DocumentState::Full,
            vec![Dialog::new("a", DialogState::Confirmed)],
        );
        assert_eq!(state.apply(full.clone()), MergeOutcome::Applied);
        assert!(state.is_coherent() && state.shows_call());
        assert_eq!(state.version(), Some(4));
        assert_eq!(state.apply(full), MergeOutcome::Duplicate);

        let partial = doc(
            Some(5),
            DocumentState::Partial,
            vec![Dialog::new("b", DialogState::Early)],
        );
        assert_eq!(state.apply(partial), MergeOutcome::Applied);
        assert_eq!(
            states(&state),
            [
                ("a".into(), DialogState::Confirmed),
                ("b".into(), DialogState::Early)
            ]
        );
        let partial = doc(
            Some(6),
            DocumentState::Partial,
            vec![Dialog::new("a", DialogState::Terminated)],
        );
        assert_eq!(state.apply(partial), MergeOutcome::Applied);
        assert_eq!(
            states(&state),
            [
                ("a".into(), DialogState::Terminated),
                ("b".into(), DialogState::Early)
            ]
        );
        // the terminated row goes with the next document
        let partial = doc(
            Some(7),
            DocumentState::Partial,
            vec![Dialog::new("b", DialogState::Confirmed)],
        );
        assert_eq!(state.apply(partial), MergeOutcome::Applied);
        assert_eq!(states(&state), [("b".into(), DialogState::Confirmed)]);
        assert_eq!(state.view().unwrap().state, DocumentState::Full);
        assert_eq!(state.version(), Some(7));
    }

    #[test]
    fn gaps_old_versions_and_first_partials() {
        let mut state = DialogInfoState::new();
        let partial = |v, id: &str| {
            doc(
                Some(v),
                DocumentState::Partial,
                vec![Dialog::new(id, DialogState::Early)],
            )
        };
        assert_eq!(state.apply(partial(10, "a")), MergeOutcome::NeedFullState);
        assert!(!state.is_coherent());
        assert_eq!(state.apply(partial(11, "b")), MergeOutcome::NeedFullState);
        assert_eq!(
            state.apply(doc(Some(12), DocumentState::Full, vec![])),
            MergeOutcome::Applied
        );
        assert!(state.is_coherent() && !state.shows_call());
        assert_eq!(state.apply(partial(14, "c")), MergeOutcome::NeedFullState);
        assert_eq!(state.version(), Some(14));
        assert_eq!(state.apply(partial(13, "d")), MergeOutcome::Stale);
        assert_eq!(states(&state), [("c".into(), DialogState::Early)]);
        // a full document after a gap is complete by itself
        assert_eq!(
            state.apply(doc(Some(20), DocumentState::Full, vec![])),
            MergeOutcome::Applied
        );
        assert!(MergeOutcome::Applied.was_processed() && !MergeOutcome::Stale.was_processed());
    }

    #[test]
    fn versionless_documents_apply_in_arrival_order() {
        let mut state = DialogInfoState::new();
        assert_eq!(
            state.apply(doc(Some(3), DocumentState::Full, vec![])),
            MergeOutcome::Applied
        );
        let update = doc(
            None,
            DocumentState::Full,
            vec![Dialog::new("x", DialogState::Confirmed)],
        );
        assert_eq!(state.apply(update), MergeOutcome::Applied);
        assert_eq!(state.version(), Some(3));
        assert!(state.shows_call());
    }

    #[test]
    fn forks_sharing_an_id_are_told_apart_by_tags() {
        let fork = |tag: &str, s| Dialog {
            call_id: Some("c".into()),
            local_tag: Some("l".into()),
            remote_tag: Some(tag.into()),
            ..Dialog::new("same", s)
        };
        let mut state = DialogInfoState::new();
        state.apply(doc(
            Some(2),
            DocumentState::Full,
            vec![
                fork("t1", DialogState::Early),
                fork("t2", DialogState::Early),
            ],
        ));
        state.apply(doc(
            Some(3),
            DocumentState::Partial,
            vec![fork("t2", DialogState::Confirmed)],
        ));
        let view = state.view().unwrap();
        assert_eq!(view.dialogs[0].state, DialogState::Early);
        assert_eq!(view.dialogs[1].state, DialogState::Confirmed);
        // a half-dialog (no remote tag yet) is the same row as its later full form
        let mut state = DialogInfoState::new();
        state.apply(doc(
            Some(0),
            DocumentState::Full,
            vec![Dialog {
                remote_tag: None,
                ..fork("", DialogState::Trying)
            }],
        ));
        state.apply(doc(
            Some(1),
            DocumentState::Partial,
            vec![fork("t9", DialogState::Early)],
        ));
        assert_eq!(states(&state), [("same".into(), DialogState::Early)]);
    }

    #[test]
    fn omitted_identity_and_target_are_kept() {
        let bob = Identity {
            uri: "sip:bob@example.net".into(),
            display: None,
        };
        let mut state = DialogInfoState::new();
        state.apply(doc(
            Some(2),
            DocumentState::Full,
            vec![Dialog {
                remote: Some(Participant {
                    identities: vec![bob.clone()],
                    target: None,
                }),
                ..Dialog::new("a", DialogState::Trying)
            }],
        ));
        state.apply(doc(
            Some(3),
            DocumentState::Partial,
            vec![Dialog {
                remote: Some(Participant {
                    identities: vec![],
                    target: Some(Target {
                        uri: "sip:bobster@host2".into(),
                        params: vec![],
                    }),
                }),
                ..Dialog::new("a", DialogState::Early)
            }],
        ));
        let remote = state.view().unwrap().dialogs[0].remote.clone().unwrap();
        assert_eq!(remote.identities, [bob]);
        assert_eq!(remote.target.unwrap().uri, "sip:bobster@host2");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut state = DialogInfoState::new();
        state.apply(doc(Some(0), DocumentState::Full, vec![]));
        let mut last = MergeOutcome::Applied;
        for v in 1..=(MAX_DIALOGS as u32 + 5) {
            last = state.apply(doc(
                Some(v),
                DocumentState::Partial,
                vec![Dialog::new(format!("d{v}"), DialogState::Confirmed)],
            ));
        }
        assert_eq!(last, MergeOutcome::NeedFullState);
        assert_eq!(state.view().unwrap().dialogs.len(), MAX_DIALOGS);
        assert_eq!(state.view().unwrap().dialogs[0].id, "d6");
    }

    #[test]
    fn bodies_that_do_not_parse_change_nothing() {
        let mut state = DialogInfoState::new();
        assert!(state.apply_body(b"<nope/>").is_err());
        assert_eq!(state, DialogInfoState::new());
        assert_eq!(
            state.apply_body(b"<dialog-info version=\"1\" state=\"full\" entity=\"e\"/>"),
            Ok(MergeOutcome::Applied)
        );
    }
}
