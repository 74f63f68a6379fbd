//! [`Ec2`] over the official SDK: credentials from aws-config's default chain (environment,
//! profile, instance role through IMDSv2), the SDK's standard retry (backoff with jitter for
//! throttling, 5xx and transient network errors), an optional endpoint override.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter};
use aws_sdk_ec2::Client;
use ipnet::IpNet;

use crate::api::{Call, CallObserver, Ec2, TableFilter};
use crate::convert;
use crate::error::Ec2Error;
use crate::model::{Instance, Interface, RouteTable};

/// Sets a route request's destination field of the destination's family (EC2 has one field
/// per family: `DestinationCidrBlock`, `DestinationIpv6CidrBlock`).
macro_rules! with_destination {
    ($request:expr, $destination:expr) => {
        match $destination {
            IpNet::V4(destination) => $request.destination_cidr_block(destination.to_string()),
            IpNet::V6(destination) => $request.destination_ipv6_cidr_block(destination.to_string()),
        }
    };
}

/// Attempts per call, the first included. The standard mode's default (3) gives up quickly on a
/// throttled account; a few more spread a burst of agents over a longer back-off.
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Default)]
pub struct SdkOptions {
    pub region: String,
    /// Replaces EC2's regional endpoint (a VPC endpoint; moto in tests). Empty: the default.
    pub endpoint_url: String,
}

pub struct SdkEc2 {
    client: Client,
    observer: CallObserver,
}

impl SdkEc2 {
    /// Builds the client. Credentials are looked up on the first call, not here.
    pub async fn new(options: &SdkOptions, observer: CallObserver) -> SdkEc2 {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(options.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if !options.endpoint_url.is_empty() {
            loader = loader.endpoint_url(&options.endpoint_url);
        }
        let config = loader.load().await;
        SdkEc2 { client: Client::new(&config), observer }
    }

    /// Reports the call to the observer and passes the result on.
    fn observe<T>(&self, operation: &'static str, result: Result<T, Ec2Error>) -> Result<T, Ec2Error> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        (self.observer)(Call { operation, outcome });
        result
    }
}

/// An SDK failure as an [`Ec2Error`]: service errors by their code, the rest as unreachable.
fn sdk_error<E, R>(operation: &'static str, table: Option<&str>, err: SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(_) => Ec2Error::classify(operation, table, err.code(), err.message()),
        _ => Ec2Error::Unreachable { operation, detail: DisplayErrorContext(&err).to_string() },
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

#[async_trait]
impl Ec2 for SdkEc2 {
    async fn instance(&self, instance_id: &str) -> Result<Instance, Ec2Error> {
        const OP: &str = "DescribeInstances";
        let result = async {
            let out = self
                .client
                .describe_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map_err(|e| sdk_error(OP, None, e))?;
            let found = out.reservations().iter().flat_map(|r| r.instances()).next();
            let found = found.ok_or_else(|| Ec2Error::NotFound {
                operation: OP,
                code: "InvalidInstanceID.NotFound".into(),
                message: format!("no instance {instance_id}"),
            })?;
            convert::instance(OP, found)
        }
        .await;
        self.observe(OP, result)
    }

    async fn interface_by_ip(&self, ip: Ipv4Addr) -> Result<Option<Interface>, Ec2Error> {
        const OP: &str = "DescribeNetworkInterfaces";
        let result = async {
            let out = self
                .client
                .describe_network_interfaces()
                .filters(filter("addresses.private-ip-address", &ip.to_string()))
                .send()
                .await
                .map_err(|e| sdk_error(OP, None, e))?;
            out.network_interfaces().first().map(|eni| convert::interface(OP, eni)).transpose()
        }
        .await;
        self.observe(OP, result)
    }

    async fn set_source_dest_check(&self, interface_id: &str, enabled: bool) -> Result<(), Ec2Error> {
        const OP: &str = "ModifyNetworkInterfaceAttribute";
        let result = self
            .client
            .modify_network_interface_attribute()
            .network_interface_id(interface_id)
            .source_dest_check(AttributeBooleanValue::builder().value(enabled).build())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error(OP, None, e));
        self.observe(OP, result)
    }

    async fn route_tables(&self, wanted: &TableFilter) -> Result<Vec<RouteTable>, Ec2Error> {
        const OP: &str = "DescribeRouteTables";
        let mut tables = Vec::new();
        let mut next_token: Option<String> = None;
        // Each page is a call of its own (and counted as one).
        loop {
            let mut request = self.client.describe_route_tables().set_next_token(next_token.take());
            request = match wanted {
                TableFilter::Ids(ids) => request.set_route_table_ids(Some(ids.clone())),
                TableFilter::Tagged { vpc, key, value } => {
                    request.filters(filter("vpc-id", vpc)).filters(filter(&format!("tag:{key}"), value))
                }
                TableFilter::AssociatedWith { subnet } => request.filters(filter("association.subnet-id", subnet)),
                TableFilter::Main { vpc } => {
                    request.filters(filter("vpc-id", vpc)).filters(filter("association.main", "true"))
                }
                TableFilter::Vpc { vpc } => request.filters(filter("vpc-id", vpc)),
            };
            let page = async {
                let out = request.send().await.map_err(|e| sdk_error(OP, None, e))?;
                let page =
                    out.route_tables().iter().map(|t| convert::route_table(OP, t)).collect::<Result<Vec<_>, _>>()?;
                Ok((page, out.next_token().filter(|t| !t.is_empty()).map(str::to_string)))
            }
            .await;
            let (page, token) = self.observe(OP, page)?;
            tables.extend(page);
            match token {
                Some(token) => next_token = Some(token),
                None => return Ok(tables),
            }
        }
    }

    async fn create_route(&self, table: &str, destination: IpNet, interface_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "CreateRoute";
        let request = self.client.create_route().route_table_id(table).network_interface_id(interface_id);
        let result =
            with_destination!(request, destination).send().await.map(|_| ()).map_err(|e| sdk_error(OP, Some(table), e));
        self.observe(OP, result)
    }

    async fn replace_route(&self, table: &str, destination: IpNet, interface_id: &str) -> Result<(), Ec2Error> {
        const OP: &str = "ReplaceRoute";
        let request = self.client.replace_route().route_table_id(table).network_interface_id(interface_id);
        let result =
            with_destination!(request, destination).send().await.map(|_| ()).map_err(|e| sdk_error(OP, Some(table), e));
        self.observe(OP, result)
    }

    async fn delete_route(&self, table: &str, destination: IpNet) -> Result<(), Ec2Error> {
        const OP: &str = "DeleteRoute";
        let request = self.client.delete_route().route_table_id(table);
        let result =
            with_destination!(request, destination).send().await.map(|_| ()).map_err(|e| sdk_error(OP, Some(table), e));
        self.observe(OP, result)
    }
}

/// Every EC2 action weft's aws-vpc backend calls (the names of the `const OP`s above).
pub const ACTIONS: [&str; 7] = [
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeRouteTables",
    "ModifyNetworkInterfaceAttribute",
    "CreateRoute",
    "ReplaceRoute",
    "DeleteRoute",
];

/// What a dry run is asked about: real objects, so that resource-level conditions apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunTarget {
    pub instance_id: String,
    pub interface_id: String,
    /// `None`: no route table found; the route actions cannot be asked.
    pub table_id: Option<String>,
    /// Our subnet (of the family that names leases), else the cluster network.
    pub destination: IpNet,
}

/// Whether the caller may make an EC2 call, from its `DryRun=true` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// `DryRunOperation`: the request would have succeeded.
    Allowed,
    /// `UnauthorizedOperation` (or another access error), with EC2's message.
    Denied(String),
    /// Any other answer, or nothing to ask about.
    Unknown(String),
}

/// A dry run's answer as a [`Permission`]. EC2 answers every `DryRun=true` call with an error:
/// `DryRunOperation` when the call is allowed.
fn permission<T, E, R>(result: Result<T, SdkError<E, R>>) -> Permission
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        // An endpoint that ignores DryRun (EC2 never does) carried the call out: allowed.
        Ok(_) => Permission::Allowed,
        Err(err) => match err.code() {
            Some("DryRunOperation") => Permission::Allowed,
            Some(code @ ("UnauthorizedOperation" | "AuthFailure" | "AccessDenied")) => {
                Permission::Denied(format!("{code}: {}", err.message().unwrap_or_default()))
            }
            Some(code) => Permission::Unknown(format!("{code}: {}", err.message().unwrap_or_default())),
            None => Permission::Unknown(DisplayErrorContext(&err).to_string()),
        },
    }
}

impl SdkEc2 {
    /// Asks EC2, with `DryRun=true`, whether `action` (one of [`ACTIONS`]) is allowed on
    /// `target`. Nothing changes; the observer is not told (no call was made for real).
    pub async fn dry_run(&self, action: &str, target: &DryRunTarget) -> Permission {
        let table = || target.table_id.clone().ok_or(());
        let no_table = || Permission::Unknown("no route table to ask about".into());
        let client = &self.client;
        match action {
            "DescribeInstances" => {
                permission(client.describe_instances().instance_ids(&target.instance_id).dry_run(true).send().await)
            }
            "DescribeNetworkInterfaces" => permission(
                client
                    .describe_network_interfaces()
                    .network_interface_ids(&target.interface_id)
                    .dry_run(true)
                    .send()
                    .await,
            ),
            "DescribeRouteTables" => permission(client.describe_route_tables().dry_run(true).send().await),
            "ModifyNetworkInterfaceAttribute" => permission(
                client
                    .modify_network_interface_attribute()
                    .network_interface_id(&target.interface_id)
                    .source_dest_check(AttributeBooleanValue::builder().value(false).build())
                    .dry_run(true)
                    .send()
                    .await,
            ),
            "CreateRoute" => match table() {
                Ok(table) => permission(
                    with_destination!(client.create_route().route_table_id(table), target.destination)
                        .network_interface_id(&target.interface_id)
                        .dry_run(true)
                        .send()
                        .await,
                ),
                Err(()) => no_table(),
            },
            "ReplaceRoute" => match table() {
                Ok(table) => permission(
                    with_destination!(client.replace_route().route_table_id(table), target.destination)
                        .network_interface_id(&target.interface_id)
                        .dry_run(true)
                        .send()
                        .await,
                ),
                Err(()) => no_table(),
            },
            "DeleteRoute" => match table() {
                Ok(table) => permission(
                    with_destination!(client.delete_route().route_table_id(table), target.destination)
                        .dry_run(true)
                        .send()
                        .await,
                ),
                Err(()) => no_table(),
            },
            other => Permission::Unknown(format!("{other} is not an action weft uses")),
        }
    }
}
