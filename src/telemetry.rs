//! Logging: installs the process-wide `tracing` subscriber that `[log]` describes.
//!
//! Events go to stderr, as human-readable lines or one JSON object per line. The
//! filter is `log.level`, unless the `RUST_LOG` environment variable is set and not
//! empty, in which case it wins (handy for a one-off `RUST_LOG=debug` run).

use std::io::IsTerminal;

use thiserror::Error;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;

use crate::config::{LogConfig, LogFormat};

/// The environment variable that overrides `log.level`.
pub const FILTER_ENV: &str = "RUST_LOG";

/// Why logging could not be set up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// The filter (from `log.level` or `RUST_LOG`) does not parse.
    #[error("invalid log filter {filter:?} from {origin}: {source}")]
    Filter {
        /// `"log.level"` or `"RUST_LOG"`.
        origin: &'static str,
        /// The filter text.
        filter: String,
        /// What is wrong with it.
        #[source]
        source: ParseError,
    },
    /// `RUST_LOG` is set but not valid Unicode.
    #[error("RUST_LOG is not valid Unicode")]
    EnvNotUnicode,
    /// A global subscriber is already installed.
    #[error("cannot install the log subscriber: {0}")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The filter logging would use: `RUST_LOG` when set and not empty, else `log.level`.
pub fn env_filter(config: &LogConfig) -> Result<EnvFilter, TelemetryError> {
    let (origin, filter) = match std::env::var(FILTER_ENV) {
        Ok(value) if !value.trim().is_empty() => (FILTER_ENV, value),
        Ok(_) | Err(std::env::VarError::NotPresent) => ("log.level", config.level.clone()),
        Err(std::env::VarError::NotUnicode(_)) => return Err(TelemetryError::EnvNotUnicode),
    };
    EnvFilter::builder()
        .parse(&filter)
        .map_err(|source| TelemetryError::Filter {
            origin,
            filter,
            source,
        })
}

/// Installs the global subscriber: `config.format` to stderr, filtered by
/// [`env_filter`]. Fails, without panicking, on a bad filter or when a subscriber is
/// already installed.
pub fn init_logging(config: &LogConfig) -> Result<(), TelemetryError> {
    let filter = env_filter(config)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(TelemetryError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(level: &str) -> LogConfig {
        LogConfig {
            format: LogFormat::Json,
            level: level.to_owned(),
        }
    }

    #[test]
    fn filter_from_level() {
        if std::env::var_os(FILTER_ENV).is_some() {
            return; // RUST_LOG would override log.level.
        }
        assert!(env_filter(&config("presence_proxy::proxy=debug,info")).is_ok());
        let err = env_filter(&config("info,[[")).unwrap_err();
        assert!(
            matches!(
                err,
                TelemetryError::Filter {
                    origin: "log.level",
                    ..
                }
            ),
            "{err}"
        );
    }
}
