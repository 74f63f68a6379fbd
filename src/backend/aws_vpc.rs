//! aws-vpc: no overlay; the VPC routes each node's subnet to the node's network interface, in
//! every route table that matters (one per availability zone in a multi-AZ cluster).
//!
//! `register` asks the metadata service and EC2 who we are and turns the source/dest check off;
//! after that all EC2 work runs on the backend's own task ([`worker`]), which `check` drives, so
//! the agent loop never waits on EC2. Cleanup of other nodes' stale routes is done by one agent
//! at a time, elected through the store.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::info;
use weft_aws::{Call, CallObserver, Ec2, SdkEc2, SdkOptions};

use crate::backend::cloud::{CloudActive, CloudPaths, Settings};
use crate::backend::{
    Backend, BackendContext, BackendError, BackendKind, CloudError, LeaseData, Registered, StartFailed, Started,
};
use crate::health::{CloudCallLabels, Health};
use crate::lease::Lease;
use crate::network::backend::AwsVpcConfig;

// Public for the cloud benchmark (benches/cloud_overflow.rs), which drives the provider itself.
pub mod node;
pub mod plan;
mod view;
pub mod worker;

use node::Node;
use plan::TableMode;
use worker::AwsRoutes;

/// aws-vpc as configured.
pub struct AwsVpc {
    config: AwsVpcConfig,
    mode: TableMode,
    ctx: BackendContext,
    /// Where the engine tells which peers our tables carry (read by the overflow, if on).
    paths: CloudPaths,
}

pub(crate) fn cloud_error(
    context: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BackendError {
    CloudError::new("aws-vpc", context, source).into()
}

impl AwsVpc {
    pub fn new(ctx: &BackendContext, config: AwsVpcConfig, paths: CloudPaths) -> Result<AwsVpc, BackendError> {
        let config_error = |problem| BackendError::Config { backend: BackendKind::AwsVpc, problem };
        let mode = TableMode::from_config(&config.route_table_ids, &config.route_table_tag).map_err(config_error)?;
        if config.recheck.is_zero() {
            return Err(config_error("recheck must be longer than zero".into()));
        }
        Ok(AwsVpc { config, mode, ctx: ctx.clone(), paths })
    }

    /// A registered backend over any [`Ec2`] (tests use a fake), already knowing its node.
    #[cfg(test)]
    fn with_ec2(ctx: &BackendContext, config: AwsVpcConfig, ec2: Arc<dyn Ec2>, node: Node) -> AwsVpcRegistered {
        AwsVpc::new(ctx, config, CloudPaths::default()).expect("valid config").registered(ec2, node)
    }

    fn registered(self, ec2: Arc<dyn Ec2>, node: Node) -> AwsVpcRegistered {
        // The VPC routes pod traffic as is: the interface's MTU is the pods' MTU.
        let data = LeaseData::plain(BackendKind::AwsVpc, self.ctx.ext.mtu);
        AwsVpcRegistered { config: self.config, mode: self.mode, ctx: self.ctx, ec2, node, data, paths: self.paths }
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
        let ours: Vec<_> = ext.public_ip.into_iter().chain(ext.addr.map(|a| a.addr())).collect();
        let node = node::discover(ec2.as_ref(), &meta, &ours).await?;
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
    paths: CloudPaths,
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
    fn activate(self, own: &Lease) -> CloudActive<AwsRoutes> {
        let AwsVpcRegistered { config, mode, ctx, ec2, node, data, paths } = self;
        let route_limit = config.route_limit.map(|l| l as usize);
        let routes = AwsRoutes::new(ec2, node, mode, &ctx.network, route_limit, config.recheck, ctx.health.clone());
        let settings = Settings {
            recheck: config.recheck,
            overflow: config.overflow.is_some(),
            store: ctx.store,
            health: ctx.health,
            paths,
        };
        CloudActive::start(routes, settings, data, own)
    }
}

#[cfg(test)]
mod tests;
