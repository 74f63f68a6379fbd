//! `weft status`: the document the agent serves at `GET /status` on `agent.listen` and the CLI
//! renders. One set of types for both ends, so the two cannot drift apart.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What the agent is doing, as of the moment it was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// What `/readyz` says: every condition holds.
    pub ready: bool,
    /// Every readiness condition, in a fixed order, holding or not (then with its reason).
    pub conditions: Vec<ConditionState>,
    /// This host's lease; None while none is held.
    pub lease: Option<LeaseState>,
    pub backends: Backends,
    pub peers: Peers,
    pub kernel: KernelObjects,
    pub store: StoreHealth,
    /// The last re-read of the configuration (SIGHUP or an edited file); None: none yet.
    pub last_reload: Option<Reload>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionState {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    /// The subnets this host holds: its IPv4 one, and its IPv6 one in a dual-stack network.
    pub subnets: Vec<String>,
    pub public_ip: String,
    /// Its `PublicIPv6`, in a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<String>,
    pub backend_type: String,
    /// RFC 3339; None for a reservation (never expires) or when the store does not say.
    pub expires: Option<String>,
}

/// The backends' lives: the one peers are moved to, and those still serving peers that have not
/// switched yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backends {
    pub active: Option<String>,
    pub retiring: Vec<String>,
}

/// Peers by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// Other hosts' leases the agent knows of.
    pub known: u64,
    /// Peers the kernel backends (vxlan, host-gw) installed objects for.
    pub kernel: u64,
    /// Peers carried by a cloud route (aws-vpc, gce).
    pub cloud: u64,
    /// Peers a cloud backend sends over vxlan (`overflow = "vxlan"`).
    pub overlay: u64,
}

/// weft's kernel objects (routes, nexthops, neighbours, FDB entries), as of the last sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelObjects {
    pub wanted: u64,
    pub installed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// The last request to the store succeeded (true until one fails).
    pub ok: bool,
    /// Failed requests since the agent started (`weft_store_errors_total`).
    pub errors: u64,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_error_at: Option<String>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth { ok: true, errors: 0, last_error: None, last_error_at: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// RFC 3339.
    pub at: String,
    /// What started it: `SIGHUP`, `config file changed`.
    pub trigger: String,
    pub ok: bool,
    /// `unchanged`, `applied`, or what went wrong.
    pub outcome: String,
}

/// A time as the status shows it: RFC 3339, to the second.
pub fn timestamp(when: SystemTime) -> String {
    humantime::format_rfc3339_seconds(when).to_string()
}

impl AgentStatus {
    /// `weft status`'s text: one line per part, a ✓ or ✗ per condition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "ready: {}", if self.ready { "yes" } else { "no" });
        for c in &self.conditions {
            let mark = if c.ok { '✓' } else { '✗' };
            match &c.reason {
                Some(why) => _ = writeln!(out, "  {mark} {}: {why}", c.name),
                None => _ = writeln!(out, "  {mark} {}", c.name),
            }
        }
        match &self.lease {
            Some(lease) => {
                let expires = lease.expires.as_deref().unwrap_or("never");
                // An IPv6-only host publishes 0.0.0.0 for IPv4 (flannel's spelling): not shown.
                let v4 = Some(lease.public_ip.as_str()).filter(|ip| *ip != "0.0.0.0");
                let publics: Vec<&str> = v4.into_iter().chain(lease.public_ipv6.as_deref()).collect();
                let public = match publics.len() {
                    1 => format!("public IP {}", publics[0]),
                    _ => format!("public IPs {}", publics.join(", ")),
                };
                let _ = writeln!(
                    out,
                    "lease: {} ({public}, backend {}), expires {expires}",
                    lease.subnets.join(", "),
                    lease.backend_type
                );
            }
            None => _ = writeln!(out, "lease: none held"),
        }
        let active = self.backends.active.as_deref().unwrap_or("none");
        let retiring =
            if self.backends.retiring.is_empty() { "none".to_string() } else { self.backends.retiring.join(", ") };
        let _ = writeln!(out, "backends: active {active}; retiring {retiring}");
        let p = &self.peers;
        let _ =
            writeln!(out, "peers: {} known; kernel {}, cloud {}, overlay {}", p.known, p.kernel, p.cloud, p.overlay);
        let _ = writeln!(out, "kernel objects: {} installed of {} wanted", self.kernel.installed, self.kernel.wanted);
        let s = &self.store;
        if s.ok {
            let _ = writeln!(out, "store: ok ({} failed requests since start)", s.errors);
        } else {
            let why = s.last_error.as_deref().unwrap_or("unknown error");
            let at = s.last_error_at.as_deref().unwrap_or("?");
            let _ = writeln!(out, "store: failing since {at}: {why} ({} failed requests since start)", s.errors);
        }
        match &self.last_reload {
            Some(r) => {
                let mark = if r.ok { '✓' } else { '✗' };
                let _ = writeln!(out, "last reload: {mark} {} ({}): {}", r.at, r.trigger, r.outcome);
            }
            None => _ = writeln!(out, "last reload: none"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentStatus {
        AgentStatus {
            ready: false,
            conditions: vec![
                ConditionState { name: "network".into(), ok: true, reason: None },
                ConditionState { name: "lease".into(), ok: false, reason: Some("no lease held yet".into()) },
            ],
            lease: Some(LeaseState {
                subnets: vec!["10.244.3.0/24".into()],
                public_ip: "198.51.100.11".into(),
                public_ipv6: None,
                backend_type: "host-gw".into(),
                expires: Some("2026-12-03T00:10:00Z".into()),
            }),
            backends: Backends { active: Some("host-gw".into()), retiring: vec!["vxlan".into()] },
            peers: Peers { known: 3, kernel: 2, cloud: 0, overlay: 0 },
            kernel: KernelObjects { wanted: 4, installed: 3 },
            store: StoreHealth {
                ok: false,
                errors: 7,
                last_error: Some("connection refused".into()),
                last_error_at: Some("2026-12-03T00:01:00Z".into()),
            },
            last_reload: Some(Reload {
                at: "2026-12-03T00:00:00Z".into(),
                trigger: "SIGHUP".into(),
                ok: false,
                outcome: "agent.resync = \"0s\": too short".into(),
            }),
        }
    }

    #[test]
    fn text_has_a_line_per_part_and_a_mark_per_condition() {
        assert_eq!(
            sample().render(),
            "ready: no\n  ✓ network\n  ✗ lease: no lease held yet\n\
             lease: 10.244.3.0/24 (public IP 198.51.100.11, backend host-gw), expires 2026-12-03T00:10:00Z\n\
             backends: active host-gw; retiring vxlan\n\
             peers: 3 known; kernel 2, cloud 0, overlay 0\n\
             kernel objects: 3 installed of 4 wanted\n\
             store: failing since 2026-12-03T00:01:00Z: connection refused (7 failed requests since start)\n\
             last reload: ✗ 2026-12-03T00:00:00Z (SIGHUP): agent.resync = \"0s\": too short\n"
        );
    }

    #[test]
    fn a_dual_stack_lease_shows_both_subnets_and_public_ips() {
        let mut status = sample();
        let lease = status.lease.as_mut().unwrap();
        lease.subnets.push("2001:db8:42:3::/64".into());
        lease.public_ipv6 = Some("2001:db8::11".into());
        let text = status.render();
        let line = "lease: 10.244.3.0/24, 2001:db8:42:3::/64 (public IPs 198.51.100.11, 2001:db8::11, backend host-gw)";
        assert!(text.contains(line), "{text}");
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), status);
    }

    #[test]
    fn an_ipv6_only_lease_shows_its_ipv6_side_only() {
        let mut status = sample();
        let lease = status.lease.as_mut().unwrap();
        lease.subnets = vec!["2001:db8:42:3::/64".into()];
        (lease.public_ip, lease.public_ipv6) = ("0.0.0.0".into(), Some("2001:db8::11".into()));
        let text = status.render();
        assert!(text.contains("lease: 2001:db8:42:3::/64 (public IP 2001:db8::11, backend host-gw)"), "{text}");
    }

    #[test]
    fn a_fresh_agent_renders_without_a_lease_or_reload() {
        let text = AgentStatus::default().render();
        assert!(text.contains("lease: none held\n"), "{text}");
        assert!(text.contains("backends: active none; retiring none\n"), "{text}");
        assert!(text.contains("store: ok (0 failed requests since start)\n"), "{text}");
        assert!(text.ends_with("last reload: none\n"), "{text}");
    }

    #[test]
    fn the_document_survives_json() {
        let status = sample();
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), status);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["conditions"][1]["reason"], "no lease held yet");
        assert!(value["conditions"][0].get("reason").is_none());
    }
}
