//! Settings: key → JSON value, and typed helpers for the ones the product uses.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::directory::validate_extension;
use super::{Secret, Store, StoreError, corrupt, invalid, to_millis};

/// The keys of the typed settings.
pub mod keys {
    /// `bool`: PBX → Teams sync is on (issue 6). Default off.
    pub const PBX_TO_TEAMS: &str = "pbx_to_teams.enabled";
    /// [`Scope`](super::Scope): which extensions are synced. Default all.
    pub const SCOPE: &str = "sync.scope";
    /// `string`: the Microsoft Entra tenant id.
    pub const TENANT_ID: &str = "tenant.id";
    /// [`AdminConsent`](super::AdminConsent): when admin consent was granted.
    pub const ADMIN_CONSENT: &str = "tenant.admin_consent";
    /// `string`: the UPN of the account that signed in for the domain token.
    pub const DOMAIN_TOKEN_OWNER: &str = "domain_token.owner_upn";
    /// `string` (secret): the admin portal password hash (argon2 PHC string).
    pub const ADMIN_PASSWORD_HASH: &str = "admin.password_hash";
}

/// Which extensions the sync covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Scope {
    /// Every extension in the directory.
    #[default]
    AllAccounts,
    /// Only these extensions.
    SelectedExtensions {
        /// The extensions, sorted, without duplicates.
        extensions: Vec<String>,
    },
}

impl Scope {
    /// Whether `extension` is in scope.
    pub fn includes(&self, extension: &str) -> bool {
        match self {
            Self::AllAccounts => true,
            Self::SelectedExtensions { extensions } => extensions
                .binary_search_by(|e| e.as_str().cmp(extension))
                .is_ok(),
        }
    }
}

/// A tenant admin's consent to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminConsent {
    /// The tenant that consented.
    pub tenant_id: String,
    /// When the consent callback arrived.
    pub granted_at: SystemTime,
}

const MAX_KEY_LEN: usize = 128;

impl Store {
    /// The setting `key`, deserialised; `None` when unset. A stored value that does not
    /// deserialise as `T` is [`StoreError::Corrupt`].
    pub fn get_setting<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.read(|conn| {
            Ok(conn
                .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?)
        })?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| corrupt(format!("setting {key}"), e.to_string()))
        })
        .transpose()
    }

    /// Sets `key` to `value` (as JSON).
    pub fn set_setting<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
            return Err(invalid(
                "setting key",
                format!("must be 1 to {MAX_KEY_LEN} printable characters"),
            ));
        }
        let text =
            serde_json::to_string(value).map_err(|e| invalid("setting value", e.to_string()))?;
        let now = to_millis(self.now());
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, text, now],
            )?;
            Ok(())
        })
    }

    /// Removes `key`; whether it was set.
    pub fn delete_setting(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM settings WHERE key = ?1", [key])? > 0))
    }

    /// Whether PBX → Teams sync is on (default off).
    pub fn pbx_to_teams_enabled(&self) -> Result<bool, StoreError> {
        Ok(self.get_setting(keys::PBX_TO_TEAMS)?.unwrap_or(false))
    }

    /// Switches PBX → Teams sync on or off.
    pub fn set_pbx_to_teams_enabled(&self, enabled: bool) -> Result<(), StoreError> {
        self.set_setting(keys::PBX_TO_TEAMS, &enabled)
    }

    /// Which extensions are synced (default all).
    pub fn scope(&self) -> Result<Scope, StoreError> {
        Ok(self.get_setting(keys::SCOPE)?.unwrap_or_default())
    }

    /// Sets the scope. Selected extensions are validated, sorted and deduplicated.
    pub fn set_scope(&self, scope: &Scope) -> Result<(), StoreError> {
        let scope = match scope {
            Scope::AllAccounts => Scope::AllAccounts,
            Scope::SelectedExtensions { extensions } => {
                let mut list = extensions
                    .iter()
                    .map(|e| validate_extension(e).map(str::to_owned))
                    .collect::<Result<Vec<_>, _>>()?;
                list.sort();
                list.dedup();
                Scope::SelectedExtensions { extensions: list }
            }
        };
        self.set_setting(keys::SCOPE, &scope)
    }

    /// The tenant id, once known.
    pub fn tenant_id(&self) -> Result<Option<String>, StoreError> {
        self.get_setting(keys::TENANT_ID)
    }

    /// Records the tenant id.
    pub fn set_tenant_id(&self, tenant_id: &str) -> Result<(), StoreError> {
        let tenant_id = tenant_id.trim();
        if tenant_id.is_empty() {
            return Err(invalid("tenant id", "is empty"));
        }
        self.set_setting(keys::TENANT_ID, tenant_id)
    }

    /// When and for which tenant admin consent was granted.
    pub fn admin_consent(&self) -> Result<Option<AdminConsent>, StoreError> {
        self.get_setting(keys::ADMIN_CONSENT)
    }

    /// Records admin consent.
    pub fn set_admin_consent(&self, consent: &AdminConsent) -> Result<(), StoreError> {
        self.set_setting(keys::ADMIN_CONSENT, consent)
    }

    /// The UPN of the account behind the domain token (lowercased).
    pub fn domain_token_owner(&self) -> Result<Option<String>, StoreError> {
        self.get_setting(keys::DOMAIN_TOKEN_OWNER)
    }

    /// Records who signed in for the domain token.
    pub fn set_domain_token_owner(&self, upn: &str) -> Result<(), StoreError> {
        let upn = upn.trim().to_lowercase();
        if upn.is_empty() {
            return Err(invalid("domain token owner", "is empty"));
        }
        self.set_setting(keys::DOMAIN_TOKEN_OWNER, &upn)
    }

    /// The admin password hash, when one was set in the store.
    pub fn admin_password_hash(&self) -> Result<Option<Secret<String>>, StoreError> {
        Ok(self
            .get_setting::<String>(keys::ADMIN_PASSWORD_HASH)?
            .map(Secret::new))
    }

    /// Sets the admin password hash (the hash, never the password).
    pub fn set_admin_password_hash(&self, hash: &Secret<String>) -> Result<(), StoreError> {
        self.set_setting(keys::ADMIN_PASSWORD_HASH, hash.expose())
    }
}
