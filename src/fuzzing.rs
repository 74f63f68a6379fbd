//! What the fuzz targets (`fuzz/`, cargo-fuzz on nightly) feed with arbitrary bytes: every parser
//! of input weft does not control. Each entry point must return for any input, never panic, and
//! checks what must hold of what it accepted. `tests/fuzz_corpus.rs` replays the checked-in
//! corpus through the same functions on stable, so a crash once found stays fixed.

use crate::cni::conf::{self, NetConf};
use crate::kernel::netlink::decode;
use crate::kernel::Ownership;
use crate::lease::{self, Expiry};
use crate::network::Network;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("network_config", network_config),
    ("lease", lease),
    ("config_toml", config_toml),
    ("cni_stdin", cni_stdin),
    ("netlink_dump", netlink_dump),
    ("nft_rule", nft_rule),
    ("nft_ruleset", nft_ruleset),
];

/// The cloud targets, in builds with both cloud backends: replies of EC2 and of the Compute API,
/// through weft's conversions and the backends' plans.
#[cfg(all(feature = "aws", feature = "gce"))]
pub const CLOUD_TARGETS: &[(&str, Target)] = &[("ec2_route_table", ec2_route_table), ("gce_routes", gce_routes)];
/// None without both cloud backends (the corpus replay then finds their corpora unclaimed).
#[cfg(not(all(feature = "aws", feature = "gce")))]
pub const CLOUD_TARGETS: &[(&str, Target)] = &[];

/// One node's view for the cloud targets, dual-stack: the networks, its own subnets, the leased
/// ones.
#[cfg(any(feature = "aws", feature = "gce"))]
mod cloud_view {
    use std::collections::BTreeSet;

    use ipnet::IpNet;

    use crate::network::{Network, NetworkSection};

    pub const OWN: [&str; 2] = ["10.244.1.0/24", "2001:db8:42:1::/64"];

    pub fn network() -> Network {
        let section = NetworkSection {
            cidr: "10.244.0.0/16".into(),
            ipv6_cidr: "2001:db8:42::/56".into(),
            ..NetworkSection::default()
        };
        Network::new(&section).expect("constant")
    }

    pub fn own() -> Vec<IpNet> {
        OWN.iter().map(|s| s.parse().expect("constant")).collect()
    }

    pub fn leased() -> BTreeSet<IpNet> {
        OWN.iter().chain(&["10.244.2.0/24", "2001:db8:42:2::/64"]).map(|s| s.parse().expect("constant")).collect()
    }
}

/// A route table as EC2 describes it (`weft_aws::fuzzing`'s text form), planned by the elected
/// node: it removes only what weft or flannel made (API origin, a lease-sized subnet of the
/// network, to an interface or instance), never its own route, never a leased one but as a
/// blackhole; what it counts as carried is lease-sized and inside the network.
#[cfg(feature = "aws")]
pub fn ec2_route_table(data: &[u8]) {
    use crate::backend::aws_vpc::plan::{self, PlanInput, Removal};
    use weft_aws::{Origin, Target};

    let Some(table) = weft_aws::fuzzing::route_table(data) else { return };
    let (network, own, leased) = (cloud_view::network(), cloud_view::own(), cloud_view::leased());
    let input =
        PlanInput { network: &network, own: &own, interface_id: "eni-me", leased: &leased, retired: &[], lead: true };
    let planned = plan::plan_table(&table, &input);
    for (destination, why) in &planned.remove {
        assert!(!own.contains(destination), "our own route is never removed as stale");
        assert!(network.is_lease_sized(destination), "{destination}");
        // EC2 holds one route per destination; arbitrary text may give several: one must qualify.
        let removable = table.routes.iter().filter(|r| r.destination == *destination).any(|route| {
            route.origin == Origin::Api
                && matches!(route.target, Target::Interface(_) | Target::Instance(_))
                && (route.blackhole || !leased.contains(destination))
        });
        assert!(removable, "{destination} removed ({why:?}) but no route to it is weft's to remove");
        assert!(*why != Removal::Retired, "nothing retired in this view");
    }
    for carried in plan::carried(&table, &network) {
        assert!(network.is_lease_sized(&carried), "{carried}");
    }
    for own in &own {
        let _ = plan::over_route_limit(&table, &network, *own, 3);
    }
}

/// `routes.list` or an operation as the Compute API returns them, planned by the elected node:
/// a stale route is one of ours by name, destination, network and next hop, lease-sized, and
/// unleased; what counts as carried is lease-sized and inside the network.
#[cfg(feature = "gce")]
pub fn gce_routes(data: &[u8]) {
    use crate::backend::gce::plan;

    const VPC: &str = "projects/p/global/networks/default";
    let routes = weft_gce::fuzzing::replies(data);
    let (network, leased) = (cloud_view::network(), cloud_view::leased());
    for name in plan::stale_routes(&routes, "weft-", VPC, &network, &leased) {
        let subnet = plan::parse_route_name("weft-", &name).expect("a stale route is named as ours");
        assert!(network.is_lease_sized(&subnet), "{name}");
        assert!(!leased.contains(&subnet), "{name} is leased");
        // Compute names are unique; arbitrary text may repeat one: one of them must qualify.
        let qualifies = routes.iter().filter(|r| r.name == name).any(|route| {
            route.dest_range.parse().ok() == Some(subnet)
                && route.next_hop_instance.is_some()
                && weft_gce::same_resource(&route.network, VPC)
        });
        assert!(qualifies, "{name}: no route of that name is ours by range, next hop and network");
    }
    for carried in plan::carried(&routes, VPC, &network) {
        assert!(network.is_lease_sized(&carried), "{carried}");
    }
    let _ = plan::cluster_routes(&routes, VPC, &network);
}

/// The network config JSON a store holds (flannel's `<prefix>/config`).
pub fn network_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((network, _ignored)) = Network::from_flannel_json(text) else { return };
    // What was accepted is a network weft can allocate from, and reads back as itself.
    for space in network.spaces() {
        assert!(space.subnet_len >= space.network.prefix_len(), "{text}");
    }
    let (again, _) = Network::from_flannel_json(&network.to_flannel_json())
        .unwrap_or_else(|e| panic!("{text}: written back as {}: {e}", network.to_flannel_json()));
    assert_eq!(again.ipv4, network.ipv4);
    assert_eq!(again.ipv6, network.ipv6);
    assert_eq!(again.backend, network.backend);
}

/// A stored lease: the key (up to the first newline) and its JSON value (the rest).
pub fn lease(data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(key) = std::str::from_utf8(key) else { return };
    if let Ok(parsed) = lease::parse_lease_key(key) {
        // One spelling per pair of subnets: the key is written back as it was read.
        assert_eq!(lease::subnet_key(parsed), key);
    }
    let Ok(parsed) = lease::parse_lease(key, value, Expiry::Unknown) else { return };
    // What we read, we write back so that we read the same.
    let json = parsed.attrs.to_json();
    let again = lease::parse_lease(key, json.as_bytes(), Expiry::Unknown).expect("our own JSON reads back");
    assert_eq!(again.attrs, parsed.attrs, "{json}");
}

/// weft.toml.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = crate::config::parse_toml(text) {
        // Errors are shown to people: they render, and never show the password.
        let shown = e.to_string();
        assert!(!shown.is_empty());
    }
}

/// What a container runtime hands `weft-cni` on stdin.
pub fn cni_stdin(data: &[u8]) {
    let _ = conf::error_version(data);
    if let Ok(netconf) = NetConf::parse(data) {
        let _ = (netconf.subnet_file(), netconf.data_dir(), netconf.supports_check());
    }
}

/// One message of a netlink dump (route, nexthop, neighbour), the first two bytes saying which
/// kind it claims to be.
pub fn netlink_dump(data: &[u8]) {
    let Some((kind, payload)) = data.split_first_chunk::<2>() else { return };
    let ownership = Ownership { links: vec![1, 2, 3] };
    let _ = decode::dumped_route(payload, &ownership);
    let _ = decode::dumped_nexthop(u16::from_le_bytes(*kind), payload);
    let _ = decode::neighbour(payload, &ownership);
}

/// weft's decoder of nftables rules (`masq::expr`), over any expressions libnftnl could hand it:
/// the first byte picks the family, the next a comment's userdata length, then the userdata,
/// then expressions (a tag byte each, then its fields). What decodes as one of weft's rules
/// encodes back to expressions that decode as the same rule. (libnftnl's own message parsing is
/// not fuzzed: it exits the process on attributes it does not expect, trusting the kernel.)
pub fn nft_rule(data: &[u8]) {
    use crate::masq::expr::{comment_from_udata, decode, encode, Expr};
    let Some((&flags, rest)) = data.split_first() else { return };
    let family = if flags & 1 == 0 { crate::masq::Family::V4 } else { crate::masq::Family::V6 };
    let Some((&udata_len, rest)) = rest.split_first() else { return };
    let (udata, mut rest) = rest.split_at(usize::from(udata_len).min(rest.len()));
    let comment = comment_from_udata(udata).unwrap_or_default();
    let mut exprs = Vec::new();
    let bytes = |rest: &mut &[u8]| -> Vec<u8> {
        let Some((&n, tail)) = rest.split_first() else { return Vec::new() };
        let (taken, tail) = tail.split_at(usize::from(n % 17).min(tail.len()));
        *rest = tail;
        taken.to_vec()
    };
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        exprs.push(match tag % 6 {
            0 => {
                let (offset, len) = match rest {
                    [o, l, tail @ ..] => {
                        rest = tail;
                        (u32::from(*o), u32::from(*l))
                    }
                    _ => (0, 0),
                };
                Expr::Payload { offset, len }
            }
            1 => Expr::Bitwise { mask: bytes(&mut rest) },
            2 => Expr::Cmp { negated: tag & 0x80 != 0, data: bytes(&mut rest) },
            3 => Expr::Return,
            4 => Expr::MasqueradeFullyRandom,
            _ => Expr::Accept,
        });
    }
    if let Ok(rule) = decode(family, &exprs, comment.clone()) {
        let again = decode(family, &encode(&rule), comment);
        assert_eq!(again.as_ref(), Ok(&rule), "{exprs:?}");
    }
}

/// `nft -j list ruleset` as `weft doctor` reads it: any JSON is judged, and a ✗ says how to fix it.
pub fn nft_ruleset(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let chains = crate::doctor::firewall::parse(text);
    let network = "10.244.0.0/16".parse().expect("a network");
    for forward_rules in [false, true] {
        let check = crate::doctor::firewall::judge(&chains, network, forward_rules);
        assert!(check.ok || check.fix.is_some(), "{check:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds are read as what they stand for, so the fuzzer starts from real replies.
    #[cfg(all(feature = "aws", feature = "gce"))]
    #[test]
    fn cloud_seeds_are_read() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let table = std::fs::read(corpus.join("ec2_route_table/seed-mixed-table")).unwrap();
        let read = weft_aws::fuzzing::route_table(&table).expect("a table with an id");
        assert_eq!((read.id.as_str(), read.route_count, read.routes.len()), ("rtb-1", 8, 7));
        let list = std::fs::read(corpus.join("gce_routes/seed-route-list")).unwrap();
        assert_eq!(weft_gce::fuzzing::replies(&list).len(), 7);
        for (name, target) in CLOUD_TARGETS {
            for input in [&b""[..], b"\x00{", b"\x01[", b"route 10.244.1.0/24\nblackhole"] {
                target(input);
            }
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn every_target_takes_nothing_and_garbage() {
        for (name, target) in TARGETS {
            for input in [&b""[..], b"\xff\xfe\x00", b"{", b"[[[[", &[0u8; 64]] {
                target(input);
            }
            assert!(!name.is_empty());
        }
    }
}
