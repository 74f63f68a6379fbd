//! A real etcd for integration tests: Debian's `etcd` (3.4) on 127.0.0.1 with free ports and a
//! temporary data dir, killed on drop. Tests never skip when etcd is missing: they fail.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long etcd may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Picking free ports races with other processes: try a few times.
const START_ATTEMPTS: usize = 3;

pub struct EtcdServer {
    /// `http://127.0.0.1:<port>`, or `https://…` with TLS.
    pub endpoint: String,
    /// With TLS: the certificates, a CA's and a client's (and the server's, in the same place).
    pub tls: Option<TestCerts>,
    /// With auth on: `user:password` of the root user, which etcdctl then sends.
    pub root_user: Option<String>,
    /// Extra flags for etcd (e.g. `--auth-token-ttl`).
    extra_args: Vec<String>,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    dir: TempDir,
}

/// PEM files made by `openssl` for one test: a CA, and a server and a client certificate it signed.
pub struct TestCerts {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers; panics with etcd's log if it does not.
    pub fn start() -> EtcdServer {
        Self::start_with(false)
    }

    /// Starts etcd serving clients over TLS only, and only those with a certificate of its CA.
    pub fn start_tls() -> EtcdServer {
        Self::start_with(true)
    }

    /// Starts etcd with authentication on: a `root` user with `password`, and simple tokens that
    /// lapse after `token_ttl_secs` idle (`--auth-token-ttl`, 300 s by default in etcd).
    pub fn start_with_auth(password: &str, token_ttl_secs: u32) -> EtcdServer {
        let mut server = Self::start_with_args(false, vec![format!("--auth-token-ttl={token_ttl_secs}")]);
        server.etcdctl(&["user", "add", &format!("root:{password}")]);
        server.etcdctl(&["user", "grant-role", "root", "root"]);
        server.etcdctl(&["auth", "enable"]);
        server.root_user = Some(format!("root:{password}"));
        server
    }

    fn start_with(tls: bool) -> EtcdServer {
        Self::start_with_args(tls, Vec::new())
    }

    fn start_with_args(tls: bool, extra_args: Vec<String>) -> EtcdServer {
        let mut failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let (client_port, peer_port) = free_ports();
            let dir = tempfile::tempdir().expect("create a temp dir for etcd");
            let tls = tls.then(|| TestCerts::make(dir.path()));
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut server = EtcdServer {
                endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
                tls,
                root_user: None,
                extra_args: extra_args.clone(),
                client_port,
                peer_port,
                child: None,
                dir,
            };
            match server.launch() {
                Ok(()) => return server,
                Err(err) => failure = err,
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts: {failure}");
    }

    /// etcd's process id while it runs (the scale benchmark reads its CPU and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd, keeping its ports and data for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(err) = self.launch() {
            panic!("etcd did not restart: {err}");
        }
    }

    /// Runs `etcdctl --endpoints <endpoint> <args>` (API v3) and returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        run_etcdctl(self.etcdctl_command(args), args)
    }

    /// Watchers etcd serves right now (from its Prometheus metrics).
    pub fn watchers(&self) -> u64 {
        let metrics = self.http_get("/metrics");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .unwrap_or_else(|| panic!("no watcher count in etcd's metrics:\n{metrics}"))
    }

    fn http_get(&self, path: &str) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let mut stream = TcpStream::connect(addr).expect("connect to etcd");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read etcd's answer");
        response
    }

    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3").arg("--endpoints").arg(&self.endpoint);
        if let Some(certs) = &self.tls {
            command.arg("--cacert").arg(&certs.ca).arg("--cert").arg(&certs.client_cert);
            command.arg("--key").arg(&certs.client_key);
        }
        if let Some(user) = &self.root_user {
            command.arg("--user").arg(user);
        }
        command.args(args).stdin(Stdio::null());
        command
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) -> Result<(), String> {
        // A file, not a pipe: nobody reads a pipe while etcd runs, and a full pipe blocks etcd.
        let log = File::create(self.log_path()).expect("create etcd log file");
        let child = self
            .etcd_command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}", missing_etcd_message(&e)));
        self.child = Some(child);
        let ready = self.wait_ready();
        if ready.is_err() {
            self.stop();
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        ready.map_err(|reason| format!("{reason}; etcd's log:\n{log}"))
    }

    fn etcd_command(&self) -> Command {
        let client = self.endpoint.clone();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(etcd_binary());
        command
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"]);
        if let Some(certs) = &self.tls {
            command.arg("--cert-file").arg(&certs.server_cert).arg("--key-file").arg(&certs.server_key);
            command.arg("--trusted-ca-file").arg(&certs.ca).arg("--client-cert-auth");
        }
        command.args(&self.extra_args);
        command
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("etcd exited: {status}"));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("etcd did not answer within {START_DEADLINE:?}"))
    }

    fn healthy(&self) -> bool {
        etcd_answers(self.etcdctl_command(HEALTH_ARGS))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestCerts {
    /// Writes the CA, the server's certificate (for 127.0.0.1) and a client's into `dir`.
    fn make(dir: &std::path::Path) -> TestCerts {
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
        openssl(&[
            &["req", "-x509", "-days", "2", "-subj", "/CN=weft test CA", "-keyout", &ca_key, "-out", &ca],
            &ec[..],
        ]);
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (ext, csr) = (path(&format!("{name}.ext")), path(&format!("{name}.csr")));
            let (key, cert) = (path(&format!("{name}.key")), path(&format!("{name}.pem")));
            std::fs::write(&ext, format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"))
                .expect("write ext");
            let subject = format!("/CN=weft test {name}");
            openssl(&[&["req", "-subj", &subject, "-keyout", &key, "-out", &csr], &ec[..]]);
            let sign = ["x509", "-req", "-days", "2", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial"];
            openssl(&[&sign[..], &["-extfile", &ext, "-out", &cert]]);
        }
        let path = |name: &str| dir.join(name);
        TestCerts {
            ca: path("ca.pem"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
        }
    }
}

/// Runs `openssl` with the concatenated `args`; panics with its message if it fails.
fn openssl(args: &[&[&str]]) {
    let args = args.concat();
    let output = Command::new("openssl")
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("run openssl: {e} (install Debian's openssl)"));
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// `etcdctl endpoint health`, quickly.
pub const HEALTH_ARGS: &[&str] = &["--dial-timeout=1s", "--command-timeout=2s", "endpoint", "health"];

/// Runs an `etcdctl` command (`args` are its arguments, for the message) that must succeed; its
/// stdout.
pub fn run_etcdctl(mut command: Command, args: &[&str]) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("run etcdctl: {e} (install Debian's etcd-client)"));
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("etcdctl printed UTF-8")
}

/// Whether an `etcdctl endpoint health` command succeeds.
pub fn etcd_answers(mut command: Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

fn etcd_binary() -> String {
    std::env::var("WEFT_TEST_ETCD").unwrap_or_else(|_| "etcd".to_string())
}

fn missing_etcd_message(err: &std::io::Error) -> String {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let hint = if ci {
        "CI=true: etcd tests must run in CI, install etcd-server in the CI image"
    } else {
        "install Debian's etcd-server (apt-get install etcd-server) or set WEFT_TEST_ETCD"
    };
    format!("cannot run etcd ({}): {err}; {hint}", etcd_binary())
}

/// Two distinct free ports on 127.0.0.1 (both listeners are held while picking).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("local address").port();
    (port(&a), port(&b))
}
