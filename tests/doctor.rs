//! `weft doctor` in a host namespace of its own: every check passes on a prepared host, then each
//! ✗ is provoked one at a time (ip_forward off, the vxlan port taken, strict rp_filter, a FORWARD
//! policy of DROP, an unreachable store; aws-vpc against moto and an IMDSv2 double; gce against
//! the Compute test server and a metadata double). JSON output parsed, exit codes checked.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::cluster::{Cluster, WEFT};
use weft::doctor::Check;
use weft::netns::Netns;

const NETWORK: &str = "cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"vxlan\"\n";

/// What one `weft doctor -o json` run gave: its exit code and the checks by name.
struct Run {
    code: i32,
    checks: BTreeMap<String, Check>,
    text: String,
}

impl Run {
    fn failed(&self) -> Vec<&str> {
        self.checks.values().filter(|c| !c.ok).map(|c| c.name.as_str()).collect()
    }

    fn check(&self, name: &str) -> &Check {
        self.checks.get(name).unwrap_or_else(|| panic!("no check {name}: {}", self.text))
    }
}

/// `weft --config <cluster's weft.toml> doctor -o json <extra>` in host 1's namespace.
fn doctor(cluster: &Cluster, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let out = cluster
        .host_ns(1)
        .command(WEFT)
        .expect("enter host 1")
        .arg("--config")
        .arg(cluster.path("weft.toml"))
        .args(["doctor", "-o", "json"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("WEFT_NO_NEXTHOP")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run weft doctor");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let list: Vec<Check> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let checks = list.into_iter().map(|c| (c.name.clone(), c)).collect();
    Run { code: out.status.code().unwrap_or(-1), checks, text }
}

/// Writes `/proc/sys/net/<path>` inside `ns` (sysctls under net are the namespace's own).
fn sysctl(ns: &Netns, path: &str, value: &str) {
    let file = format!("/proc/sys/net/{path}");
    let value = value.to_string();
    ns.run(move || std::fs::write(&file, value))
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

fn nft(ns: &Netns, args: &[&str]) {
    let out = ns.command("nft").expect("enter the namespace").args(args).output().expect("run nft");
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Host 1 on its own underlay, etcd in the service namespace, the network published; every
/// knob doctor looks at set so that all checks pass.
fn prepared(network: &str) -> Cluster {
    let cluster = Cluster::with_etcd(1);
    let config = cluster.write_config(network);
    let text = std::fs::read_to_string(&config).unwrap().replace("[agent]\n", "[agent]\niface = [\"eth0\"]\n");
    std::fs::write(&config, text).unwrap();
    cluster.weft_ok(&["network", "apply"]);
    forwarding_host(&cluster);
    cluster
}

/// Host 1 forwards and filters no reverse path.
fn forwarding_host(cluster: &Cluster) {
    let ns = cluster.host_ns(1);
    sysctl(&ns, "ipv4/ip_forward", "1");
    sysctl(&ns, "ipv4/conf/all/rp_filter", "0");
    sysctl(&ns, "ipv4/conf/eth0/rp_filter", "0");
}

fn assert_only_failure(run: &Run, name: &str) {
    assert_eq!(run.code, 1, "{}", run.text);
    assert_eq!(run.failed(), [name], "{}", run.text);
    let check = run.check(name);
    assert!(check.fix.as_deref().is_some_and(|f| !f.is_empty()), "a failure carries a fix: {check:?}");
}

#[test]
fn kernel_and_store_checks_pass_then_fail_one_by_one() {
    let cluster = prepared(NETWORK);
    let ns = cluster.host_ns(1);
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    for name in [
        "store",
        "interface",
        "kernel.ip_forward",
        "kernel.vxlan",
        "udp_port",
        "kernel.rp_filter",
        "kernel.nexthops",
        "mtu",
        "firewall.forward",
    ] {
        assert!(run.check(name).ok, "{name}: {}", run.text);
    }
    assert!(run.check("store").detail.contains("backend vxlan"), "{}", run.text);
    assert!(run.check("interface").detail.contains("eth0") && run.check("interface").detail.contains("agent.iface"));
    assert!(run.check("mtu").detail.contains("overhead 50"), "{}", run.text);

    // net.ipv4.ip_forward = 0.
    sysctl(&ns, "ipv4/ip_forward", "0");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "kernel.ip_forward");
    assert!(run.check("kernel.ip_forward").fix.as_deref().unwrap().contains("sysctl -w net.ipv4.ip_forward=1"));
    sysctl(&ns, "ipv4/ip_forward", "1");

    // The vxlan port held by a socket of someone else.
    let socket = ns.run(|| std::net::UdpSocket::bind("0.0.0.0:8472")).unwrap().expect("bind 8472 in the namespace");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "udp_port");
    assert!(run.check("udp_port").fix.as_deref().unwrap().contains("network.backend.port"));
    drop(socket);

    // Strict reverse-path filtering on eth0, which carries no default route.
    sysctl(&ns, "ipv4/conf/eth0/rp_filter", "1");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "kernel.rp_filter");
    sysctl(&ns, "ipv4/conf/eth0/rp_filter", "0");

    // iptables' FORWARD policy DROP: weft's accept rules cover it, unless agent.forward_rules is off.
    nft(&ns, &["add", "table", "ip", "filter"]);
    nft(&ns, &["add", "chain", "ip", "filter", "FORWARD", "{ type filter hook forward priority 0; policy drop; }"]);
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    assert!(run.check("firewall.forward").detail.contains("weft appends its accept rules"), "{}", run.text);
    let run = doctor(&cluster, &[], &[("WEFT_AGENT__FORWARD_RULES", "false")]);
    assert_only_failure(&run, "firewall.forward");
    assert!(run.check("firewall.forward").fix.as_deref().unwrap().starts_with("set agent.forward_rules = true"));
    nft(&ns, &["delete", "table", "ip", "filter"]);

    // The store at a wrong endpoint: the backend checks go on with weft.toml's [network].
    let wrong = cluster.etcd_endpoint().replace(":2379", ":2399");
    let run = doctor(&cluster, &["--store-endpoints", &wrong], &[]);
    assert_only_failure(&run, "store");
    assert!(run.check("store").fix.as_deref().unwrap().contains("store.endpoints"), "{}", run.text);
    assert!(run.checks.contains_key("udp_port"), "the vxlan checks still ran: {}", run.text);

    // Text output: a ✗ line and its fix, the same exit code.
    let out = cluster
        .host_ns(1)
        .command(WEFT)
        .unwrap()
        .arg("--config")
        .arg(cluster.path("weft.toml"))
        .args(["--store-endpoints", &wrong, "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ store") && text.contains("fix: check store.endpoints"), "{text}");
    assert!(text.contains("✓ kernel.ip_forward"), "{text}");
}

#[test]
fn an_mtu_larger_than_the_interface_takes_fails_and_host_gw_skips_the_vxlan_checks() {
    let cluster = prepared("cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"vxlan\"\nmtu = 1500\n");
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "mtu");
    assert!(run.check("mtu").fix.as_deref().unwrap().contains("network.backend.mtu = 1450"), "{}", run.text);
    let config = cluster.write_config("cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"host-gw\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace("[agent]\n", "[agent]\niface = [\"eth0\"]\n");
    std::fs::write(&config, text).unwrap();
    cluster.weft_ok(&["network", "apply"]);
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    assert!(!run.checks.contains_key("udp_port") && !run.checks.contains_key("kernel.vxlan"), "{}", run.text);
    assert!(run.check("mtu").detail.contains("pods get MTU"), "{}", run.text);
}

/// store.kind = "kube": the API asked for the Nodes with the kubeconfig's credentials.
#[test]
fn the_kube_api_reached_or_not() {
    let cluster = Cluster::new(1);
    forwarding_host(&cluster);
    let api = common::kube_api::KubeApi::start_in(Some(&cluster.host_ns(1)), "127.0.0.1:0");
    api.add_node("h1", None, &BTreeMap::new());
    let kubeconfig = api.kubeconfig(cluster.dir.path());
    std::fs::write(
        cluster.path("weft.toml"),
        format!(
            "[agent]\niface = [\"eth0\"]\n\n[store]\nkind = \"kube\"\nnode_name = \"h1\"\nkubeconfig = \"{}\"\n\n[network]\n{NETWORK}",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let run = doctor(&cluster, &[], &[]);
    assert_eq!(run.code, 0, "{}", run.text);
    assert!(run.check("store").detail.starts_with("the Kubernetes API answered"), "{}", run.text);
    // A kubeconfig naming a server nobody listens on.
    let text = std::fs::read_to_string(&kubeconfig).unwrap().replace(&api.url(), "http://127.0.0.1:9");
    std::fs::write(&kubeconfig, text).unwrap();
    let run = doctor(&cluster, &[], &[]);
    assert_only_failure(&run, "store");
    assert!(run.check("store").fix.as_deref().unwrap().contains("store.kubeconfig"), "{}", run.text);
}

#[test]
fn a_config_that_does_not_load_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.toml");
    std::fs::write(&config, "[agent]\nno_such_key = 1\n").unwrap();
    let out = std::process::Command::new(WEFT).arg("--config").arg(&config).arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

mod aws {
    use super::*;
    use common::cluster::runtime_in;
    use common::imds::{self, Imds};
    use common::moto::{self, Fault, FaultProxy, Moto, Vpc};

    /// moto, the fault proxy and an IMDSv2 double, all inside host 1's namespace.
    struct World {
        cluster: Cluster,
        runtime: tokio::runtime::Runtime,
        _moto: Moto,
        proxy: FaultProxy,
        ec2: aws_sdk_ec2::Client,
        vpc: Vpc,
        host: moto::Host,
        imds: Imds,
    }

    impl World {
        fn new() -> World {
            let cluster = prepared(NETWORK);
            let ns = cluster.host_ns(1);
            let runtime = runtime_in(&ns);
            let moto = Moto::start_in(&ns, "127.0.0.1".parse().unwrap(), 5000);
            let proxy = FaultProxy::start(&runtime, &moto);
            let ec2 = moto::client(&moto.endpoint);
            let (vpc, host) = {
                let ec2 = ec2.clone();
                runtime
                    .block_on(runtime.spawn(async move {
                        let vpc = moto::build_vpc(&ec2).await;
                        let host = moto::launch(&ec2, &vpc.subnets[0]).await;
                        moto::set_source_dest_check(&ec2, &host.interface_id, false).await;
                        (vpc, host)
                    }))
                    .expect("build the VPC")
            };
            let imds = Imds::start_at(&runtime, imds::metadata_for(&host), "127.0.0.1:0".parse().unwrap());
            World { cluster, runtime, _moto: moto, proxy, ec2, vpc, host, imds }
        }

        /// Publishes an aws-vpc network over the tables tagged `tag`, with `backend` as extra keys.
        fn apply(&self, tag: &str, backend: &str) {
            let network = format!(
                "cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"aws-vpc\"\nroute_table_tag = \"{tag}\"\n{backend}\n"
            );
            let config = self.cluster.write_config(&network);
            let text = std::fs::read_to_string(&config).unwrap().replace("[agent]\n", "[agent]\niface = [\"eth0\"]\n");
            let text = format!("{text}\n[cloud]\naws_endpoint_url = \"{}\"\n", self.proxy.endpoint);
            std::fs::write(&config, text).unwrap();
            self.cluster.weft_ok(&["network", "apply"]);
        }

        fn doctor(&self, imds_endpoint: Option<&str>) -> Run {
            let mut env = imds::node_env(&self.imds).to_vec();
            if let Some(endpoint) = imds_endpoint {
                env[0].1 = endpoint;
            }
            doctor(&self.cluster, &[], &env)
        }

        fn in_ns<T: Send + 'static>(&self, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
            self.runtime.block_on(self.runtime.spawn(f)).expect("task")
        }
    }

    #[test]
    fn aws_checks_pass_then_fail_one_by_one() {
        let world = World::new();
        let tag = format!("{}={}", moto::TAG_KEY, moto::TAG_VALUE);
        world.apply(&tag, "");
        let run = world.doctor(None);
        assert_eq!(run.code, 0, "{}", run.text);
        let mut names = vec!["aws.imds".to_string(), "aws.source_dest_check".into(), "aws.route_tables".into()];
        // Every action weft calls (tests/docs.rs keeps weft_aws::ACTIONS equal to the SDK calls).
        names.extend(weft_aws::ACTIONS.iter().map(|a| format!("aws.ec2.{a}")));
        names.extend(world.vpc.tagged.iter().map(|t| format!("aws.route_room.{t}")));
        for name in &names {
            assert!(run.check(name).ok, "{name}: {}", run.text);
        }
        assert!(run.check("aws.ec2.CreateRoute").detail.contains("DryRun"), "{}", run.text);
        assert_eq!(world.proxy.counts().get("CreateRoute"), Some(&1), "one dry run, nothing created");
        assert!(!moto_routes(&world).contains_key("10.244.0.0/16"), "a dry run created a route");

        // The source/dest check on.
        let (ec2, eni) = (world.ec2.clone(), world.host.interface_id.clone());
        world.in_ns(async move { moto::set_source_dest_check(&ec2, &eni, true).await });
        let run = world.doctor(None);
        assert_only_failure(&run, "aws.source_dest_check");
        assert!(run.check("aws.source_dest_check").fix.as_deref().unwrap().contains("--no-source-dest-check"));
        let (ec2, eni) = (world.ec2.clone(), world.host.interface_id.clone());
        world.in_ns(async move { moto::set_source_dest_check(&ec2, &eni, false).await });

        // The role lacks ec2:CreateRoute.
        world.proxy.inject(Fault::Unauthorized { action: "CreateRoute".into() });
        let run = world.doctor(None);
        assert_only_failure(&run, "aws.ec2.CreateRoute");
        assert!(run.check("aws.ec2.CreateRoute").detail.contains("UnauthorizedOperation"), "{}", run.text);
        world.proxy.clear_faults();

        // A full table: route_limit 1, and a route of the cluster network already in it.
        let (ec2, table, spare) = (world.ec2.clone(), world.vpc.tagged[0].clone(), world.vpc.spare_interface.clone());
        world.in_ns(async move { moto::create_route(&ec2, &table, "10.244.9.0/24", &spare).await });
        world.apply(&tag, "route_limit = 1");
        let run = world.doctor(None);
        let full = format!("aws.route_room.{}", world.vpc.tagged[0]);
        assert_only_failure(&run, &full);
        assert!(run.check(&full).detail.contains("1 of 1 routes"), "{}", run.text);

        // No table carries the tag.
        world.apply("weft-cluster=nobody", "");
        let run = world.doctor(None);
        assert_only_failure(&run, "aws.route_tables");
        assert!(run.check("aws.route_tables").fix.as_deref().unwrap().contains("Key=weft-cluster,Value=nobody"));

        // The metadata service takes the token request and never answers (a hop limit of 1).
        let silent = world.cluster.host_ns(1).run(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let run = world.doctor(Some(&endpoint));
        assert_only_failure(&run, "aws.imds");
        assert!(run.check("aws.imds").fix.as_deref().unwrap().contains("hop limit"), "{}", run.text);
    }

    fn moto_routes(world: &World) -> BTreeMap<String, moto::SeenRoute> {
        let (ec2, table) = (world.ec2.clone(), world.vpc.tagged[0].clone());
        world.in_ns(async move { moto::routes(&ec2, &table).await })
    }
}

mod gce {
    use super::*;
    use common::gce_api::GceApiServer;
    use common::gce_metadata::MetadataServer;

    const PROJECT: &str = "weft-test";
    const ZONE: &str = "europe-west1-b";

    fn apply(cluster: &Cluster, api: &GceApiServer, backend: &str) {
        let network = format!("cidr = \"10.244.0.0/16\"\n\n[network.backend]\ntype = \"gce\"\n{backend}\n");
        let config = cluster.write_config(&network);
        let text = std::fs::read_to_string(&config).unwrap().replace("[agent]\n", "[agent]\niface = [\"eth0\"]\n");
        std::fs::write(&config, format!("{text}\n[cloud]\ngce_endpoint = \"{}\"\n", api.endpoint)).unwrap();
        cluster.weft_ok(&["network", "apply"]);
    }

    #[test]
    fn gce_checks_pass_then_fail_one_by_one() {
        let cluster = prepared(NETWORK);
        let ns = cluster.host_ns(1);
        let localhost = std::net::Ipv4Addr::LOCALHOST;
        let server = GceApiServer::start_in(PROJECT, &ns, localhost);
        let api = &server.api;
        api.add_network("default");
        api.add_instance(ZONE, "node-a", "default", "10.132.0.2");
        let metadata = MetadataServer::start_in(PROJECT, ZONE, "node-a", "default", "10.132.0.2", &ns, localhost);
        api.allow_token(&metadata.token, "node-a");
        apply(&cluster, &server, "");
        let env = [("GCE_METADATA_HOST", metadata.host.as_str())];
        let run = doctor(&cluster, &[], &env);
        assert_eq!(run.code, 0, "{}", run.text);
        for name in ["gce.metadata", "gce.scopes", "gce.can_ip_forward", "gce.route_quota"] {
            assert!(run.check(name).ok, "{name}: {}", run.text);
        }
        assert!(run.check("gce.scopes").detail.contains("cloud-platform"), "{}", run.text);

        // The instance may not forward.
        api.set_can_ip_forward(ZONE, "node-a", false);
        let run = doctor(&cluster, &[], &env);
        assert_only_failure(&run, "gce.can_ip_forward");
        assert!(run.check("gce.can_ip_forward").fix.as_deref().unwrap().contains("--can-ip-forward"));
        api.set_can_ip_forward(ZONE, "node-a", true);

        // The service account lacks the compute scope.
        metadata.set_scopes(&["https://www.googleapis.com/auth/devstorage.read_only"]);
        let run = doctor(&cluster, &[], &env);
        assert_only_failure(&run, "gce.scopes");
        metadata.set_scopes(&[common::gce_metadata::CLOUD_PLATFORM]);

        // The routes of the cluster network at route_limit.
        api.put_route("weft-10-244-9-0-24", "10.244.9.0/24", &api.network_link("default"), None);
        apply(&cluster, &server, "route_limit = 1");
        let run = doctor(&cluster, &[], &env);
        assert_only_failure(&run, "gce.route_quota");
        assert!(run.check("gce.route_quota").detail.contains("1 of 1 routes"), "{}", run.text);
        assert!(run.check("gce.route_quota").fix.as_deref().unwrap().contains("network.backend.route_limit"));

        // No route_limit; the project's ROUTES quota used up (projects.get).
        apply(&cluster, &server, "");
        api.set_route_quota(Some(1));
        let run = doctor(&cluster, &[], &env);
        assert_only_failure(&run, "gce.route_quota");
        assert!(
            run.check("gce.route_quota").detail.contains("project ROUTES quota: 1 of 1 used, 0 left"),
            "{}",
            run.text
        );
        assert!(run.check("gce.route_quota").fix.as_deref().unwrap().contains("ROUTES quota"));
        // With overflow on, a host without room is no error: its peers reach it over vxlan.
        apply(&cluster, &server, "overflow = \"vxlan\"");
        let run = doctor(&cluster, &[], &env);
        assert!(run.check("gce.route_quota").ok, "{}", run.text);
    }
}
