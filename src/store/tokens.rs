//! OAuth tokens, sealed at rest, with compare-and-swap rotation.

use std::fmt;
use std::time::SystemTime;

use rusqlite::{OptionalExtension, Row, params};

use super::directory::validate_extension;
use super::{Secret, Store, StoreError, corrupt, from_millis, invalid, to_millis};

/// Which token a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Client credentials for a tenant (no refresh token). Owner: the tenant id.
    AppOnly,
    /// The delegated domain token an admin signed in for, one per tenant. Owner: the
    /// tenant id.
    Domain,
    /// A user's delegated token from pairing. Owner: the extension.
    User,
}

impl TokenKind {
    /// The name stored in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppOnly => "app_only",
            Self::Domain => "domain",
            Self::User => "user",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "app_only" => Some(Self::AppOnly),
            "domain" => Some(Self::Domain),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// A token row's identity: its kind and owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The kind.
    pub kind: TokenKind,
    /// The tenant id ([`TokenKind::AppOnly`], [`TokenKind::Domain`]) or the extension
    /// ([`TokenKind::User`]).
    pub owner: String,
}

impl TokenKey {
    /// The app-only token of `tenant`.
    pub fn app_only(tenant: impl Into<String>) -> Self {
        Self {
            kind: TokenKind::AppOnly,
            owner: tenant.into(),
        }
    }

    /// The domain token of `tenant`.
    pub fn domain(tenant: impl Into<String>) -> Self {
        Self {
            kind: TokenKind::Domain,
            owner: tenant.into(),
        }
    }

    /// The token `extension` was paired with.
    pub fn user(extension: impl Into<String>) -> Self {
        Self {
            kind: TokenKind::User,
            owner: extension.into(),
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        match self.kind {
            TokenKind::User => validate_extension(&self.owner).map(|_| ()),
            TokenKind::AppOnly | TokenKind::Domain => {
                if self.owner.is_empty()
                    || self.owner.len() > 128
                    || self
                        .owner
                        .chars()
                        .any(|c| c.is_control() || c.is_whitespace())
                {
                    Err(invalid(
                        "token owner",
                        "must be a tenant id of 1 to 128 printable characters",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Associated data binding a sealed field to this row.
    fn aad(&self, field: &str) -> String {
        format!(
            "presence-proxy token v1\u{1f}{}\u{1f}{}\u{1f}{field}",
            self.kind.as_str(),
            self.owner
        )
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.owner)
    }
}

/// Whether a token can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable (refreshable).
    Valid,
    /// The identity platform refused it (e.g. `invalid_grant`), or its extension's
    /// email changed: the user must sign in / pair again.
    NeedsRepairing {
        /// Why, to show the user.
        reason: String,
    },
}

/// A token row without its secrets: what a status page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The row.
    pub key: TokenKey,
    /// Who signed in (the id_token's UPN/preferred_username).
    pub subject_upn: Option<String>,
    /// The signed-in user's object id (Graph user id).
    pub graph_user_oid: Option<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// When the access token expires.
    pub access_expires_at: SystemTime,
    /// Whether a refresh token is held.
    pub has_refresh_token: bool,
    /// Usable or not.
    pub status: TokenStatus,
    /// Bumped on every write to the row; the compare-and-swap value of
    /// [`Store::replace_refresh_token`].
    pub generation: u64,
    /// When the row last changed.
    pub updated_at: SystemTime,
}

/// A token row with its secrets decrypted.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Everything but the secrets.
    pub info: TokenInfo,
    /// The access token.
    pub access_token: Secret<String>,
    /// The refresh token, for delegated tokens.
    pub refresh_token: Option<Secret<String>>,
}

/// A token from a sign-in or a client-credentials grant, for [`Store::put_token`].
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Who signed in (stored lowercased: UPNs compare case-insensitively).
    pub subject_upn: Option<String>,
    /// Their object id.
    pub graph_user_oid: Option<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// The access token.
    pub access_token: Secret<String>,
    /// When it expires.
    pub access_expires_at: SystemTime,
    /// The refresh token, when one was issued.
    pub refresh_token: Option<Secret<String>>,
}

/// The result of a refresh, for [`Store::replace_refresh_token`].
#[derive(Debug, Clone)]
pub struct TokenRefresh {
    /// The new access token.
    pub access_token: Secret<String>,
    /// When it expires.
    pub access_expires_at: SystemTime,
    /// The new refresh token; `None` keeps the stored one (when none was issued).
    pub refresh_token: Option<Secret<String>>,
    /// The scopes now granted; `None` keeps the stored ones.
    pub scopes: Option<Vec<String>>,
}

/// The outcome of a compare-and-swap on a token row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Rotation {
    /// The row was at the expected generation and now holds the new values.
    Replaced {
        /// The row's new generation.
        generation: u64,
    },
    /// Someone else wrote the row first (or deleted it): nothing was changed. Read
    /// the row again and use what is there.
    Stale {
        /// The row's generation now; `None` when the row is gone.
        current_generation: Option<u64>,
    },
}

impl Rotation {
    /// Whether this writer won.
    pub fn replaced(self) -> bool {
        matches!(self, Self::Replaced { .. })
    }
}

const ACCESS: &str = "access_token";
const REFRESH: &str = "refresh_token";
const COLUMNS: &str = "kind, owner, subject_upn, graph_user_oid, scopes, access_expires_at, \
     refresh_token IS NOT NULL, status, status_reason, generation, updated_at";

/// A row as read, before checking.
struct RawInfo {
    kind: String,
    owner: String,
    subject_upn: Option<String>,
    graph_user_oid: Option<String>,
    scopes: String,
    access_expires_at: i64,
    has_refresh_token: bool,
    status: String,
    status_reason: Option<String>,
    generation: i64,
    updated_at: i64,
}

fn raw_info(row: &Row<'_>) -> rusqlite::Result<RawInfo> {
    Ok(RawInfo {
        kind: row.get(0)?,
        owner: row.get(1)?,
        subject_upn: row.get(2)?,
        graph_user_oid: row.get(3)?,
        scopes: row.get(4)?,
        access_expires_at: row.get(5)?,
        has_refresh_token: row.get(6)?,
        status: row.get(7)?,
        status_reason: row.get(8)?,
        generation: row.get(9)?,
        updated_at: row.get(10)?,
    })
}

impl RawInfo {
    fn check(self) -> Result<TokenInfo, StoreError> {
        let what = || format!("token {}/{}", self.kind, self.owner);
        let kind = TokenKind::parse(&self.kind).ok_or_else(|| corrupt(what(), "unknown kind"))?;
        let status = match self.status.as_str() {
            "valid" => TokenStatus::Valid,
            "needs_repairing" => TokenStatus::NeedsRepairing {
                reason: self.status_reason.clone().unwrap_or_default(),
            },
            other => return Err(corrupt(what(), format!("unknown status {other:?}"))),
        };
        let generation = generation(self.generation, &what())?;
        Ok(TokenInfo {
            key: TokenKey {
                kind,
                owner: self.owner,
            },
            subject_upn: self.subject_upn,
            graph_user_oid: self.graph_user_oid,
            scopes: self.scopes.split_whitespace().map(str::to_owned).collect(),
            access_expires_at: from_millis(self.access_expires_at),
            has_refresh_token: self.has_refresh_token,
            status,
            generation,
            updated_at: from_millis(self.updated_at),
        })
    }
}

fn generation(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, format!("negative generation {value}")))
}

fn join_scopes(scopes: &[String]) -> Result<String, StoreError> {
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        return Err(invalid("scopes", "a scope is empty or contains whitespace"));
    }
    Ok(scopes.join(" "))
}

impl Store {
    /// Stores a token from a sign-in (pairing, domain sign-in) or a client-credentials
    /// grant, replacing whatever the row held; the row is valid afterwards. A user
    /// token needs its extension in the directory ([`StoreError::UnknownExtension`]).
    /// Returns the row's new generation. The commit is durable on return (one fsync).
    pub fn put_token(&self, key: &TokenKey, token: &NewToken) -> Result<u64, StoreError> {
        key.validate()?;
        let scopes = join_scopes(&token.scopes)?;
        let access = self.seal(&key.aad(ACCESS), token.access_token.expose())?;
        let refresh = token
            .refresh_token
            .as_ref()
            .map(|r| self.seal(&key.aad(REFRESH), r.expose()))
            .transpose()?;
        let extension = (key.kind == TokenKind::User).then_some(key.owner.as_str());
        let now = to_millis(self.now());
        let subject = token.subject_upn.as_deref().map(str::to_lowercase);
        self.write_durable(|tx| {
            if let Some(ext) = extension {
                let known = tx
                    .query_row(
                        "SELECT 1 FROM directory WHERE extension = ?1",
                        [ext],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !known {
                    return Err(StoreError::UnknownExtension(ext.to_owned()));
                }
            }
            let g: i64 = tx.query_row(
                "INSERT INTO tokens (kind, owner, extension, subject_upn, graph_user_oid, scopes,
                                     access_token, access_expires_at, refresh_token, status,
                                     status_reason, generation, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'valid', NULL, 1, ?10)
                 ON CONFLICT (kind, owner) DO UPDATE SET
                     subject_upn = excluded.subject_upn, graph_user_oid = excluded.graph_user_oid,
                     scopes = excluded.scopes, access_token = excluded.access_token,
                     access_expires_at = excluded.access_expires_at,
                     refresh_token = excluded.refresh_token, status = 'valid', status_reason = NULL,
                     generation = tokens.generation + 1, updated_at = excluded.updated_at
                 RETURNING generation",
                params![
                    key.kind.as_str(),
                    key.owner,
                    extension,
                    subject,
                    token.graph_user_oid,
                    scopes,
                    access,
                    to_millis(token.access_expires_at),
                    refresh,
                    now
                ],
                |r| r.get(0),
            )?;
            generation(g, &format!("token {key}"))
        })
    }

    /// The token row with its secrets decrypted. [`StoreError::WrongKey`] when the
    /// store's key is not the one it was written with; [`StoreError::Decrypt`] when a
    /// ciphertext was altered or copied from another row.
    pub fn get_token(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        let row = self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS}, access_token, refresh_token FROM tokens WHERE kind = ?1 AND owner = ?2"),
                    params![key.kind.as_str(), key.owner],
                    |r| Ok((raw_info(r)?, r.get::<_, Vec<u8>>(11)?, r.get::<_, Option<Vec<u8>>>(12)?)),
                )
                .optional()?)
        })?;
        let Some((raw, access, refresh)) = row else {
            return Ok(None);
        };
        let info = raw.check()?;
        let access_token =
            self.open_secret(&key.aad(ACCESS), &access, &format!("token {key} {ACCESS}"))?;
        let refresh_token = refresh
            .map(|r| self.open_secret(&key.aad(REFRESH), &r, &format!("token {key} {REFRESH}")))
            .transpose()?;
        Ok(Some(TokenRecord {
            info,
            access_token,
            refresh_token,
        }))
    }

    /// The token row without its secrets.
    pub fn token_info(&self, key: &TokenKey) -> Result<Option<TokenInfo>, StoreError> {
        let raw = self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM tokens WHERE kind = ?1 AND owner = ?2"),
                    params![key.kind.as_str(), key.owner],
                    raw_info,
                )
                .optional()?)
        })?;
        raw.map(RawInfo::check).transpose()
    }

    /// Every token row without secrets, by kind and owner.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let raws = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tokens ORDER BY kind, owner"
            ))?;
            let rows = stmt.query_map([], raw_info)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        raws.into_iter().map(RawInfo::check).collect()
    }

    /// Stores the result of a refresh, only if the row is still at
    /// `expected_generation` (the generation of the record whose refresh token was
    /// spent). One transaction: of two refreshes racing from the same record, exactly
    /// one gets [`Rotation::Replaced`]; the other gets [`Rotation::Stale`] and must
    /// re-read the row rather than write its (already superseded) tokens. The row is
    /// valid afterwards. Durable on return (one fsync).
    pub fn replace_refresh_token(
        &self,
        key: &TokenKey,
        expected_generation: u64,
        refresh: &TokenRefresh,
    ) -> Result<Rotation, StoreError> {
        let scopes = refresh.scopes.as_deref().map(join_scopes).transpose()?;
        let access = self.seal(&key.aad(ACCESS), refresh.access_token.expose())?;
        let new_refresh = refresh
            .refresh_token
            .as_ref()
            .map(|r| self.seal(&key.aad(REFRESH), r.expose()))
            .transpose()?;
        let now = to_millis(self.now());
        let expires = to_millis(refresh.access_expires_at);
        self.compare_and_swap(key, expected_generation, |tx, expected| {
            Ok(tx.execute(
                "UPDATE tokens SET access_token = ?4, access_expires_at = ?5,
                        refresh_token = COALESCE(?6, refresh_token), scopes = COALESCE(?7, scopes),
                        status = 'valid', status_reason = NULL,
                        generation = generation + 1, updated_at = ?8
                 WHERE kind = ?1 AND owner = ?2 AND generation = ?3",
                params![
                    key.kind.as_str(),
                    key.owner,
                    expected,
                    access,
                    expires,
                    new_refresh,
                    scopes,
                    now
                ],
            )?)
        })
    }

    /// Marks the token as needing re-pairing (e.g. after `invalid_grant`), only if the
    /// row is still at `expected_generation`: a refresh that lost a race gets
    /// `invalid_grant` for the token the winner already spent, and must not mark the
    /// winner's fresh token bad.
    pub fn mark_needs_repairing(
        &self,
        key: &TokenKey,
        expected_generation: u64,
        reason: &str,
    ) -> Result<Rotation, StoreError> {
        let now = to_millis(self.now());
        self.compare_and_swap(key, expected_generation, |tx, expected| {
            Ok(tx.execute(
                "UPDATE tokens SET status = 'needs_repairing', status_reason = ?4,
                        generation = generation + 1, updated_at = ?5
                 WHERE kind = ?1 AND owner = ?2 AND generation = ?3",
                params![key.kind.as_str(), key.owner, expected, reason, now],
            )?)
        })
    }

    fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected_generation: u64,
        update: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<usize, StoreError>,
    ) -> Result<Rotation, StoreError> {
        let Ok(expected) = i64::try_from(expected_generation) else {
            return Err(invalid("generation", "out of range"));
        };
        self.write_durable(|tx| {
            let current: Option<i64> = tx
                .query_row(
                    "SELECT generation FROM tokens WHERE kind = ?1 AND owner = ?2",
                    params![key.kind.as_str(), key.owner],
                    |r| r.get(0),
                )
                .optional()?;
            let what = format!("token {key}");
            match current {
                Some(g) if g == expected => {
                    if update(tx, expected)? != 1 {
                        return Err(corrupt(what, "row changed inside its transaction"));
                    }
                    Ok(Rotation::Replaced {
                        generation: generation(expected + 1, &what)?,
                    })
                }
                Some(g) => Ok(Rotation::Stale {
                    current_generation: Some(generation(g, &what)?),
                }),
                None => Ok(Rotation::Stale {
                    current_generation: None,
                }),
            }
        })
    }

    /// Removes the token (unpairing); whether it was there.
    pub fn delete_token(&self, key: &TokenKey) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM tokens WHERE kind = ?1 AND owner = ?2",
                params![key.kind.as_str(), key.owner],
            )? > 0)
        })
    }
}
