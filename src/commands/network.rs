//! `weft network apply|show|import`: the cluster network config in the store, and flannel's
//! turned into weft's `[network]`.

use clap::{Args, Subcommand};

use crate::commands::output::{print_json, OutputArgs};
use crate::commands::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::network::{import, Network, SubnetSpace};
use crate::store::{self, FileNetworkSource, NetworkSource, Store};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Publish the `[network]` table of the config file to the store.
    Apply(ApplyArgs),
    /// Print the network config held in the store.
    Show(OutputArgs),
    /// Print flannel's network config as weft's `[network]` table: kube-flannel's net-conf.json,
    /// the ConfigMap holding it (YAML or JSON; `-` reads stdin), or with `--from-flannel` the
    /// config flannel keeps in the store (`<prefix>/config` in etcd).
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// net-conf.json, kube-flannel.yml or `kubectl get configmap -o json`'s output (`-`: stdin).
    #[arg(value_name = "FILE", required_unless_present = "from_flannel", conflicts_with = "from_flannel")]
    pub file: Option<std::path::PathBuf>,
    /// Read flannel's config from the store of the config file's `[store]` (etcd: the prefix's
    /// `config` key) instead of a file.
    #[arg(long)]
    pub from_flannel: bool,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Change the CIDR or subnet length even though leases exist. Hosts keep subnets that may no
    /// longer fit the new network until they restart and lease again; their pods must be recreated.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(global: &GlobalArgs, command: NetworkCommand) -> Result<(), CommandError> {
    // Importing a file needs no weft.toml yet: it is how the first one is written.
    if let NetworkCommand::Import(ImportArgs { file: Some(file), .. }) = &command {
        return import_file(file);
    }
    let config = global.load_config(Flags::default())?.config;
    let store = store::open_with_network(&config.store, &FileNetworkSource::new(&config.network)).await?;
    match command {
        NetworkCommand::Apply(args) => {
            let network = Network::new(&config.network).map_err(|e| CommandError::Input(e.to_string()))?;
            apply(store.as_ref(), &network, args.force).await
        }
        NetworkCommand::Show(output) => show(store.as_ref(), output).await,
        NetworkCommand::Import(_) => {
            let Some(text) = store.network_config().await? else {
                return Err(CommandError::Runtime("no network config in the store to import".into()));
            };
            print_imported(&text, "the store's network config")
        }
    }
}

fn import_file(file: &std::path::Path) -> Result<(), CommandError> {
    let text =
        if file.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(file) };
    let name = file.display().to_string();
    let text = text.map_err(|e| CommandError::Input(format!("{name}: {e}")))?;
    print_imported(&text, &name)
}

fn print_imported(text: &str, source_name: &str) -> Result<(), CommandError> {
    let imported = import::import(text, source_name).map_err(|e| CommandError::Input(e.to_string()))?;
    print!("{}", import::to_toml(&imported, source_name));
    Ok(())
}

async fn apply(store: &dyn Store, network: &Network, force: bool) -> Result<(), CommandError> {
    if let Some(text) = store.network_config().await? {
        if let Ok((current, _)) = Network::from_flannel_json(&text) {
            if let Some(reshape) = network.reshape_from(&current).filter(|_| !force) {
                let leases = store.list_leases().await?.leases.len();
                if leases > 0 {
                    return Err(CommandError::Input(format!(
                        "refusing to change the network {reshape} while {leases} lease(s) exist: \
                         hosts would keep subnets outside the new layout. Use --force to do it anyway."
                    )));
                }
            }
        }
    }
    let json = network.to_flannel_json();
    store.put_network_config(&json).await?;
    println!("published {json}");
    Ok(())
}

/// `network show -o json`: the stored config as it is, and what weft reads in it.
#[derive(serde::Serialize)]
struct Shown<'a> {
    /// The store's JSON, verbatim.
    config: &'a serde_json::value::RawValue,
    /// The IPv4 side, at the top level (absent in an IPv6-only network).
    #[serde(flatten)]
    ipv4: Option<ShownSpace>,
    /// The IPv6 side of a dual-stack or IPv6-only network.
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<ShownSpace>,
    backend: &'static str,
    /// Keys of the stored config weft does not use.
    ignored: &'a [String],
}

#[derive(serde::Serialize)]
struct ShownSpace {
    network: String,
    subnet_len: u8,
    subnet_min: String,
    subnet_max: String,
    subnet_count: u64,
}

impl From<&SubnetSpace> for ShownSpace {
    fn from(space: &SubnetSpace) -> Self {
        ShownSpace {
            network: space.network.to_string(),
            subnet_len: space.subnet_len,
            subnet_min: space.min.to_string(),
            subnet_max: space.max.to_string(),
            subnet_count: space.subnet_count(),
        }
    }
}

async fn show(store: &dyn NetworkSource, output: OutputArgs) -> Result<(), CommandError> {
    let Some(text) = store.network_config().await? else {
        return Err(CommandError::Runtime("no network config in the store: run `weft network apply`".into()));
    };
    let (network, ignored) = match Network::from_flannel_json(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            println!("{text}");
            return Err(CommandError::Runtime(e.to_string()));
        }
    };
    if output.is_json() {
        let config: Box<serde_json::value::RawValue> = serde_json::from_str(&text)
            .map_err(|e| CommandError::Runtime(format!("the stored network config is not JSON: {e}")))?;
        return print_json(&Shown {
            config: &config,
            ipv4: network.ipv4.as_ref().map(ShownSpace::from),
            ipv6: network.ipv6.as_ref().map(ShownSpace::from),
            backend: network.backend.type_name(),
            ignored: &ignored,
        });
    }
    println!("{text}");
    for space in network.spaces() {
        let family = if space.network.addr().is_ipv4() { "network" } else { "IPv6 network" };
        eprintln!(
            "{family} {} · subnets /{} from {} to {} ({} in all)",
            space.network,
            space.subnet_len,
            space.min,
            space.max,
            space.subnet_count()
        );
    }
    eprintln!("backend {}", network.backend.type_name());
    if !ignored.is_empty() {
        eprintln!("ignored keys: {}", ignored.join(", "));
    }
    Ok(())
}
