//! A stand-in for kube-apiserver, for what weft uses of it: nodes (get, list, watch with
//! resourceVersion and bookmarks, 410 Gone for an expired resourceVersion, merge and strategic
//! merge patches of the node and its status) and coordination.k8s.io Leases (get, create,
//! replace with optimistic concurrency). Plain HTTP on 127.0.0.1, with a kubeconfig pointing at it.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::channel::mpsc;
use futures::SinkExt;
use serde_json::{json, Value};
use weft::netns::Netns;

/// How often a watch looks for new events, and sends a bookmark when asked to.
const WATCH_POLL: Duration = Duration::from_millis(50);
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One recorded PATCH: which node, which subresource, which content type, what body.
#[derive(Debug, Clone)]
pub struct PatchRecord {
    pub node: String,
    pub status: bool,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    nodes: BTreeMap<String, Value>,
    leases: BTreeMap<(String, String), Value>,
    /// Every node event, oldest first, with its revision.
    history: Vec<(u64, EventType, Value)>,
    /// Watches from a revision below this get 410 Gone (etcd compacted it).
    compacted: u64,
    /// Bumped to end every open watch, as an API server restart does.
    generation: u64,
    lists: u64,
    watches: u64,
    patches: Vec<PatchRecord>,
    /// Every request as the RBAC check would see it: (API group, resource, verb).
    access: BTreeSet<(String, String, String)>,
}

impl Inner {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, kind: EventType, mut node: Value) -> Value {
        let rv = self.next_revision();
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.history.push((rv, kind, node.clone()));
        node
    }
}

/// The running server. Dropping it stops it.
pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeApi {
    pub fn start() -> KubeApi {
        KubeApi::start_in(None, "127.0.0.1:0")
    }

    /// Serves on `bind` inside `netns` (the machine's namespace with `None`): agents in host
    /// namespaces of a multi-host test cannot reach the machine's loopback, so the API server
    /// runs in a service namespace on their bridge, as etcd does.
    pub fn start_in(netns: Option<&Netns>, bind: &str) -> KubeApi {
        let state = Arc::new(Mutex::new(Inner::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let netns_path = netns.map(|ns| ns.path.clone());
        let bind = bind.to_string();
        let thread = std::thread::spawn(move || {
            // setns moves only this thread: the listener is made here, so it belongs there.
            if let Some(path) = netns_path {
                let file = std::fs::File::open(&path).expect("open the namespace");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
            }
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&bind).await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let app = router(app_state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop.await;
                    })
                    .await;
            });
            // Open watches would keep the runtime busy: drop it without waiting for them.
            runtime.shutdown_background();
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("server address");
        KubeApi { addr, state, shutdown: Some(shutdown), thread: Some(thread) }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().expect("kube api state")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Adds a node as the kubelet and controller manager would: name, podCIDR, annotations.
    pub fn add_node(&self, name: &str, pod_cidr: Option<&str>, annotations: &BTreeMap<String, String>) {
        let notes: serde_json::Map<String, Value> = annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut spec = json!({});
        if let Some(cidr) = pod_cidr {
            spec = json!({ "podCIDR": cidr, "podCIDRs": [cidr] });
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": format!("uid-{name}"),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": notes,
            },
            "spec": spec,
        });
        let mut inner = self.inner();
        let node = inner.record(EventType::Added, node);
        inner.nodes.insert(name.to_string(), node);
    }

    /// Sets (or, with `None`, removes) one annotation, as `kubectl annotate` would.
    pub fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        let mut inner = self.inner();
        let mut node = inner.nodes.get(name).cloned().expect("node exists");
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        merge(&mut node, &patch);
        let node = inner.record(EventType::Modified, node);
        inner.nodes.insert(name.to_string(), node);
    }

    /// Gives a node a pod subnet of each family, as a dual-stack controller manager does.
    pub fn set_pod_cidrs(&self, name: &str, v4: &str, v6: &str) {
        let mut inner = self.inner();
        let mut node = inner.nodes.get(name).cloned().expect("node exists");
        node["spec"] = json!({ "podCIDR": v4, "podCIDRs": [v4, v6] });
        let node = inner.record(EventType::Modified, node);
        inner.nodes.insert(name.to_string(), node);
    }

    /// Sets the node's pod CIDR, as the controller manager does once.
    pub fn set_pod_cidr(&self, name: &str, cidr: &str) {
        let mut inner = self.inner();
        let mut node = inner.nodes.get(name).cloned().expect("node exists");
        node["spec"] = json!({ "podCIDR": cidr, "podCIDRs": [cidr] });
        let node = inner.record(EventType::Modified, node);
        inner.nodes.insert(name.to_string(), node);
    }

    pub fn delete_node(&self, name: &str) {
        let mut inner = self.inner();
        let node = inner.nodes.remove(name).expect("node exists");
        inner.record(EventType::Deleted, node);
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.inner().nodes.get(name).cloned()
    }

    /// The node's annotations as the API server holds them.
    pub fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        let node = self.node(name).unwrap_or_default();
        node["metadata"]["annotations"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default()
    }

    /// Forgets all history (as etcd compaction does) and ends every open watch (as an API server
    /// restart does): clients resuming from their resourceVersion get 410 Gone and must relist.
    pub fn expire_watches(&self) {
        let mut inner = self.inner();
        inner.compacted = inner.revision + 1;
        inner.history.clear();
        inner.generation += 1;
    }

    pub fn list_count(&self) -> u64 {
        self.inner().lists
    }

    pub fn watch_count(&self) -> u64 {
        self.inner().watches
    }

    /// What RBAC would have had to allow for every request so far: (group, resource, verb).
    pub fn access(&self) -> BTreeSet<(String, String, String)> {
        self.inner().access.clone()
    }

    pub fn patches(&self) -> Vec<PatchRecord> {
        self.inner().patches.clone()
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner().leases.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.inner().generation += 1;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Shared = Arc<Mutex<Inner>>;

fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
        .route("/api/v1/nodes/{name}/status", get(get_node).patch(patch_node_status))
        .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", get(list_leases).post(create_lease))
        .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", get(get_lease).put(replace_lease))
        .fallback(|method: Method, uri: Uri| async move {
            status(StatusCode::NOT_FOUND, "NotFound", &format!("{method} {uri} is not served"))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_access))
        .with_state(state)
}

/// Notes what each request needs from RBAC before it is served.
async fn record_access(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(access) = rbac_access(request.method(), request.uri()) {
        state.lock().expect("state").access.insert(access);
    }
    next.run(request).await
}

/// The (group, resource, verb) that RBAC checks for a request, as kube-apiserver names them:
/// `/api/v1/...` is the core group (""), `/apis/<group>/<version>/...` another; a subresource is
/// `resource/sub`; GET is get on an object, list (or watch, with `?watch=true`) on a collection.
fn rbac_access(method: &Method, uri: &Uri) -> Option<(String, String, String)> {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, object) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query(uri).get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method.as_str(), object) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

/// A `Status` object, the shape of every API error.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok_json(value: &Value) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], value.to_string()).into_response()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn nodes(State(state): State<Shared>, uri: Uri) -> Response {
    let q = query(&uri);
    if q.get("watch").map(String::as_str) == Some("true") || q.get("watch").map(String::as_str) == Some("1") {
        return watch(state, &q);
    }
    let mut inner = state.lock().expect("state");
    inner.lists += 1;
    let items: Vec<Value> = inner.nodes.values().cloned().collect();
    ok_json(&json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": { "resourceVersion": inner.revision.to_string() },
        "items": items,
    }))
}

/// A watch: newline-separated events from after `resourceVersion`, bookmarks when allowed, until
/// `timeoutSeconds` or a restart of the "server".
fn watch(state: Shared, q: &BTreeMap<String, String>) -> Response {
    let from: Option<u64> =
        q.get("resourceVersion").filter(|v| !v.is_empty() && v.as_str() != "0").map(|v| v.parse().unwrap_or(0));
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (start, generation, backlog) = {
        let mut inner = state.lock().expect("state");
        inner.watches += 1;
        match from {
            Some(rv) if rv < inner.compacted => {
                // The API server answers 200 and then an ERROR event: the client must relist.
                let message = format!("too old resource version: {rv} ({})", inner.compacted);
                let event = json!({
                    "type": "ERROR",
                    "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": message, "reason": "Expired", "code": 410,
                    },
                });
                drop(inner);
                let line = Bytes::from(format!("{event}\n"));
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from_stream(futures::stream::iter([Ok::<_, Infallible>(line)])))
                    .expect("response");
            }
            Some(rv) => (rv, inner.generation, Vec::new()),
            // No resourceVersion: the current state as ADDED events, then changes.
            None => {
                let current = inner.nodes.values().map(|n| (EventType::Added, n.clone())).collect();
                (inner.revision, inner.generation, current)
            }
        }
    };
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        let mut seen = start;
        let mut last_bookmark = Instant::now();
        for (kind, object) in backlog {
            if tx.send(Ok(event_line(kind, &object))).await.is_err() {
                return;
            }
        }
        loop {
            let (events, current, ended) = {
                let inner = state.lock().expect("state");
                let events: Vec<(u64, EventType, Value)> =
                    inner.history.iter().filter(|(rv, _, _)| *rv > seen).cloned().collect();
                (events, inner.revision, inner.generation != generation)
            };
            if ended || Instant::now() >= deadline {
                return;
            }
            for (rv, kind, object) in events {
                seen = rv;
                if tx.send(Ok(event_line(kind, &object))).await.is_err() {
                    return;
                }
            }
            if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY {
                last_bookmark = Instant::now();
                seen = seen.max(current);
                let bookmark = json!({
                    "type": "BOOKMARK",
                    "object": { "kind": "Node", "apiVersion": "v1", "metadata": { "resourceVersion": seen.to_string() } },
                });
                if tx.send(Ok(Bytes::from(format!("{bookmark}\n")))).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(rx)).expect("response")
}

fn event_line(kind: EventType, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({ "type": kind.as_str(), "object": object })))
}

async fn get_node(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let inner = state.lock().expect("state");
    match inner.nodes.get(&name) {
        Some(node) => ok_json(node),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("nodes \"{name}\" not found")),
    }
}

async fn patch_node(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    apply_patch(&state, &name, false, &headers, &body)
}

async fn patch_node_status(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    apply_patch(&state, &name, true, &headers, &body)
}

fn apply_patch(state: &Shared, name: &str, on_status: bool, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let strategic = match content_type.as_str() {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"),
            )
        }
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the patch is not JSON");
    };
    if !patch.is_object() {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "a patch must be a JSON object");
    }
    // Strategic merge differs from a merge patch only for lists with merge keys and `$`
    // directives; what weft patches (metadata.annotations, a map) merges the same way.
    if strategic && contains_directive(&patch) {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "patch directives are not supported by this test server");
    }
    let mut inner = state.lock().expect("state");
    let Some(mut node) = inner.nodes.get(name).cloned() else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("nodes \"{name}\" not found"));
    };
    inner.patches.push(PatchRecord { node: name.to_string(), status: on_status, content_type, body: patch.clone() });
    // Through the status subresource, spec changes are ignored (metadata and status apply).
    let mut patch = patch;
    if on_status {
        if let Some(obj) = patch.as_object_mut() {
            obj.remove("spec");
        }
    }
    let before = node.clone();
    merge(&mut node, &patch);
    if node == before {
        return ok_json(&node);
    }
    let node = inner.record(EventType::Modified, node);
    inner.nodes.insert(name.to_string(), node.clone());
    ok_json(&node)
}

fn contains_directive(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k.starts_with('$') || contains_directive(v)),
        Value::Array(items) => items.iter().any(contains_directive),
        _ => false,
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

async fn list_leases(State(state): State<Shared>, UrlPath(ns): UrlPath<String>) -> Response {
    let inner = state.lock().expect("state");
    let items: Vec<Value> = inner.leases.iter().filter(|((n, _), _)| *n == ns).map(|(_, v)| v.clone()).collect();
    ok_json(&json!({
        "kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
        "metadata": { "resourceVersion": inner.revision.to_string() }, "items": items,
    }))
}

async fn get_lease(State(state): State<Shared>, UrlPath((ns, name)): UrlPath<(String, String)>) -> Response {
    let inner = state.lock().expect("state");
    match inner.leases.get(&(ns, name.clone())) {
        Some(lease) => ok_json(lease),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("leases.coordination.k8s.io \"{name}\" not found")),
    }
}

async fn create_lease(State(state): State<Shared>, UrlPath(ns): UrlPath<String>, body: Bytes) -> Response {
    let Ok(mut lease) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let Some(name) = lease["metadata"]["name"].as_str().map(String::from) else {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value");
    };
    let mut inner = state.lock().expect("state");
    let key = (ns.clone(), name.clone());
    if inner.leases.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    let rv = inner.next_revision();
    lease["metadata"]["namespace"] = json!(ns);
    lease["metadata"]["resourceVersion"] = json!(rv.to_string());
    lease["metadata"]["uid"] = json!(format!("uid-lease-{name}"));
    inner.leases.insert(key, lease.clone());
    (StatusCode::CREATED, [("content-type", "application/json")], lease.to_string()).into_response()
}

async fn replace_lease(
    State(state): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(mut lease) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let mut inner = state.lock().expect("state");
    let key = (ns.clone(), name.clone());
    let Some(current) = inner.leases.get(&key) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("leases.coordination.k8s.io \"{name}\" not found"));
    };
    // Optimistic concurrency: an update names the version it read, or it is refused.
    if lease["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        );
    }
    let rv = inner.next_revision();
    lease["metadata"]["namespace"] = json!(ns);
    lease["metadata"]["resourceVersion"] = json!(rv.to_string());
    inner.leases.insert(key, lease.clone());
    ok_json(&lease)
}
