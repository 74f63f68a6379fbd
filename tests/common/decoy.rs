//! A server no one should call: it accepts connections and keeps the first bytes of each, so a
//! test can show that nothing (no request, no credential) was sent to it.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Decoy {
    /// `http://<address>:<port>`.
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Decoy {
    /// Listens on a free port of 127.0.0.1; the thread lives as long as the test process.
    pub fn start() -> Decoy {
        Decoy::serve(TcpListener::bind("127.0.0.1:0").expect("bind the decoy"))
    }

    /// Listens on a free port of `ip` in `netns` (a socket stays in the namespace it was made in).
    pub fn start_in(netns: &weft::netns::Netns, ip: Ipv4Addr) -> Decoy {
        let listener = netns.run(move || TcpListener::bind(SocketAddr::from((ip, 0)))).expect("enter the namespace");
        Decoy::serve(listener.expect("bind the decoy"))
    }

    fn serve(listener: TcpListener) -> Decoy {
        let url = format!("http://{}", listener.local_addr().expect("decoy address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut head = vec![0; 4096];
                let n = stream.read(&mut head).unwrap_or(0);
                let text = String::from_utf8_lossy(&head[..n]).into_owned();
                record.lock().expect("decoy log").push(text);
            }
        });
        Decoy { url, seen }
    }

    /// What each connection sent (its first 4 KiB), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("decoy log").clone()
    }
}
