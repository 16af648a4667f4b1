//! Reading DND out of message bodies: Broadsoft feature-key synchronisation
//! (`as-feature-event`, ECMA-323 CSTA elements, `../shared/reference/sip.md` §2.9) and
//! PIDF presence documents with RPID activities (RFC 3863, RFC 4480).
//!
//! Bodies are parsed with quick-xml and only for the few messages that carry them.
//! Element names are matched by local name, so any namespace prefix is accepted; a
//! `multipart/mixed` body (one part per feature) needs no MIME parsing, because each
//! wanted element is searched for and parsed where it starts.

use memchr::memmem;
use quick_xml::Reader;
use quick_xml::events::Event;

/// Where in a PIDF document DND was read from (see [`pidf_dnd`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidfDnd {
    /// The user part of the presentity (`entity="pres:201@pbx"` → `201`).
    pub entity_user: String,
    /// Whether the document says do-not-disturb (RPID `busy`, or a note saying DND).
    pub on: bool,
}

/// `doNotDisturbOn` of the first `element` (`SetDoNotDisturb` in a phone's SUBSCRIBE,
/// `DoNotDisturbEvent` in the server's NOTIFY) in `body`.
pub fn feature_dnd(body: &[u8], element: &str) -> Option<bool> {
    let finder = memmem::Finder::new(element.as_bytes());
    for found in finder.find_iter(body) {
        // back up to the `<` opening this name (there may be a prefix such as `x:`)
        let Some(open) = body[..found].iter().rposition(|&c| c == b'<') else {
            continue;
        };
        let between = &body[open + 1..found];
        if !between
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b':' || c == b'_' || c == b'-')
        {
            continue;
        }
        if let Some(on) = element_flag(&body[open..], element, "doNotDisturbOn") {
            return Some(on);
        }
    }
    None
}

/// Reads `<element>...<flag>true|false</flag>...</element>` from the start of `xml`.
fn element_flag(xml: &[u8], element: &str, flag: &str) -> Option<bool> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut depth = 0usize;
    let mut in_flag = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(start) => {
                let local = start.local_name();
                if depth == 0 && local.as_ref() != element.as_bytes() {
                    return None;
                }
                depth += 1;
                in_flag = depth == 2 && local.as_ref() == flag.as_bytes();
            }
            Event::Text(text) if in_flag => {
                let text = text.decode().ok()?;
                return parse_bool(text.trim());
            }
            Event::End(_) => {
                in_flag = false;
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return None;
                }
            }
            Event::Eof => return None,
            _ => {}
        }
        buf.clear();
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// The presentity and its DND state from a PIDF document: on when an RPID activity is
/// `busy` or the document's `<note>` says "do not disturb" or "DND".
pub fn pidf_dnd(body: &[u8]) -> Option<PidfDnd> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut entity_user = None;
    let mut in_activities = 0usize;
    let mut in_note = false;
    let mut on = false;
    loop {
        let event = reader.read_event_into(&mut buf).ok()?;
        match &event {
            Event::Start(start) | Event::Empty(start) => {
                let local = start.local_name();
                let name = local.as_ref();
                if name == b"presence" {
                    let entity = start
                        .try_get_attribute("entity")
                        .ok()
                        .flatten()
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))?;
                    entity_user = Some(user_of(&entity)?);
                } else if in_activities > 0 && name == b"busy" {
                    on = true;
                } else if name == b"activities" && matches!(event, Event::Start(_)) {
                    in_activities += 1;
                } else if name == b"note" && matches!(event, Event::Start(_)) {
                    in_note = true;
                }
            }
            Event::Text(text) if in_note => {
                let text = text.decode().ok()?.to_ascii_lowercase();
                if text.contains("do not disturb") || text.contains("dnd") {
                    on = true;
                }
            }
            Event::End(end) => {
                let local = end.local_name();
                if local.as_ref() == b"activities" {
                    in_activities = in_activities.saturating_sub(1);
                } else if local.as_ref() == b"note" {
                    in_note = false;
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Some(PidfDnd {
        entity_user: entity_user?,
        on,
    })
}

/// `pres:201@pbx`, `sip:201@pbx` → `201`.
fn user_of(entity: &str) -> Option<String> {
    let rest = entity.split_once(':').map_or(entity, |(_, rest)| rest);
    let user = rest.split_once('@').map_or(rest, |(user, _)| user);
    (!user.is_empty()).then(|| super::classify::normalize_number(user.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"<?xml version="1.0" encoding="ISO-8859-1"?>
<SetDoNotDisturb xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
  <device>7659366</device>
  <doNotDisturbOn>true</doNotDisturbOn>
</SetDoNotDisturb>"#;

    #[test]
    fn feature_key_sync_bodies() {
        assert_eq!(feature_dnd(SET.as_bytes(), "SetDoNotDisturb"), Some(true));
        assert_eq!(feature_dnd(SET.as_bytes(), "DoNotDisturbEvent"), None);
        let event = "<x:DoNotDisturbEvent xmlns:x=\"urn:x\"><x:device>1</x:device>\
                     <x:doNotDisturbOn> false </x:doNotDisturbOn></x:DoNotDisturbEvent>";
        assert_eq!(
            feature_dnd(event.as_bytes(), "DoNotDisturbEvent"),
            Some(false)
        );
    }

    #[test]
    fn multipart_body_is_searched() {
        let body = "--b1\r\nContent-Type: application/x-as-feature-event+xml\r\n\r\n\
            <?xml version=\"1.0\"?><ForwardingEvent><device>1</device></ForwardingEvent>\r\n\
            --b1\r\nContent-Type: application/x-as-feature-event+xml\r\n\r\n\
            <?xml version=\"1.0\"?><DoNotDisturbEvent><device>1</device>\
            <doNotDisturbOn>true</doNotDisturbOn></DoNotDisturbEvent>\r\n--b1--\r\n";
        assert_eq!(
            feature_dnd(body.as_bytes(), "DoNotDisturbEvent"),
            Some(true)
        );
    }

    #[test]
    fn malformed_bodies_say_nothing() {
        assert_eq!(
            feature_dnd(b"<SetDoNotDisturb><doNotDisturbOn>", "SetDoNotDisturb"),
            None
        );
        assert_eq!(
            feature_dnd(
                b"<SetDoNotDisturb><doNotDisturbOn>maybe</doNotDisturbOn>",
                "SetDoNotDisturb"
            ),
            None
        );
        assert_eq!(feature_dnd(b"SetDoNotDisturb", "SetDoNotDisturb"), None);
        assert_eq!(pidf_dnd(b"<presence>"), None);
        assert_eq!(pidf_dnd(b"\xff\xfe<"), None);
    }

    #[test]
    fn pidf_busy_and_notes() {
        let busy = r#"<?xml version="1.0"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:2001@pbx.example.com">
  <tuple id="2001"><status><basic>open</basic></status></tuple>
  <dm:person id="p1"><rpid:activities><rpid:busy/></rpid:activities></dm:person>
</presence>"#;
        assert_eq!(
            pidf_dnd(busy.as_bytes()),
            Some(PidfDnd {
                entity_user: "2001".into(),
                on: true
            })
        );
        let on_the_phone = busy.replace("rpid:busy", "rpid:on-the-phone");
        assert_eq!(pidf_dnd(on_the_phone.as_bytes()).map(|p| p.on), Some(false));
        let note = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:201@pbx">
<tuple id="t"><status><basic>open</basic></status><note>Do Not Disturb</note></tuple></presence>"#;
        assert_eq!(pidf_dnd(note.as_bytes()).map(|p| p.on), Some(true));
    }
}
