//! What weft reads and writes, in its own small types: the SDK's models carry every field of
//! the Compute API as an `Option`, and only a handful matter here.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::OperationError;

/// A route to create (`routes.insert` body).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub dest_range: IpNet,
    /// The VPC network's selfLink (or `projects/<p>/global/networks/<n>`).
    pub network: String,
    /// The instance's selfLink (or `projects/<p>/zones/<z>/instances/<i>`).
    pub next_hop_instance: String,
    pub priority: u32,
    /// Instance tags the route applies to; empty: every instance of the network.
    pub tags: Vec<String>,
    pub description: String,
}

/// A route as the API lists it. Fields the API may leave out (routes of other kinds) are
/// `None`/empty rather than errors: weft only acts on routes it can read fully.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    /// As the API wrote it; parsed by the caller because foreign routes may hold anything.
    pub dest_range: String,
    pub network: String,
    pub next_hop_instance: Option<String>,
    pub priority: Option<u32>,
    pub tags: Vec<String>,
    pub self_link: String,
}

/// How far a `compute#operation` got.
#[derive(Debug, Clone, PartialEq)]
pub enum OpStatus {
    Pending,
    Running,
    Done(Option<OperationError>),
}

/// A global operation returned by an insert or delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub name: String,
    pub status: OpStatus,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instance {
    pub name: String,
    pub self_link: String,
    /// selfLinks of the networks of the instance's interfaces, nic0 first.
    pub networks: Vec<String>,
    /// Whether the instance may send and receive packets not addressed to itself (pods').
    pub can_ip_forward: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Network {
    pub name: String,
    pub self_link: String,
    pub mtu: Option<u32>,
}

/// The project's `ROUTES` quota: routes it may hold, and holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteQuota {
    pub limit: f64,
    pub usage: f64,
}

/// The part of a resource link from `projects/` on, so that a full selfLink
/// (`https://www.googleapis.com/compute/v1/projects/p/...`) and a partial one compare equal.
pub fn resource_path(link: &str) -> &str {
    match link.find("projects/") {
        Some(at) if at == 0 || link[..at].ends_with('/') => &link[at..],
        _ => link,
    }
}

/// Whether two resource links name the same resource.
pub fn same_resource(a: &str, b: &str) -> bool {
    resource_path(a) == resource_path(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_compare_by_resource_path() {
        let full = "https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/i";
        assert!(same_resource(full, "projects/p/zones/z/instances/i"));
        assert!(same_resource(full, "http://127.0.0.1:9/compute/v1/projects/p/zones/z/instances/i"));
        assert!(!same_resource(full, "projects/p/zones/z/instances/j"));
        assert_eq!(resource_path("global/networks/n"), "global/networks/n");
        assert_eq!(resource_path("myprojects/x"), "myprojects/x");
    }
}
