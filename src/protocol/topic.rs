//! Topics and subscription patterns.
//!
//! A topic is a dot-separated list of non-empty segments (`jobs.123.updated`). A
//! pattern may also use `*` or `+` for exactly one segment and `#`, in last position
//! only, for zero or more segments. Segments are never empty, so `*` and `+` match the
//! same set; both are kept because the protocol has always documented both.

use crate::error::RpcError;

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;
/// Most segments a topic or pattern may have.
pub const MAX_SEGMENTS: usize = 64;

/// First segments clients cannot publish to: broker events and reply addresses.
pub const RESERVED_PREFIXES: [&str; 2] = ["system", "_internal"];

/// Reply addresses are `_internal.reply.<n>.<token>`.
pub const REPLY_PREFIX: &str = "_internal.reply.";
/// The topic on which requests are answered by the broker itself with its status.
pub const STATUS_TOPIC: &str = "status";
/// The `sender` of messages the broker publishes itself.
pub const BROKER_SENDER: &str = "broker";

/// The topics on which the broker announces what happens to it and its clients.
pub mod system {
    /// The broker listens (`host`, `port`).
    pub const BROKER_READY: &str = "system.broker.ready";
    /// The broker is stopping (`reason`), before any connection closes.
    pub const BROKER_SHUTDOWN: &str = "system.broker.shutdown";
    /// A client connected (`client_id`, `client_type`).
    pub const CLIENT_CONNECTED: &str = "system.client.connected";
    /// A client went away (`client_id`, `reason`).
    pub const CLIENT_DISCONNECTED: &str = "system.client.disconnected";
    /// A client's queue filled and messages for it are dropped (`client_id`, `dropped`).
    pub const CLIENT_SLOW: &str = "system.client.slow";
}

/// One segment of a validated pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Literal(&'a str),
    /// `*` or `+`: exactly one segment.
    One,
    /// `#`: zero or more segments (last position only).
    Rest,
}

fn is_wildcard_char(c: char) -> bool {
    matches!(c, '*' | '+' | '#')
}

fn check_common(kind: &str, text: &str) -> Result<(), RpcError> {
    if text.is_empty() {
        return Err(RpcError::invalid_params(format!("{kind} must not be empty")));
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(RpcError::invalid_params(format!(
            "{kind} is {} bytes long; the limit is {MAX_TOPIC_LEN}",
            text.len()
        )));
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(RpcError::invalid_params(format!(
            "{kind} {text:?} contains {c:?}; whitespace and control characters are not allowed"
        )));
    }
    let segments = text.split('.').count();
    if segments > MAX_SEGMENTS {
        return Err(RpcError::invalid_params(format!(
            "{kind} {text:?} has {segments} segments; the limit is {MAX_SEGMENTS}"
        )));
    }
    if text.split('.').any(str::is_empty) {
        return Err(RpcError::invalid_params(format!(
            "{kind} {text:?} has an empty segment; segments are separated by single dots"
        )));
    }
    Ok(())
}

/// What a byte may be in a plain topic (see [`plain_topic`]).
const TOPIC_BYTE: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        table[b] = SEGMENT;
        b += 1;
    }
    table[b'.' as usize] = DOT;
    table[b'*' as usize] = OTHER;
    table[b'+' as usize] = OTHER;
    table[b'#' as usize] = OTHER;
    table
};
const SEGMENT: u8 = 0;
const DOT: u8 = 1;
const OTHER: u8 = 2;

/// True when `topic` is a valid topic made of printable ASCII only: nearly every topic,
/// checked in one pass over its bytes. Anything else takes [`check_common`], which
/// also says what is wrong.
fn plain_topic(topic: &str) -> bool {
    let bytes = topic.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TOPIC_LEN {
        return false;
    }
    // Starting as if after a dot makes a leading dot an empty segment.
    let (mut dots, mut previous) = (0, DOT);
    for &b in bytes {
        let class = TOPIC_BYTE[usize::from(b)];
        // Space and control characters, wildcards and anything not ASCII are OTHER.
        if class == OTHER || (class == DOT && previous == DOT) {
            return false;
        }
        dots += usize::from(class);
        previous = class;
    }
    previous == SEGMENT && dots < MAX_SEGMENTS
}

/// Checks a topic a message is published to: no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), RpcError> {
    if plain_topic(topic) {
        return Ok(());
    }
    check_common("topic", topic)?;
    if topic.contains(is_wildcard_char) {
        return Err(RpcError::invalid_params(format!(
            "topic {topic:?} contains a wildcard (*, + or #); wildcards belong in subscription patterns"
        )));
    }
    Ok(())
}

/// True when clients may not publish to `topic` (it starts with a reserved segment).
pub fn is_reserved(topic: &str) -> bool {
    // Compared as prefixes: cutting the first segment off would search the topic.
    RESERVED_PREFIXES
        .iter()
        .any(|prefix| topic.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.')))
}

/// Checks a subscription pattern and splits it into segments.
pub fn parse_pattern(pattern: &str) -> Result<Vec<Segment<'_>>, RpcError> {
    check_common("pattern", pattern)?;
    let count = pattern.split('.').count();
    pattern
        .split('.')
        .enumerate()
        .map(|(i, segment)| match segment {
            "*" | "+" => Ok(Segment::One),
            "#" if i + 1 == count => Ok(Segment::Rest),
            "#" => Err(RpcError::invalid_params(format!(
                "pattern {pattern:?}: '#' may only be the last segment"
            ))),
            s if s.contains(is_wildcard_char) => Err(RpcError::invalid_params(format!(
                "pattern {pattern:?}: a wildcard must be a whole segment, got {s:?}"
            ))),
            s => Ok(Segment::Literal(s)),
        })
        .collect()
}

/// Reference matcher: does `pattern` (already validated) match `topic`?
///
/// The subscription index answers the same question for many patterns at once; this
/// plain version is the specification it is tested against.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let topic: Vec<&str> = topic.split('.').collect();
    fn go(p: &[&str], t: &[&str]) -> bool {
        match (p.first(), t.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(&("*" | "+")), Some(_)) => go(&p[1..], &t[1..]),
            (Some(lit), Some(seg)) => lit == seg && go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(&pattern, &topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol's documented pattern table, plus the reading of `#` as zero or more.
    #[test]
    fn documented_pattern_table() {
        let table = [
            ("jobs.activated", "jobs.activated", true),
            ("jobs.activated", "jobs.created", false),
            ("jobs.*", "jobs.activated", true),
            ("jobs.*", "jobs.created", true),
            ("jobs.+", "jobs.123", true),
            ("jobs.+", "jobs.abc", true),
            ("scripts.#", "scripts.saw1.started", true),
            ("scripts.#", "scripts.saw1.hotkey.pressed", true),
            ("scripts.+.started", "scripts.saw1.started", true),
            ("scripts.+.started", "scripts.saw1.stopped", false),
            // Edge cases settled in CONTRACT.md.
            ("jobs.*", "jobs", false),
            ("jobs.*", "jobs.a.b", false),
            ("jobs.+", "jobs.a.b", false),
            ("scripts.#", "scripts", true),
            ("#", "system.broker.ready", true),
            ("#", "a", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("a.#", "ab.c", false),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
        ];
        for (pattern, topic, expected) in table {
            parse_pattern(pattern).unwrap();
            validate_topic(topic).unwrap();
            assert_eq!(matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn invalid_topics_are_rejected_with_a_reason() {
        for (topic, reason) in [
            ("", "empty"),
            ("a..b", "empty segment"),
            (".a", "empty segment"),
            ("a.", "empty segment"),
            ("jobs.*", "wildcard"),
            ("jobs.#", "wildcard"),
            ("jo+bs", "wildcard"),
            ("a b", "whitespace"),
            ("a\nb", "whitespace"),
        ] {
            let err = validate_topic(topic).unwrap_err();
            assert!(err.message.contains(reason), "{topic:?}: {}", err.message);
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(validate_topic(&long).unwrap_err().message.contains("limit"));
        let deep = vec!["a"; MAX_SEGMENTS + 1].join(".");
        assert!(validate_topic(&deep).unwrap_err().message.contains("segments"));
    }

    #[test]
    fn invalid_patterns_are_rejected_with_a_reason() {
        assert!(parse_pattern("#.a").unwrap_err().message.contains("last"));
        assert!(parse_pattern("a.b*").unwrap_err().message.contains("whole segment"));
        assert!(parse_pattern("a..#").unwrap_err().message.contains("empty segment"));
        assert_eq!(parse_pattern("a.*.#").unwrap(), vec![Segment::Literal("a"), Segment::One, Segment::Rest]);
    }

    proptest::proptest! {
        /// The one-pass check accepts exactly the printable-ASCII topics that the
        /// general check accepts.
        #[test]
        fn plain_topics_agree_with_the_general_check(
            topic in "[a-c.*+# \t\u{7f}\u{e9}!~\"\\\\]{0,20}|(a\\.){62,65}a|a{1020,1030}|(a{7}\\.){1,3}\\.?a{0,9}",
        ) {
            let general = check_common("topic", &topic).is_ok() && !topic.contains(is_wildcard_char);
            let printable = topic.bytes().all(|b| (0x21..=0x7e).contains(&b));
            proptest::prop_assert_eq!(plain_topic(&topic), general && printable);
            proptest::prop_assert_eq!(validate_topic(&topic).is_ok(), general);
        }
    }

    #[test]
    fn reserved_topics() {
        assert!(is_reserved("system.broker.ready"));
        assert!(is_reserved("system"));
        assert!(is_reserved("_internal.reply.1"));
        assert!(!is_reserved("systems.x"));
        assert!(!is_reserved("jobs.system"));
        assert!(!is_reserved("_internalx"));
        assert!(!is_reserved("syste"));
        assert!(!is_reserved(""));
    }
}
