//! The client's side of subscriptions: which of the user's subscriptions (one per
//! `subscribe` call, each with its callback and flags) a message belongs to, and
//! which patterns, with which flags, the broker must hold for the whole client.

use std::collections::HashMap;
use std::sync::Arc;

use crate::index::SubscriptionIndex;
use crate::protocol::method::SubscriptionFlags;

#[derive(Default)]
pub struct Subscriptions {
    index: SubscriptionIndex,
    by_subscription: HashMap<u64, Held>,
    /// How many subscriptions hold each pattern (the broker holds it while > 0), and
    /// the flags the broker holds it with.
    holders: HashMap<Arc<str>, (usize, SubscriptionFlags)>,
}

struct Held {
    patterns: Vec<Arc<str>>,
    flags: SubscriptionFlags,
}

/// What removing one subscription changes for the broker.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    /// Patterns no subscription holds any more.
    pub dropped: Vec<Arc<str>>,
    /// Patterns still held, whose flags change.
    pub changed: Vec<(Arc<str>, SubscriptionFlags)>,
}

impl Subscriptions {
    /// Adds validated patterns to subscription `sub` (its flags are those of its first
    /// `subscribe`); returns the patterns the broker must now hold differently: new
    /// ones, and shared ones whose flags change, with the flags to hold them with.
    pub fn add(
        &mut self,
        sub: u64,
        patterns: &[Arc<str>],
        flags: SubscriptionFlags,
    ) -> Vec<(Arc<str>, SubscriptionFlags)> {
        let mut changed = Vec::new();
        let held = self.by_subscription.entry(sub).or_insert_with(|| Held { patterns: Vec::new(), flags });
        for pattern in patterns {
            if held.patterns.contains(pattern) {
                continue;
            }
            held.patterns.push(pattern.clone());
            self.index.insert(sub, pattern.clone());
            match self.holders.get_mut(pattern) {
                None => {
                    self.holders.insert(pattern.clone(), (1, held.flags));
                    changed.push((pattern.clone(), held.flags));
                }
                Some((holders, shared)) => {
                    *holders += 1;
                    let now = shared.shared_with(held.flags);
                    if now != *shared {
                        *shared = now;
                        changed.push((pattern.clone(), now));
                    }
                }
            }
        }
        changed
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
                if let Some(at) = held.patterns.iter().position(|p| p == pattern) {
                    held.patterns.remove(at);
                    self.index.remove(*sub, pattern);
                    if held.patterns.is_empty() {
                        emptied.push(*sub);
                    }
                }
                !held.patterns.is_empty()
            });
            removed.push(pattern.clone());
        }
        (removed, emptied)
    }

    /// Removes subscription `sub` alone: the other subscriptions keep their patterns.
    /// Returns the patterns no subscription holds any more (the broker can drop them)
    /// and the shared ones the broker must now hold with other flags (the one that
    /// left was the only responder, or the only one wanting its own messages).
    pub fn release(&mut self, sub: u64) -> Released {
        let mut released = Released::default();
        let Some(held) = self.by_subscription.remove(&sub) else {
            return released;
        };
        for pattern in held.patterns {
            self.index.remove(sub, &pattern);
            let Some((holders, shared)) = self.holders.get_mut(&pattern) else {
                continue;
            };
            *holders -= 1;
            if *holders == 0 {
                self.holders.remove(&pattern);
                released.dropped.push(pattern);
                continue;
            }
            let now = self
                .by_subscription
                .values()
                .filter(|other| other.patterns.contains(&pattern))
                .map(|other| other.flags)
                .reduce(SubscriptionFlags::shared_with)
                .unwrap_or(*shared);
            if now != *shared {
                *shared = now;
                released.changed.push((pattern, now));
            }
        }
        released
    }

    /// Every pattern the broker should hold, with its flags, for re-subscribing after
    /// a reconnect.
    pub fn patterns(&self) -> Vec<(Arc<str>, SubscriptionFlags)> {
        let mut patterns: Vec<(Arc<str>, SubscriptionFlags)> =
            self.holders.iter().map(|(pattern, (_, flags))| (pattern.clone(), *flags)).collect();
        patterns.sort_by(|a, b| a.0.cmp(&b.0));
        patterns
    }

    /// The subscriptions a message on `topic` belongs to; `own` when this client
    /// published it, which `no_local` subscriptions never take.
    pub fn matching(&self, topic: &str, own: bool) -> Vec<u64> {
        let mut out = Vec::new();
        self.index.collect(topic, &mut out);
        if own {
            out.retain(|sub| self.by_subscription.get(sub).is_none_or(|held| !held.flags.no_local));
        }
        out
    }
}

/// Patterns grouped by the flags they are held with: one `subscribe` per group.
pub fn by_flags(patterns: Vec<(Arc<str>, SubscriptionFlags)>) -> Vec<(SubscriptionFlags, Vec<Arc<str>>)> {
    let mut groups: Vec<(SubscriptionFlags, Vec<Arc<str>>)> = Vec::new();
    for (pattern, flags) in patterns {
        match groups.iter_mut().find(|(held, _)| *held == flags) {
            Some((_, group)) => group.push(pattern),
            None => groups.push((flags, vec![pattern])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(patterns: &[&str]) -> Vec<Arc<str>> {
        patterns.iter().map(|&s| s.into()).collect()
    }

    fn plain(patterns: &[&str]) -> Vec<(Arc<str>, SubscriptionFlags)> {
        p(patterns).into_iter().map(|pattern| (pattern, SubscriptionFlags::default())).collect()
    }

    const PLAIN: SubscriptionFlags = SubscriptionFlags { passive: false, no_local: false, relay: false };
    const PASSIVE: SubscriptionFlags = SubscriptionFlags { passive: true, no_local: false, relay: false };
    const NO_LOCAL: SubscriptionFlags = SubscriptionFlags { passive: false, no_local: true, relay: false };

    #[test]
    fn wire_patterns_are_reference_counted() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.add(1, &p(&["jobs.*", "a"]), PLAIN), plain(&["jobs.*", "a"]));
        assert_eq!(subs.add(2, &p(&["jobs.*", "b"]), PLAIN), plain(&["b"]), "jobs.* is already held");
        assert_eq!(subs.matching("jobs.x", false), vec![1, 2]);
        assert_eq!(subs.matching("b", false), vec![2]);
        assert_eq!(subs.remove(&p(&["jobs.*", "never"])), (p(&["jobs.*"]), vec![]));
        assert_eq!(subs.remove(&p(&["a"])), (p(&["a"]), vec![1]), "subscription 1 has no pattern left");
        assert!(subs.matching("jobs.x", false).is_empty());
        assert_eq!(subs.patterns(), plain(&["b"]));
    }

    #[test]
    fn a_shared_pattern_is_held_as_its_most_demanding_subscription_needs() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.add(1, &p(&["svc.#"]), PASSIVE), vec![("svc.#".into(), PASSIVE)]);
        assert_eq!(subs.add(2, &p(&["svc.#"]), PASSIVE), vec![], "still passive");
        assert_eq!(subs.add(3, &p(&["svc.#"]), PLAIN), vec![("svc.#".into(), PLAIN)], "now a responder");
        assert_eq!(subs.add(4, &p(&["svc.#"]), NO_LOCAL), vec![], "a plain holder wants its own");
        assert_eq!(subs.patterns(), plain(&["svc.#"]));
    }

    #[test]
    fn releasing_one_subscription_keeps_the_others_patterns() {
        let mut subs = Subscriptions::default();
        subs.add(1, &p(&["jobs.*", "a"]), PLAIN);
        subs.add(2, &p(&["jobs.*"]), PASSIVE);
        let released = subs.release(1);
        assert_eq!(released.dropped, p(&["a"]), "jobs.* is still held by subscription 2");
        assert_eq!(released.changed, vec![("jobs.*".into(), PASSIVE)], "its only responder left");
        assert_eq!(subs.matching("jobs.x", false), vec![2]);
        assert!(subs.matching("a", false).is_empty());
        assert_eq!(subs.release(1), Released::default(), "released already");
        assert_eq!(subs.release(2).dropped, p(&["jobs.*"]));
        assert!(subs.patterns().is_empty());
    }

    #[test]
    fn no_local_subscriptions_skip_the_clients_own_messages() {
        let mut subs = Subscriptions::default();
        subs.add(1, &p(&["chat.*"]), NO_LOCAL);
        subs.add(2, &p(&["chat.#"]), PLAIN);
        assert_eq!(subs.matching("chat.room", true), vec![2]);
        let mut both = subs.matching("chat.room", false);
        both.sort();
        assert_eq!(both, vec![1, 2]);
        let groups = by_flags(subs.patterns());
        assert_eq!(groups, vec![(PLAIN, p(&["chat.#"])), (NO_LOCAL, p(&["chat.*"]))]);
    }
}
