//! `ip monitor` (or `bridge monitor`) in a namespace, collecting what it prints: the kernel
//! changes a test must not see.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

/// A monitor running in a namespace; killed on drop.
pub struct Monitor(Option<Child>);

impl Monitor {
    /// `ip -4 monitor route` in `ns`.
    pub fn routes(ns: &str) -> Monitor {
        Monitor::start(ns, "ip", &["-4", "monitor", "route"])
    }

    /// `program args` (`ip monitor route neigh`, `bridge monitor fdb`) in `ns`.
    pub fn start(ns: &str, program: &str, args: &[&str]) -> Monitor {
        let child = weft::netns::Netns::open(ns)
            .unwrap_or_else(|e| panic!("open namespace {ns}: {e}"))
            .command(program)
            .expect("enter the namespace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(200));
        Monitor(Some(child))
    }

    /// Stops the monitor; everything it printed.
    pub fn stop(&mut self) -> String {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        let mut out = String::new();
        let _ = child.stdout.take().expect("piped").read_to_string(&mut out);
        let _ = child.wait();
        out
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
