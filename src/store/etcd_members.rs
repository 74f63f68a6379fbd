//! Which etcd member the store talks to. tonic's balancer (behind etcd-client's multi-endpoint
//! client) reports an endpoint whose connection failed as ready, and its power-of-two choice then
//! prefers the dead member because nothing is pending on it (grpc-rust#2839): with one member of
//! three down, a third to a half of the requests fail, for as long as the member stays down.
//! So weft keeps one client per member and picks the member itself: it stays with one until a
//! request to it finds it unavailable, then moves on to the next one.

use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;

/// One etcd member, by its place in the configured endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Member(usize);

/// The configured members, a client for each (made on first use), and the one in use.
pub(super) struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
    clients: Vec<OnceCell<Client>>,
    current: AtomicUsize,
}

impl Members {
    /// The agents of a cluster start on members picked at random, not all on the first one.
    pub(super) fn new(endpoints: Vec<String>, options: ConnectOptions) -> Members {
        let first = rand::random_range(0..endpoints.len().max(1));
        Members::starting_at(endpoints, options, first)
    }

    fn starting_at(endpoints: Vec<String>, options: ConnectOptions, first: usize) -> Members {
        let clients = endpoints.iter().map(|_| OnceCell::new()).collect();
        Members { endpoints, options, clients, current: AtomicUsize::new(first) }
    }

    pub(super) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The member in use and its client. The client is made on first use: without auth that
    /// dials nothing yet; with auth it signs in, and an error is returned for the caller to
    /// judge (an unavailable member is then passed to [`Members::failed`] like any other).
    pub(super) async fn client(&self) -> (Member, Result<Client, etcd_client::Error>) {
        let member = Member(self.current.load(Ordering::Relaxed));
        let endpoint = &self.endpoints[member.0];
        let made = self.clients[member.0]
            .get_or_try_init(|| Client::connect([endpoint.as_str()], Some(self.options.clone())))
            .await;
        (member, made.cloned())
    }

    /// `member` did not answer: the next request goes to the member after it. A failure seen
    /// by several requests at once moves on once, not once for each.
    pub(super) fn failed(&self, member: Member) {
        let next = (member.0 + 1) % self.endpoints.len();
        if next == member.0 {
            return;
        }
        let moved = self.current.compare_exchange(member.0, next, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if moved {
            tracing::info!(
                unavailable = %self.endpoints[member.0],
                next = %self.endpoints[next],
                "etcd member unavailable; trying the next one"
            );
        }
    }

    #[cfg(test)]
    fn endpoint(&self, member: Member) -> &str {
        &self.endpoints[member.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Members {
        let endpoints = ["http://192.0.2.1:2379", "http://192.0.2.2:2379", "http://192.0.2.3:2379"];
        Members::starting_at(endpoints.map(String::from).to_vec(), ConnectOptions::new(), 1)
    }

    #[tokio::test]
    async fn stays_with_a_member_until_it_fails_then_moves_round() {
        let members = three();
        let (first, client) = members.client().await;
        assert!(client.is_ok(), "without auth a client dials nothing yet");
        assert_eq!(members.endpoint(first), "http://192.0.2.2:2379");
        assert_eq!(members.client().await.0, first, "no failure, no move");
        members.failed(first);
        let (second, _) = members.client().await;
        assert_eq!(members.endpoint(second), "http://192.0.2.3:2379");
        members.failed(second);
        assert_eq!(members.endpoint(members.client().await.0), "http://192.0.2.1:2379", "wraps round");
    }

    #[tokio::test]
    async fn failures_seen_at_once_move_on_once() {
        let members = three();
        let (member, _) = members.client().await;
        // Three requests in flight on the same member all fail.
        members.failed(member);
        members.failed(member);
        members.failed(member);
        assert_eq!(members.endpoint(members.client().await.0), "http://192.0.2.3:2379");
    }

    #[tokio::test]
    async fn one_member_stays_in_use() {
        let members = Members::new(vec!["http://192.0.2.1:2379".into()], ConnectOptions::new());
        let (member, _) = members.client().await;
        members.failed(member);
        assert_eq!(members.client().await.0, member);
        assert_eq!(members.len(), 1);
    }

    #[test]
    fn agents_start_spread_over_the_members() {
        let endpoints: Vec<String> = (1..=3).map(|i| format!("http://192.0.2.{i}:2379")).collect();
        let firsts: std::collections::HashSet<usize> = (0..64)
            .map(|_| Members::new(endpoints.clone(), ConnectOptions::new()).current.load(Ordering::Relaxed))
            .collect();
        assert_eq!(firsts.len(), 3, "64 starts all on {firsts:?}");
    }
}
