//! The subscription index: a trie over pattern segments.
//!
//! Matching a topic walks one path per wildcard branch that can still match, so the
//! cost of a publish depends on the topic's depth and on the patterns that match it,
//! not on how many unrelated subscriptions exist.

use foldhash::HashMap;
use std::sync::Arc;

use crate::protocol::topic::{Segment, parse_pattern};

/// Identifies one connection for as long as it lives. Keys the index rather than
/// `client_id`, so a take-over can never mix the old and new connection's state.
pub type SessionId = u64;

#[derive(Debug, Clone)]
struct Entry {
    session: SessionId,
    pattern: Arc<str>,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    /// The child for `*` and `+`.
    one: Option<Box<Node>>,
    /// Patterns that end at this node.
    exact: Vec<Entry>,
    /// Patterns that end with `#` at this node.
    rest: Vec<Entry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.exact.is_empty() && self.rest.is_empty()
    }

    /// `topic`: the segments still to match, `None` past the last one. Cut one
    /// segment at a time, so that matching allocates nothing.
    fn collect(&self, topic: Option<&str>, out: &mut Vec<SessionId>) {
        out.extend(self.rest.iter().map(|e| e.session));
        match topic {
            None => out.extend(self.exact.iter().map(|e| e.session)),
            Some(topic) => {
                // Segments are short: a plain loop finds the dot sooner than a search.
                let (segment, tail) = match topic.bytes().position(|b| b == b'.') {
                    Some(dot) => (&topic[..dot], Some(&topic[dot + 1..])),
                    None => (topic, None),
                };
                if let Some(child) = self.literal.get(segment) {
                    child.collect(tail, out);
                }
                if let Some(child) = &self.one {
                    child.collect(tail, out);
                }
            }
        }
    }

    /// Removes the entry; returns (removed, this node is now empty).
    fn remove(&mut self, segments: &[Segment<'_>], session: SessionId, pattern: &str) -> (bool, bool) {
        let take = |list: &mut Vec<Entry>| {
            let before = list.len();
            list.retain(|e| !(e.session == session && &*e.pattern == pattern));
            before != list.len()
        };
        let removed = match segments.split_first() {
            None => take(&mut self.exact),
            Some((Segment::Rest, _)) => take(&mut self.rest),
            Some((Segment::One, tail)) => match self.one.as_mut() {
                Some(child) => {
                    let (removed, empty) = child.remove(tail, session, pattern);
                    if empty {
                        self.one = None;
                    }
                    removed
                }
                None => false,
            },
            Some((Segment::Literal(name), tail)) => match self.literal.get_mut(*name) {
                Some(child) => {
                    let (removed, empty) = child.remove(tail, session, pattern);
                    if empty {
                        self.literal.remove(*name);
                    }
                    removed
                }
                None => false,
            },
        };
        (removed, self.is_empty())
    }
}

#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    root: Node,
    len: usize,
}

impl SubscriptionIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (session, pattern) subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a subscription. The pattern must already be validated. Returns false when
    /// the session already had this exact pattern.
    pub fn insert(&mut self, session: SessionId, pattern: Arc<str>) -> bool {
        let segments = parse_pattern(&pattern).expect("patterns are validated before indexing");
        let (path, ends_with_rest) = match segments.split_last() {
            Some((Segment::Rest, path)) => (path, true),
            _ => (&segments[..], false),
        };
        let mut node = &mut self.root;
        for segment in path {
            node = match segment {
                Segment::Literal(name) => node.literal.entry((*name).into()).or_default(),
                Segment::One => node.one.get_or_insert_with(Default::default),
                Segment::Rest => unreachable!("'#' is only ever the last segment"),
            };
        }
        let list = if ends_with_rest { &mut node.rest } else { &mut node.exact };
        if list.iter().any(|e| e.session == session && e.pattern == pattern) {
            return false;
        }
        list.push(Entry { session, pattern });
        self.len += 1;
        true
    }

    /// Removes a subscription; returns false when it was not there.
    pub fn remove(&mut self, session: SessionId, pattern: &str) -> bool {
        let Ok(segments) = parse_pattern(pattern) else {
            return false;
        };
        let (removed, _) = self.root.remove(&segments, session, pattern);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Appends to `out` every session with a pattern matching `topic`, each once.
    pub fn collect(&self, topic: &str, out: &mut Vec<SessionId>) {
        let start = out.len();
        self.root.collect(Some(topic), out);
        let found = &mut out[start..];
        found.sort_unstable();
        let unique = dedup_sorted(found);
        out.truncate(start + unique);
    }
}

/// Moves the distinct values of a sorted slice to its front; returns how many there are.
fn dedup_sorted(values: &mut [SessionId]) -> usize {
    if values.is_empty() {
        return 0;
    }
    let mut write = 1;
    for read in 1..values.len() {
        if values[read] != values[write - 1] {
            values[write] = values[read];
            write += 1;
        }
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::matches;
    use proptest::prelude::*;

    fn sessions(index: &SubscriptionIndex, topic: &str) -> Vec<SessionId> {
        let mut out = Vec::new();
        index.collect(topic, &mut out);
        out
    }

    #[test]
    fn fan_out_and_unsubscribe() {
        let mut index = SubscriptionIndex::new();
        assert!(index.insert(1, "jobs.*".into()));
        assert!(index.insert(2, "jobs.activated".into()));
        assert!(index.insert(3, "#".into()));
        assert!(index.insert(4, "scripts.#".into()));
        assert!(!index.insert(1, "jobs.*".into()), "duplicate subscription");
        assert_eq!(index.len(), 4);

        assert_eq!(sessions(&index, "jobs.activated"), vec![1, 2, 3]);
        assert_eq!(sessions(&index, "scripts"), vec![3, 4]);
        assert_eq!(sessions(&index, "other"), vec![3]);

        assert!(index.remove(1, "jobs.*"));
        assert!(!index.remove(1, "jobs.*"), "already removed");
        assert!(!index.remove(2, "jobs.*"), "never subscribed with that pattern");
        assert_eq!(sessions(&index, "jobs.activated"), vec![2, 3]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn one_delivery_per_session_when_several_patterns_match() {
        let mut index = SubscriptionIndex::new();
        for pattern in ["jobs.*", "jobs.+", "jobs.#", "#", "jobs.activated"] {
            index.insert(7, pattern.into());
        }
        index.insert(8, "jobs.+".into());
        assert_eq!(sessions(&index, "jobs.activated"), vec![7, 8]);
    }

    #[test]
    fn star_and_plus_are_distinct_subscriptions() {
        let mut index = SubscriptionIndex::new();
        index.insert(1, "a.*".into());
        index.insert(1, "a.+".into());
        assert!(index.remove(1, "a.*"));
        assert_eq!(sessions(&index, "a.b"), vec![1], "a.+ still holds");
        assert!(index.remove(1, "a.+"));
        assert!(sessions(&index, "a.b").is_empty());
    }

    #[test]
    fn removing_everything_prunes_the_trie() {
        let mut index = SubscriptionIndex::new();
        let patterns = ["a.b.c", "a.*.c", "a.#", "x.+.#", "#"];
        for (i, p) in patterns.iter().enumerate() {
            index.insert(i as SessionId, (*p).into());
        }
        for (i, p) in patterns.iter().enumerate() {
            assert!(index.remove(i as SessionId, p));
        }
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "no empty nodes are left behind");
    }

    #[test]
    fn unrelated_subscriptions_are_not_visited() {
        let mut index = SubscriptionIndex::new();
        for i in 0..10_000u64 {
            index.insert(i, format!("other.{i}.event").into());
        }
        index.insert(99_999, "jobs.*".into());
        // The root has one literal child per first segment: "other" and "jobs".
        assert_eq!(index.root.literal.len(), 2);
        assert_eq!(sessions(&index, "jobs.done"), vec![99_999]);
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
    }

    fn pattern_segment() -> impl Strategy<Value = String> {
        prop_oneof![4 => segment(), 1 => Just("*".to_string()), 1 => Just("+".to_string())]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (prop::collection::vec(pattern_segment(), 1..5), any::<bool>()).prop_map(|(mut segs, rest)| {
            if rest {
                segs.push("#".into());
            }
            segs.join(".")
        })
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..6).prop_map(|segs| segs.join("."))
    }

    proptest! {
        /// The index agrees with the plain reference matcher, subscriptions and
        /// unsubscriptions included.
        #[test]
        fn index_agrees_with_reference_matcher(
            subs in prop::collection::vec((0u64..6, pattern()), 0..40),
            removals in prop::collection::vec(0usize..40, 0..10),
            topics in prop::collection::vec(topic(), 1..20),
        ) {
            let mut index = SubscriptionIndex::new();
            let mut live: Vec<(SessionId, String)> = Vec::new();
            for (session, pattern) in &subs {
                let added = index.insert(*session, pattern.as_str().into());
                let present = live.iter().any(|(s, p)| s == session && p == pattern);
                prop_assert_eq!(added, !present);
                if added {
                    live.push((*session, pattern.clone()));
                }
            }
            for r in removals {
                if r < live.len() {
                    let (session, pattern) = live.remove(r);
                    prop_assert!(index.remove(session, &pattern));
                }
            }
            prop_assert_eq!(index.len(), live.len());
            for topic in &topics {
                let mut expected: Vec<SessionId> = live
                    .iter()
                    .filter(|(_, p)| matches(p, topic))
                    .map(|(s, _)| *s)
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                prop_assert_eq!(sessions(&index, topic), expected, "topic {}", topic);
            }
        }
    }
}
