//! `weft config check`: the effective configuration and where each value came from.

use clap::Subcommand;

use crate::build_info::{self, NotCompiled};
use crate::commands::output::{print_json, OutputArgs};
use crate::commands::{CommandError, GlobalArgs};
use crate::config::{Config, Flags};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration and print every value with its source. Exits 2 on an invalid
    /// value or a backend or store this binary was built without.
    Check(OutputArgs),
}

/// One effective value for `-o json`: `value` as JSON, the password hidden.
#[derive(serde::Serialize)]
struct Value {
    key: String,
    value: serde_json::Value,
    source: String,
}

#[derive(serde::Serialize)]
struct Checked {
    file: String,
    values: Vec<Value>,
}

pub fn run(global: &GlobalArgs, command: ConfigCommand) -> Result<(), CommandError> {
    match command {
        ConfigCommand::Check(output) => {
            let loaded = global.load_config(Flags::default())?;
            refuse_missing_features(&loaded.config)?;
            let rows = loaded.describe();
            if output.is_json() {
                let values = rows
                    .into_iter()
                    .map(|(key, value, source)| {
                        let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
                        Value { key, value, source }
                    })
                    .collect();
                return print_json(&Checked { file: loaded.file.display().to_string(), values });
            }
            let width = rows.iter().map(|(k, v, _)| k.len() + v.len()).max().unwrap_or(0);
            for (key, value, source) in rows {
                let pad = width - key.len() - value.len();
                println!("{key} = {value}{:pad$}  # {source}", "");
            }
            eprintln!("{}: ok", loaded.file.display());
            Ok(())
        }
    }
}

/// A backend or store left out of this build is bad input (exit 2): under systemd, whose unit
/// does not restart on 2, the agent stops instead of failing the same way every few seconds.
pub fn refuse_missing_features(config: &Config) -> Result<(), CommandError> {
    let missing =
        build_info::missing_features(config.network.backend.kind(), config.store.kind, &build_info::features());
    if missing.is_empty() {
        return Ok(());
    }
    Err(CommandError::Input(missing.iter().map(NotCompiled::to_string).collect::<Vec<_>>().join("; ")))
}
