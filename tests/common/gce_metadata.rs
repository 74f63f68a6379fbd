//! A GCE metadata server for one instance: what weft and Google's auth library read
//! (project, zone, instance name, nic0's network, a service-account token), refusing requests
//! without `Metadata-Flavor: Google` as the real one does. Point a process at it with
//! `GCE_METADATA_HOST=<addr>`.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Router;

use weft::netns::Netns;

use super::gce_api::{serve, serve_in, Served};

/// The project number GCE puts in metadata paths (`projects/<number>/zones/...`).
pub const PROJECT_NUMBER: &str = "424242424242";

#[derive(Clone)]
struct Instance {
    project: String,
    zone: String,
    name: String,
    network: String,
    ip: String,
    token: String,
    requests: Arc<AtomicUsize>,
    /// The default service account's scopes, one per line.
    scopes: Arc<Mutex<String>>,
}

/// What a VM created with `--scopes=cloud-platform` has.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

pub struct MetadataServer {
    /// `host:port`, the value of `GCE_METADATA_HOST`.
    pub host: String,
    /// The access token the service account hands out.
    pub token: String,
    requests: Arc<AtomicUsize>,
    scopes: Arc<Mutex<String>>,
    _served: Served,
}

impl MetadataServer {
    pub fn start(project: &str, zone: &str, name: &str, network: &str, ip: &str) -> MetadataServer {
        MetadataServer::serve(project, zone, name, network, ip, serve)
    }

    /// The server at `at` in namespace `netns`, for an instance in a namespace of its own.
    pub fn start_in(
        project: &str,
        zone: &str,
        name: &str,
        network: &str,
        ip: &str,
        netns: &Netns,
        at: Ipv4Addr,
    ) -> MetadataServer {
        MetadataServer::serve(project, zone, name, network, ip, |app| serve_in(app, netns, at))
    }

    fn serve(
        project: &str,
        zone: &str,
        name: &str,
        network: &str,
        ip: &str,
        serve: impl FnOnce(Router) -> Served,
    ) -> MetadataServer {
        let token = format!("ya29.test-token-for-{name}");
        let requests = Arc::new(AtomicUsize::new(0));
        let scopes = Arc::new(Mutex::new(format!("{CLOUD_PLATFORM}\n")));
        let instance = Instance {
            project: project.into(),
            zone: zone.into(),
            name: name.into(),
            network: network.into(),
            ip: ip.into(),
            token: token.clone(),
            requests: requests.clone(),
            scopes: scopes.clone(),
        };
        let served = serve(Router::new().fallback(handle).with_state(instance));
        MetadataServer { host: served.addr.to_string(), token, requests, scopes, _served: served }
    }

    /// Replaces the default service account's scopes.
    pub fn set_scopes(&self, scopes: &[&str]) {
        *self.scopes.lock().unwrap() = scopes.iter().map(|s| format!("{s}\n")).collect();
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("Metadata-Flavor", "Google")
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn handle(State(instance): State<Instance>, uri: Uri, headers: HeaderMap) -> Response {
    instance.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return reply(StatusCode::FORBIDDEN, "text/html", "Missing Metadata-Flavor:Google header.".into());
    }
    let Some(path) = uri.path().strip_prefix("/computeMetadata/v1/") else {
        return reply(StatusCode::NOT_FOUND, "text/html", "not found".into());
    };
    let text = |body: String| reply(StatusCode::OK, "application/text", body);
    match path.trim_end_matches('/') {
        "project/project-id" => text(instance.project.clone()),
        "project/numeric-project-id" => text(PROJECT_NUMBER.into()),
        "instance/name" => text(instance.name.clone()),
        "instance/hostname" => text(format!("{}.{}.c.{}.internal", instance.name, instance.zone, instance.project)),
        "instance/zone" => text(format!("projects/{PROJECT_NUMBER}/zones/{}", instance.zone)),
        "instance/network-interfaces/0/network" => {
            text(format!("projects/{PROJECT_NUMBER}/networks/{}", instance.network))
        }
        "instance/network-interfaces/0/ip" => text(instance.ip.clone()),
        "instance/network-interfaces/0/mtu" => text("1460".into()),
        "instance/service-accounts/default/scopes" => text(instance.scopes.lock().unwrap().clone()),
        "instance/service-accounts/default/email" => text(format!("weft@{}.iam.gserviceaccount.com", instance.project)),
        "instance/service-accounts/default/token" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"access_token": instance.token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
        ),
        "universe/universe-domain" => text("googleapis.com".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/html", format!("{path} not found")),
    }
}
