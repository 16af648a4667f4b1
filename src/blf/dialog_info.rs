//! The RFC 4235 `application/dialog-info+xml` document: a typed model and a lenient
//! parser.
//!
//! # Model
//!
//! [`DialogInfo`] is one document: `version`, `state` (full or partial), `entity`, and
//! its [`Dialog`]s in document order. A dialog keeps what a BLF lamp, pickup and a
//! re-rendered document need: `id`, `call-id`, `local-tag`, `remote-tag`,
//! `direction`, the `<state>` with its `event` and `code` attributes, `<duration>`,
//! and `<local>`/`<remote>` ([`Participant`]: identities with display names, the
//! target URI with its `<param>`s).
//!
//! **Unknown elements are dropped**: `<replaces>`, `<referred-by>`, `<route-set>`,
//! `<session-description>`, `<cseq>` and any extension element are skipped with their
//! content, and unknown attributes are ignored. A document the proxy re-renders
//! therefore carries only the modelled parts. None of the dropped parts drives a lamp
//! or pickup on the phones of `../shared/reference/sip.md` §2, and a body the proxy does
//! not need to change can always be forwarded as the PBX sent it.
//!
//! # Leniency (what is accepted, and noted as a [`Quirk`])
//!
//! From RFC 4235's own examples (sip.md §1.6) and from PBXs (sip.md §2.7):
//!
//! - namespaces: elements and attributes are matched by local name, with or without a
//!   prefix, with or without the namespace declared ([`Quirk::MissingNamespace`]);
//!   names are matched ASCII case-insensitively;
//! - `notify-state` instead of `state` on the root (§4.1 example,
//!   [`Quirk::NotifyStateAttribute`]); no state at all reads as full
//!   ([`Quirk::MissingDocumentState`]); `FULL`, ` Partial ` are accepted;
//! - no `entity` (§4.2 sample, [`Quirk::MissingEntity`]); no `version`
//!   ([`Quirk::MissingVersion`]); `version` is read as a decimal `u32`, surrounding white
//!   space and leading zeros allowed (Kamailio fills a zero-padded placeholder, sip.md
//!   §3.2);
//! - several dialogs with one `id` (§6.1 forked example, [`Quirk::DuplicateDialogId`]):
//!   all are kept, in order; a dialog with no (or an empty) `id` gets one made from its
//!   call-id and tags, or its position ([`Quirk::MissingDialogId`]);
//! - `<state reason=…>` for `event` (§6.2, [`Quirk::ReasonAttribute`]), state values in
//!   any case and with white space ([`Quirk::NonCanonicalCase`] when not lowercase);
//! - `direction="receiver"` read as recipient (§6.2, [`Quirk::ReceiverDirection`]); any
//!   other unknown direction is dropped ([`Quirk::UnknownDirection`]);
//! - `<identity display-name=…>` as well as `display` (schema vs. prose,
//!   [`Quirk::DisplayNameAttribute`]); identity text trimmed (the §6.2 examples wrap it
//!   over lines);
//! - `<param pname pvalue>` as well as `pval` (Asterisk and FreeSWITCH write `pvalue`,
//!   [`Quirk::PvalueAttribute`]); a `<param>` that follows a self-closed `<target/>`
//!   instead of sitting inside it (§6.2) belongs to that target
//!   ([`Quirk::ParamOutsideTarget`]);
//! - an end tag that closes nothing open is ignored (§6.2 "Alice puts Cathy on hold"
//!   has a stray `</target>`, [`Quirk::StrayEndTag`]); an end tag that closes an outer
//!   element closes the inner ones too ([`Quirk::MismatchedEndTag`]);
//! - a `code` that is not a number and a `duration` that is not a number are dropped
//!   ([`Quirk::BadStateCode`], [`Quirk::BadDuration`]);
//! - bytes that are not UTF-8 are replaced, unknown entity references kept as written,
//!   comments, processing instructions, a DOCTYPE and anything after the root ignored.
//!
//! # Errors (what cannot be understood)
//!
//! [`DialogInfoError`]: no element at all, a root that is not `<dialog-info>`, XML the
//! reader cannot tokenise, a document that ends before its root closes, a version or
//! document state that is neither, a dialog without `<state>` or with a state that is
//! not one of RFC 4235's five (guessing it could light the wrong lamp), more than
//! [`MAX_DIALOGS`] dialogs or elements nested deeper than [`MAX_DEPTH`]. The parser
//! never panics, whatever the input (fuzzed: `fuzz/fuzz_targets/blf_dialog_info.rs`).

use std::fmt;
use std::str::FromStr;

use quick_xml::events::{BytesStart, Event};

use super::xml;

/// The dialog-info XML namespace (RFC 4235 §4).
pub const DIALOG_INFO_NAMESPACE: &str = "urn:ietf:params:xml:ns:dialog-info";

/// The dialog-info body type (RFC 4235 §3.5).
pub const DIALOG_INFO_CONTENT_TYPE: &str = "application/dialog-info+xml";

/// The most dialogs one document may hold; also the most a merged view keeps.
pub const MAX_DIALOGS: usize = 64;

/// The deepest element nesting the parser follows (dialog-info needs 5).
pub const MAX_DEPTH: usize = 32;

/// Whether a document carries every dialog or only the changed ones (RFC 4235 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentState {
    /// `state="full"`: the document replaces the subscriber's table.
    Full,
    /// `state="partial"`: the document updates rows of the table by dialog id.
    Partial,
}

impl DocumentState {
    /// `full` or `partial`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
        }
    }
}

/// The state of one dialog's FSM (RFC 4235 §3.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DialogState {
    /// INVITE sent or received, nothing back yet.
    Trying,
    /// A provisional response without a To tag.
    Proceeding,
    /// A provisional response with a To tag: ringing.
    Early,
    /// A 2xx: in a call.
    Confirmed,
    /// Over.
    Terminated,
}

impl DialogState {
    /// The RFC 4235 spelling: `trying`, `proceeding`, `early`, `confirmed`, `terminated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trying => "trying",
            Self::Proceeding => "proceeding",
            Self::Early => "early",
            Self::Confirmed => "confirmed",
            Self::Terminated => "terminated",
        }
    }

    /// Reads a state value, ASCII case-insensitively, surrounding white space ignored.
    pub fn from_text(text: &str) -> Option<Self> {
        let text = text.trim();
        [
            Self::Trying,
            Self::Proceeding,
            Self::Early,
            Self::Confirmed,
            Self::Terminated,
        ]
        .into_iter()
        .find(|state| text.eq_ignore_ascii_case(state.as_str()))
    }

    /// Whether the dialog shows the extension in a call or about to be in one: every
    /// state but `terminated`.
    pub fn is_active(self) -> bool {
        self != Self::Terminated
    }
}

impl fmt::Display for DialogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the observed user started the dialog (RFC 4235 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The observed user sent the INVITE.
    Initiator,
    /// The observed user received the INVITE.
    Recipient,
}

impl Direction {
    /// `initiator` or `recipient`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initiator => "initiator",
            Self::Recipient => "recipient",
        }
    }
}

/// One `application/dialog-info+xml` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogInfo {
    /// The `version` attribute; `None` when the document had none.
    pub version: Option<u32>,
    /// Full or partial state.
    pub state: DocumentState,
    /// The observed user's URI (`entity`), when given.
    pub entity: Option<String>,
    /// The dialogs, in document order.
    pub dialogs: Vec<Dialog>,
}

impl DialogInfo {
    /// An empty full-state document about `entity` (an idle extension).
    pub fn empty(entity: Option<String>) -> Self {
        Self {
            version: None,
            state: DocumentState::Full,
            entity,
            dialogs: Vec::new(),
        }
    }

    /// Whether any dialog is trying, proceeding, early or confirmed: the extension is
    /// (about to be) in a call as far as this document says.
    pub fn shows_call(&self) -> bool {
        self.dialogs.iter().any(|d| d.state.is_active())
    }
}

impl FromStr for DialogInfo {
    type Err = DialogInfoError;

    fn from_str(body: &str) -> Result<Self, Self::Err> {
        parse_dialog_info(body.as_bytes())
    }
}

/// One `<dialog>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// The `id` attribute (never empty: made up when the document had none).
    pub id: String,
    /// The SIP Call-ID of the dialog.
    pub call_id: Option<String>,
    /// The observed user's tag.
    pub local_tag: Option<String>,
    /// The other party's tag (absent for a half-dialog).
    pub remote_tag: Option<String>,
    /// Who sent the INVITE.
    pub direction: Option<Direction>,
    /// The `<state>` value.
    pub state: DialogState,
    /// The `<state event=…>` attribute (`cancelled`, `rejected`, `replaced`,
    /// `local-bye`, `remote-bye`, `error`, `timeout`, or an extension), as written.
    pub state_event: Option<String>,
    /// The `<state code=…>` attribute: the response code behind the transition.
    pub state_code: Option<u16>,
    /// `<duration>`: seconds since the FSM was created.
    pub duration: Option<u64>,
    /// `<local>`: the observed user's side.
    pub local: Option<Participant>,
    /// `<remote>`: the other party.
    pub remote: Option<Participant>,
}

impl Dialog {
    /// A dialog with only its id and state (the RFC 4235 §3.6 minimal form).
    pub fn new(id: impl Into<String>, state: DialogState) -> Self {
        Self {
            id: id.into(),
            call_id: None,
            local_tag: None,
            remote_tag: None,
            direction: None,
            state,
            state_event: None,
            state_code: None,
            duration: None,
            local: None,
            remote: None,
        }
    }
}

/// A `<local>` or `<remote>` element (RFC 4235 §4.1.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Participant {
    /// The `<identity>` elements (several are allowed: a SIP and a tel URI, say).
    pub identities: Vec<Identity>,
    /// The `<target>` element.
    pub target: Option<Target>,
}

/// An `<identity>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The URI, white space trimmed.
    pub uri: String,
    /// The `display` (or `display-name`) attribute.
    pub display: Option<String>,
}

/// A `<target>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `uri` attribute.
    pub uri: String,
    /// The `<param pname pval>` children, in order.
    pub params: Vec<TargetParam>,
}

/// A `<param>` of a target: a Contact header parameter such as `+sip.rendering`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetParam {
    /// `pname`.
    pub name: String,
    /// `pval` (or `pvalue`).
    pub value: String,
}

/// Something the parser accepted although RFC 4235 says otherwise (see the module
/// documentation for where each one is seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Quirk {
    /// The root declares no `urn:ietf:params:xml:ns:dialog-info` namespace.
    MissingNamespace,
    /// `notify-state` instead of `state` on the root.
    NotifyStateAttribute,
    /// No document state: read as full.
    MissingDocumentState,
    /// No `entity`.
    MissingEntity,
    /// No `version`.
    MissingVersion,
    /// Two dialogs share an `id`.
    DuplicateDialogId,
    /// A dialog without an `id` (or with an empty one).
    MissingDialogId,
    /// `<state reason=…>` instead of `event`.
    ReasonAttribute,
    /// `direction="receiver"`.
    ReceiverDirection,
    /// A direction that is neither initiator nor recipient (dropped).
    UnknownDirection,
    /// `display-name` instead of `display` on an identity.
    DisplayNameAttribute,
    /// `pvalue` instead of `pval` on a param.
    PvalueAttribute,
    /// A `<param>` outside its `<target>`.
    ParamOutsideTarget,
    /// An end tag that closes no open element.
    StrayEndTag,
    /// An end tag that closes more than the innermost element.
    MismatchedEndTag,
    /// A `<state code>` that is not a number from 0 to 65535 (dropped).
    BadStateCode,
    /// A `<duration>` that is not a number (dropped).
    BadDuration,
    /// A document or dialog state not written in lowercase.
    NonCanonicalCase,
}

impl Quirk {
    const ALL: [Quirk; 18] = [
        Quirk::MissingNamespace,
        Quirk::NotifyStateAttribute,
        Quirk::MissingDocumentState,
        Quirk::MissingEntity,
        Quirk::MissingVersion,
        Quirk::DuplicateDialogId,
        Quirk::MissingDialogId,
        Quirk::ReasonAttribute,
        Quirk::ReceiverDirection,
        Quirk::UnknownDirection,
        Quirk::DisplayNameAttribute,
        Quirk::PvalueAttribute,
        Quirk::ParamOutsideTarget,
        Quirk::StrayEndTag,
        Quirk::MismatchedEndTag,
        Quirk::BadStateCode,
        Quirk::BadDuration,
        Quirk::NonCanonicalCase,
    ];

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// The set of [`Quirk`]s one parse accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks(u32);

impl Quirks {
    /// Whether `quirk` was seen.
    pub fn contains(self, quirk: Quirk) -> bool {
        self.0 & quirk.bit() != 0
    }

    /// Whether the document was strictly as RFC 4235 wants it (as far as modelled).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The quirks seen, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Quirk> {
        Quirk::ALL.into_iter().filter(move |q| self.contains(*q))
    }

    fn insert(&mut self, quirk: Quirk) {
        self.0 |= quirk.bit();
    }
}

/// Why a body is not a dialog-info document the parser can understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogInfoError {
    /// Nothing but white space, a prolog or comments.
    #[error("the body holds no XML element")]
    NoElement,
    /// The first element is something else.
    #[error("the root element is <{0}>, not <dialog-info>")]
    NotDialogInfo(String),
    /// quick-xml could not tokenise the input.
    #[error("malformed XML at byte {offset}: {message}")]
    MalformedXml {
        /// Where the reader stopped.
        offset: u64,
        /// The reader's complaint (shortened).
        message: String,
    },
    /// The input ends inside this element.
    #[error("the document ends inside <{0}>")]
    Unterminated(String),
    /// `version` is not a decimal `u32`.
    #[error("version {0:?} is not a non-negative 32-bit decimal")]
    BadVersion(String),
    /// The document state is neither full nor partial.
    #[error("document state {0:?} is neither full nor partial")]
    BadDocumentState(String),
    /// A dialog has no `<state>`.
    #[error("dialog {id:?} has no <state>")]
    MissingDialogState {
        /// The dialog's id.
        id: String,
    },
    /// A dialog's state is not one of RFC 4235's.
    #[error("dialog {id:?}: {value:?} is not an RFC 4235 dialog state")]
    BadDialogState {
        /// The dialog's id.
        id: String,
        /// The state text (shortened).
        value: String,
    },
    /// More than [`MAX_DIALOGS`] dialogs.
    #[error("more than {MAX_DIALOGS} dialogs in one document")]
    TooManyDialogs,
    /// Elements nested deeper than [`MAX_DEPTH`].
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Parses a dialog-info body leniently (see the module documentation).
pub fn parse_dialog_info(body: &[u8]) -> Result<DialogInfo, DialogInfoError> {
    parse_dialog_info_noting_quirks(body).map(|(doc, _)| doc)
}

/// [`parse_dialog_info`], also telling which [`Quirk`]s the document needed.
pub fn parse_dialog_info_noting_quirks(
    body: &[u8],
) -> Result<(DialogInfo, Quirks), DialogInfoError> {
    let mut parser = Parser::default();
    xml::read_document(body, &mut parser)?;
    parser.finish()
}

impl xml::ElementSink for Parser {
    type Error = DialogInfoError;

    fn open(&mut self, start: &BytesStart<'_>) -> Result<(), DialogInfoError> {
        Parser::open(self, start)
    }

    fn close_innermost(&mut self) -> Result<(), DialogInfoError> {
        Parser::close_innermost(self)
    }

    fn close_named(&mut self, name: &[u8]) -> Result<(), DialogInfoError> {
        Parser::close_named(self, name)
    }

    fn text(&mut self) -> Option<&mut String> {
        self.wants_text().then_some(&mut self.text)
    }

    fn done(&self) -> bool {
        self.root_closed
    }

    fn malformed(offset: u64, message: String) -> DialogInfoError {
        DialogInfoError::MalformedXml { offset, message }
    }
}

/// The `version` of a dialog-info body, read from its root element alone (much cheaper
/// than [`parse_dialog_info`] on a large body): `None` when the first element is not
/// `<dialog-info>` or its version is missing or not a decimal `u32`. Whenever
/// [`parse_dialog_info`] accepts the body, the two agree.
pub fn peek_dialog_info_version(body: &[u8]) -> Option<u32> {
    let mut reader = xml::lenient_reader(body);
    loop {
        match reader.read_event().ok()? {
            Event::Start(start) | Event::Empty(start) => {
                if !xml::name_is(start.local_name().as_ref(), "dialog-info") {
                    return None;
                }
                return xml::attributes(&start)
                    .find(|attr| xml::attr_is(attr, "version"))
                    .and_then(|attr| xml::attr_value(&attr).trim().parse().ok());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Whether a dialog-info body says `state="partial"` on its root element (read from the
/// root alone, like [`peek_dialog_info_version`]).
pub fn peek_dialog_info_is_partial(body: &[u8]) -> bool {
    let mut reader = xml::lenient_reader(body);
    loop {
        match reader.read_event() {
            Ok(Event::Start(start) | Event::Empty(start)) => {
                return xml::name_is(start.local_name().as_ref(), "dialog-info")
                    && xml::attributes(&start).any(|attr| {
                        // the raw bytes: no allocation for the full documents of every
                        // passing NOTIFY
                        xml::attr_is(&attr, "state")
                            && attr.value.trim_ascii().eq_ignore_ascii_case(b"partial")
                    });
            }
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// An open element the parser follows, innermost last.
#[derive(Debug)]
enum Frame {
    Root,
    Dialog,
    State,
    Duration,
    Local,
    Remote,
    Identity,
    Target,
    /// A `<param>`, or any element the model does not hold (kept by name so its end
    /// tag can be matched).
    Other(Box<[u8]>),
}

impl Frame {
    fn name_matches(&self, name: &[u8]) -> bool {
        let want = match self {
            Self::Root => "dialog-info",
            Self::Dialog => "dialog",
            Self::State => "state",
            Self::Duration => "duration",
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Identity => "identity",
            Self::Target => "target",
            Self::Other(own) => return own.eq_ignore_ascii_case(name),
        };
        xml::name_is(name, want)
    }

    fn describe(&self) -> String {
        match self {
            Self::Root => "dialog-info".into(),
            Self::Dialog => "dialog".into(),
            Self::State => "state".into(),
            Self::Duration => "duration".into(),
            Self::Local => "local".into(),
            Self::Remote => "remote".into(),
            Self::Identity => "identity".into(),
            Self::Target => "target".into(),
            Self::Other(name) => xml::name_excerpt(name),
        }
    }
}

/// The root's attributes, once read.
#[derive(Debug)]
struct Header {
    version: Option<u32>,
    state: DocumentState,
    entity: Option<String>,
}

/// A `<dialog>` being read.
#[derive(Debug, Default)]
struct DialogDraft {
    id: Option<String>,
    call_id: Option<String>,
    local_tag: Option<String>,
    remote_tag: Option<String>,
    direction: Option<Direction>,
    state: Option<DialogState>,
    state_event: Option<String>,
    state_code: Option<u16>,
    duration: Option<u64>,
    local: Option<Participant>,
    remote: Option<Participant>,
}

#[derive(Debug, Default)]
struct Parser {
    stack: Vec<Frame>,
    header: Option<Header>,
    dialogs: Vec<Dialog>,
    dialog: Option<DialogDraft>,
    /// The `<local>` or `<remote>` being read.
    participant: Option<Participant>,
    /// The `display` of the `<identity>` being read.
    identity_display: Option<String>,
    /// Character data of the innermost `<state>`, `<duration>` or `<identity>`.
    text: String,
    quirks: Quirks,
    root_closed: bool,
}

impl Parser {
    /// Whether character data now belongs to a modelled element.
    fn wants_text(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::State | Frame::Duration | Frame::Identity)
        )
    }

    fn open(&mut self, start: &BytesStart<'_>) -> Result<(), DialogInfoError> {
        let local = start.local_name();
        let name = local.as_ref();
        let Some(parent) = self.stack.last() else {
            if !xml::name_is(name, "dialog-info") {
                return Err(DialogInfoError::NotDialogInfo(xml::name_excerpt(name)));
            }
            self.open_root(start)?;
            self.stack.push(Frame::Root);
            return Ok(());
        };
        if self.stack.len() >= MAX_DEPTH {
            return Err(DialogInfoError::TooDeep);
        }
        let frame = match parent {
            Frame::Root if xml::name_is(name, "dialog") => {
                self.open_dialog(start);
                Frame::Dialog
            }
            Frame::Dialog if xml::name_is(name, "state") => {
                self.open_state(start);
                Frame::State
            }
            Frame::Dialog if xml::name_is(name, "duration") => {
                self.text.clear();
                Frame::Duration
            }
            Frame::Dialog if xml::name_is(name, "local") => {
                self.participant = Some(Participant::default());
                Frame::Local
            }
            Frame::Dialog if xml::name_is(name, "remote") => {
                self.participant = Some(Participant::default());
                Frame::Remote
            }
            Frame::Local | Frame::Remote if xml::name_is(name, "identity") => {
                self.open_identity(start);
                Frame::Identity
            }
            Frame::Local | Frame::Remote if xml::name_is(name, "target") => {
                self.open_target(start);
                Frame::Target
            }
            Frame::Local | Frame::Remote if xml::name_is(name, "param") => {
                // RFC 4235 §6.2: `<target …/>` self-closed, its params following it
                if self
                    .participant
                    .as_ref()
                    .is_some_and(|p| p.target.is_some())
                {
                    self.quirks.insert(Quirk::ParamOutsideTarget);
                    self.add_param(start);
                }
                Frame::Other(name.into())
            }
            Frame::Target if xml::name_is(name, "param") => {
                self.add_param(start);
                Frame::Other(name.into())
            }
            _ => Frame::Other(name.into()),
        };
        self.stack.push(frame);
        Ok(())
    }

    fn open_root(&mut self, start: &BytesStart<'_>) -> Result<(), DialogInfoError> {
        if !xml::is_namespace_declaration(start, DIALOG_INFO_NAMESPACE) {
            self.quirks.insert(Quirk::MissingNamespace);
        }
        let mut version = None;
        let mut state = None;
        let mut notify_state = None;
        let mut entity = None;
        for attr in xml::attributes(start) {
            if xml::attr_is(&attr, "version") {
                version.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "state") {
                state.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "notify-state") {
                notify_state.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "entity") {
                entity.get_or_insert_with(|| xml::attr_value(&attr));
            }
        }
        let version = match version {
            Some(text) => Some(
                text.trim()
                    .parse::<u32>()
                    .map_err(|_| DialogInfoError::BadVersion(xml::excerpt(&text)))?,
            ),
            None => {
                self.quirks.insert(Quirk::MissingVersion);
                None
            }
        };
        let state_text = match (state, notify_state) {
            (Some(text), _) => Some(text),
            (None, Some(text)) => {
                self.quirks.insert(Quirk::NotifyStateAttribute);
                Some(text)
            }
            (None, None) => None,
        };
        let state = match state_text {
            None => {
                self.quirks.insert(Quirk::MissingDocumentState);
                DocumentState::Full
            }
            Some(text) => {
                let trimmed = text.trim();
                let state = [DocumentState::Full, DocumentState::Partial]
                    .into_iter()
                    .find(|s| trimmed.eq_ignore_ascii_case(s.as_str()))
                    .ok_or_else(|| DialogInfoError::BadDocumentState(xml::excerpt(&text)))?;
                if text != state.as_str() {
                    self.quirks.insert(Quirk::NonCanonicalCase);
                }
                state
            }
        };
        if entity.is_none() {
            self.quirks.insert(Quirk::MissingEntity);
        }
        self.header = Some(Header {
            version,
            state,
            entity,
        });
        Ok(())
    }

    fn open_dialog(&mut self, start: &BytesStart<'_>) {
        let mut draft = DialogDraft::default();
        for attr in xml::attributes(start) {
            if xml::attr_is(&attr, "id") {
                draft.id.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "call-id") {
                draft.call_id.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "local-tag") {
                draft
                    .local_tag
                    .get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "remote-tag") {
                draft
                    .remote_tag
                    .get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "direction") && draft.direction.is_none() {
                draft.direction = self.direction(&xml::attr_value(&attr));
            }
        }
        self.dialog = Some(draft);
    }

    fn direction(&mut self, value: &str) -> Option<Direction> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("initiator") {
            Some(Direction::Initiator)
        } else if value.eq_ignore_ascii_case("recipient") {
            Some(Direction::Recipient)
        } else if value.eq_ignore_ascii_case("receiver") {
            self.quirks.insert(Quirk::ReceiverDirection);
            Some(Direction::Recipient)
        } else {
            self.quirks.insert(Quirk::UnknownDirection);
            None
        }
    }

    fn open_state(&mut self, start: &BytesStart<'_>) {
        self.text.clear();
        let mut event = None;
        let mut reason = None;
        let mut code = None;
        for attr in xml::attributes(start) {
            if xml::attr_is(&attr, "event") {
                event.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "reason") {
                reason.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "code") {
                code.get_or_insert_with(|| xml::attr_value(&attr));
            }
        }
        if event.is_none() && reason.is_some() {
            self.quirks.insert(Quirk::ReasonAttribute);
        }
        let code = code.and_then(|text| match text.trim().parse::<u16>() {
            Ok(code) => Some(code),
            Err(_) => {
                self.quirks.insert(Quirk::BadStateCode);
                None
            }
        });
        if let Some(draft) = self.dialog.as_mut() {
            draft.state_event = event.or(reason);
            draft.state_code = code;
        }
    }

    fn open_identity(&mut self, start: &BytesStart<'_>) {
        self.text.clear();
        let mut display = None;
        let mut display_name = None;
        for attr in xml::attributes(start) {
            if xml::attr_is(&attr, "display") {
                display.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "display-name") {
                display_name.get_or_insert_with(|| xml::attr_value(&attr));
            }
        }
        if display.is_none() && display_name.is_some() {
            self.quirks.insert(Quirk::DisplayNameAttribute);
        }
        self.identity_display = display.or(display_name);
    }

    fn open_target(&mut self, start: &BytesStart<'_>) {
        let uri = xml::attributes(start)
            .find(|attr| xml::attr_is(attr, "uri"))
            .map(|attr| xml::attr_value(&attr))
            .unwrap_or_default();
        if let Some(participant) = self.participant.as_mut() {
            participant.target = Some(Target {
                uri,
                params: Vec::new(),
            });
        }
    }

    fn add_param(&mut self, start: &BytesStart<'_>) {
        let mut name = None;
        let mut pval = None;
        let mut pvalue = None;
        for attr in xml::attributes(start) {
            if xml::attr_is(&attr, "pname") {
                name.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "pval") {
                pval.get_or_insert_with(|| xml::attr_value(&attr));
            } else if xml::attr_is(&attr, "pvalue") {
                pvalue.get_or_insert_with(|| xml::attr_value(&attr));
            }
        }
        if pval.is_none() && pvalue.is_some() {
            self.quirks.insert(Quirk::PvalueAttribute);
        }
        let Some(name) = name else { return };
        let Some(target) = self
            .participant
            .as_mut()
            .and_then(|participant| participant.target.as_mut())
        else {
            return;
        };
        // RFC 4235 §4.1.6.2: a parameter without a value reads "true"
        let value = pval.or(pvalue).unwrap_or_else(|| "true".to_owned());
        target.params.push(TargetParam { name, value });
    }

    /// Closes the innermost open element (after a self-closed tag).
    fn close_innermost(&mut self) -> Result<(), DialogInfoError> {
        match self.stack.pop() {
            Some(frame) => self.finish_frame(frame),
            None => Ok(()),
        }
    }

    /// Closes the element `name` and any open inside it; ignores an end tag that
    /// matches no open element.
    fn close_named(&mut self, name: &[u8]) -> Result<(), DialogInfoError> {
        let Some(index) = self.stack.iter().rposition(|f| f.name_matches(name)) else {
            self.quirks.insert(Quirk::StrayEndTag);
            return Ok(());
        };
        if index + 1 != self.stack.len() {
            self.quirks.insert(Quirk::MismatchedEndTag);
        }
        while self.stack.len() > index {
            self.close_innermost()?;
        }
        Ok(())
    }

    fn finish_frame(&mut self, frame: Frame) -> Result<(), DialogInfoError> {
        match frame {
            Frame::Root => self.root_closed = true,
            Frame::Dialog => self.finish_dialog()?,
            Frame::State => self.finish_state()?,
            Frame::Duration => {
                let text = std::mem::take(&mut self.text);
                match text.trim().parse::<u64>() {
                    Ok(seconds) => {
                        if let Some(draft) = self.dialog.as_mut() {
                            draft.duration = Some(seconds);
                        }
                    }
                    Err(_) => self.quirks.insert(Quirk::BadDuration),
                }
            }
            Frame::Local | Frame::Remote => {
                let participant = self.participant.take();
                if let Some(draft) = self.dialog.as_mut() {
                    if matches!(frame, Frame::Local) {
                        draft.local = participant;
                    } else {
                        draft.remote = participant;
                    }
                }
            }
            Frame::Identity => {
                let text = std::mem::take(&mut self.text);
                let display = self.identity_display.take();
                if let Some(participant) = self.participant.as_mut() {
                    participant.identities.push(Identity {
                        uri: text.trim().to_owned(),
                        display,
                    });
                }
            }
            Frame::Target | Frame::Other(_) => {}
        }
        Ok(())
    }

    fn finish_state(&mut self) -> Result<(), DialogInfoError> {
        let text = std::mem::take(&mut self.text);
        let Some(draft) = self.dialog.as_mut() else {
            return Ok(());
        };
        match DialogState::from_text(&text) {
            Some(state) => {
                if text.trim() != state.as_str() {
                    self.quirks.insert(Quirk::NonCanonicalCase);
                }
                draft.state = Some(state);
                Ok(())
            }
            None => Err(DialogInfoError::BadDialogState {
                id: xml::excerpt(draft.id.as_deref().unwrap_or_default()),
                value: xml::excerpt(text.trim()),
            }),
        }
    }

    fn finish_dialog(&mut self) -> Result<(), DialogInfoError> {
        let Some(draft) = self.dialog.take() else {
            return Ok(());
        };
        let id = match draft.id {
            Some(id) if !id.is_empty() => id,
            _ => {
                self.quirks.insert(Quirk::MissingDialogId);
                made_up_id(
                    &draft.call_id,
                    &draft.local_tag,
                    &draft.remote_tag,
                    self.dialogs.len(),
                )
            }
        };
        let Some(state) = draft.state else {
            return Err(DialogInfoError::MissingDialogState {
                id: xml::excerpt(&id),
            });
        };
        if self.dialogs.len() >= MAX_DIALOGS {
            return Err(DialogInfoError::TooManyDialogs);
        }
        if self.dialogs.iter().any(|d| d.id == id) {
            self.quirks.insert(Quirk::DuplicateDialogId);
        }
        self.dialogs.push(Dialog {
            id,
            call_id: draft.call_id,
            local_tag: draft.local_tag,
            remote_tag: draft.remote_tag,
            direction: draft.direction,
            state,
            state_event: draft.state_event,
            state_code: draft.state_code,
            duration: draft.duration,
            local: draft.local,
            remote: draft.remote,
        });
        Ok(())
    }

    fn finish(self) -> Result<(DialogInfo, Quirks), DialogInfoError> {
        let Some(header) = self.header else {
            return Err(DialogInfoError::NoElement);
        };
        if !self.root_closed {
            let innermost = self
                .stack
                .last()
                .map_or_else(|| "dialog-info".into(), Frame::describe);
            return Err(DialogInfoError::Unterminated(innermost));
        }
        Ok((
            DialogInfo {
                version: header.version,
                state: header.state,
                entity: header.entity,
                dialogs: self.dialogs,
            },
            self.quirks,
        ))
    }
}

/// An id for a dialog that came without one: its call-id and tags when it has them,
/// otherwise its position in the document.
fn made_up_id(
    call_id: &Option<String>,
    local_tag: &Option<String>,
    remote_tag: &Option<String>,
    position: usize,
) -> String {
    match call_id {
        Some(call_id) if !call_id.is_empty() => format!(
            "{call_id};{};{}",
            local_tag.as_deref().unwrap_or_default(),
            remote_tag.as_deref().unwrap_or_default()
        ),
        _ => format!("dialog-{position}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (DialogInfo, Quirks) {
        parse_dialog_info_noting_quirks(text.as_bytes()).unwrap()
    }

    fn quirks(q: Quirks) -> Vec<Quirk> {
        q.iter().collect()
    }

    const RFC_TRYING: &str = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
             version="0"
             state="full"
             entity="sip:alice@example.com">
  <dialog id="as7d900as8" call-id="a84b4c76e66710"
          local-tag="1928301774" direction="initiator">
    <state>trying</state>
  </dialog>
</dialog-info>
"#;

    #[test]
    fn rfc_4235_basic_example_reads_exactly() {
        let (doc, q) = parse(RFC_TRYING);
        assert!(q.is_empty(), "{:?}", quirks(q));
        assert_eq!(
            doc,
            DialogInfo {
                version: Some(0),
                state: DocumentState::Full,
                entity: Some("sip:alice@example.com".into()),
                dialogs: vec![Dialog {
                    call_id: Some("a84b4c76e66710".into()),
                    local_tag: Some("1928301774".into()),
                    direction: Some(Direction::Initiator),
                    ..Dialog::new("as7d900as8", DialogState::Trying)
                }],
            }
        );
        assert!(doc.shows_call());
    }

    #[test]
    fn section_4_1_notify_state_and_section_4_2_missing_entity() {
        let (doc, q) = parse(
            r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
             version="0" notify-state="full"
             entity="sip:alice@example.com">
</dialog-info>"#,
        );
        assert_eq!(doc.state, DocumentState::Full);
        assert!(doc.dialogs.is_empty() && !doc.shows_call());
        assert_eq!(quirks(q), [Quirk::NotifyStateAttribute]);

        // §4.2, with its xsi attributes, no entity, display names and params
        let (doc, q) = parse(
            r#"<?xml version="1.0" encoding="UTF-8"?>
   <dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xsi:schemaLocation="urn:ietf:params:xml:ns:dialog-info"
     version="1" state="full">
     <dialog id="123456">
        <state>confirmed</state>
        <duration>274</duration>
        <local>
          <identity display="Alice">sip:alice@example.com</identity>
          <target uri="sip:alice@pc33.example.com">
            <param pname="isfocus" pval="true"/>
            <param pname="class" pval="personal"/>
          </target>
        </local>
        <remote>
          <identity display="Bob">sip:bob@example.org</identity>
          <target uri="sip:bobster@phone21.example.org"/>
        </remote>
     </dialog>
   </dialog-info>"#,
        );
        assert_eq!(quirks(q), [Quirk::MissingEntity]);
        assert_eq!(doc.entity, None);
        let dialog = &doc.dialogs[0];
        assert_eq!(dialog.duration, Some(274));
        let local = dialog.local.as_ref().unwrap();
        assert_eq!(
            local.identities,
            [Identity {
                uri: "sip:alice@example.com".into(),
                display: Some("Alice".into())
            }]
        );
        let target = local.target.as_ref().unwrap();
        assert_eq!(target.uri, "sip:alice@pc33.example.com");
        assert_eq!(
            target.params,
            [
                TargetParam {
                    name: "isfocus".into(),
                    value: "true".into()
                },
                TargetParam {
                    name: "class".into(),
                    value: "personal".into()
                }
            ]
        );
        let remote = dialog.remote.as_ref().unwrap();
        assert_eq!(remote.identities[0].display.as_deref(), Some("Bob"));
        assert_eq!(
            remote.target.as_ref().map(|t| t.uri.as_str()),
            Some("sip:bobster@phone21.example.org")
        );
    }

    #[test]
    fn section_6_2_reason_receiver_and_param_after_self_closed_target() {
        let (doc, q) = parse(
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
             version="5" state="partial" entity="sip:alice@example.com">
  <dialog id="zxcvbnm3" call-id="a84b4c76e66710" local-tag="1928301774"
          remote-tag="8736347" direction="initiator">
    <state reason="replaced">terminated</state>
  </dialog>
  <dialog id="sfhjsjk12" call-id="o34oii1" local-tag="8903j4"
          remote-tag="78cjkus" direction="receiver">
    <state reason="replaced">confirmed</state>
    <replaces call-id="a84b4c76e66710" local-tag="1928301774" remote-tag="8736347"/>
    <referred-by>
      sip:bob-is-not-here@vm.example.net
    </referred-by>
    <local>
      <target uri="sip:alice@pc33.example.com"/>
        <param pname="+sip.rendering" pval="yes"/>
    </local>
    <remote>
      <identity display="Cathy Jones">
         sip:cjones@example.net
      </identity>
    </remote>
  </dialog>
</dialog-info>"#,
        );
        assert_eq!(
            quirks(q),
            [
                Quirk::ReasonAttribute,
                Quirk::ReceiverDirection,
                Quirk::ParamOutsideTarget
            ]
        );
        assert_eq!(doc.state, DocumentState::Partial);
        assert_eq!(doc.dialogs[0].state_event.as_deref(), Some("replaced"));
        let cathy = &doc.dialogs[1];
        assert_eq!(cathy.direction, Some(Direction::Recipient));
        assert_eq!(cathy.state, DialogState::Confirmed);
        let target = cathy.local.as_ref().unwrap().target.as_ref().unwrap();
        assert_eq!(target.params.len(), 1);
        assert_eq!(target.params[0].name, "+sip.rendering");
        assert_eq!(
            cathy.remote.as_ref().unwrap().identities[0].uri,
            "sip:cjones@example.net"
        );
    }

    #[test]
    fn section_6_2_stray_end_tag_is_ignored() {
        let (doc, q) = parse(
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
             version="7" state="partial" entity="sip:alice@example.com">
  <dialog id="sfhjsjk12" call-id="o34oii1" local-tag="8903j4"
          remote-tag="78cjkus" direction="receiver">
    <state>confirmed</state>
    <local>
      <target uri="sip:alice@pc33.example.com"/>
        <param pname="+sip.rendering" pval="no"/>
      </target>
    </local>
  </dialog>
</dialog-info>"#,
        );
        assert!(q.contains(Quirk::StrayEndTag) && q.contains(Quirk::ParamOutsideTarget));
        let local = doc.dialogs[0].local.as_ref().unwrap();
        assert_eq!(local.target.as_ref().unwrap().params[0].value, "no");
    }

    #[test]
    fn duplicate_ids_are_kept_in_order() {
        let (doc, q) = parse(
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="2" state="full" entity="sip:alice@example.com">
  <dialog id="as7d900as8" remote-tag="456887766"><state>early</state></dialog>
  <dialog id="as7d900as8" remote-tag="hh76a"><state>early</state></dialog>
</dialog-info>"#,
        );
        assert_eq!(quirks(q), [Quirk::DuplicateDialogId]);
        assert_eq!(doc.dialogs.len(), 2);
        assert_eq!(doc.dialogs[1].remote_tag.as_deref(), Some("hh76a"));
    }

    #[test]
    fn prefixes_case_white_space_and_display_name() {
        let (doc, q) = parse(
            "\u{FEFF}\r\n  <di:dialog-info xmlns:di='urn:ietf:params:xml:ns:dialog-info' \
             version=' 0007 ' state='FULL' entity='sip:201@pbx'>\r\n\
             <di:dialog id='201' direction=' Recipient '><!-- ringing -->\
             <di:state code='180'> Early </di:state>\
             <di:local><di:identity display-name='Desk &amp; co'>\n sip:201@pbx \n</di:identity>\
             <di:target uri='sip:201@10.0.0.11'><di:param pname='+sip.rendering' pvalue='no'/></di:target>\
             </di:local><x:extension xmlns:x='urn:x'><state>confirmed</state></x:extension>\
             </di:dialog></di:dialog-info>trailing junk <",
        );
        assert_eq!(
            quirks(q),
            [
                Quirk::DisplayNameAttribute,
                Quirk::PvalueAttribute,
                Quirk::NonCanonicalCase
            ]
        );
        assert_eq!(doc.version, Some(7));
        let dialog = &doc.dialogs[0];
        assert_eq!(dialog.state, DialogState::Early);
        assert_eq!(dialog.state_code, Some(180));
        assert_eq!(dialog.direction, Some(Direction::Recipient));
        let local = dialog.local.as_ref().unwrap();
        assert_eq!(local.identities[0].uri, "sip:201@pbx");
        assert_eq!(local.identities[0].display.as_deref(), Some("Desk & co"));
        assert_eq!(local.target.as_ref().unwrap().params[0].value, "no");
    }

    #[test]
    fn asterisk_and_kamailio_shapes() {
        let (doc, q) = parse(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="9" state="full" entity="sip:103@192.168.1.10:5060"><dialog id="103"><state>confirmed</state></dialog></dialog-info>"#,
        );
        assert!(q.is_empty());
        assert_eq!(doc.dialogs, [Dialog::new("103", DialogState::Confirmed)]);

        // no namespace, no version, no state: still understood
        let (doc, q) = parse(
            "<dialog-info><dialog direction=\"recipient\"><state>terminated</state></dialog></dialog-info>",
        );
        assert_eq!(
            quirks(q),
            [
                Quirk::MissingNamespace,
                Quirk::MissingDocumentState,
                Quirk::MissingEntity,
                Quirk::MissingVersion,
                Quirk::MissingDialogId
            ]
        );
        assert_eq!(doc.version, None);
        assert_eq!(doc.dialogs[0].id, "dialog-0");
    }

    #[test]
    fn odd_values_are_dropped_not_fatal() {
        let (doc, q) = parse(
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="full" entity="e">
<dialog id="" call-id="c1" direction="sideways"><state code="1x">confirmed</state><duration>soon</duration>
<local><param pname="orphan" pval="1"/><identity>sip:a@b</identity></local></dialog></dialog-info>"#,
        );
        assert_eq!(
            quirks(q),
            [
                Quirk::MissingDialogId,
                Quirk::UnknownDirection,
                Quirk::BadStateCode,
                Quirk::BadDuration
            ]
        );
        let dialog = &doc.dialogs[0];
        assert_eq!(dialog.id, "c1;;");
        assert_eq!(
            (dialog.state_code, dialog.duration, dialog.direction),
            (None, None, None)
        );
        assert_eq!(dialog.local.as_ref().unwrap().target, None);
    }

    #[test]
    fn mismatched_end_tag_closes_inner_elements() {
        let (doc, q) = parse(
            r#"<dialog-info version="1" state="full" entity="e"><dialog id="a"><state>early</state><local><identity>sip:x</local></dialog></dialog-info>"#,
        );
        assert!(q.contains(Quirk::MismatchedEndTag));
        assert_eq!(
            doc.dialogs[0].local.as_ref().unwrap().identities[0].uri,
            "sip:x"
        );
    }

    #[test]
    fn what_cannot_be_understood_is_a_typed_error() {
        let err = |text: &str| parse_dialog_info(text.as_bytes()).unwrap_err();
        assert_eq!(err(""), DialogInfoError::NoElement);
        assert_eq!(
            err("  <?xml version=\"1.0\"?> <!-- x -->"),
            DialogInfoError::NoElement
        );
        assert_eq!(
            err("<presence/>"),
            DialogInfoError::NotDialogInfo("presence".into())
        );
        assert_eq!(
            err("<dialog-info version=\"-1\" state=\"full\"/>"),
            DialogInfoError::BadVersion("-1".into())
        );
        assert_eq!(
            err("<dialog-info version=\"4294967296\" state=\"full\"/>"),
            DialogInfoError::BadVersion("4294967296".into())
        );
        assert_eq!(
            err("<dialog-info version=\"1\" state=\"some\"/>"),
            DialogInfoError::BadDocumentState("some".into())
        );
        assert_eq!(
            err("<dialog-info version=\"1\" state=\"full\"><dialog id=\"a\"/></dialog-info>"),
            DialogInfoError::MissingDialogState { id: "a".into() }
        );
        assert_eq!(
            err(
                "<dialog-info version=\"1\" state=\"full\"><dialog id=\"a\"><state>busy</state></dialog></dialog-info>"
            ),
            DialogInfoError::BadDialogState {
                id: "a".into(),
                value: "busy".into()
            }
        );
        assert_eq!(
            err("<dialog-info version=\"1\" state=\"full\"><dialog id=\"a\"><state>early"),
            DialogInfoError::Unterminated("state".into())
        );
        assert!(matches!(
            err("<dialog-info version=\"1\" <dialog"),
            DialogInfoError::MalformedXml { .. }
        ));
        let many = format!(
            "<dialog-info version=\"1\" state=\"full\">{}</dialog-info>",
            "<dialog id=\"x\"><state>early</state></dialog>".repeat(MAX_DIALOGS + 1)
        );
        assert_eq!(err(&many), DialogInfoError::TooManyDialogs);
        let deep = format!(
            "<dialog-info version=\"1\" state=\"full\">{}",
            "<x>".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(err(&deep), DialogInfoError::TooDeep);
        // error values stay short whatever the input
        let long = format!("<dialog-info version=\"{}\"/>", "9".repeat(10_000));
        assert!(err(&long).to_string().len() < 200);
    }

    #[test]
    fn not_utf8_and_unknown_entities_are_tolerated() {
        let (doc, _) = parse_dialog_info_noting_quirks(
            b"<dialog-info version=\"1\" state=\"full\" entity=\"sip:\xe9t\xe9@pbx\">\
              <dialog id=\"a&foo;b\"><state>early</state><local><identity>sip:&bar;&#x41;&lt;</identity></local>\
              </dialog></dialog-info>",
        )
        .unwrap();
        assert_eq!(doc.entity.as_deref(), Some("sip:\u{FFFD}t\u{FFFD}@pbx"));
        assert_eq!(doc.dialogs[0].id, "a&foo;b");
        assert_eq!(
            doc.dialogs[0].local.as_ref().unwrap().identities[0].uri,
            "sip:&bar;A<"
        );
    }

    #[test]
    fn the_version_can_be_peeked() {
        assert_eq!(peek_dialog_info_version(RFC_TRYING.as_bytes()), Some(0));
        assert_eq!(
            peek_dialog_info_version(b"<d:dialog-info version=' 12 '><dialog"),
            Some(12)
        );
        assert_eq!(peek_dialog_info_version(b"<presence version=\"1\"/>"), None);
        assert_eq!(
            peek_dialog_info_version(b"<dialog-info state=\"full\"/>"),
            None
        );
        assert_eq!(peek_dialog_info_version(b""), None);
    }

    #[test]
    fn parses_through_from_str() {
        let doc: DialogInfo = RFC_TRYING.parse().unwrap();
        assert_eq!(doc.dialogs.len(), 1);
    }
}
