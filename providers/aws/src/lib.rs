//! What weft's aws-vpc backend needs from AWS: a few EC2 calls (instances, network interfaces,
//! route tables, routes) behind the [`Ec2`] trait, the SDK implementation of it, and the instance
//! metadata service (IMDSv2). No kernel code lives here: the backend in the weft crate decides
//! what to change and drives this crate; tests swap [`Ec2`] for a fake.

mod api;
mod convert;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod imds;
mod model;
mod sdk;

pub use api::{Call, CallObserver, Ec2, TableFilter};
pub use error::Ec2Error;
pub use imds::{InstanceMetadata, MetadataError, TokenProbe};
pub use model::{Instance, Interface, Origin, Route, RouteTable, Target};
pub use sdk::{DryRunTarget, Permission, SdkEc2, SdkOptions, ACTIONS};
