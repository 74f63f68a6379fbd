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

/// The attachment a call is about: the container and its interface.
fn attachment(args: &CniArgs) -> scratch::Attachment<'_> {
    scratch::Attachment { container_id: &args.container_id, ifname: &args.ifname }
}

fn add(args: &CniArgs, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let subnet = subnet_file::read(&conf.subnet_file())?;
    let delegate = delegate::build(conf, &subnet);
    let bytes = Value::Object(delegate.clone()).to_string().into_bytes();
    let plugin = invoke::find(plugin_type(&delegate), &args.path)?;
    // Saved before the delegate runs, and kept when it fails: it may have taken an address (or
    // made a veth) before failing or being killed, and the DEL the runtime sends after a failed
    // ADD must hand it this config to release them.
    scratch::save(&conf.data_dir(), attachment(args), &bytes)?;
    invoke::run(&plugin, CniCommand::Add, &bytes)
}

/// DEL is idempotent: a container we hold nothing for is already deleted.
fn del(args: &CniArgs, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    let dir = conf.data_dir();
    let Some(saved) = scratch::load(&dir, attachment(args))? else {
        return Ok(Vec::new());
    };
    let delegate = with_prev_result(&saved, conf)?;
    let plugin = invoke::find(plugin_type(&delegate), &args.path)?;
    let out = invoke::run(&plugin, CniCommand::Del, &to_bytes(delegate))?;
    // Kept on failure: the runtime retries DEL, and needs the same config then.
    scratch::remove(&dir, attachment(args))?;
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
    let Some(saved) = scratch::load(&conf.data_dir(), attachment(args))? else {
        return Err(CniError::new(
            Code::UnknownContainer,
            format!("container {} ({}) was not added by this plugin", args.container_id, args.ifname),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use super::*;

    /// A host for one plugin call after another: a subnet.env, a data directory, and a fake
    /// delegate `recorder` on CNI_PATH that logs each command it gets and, when told to, fails
    /// ADD after "doing its work" (as a delegate killed half-way would).
    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Host {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let path = |name: &str| dir.path().join(name);
            std::fs::write(
                path("subnet.env"),
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            )
            .unwrap();
            std::fs::create_dir(path("bin")).unwrap();
            let script = path("bin/recorder");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\n[ \"$CNI_COMMAND\" = PROBE ] && exit 0\ncat >/dev/null\necho \"$CNI_COMMAND\" >> {log}\n\
                     if [ \"$CNI_COMMAND\" = ADD ] && [ -e {fail} ]; then\n  echo '{{\"code\":101,\"msg\":\"killed\"}}'; exit 1\nfi\n\
                     echo '{{\"cniVersion\":\"1.0.0\"}}'\n",
                    log = path("calls").display(),
                    fail = path("fail-add").display(),
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            // A child forked by another test's thread may briefly hold the script open for
            // writing (ETXTBSY). Once it ran, nothing can hold it any more.
            let probe = || std::process::Command::new(&script).env("CNI_COMMAND", "PROBE").status();
            let mut tries = 0;
            while let Err(e) = probe() {
                tries += 1;
                assert!(tries < 50, "the fake delegate does not run: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Host { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn fail_add(&self, fail: bool) {
            if fail {
                std::fs::write(self.path("fail-add"), "").unwrap();
            } else {
                let _ = std::fs::remove_file(self.path("fail-add"));
            }
        }

        fn data_dir(&self) -> PathBuf {
            self.path("data")
        }

        fn call(&self, command: &str, container: &str, ifname: &str) -> Result<Vec<u8>, CniError> {
            let vars: HashMap<&str, String> = HashMap::from([
                ("CNI_COMMAND", command.to_string()),
                ("CNI_CONTAINERID", container.to_string()),
                ("CNI_NETNS", "/run/netns/pod".to_string()),
                ("CNI_IFNAME", ifname.to_string()),
                ("CNI_PATH", self.path("bin").display().to_string()),
            ]);
            let conf = json!({
                "cniVersion": "1.0.0",
                "name": "weft",
                "type": "weft-cni",
                "subnetFile": self.path("subnet.env"),
                "dataDir": self.data_dir(),
                "delegate": { "type": "recorder" },
            });
            run(&|key: &str| vars.get(key).cloned(), conf.to_string().as_bytes())
        }

        /// The commands the delegate got, in order.
        fn delegated(&self) -> Vec<String> {
            std::fs::read_to_string(self.path("calls")).unwrap_or_default().lines().map(String::from).collect()
        }
    }

    fn saved(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|entries| entries.count()).unwrap_or(0)
    }

    /// The delegate may have taken an address before its ADD failed: the runtime's DEL must
    /// still reach it, with the config it was added with.
    #[test]
    fn a_failed_add_is_released_by_the_del_that_follows() {
        let host = Host::new();
        host.fail_add(true);
        let err = host.call("ADD", "c1", "eth0").unwrap_err();
        assert_eq!(err.code, Code::Delegate(101), "{err:?}");
        assert_eq!(saved(&host.data_dir()), 1, "the config is kept for DEL");
        host.call("DEL", "c1", "eth0").unwrap();
        assert_eq!(host.delegated(), ["ADD", "DEL"]);
        assert_eq!(saved(&host.data_dir()), 0, "forgotten once DEL went through");
        // A retried ADD that works is deleted the same way.
        host.fail_add(false);
        host.call("ADD", "c1", "eth0").unwrap();
        host.call("DEL", "c1", "eth0").unwrap();
        assert_eq!(host.delegated(), ["ADD", "DEL", "ADD", "DEL"]);
    }

    /// Two interfaces of one container are two attachments, each deleted on its own.
    #[test]
    fn each_interface_of_a_container_is_deleted() {
        let host = Host::new();
        host.call("ADD", "c1", "eth0").unwrap();
        host.call("ADD", "c1", "net1").unwrap();
        host.call("DEL", "c1", "eth0").unwrap();
        host.call("CHECK", "c1", "net1").unwrap();
        assert_eq!(host.call("CHECK", "c1", "eth0").unwrap_err().code, Code::UnknownContainer);
        host.call("DEL", "c1", "net1").unwrap();
        assert_eq!(host.delegated(), ["ADD", "ADD", "DEL", "CHECK", "DEL"]);
        // Both gone: another DEL delegates nothing.
        host.call("DEL", "c1", "net1").unwrap();
        assert_eq!(host.delegated().len(), 5);
        assert_eq!(saved(&host.data_dir()), 0);
    }
}
