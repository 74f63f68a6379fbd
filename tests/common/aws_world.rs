//! The aws-vpc tests' world: hosts in network namespaces, each an instance of a moto VPC with its
//! own metadata server, reaching each other's pods only through the VPC router
//! ([`super::vpc_router`]), which forwards what moto's route tables say. moto, the metadata
//! servers and the router live in the cluster's service namespace.
//!
//! IPv4 unless built on a dual-stack underlay ([`AwsWorld::dual_stack`], [`AwsWorld::placed_on`]):
//! then every host and the router have an IPv6 address too (2001:db8::/64), the router forwards
//! IPv6 by the tables' IPv6 routes, each VPC has an IPv6 block (and its local route in every
//! table), and [`AwsWorld::apply`] gives the network `ipv6_cidr` ([`POD_NETWORK_V6`]). On the same
//! underlay [`AwsWorld::ipv6_only`] runs an IPv6-only pod network (`enable_ipv4 = false`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use aws_sdk_ec2::Client;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft::lab::PodAddrs;
use weft::netns::Netns;

use super::cluster::{runtime_in, Cluster, Underlay, POD_NETWORK_V6};
use super::imds::{self, Imds};
use super::moto::{self, Fault, FaultProxy, Host, Moto, SeenRoute, Vpc};
use super::packets;
use super::vpc_router::{Identity, RoutedHost, RouterAddrs, VpcRouter};

pub const CIDR: &str = "10.244.0.0/16";
const MOTO_PORT: u16 = 5000;
/// The cloud backend's pace in these tests (300 s by default).
pub const RECHECK: Duration = Duration::from_secs(2);
/// EC2 calls that change something.
pub const MUTATING: [&str; 4] = ["CreateRoute", "ReplaceRoute", "DeleteRoute", "ModifyNetworkInterfaceAttribute"];

/// Where a host's instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The VPC's zone subnet `k` (0..3), which has tagged table `k`.
    Zone(usize),
    /// The VPC's subnet without a table of its own: the main table applies.
    Loose,
    /// Zone subnet `k` of a second VPC: no table of the first routes to it.
    OtherVpc(usize),
}

/// `hosts` placements, host i in zone subnet (i - 1) % 3.
fn zoned(hosts: usize) -> Vec<Placement> {
    (0..hosts).map(|i| Placement::Zone(i % 3)).collect()
}

/// The cluster, moto and the router; the router is dropped first (it reads moto), then the
/// cluster.
pub struct AwsWorld {
    router: Option<VpcRouter>,
    pub cluster: Cluster,
    pub runtime: tokio::runtime::Runtime,
    pub moto: Moto,
    /// Straight to moto: the test's own calls are not counted by the proxy.
    pub ec2: Client,
    pub vpc: Vpc,
    /// Built when a host is placed in another VPC.
    pub other_vpc: Option<Vpc>,
    /// Host i at index i - 1.
    pub nodes: Vec<(Host, Imds)>,
    pub placements: Vec<Placement>,
    /// Between the agents and moto once [`AwsWorld::with_proxy`] was called.
    pub proxy: Option<FaultProxy>,
    pub underlay: Underlay,
}

impl AwsWorld {
    /// `hosts` hosts, host i in zone subnet (i - 1) % 3.
    pub fn new(hosts: usize) -> AwsWorld {
        AwsWorld::placed(&zoned(hosts))
    }

    /// [`AwsWorld::new`] on a dual-stack underlay.
    pub fn dual_stack(hosts: usize) -> AwsWorld {
        AwsWorld::placed_on(&zoned(hosts), Underlay::DualStack)
    }

    /// [`AwsWorld::new`] on a dual-stack underlay with an IPv6-only pod network.
    pub fn ipv6_only(hosts: usize) -> AwsWorld {
        AwsWorld::placed_on(&zoned(hosts), Underlay::Ipv6Only)
    }

    /// One host per placement, host i at `placements[i - 1]`.
    pub fn placed(placements: &[Placement]) -> AwsWorld {
        AwsWorld::placed_on(placements, Underlay::Ipv4)
    }

    /// [`AwsWorld::placed`] on `underlay`.
    pub fn placed_on(placements: &[Placement], underlay: Underlay) -> AwsWorld {
        let dual = underlay.has_ipv6();
        let cluster = Cluster::with_etcd(placements.len());
        if dual {
            cluster.add_ipv6_underlay();
        }
        let service = cluster.topology.service();
        let netns = Netns::open(&service.ns).expect("the service namespace");
        let runtime = runtime_in(&netns);
        let moto = Moto::start_in(&netns, service.addr, MOTO_PORT);
        let ec2 = moto::client(&moto.endpoint);
        let build = |runtime: &tokio::runtime::Runtime| {
            let ec2 = ec2.clone();
            let built = async move {
                let vpc = moto::build_vpc(&ec2).await;
                if dual {
                    moto::associate_ipv6(&ec2, &vpc.id).await;
                }
                vpc
            };
            runtime.block_on(runtime.spawn(built)).expect("building a VPC")
        };
        let vpc = build(&runtime);
        let other_vpc = placements.iter().any(|p| matches!(p, Placement::OtherVpc(_))).then(|| build(&runtime));
        let mut nodes = Vec::new();
        let mut routed = Vec::new();
        for (i, placement) in placements.iter().enumerate() {
            let (in_vpc, subnet) = match placement {
                Placement::Zone(k) => (&vpc, vpc.subnets[*k].clone()),
                Placement::Loose => (&vpc, vpc.loose_subnet.clone()),
                Placement::OtherVpc(k) => {
                    let other = other_vpc.as_ref().expect("the other VPC");
                    (other, other.subnets[*k].clone())
                }
            };
            let launched = {
                let (ec2, subnet) = (ec2.clone(), subnet.clone());
                runtime.spawn(async move { moto::launch(&ec2, &subnet).await })
            };
            let host = runtime.block_on(launched).expect("launching an instance");
            let imds = Imds::start_at(&runtime, imds::metadata_for(&host), SocketAddr::from((service.addr, 0)));
            let node = cluster.host(i + 1);
            routed.push(RoutedHost {
                ns: node.ns,
                addr: node.addr,
                addr_v6: dual.then(|| cluster.host_v6(i + 1)),
                cloud: Identity::Aws {
                    vpc_id: in_vpc.id.clone(),
                    subnet_id: subnet,
                    instance_id: host.instance_id.clone(),
                    interface_id: host.interface_id.clone(),
                },
            });
            nodes.push((host, imds));
        }
        let addrs = RouterAddrs { v4: service.addr, v6: dual.then(|| cluster.service_v6()) };
        let router = VpcRouter::start_aws(&service.ns, addrs, runtime.handle().clone(), ec2.clone(), routed);
        AwsWorld {
            router: Some(router),
            cluster,
            runtime,
            moto,
            ec2,
            vpc,
            other_vpc,
            nodes,
            placements: placements.to_vec(),
            proxy: None,
            underlay,
        }
    }

    pub fn router(&self) -> &VpcRouter {
        self.router.as_ref().expect("the router runs")
    }

    /// Runs an EC2 call (or any future) on the runtime in the service namespace.
    pub fn call<T: Send + 'static>(&self, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        self.runtime.block_on(self.runtime.spawn(f)).expect("an EC2 call in the service namespace")
    }

    /// Agents started from now on call EC2 through a counting, fault-injecting proxy.
    pub fn with_proxy(&mut self) -> FaultProxy {
        let service = self.cluster.topology.service();
        let proxy =
            self.proxy.get_or_insert_with(|| FaultProxy::start_at(&self.runtime, &self.moto, service.addr)).clone();
        proxy
    }

    /// Agents started from now on call EC2 through a fault proxy, which answers
    /// `RouteLimitExceeded` once a table holds `cluster_routes` routes of the cluster network of
    /// the route's family (EC2 counts IPv4 and IPv6 routes apart).
    pub fn with_table_capacity(&mut self, cluster_routes: usize) {
        let proxy = self.with_proxy();
        let (ec2, table) = (self.ec2.clone(), self.vpc.tagged[0].clone());
        // The tables are alike: each has its local route of each family (IPv6 on a dual-stack
        // underlay), nothing else yet; the IPv4 ones are counted.
        let routes = self.call(async move { moto::routes(&ec2, &table).await });
        let others = routes.keys().filter(|d| d.parse::<Ipv4Net>().is_ok()).count();
        proxy.inject(Fault::Capacity { routes: others + cluster_routes });
    }

    /// aws-vpc over the tagged tables, with `extra` keys.
    pub fn aws_vpc(extra: &str) -> String {
        format!(
            "type = \"aws-vpc\"\nroute_table_tag = \"{}={}\"\nrecheck = \"{}s\"\n{extra}",
            moto::TAG_KEY,
            moto::TAG_VALUE,
            RECHECK.as_secs()
        )
    }

    /// Writes the config with `backend` as `[network.backend]` and applies it to the store; on a
    /// dual-stack underlay the network has `ipv6_cidr` too, and no IPv4 keys for IPv6-only pods.
    pub fn apply(&self, backend: &str) {
        let ipv4 = if self.underlay.pods_ipv4() {
            format!("cidr = \"{CIDR}\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.20.0\"\n")
        } else {
            String::new()
        };
        let ipv6 = self.underlay.network_lines();
        let network = format!("{ipv4}{ipv6}[network.backend]\n{backend}");
        self.cluster.write_config(&network);
        self.cluster.weft_ok(&["network", "apply"]);
    }

    /// Applies `backend` and starts every host's agent.
    pub fn start_agents_with(&mut self, backend: &str) {
        self.apply(backend);
        for i in 1..=self.nodes.len() {
            self.start_agent(i);
        }
    }

    /// aws-vpc over the tagged tables with `extra` keys, every host's agent started.
    pub fn start_agents(&mut self, extra: &str) {
        self.start_agents_with(&AwsWorld::aws_vpc(extra));
    }

    /// Host i's agent, with its own metadata server and EC2 (the proxy if there is one) from
    /// its environment: the store's network config never names endpoints.
    pub fn start_agent(&mut self, i: usize) {
        let mut env = imds::node_env(&self.nodes[i - 1].1).to_vec();
        let endpoint = self.proxy.as_ref().map_or(&self.moto.endpoint, |p| &p.endpoint);
        env.push(("WEFT_CLOUD__AWS_ENDPOINT_URL", endpoint.as_str()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, *v)).collect();
        self.cluster.start_agent_with_env(i, &[], &env);
    }

    /// Every host's subnet, once each agent wrote subnet.env, and a pod behind each.
    pub fn pods(&mut self) -> (Vec<Ipv4Net>, Vec<PodAddrs>) {
        let infos: Vec<_> = (1..=self.nodes.len()).map(|i| self.cluster.wait_subnet(i)).collect();
        let pods = (1..=self.nodes.len()).map(|i| self.cluster.make_pod(i, infos[i - 1])).collect();
        (infos.iter().map(|info| info.ipv4().expect("an IPv4 subnet")).collect(), pods)
    }

    /// Each host's IPv6 subnet, read from its subnet.env, and its pod's IPv6 address: call after
    /// [`AwsWorld::pods`] (it gives the pods made there an address of that subnet).
    pub fn pods_v6(&self) -> (Vec<Ipv6Net>, Vec<Ipv6Addr>) {
        (1..=self.nodes.len()).map(|i| self.cluster.add_pod_ipv6(i)).unzip()
    }

    /// IPv6-only pods: every host's IPv6 subnet, once each agent wrote a subnet.env naming one,
    /// and an IPv6-only pod behind each (its address).
    pub fn ipv6_only_pods(&mut self) -> (Vec<Ipv6Net>, Vec<Ipv6Addr>) {
        let envs: Vec<_> = (1..=self.nodes.len()).map(|i| self.cluster.wait_subnet_v6(i)).collect();
        (1..=self.nodes.len()).map(|i| self.cluster.make_ipv6_only_pod(i, envs[i - 1].mtu)).unzip()
    }

    /// Every route of `table` (IPv4 and IPv6), by destination.
    pub fn routes(&self, table: &str) -> BTreeMap<String, SeenRoute> {
        let (ec2, table) = (self.ec2.clone(), table.to_string());
        self.call(async move { moto::routes(&ec2, &table).await })
    }

    /// Whether `table` routes `cidr` (IPv4 or IPv6) to host i's interface.
    pub fn routes_to(&self, table: &str, cidr: impl Into<IpNet>, i: usize) -> bool {
        let cidr = cidr.into().to_string();
        self.routes(table).get(&cidr).is_some_and(|r| r.target == self.nodes[i - 1].0.interface_id)
    }

    /// Routes of `table` into `network` (an IPv4 or IPv6 pod network): destination → target.
    pub fn routes_within(&self, table: &str, network: IpNet) -> Vec<(IpNet, String)> {
        self.routes(table)
            .into_iter()
            .filter_map(|(d, r)| d.parse::<IpNet>().ok().filter(|d| network.contains(d)).map(|d| (d, r.target)))
            .collect()
    }

    /// Routes of the cluster's IPv4 network in `table`: destination → target.
    pub fn cluster_routes(&self, table: &str) -> Vec<(Ipv4Net, String)> {
        let cidr: IpNet = CIDR.parse().unwrap();
        let v4 = |d: IpNet| match d {
            IpNet::V4(d) => Some(d),
            IpNet::V6(_) => None,
        };
        self.routes_within(table, cidr).into_iter().filter_map(|(d, t)| Some((v4(d)?, t))).collect()
    }

    /// weft's vxlan routes on host i.
    pub fn overlay_routes(&self, i: usize) -> BTreeSet<Ipv4Net> {
        packets::overlay_routes(&self.cluster, i)
    }

    /// weft's kernel routes (`proto 87`) on host i.
    pub fn kernel_routes(&self, i: usize) -> usize {
        let routes = self.cluster.ip_json(&self.cluster.host(i).ns, &["-4", "route", "show", "proto", "87"]);
        routes.as_array().map_or(0, Vec::len)
    }

    pub fn lease_types(&self) -> Vec<String> {
        let text = self.cluster.weft_ok(&["leases", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&text).expect("leases as JSON");
        list.as_array().expect("a list").iter().map(|l| l["backend_type"].as_str().unwrap_or("").to_string()).collect()
    }

    pub fn ready(&self, i: usize) -> bool {
        self.cluster.readyz(i) == Some(200)
    }

    /// Host i's `/readyz`: status and body.
    pub fn readyz_body(&self, i: usize) -> (u16, String) {
        self.cluster.agent_get(i, "/readyz").unwrap_or((0, String::new()))
    }

    /// Host i's `/metrics`.
    pub fn metrics(&self, i: usize) -> String {
        self.cluster.agent_get(i, "/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// Host i's EC2 calls of `operation` (`weft_cloud_api_calls_total`), all outcomes.
    /// Passes agent `i`'s cloud engine made, whatever they read (EC2, or the leader's view).
    pub fn cloud_passes(&self, i: usize) -> f64 {
        self.metrics(i)
            .lines()
            .filter(|l| l.starts_with("weft_cloud_passes_total{provider=\"aws\","))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn ec2_calls(&self, i: usize, operation: &str) -> f64 {
        let prefix = format!("weft_cloud_api_calls_total{{provider=\"aws\",operation=\"{operation}\",");
        self.metrics(i)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Mutating calls through the proxy since its counts were reset.
    pub fn mutating_calls(&self) -> usize {
        let counts = self.proxy.as_ref().expect("the proxy").counts();
        MUTATING.iter().map(|a| counts.get(*a).copied().unwrap_or(0)).sum()
    }

    /// Polls `check` every 100 ms; on timeout, panics with what [`AwsWorld::state`] shows.
    pub fn wait(&self, what: &str, within: Duration, check: impl FnMut() -> bool) -> Duration {
        super::wait::until_every(what, within, Duration::from_millis(100), check, || self.state())
    }

    /// What a failed wait shows: each table's cluster routes, each host's overlay routes and
    /// the end of its agent's log.
    pub fn state(&self) -> String {
        let mut out = String::new();
        let tables = self.vpc.tagged.iter().chain([&self.vpc.main, &self.vpc.untagged]);
        for table in tables.chain(self.other_vpc.iter().flat_map(|v| &v.tagged)) {
            out.push_str(&format!("table {table}: {:?}\n", self.cluster_routes(table)));
            if self.underlay.has_ipv6() {
                let v6 = self.routes_within(table, POD_NETWORK_V6.parse().unwrap());
                out.push_str(&format!("table {table} IPv6: {v6:?}\n"));
            }
        }
        for i in 1..=self.nodes.len() {
            let log = self.cluster.agent_log(i);
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            out.push_str(&format!(
                "h{i} overlay {:?}\n---- h{i} log (newest first) ----\n{}\n",
                self.overlay_routes(i),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for AwsWorld {
    fn drop(&mut self) {
        self.router.take();
    }
}
