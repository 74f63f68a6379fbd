//! [`ComputeApi`] on google-cloud-compute-v1. SDK retries are off: every call weft counts is one
//! HTTP request, and weft retries with its own backoff where it makes sense.

use async_trait::async_trait;
use google_cloud_auth::credentials::Credentials;
use google_cloud_compute_v1::client::{GlobalOperations, Instances, Networks, Projects, Routes};
use google_cloud_compute_v1::model;
use google_cloud_gax::retry_policy::NeverRetry;

use crate::api::ComputeApi;
use crate::error::{classify, GceError, OperationError, OperationErrorItem, QuotaInfo};
use crate::types::{Instance, Network, OpStatus, Operation, Route, RouteQuota, RouteSpec};

/// How long one HTTP request may take.
const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the API is and who calls it.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub project: String,
    /// Base URL, e.g. `http://127.0.0.1:8089` for a test server; empty: the public endpoint.
    pub endpoint: String,
    pub credentials: CredentialSource,
}

/// Whose identity the calls carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CredentialSource {
    /// The VM's service account, from the metadata server (`GCE_METADATA_HOST` honoured).
    #[default]
    Metadata,
    /// Application Default Credentials: the file named by `GOOGLE_APPLICATION_CREDENTIALS`
    /// (a service-account key, or any other kind gcloud writes).
    ApplicationDefault,
    /// No credentials at all: only for local test servers.
    Anonymous,
}

impl CredentialSource {
    /// A credentials file when `GOOGLE_APPLICATION_CREDENTIALS` names one, the metadata server
    /// otherwise. The gcloud well-known file is deliberately not consulted: on a node, a user's
    /// leftover login must not silently replace the VM's service account.
    pub fn from_env() -> Self {
        match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            Some(path) if !path.is_empty() => CredentialSource::ApplicationDefault,
            _ => CredentialSource::Metadata,
        }
    }

    fn build(&self) -> Result<Credentials, GceError> {
        use google_cloud_auth::credentials::{anonymous, mds, Builder};
        match self {
            CredentialSource::Metadata => {
                mds::Builder::default().build().map_err(|e| GceError::other("metadata server credentials", e))
            }
            CredentialSource::ApplicationDefault => {
                Builder::default().build().map_err(|e| GceError::other("GOOGLE_APPLICATION_CREDENTIALS", e))
            }
            CredentialSource::Anonymous => Ok(anonymous::Builder::new().build()),
        }
    }
}

/// The SDK's clients for the four services weft uses, bound to one project.
pub struct SdkCompute {
    project: String,
    routes: Routes,
    operations: GlobalOperations,
    instances: Instances,
    networks: Networks,
    projects: Projects,
}

/// Applies the options shared by every service's builder. A macro because each service has
/// its own builder type with the same methods.
macro_rules! build_client {
    ($client:ty, $options:expr, $credentials:expr) => {{
        let mut builder = <$client>::builder()
            .with_credentials($credentials.clone())
            .with_retry_policy(NeverRetry)
            // A call that hangs would stall every later pass.
            .with_attempt_timeout(ATTEMPT_TIMEOUT);
        if !$options.endpoint.is_empty() {
            builder = builder.with_endpoint($options.endpoint.clone());
        }
        builder
            .build()
            .await
            .map_err(|e| GceError::other(concat!("building the ", stringify!($client), " client"), e))?
    }};
}

impl SdkCompute {
    pub async fn new(options: &ClientOptions) -> Result<Self, GceError> {
        let credentials = options.credentials.build()?;
        Ok(SdkCompute {
            project: options.project.clone(),
            routes: build_client!(Routes, options, credentials),
            operations: build_client!(GlobalOperations, options, credentials),
            instances: build_client!(Instances, options, credentials),
            networks: build_client!(Networks, options, credentials),
            projects: build_client!(Projects, options, credentials),
        })
    }
}

#[async_trait]
impl ComputeApi for SdkCompute {
    async fn insert_route(&self, route: &RouteSpec) -> Result<Operation, GceError> {
        let mut body = model::Route::new()
            .set_name(route.name.clone())
            .set_dest_range(route.dest_range.to_string())
            .set_network(route.network.clone())
            .set_next_hop_instance(route.next_hop_instance.clone())
            .set_priority(route.priority)
            .set_tags(route.tags.clone());
        if !route.description.is_empty() {
            body = body.set_description(route.description.clone());
        }
        let what = format!("route {}", route.name);
        let op = self.routes.insert().set_project(&self.project).set_body(body).send().await;
        op.map(operation).map_err(|e| classify(&what, e))
    }

    async fn get_route(&self, name: &str) -> Result<Route, GceError> {
        let got = self.routes.get().set_project(&self.project).set_route(name).send().await;
        got.map(route).map_err(|e| classify(&format!("route {name}"), e))
    }

    async fn list_routes(&self, network: &str) -> Result<Vec<Route>, GceError> {
        let mut routes = Vec::new();
        let mut page_token = None::<String>;
        loop {
            let page = self
                .routes
                .list()
                .set_project(&self.project)
                .set_filter(format!("network = \"{network}\""))
                .set_or_clear_page_token(page_token.take())
                .send()
                .await
                .map_err(|e| classify("routes", e))?;
            routes.extend(page.items.into_iter().map(route));
            match page.next_page_token {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => return Ok(routes),
            }
        }
    }

    async fn delete_route(&self, name: &str) -> Result<Operation, GceError> {
        let op = self.routes.delete().set_project(&self.project).set_route(name).send().await;
        op.map(operation).map_err(|e| classify(&format!("route {name}"), e))
    }

    async fn get_operation(&self, name: &str) -> Result<Operation, GceError> {
        let op = self.operations.get().set_project(&self.project).set_operation(name).send().await;
        op.map(operation).map_err(|e| classify(&format!("operation {name}"), e))
    }

    async fn get_instance(&self, zone: &str, name: &str) -> Result<Instance, GceError> {
        let got = self.instances.get().set_project(&self.project).set_zone(zone).set_instance(name).send().await;
        let got = got.map_err(|e| classify(&format!("instance {zone}/{name}"), e))?;
        Ok(Instance {
            name: got.name.unwrap_or_default(),
            self_link: got.self_link.unwrap_or_default(),
            networks: got.network_interfaces.into_iter().filter_map(|nic| nic.network).collect(),
            can_ip_forward: got.can_ip_forward,
        })
    }

    async fn route_quota(&self) -> Result<Option<RouteQuota>, GceError> {
        let got = self.projects.get().set_project(&self.project).send().await;
        let got = got.map_err(|e| classify(&format!("project {}", self.project), e))?;
        let routes = got.quotas.into_iter().find(|q| q.metric == Some(model::quota::Metric::Routes));
        Ok(routes.map(|q| RouteQuota { limit: q.limit.unwrap_or_default(), usage: q.usage.unwrap_or_default() }))
    }

    async fn get_network(&self, name: &str) -> Result<Network, GceError> {
        let got = self.networks.get().set_project(&self.project).set_network(name).send().await;
        let got = got.map_err(|e| classify(&format!("network {name}"), e))?;
        Ok(Network {
            name: got.name.unwrap_or_default(),
            self_link: got.self_link.unwrap_or_default(),
            mtu: got.mtu.and_then(|m| u32::try_from(m).ok()),
        })
    }
}

pub(crate) fn route(r: model::Route) -> Route {
    Route {
        name: r.name.unwrap_or_default(),
        dest_range: r.dest_range.unwrap_or_default(),
        network: r.network.unwrap_or_default(),
        next_hop_instance: r.next_hop_instance,
        priority: r.priority,
        tags: r.tags,
        self_link: r.self_link.unwrap_or_default(),
    }
}

pub(crate) fn operation(op: model::Operation) -> Operation {
    use model::operation::Status;
    let status = match op.status {
        Some(Status::Done) => OpStatus::Done(op.error.map(operation_error)),
        Some(Status::Running) => OpStatus::Running,
        // PENDING, and values newer than this client: not done yet, keep polling.
        _ => OpStatus::Pending,
    };
    Operation { name: op.name.unwrap_or_default(), status }
}

fn operation_error(error: model::operation::Error) -> OperationError {
    let items = error
        .errors
        .into_iter()
        .map(|e| OperationErrorItem {
            code: e.code.unwrap_or_default(),
            message: e.message.unwrap_or_default(),
            quota: e.error_details.into_iter().find_map(|d| d.quota_info).map(|q| QuotaInfo {
                limit_name: q.limit_name.unwrap_or_default(),
                metric_name: q.metric_name.unwrap_or_default(),
                limit: q.limit,
            }),
        })
        .collect();
    OperationError { items }
}
