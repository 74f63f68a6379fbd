//! `weft version [-o json]`: what this binary is.

use crate::build_info::BuildInfo;
use crate::commands::output::{print_json, OutputArgs};
use crate::commands::CommandError;

pub fn run(output: OutputArgs) -> Result<(), CommandError> {
    let info = BuildInfo::current();
    if output.is_json() {
        return print_json(&info);
    }
    print!("{}", info.render());
    Ok(())
}
