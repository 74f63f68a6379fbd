//! Finding the delegate plugin on CNI_PATH and running it, as the runtime would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::error::{CniError, Code};
use super::CniCommand;

/// The first executable named `plugin` in `dirs`.
pub fn find(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(Code::InvalidConfig, format!("delegate type {plugin:?} is not a plugin name"), ""));
    }
    dirs.iter()
        .map(|dir| dir.join(plugin))
        .find(|path| path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            CniError::new(
                Code::DelegateNotFound,
                format!("delegate plugin {plugin:?} not found on CNI_PATH"),
                format!("searched {}", searched.join(":")),
            )
        })
}

/// Runs `plugin` for `command` with `config` on stdin; its stdout on success. The CNI_*
/// variables we were given pass through the environment; only the command may differ.
pub fn run(plugin: &Path, command: CniCommand, config: &[u8]) -> Result<Vec<u8>, CniError> {
    let io =
        |what: &str, e: std::io::Error| CniError::new(Code::Io, format!("{what} {}", plugin.display()), e.to_string());
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("starting", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config).map_err(|e| io("writing the config to", e))?;
    }
    let output = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(delegate_error(plugin, &output.stdout, &output.stderr))
}

/// The delegate's own CNI error when it printed one, else what it said on stderr.
fn delegate_error(plugin: &Path, stdout: &[u8], stderr: &[u8]) -> CniError {
    #[derive(Deserialize)]
    struct Wire {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<Wire>(stdout) {
        Ok(wire) => CniError::new(Code::Delegate(wire.code), wire.msg, wire.details),
        Err(_) => CniError::new(
            Code::DelegateFailed,
            format!("delegate plugin {} failed", plugin.display()),
            String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr }).trim().to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegate_errors_keep_their_code() {
        let e = delegate_error(
            Path::new("/x/bridge"),
            br#"{"cniVersion":"1.0.0","code":7,"msg":"bad bridge","details":"d"}"#,
            b"",
        );
        assert_eq!((e.code, e.msg.as_str(), e.details.as_str()), (Code::Delegate(7), "bad bridge", "d"));
        let raw = delegate_error(Path::new("/x/bridge"), b"", b"panic: boom\n");
        assert_eq!((raw.code, raw.details.as_str()), (Code::DelegateFailed, "panic: boom"));
    }

    #[test]
    fn finds_only_executables_and_refuses_paths() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("bridge");
        std::fs::write(&plain, "").unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        assert_eq!(find("bridge", &dirs).unwrap_err().code, Code::DelegateNotFound);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find("bridge", &dirs).unwrap(), plain);
        assert_eq!(find("../bridge", &dirs).unwrap_err().code, Code::InvalidConfig);
    }
}
