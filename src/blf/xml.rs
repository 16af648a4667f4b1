//! The XML plumbing the BLF documents share: a quick-xml reader configured to be
//! lenient, text and attribute decoding that never fails, and the escaping the strict
//! writers use. Nothing here knows dialog-info or PIDF.
//!
//! Reading: element and attribute names are compared by local name (any namespace
//! prefix), ASCII case-insensitively. Bytes that are not UTF-8 are replaced (U+FFFD)
//! rather than refused, entity references that cannot be resolved are kept as written,
//! and end tags that match no open element are the caller's to ignore (the reader does
//! not check them).
//!
//! Writing: every string goes through [`push_escaped_text`] or [`push_escaped_attr`],
//! which escape what XML needs escaped and replace characters XML 1.0 cannot carry at
//! all (most C0 controls, U+FFFE, U+FFFF) with U+FFFD, so the output is always
//! well-formed.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::escape::{resolve_predefined_entity, unescape};
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesRef, BytesStart, Event};

/// Longest excerpt of input an error value carries (bytes, cut on a char boundary).
const EXCERPT_LEN: usize = 64;

/// A reader over `body` that reports mismatched and unmatched end tags as ordinary
/// `End` events, accepts a bare `&`, and keeps text untrimmed.
pub(crate) fn lenient_reader(body: &[u8]) -> Reader<&[u8]> {
    let mut reader = Reader::from_reader(body);
    let config = reader.config_mut();
    config.trim_text(false);
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.allow_dangling_amp = true;
    config.expand_empty_elements = false;
    reader
}

/// What a document parser does with the lenient reader's events; [`read_document`]
/// drives it.
pub(crate) trait ElementSink {
    /// The parser's error.
    type Error;
    /// An element opened (also the first half of an empty element).
    fn open(&mut self, start: &BytesStart<'_>) -> Result<(), Self::Error>;
    /// The innermost open element closed (the second half of an empty element).
    fn close_innermost(&mut self) -> Result<(), Self::Error>;
    /// An end tag with this local name.
    fn close_named(&mut self, name: &[u8]) -> Result<(), Self::Error>;
    /// Where text goes, when the element being read wants its text.
    fn text(&mut self) -> Option<&mut String>;
    /// Whether the root element has closed: reading stops.
    fn done(&self) -> bool;
    /// The error for XML the reader cannot read at `offset`.
    fn malformed(offset: u64, message: String) -> Self::Error;
}

/// Reads `body` into `sink` until its root element closes or the input ends.
pub(crate) fn read_document<S: ElementSink>(body: &[u8], sink: &mut S) -> Result<(), S::Error> {
    let mut reader = lenient_reader(body);
    loop {
        let event = reader
            .read_event()
            .map_err(|e| S::malformed(reader.error_position(), excerpt(&e.to_string())))?;
        match event {
            Event::Start(start) => sink.open(&start)?,
            Event::Empty(start) => {
                sink.open(&start)?;
                sink.close_innermost()?;
            }
            Event::End(end) => sink.close_named(end.local_name().as_ref())?,
            Event::Text(text) => {
                if let Some(out) = sink.text() {
                    push_text(out, &text);
                }
            }
            Event::CData(cdata) => {
                if let Some(out) = sink.text() {
                    push_text(out, &cdata);
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(out) = sink.text() {
                    push_reference(out, &reference);
                }
            }
            Event::Eof => return Ok(()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
        if sink.done() {
            return Ok(());
        }
    }
}

/// Whether a (local) element or attribute name is `want`, ignoring ASCII case.
pub(crate) fn name_is(name: &[u8], want: &str) -> bool {
    name.eq_ignore_ascii_case(want.as_bytes())
}

/// The attributes of `start`, in document order. Quotes are optional and duplicates
/// are allowed (callers searching front to back take the first); iteration stops at
/// the first attribute that cannot be read. Names are compared with [`attr_is`],
/// values decoded with [`attr_value`] only when wanted.
pub(crate) fn attributes<'a>(
    start: &'a BytesStart<'a>,
) -> impl Iterator<Item = Attribute<'a>> + 'a {
    let mut attrs = start.html_attributes();
    attrs.with_checks(false);
    attrs.map_while(Result::ok)
}

/// Whether an attribute's local name is `want`, ignoring ASCII case.
pub(crate) fn attr_is(attr: &Attribute<'_>, want: &str) -> bool {
    name_is(attr.key.local_name().as_ref(), want)
}

/// An attribute's value, unescaped; as written when it holds an entity that cannot be
/// resolved.
pub(crate) fn attr_value(attr: &Attribute<'_>) -> String {
    let text = String::from_utf8_lossy(&attr.value);
    match unescape(&text) {
        Ok(unescaped) => unescaped.into_owned(),
        Err(_) => text.into_owned(),
    }
}

/// Whether an attribute (local) name declares a namespace: `xmlns` or `xmlns:p`.
pub(crate) fn is_namespace_declaration(start: &BytesStart<'_>, namespace: &str) -> bool {
    let mut attrs = start.html_attributes();
    attrs.with_checks(false);
    attrs.map_while(Result::ok).any(|attr| {
        let key = attr.key.as_ref();
        (key == b"xmlns" || key.starts_with(b"xmlns:")) && attr_value(&attr) == namespace
    })
}

/// Appends character data (a `Text` or `CData` event's bytes) to `out`.
pub(crate) fn push_text(out: &mut String, raw: &[u8]) {
    out.push_str(&String::from_utf8_lossy(raw));
}

/// Appends what an entity or character reference stands for, or the reference as
/// written (`&name;`) when it stands for nothing known.
pub(crate) fn push_reference(out: &mut String, reference: &BytesRef<'_>) {
    if let Ok(Some(c)) = reference.resolve_char_ref() {
        out.push(c);
        return;
    }
    let name = String::from_utf8_lossy(reference);
    match resolve_predefined_entity(&name) {
        Some(resolved) => out.push_str(resolved),
        None => {
            out.push('&');
            out.push_str(&name);
            out.push(';');
        }
    }
}

/// At most [`EXCERPT_LEN`] bytes of `text`, for error values.
pub(crate) fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_LEN {
        return text.to_owned();
    }
    let mut end = EXCERPT_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The local name of an element as text, for error values.
pub(crate) fn name_excerpt(name: &[u8]) -> String {
    excerpt(&String::from_utf8_lossy(name))
}

/// Whether XML 1.0 can carry `c` at all (its `Char` production; surrogates cannot
/// occur in a Rust `char`).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `text` with every character XML 1.0 cannot carry replaced by U+FFFD: what a string
/// reads as after [`push_escaped_text`] or [`push_escaped_attr`] and a parse.
pub(crate) fn xml_safe(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(
            text.chars()
                .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

/// Appends `text` as element content: `&`, `<`, `>` escaped, CR as a character
/// reference (a parser would otherwise fold CR LF into LF).
pub(crate) fn push_escaped_text(out: &mut Vec<u8>, text: &str) {
    push_escaped(out, text, false);
}

/// Appends `text` as a double-quoted attribute value: `&`, `<`, `>`, `"`, `'` escaped,
/// and tab, LF and CR as character references so attribute-value normalisation does
/// not turn them into spaces.
pub(crate) fn push_escaped_attr(out: &mut Vec<u8>, text: &str) {
    push_escaped(out, text, true);
}

fn push_escaped(out: &mut Vec<u8>, text: &str, in_attribute: bool) {
    // runs of characters that need nothing are copied whole
    let mut copied = 0;
    for (at, c) in text.char_indices() {
        let replacement: &[u8] = match c {
            '&' => b"&amp;",
            '<' => b"&lt;",
            '>' => b"&gt;",
            '"' if in_attribute => b"&quot;",
            '\'' if in_attribute => b"&apos;",
            '\t' if in_attribute => b"&#9;",
            '\n' if in_attribute => b"&#10;",
            '\r' => b"&#13;",
            c if !is_xml_char(c) => "\u{FFFD}".as_bytes(),
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[copied..at]);
        out.extend_from_slice(replacement);
        copied = at + c.len_utf8();
    }
    out.extend_from_slice(&text.as_bytes()[copied..]);
}

/// Appends ` name="value"` (value escaped).
pub(crate) fn push_attr(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    push_escaped_attr(out, value);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_white_space_in_attributes() {
        let mut out = Vec::new();
        push_escaped_attr(&mut out, "a&b<c>\"d'\te\nf\rg\u{1}h");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a&amp;b&lt;c&gt;&quot;d&apos;&#9;e&#10;f&#13;g\u{FFFD}h"
        );
        let mut out = Vec::new();
        push_escaped_text(&mut out, "x \"y\" 'z'\t\n\r<&>");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x \"y\" 'z'\t\n&#13;&lt;&amp;&gt;"
        );
    }

    #[test]
    fn xml_chars() {
        assert!(is_xml_char('a') && is_xml_char('\t') && is_xml_char('\u{10FFFF}'));
        assert!(!is_xml_char('\u{0}') && !is_xml_char('\u{B}') && !is_xml_char('\u{FFFE}'));
        assert_eq!(xml_safe("a\u{0}b"), "a\u{FFFD}b");
        assert!(matches!(xml_safe("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn excerpts_cut_on_char_boundaries() {
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert!(cut.len() <= EXCERPT_LEN + "…".len());
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }
}
