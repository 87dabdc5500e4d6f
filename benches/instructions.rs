//! The broker's hot path, run a given number of times, for counting instructions
//! with callgrind (`python -m bench instructions`): a figure that does not move with
//! machine noise, unlike a time.
//!
//! `instructions <subscribers> <messages>` parses `messages` publish calls as a
//! session does and routes each to `subscribers` subscribers of `jobs.*` (encoded
//! once, queued to each, taken off each queue). The runner counts two runs and takes
//! the difference, so setting up costs nothing in the per-message figure.

#[path = "support/routing.rs"]
mod routing;

use std::hint::black_box;

use message_broker::broker::router::Publish;
use message_broker::protocol::jsonrpc::{self, Incoming};
use message_broker::protocol::method::{Method, MethodName};

const PUBLISH: &str = r#"{"jsonrpc":"2.0","method":"publish","params":{"topic":"jobs.activated","payload":{"job_id":123456,"status":"activated","worker":"saw-01","note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"message_id":"0f3c2a9e11d3-42"},"id":"pub:0f3c2a9e11d3-42"}"#;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a count"));
    let (subscribers, messages) = match (args.next(), args.next()) {
        (Some(s), Some(m)) => (s, m),
        _ => panic!("usage: instructions <subscribers> <messages>"),
    };
    let (router, mut queues) = routing::router_with_subscribers(subscribers);
    let mut received_at = 0.0;
    for n in 0..messages {
        // A session reads the clock once per batch of frames read together (at most
        // 256): the messages of a batch share their timestamp.
        if n % 256 == 0 {
            received_at = now();
        }
        let Ok(Incoming::Single(Ok(call))) = jsonrpc::parse(black_box(PUBLISH.as_bytes())) else {
            unreachable!("one valid call")
        };
        let Ok(Method::Publish(params)) = Method::of(MethodName::Publish, &call) else {
            unreachable!("a publish call")
        };
        let payload = params.payload.expect("a payload");
        // As a session routes it: with the id the publisher gave.
        let published = router
            .publish(Publish {
                message_id: params.message_id.as_deref(),
                received_at: Some(received_at),
                ..Publish::new(&params.topic, payload, "bench")
            })
            .unwrap();
        black_box(published);
        for queue in &mut queues {
            black_box(queue.try_recv());
        }
    }
}

fn now() -> f64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since_epoch.expect("the clock is past 1970").as_secs_f64()
}
