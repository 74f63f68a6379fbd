//! Looking at a running lab from inside its namespaces: pod-to-pod ping (iputils' `ping`, run in
//! the source pod's namespace) and an HTTP GET of an agent's `/readyz` on the host's loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::report::Probe;
use super::LabError;
use crate::netns::Netns;

/// Three echo requests 0.2 s apart, each given 1 s: a failing pair costs about 1.5 s.
const PING_ARGS: [&str; 7] = ["-c", "3", "-i", "0.2", "-W", "1", "-q"];
/// How long `/readyz` may take to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// One ping to run: from a namespace to an address.
#[derive(Debug, Clone)]
pub struct PingJob {
    pub from_ns: String,
    /// Either family: iputils' ping picks it from the address.
    pub to: std::net::IpAddr,
}

/// Runs every job at once and returns their results in order. A ping that cannot even start
/// (no `ping` installed) is an error: every result would be a meaningless ✗.
pub fn ping_all(jobs: &[PingJob]) -> Result<Vec<Probe>, LabError> {
    let mut children: Vec<Child> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let ns = Netns::open(&job.from_ns).map_err(LabError::io(format!("open {}", job.from_ns)))?;
        let command = ns.command("ping").map_err(LabError::io(format!("open {}", job.from_ns)))?;
        children.push(spawn_ping(command, job.to)?);
    }
    Ok(collect_pings(children))
}

/// Like [`ping_all`], from this process's own namespace (`weft check connectivity` on a host).
pub fn ping_here(targets: &[std::net::IpAddr]) -> Result<Vec<Probe>, LabError> {
    let children =
        targets.iter().map(|to| spawn_ping(std::process::Command::new("ping"), *to)).collect::<Result<Vec<_>, _>>()?;
    Ok(collect_pings(children))
}

fn spawn_ping(mut command: std::process::Command, to: impl Into<std::net::IpAddr>) -> Result<Child, LabError> {
    let to = to.into();
    command
        .args(PING_ARGS)
        .arg(to.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(LabError::io("run ping (install iputils-ping: apt-get install iputils-ping)"))
}

fn collect_pings(children: Vec<Child>) -> Vec<Probe> {
    children
        .into_iter()
        .map(|child| match child.wait_with_output() {
            Ok(out) if out.status.success() => {
                parse_avg_rtt(&String::from_utf8_lossy(&out.stdout)).map(Probe::Rtt).unwrap_or(Probe::Failed)
            }
            _ => Probe::Failed,
        })
        .collect()
}

/// One pod of the matrix: its namespace and address, `None` where there is no pod.
pub type Pod = Option<(String, std::net::IpAddr)>;

/// Every pod pings every other: `result[from][to]`. Pairs with a missing pod are failures.
pub fn pod_matrix(pods: &[Pod]) -> Result<Vec<Vec<Probe>>, LabError> {
    let mut jobs = Vec::new();
    let mut slots = Vec::new();
    for (from, source) in pods.iter().enumerate() {
        for (to, target) in pods.iter().enumerate() {
            if let (Some((ns, _)), Some((_, addr)), true) = (source, target, from != to) {
                jobs.push(PingJob { from_ns: ns.clone(), to: *addr });
                slots.push((from, to));
            }
        }
    }
    let mut matrix: Vec<Vec<Probe>> = (0..pods.len())
        .map(|from| (0..pods.len()).map(|to| if from == to { Probe::Itself } else { Probe::Failed }).collect())
        .collect();
    for ((from, to), probe) in slots.into_iter().zip(ping_all(&jobs)?) {
        matrix[from][to] = probe;
    }
    Ok(matrix)
}

/// The average of iputils' summary line `rtt min/avg/max/mdev = 0.041/0.052/0.066/0.010 ms`.
pub fn parse_avg_rtt(output: &str) -> Option<Duration> {
    let line = output.lines().find(|l| l.starts_with("rtt ") || l.starts_with("round-trip "))?;
    let (_, values) = line.split_once(" = ")?;
    let (numbers, unit) = values.trim().split_once(' ')?;
    let avg: f64 = numbers.split('/').nth(1)?.parse().ok()?;
    let millis = match unit.trim() {
        "ms" => avg,
        "s" => avg * 1000.0,
        _ => return None,
    };
    (millis.is_finite() && millis >= 0.0).then(|| Duration::from_secs_f64(millis / 1000.0))
}

/// GET `path` from `addr` inside `ns`: the HTTP status, or `None` when nothing answers.
pub fn http_status(ns: &Netns, addr: SocketAddr, path: &str) -> Result<Option<u16>, LabError> {
    Ok(http_get(ns, addr, path)?.map(|(status, _)| status))
}

/// GET `path` from `addr` inside `ns`: status and body, or `None` when nothing answers.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<Option<(u16, String)>, LabError> {
    let path = path.to_string();
    let answer = ns
        .run(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .map_err(LabError::io(format!("enter {}", ns.name)))?;
    Ok(answer.ok().and_then(|text| {
        let status = parse_status(&text)?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    }))
}

/// A sample's value in Prometheus' text format (`name value`), if present.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The status code of an HTTP response's first line.
fn parse_status(response: &str) -> Option<u16> {
    let first = response.lines().next()?;
    let mut words = first.split_whitespace();
    words.next().filter(|w| w.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_rtt_from_iputils() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\n--- 10.244.2.2 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 405ms\nrtt min/avg/max/mdev = 0.041/0.052/0.066/0.010 ms\n";
        assert_eq!(parse_avg_rtt(out), Some(Duration::from_micros(52)));
        let busybox = "round-trip min/avg/max = 1.000/2.500/4.000 ms\n";
        assert_eq!(parse_avg_rtt(busybox), Some(Duration::from_micros(2500)));
    }

    #[test]
    fn no_rtt_when_everything_was_lost() {
        let out =
            "--- 10.244.2.2 ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 2046ms\n";
        assert_eq!(parse_avg_rtt(out), None);
        assert_eq!(parse_avg_rtt("rtt min/avg/max/mdev = a/b/c/d ms"), None);
    }

    #[test]
    fn prometheus_samples() {
        let body = "# HELP weft_leases_watched x\nweft_leases_watched 2\nweft_leases_watched_total 9\n";
        assert_eq!(metric(body, "weft_leases_watched"), Some(2.0));
        assert_eq!(metric(body, "weft_ready"), None);
    }

    #[test]
    fn http_status_line() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r\n\r\nok"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status("garbage"), None);
        assert_eq!(parse_status(""), None);
    }
}
