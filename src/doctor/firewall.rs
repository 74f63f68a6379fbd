//! A FORWARD policy or rule that drops the cluster network, read from `nft -j list ruleset`
//! (iptables-nft keeps iptables' chains there too). Parsing and judging are pure.
//!
//! The traffic judged is pod to pod: source and destination both in the cluster network. In
//! each base chain on the `forward` hook, rules are read in order; a rule whose only matches are
//! on `ip saddr` / `ip daddr` decides that traffic (an accept lets it through, a drop or reject
//! cuts it); a rule with any other match (interface, conntrack, an iptables extension) is
//! conditional and is passed over, and jumps are not followed. Then the chain's policy applies.
//! Not seen: iptables-legacy (x_tables is out of nftables' reach).

use ipnet::Ipv4Net;
use serde_json::Value;

use super::Check;

pub const NAME: &str = "firewall.forward";

/// A base chain on the forward hook, with its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// `drop` or `accept`.
    pub policy: String,
    pub rules: Vec<Rule>,
}

impl ForwardChain {
    fn label(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.name)
    }

    /// iptables-nft's FORWARD chain: where `agent.forward_rules` appends weft's accept rules.
    fn is_iptables_forward(&self) -> bool {
        self.family == "ip" && self.table == "filter" && self.name == "FORWARD"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub handle: u64,
    pub matches: Vec<Match>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// `ip saddr` or `ip daddr` compared with a prefix (`negated` for `!=`).
    Address { negated: bool, net: Ipv4Net },
    /// Anything else: the rule applies to some packets only.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// `drop` or `reject`.
    Drop,
    /// No verdict, or one that passes the packet elsewhere (jump, goto, return...).
    Other,
}

/// The base chains on the forward hook of the ip and inet families in `nft -j list ruleset`.
pub fn parse(json: &str) -> Result<Vec<ForwardChain>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft -j: not JSON: {e}"))?;
    let items = doc["nftables"].as_array().ok_or("nft -j: no \"nftables\" list")?;
    let mut chains: Vec<ForwardChain> = Vec::new();
    for item in items {
        if let Some(chain) = item.get("chain") {
            let family = text(chain, "family");
            if chain["hook"] == "forward" && (family == "ip" || family == "inet") {
                chains.push(ForwardChain {
                    family,
                    table: text(chain, "table"),
                    name: text(chain, "name"),
                    policy: chain["policy"].as_str().unwrap_or("accept").to_string(),
                    rules: Vec::new(),
                });
            }
        } else if let Some(rule) = item.get("rule") {
            let (family, table, name) = (text(rule, "family"), text(rule, "table"), text(rule, "chain"));
            let Some(chain) = chains.iter_mut().find(|c| c.family == family && c.table == table && c.name == name)
            else {
                continue;
            };
            chain.rules.push(parse_rule(rule));
        }
    }
    Ok(chains)
}

fn text(object: &Value, key: &str) -> String {
    object[key].as_str().unwrap_or_default().to_string()
}

fn parse_rule(rule: &Value) -> Rule {
    let mut matches = Vec::new();
    let mut verdict = Verdict::Other;
    for statement in rule["expr"].as_array().into_iter().flatten() {
        let Some((kind, body)) = statement.as_object().and_then(|o| o.iter().next()) else { continue };
        match kind.as_str() {
            "match" => matches.push(address_match(body).unwrap_or(Match::Other)),
            "accept" => verdict = Verdict::Accept,
            "drop" | "reject" => verdict = Verdict::Drop,
            "counter" | "log" | "comment" => {}
            "jump" | "goto" | "return" | "continue" | "queue" => verdict = Verdict::Other,
            // xt (an iptables extension), limit, quota...: the rule is conditional.
            _ => matches.push(Match::Other),
        }
    }
    Rule { handle: rule["handle"].as_u64().unwrap_or_default(), matches, verdict }
}

/// `ip saddr|daddr ==|!= <address or prefix>`.
fn address_match(body: &Value) -> Option<Match> {
    let payload = &body["left"]["payload"];
    if payload["protocol"] != "ip" || !(payload["field"] == "saddr" || payload["field"] == "daddr") {
        return None;
    }
    let negated = match body["op"].as_str()? {
        "==" | "in" => false,
        "!=" => true,
        _ => return None,
    };
    let right = &body["right"];
    let net = match right {
        Value::String(addr) => Ipv4Net::new(addr.parse().ok()?, 32).ok()?,
        _ => {
            let prefix = &right["prefix"];
            let len = u8::try_from(prefix["len"].as_u64()?).ok()?;
            Ipv4Net::new(prefix["addr"].as_str()?.parse().ok()?, len).ok()?.trunc()
        }
    };
    Some(Match::Address { negated, net })
}

/// What a rule does to pod-to-pod traffic of `network`.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    /// Every such packet matches it.
    All,
    /// Some such packets match (a prefix inside the network).
    Part,
    /// None, or only packets of some other kind (conditional).
    Skip,
}

fn effect(rule: &Rule, network: Ipv4Net) -> Effect {
    let mut effect = Effect::All;
    for m in &rule.matches {
        match *m {
            Match::Other => return Effect::Skip,
            Match::Address { negated: false, net } if net.contains(&network) => {}
            Match::Address { negated: false, net } if network.contains(&net) => effect = Effect::Part,
            Match::Address { negated: true, net } if !net.contains(&network.network()) && !network.contains(&net) => {}
            _ => return Effect::Skip,
        }
    }
    effect
}

/// How one chain treats pod-to-pod traffic; `None` when it lets it through.
fn problem(chain: &ForwardChain, network: Ipv4Net, forward_rules: bool) -> Option<String> {
    for rule in &chain.rules {
        match (effect(rule, network), rule.verdict) {
            (Effect::All, Verdict::Accept) => return None,
            (Effect::All | Effect::Part, Verdict::Drop) => {
                return Some(format!(
                    "rule {} of chain {} drops the cluster network {network}",
                    rule.handle,
                    chain.label()
                ))
            }
            _ => {}
        }
    }
    if chain.policy != "drop" || (forward_rules && chain.is_iptables_forward()) {
        return None;
    }
    Some(format!("chain {} has policy drop and no rule accepting the cluster network {network}", chain.label()))
}

/// The verdict over every forward chain. `forward_rules` is `agent.forward_rules`.
pub fn judge(chains: &Result<Vec<ForwardChain>, String>, network: Ipv4Net, forward_rules: bool) -> Check {
    let chains = match chains {
        Ok(chains) => chains,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read the nftables ruleset: {e}"),
                "install nftables (the nft command) and run weft doctor as root",
            )
        }
    };
    let problems: Vec<(&ForwardChain, String)> =
        chains.iter().filter_map(|c| problem(c, network, forward_rules).map(|p| (c, p))).collect();
    let Some((first, _)) = problems.first() else {
        let covered = chains.iter().find(|c| forward_rules && c.is_iptables_forward() && c.policy == "drop");
        let detail = match covered {
            Some(c) => format!(
                "chain {} has policy drop: weft appends its accept rules for {network} there (agent.forward_rules = true)",
                c.label()
            ),
            None => format!("no forward chain drops the cluster network {network}"),
        };
        return Check::pass(NAME, detail);
    };
    let detail = problems.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join("; ");
    let fix = if first.is_iptables_forward() && !forward_rules {
        "set agent.forward_rules = true (weft then appends accept rules for the cluster network to ip filter FORWARD)"
            .to_string()
    } else {
        format!(
            "accept the cluster network before the drop: nft insert rule {} {} {} ip saddr {network} accept; and the same with ip daddr",
            first.family, first.table, first.name
        )
    };
    Check::fail(NAME, detail, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Ipv4Net {
        "10.244.0.0/16".parse().unwrap()
    }

    /// What nft 1.0.6 prints for iptables-nft's FORWARD chain with policy DROP, a drop of
    /// `drop_cidr` (`-s`) and a conntrack rule (an `xt` match), plus an inet table of its own.
    fn sample(policy: &str, rules: &str) -> String {
        format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
            {{"table": {{"family": "ip", "name": "filter", "handle": 1}}}},
            {{"chain": {{"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "{policy}"}}}},
            {{"chain": {{"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 9}}}},
            {{"rule": {{"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 10, "expr": [{{"drop": null}}]}}}},
            {rules}
            {{"table": {{"family": "inet", "name": "mine", "handle": 2}}}},
            {{"chain": {{"family": "inet", "table": "mine", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}}}
            ]}}"#
        )
    }

    fn rule(handle: u64, expr: &str) -> String {
        format!(
            r#"{{"rule": {{"family": "ip", "table": "filter", "chain": "FORWARD", "handle": {handle}, "expr": [{expr}]}}}},"#
        )
    }

    fn addr(field: &str, op: &str, cidr: &str) -> String {
        let (a, len) = cidr.split_once('/').unwrap();
        format!(
            r#"{{"match": {{"op": "{op}", "left": {{"payload": {{"protocol": "ip", "field": "{field}"}}}}, "right": {{"prefix": {{"addr": "{a}", "len": {len}}}}}}}}}"#
        )
    }

    const CONNTRACK: &str = r#"{"xt": {"type": "match", "name": "conntrack"}}"#;
    const COUNTER: &str = r#"{"counter": {"packets": 0, "bytes": 0}}"#;

    fn check(json: &str, forward_rules: bool) -> Check {
        judge(&parse(json), net(), forward_rules)
    }

    #[test]
    fn parses_forward_base_chains_and_their_rules_only() {
        let json = sample(
            "drop",
            &rule(2, &format!("{}, {COUNTER}, {{\"drop\": null}}", addr("saddr", "==", "10.244.0.0/16"))),
        );
        let chains = parse(&json).unwrap();
        assert_eq!(chains.len(), 1, "{chains:?}");
        assert_eq!((chains[0].label(), chains[0].policy.as_str()), ("ip filter FORWARD".to_string(), "drop"));
        assert_eq!(
            chains[0].rules,
            [Rule { handle: 2, matches: vec![Match::Address { negated: false, net: net() }], verdict: Verdict::Drop }]
        );
        assert!(parse("[]").is_err());
    }

    #[test]
    fn a_drop_policy_fails_without_forward_rules_and_passes_with_them() {
        let json = sample("drop", "");
        let off = check(&json, false);
        assert!(!off.ok);
        assert!(off.detail.contains("chain ip filter FORWARD has policy drop"), "{}", off.detail);
        assert!(off.fix.unwrap().starts_with("set agent.forward_rules = true"));
        let on = check(&json, true);
        assert!(on.ok, "{on:?}");
        assert!(on.detail.contains("weft appends its accept rules"), "{}", on.detail);
        assert!(check(&sample("accept", ""), false).ok);
    }

    #[test]
    fn accept_rules_for_the_network_let_it_through_a_drop_policy() {
        let accept = format!("{}, {COUNTER}, {{\"accept\": null}}", addr("saddr", "==", "10.244.0.0/16"));
        let json = sample("drop", &format!("{}{}", rule(3, CONNTRACK), rule(4, &accept)));
        assert!(check(&json, false).ok);
        // Accepting a wider network does too; accepting only part of it does not.
        let wider = format!("{}, {{\"accept\": null}}", addr("daddr", "==", "10.0.0.0/8"));
        assert!(check(&sample("drop", &rule(4, &wider)), false).ok);
        let part = format!("{}, {{\"accept\": null}}", addr("daddr", "==", "10.244.3.0/24"));
        assert!(!check(&sample("drop", &rule(4, &part)), false).ok);
    }

    #[test]
    fn a_foreign_drop_rule_fails_even_with_forward_rules() {
        let drop = format!("{}, {{\"drop\": null}}", addr("daddr", "==", "10.244.3.0/24"));
        let failed = check(&sample("accept", &rule(7, &drop)), true);
        assert!(!failed.ok);
        assert!(failed.detail.contains("rule 7 of chain ip filter FORWARD drops"), "{}", failed.detail);
        assert!(failed.fix.unwrap().contains("nft insert rule ip filter FORWARD ip saddr 10.244.0.0/16 accept"));
        // Conditional drops (conntrack, another network, a negated match) are not judged.
        let other = format!("{}, {{\"drop\": null}}", addr("saddr", "==", "192.0.2.0/24"));
        let negated = format!("{}, {{\"reject\": null}}", addr("saddr", "!=", "10.244.0.0/16"));
        let json = sample(
            "accept",
            &format!(
                "{}{}{}",
                rule(2, &format!("{CONNTRACK}, {{\"drop\": null}}")),
                rule(3, &other),
                rule(4, &negated)
            ),
        );
        assert!(check(&json, false).ok, "{:?}", check(&json, false));
    }

    #[test]
    fn a_drop_policy_in_a_table_of_its_own_is_not_covered_by_forward_rules() {
        let json = r#"{"nftables": [{"chain": {"family": "inet", "table": "firewall", "name": "fwd", "hook": "forward", "policy": "drop"}}]}"#;
        let failed = check(json, true);
        assert!(!failed.ok);
        assert!(failed
            .fix
            .unwrap()
            .starts_with("accept the cluster network before the drop: nft insert rule inet firewall fwd"));
    }

    #[test]
    fn an_unreadable_ruleset_is_a_failure_that_says_why() {
        let failed = judge(&Err("nft: not found".into()), net(), true);
        assert!(!failed.ok && failed.detail.contains("nft: not found"));
        assert!(check(r#"{"nftables": []}"#, false).ok);
    }
}
