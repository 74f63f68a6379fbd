//! FORWARD accept rules for the cluster network (`agent.forward_rules`, flannel's
//! `--iptables-forward-rules`): under a FORWARD policy of DROP (Docker sets one), pods on
//! different hosts must still reach each other.
//!
//! Why the rules go into iptables' chain and not into weft's own table: nftables runs every base
//! chain registered on a hook, and a packet that any of them drops is dropped; an accept only ends
//! the chain it is in. An accept in `ip weft` therefore cannot undo the DROP policy of iptables'
//! FORWARD chain, which iptables-nft (Debian's `iptables`) keeps in nftables as table `ip filter`,
//! chain `FORWARD`. The rules must be in that chain itself, as flannel's are (flannel appends
//! them with iptables). weft appends its two rules there when the chain exists, each with a
//! comment starting `weft: `, and only ever deletes rules carrying such a comment, by handle. They
//! are made of the expressions iptables-nft itself writes for `-s`/`-d ... -j ACCEPT` (payload,
//! bitwise, cmp, immediate), so `iptables -S FORWARD` lists them and iptables (Docker) goes on
//! editing the chain. Without that chain there is no iptables policy to get past: nothing is
//! written, and the next resync looks again (Docker may start later).
//!
//! Not covered: iptables-legacy (x_tables, out of nftables' reach) and an nftables ruleset of
//! its own whose forward chain drops; `weft doctor` is the place to point at those.

use std::ffi::CStr;

use ipnet::{IpNet, Ipv4Net};

use super::query::{self, ChainRef, ListedRule};
use super::rules::{Action, AddrMatch, Family, MasqRule};
use super::socket::NftSocket;
use super::{apply, batch, InstalledRule, MasqError};

/// iptables-nft's FORWARD chain, where the rules go.
pub const FORWARD_CHAIN_REF: ChainRef = ChainRef { table: c"filter", chain: c"FORWARD" };
/// The comment every rule of weft's starts with: the only rules weft deletes there.
pub const MARK: &str = "weft: ";

/// The accept rules for cluster network `network`, in order.
pub fn forward_rules(network: IpNet) -> Vec<MasqRule> {
    let rule = |m: AddrMatch, comment: &str| MasqRule {
        matches: vec![m],
        action: Action::Accept,
        comment: format!("{MARK}{comment}"),
    };
    vec![
        rule(AddrMatch::source(network), "forward from the cluster network"),
        rule(AddrMatch::destination(network), "forward to the cluster network"),
    ]
}

/// What [`sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardChange {
    /// No `ip filter FORWARD` chain: no iptables policy to get past, nothing written.
    NoChain,
    /// The chain already held exactly what is wanted.
    None,
    Installed,
    Removed,
}

/// What to do to chain rules `listed` so that weft's rules in it are exactly `wanted`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Nothing,
    /// Delete weft's rules (by handle) and append `add`, in one transaction.
    Edit {
        delete: Vec<u64>,
        add: Vec<MasqRule>,
    },
}

/// Pure: weft's rules are those whose comment starts with [`MARK`]; anyone else's are never
/// touched. Ours in the wanted order (wherever they sit in the chain) are current.
fn plan(wanted: &[MasqRule], listed: &[ListedRule]) -> Plan {
    let ours: Vec<&ListedRule> = listed.iter().filter(|r| r.comment.starts_with(MARK)).collect();
    let current = ours.len() == wanted.len()
        && ours.iter().zip(wanted).all(|(have, want)| matches!(&have.rule, InstalledRule::Known(r) if r == want));
    if current {
        return Plan::Nothing;
    }
    Plan::Edit { delete: ours.iter().map(|r| r.handle).collect(), add: wanted.to_vec() }
}

/// The agent's pass: with `wanted`, weft's accept rules for `network` made exactly right in
/// `ip filter FORWARD`; without, weft's rules there removed.
pub fn sync(network: Option<Ipv4Net>) -> Result<ForwardChange, MasqError> {
    let want = network.map_or_else(Vec::new, |network| forward_rules(IpNet::V4(network.trunc())));
    sync_rules(&want)
}

/// Removes weft's rules from `ip filter FORWARD`; false when there were none.
pub fn remove() -> Result<bool, MasqError> {
    Ok(sync_rules(&[])? == ForwardChange::Removed)
}

fn sync_rules(want: &[MasqRule]) -> Result<ForwardChange, MasqError> {
    let family = Family::V4;
    let at = FORWARD_CHAIN_REF;
    let op = format!("FORWARD rules (table {family} {}, chain {})", name(at.table), name(at.chain));
    let fail = |e| MasqError::netlink(op.clone(), e);
    let mut socket = NftSocket::open().map_err(fail)?;
    if !query::table_exists(&mut socket, family, at).map_err(fail)?
        || query::chain(&mut socket, family, at).map_err(fail)?.is_none()
    {
        return Ok(ForwardChange::NoChain);
    }
    let listed = query::listed_rules(&mut socket, family, at).map_err(fail)?;
    match plan(want, &listed) {
        Plan::Nothing => Ok(ForwardChange::None),
        Plan::Edit { delete, add } => {
            let batch = batch::edit_chain(family, at, &delete, &add)
                .map_err(|detail| MasqError::Encode { op: op.clone(), detail })?;
            apply(&op, &batch)?;
            Ok(if add.is_empty() { ForwardChange::Removed } else { ForwardChange::Installed })
        }
    }
}

fn name(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(handle: u64, rule: MasqRule) -> ListedRule {
        ListedRule { handle, comment: rule.comment.clone(), rule: InstalledRule::Known(rule) }
    }

    fn foreign(handle: u64) -> ListedRule {
        ListedRule { handle, comment: String::new(), rule: InstalledRule::Unknown("a jump to DOCKER-USER".into()) }
    }

    fn wanted() -> Vec<MasqRule> {
        forward_rules("10.244.0.0/16".parse().unwrap())
    }

    #[test]
    fn the_rules_accept_from_and_to_the_network_and_are_marked() {
        let rules: Vec<String> = wanted().iter().map(ToString::to_string).collect();
        assert_eq!(
            rules,
            [
                "ip saddr 10.244.0.0/16 accept comment \"weft: forward from the cluster network\"",
                "ip daddr 10.244.0.0/16 accept comment \"weft: forward to the cluster network\"",
            ]
        );
    }

    #[test]
    fn ours_in_order_among_others_are_current() {
        let [a, b] = <[MasqRule; 2]>::try_from(wanted()).unwrap();
        let chain = [foreign(1), listed(7, a.clone()), foreign(8), listed(9, b.clone())];
        assert_eq!(plan(&wanted(), &chain), Plan::Nothing);
        assert_eq!(plan(&[], &[foreign(1)]), Plan::Nothing, "nothing of ours, nothing wanted");
        // Swapped, one missing, or an old network: ours are rewritten, nobody else's touched.
        let swapped = [listed(7, b.clone()), listed(9, a.clone())];
        assert_eq!(plan(&wanted(), &swapped), Plan::Edit { delete: vec![7, 9], add: wanted() });
        assert_eq!(plan(&wanted(), &[foreign(1), listed(9, b)]), Plan::Edit { delete: vec![9], add: wanted() });
        let old = forward_rules("10.245.0.0/16".parse().unwrap());
        let chain = [listed(3, old[0].clone()), listed(4, old[1].clone()), foreign(5)];
        assert_eq!(plan(&wanted(), &chain), Plan::Edit { delete: vec![3, 4], add: wanted() });
    }

    #[test]
    fn a_marked_rule_of_an_unknown_shape_is_ours_and_goes() {
        let edited = ListedRule {
            handle: 4,
            comment: "weft: forward from the cluster network".into(),
            rule: InstalledRule::Unknown("a counter expression".into()),
        };
        assert_eq!(plan(&[], &[foreign(1), edited.clone()]), Plan::Edit { delete: vec![4], add: vec![] });
        assert_eq!(plan(&wanted(), &[edited]), Plan::Edit { delete: vec![4], add: wanted() });
    }
}
