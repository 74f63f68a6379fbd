//! The gce tests' world: hosts in network namespaces, each an instance of the GCE test server
//! with its own metadata server, reaching each other's pods only through the VPC router
//! ([`super::vpc_router`]), which forwards what the network's routes say. The API and metadata
//! servers and the router live in the cluster's service namespace.
//!
//! IPv4 unless built on a dual-stack underlay ([`GceWorld::dual_stack`], [`GceWorld::on`]): then
//! every host and the router have an IPv6 address too (2001:db8::/64), the router forwards IPv6
//! by the network's IPv6 routes, the instances are dual-stack in the API, and [`GceWorld::apply`]
//! gives the network `ipv6_cidr` ([`super::cluster::POD_NETWORK_V6`]). On the same underlay
//! [`GceWorld::ipv6_only`] runs an IPv6-only pod network (`enable_ipv4 = false`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use weft::lab::PodAddrs;
use weft::netns::Netns;

use super::cluster::{Cluster, Underlay};
use super::gce_api::GceApiServer;
use super::gce_metadata::MetadataServer;
use super::packets;
use super::vpc_router::{Identity, RoutedHost, RouterAddrs, VpcRouter};

pub const ZONE: &str = "europe-west1-b";
pub const NETWORK: &str = "default";
/// A second network of the project: no route of `default` reaches its instances.
pub const OTHER_NETWORK: &str = "other";
/// The cloud backend's pace in these tests (300 s by default).
pub const RECHECK: Duration = Duration::from_secs(2);

/// The cluster, the API and metadata servers and the router; the router is dropped first.
pub struct GceWorld {
    router: Option<VpcRouter>,
    pub cluster: Cluster,
    pub api: GceApiServer,
    /// Host i's at index i - 1.
    pub metadata: Vec<MetadataServer>,
    /// Host i's instance name and network at index i - 1.
    pub instances: Vec<(String, String)>,
    pub underlay: Underlay,
}

impl GceWorld {
    /// One host per `(instance name, network)`, host i at index i - 1; the project has both
    /// [`NETWORK`] and [`OTHER_NETWORK`].
    pub fn new(project: &str, instances: &[(&str, &str)]) -> GceWorld {
        GceWorld::on(project, instances, Underlay::Ipv4)
    }

    /// [`GceWorld::new`] on a dual-stack underlay.
    pub fn dual_stack(project: &str, instances: &[(&str, &str)]) -> GceWorld {
        GceWorld::on(project, instances, Underlay::DualStack)
    }

    /// [`GceWorld::new`] on a dual-stack underlay with an IPv6-only pod network.
    pub fn ipv6_only(project: &str, instances: &[(&str, &str)]) -> GceWorld {
        GceWorld::on(project, instances, Underlay::Ipv6Only)
    }

    /// [`GceWorld::new`] on `underlay`.
    pub fn on(project: &str, instances: &[(&str, &str)], underlay: Underlay) -> GceWorld {
        let dual = underlay.has_ipv6();
        let cluster = Cluster::with_etcd(instances.len());
        if dual {
            cluster.add_ipv6_underlay();
        }
        let service = cluster.topology.service();
        let netns = Netns::open(&service.ns).expect("the service namespace");
        let api = GceApiServer::start_in(project, &netns, service.addr);
        api.api.add_network(NETWORK);
        api.api.add_network(OTHER_NETWORK);
        let mut metadata = Vec::new();
        let mut routed = Vec::new();
        for (i, (name, network)) in instances.iter().enumerate() {
            let host = cluster.host(i + 1);
            let ip = host.addr.to_string();
            api.api.add_instance(ZONE, name, network, &ip);
            let addr_v6 = dual.then(|| cluster.host_v6(i + 1));
            if let Some(v6) = addr_v6 {
                api.api.set_instance_ipv6(ZONE, name, &v6.to_string());
            }
            let server = MetadataServer::start_in(project, ZONE, name, network, &ip, &netns, service.addr);
            api.api.allow_token(&server.token, name);
            metadata.push(server);
            let cloud =
                Identity::Gce { network: api.api.network_link(network), instance: api.api.instance_link(ZONE, name) };
            routed.push(RoutedHost { ns: host.ns, addr: host.addr, addr_v6, cloud });
        }
        let addrs = RouterAddrs { v4: service.addr, v6: dual.then(|| cluster.service_v6()) };
        let router = VpcRouter::start_gce(&service.ns, addrs, api.api.clone(), routed);
        let instances = instances.iter().map(|(n, net)| (n.to_string(), net.to_string())).collect();
        GceWorld { router: Some(router), cluster, api, metadata, instances, underlay }
    }

    pub fn router(&self) -> &VpcRouter {
        self.router.as_ref().expect("the router runs")
    }

    pub fn instance(&self, i: usize) -> &str {
        &self.instances[i - 1].0
    }

    pub fn instance_link(&self, i: usize) -> String {
        self.api.api.instance_link(ZONE, self.instance(i))
    }

    /// Writes the config (gce, `extra` backend keys) and applies it to the store; on a dual-stack
    /// underlay the network has `ipv6_cidr` too, and no IPv4 keys for IPv6-only pods.
    pub fn apply(&self, extra: &str) {
        let ipv4 = if self.underlay.pods_ipv4() {
            "cidr = \"10.244.0.0/16\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.20.0\"\n"
        } else {
            ""
        };
        let ipv6 = self.underlay.network_lines();
        let network =
            format!("{ipv4}{ipv6}[network.backend]\ntype = \"gce\"\nrecheck = \"{}s\"\n{extra}\n", RECHECK.as_secs());
        self.cluster.write_config(&network);
        self.cluster.weft_ok(&["network", "apply"]);
    }

    /// Host i's agent, with its metadata server and the API from its environment: the store's
    /// network config never names endpoints.
    pub fn start_agent(&mut self, i: usize) {
        let env = [
            ("GCE_METADATA_HOST", self.metadata[i - 1].host.clone()),
            ("WEFT_CLOUD__GCE_ENDPOINT", self.api.endpoint.clone()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.cluster.start_agent_with_env(i, &[], &env);
    }

    /// Host i's agent, which asks for `subnet`: the subnet.env of a "previous run" names it.
    pub fn start_agent_asking(&mut self, i: usize, subnet: &str) {
        let gateway = subnet.replacen(".0/", ".1/", 1);
        std::fs::write(self.cluster.subnet_file(i), format!("FLANNEL_SUBNET={gateway}\n")).expect("subnet.env");
        self.start_agent(i);
    }

    /// Every host's subnet, once each agent wrote subnet.env, and a pod behind each.
    pub fn pods(&mut self) -> (Vec<Ipv4Net>, Vec<PodAddrs>) {
        let hosts = self.instances.len();
        let infos: Vec<_> = (1..=hosts).map(|i| self.cluster.wait_subnet(i)).collect();
        let pods = (1..=hosts).map(|i| self.cluster.make_pod(i, infos[i - 1])).collect();
        (infos.iter().map(|info| info.ipv4().expect("an IPv4 subnet")).collect(), pods)
    }

    /// Each host's IPv6 subnet, read from its subnet.env, and its pod's IPv6 address: call after
    /// [`GceWorld::pods`] (it gives the pods made there an address of that subnet).
    pub fn pods_v6(&self) -> (Vec<Ipv6Net>, Vec<Ipv6Addr>) {
        (1..=self.instances.len()).map(|i| self.cluster.add_pod_ipv6(i)).unzip()
    }

    /// IPv6-only pods: every host's IPv6 subnet, once each agent wrote a subnet.env naming one,
    /// and an IPv6-only pod behind each (its address).
    pub fn ipv6_only_pods(&mut self) -> (Vec<Ipv6Net>, Vec<Ipv6Addr>) {
        let hosts = self.instances.len();
        let envs: Vec<_> = (1..=hosts).map(|i| self.cluster.wait_subnet_v6(i)).collect();
        (1..=hosts).map(|i| self.cluster.make_ipv6_only_pod(i, envs[i - 1].mtu)).unzip()
    }

    /// IPv4 destinations the routes of host i's network send to an instance, i's own left out.
    pub fn carried(&self, subnets: &[Ipv4Net], i: usize) -> BTreeSet<Ipv4Net> {
        let network = self.api.api.network_link(&self.instances[i - 1].1);
        let tail = |link: &str| link.rsplit("/networks/").next().map(str::to_string);
        self.api
            .api
            .routes()
            .values()
            .filter(|r| r["network"].as_str().and_then(tail) == tail(&network))
            .filter(|r| r["nextHopInstance"].is_string())
            .filter_map(|r| r["destRange"].as_str()?.parse().ok())
            .filter(|d| *d != subnets[i - 1])
            .collect()
    }

    pub fn ready(&self, i: usize) -> bool {
        self.cluster.readyz(i) == Some(200)
    }

    /// Host i's `/readyz`: status and body.
    pub fn readyz_body(&self, i: usize) -> (u16, String) {
        self.cluster.agent_get(i, "/readyz").unwrap_or((0, String::new()))
    }

    /// The value of the metric line starting with `name` (labels included) on host i; 0 if absent.
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        let (_, body) = self.cluster.agent_get(i, "/metrics").unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `check` every 100 ms; on timeout, panics with the routes, each host's overlay routes
    /// and the end of its agent's log.
    pub fn wait(&self, what: &str, within: Duration, check: impl FnMut() -> bool) -> Duration {
        let state = || {
            let mut out = format!("routes: {:?}\n", self.api.api.routes().keys().collect::<Vec<_>>());
            for i in 1..=self.instances.len() {
                let log = self.cluster.agent_log(i);
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                out.push_str(&format!(
                    "h{i} overlay {:?}\n---- h{i} log (newest first) ----\n{}\n",
                    packets::overlay_routes(&self.cluster, i),
                    tail.join("\n")
                ));
            }
            out
        };
        super::wait::until_every(what, within, Duration::from_millis(100), check, state)
    }
}

impl Drop for GceWorld {
    fn drop(&mut self) {
        self.router.take();
    }
}
