//! `weft doctor`: checks of this host before (or while) it joins the cluster. Each check is a
//! small pure judge (`facts in, Check out`) next to the facts it reads; gathering the facts from
//! the system (sysctls, netlink, a socket, `nft -j`, the store, the cloud) is kept apart in
//! [`gather`] and the cloud modules, so every verdict and every fix is unit-tested.
//!
//! A check that does not apply to the configured backend or store is not shown.

use serde::{Deserialize, Serialize};

#[cfg(feature = "aws")]
pub mod aws;
pub mod firewall;
pub mod gather;
#[cfg(feature = "gce")]
pub mod gce;
pub mod host;
pub mod store;

/// One verdict: what was checked, what was found, and, when it failed, what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable and machine-friendly (`kernel.ip_forward`).
    pub name: String,
    pub ok: bool,
    /// What was found, in one line.
    pub detail: String,
    /// For a failed check: one concrete step (a command or the config key to change).
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok: true, detail: detail.into(), fix: None }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), ok: false, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// The checks as text: one `✓`/`✗` line each, a `fix:` line under each failure.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        let mark = if check.ok { '✓' } else { '✗' };
        out.push_str(&format!("{mark} {:<width$}  {}\n", check.name, check.detail));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("  {:<width$}  fix: {fix}\n", ""));
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    match failed {
        0 => out.push_str(&format!("all {} checks passed\n", checks.len())),
        n => out.push_str(&format!("{n} of {} checks failed\n", checks.len())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_their_fix_and_the_summary_counts_them() {
        let checks = [
            Check::pass("kernel.ip_forward", "net.ipv4.ip_forward = 1"),
            Check::fail("udp_port", "UDP 8472 is taken", "free the port"),
        ];
        assert_eq!(
            render(&checks),
            "✓ kernel.ip_forward  net.ipv4.ip_forward = 1\n\
             ✗ udp_port           UDP 8472 is taken\n\
             \x20                    fix: free the port\n\
             1 of 2 checks failed\n"
        );
        assert_eq!(render(&checks[..1]).lines().last(), Some("all 1 checks passed"));
        let json = serde_json::to_value(&checks[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "udp_port", "ok": false, "detail": "UDP 8472 is taken", "fix": "free the port"})
        );
    }
}
