//! `weft agent`: runs the agent until SIGTERM/SIGINT; SIGHUP re-reads the configuration.

use std::sync::Arc;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent;
use crate::cli::{CommandError, GlobalArgs};
use crate::config::{Config, Flags};
use crate::health::{self, Health};
use crate::store;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Address other hosts use to reach this one (overrides agent.public_ip).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,
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
    /// Remove everything weft installed on this host (devices, routes, neighbours, FDB entries,
    /// nexthops, the masquerade table) and exit. The lease is left to expire.
    #[arg(long)]
    pub cleanup: bool,
}

impl AgentArgs {
    fn flags(&self) -> Flags {
        let mut flags = Flags::default();
        if let Some(ip) = &self.public_ip {
            flags.set("agent.public_ip", ip.as_str());
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
        flags
    }
}

pub async fn run(global: &GlobalArgs, args: AgentArgs) -> Result<(), CommandError> {
    if args.cleanup {
        return cleanup().await;
    }
    let mut config = global.load_config(args.flags())?.config;
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let _server = start_health_server(&config, &health, &shutdown).await?;
    let _watchdog = start_watchdog();
    let mut terminate = signal(SignalKind::terminate()).map_err(runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(runtime)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(runtime)?;
    loop {
        let store = store::open_with_network(&config.store, Some(&config.network)).await?;
        let generation = shutdown.child_token();
        let mut task = tokio::spawn(agent::run(config.clone(), store, health.clone(), generation.clone()));
        let next = loop {
            tokio::select! {
                finished = &mut task => {
                    return match finished {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(CommandError::Runtime(e.to_string())),
                        Err(e) => Err(CommandError::Runtime(format!("agent task failed: {e}"))),
                    };
                }
                _ = terminate.recv() => break None,
                _ = interrupt.recv() => break None,
                _ = hangup.recv() => match global.load_config(args.flags()) {
                    Ok(loaded) if loaded.config == config => info!("SIGHUP: configuration unchanged"),
                    Ok(loaded) => break Some(loaded.config),
                    Err(e) => error!(error = %e, "SIGHUP: keeping the running configuration"),
                },
            }
        };
        generation.cancel();
        wait(task).await?;
        match next {
            None => {
                shutdown.cancel();
                return Ok(());
            }
            Some(new) => {
                warn_host_only_changes(&config, &new);
                info!("SIGHUP: restarting the agent loop with the new configuration; the lease is kept");
                config = new;
            }
        }
    }
}

async fn cleanup() -> Result<(), CommandError> {
    let kernel = crate::kernel::netlink::NetlinkKernel::new().map_err(|e| CommandError::Runtime(e.to_string()))?;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(runtime)?;
    tokio::spawn(connection);
    match crate::cleanup::cleanup(&kernel, &handle).await {
        Ok(removed) => {
            println!(
                "removed {} kernel objects, devices {:?}, masquerade table: {}",
                removed.objects,
                removed.devices,
                if removed.masquerade { "removed" } else { "none" }
            );
            Ok(())
        }
        Err(errors) => Err(CommandError::Runtime(format!("cleanup incomplete: {}", errors.join("; ")))),
    }
}

async fn wait(task: tokio::task::JoinHandle<Result<(), agent::AgentError>>) -> Result<(), CommandError> {
    match task.await {
        Ok(result) => result.map_err(|e| CommandError::Runtime(e.to_string())),
        Err(e) => Err(CommandError::Runtime(format!("agent task failed: {e}"))),
    }
}

fn warn_host_only_changes(old: &Config, new: &Config) {
    if old.agent.listen != new.agent.listen {
        warn!("agent.listen changed: it takes effect at the next start");
    }
}

async fn start_health_server(
    config: &Config,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, CommandError> {
    if config.agent.listen.is_empty() {
        return Ok(None);
    }
    let addr =
        config.agent.listen.parse().map_err(|_| {
            CommandError::Input(format!("agent.listen = {:?}: not an address:port", config.agent.listen))
        })?;
    let server = health::serve(addr, health.clone(), shutdown.clone())
        .await
        .map_err(|e| CommandError::Runtime(format!("agent.listen = {:?}: {e}", config.agent.listen)))?;
    info!(%addr, "serving /healthz /readyz /metrics");
    Ok(Some(server))
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
