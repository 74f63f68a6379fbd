//! The tables `weft lab` prints, as pure functions of what was measured.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

/// The outcome of pinging one pod from another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probe {
    /// Answered; the average round trip.
    Rtt(Duration),
    /// No answer (or no pod to ask).
    Failed,
    /// A pod and itself: not measured.
    Itself,
}

impl Probe {
    fn cell(&self) -> String {
        match self {
            Probe::Rtt(rtt) => format_rtt(*rtt),
            Probe::Failed => "✗".into(),
            Probe::Itself => "·".into(),
        }
    }
}

/// `0.052 ms`, `12.5 ms`: three significant digits are plenty for a ping.
pub fn format_rtt(rtt: Duration) -> String {
    let ms = rtt.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A host × host table: row = the pod pinging, column = the pod pinged. `probes[from][to]`.
pub fn render_matrix(names: &[String], probes: &[Vec<Probe>]) -> String {
    let corner = "from \\ to";
    let cells: Vec<Vec<String>> = probes.iter().map(|row| row.iter().map(Probe::cell).collect()).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .chain(cells.iter().flatten().map(|c| c.chars().count()))
        .max()
        .unwrap_or(1)
        + 2;
    let first = names.iter().map(|n| n.chars().count()).chain([corner.len()]).max().unwrap_or(0) + 2;
    let mut out = format!("{corner:<first$}");
    for name in names {
        let _ = write!(out, "{name:<width$}");
    }
    trim_line(&mut out);
    for (name, row) in names.iter().zip(&cells) {
        let _ = write!(out, "{name:<first$}");
        for cell in row {
            let _ = write!(out, "{cell:<width$}");
        }
        trim_line(&mut out);
    }
    out
}

/// One cell of the matrix for `-o json`: `rtt_ms` is absent when no answer came.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeLine {
    pub from: String,
    pub to: String,
    pub reachable: bool,
    pub rtt_ms: Option<f64>,
}

/// The matrix as a list of pairs, a pod and itself left out.
pub fn probe_lines(names: &[String], probes: &[Vec<Probe>]) -> Vec<ProbeLine> {
    let mut lines = Vec::new();
    for (from, row) in names.iter().zip(probes) {
        for (to, probe) in names.iter().zip(row) {
            let rtt_ms = match probe {
                Probe::Rtt(rtt) => Some(rtt.as_secs_f64() * 1000.0),
                Probe::Failed => None,
                Probe::Itself => continue,
            };
            lines.push(ProbeLine { from: from.clone(), to: to.clone(), reachable: rtt_ms.is_some(), rtt_ms });
        }
    }
    lines
}

/// Whether the matrix is a success: no ✗, unless the backend installs no routes (alloc), where
/// ✗ everywhere is what it is meant to show. Otherwise the number of pairs without an answer.
pub fn matrix_verdict(probes: &[Vec<Probe>], unreachable_expected: bool) -> Result<(), usize> {
    let failed = probes.iter().flatten().filter(|p| **p == Probe::Failed).count();
    if failed == 0 || unreachable_expected {
        Ok(())
    } else {
        Err(failed)
    }
}

/// One lease as `weft lab` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseLine {
    /// The lab host with that public IP, if any.
    pub host: Option<String>,
    pub subnet: String,
    /// The public IPv4 address, or an IPv6-only host's IPv6 one.
    pub public_ip: std::net::IpAddr,
    pub backend: String,
}

pub fn render_leases(leases: &[LeaseLine]) -> String {
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                l.host.clone().unwrap_or_else(|| "?".into()),
                l.subnet.clone(),
                l.public_ip.to_string(),
                l.backend.clone(),
            ]
        })
        .collect();
    render_table(&["HOST", "SUBNET", "PUBLIC IP", "BACKEND"], &rows)
}

/// One host as `weft lab status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostLine {
    pub name: String,
    pub ns: String,
    /// The agent's pid, and whether that process is alive.
    pub agent: Option<(u32, bool)>,
    pub subnet: Option<String>,
    /// `/readyz`'s status; `None` when nothing answered.
    pub ready: Option<u16>,
}

pub fn render_hosts(hosts: &[HostLine]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let agent = match h.agent {
                Some((pid, true)) => format!("running (pid {pid})"),
                Some((pid, false)) => format!("dead (pid {pid})"),
                None => "not started".into(),
            };
            let ready = match h.ready {
                Some(200) => "ready".to_string(),
                Some(code) => format!("not ready ({code})"),
                None => "no answer".into(),
            };
            vec![h.name.clone(), h.ns.clone(), agent, h.subnet.clone().unwrap_or_else(|| "-".into()), ready]
        })
        .collect();
    render_table(&["HOST", "NAMESPACE", "AGENT", "SUBNET", "/readyz"], &rows)
}

/// Left-aligned columns two spaces apart, no trailing spaces.
fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(out, "{cell:<width$}  ", width = *w);
        }
        trim_line(&mut out);
    }
    out
}

fn trim_line(out: &mut String) {
    let kept = out.trim_end_matches(' ').len();
    out.truncate(kept);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_layout() {
        let names = vec!["h1".to_string(), "h2".to_string(), "h3".to_string()];
        let ms = |us| Probe::Rtt(Duration::from_micros(us));
        let probes = vec![
            vec![Probe::Itself, ms(52), Probe::Failed],
            vec![ms(61), Probe::Itself, ms(12_500)],
            vec![Probe::Failed, Probe::Failed, Probe::Itself],
        ];
        let expected = "\
from \\ to  h1        h2        h3
h1         ·         0.052 ms  ✗
h2         0.061 ms  ·         12.50 ms
h3         ✗         ✗         ·
";
        assert_eq!(render_matrix(&names, &probes), expected);
    }

    #[test]
    fn any_unanswered_ping_fails_the_matrix_unless_expected() {
        let ms = |us| Probe::Rtt(Duration::from_micros(us));
        let good = vec![vec![Probe::Itself, ms(52)], vec![ms(61), Probe::Itself]];
        assert_eq!(matrix_verdict(&good, false), Ok(()));
        let one_way = vec![vec![Probe::Itself, ms(52)], vec![Probe::Failed, Probe::Itself]];
        assert_eq!(matrix_verdict(&one_way, false), Err(1));
        let none = vec![vec![Probe::Itself, Probe::Failed], vec![Probe::Failed, Probe::Itself]];
        assert_eq!(matrix_verdict(&none, false), Err(2));
        assert_eq!(matrix_verdict(&none, true), Ok(()), "alloc: no routes, no pings");
        assert_eq!(matrix_verdict(&[vec![Probe::Itself]], false), Ok(()), "one host");
    }

    #[test]
    fn probe_lines_leave_out_each_pod_and_itself() {
        let names = vec!["h1".to_string(), "h2".to_string()];
        let probes =
            vec![vec![Probe::Itself, Probe::Rtt(Duration::from_micros(500))], vec![Probe::Failed, Probe::Itself]];
        let lines = probe_lines(&names, &probes);
        assert_eq!(
            lines,
            [
                ProbeLine { from: "h1".into(), to: "h2".into(), reachable: true, rtt_ms: Some(0.5) },
                ProbeLine { from: "h2".into(), to: "h1".into(), reachable: false, rtt_ms: None },
            ]
        );
    }

    #[test]
    fn rtt_formats() {
        assert_eq!(format_rtt(Duration::from_micros(41)), "0.041 ms");
        assert_eq!(format_rtt(Duration::from_micros(1_234)), "1.234 ms");
        assert_eq!(format_rtt(Duration::from_millis(250)), "250 ms");
    }

    #[test]
    fn lease_table() {
        let leases = vec![
            LeaseLine {
                host: Some("h1".into()),
                subnet: "10.244.17.0/24".into(),
                public_ip: std::net::Ipv4Addr::new(198, 51, 100, 11).into(),
                backend: "alloc".into(),
            },
            LeaseLine {
                host: None,
                subnet: "10.244.2.0/24".into(),
                public_ip: std::net::Ipv4Addr::new(203, 0, 113, 9).into(),
                backend: "vxlan".into(),
            },
        ];
        let expected = "\
HOST  SUBNET          PUBLIC IP      BACKEND
h1    10.244.17.0/24  198.51.100.11  alloc
?     10.244.2.0/24   203.0.113.9    vxlan
";
        assert_eq!(render_leases(&leases), expected);
    }

    #[test]
    fn host_table() {
        let hosts = vec![
            HostLine {
                name: "h1".into(),
                ns: "weft-lab-h1".into(),
                agent: Some((42, true)),
                subnet: Some("10.244.17.0/24".into()),
                ready: Some(200),
            },
            HostLine {
                name: "h2".into(),
                ns: "weft-lab-h2".into(),
                agent: Some((43, false)),
                subnet: None,
                ready: None,
            },
        ];
        let text = render_hosts(&hosts);
        assert!(text.contains("h1    weft-lab-h1  running (pid 42)  10.244.17.0/24  ready"), "{text}");
        assert!(text.contains("dead (pid 43)") && text.contains("no answer"), "{text}");
    }
}
