//! `weft doctor [-o json]`: checks this host before (or while) it joins, ✓/✗ with a fix for each
//! failure; exit 1 on any ✗, 2 for a configuration that does not load.

use crate::commands::output::{print_json, OutputArgs};
use crate::commands::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::doctor;

pub async fn run(global: &GlobalArgs, output: OutputArgs) -> Result<(), CommandError> {
    let config = global.load_config(Flags::default())?.config;
    let checks = doctor::gather::all(&config).await;
    if output.is_json() {
        print_json(&checks)?;
    } else {
        print!("{}", doctor::render(&checks));
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(CommandError::Runtime(format!("{failed} of {} checks failed", checks.len())));
    }
    Ok(())
}
