//! The few sysctls the data plane needs.
//!
//! Files under `/proc/sys/net` belong to the network namespace of the thread that opens them, so
//! these act on the namespace the calling thread is in (like the netlink sockets do).

use std::io;
use std::path::Path;

use super::IpFamily;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

fn forwarding_path(family: IpFamily) -> &'static Path {
    Path::new(match family {
        IpFamily::V4 => IP_FORWARD,
        IpFamily::V6 => IPV6_FORWARD,
    })
}

/// Turns on forwarding of `family`; returns whether it was off before.
pub fn enable_forwarding(family: IpFamily) -> io::Result<bool> {
    ensure_value(forwarding_path(family), "1")
}

/// Turns on IPv4 forwarding; returns whether it was off before.
pub fn enable_ipv4_forwarding() -> io::Result<bool> {
    enable_forwarding(IpFamily::V4)
}

/// Whether IPv4 forwarding is on.
pub fn ipv4_forwarding() -> io::Result<bool> {
    forwarding(IpFamily::V4)
}

/// Whether forwarding of `family` is on.
pub fn forwarding(family: IpFamily) -> io::Result<bool> {
    Ok(read(forwarding_path(family))? == "1")
}

/// Writes `want` unless the file already holds it (a write would bump nothing, but reading
/// first tells the caller whether anything changed and needs no write permission when it is set).
fn ensure_value(path: &Path, want: &str) -> io::Result<bool> {
    if read(path)? == want {
        return Ok(false);
    }
    std::fs::write(path, want).map_err(|e| annotate(e, path))?;
    Ok(true)
}

fn read(path: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| annotate(e, path))?;
    Ok(text.trim().to_string())
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_value_writes_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knob");
        std::fs::write(&path, "0\n").unwrap();
        assert!(ensure_value(&path, "1").unwrap());
        assert_eq!(read(&path).unwrap(), "1");
        assert!(!ensure_value(&path, "1").unwrap());
        let missing = dir.path().join("missing");
        let err = ensure_value(&missing, "1").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
