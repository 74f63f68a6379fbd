//! One error type for every call. Errors are classified by HTTP status and Google's error
//! `reason` (or an operation's error `code`), never by message text: messages change, codes are
//! part of the API.

use std::fmt;

use google_cloud_gax::error::rpc::StatusDetails;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum GceError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// The project (or network) has no room for another route: `quota` names the quota, e.g.
    /// `ROUTES-per-project`.
    #[error("quota {quota} exceeded{}: {message}", limit.map(|l| format!(" (limit {l})")).unwrap_or_default())]
    QuotaExceeded { quota: String, limit: Option<f64>, message: String },
    /// The API accepted the request but the operation carrying it out failed.
    #[error("operation {operation} failed: {error}")]
    Operation { operation: String, error: OperationError },
    /// The operation was still running at the deadline; it may yet finish.
    #[error("operation {operation} not done after {waited:?} (last status {status})")]
    Timeout { operation: String, waited: std::time::Duration, status: String },
    #[error("{context}: {source}")]
    Other {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl GceError {
    pub fn other(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        GceError::Other { context: context.into(), source: source.into() }
    }

    /// The `outcome` label of the call that produced this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            GceError::NotFound { .. } => "not_found",
            GceError::AlreadyExists { .. } => "already_exists",
            GceError::QuotaExceeded { .. } => "quota_exceeded",
            GceError::Operation { .. } => "operation_error",
            GceError::Timeout { .. } => "timeout",
            GceError::Other { .. } => "error",
        }
    }
}

/// What a failed operation reported (`error.errors[]` of a `compute#operation`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperationError {
    pub items: Vec<OperationErrorItem>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperationErrorItem {
    /// e.g. `QUOTA_EXCEEDED`, `RESOURCE_NOT_FOUND`.
    pub code: String,
    pub message: String,
    /// From `errorDetails[].quotaInfo`, when the API says which quota ran out.
    pub quota: Option<QuotaInfo>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuotaInfo {
    pub limit_name: String,
    pub metric_name: String,
    pub limit: Option<f64>,
}

impl fmt::Display for OperationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return f.write_str("unspecified error");
        }
        let parts: Vec<String> = self.items.iter().map(|i| format!("{}: {}", i.code, i.message)).collect();
        f.write_str(&parts.join("; "))
    }
}

const QUOTA_REASONS: &[&str] = &["quotaExceeded", "QUOTA_EXCEEDED"];

impl OperationError {
    /// A failed operation whose error is a quota becomes [`GceError::QuotaExceeded`].
    pub fn into_error(self, operation: &str) -> GceError {
        if let Some(item) = self.items.iter().find(|i| QUOTA_REASONS.contains(&i.code.as_str())) {
            let quota = item.quota.clone().unwrap_or_default();
            return GceError::QuotaExceeded {
                quota: non_empty(quota.limit_name).or(non_empty(quota.metric_name)).unwrap_or_else(|| "unknown".into()),
                limit: quota.limit,
                message: item.message.clone(),
            };
        }
        GceError::Operation { operation: operation.to_string(), error: self }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Classifies an SDK error for `what` (e.g. `route weft-10-244-1-0-24`).
pub fn classify(what: &str, error: google_cloud_gax::error::Error) -> GceError {
    let reasons: Vec<(&str, Option<&std::collections::HashMap<String, String>>)> = error
        .status()
        .map(|s| {
            s.details
                .iter()
                .filter_map(|d| match d {
                    StatusDetails::ErrorInfo(info) => Some((info.reason.as_str(), Some(&info.metadata))),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some((_, metadata)) = reasons.iter().find(|(r, _)| QUOTA_REASONS.contains(r)) {
        let get = |key: &str| metadata.and_then(|m| m.get(key)).cloned();
        return GceError::QuotaExceeded {
            quota: get("quota_limit").or_else(|| get("quota_metric")).unwrap_or_else(|| "unknown".into()),
            limit: get("quota_limit_value").and_then(|v| v.parse().ok()),
            message: error.status().map(|s| s.message.clone()).unwrap_or_default(),
        };
    }
    match error.http_status_code() {
        Some(404) => GceError::NotFound { what: what.to_string() },
        Some(409) => GceError::AlreadyExists { what: what.to_string() },
        _ => GceError::other(what.to_string(), error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_operation_error_names_the_quota() {
        let error = OperationError {
            items: vec![OperationErrorItem {
                code: "QUOTA_EXCEEDED".into(),
                message: "Quota 'ROUTES' exceeded.".into(),
                quota: Some(QuotaInfo {
                    limit_name: "ROUTES-per-project".into(),
                    metric_name: String::new(),
                    limit: Some(3.0),
                }),
            }],
        };
        let e = error.into_error("op-1");
        assert!(
            matches!(&e, GceError::QuotaExceeded { quota, limit: Some(l), .. } if quota == "ROUTES-per-project" && *l == 3.0)
        );
        assert_eq!(e.outcome(), "quota_exceeded");
        assert!(e.to_string().contains("quota ROUTES-per-project exceeded (limit 3)"), "{e}");
    }

    #[test]
    fn other_operation_errors_stay_operation_errors() {
        let error = OperationError {
            items: vec![OperationErrorItem { code: "RESOURCE_NOT_READY".into(), message: "busy".into(), quota: None }],
        };
        let e = error.into_error("op-2");
        assert!(matches!(e, GceError::Operation { .. }));
        assert_eq!(e.to_string(), "operation op-2 failed: RESOURCE_NOT_READY: busy");
    }
}
