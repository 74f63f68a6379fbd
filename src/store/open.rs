//! Opens the store `[store]` asks for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::etcd::{EtcdOptions, EtcdStore};
use super::local::LocalStore;
use super::{Store, StoreError};
use crate::config::{StoreKind, StoreSection};

pub async fn open(section: &StoreSection) -> Result<Arc<dyn Store>, StoreError> {
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
                password: text(&section.password),
                dial_timeout: Duration::from_secs(5),
            };
            Ok(Arc::new(EtcdStore::connect(options).await?))
        }
        StoreKind::Local => {
            let path = section.path.clone();
            let store = tokio::task::spawn_blocking(move || LocalStore::open(&path))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(Arc::new(store))
        }
        StoreKind::Kube => Err(StoreError::Config(
            "store.kind = \"kube\" is not available in this build yet; use \"etcd\" or \"local\""
                .into(),
        )),
    }
}
