//! The extension directory: extension ↔ email/UPN ↔ Graph user id, and CSV import.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{CsvRowError, Store, StoreError, from_millis, invalid, to_millis};

/// One extension of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The extension (its SIP user part, e.g. `201`).
    pub extension: String,
    /// Its user's email/UPN as entered; matched case-insensitively.
    pub email: Option<String>,
    /// The Graph user id the email resolved to.
    pub graph_user_id: Option<String>,
    /// The Graph user's display name.
    pub display_name: Option<String>,
    /// Why the email last failed to resolve to a Teams user.
    pub last_error: Option<String>,
    /// When the row last changed.
    pub updated_at: SystemTime,
}

/// The outcome of resolving an extension's email to a Graph user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The email is this Graph user.
    Resolved {
        /// The Graph user id (`oid`).
        graph_user_id: String,
        /// The user's display name.
        display_name: Option<String>,
    },
    /// The email has no Graph user (or is refused): any earlier user id is cleared and
    /// the reason is kept to show.
    Failed {
        /// Why.
        error: String,
    },
}

/// What [`Store::upsert_extension`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new extension.
    Added,
    /// An existing extension with a different email.
    Updated,
    /// Nothing changed.
    Unchanged,
}

/// What a CSV import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// New extensions.
    pub added: usize,
    /// Existing extensions whose email changed.
    pub updated: usize,
    /// Rows identical to what was there.
    pub unchanged: usize,
}

const MAX_EXTENSION_LEN: usize = 64;
const MAX_EMAIL_LEN: usize = 254;
const COLUMNS: &str = "extension, email, graph_user_id, display_name, last_error, updated_at";
const EMAIL_CHANGED: &str = "the extension's email changed; pair again";

/// Checks an extension: 1–64 characters out of `A-Z a-z 0-9 . _ - + * #`.
pub(crate) fn validate_extension(extension: &str) -> Result<&str, StoreError> {
    if extension.is_empty() {
        return Err(invalid("extension", "is empty"));
    }
    if extension.len() > MAX_EXTENSION_LEN {
        return Err(invalid(
            "extension",
            format!("is longer than {MAX_EXTENSION_LEN} characters"),
        ));
    }
    if let Some(c) = extension
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '*' | '#')))
    {
        return Err(invalid(
            "extension",
            format!("{extension:?} contains {c:?}"),
        ));
    }
    Ok(extension)
}

/// An email/UPN as entered (trimmed) and its matching key (lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Email {
    shown: String,
    key: String,
}

fn parse_email(email: &str) -> Result<Email, StoreError> {
    let shown = email.trim();
    if shown.is_empty() {
        return Err(invalid("email", "is empty"));
    }
    if shown.len() > MAX_EMAIL_LEN {
        return Err(invalid(
            "email",
            format!("is longer than {MAX_EMAIL_LEN} characters"),
        ));
    }
    let bad = || {
        invalid(
            "email",
            format!("{shown:?} is not an address like name@example.com"),
        )
    };
    let (local, domain) = shown.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || shown
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | ',' | '<' | '>'))
    {
        return Err(bad());
    }
    Ok(Email {
        shown: shown.to_owned(),
        key: shown.to_lowercase(),
    })
}

fn entry(row: &Row<'_>) -> rusqlite::Result<DirectoryEntry> {
    Ok(DirectoryEntry {
        extension: row.get(0)?,
        email: row.get(1)?,
        graph_user_id: row.get(2)?,
        display_name: row.get(3)?,
        last_error: row.get(4)?,
        updated_at: from_millis(row.get(5)?),
    })
}

fn email_owner(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<Option<String>> {
    tx.query_row(
        "SELECT extension FROM directory WHERE email_key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}

/// Inserts or updates one extension inside `tx`. A changed email (other than in
/// letter case) clears the Graph resolution and marks the extension's paired token
/// as needing re-pairing: it belonged to the previous user.
fn upsert_in(
    tx: &Transaction<'_>,
    extension: &str,
    email: Option<&Email>,
    now: i64,
) -> Result<Upsert, StoreError> {
    if let Some(email) = email {
        if let Some(owner) = email_owner(tx, &email.key)?.filter(|o| o != extension) {
            return Err(StoreError::EmailInUse {
                email: email.shown.clone(),
                extension: owner,
            });
        }
    }
    let current: Option<(Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT email, email_key FROM directory WHERE extension = ?1",
            [extension],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (shown, key) = (
        email.map(|e| e.shown.as_str()),
        email.map(|e| e.key.as_str()),
    );
    let Some((cur_shown, cur_key)) = current else {
        tx.execute(
            "INSERT INTO directory (extension, email, email_key, updated_at) VALUES (?1, ?2, ?3, ?4)",
            params![extension, shown, key, now],
        )?;
        return Ok(Upsert::Added);
    };
    if cur_shown.as_deref() == shown {
        return Ok(Upsert::Unchanged);
    }
    if cur_key.as_deref() == key {
        tx.execute(
            "UPDATE directory SET email = ?2, updated_at = ?3 WHERE extension = ?1",
            params![extension, shown, now],
        )?;
        return Ok(Upsert::Updated);
    }
    tx.execute(
        "UPDATE directory SET email = ?2, email_key = ?3, graph_user_id = NULL, display_name = NULL,
                last_error = NULL, updated_at = ?4
         WHERE extension = ?1",
        params![extension, shown, key, now],
    )?;
    tx.execute(
        "UPDATE tokens SET status = 'needs_repairing', status_reason = ?2,
                generation = generation + 1, updated_at = ?3
         WHERE kind = 'user' AND owner = ?1",
        params![extension, EMAIL_CHANGED, now],
    )?;
    Ok(Upsert::Updated)
}

impl Store {
    /// Adds a new extension; [`StoreError::DuplicateExtension`] when it exists,
    /// [`StoreError::EmailInUse`] when another extension has the email.
    pub fn add_extension(
        &self,
        extension: &str,
        email: Option<&str>,
    ) -> Result<DirectoryEntry, StoreError> {
        let extension = validate_extension(extension)?;
        let email = email.map(parse_email).transpose()?;
        let now = to_millis(self.now());
        self.write(|tx| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM directory WHERE extension = ?1",
                    [extension],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if exists {
                return Err(StoreError::DuplicateExtension(extension.to_owned()));
            }
            upsert_in(tx, extension, email.as_ref(), now)?;
            Ok(tx.query_row(
                &format!("SELECT {COLUMNS} FROM directory WHERE extension = ?1"),
                [extension],
                entry,
            )?)
        })
    }

    /// Adds the extension, or sets its email when it exists.
    pub fn upsert_extension(
        &self,
        extension: &str,
        email: Option<&str>,
    ) -> Result<Upsert, StoreError> {
        let extension = validate_extension(extension)?;
        let email = email.map(parse_email).transpose()?;
        let now = to_millis(self.now());
        self.write(|tx| upsert_in(tx, extension, email.as_ref(), now))
    }

    /// Sets (or with `None` removes) an existing extension's email. A different
    /// address clears the Graph resolution and marks the extension's paired token as
    /// needing re-pairing.
    pub fn set_extension_email(
        &self,
        extension: &str,
        email: Option<&str>,
    ) -> Result<(), StoreError> {
        let email = email.map(parse_email).transpose()?;
        let now = to_millis(self.now());
        self.write(|tx| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM directory WHERE extension = ?1",
                    [extension],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::UnknownExtension(extension.to_owned()));
            }
            upsert_in(tx, extension, email.as_ref(), now)?;
            Ok(())
        })
    }

    /// Records the outcome of resolving the extension's email to a Graph user.
    pub fn set_resolution(
        &self,
        extension: &str,
        resolution: &Resolution,
    ) -> Result<(), StoreError> {
        let now = to_millis(self.now());
        let (id, name, error) = match resolution {
            Resolution::Resolved {
                graph_user_id,
                display_name,
            } => (Some(graph_user_id.as_str()), display_name.as_deref(), None),
            Resolution::Failed { error } => (None, None, Some(error.as_str())),
        };
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE directory SET graph_user_id = ?2, display_name = ?3, last_error = ?4, updated_at = ?5
                 WHERE extension = ?1",
                params![extension, id, name, error, now],
            )?;
            if n == 0 {
                return Err(StoreError::UnknownExtension(extension.to_owned()));
            }
            Ok(())
        })
    }

    /// Removes the extension (and, through the foreign key, its paired token);
    /// whether it was there.
    pub fn delete_extension(&self, extension: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute("DELETE FROM directory WHERE extension = ?1", [extension])? > 0)
        })
    }

    /// The extension's entry.
    pub fn extension(&self, extension: &str) -> Result<Option<DirectoryEntry>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM directory WHERE extension = ?1"),
                    [extension],
                    entry,
                )
                .optional()?)
        })
    }

    /// The extension whose email/UPN is `email`, compared case-insensitively.
    pub fn extension_by_email(&self, email: &str) -> Result<Option<DirectoryEntry>, StoreError> {
        let key = email.trim().to_lowercase();
        self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM directory WHERE email_key = ?1"),
                    [key],
                    entry,
                )
                .optional()?)
        })
    }

    /// The extensions whose email resolved to this Graph user (normally one; two
    /// addresses of one user give two), sorted by extension.
    pub fn extensions_by_graph_user_id(
        &self,
        graph_user_id: &str,
    ) -> Result<Vec<DirectoryEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM directory WHERE graph_user_id = ?1 ORDER BY extension"
            ))?;
            let rows = stmt.query_map([graph_user_id], entry)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every extension, sorted.
    pub fn list_extensions(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM directory ORDER BY extension"
            ))?;
            let rows = stmt.query_map([], entry)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Imports a CSV file with the header `extension,email` (either order, any letter
    /// case; RFC 4180 quoting; a UTF-8 byte-order mark and blank lines are ignored).
    /// Each row adds the extension or sets its email. All or nothing: when any row is
    /// bad (malformed, duplicated in the file, an email another extension keeps),
    /// [`StoreError::CsvRejected`] lists every bad row with its line number and nothing
    /// is imported. One transaction; on the async runtime, call it from
    /// `spawn_blocking`.
    pub fn import_directory_csv(&self, data: &[u8]) -> Result<ImportReport, StoreError> {
        let rejected = |errors| StoreError::CsvRejected { errors };
        let text = match std::str::from_utf8(data) {
            Ok(t) => t,
            Err(e) => {
                let line = data[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                return Err(rejected(vec![CsvRowError {
                    line,
                    message: "not valid UTF-8".to_owned(),
                }]));
            }
        };
        let mut errors = Vec::new();
        let rows = validate_rows(text, &mut errors);
        let now = to_millis(self.now());
        self.write(|tx| {
            let in_file: HashSet<&str> = rows.iter().map(|r| r.extension.as_str()).collect();
            // Emails kept by extensions the file does not mention.
            for row in &rows {
                if let Some(owner) = email_owner(tx, &row.email.key)? {
                    if owner != row.extension && !in_file.contains(owner.as_str()) {
                        errors.push(CsvRowError {
                            line: row.line,
                            message: format!(
                                "email {} is already used by extension {owner}",
                                row.email.shown
                            ),
                        });
                    }
                }
            }
            if !errors.is_empty() {
                errors.sort_by_key(|e| e.line);
                return Err(rejected(std::mem::take(&mut errors)));
            }
            // Free the addresses that move between extensions of the file first, so a
            // swap does not trip the uniqueness of email_key half way.
            for row in &rows {
                tx.execute(
                    "UPDATE directory SET email = NULL, email_key = NULL
                     WHERE extension = ?1 AND email_key IS NOT NULL AND email_key <> ?2",
                    params![row.extension, row.email.key],
                )?;
            }
            let mut report = ImportReport::default();
            for row in &rows {
                match upsert_in(tx, &row.extension, Some(&row.email), now)? {
                    Upsert::Added => report.added += 1,
                    Upsert::Updated => report.updated += 1,
                    Upsert::Unchanged => report.unchanged += 1,
                }
            }
            Ok(report)
        })
    }
}

/// A row that passed the checks that need no database.
struct CsvRow {
    line: usize,
    extension: String,
    email: Email,
}

fn validate_rows(text: &str, errors: &mut Vec<CsvRowError>) -> Vec<CsvRow> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let records = parse_csv(text, errors);
    let mut records = records.into_iter();
    let Some(header) = records.next() else {
        if errors.is_empty() {
            errors.push(CsvRowError {
                line: 1,
                message: "the file is empty; expected the header extension,email".to_owned(),
            });
        }
        return Vec::new();
    };
    let names: Vec<String> = header
        .fields
        .iter()
        .map(|f| f.trim().to_ascii_lowercase())
        .collect();
    let (ext_col, email_col) = match names.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["extension", "email"] => (0, 1),
        ["email", "extension"] => (1, 0),
        _ => {
            errors.push(CsvRowError {
                line: header.line,
                message: format!(
                    "expected the header extension,email, found {}",
                    header.fields.join(",")
                ),
            });
            return Vec::new();
        }
    };
    let mut rows = Vec::new();
    let mut seen_ext: HashMap<String, usize> = HashMap::new();
    let mut seen_email: HashMap<String, usize> = HashMap::new();
    for record in records {
        let line = record.line;
        let mut fail = |message: String| errors.push(CsvRowError { line, message });
        if record.fields.len() != 2 {
            fail(format!(
                "expected 2 fields (extension,email), found {}",
                record.fields.len()
            ));
            continue;
        }
        let ext = record.fields[ext_col].trim();
        let extension = match validate_extension(ext) {
            Ok(e) => e.to_owned(),
            Err(e) => {
                fail(reason(e));
                continue;
            }
        };
        let email = match parse_email(&record.fields[email_col]) {
            Ok(e) => e,
            Err(e) => {
                fail(reason(e));
                continue;
            }
        };
        if let Some(first) = seen_ext.insert(extension.clone(), line) {
            fail(format!("extension {extension} is also on line {first}"));
            continue;
        }
        if let Some(first) = seen_email.insert(email.key.clone(), line) {
            fail(format!("email {} is also on line {first}", email.shown));
            continue;
        }
        rows.push(CsvRow {
            line,
            extension,
            email,
        });
    }
    rows
}

fn reason(e: StoreError) -> String {
    match e {
        StoreError::Invalid { field, reason } => format!("{field} {reason}"),
        other => other.to_string(),
    }
}

/// One CSV record and the line it starts on.
#[derive(Debug, PartialEq, Eq)]
struct CsvRecord {
    line: usize,
    fields: Vec<String>,
}

/// RFC 4180 records: `,` separates fields, `"` quotes (`""` inside is a quote), CRLF,
/// LF or CR ends a record outside quotes. Unquoted fields are trimmed. Blank lines are
/// skipped. A malformed record is reported (with the line it starts on) and skipped.
fn parse_csv(text: &str, errors: &mut Vec<CsvRowError>) -> Vec<CsvRecord> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut any_quote = false;
        let mut problem: Option<&'static str> = None;
        loop {
            match chars.next() {
                None => break,
                Some(',') => {
                    fields.push(finish(&mut field, quoted));
                    quoted = false;
                }
                Some('\n') => {
                    line += 1;
                    break;
                }
                Some('\r') => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    line += 1;
                    break;
                }
                Some('"') if !quoted && field.trim().is_empty() => {
                    field.clear();
                    quoted = true;
                    any_quote = true;
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        match c {
                            '"' if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            '"' => {
                                closed = true;
                                break;
                            }
                            '\n' => {
                                line += 1;
                                field.push(c);
                            }
                            '\r' => {
                                if chars.peek() != Some(&'\n') {
                                    line += 1;
                                }
                                field.push(c);
                            }
                            c => field.push(c),
                        }
                    }
                    if !closed {
                        problem = Some("a quoted field is not closed before the end of the file");
                        break;
                    }
                }
                Some(c) if quoted => {
                    if !c.is_whitespace() {
                        problem.get_or_insert("text after a closing quote");
                    }
                }
                Some('"') => {
                    problem.get_or_insert("a quote inside an unquoted field");
                }
                Some(c) => field.push(c),
            }
        }
        fields.push(finish(&mut field, quoted));
        if let Some(message) = problem {
            errors.push(CsvRowError {
                line: start,
                message: message.to_owned(),
            });
            continue;
        }
        if !any_quote && fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        records.push(CsvRecord {
            line: start,
            fields,
        });
    }
    records
}

fn finish(field: &mut String, quoted: bool) -> String {
    let value = if quoted {
        std::mem::take(field)
    } else {
        field.trim().to_owned()
    };
    field.clear();
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<CsvRecord>, Vec<CsvRowError>) {
        let mut errors = Vec::new();
        let records = parse_csv(text, &mut errors);
        (records, errors)
    }

    #[test]
    fn csv_quoting_and_lines() {
        let (records, errors) = parse("a,b\r\n\"x,1\", \"y\"\"z\"\n\n\"multi\nline\",q\nlast,row");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            records,
            vec![
                CsvRecord {
                    line: 1,
                    fields: vec!["a".into(), "b".into()]
                },
                CsvRecord {
                    line: 2,
                    fields: vec!["x,1".into(), "y\"z".into()]
                },
                CsvRecord {
                    line: 4,
                    fields: vec!["multi\nline".into(), "q".into()]
                },
                CsvRecord {
                    line: 6,
                    fields: vec!["last".into(), "row".into()]
                },
            ]
        );
    }

    #[test]
    fn csv_errors_name_their_line() {
        let (records, errors) = parse("a,b\nx\"y,z\n\"q\"r,s\nok,1\n\"open,2\n");
        assert_eq!(records.len(), 2);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 5]);
    }

    #[test]
    fn emails_and_extensions() {
        assert!(parse_email("Alice@Example.com").is_ok());
        assert_eq!(
            parse_email(" Alice@Example.COM ").map(|e| e.key).ok(),
            Some("alice@example.com".to_owned())
        );
        for bad in [
            "",
            "alice",
            "@x.com",
            "a@",
            "a@b",
            "a b@x.com",
            "a@@x.com",
            "a@x.com.",
        ] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
        assert!(validate_extension("201").is_ok());
        assert!(validate_extension("sales-1").is_ok());
        for bad in ["", "20 1", "201;x", "é"] {
            assert!(validate_extension(bad).is_err(), "{bad}");
        }
    }
}
