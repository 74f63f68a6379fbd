//! `weft-cni`: a CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION) that reads the agent's
//! subnet.env and delegates the work to a standard plugin (bridge + host-local by default), as
//! flannel's CNI plugin does. Errors go to stdout as CNI error JSON, with exit status 1.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

pub mod args;
pub mod conf;
pub mod delegate;
pub mod error;
pub mod invoke;
pub mod scratch;
pub mod subnet_file;

pub use args::{CniArgs, CniCommand};
pub use conf::NetConf;
pub use error::{CniError, Code};

/// Runs one plugin call: `env` looks up environment variables, `stdin` is the network config.
/// Returns what to print on success.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let command = args::command(env)?;
    if command == CniCommand::Version {
        return Ok(version_info());
    }
    let args = args::args(env, command)?;
    let conf = NetConf::parse(stdin)?;
    match command {
        CniCommand::Add => add(&args, &conf),
        CniCommand::Del => del(&args, &conf),
        CniCommand::Check => check(&args, &conf),
        CniCommand::Version => Ok(version_info()),
    }
}

fn version_info() -> Vec<u8> {
    json!({
        "cniVersion": conf::LATEST_VERSION,
        "supportedVersions": conf::SUPPORTED_VERSIONS,
    })
    .to_string()
    .into_bytes()
}

fn add(args: &CniArgs, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let subnet = subnet_file::read(&conf.subnet_file())?;
    let delegate = delegate::build(conf, &subnet);
    let bytes = Value::Object(delegate.clone()).to_string().into_bytes();
    let plugin = invoke::find(plugin_type(&delegate), &args.path)?;
    // Saved first, so a DEL after a crash half-way through ADD still frees the address.
    scratch::save(&conf.data_dir(), &args.container_id, &bytes)?;
    match invoke::run(&plugin, CniCommand::Add, &bytes) {
        Ok(result) => Ok(result),
        Err(e) => {
            let _ = scratch::remove(&conf.data_dir(), &args.container_id);
            Err(e)
        }
    }
}

/// DEL is idempotent: a container we hold nothing for is already deleted.
fn del(args: &CniArgs, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let dir = conf.data_dir();
    let Some(saved) = scratch::load(&dir, &args.container_id)? else {
        return Ok(Vec::new());
    };
    let delegate = with_prev_result(&saved, conf)?;
    let plugin = invoke::find(plugin_type(&delegate), &args.path)?;
    let out = invoke::run(&plugin, CniCommand::Del, &to_bytes(delegate))?;
    // Kept on failure: the runtime retries DEL, and needs the same config then.
    scratch::remove(&dir, &args.container_id)?;
    Ok(out)
}

fn check(args: &CniArgs, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    if !conf.supports_check() {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("CHECK needs cniVersion 0.4.0 or later, not {}", conf.cni_version),
            "",
        ));
    }
    let Some(saved) = scratch::load(&conf.data_dir(), &args.container_id)? else {
        return Err(CniError::new(
            Code::UnknownContainer,
            format!("container {} was not added by this plugin", args.container_id),
            "",
        ));
    };
    let delegate = with_prev_result(&saved, conf)?;
    let plugin = invoke::find(plugin_type(&delegate), &args.path)?;
    invoke::run(&plugin, CniCommand::Check, &to_bytes(delegate))
}

/// The saved delegate config with the runtime's `prevResult` (CHECK and DEL carry one).
fn with_prev_result(saved: &[u8], conf: &NetConf) -> Result<serde_json::Map<String, Value>, CniError> {
    let mut delegate: serde_json::Map<String, Value> = serde_json::from_slice(saved)
        .map_err(|e| CniError::new(Code::Decode, "the saved delegate config is corrupt", e.to_string()))?;
    if let Some(prev) = &conf.prev_result {
        delegate.insert("prevResult".into(), prev.clone());
    }
    Ok(delegate)
}

fn plugin_type(delegate: &serde_json::Map<String, Value>) -> &str {
    delegate.get("type").and_then(Value::as_str).unwrap_or("")
}

fn to_bytes(delegate: serde_json::Map<String, Value>) -> Vec<u8> {
    Value::Object(delegate).to_string().into_bytes()
}

/// The binary's whole life: read stdin and the environment, run, print, exit.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env = |key: &str| std::env::var(key).ok();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&env, &stdin),
        Err(e) => Err(CniError::new(Code::Io, "reading the network config from stdin", e.to_string())),
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(out) => {
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(&conf::error_version(&stdin)));
            let _ = stdout.flush();
            ExitCode::FAILURE
        }
    }
}
