//! A local instance metadata service for one simulated EC2 node, following the IMDSv2 contract:
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` returns a session token;
//! every GET must carry it in `X-aws-ec2-metadata-token`, else 401. Agents find it through
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as the SDK's own clients do.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::moto::{Host, REGION};

const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

#[derive(Default)]
struct Tokens {
    issued: HashMap<String, Instant>,
    next: u64,
    /// GETs refused for lack of a valid token.
    refused: usize,
}

#[derive(Clone)]
struct Service {
    data: Arc<BTreeMap<String, String>>,
    tokens: Arc<Mutex<Tokens>>,
}

pub struct Imds {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    tokens: Arc<Mutex<Tokens>>,
}

/// What a node's metadata says, keyed by path under `/latest/meta-data/`.
pub fn metadata_for(host: &Host) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("instance-id".to_string(), host.instance_id.clone()),
        ("placement/region".to_string(), REGION.to_string()),
        ("placement/availability-zone".to_string(), format!("{REGION}a")),
        ("mac".to_string(), host.mac.clone()),
        (format!("network/interfaces/macs/{}/interface-id", host.mac), host.interface_id.clone()),
        ("local-ipv4".to_string(), host.ip.to_string()),
    ])
}

impl Imds {
    /// Serves `data` on a free port, on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime, data: BTreeMap<String, String>) -> Imds {
        Imds::start_at(runtime, data, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves `data` on `addr` (port 0: a free one), on `runtime`. The socket is made on one of
    /// the runtime's threads: a runtime whose threads entered a network namespace serves there.
    pub fn start_at(runtime: &tokio::runtime::Runtime, data: BTreeMap<String, String>, addr: SocketAddr) -> Imds {
        let tokens: Arc<Mutex<Tokens>> = Arc::default();
        let service = Service { data: Arc::new(data), tokens: tokens.clone() };
        let app = axum::Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/{*path}", get(metadata))
            .with_state(service);
        let listener = runtime
            .block_on(runtime.spawn(tokio::net::TcpListener::bind(addr)))
            .expect("bind task")
            .expect("bind the metadata server");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Imds { endpoint, tokens }
    }

    /// Tokens handed out so far.
    pub fn tokens_issued(&self) -> usize {
        self.tokens.lock().unwrap().issued.len()
    }

    pub fn refused(&self) -> usize {
        self.tokens.lock().unwrap().refused
    }
}

async fn token(State(service): State<Service>, headers: HeaderMap) -> Response {
    let ttl = headers.get(TTL_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut tokens = service.tokens.lock().unwrap();
    tokens.next += 1;
    let token = format!("weft-test-token-{}", tokens.next);
    tokens.issued.insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    // Like EC2's, the answer says how long the token lives; clients rely on it.
    (StatusCode::OK, [(TTL_HEADER, ttl.to_string())], token).into_response()
}

async fn metadata(
    State(service): State<Service>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    {
        let mut tokens = service.tokens.lock().unwrap();
        let valid = tokens.issued.get(token).is_some_and(|until| *until > Instant::now());
        if !valid {
            tokens.refused += 1;
            return (StatusCode::UNAUTHORIZED, String::new());
        }
    }
    match service.data.get(path.trim_end_matches('/')) {
        Some(value) => (StatusCode::OK, value.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// Agents are spawned with the environment of the test process: one at a time, with the
/// metadata endpoint and dummy credentials of the node being started.
static SPAWN: Mutex<()> = Mutex::new(());

/// The agents' AWS secret key: moto takes any, this one is distinct enough to look for in logs.
pub const SECRET_ACCESS_KEY: &str = "weft-test-secret-9c1f2a7e";

/// A node's AWS environment: its metadata endpoint and dummy credentials.
pub fn node_env(imds: &Imds) -> [(&'static str, &str); 5] {
    [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        // Nothing from the machine's own AWS profile may leak into a test.
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
}

/// Runs `spawn` (which starts an agent process) with this node's AWS environment.
pub fn with_node_env<T>(imds: &Imds, spawn: impl FnOnce() -> T) -> T {
    let _one_at_a_time = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let vars = node_env(imds);
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
    let spawned = spawn();
    for (name, _) in vars {
        std::env::remove_var(name);
    }
    spawned
}

/// A raw HTTP/1.0 request to the server, for the test of the contract itself: (status, body).
pub fn request(endpoint: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metadata server");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
