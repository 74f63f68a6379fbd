//! The `weft` command line: parsing and dispatch. Each command lives in `commands/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::commands;
use crate::config::{self, Flags};

#[derive(Parser, Debug)]
#[command(name = "weft", version, about = "Host-subnet network agent, compatible with flannel's data")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Configuration file.
    #[arg(long, global = true, env = "WEFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Store kind (overrides store.kind).
    #[arg(long, global = true, value_name = "etcd|kube|local")]
    pub store_kind: Option<String>,
    /// etcd endpoints, comma-separated (overrides store.endpoints).
    #[arg(long, global = true, value_delimiter = ',', value_name = "URL")]
    pub store_endpoints: Vec<String>,
    /// Directory of the local store (overrides store.path).
    #[arg(long, global = true, value_name = "DIR")]
    pub store_path: Option<PathBuf>,
    /// Key prefix in etcd (overrides store.prefix).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub store_prefix: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Lease this host's subnet and make every other host's reachable.
    Agent(commands::agent::AgentArgs),
    /// Publish or show the cluster network config.
    #[command(subcommand)]
    Network(commands::network::NetworkCommand),
    /// List, reserve and release leases.
    #[command(subcommand)]
    Leases(commands::leases::LeasesCommand),
    /// Check the configuration.
    #[command(subcommand)]
    Config(commands::config_check::ConfigCommand),
    /// Build a small cluster of hosts out of network namespaces on this machine.
    #[command(subcommand)]
    Lab(commands::lab::LabCommand),
    /// Print the version.
    Version,
}

/// A command's failure: bad input (exit 2) or something that went wrong at run time (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Runtime(String),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Input(_) => ExitCode::from(2),
            CommandError::Runtime(_) => ExitCode::from(1),
        }
    }
}

impl From<config::ConfigError> for CommandError {
    fn from(e: config::ConfigError) -> Self {
        CommandError::Input(e.to_string())
    }
}

impl From<crate::store::StoreError> for CommandError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            e @ crate::store::StoreError::Config { .. } => CommandError::Input(e.to_string()),
            other => CommandError::Runtime(other.to_string()),
        }
    }
}

impl GlobalArgs {
    /// Loads the layered configuration with these flags (and `extra`) on top.
    pub fn load_config(&self, mut extra: Flags) -> Result<config::Loaded, CommandError> {
        if let Some(kind) = &self.store_kind {
            extra.set("store.kind", kind.as_str());
        }
        if !self.store_endpoints.is_empty() {
            extra.set("store.endpoints", self.store_endpoints.clone());
        }
        if let Some(path) = &self.store_path {
            extra.set("store.path", path.display().to_string());
        }
        if let Some(prefix) = &self.store_prefix {
            extra.set("store.prefix", prefix.as_str());
        }
        let (file, explicit) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
        };
        Ok(config::load(&file, explicit, extra)?)
    }
}

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The log filter, changeable while running (`agent.log_level` applies live).
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// `RUST_LOG` when set, else `info`.
fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

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

/// Parses the command line and runs the command; the process exit code.
pub fn main() -> ExitCode {
    crate::heap::configure();
    let cli = Cli::parse();
    init_logging(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => commands::agent::run(&cli.global, args).await,
            Command::Network(cmd) => commands::network::run(&cli.global, cmd).await,
            Command::Leases(cmd) => commands::leases::run(&cli.global, cmd).await,
            Command::Config(cmd) => commands::config_check::run(&cli.global, cmd),
            Command::Lab(cmd) => commands::lab::run(&cli.global, cmd).await,
            Command::Version => {
                println!("weft {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
