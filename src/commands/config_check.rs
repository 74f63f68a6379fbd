//! `weft config check`: the effective configuration and where each value came from.

use clap::Subcommand;

use crate::commands::{CommandError, GlobalArgs};
use crate::config::Flags;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration and print every value with its source.
    Check,
}

pub fn run(global: &GlobalArgs, command: ConfigCommand) -> Result<(), CommandError> {
    match command {
        ConfigCommand::Check => {
            let loaded = global.load_config(Flags::default())?;
            let width = loaded.describe().iter().map(|(k, v, _)| k.len() + v.len()).max().unwrap_or(0);
            for (key, value, source) in loaded.describe() {
                let pad = width - key.len() - value.len();
                println!("{key} = {value}{:pad$}  # {source}", "");
            }
            eprintln!("{}: ok", loaded.file.display());
            Ok(())
        }
    }
}
