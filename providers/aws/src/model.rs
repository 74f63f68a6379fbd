//! EC2 objects as weft sees them: only the fields it decides on, already parsed.

use std::net::Ipv4Addr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub id: String,
    pub subnet_id: String,
    pub private_ips: Vec<Ipv4Addr>,
    /// `None` when EC2 did not say.
    pub source_dest_check: Option<bool>,
    /// 0 for the primary interface.
    pub device_index: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: String,
    /// IPv4 CIDR routes; routes to IPv6 CIDRs or prefix lists are counted in `route_count` only
    /// (weft never touches them).
    pub routes: Vec<Route>,
    /// Every route of the table, for the route-limit message.
    pub route_count: usize,
    /// Subnets explicitly associated with this table.
    pub subnets: Vec<String>,
    /// The VPC's main table: subnets without an association use it.
    pub main: bool,
    pub tags: Vec<(String, String)>,
}

impl RouteTable {
    pub fn has_tag(&self, key: &str, value: &str) -> bool {
        self.tags.iter().any(|(k, v)| k == key && v == value)
    }

    pub fn route(&self, destination: IpNet) -> Option<&Route> {
        self.routes.iter().find(|r| r.destination == destination)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `DestinationCidrBlock` or `DestinationIpv6CidrBlock`, whichever the route has.
    pub destination: IpNet,
    pub target: Target,
    /// The target is gone (an ENI deleted, an instance terminated): traffic is dropped.
    pub blackhole: bool,
    pub origin: Origin,
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Interface(String),
    /// An instance without an interface id (EC2 reports both when the ENI still exists).
    Instance(String),
    /// An internet, NAT, transit, peering... gateway: never weft's.
    Gateway(String),
    /// No target left (a blackhole whose target EC2 no longer names).
    None,
}

/// Who made a route. Only `CreateRoute` routes can be changed with the route API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// `CreateRoute` (by weft or by someone else).
    Api,
    /// The VPC's local route.
    Local,
    /// Propagated from a virtual private gateway.
    Propagated,
    Unknown,
}
