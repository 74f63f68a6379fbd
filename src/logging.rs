//! Logging: the subscriber on stderr (text or JSON) and the filter that changes while running.
//!
//! Precedence, for the format and for the level: flag > environment > file. The format:
//! `--log-format`, then `WEFT_AGENT__LOG_FORMAT` or `agent.log_format` (figment layers those),
//! then text. The level: `WEFT_AGENT__LOG_LEVEL`, then `RUST_LOG`, then `agent.log_level`, then
//! `info`.

use std::io::IsTerminal;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr (`--log-format`, `agent.log_format`).
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The environment variable that sets `agent.log_level` (figment's `WEFT_<SECTION>__<KEY>`).
pub const LEVEL_ENV: &str = "WEFT_AGENT__LOG_LEVEL";

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The log filter, changeable while running (`agent.log_level` applies live).
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// `agent.log_level` as a filter, or why it is not one. The filter is rebuilt on every config
/// reload, so what tracing-subscriber cannot take safely is refused here (both found by the
/// config fuzzer):
/// - field values match literally, never as regular expressions: a pattern can take seconds to
///   compile (one took over 10 s);
/// - its directive parser slices each directive by the indices of the trimmed text, so
///   whitespace before a directive with a non-ASCII character panics: directives are trimmed,
///   and only ASCII is taken (targets, levels and weft's span names are ASCII).
pub fn filter_from(level: &str) -> Result<EnvFilter, String> {
    if !level.is_ascii() {
        return Err("only ASCII is taken (targets, levels and span names)".into());
    }
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    EnvFilter::builder().with_regex(false).parse(directives.join(",")).map_err(|e| e.to_string())
}

/// `RUST_LOG` when set, else `info`.
fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The format in effect: the flag, else the configuration's (environment over file), else text.
pub fn choose_format(flag: Option<LogFormat>, configured: Option<LogFormat>) -> LogFormat {
    flag.or(configured).unwrap_or_default()
}

/// The level in effect. `configured` is `agent.log_level` as loaded (the environment's value
/// when `from_env`, else the file's); `RUST_LOG` beats the file but not `WEFT_AGENT__LOG_LEVEL`.
pub fn choose_level(configured: &str, from_env: bool, rust_log: Option<&str>) -> String {
    let rust_log = rust_log.filter(|r| !r.trim().is_empty());
    match (configured.is_empty(), from_env, rust_log) {
        (false, true, _) => configured.to_string(),
        (_, _, Some(rust_log)) => rust_log.to_string(),
        (false, false, None) => configured.to_string(),
        (true, _, None) => "info".to_string(),
    }
}

/// [`choose_level`] with this process's environment.
pub fn effective_level(configured: &str) -> String {
    let from_env = std::env::var_os(LEVEL_ENV).is_some_and(|v| !v.is_empty());
    choose_level(configured, from_env, std::env::var("RUST_LOG").ok().as_deref())
}

/// Installs the subscriber, once per process, with the filter `set_log_level` can change later.
/// Colours only when stderr is a terminal: journald and log files get plain text.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(default_filter());
    let registry = tracing_subscriber::registry().with(filter);
    let layer =
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    let _ = LOG_FILTER.set(handle);
}

/// Applies a `RUST_LOG`-style filter ("" means `RUST_LOG` or `info`).
pub fn set_log_level(level: &str) {
    let filter = if level.is_empty() { Ok(default_filter()) } else { filter_from(level) };
    match (filter, LOG_FILTER.get()) {
        (Ok(filter), Some(handle)) => {
            if let Err(e) = handle.reload(filter) {
                tracing::warn!(error = %e, "changing the log level");
            }
        }
        (Err(e), _) => tracing::warn!(level, error = %e, "agent.log_level is not a valid filter"),
        (Ok(_), None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_tracing_cannot_parse_safely_are_refused_or_mended() {
        // Before: a panic inside tracing-subscriber (a slice inside '𓚞'), on reload too.
        let error = filter_from("\t\u{1369e}rf,info").unwrap_err();
        assert!(error.contains("ASCII"), "{error}");
        assert!(filter_from("info, \u{e9}").is_err());
        let mended = filter_from(" weft=debug , info").unwrap().to_string();
        assert!(mended.contains("weft=debug") && mended.contains("info"), "{mended}");
    }

    #[test]
    fn format_flag_beats_configuration_beats_text() {
        assert_eq!(choose_format(Some(LogFormat::Text), Some(LogFormat::Json)), LogFormat::Text);
        assert_eq!(choose_format(None, Some(LogFormat::Json)), LogFormat::Json);
        assert_eq!(choose_format(None, None), LogFormat::Text);
    }

    #[test]
    fn level_environment_beats_file() {
        assert_eq!(choose_level("weft=debug", true, Some("warn")), "weft=debug", "WEFT_AGENT__LOG_LEVEL first");
        assert_eq!(choose_level("weft=debug", false, Some("warn")), "warn", "RUST_LOG over the file");
        assert_eq!(choose_level("weft=debug", false, None), "weft=debug");
        assert_eq!(choose_level("weft=debug", false, Some(" ")), "weft=debug", "an empty RUST_LOG is unset");
        assert_eq!(choose_level("", false, Some("trace")), "trace");
        assert_eq!(choose_level("", false, None), "info");
    }
}
