//! Opens the store `[store]` asks for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::etcd::{EtcdOptions, EtcdStore};
use super::local::LocalStore;
use super::{FileNetworkSource, Store, StoreError};
use crate::config::{StoreKind, StoreSection};

/// Opens the store for commands that do not need the network config from it.
pub async fn open(section: &StoreSection) -> Result<Arc<dyn Store>, StoreError> {
    open_with_network(section, &FileNetworkSource::default()).await
}

/// Opens the store; `network` is the config file's `[network]`, which stores that do not hold the
/// network config themselves (Kubernetes: it comes from the ConfigMap) serve as theirs, following
/// it as the file is reloaded.
pub async fn open_with_network(
    section: &StoreSection,
    network: &FileNetworkSource,
) -> Result<Arc<dyn Store>, StoreError> {
    match section.kind {
        StoreKind::Etcd => {
            let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
            let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let options = EtcdOptions {
                endpoints: section.endpoints.clone(),
                prefix: section.prefix.clone(),
                ca_file: path(&section.ca_file),
                cert_file: path(&section.cert_file),
                key_file: path(&section.key_file),
                username: text(&section.username),
                password: text(&section.password).map(Into::into),
                dial_timeout: Duration::from_secs(5),
            };
            Ok(Arc::new(EtcdStore::connect(options).await?))
        }
        StoreKind::Local => {
            let path = section.path.clone();
            let store = tokio::task::spawn_blocking(move || LocalStore::open(&path))
                .await
                .map_err(|e| StoreError::join(format!("open the local store {}", section.path.display()), e))??;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "kube")]
        StoreKind::Kube => {
            use super::kube::{KubeOptions, KubeStore};
            use super::{NetworkSource, WithNetwork};
            // An unusable [network] fails the start, not the first switch.
            network.network_config().await?;
            let node_name = if section.node_name.is_empty() {
                std::env::var("NODE_NAME").unwrap_or_default()
            } else {
                section.node_name.clone()
            };
            let options = KubeOptions {
                node_name,
                kubeconfig: (!section.kubeconfig.is_empty()).then(|| PathBuf::from(&section.kubeconfig)),
                annotation_prefix: section.annotation_prefix.clone(),
                lease_namespace: KubeOptions::default_lease_namespace(),
            };
            let store = KubeStore::connect(options).await?;
            Ok(Arc::new(WithNetwork::new(store, network.clone())))
        }
        #[cfg(not(feature = "kube"))]
        StoreKind::Kube => {
            let _ = network;
            Err(StoreError::config("store.kind = \"kube\" needs weft built with the \"kube\" feature"))
        }
    }
}
