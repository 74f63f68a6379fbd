//! aws-vpc: the metadata service (IMDSv2), each EC2 action weft uses (asked with `DryRun`), the
//! interface's source/dest check, the route tables weft would write and the room left in each.
//! The judges are pure; [`checks`] gathers through weft-aws (the SDK stays in that crate).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use weft_aws::{DryRunTarget, Ec2, Permission, RouteTable, SdkEc2, SdkOptions, TokenProbe, ACTIONS};

use crate::backend::aws_vpc::node::choose_interface;
use crate::backend::aws_vpc::plan::{family_routes, routes_to_us, TableMode, DEFAULT_ROUTE_LIMIT};
use crate::config::CloudSection;
use crate::iface::ExternalInterface;
use crate::network::backend::AwsVpcConfig;
use crate::network::Network;

use super::Check;

/// The actions that need a route table to be asked about.
const ROUTE_ACTIONS: [&str; 3] = ["CreateRoute", "ReplaceRoute", "DeleteRoute"];

/// How long each request to the metadata service may take.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn imds(probe: &TokenProbe) -> Check {
    const NAME: &str = "aws.imds";
    match probe {
        TokenProbe::Answered => Check::pass(NAME, "the metadata service gave an IMDSv2 token and the instance id"),
        TokenProbe::TimedOut(e) => Check::fail(
            NAME,
            format!("the IMDSv2 token request timed out: {e}"),
            "raise the instance's metadata hop limit (containers need 2): aws ec2 modify-instance-metadata-options \
             --instance-id <id> --http-put-response-hop-limit 2 --http-tokens required",
        ),
        TokenProbe::Failed(e) => Check::fail(
            NAME,
            format!("the metadata service did not answer: {e}"),
            "run on an EC2 instance with the metadata service on (aws ec2 modify-instance-metadata-options \
             --instance-id <id> --http-endpoint enabled)",
        ),
    }
}

/// One EC2 action, from its dry run.
pub fn permission(action: &str, answer: &Permission) -> Check {
    let name = format!("aws.ec2.{action}");
    match answer {
        Permission::Allowed => Check::pass(name, format!("ec2:{action} allowed (DryRun)")),
        Permission::Denied(e) => Check::fail(
            name,
            format!("ec2:{action} not allowed: {e}"),
            format!("allow ec2:{action} to the instance's role (docs/aws-iam-policy.json lists what weft needs)"),
        ),
        Permission::Unknown(e) => Check::fail(
            name,
            format!("cannot tell whether ec2:{action} is allowed: {e}"),
            "check cloud.aws_endpoint_url, network.backend.region and the instance's credentials",
        ),
    }
}

/// `enabled` is the interface's source/dest check as EC2 reports it.
pub fn source_dest_check(interface_id: &str, enabled: Option<bool>) -> Check {
    const NAME: &str = "aws.source_dest_check";
    match enabled {
        Some(false) => Check::pass(NAME, format!("off on {interface_id}: it may carry pods' packets")),
        on => Check::fail(
            NAME,
            format!(
                "{} on {interface_id}: EC2 drops packets for pod addresses (the agent turns it off at start when allowed ec2:ModifyNetworkInterfaceAttribute)",
                if on.is_some() { "on" } else { "not reported" }
            ),
            format!("aws ec2 modify-network-interface-attribute --network-interface-id {interface_id} --no-source-dest-check"),
        ),
    }
}

/// The tables weft would write, or why there are none.
pub fn route_tables(mode: &TableMode, chosen: &Result<Vec<RouteTable>, String>) -> Check {
    const NAME: &str = "aws.route_tables";
    let how = match mode {
        TableMode::Explicit(ids) => format!("network.backend.route_table_ids = {ids:?}"),
        TableMode::Tagged { key, value } => format!("network.backend.route_table_tag = \"{key}={value}\""),
        TableMode::Fallback => "the subnet's table (no route_table_ids or route_table_tag)".to_string(),
    };
    match chosen {
        Ok(tables) => {
            let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
            Check::pass(NAME, format!("{} found by {how}", ids.join(", ")))
        }
        Err(e) => {
            let fix = match mode {
                TableMode::Tagged { key, value } => format!(
                    "tag the cluster's route tables: aws ec2 create-tags --resources rtb-… --tags Key={key},Value={value} \
                     (or set network.backend.route_table_ids)"
                ),
                TableMode::Explicit(_) => "set network.backend.route_table_ids to tables of this VPC".to_string(),
                TableMode::Fallback => {
                    "set network.backend.route_table_tag or network.backend.route_table_ids".to_string()
                }
            };
            Check::fail(NAME, format!("none found by {how}: {e}"), fix)
        }
    }
}

/// Room for our routes in `table`: within `route_limit` routes of each family's cluster network
/// when set (the fuller family is shown), else within EC2's default 50 routes per table. A table
/// already routing `own` to us needs none; with `overflow` a full table is no error (the host is
/// reached over vxlan).
pub fn route_room(
    table: &RouteTable,
    network: &Network,
    route_limit: Option<u32>,
    own: Option<(IpNet, &str)>,
    overflow: bool,
) -> Check {
    let name = format!("aws.route_room.{}", table.id);
    let (used, limit, what) = match route_limit {
        Some(limit) => {
            // route_limit counts each family apart, as EC2 does: the fuller one decides.
            let fullest = network
                .networks()
                .map(|family| (family_routes(table, network, family), family))
                .max_by_key(|(used, _)| *used)
                .expect("a network has a family");
            let (used, family) = fullest;
            (used, limit as usize, format!("routes of {family} (route_limit)"))
        }
        None => (table.route_count, DEFAULT_ROUTE_LIMIT, "routes (EC2's default limit)".to_string()),
    };
    let left = limit.saturating_sub(used);
    let shown = format!("{used} of {limit} {what} used, {left} left");
    if own.is_some_and(|(subnet, interface)| routes_to_us(table, subnet, interface)) {
        return Check::pass(name, format!("{shown}; it holds our route already"));
    }
    if left > 0 {
        return Check::pass(name, shown);
    }
    if overflow {
        return Check::pass(
            name,
            format!("{shown}: no room for this host's route, its peers reach it over vxlan (overflow)"),
        );
    }
    let fix = match route_limit {
        Some(limit) => format!(
            "raise network.backend.route_limit (now {limit}, under the table's quota), or set network.backend.overflow = \"vxlan\""
        ),
        None => "50 is the default of accounts made before 2025 (500 since, 1000 at most): if this account's quota is \
                 higher, set network.backend.route_limit to it; else ask AWS to raise the routes-per-route-table quota, \
                 or set network.backend.overflow = \"vxlan\""
            .to_string(),
    };
    Check::fail(name, format!("{shown}: no room for this host's route"), fix)
}

/// Every aws-vpc check, asked of the metadata service and EC2. `own` is our subnet (subnet.env).
pub async fn checks(
    config: &AwsVpcConfig,
    cloud: &CloudSection,
    network: &Network,
    ext: Option<&ExternalInterface>,
    own: Option<IpNet>,
) -> Vec<Check> {
    let probe = weft_aws::imds::probe_token(IMDS_TIMEOUT).await;
    let mut checks = vec![imds(&probe)];
    if probe != TokenProbe::Answered {
        return checks;
    }
    let meta = match weft_aws::imds::instance_metadata().await {
        Ok(meta) => meta,
        Err(e) => {
            checks.push(Check::fail("aws.instance", e.to_string(), "run on an EC2 instance"));
            return checks;
        }
    };
    let region = if config.region.is_empty() { meta.region.clone() } else { config.region.clone() };
    let options = SdkOptions { region, endpoint_url: cloud.aws_endpoint_url.clone() };
    let ec2 = SdkEc2::new(&options, Arc::new(|_| {})).await;
    let instance = match ec2.instance(&meta.instance_id).await {
        Ok(instance) => instance,
        Err(e) => {
            checks.push(Check::fail(
                "aws.instance",
                format!("looking up instance {}: {e}", meta.instance_id),
                "allow ec2:DescribeInstances to the instance's role; check cloud.aws_endpoint_url and network.backend.region",
            ));
            return checks;
        }
    };
    let mut addresses: Vec<Ipv4Addr> =
        ext.map(|e| e.public_ip.into_iter().chain(e.addr.map(|a| a.addr())).collect()).unwrap_or_default();
    addresses.push(meta.local_ipv4);
    let interface = choose_interface(&instance, &addresses, &meta.interface_id).cloned();
    let interface_id = interface.as_ref().map(|i| i.id.clone()).unwrap_or_else(|| meta.interface_id.clone());
    let mode = TableMode::from_config(&config.route_table_ids, &config.route_table_tag);
    let chosen = match &mode {
        Ok(mode) => match ec2.route_tables(&mode.filter(&instance.vpc_id)).await {
            Ok(found) => mode.choose(&instance.subnet_id, found),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.clone()),
    };
    let target = DryRunTarget {
        instance_id: instance.id.clone(),
        interface_id: interface_id.clone(),
        table_id: chosen.as_ref().ok().and_then(|t| t.first()).map(|t| t.id.clone()),
        destination: own.unwrap_or(network.lease_space().network),
    };
    for action in ACTIONS {
        // Without a table the route actions cannot be asked; aws.route_tables says why.
        if target.table_id.is_none() && ROUTE_ACTIONS.contains(&action) {
            continue;
        }
        checks.push(permission(action, &ec2.dry_run(action, &target).await));
    }
    checks.push(source_dest_check(&interface_id, interface.and_then(|i| i.source_dest_check)));
    match mode {
        Ok(mode) => checks.push(route_tables(&mode, &chosen)),
        Err(e) => checks.push(Check::fail(
            "aws.route_tables",
            e,
            "network.backend.route_table_tag must be key=value, route_table_ids rtb-… ids",
        )),
    }
    for table in chosen.iter().flatten() {
        let ours = own.map(|subnet| (subnet, interface_id.as_str()));
        checks.push(route_room(table, network, config.route_limit, ours, config.overflow.is_some()));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_aws::{Origin, Route, Target};

    fn table(routes: &[(&str, &str)], extra: usize) -> RouteTable {
        let routes: Vec<Route> = routes
            .iter()
            .map(|(dst, eni)| Route {
                destination: dst.parse().unwrap(),
                target: Target::Interface(eni.to_string()),
                blackhole: false,
                origin: Origin::Api,
            })
            .collect();
        RouteTable {
            id: "rtb-1".into(),
            vpc_id: "vpc-1".into(),
            route_count: routes.len() + extra,
            routes,
            subnets: vec![],
            main: false,
            tags: vec![],
        }
    }

    fn net() -> &'static Network {
        static NETWORK: std::sync::OnceLock<Network> = std::sync::OnceLock::new();
        NETWORK.get_or_init(crate::network::dual_stack_for_tests)
    }

    #[test]
    fn imds_timeouts_point_at_the_hop_limit() {
        assert!(imds(&TokenProbe::Answered).ok);
        let slow = imds(&TokenProbe::TimedOut("read timeout".into()));
        assert!(!slow.ok && slow.fix.unwrap().contains("--http-put-response-hop-limit 2"));
        let refused = imds(&TokenProbe::Failed("connection refused".into()));
        assert!(!refused.ok && !refused.fix.unwrap().contains("hop limit"));
    }

    #[test]
    fn dry_run_answers() {
        let allowed = permission("CreateRoute", &Permission::Allowed);
        assert_eq!((allowed.name.as_str(), allowed.ok), ("aws.ec2.CreateRoute", true));
        let denied = permission("CreateRoute", &Permission::Denied("UnauthorizedOperation: no".into()));
        assert!(!denied.ok && denied.fix.unwrap().starts_with("allow ec2:CreateRoute"));
        assert!(!permission("DeleteRoute", &Permission::Unknown("no route table".into())).ok);
    }

    #[test]
    fn source_dest_check_must_be_off() {
        assert!(source_dest_check("eni-1", Some(false)).ok);
        let on = source_dest_check("eni-1", Some(true));
        assert!(!on.ok);
        assert_eq!(
            on.fix.as_deref(),
            Some("aws ec2 modify-network-interface-attribute --network-interface-id eni-1 --no-source-dest-check")
        );
        assert!(!source_dest_check("eni-1", None).ok);
    }

    #[test]
    fn tables_found_or_the_fix_for_the_mode() {
        let tagged = TableMode::Tagged { key: "weft".into(), value: "yes".into() };
        assert!(route_tables(&tagged, &Ok(vec![table(&[], 1)])).detail.starts_with("rtb-1 found by"));
        let none = route_tables(&tagged, &Err("no route table in the VPC is tagged weft=yes".into()));
        assert!(!none.ok && none.fix.unwrap().contains("Key=weft,Value=yes"));
        let explicit = route_tables(&TableMode::Explicit(vec!["rtb-9".into()]), &Err("not found: rtb-9".into()));
        assert!(explicit.fix.unwrap().contains("route_table_ids"));
    }

    #[test]
    fn room_by_route_limit_or_the_default() {
        let t = table(&[("10.244.1.0/24", "eni-a"), ("10.244.2.0/24", "eni-b")], 1);
        let room = route_room(&t, net(), Some(3), None, false);
        assert!(room.ok);
        assert_eq!(room.detail, "2 of 3 routes of 10.244.0.0/16 (route_limit) used, 1 left");
        let full = route_room(&t, net(), Some(2), None, false);
        assert!(!full.ok && full.fix.unwrap().contains("route_limit (now 2"));
        let ours = Some(("10.244.2.0/24".parse().unwrap(), "eni-b"));
        assert!(route_room(&t, net(), Some(2), ours, false).ok, "our route is in already");
        assert!(route_room(&t, net(), Some(2), None, true).ok, "overflow: reached over vxlan");
        let default = route_room(&t, net(), None, None, false);
        assert_eq!(default.detail, "3 of 50 routes (EC2's default limit) used, 47 left");
        let crowded = table(&[], 50);
        let crowded = route_room(&crowded, net(), None, None, false);
        assert!(!crowded.ok && crowded.fix.unwrap().contains("set network.backend.route_limit to it"));
    }
}
