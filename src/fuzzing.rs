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

/// The network config JSON a store holds (flannel's `<prefix>/config`).
pub fn network_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((network, _ignored)) = Network::from_flannel_json(text) else { return };
    // What was accepted is a network weft can allocate from, and reads back as itself.
    assert!(network.subnet_len >= network.network.prefix_len(), "{text}");
    let (again, _) = Network::from_flannel_json(&network.to_flannel_json())
        .unwrap_or_else(|e| panic!("{text}: written back as {}: {e}", network.to_flannel_json()));
    assert_eq!(again.network, network.network);
    assert_eq!(again.subnet_len, network.subnet_len);
    assert_eq!(again.backend, network.backend);
}

/// A stored lease: the key (up to the first newline) and its JSON value (the rest).
pub fn lease(data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(key) = std::str::from_utf8(key) else { return };
    if let Ok(subnet) = lease::parse_subnet_key(key) {
        // One spelling per subnet: the key is the subnet's own, up to flannel's IPv6 part.
        assert_eq!(key.split('&').next(), Some(lease::subnet_key(subnet).as_str()), "{key}");
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
