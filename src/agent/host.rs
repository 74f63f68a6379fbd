//! The host's side of holding a lease: `subnet.env` for the CNI plugins, weft's masquerade and
//! FORWARD rules, the lease-expiry metric and systemd's readiness notification.

use std::time::UNIX_EPOCH;

use tracing::{debug, error, info};

use super::{AgentError, Running};
use crate::health::Condition;
use crate::lease::Expiry;
use crate::masq;
use crate::masq::forward::ForwardChange;
use crate::subnet_env::{Ipv4Pair, Ipv6Pair, SubnetEnv};

impl Running {
    /// Our lease is (newly) held: tell the host's CNI about it, and systemd.
    pub(super) async fn take_up_lease(&mut self) -> Result<(), AgentError> {
        self.note_expiry();
        self.write_subnet_env()?;
        self.sync_masquerade().await;
        self.sync_forward_rules().await;
        info!(subnet = %self.own.key(), file = %self.config.agent.subnet_file.display(), "lease held, subnet.env written");
        // systemd (Type=notify) starts dependants only now; without NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            debug!(error = %e, "sd_notify READY");
        }
        self.health.ok(Condition::Lease);
        self.report_dataplane();
        Ok(())
    }

    /// `agent.ip_masq`: weft's nftables table installed (or repaired) when on, removed when off.
    /// The one writer of the masquerade condition.
    pub(super) async fn sync_masquerade(&self) {
        let wanted = self.config.agent.ip_masq;
        // Each family the network has; a table of ours left from a family it no longer has goes.
        let v4 = self.network.ipv4_network().zip(self.own.subnet()).filter(|_| wanted);
        let v4 = v4.map(|(network, own)| (network.into(), own.into()));
        let v6 = self.network.ipv6_network().zip(self.own.subnet_v6()).filter(|_| wanted);
        let v6 = v6.map(|(network, own)| (network.into(), own.into()));
        let result = tokio::task::spawn_blocking(move || {
            let v4 = masq::sync(masq::Family::V4, v4)?;
            Ok::<_, masq::MasqError>([(v4, masq::Family::V4), (masq::sync(masq::Family::V6, v6)?, masq::Family::V6)])
        })
        .await;
        match result {
            Ok(Ok(changes)) => {
                for (change, family) in changes {
                    match change {
                        masq::Change::Installed => info!(%family, "masquerade rules installed"),
                        masq::Change::Removed => info!(%family, "masquerade rules removed"),
                        masq::Change::None => {}
                    }
                }
                self.health.ok(Condition::Masquerade);
            }
            Ok(Err(e)) => {
                error!(error = %e, "masquerade");
                self.health.fail(Condition::Masquerade, e);
            }
            Err(e) => {
                error!(error = %e, "masquerade task failed");
                self.health.fail(Condition::Masquerade, format!("the masquerade task failed: {e}"));
            }
        }
    }

    /// `agent.forward_rules`: weft's accept rules in iptables' FORWARD chain added (or repaired)
    /// when on, removed when off. The one writer of the forward condition.
    pub(super) async fn sync_forward_rules(&self) {
        // iptables' FORWARD chain is IPv4's: an IPv6-only network has no rules there.
        let wanted = self.config.agent.forward_rules;
        let network = self.network.ipv4_network().filter(|_| wanted);
        let result = tokio::task::spawn_blocking(move || masq::forward::sync(network)).await;
        let problem = match result {
            Ok(Ok(change)) => {
                match change {
                    ForwardChange::Installed => info!(network = ?network, "FORWARD accept rules installed"),
                    ForwardChange::Removed => info!("FORWARD accept rules removed (agent.forward_rules = false)"),
                    ForwardChange::None | ForwardChange::NoChain => {}
                }
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the FORWARD rules task failed: {e}")),
        };
        match problem {
            // Rules turned off on a host whose nf_tables cannot even be read are not rules we
            // installed: nothing to report.
            Some(why) if !wanted => debug!(error = %why, "FORWARD rules"),
            Some(why) => {
                error!(error = %why, "FORWARD rules");
                self.health.fail(Condition::Forward, why);
                return;
            }
            None => {}
        }
        self.health.ok(Condition::Forward);
    }

    pub(super) fn write_subnet_env(&self) -> Result<(), AgentError> {
        let env = SubnetEnv {
            ipv4: self
                .network
                .ipv4_network()
                .zip(self.own.subnet())
                .map(|(network, subnet)| Ipv4Pair { network, subnet }),
            ipv6: self
                .network
                .ipv6_network()
                .zip(self.own.subnet_v6())
                .map(|(network, subnet)| Ipv6Pair { network, subnet }),
            mtu: self.data.mtu,
            ip_masq: self.config.agent.ip_masq,
        };
        let path = &self.config.agent.subnet_file;
        env.write(path).map_err(|source| AgentError::SubnetEnv { path: path.display().to_string(), source })
    }

    /// The lease-expiry metric and `/status`'s lease, whenever the lease is (re)written.
    pub(super) fn note_expiry(&self) {
        let lease = &self.own.lease;
        self.health.set_lease(crate::status::LeaseState {
            subnets: lease.key().subnets().map(|subnet| subnet.to_string()).collect(),
            public_ip: lease.attrs.public_ip.to_string(),
            public_ipv6: lease.attrs.public_ipv6().map(|ip| ip.to_string()),
            backend_type: lease.attrs.backend_type.to_string(),
            expires: match lease.expiry {
                Expiry::At(when) => Some(crate::status::timestamp(when)),
                Expiry::Never | Expiry::Unknown => None,
            },
        });
        let seconds = match self.own.lease.expiry {
            Expiry::At(when) => when.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            Expiry::Never | Expiry::Unknown => 0.0,
        };
        self.health.metrics.lease_expiry_seconds.set(seconds);
    }
}
