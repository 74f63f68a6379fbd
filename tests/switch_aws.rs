//! Switching live from host-gw to aws-vpc and back on 3 hosts in network namespaces, with a real
//! etcd, moto as EC2 and one IMDSv2 server per node — all in the cluster's service namespace, so
//! the agents reach them over the underlay — and the VPC's router there too: on aws-vpc the pods
//! reach each other through the route tables. Nothing of aws-vpc may stay behind: no route of the
//! cluster network in any route table once the cluster is back on host-gw. Needs root and moto:
//! fails, never skips, without them.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use common::cluster::{runtime_in, Cluster};
use common::imds::{self, Imds};
use common::moto::{self, Host, Moto};
use common::vpc_router::{Identity, RoutedHost, VpcRouter};
use ipnet::Ipv4Net;
use weft::lab::PodAddrs;
use weft::netns::Netns;

const HOSTS: usize = 3;
const CIDR: &str = "10.244.0.0/16";
const MOTO_PORT: u16 = 5000;
/// The aws-vpc backend's pace here (300 s by default).
const RECHECK: Duration = Duration::from_secs(2);
/// Someone else's route in our tables, outside the cluster network: never weft's to touch.
const OUTSIDE: &str = "192.168.50.0/24";
/// The underlay is the VPC: each instance's private IP is its host's underlay address.
const VPC_CIDR: &str = "198.51.100.0/24";
const PAIRS: [(usize, usize); 3] = [(1, 2), (2, 3), (3, 1)];

fn network(backend: &str) -> String {
    format!("cidr = \"{CIDR}\"\nsubnet_min = \"10.244.1.0\"\nsubnet_max = \"10.244.9.0\"\n[network.backend]\n{backend}")
}

/// EC2 as the agents see it, in the service namespace: moto, the VPC built in it and the nodes'
/// metadata servers. Dropping it kills moto and stops the metadata servers (they run on
/// `runtime`).
struct Cloud {
    /// Its threads live in the service namespace: the test's EC2 calls and the metadata servers.
    runtime: tokio::runtime::Runtime,
    moto: Moto,
    ec2: Client,
    vpc: String,
    /// The one subnet, the underlay.
    subnet: String,
    /// Tagged for the cluster: the agents write these. The first is the subnet's own table.
    tagged: Vec<String>,
    /// Untagged and the VPC's main table: never written.
    untouched: Vec<String>,
    /// Node i at index i - 1: its instance (private IP = host i's underlay address) and IMDS.
    nodes: Vec<(Host, Imds)>,
}

impl Cloud {
    fn start(cluster: &Cluster) -> Cloud {
        let service = cluster.topology.service();
        let netns = Netns::open(&service.ns).expect("the service namespace");
        let runtime = runtime_in(&netns);
        let moto = Moto::start_in(&netns, service.addr, MOTO_PORT);
        let ec2 = moto::client(&moto.endpoint);
        let addrs: Vec<Ipv4Addr> = (1..=HOSTS).map(|i| cluster.host(i).addr).collect();
        let built = {
            let ec2 = ec2.clone();
            runtime.block_on(runtime.spawn(async move { build_vpc(&ec2, &addrs).await })).expect("building the VPC")
        };
        let (vpc, subnet, tagged, untouched, hosts) = built;
        let nodes = hosts
            .into_iter()
            .map(|host| {
                let imds = Imds::start_at(&runtime, imds::metadata_for(&host), SocketAddr::from((service.addr, 0)));
                (host, imds)
            })
            .collect();
        Cloud { runtime, moto, ec2, vpc, subnet, tagged, untouched, nodes }
    }

    /// Runs `f` on the runtime's threads, inside the service namespace.
    fn call<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.runtime.block_on(self.runtime.spawn(f)).expect("an EC2 call in the service namespace")
    }

    /// Every route of every table in the VPC: (table, destination, target).
    fn all_routes(&self) -> Vec<(String, String, String)> {
        let (ec2, vpc) = (self.ec2.clone(), self.vpc.clone());
        self.call(async move {
            let out = ec2
                .describe_route_tables()
                .filters(Filter::builder().name("vpc-id").values(vpc).build())
                .send()
                .await
                .expect("DescribeRouteTables");
            let mut routes = Vec::new();
            for table in out.route_tables() {
                let id = table.route_table_id().unwrap_or_default();
                for route in table.routes() {
                    let Some(destination) = route.destination_cidr_block() else { continue };
                    let target =
                        route.network_interface_id().or(route.gateway_id()).or(route.instance_id()).unwrap_or("?");
                    routes.push((id.to_string(), destination.to_string(), target.to_string()));
                }
            }
            routes
        })
    }

    /// The routes of the cluster network, in any table of the VPC.
    fn cluster_routes(&self) -> BTreeSet<(String, String, String)> {
        let cidr: Ipv4Net = CIDR.parse().unwrap();
        self.all_routes()
            .into_iter()
            .filter(|(_, destination, _)| destination.parse::<Ipv4Net>().is_ok_and(|d| cidr.contains(&d)))
            .collect()
    }

    /// What aws-vpc must show with every node on it: each node's subnet to the node's interface
    /// in every tagged table, nothing else of the cluster network anywhere.
    fn expected_routes(&self, subnets: &[Ipv4Net]) -> BTreeSet<(String, String, String)> {
        self.tagged
            .iter()
            .flat_map(|table| {
                subnets
                    .iter()
                    .zip(&self.nodes)
                    .map(|(subnet, (host, _))| (table.clone(), subnet.to_string(), host.interface_id.clone()))
            })
            .collect()
    }

    /// The foreign route is still in every tagged table, untouched.
    fn outside_routes_kept(&self) -> bool {
        let routes = self.all_routes();
        self.tagged.iter().all(|table| routes.iter().any(|(t, d, target)| t == table && d == OUTSIDE && target != "?"))
    }

    fn source_dest_check(&self, eni: &str) -> Option<bool> {
        let (ec2, eni) = (self.ec2.clone(), eni.to_string());
        self.call(async move { moto::source_dest_check(&ec2, &eni).await })
    }
}

/// The VPC: one subnet (the underlay) associated with a tagged table, a second tagged table, an
/// untagged one, one instance per host at the host's address, and a foreign route in each
/// tagged table. Returns (vpc, subnet, tagged, untouched tables, hosts).
async fn build_vpc(ec2: &Client, addrs: &[Ipv4Addr]) -> (String, String, Vec<String>, Vec<String>, Vec<Host>) {
    let out = ec2.create_vpc().cidr_block(VPC_CIDR).send().await.expect("CreateVpc");
    let vpc = out.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
    let subnet = moto::create_subnet(ec2, &vpc, VPC_CIDR, &format!("{}a", moto::REGION)).await;
    let mut tagged = Vec::new();
    for zone in ["a", "b"] {
        tagged.push(moto::create_table(ec2, &vpc, &[(moto::TAG_KEY, moto::TAG_VALUE), ("zone", zone)]).await);
    }
    ec2.associate_route_table()
        .route_table_id(&tagged[0])
        .subnet_id(&subnet)
        .send()
        .await
        .expect("AssociateRouteTable");
    let untagged = moto::create_table(ec2, &vpc, &[]).await;
    let main = moto::main_table(ec2, &vpc).await;
    let mut hosts = Vec::new();
    for addr in addrs {
        let host = moto::launch_at(ec2, &subnet, Some(*addr)).await;
        assert_eq!(host.ip, *addr, "moto did not give the instance the private IP asked for");
        hosts.push(host);
    }
    // Made after the instances: moto gives it a free address of the subnet.
    let spare = ec2.create_network_interface().subnet_id(&subnet).send().await.expect("CreateNetworkInterface");
    let spare = spare.network_interface().and_then(|n| n.network_interface_id()).expect("eni").to_string();
    for table in &tagged {
        moto::create_route(ec2, table, OUTSIDE, &spare).await;
    }
    (vpc, subnet, tagged, vec![untagged, main], hosts)
}

/// The cluster and its cloud; the VPC's router goes first (it reads moto), then the cluster
/// (agents, namespaces), then moto and IMDS.
struct World {
    _router: VpcRouter,
    cluster: Cluster,
    cloud: Cloud,
}

impl World {
    fn new() -> World {
        let cluster = Cluster::with_etcd(HOSTS);
        let cloud = Cloud::start(&cluster);
        // The hosts reach each other's pods on aws-vpc only as the tables say.
        let service = cluster.topology.service();
        let hosts = (1..=HOSTS)
            .map(|i| {
                let (node, host) = (&cloud.nodes[i - 1].0, cluster.host(i));
                let cloud = Identity::Aws {
                    vpc_id: cloud.vpc.clone(),
                    subnet_id: cloud.subnet.clone(),
                    instance_id: node.instance_id.clone(),
                    interface_id: node.interface_id.clone(),
                };
                RoutedHost { ns: host.ns, addr: host.addr, addr_v6: None, cloud }
            })
            .collect();
        let (runtime, ec2) = (cloud.runtime.handle().clone(), cloud.ec2.clone());
        let router = VpcRouter::start_aws(&service.ns, service.addr, runtime, ec2, hosts);
        World { _router: router, cluster, cloud }
    }

    /// Each agent gets moto as its EC2 endpoint from its own environment: the shared config
    /// file is edited during the test, and the store's network config never names endpoints.
    fn start_agents(&mut self) {
        let ec2 = self.cloud.moto.endpoint.clone();
        for i in 1..=HOSTS {
            let mut env = imds::node_env(&self.cloud.nodes[i - 1].1).to_vec();
            env.push(("WEFT_CLOUD__AWS_ENDPOINT_URL", ec2.as_str()));
            self.cluster.start_agent_with_env(i, &[], &env);
        }
    }

    /// Writes the config with `backend` and applies it to the store.
    fn apply(&self, backend: &str) {
        self.cluster.write_config(&network(backend));
        self.cluster.weft_ok(&["network", "apply"]);
    }

    fn lease_types(&self) -> Vec<String> {
        let text = self.cluster.weft_ok(&["leases", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&text).expect("leases as JSON");
        list.as_array().expect("a list").iter().map(|l| l["backend_type"].as_str().unwrap_or("").to_string()).collect()
    }

    /// weft's kernel routes (`proto 87`) in host i's namespace.
    fn kernel_routes(&self, i: usize) -> Vec<serde_json::Value> {
        let routes = self.cluster.ip_json(&self.cluster.host(i).ns, &["-4", "route", "show", "proto", "87"]);
        routes.as_array().expect("a list").clone()
    }

    fn subnets(&self) -> Vec<Ipv4Net> {
        (1..=HOSTS)
            .map(|i| {
                weft::lab::pods::read_subnet_env(&self.cluster.subnet_file(i))
                    .and_then(|s| s.ipv4())
                    .expect("subnet.env")
            })
            .collect()
    }

    /// Polls `check` until it holds; panics naming `what`, with the moto log (the Cluster's Drop
    /// prints the agents' logs).
    fn wait_until(&self, what: &str, within: Duration, check: impl FnMut() -> bool) -> Duration {
        let moto_tail = || {
            let log = self.cloud.moto.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            format!("---- moto log (last lines, newest first) ----\n{}", tail.join("\n"))
        };
        common::wait::until_every(what, within, Duration::from_millis(200), check, moto_tail)
    }

    fn pings(&self, pods: &[PodAddrs], within: Duration) {
        for (from, to) in PAIRS {
            let to = pods[to - 1].pod.addr();
            assert!(self.cluster.wait_ping(&self.cluster.pod_ns(from), to, within), "pod h{from} cannot reach {to}");
        }
    }
}

#[test]
fn host_gw_to_aws_vpc_and_back_leaves_no_cloud_routes() {
    let mut world = World::new();
    world.apply("type = \"host-gw\"");
    world.start_agents();
    let infos: Vec<_> = (1..=HOSTS).map(|i| world.cluster.wait_subnet(i)).collect();
    let subnets: Vec<Ipv4Net> = infos.iter().map(|info| info.ipv4().expect("an IPv4 subnet")).collect();
    let pods: Vec<PodAddrs> = (1..=HOSTS).map(|i| world.cluster.make_pod(i, infos[i - 1])).collect();
    world.pings(&pods, Duration::from_secs(10));
    world.wait_until("host-gw routes on every host", Duration::from_secs(10), || {
        (1..=HOSTS).all(|i| world.kernel_routes(i).len() == HOSTS - 1)
    });
    assert!(
        world.cloud.cluster_routes().is_empty(),
        "EC2 routes before aws-vpc ran: {:?}",
        world.cloud.cluster_routes()
    );

    // host-gw → aws-vpc: every node's subnet to its interface in every tagged table, no kernel
    // routes left (the VPC routes pod traffic; there is nothing for the kernel to do).
    let aws_vpc = format!(
        "type = \"aws-vpc\"\nroute_table_tag = \"{}={}\"\nrecheck = \"{}s\"",
        moto::TAG_KEY,
        moto::TAG_VALUE,
        RECHECK.as_secs()
    );
    world.apply(&aws_vpc);
    let to_aws = world.wait_until("leases on aws-vpc", Duration::from_secs(30), || {
        world.lease_types().iter().all(|t| t == "aws-vpc")
    });
    let expected = world.cloud.expected_routes(&subnets);
    let routes_in = world.wait_until("each node's route in every tagged table", Duration::from_secs(60), || {
        world.cloud.cluster_routes() == expected
    });
    let kernel_clear = world.wait_until("host-gw's kernel routes removed", Duration::from_secs(20), || {
        (1..=HOSTS).all(|i| world.kernel_routes(i).is_empty())
    });
    world.wait_until("agents ready on aws-vpc", Duration::from_secs(20), || {
        (1..=HOSTS).all(|i| world.cluster.readyz(i) == Some(200))
    });
    for (host, _) in &world.cloud.nodes {
        assert_eq!(world.cloud.source_dest_check(&host.interface_id), Some(false), "{}", host.interface_id);
    }
    assert!(world.cloud.outside_routes_kept(), "a route outside the cluster network was touched");
    // Real packets on aws-vpc: through the VPC's router, as the tables say.
    world.pings(&pods, Duration::from_secs(10));
    let untouched: Vec<_> =
        world.cloud.cluster_routes().into_iter().filter(|(t, _, _)| world.cloud.untouched.contains(t)).collect();
    assert!(untouched.is_empty(), "untagged or main table written: {untouched:?}");
    assert_eq!(world.subnets(), subnets, "subnets changed on the way to aws-vpc");
    // Steady on aws-vpc for a few rechecks (and past the agents' config file poll): the routes
    // stay as they are, no kernel route comes back.
    std::thread::sleep(RECHECK * 2);
    assert_eq!(world.cloud.cluster_routes(), expected, "cloud routes changed on a steady aws-vpc cluster");
    for i in 1..=HOSTS {
        assert_eq!(world.kernel_routes(i), Vec::<serde_json::Value>::new(), "h{i}: kernel routes on aws-vpc");
    }

    // aws-vpc → host-gw: each agent's teardown deletes its route from every table.
    world.apply("type = \"host-gw\"");
    let to_host_gw = world.wait_until("leases on host-gw", Duration::from_secs(30), || {
        world.lease_types().iter().all(|t| t == "host-gw")
    });
    let routes_out = world.wait_until("no route of the cluster network in any table", Duration::from_secs(30), || {
        world.cloud.cluster_routes().is_empty()
    });
    world.wait_until("host-gw routes back on every host", Duration::from_secs(20), || {
        (1..=HOSTS).all(|i| world.kernel_routes(i).len() == HOSTS - 1)
    });
    world.pings(&pods, Duration::from_secs(10));
    // Nothing puts them back: no aws-vpc task outlived its teardown.
    std::thread::sleep(RECHECK * 3);
    let left = world.cloud.cluster_routes();
    assert!(left.is_empty(), "routes came back after the switch to host-gw: {left:?}");
    assert!(world.cloud.outside_routes_kept(), "a route outside the cluster network was touched");
    assert_eq!(world.subnets(), subnets, "subnets changed on the way back to host-gw");
    // Each node removed its own route from each tagged table itself (no aws-vpc agent was left
    // to clean up after it).
    for i in 1..=HOSTS {
        let log = world.cluster.agent_log(i);
        for table in &world.cloud.tagged {
            assert!(
                log.lines().any(|l| l.contains("route removed (backend torn down)") && l.contains(table.as_str())),
                "h{i} did not remove its route from {table}:\n{log}"
            );
        }
        assert_eq!(log.matches("backend switched").count(), 2, "h{i}:\n{log}");
        // The config file the test edits is the agents' as well: its `[network]` is for
        // `network apply`; a restart of the agent loop would bypass the live switch.
        assert!(!log.contains("restarting the agent loop"), "h{i} restarted instead of switching live:\n{log}");
    }
    eprintln!(
        "host-gw → aws-vpc: leases {to_aws:?}, cloud routes +{routes_in:?}, kernel routes gone +{kernel_clear:?}; \
         aws-vpc → host-gw: leases {to_host_gw:?}, cloud routes gone +{routes_out:?}"
    );
}
