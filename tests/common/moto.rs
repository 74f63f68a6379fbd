//! moto (PyPI `moto[server]`) as a model of EC2 on 127.0.0.1, a VPC built in it through the SDK,
//! and a fault-injecting proxy for what moto does not model (route limits, throttling, blackhole
//! routes). Tests never skip when moto is missing: they fail, saying how to install it.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tempfile::TempDir;
use weft::netns::Netns;

pub const REGION: &str = "us-east-1";
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Picking a free port races with other processes: try a few times.
const START_ATTEMPTS: usize = 3;

/// A moto server on a free port, killed on drop.
pub struct Moto {
    pub endpoint: String,
    child: Child,
    dir: TempDir,
}

pub fn moto_binary() -> PathBuf {
    std::env::var_os("WEFT_MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|| "/opt/weft-venv/bin/moto_server".into())
}

impl Moto {
    pub fn start() -> Moto {
        let binary = moto_binary();
        assert!(
            binary.exists(),
            "moto_server not found at {} (run scripts/setup.sh, which installs moto[server] in /opt/weft-venv, or set WEFT_MOTO_SERVER)",
            binary.display()
        );
        // A free port may be taken by another process before moto binds it: moto then exits,
        // or someone else answers; either way, start again on another port.
        let mut failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir for moto");
            let port = super::weft::free_port();
            let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log");
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut moto = Moto { endpoint: format!("http://127.0.0.1:{port}"), child, dir };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match moto.wait_ready(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()) {
                Ok(()) => return moto,
                Err(why) => failure = why,
            }
        }
        panic!("moto did not start after {START_ATTEMPTS} attempts: {failure}");
    }

    /// A moto server inside network namespace `netns`, on `addr` (an address of that namespace)
    /// and `port`: for agents in other namespaces. It dies with the test thread as well.
    pub fn start_in(netns: &Netns, addr: Ipv4Addr, port: u16) -> Moto {
        let binary = moto_binary();
        assert!(binary.exists(), "moto_server not found at {} (see Moto::start)", binary.display());
        let dir = tempfile::tempdir().expect("temp dir for moto");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log");
        let mut command = netns.command(&binary).expect("enter the namespace");
        command
            .args(["-H", &addr.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        super::cluster::die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut moto = Moto { endpoint: format!("http://{addr}:{port}"), child, dir };
        let target = SocketAddr::from((addr, port));
        let ready = moto.wait_ready(|| {
            netns.run(move || TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()).unwrap_or(false)
        });
        ready.unwrap_or_else(|why| panic!("{why}"));
        moto
    }

    /// Waits until the port answers and moto says it serves it (so it is moto answering, not
    /// another process that took the port first).
    fn wait_ready(&mut self, listening: impl Fn() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto exited with {status}: {}", self.log()));
            }
            if listening() && self.log().contains("Running on") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("moto did not listen within {START_DEADLINE:?}: {}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK client for `endpoint` with dummy credentials (moto checks none).
pub fn client(endpoint: &str) -> Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "weft-tests"))
        .build();
    Client::from_conf(config)
}

/// The VPC of a test: 3 subnets in 3 zones, a tagged route table associated with each, an
/// untagged table, a subnet without a table of its own, and a spare interface to point routes at.
#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    /// One per zone, each associated with `tagged[i]`.
    pub subnets: Vec<String>,
    pub tagged: Vec<String>,
    pub untagged: String,
    pub main: String,
    /// In zone a, associated with no table: uses the main table.
    pub loose_subnet: String,
    /// An interface of no node, for routes the agents must replace or remove.
    pub spare_interface: String,
}

pub const TAG_KEY: &str = "weft-cluster";
pub const TAG_VALUE: &str = "test";

fn tags(resource: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(resource);
    for (k, v) in pairs {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    spec.build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub async fn build_vpc(ec2: &Client) -> Vpc {
    let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await.expect("CreateVpc");
    let id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
    let mut subnets = Vec::new();
    let mut tagged = Vec::new();
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let subnet = create_subnet(ec2, &id, &format!("10.0.{}.0/24", i + 1), &format!("{REGION}{zone}")).await;
        let table = create_table(ec2, &id, &[(TAG_KEY, TAG_VALUE), ("zone", zone)]).await;
        ec2.associate_route_table()
            .route_table_id(&table)
            .subnet_id(&subnet)
            .send()
            .await
            .expect("AssociateRouteTable");
        subnets.push(subnet);
        tagged.push(table);
    }
    let untagged = create_table(ec2, &id, &[]).await;
    let loose_subnet = create_subnet(ec2, &id, "10.0.9.0/24", &format!("{REGION}a")).await;
    let main = main_table(ec2, &id).await;
    let spare = ec2.create_network_interface().subnet_id(&subnets[0]).send().await.expect("CreateNetworkInterface");
    let spare_interface = spare.network_interface().and_then(|n| n.network_interface_id()).expect("eni").to_string();
    Vpc { id, subnets, tagged, untagged, main, loose_subnet, spare_interface }
}

/// Gives the VPC an Amazon-provided IPv6 block (`AssociateVpcCidrBlock`), as a dual-stack VPC
/// has; returns it. moto then adds its local route to every table of the VPC, as EC2 does. (moto
/// takes an IPv6 route without it; EC2's tables of a dual-stack VPC have it.)
pub async fn associate_ipv6(ec2: &Client, vpc: &str) -> String {
    let out = ec2
        .associate_vpc_cidr_block()
        .vpc_id(vpc)
        .amazon_provided_ipv6_cidr_block(true)
        .send()
        .await
        .expect("AssociateVpcCidrBlock");
    out.ipv6_cidr_block_association().and_then(|a| a.ipv6_cidr_block()).expect("an IPv6 block").to_string()
}

/// The VPC's main route table (every VPC has one).
pub async fn main_table(ec2: &Client, vpc: &str) -> String {
    ec2.describe_route_tables()
        .filters(filter("vpc-id", vpc))
        .filters(filter("association.main", "true"))
        .send()
        .await
        .expect("DescribeRouteTables")
        .route_tables()
        .first()
        .and_then(|t| t.route_table_id())
        .expect("main table")
        .to_string()
}

pub async fn create_subnet(ec2: &Client, vpc: &str, cidr: &str, zone: &str) -> String {
    let out =
        ec2.create_subnet().vpc_id(vpc).cidr_block(cidr).availability_zone(zone).send().await.expect("CreateSubnet");
    out.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_string()
}

pub async fn create_table(ec2: &Client, vpc: &str, pairs: &[(&str, &str)]) -> String {
    let mut request = ec2.create_route_table().vpc_id(vpc);
    if !pairs.is_empty() {
        request = request.tag_specifications(tags(ResourceType::RouteTable, pairs));
    }
    let out = request.send().await.expect("CreateRouteTable");
    out.route_table().and_then(|t| t.route_table_id()).expect("table id").to_string()
}

/// An instance as a node sees it through the metadata service.
#[derive(Debug, Clone)]
pub struct Host {
    pub instance_id: String,
    pub interface_id: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

pub async fn launch(ec2: &Client, subnet: &str) -> Host {
    launch_at(ec2, subnet, None).await
}

/// An instance in `subnet`, with `private_ip` as its primary address if given.
pub async fn launch_at(ec2: &Client, subnet: &str, private_ip: Option<Ipv4Addr>) -> Host {
    let out = ec2
        .run_instances()
        .image_id("ami-12345678")
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .set_private_ip_address(private_ip.map(|ip| ip.to_string()))
        .send()
        .await
        .expect("RunInstances");
    let instance = out.instances().first().expect("an instance");
    let eni = instance.network_interfaces().first().expect("an interface");
    Host {
        instance_id: instance.instance_id().expect("instance id").to_string(),
        interface_id: eni.network_interface_id().expect("eni id").to_string(),
        mac: eni.mac_address().expect("mac").to_string(),
        ip: instance.private_ip_address().expect("ip").parse().expect("an IPv4 address"),
    }
}

/// A route as the test checks it: destination (IPv4 or IPv6) → (interface id or other target,
/// state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRoute {
    pub target: String,
    pub origin: String,
}

pub async fn routes(ec2: &Client, table: &str) -> BTreeMap<String, SeenRoute> {
    let out = ec2.describe_route_tables().route_table_ids(table).send().await.expect("DescribeRouteTables");
    let table = out.route_tables().first().expect("the table");
    table
        .routes()
        .iter()
        .filter_map(|r| {
            let target = r.network_interface_id().or(r.gateway_id()).or(r.instance_id()).unwrap_or("?").to_string();
            let origin = r.origin().map(|o| o.as_str().to_string()).unwrap_or_default();
            let destination = r.destination_cidr_block().or(r.destination_ipv6_cidr_block())?;
            Some((destination.to_string(), SeenRoute { target, origin }))
        })
        .collect()
}

/// Whether `cidr` is IPv6: EC2 takes it in `DestinationIpv6CidrBlock`, an IPv4 one in
/// `DestinationCidrBlock`.
fn is_ipv6(cidr: &str) -> bool {
    cidr.contains(':')
}

/// `cidr` as a route request carries it: (`DestinationCidrBlock`, `DestinationIpv6CidrBlock`).
fn destination(cidr: &str) -> (Option<String>, Option<String>) {
    let given = Some(cidr.to_string());
    if is_ipv6(cidr) {
        (None, given)
    } else {
        (given, None)
    }
}

/// A route to `cidr` (IPv4 or IPv6) through `eni`.
pub async fn create_route(ec2: &Client, table: &str, cidr: &str, eni: &str) {
    let (v4, v6) = destination(cidr);
    ec2.create_route()
        .route_table_id(table)
        .set_destination_cidr_block(v4)
        .set_destination_ipv6_cidr_block(v6)
        .network_interface_id(eni)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateRoute {table} {cidr}: {e:?}"));
}

pub async fn replace_route(ec2: &Client, table: &str, cidr: &str, eni: &str) {
    let (v4, v6) = destination(cidr);
    ec2.replace_route()
        .route_table_id(table)
        .set_destination_cidr_block(v4)
        .set_destination_ipv6_cidr_block(v6)
        .network_interface_id(eni)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ReplaceRoute {table} {cidr}: {e:?}"));
}

pub async fn delete_route(ec2: &Client, table: &str, cidr: &str) {
    let (v4, v6) = destination(cidr);
    ec2.delete_route()
        .route_table_id(table)
        .set_destination_cidr_block(v4)
        .set_destination_ipv6_cidr_block(v6)
        .send()
        .await
        .expect("DeleteRoute");
}

pub async fn source_dest_check(ec2: &Client, eni: &str) -> Option<bool> {
    let out =
        ec2.describe_network_interfaces().network_interface_ids(eni).send().await.expect("DescribeNetworkInterfaces");
    out.network_interfaces().first().and_then(|n| n.source_dest_check())
}

pub async fn set_source_dest_check(ec2: &Client, eni: &str, on: bool) {
    ec2.modify_network_interface_attribute()
        .network_interface_id(eni)
        .source_dest_check(AttributeBooleanValue::builder().value(on).build())
        .send()
        .await
        .expect("ModifyNetworkInterfaceAttribute");
}

/// What the proxy does to matching requests instead of (or besides) forwarding them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `CreateRoute` into `table` answers `RouteLimitExceeded`.
    RouteLimit { table: String },
    /// The next `times` calls of `action` answer `RequestLimitExceeded` (HTTP 503).
    Throttle { action: String, times: usize },
    /// `DescribeRouteTables` answers show the route to `cidr` (IPv4 or IPv6) as a blackhole
    /// (moto has none).
    Blackhole { cidr: String },
    /// Calls of `action` answer `UnauthorizedOperation`, as EC2 does for an action the role lacks.
    Unauthorized { action: String },
    /// Every table holds at most `routes` routes of each family (its local route of that family
    /// included): `CreateRoute` into a table that has them answers `RouteLimitExceeded`, as EC2
    /// does at the quota, which it counts for IPv4 and IPv6 routes apart (moto has none). Route
    /// creations are serialized, so racing agents cannot overfill a table.
    Capacity { routes: usize },
}

#[derive(Default)]
struct ProxyState {
    faults: Vec<Fault>,
    /// Every request seen, as (Action, RouteTableId), injected ones included.
    calls: Vec<(String, String)>,
}

/// An HTTP proxy in front of moto: forwards every request (one connection each), counts them by
/// EC2 action, and injects faults in EC2's XML error format.
#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    /// Held from a capacity check to the end of the `CreateRoute` it allowed.
    creating: Arc<tokio::sync::Mutex<()>>,
}

impl FaultProxy {
    /// Serves on a free port of 127.0.0.1, on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime, moto: &Moto) -> FaultProxy {
        FaultProxy::start_at(runtime, moto, Ipv4Addr::LOCALHOST)
    }

    /// Serves on a free port of `ip` (in the namespace `runtime`'s threads are in).
    pub fn start_at(runtime: &tokio::runtime::Runtime, moto: &Moto, ip: Ipv4Addr) -> FaultProxy {
        let upstream: SocketAddr = moto.endpoint.trim_start_matches("http://").parse().expect("moto address");
        // Bound by one of the runtime's threads: the socket belongs to their namespace.
        let bind = runtime.spawn(tokio::net::TcpListener::bind(SocketAddr::from((ip, 0))));
        let listener = runtime.block_on(bind).expect("the bind task").expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let proxy = FaultProxy { endpoint, upstream, state: Arc::default(), creating: Arc::default() };
        let app = axum::Router::new().fallback(handle).with_state(proxy.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        proxy
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Calls per action since the last reset.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.counts_since(0)
    }

    /// Calls since the last reset, in all.
    pub fn calls_made(&self) -> usize {
        self.state.lock().unwrap().calls.len()
    }

    /// Calls per action from the `from`th since the last reset on.
    pub fn counts_since(&self, from: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (action, _) in self.state.lock().unwrap().calls.iter().skip(from) {
            *counts.entry(action.clone()).or_default() += 1;
        }
        counts
    }

    pub fn count(&self, action: &str, table: &str) -> usize {
        self.state.lock().unwrap().calls.iter().filter(|(a, t)| a == action && t == table).count()
    }

    pub fn reset_counts(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// Whether a fault applies to this request; a throttle fault is used up as it fires.
    fn fault_for(&self, action: &str, table: &str) -> Option<Response> {
        let mut state = self.state.lock().unwrap();
        state.calls.push((action.to_string(), table.to_string()));
        for fault in state.faults.iter_mut() {
            match fault {
                Fault::RouteLimit { table: t } if action == "CreateRoute" && t == table => {
                    return Some(ec2_error(
                        StatusCode::BAD_REQUEST,
                        "RouteLimitExceeded",
                        "The maximum number of routes has been reached.",
                    ));
                }
                Fault::Unauthorized { action: a } if a == action => {
                    return Some(ec2_error(
                        StatusCode::FORBIDDEN,
                        "UnauthorizedOperation",
                        "You are not authorized to perform this operation.",
                    ));
                }
                Fault::Throttle { action: a, times } if a == action && *times > 0 => {
                    *times -= 1;
                    return Some(ec2_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "RequestLimitExceeded",
                        "Request limit exceeded.",
                    ));
                }
                _ => {}
            }
        }
        None
    }

    fn capacity(&self) -> Option<usize> {
        let state = self.state.lock().unwrap();
        state.faults.iter().find_map(|f| match f {
            Fault::Capacity { routes } => Some(*routes),
            _ => None,
        })
    }

    fn blackholes(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Blackhole { cidr } => Some(cidr.clone()),
                _ => None,
            })
            .collect()
    }
}

/// EC2's error document (query protocol).
fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>weft-fault-proxy</RequestID></Response>"
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// A form field of an EC2 query request body.
fn form_value(body: &str, name: &str) -> String {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%2F", "/").replace("%2f", "/"))
        .unwrap_or_default()
}

async fn handle(
    State(proxy): State<FaultProxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    let action = form_value(&text, "Action");
    let table = form_value(&text, "RouteTableId");
    if let Some(fault) = proxy.fault_for(&action, &table) {
        return fault;
    }
    // EC2 answers every `DryRun=true` call with `DryRunOperation` when it is allowed; moto
    // honours DryRun for a few actions only (and would carry out a dry CreateRoute).
    if form_value(&text, "DryRun") == "true" {
        return ec2_error(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        );
    }
    let upstream = proxy.upstream;
    let capacity = proxy.capacity().filter(|_| action == "CreateRoute");
    // The family of the route asked for: the quota counts each apart.
    let ipv6 = !form_value(&text, "DestinationIpv6CidrBlock").is_empty();
    let _creating = match capacity {
        Some(_) => Some(proxy.creating.clone().lock_owned().await),
        None => None,
    };
    if let Some(capacity) = capacity {
        // The table as moto has it now (moto does not check signatures: the headers serve).
        let query = format!("Action=DescribeRouteTables&Version=2016-11-15&RouteTableId.1={table}");
        let (m, u, h) = (method.clone(), uri.clone(), headers.clone());
        let listed = tokio::task::spawn_blocking(move || forward(upstream, &m, &u, &h, query.as_bytes())).await;
        let routes = match listed {
            Ok(Ok((200, _, xml))) => xml.matches(&format!("<{}>", destination_tag(ipv6))).count(),
            _ => return (StatusCode::BAD_GATEWAY, "the capacity check could not list the table").into_response(),
        };
        if routes >= capacity {
            return ec2_error(
                StatusCode::BAD_REQUEST,
                "RouteLimitExceeded",
                "The maximum number of routes has been reached.",
            );
        }
    }
    let forwarded = tokio::task::spawn_blocking(move || forward(upstream, &method, &uri, &headers, &body)).await;
    let (status, content_type, mut answer) = match forwarded {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if action == "DescribeRouteTables" {
        for cidr in proxy.blackholes() {
            answer = mark_blackhole(&answer, &cidr);
        }
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, [("content-type", content_type)], answer).into_response()
}

/// One request to moto on a connection of its own: (status, content type, body).
fn forward(
    upstream: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(upstream)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let skip = ["host", "connection", "content-length", "transfer-encoding", "expect"];
        if skip.contains(&name.as_str()) {
            continue;
        }
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(502);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "text/xml".into());
    Ok((status, content_type, body.to_string()))
}

/// The element of a route item (in moto's DescribeRouteTables answer, as in EC2's) that holds its
/// destination: one per family.
fn destination_tag(ipv6: bool) -> &'static str {
    if ipv6 {
        "destinationIpv6CidrBlock"
    } else {
        "destinationCidrBlock"
    }
}

/// Rewrites the state of the route item to `cidr` (IPv4 or IPv6) in a DescribeRouteTables answer.
fn mark_blackhole(xml: &str, cidr: &str) -> String {
    let tag = destination_tag(is_ipv6(cidr));
    let needle = format!("<{tag}>{cidr}</{tag}>");
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(at) = rest.find(&needle) {
        // A route item holds no nested items: its bounds are the nearest tags around the match.
        let start = rest[..at].rfind("<item>").unwrap_or(0);
        let end = rest[at..].find("</item>").map_or(rest.len(), |e| at + e);
        out.push_str(&rest[..start]);
        out.push_str(&rest[start..end].replace("<state>active</state>", "<state>blackhole</state>"));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
