//! Topic permissions: which topics a client may publish to and which patterns it may
//! subscribe to, from the optional `permissions` rules of the configuration.
//!
//! A rule names the clients it applies to with a shell-style glob on the client id and
//! lists, per action, `allow` and `deny` entries in the pattern syntax of subscriptions,
//! where `{client}` stands for the client's own id (`private.{client}.#` gives every
//! client a corner of its own).
//!
//! Rules are resolved once per connection ([`Permissions::for_client`]): the globs are
//! matched and `{client}` is substituted when the client connects, so a publish walks
//! only the few precompiled entries that concern this client, never the whole rule set.
//!
//! Deny wins: an action is allowed when it passes the allow entries (if any matching
//! rule has an allow list for it) and touches no deny entry of any matching rule. A broad
//! allow in one rule therefore never undoes a deny in another, and a rule with only deny
//! entries takes something away without having to list everything else.
//!
//! A subscription is checked by containment, not by matching its text: a pattern stands
//! for every topic it matches, and the client will receive all of them. So it is allowed
//! only when one allow entry covers every topic it matches, and refused as soon as a
//! single topic it matches is denied (subscribing to `a.*` would deliver `a.secret`, so a
//! deny of `a.secret` refuses it).

use serde::Deserialize;

use crate::protocol::topic::Segment;

/// Stands for the client's id in allow and deny entries, as a whole segment.
const CLIENT_PLACEHOLDER: &str = "{client}";

/// One rule of the `permissions` configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionRule {
    /// Shell-style glob on the client id: `*` any run of characters, `?` exactly one.
    pub client: String,
    /// The topics the client may publish to (and send requests to).
    #[serde(default)]
    pub publish: Option<AllowDeny>,
    /// The patterns the client may subscribe to.
    #[serde(default)]
    pub subscribe: Option<AllowDeny>,
}

/// The allow and deny entries of one action: patterns, with `{client}` for the id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowDeny {
    /// `None`: this rule does not restrict by allow. `Some(vec![])`: nothing is allowed.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl PermissionRule {
    /// Checks the rule, with a message naming the rule's client glob and the bad entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.client.is_empty() {
            return Err("a permission rule has an empty client glob; \"*\" stands for every client".into());
        }
        for (action, access) in [(Action::Publish, &self.publish), (Action::Subscribe, &self.subscribe)] {
            let Some(access) = access else { continue };
            let allow = access.allow.iter().flatten().map(|entry| ("allow", entry));
            let deny = access.deny.iter().map(|entry| ("deny", entry));
            for (list, entry) in allow.chain(deny) {
                check_entry(entry).map_err(|reason| {
                    format!(
                        "permission rule for client {:?}: {action} {list} entry {entry:?} {reason}",
                        self.client
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Checks one allow or deny entry; the error completes a sentence about the entry.
fn check_entry(entry: &str) -> Result<(), String> {
    // A brace anywhere else is refused too: a mistyped placeholder would otherwise be a
    // literal that never matches, and a deny entry that silently denies nothing.
    for segment in entry.split('.') {
        if segment != CLIENT_PLACEHOLDER && segment.contains(['{', '}']) {
            return Err(if segment.contains(CLIENT_PLACEHOLDER) {
                format!(
                    "has {CLIENT_PLACEHOLDER} inside the segment {segment:?}; it must stand as a whole \
                     segment, as in \"private.{CLIENT_PLACEHOLDER}.#\""
                )
            } else {
                format!(
                    "has a brace in the segment {segment:?}; the only placeholder is {CLIENT_PLACEHOLDER}, \
                     as a whole segment"
                )
            });
        }
    }
    // `{client}` is a plain literal segment to the pattern parser, and a client id is
    // always one segment, so the entry is valid for every client id exactly when it is
    // valid as written; parsing it as written keeps the message about the user's text.
    crate::protocol::topic::parse_pattern(entry)
        .map(drop)
        .map_err(|error| format!("is not a valid pattern: {}", error.message))
}

/// The rules of the configuration, resolved per client when it connects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    rules: Vec<PermissionRule>,
}

impl Permissions {
    /// Takes rules that passed [`PermissionRule::validate`].
    pub fn new(rules: Vec<PermissionRule>) -> Self {
        debug_assert!(rules.iter().all(|rule| rule.validate().is_ok()), "unvalidated rules");
        Permissions { rules }
    }

    /// True when there are no rules: every client is unrestricted.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// What the client with this id may do: the entries of every rule whose glob matches
    /// the id, with `{client}` replaced by the id, ready to check against.
    pub fn for_client(&self, client_id: &str) -> ClientPermissions {
        let mut permissions = ClientPermissions { client_id: client_id.to_owned(), ..Default::default() };
        for rule in self.rules.iter().filter(|rule| glob_matches(&rule.client, client_id)) {
            if let Some(access) = &rule.publish {
                permissions.publish.add(access, client_id);
            }
            if let Some(access) = &rule.subscribe {
                permissions.subscribe.add(access, client_id);
            }
        }
        permissions
    }
}

/// Shell-style glob match: `*` any run of characters (none included), `?` exactly one
/// character, everything else literal.
///
/// On a mismatch, the last `*` seen swallows one more character and matching resumes
/// right after it. Only the last star needs revisiting: whatever an earlier star would
/// swallow instead, the last one can swallow too. Each resumption advances the swallowed
/// end, so the work is at most glob length times id length.
fn glob_matches(glob: &str, client_id: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = client_id.chars().collect();
    let (mut g, mut t) = (0, 0);
    // (glob index after the last star, text index up to which that star swallows)
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                g += 1;
                last_star = Some((g, t));
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match last_star {
                Some((after_star, swallowed)) => {
                    last_star = Some((after_star, swallowed + 1));
                    g = after_star;
                    t = swallowed + 1;
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

/// One segment of a precompiled entry (the owned counterpart of [`Segment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    /// `*` or `+`: exactly one segment.
    One,
    /// `#`: the rest, zero segments included (last position only).
    Rest,
}

/// An allow or deny entry with `{client}` substituted, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The entry as it applies to this client, to name it when it refuses something.
    text: String,
    parts: Vec<Part>,
}

impl Entry {
    /// Compiles a validated entry for one client. The id becomes one literal segment
    /// whatever characters it holds, so an id never turns into a wildcard.
    fn compile(entry: &str, client_id: &str) -> Entry {
        let parts = entry
            .split('.')
            .map(|segment| match segment {
                CLIENT_PLACEHOLDER => Part::Literal(client_id.into()),
                _ => match segment_of(segment) {
                    Segment::Literal(literal) => Part::Literal(literal.into()),
                    Segment::One => Part::One,
                    Segment::Rest => Part::Rest,
                },
            })
            .collect();
        Entry { text: entry.replace(CLIENT_PLACEHOLDER, client_id), parts }
    }
}

/// A segment of a validated pattern (the same reading as `parse_pattern`).
fn segment_of(segment: &str) -> Segment<'_> {
    match segment {
        "*" | "+" => Segment::One,
        "#" => Segment::Rest,
        literal => Segment::Literal(literal),
    }
}

/// Does the entry match this concrete topic?
fn matches_topic(entry: &[Part], topic: &str) -> bool {
    let mut segments = topic.split('.');
    for part in entry {
        match part {
            Part::Rest => return true,
            Part::One if segments.next().is_none() => return false,
            Part::Literal(literal) if segments.next() != Some(&**literal) => return false,
            Part::One | Part::Literal(_) => {}
        }
    }
    segments.next().is_none()
}

/// Is every topic `pattern` matches also matched by `allow`?
fn covers(allow: &[Part], pattern: &[Segment<'_>]) -> bool {
    // No topic is empty, so a lone `#` matches exactly what `*.#` matches. The walk below
    // reads remainders, which may be empty; spelling the lone `#` out keeps it from
    // counting the empty topic `#` matches as one that `*.#` misses.
    match (allow, pattern) {
        ([Part::Rest], _) => true,
        (_, [Segment::Rest]) => covers_remainders(allow, &[Segment::One, Segment::Rest]),
        _ => covers_remainders(allow, pattern),
    }
}

/// Is every remainder (zero segments included) `pattern` matches matched by `allow`?
///
/// Segment by segment, no backtracking: topic segments are unbounded, so a literal never
/// covers a wildcard (some other segment exists), and `#` is only ever last.
fn covers_remainders(mut allow: &[Part], mut pattern: &[Segment<'_>]) -> bool {
    loop {
        match (allow.split_first(), pattern.split_first()) {
            (Some((Part::Rest, _)), _) | (None, None) => return true,
            // `pattern` goes on (or, as `#`, goes on as far as it likes) where `allow` ends.
            (None, Some(_)) => return false,
            // `pattern` stops (or, as `#`, may stop) where `allow` wants another segment.
            (Some(_), None | Some((Segment::Rest, _))) => return false,
            (Some((Part::Literal(wanted), _)), Some((Segment::Literal(given), _))) if **wanted != **given => {
                return false;
            }
            (Some((Part::Literal(_), _)), Some((Segment::One, _))) => return false,
            (Some((_, allow_rest)), Some((_, pattern_rest))) => {
                allow = allow_rest;
                pattern = pattern_rest;
            }
        }
    }
}

/// Is some topic matched by both `deny` and `pattern`?
///
/// A `#` on either side accepts whatever the other side's remainder needs (every
/// pattern matches some remainder), and a one-segment wildcard meets any segment, so
/// only two different literals at the same position keep them apart.
fn overlaps(mut deny: &[Part], mut pattern: &[Segment<'_>]) -> bool {
    loop {
        match (deny.split_first(), pattern.split_first()) {
            (Some((Part::Rest, _)), _) | (_, Some((Segment::Rest, _))) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some((Part::Literal(denied), _)), Some((Segment::Literal(given), _))) if **denied != **given => {
                return false;
            }
            (Some((_, deny_rest)), Some((_, pattern_rest))) => {
                deny = deny_rest;
                pattern = pattern_rest;
            }
        }
    }
}

/// The allow and deny entries of one action, gathered from every matching rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entries {
    /// `Some` as soon as one matching rule has an allow list: their union.
    allow: Option<Vec<Entry>>,
    deny: Vec<Entry>,
}

impl Entries {
    fn add(&mut self, access: &AllowDeny, client_id: &str) {
        if let Some(allow) = &access.allow {
            let compiled = allow.iter().map(|entry| Entry::compile(entry, client_id));
            self.allow.get_or_insert_default().extend(compiled);
        }
        self.deny.extend(access.deny.iter().map(|entry| Entry::compile(entry, client_id)));
    }

    fn is_unrestricted(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Deny first: it wins, and naming the deny entry says more than "no allow entry".
    fn check(
        &self,
        touched_by_deny: impl Fn(&Entry) -> bool,
        allowed_by: impl Fn(&Entry) -> bool,
    ) -> Result<(), Reason> {
        if let Some(entry) = self.deny.iter().find(|entry| touched_by_deny(entry)) {
            return Err(Reason::DenyEntry(entry.text.clone()));
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(allowed_by) => Err(Reason::NoAllowEntry),
            _ => Ok(()),
        }
    }
}

/// What one connected client may do, resolved from the rules when it connected.
/// The default is unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientPermissions {
    client_id: String,
    publish: Entries,
    subscribe: Entries,
}

impl ClientPermissions {
    /// True when no rule restricts this client, so checks can be skipped.
    pub fn is_unrestricted(&self) -> bool {
        self.publish.is_unrestricted() && self.subscribe.is_unrestricted()
    }

    /// May the client publish to (or send a request to) this concrete, validated topic?
    /// Answers to a request's reply address are the caller's to exempt.
    pub fn may_publish(&self, topic: &str) -> Result<(), Denied> {
        if self.publish.is_unrestricted() {
            return Ok(());
        }
        let matched = |entry: &Entry| matches_topic(&entry.parts, topic);
        self.publish.check(matched, matched).map_err(|reason| self.denied(Action::Publish, topic, reason))
    }

    /// May the client subscribe to this validated pattern? Only if an allow entry covers
    /// every topic it matches (when there are allow entries) and it overlaps no deny entry.
    pub fn may_subscribe(&self, pattern: &str) -> Result<(), Denied> {
        if self.subscribe.is_unrestricted() {
            return Ok(());
        }
        let segments: Vec<Segment<'_>> = pattern.split('.').map(segment_of).collect();
        self.subscribe
            .check(|deny| overlaps(&deny.parts, &segments), |allow| covers(&allow.parts, &segments))
            .map_err(|reason| self.denied(Action::Subscribe, pattern, reason))
    }

    fn denied(&self, action: Action, target: &str, reason: Reason) -> Denied {
        Denied { action, target: target.to_owned(), client_id: self.client_id.clone(), reason }
    }
}

/// An action the permission rules govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publishing a message or sending a request to a topic.
    Publish,
    /// Subscribing to a pattern.
    Subscribe,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        })
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// This deny entry (with `{client}` substituted) touches the topic or pattern.
    DenyEntry(String),
    /// The client's rules have allow entries for the action, and none of them admits it.
    NoAllowEntry,
}

impl Reason {
    fn explain(&self, action: &Action) -> String {
        match (self, action) {
            (Reason::DenyEntry(entry), _) => format!("denied by {entry:?}"),
            (Reason::NoAllowEntry, Action::Publish) => "no allow entry matches it".into(),
            (Reason::NoAllowEntry, Action::Subscribe) => "no allow entry covers it".into(),
        }
    }
}

/// A publish or subscribe the permission rules refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client {client_id:?} may not {action} to {target:?}: {}", .reason.explain(.action))]
pub struct Denied {
    pub action: Action,
    /// The topic published to, or the pattern subscribed to.
    pub target: String,
    pub client_id: String,
    pub reason: Reason,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::{matches, parse_pattern};
    use proptest::prelude::*;

    fn access(allow: Option<&[&str]>, deny: &[&str]) -> AllowDeny {
        AllowDeny {
            allow: allow.map(|entries| entries.iter().map(|e| e.to_string()).collect()),
            deny: deny.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn rule(client: &str, publish: Option<AllowDeny>, subscribe: Option<AllowDeny>) -> PermissionRule {
        PermissionRule { client: client.into(), publish, subscribe }
    }

    fn permissions(rules: Vec<PermissionRule>) -> Permissions {
        for rule in &rules {
            rule.validate().unwrap();
        }
        Permissions::new(rules)
    }

    fn entry(text: &str) -> Vec<Part> {
        Entry::compile(text, "unused").parts
    }

    fn segments(pattern: &str) -> Vec<Segment<'_>> {
        parse_pattern(pattern).unwrap()
    }

    fn reason(result: Result<(), Denied>) -> Option<Reason> {
        result.err().map(|denied| denied.reason)
    }

    #[test]
    fn globs() {
        let table = [
            ("sensor-*", "sensor-1", true),
            ("sensor-*", "sensor-", true),
            ("sensor-*", "xsensor-1", false),
            ("sensor", "sensor", true),
            ("sensor", "sensor-1", false),
            ("*", "", true),
            ("*", "anything", true),
            ("?", "a", true),
            ("?", "", false),
            ("?", "ab", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("?", "é", true),
            ("*-*-x", "a-b-c-x", true),
            ("*-*-x", "a-b-c-y", false),
            ("*a*a*a", "aaa", true),
            ("*a*a*a", "aaba", true),
            ("*a*a*a", "aab", false),
            ("**", "", true),
            ("a*", "", false),
        ];
        for (glob, id, expected) in table {
            assert_eq!(glob_matches(glob, id), expected, "{glob:?} vs {id:?}");
        }
    }

    #[test]
    fn unmatched_clients_are_unrestricted() {
        let rules = permissions(vec![rule("sensor-*", Some(access(Some(&[]), &["#"])), None)]);
        let other = rules.for_client("dashboard");
        assert!(other.is_unrestricted());
        assert_eq!(other.may_publish("secrets.a"), Ok(()));
        assert_eq!(other.may_subscribe("#"), Ok(()));
        assert!(ClientPermissions::default().is_unrestricted());
        assert!(!rules.for_client("sensor-1").is_unrestricted());
        assert!(Permissions::new(Vec::new()).is_empty());
        assert!(!rules.is_empty());
    }

    #[test]
    fn client_placeholder_is_substituted() {
        let rules = permissions(vec![rule(
            "*",
            Some(access(Some(&["private.{client}.#", "shared.*"]), &[])),
            Some(access(None, &["{client}.secret"])),
        )]);
        let sensor = rules.for_client("sensor-1");
        assert_eq!(sensor.may_publish("private.sensor-1.x"), Ok(()));
        assert_eq!(sensor.may_publish("private.sensor-1"), Ok(()));
        assert_eq!(sensor.may_publish("shared.x"), Ok(()));
        assert_eq!(reason(sensor.may_publish("private.sensor-2.x")), Some(Reason::NoAllowEntry));
        assert_eq!(
            reason(sensor.may_subscribe("sensor-1.*")),
            Some(Reason::DenyEntry("sensor-1.secret".into()))
        );
        assert_eq!(sensor.may_subscribe("sensor-2.*"), Ok(()));
        // An id is one literal segment, whatever it holds.
        let odd = rules.for_client("#");
        assert_eq!(reason(odd.may_publish("private.x.y")), Some(Reason::NoAllowEntry));
        assert_eq!(odd.may_publish("private.#.y"), Ok(()));
    }

    #[test]
    fn deny_wins() {
        let rules = permissions(vec![
            rule("*", Some(access(Some(&["#"]), &[])), Some(access(Some(&["#"]), &[]))),
            rule("sensor-*", Some(access(Some(&["a.#"]), &["a.secret"])), Some(access(None, &["a.secret"]))),
        ]);
        let sensor = rules.for_client("sensor-1");
        assert_eq!(sensor.may_publish("a.x"), Ok(()));
        assert_eq!(sensor.may_publish("b"), Ok(()), "the first rule allows everything");
        assert_eq!(reason(sensor.may_publish("a.secret")), Some(Reason::DenyEntry("a.secret".into())));
        assert_eq!(sensor.may_subscribe("a.x"), Ok(()));
        assert_eq!(reason(sensor.may_subscribe("a.*")), Some(Reason::DenyEntry("a.secret".into())));
        assert_eq!(reason(sensor.may_subscribe("#")), Some(Reason::DenyEntry("a.secret".into())));
        let dashboard = rules.for_client("dashboard");
        assert_eq!(dashboard.may_publish("a.secret"), Ok(()));
    }

    #[test]
    fn a_rule_with_only_deny_entries_takes_away_just_those() {
        let rules = permissions(vec![rule("sensor-?", Some(access(None, &["secrets.#"])), None)]);
        let sensor = rules.for_client("sensor-1");
        assert_eq!(sensor.may_publish("jobs.done"), Ok(()));
        assert_eq!(reason(sensor.may_publish("secrets")), Some(Reason::DenyEntry("secrets.#".into())));
        assert_eq!(reason(sensor.may_publish("secrets.a.b")), Some(Reason::DenyEntry("secrets.#".into())));
        assert_eq!(sensor.may_subscribe("secrets.#"), Ok(()), "subscribing is not restricted");
    }

    #[test]
    fn matching_rules_add_up() {
        let rules = permissions(vec![
            rule("*", Some(access(Some(&["shared.#"]), &["shared.admin"])), None),
            rule("sensor-*", Some(access(Some(&["sensors.{client}"]), &[])), None),
            rule("sensor-2", Some(access(None, &["shared.x"])), None),
            rule("dashboard", Some(access(Some(&["#"]), &[])), None),
        ]);
        let one = rules.for_client("sensor-1");
        assert_eq!(one.may_publish("shared.x"), Ok(()));
        assert_eq!(one.may_publish("sensors.sensor-1"), Ok(()));
        assert_eq!(reason(one.may_publish("sensors.sensor-2")), Some(Reason::NoAllowEntry));
        assert_eq!(
            reason(one.may_publish("other")),
            Some(Reason::NoAllowEntry),
            "dashboard's rule is not theirs"
        );
        assert_eq!(reason(one.may_publish("shared.admin")), Some(Reason::DenyEntry("shared.admin".into())));
        let two = rules.for_client("sensor-2");
        assert_eq!(reason(two.may_publish("shared.x")), Some(Reason::DenyEntry("shared.x".into())));
        assert_eq!(two.may_publish("shared.y"), Ok(()));
    }

    #[test]
    fn an_empty_allow_list_allows_nothing() {
        let rules = permissions(vec![
            rule("locked", Some(access(Some(&[]), &[])), None),
            rule("*", Some(access(None, &[])), None),
        ]);
        let locked = rules.for_client("locked");
        assert_eq!(reason(locked.may_publish("a")), Some(Reason::NoAllowEntry));
        assert_eq!(reason(locked.may_publish("system.x")), Some(Reason::NoAllowEntry));
        assert_eq!(locked.may_subscribe("#"), Ok(()), "only publishing is locked");
        assert!(rules.for_client("free").is_unrestricted(), "a rule without entries restricts nothing");
    }

    #[test]
    fn covers_edge_cases() {
        let table = [
            ("#", "#", true),
            ("#", "a.b", true),
            ("*.#", "#", true),
            ("+.#", "#", true),
            ("a.#", "#", false),
            ("*", "#", false),
            ("*.*.#", "#", false),
            ("a.#", "a", true),
            ("a.#", "a.#", true),
            ("a.#", "a.b.#", true),
            ("a.#", "a.*", true),
            ("a", "a.#", false),
            ("a.*", "a.#", false),
            ("a.*.#", "a.#", false),
            ("a.*.#", "a.*.#", true),
            ("*.b", "a.*", false),
            ("a.*", "*.b", false),
            ("*.*", "a.b", true),
            ("a.b", "a.*", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.+", "a.*", true),
        ];
        for (allow, pattern, expected) in table {
            assert_eq!(covers(&entry(allow), &segments(pattern)), expected, "{allow} covers {pattern}");
        }
    }

    #[test]
    fn overlaps_edge_cases() {
        let table = [
            ("#", "a", true),
            ("a", "#", true),
            ("a.#", "a", true),
            ("a", "a.#", true),
            ("a.b.#", "a", false),
            ("a.*", "*.b", true),
            ("*.b", "a.*", true),
            ("a.*.c", "a.#", true),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("a.*", "b.*", false),
            ("*.a", "*.b", false),
            ("*", "a.b", false),
            ("*.#", "a", true),
            ("a.secret", "a.*", true),
            ("a.secret", "a.public", false),
        ];
        for (deny, pattern, expected) in table {
            assert_eq!(overlaps(&entry(deny), &segments(pattern)), expected, "{deny} overlaps {pattern}");
        }
    }

    #[test]
    fn subscribing_needs_one_covering_allow_entry() {
        let rules = permissions(vec![rule("*", None, Some(access(Some(&["a.*", "a.b.#"]), &[])))]);
        let client = rules.for_client("c");
        assert_eq!(client.may_subscribe("a.x"), Ok(()));
        assert_eq!(client.may_subscribe("a.*"), Ok(()));
        assert_eq!(client.may_subscribe("a.b.#"), Ok(()));
        assert_eq!(client.may_subscribe("a.b"), Ok(()));
        // `a.#` matches `a`, which neither entry covers: entries are not pooled.
        assert_eq!(reason(client.may_subscribe("a.#")), Some(Reason::NoAllowEntry));
        assert_eq!(reason(client.may_subscribe("#")), Some(Reason::NoAllowEntry));
        assert_eq!(reason(client.may_subscribe("a")), Some(Reason::NoAllowEntry));
    }

    #[test]
    fn denials_read_as_sentences() {
        let rules = permissions(vec![rule(
            "sensor-*",
            Some(access(Some(&["data.#"]), &["secrets.#"])),
            Some(access(Some(&["a.*"]), &[])),
        )]);
        let sensor = rules.for_client("sensor-1");
        assert_eq!(
            sensor.may_publish("secrets.a").unwrap_err().to_string(),
            r#"client "sensor-1" may not publish to "secrets.a": denied by "secrets.#""#
        );
        assert_eq!(
            sensor.may_publish("other").unwrap_err().to_string(),
            r#"client "sensor-1" may not publish to "other": no allow entry matches it"#
        );
        let denied = sensor.may_subscribe("a.#").unwrap_err();
        assert_eq!(
            denied.to_string(),
            r#"client "sensor-1" may not subscribe to "a.#": no allow entry covers it"#
        );
        assert_eq!(
            denied,
            Denied {
                action: Action::Subscribe,
                target: "a.#".into(),
                client_id: "sensor-1".into(),
                reason: Reason::NoAllowEntry,
            }
        );
    }

    #[test]
    fn validation_names_the_rule_and_the_entry() {
        let valid = rule(
            "sensor-*",
            Some(access(Some(&["private.{client}.#", "{client}"]), &["a.*.b"])),
            Some(access(Some(&[]), &["#"])),
        );
        assert_eq!(valid.validate(), Ok(()));
        assert_eq!(rule("x", None, None).validate(), Ok(()));

        let empty = rule("", None, None).validate().unwrap_err();
        assert!(empty.contains("empty client glob"), "{empty}");

        for (publish, subscribe, says) in [
            (access(Some(&["a..b"]), &[]), None, r#"publish allow entry "a..b" is not a valid pattern"#),
            (access(None, &["#.a"]), None, r##"publish deny entry "#.a" is not a valid pattern"##),
            (access(None, &[]), Some(access(Some(&["a.b*"]), &[])), "subscribe allow entry \"a.b*\""),
            (access(None, &[""]), None, "must not be empty"),
            (access(None, &["x{client}"]), None, "must stand as a whole segment"),
            (access(None, &["private.{client}-log"]), None, "must stand as a whole segment"),
            (access(None, &["private.{clientid}"]), None, "the only placeholder is {client}"),
            (access(None, &["a.}"]), None, "brace"),
        ] {
            let error = rule("sensor-*", Some(publish), subscribe).validate().unwrap_err();
            assert!(error.starts_with(r#"permission rule for client "sensor-*": "#), "{error}");
            assert!(error.contains(says), "{error} should say {says}");
        }
    }

    #[test]
    fn rules_deserialize_strictly() {
        let parsed: PermissionRule = serde_json::from_value(serde_json::json!({
            "client": "sensor-*",
            "publish": {"deny": ["secrets.#"]},
        }))
        .unwrap();
        assert_eq!(parsed, rule("sensor-*", Some(access(None, &["secrets.#"])), None));
        let parsed: AllowDeny = serde_json::from_value(serde_json::json!({"allow": []})).unwrap();
        assert_eq!(parsed, access(Some(&[]), &[]));
        let unknown =
            serde_json::from_value::<PermissionRule>(serde_json::json!({"client": "*", "publsh": {}}));
        assert!(unknown.unwrap_err().to_string().contains("publsh"));
        let unknown = serde_json::from_value::<AllowDeny>(serde_json::json!({"alow": ["a"]}));
        assert!(unknown.unwrap_err().to_string().contains("alow"));
    }

    /// The plain recursive reading of a glob, exponential but obviously right.
    fn glob_reference(glob: &[char], text: &[char]) -> bool {
        match glob.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|skip| glob_reference(rest, &text[skip..])),
            Some(('?', rest)) => !text.is_empty() && glob_reference(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && glob_reference(rest, &text[1..]),
        }
    }

    /// A pattern of up to `max_segments` segments before an optional `#`, over the
    /// literals `a` and `b`; a lone `#` included.
    fn pattern(max_segments: usize) -> impl Strategy<Value = String> {
        let segment = prop_oneof![Just("a"), Just("b"), Just("*"), Just("+")];
        (prop::collection::vec(segment, 0..=max_segments), any::<bool>()).prop_map(|(mut segments, rest)| {
            if rest || segments.is_empty() {
                segments.push("#");
            }
            segments.join(".")
        })
    }

    /// Every topic of 1 to `max_len` segments over `alphabet`.
    fn all_topics(alphabet: &[&str], max_len: usize) -> Vec<String> {
        let mut topics = Vec::new();
        let mut shorter: Vec<String> = vec![String::new()];
        for _ in 0..max_len {
            let longer: Vec<String> = shorter
                .iter()
                .flat_map(|prefix| {
                    alphabet
                        .iter()
                        .map(move |s| if prefix.is_empty() { s.to_string() } else { format!("{prefix}.{s}") })
                })
                .collect();
            topics.extend(longer.iter().cloned());
            shorter = longer;
        }
        topics
    }

    /// A topic `pattern` matches: its wildcards filled from `fill`, and its `#` with
    /// `extra` more segments from `fill`.
    fn instance(pattern: &str, fill: &[&str], extra: usize) -> String {
        let mut fill = fill.iter().cycle();
        let mut segments: Vec<&str> = Vec::new();
        for segment in pattern.split('.') {
            match segment {
                "*" | "+" => segments.push(fill.next().unwrap()),
                "#" => segments.extend(fill.by_ref().take(extra)),
                literal => segments.push(literal),
            }
        }
        if segments.is_empty() {
            segments.push(fill.next().unwrap());
        }
        segments.join(".")
    }

    proptest! {
        #[test]
        fn glob_agrees_with_reference(
            glob in prop::collection::vec(prop_oneof![Just('a'), Just('b'), Just('*'), Just('?')], 0..8),
            text in prop::collection::vec(prop_oneof![Just('a'), Just('b')], 0..10),
        ) {
            let glob_text: String = glob.iter().collect();
            let id: String = text.iter().collect();
            prop_assert_eq!(glob_matches(&glob_text, &id), glob_reference(&glob, &text), "{} vs {}", glob_text, id);
        }

        /// Exact equivalence with the reference matcher over every topic up to a length.
        ///
        /// The enumeration is exhaustive enough to be exact. Matching only compares topic
        /// segments with the patterns' literals (`a`, `b`), so any witness topic (matched
        /// by the pattern and not by the allow entry; matched by both) stays a witness with
        /// its other segments replaced by one fresh segment `z`. Patterns have at most 4
        /// segments (3 and `#`); a witness longer than 5 stays one cut to 5 segments (the
        /// pattern's `#` still matches, the allow entry still fails for the same reason, a
        /// length it cannot reach or an unequal literal within its first 4 segments), and
        /// a common topic of the two patterns can be cut down to 4. So topics of 1 to 5
        /// segments over `a`, `b`, `z` hold a witness whenever one exists.
        #[test]
        fn covers_and_overlaps_are_exact(first in pattern(3), second in pattern(3)) {
            let topics = all_topics(&["a", "b", "z"], 5);
            let by_first = |t: &String| matches(&first, t);
            let by_second = |t: &String| matches(&second, t);
            let contained = topics.iter().filter(|t| by_second(t)).all(by_first);
            let common = topics.iter().any(|t| by_first(t) && by_second(t));
            prop_assert_eq!(covers(&entry(&first), &segments(&second)), contained, "{} covers {}", first, second);
            prop_assert_eq!(overlaps(&entry(&first), &segments(&second)), common, "{} overlaps {}", first, second);
        }

        /// Longer patterns, checked on topics they match: what `covers` admits is matched
        /// by the allow entry, and what `overlaps` keeps apart is never matched by both.
        #[test]
        fn covers_and_overlaps_hold_on_sampled_topics(
            first in pattern(6),
            second in pattern(6),
            fills in prop::collection::vec(
                (prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..8), 0usize..4),
                1..16,
            ),
        ) {
            let does_cover = covers(&entry(&first), &segments(&second));
            let does_overlap = overlaps(&entry(&first), &segments(&second));
            for (fill, extra) in &fills {
                let topic = instance(&second, fill, *extra);
                prop_assert!(matches(&second, &topic), "{} is an instance of {}", topic, second);
                if does_cover {
                    prop_assert!(matches(&first, &topic), "{} covers {} but not {}", first, second, topic);
                }
                if !does_overlap {
                    prop_assert!(!matches(&first, &topic), "{} and {} both match {}", first, second, topic);
                }
            }
        }

        /// A publish check is the reference matcher over the entries.
        #[test]
        fn may_publish_agrees_with_reference(
            allow in prop::option::of(prop::collection::vec(pattern(3), 0..3)),
            deny in prop::collection::vec(pattern(3), 0..3),
            topic in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..6),
        ) {
            let topic = topic.join(".");
            let rule = PermissionRule {
                client: "*".into(),
                publish: Some(AllowDeny { allow: allow.clone(), deny: deny.clone() }),
                subscribe: None,
            };
            let expected = deny.iter().all(|d| !matches(d, &topic))
                && allow.as_ref().is_none_or(|allow| allow.iter().any(|a| matches(a, &topic)));
            let allowed = Permissions::new(vec![rule]).for_client("c").may_publish(&topic).is_ok();
            prop_assert_eq!(allowed, expected);
        }
    }
}
