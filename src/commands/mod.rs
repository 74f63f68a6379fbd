//! One module per command.

pub mod agent;
pub mod check;
pub mod config_check;
pub mod doctor;
pub mod lab;
pub mod leases;
pub mod network;
pub mod output;
pub mod status;
pub mod version;

mod common;
pub use common::{CommandError, GlobalArgs};
