//! nftables expressions of weft's rules, as plain data, and the translation between them and
//! [`MasqRule`]s in both directions: encoding for installing, decoding for reading back what the
//! kernel holds. libnftnl only ever sees [`Expr`] (see `batch.rs` and `query.rs`).

use ipnet::IpNet;

use super::rules::{Action, AddrMatch, Family, MasqRule};

/// The few expressions weft's rules are made of. All work on register 1 and the network header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` of the network header.
    Payload { offset: u32, len: u32 },
    /// Keep the bits of `mask` (xor 0): the prefix of an address.
    Bitwise { mask: Vec<u8> },
    /// Compare with `data`, for equality or (`negated`) inequality.
    Cmp { negated: bool, data: Vec<u8> },
    /// Verdict `return`.
    Return,
    /// `masquerade fully-random`.
    MasqueradeFullyRandom,
    /// Verdict `accept`.
    Accept,
}

/// The expressions that implement `rule`.
pub fn encode(rule: &MasqRule) -> Vec<Expr> {
    let mut exprs: Vec<Expr> = rule.matches.iter().flat_map(encode_match).collect();
    exprs.push(match rule.action {
        Action::Return => Expr::Return,
        Action::Masquerade => Expr::MasqueradeFullyRandom,
        Action::Accept => Expr::Accept,
    });
    exprs
}

fn encode_match(m: &AddrMatch) -> [Expr; 3] {
    let family = Family::of(&m.net);
    [
        Expr::Payload { offset: family.offset(m.field), len: family.addr_len() },
        Expr::Bitwise { mask: addr_bytes(m.net.netmask()) },
        Expr::Cmp { negated: m.negated, data: addr_bytes(m.net.network()) },
    ]
}

fn addr_bytes(addr: std::net::IpAddr) -> Vec<u8> {
    match addr {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The rule that `exprs` (read from a table of `family`) implement, or why they are not one of
/// the shapes weft writes (someone else's rule, or one edited by hand).
pub fn decode(family: Family, exprs: &[Expr], comment: String) -> Result<MasqRule, String> {
    let (action, body) = match exprs.split_last() {
        Some((Expr::Return, body)) => (Action::Return, body),
        Some((Expr::MasqueradeFullyRandom, body)) => (Action::Masquerade, body),
        Some((Expr::Accept, body)) => (Action::Accept, body),
        Some((last, _)) => return Err(format!("ends with {last:?}, not a verdict weft uses")),
        None => return Err("no expressions".to_string()),
    };
    let mut matches = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (m, tail) = decode_match(family, rest)?;
        matches.push(m);
        rest = tail;
    }
    Ok(MasqRule { matches, action, comment })
}

/// One address match at the start of `exprs`: payload, optional bitwise (absent for a full-length
/// prefix), cmp. Returns it and the expressions after it.
fn decode_match(family: Family, exprs: &[Expr]) -> Result<(AddrMatch, &[Expr]), String> {
    let Some((Expr::Payload { offset, len }, rest)) = exprs.split_first() else {
        return Err(format!("expected a payload load, found {:?}", exprs.first()));
    };
    let field = family
        .field_at(*offset, *len)
        .ok_or_else(|| format!("payload of {len} bytes at {offset} is not a {family} address"))?;
    let (prefix, rest) = match rest.split_first() {
        Some((Expr::Bitwise { mask }, rest)) => (prefix_len(mask)?, rest),
        _ => (family.addr_len() * 8, rest),
    };
    let Some((Expr::Cmp { negated, data }, rest)) = rest.split_first() else {
        return Err(format!("expected a comparison, found {:?}", rest.first()));
    };
    let addr = family
        .addr_from_bytes(data)
        .ok_or_else(|| format!("compares with {} bytes, not a {family} address", data.len()))?;
    let net = IpNet::new(addr, prefix as u8).map_err(|e| e.to_string())?;
    // The masked address can never equal one with bits outside the mask: not a rule weft writes
    // (found by fuzzing: it read back as a prefix that encodes differently).
    if net.network() != addr {
        return Err(format!("compares with {addr}, which has bits outside its /{prefix} mask"));
    }
    let m = AddrMatch { field, negated: *negated, net };
    Ok((m, rest))
}

/// The prefix length of a netmask; an error for a mask that is not leading ones then zeros.
fn prefix_len(mask: &[u8]) -> Result<u32, String> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let leading =
        mask.iter().position(|b| *b != 0xff).map_or(mask.len() as u32 * 8, |i| i as u32 * 8 + mask[i].leading_ones());
    if ones == leading {
        Ok(ones)
    } else {
        Err(format!("mask {mask:02x?} is not a prefix"))
    }
}

/// libnftnl keeps a rule's comment in its userdata: type-length-value records of one byte type
/// and one byte length; the comment is record type 0 (`NFTNL_UDATA_RULE_COMMENT`), a C string.
pub const UDATA_RULE_COMMENT: u8 = 0;

/// The comment in a rule's userdata, if there is one.
pub fn comment_from_udata(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == UDATA_RULE_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &rest[usize::from(*len)..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::rules::masq_rules;
    use super::*;

    #[test]
    fn a_compare_with_bits_outside_the_mask_is_not_ours() {
        let exprs = [
            Expr::Payload { offset: 12, len: 4 },
            Expr::Bitwise { mask: vec![255, 255, 0, 0] },
            Expr::Cmp { negated: false, data: vec![112, 244, 3, 0] },
            Expr::Return,
        ];
        let e = decode(Family::V4, &exprs, String::new()).unwrap_err();
        assert!(e.contains("112.244.3.0") && e.contains("outside its /16 mask"), "{e}");
    }

    #[test]
    fn a_match_is_payload_mask_and_compare() {
        let rules = masq_rules("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap());
        // ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return
        assert_eq!(
            encode(&rules[1]),
            vec![
                Expr::Payload { offset: 12, len: 4 },
                Expr::Bitwise { mask: vec![255, 255, 0, 0] },
                Expr::Cmp { negated: true, data: vec![10, 244, 0, 0] },
                Expr::Payload { offset: 16, len: 4 },
                Expr::Bitwise { mask: vec![255, 255, 255, 0] },
                Expr::Cmp { negated: false, data: vec![10, 244, 3, 0] },
                Expr::Return,
            ]
        );
    }

    #[test]
    fn decode_undoes_encode_for_both_families() {
        let nets = [("10.244.0.0/16", "10.244.3.0/24"), ("fd00:10::/56", "fd00:10:0:3::/64")];
        for (network, own) in nets {
            let network: IpNet = network.parse().unwrap();
            for rule in masq_rules(network, own.parse().unwrap()) {
                let back = decode(Family::of(&network), &encode(&rule), rule.comment.clone());
                assert_eq!(back, Ok(rule));
            }
        }
    }

    #[test]
    fn a_match_without_mask_is_a_full_prefix() {
        let exprs = [
            Expr::Payload { offset: 16, len: 4 },
            Expr::Cmp { negated: false, data: vec![203, 0, 113, 7] },
            Expr::Return,
        ];
        let rule = decode(Family::V4, &exprs, String::new()).unwrap();
        assert_eq!(rule.matches[0].net, "203.0.113.7/32".parse().unwrap());
    }

    #[test]
    fn shapes_weft_does_not_write_are_explained() {
        let cases: [&[Expr]; 4] = [
            &[],
            &[Expr::Payload { offset: 16, len: 4 }],
            &[Expr::Payload { offset: 9, len: 1 }, Expr::Return],
            &[
                Expr::Payload { offset: 16, len: 4 },
                Expr::Bitwise { mask: vec![255, 0, 255, 0] },
                Expr::Cmp { negated: false, data: vec![10, 0, 0, 0] },
                Expr::Return,
            ],
        ];
        for exprs in cases {
            let err = decode(Family::V4, exprs, String::new()).unwrap_err();
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(prefix_len(&[255, 255, 240, 0]), Ok(20));
        assert_eq!(prefix_len(&[0, 0, 0, 0]), Ok(0));
        assert_eq!(prefix_len(&[255; 4]), Ok(32));
        assert!(prefix_len(&[255, 0, 1, 0]).is_err());
    }

    #[test]
    fn comments_are_found_in_userdata() {
        assert_eq!(comment_from_udata(&[0, 3, b'h', b'i', 0]), Some("hi".to_string()));
        // Another record first, then the comment.
        assert_eq!(comment_from_udata(&[7, 1, 9, 0, 2, b'o', 0]), Some("o".to_string()));
        assert_eq!(comment_from_udata(&[]), None);
        // A record that claims more bytes than there are.
        assert_eq!(comment_from_udata(&[0, 9, b'x']), None);
    }
}
