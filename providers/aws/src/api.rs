//! The seam between the aws-vpc backend and EC2.

use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::Ec2Error;
use crate::model::{Instance, Interface, RouteTable};

/// One finished EC2 call, as metrics count it: the API's operation name and how it ended
/// (`ok`, or [`Ec2Error::outcome`]). Retries the SDK made inside a call are not separate calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub operation: &'static str,
    pub outcome: &'static str,
}

/// Told of every EC2 call an [`Ec2`] makes.
pub type CallObserver = Arc<dyn Fn(Call) + Send + Sync>;

/// Which route tables to describe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableFilter {
    /// These tables, wherever they are.
    Ids(Vec<String>),
    /// Tables of `vpc` tagged `key=value`.
    Tagged { vpc: String, key: String, value: String },
    /// The table explicitly associated with `subnet` (none when the subnet uses the main table).
    AssociatedWith { subnet: String },
    /// The main table of `vpc`.
    Main { vpc: String },
    /// Every table of `vpc`: one call, from which association and main-table fallback are chosen.
    Vpc { vpc: String },
}

/// The EC2 calls weft makes. Every method is one API operation (plus pagination).
#[async_trait]
pub trait Ec2: Send + Sync {
    /// The instance, with its network interfaces.
    async fn instance(&self, instance_id: &str) -> Result<Instance, Ec2Error>;
    /// The network interface holding `ip` as one of its private addresses, if any.
    async fn interface_by_ip(&self, ip: Ipv4Addr) -> Result<Option<Interface>, Ec2Error>;
    /// Turns the interface's source/destination check on or off (off: it may forward for pods).
    async fn set_source_dest_check(&self, interface_id: &str, enabled: bool) -> Result<(), Ec2Error>;
    async fn route_tables(&self, filter: &TableFilter) -> Result<Vec<RouteTable>, Ec2Error>;
    async fn create_route(&self, table: &str, destination: IpNet, interface_id: &str) -> Result<(), Ec2Error>;
    async fn replace_route(&self, table: &str, destination: IpNet, interface_id: &str) -> Result<(), Ec2Error>;
    async fn delete_route(&self, table: &str, destination: IpNet) -> Result<(), Ec2Error>;
}
