//! `-o text|json`: how a command prints its answer, the same flag on every command that has one.

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::commands::CommandError;

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people: tables and sentences.
    #[default]
    Text,
    /// For programs: one JSON document on stdout.
    Json,
}

/// The `-o/--output` flag, flattened into each command that prints a result.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl OutputArgs {
    pub fn is_json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> Result<(), CommandError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CommandError::Runtime(format!("writing JSON: {e}")))?;
    println!("{text}");
    Ok(())
}
