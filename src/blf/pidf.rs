//! BLF for phones that subscribe with `Event: presence` (`../shared/reference/sip.md`
//! §2.8; Yealink with `account.X.blf.subscribe_event=1`): PIDF (RFC 3863) documents
//! with RPID activities (RFC 4480), read leniently and written strictly.
//!
//! - [`parse_pidf`] reads the presentity, each tuple's `<basic>` open/closed, every
//!   `<note>` (presence, tuple, person or activities level) and every RPID activity,
//!   by local name (any prefix, any or no namespace), ASCII case-insensitively. Devices,
//!   contacts, timestamps, moods, places and other extensions are skipped. Stray end
//!   tags are ignored, as in dialog-info.
//! - [`render_pidf`] writes a model: well-formed, the PIDF namespace as default, `dm`
//!   and `rpid` prefixes for the data model and RPID, schema order (tuples, notes, then
//!   the person, RFC 3863 §4.4 and RFC 4480).
//! - [`render_presence_for_phone`]: while the extension is Teams-busy, a document that
//!   shows it on the phone ([`teams_busy_presence`]); otherwise the PBX's body exactly as
//!   it came.
//!
//! How "busy" is written: `basic` stays `open` (Asterisk keeps it open while in use and
//! closes it only for unavailable, sip.md §2.8), the RPID activity is `on-the-phone`
//! and the note is `On the phone`, the two signals Asterisk's PIDF/eyebeam bodies carry
//! for an extension in a call. Not `busy`: the observer reads an RPID `busy` as DND
//! (`src/observe/dnd.rs`).

use std::borrow::Cow;

use quick_xml::events::BytesStart;

use super::render::{TEAMS_DIALOG_PREFIX, WatchedExtension};
use super::xml;

/// The PIDF namespace (RFC 3863).
pub const PIDF_NAMESPACE: &str = "urn:ietf:params:xml:ns:pidf";
/// The PIDF data-model namespace (RFC 4479), prefix `dm`.
pub const DATA_MODEL_NAMESPACE: &str = "urn:ietf:params:xml:ns:pidf:data-model";
/// The RPID namespace (RFC 4480), prefix `rpid`.
pub const RPID_NAMESPACE: &str = "urn:ietf:params:xml:ns:pidf:rpid";
/// The PIDF body type (RFC 3863).
pub const PIDF_CONTENT_TYPE: &str = "application/pidf+xml";

/// The note a Teams-busy document carries.
pub const ON_THE_PHONE_NOTE: &str = "On the phone";

/// The most tuples, notes and activities (each) one document may hold.
pub const MAX_PIDF_ITEMS: usize = 64;

/// The deepest element nesting the parser follows.
const MAX_PIDF_DEPTH: usize = 32;

/// A tuple's `<basic>` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Basic {
    /// Reachable.
    Open,
    /// Not reachable.
    Closed,
}

impl Basic {
    /// `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// An RPID activity (RFC 4480 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Activity {
    /// `on-the-phone`.
    OnThePhone,
    /// `busy`.
    Busy,
    /// `away`.
    Away,
    /// `meeting`.
    Meeting,
    /// Any other activity element, by its local name as written (`lunch`, `unknown`).
    Named(String),
    /// `<other>text</other>`: the text.
    Other(String),
}

impl Activity {
    fn from_element(name: &str) -> Self {
        [Self::OnThePhone, Self::Busy, Self::Away, Self::Meeting]
            .into_iter()
            .find(|a| {
                a.element_name()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .unwrap_or_else(|| Self::Named(name.to_owned()))
    }

    /// The element's local name, for every activity but [`Activity::Other`].
    fn element_name(&self) -> Option<&str> {
        match self {
            Self::OnThePhone => Some("on-the-phone"),
            Self::Busy => Some("busy"),
            Self::Away => Some("away"),
            Self::Meeting => Some("meeting"),
            Self::Named(name) => Some(name),
            Self::Other(_) => None,
        }
    }
}

/// One PIDF `<tuple>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceTuple {
    /// The `id` attribute (may be empty when the document had none).
    pub id: String,
    /// Its `<status><basic>`, when given and readable.
    pub basic: Option<Basic>,
}

/// One `application/pidf+xml` document, as far as BLF needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceDocument {
    /// The presentity (`entity`).
    pub entity: Option<String>,
    /// The tuples, in order.
    pub tuples: Vec<PresenceTuple>,
    /// Every `<note>`, trimmed, in document order.
    pub notes: Vec<String>,
    /// Every RPID activity, in document order.
    pub activities: Vec<Activity>,
}

impl PresenceDocument {
    /// Whether the document shows the presentity on the phone or busy: an
    /// `on-the-phone` or `busy` activity, or a note reading "On the phone".
    pub fn shows_busy(&self) -> bool {
        self.activities
            .iter()
            .any(|a| matches!(a, Activity::OnThePhone | Activity::Busy))
            || self
                .notes
                .iter()
                .any(|n| n.trim().eq_ignore_ascii_case(ON_THE_PHONE_NOTE))
    }
}

/// Why a body is not a PIDF document the parser can understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    /// Nothing but white space, a prolog or comments.
    #[error("the body holds no XML element")]
    NoElement,
    /// The first element is something else.
    #[error("the root element is <{0}>, not <presence>")]
    NotPresence(String),
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
    /// More than [`MAX_PIDF_ITEMS`] tuples, notes or activities.
    #[error("more than {MAX_PIDF_ITEMS} tuples, notes or activities")]
    TooManyItems,
    /// Elements nested too deep.
    #[error("elements nested deeper than {MAX_PIDF_DEPTH}")]
    TooDeep,
}

/// An open element, innermost last.
#[derive(Debug)]
enum Frame {
    Presence,
    Tuple,
    Status,
    Basic,
    Note,
    Activities,
    /// `<other>` inside activities: its text is the activity.
    OtherActivity,
    /// Anything else (and the activity elements once recorded), by name.
    Other(Box<[u8]>),
}

impl Frame {
    fn name_matches(&self, name: &[u8]) -> bool {
        let want = match self {
            Self::Presence => "presence",
            Self::Tuple => "tuple",
            Self::Status => "status",
            Self::Basic => "basic",
            Self::Note => "note",
            Self::Activities => "activities",
            Self::OtherActivity => "other",
            Self::Other(own) => return own.eq_ignore_ascii_case(name),
        };
        xml::name_is(name, want)
    }

    fn describe(&self) -> String {
        match self {
            Self::Presence => "presence".into(),
            Self::Tuple => "tuple".into(),
            Self::Status => "status".into(),
            Self::Basic => "basic".into(),
            Self::Note => "note".into(),
            Self::Activities => "activities".into(),
            Self::OtherActivity => "other".into(),
            Self::Other(name) => xml::name_excerpt(name),
        }
    }
}

#[derive(Debug, Default)]
struct Parser {
    stack: Vec<Frame>,
    doc: PresenceDocument,
    text: String,
    started: bool,
    closed: bool,
}

/// Parses a PIDF body leniently (see the module documentation).
pub fn parse_pidf(body: &[u8]) -> Result<PresenceDocument, PidfError> {
    let mut parser = Parser::default();
    xml::read_document(body, &mut parser)?;
    if !parser.started {
        return Err(PidfError::NoElement);
    }
    if !parser.closed {
        return Err(PidfError::Unterminated(
            parser
                .stack
                .last()
                .map_or_else(|| "presence".into(), Frame::describe),
        ));
    }
    Ok(parser.doc)
}

impl xml::ElementSink for Parser {
    type Error = PidfError;

    fn open(&mut self, start: &BytesStart<'_>) -> Result<(), PidfError> {
        Parser::open(self, start)
    }

    fn close_innermost(&mut self) -> Result<(), PidfError> {
        Parser::close_innermost(self)
    }

    fn close_named(&mut self, name: &[u8]) -> Result<(), PidfError> {
        Parser::close_named(self, name)
    }

    fn text(&mut self) -> Option<&mut String> {
        self.wants_text().then_some(&mut self.text)
    }

    fn done(&self) -> bool {
        self.closed
    }

    fn malformed(offset: u64, message: String) -> PidfError {
        PidfError::MalformedXml { offset, message }
    }
}

impl Parser {
    fn wants_text(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Basic | Frame::Note | Frame::OtherActivity)
        )
    }

    fn open(&mut self, start: &BytesStart<'_>) -> Result<(), PidfError> {
        let local = start.local_name();
        let name = local.as_ref();
        let Some(parent) = self.stack.last() else {
            if !xml::name_is(name, "presence") {
                return Err(PidfError::NotPresence(xml::name_excerpt(name)));
            }
            self.started = true;
            self.doc.entity = xml::attributes(start)
                .find(|attr| xml::attr_is(attr, "entity"))
                .map(|attr| xml::attr_value(&attr));
            self.stack.push(Frame::Presence);
            return Ok(());
        };
        if self.stack.len() >= MAX_PIDF_DEPTH {
            return Err(PidfError::TooDeep);
        }
        let frame = match parent {
            _ if xml::name_is(name, "note") => {
                self.text.clear();
                Frame::Note
            }
            Frame::Presence if xml::name_is(name, "tuple") => {
                let id = xml::attributes(start)
                    .find(|attr| xml::attr_is(attr, "id"))
                    .map(|attr| xml::attr_value(&attr))
                    .unwrap_or_default();
                push_bounded(&mut self.doc.tuples, PresenceTuple { id, basic: None })?;
                Frame::Tuple
            }
            Frame::Tuple if xml::name_is(name, "status") => Frame::Status,
            Frame::Status if xml::name_is(name, "basic") => {
                self.text.clear();
                Frame::Basic
            }
            Frame::Activities if xml::name_is(name, "other") => {
                self.text.clear();
                Frame::OtherActivity
            }
            Frame::Activities => {
                let text = String::from_utf8_lossy(name);
                if is_plain_name(&text) {
                    push_bounded(&mut self.doc.activities, Activity::from_element(&text))?;
                }
                Frame::Other(name.into())
            }
            _ if xml::name_is(name, "activities") => Frame::Activities,
            _ => Frame::Other(name.into()),
        };
        self.stack.push(frame);
        Ok(())
    }

    fn close_innermost(&mut self) -> Result<(), PidfError> {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        match frame {
            Frame::Presence => self.closed = true,
            Frame::Basic => {
                let text = std::mem::take(&mut self.text);
                let text = text.trim();
                let basic = [Basic::Open, Basic::Closed]
                    .into_iter()
                    .find(|b| text.eq_ignore_ascii_case(b.as_str()));
                // a Basic frame opens only inside a tuple's status
                if let Some(tuple) = self.doc.tuples.last_mut() {
                    tuple.basic = basic;
                }
            }
            Frame::Note => {
                let text = std::mem::take(&mut self.text);
                push_bounded(&mut self.doc.notes, text.trim().to_owned())?;
            }
            Frame::OtherActivity => {
                let text = std::mem::take(&mut self.text);
                push_bounded(
                    &mut self.doc.activities,
                    Activity::Other(text.trim().to_owned()),
                )?;
            }
            Frame::Tuple | Frame::Status | Frame::Activities | Frame::Other(_) => {}
        }
        Ok(())
    }

    fn close_named(&mut self, name: &[u8]) -> Result<(), PidfError> {
        let Some(index) = self.stack.iter().rposition(|f| f.name_matches(name)) else {
            return Ok(());
        };
        while self.stack.len() > index {
            self.close_innermost()?;
        }
        Ok(())
    }
}

fn push_bounded<T>(items: &mut Vec<T>, item: T) -> Result<(), PidfError> {
    if items.len() >= MAX_PIDF_ITEMS {
        return Err(PidfError::TooManyItems);
    }
    items.push(item);
    Ok(())
}

/// Whether an activity's element name can be written back as one: letters, digits,
/// `-`, `_`, `.`, starting with a letter.
fn is_plain_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Writes `doc` as a PIDF document (see the module documentation). An activity whose
/// name is not a plain XML name is left out; an entity `None` is written as no
/// attribute.
pub fn render_pidf(doc: &PresenceDocument) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence");
    xml::push_attr(&mut out, "xmlns", PIDF_NAMESPACE);
    xml::push_attr(&mut out, "xmlns:dm", DATA_MODEL_NAMESPACE);
    xml::push_attr(&mut out, "xmlns:rpid", RPID_NAMESPACE);
    if let Some(entity) = &doc.entity {
        xml::push_attr(&mut out, "entity", entity);
    }
    out.extend_from_slice(b">\n");
    for tuple in &doc.tuples {
        out.extend_from_slice(b"<tuple");
        xml::push_attr(&mut out, "id", &tuple.id);
        out.extend_from_slice(b">\n<status>");
        if let Some(basic) = tuple.basic {
            out.extend_from_slice(b"<basic>");
            out.extend_from_slice(basic.as_str().as_bytes());
            out.extend_from_slice(b"</basic>");
        }
        out.extend_from_slice(b"</status>\n</tuple>\n");
    }
    for note in &doc.notes {
        out.extend_from_slice(b"<note>");
        xml::push_escaped_text(&mut out, note);
        out.extend_from_slice(b"</note>\n");
    }
    let activities: Vec<&Activity> = doc
        .activities
        .iter()
        .filter(|a| a.element_name().is_none_or(is_plain_name))
        .collect();
    if !activities.is_empty() {
        out.extend_from_slice(b"<dm:person id=\"person\">\n<rpid:activities>");
        for activity in activities {
            match activity.element_name() {
                Some(name) => {
                    out.extend_from_slice(b"<rpid:");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"/>");
                }
                None => {
                    if let Activity::Other(text) = activity {
                        out.extend_from_slice(b"<rpid:other>");
                        xml::push_escaped_text(&mut out, text);
                        out.extend_from_slice(b"</rpid:other>");
                    }
                }
            }
        }
        out.extend_from_slice(b"</rpid:activities>\n</dm:person>\n");
    }
    out.extend_from_slice(b"</presence>\n");
    out
}

/// The document that shows `extension` on the phone: the PBX's entity (or the
/// extension's URI), its first tuple's id (or `teams-<ext>`) with `basic` open, the
/// `on-the-phone` activity and the note [`ON_THE_PHONE_NOTE`].
pub fn teams_busy_presence(
    pbx: Option<&PresenceDocument>,
    extension: &WatchedExtension<'_>,
) -> PresenceDocument {
    PresenceDocument {
        entity: Some(
            pbx.and_then(|doc| doc.entity.clone())
                .unwrap_or_else(|| extension.uri.to_owned()),
        ),
        tuples: vec![PresenceTuple {
            id: tuple_id(pbx, extension),
            basic: Some(Basic::Open),
        }],
        notes: vec![ON_THE_PHONE_NOTE.to_owned()],
        activities: vec![Activity::OnThePhone],
    }
}

fn tuple_id(pbx: Option<&PresenceDocument>, extension: &WatchedExtension<'_>) -> String {
    pbx.and_then(|doc| doc.tuples.first())
        .map(|tuple| tuple.id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{TEAMS_DIALOG_PREFIX}{}", extension.number))
}

/// The body of the next presence NOTIFY to a watcher: while `teams_busy`, a rendered
/// [`teams_busy_presence`] (built on the PBX's document when it parses); otherwise
/// the PBX's body unchanged, or, when there is none yet, an idle document (the
/// extension's URI, one open tuple, nothing else).
pub fn render_presence_for_phone<'a>(
    pbx_body: Option<&'a [u8]>,
    teams_busy: bool,
    extension: &WatchedExtension<'_>,
) -> Cow<'a, [u8]> {
    match (teams_busy, pbx_body) {
        (false, Some(body)) => Cow::Borrowed(body),
        (false, None) => Cow::Owned(render_pidf(&PresenceDocument {
            entity: Some(extension.uri.to_owned()),
            tuples: vec![PresenceTuple {
                id: tuple_id(None, extension),
                basic: Some(Basic::Open),
            }],
            notes: Vec::new(),
            activities: Vec::new(),
        })),
        (true, body) => {
            let pbx = body.and_then(|b| parse_pidf(b).ok());
            Cow::Owned(render_pidf(&teams_busy_presence(pbx.as_ref(), extension)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXT: WatchedExtension<'static> = WatchedExtension {
        number: "2001",
        uri: "sip:2001@pbx.example.com",
    };

    const ASTERISK_IN_USE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence entity="sip:2001@pbx.example.com" xmlns="urn:ietf:params:xml:ns:pidf"
  xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid">
 <note>On the phone</note>
 <tuple id="2001">
  <status><basic>open</basic></status>
  <contact priority="1">sip:2001@pbx.example.com</contact>
 </tuple>
 <dm:person><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>"#;

    #[test]
    fn asterisk_style_in_use() {
        let doc = parse_pidf(ASTERISK_IN_USE.as_bytes()).unwrap();
        assert_eq!(doc.entity.as_deref(), Some("sip:2001@pbx.example.com"));
        assert_eq!(
            doc.tuples,
            [PresenceTuple {
                id: "2001".into(),
                basic: Some(Basic::Open)
            }]
        );
        assert_eq!(doc.notes, ["On the phone"]);
        assert_eq!(doc.activities, [Activity::OnThePhone]);
        assert!(doc.shows_busy());
    }

    #[test]
    fn single_quotes_prefixes_and_rpid_extras() {
        // FreeSWITCH writes single-quoted namespace declarations
        let doc = parse_pidf(
            b"<?xml version='1.0' encoding='UTF-8'?>\r\n<p:presence xmlns:p='urn:ietf:params:xml:ns:pidf' \
              xmlns:r='urn:ietf:params:xml:ns:pidf:rpid' entity='pres:201@pbx'>\
              <p:tuple id='t1'><p:status><p:basic> CLOSED </p:basic></p:status><p:note>gone</p:note></p:tuple>\
              <r:person><r:activities><r:note>Far away</r:note><r:away/><r:other>brooding</r:other><r:lunch/>\
              </r:activities><r:mood><r:angry/></r:mood></r:person><basic>open</basic></p:presence>",
        )
        .unwrap();
        assert_eq!(doc.tuples[0].basic, Some(Basic::Closed));
        assert_eq!(doc.notes, ["gone", "Far away"]);
        assert_eq!(
            doc.activities,
            [
                Activity::Away,
                Activity::Other("brooding".into()),
                Activity::Named("lunch".into())
            ]
        );
        assert!(!doc.shows_busy());
    }

    #[test]
    fn errors() {
        assert_eq!(parse_pidf(b""), Err(PidfError::NoElement));
        assert_eq!(
            parse_pidf(b"<dialog-info/>"),
            Err(PidfError::NotPresence("dialog-info".into()))
        );
        assert_eq!(
            parse_pidf(b"<presence><tuple id='a'>"),
            Err(PidfError::Unterminated("tuple".into()))
        );
        assert!(matches!(
            parse_pidf(b"<presence <x"),
            Err(PidfError::MalformedXml { .. })
        ));
        let many = format!(
            "<presence>{}</presence>",
            "<note>x</note>".repeat(MAX_PIDF_ITEMS + 1)
        );
        assert_eq!(parse_pidf(many.as_bytes()), Err(PidfError::TooManyItems));
        let deep = format!("<presence>{}", "<x>".repeat(MAX_PIDF_DEPTH + 1));
        assert_eq!(parse_pidf(deep.as_bytes()), Err(PidfError::TooDeep));
    }

    #[test]
    fn teams_busy_document_reads_back_busy() {
        let pbx = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:2001@10.0.0.1">
<tuple id="t-2001"><status><basic>open</basic></status></tuple><note>Ready</note></presence>"#;
        let out = render_presence_for_phone(Some(pbx.as_bytes()), true, &EXT);
        let doc = parse_pidf(&out).unwrap();
        assert!(doc.shows_busy());
        assert_eq!(doc.entity.as_deref(), Some("sip:2001@10.0.0.1"));
        assert_eq!(doc.tuples[0].id, "t-2001");
        assert_eq!(
            doc,
            teams_busy_presence(parse_pidf(pbx.as_bytes()).ok().as_ref(), &EXT)
        );
        // exact form
        assert_eq!(
            String::from_utf8(render_pidf(&teams_busy_presence(None, &EXT))).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
             xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"sip:2001@pbx.example.com\">\n\
             <tuple id=\"teams-2001\">\n<status><basic>open</basic></status>\n</tuple>\n\
             <note>On the phone</note>\n\
             <dm:person id=\"person\">\n<rpid:activities><rpid:on-the-phone/></rpid:activities>\n</dm:person>\n\
             </presence>\n"
        );
    }

    #[test]
    fn not_busy_passes_the_pbx_body_through() {
        let body: &[u8] = b"<presence entity='x'>whatever the PBX said</presence>";
        assert!(matches!(
            render_presence_for_phone(Some(body), false, &EXT),
            Cow::Borrowed(b) if b == body
        ));
        let idle = render_presence_for_phone(None, false, &EXT);
        let doc = parse_pidf(&idle).unwrap();
        assert!(!doc.shows_busy());
        assert_eq!(doc.tuples[0].basic, Some(Basic::Open));
        // a PBX body that does not parse still gives a busy document
        let busy = render_presence_for_phone(Some(b"<garbage"), true, &EXT);
        assert!(parse_pidf(&busy).unwrap().shows_busy());
    }

    #[test]
    fn render_round_trips() {
        let doc = PresenceDocument {
            entity: Some("sip:a&b@x".into()),
            tuples: vec![
                PresenceTuple {
                    id: "t<1>".into(),
                    basic: None,
                },
                PresenceTuple {
                    id: "t2".into(),
                    basic: Some(Basic::Closed),
                },
            ],
            notes: vec!["Busy & <away>".into()],
            activities: vec![
                Activity::Meeting,
                Activity::Busy,
                Activity::Other("x < y".into()),
                Activity::Named("in-transit".into()),
            ],
        };
        assert_eq!(parse_pidf(&render_pidf(&doc)).unwrap(), doc);
        // a name that cannot be an element is left out
        let odd = PresenceDocument {
            activities: vec![Activity::Named("not a name".into())],
            ..PresenceDocument::default()
        };
        assert_eq!(parse_pidf(&render_pidf(&odd)).unwrap().activities, []);
    }
}
