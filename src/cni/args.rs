//! The CNI_* environment a runtime calls a plugin with.

use std::path::PathBuf;

use super::error::{CniError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
        }
    }
}

/// What a container operation (ADD, DEL, CHECK) is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pub container_id: String,
    /// May be empty on DEL: the namespace can already be gone.
    pub netns: String,
    pub ifname: String,
    pub path: Vec<PathBuf>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(Code::InvalidEnvironment, msg, "")
}

/// Reads CNI_COMMAND.
pub fn command(env: &dyn Fn(&str) -> Option<String>) -> Result<CniCommand, CniError> {
    match env("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(CniCommand::Add),
        Some("DEL") => Ok(CniCommand::Del),
        Some("CHECK") => Ok(CniCommand::Check),
        Some("VERSION") => Ok(CniCommand::Version),
        Some(other) => Err(invalid(format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION"))),
        None => Err(invalid("CNI_COMMAND is not set".into())),
    }
}

/// Reads the variables `command` needs, as the spec requires them.
pub fn args(env: &dyn Fn(&str) -> Option<String>, command: CniCommand) -> Result<CniArgs, CniError> {
    let required = |key: &str| {
        env(key).filter(|v| !v.is_empty()).ok_or_else(|| invalid(format!("{key} is required for {}", command.as_str())))
    };
    let container_id = required("CNI_CONTAINERID")?;
    // The ID names a file of ours: it must not climb out of the data directory.
    if container_id.contains('/') || container_id.starts_with('.') {
        return Err(invalid(format!("CNI_CONTAINERID {container_id:?} is not a container ID")));
    }
    let netns = match command {
        CniCommand::Del => env("CNI_NETNS").unwrap_or_default(),
        _ => required("CNI_NETNS")?,
    };
    let ifname = required("CNI_IFNAME")?;
    // It names a file of ours too, with the container ID (see `scratch`).
    if !super::scratch::valid_ifname(&ifname) {
        return Err(invalid(format!("CNI_IFNAME {ifname:?} is not an interface name")));
    }
    let path = required("CNI_PATH")?.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    Ok(CniArgs { container_id, netns, ifname, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_an_add() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        assert_eq!(command(&e).unwrap(), CniCommand::Add);
        let a = args(&e, CniCommand::Add).unwrap();
        assert_eq!(a.path, [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
    }

    #[test]
    fn missing_or_bad_variables_are_code_4() {
        assert_eq!(command(&env(&[])).unwrap_err().code, Code::InvalidEnvironment);
        assert_eq!(command(&env(&[("CNI_COMMAND", "GC")])).unwrap_err().code, Code::InvalidEnvironment);
        let no_netns = env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")]);
        assert!(args(&no_netns, CniCommand::Add).unwrap_err().msg.contains("CNI_NETNS"));
        assert!(args(&no_netns, CniCommand::Del).is_ok());
        let sneaky = env(&[("CNI_CONTAINERID", "../etc"), ("CNI_NETNS", "n"), ("CNI_IFNAME", "e"), ("CNI_PATH", "/x")]);
        assert_eq!(args(&sneaky, CniCommand::Add).unwrap_err().code, Code::InvalidEnvironment);
        let colon = env(&[("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "n"), ("CNI_IFNAME", "eth0:x"), ("CNI_PATH", "/x")]);
        assert!(args(&colon, CniCommand::Del).unwrap_err().msg.contains("CNI_IFNAME"));
    }
}
