//! The route tables as the leading agent last read them ([`crate::backend::cloud::view`]):
//! each table's routes inside the cluster network (the only ones weft decides on) and its route
//! count, as the answer to one DescribeRouteTables filter.

use weft_aws::{RouteTable, TableFilter};

use crate::backend::cloud::view;
use crate::network::Network;

/// The view of `found` (the answer to `filter`) to share, unless it is too large.
pub fn encode(filter: &TableFilter, found: &[RouteTable], network: &Network) -> Option<String> {
    let tables: Vec<RouteTable> = found.iter().map(|t| within(t, network)).collect();
    view::encode(filter, &tables)
}

/// The tables of a shared view, if it answers `filter` and counts at least the routes it holds.
pub fn decode(text: &str, filter: &TableFilter, network: &Network) -> Option<Vec<RouteTable>> {
    let tables: Vec<RouteTable> = view::decode(text, filter)?;
    let plausible = tables.iter().all(|t| t.route_count >= t.routes.len());
    plausible.then(|| tables.iter().map(|t| within(t, network)).collect())
}

/// `table` with only its routes inside `network` (its route count unchanged).
fn within(table: &RouteTable, network: &Network) -> RouteTable {
    let routes = table.routes.iter().filter(|r| network.covers(&r.destination)).cloned().collect();
    RouteTable { routes, ..table.clone() }
}

#[cfg(test)]
mod tests {
    use weft_aws::{Origin, Route, Target};

    use super::*;

    fn route(destination: &str, target: Target) -> Route {
        Route { destination: destination.parse().unwrap(), target, blackhole: false, origin: Origin::Api }
    }

    fn table() -> RouteTable {
        RouteTable {
            id: "rtb-a".into(),
            vpc_id: "vpc-1".into(),
            routes: vec![
                Route { origin: Origin::Local, ..route("172.31.0.0/16", Target::Gateway("local".into())) },
                route("0.0.0.0/0", Target::Gateway("igw-1".into())),
                route("::/0", Target::Gateway("eigw-1".into())),
                route("10.244.1.0/24", Target::Interface("eni-1".into())),
                Route { blackhole: true, ..route("10.244.2.0/24", Target::None) },
                route("2001:db8:42:1::/64", Target::Interface("eni-1".into())),
            ],
            route_count: 6,
            subnets: vec!["subnet-1".into()],
            main: false,
            tags: vec![("kubernetes.io/cluster/c".into(), "owned".into())],
        }
    }

    fn filter() -> TableFilter {
        TableFilter::Tagged { vpc: "vpc-1".into(), key: "kubernetes.io/cluster/c".into(), value: "owned".into() }
    }

    fn network() -> Network {
        crate::network::dual_stack_for_tests()
    }

    #[test]
    fn a_view_carries_the_cluster_routes_and_the_count() {
        let text = encode(&filter(), &[table()], &network()).unwrap();
        let tables = decode(&text, &filter(), &network()).unwrap();
        let expected = RouteTable { routes: table().routes[3..].to_vec(), ..table() };
        assert_eq!(tables, [expected], "the route count still counts the routes left out");
        assert!(!text.contains("igw-1"), "{text}");
        assert!(text.contains("2001:db8:42:1::/64"), "the IPv6 cluster route is shared: {text}");
    }

    #[test]
    fn a_view_of_other_tables_or_past_belief_is_ignored() {
        let text = encode(&filter(), &[table()], &network()).unwrap();
        let other = TableFilter::Vpc { vpc: "vpc-1".into() };
        assert_eq!(decode(&text, &other, &network()), None, "another filter's answer");
        let undercounted = encode(&filter(), &[RouteTable { route_count: 1, ..table() }], &network()).unwrap();
        assert_eq!(decode(&undercounted, &filter(), &network()), None, "more routes than it counts");
    }

    #[test]
    fn routes_outside_the_network_in_a_stored_view_are_dropped() {
        // A view written by hand into the store: the routes weft would never share are dropped.
        let text = view::encode(&filter(), &[table()]).unwrap();
        let tables = decode(&text, &filter(), &network()).unwrap();
        assert!(tables[0].routes.iter().all(|r| network().covers(&r.destination)));
    }
}
