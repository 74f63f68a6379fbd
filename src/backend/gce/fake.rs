//! An in-memory [`ComputeApi`] for the backend's unit tests: routes by name, operations that are
//! done at once (or end in a scripted error), and a log of calls.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use weft_gce::{
    ComputeApi, GceError, Instance, Network, OpStatus, Operation, OperationError, OperationErrorItem, QuotaInfo, Route,
    RouteSpec,
};

pub const NET: &str = "https://www.googleapis.com/compute/v1/projects/p/global/networks/default";

pub fn instance_link(name: &str) -> String {
    format!("https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/{name}")
}

#[derive(Default)]
pub struct FakeApi {
    pub routes: Mutex<BTreeMap<String, Route>>,
    pub calls: Mutex<Vec<String>>,
    /// Inserts fail in their operation with this code (`QUOTA_EXCEEDED`, ...).
    pub insert_error: Mutex<Option<String>>,
}

impl FakeApi {
    pub fn put(&self, name: &str, dest: &str, hop: &str) {
        let route = Route {
            name: name.into(),
            dest_range: dest.into(),
            network: NET.into(),
            next_hop_instance: Some(instance_link(hop)),
            priority: Some(1000),
            tags: vec![],
            self_link: String::new(),
        };
        self.routes.lock().unwrap().insert(name.into(), route);
    }

    /// Calls since the last take, e.g. `routes.get weft-10-244-1-0-24`.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn done(name: &str, error: Option<OperationError>) -> Operation {
        Operation { name: name.into(), status: OpStatus::Done(error) }
    }
}

#[async_trait]
impl ComputeApi for FakeApi {
    async fn insert_route(&self, spec: &RouteSpec) -> Result<Operation, GceError> {
        self.log(format!("routes.insert {}", spec.name));
        if let Some(code) = self.insert_error.lock().unwrap().clone() {
            let quota = Some(QuotaInfo {
                limit_name: "ROUTES-per-project".into(),
                metric_name: String::new(),
                limit: Some(2.0),
            });
            let item = OperationErrorItem { code, message: "refused".into(), quota };
            return Ok(Self::done("op-insert", Some(OperationError { items: vec![item] })));
        }
        let mut routes = self.routes.lock().unwrap();
        if routes.contains_key(&spec.name) {
            return Err(GceError::AlreadyExists { what: spec.name.clone() });
        }
        let route = Route {
            name: spec.name.clone(),
            dest_range: spec.dest_range.to_string(),
            network: NET.into(),
            next_hop_instance: Some(spec.next_hop_instance.clone()),
            priority: Some(spec.priority),
            tags: spec.tags.clone(),
            self_link: String::new(),
        };
        routes.insert(spec.name.clone(), route);
        Ok(Self::done("op-insert", None))
    }

    async fn get_route(&self, name: &str) -> Result<Route, GceError> {
        self.log(format!("routes.get {name}"));
        self.routes.lock().unwrap().get(name).cloned().ok_or_else(|| GceError::NotFound { what: name.into() })
    }

    async fn list_routes(&self, network: &str) -> Result<Vec<Route>, GceError> {
        self.log("routes.list".into());
        Ok(self.routes.lock().unwrap().values().filter(|r| r.network == network).cloned().collect())
    }

    async fn delete_route(&self, name: &str) -> Result<Operation, GceError> {
        self.log(format!("routes.delete {name}"));
        match self.routes.lock().unwrap().remove(name) {
            Some(_) => Ok(Self::done("op-delete", None)),
            None => Err(GceError::NotFound { what: name.into() }),
        }
    }

    async fn get_operation(&self, name: &str) -> Result<Operation, GceError> {
        self.log(format!("globalOperations.get {name}"));
        Ok(Self::done(name, None))
    }

    async fn get_instance(&self, _zone: &str, name: &str) -> Result<Instance, GceError> {
        self.log(format!("instances.get {name}"));
        Ok(Instance {
            name: name.into(),
            self_link: instance_link(name),
            networks: vec![NET.into()],
            can_ip_forward: Some(true),
        })
    }

    async fn get_network(&self, name: &str) -> Result<Network, GceError> {
        self.log(format!("networks.get {name}"));
        Ok(Network { name: name.into(), self_link: NET.into(), mtu: Some(1460) })
    }

    async fn route_quota(&self) -> Result<Option<weft_gce::RouteQuota>, GceError> {
        self.log("projects.get".into());
        Ok(Some(weft_gce::RouteQuota { limit: 250.0, usage: self.routes.lock().unwrap().len() as f64 }))
    }
}
