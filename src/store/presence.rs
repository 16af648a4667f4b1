//! Desired Teams presence per extension, for the sync engine (issue 6).
//!
//! The sync engine writes the state it wants Teams to show ([`Store::set_desired_presence`],
//! which bumps a revision) and, once Graph has accepted it, the state it confirmed and
//! the revision that was ([`Store::confirm_presence`]). After a restart, rows whose
//! confirmed revision lags the desired one are the work left to do. The states are
//! JSON, shaped by the sync engine.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, Row, params};
use serde_json::Value;

use super::{Store, StoreError, corrupt, from_millis, invalid, to_millis};

/// One extension's desired and last confirmed Teams presence.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPresence {
    /// The extension.
    pub extension: String,
    /// The state the sync engine wants Teams to show.
    pub desired: Value,
    /// Bumped each time `desired` is set.
    pub revision: u64,
    /// The last state Graph confirmed.
    pub confirmed: Option<Value>,
    /// The revision `confirmed` belongs to.
    pub confirmed_revision: Option<u64>,
    /// When `desired` was last set.
    pub updated_at: SystemTime,
    /// When a state was last confirmed.
    pub confirmed_at: Option<SystemTime>,
}

impl DesiredPresence {
    /// Whether Graph has confirmed the latest desired state.
    pub fn converged(&self) -> bool {
        self.confirmed_revision == Some(self.revision)
    }
}

const COLUMNS: &str =
    "extension, desired, revision, confirmed, confirmed_revision, updated_at, confirmed_at";

type Raw = (
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
);

fn raw(row: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn check(raw: Raw) -> Result<DesiredPresence, StoreError> {
    let (extension, desired, revision, confirmed, confirmed_revision, updated_at, confirmed_at) =
        raw;
    let what = || format!("desired presence of {extension}");
    let json = |text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| corrupt(what(), e.to_string()))
    };
    let rev =
        |n: i64| u64::try_from(n).map_err(|_| corrupt(what(), format!("negative revision {n}")));
    Ok(DesiredPresence {
        desired: json(&desired)?,
        revision: rev(revision)?,
        confirmed: confirmed.as_deref().map(json).transpose()?,
        confirmed_revision: confirmed_revision.map(rev).transpose()?,
        updated_at: from_millis(updated_at),
        confirmed_at: confirmed_at.map(from_millis),
        extension,
    })
}

impl Store {
    /// Sets the extension's desired state; returns its new revision.
    pub fn set_desired_presence(
        &self,
        extension: &str,
        desired: &Value,
    ) -> Result<u64, StoreError> {
        let text = desired.to_string();
        let now = to_millis(self.now());
        let revision: i64 = self.write(|tx| {
            Ok(tx.query_row(
                "INSERT INTO desired_presence (extension, desired, revision, updated_at) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (extension) DO UPDATE SET desired = excluded.desired,
                     revision = desired_presence.revision + 1, updated_at = excluded.updated_at
                 RETURNING revision",
                params![extension, text, now],
                |r| r.get(0),
            )?)
        })?;
        u64::try_from(revision).map_err(|_| {
            corrupt(
                format!("desired presence of {extension}"),
                "negative revision",
            )
        })
    }

    /// Records that Graph confirmed `confirmed`, the state of desired revision
    /// `revision`. [`StoreError::Invalid`] when the extension has no desired state.
    pub fn confirm_presence(
        &self,
        extension: &str,
        revision: u64,
        confirmed: &Value,
    ) -> Result<(), StoreError> {
        let revision = i64::try_from(revision).map_err(|_| invalid("revision", "out of range"))?;
        let text = confirmed.to_string();
        let now = to_millis(self.now());
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE desired_presence SET confirmed = ?2, confirmed_revision = ?3, confirmed_at = ?4
                 WHERE extension = ?1",
                params![extension, text, revision, now],
            )?;
            if n == 0 {
                return Err(invalid("extension", format!("{extension} has no desired presence")));
            }
            Ok(())
        })
    }

    /// The extension's desired and confirmed presence.
    pub fn desired_presence(&self, extension: &str) -> Result<Option<DesiredPresence>, StoreError> {
        let row = self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM desired_presence WHERE extension = ?1"),
                    [extension],
                    raw,
                )
                .optional()?)
        })?;
        row.map(check).transpose()
    }

    /// Every extension's desired presence, sorted by extension.
    pub fn list_desired_presence(&self) -> Result<Vec<DesiredPresence>, StoreError> {
        let rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM desired_presence ORDER BY extension"
            ))?;
            let rows = stmt.query_map([], raw)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        rows.into_iter().map(check).collect()
    }

    /// Forgets the extension's presence; whether there was one.
    pub fn delete_desired_presence(&self, extension: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM desired_presence WHERE extension = ?1",
                [extension],
            )? > 0)
        })
    }
}
