//! What the cloud backends (aws-vpc, gce) share, written once: the engine that runs a provider's
//! passes on a task of its own (pacing, retries, leadership, readiness), the two-pass staleness
//! rule, which peers the cloud carries, the overflow to vxlan for the peers it does not, and the
//! leader's view of the cloud shared with the others.
//!
//! A provider ([`engine::Provider`]) knows its API: what is in its route tables, how to put our
//! route, what of the others is provably stale. Everything about *when* lives here.

pub mod active;
pub mod engine;
pub mod forwarding;
pub mod hybrid;
pub mod paths;
pub mod room;
pub mod stale;
pub mod view;

pub use active::CloudActive;
pub use engine::{Pass, PassInput, Problem, Provider, Settings};
pub use paths::CloudPaths;
pub use room::Refusal;
pub use stale::StaleTracker;

/// Whether two subnets are of one family: clouds count and order routes per family (EC2's
/// route quota is per family, and the lowest subnet of a family goes first).
pub fn same_family(a: &ipnet::IpNet, b: &ipnet::IpNet) -> bool {
    a.addr().is_ipv4() == b.addr().is_ipv4()
}
