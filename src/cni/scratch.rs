//! Each container's delegate config, kept from ADD until DEL (flannel's "scratch net conf"): DEL
//! and CHECK must use the config the pod was added with, even after subnet.env changed or went.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{CniError, Code};

fn path(dir: &Path, container_id: &str) -> PathBuf {
    dir.join(container_id)
}

pub fn save(dir: &Path, container_id: &str, config: &[u8]) -> Result<(), CniError> {
    let io = |e: std::io::Error| {
        CniError::new(Code::Io, format!("saving the delegate config in {}", dir.display()), e.to_string())
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Written whole or not at all: a half file would break this pod's DEL.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(config).map_err(io)?;
    tmp.persist(path(dir, container_id)).map_err(|e| io(e.error))?;
    Ok(())
}

/// The saved config; `None` when this container has none (never added, or already deleted).
pub fn load(dir: &Path, container_id: &str) -> Result<Option<Vec<u8>>, CniError> {
    match std::fs::read(path(dir, container_id)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(Code::Io, format!("reading the delegate config of {container_id}"), e.to_string())),
    }
}

pub fn remove(dir: &Path, container_id: &str) -> Result<(), CniError> {
    match std::fs::remove_file(path(dir, container_id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(CniError::new(Code::Io, format!("removing the delegate config of {container_id}"), e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("flannel");
        assert_eq!(load(&data, "abc").unwrap(), None);
        save(&data, "abc", b"{}").unwrap();
        assert_eq!(load(&data, "abc").unwrap().as_deref(), Some(&b"{}"[..]));
        remove(&data, "abc").unwrap();
        remove(&data, "abc").unwrap();
        assert_eq!(load(&data, "abc").unwrap(), None);
    }
}
