//! How a rule maps our topics and patterns onto NATS subjects or MQTT topics, and back.
//!
//! A rule's `pattern` is written in our syntax and is relative: a local topic is
//! `local_prefix.<rest>` and its remote name is `remote_prefix.<rest>` (with `/` for
//! MQTT), where `<rest>` matches the pattern. Segments cross unchanged; what one side
//! cannot express is refused as [`Unmappable`], never bent into another name.
//!
//! | ours | NATS | MQTT |
//! |---|---|---|
//! | `a.b` | `a.b` | `a/b` |
//! | `*`, `+` | `*` | `+` |
//! | `a.#` | `a` and `a.>` (NATS `>` needs one token at least) | `a/#` (matches `a` too) |
//! | `#` | `>` | `#` |

use crate::protocol::topic::{is_reserved, matches, parse_pattern, validate_topic};

/// The far side of a bridge, for the names it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Nats,
    Mqtt,
}

impl Remote {
    fn separator(self) -> char {
        match self {
            Remote::Nats => '.',
            Remote::Mqtt => '/',
        }
    }

    /// Whether `token` may be one level of a concrete remote name.
    fn literal_ok(self, token: &str) -> bool {
        !token.is_empty()
            && !token.chars().any(|c| c.is_whitespace() || c.is_control())
            && match self {
                Remote::Nats => token != "*" && token != ">" && !token.contains('.'),
                Remote::Mqtt => !token.contains(['/', '+', '#']),
            }
    }

    /// Names the far side keeps for itself: never imported, never exported to.
    fn is_reserved(self, first: &str) -> bool {
        first.starts_with('$') || (self == Remote::Nats && first == "_INBOX")
    }
}

/// Why a message was not carried across.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    /// `system.*`, `_internal.*` here; `$SYS`, `$JS`, `_INBOX` and the like there.
    #[error("{0:?} is reserved")]
    Reserved(String),
    /// A name the other side cannot express (an empty level, a `.` inside an MQTT
    /// level, a wildcard character inside a NATS token, ...), or outside the rule.
    #[error("{0:?} cannot be mapped")]
    Invalid(String),
}

/// One rule's mapping, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    remote: Remote,
    local_prefix: Vec<String>,
    remote_prefix: Vec<String>,
    /// The relative pattern, in our syntax.
    pattern: String,
}

fn split_prefix(prefix: &str, separator: char) -> Vec<String> {
    if prefix.is_empty() { Vec::new() } else { prefix.split(separator).map(str::to_owned).collect() }
}

impl Mapping {
    /// Checks the three parts of a rule; the error says which is wrong and why.
    pub fn new(
        remote: Remote,
        pattern: &str,
        local_prefix: &str,
        remote_prefix: &str,
    ) -> Result<Mapping, String> {
        parse_pattern(pattern).map_err(|e| format!("pattern: {}", e.message))?;
        if !local_prefix.is_empty() {
            validate_topic(local_prefix).map_err(|e| format!("local_prefix: {}", e.message))?;
            if is_reserved(local_prefix) {
                return Err(format!("local_prefix {local_prefix:?} is reserved for the broker"));
            }
        }
        let separator = remote.separator();
        let remote_levels = split_prefix(remote_prefix, separator);
        if let Some(bad) = remote_levels.iter().find(|level| !remote.literal_ok(level)) {
            return Err(format!(
                "remote_prefix {remote_prefix:?}: {bad:?} is not a level of a {} name (levels are separated by {separator:?}, without wildcards or spaces)",
                match remote {
                    Remote::Nats => "NATS subject",
                    Remote::Mqtt => "MQTT topic",
                }
            ));
        }
        if remote_levels.first().is_some_and(|first| remote.is_reserved(first)) {
            return Err(format!("remote_prefix {remote_prefix:?} is reserved by the server"));
        }
        let mapping = Mapping {
            remote,
            local_prefix: split_prefix(local_prefix, '.'),
            remote_prefix: remote_levels,
            pattern: pattern.to_owned(),
        };
        if mapping.local_pattern().split('.').next().is_some_and(is_reserved) {
            return Err(format!(
                "pattern {pattern:?} with local_prefix {local_prefix:?} only covers topics reserved for the broker"
            ));
        }
        Ok(mapping)
    }

    /// The pattern to subscribe to here.
    pub fn local_pattern(&self) -> String {
        join(&self.local_prefix, &self.pattern, '.')
    }

    /// The subscriptions to make there: NATS needs two for a trailing `#`, because
    /// its `>` does not match the level before it (`a.>` misses `a`).
    pub fn remote_filters(&self) -> Vec<String> {
        let segments: Vec<&str> = self.pattern.split('.').collect();
        let separator = self.remote.separator();
        let mut levels: Vec<String> = self.remote_prefix.clone();
        let convert = |segment: &str| -> String {
            match (self.remote, segment) {
                (Remote::Nats, "*" | "+") => "*".into(),
                (Remote::Nats, "#") => ">".into(),
                (Remote::Mqtt, "*" | "+") => "+".into(),
                (_, other) => other.into(),
            }
        };
        let sep = separator.to_string();
        if self.remote == Remote::Nats && segments.last() == Some(&"#") {
            levels.extend(segments[..segments.len() - 1].iter().map(|s| convert(s)));
            let mut filters = Vec::new();
            if !levels.is_empty() {
                filters.push(levels.join(&sep));
            }
            levels.push(">".into());
            filters.push(levels.join(&sep));
            return filters;
        }
        levels.extend(segments.iter().map(|s| convert(s)));
        vec![levels.join(&sep)]
    }

    /// Whether a local topic falls under this rule.
    pub fn covers_local(&self, topic: &str) -> bool {
        self.relative_local(topic).is_some()
    }

    fn relative_local<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        let segments: Vec<&str> = topic.split('.').collect();
        let rest = strip(&segments, &self.local_prefix)?;
        relative_matches(&self.pattern, rest).then(|| rest.to_vec())
    }

    /// The remote name of a local topic.
    pub fn to_remote(&self, topic: &str) -> Result<String, Unmappable> {
        if is_reserved(topic) {
            return Err(Unmappable::Reserved(topic.to_owned()));
        }
        let rest = self.relative_local(topic).ok_or_else(|| Unmappable::Invalid(topic.to_owned()))?;
        let levels: Vec<&str> = self.remote_prefix.iter().map(String::as_str).chain(rest).collect();
        if levels.is_empty() || !levels.iter().all(|level| self.remote.literal_ok(level)) {
            return Err(Unmappable::Invalid(topic.to_owned()));
        }
        if self.remote.is_reserved(levels[0]) {
            return Err(Unmappable::Reserved(topic.to_owned()));
        }
        Ok(levels.join(&self.remote.separator().to_string()))
    }

    /// The local topic of a remote name.
    pub fn to_local(&self, name: &str) -> Result<String, Unmappable> {
        let levels: Vec<&str> = name.split(self.remote.separator()).collect();
        if levels.first().is_some_and(|first| self.remote.is_reserved(first)) {
            return Err(Unmappable::Reserved(name.to_owned()));
        }
        let invalid = || Unmappable::Invalid(name.to_owned());
        let rest = strip(&levels, &self.remote_prefix).ok_or_else(invalid)?;
        // Levels become segments only when they are segments as they stand.
        if rest.iter().any(|level| level.is_empty() || level.contains(['.', '*', '+', '#'])) {
            return Err(invalid());
        }
        if !relative_matches(&self.pattern, rest) {
            return Err(invalid());
        }
        let topic: Vec<&str> =
            self.local_prefix.iter().map(String::as_str).chain(rest.iter().copied()).collect();
        let topic = topic.join(".");
        validate_topic(&topic).map_err(|_| invalid())?;
        if is_reserved(&topic) {
            return Err(Unmappable::Reserved(name.to_owned()));
        }
        Ok(topic)
    }
}

fn join(prefix: &[String], pattern: &str, separator: char) -> String {
    if prefix.is_empty() {
        pattern.to_owned()
    } else {
        format!("{}{separator}{pattern}", prefix.join(&separator.to_string()))
    }
}

fn strip<'s, 'a>(levels: &'s [&'a str], prefix: &[String]) -> Option<&'s [&'a str]> {
    if levels.len() < prefix.len() || levels.iter().zip(prefix).any(|(level, p)| level != p) {
        return None;
    }
    Some(&levels[prefix.len()..])
}

/// Whether the relative `pattern` matches `rest`, which may be empty (a topic equal
/// to the prefix, under a pattern of `#`).
fn relative_matches(pattern: &str, rest: &[&str]) -> bool {
    if rest.is_empty() {
        return pattern == "#";
    }
    matches(pattern, &rest.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nats(pattern: &str, local: &str, remote: &str) -> Mapping {
        Mapping::new(Remote::Nats, pattern, local, remote).unwrap()
    }

    fn mqtt(pattern: &str, local: &str, remote: &str) -> Mapping {
        Mapping::new(Remote::Mqtt, pattern, local, remote).unwrap()
    }

    #[test]
    fn nats_filters_follow_the_table() {
        for (pattern, local, remote, filters) in [
            ("a.b", "", "", vec!["a.b"]),
            ("a.*", "", "", vec!["a.*"]),
            ("a.+.c", "", "", vec!["a.*.c"]),
            ("a.#", "", "", vec!["a", "a.>"]),
            ("#", "", "", vec![">"]),
            ("#", "", "site", vec!["site", "site.>"]),
            ("x.#", "mine", "site.one", vec!["site.one.x", "site.one.x.>"]),
            ("+.#", "", "", vec!["*", "*.>"]),
        ] {
            assert_eq!(nats(pattern, local, remote).remote_filters(), filters, "{pattern} {local} {remote}");
        }
    }

    #[test]
    fn mqtt_filters_follow_the_table() {
        for (pattern, remote, filter) in [
            ("a.b", "", "a/b"),
            ("a.*", "", "a/+"),
            ("a.+.c", "", "a/+/c"),
            ("a.#", "", "a/#"),
            ("#", "", "#"),
            ("#", "home/hall", "home/hall/#"),
        ] {
            assert_eq!(mqtt(pattern, "", remote).remote_filters(), vec![filter], "{pattern} {remote}");
        }
        assert_eq!(mqtt("x.*", "in", "").local_pattern(), "in.x.*");
    }

    #[test]
    fn names_cross_both_ways_with_their_prefixes() {
        let rule = nats("sensors.#", "lab", "site1");
        assert_eq!(rule.local_pattern(), "lab.sensors.#");
        assert_eq!(rule.to_remote("lab.sensors.t1").unwrap(), "site1.sensors.t1");
        assert_eq!(rule.to_remote("lab.sensors").unwrap(), "site1.sensors", "a.# covers a");
        assert_eq!(rule.to_local("site1.sensors.t1.raw").unwrap(), "lab.sensors.t1.raw");
        assert_eq!(rule.to_local("site1.sensors").unwrap(), "lab.sensors");
        assert!(matches!(rule.to_local("site2.sensors.t1"), Err(Unmappable::Invalid(_))));
        assert!(matches!(rule.to_remote("lab.other"), Err(Unmappable::Invalid(_))));

        let rule = mqtt("+.temp", "", "home");
        assert_eq!(rule.to_remote("kitchen.temp").unwrap(), "home/kitchen/temp");
        assert_eq!(rule.to_local("home/kitchen/temp").unwrap(), "kitchen.temp");

        let everything = nats("#", "", "mirror");
        assert_eq!(everything.to_remote("a").unwrap(), "mirror.a");
        assert_eq!(everything.to_local("mirror").unwrap_err(), Unmappable::Invalid("mirror".into()));
    }

    #[test]
    fn reserved_names_never_cross() {
        let all = nats("#", "", "");
        for topic in ["system.broker.ready", "_internal.reply.1.ff"] {
            assert_eq!(all.to_remote(topic), Err(Unmappable::Reserved(topic.into())));
        }
        for subject in ["$SYS.SERVER.x", "$JS.API.INFO", "_INBOX.abc.1", "system.x", "_internal.y"] {
            assert_eq!(all.to_local(subject), Err(Unmappable::Reserved(subject.into())), "{subject}");
        }
        let all = mqtt("#", "", "");
        assert_eq!(
            all.to_local("$SYS/broker/uptime"),
            Err(Unmappable::Reserved("$SYS/broker/uptime".into()))
        );
        assert!(Mapping::new(Remote::Nats, "#", "system", "").is_err());
        assert!(Mapping::new(Remote::Nats, "system.#", "", "").is_err());
        assert!(Mapping::new(Remote::Nats, "#", "", "$SYS").is_err());
        assert!(Mapping::new(Remote::Nats, "#", "", "_INBOX").is_err());
        assert!(Mapping::new(Remote::Mqtt, "#", "", "$share/g").is_err());
    }

    #[test]
    fn what_one_side_cannot_say_is_unmappable() {
        let all = nats("#", "", "");
        assert!(matches!(all.to_remote("a.>"), Err(Unmappable::Invalid(_))), "> is a NATS wildcard");
        for subject in ["a.b+c", "a.b#", "a.b*c"] {
            assert!(matches!(all.to_local(subject), Err(Unmappable::Invalid(_))), "{subject}");
        }
        let all = mqtt("#", "", "");
        for topic in ["a//b", "/a", "a/", "v1.2/x"] {
            assert!(matches!(all.to_local(topic), Err(Unmappable::Invalid(_))), "{topic}");
        }
        assert!(matches!(all.to_remote("a/b.c"), Err(Unmappable::Invalid(_))));
    }

    #[test]
    fn bad_rules_are_explained() {
        let error = Mapping::new(Remote::Nats, "a..b", "", "").unwrap_err();
        assert!(error.starts_with("pattern:"), "{error}");
        let error = Mapping::new(Remote::Nats, "a", "x.*", "").unwrap_err();
        assert!(error.starts_with("local_prefix:"), "{error}");
        let error = Mapping::new(Remote::Nats, "a", "", "x.>").unwrap_err();
        assert!(error.starts_with("remote_prefix"), "{error}");
        let error = Mapping::new(Remote::Mqtt, "a", "", "x/+").unwrap_err();
        assert!(error.starts_with("remote_prefix"), "{error}");
    }

    /// NATS's own matching: `*` one token, `>` one or more at the end.
    fn nats_matches(filter: &str, subject: &str) -> bool {
        let filter: Vec<&str> = filter.split('.').collect();
        let subject: Vec<&str> = subject.split('.').collect();
        for (i, token) in filter.iter().enumerate() {
            match *token {
                ">" => return subject.len() > i,
                "*" if i < subject.len() => {}
                literal if subject.get(i) == Some(&literal) => {}
                _ => return false,
            }
        }
        filter.len() == subject.len()
    }

    /// MQTT's own matching: `+` one level, `#` the parent level and any below.
    fn mqtt_matches(filter: &str, topic: &str) -> bool {
        let filter: Vec<&str> = filter.split('/').collect();
        let topic: Vec<&str> = topic.split('/').collect();
        for (i, level) in filter.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < topic.len() => {}
                literal if topic.get(i) == Some(&literal) => {}
                _ => return false,
            }
        }
        filter.len() == topic.len()
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c]", "[a-z0-9_-]{1,6}"]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![segment(), Just("*".into()), Just("+".into())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("a pattern has a segment", |(mut segments, rest)| {
                if rest {
                    segments.push("#".into());
                }
                (!segments.is_empty()).then(|| segments.join("."))
            })
    }

    fn prefix() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-c]", 0..3).prop_map(|segments| segments.join("."))
    }

    proptest! {
        /// Every local topic a rule covers maps to a remote name that one of the rule's
        /// remote filters matches, and back to itself; and a remote name that a filter
        /// matches maps back to a topic the local pattern matches.
        #[test]
        fn mappings_agree_with_each_sides_matching(
            pattern in pattern(),
            local in prefix(),
            remote in prefix(),
            topic in prop::collection::vec(segment(), 1..7),
            mqtt_side in any::<bool>(),
        ) {
            let kind = if mqtt_side { Remote::Mqtt } else { Remote::Nats };
            let remote = if mqtt_side { remote.replace('.', "/") } else { remote };
            let rule = Mapping::new(kind, &pattern, &local, &remote).unwrap();
            let topic = topic.join(".");
            let remote_matches = |name: &str| rule.remote_filters().iter().any(|filter| match kind {
                Remote::Nats => nats_matches(filter, name),
                Remote::Mqtt => mqtt_matches(filter, name),
            });
            if matches(&rule.local_pattern(), &topic) {
                match rule.to_remote(&topic) {
                    Ok(name) => {
                        prop_assert!(remote_matches(&name), "{} misses {}", pattern, name);
                        prop_assert_eq!(rule.to_local(&name).unwrap(), topic.clone());
                    }
                    // Only a topic equal to an empty remote prefix has no remote name.
                    Err(error) => prop_assert!(remote.is_empty() && topic == local, "{error}"),
                }
            } else {
                prop_assert!(rule.to_remote(&topic).is_err());
            }
            let name = topic.replace('.', &kind.separator().to_string());
            let name = if remote.is_empty() { name } else { format!("{remote}{}{name}", kind.separator()) };
            if remote_matches(&name) {
                let local_topic = rule.to_local(&name).unwrap();
                prop_assert!(matches(&rule.local_pattern(), &local_topic));
            } else {
                prop_assert!(rule.to_local(&name).is_err());
            }
        }
    }
}
