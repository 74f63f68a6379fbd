//! gce: the service account's scopes, the instance's `canIpForward`, the routes used and left.
//! The judges are pure; [`checks`] asks the metadata server and the Compute API via weft-gce.

use ipnet::Ipv4Net;
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

/// Routes of the cluster network in the VPC network against `route_limit`. Without one, weft
/// learns the project's route quota only from a refused insert, so only the count is shown.
pub fn route_quota(network: &str, used: usize, route_limit: Option<u32>, ours_present: bool) -> Check {
    const NAME: &str = "gce.route_quota";
    let Some(limit) = route_limit.map(|l| l as usize) else {
        return Check::pass(
            NAME,
            format!("{used} routes of the cluster network in network {network}; no route_limit, so the project's ROUTES quota decides"),
        );
    };
    let left = limit.saturating_sub(used);
    let shown =
        format!("{used} of {limit} routes of the cluster network (route_limit) used in network {network}, {left} left");
    if left > 0 || ours_present {
        let also = if ours_present && left == 0 { "; it holds our route already" } else { "" };
        return Check::pass(NAME, format!("{shown}{also}"));
    }
    Check::fail(
        NAME,
        format!("{shown}: no room for this host's route"),
        format!("raise network.backend.route_limit (now {limit}, under the project's ROUTES quota), or set network.backend.overflow = \"vxlan\""),
    )
}

/// Every gce check. `own` is our subnet (subnet.env), whose route needs no room.
pub async fn checks(config: &GceConfig, cloud: &CloudSection, cluster: Ipv4Net, own: Option<Ipv4Net>) -> Vec<Check> {
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
    match routes.await {
        Ok((routes, link)) => {
            let used = cluster_routes(&routes, &link, cluster);
            let ours = own.is_some_and(|own| routes.iter().any(|r| r.dest_range == own.to_string()));
            checks.push(route_quota(&meta.network, used, config.route_limit, ours));
        }
        Err(e) => checks.push(api_fail("gce.route_quota", e)),
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
    fn routes_left_under_route_limit() {
        assert!(route_quota("default", 7, None, false).ok);
        let room = route_quota("default", 2, Some(3), false);
        assert!(room.ok);
        assert!(room.detail.contains("2 of 3 routes") && room.detail.contains("1 left"), "{}", room.detail);
        let full = route_quota("default", 3, Some(3), false);
        assert!(!full.ok && full.fix.unwrap().contains("route_limit (now 3"));
        assert!(route_quota("default", 3, Some(3), true).ok, "our route is in already");
    }
}
