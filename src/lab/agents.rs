//! `weft agent` processes inside host namespaces: start one, wait for a set of them to lease
//! their subnets, and stop them (SIGTERM, then SIGKILL after a grace period).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::pods::{read_subnet_env, SubnetInfo};
use super::LabError;
use crate::netns::Netns;

/// How an agent is started.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The `weft` binary.
    pub exe: PathBuf,
    pub config: PathBuf,
    /// Receives stdout and stderr.
    pub log: PathBuf,
    /// More arguments after `agent`.
    pub args: Vec<String>,
}

/// Starts `weft --config <config> agent` inside `ns`, in a process group of its own so that a
/// Ctrl-C meant for the command that started it does not reach it.
pub fn spawn(ns: &Netns, spec: &AgentSpec) -> Result<Child, LabError> {
    let log = File::create(&spec.log).map_err(LabError::io(format!("create {}", spec.log.display())))?;
    let stderr = log.try_clone().map_err(LabError::io(format!("open {}", spec.log.display())))?;
    let mut command = ns.command(&spec.exe).map_err(LabError::io(format!("enter {}", ns.name)))?;
    command
        .arg("--config")
        .arg(&spec.config)
        .arg("agent")
        .args(&spec.args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        // The log is a file: no colour escapes in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0);
    command.spawn().map_err(LabError::io(format!("start {} agent in {}", spec.exe.display(), ns.name)))
}

/// A host whose agent is expected to write a subnet.env.
pub struct Waiting<'a> {
    pub name: String,
    pub subnet_file: PathBuf,
    pub child: &'a mut Child,
}

/// Why the agents did not all lease a subnet.
#[derive(Debug)]
pub struct NotConverged {
    /// Hosts with their problem: "exited with status 1" or "no subnet.env after 30s".
    pub hosts: Vec<(String, String)>,
}

/// Waits until every host's subnet.env appears, calling `ready` for each as it does (in the order
/// they appear, with the time since the wait began). Stops early when an agent exits.
pub fn wait_for_subnets(
    hosts: &mut [Waiting<'_>],
    timeout: Duration,
    mut ready: impl FnMut(usize, SubnetInfo, Duration),
) -> Result<Vec<SubnetInfo>, NotConverged> {
    let start = Instant::now();
    let mut found: Vec<Option<SubnetInfo>> = vec![None; hosts.len()];
    loop {
        let mut failed = Vec::new();
        for (i, host) in hosts.iter_mut().enumerate() {
            if found[i].is_some() {
                continue;
            }
            if let Some(info) = read_subnet_env(&host.subnet_file) {
                found[i] = Some(info);
                ready(i, info, start.elapsed());
            } else if let Ok(Some(status)) = host.child.try_wait() {
                failed.push((host.name.clone(), format!("agent exited ({status})")));
            }
        }
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if !failed.is_empty() || start.elapsed() >= timeout {
            let waited = humantime::format_duration(Duration::from_secs(timeout.as_secs()));
            let mut hosts_failed = failed;
            for (i, host) in hosts.iter().enumerate() {
                let listed = hosts_failed.iter().any(|(n, _)| n == &host.name);
                if found[i].is_none() && !listed {
                    hosts_failed.push((host.name.clone(), format!("no subnet.env after {waited}")));
                }
            }
            return Err(NotConverged { hosts: hosts_failed });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a live process (a zombie waiting for its parent counts as gone).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Whether `pid` is a weft agent started with a config under `root` (a pid file can outlive its
/// process and the number be reused: never signal a stranger).
pub fn is_agent_under(pid: u32, root: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let root = root.as_os_str().as_encoded_bytes();
    args.iter().any(|a| *a == b"agent") && args.iter().any(|a| a.starts_with(root))
}

/// SIGTERM to every pid, SIGKILL to those still alive after `grace`; returns the pids that needed
/// SIGKILL. Waits (briefly) until they are gone so their namespaces can go too.
pub fn stop_all(pids: &[u32], grace: Duration) -> Vec<u32> {
    signal_all(pids, Signal::SIGTERM, grace, Duration::from_millis(50));
    let stubborn = alive(pids);
    signal_all(&stubborn, Signal::SIGKILL, Duration::from_secs(1), Duration::from_millis(20));
    stubborn
}

fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter().copied().filter(|p| is_alive(*p)).collect()
}

/// Sends `signal` to the live ones of `pids` and waits up to `within`, looking every `poll`, until
/// they are gone.
fn signal_all(pids: &[u32], signal: Signal, within: Duration, poll: Duration) {
    for pid in alive(pids) {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
    let deadline = Instant::now() + within;
    while !alive(pids).is_empty() && Instant::now() < deadline {
        std::thread::sleep(poll);
    }
}

/// The last `lines` lines of a log, to show why an agent failed.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_not_an_agent() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(!is_agent_under(me, Path::new("/run/weft-lab")));
        assert!(!is_alive(u32::MAX - 1));
    }

    #[test]
    fn tail_of_a_log() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(file.path(), 2), "b\nc");
        assert_eq!(log_tail(file.path(), 10), "a\nb\nc");
        assert_eq!(log_tail(Path::new("/nonexistent"), 3), "");
    }
}
