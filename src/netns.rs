//! Named network namespaces, compatible with `ip netns` (a bind mount at `/run/netns/<name>`),
//! and running code or processes inside them. Used by `weft lab` and the tests.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    fn at(name: &str) -> Netns {
        Netns { name: name.to_string(), path: Path::new(NETNS_DIR).join(name) }
    }

    /// Creates the namespace; an existing one of that name is an error.
    pub fn create(name: &str) -> io::Result<Netns> {
        let ns = Netns::at(name);
        std::fs::create_dir_all(NETNS_DIR)?;
        File::options().write(true).create_new(true).open(&ns.path).map_err(|e| annotate(e, &ns.path))?;
        let path = ns.path.clone();
        // unshare() moves only the calling thread: do it in a thread of its own, then pin the new
        // namespace to the file so it outlives the thread.
        let pinned = std::thread::spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(Some("/proc/thread-self/ns/net"), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?;
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(&ns.path);
            return Err(annotate(e, &ns.path));
        }
        // A new namespace has its loopback down.
        ns.run(set_loopback_up)??;
        Ok(ns)
    }

    /// An existing namespace by name.
    pub fn open(name: &str) -> io::Result<Netns> {
        let ns = Netns::at(name);
        File::open(&ns.path).map_err(|e| annotate(e, &ns.path))?;
        Ok(ns)
    }

    pub fn exists(name: &str) -> bool {
        Netns::at(name).path.exists()
    }

    /// Removes the namespace name; the namespace itself goes when its last process leaves.
    pub fn delete(&self) -> io::Result<()> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(annotate(e.into(), &self.path)),
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(annotate(e, &self.path)),
            _ => Ok(()),
        }
    }

    /// Runs `f` on a thread inside the namespace (netlink sockets it opens belong there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let file = File::open(&self.path).map_err(|e| annotate(e, &self.path))?;
        std::thread::spawn(move || -> io::Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
    }

    /// Runs an async `f` to completion inside the namespace, on a runtime of its own.
    pub fn block_on<F, T>(&self, f: impl FnOnce() -> F + Send + 'static) -> io::Result<T>
    where
        F: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        self.run(move || -> io::Result<T> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(f()))
        })?
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        let file = File::open(&self.path).map_err(|e| annotate(e, &self.path))?;
        let mut command = Command::new(program);
        // SAFETY: setns is async-signal-safe; the closure allocates nothing.
        unsafe {
            command.pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        }
        Ok(command)
    }
}

fn set_loopback_up() -> io::Result<()> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SIOCSIFFLAGS on "lo": the one ioctl a fresh namespace needs, before any netlink machinery.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a fully initialised ifreq.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn require_root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root && std::env::var("CI").as_deref() == Ok("true") {
            panic!("network namespace tests need root; CI runs as root");
        }
        root
    }

    #[test]
    fn create_run_and_delete() {
        if !require_root() {
            eprintln!("SKIPPED: not root (outside CI)");
            return;
        }
        let name = format!("weft-t-{}", std::process::id());
        let ns = Netns::create(&name).unwrap();
        assert!(Netns::exists(&name));
        assert!(Netns::create(&name).is_err(), "a second create of the same name must fail");
        let inside = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap()).unwrap();
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        let out = ns.command("cat").unwrap().arg("/proc/net/dev").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("lo:") && !text.contains("eth0"), "{text}");
        ns.delete().unwrap();
        assert!(!Netns::exists(&name));
    }
}
