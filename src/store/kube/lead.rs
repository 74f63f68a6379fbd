//! Leadership through a `coordination.k8s.io/v1` Lease, the object Kubernetes' own controllers
//! elect leaders with. Writes are conditional on the resourceVersion read, so of two agents
//! racing for an expired lease exactly one wins (the other gets 409 Conflict).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::{DateTime, TimeDelta, Utc};
use kube::api::{Api, PostParams};
use std::time::Duration;

use super::api_error;
use crate::store::StoreError;

/// The Lease object for the leadership `name`: `weft-<name>`, made a valid object name.
pub fn object_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    format!("weft-{}", cleaned.trim_matches('-'))
}

/// Whether the lease lets `holder` lead at `now`: free, already ours, or run out.
pub fn may_take(spec: &LeaseSpec, holder: &str, now: DateTime<Utc>) -> bool {
    let Some(current) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return true;
    };
    if current == holder {
        return true;
    }
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(MicroTime(renewed)) => *renewed + TimeDelta::seconds(seconds) < now,
        None => true,
    }
}

/// The spec after `holder` takes or renews the lease.
fn taken(previous: Option<&LeaseSpec>, holder: &str, ttl: Duration, now: DateTime<Utc>) -> LeaseSpec {
    let kept = previous.filter(|s| s.holder_identity.as_deref() == Some(holder));
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(holder.to_string()),
        lease_duration_seconds: Some(i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX)),
        acquire_time: Some(kept.and_then(|s| s.acquire_time.clone()).unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if kept.is_some() || previous.is_none() { transitions } else { transitions + 1 }),
        ..LeaseSpec::default()
    }
}

pub async fn lead(api: &Api<Lease>, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
    let object = object_name(name);
    let now = Utc::now();
    let existing = api.get_opt(&object).await.map_err(|e| api_error(format!("read Lease {object}"), e))?;
    let result = match existing {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(object.clone()), ..ObjectMeta::default() },
                spec: Some(taken(None, holder, ttl, now)),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !may_take(&spec, holder, now) {
                return Ok(false);
            }
            // The resourceVersion read stays in the metadata: the write fails if anyone else
            // wrote in between.
            lease.spec = Some(taken(Some(&spec), holder, ttl, now));
            api.replace(&object, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(api_error(format!("write Lease {object}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(Utc::now() - TimeDelta::seconds(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn object_names_are_valid() {
        assert_eq!(object_name("gce-routes"), "weft-gce-routes");
        assert_eq!(object_name("Stale Routes/x"), "weft-stale-routes-x");
    }

    #[test]
    fn a_live_lease_of_another_holder_is_respected() {
        let now = Utc::now();
        assert!(!may_take(&spec("a", 5, 30), "b", now));
        assert!(may_take(&spec("a", 5, 30), "a", now));
        assert!(may_take(&spec("a", 60, 30), "b", now));
        assert!(may_take(&LeaseSpec::default(), "b", now));
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let now = Utc::now();
        let old = LeaseSpec { lease_transitions: Some(2), ..spec("a", 60, 30) };
        let new = taken(Some(&old), "b", Duration::from_secs(15), now);
        assert_eq!(new.holder_identity.as_deref(), Some("b"));
        assert_eq!(new.lease_transitions, Some(3));
        assert_eq!(new.lease_duration_seconds, Some(15));
        let renewed = taken(Some(&new), "b", Duration::from_secs(15), now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, new.acquire_time);
    }
}
