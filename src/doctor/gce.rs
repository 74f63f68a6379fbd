//! gce: the service account's scopes, the instance's `canIpForward`, the routes used and left.
//! The judges are pure; [`checks`] asks the metadata server and the Compute API via weft-gce.

use ipnet::IpNet;
use weft_gce::{ClientOptions, ComputeApi, CredentialSource, MetadataClient, SdkCompute};

use crate::backend::gce::plan::cluster_routes;
use crate::config::CloudSection;
use crate::network::backend::GceConfig;

use super::Check;

const SCOPES: [&str; 2] = ["https://www.googleapis.com/auth/compute", "https://www.googleapis.com/auth/cloud-platform"];

/// The VM service account's scopes (one per line, as the metadata server lists them); `None`
/// when the credentials come from `GOOGLE_APPLICATION_CREDENTIALS` instead.
pub fn scopes(listed: Option<&Result<String, String>>) -> Check {
    const NAME: &str = "gce.scopes";
    let listed = match listed {
        None => {
            return Check::pass(NAME, "credentials from GOOGLE_APPLICATION_CREDENTIALS: the VM's scopes are not used")
        }
        Some(Err(e)) => {
            return Check::fail(
                NAME,
                format!("cannot read the service account's scopes: {e}"),
                "give the VM a service account (gcloud compute instances set-service-account)",
            )
        }
        Some(Ok(listed)) => listed,
    };
    let scopes: Vec<&str> = listed.split_whitespace().collect();
    if let Some(found) = scopes.iter().find(|s| SCOPES.contains(s)) {
        return Check::pass(NAME, format!("the service account has {found}"));
    }
    Check::fail(
        NAME,
        format!("the service account's scopes ({}) include neither compute nor cloud-platform", scopes.join(", ")),
        "stop the VM, then gcloud compute instances set-service-account <vm> --scopes=compute-rw (or cloud-platform)",
    )
}

pub fn can_ip_forward(instance: &str, on: Option<bool>) -> Check {
    const NAME: &str = "gce.can_ip_forward";
    if on == Some(true) {
        return Check::pass(NAME, format!("instance {instance} may forward packets"));
    }
    Check::fail(
        NAME,
        format!("instance {instance} has canIpForward {}: GCE drops packets for pod addresses", if on.is_some() { "false" } else { "unset" }),
        "canIpForward is set when the VM is created: recreate it with --can-ip-forward (gcloud compute instances create ... --can-ip-forward)",
    )
}

/// What decides whether this host's route fits: the project's `ROUTES` quota (`projects.get`)
/// and weft's own `route_limit` on the cluster network's routes.
#[derive(Debug, Clone, Copy)]
pub struct RouteRoom {
    /// Routes of the cluster network in the VPC network.
    pub used: usize,
    pub route_limit: Option<u32>,
    pub project: Option<weft_gce::RouteQuota>,
    /// Our route is in already: it needs no room.
    pub ours_present: bool,
    /// `overflow = "vxlan"`: a host without room is reached over vxlan, no error.
    pub overflow: bool,
}

/// The room for our route, as the project's quota and `route_limit` leave it.
pub fn route_quota(network: &str, room: RouteRoom) -> Check {
    const NAME: &str = "gce.route_quota";
    let mut shown = Vec::new();
    let mut full = Vec::new();
    if let Some(quota) = room.project {
        let left = (quota.limit - quota.usage).max(0.0);
        shown.push(format!("project ROUTES quota: {} of {} used, {left} left", quota.usage, quota.limit));
        if left < 1.0 {
            full.push("ask Google Cloud for a higher ROUTES quota (IAM & Admin → Quotas) or remove unused routes");
        }
    }
    match room.route_limit.map(|l| l as usize) {
        Some(limit) => {
            let left = limit.saturating_sub(room.used);
            shown.push(format!(
                "{} of {limit} routes of the cluster network (route_limit) in network {network}, {left} left",
                room.used
            ));
            if left == 0 {
                full.push("raise network.backend.route_limit (under the project's ROUTES quota)");
            }
        }
        None => shown.push(format!("{} routes of the cluster network in network {network}", room.used)),
    }
    let detail = shown.join("; ");
    if full.is_empty() || room.ours_present {
        let also = if room.ours_present && !full.is_empty() { "; it holds our route already" } else { "" };
        return Check::pass(NAME, format!("{detail}{also}"));
    }
    if room.overflow {
        return Check::pass(
            NAME,
            format!("{detail}: no room for this host's route, its peers reach it over vxlan (overflow)"),
        );
    }
    Check::fail(
        NAME,
        format!("{detail}: no room for this host's route"),
        format!("{}, or set network.backend.overflow = \"vxlan\"", full.join("; ")),
    )
}

/// Every gce check. `own` is our subnet (subnet.env), whose route needs no room.
pub async fn checks(
    config: &GceConfig,
    cloud: &CloudSection,
    cluster: &crate::network::Network,
    own: Option<IpNet>,
) -> Vec<Check> {
    let metadata_fail = |e: String| {
        vec![Check::fail("gce.metadata", e, "run on a GCE VM (GCE_METADATA_HOST names another metadata server)")]
    };
    let metadata = match MetadataClient::from_env() {
        Ok(m) => m,
        Err(e) => return metadata_fail(e.to_string()),
    };
    let mut meta = match metadata.instance().await {
        Ok(meta) => meta,
        Err(e) => return metadata_fail(format!("reading instance metadata: {e}")),
    };
    if !config.project.is_empty() {
        meta.project = config.project.clone();
    }
    if !config.network.is_empty() {
        meta.network = config.network.clone();
    }
    let credentials = CredentialSource::from_env();
    let listed = match credentials {
        CredentialSource::Metadata => {
            Some(metadata.get("instance/service-accounts/default/scopes").await.map_err(|e| e.to_string()))
        }
        _ => None,
    };
    let mut checks = vec![
        Check::pass(
            "gce.metadata",
            format!("instance {} in {}, project {}, network {}", meta.instance, meta.zone, meta.project, meta.network),
        ),
        scopes(listed.as_ref()),
    ];
    let options = ClientOptions { project: meta.project.clone(), endpoint: cloud.gce_endpoint.clone(), credentials };
    let api = match SdkCompute::new(&options).await {
        Ok(api) => api,
        Err(e) => {
            checks.push(Check::fail(
                "gce.api",
                format!("compute client: {e}"),
                "check cloud.gce_endpoint and the VM's credentials",
            ));
            return checks;
        }
    };
    let api_fail = |what: &str, e: weft_gce::GceError| {
        Check::fail(
            what,
            e.to_string(),
            "check the service account's role (docs/gce-role.yaml), network.backend.project and cloud.gce_endpoint",
        )
    };
    match api.get_instance(&meta.zone, &meta.instance).await {
        Ok(instance) => checks.push(can_ip_forward(&meta.instance, instance.can_ip_forward)),
        Err(e) => checks.push(api_fail("gce.can_ip_forward", e)),
    }
    let routes = async {
        let network = api.get_network(&meta.network).await?;
        Ok::<_, weft_gce::GceError>((api.list_routes(&network.self_link).await?, network.self_link))
    };
    let project = api.route_quota().await;
    match (routes.await, project) {
        (Ok((routes, link)), Ok(project)) => {
            let room = RouteRoom {
                used: cluster_routes(&routes, &link, cluster),
                route_limit: config.route_limit,
                project,
                ours_present: own.is_some_and(|own| routes.iter().any(|r| r.dest_range == own.to_string())),
                overflow: config.overflow.is_some(),
            };
            checks.push(route_quota(&meta.network, room));
        }
        (Err(e), _) | (_, Err(e)) => checks.push(api_fail("gce.route_quota", e)),
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_or_cloud_platform_scope() {
        let listed = |s: &str| Some(Ok(s.to_string()));
        let cloud =
            "https://www.googleapis.com/auth/devstorage.read_only\nhttps://www.googleapis.com/auth/cloud-platform\n";
        assert!(scopes(listed(cloud).as_ref()).ok);
        assert!(scopes(listed("https://www.googleapis.com/auth/compute").as_ref()).ok);
        let missing = scopes(listed("https://www.googleapis.com/auth/devstorage.read_only\n").as_ref());
        assert!(!missing.ok && missing.fix.unwrap().contains("--scopes=compute-rw"));
        assert!(scopes(None).ok, "a key file's credentials have no VM scopes");
        assert!(!scopes(Some(&Err("404".into()))).ok);
    }

    #[test]
    fn can_ip_forward_must_be_true() {
        assert!(can_ip_forward("node-a", Some(true)).ok);
        let off = can_ip_forward("node-a", Some(false));
        assert!(!off.ok && off.fix.unwrap().contains("--can-ip-forward"));
        assert!(!can_ip_forward("node-a", None).ok);
    }

    #[test]
    fn room_under_the_project_quota_and_route_limit() {
        let room = |used, route_limit, project: Option<(f64, f64)>, ours_present, overflow| RouteRoom {
            used,
            route_limit,
            project: project.map(|(limit, usage)| weft_gce::RouteQuota { limit, usage }),
            ours_present,
            overflow,
        };
        assert!(route_quota("default", room(7, None, None, false, false)).ok);
        let fits = route_quota("default", room(2, Some(3), Some((250.0, 12.0)), false, false));
        assert!(fits.ok, "{}", fits.detail);
        assert!(
            fits.detail.contains("12 of 250 used, 238 left") && fits.detail.contains("2 of 3 routes"),
            "{}",
            fits.detail
        );
        let limited = route_quota("default", room(3, Some(3), Some((250.0, 12.0)), false, false));
        assert!(!limited.ok && limited.fix.unwrap().contains("route_limit"));
        let project_full = route_quota("default", room(3, None, Some((100.0, 100.0)), false, false));
        assert!(!project_full.ok && project_full.fix.as_deref().unwrap().contains("ROUTES quota"), "{project_full:?}");
        assert!(route_quota("default", room(3, None, Some((100.0, 100.0)), true, false)).ok, "our route is in already");
        let overflowing = route_quota("default", room(3, None, Some((100.0, 100.0)), false, true));
        assert!(overflowing.ok && overflowing.detail.contains("over vxlan"), "{}", overflowing.detail);
    }
}
