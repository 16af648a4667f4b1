//! The Teams-side sections of the configuration file: `[graph]` (the app registration
//! and where Microsoft is), `[web]` (the OAuth and portal listener), `[store]` (the
//! SQLite file and its key), `[sync]` (how presence is synced), `[directory]`
//! (extension ↔ email) and `[blf]` (how Teams-busy looks on the phones' lamps). Same two steps as the rest of the file: raw structs mirroring
//! the file, then validated settings; every error names file, line and key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Int, Source, Str};
use crate::blf::{DocumentRenderer, PhoneProfile, TeamsInjection};
use crate::graph::{DEFAULT_GRAPH_BASE, DEFAULT_LOGIN_BASE};
use crate::sync::{BusyResponse, BusyRule, BusyState, CallEnd, DndMode, SyncRules};

/// `[graph]`: the app registration in the tenant, and where the identity platform and
/// Graph are (the real ones by default; the emulator in tests and the demo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSettings {
    /// `graph.tenant`: tenant id or verified domain.
    pub tenant: String,
    /// `graph.client_id`: the application (client) id.
    pub client_id: String,
    /// `graph.client_secret` or `graph.client_secret_file`.
    pub client_secret: ClientSecret,
    /// `graph.login_base`.
    pub login_base: String,
    /// `graph.graph_base`.
    pub graph_base: String,
    /// `graph.app_only`: write presence with an app-only token (client credentials,
    /// Presence.ReadWrite.All) instead of per-user pairing, and read with it when no
    /// domain token is held.
    pub app_only: bool,
    /// `graph.notification_url`: the public HTTPS URL of this proxy's notification
    /// endpoint; when set, Teams presence comes by change notifications with a
    /// catch-up poll instead of polling alone.
    pub notification_url: Option<String>,
}

/// Where the client secret is.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientSecret {
    /// In the file itself.
    Inline(String),
    /// In this file (its first line), read at start-up.
    File(PathBuf),
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline([redacted])"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl ClientSecret {
    /// The secret; a file's content is trimmed.
    pub fn load(&self) -> std::io::Result<String> {
        match self {
            Self::Inline(secret) => Ok(secret.clone()),
            Self::File(path) => Ok(std::fs::read_to_string(path)?.trim().to_owned()),
        }
    }
}

/// `[web]`: the HTTP listener of the OAuth round trips (and the portal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// `web.listen`.
    pub listen: SocketAddr,
    /// `web.public_url`: how browsers (and Microsoft's redirects) reach it; default
    /// `http://{listen}`. The OAuth redirect URI is `{public_url}/oauth/callback`.
    pub public_url: Option<String>,
    /// `web.admin_password_hash`: the portal admin's password as an argon2 PHC string
    /// (`presence-proxy hash-password` makes one). Without it the store's hash is used,
    /// and on first start a random password is made, stored hashed and logged once.
    pub admin_password_hash: Option<String>,
    /// `web.api_token_file`: a file whose first line is a bearer token that may read
    /// `GET /api/status` without an admin session (monitoring).
    pub api_token_file: Option<PathBuf>,
    /// `web.session_minutes`: how long a portal sign-in lasts (default 720).
    pub session_minutes: u64,
}

/// `[store]`: the embedded database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `store.path`: the SQLite file (relative to the configuration file).
    pub path: PathBuf,
    /// `store.key_file`: the token encryption key, created (0600) when missing. The
    /// environment variable `PRESENCE_PROXY_STORE_KEY` is used instead when set.
    pub key_file: PathBuf,
}

/// `[sync]`: how presence is synced both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// `sync.pbx_to_teams`: when given, the domain's PBX → Teams switch is set to it at
    /// start-up; when absent, the store's switch (off until an admin turns it on).
    pub pbx_to_teams: Option<bool>,
    /// `sync.scope`: `"all"` or a list of extensions; when absent, the store's.
    pub scope: Option<Vec<String>>,
    /// `sync.poll_interval_ms`: how often Teams presence is polled (default 2,000).
    pub poll_interval: Duration,
    /// `sync.catch_up_poll_seconds`: the poll interval while change notifications
    /// arrive (default 60).
    pub catch_up_poll: Duration,
    /// `sync.busy_response`: what a call to a Teams-busy extension gets.
    pub busy_response: BusyResponse,
    /// The decision rules (`teams_busy`, `dnd_mode`, `call_end`,
    /// `session_expiration_minutes`, `coalesce_ms`, `echo_grace_seconds`).
    pub rules: SyncRules,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            pbx_to_teams: None,
            scope: None,
            poll_interval: Duration::from_secs(2),
            catch_up_poll: Duration::from_secs(60),
            busy_response: BusyResponse::BusyHere,
            rules: SyncRules::default(),
        }
    }
}

/// `[blf]`: how Teams-busy is shown on the phones' BLF lamps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlfSettings {
    /// `blf.teams_dialog_ids`: give the injected `teams-<ext>` dialog a call-id and tags
    /// (phones then offer pickup on the lamp). Default false.
    pub teams_dialog_ids: bool,
    /// `blf.profile`: one phone profile for every phone instead of detection.
    pub profile: Option<PhoneProfile>,
    /// `blf.profiles`: profiles by User-Agent substring (lowercased), in file order,
    /// before the built-in detection.
    pub profiles: Vec<(String, PhoneProfile)>,
}

impl BlfSettings {
    /// The renderer the proxy core writes BLF documents with.
    pub fn renderer(&self) -> DocumentRenderer {
        DocumentRenderer {
            injection: TeamsInjection {
                with_dialog_ids: self.teams_dialog_ids,
            },
            profile_override: self.profile,
            profiles_by_user_agent: self.profiles.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBlf {
    teams_dialog_ids: Option<bool>,
    profile: Option<Str>,
    profiles: Option<Vec<RawProfileRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawProfileRule {
    user_agent: Str,
    profile: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGraph {
    tenant: Str,
    client_id: Str,
    client_secret: Option<Str>,
    client_secret_file: Option<Str>,
    login_base: Option<Str>,
    graph_base: Option<Str>,
    app_only: Option<bool>,
    notification_url: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawWeb {
    listen: Str,
    public_url: Option<Str>,
    admin_password_hash: Option<Str>,
    api_token_file: Option<Str>,
    session_minutes: Option<Spanned<Int>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawStore {
    path: Option<Str>,
    key_file: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSync {
    pbx_to_teams: Option<bool>,
    scope: Option<Spanned<RawScope>>,
    poll_interval_ms: Option<Spanned<Int>>,
    catch_up_poll_seconds: Option<Spanned<Int>>,
    busy_response: Option<Spanned<RawBusyResponse>>,
    teams_busy: Option<Vec<Str>>,
    dnd_mode: Option<Str>,
    call_end: Option<Str>,
    session_expiration_minutes: Option<Spanned<Int>>,
    coalesce_ms: Option<Spanned<Int>>,
    echo_grace_seconds: Option<Spanned<Int>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "\"all\" or a list of extensions")]
pub(super) enum RawScope {
    All(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "486, 480, 603 or \"off\"")]
pub(super) enum RawBusyResponse {
    Code(i64),
    Word(String),
}

/// `[directory]`: `"201" = "alice@contoso.example"`.
pub(super) type RawDirectory = Spanned<BTreeMap<String, Str>>;

/// The default store file, next to the configuration file.
const DEFAULT_STORE: &str = "presence-proxy.sqlite3";

impl Source<'_> {
    pub(super) fn graph(&self, raw: RawGraph) -> Result<GraphSettings, ConfigError> {
        let non_empty = |value: &Str, key: &str| {
            let text = value.get_ref().trim();
            if text.is_empty() {
                Err(self.invalid(value.span(), key, "must not be empty".to_owned()))
            } else {
                Ok(text.to_owned())
            }
        };
        let tenant = non_empty(&raw.tenant, "graph.tenant")?;
        if tenant.eq_ignore_ascii_case("common") || tenant.eq_ignore_ascii_case("organizations") {
            return Err(self.invalid(
                raw.tenant.span(),
                "graph.tenant",
                format!("`{tenant}` is not a tenant: give the tenant id or a verified domain"),
            ));
        }
        let client_id = non_empty(&raw.client_id, "graph.client_id")?;
        let client_secret = match (&raw.client_secret, &raw.client_secret_file) {
            (Some(secret), None) => ClientSecret::Inline(non_empty(secret, "graph.client_secret")?),
            (None, Some(file)) => ClientSecret::File(self.path(file, "graph.client_secret_file")?),
            (Some(secret), Some(_)) => {
                return Err(self.invalid(
                    secret.span(),
                    "graph.client_secret",
                    "give client_secret or client_secret_file, not both".to_owned(),
                ));
            }
            (None, None) => {
                return Err(self.invalid(
                    raw.client_id.span(),
                    "graph.client_secret",
                    "missing key `client_secret` (or `client_secret_file`) in [graph]".to_owned(),
                ));
            }
        };
        let base = |value: &Option<Str>, key: &str, default: &str| match value {
            None => Ok(default.to_owned()),
            Some(value) => self
                .http_url(value, key)
                .map(|u| u.trim_end_matches('/').to_owned()),
        };
        Ok(GraphSettings {
            tenant,
            client_id,
            client_secret,
            login_base: base(&raw.login_base, "graph.login_base", DEFAULT_LOGIN_BASE)?,
            graph_base: base(&raw.graph_base, "graph.graph_base", DEFAULT_GRAPH_BASE)?,
            app_only: raw.app_only.unwrap_or(false),
            notification_url: raw
                .notification_url
                .as_ref()
                .map(|u| self.http_url(u, "graph.notification_url"))
                .transpose()?,
        })
    }

    pub(super) fn web(&self, raw: RawWeb) -> Result<WebSettings, ConfigError> {
        let listen = raw.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.invalid(
                raw.listen.span(),
                "web.listen",
                format!("expected IP:PORT, found {:?}", raw.listen.get_ref()),
            )
        })?;
        let public_url = raw
            .public_url
            .as_ref()
            .map(|u| {
                self.http_url(u, "web.public_url")
                    .map(|u| u.trim_end_matches('/').to_owned())
            })
            .transpose()?;
        let admin_password_hash = raw
            .admin_password_hash
            .as_ref()
            .map(|h| {
                let text = h.get_ref().trim();
                crate::web::check_password_hash(text)
                    .map(|()| text.to_owned())
                    .map_err(|e| self.invalid(h.span(), "web.admin_password_hash", e))
            })
            .transpose()?;
        let api_token_file = raw
            .api_token_file
            .as_ref()
            .map(|f| self.path(f, "web.api_token_file"))
            .transpose()?;
        let session_minutes = match &raw.session_minutes {
            None => 720,
            Some(m) => self.ranged(m, "web.session_minutes", 1, 60 * 24 * 30)?,
        };
        Ok(WebSettings {
            listen,
            public_url,
            admin_password_hash,
            api_token_file,
            session_minutes,
        })
    }

    pub(super) fn store(&self, raw: Option<RawStore>) -> Result<StoreSettings, ConfigError> {
        let raw = raw.unwrap_or(RawStore {
            path: None,
            key_file: None,
        });
        let path = match &raw.path {
            Some(path) => self.path(path, "store.path")?,
            None => self.relative(DEFAULT_STORE),
        };
        let key_file = match &raw.key_file {
            Some(path) => self.path(path, "store.key_file")?,
            None => {
                let mut name = path.clone().into_os_string();
                name.push(".key");
                PathBuf::from(name)
            }
        };
        Ok(StoreSettings { path, key_file })
    }

    pub(super) fn sync(&self, raw: Option<RawSync>) -> Result<SyncSettings, ConfigError> {
        let mut sync = SyncSettings::default();
        let Some(raw) = raw else {
            return Ok(sync);
        };
        sync.pbx_to_teams = raw.pbx_to_teams;
        if let Some(scope) = raw.scope {
            sync.scope = match scope.get_ref() {
                RawScope::All(word) if word == "all" => None,
                RawScope::All(word) => {
                    return Err(self.invalid(
                        scope.span(),
                        "sync.scope",
                        format!("expected \"all\" or a list of extensions, found {word:?}"),
                    ));
                }
                RawScope::List(list) => Some(list.clone()),
            };
        }
        if let Some(v) = raw.poll_interval_ms {
            sync.poll_interval =
                Duration::from_millis(self.ranged(&v, "sync.poll_interval_ms", 200, 3_600_000)?);
        }
        if let Some(v) = raw.catch_up_poll_seconds {
            sync.catch_up_poll =
                Duration::from_secs(self.ranged(&v, "sync.catch_up_poll_seconds", 1, 86_400)?);
        }
        if let Some(v) = raw.busy_response {
            sync.busy_response = match v.get_ref() {
                RawBusyResponse::Code(486) => BusyResponse::BusyHere,
                RawBusyResponse::Code(480) => BusyResponse::TemporarilyUnavailable,
                RawBusyResponse::Code(603) => BusyResponse::Decline,
                RawBusyResponse::Word(w) if w == "off" => BusyResponse::Off,
                other => {
                    return Err(self.invalid(
                        v.span(),
                        "sync.busy_response",
                        format!("expected 486, 480, 603 or \"off\", found {other:?}"),
                    ));
                }
            };
        }
        if let Some(list) = raw.teams_busy {
            let mut states = Vec::with_capacity(list.len());
            for (index, entry) in list.iter().enumerate() {
                states.push(BusyState::parse(entry.get_ref()).map_err(|message| {
                    self.invalid(entry.span(), format!("sync.teams_busy[{index}]"), message)
                })?);
            }
            sync.rules.busy = BusyRule::new(states);
        }
        if let Some(mode) = raw.dnd_mode {
            sync.rules.dnd_mode = match mode.get_ref().as_str() {
                "session" => DndMode::Session,
                "preferred" => DndMode::Preferred,
                "off" => DndMode::Off,
                other => {
                    return Err(self.invalid(
                        mode.span(),
                        "sync.dnd_mode",
                        format!(
                            "expected one of \"session\", \"preferred\", \"off\", found {other:?}"
                        ),
                    ));
                }
            };
        }
        if let Some(end) = raw.call_end {
            sync.rules.call_end = match end.get_ref().as_str() {
                "clear" => CallEnd::Clear,
                "available" => CallEnd::Available,
                other => {
                    return Err(self.invalid(
                        end.span(),
                        "sync.call_end",
                        format!("expected \"clear\" or \"available\", found {other:?}"),
                    ));
                }
            };
        }
        if let Some(v) = raw.session_expiration_minutes {
            sync.rules.session_expiration = Duration::from_secs(
                60 * self.ranged(&v, "sync.session_expiration_minutes", 5, 240)?,
            );
        }
        if let Some(v) = raw.coalesce_ms {
            sync.rules.coalesce =
                Duration::from_millis(self.ranged(&v, "sync.coalesce_ms", 0, 1_000)?);
        }
        if let Some(v) = raw.echo_grace_seconds {
            sync.rules.echo_grace =
                Duration::from_secs(self.ranged(&v, "sync.echo_grace_seconds", 0, 600)?);
        }
        Ok(sync)
    }

    pub(super) fn blf(&self, raw: Option<RawBlf>) -> Result<BlfSettings, ConfigError> {
        let Some(raw) = raw else {
            return Ok(BlfSettings::default());
        };
        let profile_of = |value: &Str, key: &str| {
            value
                .get_ref()
                .parse::<PhoneProfile>()
                .map_err(|e| self.invalid(value.span(), key, e.to_string()))
        };
        let profile = raw
            .profile
            .as_ref()
            .map(|p| profile_of(p, "blf.profile"))
            .transpose()?;
        let mut profiles = Vec::new();
        for (index, rule) in raw.profiles.iter().flatten().enumerate() {
            let needle = rule.user_agent.get_ref().trim().to_ascii_lowercase();
            if needle.is_empty() {
                return Err(self.invalid(
                    rule.user_agent.span(),
                    format!("blf.profiles[{index}].user_agent"),
                    "must not be empty".to_owned(),
                ));
            }
            let profile = profile_of(&rule.profile, &format!("blf.profiles[{index}].profile"))?;
            profiles.push((needle, profile));
        }
        Ok(BlfSettings {
            teams_dialog_ids: raw.teams_dialog_ids.unwrap_or(false),
            profile,
            profiles,
        })
    }

    pub(super) fn directory(
        &self,
        raw: Option<RawDirectory>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (ext, email) in raw.get_ref() {
            let key = format!("directory.{ext}");
            let valid_ext = !ext.is_empty()
                && ext.len() <= 64
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-_.*#".contains(&b));
            if !valid_ext {
                return Err(self.invalid(
                    email.span(),
                    key,
                    format!("{ext:?} is not an extension (letters, digits and +-_.*# only)"),
                ));
            }
            let text = email.get_ref().trim();
            let valid_email = text
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
                && !text.contains(char::is_whitespace);
            if !valid_email {
                return Err(self.invalid(
                    email.span(),
                    key,
                    format!("{text:?} is not an email address"),
                ));
            }
            out.push((ext.clone(), text.to_owned()));
        }
        Ok(out)
    }

    fn ranged(
        &self,
        value: &Spanned<Int>,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Int(number) = *value.get_ref();
        u64::try_from(number)
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                self.invalid(
                    value.span(),
                    key,
                    format!("must be between {min} and {max}, found {number}"),
                )
            })
    }

    fn http_url(&self, value: &Str, key: &str) -> Result<String, ConfigError> {
        let text = value.get_ref().trim();
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"));
        match rest {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(text.to_owned()),
            _ => Err(self.invalid(
                value.span(),
                key,
                format!("expected an http:// or https:// URL, found {text:?}"),
            )),
        }
    }

    fn path(&self, value: &Str, key: &str) -> Result<PathBuf, ConfigError> {
        let text = value.get_ref();
        if text.trim().is_empty() {
            return Err(self.invalid(value.span(), key, "empty path".to_owned()));
        }
        Ok(self.relative(text))
    }

    /// `path` against the configuration file's directory when relative.
    fn relative(&self, path: &str) -> PathBuf {
        let path = std::path::Path::new(path);
        if path.is_relative() {
            match self.file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
                _ => path.to_path_buf(),
            }
        } else {
            path.to_path_buf()
        }
    }
}
