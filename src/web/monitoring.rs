//! The JSON monitoring endpoints, with NATS's field names where the meaning is the
//! same: `/healthz`, `/varz`, `/connz`, `/subsz`, and `/topics` for the topic tree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Web;
use super::clock::{duration, from_millis, rfc3339};
use super::error::{ApiError, Params};
use crate::broker::router::Connection;
use crate::protocol::topic::matches;

/// Connections or subscriptions listed by default, and at most.
const DEFAULT_LIMIT: usize = 1024;
const MAX_LIMIT: usize = 10_000;
/// Topics `/topics` lists by default, and at most.
const DEFAULT_TOPICS: usize = 500;
const MAX_TOPICS: usize = 5000;
/// Characters of a last payload `/topics` shows.
const PREVIEW_CHARS: usize = 200;

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn varz(State(web): State<Arc<Web>>) -> Json<Value> {
    let router = &web.router;
    let config = router.config();
    let c = &router.counters;
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let uptime = router.started().elapsed();
    let now = SystemTime::now();
    let monitor = web.monitor.stats();
    let status = router.status();
    Json(json!({
        "server_id": router.server_id(),
        "server_name": "message-broker",
        "version": crate::VERSION,
        "host": status["host"],
        "port": status["port"],
        "http_host": "127.0.0.1",
        "http_port": web.port,
        "max_connections": config.max_connections,
        "max_payload": config.max_message_size,
        "ping_interval": config.heartbeat_interval.as_secs_f64(),
        "now": rfc3339(now),
        "start": rfc3339(now.checked_sub(uptime).unwrap_or(now)),
        "uptime": duration(uptime),
        "uptime_seconds": uptime.as_secs_f64(),
        "connections": c.connections_open.load(Ordering::Relaxed),
        "total_connections": load(&c.connections_accepted),
        "rejected_connections": load(&c.connections_rejected),
        "subscriptions": router.subscription_count(),
        "in_msgs": load(&c.published),
        "out_msgs": load(&c.delivered),
        "in_bytes": load(&c.published_bytes),
        "out_bytes": load(&c.delivered_bytes),
        "slow_consumers": load(&c.slow_consumers),
        "dropped_msgs": load(&c.dropped),
        "requests": load(&c.requests),
        "replies": load(&c.replies),
        "no_responders": load(&c.no_responders),
        "request_timeouts": load(&c.timeouts),
        "protocol_errors": load(&c.protocol_errors),
        "monitor": {
            "logged": monitor.logged,
            "logged_bytes": monitor.logged_bytes,
            "evicted": monitor.evicted,
            "topics": monitor.topics,
            "untracked_msgs": monitor.untracked,
        },
        "messages": status["messages"],
        "queues": status["queues"],
        "channels": status["channels"],
        "bridges": status["bridges"],
        "memory": status["memory"],
        "security": status["security"],
    }))
}

#[derive(Deserialize)]
pub(super) struct ConnzQuery {
    #[serde(default)]
    subs: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
    sort: Option<String>,
}

/// How `/connz` can be sorted (descending but for `cid` and `start`), as in NATS.
const SORTS: [&str; 10] =
    ["cid", "start", "subs", "pending", "msgs_to", "msgs_from", "bytes_to", "bytes_from", "last", "idle"];

pub(super) async fn connz(
    State(web): State<Arc<Web>>,
    Params(query): Params<ConnzQuery>,
) -> Result<Json<Value>, ApiError> {
    let subs = flag(query.subs.as_deref(), "subs")?;
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    let sort = query.sort.as_deref().unwrap_or("cid");
    let mut connections = web.router.connections();
    let key = |c: &Connection| -> u64 {
        match sort {
            "subs" => c.subscriptions.len() as u64,
            "pending" => c.pending_bytes as u64,
            "msgs_to" => c.delivered,
            "msgs_from" => c.received,
            "bytes_to" => c.delivered_bytes,
            "bytes_from" => c.received_bytes,
            "last" => c.last_activity_ms,
            // Longest idle first: the oldest activity.
            "idle" => u64::MAX - c.last_activity_ms,
            _ => 0,
        }
    };
    match sort {
        "cid" | "start" => {}
        other if SORTS.contains(&other) => connections.sort_by_key(|c| std::cmp::Reverse(key(c))),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown sort {other:?}: use one of {}",
                SORTS.join(", ")
            )));
        }
    }
    let now = SystemTime::now();
    let total = connections.len();
    let listed: Vec<Value> =
        connections.iter().skip(query.offset).take(limit).map(|c| connection(c, subs, now)).collect();
    Ok(Json(json!({
        "server_id": web.router.server_id(),
        "now": rfc3339(now),
        "num_connections": listed.len(),
        "total": total,
        "offset": query.offset,
        "limit": limit,
        "connections": listed,
    })))
}

fn connection(c: &Connection, subs: bool, now: SystemTime) -> Value {
    let (ip, port) = match c.peer.address.rsplit_once(':') {
        Some((ip, port)) if port.parse::<u16>().is_ok() => {
            (ip.trim_matches(['[', ']']), port.parse::<u16>().ok())
        }
        _ => (&*c.peer.address, None),
    };
    let last = if c.last_activity_ms == 0 { c.connected_at } else { from_millis(c.last_activity_ms) };
    let since = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
    let mut value = json!({
        "cid": c.session,
        "kind": "Client",
        "type": c.peer.transport.as_str(),
        "ip": ip,
        "port": port,
        "start": rfc3339(c.connected_at),
        "last_activity": rfc3339(last),
        "uptime": duration(since(c.connected_at)),
        "idle": duration(since(last)),
        "pending_msgs": c.pending,
        "pending_bytes": c.pending_bytes,
        "in_msgs": c.received,
        "in_bytes": c.received_bytes,
        "out_msgs": c.delivered,
        "out_bytes": c.delivered_bytes,
        "dropped_msgs": c.dropped,
        "subscriptions": c.subscriptions.len(),
        "name": &*c.client_id,
        "lang": c.client_type,
        "version": c.version,
    });
    if subs {
        value["subscriptions_list"] = c.subscriptions.iter().map(|(pattern, _)| json!(&**pattern)).collect();
        value["subscriptions_list_detail"] = c
            .subscriptions
            .iter()
            .map(|(pattern, flags)| {
                json!({
                    "subject": &**pattern,
                    "passive": flags.passive,
                    "no_local": flags.no_local,
                    "relay": flags.relay,
                })
            })
            .collect();
    }
    value
}

#[derive(Deserialize)]
pub(super) struct SubszQuery {
    #[serde(default)]
    subs: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
    /// Only the subscriptions that a message on this topic would reach.
    test: Option<String>,
}

pub(super) async fn subsz(
    State(web): State<Arc<Web>>,
    Params(query): Params<SubszQuery>,
) -> Result<Json<Value>, ApiError> {
    let subs = flag(query.subs.as_deref(), "subs")?;
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    if let Some(topic) = &query.test {
        crate::protocol::topic::validate_topic(topic)?;
    }
    let router = &web.router;
    let c = &router.counters;
    let (published, delivered) = (c.published.load(Ordering::Relaxed), c.delivered.load(Ordering::Relaxed));
    let mut body = json!({
        "server_id": router.server_id(),
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": router.subscription_count(),
        "num_inserts": c.subscribed.load(Ordering::Relaxed),
        "num_removes": c.unsubscribed.load(Ordering::Relaxed),
        "num_matches": published,
        "max_fanout": c.max_fanout.load(Ordering::Relaxed),
        "avg_fanout": if published == 0 { 0.0 } else { delivered as f64 / published as f64 },
    });
    if subs || query.test.is_some() {
        let all: Vec<Value> = router
            .connections()
            .iter()
            .flat_map(|c| {
                c.subscriptions.iter().map(move |(pattern, flags)| {
                    json!({
                        "subject": &**pattern,
                        "cid": c.session,
                        "client_id": &*c.client_id,
                        "passive": flags.passive,
                        "no_local": flags.no_local,
                        "relay": flags.relay,
                    })
                })
            })
            .filter(|sub| {
                query
                    .test
                    .as_deref()
                    .is_none_or(|topic| matches(sub["subject"].as_str().unwrap_or_default(), topic))
            })
            .collect();
        body["total"] = all.len().into();
        body["offset"] = query.offset.into();
        body["limit"] = limit.into();
        body["subscriptions_list"] = all.into_iter().skip(query.offset).take(limit).collect();
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
pub(super) struct TopicsQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

/// The topic tree below `prefix`: each node with the messages and topics beneath it,
/// each topic with its count, rate, last time and a preview of its last payload.
pub(super) async fn topics(
    State(web): State<Arc<Web>>,
    Params(query): Params<TopicsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_TOPICS);
    if limit == 0 || limit > MAX_TOPICS {
        return Err(ApiError::bad_request(format!("limit must be 1..={MAX_TOPICS}")));
    }
    let prefix = query.prefix.trim_end_matches('.');
    let (topics, truncated) = web.monitor.topics(prefix, limit);
    let now = unix_now();
    let mut root = Node::default();
    for (name, stats) in &topics {
        let mut node = &mut root;
        node.messages += stats.messages;
        node.topics += 1;
        for segment in name.split('.') {
            node = node.children.entry(segment.to_owned()).or_default();
            node.messages += stats.messages;
            node.topics += 1;
        }
        let (preview, cut) = stats.last.as_ref().map(|last| preview(last)).unwrap_or_default();
        node.topic = Some(json!({
            "topic": &**name,
            "messages": stats.messages,
            "rate": (stats.rate(now) * 100.0).round() / 100.0,
            "last_time": stats.last_time,
            "last_size": stats.last_size,
            "last_payload": preview,
            "last_payload_truncated": cut,
            "last_kept": stats.last.is_some(),
        }));
    }
    let stats = web.monitor.stats();
    Ok(Json(json!({
        "prefix": prefix,
        "topics": topics.len(),
        "truncated": truncated,
        "tracked_topics": stats.topics,
        "untracked_msgs": stats.untracked,
        "tree": root.into_json(""),
    })))
}

#[derive(Default)]
struct Node {
    messages: u64,
    topics: usize,
    topic: Option<Value>,
    children: std::collections::BTreeMap<String, Node>,
}

impl Node {
    fn into_json(self, name: &str) -> Value {
        let mut value = Map::new();
        value.insert("name".into(), name.into());
        value.insert("messages".into(), self.messages.into());
        value.insert("topics".into(), self.topics.into());
        if let Some(topic) = self.topic {
            value.insert("topic".into(), topic);
        }
        let children: Vec<Value> =
            self.children.into_iter().map(|(name, node)| node.into_json(&name)).collect();
        value.insert("children".into(), children.into());
        Value::Object(value)
    }
}

/// The payload of a last message as JSON text, cut to [`PREVIEW_CHARS`].
fn preview(message: &[u8]) -> (String, bool) {
    #[derive(Deserialize)]
    struct Delivered<'a> {
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let Ok(delivered) = serde_json::from_slice::<Delivered>(message) else {
        return (String::new(), false);
    };
    let text = delivered.payload.get();
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => (text[..cut].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A query flag: absent, `0`/`false` or `1`/`true`.
fn flag(value: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match value {
        None | Some("0" | "false") => Ok(false),
        Some("" | "1" | "true" | "detail") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("{name} must be 1 or 0, got {other:?}"))),
    }
}

fn limit(given: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match given.unwrap_or(default) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        limit if limit > MAX_LIMIT => {
            Err(ApiError::bad_request(format!("limit must be at most {MAX_LIMIT}")))
        }
        limit => Ok(limit),
    }
}
