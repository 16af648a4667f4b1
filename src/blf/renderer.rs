//! [`DocumentRenderer`]: the [`BlfRenderer`] the proxy core runs its subscription
//! tracker with, on top of the document layer: dialog-info (parsed leniently, the Teams
//! dialog injected, written strictly for the phone's profile) and PIDF.
//!
//! It is stateless: each call reads the PBX's last document again. A PBX that sends
//! partial state (RFC 4235 §4.3) has each partial document merged into the last full
//! one as it passes ([`BlfRenderer::complete`]), so the document the tracker keeps is
//! always full state.

use bytes::Bytes;

use super::dialog_info::{
    DIALOG_INFO_CONTENT_TYPE, parse_dialog_info, peek_dialog_info_is_partial,
    peek_dialog_info_version,
};
use super::merge::{DialogInfoState, MergeOutcome};
use super::pidf::{PIDF_CONTENT_TYPE, render_presence_for_phone};
use super::profile::PhoneProfile;
use super::render::render_dialog_info;
use super::render::{TeamsInjection, WatchedExtension, render_for_phone};
use super::subscription::{BlfRenderer, EventPackage, PbxDocument, Rendered, SubscriptionView};

/// Renders phone-facing BLF documents. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct DocumentRenderer {
    /// How the injected Teams dialog looks.
    pub injection: TeamsInjection,
    /// One profile for every phone instead of the one chosen by User-Agent.
    pub profile_override: Option<PhoneProfile>,
    /// Profiles by User-Agent substring (lowercase), checked in order before the
    /// built-in detection.
    pub profiles_by_user_agent: Vec<(String, PhoneProfile)>,
}

impl DocumentRenderer {
    /// The profile for a watcher's User-Agent: the override, else the first configured
    /// substring it contains (ASCII case-insensitive), else the built-in detection.
    pub fn profile_for(&self, user_agent: Option<&[u8]>) -> PhoneProfile {
        if let Some(profile) = self.profile_override {
            return profile;
        }
        let user_agent = user_agent.unwrap_or_default();
        let lower = user_agent.to_ascii_lowercase();
        self.profiles_by_user_agent
            .iter()
            .find(|(needle, _)| {
                !needle.is_empty() && lower.windows(needle.len()).any(|w| w == needle.as_bytes())
            })
            .map_or_else(|| PhoneProfile::from_user_agent(user_agent), |(_, p)| *p)
    }
}

/// `sip:EXT@HOST` from the notifier's address as the phone sees it (`<sip:201@pbx>;tag=`),
/// or `sip:EXT` when it names no host.
fn extension_uri(extension: &str, notifier: &[u8]) -> String {
    let text = String::from_utf8_lossy(notifier);
    let host = text
        .split_once('@')
        .map(|(_, rest)| rest.split(['>', ';', ':']).next().unwrap_or_default())
        .filter(|h| !h.is_empty());
    match host {
        Some(host) => format!("sip:{extension}@{host}"),
        None => format!("sip:{extension}"),
    }
}

fn is_type(content_type: &[u8], wanted: &str) -> bool {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(wanted.as_bytes())
}

impl BlfRenderer for DocumentRenderer {
    fn complete(
        &self,
        content_type: &[u8],
        previous: Option<&[u8]>,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        if !is_type(content_type, DIALOG_INFO_CONTENT_TYPE) || !peek_dialog_info_is_partial(body) {
            return None;
        }
        let mut state = DialogInfoState::new();
        if let Some(previous) = previous {
            state.apply_body(previous).ok()?;
        }
        if state.apply_body(body).ok()? != MergeOutcome::Applied {
            return None;
        }
        let version = state.version()?;
        state.view().map(|view| render_dialog_info(view, version))
    }

    fn document_version(&self, content_type: &[u8], body: &[u8]) -> Option<u64> {
        if !is_type(content_type, DIALOG_INFO_CONTENT_TYPE) {
            return None;
        }
        peek_dialog_info_version(body).map(u64::from)
    }

    fn render(
        &self,
        sub: &SubscriptionView<'_>,
        pbx: Option<PbxDocument<'_>>,
        version: u64,
        teams_busy: bool,
    ) -> Option<Rendered> {
        let uri = extension_uri(sub.extension, sub.notifier);
        let extension = WatchedExtension {
            number: sub.extension,
            uri: &uri,
        };
        match sub.package {
            EventPackage::Dialog => {
                let parsed = pbx
                    .filter(|doc| is_type(doc.content_type, DIALOG_INFO_CONTENT_TYPE))
                    .and_then(|doc| parse_dialog_info(doc.body).ok());
                let profile = self.profile_for(sub.user_agent);
                // versions beyond u32 cannot be written; the tracker never gets there
                let version = u32::try_from(version).ok()?;
                let body = render_for_phone(
                    parsed.as_ref(),
                    version,
                    teams_busy,
                    &extension,
                    &profile,
                    &self.injection,
                );
                Some(Rendered {
                    body: Bytes::from(body),
                    content_type: DIALOG_INFO_CONTENT_TYPE,
                })
            }
            EventPackage::Presence => {
                let body = pbx
                    .filter(|doc| is_type(doc.content_type, PIDF_CONTENT_TYPE))
                    .map(|doc| doc.body);
                let out = render_presence_for_phone(body, teams_busy, &extension);
                Some(Rendered {
                    body: Bytes::copy_from_slice(&out),
                    content_type: PIDF_CONTENT_TYPE,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_uri_takes_the_notifiers_host() {
        assert_eq!(
            extension_uri("201", b"<sip:201@pbx.example.com>;tag=abc"),
            "sip:201@pbx.example.com"
        );
        assert_eq!(
            extension_uri("201", b"<sip:201@10.0.0.1:5070>;tag=x"),
            "sip:201@10.0.0.1"
        );
        assert_eq!(extension_uri("201", b"garbage"), "sip:201");
    }

    #[test]
    fn configured_user_agents_come_before_detection() {
        use crate::blf::PhoneFamily;
        let renderer = DocumentRenderer {
            profiles_by_user_agent: vec![(
                "acme desk".into(),
                PhoneProfile::for_family(PhoneFamily::CiscoSpa),
            )],
            ..DocumentRenderer::default()
        };
        assert_eq!(
            renderer.profile_for(Some(b"ACME Desk 3000")).family,
            PhoneFamily::CiscoSpa
        );
        assert_eq!(
            renderer.profile_for(Some(b"Yealink SIP-T54W")).family,
            PhoneFamily::Yealink
        );
        assert_eq!(renderer.profile_for(None).family, PhoneFamily::Generic);
        let forced = DocumentRenderer {
            profile_override: Some(PhoneProfile::for_family(PhoneFamily::Polycom)),
            ..renderer
        };
        assert_eq!(
            forced.profile_for(Some(b"ACME Desk 3000")).family,
            PhoneFamily::Polycom
        );
    }

    const NS: &str = "urn:ietf:params:xml:ns:dialog-info";

    fn doc(version: u32, state: &str, dialogs: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0"?><dialog-info xmlns="{NS}" version="{version}" state="{state}" entity="sip:201@pbx">{dialogs}</dialog-info>"#
        )
        .into_bytes()
    }

    #[test]
    fn partial_documents_are_kept_as_the_full_state_they_make() {
        let renderer = DocumentRenderer::default();
        let ct = DIALOG_INFO_CONTENT_TYPE.as_bytes();
        let full = doc(
            10,
            "full",
            r#"<dialog id="a"><state>confirmed</state></dialog>"#,
        );
        assert_eq!(
            renderer.complete(ct, None, &full),
            None,
            "full stays as it is"
        );
        let partial = doc(
            11,
            "partial",
            r#"<dialog id="b"><state>early</state></dialog>"#,
        );
        let merged = renderer
            .complete(ct, Some(&full), &partial)
            .expect("a partial document is completed");
        let view = parse_dialog_info(&merged).unwrap();
        assert_eq!(view.version, Some(11), "the PBX's numbering is kept");
        let ids: Vec<&str> = view.dialogs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(!peek_dialog_info_is_partial(&merged));
        // the next partial builds on the completed one
        let ended = doc(
            12,
            "partial",
            r#"<dialog id="a"><state>terminated</state></dialog>"#,
        );
        let merged = renderer.complete(ct, Some(&merged), &ended).unwrap();
        let view = parse_dialog_info(&merged).unwrap();
        assert_eq!(view.version, Some(12));
        assert!(view.dialogs.iter().any(|d| d.id == "b"), "{view:?}");
        // a gap in the versions: kept as it came
        let gap = doc(
            20,
            "partial",
            r#"<dialog id="c"><state>early</state></dialog>"#,
        );
        assert_eq!(renderer.complete(ct, Some(&merged), &gap), None);
        // not dialog-info
        assert_eq!(
            renderer.complete(b"application/pidf+xml", Some(&full), &partial),
            None
        );
    }

    #[test]
    fn content_types_compare_by_essence() {
        assert!(is_type(
            b"Application/Dialog-Info+XML; charset=utf-8",
            "application/dialog-info+xml"
        ));
        assert!(!is_type(
            b"application/pidf+xml",
            "application/dialog-info+xml"
        ));
    }
}
