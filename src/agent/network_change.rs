//! The cluster's network config changed in the store (`weft network apply`): switch backends live,
//! keeping our subnet — or, for a change that cannot apply live, keep running the old config and
//! say why (log, `/readyz`, a metric).

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{AgentError, Running};
use crate::backend::BackendContext;
use crate::lease::LeaseAttrs;
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
    pub(super) async fn on_network_config(
        &mut self,
        stored: Option<String>,
        watcher: &mut LeaseWatcher,
        cancel: &CancellationToken,
    ) {
        match classify(&self.network, stored.as_deref()) {
            Change::Keep(network) => {
                self.network = network;
                self.accept_config();
            }
            Change::Refuse(why) => {
                error!("keeping the running network config: {why}");
                self.health.metrics.network_config_rejected.set(1);
                self.health.update(|r| r.problem = Some(format!("network config not applied: {why}")));
            }
            Change::SwitchBackend(network) => {
                let (from, to) = (self.network.backend.type_name(), network.backend.type_name());
                match self.switch_backend(network, watcher, cancel).await {
                    Ok(()) => {
                        info!(from, to, "backend switched; peers move over as their leases change");
                        self.health.metrics.backend_switches.inc();
                        self.accept_config();
                    }
                    Err(e) => {
                        error!(from, to, error = %e, "cannot switch backend; keeping the running one");
                        self.health.metrics.network_config_rejected.set(1);
                        self.health.update(|r| r.problem = Some(format!("backend switch to {to} failed: {e}")));
                    }
                }
            }
        }
    }

    fn accept_config(&self) {
        self.health.metrics.network_config_rejected.set(0);
        self.health.update(|r| {
            if r.problem
                .as_deref()
                .is_some_and(|p| p.starts_with("network config not applied") || p.starts_with("backend switch"))
            {
                r.problem = None;
            }
        });
    }

    /// Brings the new backend up beside the old one, publishes it in our lease (same subnet), and
    /// lets the data plane move each peer as its lease follows.
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
        };
        let mut backend = self.dataplane.create_backend(&ctx)?;
        let data = backend.prepare().await?;
        let attrs = LeaseAttrs::new(self.ext.public_ip, data.backend_type, data.backend_data.clone());
        match leasing::renew(self.store.as_ref(), &self.own, &attrs, self.config.agent.lease_ttl).await {
            Ok(own) => self.own = own,
            Err(LeaseError::Lost(subnet)) => {
                warn!(%subnet, "our lease changed while switching backend; acquiring again");
                self.attrs = attrs.clone();
                self.reacquire(watcher, cancel).await?;
            }
            Err(e) => {
                return Err(AgentError::Backend(crate::backend::BackendError::Setup(format!(
                    "publishing the new backend in our lease: {e}"
                ))))
            }
        }
        self.attrs = attrs;
        self.dataplane.start(backend, &self.own.lease).await?;
        self.data = data;
        self.network = network;
        self.write_subnet_env()?;
        // Peers already on the new backend are installed now, not at the next resync.
        if let Err(e) = self.dataplane.reconcile(watcher.leases()).await {
            warn!(error = %e, "installing peers after the switch");
        }
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
            matches!(classify(&current, Some(&host_gw)), Change::SwitchBackend(n) if n.backend.type_name() == "host-gw")
        );
        let moved = network("10.245.0.0/16", "vxlan").to_flannel_json();
        assert!(matches!(classify(&current, Some(&moved)), Change::Refuse(why) if why.contains("10.245.0.0/16")));
        assert!(matches!(classify(&current, Some("{broken")), Change::Refuse(_)));
        assert!(matches!(classify(&current, None), Change::Refuse(_)));
    }
}
