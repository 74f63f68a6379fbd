//! What every command shares: the global flags and the error a command fails with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{self, Flags};
use crate::logging::LogFormat;

/// Flags every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Configuration file.
    #[arg(long, global = true, env = "WEFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format (overrides agent.log_format; default text).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
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

/// A command's failure: bad input (exit 2), something that went wrong at run time (exit 1), or
/// the agent a command asks cannot be reached (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Unreachable(String),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Input(_) | CommandError::Unreachable(_) => ExitCode::from(2),
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
