//! aws-vpc's side of the cloud engine ([`crate::backend::cloud`]): one pass reads the route
//! tables (one DescribeRouteTables), puts our route in each where it fits, and, when this agent
//! leads, removes what is provably stale and shares what it read ([`super::view`]). An agent
//! that does not lead decides from that shared view while it calls for no change, and asks EC2
//! only when something is to be written. When passes run is the engine's business.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use tracing::{debug, info, warn};
use weft_aws::{Ec2, Ec2Error, RouteTable};

use super::node::Node;
use super::plan::{self, OwnRoute, PlanInput, Removal, TableMode};
use super::view;
use crate::backend::cloud::{Pass, PassInput, Problem, Provider, Refusal, StaleTracker};
use crate::backend::BackendKind;
use crate::health::{CloudPassLabels, CloudTableLabels, Health};
use crate::lease::LeaseKey;
use crate::network::Network;

/// The store's leadership for removing other nodes' stale routes (the engine's name for it).
#[cfg(test)]
pub const LEADERSHIP: &str = "aws-vpc-routes";

pub struct AwsRoutes {
    pub ec2: Arc<dyn Ec2>,
    pub node: Node,
    pub mode: TableMode,
    /// The cluster network of each family, with its lease size.
    pub network: Network,
    /// At most this many routes of the cluster network per table and family (`route_limit`).
    pub route_limit: Option<usize>,
    pub health: Arc<Health>,
    /// Routes found without a lease, removed when the next pass still finds them so.
    pub stale: StaleTracker<(String, IpNet)>,
    /// Tables that refused our route (to the subnet named) for lack of room.
    pub refusals: BTreeMap<(String, IpNet), Refusal>,
}

impl AwsRoutes {
    pub fn new(
        ec2: Arc<dyn Ec2>,
        node: Node,
        mode: TableMode,
        network: &Network,
        route_limit: Option<usize>,
        recheck: std::time::Duration,
        health: Arc<Health>,
    ) -> Self {
        AwsRoutes {
            ec2,
            node,
            mode,
            network: network.clone(),
            route_limit,
            health,
            stale: StaleTracker::with_grace(crate::backend::cloud::stale::grace(recheck)),
            refusals: BTreeMap::new(),
        }
    }

    fn labels(table: &RouteTable) -> CloudTableLabels {
        CloudTableLabels { provider: "aws".into(), table: table.id.clone() }
    }

    /// Puts our routes in one table and removes what the plan says; every table is tried even
    /// when another failed (a full table must not keep the route out of the others), and each of
    /// our routes even when the other family's failed.
    async fn sync_table(
        &mut self,
        table: &RouteTable,
        input: &PlanInput<'_>,
        suspects: &mut Vec<(String, IpNet)>,
        problems: &mut Vec<Problem>,
    ) {
        let plan = plan::plan_table(table, input);
        for (destination, why) in &plan.remove {
            if *why == Removal::NoLease {
                let key = (table.id.clone(), *destination);
                let confirmed = self.stale.is_due(&key);
                suspects.push(key);
                if !confirmed {
                    debug!(table = %table.id, %destination, "route without a lease; removed if still so after the grace");
                    continue;
                }
            }
            self.remove(table, *destination, *why).await;
        }
        let labels = Self::labels(table);
        let cluster_routes = plan::cluster_routes(table, &self.network);
        self.health.metrics.cloud_routes.get_or_create(&labels).set(cluster_routes as i64);
        let (mut full, mut owned) = (false, true);
        for (own, action) in &plan.own {
            let placed = self.place(table, *own, action, input).await;
            full |= matches!(placed, Err(Problem::NoRoom(_)));
            owned &= placed.is_ok();
            problems.extend(placed.err());
        }
        let metrics = &self.health.metrics;
        metrics.cloud_route_limit.get_or_create(&labels).set(full as i64);
        metrics.cloud_routes_owned.get_or_create(&labels).set(owned as i64);
        // After this pass's refusals, if any: what the table told us is its capacity.
        let learned = self.refusals.iter().filter(|((id, _), _)| *id == table.id).map(|(_, r)| r.capacity()).min();
        if let Some(capacity) = [self.route_limit, learned].into_iter().flatten().min() {
            metrics.cloud_route_capacity.get_or_create(&labels).set(capacity as i64);
        }
    }

    /// Carries out the plan for our route to `own` in `table`. Room is judged per family, as EC2
    /// counts its quota: the table as listed for this pass holds for everything here.
    async fn place(
        &mut self,
        table: &RouteTable,
        own: IpNet,
        action: &OwnRoute,
        input: &PlanInput<'_>,
    ) -> Result<(), Problem> {
        let family_routes = plan::family_routes(table, &self.network, own);
        let under_limit = plan::under_limit(table, &self.network, own, self.route_limit);
        let prober = self.prober(table, input, own);
        let withdraw = *action == OwnRoute::Keep && self.withdraws(table, own);
        let refusal = (table.id.clone(), own);
        let mut room = || {
            under_limit
                && self.refusals.get_mut(&refusal).is_none_or(|r| r.allows_as(table.route_count, family_routes, prober))
        };
        let mut tried = true;
        let placed = match action {
            OwnRoute::Keep if withdraw => {
                tried = false;
                self.remove(table, own, Removal::OverLimit).await;
                Err(Ec2Error::RouteLimitExceeded { table: table.id.clone() })
            }
            OwnRoute::Keep => Ok(()),
            OwnRoute::Create if !room() => {
                tried = false;
                Err(Ec2Error::RouteLimitExceeded { table: table.id.clone() })
            }
            OwnRoute::Create => self.create(table, own).await,
            OwnRoute::Replace => self.replace(table, own).await,
            OwnRoute::Blocked(why) => {
                Err(Ec2Error::Other { operation: "CreateRoute", code: "Blocked".into(), message: why.clone() })
            }
        };
        match placed {
            Ok(()) => {
                self.refusals.remove(&refusal);
                Ok(())
            }
            Err(Ec2Error::RouteLimitExceeded { .. }) => {
                if tried {
                    // EC2's own refusal: it tells the table's capacity.
                    self.refusals.insert(refusal, Refusal::new(table.route_count, family_routes));
                }
                let ours = self.route_limit.filter(|limit| family_routes >= *limit);
                Err(Problem::NoRoom(plan::route_limit_message(table, ours)))
            }
            Err(e) => Err(Problem::Failed(format!("route {own} in {}: {e}", table.id))),
        }
    }

    /// Whether we ask `table` again once its refusal of our route to `own` is old (one host per
    /// table and family does).
    fn prober(&self, table: &RouteTable, input: &PlanInput<'_>, own: IpNet) -> bool {
        let carried = plan::carried(table, &self.network);
        crate::backend::cloud::room::prober(input.leased, &carried, &self.network, own)
    }

    /// Whether our route to `own` in `table` must go to keep it within `route_limit`.
    fn withdraws(&self, table: &RouteTable, own: IpNet) -> bool {
        self.route_limit.is_some_and(|limit| plan::over_route_limit(table, &self.network, own, limit))
    }

    /// Whether a pass over `tables` would call EC2 to change something ([`Self::sync_table`]'s
    /// decisions, without acting or counting a check of a refusal). A shared view is acted on
    /// only when it calls for nothing: every write is planned from EC2's own answer.
    fn would_write(&self, tables: &[RouteTable], input: &PassInput<'_>) -> bool {
        let Some(own) = input.own else { return false };
        let own: Vec<IpNet> = own.subnets().collect();
        let no_lease = BTreeSet::new();
        let plan_input = plan_input(&self.network, &own, &self.node.interface_id, input, &no_lease);
        tables.iter().any(|table| {
            let plan = plan::plan_table(table, &plan_input);
            let room = |own: IpNet| {
                let prober = self.prober(table, &plan_input, own);
                plan::under_limit(table, &self.network, own, self.route_limit)
                    && self
                        .refusals
                        .get(&(table.id.clone(), own))
                        .is_none_or(|r| r.would_allow(table.route_count, prober))
            };
            !plan.remove.is_empty()
                || plan.own.iter().any(|(own, action)| match action {
                    OwnRoute::Keep => self.withdraws(table, *own),
                    OwnRoute::Create => room(*own),
                    OwnRoute::Replace => true,
                    OwnRoute::Blocked(_) => false,
                })
        })
    }

    /// Our route in each of `tables`, and what the plan removes.
    async fn sync_tables(&mut self, tables: &[RouteTable], input: &PassInput<'_>) -> Pass {
        let carried =
            plan::own_table(tables, &self.node.subnet_id).map(|t| plan::carried(t, &self.network)).unwrap_or_default();
        let Some(own) = input.own else {
            // Our lease ran out: nothing of ours is asserted (the engine says so in /readyz).
            return Pass { carried: Some(carried), ..Pass::default() };
        };
        let own: Vec<IpNet> = own.subnets().collect();
        // What a table told us of a subnet we no longer hold is no guide for the ones we do.
        self.refusals.retain(|(_, subnet), _| own.contains(subnet));
        let no_lease = BTreeSet::new();
        // Borrowed apart from `self`, which the table syncs change.
        let (interface_id, network) = (self.node.interface_id.clone(), self.network.clone());
        let plan_input = plan_input(&network, &own, &interface_id, input, &no_lease);
        let mut problems = Vec::new();
        let mut suspects = Vec::new();
        for table in tables {
            self.sync_table(table, &plan_input, &mut suspects, &mut problems).await;
        }
        // This pass's suspects are the next pass's to confirm (the confirmed went above).
        let _removed = self.stale.confirm(suspects);
        Pass { problems, carried: Some(carried), view: None }
    }

    /// The tables the leader shared, if they answer our filter and call for no change.
    fn quiet_view(&self, input: &PassInput<'_>, filter: &weft_aws::TableFilter) -> Option<Vec<RouteTable>> {
        let found = view::decode(input.shared?, filter, &self.network)?;
        let tables = self.mode.choose(&self.node.subnet_id, found).ok()?;
        if self.would_write(&tables, input) {
            debug!("the shared route tables call for a change: asking EC2 before writing");
            return None;
        }
        Some(tables)
    }

    async fn create(&self, table: &RouteTable, own: IpNet) -> Result<(), Ec2Error> {
        let eni = &self.node.interface_id;
        match self.ec2.create_route(&table.id, own, eni).await {
            // Someone put a route there since we looked: make it ours.
            Err(Ec2Error::AlreadyExists { .. }) => self.ec2.replace_route(&table.id, own, eni).await,
            other => other,
        }?;
        info!(table = %table.id, subnet = %own, interface = %eni, "route created");
        Ok(())
    }

    async fn replace(&self, table: &RouteTable, own: IpNet) -> Result<(), Ec2Error> {
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
    async fn remove(&self, table: &RouteTable, destination: IpNet, why: Removal) {
        match self.ec2.delete_route(&table.id, destination).await {
            Ok(()) | Err(Ec2Error::NotFound { .. }) => {
                info!(table = %table.id, %destination, reason = ?why, "route removed")
            }
            Err(e) => warn!(table = %table.id, %destination, reason = ?why, error = %e, "removing a route"),
        }
    }
}

/// The plan's input for a pass.
fn plan_input<'a>(
    network: &'a Network,
    own: &'a [IpNet],
    interface_id: &'a str,
    input: &'a PassInput<'_>,
    no_lease: &'a BTreeSet<IpNet>,
) -> PlanInput<'a> {
    PlanInput {
        network,
        own,
        interface_id,
        leased: input.leased.unwrap_or(no_lease),
        retired: &input.retired,
        lead: input.lead && input.leased.is_some(),
    }
}

#[async_trait]
impl Provider for AwsRoutes {
    fn kind(&self) -> BackendKind {
        BackendKind::AwsVpc
    }

    fn holder(&self) -> String {
        self.node.instance_id.clone()
    }

    async fn pass(&mut self, input: &PassInput<'_>) -> Pass {
        let filter = self.mode.filter(&self.node.vpc_id);
        let quiet = self.quiet_view(input, &filter);
        self.health.metrics.cloud_passes.get_or_create(&CloudPassLabels::new("aws", quiet.is_some())).inc();
        if let Some(tables) = quiet {
            return self.sync_tables(&tables, input).await;
        }
        let found = match self.ec2.route_tables(&filter).await {
            Ok(found) => found,
            Err(e) => return Pass::failed(format!("listing route tables: {e}")),
        };
        let view = if input.lead { view::encode(&filter, &found, &self.network) } else { None };
        let tables = match self.mode.choose(&self.node.subnet_id, found) {
            Ok(tables) => tables,
            Err(e) => return Pass::failed(e),
        };
        Pass { view, ..self.sync_tables(&tables, input).await }
    }

    fn lost_leadership(&mut self) {
        self.stale.clear();
    }

    async fn teardown(&mut self, own: LeaseKey) -> Result<(), String> {
        let found = self.ec2.route_tables(&self.mode.filter(&self.node.vpc_id)).await.map_err(|e| e.to_string())?;
        let tables = self.mode.choose(&self.node.subnet_id, found)?;
        let mut failures = Vec::new();
        for table in &tables {
            for own in own.subnets().filter(|own| plan::routes_to_us(table, *own, &self.node.interface_id)) {
                match self.ec2.delete_route(&table.id, own).await {
                    Ok(()) => info!(table = %table.id, subnet = %own, "route removed (backend torn down)"),
                    Err(e) => {
                        warn!(table = %table.id, subnet = %own, error = %e, "removing our route");
                        failures.push(format!("{} {own}: {e}", table.id));
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}
