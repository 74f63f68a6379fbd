//! Masquerade (`agent.ip_masq = true`): flannel's rules, in an nftables table of weft's own.
//!
//! Traffic from the cluster network to outside it leaves with the host's address; traffic inside
//! the network keeps its source. The rules live in table `ip weft`, chain `postrouting` (type nat,
//! hook postrouting, priority srcnat = 100), so weft never edits a table anyone else writes, and
//! removing weft's masquerade is removing its table.
//!
//! The table is always written whole, in one nf_tables batch (one kernel transaction): at no
//! moment are there no rules, a mix of old and new, or leftovers. [`Masquerade::check`] reads it
//! back and compares it with what is wanted, so a resync can repair a table someone edited.
//!
//! The layers: [`rules`] says which rules (plain data, no kernel); `expr` turns rules into
//! nftables expressions and back (plain data too); `batch` and `query` are the only code that
//! talks libnftnl, `socket` the only code that talks netlink. Calls block: from async code, use
//! `spawn_blocking`. IPv6 is the same code with [`Family::V6`] (table `ip6 weft`).

mod batch;
pub(crate) mod expr;
pub mod forward;
mod query;
pub mod rules;
mod socket;

use std::fmt;
use std::io;

use ipnet::{IpNet, Ipv4Net};

pub use rules::{Action, AddrMatch, Family, Field, MasqRule};
use socket::NftSocket;

/// weft's table, one per family (`ip weft`, `ip6 weft`).
pub const TABLE: &str = "weft";
/// The base chain in weft's table.
pub const CHAIN: &str = "postrouting";
/// nftables' `srcnat` priority (`NF_IP_PRI_NAT_SRC`), where iptables' nat POSTROUTING runs too.
pub const PRIORITY_SRCNAT: i32 = 100;
/// `NF_INET_POST_ROUTING`.
pub const HOOK_POSTROUTING: u32 = libc::NF_INET_POST_ROUTING as u32;

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("masquerade for subnet {own} of network {network}: {why}")]
    Invalid { network: IpNet, own: IpNet, why: &'static str },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: {detail}")]
    Encode { op: String, detail: String },
}

impl MasqError {
    fn netlink(op: impl Into<String>, source: io::Error) -> MasqError {
        MasqError::Netlink { op: op.into(), source }
    }
}

/// Masquerade for one cluster network and this host's subnet in it: a validated pair, so the
/// kernel calls never see an inconsistent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    network: IpNet,
    own: IpNet,
}

/// How the kernel's table compares with what a [`Masquerade`] wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Current,
    /// No table of weft's in this family.
    Missing,
    /// The table is there with other contents: each difference, for the log.
    Differs(Vec<String>),
}

/// A base chain's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// `nat`, `filter` or `route`.
    pub kind: String,
    /// The netfilter hook number (`NF_INET_*`).
    pub hook: u32,
    pub priority: i32,
}

impl ChainSpec {
    /// The chain weft creates.
    pub fn weft() -> ChainSpec {
        ChainSpec { kind: "nat".to_string(), hook: HOOK_POSTROUTING, priority: PRIORITY_SRCNAT }
    }
}

impl fmt::Display for ChainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hook = if self.hook == HOOK_POSTROUTING { "postrouting".to_string() } else { format!("#{}", self.hook) };
        let (kind, priority) = (&self.kind, self.priority);
        write!(f, "type {kind} hook {hook} priority {priority}")
    }
}

/// A rule found in weft's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstalledRule {
    Known(MasqRule),
    /// A rule of a shape weft does not write, and why it is not one.
    Unknown(String),
}

impl fmt::Display for InstalledRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstalledRule::Known(rule) => rule.fmt(f),
            InstalledRule::Unknown(why) => write!(f, "a rule weft does not write ({why})"),
        }
    }
}

/// weft's table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub family: Family,
    /// None when the table has no chain `postrouting`; `Err` when that chain cannot be read.
    pub chain: Option<Result<ChainSpec, String>>,
    pub rules: Vec<InstalledRule>,
}

impl Masquerade {
    /// `own` must lie inside `network`, both of one family. Host bits are ignored.
    pub fn new(network: IpNet, own: IpNet) -> Result<Masquerade, MasqError> {
        let (network, own) = (network.trunc(), own.trunc());
        let invalid = |why| MasqError::Invalid { network, own, why };
        if Family::of(&network) != Family::of(&own) {
            return Err(invalid("the two are of different address families"));
        }
        if !network.contains(&own) {
            return Err(invalid("the subnet is not inside the network"));
        }
        Ok(Masquerade { network, own })
    }

    pub fn v4(network: Ipv4Net, own: Ipv4Net) -> Result<Masquerade, MasqError> {
        Masquerade::new(IpNet::V4(network), IpNet::V4(own))
    }

    pub fn network(&self) -> IpNet {
        self.network
    }

    pub fn own(&self) -> IpNet {
        self.own
    }

    pub fn family(&self) -> Family {
        Family::of(&self.network)
    }

    /// The rules, in chain order.
    pub fn rules(&self) -> Vec<MasqRule> {
        rules::masq_rules(self.network, self.own)
    }

    /// Replaces weft's table of this family with exactly these rules, atomically.
    pub fn install(&self) -> Result<(), MasqError> {
        let family = self.family();
        let op = format!("install masquerade (table {family} {TABLE})");
        let batch = batch::replace_table(family, &self.rules())
            .map_err(|detail| MasqError::Encode { op: op.clone(), detail })?;
        apply(&op, &batch)
    }

    /// Compares the kernel's table with these rules.
    pub fn check(&self) -> Result<Status, MasqError> {
        Ok(self.compare(read_family(self.family())?.as_ref()))
    }

    /// Installs the table unless it is already exactly right. Returns whether it wrote.
    pub fn ensure(&self) -> Result<bool, MasqError> {
        match self.check()? {
            Status::Current => Ok(false),
            Status::Missing | Status::Differs(_) => self.install().map(|()| true),
        }
    }

    /// How `installed` (None: no table) differs from what this wants. Pure.
    pub fn compare(&self, installed: Option<&Installed>) -> Status {
        let Some(installed) = installed else {
            return Status::Missing;
        };
        let mut differences = Vec::new();
        let want_chain = ChainSpec::weft();
        match &installed.chain {
            Some(Ok(chain)) if *chain == want_chain => {}
            Some(Ok(chain)) => differences.push(format!("chain {CHAIN}: {chain}, want {want_chain}")),
            Some(Err(why)) => differences.push(format!("chain {CHAIN}: {why}")),
            None => differences.push(format!("chain {CHAIN} is missing")),
        }
        let want = self.rules();
        for index in 0..want.len().max(installed.rules.len()) {
            let (have, want) = (installed.rules.get(index), want.get(index));
            let same = matches!((have, want), (Some(InstalledRule::Known(h)), Some(w)) if h == w);
            if !same {
                let have = have.map_or("nothing".to_string(), |h| h.to_string());
                let want = want.map_or("nothing".to_string(), |w| w.to_string());
                differences.push(format!("rule {}: {have}, want {want}", index + 1));
            }
        }
        if differences.is_empty() {
            Status::Current
        } else {
            Status::Differs(differences)
        }
    }
}

/// Installs masquerade for IPv4 cluster network `network` and this host's subnet `own`,
/// replacing weft's `ip weft` table atomically.
pub fn install(network: Ipv4Net, own: Ipv4Net) -> Result<(), MasqError> {
    Masquerade::v4(network, own)?.install()
}

/// What [`sync`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Installed,
    Removed,
}

/// The agent's pass for one family: with `wanted` (the cluster network and this host's subnet
/// of that family), the table made exactly right for them; without, an existing table of that
/// family removed. Only reads when nothing is to be done.
pub fn sync(family: Family, wanted: Option<(IpNet, IpNet)>) -> Result<Change, MasqError> {
    if let Some((network, own)) = wanted {
        let changed = Masquerade::new(network, own)?.ensure()?;
        return Ok(if changed { Change::Installed } else { Change::None });
    }
    // A table we cannot even read (no nf_tables here) is not one we installed.
    match read_family(family) {
        Ok(Some(_)) if remove_family(family)? => Ok(Change::Removed),
        _ => Ok(Change::None),
    }
}

/// Removes weft's tables of both families (`ip weft`, `ip6 weft`); false when there was none.
pub fn remove() -> Result<bool, MasqError> {
    let v4 = remove_family(Family::V4)?;
    Ok(remove_family(Family::V6)? || v4)
}

/// Removes weft's table of `family` and everything in it; false when there was none.
pub fn remove_family(family: Family) -> Result<bool, MasqError> {
    let op = format!("remove masquerade (table {family} {TABLE})");
    match apply(&op, &batch::delete_table(family)) {
        Ok(()) => Ok(true),
        Err(MasqError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// weft's `ip weft` table as the kernel holds it; None when there is none.
pub fn read() -> Result<Option<Installed>, MasqError> {
    read_family(Family::V4)
}

/// weft's table of `family` as the kernel holds it; None when there is none.
pub fn read_family(family: Family) -> Result<Option<Installed>, MasqError> {
    let op = format!("read masquerade (table {family} {TABLE})");
    let fail = |e| MasqError::netlink(op.clone(), e);
    let mut socket = NftSocket::open().map_err(fail)?;
    // Three questions rather than one dump of everything: each answer is small and filtered
    // by the kernel. A table replaced in between is caught by the next check.
    if !query::table_exists(&mut socket, family, query::WEFT_CHAIN).map_err(fail)? {
        return Ok(None);
    }
    let chain = query::chain(&mut socket, family, query::WEFT_CHAIN).map_err(fail)?;
    let rules = query::rules(&mut socket, family).map_err(fail)?;
    Ok(Some(Installed { family, chain, rules }))
}

/// Sends `batch`; an error names the operation and, when the kernel says, the message it refused.
fn apply(op: &str, batch: &batch::LabelledBatch) -> Result<(), MasqError> {
    let mut socket = NftSocket::open().map_err(|e| MasqError::netlink(op, e))?;
    socket.apply(&batch.batch).map_err(|e| {
        let at = e.sequence.and_then(|s| batch.label(s));
        let op = match at {
            Some(label) => format!("{op}, at `{label}`"),
            None => op.to_string(),
        };
        MasqError::netlink(op, e.error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masq() -> Masquerade {
        Masquerade::new("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap()).unwrap()
    }

    fn installed(rules: Vec<InstalledRule>) -> Installed {
        Installed { family: Family::V4, chain: Some(Ok(ChainSpec::weft())), rules }
    }

    #[test]
    fn subnet_must_be_inside_the_network_and_of_its_family() {
        let new = |n: &str, s: &str| Masquerade::new(n.parse().unwrap(), s.parse().unwrap());
        assert!(new("10.244.0.0/16", "10.245.3.0/24").is_err());
        assert!(new("10.244.0.0/16", "fd00::/64").is_err());
        let m = new("10.244.9.9/16", "10.244.3.1/24").unwrap();
        assert_eq!(m.own(), "10.244.3.0/24".parse::<IpNet>().unwrap());
        let err = new("10.244.0.0/16", "10.245.3.0/24").unwrap_err().to_string();
        assert!(err.contains("10.245.3.0/24") && err.contains("not inside"), "{err}");
    }

    #[test]
    fn exact_table_is_current() {
        let m = masq();
        let rules = m.rules().into_iter().map(InstalledRule::Known).collect();
        assert_eq!(m.compare(Some(&installed(rules))), Status::Current);
        assert_eq!(m.compare(None), Status::Missing);
    }

    #[test]
    fn every_difference_is_reported() {
        let m = masq();
        let mut rules: Vec<_> = m.rules().into_iter().map(InstalledRule::Known).collect();
        rules.swap(0, 1);
        rules.push(InstalledRule::Unknown("a counter expression".into()));
        let mut table = installed(rules);
        table.chain = Some(Ok(ChainSpec { priority: 0, ..ChainSpec::weft() }));
        let Status::Differs(diffs) = m.compare(Some(&table)) else {
            panic!("not a difference");
        };
        assert_eq!(diffs.len(), 4, "{diffs:#?}");
        assert!(diffs[0].contains("priority 0, want type nat hook postrouting priority 100"));
        assert!(diffs[3].starts_with("rule 5: a rule weft does not write (a counter"));
    }

    #[test]
    fn an_empty_table_differs() {
        let mut table = installed(Vec::new());
        table.chain = None;
        let Status::Differs(diffs) = masq().compare(Some(&table)) else {
            panic!("not a difference");
        };
        assert_eq!(diffs.len(), 5, "{diffs:#?}");
        assert!(diffs[1].ends_with("want ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"weft: pod to pod keeps its source\""), "{}", diffs[1]);
    }
}
