//! A test server for the part of the Compute Engine REST API v1 that weft uses: routes
//! insert/get/list/delete, globalOperations get, instances get and networks get, answering as
//! GCE does (selfLinks, `compute#operation`s that go PENDING → RUNNING → DONE across polls,
//! Google's error bodies). No GCE emulator exists; this follows the API reference.
//!
//! Also `projects.get`, with the project's ROUTES quota and its usage (routes of both families
//! count alike). A route's `destRange` is an IPv4 or IPv6 CIDR and its name a GCE name; an insert
//! with either malformed is refused with HTTP 400 `invalid`, as GCE does.
//!
//! Faults for tests: a route quota (the insert's operation ends in `QUOTA_EXCEEDED`, or the
//! insert itself is refused with HTTP 403 `quotaExceeded`), and operations that end in error.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use weft::netns::Netns;

/// The project's ROUTES quota when a test sets none (GCE's default is in this range).
const DEFAULT_ROUTE_QUOTA: usize = 250;

/// How GCE writes links, whatever endpoint was called.
pub const LINK_BASE: &str = "https://www.googleapis.com/compute/v1/";

/// An HTTP server on 127.0.0.1 run by a thread of its own, stopped on drop.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Serves `app` on a free port of 127.0.0.1.
pub fn serve(app: Router) -> Served {
    serve_at(app, None, Ipv4Addr::LOCALHOST)
}

/// Serves `app` on a free port of `ip` inside the namespace at `netns` (hosts in namespaces of
/// their own reach it there, as instances reach Google's API).
pub fn serve_in(app: Router, netns: &Netns, ip: Ipv4Addr) -> Served {
    serve_at(app, Some(netns.path.clone()), ip)
}

fn serve_at(app: Router, netns: Option<PathBuf>, ip: Ipv4Addr) -> Served {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        if let Some(path) = netns {
            // This thread only: the server's socket is made in that namespace.
            let file = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0))).await.expect("bind");
            addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
            let server = axum::serve(listener, app);
            // Stop at once: clients (killed agents) may hold idle connections.
            tokio::select! {
                _ = server => {}
                _ = stopped => {}
            }
        });
    });
    let addr = addr_rx.recv().expect("server address");
    Served { addr, stop: Some(stop) }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An operation and what happens when it is done.
struct Op {
    json: Value,
    /// Polls still to answer before the next status.
    effect: Effect,
    error: Option<Value>,
}

enum Effect {
    InsertRoute(Value),
    DeleteRoute(String),
}

#[derive(Default)]
struct Api {
    project: String,
    routes: BTreeMap<String, Value>,
    operations: HashMap<String, Op>,
    instances: BTreeMap<(String, String), Value>,
    networks: BTreeMap<String, Value>,
    next_id: u64,
    /// Routes the project may hold; an insert past it fails in its operation.
    route_quota: Option<usize>,
    /// Refuse inserts at once with HTTP 403 `quotaExceeded` instead.
    quota_http: bool,
    /// Route names whose insert operation ends in this error code.
    failing_inserts: HashMap<String, String>,
    /// Bearer tokens accepted, and whose each is; when empty, calls need no token.
    tokens: HashMap<String, String>,
    /// Every call, in order.
    calls: Vec<Call>,
}

/// One API call as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The API method, e.g. `routes.delete`.
    pub operation: String,
    /// The resource named (route, operation, instance) or the list filter.
    pub detail: String,
    /// Whose token it carried (see [`GceApi::allow_token`]); empty without a token check.
    pub caller: String,
}

/// The fake API; cheap to clone, shared with its server.
#[derive(Clone)]
pub struct GceApi {
    state: Arc<Mutex<Api>>,
}

pub struct GceApiServer {
    pub api: GceApi,
    /// Base URL for weft's `endpoint`.
    pub endpoint: String,
    _served: Served,
}

impl GceApiServer {
    pub fn start(project: &str) -> GceApiServer {
        GceApiServer::serve(project, serve)
    }

    /// The server at `ip` in namespace `netns`.
    pub fn start_in(project: &str, netns: &Netns, ip: Ipv4Addr) -> GceApiServer {
        GceApiServer::serve(project, |app| serve_in(app, netns, ip))
    }

    fn serve(project: &str, serve: impl FnOnce(Router) -> Served) -> GceApiServer {
        let api = GceApi { state: Arc::new(Mutex::new(Api { project: project.into(), ..Api::default() })) };
        let served = serve(Router::new().fallback(handle).with_state(api.clone()));
        GceApiServer { endpoint: format!("http://{}", served.addr), api, _served: served }
    }
}

impl GceApi {
    fn lock(&self) -> MutexGuard<'_, Api> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn project(&self) -> String {
        self.lock().project.clone()
    }

    pub fn network_link(&self, name: &str) -> String {
        format!("{LINK_BASE}projects/{}/global/networks/{name}", self.project())
    }

    pub fn instance_link(&self, zone: &str, name: &str) -> String {
        format!("{LINK_BASE}projects/{}/zones/{zone}/instances/{name}", self.project())
    }

    pub fn add_network(&self, name: &str) {
        let link = self.network_link(name);
        let mut api = self.lock();
        let id = api.id();
        api.networks.insert(
            name.into(),
            json!({"kind": "compute#network", "id": id, "name": name, "selfLink": link, "mtu": 1460,
                   "autoCreateSubnetworks": true, "routingConfig": {"routingMode": "REGIONAL"}}),
        );
    }

    pub fn add_instance(&self, zone: &str, name: &str, network: &str, ip: &str) {
        let (link, network) = (self.instance_link(zone, name), self.network_link(network));
        let project = self.project();
        let mut api = self.lock();
        let id = api.id();
        api.instances.insert(
            (zone.into(), name.into()),
            json!({"kind": "compute#instance", "id": id, "name": name, "status": "RUNNING",
                   "zone": format!("{LINK_BASE}projects/{project}/zones/{zone}"), "selfLink": link,
                   "canIpForward": true,
                   "networkInterfaces": [{"kind": "compute#networkInterface", "name": "nic0",
                                          "network": network, "networkIP": ip}]}),
        );
    }

    /// Makes the instance dual-stack, its `nic0` with `ipv6` as its internal IPv6 address, as
    /// GCE shows an instance in a dual-stack subnet (`stackType`, `ipv6Address`).
    pub fn set_instance_ipv6(&self, zone: &str, name: &str, ipv6: &str) {
        if let Some(instance) = self.lock().instances.get_mut(&(zone.into(), name.into())) {
            let nic = &mut instance["networkInterfaces"][0];
            nic["stackType"] = json!("IPV4_IPV6");
            nic["ipv6AccessType"] = json!("INTERNAL");
            nic["ipv6Address"] = json!(ipv6);
            nic["internalIpv6PrefixLength"] = json!(96);
        }
    }

    /// Turns the instance's IP forwarding (`canIpForward`) on or off, as `instances.update` would.
    pub fn set_can_ip_forward(&self, zone: &str, name: &str, on: bool) {
        if let Some(instance) = self.lock().instances.get_mut(&(zone.into(), name.into())) {
            instance["canIpForward"] = json!(on);
        }
    }

    /// Instances by selfLink, with their `canIpForward`.
    pub fn instances_forwarding(&self) -> BTreeMap<String, bool> {
        let api = self.lock();
        let forwards = |i: &Value| i["canIpForward"].as_bool().unwrap_or(false);
        api.instances.values().map(|i| (i["selfLink"].as_str().unwrap_or_default().to_string(), forwards(i))).collect()
    }

    /// Puts a route in place as if someone had made it (flannel, another tool, a dead node).
    pub fn put_route(&self, name: &str, dest: &str, network: &str, next_hop_instance: Option<&str>) {
        let body = json!({"name": name, "destRange": dest, "network": network, "priority": 1000,
                          "nextHopInstance": next_hop_instance});
        let mut api = self.lock();
        let route = api.route_resource(&body);
        api.routes.insert(name.into(), route);
    }

    pub fn routes(&self) -> BTreeMap<String, Value> {
        self.lock().routes.clone()
    }

    /// Deletes a route as someone with the project's rights would; whether it was there.
    pub fn delete_route(&self, name: &str) -> bool {
        self.lock().routes.remove(name).is_some()
    }

    pub fn set_route_quota(&self, quota: Option<usize>) {
        self.lock().route_quota = quota;
    }

    pub fn set_quota_http(&self, on: bool) {
        self.lock().quota_http = on;
    }

    pub fn fail_insert(&self, route: &str, code: &str) {
        self.lock().failing_inserts.insert(route.into(), code.into());
    }

    pub fn clear_failures(&self) {
        self.lock().failing_inserts.clear();
    }

    /// Accepts `token` as `who`'s; once any is set, calls without a known token get 401.
    pub fn allow_token(&self, token: &str, who: &str) {
        self.lock().tokens.insert(token.into(), who.into());
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls from the `from`th on, counted by operation.
    pub fn call_counts(&self, from: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in self.lock().calls.iter().skip(from) {
            *counts.entry(call.operation.clone()).or_insert(0) += 1;
        }
        counts
    }
}

impl Api {
    fn id(&mut self) -> String {
        self.next_id += 1;
        // GCE ids are uint64 written as strings.
        format!("{}", 4_000_000_000_000_000_000u64 + self.next_id)
    }

    fn link(&self, path: &str) -> String {
        format!("{LINK_BASE}projects/{}/{path}", self.project)
    }

    /// What GCE stores for an inserted route: links made absolute, output fields filled in.
    fn route_resource(&mut self, body: &Value) -> Value {
        let mut route = body.clone();
        let name = body["name"].as_str().unwrap_or_default().to_string();
        route["kind"] = json!("compute#route");
        route["id"] = json!(self.id());
        route["creationTimestamp"] = json!("2025-01-01T00:00:00.000-07:00");
        route["selfLink"] = json!(self.link(&format!("global/routes/{name}")));
        route["routeType"] = json!("STATIC");
        for field in ["network", "nextHopInstance"] {
            if let Some(link) = body[field].as_str() {
                route[field] = json!(absolute(link));
            }
        }
        if route["priority"].is_null() {
            route["priority"] = json!(1000);
        }
        if route["nextHopInstance"].is_null() {
            route.as_object_mut().map(|o| o.remove("nextHopInstance"));
        }
        route
    }

    fn new_operation(&mut self, kind: &str, target: &str, effect: Effect, error: Option<Value>) -> Value {
        let id = self.id();
        let name = format!("operation-{id}-{kind}");
        let json = json!({
            "kind": "compute#operation", "id": id, "name": name, "operationType": kind,
            "targetLink": self.link(&format!("global/routes/{target}")), "status": "PENDING",
            "progress": 0, "insertTime": "2025-01-01T00:00:00.000-07:00", "user": "weft@test.iam.gserviceaccount.com",
            "selfLink": self.link(&format!("global/operations/{name}")),
        });
        self.operations.insert(name, Op { json: json.clone(), effect, error });
        json
    }

    /// One poll: PENDING → RUNNING → DONE (the change happens when it is done).
    fn poll(&mut self, name: &str) -> Option<Value> {
        let op = self.operations.get_mut(name)?;
        let next = match op.json["status"].as_str() {
            Some("PENDING") => "RUNNING",
            _ => "DONE",
        };
        let finishing = op.json["status"] != "DONE" && next == "DONE";
        op.json["status"] = json!(next);
        if !finishing {
            return Some(op.json.clone());
        }
        op.json["progress"] = json!(100);
        op.json["endTime"] = json!("2025-01-01T00:00:05.000-07:00");
        // The quota is judged again when the insert is done: inserts made at once all found
        // room when they were asked for.
        let full = self.route_quota.filter(|quota| self.routes.len() >= *quota);
        let error = match (&op.effect, full) {
            (Effect::InsertRoute(_), Some(quota)) if op.error.is_none() => Some(quota_operation_error(quota)),
            _ => op.error.clone(),
        };
        if let Some(error) = error {
            op.json["error"] = error;
            op.json["httpErrorStatusCode"] = json!(403);
            op.json["httpErrorMessage"] = json!("FORBIDDEN");
            return Some(op.json.clone());
        }
        let json = op.json.clone();
        match &op.effect {
            Effect::InsertRoute(route) => {
                let route = route.clone();
                let name = route["name"].as_str().unwrap_or_default().to_string();
                self.routes.insert(name, route);
            }
            Effect::DeleteRoute(name) => {
                let name = name.clone();
                self.routes.remove(&name);
            }
        }
        Some(json)
    }
}

/// `projects/p/...` → `https://www.googleapis.com/compute/v1/projects/p/...`.
fn absolute(link: &str) -> String {
    match link.find("projects/") {
        Some(0) => format!("{LINK_BASE}{link}"),
        Some(at) => format!("{LINK_BASE}{}", &link[at..]),
        None => link.to_string(),
    }
}

fn respond(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// Google's error body: `{"error": {"code", "message", "errors": [{"reason", ...}]}}`.
fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message,
                                "errors": [{"message": message, "domain": "global", "reason": reason}]}});
    respond(status, body)
}

fn not_found(what: &str) -> Response {
    google_error(StatusCode::NOT_FOUND, "notFound", &format!("The resource '{what}' was not found"))
}

/// The quota error of an operation, with the quota named in `errorDetails` as GCE does.
fn quota_operation_error(limit: usize) -> Value {
    json!({"errors": [{"code": "QUOTA_EXCEEDED",
                       "message": format!("Quota 'ROUTES' exceeded.  Limit: {limit}.0 globally."),
                       "errorDetails": [{"quotaInfo": {"metricName": "compute.googleapis.com/routes",
                                                       "limitName": "ROUTES-per-project", "limit": limit}}]}]})
}

async fn handle(State(api): State<GceApi>, method: Method, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let mut state = api.lock();
    let sent = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let caller = sent.strip_prefix("Bearer ").and_then(|t| state.tokens.get(t)).cloned();
    if !state.tokens.is_empty() && caller.is_none() {
        return google_error(StatusCode::UNAUTHORIZED, "authError", "Request had invalid authentication credentials.");
    }
    let caller = caller.unwrap_or_default();
    let record = |state: &mut Api, operation: &str, detail: String| {
        state.calls.push(Call { operation: operation.into(), detail, caller: caller.clone() });
    };
    let path = uri.path().to_string();
    let query: HashMap<String, String> = uri.query().map(parse_query).unwrap_or_default();
    let Some(rest) = path.strip_prefix("/compute/v1/projects/") else { return not_found(&path) };
    let parts: Vec<&str> = rest.split('/').collect();
    let (project, parts) = match parts.split_first() {
        Some((project, parts)) => (project.to_string(), parts.to_vec()),
        None => return not_found(&path),
    };
    if project != state.project {
        return not_found(&format!("projects/{project}"));
    }
    match (method, parts.as_slice()) {
        (Method::POST, ["global", "routes"]) => {
            let body: Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(e) => return google_error(StatusCode::BAD_REQUEST, "parseError", &format!("Parse Error: {e}")),
            };
            let name = body["name"].as_str().unwrap_or_default().to_string();
            record(&mut state, "routes.insert", name.clone());
            insert_route(&mut state, name, body)
        }
        (Method::GET, ["global", "routes"]) => {
            record(&mut state, "routes.list", query.get("filter").cloned().unwrap_or_default());
            list_routes(&state, &query)
        }
        (Method::GET, ["global", "routes", name]) => {
            record(&mut state, "routes.get", name.to_string());
            match state.routes.get(*name) {
                Some(route) => respond(StatusCode::OK, route.clone()),
                None => not_found(&format!("projects/{project}/global/routes/{name}")),
            }
        }
        (Method::DELETE, ["global", "routes", name]) => {
            record(&mut state, "routes.delete", name.to_string());
            if !state.routes.contains_key(*name) {
                return not_found(&format!("projects/{project}/global/routes/{name}"));
            }
            let op = state.new_operation("delete", name, Effect::DeleteRoute(name.to_string()), None);
            respond(StatusCode::OK, op)
        }
        (Method::GET, ["global", "operations", name]) => {
            record(&mut state, "globalOperations.get", name.to_string());
            match state.poll(name) {
                Some(op) => respond(StatusCode::OK, op),
                None => not_found(&format!("projects/{project}/global/operations/{name}")),
            }
        }
        (Method::GET, ["zones", zone, "instances", name]) => {
            record(&mut state, "instances.get", format!("{zone}/{name}"));
            match state.instances.get(&(zone.to_string(), name.to_string())) {
                Some(instance) => respond(StatusCode::OK, instance.clone()),
                None => not_found(&format!("projects/{project}/zones/{zone}/instances/{name}")),
            }
        }
        (Method::GET, []) => {
            record(&mut state, "projects.get", project.clone());
            // The ROUTES quota as GCE lists it (250 when the test set none), with its usage.
            let limit = state.route_quota.unwrap_or(DEFAULT_ROUTE_QUOTA);
            let quotas = json!([{"metric": "ROUTES", "limit": limit as f64, "usage": state.routes.len() as f64},
                                {"metric": "NETWORKS", "limit": 15.0, "usage": state.networks.len() as f64}]);
            respond(StatusCode::OK, json!({"kind": "compute#project", "name": project, "quotas": quotas}))
        }
        (Method::GET, ["global", "networks", name]) => {
            record(&mut state, "networks.get", name.to_string());
            match state.networks.get(*name) {
                Some(network) => respond(StatusCode::OK, network.clone()),
                None => not_found(&format!("projects/{project}/global/networks/{name}")),
            }
        }
        _ => not_found(&path),
    }
}

/// GCE's rule for a resource name (RFC 1035): `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(inner)
        && bytes.last().is_some_and(|b| *b != b'-')
}

/// Google's answer to a field it cannot take: HTTP 400, reason `invalid`.
fn invalid_field(field: &str, value: &str, rule: &str) -> Response {
    google_error(
        StatusCode::BAD_REQUEST,
        "invalid",
        &format!("Invalid value for field 'resource.{field}': '{value}'. {rule}"),
    )
}

fn insert_route(state: &mut Api, name: String, body: Value) -> Response {
    let project = state.project.clone();
    let Some(dest) = body["destRange"].as_str().filter(|_| !name.is_empty()) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "required",
            "Required field 'resource.name' or 'destRange' not specified",
        );
    };
    if !valid_name(&name) {
        let rule = "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'";
        return invalid_field("name", &name, rule);
    }
    // A single IPv4 or IPv6 CIDR range.
    if dest.parse::<ipnet::IpNet>().is_err() {
        return invalid_field("destRange", dest, "Must be a valid IPv4 or IPv6 CIDR range.");
    }
    if state.routes.contains_key(&name) {
        return google_error(
            StatusCode::CONFLICT,
            "alreadyExists",
            &format!("The resource 'projects/{project}/global/routes/{name}' already exists"),
        );
    }
    let network = body["network"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
    if !state.networks.contains_key(&network) {
        return not_found(&format!("projects/{project}/global/networks/{network}"));
    }
    if let Some(hop) = body["nextHopInstance"].as_str() {
        let segments: Vec<&str> = hop.split('/').collect();
        let key = match segments.as_slice() {
            [.., "zones", zone, "instances", instance] => (zone.to_string(), instance.to_string()),
            _ => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("Invalid value for field 'resource.nextHopInstance': '{hop}'"),
                )
            }
        };
        if !state.instances.contains_key(&key) {
            return not_found(hop);
        }
    }
    let full = state.route_quota.is_some_and(|limit| state.routes.len() >= limit);
    if full && state.quota_http {
        let limit = state.route_quota.unwrap_or_default();
        let message = format!("Quota 'ROUTES' exceeded.  Limit: {limit}.0 globally.");
        let body = json!({"error": {"code": 403, "message": message,
            "errors": [{"message": message, "domain": "usageLimits", "reason": "quotaExceeded"}],
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXCEEDED",
                         "domain": "compute.googleapis.com",
                         "metadata": {"quota_metric": "compute.googleapis.com/routes",
                                      "quota_limit": "ROUTES-per-project", "quota_limit_value": limit.to_string()}}]}});
        return respond(StatusCode::FORBIDDEN, body);
    }
    let error = if full {
        Some(quota_operation_error(state.route_quota.unwrap_or_default()))
    } else {
        state.failing_inserts.get(&name).map(|code| {
            json!({"errors": [{"code": code, "message": format!("The operation on route '{name}' failed ({code}).")}]})
        })
    };
    let route = state.route_resource(&body);
    let op = state.new_operation("insert", &name, Effect::InsertRoute(route), error);
    respond(StatusCode::OK, op)
}

/// `filter` supports what weft sends: `field = "value"` (exact match, as GCE compares).
fn list_routes(state: &Api, query: &HashMap<String, String>) -> Response {
    let filter = query.get("filter").map(|f| parse_filter(f));
    let matching: Vec<&Value> = state
        .routes
        .values()
        .filter(|route| match &filter {
            Some(Some((field, value))) => route[field.as_str()].as_str() == Some(value.as_str()),
            Some(None) => false,
            None => true,
        })
        .collect();
    let page_size = query.get("maxResults").and_then(|m| m.parse().ok()).unwrap_or(500usize).clamp(1, 500);
    let start: usize = query.get("pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = matching.iter().skip(start).take(page_size).map(|r| (*r).clone()).collect();
    let mut body = json!({"kind": "compute#routeList", "id": format!("projects/{}/global/routes", state.project),
                          "items": page, "selfLink": format!("{LINK_BASE}projects/{}/global/routes", state.project)});
    if start + page_size < matching.len() {
        body["nextPageToken"] = json!((start + page_size).to_string());
    }
    respond(StatusCode::OK, body)
}

fn parse_filter(filter: &str) -> Option<(String, String)> {
    let filter = filter.trim().trim_start_matches('(').trim_end_matches(')');
    let (field, value) = filter.split_once('=')?;
    Some((field.trim().to_string(), value.trim().trim_matches('"').to_string()))
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// Percent-decoding (and `+` as space), enough for query strings.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
