//! `/metrics` in the Prometheus text exposition format 0.0.4.
//!
//! Counters end in `_total`; every family has its `# HELP` and `# TYPE`. Label
//! values are escaped as the format says. Per-client and per-queue families are
//! bounded: past [`MAX_LABELLED`] series the rest are summed under `_other`, so a
//! broker with thousands of clients never produces thousands of series.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Web;

/// The content type Prometheus expects for the text format.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Series of one per-client or per-queue family before the rest are summed.
pub(super) const MAX_LABELLED: usize = 100;
/// The label value the summed rest get.
const OTHER: &str = "_other";

pub(super) async fn metrics(State(web): State<Arc<Web>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&web)).into_response()
}

fn render(web: &Web) -> String {
    let router = &web.router;
    let c = &router.counters;
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64;
    let mut out = Metrics(String::with_capacity(8192));
    out.family("message_broker_info", "gauge", "The broker's version (always 1).");
    out.sample("message_broker_info", &[("version", crate::VERSION)], 1.0);
    out.gauge(
        "message_broker_uptime_seconds",
        "Seconds since the broker started.",
        router.started().elapsed().as_secs_f64(),
    );
    let counters = [
        (
            "message_broker_messages_published_total",
            "Messages published (requests included).",
            load(&c.published),
        ),
        ("message_broker_published_bytes_total", "Payload bytes published.", load(&c.published_bytes)),
        ("message_broker_messages_delivered_total", "Deliveries queued to subscribers.", load(&c.delivered)),
        ("message_broker_delivered_bytes_total", "Payload bytes delivered.", load(&c.delivered_bytes)),
        (
            "message_broker_messages_dropped_total",
            "Deliveries dropped because a subscriber's queue was full.",
            load(&c.dropped),
        ),
        (
            "message_broker_slow_consumers_total",
            "Times a subscriber's queue filled up.",
            load(&c.slow_consumers),
        ),
        ("message_broker_requests_total", "Requests made.", load(&c.requests)),
        ("message_broker_replies_total", "Replies handed to requesters.", load(&c.replies)),
        ("message_broker_late_replies_total", "Replies that came too late or twice.", load(&c.late_replies)),
        ("message_broker_no_responders_total", "Requests that found no responder.", load(&c.no_responders)),
        ("message_broker_request_timeouts_total", "Requests that timed out.", load(&c.timeouts)),
        ("message_broker_connections_accepted_total", "Connections accepted.", load(&c.connections_accepted)),
        (
            "message_broker_connections_rejected_total",
            "Connections refused over max_connections.",
            load(&c.connections_rejected),
        ),
        ("message_broker_protocol_errors_total", "Malformed or refused calls.", load(&c.protocol_errors)),
        ("message_broker_subscriptions_made_total", "Subscriptions made.", load(&c.subscribed)),
        ("message_broker_subscriptions_removed_total", "Subscriptions removed.", load(&c.unsubscribed)),
    ];
    for (name, help, value) in counters {
        out.counter(name, help, value);
    }
    out.gauge(
        "message_broker_connections",
        "Open connections.",
        c.connections_open.load(Ordering::Relaxed) as f64,
    );
    out.gauge("message_broker_subscriptions", "Subscriptions held.", router.subscription_count() as f64);
    let monitor = web.monitor.stats();
    out.gauge("message_broker_monitor_topics", "Topics the monitor tracks.", monitor.topics as f64);
    out.counter(
        "message_broker_monitor_evicted_total",
        "Messages that left the monitor's log to make room.",
        monitor.evicted as f64,
    );

    // Per client: queued frames and drops, bounded in series.
    let connections = router.connections();
    let clients: Vec<(&str, [f64; 3])> = connections
        .iter()
        .map(|c| (&*c.client_id, [c.pending as f64, c.delivered as f64, c.dropped as f64]))
        .collect();
    let clients = bounded(clients);
    for (i, (name, help, kind)) in [
        ("message_broker_client_pending_messages", "Frames waiting to be written to a client.", "gauge"),
        ("message_broker_client_delivered_total", "Deliveries queued to a client.", "counter"),
        ("message_broker_client_dropped_total", "Deliveries dropped for a client.", "counter"),
    ]
    .into_iter()
    .enumerate()
    {
        out.family(name, kind, help);
        for (client, values) in &clients {
            out.sample(name, &[("client_id", client)], values[i]);
        }
    }

    // Per queue: messages waiting, in flight and consumers, bounded in series.
    let status = router.status();
    let queues: Vec<(&str, [f64; 3])> = status["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|queue| {
            let number = |field: &str| queue.get(field).and_then(Value::as_f64).unwrap_or(0.0);
            Some((queue.get("name")?.as_str()?, [number("depth"), number("in_flight"), number("consumers")]))
        })
        .collect();
    let queues = bounded(queues);
    for (i, (name, help)) in [
        ("message_broker_queue_depth_messages", "Messages waiting in a queue for a consumer."),
        (
            "message_broker_queue_in_flight_messages",
            "Messages delivered from a queue and not yet acknowledged.",
        ),
        ("message_broker_queue_consumers", "Consumers of a queue."),
    ]
    .into_iter()
    .enumerate()
    {
        out.family(name, "gauge", help);
        for (queue, values) in &queues {
            out.sample(name, &[("queue", queue)], values[i]);
        }
    }
    out.0
}

/// At most [`MAX_LABELLED`] series: the first ones as they are, the rest summed
/// under [`OTHER`].
fn bounded<const N: usize>(mut series: Vec<(&str, [f64; N])>) -> Vec<(String, [f64; N])> {
    let rest = if series.len() > MAX_LABELLED { series.split_off(MAX_LABELLED - 1) } else { Vec::new() };
    let mut out: Vec<(String, [f64; N])> = series.into_iter().map(|(name, v)| (name.to_owned(), v)).collect();
    if !rest.is_empty() {
        let mut sum = [0.0; N];
        for (_, values) in rest {
            for (total, value) in sum.iter_mut().zip(values) {
                *total += value;
            }
        }
        out.push((OTHER.to_owned(), sum));
    }
    out
}

struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape_label(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// Help texts escape backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
        let mut out = Metrics(String::new());
        out.family("x_total", "counter", "Line one\nline two.");
        out.sample("x_total", &[("client_id", "we\"ird")], 3.0);
        assert_eq!(
            out.0,
            "# HELP x_total Line one\\nline two.\n# TYPE x_total counter\nx_total{client_id=\"we\\\"ird\"} 3\n"
        );
    }

    #[test]
    fn series_past_the_bound_are_summed_under_other() {
        let names: Vec<String> = (0..MAX_LABELLED + 5).map(|i| format!("c{i}")).collect();
        let series: Vec<(&str, [f64; 1])> = names.iter().map(|n| (n.as_str(), [1.0])).collect();
        let out = bounded(series);
        assert_eq!(out.len(), MAX_LABELLED);
        assert_eq!(out.last().unwrap(), &(OTHER.to_owned(), [6.0]));
        assert_eq!(bounded(vec![("a", [2.0])]), vec![("a".to_owned(), [2.0])]);
    }
}
