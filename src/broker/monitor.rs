//! The monitor: a passive tap on every topic, behind the HTTP listener's topic tree,
//! last-message and long-poll endpoints.
//!
//! The router hands it each routed message after fan-out, as the delivery frame it
//! already encoded (shared, never copied). It behaves as a passive subscription to
//! `#`: it never counts as a responder, so a request that only it would see still
//! fails at once with no responders, and it never makes a publisher wait. It keeps:
//! - a log of the latest messages, numbered, bounded in count and bytes; the oldest
//!   are dropped to make room, and counted, so a reader polling with a cursor learns
//!   exactly how many it missed instead of losing them silently;
//! - per topic, a count, the time and rate of the latest messages and the last
//!   message itself, bounded in topics and in bytes kept.
//!
//! Replies to requests travel on private reply addresses and are kept out.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::topic::{REPLY_PREFIX, matches};

/// Messages the log keeps, and their bytes.
pub const LOG_MESSAGES: usize = 10_000;
pub const LOG_BYTES: usize = 32 * 1024 * 1024;
/// Topics tracked; messages on further topics are counted, not tracked.
pub const MAX_TOPICS: usize = 10_000;
/// Bytes of last messages kept across all topics; past it a topic's last message
/// is described (time, size, sender) but not kept.
pub const LAST_MESSAGES_BYTES: usize = 32 * 1024 * 1024;
/// Messages one poll returns at most.
pub const MAX_POLL_MESSAGES: usize = 1000;

/// The bytes of a delivery frame before its params: the params are the message.
const FRAME_PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method":"message","params":"#;

/// One message in the log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Increases by one per message, from 1.
    pub seq: u64,
    pub topic: Arc<str>,
    /// The message as subscribers get it (topic, payload, sender, id, timestamp, ...).
    pub message: Bytes,
}

/// What a topic has seen.
#[derive(Debug, Clone)]
pub struct TopicStats {
    pub messages: u64,
    /// When its last message arrived, in seconds since the Unix epoch.
    pub last_time: f64,
    /// The last message, unless it would have taken the kept bytes past their bound.
    pub last: Option<Bytes>,
    /// The size of the last message, kept or not.
    pub last_size: usize,
    window_start: f64,
    window_count: u64,
    /// Messages per second over the last whole second with traffic.
    rate: f64,
}

impl TopicStats {
    /// Messages per second around `now`: 0 once a whole second has passed quietly.
    pub fn rate(&self, now: f64) -> f64 {
        if now - self.window_start >= 2.0 {
            return 0.0;
        }
        if now - self.window_start >= 1.0 {
            return self.window_count as f64 / (now - self.window_start);
        }
        self.rate
    }
}

/// The answer to a poll.
#[derive(Debug)]
pub struct Polled {
    pub messages: Vec<Logged>,
    /// The cursor to poll after next.
    pub next: u64,
    /// Messages after the cursor that had left the log before this poll (matching or
    /// not: they are gone).
    pub missed: u64,
    /// The cursor was ahead of this broker's messages: it came from an earlier start,
    /// so the poll began again from the oldest message kept.
    pub restarted: bool,
}

/// The monitor's own counters.
#[derive(Debug, Clone, Copy)]
pub struct MonitorStats {
    pub logged: usize,
    pub logged_bytes: usize,
    /// Messages that left the log to make room.
    pub evicted: u64,
    pub topics: usize,
    /// Messages on topics beyond [`MAX_TOPICS`].
    pub untracked: u64,
    /// Bytes of last messages kept.
    pub kept_bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// The sequence number of the newest message (0: none yet).
    head: u64,
    log: VecDeque<Logged>,
    log_bytes: usize,
    evicted: u64,
    topics: BTreeMap<Arc<str>, TopicStats>,
    untracked: u64,
    kept_bytes: usize,
}

#[derive(Default)]
pub struct Monitor {
    inner: Mutex<Inner>,
    /// Woken by each message while a poll waits.
    arrived: Notify,
    waiting: AtomicUsize,
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// Takes note of a routed message: `frame` is its delivery notification.
    pub(crate) fn record(&self, topic: &str, timestamp: f64, frame: &Bytes) {
        if topic.starts_with(REPLY_PREFIX)
            || !frame.starts_with(FRAME_PREFIX)
            || frame.len() <= FRAME_PREFIX.len()
        {
            return;
        }
        let message = frame.slice(FRAME_PREFIX.len()..frame.len() - 1);
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let topic = match inner.topics.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None if inner.topics.len() < MAX_TOPICS => {
                let name: Arc<str> = topic.into();
                inner.topics.insert(name.clone(), TopicStats::first(timestamp));
                name
            }
            None => {
                inner.untracked += 1;
                topic.into()
            }
        };
        if let Some(stats) = inner.topics.get_mut(&topic) {
            stats.count(timestamp);
            let kept = stats.last.as_ref().map_or(0, Bytes::len);
            let room = LAST_MESSAGES_BYTES.saturating_sub(inner.kept_bytes - kept);
            stats.last_size = message.len();
            stats.last = (message.len() <= room).then(|| message.clone());
            inner.kept_bytes = inner.kept_bytes - kept + stats.last.as_ref().map_or(0, Bytes::len);
        }
        inner.head += 1;
        inner.log_bytes += message.len();
        inner.log.push_back(Logged { seq: inner.head, topic, message });
        while inner.log.len() > LOG_MESSAGES || (inner.log_bytes > LOG_BYTES && inner.log.len() > 1) {
            let Some(oldest) = inner.log.pop_front() else { break };
            inner.log_bytes -= oldest.message.len();
            inner.evicted += 1;
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.arrived.notify_waiters();
        }
    }

    /// The last message on `topic`, with what is known of the topic.
    pub fn last(&self, topic: &str) -> Option<TopicStats> {
        self.inner.lock().topics.get(topic).cloned()
    }

    /// Tracked topics equal to `prefix` or below it (all for an empty prefix), in
    /// order, at most `limit`; and whether more exist.
    pub fn topics(&self, prefix: &str, limit: usize) -> (Vec<(Arc<str>, TopicStats)>, bool) {
        let inner = self.inner.lock();
        let below = |name: &str| {
            prefix.is_empty()
                || name == prefix
                || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
        };
        let mut found = Vec::new();
        let from = (Bound::Included(prefix), Bound::Unbounded);
        let mut range = inner.topics.range::<str, _>(from).take_while(|(name, _)| name.starts_with(prefix));
        for (name, stats) in range.by_ref().filter(|(name, _)| below(name)) {
            if found.len() == limit {
                return (found, true);
            }
            found.push((name.clone(), stats.clone()));
        }
        (found, false)
    }

    /// Messages after `after` whose topic matches `pattern`, at most `limit`. None
    /// `after` starts from now. Waits up to `wait` for one when there are none.
    pub async fn poll(&self, pattern: &str, after: Option<u64>, limit: usize, wait: Duration) -> Polled {
        let deadline = tokio::time::Instant::now() + wait;
        let limit = limit.clamp(1, MAX_POLL_MESSAGES);
        let head = self.inner.lock().head;
        let restarted = after.is_some_and(|after| after > head);
        let mut after = match after {
            Some(after) if after <= head => after,
            Some(_) => 0,
            None => head,
        };
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking, so a message that arrives in between wakes it.
            arrived.as_mut().enable();
            let polled = Polled { restarted, ..self.collect(pattern, after, limit) };
            if !polled.messages.is_empty() || polled.missed > 0 || polled.restarted {
                return polled;
            }
            after = polled.next;
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return polled;
            }
        }
    }

    fn collect(&self, pattern: &str, after: u64, limit: usize) -> Polled {
        let inner = self.inner.lock();
        let oldest = inner.log.front().map_or(inner.head + 1, |logged| logged.seq);
        let missed = oldest.saturating_sub(after + 1).min(inner.head.saturating_sub(after));
        let skip = after.saturating_sub(oldest - 1) as usize;
        let mut messages = Vec::new();
        let mut next = inner.head.max(after);
        for logged in inner.log.iter().skip(skip) {
            if matches(pattern, &logged.topic) {
                messages.push(logged.clone());
                if messages.len() == limit {
                    next = logged.seq;
                    break;
                }
            }
        }
        Polled { messages, next, missed, restarted: false }
    }

    pub fn stats(&self) -> MonitorStats {
        let inner = self.inner.lock();
        MonitorStats {
            logged: inner.log.len(),
            logged_bytes: inner.log_bytes,
            evicted: inner.evicted,
            topics: inner.topics.len(),
            untracked: inner.untracked,
            kept_bytes: inner.kept_bytes,
        }
    }
}

impl TopicStats {
    fn first(timestamp: f64) -> TopicStats {
        TopicStats {
            messages: 0,
            last_time: timestamp,
            last: None,
            last_size: 0,
            window_start: timestamp,
            window_count: 0,
            rate: 0.0,
        }
    }

    fn count(&mut self, timestamp: f64) {
        self.messages += 1;
        self.last_time = timestamp;
        let elapsed = timestamp - self.window_start;
        if elapsed >= 1.0 {
            // A window followed by a quiet stretch says nothing of the rate now.
            self.rate = if elapsed < 2.0 { self.window_count as f64 / elapsed } else { 0.0 };
            self.window_start = timestamp;
            self.window_count = 0;
        }
        self.window_count += 1;
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::Delivery;
    use serde_json::value::RawValue;

    fn frame(topic: &str, n: u64) -> Bytes {
        let payload = RawValue::from_string(n.to_string()).unwrap();
        Delivery {
            topic,
            payload: &payload,
            sender: "s",
            id: "i",
            timestamp: 1.0,
            reply_to: None,
            ttl: None,
            qos: 0,
            headers: None,
            retained: false,
            from_queue: None,
        }
        .encode()
    }

    fn record(monitor: &Monitor, topic: &str, n: u64, at: f64) {
        monitor.record(topic, at, &frame(topic, n));
    }

    #[tokio::test]
    async fn a_poll_with_a_cursor_sees_every_message_in_order() {
        let monitor = Monitor::new();
        for n in 1..=5 {
            record(&monitor, if n % 2 == 0 { "b" } else { "a.x" }, n, 1.0);
        }
        let polled = monitor.poll("a.#", Some(0), 100, Duration::ZERO).await;
        let seqs: Vec<u64> = polled.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 3, 5]);
        assert_eq!(polled.next, 5);
        assert_eq!(polled.missed, 0);
        let value: serde_json::Value = serde_json::from_slice(&polled.messages[1].message).unwrap();
        assert_eq!(value["payload"], 3);
        assert_eq!(value["topic"], "a.x");
        // A limit stops at the last message returned, so the next poll goes on from there.
        let polled = monitor.poll("#", Some(0), 2, Duration::ZERO).await;
        assert_eq!(polled.next, 2);
        let polled = monitor.poll("#", Some(polled.next), 100, Duration::ZERO).await;
        assert_eq!(polled.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
    }

    #[tokio::test]
    async fn the_log_drops_the_oldest_and_a_late_poll_says_how_many_it_missed() {
        let monitor = Monitor::new();
        for n in 0..(LOG_MESSAGES as u64 + 10) {
            record(&monitor, "t", n, 1.0);
        }
        let stats = monitor.stats();
        assert_eq!((stats.logged, stats.evicted), (LOG_MESSAGES, 10));
        let polled = monitor.poll("t", Some(3), 5, Duration::ZERO).await;
        assert_eq!(polled.missed, 7, "seq 4..=10 are gone");
        assert_eq!(polled.messages[0].seq, 11);
    }

    #[tokio::test]
    async fn a_waiting_poll_wakes_for_a_matching_message_only() {
        let monitor = Arc::new(Monitor::new());
        record(&monitor, "old", 0, 1.0);
        let poller = tokio::spawn({
            let monitor = monitor.clone();
            async move { monitor.poll("wanted", None, 10, Duration::from_secs(10)).await }
        });
        for _ in 0..100_000 {
            if monitor.waiting.load(Ordering::Acquire) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        record(&monitor, "other", 1, 1.0);
        record(&monitor, "wanted", 2, 1.0);
        let polled = tokio::time::timeout(Duration::from_secs(5), poller).await.unwrap().unwrap();
        assert_eq!(polled.messages.len(), 1);
        assert_eq!(polled.messages[0].seq, 3);
        assert_eq!(&*polled.messages[0].topic, "wanted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_with_nothing_new_times_out_empty_and_moves_the_cursor() {
        let monitor = Monitor::new();
        record(&monitor, "a", 0, 1.0);
        let polled = monitor.poll("b", Some(0), 10, Duration::from_millis(100)).await;
        assert!(polled.messages.is_empty());
        assert_eq!(polled.next, 1, "messages that cannot match are not looked at again");
    }

    #[tokio::test]
    async fn a_cursor_from_an_earlier_start_begins_again_and_says_so() {
        let monitor = Monitor::new();
        record(&monitor, "a", 0, 1.0);
        record(&monitor, "a", 1, 1.0);
        let polled = monitor.poll("a", Some(500), 10, Duration::ZERO).await;
        assert!(polled.restarted);
        assert_eq!(polled.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn topics_keep_counts_last_messages_and_rates_and_reply_addresses_stay_out() {
        let monitor = Monitor::new();
        for (i, at) in [10.0, 10.2, 10.4, 10.6, 11.1].into_iter().enumerate() {
            record(&monitor, "sensors.temp", i as u64, at);
        }
        record(&monitor, "sensors", 9, 11.0);
        record(&monitor, "sensorsx", 9, 11.0);
        record(&monitor, &format!("{REPLY_PREFIX}1.abc"), 9, 11.0);
        let stats = monitor.last("sensors.temp").unwrap();
        assert_eq!(stats.messages, 5);
        assert_eq!(stats.last_time, 11.1);
        let last: serde_json::Value = serde_json::from_slice(stats.last.as_ref().unwrap()).unwrap();
        assert_eq!(last["payload"], 4);
        assert!((stats.rate(11.5) - 4.0 / 1.1).abs() < 1e-9, "{}", stats.rate(11.5));
        assert_eq!(stats.rate(13.5), 0.0);
        let (topics, more) = monitor.topics("sensors", 10);
        let names: Vec<&str> = topics.iter().map(|(name, _)| &**name).collect();
        assert_eq!(names, ["sensors", "sensors.temp"]);
        assert!(!more);
        let (topics, more) = monitor.topics("", 2);
        assert_eq!(topics.len(), 2);
        assert!(more);
        assert_eq!(monitor.stats().topics, 3);
    }

    #[test]
    fn topics_and_kept_bytes_are_bounded() {
        let monitor = Monitor::new();
        for n in 0..(MAX_TOPICS as u64 + 5) {
            record(&monitor, &format!("t.{n}"), n, 1.0);
        }
        let stats = monitor.stats();
        assert_eq!((stats.topics, stats.untracked), (MAX_TOPICS, 5));
        let big = Bytes::from(format!(
            "{}{{\"topic\":\"t.0\",\"payload\":\"{}\"}}}}",
            std::str::from_utf8(FRAME_PREFIX).unwrap(),
            "x".repeat(LAST_MESSAGES_BYTES)
        ));
        monitor.record("t.0", 2.0, &big);
        let stats = monitor.last("t.0").unwrap();
        assert!(stats.last.is_none(), "too big to keep");
        assert!(stats.last_size > LAST_MESSAGES_BYTES);
        assert!(monitor.stats().kept_bytes <= LAST_MESSAGES_BYTES);
    }
}
