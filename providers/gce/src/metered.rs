//! Counts every API call by method and outcome, whatever implements the API underneath.

use std::sync::Arc;

use async_trait::async_trait;

use crate::api::{CallRecorder, ComputeApi};
use crate::error::GceError;
use crate::types::{Instance, Network, OpStatus, Operation, Route, RouteQuota, RouteSpec};

pub struct Metered<A> {
    inner: A,
    recorder: Arc<dyn CallRecorder>,
}

impl<A: ComputeApi> Metered<A> {
    pub fn new(inner: A, recorder: Arc<dyn CallRecorder>) -> Self {
        Metered { inner, recorder }
    }

    fn note<T>(&self, operation: &'static str, result: &Result<T, GceError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.recorder.record(operation, outcome);
    }

    /// An operation that is done with an error counts as the failure it reports, so that a
    /// failed insert shows in the metric even though each HTTP call succeeded.
    fn note_operation(&self, operation: &'static str, result: &Result<Operation, GceError>) {
        match result {
            Ok(Operation { name, status: OpStatus::Done(Some(error)) }) => {
                self.recorder.record(operation, error.clone().into_error(name).outcome())
            }
            other => self.note(operation, other),
        }
    }
}

#[async_trait]
impl<A: ComputeApi> ComputeApi for Metered<A> {
    async fn insert_route(&self, route: &RouteSpec) -> Result<Operation, GceError> {
        let result = self.inner.insert_route(route).await;
        self.note_operation("routes.insert", &result);
        result
    }

    async fn get_route(&self, name: &str) -> Result<Route, GceError> {
        let result = self.inner.get_route(name).await;
        self.note("routes.get", &result);
        result
    }

    async fn list_routes(&self, network: &str) -> Result<Vec<Route>, GceError> {
        let result = self.inner.list_routes(network).await;
        self.note("routes.list", &result);
        result
    }

    async fn delete_route(&self, name: &str) -> Result<Operation, GceError> {
        let result = self.inner.delete_route(name).await;
        self.note_operation("routes.delete", &result);
        result
    }

    async fn get_operation(&self, name: &str) -> Result<Operation, GceError> {
        let result = self.inner.get_operation(name).await;
        self.note_operation("globalOperations.get", &result);
        result
    }

    async fn get_instance(&self, zone: &str, name: &str) -> Result<Instance, GceError> {
        let result = self.inner.get_instance(zone, name).await;
        self.note("instances.get", &result);
        result
    }

    async fn get_network(&self, name: &str) -> Result<Network, GceError> {
        let result = self.inner.get_network(name).await;
        self.note("networks.get", &result);
        result
    }

    async fn route_quota(&self) -> Result<Option<RouteQuota>, GceError> {
        let result = self.inner.route_quota().await;
        self.note("projects.get", &result);
        result
    }
}
