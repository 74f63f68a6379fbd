//! The route tables as the leading agent last read them, shared through the store so that the
//! other agents need not ask EC2 the same question every recheck: EC2 throttles per account and
//! region, so one DescribeRouteTables per node per recheck is a bill that grows with the cluster.
//! Only what weft decides on travels: each table's routes inside the cluster network and its
//! route count. The view comes from the store, so it is read as untrusted input.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_aws::{RouteTable, TableFilter};

/// A larger view is not shared (etcd takes requests up to 1.5 MiB unless told otherwise): each
/// agent then asks EC2 itself, as without a view. ~100 bytes a route: ~10,000 routes fit.
pub const MAX_VIEW_BYTES: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct TableView {
    /// What the tables answer: an agent configured otherwise asks EC2 itself.
    filter: TableFilter,
    tables: Vec<RouteTable>,
}

/// The view of `found` (the answer to `filter`) to share, unless it is too large.
pub fn encode(filter: &TableFilter, found: &[RouteTable], network: Ipv4Net) -> Option<String> {
    let tables = found.iter().map(|t| within(t, network)).collect();
    let view = TableView { filter: filter.clone(), tables };
    serde_json::to_string(&view).ok().filter(|json| json.len() <= MAX_VIEW_BYTES)
}

/// The tables of a shared view, if it answers `filter`: `None` for a view of other tables, or
/// one that does not parse (it is then ignored, and EC2 asked).
pub fn decode(text: &str, filter: &TableFilter, network: Ipv4Net) -> Option<Vec<RouteTable>> {
    if text.len() > MAX_VIEW_BYTES {
        return None;
    }
    let view: TableView = serde_json::from_str(text).ok()?;
    let plausible = view.tables.iter().all(|t| t.route_count >= t.routes.len());
    (view.filter == *filter && plausible).then(|| view.tables.iter().map(|t| within(t, network)).collect())
}

/// `table` with only its routes inside `network` (its route count unchanged).
fn within(table: &RouteTable, network: Ipv4Net) -> RouteTable {
    let routes = table.routes.iter().filter(|r| network.contains(&r.destination)).cloned().collect();
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
                route("10.244.1.0/24", Target::Interface("eni-1".into())),
                Route { blackhole: true, ..route("10.244.2.0/24", Target::None) },
            ],
            route_count: 4,
            subnets: vec!["subnet-1".into()],
            main: false,
            tags: vec![("kubernetes.io/cluster/c".into(), "owned".into())],
        }
    }

    fn filter() -> TableFilter {
        TableFilter::Tagged { vpc: "vpc-1".into(), key: "kubernetes.io/cluster/c".into(), value: "owned".into() }
    }

    fn network() -> Ipv4Net {
        "10.244.0.0/16".parse().unwrap()
    }

    #[test]
    fn a_view_carries_the_cluster_routes_and_the_count() {
        let text = encode(&filter(), &[table()], network()).unwrap();
        let tables = decode(&text, &filter(), network()).unwrap();
        let expected = RouteTable { routes: table().routes[2..].to_vec(), ..table() };
        assert_eq!(tables, [expected], "the route count still counts the routes left out");
        assert!(!text.contains("igw-1"), "{text}");
    }

    #[test]
    fn a_view_of_other_tables_or_past_belief_is_ignored() {
        let text = encode(&filter(), &[table()], network()).unwrap();
        let other = TableFilter::Vpc { vpc: "vpc-1".into() };
        assert_eq!(decode(&text, &other, network()), None, "another filter's answer");
        let undercounted = encode(&filter(), &[RouteTable { route_count: 1, ..table() }], network()).unwrap();
        assert_eq!(decode(&undercounted, &filter(), network()), None, "more routes than it counts");
        for junk in ["", "null", "{\"filter\":1}", "[[[[[[[[", &"[".repeat(100_000)] {
            assert_eq!(decode(junk, &filter(), network()), None, "{junk:.20}");
        }
    }

    #[test]
    fn routes_outside_the_network_in_a_stored_view_are_dropped() {
        // A view written by hand into the store: the routes weft would never share are dropped.
        let view = TableView { filter: filter(), tables: vec![table()] };
        let text = serde_json::to_string(&view).unwrap();
        let tables = decode(&text, &filter(), network()).unwrap();
        assert!(tables[0].routes.iter().all(|r| network().contains(&r.destination)));
    }

    #[test]
    fn a_view_too_large_for_the_store_is_not_shared() {
        let routes = (0..20_000u32)
            .map(|i| {
                let subnet = Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap();
                Route { destination: subnet, ..route("10.244.1.0/24", Target::Interface(format!("eni-{i}"))) }
            })
            .collect::<Vec<_>>();
        let big = RouteTable { route_count: routes.len(), routes, ..table() };
        assert_eq!(encode(&filter(), &[big], "10.0.0.0/8".parse().unwrap()), None);
    }
}
