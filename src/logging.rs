//! Logging: the subscriber on stderr (text or JSON) and the filter that changes while running.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr (`--log-format`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The log filter, changeable while running (`agent.log_level` applies live).
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// `RUST_LOG` when set, else `info`.
fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the subscriber, once per process, with the filter `set_log_level` can change later.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(default_filter());
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    let _ = LOG_FILTER.set(handle);
}

/// Applies `agent.log_level` (a `RUST_LOG`-style filter; "" means `RUST_LOG` or `info`).
pub fn set_log_level(level: &str) {
    let filter = if level.is_empty() { Ok(default_filter()) } else { EnvFilter::try_new(level) };
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
