//! `kind = "kube"`: the Kubernetes API as the store, compatible with flannel's kube subnet
//! manager. A node's lease is the node itself: its subnet is `spec.podCIDR` (assigned by the
//! controller manager, never chosen here), its attributes are flannel's annotations on it. The
//! agent writes only its own node; the others are watched. The network config is not stored in
//! the cluster: it comes from weft.toml (the ConfigMap), through a
//! [`FileNetworkSource`](crate::store::FileNetworkSource) that `store::open_with_network` puts
//! beside this store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::Lease as CoordinationLease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use tracing::{info, warn};

use crate::lease::{Expiry, LeaseAttrs, LeaseKey};
use crate::store::{Leadership, LeaseListing, LeaseStore, LeaseUpdate, LeaseWrite, Revision, StoreError, WriteOutcome};
use annotations::AnnotationNames;
use events::{NodeTracker, OwnNode};

pub mod annotations;
pub mod events;
pub mod lead;
pub mod node;
pub mod rbac;

/// Where Lease objects for `lead()` live when the agent does not run in a pod.
const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// This host's node.
    pub node_name: String,
    /// `None`: in-cluster, then `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub annotation_prefix: String,
    /// Namespace of the coordination Leases used for leadership.
    pub lease_namespace: String,
}

impl KubeOptions {
    /// The namespace the agent's pod runs in (the downward API's `POD_NAMESPACE`), else
    /// kube-system, like flannel's own objects.
    pub fn default_lease_namespace() -> String {
        std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| DEFAULT_LEASE_NAMESPACE.to_string())
    }
}

pub struct KubeStore {
    nodes: Api<Node>,
    leases: Api<CoordinationLease>,
    names: AnnotationNames,
    own: Arc<OwnNode>,
}

impl KubeStore {
    pub async fn connect(options: KubeOptions) -> Result<Self, StoreError> {
        let names = AnnotationNames::new(&options.annotation_prefix)
            .map_err(|e| StoreError::config("store.annotation_prefix").because(e))?;
        if options.node_name.is_empty() {
            return Err(StoreError::config(
                "store.kind = \"kube\" needs this host's node name: set store.node_name or NODE_NAME",
            ));
        }
        let config = client_config(options.kubeconfig.as_ref()).await?;
        // rustls cannot pick a crypto provider by itself when several are compiled in (the AWS
        // SDK brings aws-lc-rs); kube builds its TLS config from the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_from(config).map_err(|e| StoreError::config("kubernetes client").because(e))?;
        info!(node = %options.node_name, prefix = %options.annotation_prefix, "kubernetes store");
        Ok(KubeStore {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client, &options.lease_namespace),
            names,
            own: Arc::new(OwnNode::new(&options.node_name)),
        })
    }

    async fn own_node(&self) -> Result<Node, StoreError> {
        self.nodes.get(&self.own.name).await.map_err(|e| match e {
            kube::Error::Api(ref r) if r.code == 404 => StoreError::config(format!(
                "node {:?} does not exist: store.node_name (or NODE_NAME) must name this host's node",
                self.own.name
            ))
            .because(e),
            e => api_error(format!("read node {:?}", self.own.name), e),
        })
    }

    /// Our node and its pod subnets of each family, `None` while unassigned.
    async fn own_pod_cidrs(&self) -> Result<(Node, Option<Ipv4Net>, Option<ipnet::Ipv6Net>), StoreError> {
        let node = self.own_node().await?;
        let (v4, v6) =
            node::pod_cidrs(&node).map_err(|e| StoreError::corrupt(format!("node {:?}", self.own.name)).because(e))?;
        Ok((node, v4, v6))
    }

    /// Annotates our node with `attrs_json`, if `subnet` is its pod subnet: that is the only
    /// lease this host can hold in Kubernetes mode.
    async fn write_own(&self, key: LeaseKey, attrs_json: &str) -> Result<WriteOutcome, StoreError> {
        let attrs: LeaseAttrs = serde_json::from_str(attrs_json)
            .map_err(|e| StoreError::corrupt(format!("lease attributes to write for {key}")).because(e))?;
        let (node, assigned, assigned_v6) = self.own_pod_cidrs().await?;
        if !is_assigned(&key, assigned, assigned_v6) {
            return Ok(WriteOutcome::Conflict);
        }
        let patch = self.names.own_patch(&node::annotations(&node), &attrs);
        let mut revision = node::revision(node.metadata.resource_version.as_deref());
        if !patch.is_empty() {
            if let Some(overwrite) = patch.get(&self.names.public_ip).filter(|ip| **ip != attrs.public_ip.to_string()) {
                info!(public_ip = %overwrite, annotation = %self.names.public_ip_overwrite, "public address overridden by the node's annotation");
            }
            // flannel patches the status subresource: its RBAC grants `nodes/status` patch
            // only, and weft must work under the same ClusterRole.
            let body = serde_json::json!({ "metadata": { "annotations": patch } });
            let patched = self
                .nodes
                .patch_status(&self.own.name, &PatchParams::default(), &Patch::Strategic(body))
                .await
                .map_err(|e| api_error(format!("annotate node {:?} with its lease", self.own.name), e))?;
            revision = node::revision(patched.metadata.resource_version.as_deref());
        }
        self.own.remember(key, attrs_json);
        Ok(WriteOutcome::Written { revision, expiry: Expiry::Never })
    }
}

async fn client_config(kubeconfig: Option<&PathBuf>) -> Result<kube::Config, StoreError> {
    let options = KubeConfigOptions::default();
    if let Some(path) = kubeconfig {
        let context = || StoreError::config(format!("store.kubeconfig {}", path.display()));
        let file = Kubeconfig::read_from(path).map_err(|e| context().because(e))?;
        return kube::Config::from_custom_kubeconfig(file, &options).await.map_err(|e| context().because(e));
    }
    // flannel's order: the pod's service account first, then the user's kubeconfig.
    match kube::Config::incluster() {
        Ok(config) => Ok(config),
        Err(in_cluster) => kube::Config::from_kubeconfig(&options).await.map_err(|e| {
            StoreError::config(format!(
                "no Kubernetes API to talk to: not in a cluster ({in_cluster}) and no kubeconfig; set store.kubeconfig"
            ))
            .because(e)
        }),
    }
}

/// The API answering is a refused request; any other failure means the API is away.
pub(crate) fn api_error(context: impl Into<String>, error: kube::Error) -> StoreError {
    let kind = match error {
        kube::Error::Api(_) => StoreError::request,
        _ => StoreError::unavailable,
    };
    kind(format!("kubernetes API: {}", context.into())).because(error)
}

#[async_trait]
impl LeaseStore for KubeStore {
    async fn list_leases(&self) -> Result<LeaseListing, StoreError> {
        let list = self.nodes.list(&ListParams::default()).await.map_err(|e| api_error("list nodes", e))?;
        let mut leases = Vec::new();
        for node in &list.items {
            match events::lease_of(&self.names, &self.own, node) {
                Ok(Some(lease)) => leases.push(lease),
                Ok(None) => {}
                Err(skip) => warn!(node = %node::name(node), reason = %skip, "skipping node: not a usable lease"),
            }
        }
        Ok(LeaseListing { leases, revision: node::revision(list.metadata.resource_version.as_deref()) })
    }

    /// Kubernetes decides who holds a subnet (the controller manager assigns `spec.podCIDR`):
    /// "creating" a lease annotates our node when `subnet` is its pod subnet, and is a conflict
    /// for any other subnet. TTLs do not apply.
    async fn create_lease(&self, write: LeaseWrite<'_>) -> Result<WriteOutcome, StoreError> {
        self.write_own(write.key, write.attrs_json).await
    }

    /// As `create_lease`: the node is ours whatever its resourceVersion, since only this agent
    /// writes these annotations on it.
    async fn update_lease(&self, write: LeaseWrite<'_>, _expected: Revision) -> Result<WriteOutcome, StoreError> {
        self.write_own(write.key, write.attrs_json).await
    }

    /// Removes our node's lease annotations; other nodes are never written.
    async fn delete_lease(&self, key: LeaseKey) -> Result<bool, StoreError> {
        let (node, assigned, assigned_v6) = self.own_pod_cidrs().await?;
        if !is_assigned(&key, assigned, assigned_v6) {
            return Err(StoreError::config(format!(
                "{key} is not the pod subnet of node {:?}: in Kubernetes mode an agent changes only its own node; delete the node to free its subnet",
                self.own.name
            )));
        }
        let notes = node::annotations(&node);
        let names = &self.names;
        let ours = [
            &names.backend_type,
            &names.backend_data,
            &names.public_ip,
            &names.subnet_kube_managed,
            &names.public_ipv6,
            &names.backend_v6_data,
        ];
        if !ours.iter().any(|key| notes.contains_key(*key)) {
            return Ok(false);
        }
        // In a merge patch, null removes a key.
        let removed: serde_json::Map<String, serde_json::Value> =
            ours.iter().map(|key| (key.to_string(), serde_json::Value::Null)).collect();
        let body = serde_json::json!({ "metadata": { "annotations": removed } });
        self.nodes
            .patch_status(&self.own.name, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map_err(|e| api_error(format!("remove the lease annotations of node {:?}", self.own.name), e))?;
        Ok(true)
    }

    /// Lists and watches nodes with kube-rs' watcher, which relists (yielding a `Resync` here)
    /// when the API answers 410 Gone for an expired resourceVersion. `after` is not needed: the
    /// watcher starts with a listing of its own.
    fn watch_leases(&self, _after: Revision) -> BoxStream<'static, Result<LeaseUpdate, StoreError>> {
        let mut tracker = NodeTracker::new(self.names.clone(), self.own.clone());
        watcher(self.nodes.clone(), watcher::Config::default())
            .default_backoff()
            .flat_map(move |event| {
                let updates: Vec<Result<LeaseUpdate, StoreError>> = match event {
                    Ok(event) => tracker.on_event(event).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(StoreError::unavailable("kubernetes API: watch nodes").because(e))],
                };
                stream::iter(updates)
            })
            .boxed()
    }

    async fn assigned_subnet(&self) -> Result<Option<LeaseKey>, StoreError> {
        let (_, v4, v6) = self.own_pod_cidrs().await?;
        match (v4, v6) {
            // IPv6-only when the node has no IPv4 pod CIDR; the network decides which it wants.
            (Some(_), _) | (None, Some(_)) => Ok(Some(LeaseKey { subnet: v4, subnet_v6: v6 })),
            (None, None) => {
                info!(node = %self.own.name, "waiting for the node's spec.podCIDR (assigned by kube-controller-manager --allocate-node-cidrs)");
                Err(StoreError::unavailable(format!(
                    "node {:?} has no spec.podCIDR yet; waiting for the controller manager to assign one",
                    self.own.name
                )))
            }
        }
    }
}

/// Whether every subnet `key` names is our node's pod CIDR of its family: the only lease this
/// host may write in Kubernetes mode.
fn is_assigned(key: &LeaseKey, assigned: Option<Ipv4Net>, assigned_v6: Option<ipnet::Ipv6Net>) -> bool {
    key.subnet.is_none_or(|v4| assigned == Some(v4)) && key.subnet_v6.is_none_or(|v6| assigned_v6 == Some(v6))
}

#[async_trait]
impl Leadership for KubeStore {
    async fn lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        lead::lead(&self.leases, name, holder, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_ours_when_each_of_its_subnets_is_our_pod_cidr_of_its_family() {
        let v4: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let v6: ipnet::Ipv6Net = "2001:db8:42:1::/64".parse().unwrap();
        let other6: ipnet::Ipv6Net = "2001:db8:42:2::/64".parse().unwrap();
        // IPv6-only node and key.
        assert!(is_assigned(&LeaseKey::ipv6_only(v6), None, Some(v6)));
        assert!(!is_assigned(&LeaseKey::ipv6_only(other6), None, Some(v6)));
        assert!(!is_assigned(&LeaseKey::ipv6_only(v6), Some(v4), None));
        // An IPv6-only key on a dual-stack node names only the IPv6 part.
        assert!(is_assigned(&LeaseKey::ipv6_only(v6), Some(v4), Some(v6)));
        // IPv4 and dual-stack keys.
        assert!(is_assigned(&LeaseKey::from(v4), Some(v4), None));
        assert!(!is_assigned(&LeaseKey::from(v4), None, Some(v6)));
        assert!(is_assigned(&LeaseKey { subnet: Some(v4), subnet_v6: Some(v6) }, Some(v4), Some(v6)));
        assert!(!is_assigned(&LeaseKey { subnet: Some(v4), subnet_v6: Some(other6) }, Some(v4), Some(v6)));
    }
}
