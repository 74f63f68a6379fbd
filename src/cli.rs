//! The `weft` command line: parsing and dispatch. Each command lives in `commands/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{self, GlobalArgs};
use crate::logging::{choose_format, init_logging};

#[derive(Parser, Debug)]
#[command(name = "weft", version, about = "Host-subnet network agent, compatible with flannel's data")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
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
    /// Check this host's view of the cluster (`connectivity`: ping every peer's subnet).
    #[command(subcommand)]
    Check(commands::check::CheckCommand),
    /// Check this host before it joins: kernel, interface, ports, firewall, store, cloud (exit 1 on any ✗).
    Doctor(commands::output::OutputArgs),
    /// Ask the local agent what it is doing (exit 1: not ready; 2: not reachable).
    Status(commands::status::StatusArgs),
    /// Build a small cluster of hosts out of network namespaces on this machine.
    #[command(subcommand)]
    Lab(commands::lab::LabCommand),
    /// Print the version, git revision and optional features of this build.
    Version(commands::output::OutputArgs),
}

/// Parses the command line and runs the command; the process exit code.
pub fn main() -> ExitCode {
    crate::heap::configure();
    let cli = Cli::parse();
    // The flag, else agent.log_format (file or WEFT_AGENT__LOG_FORMAT). A config that does not
    // load is reported by the command itself.
    let configured = match cli.global.log_format {
        Some(_) => None,
        None => cli.global.load_config(crate::config::Flags::default()).ok().map(|l| l.config.agent.log_format),
    };
    init_logging(choose_format(cli.global.log_format, configured));
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
            Command::Version(output) => commands::version::run(output),
            Command::Check(cmd) => commands::check::run(&cli.global, cmd).await,
            Command::Status(args) => commands::status::run(&cli.global, args),
            Command::Doctor(output) => commands::doctor::run(&cli.global, output).await,
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
