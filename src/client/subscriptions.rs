//! The client's side of subscriptions: which of the user's subscriptions (one per
//! `subscribe` call, each with its callback) a message belongs to, and which patterns
//! the broker must hold for the whole client.

use std::collections::HashMap;
use std::sync::Arc;

use crate::index::SubscriptionIndex;

#[derive(Default)]
pub struct Subscriptions {
    index: SubscriptionIndex,
    by_subscription: HashMap<u64, Vec<Arc<str>>>,
    /// How many subscriptions hold each pattern; the broker holds the pattern while > 0.
    holders: HashMap<Arc<str>, usize>,
}

impl Subscriptions {
    /// Adds validated patterns to subscription `sub`; returns the patterns the broker
    /// does not hold yet.
    pub fn add(&mut self, sub: u64, patterns: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut new = Vec::new();
        let held = self.by_subscription.entry(sub).or_default();
        for pattern in patterns {
            if held.contains(pattern) {
                continue;
            }
            held.push(pattern.clone());
            self.index.insert(sub, pattern.clone());
            let holders = self.holders.entry(pattern.clone()).or_insert(0);
            *holders += 1;
            if *holders == 1 {
                new.push(pattern.clone());
            }
        }
        new
    }

    /// Removes patterns from every subscription. Returns the patterns that were held
    /// (the broker no longer needs them: a pattern leaves all subscriptions at once)
    /// and the subscriptions left with no pattern.
    pub fn remove(&mut self, patterns: &[Arc<str>]) -> (Vec<Arc<str>>, Vec<u64>) {
        let mut removed = Vec::new();
        let mut emptied = Vec::new();
        for pattern in patterns {
            if self.holders.remove(pattern).is_none() {
                continue;
            }
            self.by_subscription.retain(|sub, held| {
                if let Some(at) = held.iter().position(|p| p == pattern) {
                    held.remove(at);
                    self.index.remove(*sub, pattern);
                    if held.is_empty() {
                        emptied.push(*sub);
                    }
                }
                !held.is_empty()
            });
            removed.push(pattern.clone());
        }
        (removed, emptied)
    }

    /// Every pattern the broker should hold, for re-subscribing after a reconnect.
    pub fn patterns(&self) -> Vec<Arc<str>> {
        let mut patterns: Vec<Arc<str>> = self.holders.keys().cloned().collect();
        patterns.sort();
        patterns
    }

    /// The subscriptions a message on `topic` belongs to.
    pub fn matching(&self, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        self.index.collect(topic, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(patterns: &[&str]) -> Vec<Arc<str>> {
        patterns.iter().map(|&s| s.into()).collect()
    }

    #[test]
    fn wire_patterns_are_reference_counted() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.add(1, &p(&["jobs.*", "a"])), p(&["jobs.*", "a"]));
        assert_eq!(subs.add(2, &p(&["jobs.*", "b"])), p(&["b"]), "jobs.* is already held");
        assert_eq!(subs.matching("jobs.x"), vec![1, 2]);
        assert_eq!(subs.matching("b"), vec![2]);
        assert_eq!(subs.remove(&p(&["jobs.*", "never"])), (p(&["jobs.*"]), vec![]));
        assert_eq!(subs.remove(&p(&["a"])), (p(&["a"]), vec![1]), "subscription 1 has no pattern left");
        assert!(subs.matching("jobs.x").is_empty());
        assert_eq!(subs.patterns(), p(&["b"]));
    }
}
