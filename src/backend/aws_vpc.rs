//! aws-vpc: no overlay; the VPC routes each node's subnet to the node's network interface, in
//! every route table that matters (one per availability zone in a multi-AZ cluster).
//!
//! `prepare` asks the metadata service and EC2 who we are and turns the source/dest check off;
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

use crate::backend::config::AwsVpcConfig;
use crate::backend::{Backend, BackendContext, BackendError, LeaseData, PeerMapping};
use crate::health::{CloudCallLabels, Health};
use crate::lease::{BackendData, Lease, LeaseMap};

mod node;
mod plan;
mod worker;

use node::Node;
use plan::TableMode;
use worker::{Outcome, Request, Worker};

pub const TYPE_NAME: &str = "aws-vpc";

/// Teardown gives up on EC2 after this long: the agent has other work.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(60);
/// A leadership turn lasts this many rechecks, so a live leader renews it in time.
const LEAD_TURN_RECHECKS: u32 = 3;

/// Where the backend is in its life; each step owns what the next needs.
enum State {
    New,
    Prepared(Arc<dyn Ec2>, Node),
    Running(Running),
    Stopped,
}

struct Running {
    ec2: Arc<dyn Ec2>,
    node: Node,
    requests: watch::Sender<Option<Request>>,
    outcomes: watch::Receiver<Outcome>,
    task: JoinHandle<()>,
    /// When the last pass was asked for.
    last_request: Option<Instant>,
    own: Ipv4Net,
}

pub struct AwsVpc {
    config: AwsVpcConfig,
    mode: TableMode,
    ctx: BackendContext,
    state: State,
}

impl AwsVpc {
    pub fn new(ctx: &BackendContext, config: AwsVpcConfig) -> Result<AwsVpc, BackendError> {
        let mode =
            TableMode::from_config(&config.route_table_ids, &config.route_table_tag).map_err(BackendError::Setup)?;
        if config.recheck.is_zero() {
            return Err(BackendError::Setup("aws-vpc recheck must be longer than zero".into()));
        }
        Ok(AwsVpc { config, mode, ctx: ctx.clone(), state: State::New })
    }

    /// A backend over any [`Ec2`] (tests use a fake), already knowing its node.
    #[cfg(test)]
    fn with_ec2(ctx: &BackendContext, config: AwsVpcConfig, ec2: Arc<dyn Ec2>, node: Node) -> AwsVpc {
        let mut backend = AwsVpc::new(ctx, config).expect("valid config");
        backend.state = State::Prepared(ec2, node);
        backend
    }

    fn lease_data(&self) -> LeaseData {
        // The VPC routes pod traffic as is: the interface's MTU is the pods' MTU.
        LeaseData { backend_type: TYPE_NAME, backend_data: BackendData::null(), mtu: self.ctx.ext.mtu }
    }

    fn spawn_worker(&self, ec2: Arc<dyn Ec2>, node: Node, own: Ipv4Net) -> Running {
        let (requests, request_rx) = watch::channel(None);
        let (outcome_tx, outcomes) = watch::channel(Ok(()));
        let worker = Worker {
            ec2: ec2.clone(),
            node: node.clone(),
            mode: self.mode.clone(),
            network: self.ctx.network.network,
            subnet_len: self.ctx.network.subnet_len,
            store: self.ctx.store.clone(),
            health: self.ctx.health.clone(),
            lead_ttl: self.config.recheck * LEAD_TURN_RECHECKS,
            last_own: None,
            suspects: BTreeSet::new(),
        };
        let task = tokio::spawn(worker.run(request_rx, outcome_tx));
        Running { ec2, node, requests, outcomes, task, last_request: None, own }
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
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    async fn prepare(&mut self) -> Result<LeaseData, BackendError> {
        if let State::Prepared(..) = self.state {
            return Ok(self.lease_data());
        }
        let meta = weft_aws::imds::instance_metadata().await.map_err(|e| {
            BackendError::Setup(format!(
                "aws-vpc needs the EC2 instance metadata service (is this an EC2 instance?): {e}"
            ))
        })?;
        let region = if self.config.region.is_empty() { meta.region.clone() } else { self.config.region.clone() };
        let options = SdkOptions { region, endpoint_url: self.config.endpoint_url.clone() };
        let ec2: Arc<dyn Ec2> = Arc::new(SdkEc2::new(&options, call_observer(self.ctx.health.clone())).await);
        let ext = &self.ctx.ext;
        let node = node::discover(ec2.as_ref(), &meta, &[ext.public_ip, ext.addr.addr()]).await?;
        info!(instance = %node.instance_id, vpc = %node.vpc_id, subnet = %node.subnet_id, interface = %node.interface_id, region = %options.region, "aws-vpc node");
        self.state = State::Prepared(ec2, node);
        Ok(self.lease_data())
    }

    async fn start(&mut self, own: &Lease) -> Result<Option<PeerMapping>, BackendError> {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Prepared(ec2, node) => {
                self.state = State::Running(self.spawn_worker(ec2, node, own.subnet));
                Ok(None)
            }
            State::Running(mut running) => {
                running.own = own.subnet;
                self.state = State::Running(running);
                Ok(None)
            }
            other => {
                self.state = other;
                Err(BackendError::Setup("aws-vpc started before it was prepared".into()))
            }
        }
    }

    async fn check(&mut self, own: &Lease, peers: &LeaseMap, forced: bool) -> Result<(), BackendError> {
        let State::Running(running) = &mut self.state else {
            return Ok(());
        };
        let due = forced
            || own.subnet != running.own
            || running.last_request.is_none_or(|at| at.elapsed() >= self.config.recheck);
        if due {
            let leased: BTreeSet<Ipv4Net> = peers.keys().copied().chain([own.subnet]).collect();
            running.requests.send_replace(Some(Request { own: own.subnet, leased }));
            running.last_request = Some(Instant::now());
            running.own = own.subnet;
        }
        // The last finished pass; the one just asked for reports through /readyz when done.
        running.outcomes.borrow().clone().map_err(BackendError::Setup)
    }

    async fn teardown(&mut self) -> Result<(), BackendError> {
        let State::Running(running) = std::mem::replace(&mut self.state, State::Stopped) else {
            return Ok(());
        };
        running.task.abort();
        let removal = remove_own_routes(&self.mode, running.ec2.as_ref(), &running.node, running.own);
        match tokio::time::timeout(TEARDOWN_DEADLINE, removal).await {
            Ok(result) => result,
            Err(_) => {
                Err(BackendError::Setup(format!("aws-vpc teardown: EC2 did not answer within {TEARDOWN_DEADLINE:?}")))
            }
        }
    }
}

impl Drop for AwsVpc {
    fn drop(&mut self) {
        if let State::Running(running) = &self.state {
            running.task.abort();
        }
    }
}

/// Deletes our subnet's route (only where it still points at us) from every table we write.
async fn remove_own_routes(mode: &TableMode, ec2: &dyn Ec2, node: &Node, own: Ipv4Net) -> Result<(), BackendError> {
    let found = ec2
        .route_tables(&mode.filter(&node.vpc_id))
        .await
        .map_err(|e| BackendError::Setup(format!("aws-vpc teardown: {e}")))?;
    let tables = mode.choose(&node.subnet_id, found).map_err(BackendError::Setup)?;
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
