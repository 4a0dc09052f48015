//! Logging set-up shared by netmon and the agent: human text on stderr, JSON lines
//! on stderr, or native journald fields.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    #[default]
    Text,
    /// One JSON object per line on stderr (for log shippers).
    Json,
    /// Structured fields sent straight to the systemd journal.
    Journald,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "bad log level {level:?} (use error, warn, info, debug, trace or a RUST_LOG-style filter): {message}"
    )]
    Level { level: String, message: String },
    #[error(
        "connect to the journal (/run/systemd/journal/socket); use --log-format text outside systemd: {0}"
    )]
    Journald(std::io::Error),
    #[error("a logger is already installed: {0}")]
    AlreadySet(String),
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level` so a
/// single module can be turned up without touching the unit's arguments.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = env_filter(std::env::var("RUST_LOG").ok(), level)?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // Colour codes only for a person at a terminal: in a pipe, a
                    // file or `docker logs` they are noise in every line.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Journald => {
            let layer = tracing_journald::layer().map_err(LoggingError::Journald)?;
            registry.with(layer).try_init()
        }
    };
    result.map_err(|e| LoggingError::AlreadySet(e.to_string()))
}

fn env_filter(rust_log: Option<String>, level: &str) -> Result<EnvFilter, LoggingError> {
    let spec = match rust_log {
        Some(s) if !s.trim().is_empty() => s,
        _ => level.to_string(),
    };
    EnvFilter::try_new(&spec).map_err(|e| LoggingError::Level {
        level: spec.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        // As the command lines parse them: through clap's ValueEnum.
        use clap::ValueEnum;
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::from_str("journald", false),
            Ok(LogFormat::Journald)
        );
        assert!(LogFormat::from_str("xml", false).is_err());
    }

    #[test]
    fn bad_level_is_reported() {
        let err = env_filter(None, "info,[[[").unwrap_err();
        assert!(err.to_string().contains("bad log level"), "{err}");
    }

    #[test]
    fn rust_log_wins_over_level() {
        assert!(env_filter(Some("debug".into()), "info,[[[").is_ok());
        assert!(env_filter(Some(" ".into()), "warn").is_ok());
    }
}
