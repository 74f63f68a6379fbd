//! Runs the `weft` binary in tests: commands, and agents as separate processes.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A working directory with a weft.toml.
pub struct Setup {
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Setup {
    /// Writes `toml` as the config file of a fresh directory.
    pub fn new(toml: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("weft.toml");
        std::fs::write(&config, toml).expect("write weft.toml");
        Setup { dir, config }
    }

    /// An etcd-backed config for `endpoint` with `network` as the `[network]` table body.
    pub fn etcd(endpoint: &str, network: &str) -> Setup {
        Setup::new(&format!(
            "[agent]\nlease_ttl = \"30s\"\nrenew_margin = \"10s\"\n\n[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\n\n[network]\n{network}\n"
        ))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `weft --config <file> args...`.
    pub fn weft(&self, args: &[&str]) -> Output {
        Command::new(WEFT)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("run weft")
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.weft(args);
        assert!(out.status.success(), "weft {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `weft agent` for a host with `public_ip`, serving health on a free port.
    pub fn agent(&self, name: &str, public_ip: &str, extra: &[&str]) -> Agent {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--listen", listen.as_str()];
        args.extend_from_slice(extra);
        self.spawn_agent(name, public_ip, &args, listen.clone())
    }

    /// Like [`Setup::agent`], with `env` added to the agent's environment (a faked clock).
    pub fn agent_with_env(&self, name: &str, public_ip: &str, env: &[(&str, &str)]) -> Agent {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = ["agent", "--iface", "lo", "--public-ip", public_ip, "--listen", listen.as_str()];
        self.spawn_with_env(name, &args, listen.clone(), env)
    }

    /// Starts `weft agent` with `agent.listen` as the config file says.
    pub fn agent_without_listen(&self, name: &str, public_ip: &str) -> Agent {
        self.spawn_agent(name, public_ip, &[], String::new())
    }

    /// Starts `weft agent` with only `--listen` and `--subnet-file` given: the interface and public
    /// IP come from the config file, so an edit of the file can change them.
    pub fn agent_from_file(&self, name: &str) -> Agent {
        let listen = format!("127.0.0.1:{}", free_port());
        self.spawn(name, &["agent", "--listen", listen.as_str()], listen.clone())
    }

    fn spawn_agent(&self, name: &str, public_ip: &str, extra: &[&str], listen: String) -> Agent {
        let mut args = vec!["agent", "--iface", "lo", "--public-ip", public_ip];
        args.extend_from_slice(extra);
        self.spawn(name, &args, listen)
    }

    fn spawn(&self, name: &str, args: &[&str], listen: String) -> Agent {
        self.spawn_with_env(name, args, listen, &[])
    }

    fn spawn_with_env(&self, name: &str, args: &[&str], listen: String, env: &[(&str, &str)]) -> Agent {
        let subnet_file = self.path(&format!("{name}.env"));
        let log = self.path(&format!("{name}.log"));
        let child = Command::new(WEFT)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .arg("--subnet-file")
            .arg(&subnet_file)
            .env("RUST_LOG", "info,weft=debug")
            // These agents run in the machine's own namespace: they must not add rules to its
            // FORWARD chain (Docker's, on a CI runner).
            .env("WEFT_AGENT__FORWARD_RULES", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start weft agent");
        Agent { child: Some(child), listen, subnet_file, log }
    }
}

pub struct Agent {
    child: Option<Child>,
    pub listen: String,
    pub subnet_file: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Waits for the agent's subnet.env and returns FLANNEL_SUBNET's network.
    pub fn wait_subnet(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(subnet) = read_subnet(&self.subnet_file) {
                return subnet;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("agent exited with {status}: {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "no subnet.env after 20 s: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the agent's health server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.listen, path)
    }

    /// A metric's value from /metrics (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `check` holds, polling; panics with the agent's log after `secs`.
    pub fn wait_for(&self, what: &str, secs: u64, mut check: impl FnMut(&Agent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL: the agent dies without a word, as on a crash or power loss.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("agent running");
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn read_subnet(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let subnet = text.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
    let net: ipnet::Ipv4Net = subnet.parse().ok()?;
    Some(net.trunc().to_string())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A minimal HTTP/1.0 GET: (status, body); (0, "") when nothing answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
