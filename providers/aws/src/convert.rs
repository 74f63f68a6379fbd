//! SDK types → weft's model. Pure, so the odd shapes EC2 returns are unit-tested.

use std::net::Ipv4Addr;

use aws_sdk_ec2::types;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::Ec2Error;
use crate::model::{Instance, Interface, Origin, Route, RouteTable, Target};

fn missing(operation: &'static str, what: &str) -> Ec2Error {
    Ec2Error::Malformed { operation, detail: format!("no {what}") }
}

/// Addresses EC2 gave as text; ones that do not parse are left out (and cannot match ours).
fn addresses<'a>(texts: impl Iterator<Item = Option<&'a str>>) -> Vec<Ipv4Addr> {
    texts.flatten().filter_map(|t| t.parse().ok()).collect()
}

pub(crate) fn instance(operation: &'static str, sdk: &types::Instance) -> Result<Instance, Ec2Error> {
    let interfaces = sdk
        .network_interfaces()
        .iter()
        .map(|eni| {
            Ok(Interface {
                id: eni.network_interface_id().ok_or_else(|| missing(operation, "network interface id"))?.to_string(),
                subnet_id: eni.subnet_id().unwrap_or_default().to_string(),
                private_ips: addresses(eni.private_ip_addresses().iter().map(|a| a.private_ip_address())),
                source_dest_check: eni.source_dest_check(),
                device_index: eni.attachment().and_then(|a| a.device_index()),
            })
        })
        .collect::<Result<_, Ec2Error>>()?;
    Ok(Instance {
        id: sdk.instance_id().ok_or_else(|| missing(operation, "instance id"))?.to_string(),
        vpc_id: sdk.vpc_id().ok_or_else(|| missing(operation, "VPC id of the instance"))?.to_string(),
        subnet_id: sdk.subnet_id().ok_or_else(|| missing(operation, "subnet id of the instance"))?.to_string(),
        interfaces,
    })
}

pub(crate) fn interface(operation: &'static str, sdk: &types::NetworkInterface) -> Result<Interface, Ec2Error> {
    Ok(Interface {
        id: sdk.network_interface_id().ok_or_else(|| missing(operation, "network interface id"))?.to_string(),
        subnet_id: sdk.subnet_id().unwrap_or_default().to_string(),
        private_ips: addresses(sdk.private_ip_addresses().iter().map(|a| a.private_ip_address())),
        source_dest_check: sdk.source_dest_check(),
        device_index: sdk.attachment().and_then(|a| a.device_index()),
    })
}

pub(crate) fn route_table(operation: &'static str, sdk: &types::RouteTable) -> Result<RouteTable, Ec2Error> {
    let associations = sdk.associations();
    Ok(RouteTable {
        id: sdk.route_table_id().ok_or_else(|| missing(operation, "route table id"))?.to_string(),
        vpc_id: sdk.vpc_id().unwrap_or_default().to_string(),
        routes: sdk.routes().iter().filter_map(route).collect(),
        route_count: sdk.routes().len(),
        subnets: associations.iter().filter_map(|a| a.subnet_id()).map(str::to_string).collect(),
        main: associations.iter().any(|a| a.main() == Some(true)),
        tags: sdk
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
            .collect(),
    })
}

/// A CIDR route of either family; `None` for prefix-list and unreadable destinations. Each field
/// is read as its own family only: an IPv6 text in the IPv4 field is unreadable, not IPv6.
fn route(sdk: &types::Route) -> Option<Route> {
    let v4 = || sdk.destination_cidr_block()?.parse::<Ipv4Net>().ok().map(IpNet::V4);
    let v6 = || sdk.destination_ipv6_cidr_block()?.parse::<Ipv6Net>().ok().map(IpNet::V6);
    let destination = match sdk.destination_cidr_block() {
        Some(_) => v4()?,
        None => v6()?,
    };
    Some(Route {
        destination,
        target: target(sdk),
        blackhole: sdk.state() == Some(&types::RouteState::Blackhole),
        origin: match sdk.origin() {
            Some(types::RouteOrigin::CreateRoute) => Origin::Api,
            Some(types::RouteOrigin::CreateRouteTable) => Origin::Local,
            Some(types::RouteOrigin::EnableVgwRoutePropagation) => Origin::Propagated,
            _ => Origin::Unknown,
        },
    })
}

fn target(sdk: &types::Route) -> Target {
    // An interface id is the precise target: EC2 also names the instance when the ENI is attached.
    if let Some(eni) = sdk.network_interface_id() {
        return Target::Interface(eni.to_string());
    }
    if let Some(instance) = sdk.instance_id() {
        return Target::Instance(instance.to_string());
    }
    let gateway = [
        sdk.gateway_id(),
        sdk.nat_gateway_id(),
        sdk.transit_gateway_id(),
        sdk.vpc_peering_connection_id(),
        sdk.egress_only_internet_gateway_id(),
        sdk.local_gateway_id(),
        sdk.carrier_gateway_id(),
        sdk.core_network_arn(),
    ]
    .into_iter()
    .flatten()
    .next();
    gateway.map_or(Target::None, |g| Target::Gateway(g.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk_route(cidr: &str) -> types::builders::RouteBuilder {
        types::Route::builder().destination_cidr_block(cidr).origin(types::RouteOrigin::CreateRoute)
    }

    #[test]
    fn routes_and_targets() {
        let table = types::RouteTable::builder()
            .route_table_id("rtb-1")
            .vpc_id("vpc-1")
            .routes(sdk_route("10.0.0.0/16").gateway_id("local").origin(types::RouteOrigin::CreateRouteTable).build())
            .routes(sdk_route("10.244.1.0/24").network_interface_id("eni-1").instance_id("i-1").build())
            .routes(sdk_route("10.244.2.0/24").instance_id("i-2").state(types::RouteState::Blackhole).build())
            .routes(types::Route::builder().destination_ipv6_cidr_block("::/0").gateway_id("igw-1").build())
            .routes(sdk_route("10.244.3.0/24").state(types::RouteState::Blackhole).build())
            .associations(types::RouteTableAssociation::builder().main(true).build())
            .associations(types::RouteTableAssociation::builder().subnet_id("subnet-1").main(false).build())
            .tags(types::Tag::builder().key("weft").value("az-a").build())
            .build();
        let table = route_table("DescribeRouteTables", &table).unwrap();
        assert_eq!(table.route_count, 5);
        assert_eq!(table.routes.len(), 5, "IPv6 routes are read too");
        assert_eq!(table.routes[0].origin, Origin::Local);
        assert_eq!(table.routes[1].target, Target::Interface("eni-1".into()));
        assert_eq!(table.routes[2].target, Target::Instance("i-2".into()));
        assert!(table.routes[2].blackhole);
        assert_eq!(table.routes[3].destination, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(table.routes[3].target, Target::Gateway("igw-1".into()));
        assert_eq!(table.routes[4].target, Target::None);
        assert!(table.main);
        assert_eq!(table.subnets, vec!["subnet-1"]);
        assert!(table.has_tag("weft", "az-a"));
    }

    #[test]
    fn missing_ids_are_malformed() {
        let err = route_table("DescribeRouteTables", &types::RouteTable::builder().build()).unwrap_err();
        assert_eq!(err.outcome(), "error");
        let err = instance("DescribeInstances", &types::Instance::builder().instance_id("i-1").build()).unwrap_err();
        assert!(err.to_string().contains("VPC"), "{err}");
    }
}
