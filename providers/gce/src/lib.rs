//! GCE for weft's gce backend: routes, global operations, instances and networks through
//! google-cloud-compute-v1, and the instance's facts from the metadata server. No kernel code.
//!
//! weft programs against [`ComputeApi`]; [`SdkCompute`] is the real client, [`Metered`] counts
//! its calls, and [`wait_for_operation`] turns an insert or delete into a finished change.

mod api;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod metadata;
mod metered;
mod sdk;
mod types;
mod wait;

pub use api::{CallRecorder, ComputeApi, NoRecorder};
pub use error::{GceError, OperationError, OperationErrorItem, QuotaInfo};
pub use metadata::{InstanceMetadata, MetadataClient};
pub use metered::Metered;
pub use sdk::{ClientOptions, CredentialSource, SdkCompute};
pub use types::{resource_path, same_resource, Instance, Network, OpStatus, Operation, Route, RouteQuota, RouteSpec};
pub use wait::{wait_for_operation, WaitPolicy};
