//! `weft agent`: runs the agent until SIGTERM/SIGINT; SIGHUP re-reads the configuration.

use std::sync::Arc;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent;
use crate::commands::{CommandError, GlobalArgs};
use crate::config::{Config, Flags};
use crate::health::{self, Health};
use crate::store::{self, FileNetworkSource};

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Address other hosts use to reach this one (overrides agent.public_ip).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,
    /// IPv6 address other hosts use to reach this one in a dual-stack network (overrides
    /// agent.public_ipv6).
    #[arg(long, value_name = "IPV6")]
    pub public_ipv6: Option<String>,
    /// Interface name or address to use, may repeat (overrides agent.iface).
    #[arg(long, value_name = "NAME|IP")]
    pub iface: Vec<String>,
    /// Where to write subnet.env (overrides agent.subnet_file).
    #[arg(long, value_name = "FILE")]
    pub subnet_file: Option<String>,
    /// Address of /healthz, /readyz and /metrics; "" turns it off (overrides agent.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Masquerade traffic leaving the cluster network (overrides agent.ip_masq).
    #[arg(long)]
    pub ip_masq: Option<bool>,
    /// Accept the cluster network in iptables' FORWARD chain (overrides agent.forward_rules).
    #[arg(long)]
    pub forward_rules: Option<bool>,
    /// Remove everything weft installed on this host (devices, routes, neighbours, FDB entries,
    /// nexthops, the masquerade table, its FORWARD rules) and exit. The lease is left to expire.
    #[arg(long)]
    pub cleanup: bool,
}

impl AgentArgs {
    fn flags(&self) -> Flags {
        let mut flags = Flags::default();
        if let Some(ip) = &self.public_ip {
            flags.set("agent.public_ip", ip.as_str());
        }
        if let Some(ip) = &self.public_ipv6 {
            flags.set("agent.public_ipv6", ip.as_str());
        }
        if !self.iface.is_empty() {
            flags.set("agent.iface", self.iface.clone());
        }
        if let Some(file) = &self.subnet_file {
            flags.set("agent.subnet_file", file.as_str());
        }
        if let Some(listen) = &self.listen {
            flags.set("agent.listen", listen.as_str());
        }
        if let Some(masq) = self.ip_masq {
            flags.set("agent.ip_masq", masq);
        }
        if let Some(forward) = self.forward_rules {
            flags.set("agent.forward_rules", forward);
        }
        flags
    }
}

pub async fn run(global: &GlobalArgs, args: AgentArgs) -> Result<(), CommandError> {
    if args.cleanup {
        return cleanup().await;
    }
    let loaded = global.load_config(args.flags())?;
    let mut config = loaded.config;
    let mut file = FileWatch::new(loaded.file);
    crate::logging::set_log_level(&crate::logging::effective_level(&config.agent.log_level));
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let mut server = HealthServer::start(&config.agent.listen, &health, &shutdown).await?;
    let _watchdog = start_watchdog();
    let mut terminate = signal(SignalKind::terminate()).map_err(runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(runtime)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(runtime)?;
    // The file's [network], for stores that keep none (kube); a reload hands it the new table.
    let network_file = FileNetworkSource::new(&config.network);
    let mut store = store::open_with_network(&config.store, &network_file).await?;
    // The configuration that ran before the last reload: where to go back to if the new one
    // fails (say its interface does not exist), once.
    let mut fallback: Option<Config> = None;
    // The lease the last run held: after a reload that changed our address it moves with us.
    let mut handover = None;
    loop {
        let generation = shutdown.child_token();
        let run = agent::run(config.clone(), store, health.clone(), handover.take(), generation.clone());
        let mut task = tokio::spawn(run);
        let next = loop {
            let why = tokio::select! {
                finished = &mut task => {
                    let error = match finished {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => format!("agent task failed: {e}"),
                    };
                    let Some(previous) = fallback.take() else {
                        return Err(CommandError::Runtime(error));
                    };
                    error!(%error, "the new configuration failed; going back to the previous one");
                    health.reloaded("agent loop restart", false, format!("the new configuration failed ({error}); back to the previous one"));
                    network_file.set(&previous.network);
                    config = previous;
                    break Next::Fallback(store::open_with_network(&config.store, &network_file).await?);
                }
                _ = terminate.recv() => break Next::Stop,
                _ = interrupt.recv() => break Next::Stop,
                _ = hangup.recv() => "SIGHUP",
                _ = file.changed() => "config file changed",
            };
            let new = match global.load_config(args.flags()) {
                Ok(loaded) => loaded.config,
                Err(e) => {
                    // An invalid edit never stops a running agent.
                    error!(error = %e, "{why}: keeping the running configuration");
                    health.reloaded(why, false, format!("{e}; keeping the running configuration"));
                    continue;
                }
            };
            if new == config {
                info!("{why}: configuration unchanged");
                health.reloaded(why, true, "unchanged");
                continue;
            }
            // The new store is opened while the running agent goes on: a store that cannot be
            // opened (an unreadable CA file, etcd refusing the password) keeps the running one.
            let reopened = if needs_restart(&config, &new) {
                match store::open_with_network(&new.store, &network_file).await {
                    Ok(store) => Some(store),
                    Err(e) => {
                        error!(error = %e, "{why}: cannot open the store of the new configuration; keeping the running configuration");
                        health.reloaded(
                            why,
                            false,
                            format!("cannot open the new store: {e}; keeping the running configuration"),
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            if new.agent.log_level != config.agent.log_level {
                let level = crate::logging::effective_level(&new.agent.log_level);
                crate::logging::set_log_level(&level);
                info!(log_level = %level, "{why}: log level changed");
            }
            if new.agent.log_format != config.agent.log_format {
                warn!("{why}: agent.log_format applies at the next start");
            }
            if new.agent.listen != config.agent.listen {
                server.move_to(&new.agent.listen, &health, &shutdown).await;
            }
            if network_file.set(&new.network) {
                info!("{why}: [network] changed: followed live where it comes from this file (kube), else once published with `weft network apply`");
            }
            let previous = std::mem::replace(&mut config, new);
            let outcome = if reopened.is_some() { "applied; the agent loop restarts" } else { "applied" };
            health.reloaded(why, true, outcome);
            if let Some(store) = reopened {
                fallback = Some(previous);
                break Next::Reload(store);
            }
        };
        match next {
            Next::Stop => {
                generation.cancel();
                wait(task).await?;
                shutdown.cancel();
                return Ok(());
            }
            Next::Reload(reopened) => {
                generation.cancel();
                handover = wait(task).await?;
                store = reopened;
            }
            // The failed run is over already.
            Next::Fallback(reopened) => store = reopened,
        }
        info!("configuration changed: restarting the agent loop; the lease and installed state are kept");
    }
}

/// What the reload loop does once the running agent loop is over.
enum Next {
    Stop,
    /// Stop the running loop and start it again with the new configuration and its store.
    Reload(Arc<dyn crate::store::Store>),
    /// The loop of a new configuration failed: start it again with the previous one and its store.
    Fallback(Arc<dyn crate::store::Store>),
}

/// Whether a change needs the agent loop restarted (the log level and listen address apply without).
///
/// `[network]` never does: the agent follows its network source and switches live (peer by peer,
/// the old backend torn down) — with etcd or a local store the store's copy, which `weft network
/// apply` publishes from the file; with kube the file itself, handed to the source on reload.
/// Restarting instead would drop the old backend without its teardown (cloud routes left behind).
fn needs_restart(old: &Config, new: &Config) -> bool {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.agent.log_level = String::new();
        c.agent.log_format = Default::default();
        c.agent.listen = String::new();
        c.network = Default::default();
        c
    };
    strip(old) != strip(new)
}

/// Notices edits of the config file (its size or modification time changing), by polling: the
/// file may be replaced by a rename (editors, ConfigMaps), which breaks inotify watches.
struct FileWatch {
    path: std::path::PathBuf,
    seen: Option<(std::time::SystemTime, u64)>,
}

impl FileWatch {
    const POLL: std::time::Duration = std::time::Duration::from_secs(1);

    fn new(path: std::path::PathBuf) -> Self {
        let seen = Self::stamp(&path);
        FileWatch { path, seen }
    }

    fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    async fn changed(&mut self) {
        loop {
            tokio::time::sleep(Self::POLL).await;
            let now = Self::stamp(&self.path);
            if now != self.seen {
                self.seen = now;
                return;
            }
        }
    }
}

/// The `/healthz` `/readyz` `/metrics` server, movable to another address while running.
struct HealthServer {
    stop: Option<CancellationToken>,
}

impl HealthServer {
    async fn start(listen: &str, health: &Arc<Health>, shutdown: &CancellationToken) -> Result<Self, CommandError> {
        let stop = serve(listen, health, shutdown).await.map_err(CommandError::Runtime)?;
        Ok(HealthServer { stop })
    }

    /// Serves on `listen` from now on; on failure the old address keeps serving.
    async fn move_to(&mut self, listen: &str, health: &Arc<Health>, shutdown: &CancellationToken) {
        match serve(listen, health, shutdown).await {
            Ok(stop) => {
                if let Some(old) = std::mem::replace(&mut self.stop, stop) {
                    old.cancel();
                }
            }
            Err(e) => error!("{e}; still serving on the previous address"),
        }
    }
}

/// Binds `listen` ("" = off) and serves until the returned token (a child of `shutdown`) is cancelled.
async fn serve(
    listen: &str,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> Result<Option<CancellationToken>, String> {
    if listen.is_empty() {
        info!("health server off (agent.listen = \"\")");
        return Ok(None);
    }
    let addr = listen.parse().map_err(|_| format!("agent.listen = {listen:?}: not an address:port"))?;
    let stop = shutdown.child_token();
    health::serve(addr, health.clone(), stop.clone()).await.map_err(|e| format!("agent.listen = {listen:?}: {e}"))?;
    info!(%addr, "serving /healthz /readyz /metrics");
    Ok(Some(stop))
}

async fn cleanup() -> Result<(), CommandError> {
    let kernel = crate::kernel::netlink::NetlinkKernel::new().map_err(|e| CommandError::Runtime(e.to_string()))?;
    match crate::cleanup::cleanup(&kernel).await {
        Ok(removed) => {
            println!(
                "removed {} kernel objects, devices {:?}, masquerade table: {}, FORWARD rules: {}",
                removed.objects,
                removed.devices,
                if removed.masquerade { "removed" } else { "none" },
                if removed.forward_rules { "removed" } else { "none" }
            );
            Ok(())
        }
        Err(errors) => Err(CommandError::Runtime(format!("cleanup incomplete: {}", errors.join("; ")))),
    }
}

async fn wait(
    task: tokio::task::JoinHandle<Result<Option<crate::leasing::OwnLease>, agent::AgentError>>,
) -> Result<Option<crate::leasing::OwnLease>, CommandError> {
    match task.await {
        Ok(result) => result.map_err(|e| CommandError::Runtime(e.to_string())),
        Err(e) => Err(CommandError::Runtime(format!("agent task failed: {e}"))),
    }
}

/// Under systemd's `WatchdogSec=`, tells systemd we are alive at half the interval. The agent
/// runs on one thread: a wedged loop stops these pings too, and systemd restarts us.
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = std::time::Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

fn runtime(e: std::io::Error) -> CommandError {
    CommandError::Runtime(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::StoreKind;
    use crate::store::NetworkSource;
    use futures::StreamExt;

    #[test]
    fn network_edits_never_restart_the_loop() {
        for kind in [StoreKind::Etcd, StoreKind::Local, StoreKind::Kube] {
            let mut old = Config::default();
            old.store.kind = kind;
            let mut new = old.clone();
            new.network.cidr = "10.245.0.0/16".into();
            new.network.backend = toml::from_str("type = \"host-gw\"").unwrap();
            assert!(!needs_restart(&old, &new), "{kind:?}: the agent follows its network source");
            new.agent.iface = vec!["eth1".into()];
            assert!(needs_restart(&old, &new), "{kind:?}: other sections restart");
        }
        let old = Config::default();
        let mut listen = old.clone();
        listen.agent.listen = "127.0.0.1:1".into();
        listen.agent.log_level = "debug".into();
        assert!(!needs_restart(&old, &listen));
        let mut store = old.clone();
        store.store.kind = StoreKind::Kube;
        assert!(needs_restart(&old, &store));
    }

    /// What the reload loop does with a kube agent's edited file: the new table reaches the
    /// agent through the network source's watch, as an etcd agent hears of `weft network apply`.
    #[tokio::test]
    async fn a_reloaded_network_reaches_the_agent_without_a_restart() {
        let old = Config::default();
        let source = FileNetworkSource::new(&old.network);
        let mut watch = source.watch_network_config();
        let first = watch.next().await.unwrap().unwrap().unwrap();
        let mut new = old.clone();
        new.network.backend = toml::from_str("type = \"host-gw\"").unwrap();
        assert!(!needs_restart(&old, &new));
        assert!(source.set(&new.network));
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.unwrap();
        let switched = next.unwrap().unwrap().unwrap();
        assert_ne!(first, switched);
        assert!(switched.contains("host-gw"), "{switched}");
    }
}
