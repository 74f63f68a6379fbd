//! Each attachment's delegate config, kept from ADD until DEL (flannel's "scratch net conf"): DEL
//! and CHECK must use the config the pod was added with, even after subnet.env changed or went.
//!
//! An attachment is a container *and* an interface: one container may be attached to this
//! network several times (CNI_IFNAME differs), each time with an address of its own, and each
//! needs its own DEL. The file is `<container ID>:<interface>`; the name is unambiguous because
//! interface names never contain ':' ([`valid_ifname`]). A file named by the container ID alone
//! (flannel's, or an older weft-cni's) is still found, so pods added before an upgrade are freed.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{CniError, Code};

/// Whose delegate config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl Attachment<'_> {
    fn file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}:{}", self.container_id, self.ifname))
    }

    /// Where flannel and older versions kept it, by container ID only.
    fn legacy_file(&self, dir: &Path) -> PathBuf {
        dir.join(self.container_id)
    }
}

impl std::fmt::Display for Attachment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.container_id, self.ifname)
    }
}

/// Whether the kernel would take `name` as an interface name (its `dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no '/', ':' or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

pub fn save(dir: &Path, whose: Attachment<'_>, config: &[u8]) -> Result<(), CniError> {
    let io = |e: std::io::Error| {
        CniError::new(Code::Io, format!("saving the delegate config in {}", dir.display()), e.to_string())
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Written whole or not at all: a half file would break this pod's DEL.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(config).map_err(io)?;
    tmp.persist(whose.file(dir)).map_err(|e| io(e.error))?;
    Ok(())
}

/// The saved config; `None` when this attachment has none (never added, or already deleted).
pub fn load(dir: &Path, whose: Attachment<'_>) -> Result<Option<Vec<u8>>, CniError> {
    Ok(find(dir, whose)?.map(|(_, bytes)| bytes))
}

/// Forgets the saved config (either name); nothing saved is not an error.
pub fn remove(dir: &Path, whose: Attachment<'_>) -> Result<(), CniError> {
    let Some((path, _)) = find(dir, whose)? else {
        return Ok(());
    };
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::new(Code::Io, format!("removing the delegate config of {whose}"), e.to_string())),
    }
}

/// The attachment's file and contents: its own name first, then the legacy one.
fn find(dir: &Path, whose: Attachment<'_>) -> Result<Option<(PathBuf, Vec<u8>)>, CniError> {
    for path in [whose.file(dir), whose.legacy_file(dir)] {
        match std::fs::read(&path) {
            Ok(bytes) => return Ok(Some((path, bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(CniError::new(Code::Io, format!("reading the delegate config of {whose}"), e.to_string()))
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of<'a>(container_id: &'a str, ifname: &'a str) -> Attachment<'a> {
        Attachment { container_id, ifname }
    }

    #[test]
    fn round_trips_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("flannel");
        assert_eq!(load(&data, of("abc", "eth0")).unwrap(), None);
        save(&data, of("abc", "eth0"), b"{}").unwrap();
        assert_eq!(load(&data, of("abc", "eth0")).unwrap().as_deref(), Some(&b"{}"[..]));
        remove(&data, of("abc", "eth0")).unwrap();
        remove(&data, of("abc", "eth0")).unwrap();
        assert_eq!(load(&data, of("abc", "eth0")).unwrap(), None);
    }

    /// Two interfaces of one container are two attachments: removing one keeps the other.
    #[test]
    fn interfaces_of_one_container_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), of("abc", "eth0"), b"zero").unwrap();
        save(dir.path(), of("abc", "net1"), b"one").unwrap();
        remove(dir.path(), of("abc", "eth0")).unwrap();
        assert_eq!(load(dir.path(), of("abc", "eth0")).unwrap(), None);
        assert_eq!(load(dir.path(), of("abc", "net1")).unwrap().as_deref(), Some(&b"one"[..]));
    }

    /// A pod added by flannel or an older weft-cni (file named by container ID) is still freed.
    #[test]
    fn finds_and_removes_a_file_named_by_container_id_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc"), b"old").unwrap();
        assert_eq!(load(dir.path(), of("abc", "eth0")).unwrap().as_deref(), Some(&b"old"[..]));
        remove(dir.path(), of("abc", "eth0")).unwrap();
        assert!(!dir.path().join("abc").exists());
    }

    #[test]
    fn interface_names_as_the_kernel_takes_them() {
        for good in ["eth0", "net1", "eth0.100", "a", "fifteen-chars15"] {
            assert!(valid_ifname(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "eth0:1", "a b", "sixteen-chars-16"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }
}
