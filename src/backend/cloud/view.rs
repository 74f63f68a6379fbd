//! What the leading agent read from the cloud, shared through the store so that the other agents
//! need not ask the cloud the same question every recheck: clouds throttle per account (EC2 per
//! account and region, Compute per project), so one read per node per recheck is a bill that
//! grows with the cluster. A view names what it answers (the tables' filter, the network) and
//! is read back only for the same question. It comes from the store: untrusted input, bounded
//! in size, ignored when it does not parse.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A larger view is not shared (etcd takes requests up to 1.5 MiB unless told otherwise): each
/// agent then asks the cloud itself, as without a view. ~100 bytes a route: ~10,000 routes fit.
pub const MAX_VIEW_BYTES: usize = 1 << 20;

/// A view as written: the question the items answer, and the items.
#[derive(Serialize)]
struct Shared<'a, Q, T> {
    question: &'a Q,
    items: &'a [T],
}

/// A view as read back.
#[derive(Deserialize)]
struct Read<Q, T> {
    question: Q,
    items: Vec<T>,
}

/// The view of `items` (the cloud's answer to `question`) to share, unless it is too large.
pub fn encode<Q: Serialize, T: Serialize>(question: &Q, items: &[T]) -> Option<String> {
    let json = serde_json::to_string(&Shared { question, items }).ok()?;
    (json.len() <= MAX_VIEW_BYTES).then_some(json)
}

/// The items of a shared view, if it answers `question`.
pub fn decode<Q, T>(text: &str, question: &Q) -> Option<Vec<T>>
where
    Q: DeserializeOwned + PartialEq,
    T: DeserializeOwned,
{
    if text.len() > MAX_VIEW_BYTES {
        return None;
    }
    let view: Read<Q, T> = serde_json::from_str(text).ok()?;
    (view.question == *question).then_some(view.items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_answers_its_own_question_only() {
        let text = encode(&"network-a", &[1u32, 2, 3]).unwrap();
        assert_eq!(decode::<String, u32>(&text, &"network-a".to_string()), Some(vec![1, 2, 3]));
        assert_eq!(decode::<String, u32>(&text, &"network-b".to_string()), None);
    }

    #[test]
    fn junk_and_oversized_views_are_ignored() {
        let question = "q".to_string();
        for junk in ["", "null", "{\"question\":1}", "[[[[[[[[", &"[".repeat(100_000)] {
            assert_eq!(decode::<String, u32>(junk, &question), None, "{junk:.20}");
        }
        let big = vec![u64::MAX; MAX_VIEW_BYTES / 10];
        assert_eq!(encode(&question, &big), None, "too large for the store");
    }
}
