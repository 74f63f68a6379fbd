//! The cluster's network config changed in the store (`weft network apply`): switch backends live,
//! keeping our subnet — or, for a change that cannot apply live, keep running the old config and
//! say why (log, `/readyz`, a metric).

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{AgentError, Running};
use crate::backend::BackendContext;
use crate::health::Condition;
use crate::leasing::{self, LeaseError};
use crate::network::Network;
use crate::watch::LeaseWatcher;

/// What to do with a config read from the store.
#[derive(Debug, PartialEq)]
pub(super) enum Change {
    /// Same backend; nothing to do (the allocation range may differ: it only matters to new leases).
    Keep(Network),
    SwitchBackend(Network),
    Refuse(String),
}

/// Decides how the running `current` network can follow `stored`. Pure.
pub(super) fn classify(current: &Network, stored: Option<&str>) -> Change {
    let Some(text) = stored else {
        return Change::Refuse("the network config was removed from the store".into());
    };
    let stored = match Network::from_flannel_json(text) {
        Ok((network, _)) => network,
        Err(e) => return Change::Refuse(e.to_string()),
    };
    if let Some(reshape) = stored.reshape_from(current) {
        return Change::Refuse(format!(
            "the network changed {reshape}, which cannot apply while this host \
             holds a lease: restart the agent to lease again in the new network"
        ));
    }
    if stored.backend == current.backend {
        Change::Keep(stored)
    } else {
        Change::SwitchBackend(stored)
    }
}

impl Running {
    /// The one writer of the config condition.
    pub(super) async fn on_network_config(
        &mut self,
        stored: Option<String>,
        watcher: &mut LeaseWatcher,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        match classify(&self.network, stored.as_deref()) {
            Change::Keep(network) => {
                self.network = network;
                self.accept_config();
            }
            Change::Refuse(why) => {
                error!("keeping the running network config: {why}");
                self.health.metrics.network_config_rejected.set(1);
                self.health.fail(Condition::Config, format!("network config not applied: {why}"));
            }
            Change::SwitchBackend(network) => {
                let (from, to) = (self.network.backend.kind(), network.backend.kind());
                match self.switch_backend(network, watcher, cancel).await {
                    Ok(()) => {
                        info!(%from, %to, "backend switched; peers move over as their leases change");
                        self.health.metrics.backend_switches.inc();
                        self.accept_config();
                    }
                    Err(AgentError::Cancelled) => return Err(AgentError::Cancelled),
                    Err(e) => {
                        error!(%from, %to, error = %e, "cannot switch backend; keeping the running one");
                        self.health.metrics.network_config_rejected.set(1);
                        self.health.fail(Condition::Config, format!("backend switch to {to} failed: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn accept_config(&self) {
        self.health.metrics.network_config_rejected.set(0);
        self.health.ok(Condition::Config);
    }

    /// Brings the new backend up beside the old one on our subnet, then publishes it in our
    /// lease; only then does it become the active one, and the data plane moves each peer as its
    /// lease follows. A failure at any step undoes the steps before it: the old backend stays
    /// active and our lease keeps announcing it.
    async fn switch_backend(
        &mut self,
        network: Network,
        watcher: &mut LeaseWatcher,
        cancel: &CancellationToken,
    ) -> Result<(), AgentError> {
        let ctx = BackendContext {
            network: network.clone(),
            ext: self.ext.clone(),
            store: self.store.clone(),
            health: self.health.clone(),
            cloud: self.config.cloud.clone(),
        };
        let prepared = self.dataplane.prepare(&ctx).await?;
        let ready = self.dataplane.start(prepared, &self.own.lease).await?;
        let data = ready.lease_data().clone();
        let attrs = match data.attrs(&self.ext, &network) {
            Ok(attrs) => attrs,
            Err(e) => {
                self.dataplane.stop(ready).await;
                return Err(e.into());
            }
        };
        let lost = match leasing::renew(self.store.as_ref(), &self.own, &attrs, self.config.agent.lease_ttl).await {
            Ok(own) => {
                self.own = own;
                false
            }
            Err(LeaseError::Lost(subnet)) => {
                warn!(%subnet, "our lease changed while switching backend; acquiring again");
                true
            }
            Err(e) => {
                self.dataplane.stop(ready).await;
                return Err(AgentError::Publish(e));
            }
        };
        self.dataplane.activate(ready).await;
        self.attrs = attrs;
        self.data = data;
        self.network = network;
        if lost {
            // Leased again with the new backend's data.
            self.reacquire(watcher, cancel).await?;
        } else {
            self.write_subnet_env()?;
        }
        // Peers already on the new backend are installed now, not at the next resync.
        if let Err(e) = self.dataplane.reconcile(watcher.leases()).await {
            warn!(error = %e, "installing peers after the switch");
        }
        self.report_kernel_conflicts();
        self.check_backend(watcher, true).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkSection;

    fn network(cidr: &str, backend: &str) -> Network {
        let backend = toml::from_str(&format!("type = \"{backend}\"")).unwrap();
        Network::new(&NetworkSection { cidr: cidr.into(), backend, ..Default::default() }).unwrap()
    }

    #[test]
    fn classifies_changes() {
        let current = network("10.244.0.0/16", "vxlan");
        let same = current.to_flannel_json();
        assert!(matches!(classify(&current, Some(&same)), Change::Keep(_)));
        let host_gw = network("10.244.0.0/16", "host-gw").to_flannel_json();
        assert!(
            matches!(classify(&current, Some(&host_gw)), Change::SwitchBackend(n) if n.backend.kind() == crate::backend::BackendKind::HostGw)
        );
        let moved = network("10.245.0.0/16", "vxlan").to_flannel_json();
        assert!(matches!(classify(&current, Some(&moved)), Change::Refuse(why) if why.contains("10.245.0.0/16")));
        assert!(matches!(classify(&current, Some("{broken")), Change::Refuse(_)));
        assert!(matches!(classify(&current, None), Change::Refuse(_)));
        // A recheck that would overflow the cloud worker's timers: refused, the agent runs on.
        let huge = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"gce","Recheck":"99999999999999h"}}"#;
        assert!(
            matches!(classify(&current, Some(huge)), Change::Refuse(why) if why.contains("network.backend.recheck"))
        );
    }
}
