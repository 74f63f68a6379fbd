//! The aws-vpc backend's own task: one pass over the route tables per request, so the agent loop
//! never waits on EC2. Requests come through a `watch` channel (a newer one replaces a pending
//! one: no queue builds up behind a slow API); each pass's outcome goes back the same way.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use weft_aws::{Ec2, Ec2Error, RouteTable};

use super::node::Node;
use super::plan::{self, OwnRoute, PlanInput, Removal, TableMode};
use crate::health::{CloudTableLabels, Condition, Health};
use crate::store::Leadership;

/// The store's leadership for removing other nodes' stale routes.
pub const LEADERSHIP: &str = "aws-vpc-routes";

/// What a pass works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub own: Ipv4Net,
    /// Every leased subnet, ours included.
    pub leased: BTreeSet<Ipv4Net>,
}

/// The last pass: `Err` carries what `/readyz` shows.
pub type Outcome = Result<(), String>;

pub struct Worker {
    pub ec2: Arc<dyn Ec2>,
    pub node: Node,
    pub mode: TableMode,
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub store: Arc<dyn Leadership>,
    pub health: Arc<Health>,
    /// How long a leadership turn lasts without renewal: a few rechecks.
    pub lead_ttl: Duration,
    /// Our subnet at the last pass (its route goes when the lease moved).
    pub last_own: Option<Ipv4Net>,
    /// Routes the last pass found without a lease. One is removed only when the next pass still
    /// finds it so: a node that just leased its subnet may have made its route before its lease
    /// reached this agent's watch.
    pub suspects: BTreeSet<(String, Ipv4Net)>,
}

impl Worker {
    pub async fn run(mut self, mut requests: watch::Receiver<Option<Request>>, outcomes: watch::Sender<Outcome>) {
        while requests.changed().await.is_ok() {
            let Some(request) = requests.borrow_and_update().clone() else {
                continue;
            };
            let outcome = self.pass(&request).await;
            match &outcome {
                Ok(()) => debug!("aws-vpc routes checked"),
                Err(problem) => warn!(%problem, "aws-vpc routes"),
            }
            // This worker alone writes the cloud condition of /readyz.
            self.health.set(Condition::Cloud, outcome.clone().err());
            let _previous = outcomes.send_replace(outcome);
        }
    }

    async fn pass(&mut self, request: &Request) -> Outcome {
        let lead = self.lead().await;
        let filter = self.mode.filter(&self.node.vpc_id);
        let found = self.ec2.route_tables(&filter).await.map_err(|e| format!("listing route tables: {e}"))?;
        let tables = self.mode.choose(&self.node.subnet_id, found)?;
        let retired = self.last_own.filter(|previous| *previous != request.own);
        let input = PlanInput {
            network: self.network,
            subnet_len: self.subnet_len,
            own: request.own,
            interface_id: &self.node.interface_id,
            leased: &request.leased,
            retired,
            lead,
        };
        let mut problems = Vec::new();
        let mut suspects = BTreeSet::new();
        for table in &tables {
            if let Err(problem) = self.sync_table(table, &input, &mut suspects).await {
                problems.push(problem);
            }
        }
        self.last_own = Some(request.own);
        self.suspects = suspects;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Takes or keeps the cleanup leadership; a store error means "not now".
    async fn lead(&self) -> bool {
        match self.store.lead(LEADERSHIP, &self.node.instance_id, self.lead_ttl).await {
            Ok(lead) => lead,
            Err(e) => {
                warn!(error = %e, "aws-vpc cleanup leadership: store unavailable; not cleaning up this time");
                false
            }
        }
    }

    /// Puts our route in one table and removes what the plan says; every table is tried even
    /// when another failed (a full table must not keep the route out of the others).
    async fn sync_table(
        &self,
        table: &RouteTable,
        input: &PlanInput<'_>,
        suspects: &mut BTreeSet<(String, Ipv4Net)>,
    ) -> Result<(), String> {
        let plan = plan::plan_table(table, input);
        for (destination, why) in &plan.remove {
            let key = (table.id.clone(), *destination);
            if *why == Removal::NoLease && !self.suspects.contains(&key) {
                debug!(table = %table.id, %destination, "route without a lease; removed if still so next time");
                suspects.insert(key);
                continue;
            }
            self.remove(table, *destination, *why).await;
        }
        let placed = match &plan.own {
            OwnRoute::Keep => Ok(()),
            OwnRoute::Create => self.create(table, input.own).await,
            OwnRoute::Replace => self.replace(table, input.own).await,
            OwnRoute::Blocked(why) => {
                Err(Ec2Error::Other { operation: "CreateRoute", code: "Blocked".into(), message: why.clone() })
            }
        };
        let labels = CloudTableLabels { provider: "aws".into(), table: table.id.clone() };
        let full = matches!(placed, Err(Ec2Error::RouteLimitExceeded { .. }));
        self.health.metrics.cloud_route_limit.get_or_create(&labels).set(full as i64);
        self.health.metrics.cloud_routes_owned.get_or_create(&labels).set(placed.is_ok() as i64);
        match placed {
            Ok(()) => Ok(()),
            Err(Ec2Error::RouteLimitExceeded { .. }) => Err(plan::route_limit_message(table)),
            Err(e) => Err(format!("route {} in {}: {e}", input.own, table.id)),
        }
    }

    async fn create(&self, table: &RouteTable, own: Ipv4Net) -> Result<(), Ec2Error> {
        let eni = &self.node.interface_id;
        match self.ec2.create_route(&table.id, own, eni).await {
            // Someone put a route there since we looked: make it ours.
            Err(Ec2Error::AlreadyExists { .. }) => self.ec2.replace_route(&table.id, own, eni).await,
            other => other,
        }?;
        info!(table = %table.id, subnet = %own, interface = %eni, "route created");
        Ok(())
    }

    async fn replace(&self, table: &RouteTable, own: Ipv4Net) -> Result<(), Ec2Error> {
        let eni = &self.node.interface_id;
        match self.ec2.replace_route(&table.id, own, eni).await {
            // Removed since we looked.
            Err(Ec2Error::NotFound { .. }) => self.ec2.create_route(&table.id, own, eni).await,
            other => other,
        }?;
        info!(table = %table.id, subnet = %own, interface = %eni, "conflicting route replaced");
        Ok(())
    }

    /// Removal failures are logged, not reported: our own route is what readiness is about.
    async fn remove(&self, table: &RouteTable, destination: Ipv4Net, why: Removal) {
        match self.ec2.delete_route(&table.id, destination).await {
            Ok(()) | Err(Ec2Error::NotFound { .. }) => {
                info!(table = %table.id, %destination, reason = ?why, "route removed")
            }
            Err(e) => warn!(table = %table.id, %destination, reason = ?why, error = %e, "removing a route"),
        }
    }
}
