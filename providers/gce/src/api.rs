//! The seam between weft and the Compute API: the few calls weft makes. The SDK client
//! implements it ([`crate::SdkCompute`]); tests implement it with a fake.

use async_trait::async_trait;

use crate::error::GceError;
use crate::types::{Instance, Network, Operation, Route, RouteQuota, RouteSpec};

#[async_trait]
pub trait ComputeApi: Send + Sync {
    /// `routes.insert`: the returned operation still has to be waited for.
    async fn insert_route(&self, route: &RouteSpec) -> Result<Operation, GceError>;
    async fn get_route(&self, name: &str) -> Result<Route, GceError>;
    /// `routes.list` filtered to `network` (a selfLink), every page.
    async fn list_routes(&self, network: &str) -> Result<Vec<Route>, GceError>;
    async fn delete_route(&self, name: &str) -> Result<Operation, GceError>;
    /// `globalOperations.get`.
    async fn get_operation(&self, name: &str) -> Result<Operation, GceError>;
    async fn get_instance(&self, zone: &str, name: &str) -> Result<Instance, GceError>;
    async fn get_network(&self, name: &str) -> Result<Network, GceError>;
    /// `projects.get`: the project's `ROUTES` quota (`None`: the project lists none).
    async fn route_quota(&self) -> Result<Option<RouteQuota>, GceError>;
}

/// Where each API call is counted: `operation` is the API method (`routes.insert`), `outcome`
/// `ok` or [`GceError::outcome`].
pub trait CallRecorder: Send + Sync {
    fn record(&self, operation: &'static str, outcome: &'static str);
}

/// Records nothing.
pub struct NoRecorder;

impl CallRecorder for NoRecorder {
    fn record(&self, _operation: &'static str, _outcome: &'static str) {}
}
