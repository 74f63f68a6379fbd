//! A fuzz entry point for weft's reading of the Compute API's answers: JSON as `routes.list`
//! and `globalOperations.get` return it, through the SDK's models and weft's conversions. The
//! weft crate's fuzz target feeds the routes to the backend's plan. Not part of the API weft uses.

use google_cloud_compute_v1::model;

use crate::sdk::{operation, route};
use crate::types::{OpStatus, Route};

/// Reads `data` as a `compute#routeList` (first byte even) or a `compute#operation` (odd), the
/// rest as its JSON; returns the routes read (none for an operation or JSON the SDK refuses).
pub fn replies(data: &[u8]) -> Vec<Route> {
    let Some((kind, json)) = data.split_first() else { return Vec::new() };
    if kind % 2 == 1 {
        if let Ok(op) = serde_json::from_slice::<model::Operation>(json) {
            let done = op.status == Some(model::operation::Status::Done);
            let name = op.name.clone().unwrap_or_default();
            let converted = operation(op);
            assert_eq!(converted.name, name);
            assert_eq!(matches!(converted.status, OpStatus::Done(_)), done, "done only when the API says DONE");
        }
        return Vec::new();
    }
    let Ok(list) = serde_json::from_slice::<model::RouteList>(json) else { return Vec::new() };
    let count = list.items.len();
    let routes: Vec<Route> = list.items.into_iter().map(route).collect();
    assert_eq!(routes.len(), count, "every route is read, foreign ones too");
    routes
}
