//! aws-vpc: no overlay; the VPC routes each node's subnet to the node's network interface, in
//! every route table that matters (one per availability zone in a multi-AZ cluster).
//!
//! `register` asks the metadata service and EC2 who we are and turns the source/dest check off;
//! after that all EC2 work runs on the backend's own task ([`worker`]), which `check` drives, so
//! the agent loop never waits on EC2. Cleanup of other nodes' stale routes is done by one agent
//! at a time, elected through the store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};
use weft_aws::{Call, CallObserver, Ec2, SdkEc2, SdkOptions};

use crate::backend::{
    Active, Backend, BackendContext, BackendError, BackendKind, CloudError, LeaseData, Registered, StartFailed, Started,
};
use crate::health::{CloudCallLabels, Condition, Health};
use crate::lease::{Lease, LeaseMap};
use crate::network::backend::AwsVpcConfig;

mod node;
mod plan;
mod worker;

use node::Node;
use plan::TableMode;
use worker::{Outcome, Request, Worker};

/// Teardown gives up on EC2 after this long: the agent has other work.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(60);
/// A leadership turn lasts this many rechecks, so a live leader renews it in time.
const LEAD_TURN_RECHECKS: u32 = 3;

/// aws-vpc as configured.
pub struct AwsVpc {
    config: AwsVpcConfig,
    mode: TableMode,
    ctx: BackendContext,
}

/// The worker task and how to talk to it.
struct Running {
    requests: watch::Sender<Option<Request>>,
    /// Each pass's outcome, as it also went to /readyz: the unit tests wait on it.
    #[cfg_attr(not(test), allow(dead_code))]
    outcomes: watch::Receiver<Outcome>,
    task: JoinHandle<()>,
    /// When the last pass was asked for.
    last_request: Option<Instant>,
    own: Ipv4Net,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn cloud_error(
    context: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BackendError {
    CloudError::new("aws-vpc", context, source).into()
}

impl AwsVpc {
    pub fn new(ctx: &BackendContext, config: AwsVpcConfig) -> Result<AwsVpc, BackendError> {
        let config_error = |problem| BackendError::Config { backend: BackendKind::AwsVpc, problem };
        let mode = TableMode::from_config(&config.route_table_ids, &config.route_table_tag).map_err(config_error)?;
        if config.recheck.is_zero() {
            return Err(config_error("recheck must be longer than zero".into()));
        }
        Ok(AwsVpc { config, mode, ctx: ctx.clone() })
    }

    /// A registered backend over any [`Ec2`] (tests use a fake), already knowing its node.
    #[cfg(test)]
    fn with_ec2(ctx: &BackendContext, config: AwsVpcConfig, ec2: Arc<dyn Ec2>, node: Node) -> AwsVpcRegistered {
        AwsVpc::new(ctx, config).expect("valid config").registered(ec2, node)
    }

    fn registered(self, ec2: Arc<dyn Ec2>, node: Node) -> AwsVpcRegistered {
        // The VPC routes pod traffic as is: the interface's MTU is the pods' MTU.
        let data = LeaseData::plain(BackendKind::AwsVpc, self.ctx.ext.mtu);
        AwsVpcRegistered { config: self.config, mode: self.mode, ctx: self.ctx, ec2, node, data }
    }
}

/// Counts every EC2 call in the agent's metrics.
fn call_observer(health: Arc<Health>) -> CallObserver {
    Arc::new(move |call: Call| {
        let labels =
            CloudCallLabels { provider: "aws".into(), operation: call.operation.into(), outcome: call.outcome.into() };
        health.metrics.cloud_calls.get_or_create(&labels).inc();
    })
}

#[async_trait]
impl Backend for AwsVpc {
    /// Asks the metadata service and EC2 who we are; turns the source/dest check off.
    async fn register(self: Box<Self>) -> Result<Box<dyn Registered>, BackendError> {
        let meta = weft_aws::imds::instance_metadata()
            .await
            .map_err(|e| cloud_error("the EC2 instance metadata service (is this an EC2 instance?)", e))?;
        let region = if self.config.region.is_empty() { meta.region.clone() } else { self.config.region.clone() };
        let options = SdkOptions { region, endpoint_url: self.ctx.cloud.aws_endpoint_url.clone() };
        let ec2: Arc<dyn Ec2> = Arc::new(SdkEc2::new(&options, call_observer(self.ctx.health.clone())).await);
        let ext = &self.ctx.ext;
        let node = node::discover(ec2.as_ref(), &meta, &[ext.public_ip, ext.addr.addr()]).await?;
        info!(instance = %node.instance_id, vpc = %node.vpc_id, subnet = %node.subnet_id, interface = %node.interface_id, region = %options.region, "aws-vpc node");
        Ok(Box::new(self.registered(ec2, node)))
    }
}

/// aws-vpc knowing its instance and interface, its worker not started.
struct AwsVpcRegistered {
    config: AwsVpcConfig,
    mode: TableMode,
    ctx: BackendContext,
    ec2: Arc<dyn Ec2>,
    node: Node,
    data: LeaseData,
}

#[async_trait]
impl Registered for AwsVpcRegistered {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    /// Starts the worker; its first pass comes with the first `check`.
    async fn start(self: Box<Self>, own: &Lease) -> Result<Started, StartFailed> {
        Ok(Started { backend: Box::new(self.activate(own)), peers: None })
    }
}

impl AwsVpcRegistered {
    fn activate(self, own: &Lease) -> AwsVpcActive {
        let (requests, request_rx) = watch::channel(None);
        let (outcome_tx, outcomes) = watch::channel(Ok(()));
        let worker = Worker {
            ec2: self.ec2.clone(),
            node: self.node.clone(),
            mode: self.mode.clone(),
            network: self.ctx.network.network,
            subnet_len: self.ctx.network.subnet_len,
            store: self.ctx.store.clone(),
            health: self.ctx.health.clone(),
            lead_ttl: self.config.recheck.saturating_mul(LEAD_TURN_RECHECKS),
            last_own: None,
            suspects: BTreeSet::new(),
        };
        let task = tokio::spawn(worker.run(request_rx, outcome_tx));
        let running = Running { requests, outcomes, task, last_request: None, own: own.subnet };
        let AwsVpcRegistered { config, mode, ctx, ec2, node, data } = self;
        AwsVpcActive { config, mode, health: ctx.health, ec2, node, data, running }
    }
}

struct AwsVpcActive {
    config: AwsVpcConfig,
    mode: TableMode,
    health: Arc<Health>,
    ec2: Arc<dyn Ec2>,
    node: Node,
    data: LeaseData,
    running: Running,
}

#[async_trait]
impl Active for AwsVpcActive {
    fn lease_data(&self) -> &LeaseData {
        &self.data
    }

    async fn check(&mut self, own: &Lease, peers: &LeaseMap, forced: bool) -> Result<(), BackendError> {
        let running = &mut self.running;
        if running.task.is_finished() {
            return Err(BackendError::TaskStopped(BackendKind::AwsVpc));
        }
        let due = forced
            || own.subnet != running.own
            || running.last_request.is_none_or(|at| at.elapsed() >= self.config.recheck);
        if due {
            let leased: BTreeSet<Ipv4Net> = peers.keys().copied().chain([own.subnet]).collect();
            running.requests.send_replace(Some(Request { own: own.subnet, leased }));
            running.last_request = Some(Instant::now());
            running.own = own.subnet;
        }
        // Each pass's outcome goes to the cloud condition of /readyz, from the worker.
        Ok(())
    }

    async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        let AwsVpcActive { mode, health, ec2, node, running, .. } = *self;
        let own = running.own;
        drop(running);
        // Our route is no longer what readiness is about.
        health.ok(Condition::Cloud);
        let removal = remove_own_routes(&mode, ec2.as_ref(), &node, own);
        match tokio::time::timeout(TEARDOWN_DEADLINE, removal).await {
            Ok(result) => result,
            Err(elapsed) => Err(cloud_error(format!("removing our route for {own} (teardown)"), elapsed)),
        }
    }
}

/// Deletes our subnet's route (only where it still points at us) from every table we write.
async fn remove_own_routes(mode: &TableMode, ec2: &dyn Ec2, node: &Node, own: Ipv4Net) -> Result<(), BackendError> {
    let found = ec2.route_tables(&mode.filter(&node.vpc_id)).await.map_err(|e| cloud_error("teardown", e))?;
    let tables = mode.choose(&node.subnet_id, found).map_err(|e| cloud_error("teardown", e))?;
    let mut failures = Vec::new();
    for table in tables.iter().filter(|t| plan::routes_to_us(t, own, &node.interface_id)) {
        match ec2.delete_route(&table.id, own).await {
            Ok(()) => info!(table = %table.id, subnet = %own, "route removed (backend torn down)"),
            Err(e) => {
                warn!(table = %table.id, error = %e, "removing our route");
                failures.push(format!("{}: {e}", table.id));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Peers(failures))
    }
}

#[cfg(test)]
mod tests;
