//! The broker's hot path, run a given number of times, for counting instructions
//! with callgrind (`python -m bench instructions`): a figure that does not move with
//! machine noise, unlike a time.
//!
//! `instructions <subscribers> <messages>` parses `messages` publish calls as a
//! session does and routes each to `subscribers` subscribers of `jobs.*` (encoded
//! once, queued to each, taken off each queue). The runner counts two runs and takes
//! the difference, so setting up costs nothing in the per-message figure.

use std::hint::black_box;
use std::sync::Arc;

use message_broker::BrokerConfig;
use message_broker::broker::router::{ClientInfo, Publish, Router, SubscriptionFlags};
use message_broker::broker::{Peer, outbox};
use message_broker::protocol::jsonrpc::{self, Incoming};
use message_broker::protocol::method::{Method, MethodName};
use tokio::sync::Notify;

const PUBLISH: &str = r#"{"jsonrpc":"2.0","method":"publish","params":{"topic":"jobs.activated","payload":{"job_id":123456,"status":"activated","worker":"saw-01","note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"message_id":"0f3c2a9e11d3-42"},"id":"pub:0f3c2a9e11d3-42"}"#;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a count"));
    let (subscribers, messages) = match (args.next(), args.next()) {
        (Some(s), Some(m)) => (s, m),
        _ => panic!("usage: instructions <subscribers> <messages>"),
    };
    let router = Router::new(BrokerConfig::default());
    let mut queues = Vec::new();
    for i in 0..subscribers {
        let session = router.new_session_id();
        let (outbox, queue) = outbox::channel(1 << 20, usize::MAX);
        let info = ClientInfo {
            client_id: format!("sub{i}").into(),
            client_type: None,
            version: None,
            peer: Peer::in_process(),
        };
        router.register(session, info, outbox, Arc::new(Notify::new())).unwrap();
        router.subscribe(session, &["jobs.*".into()], SubscriptionFlags::default()).unwrap();
        queues.push(queue);
    }
    for _ in 0..messages {
        let Ok(Incoming::Single(Ok(call))) = jsonrpc::parse(black_box(PUBLISH.as_bytes())) else {
            unreachable!("one valid call")
        };
        let Ok(Method::Publish(params)) = Method::parse(MethodName::Publish, call.params) else {
            unreachable!("a publish call")
        };
        let payload = params.payload.expect("a payload");
        let published = router.publish(Publish::new(&params.topic, payload, "bench")).unwrap();
        black_box(published);
        for queue in &mut queues {
            black_box(queue.try_recv());
        }
    }
}
