//! `weft status [-o json] [--agent URL]`: asks the local agent (`GET /status` on `agent.listen`)
//! what it is doing and shows it. Exit 0 when ready, 1 when not, 2 when the agent cannot be
//! reached.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;

use super::output::{print_json, OutputArgs};
use super::{CommandError, GlobalArgs};
use crate::config::Flags;
use crate::status::AgentStatus;

/// How long the agent may take to connect and to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// The agent's address (`http://127.0.0.1:9810` or `127.0.0.1:9810`); default: agent.listen
    /// from the configuration (file, environment).
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
}

pub fn run(global: &GlobalArgs, args: StatusArgs) -> Result<(), CommandError> {
    let agent = match &args.agent {
        Some(url) => url.clone(),
        None => {
            let listen = global.load_config(Flags::default())?.config.agent.listen;
            if listen.is_empty() {
                return Err(CommandError::Input(
                    "agent.listen is \"\": the agent serves no status; give its address with --agent".into(),
                ));
            }
            listen
        }
    };
    let addr = host_port(&agent);
    let body = get_status(addr).map_err(|why| {
        CommandError::Unreachable(format!("cannot reach the agent at {addr}: {why} (is `weft agent` running there?)"))
    })?;
    let status: AgentStatus = serde_json::from_str(&body).map_err(|e| {
        CommandError::Unreachable(format!("the agent at {addr} answered /status with something unreadable: {e}"))
    })?;
    if args.output.is_json() {
        print_json(&status)?;
    } else {
        print!("{}", status.render());
    }
    if status.ready {
        return Ok(());
    }
    let failing: Vec<&str> = status.conditions.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    Err(CommandError::Runtime(format!("the agent is not ready ({})", failing.join(", "))))
}

/// `http://host:port/` or `host:port` → `host:port`.
fn host_port(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// `GET /status` over HTTP/1.0: the body of a 200 answer, or why there is none.
fn get_status(addr: &str) -> Result<String, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("not an address: {e}"))?
        .next()
        .ok_or_else(|| "the name resolves to no address".to_string())?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    write!(stream, "GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("an answer that is not HTTP")?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    match code {
        "200" => Ok(body.to_string()),
        "404" => Err("it does not serve /status (a weft older than this command?)".into()),
        other => Err(format!("HTTP status {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_taken_from_a_url_or_as_given() {
        assert_eq!(host_port("http://127.0.0.1:9810/"), "127.0.0.1:9810");
        assert_eq!(host_port("http://localhost:9810/status"), "localhost:9810");
        assert_eq!(host_port("127.0.0.1:9810"), "127.0.0.1:9810");
    }

    #[test]
    fn nothing_listening_is_said_plainly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let why = get_status(&format!("127.0.0.1:{port}")).unwrap_err();
        assert!(why.contains("refused"), "{why}");
    }
}
