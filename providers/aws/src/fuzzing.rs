//! A fuzz entry point for weft's reading of EC2's answers: a route table as the SDK hands it
//! over, built from arbitrary text, through [`crate::convert`]. The weft crate's fuzz target
//! feeds what comes out to the backend's plan. Not part of the API weft uses.

use aws_sdk_ec2::types;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::{RouteTable, Target};

/// Reads `data` as lines of `<field> <value>` (`table`, `vpc`, `route <cidr>` or `route6 <cidr>`
/// starting a route, then `eni`, `instance`, `gateway`, `nat`, `v6 <cidr>`, `blackhole`, `origin
/// api|local|propagated|<other>`; `assoc <subnet>`, `main`, `tag <key>=<value>`), converts the
/// table, and checks what must hold of the conversion. `None` when the table has no id (refused).
pub fn route_table(data: &[u8]) -> Option<RouteTable> {
    let text = String::from_utf8_lossy(data);
    let mut table = types::RouteTable::builder();
    let mut routes: Vec<types::builders::RouteBuilder> = Vec::new();
    let mut given: Vec<Given> = Vec::new();
    for line in text.lines() {
        let (field, value) = line.split_once(' ').unwrap_or((line, ""));
        let route = routes.last_mut();
        match (field, route) {
            ("table", _) => table = table.route_table_id(value),
            ("vpc", _) => table = table.vpc_id(value),
            ("assoc", _) => {
                table = table.associations(types::RouteTableAssociation::builder().subnet_id(value).build())
            }
            ("main", _) => table = table.associations(types::RouteTableAssociation::builder().main(true).build()),
            ("tag", _) => {
                let (key, val) = value.split_once('=').unwrap_or((value, ""));
                table = table.tags(types::Tag::builder().key(key).value(val).build());
            }
            ("route", _) => {
                routes.push(types::Route::builder().destination_cidr_block(value));
                given.push(Given { destination: Some(value.to_string()), v6: None, eni: None });
            }
            ("eni", Some(r)) => {
                *r = r.clone().network_interface_id(value);
                given.last_mut().expect("a route").eni = Some(value.to_string());
            }
            ("instance", Some(r)) => *r = r.clone().instance_id(value),
            ("gateway", Some(r)) => *r = r.clone().gateway_id(value),
            ("nat", Some(r)) => *r = r.clone().nat_gateway_id(value),
            ("v6", Some(r)) => {
                *r = r.clone().destination_ipv6_cidr_block(value);
                given.last_mut().expect("a route").v6 = Some(value.to_string());
            }
            ("route6", _) => {
                routes.push(types::Route::builder().destination_ipv6_cidr_block(value));
                given.push(Given { destination: None, v6: Some(value.to_string()), eni: None });
            }
            ("blackhole", Some(r)) => *r = r.clone().state(types::RouteState::Blackhole),
            ("origin", Some(r)) => *r = r.clone().origin(types::RouteOrigin::from(value)),
            _ => {}
        }
    }
    let count = routes.len();
    for route in routes {
        table = table.routes(route.build());
    }
    let converted = crate::convert::route_table("DescribeRouteTables", &table.build()).ok()?;
    assert_eq!(converted.route_count, count, "every route counts against the table's size");
    let readable: Vec<(&Given, IpNet)> = given.iter().filter_map(|g| Some((g, g.expected()?))).collect();
    assert_eq!(converted.routes.len(), readable.len(), "exactly the CIDR routes are read");
    for (route, (given, destination)) in converted.routes.iter().zip(readable) {
        assert_eq!(route.destination, destination);
        if let Some(eni) = &given.eni {
            assert_eq!(route.target, Target::Interface(eni.clone()), "an ENI is the precise target");
        }
    }
    Some(converted)
}

struct Given {
    destination: Option<String>,
    v6: Option<String>,
    eni: Option<String>,
}

impl Given {
    /// The destination weft must read: the IPv4 field when the route has one (then only as
    /// IPv4), else the IPv6 field as IPv6.
    fn expected(&self) -> Option<IpNet> {
        match (&self.destination, &self.v6) {
            (Some(v4), _) => v4.parse::<Ipv4Net>().ok().map(IpNet::V4),
            (None, Some(v6)) => v6.parse::<Ipv6Net>().ok().map(IpNet::V6),
            (None, None) => None,
        }
    }
}
