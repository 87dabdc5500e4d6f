//! `request`: a message that waits for one reply, or the broker's own status when
//! sent to `status`.
//!
//! A single request is answered into the connection's queue by whoever has the
//! answer (see [`crate::broker::router::ReplyTo`]); the session keeps only its
//! deadline, and answers it at that time if no one did.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::Session;
use super::dispatch::{Outcome, to_raw};
use super::publish::Payload;
use crate::broker::access;
use crate::broker::router::{InFlight, Publish, ReplyTo, Router};
use crate::error::{ErrorCode, RpcError};
use crate::protocol::method;
use crate::protocol::rules;
use crate::protocol::topic::STATUS_TOPIC;

/// Requests one connection may have waiting for replies at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 10_000;

/// When a single request of this connection times out, unless answered before.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RequestDeadline {
    at: Instant,
    seq: u64,
    timeout: Duration,
    topic: Box<str>,
}

/// The deadlines of a connection's single requests, soonest first. A request answered
/// before its deadline leaves it here (the answer does not come through the session);
/// such deadlines are dropped once they are about as many as the requests in flight,
/// so that a connection making many requests keeps few. However the connection ends
/// (its task aborted included), dropping them retires the reply addresses of the
/// requests still waiting.
pub(super) struct Deadlines {
    router: Arc<Router>,
    due: BinaryHeap<Reverse<RequestDeadline>>,
}

impl Deadlines {
    pub(super) fn new(router: Arc<Router>) -> Deadlines {
        Deadlines { router, due: BinaryHeap::new() }
    }

    pub(super) fn soonest(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse(due)| due.at)
    }

    fn add(&mut self, in_flight: usize, deadline: RequestDeadline) {
        if self.due.len() > 2 * in_flight + 64 {
            self.router.keep_waiting(&mut self.due, |Reverse(deadline)| deadline.seq);
        }
        self.due.push(Reverse(deadline));
    }

    /// Answers the requests whose deadline has passed, if no one has.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(Reverse(due)) = self.due.peek()
            && due.at <= now
        {
            let Reverse(due) = self.due.pop().expect("just looked at");
            self.router.expire_request(due.seq, &due.topic, due.timeout);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.due.len()
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.router.forget_requests(self.due.drain().map(|Reverse(deadline)| deadline.seq));
    }
}

impl Session {
    /// `answer_to`: the id of a single call, whose answer goes straight into this
    /// connection's queue; `None` for a request of a batch, or a notification.
    pub(super) fn request(
        &mut self,
        params: method::Request<'_>,
        answer_to: Option<&RawValue>,
    ) -> Result<Outcome, RpcError> {
        if params.topic == STATUS_TOPIC {
            let status = to_raw(&self.router.status());
            return Ok(Outcome::Pending(Box::pin(async move { status })));
        }
        rules::publishable(&params.topic)?;
        self.permissions.may_publish(&params.topic).map_err(access::denied)?;
        if self.in_flight.load(Ordering::Relaxed) >= MAX_REQUESTS_IN_FLIGHT {
            return Err(RpcError::new(
                ErrorCode::TooManyRequests,
                format!("{MAX_REQUESTS_IN_FLIGHT} requests already wait for replies on this connection"),
            ));
        }
        let payload = Payload::new(params.payload);
        let headers = Payload::new(params.headers);
        let msg = Publish {
            headers: headers.present(),
            origin: Some(self.id),
            received_at: Some(self.received_at),
            ..Publish::new(&params.topic, payload.get(), self.sender())
        };
        let timeout = Duration::from_secs_f64(params.timeout);
        let in_flight = InFlight::new(&self.in_flight);
        let Some(id) = answer_to else {
            let pending = self.router.request(msg, timeout)?;
            return Ok(Outcome::Pending(Box::pin(async move {
                let _in_flight = in_flight;
                pending.wait().await
            })));
        };
        let at = Instant::now() + timeout;
        let seq = self.router.request_into(msg, ReplyTo::new(self.outbox.clone(), id, in_flight))?;
        let deadline = RequestDeadline { at, seq, timeout, topic: params.topic.into() };
        self.deadlines.add(self.in_flight.load(Ordering::Relaxed), deadline);
        Ok(Outcome::AwaitingReply)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use serde_json::Value;
    use tokio::sync::Notify;

    use super::*;
    use crate::broker::outbox::{self, OutboxReceiver};
    use crate::broker::router::{ClientInfo, SubscriptionFlags};
    use crate::broker::transport::Peer;
    use crate::config::BrokerConfig;

    fn connected(router: &Router, name: &str) -> (crate::index::SessionId, outbox::Outbox, OutboxReceiver) {
        let session = router.new_session_id();
        let (outbox, queue) = outbox::channel(100, 1 << 20);
        let info =
            ClientInfo { client_id: name.into(), client_type: None, version: None, peer: Peer::in_process() };
        router.register(session, info, outbox.clone(), Arc::new(Notify::new())).unwrap();
        (session, outbox, queue)
    }

    fn taken(queue: &mut OutboxReceiver) -> Value {
        serde_json::from_slice(&queue.try_recv().expect("a frame")).unwrap()
    }

    /// Answers go straight into the requester's queue, under its call's id; one that
    /// no one answers is answered at its deadline; deadlines of answered requests do
    /// not pile up; a requester that leaves retires its reply addresses.
    #[tokio::test]
    async fn single_requests_are_answered_into_their_connection() {
        let router = Router::new(BrokerConfig::default());
        let (responder, _, mut responder_queue) = connected(&router, "responder");
        router.subscribe(responder, &["svc".into()], SubscriptionFlags::default()).unwrap();
        let (_, requester, mut requester_queue) = connected(&router, "requester");
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut deadlines = Deadlines::new(router.clone());
        let payload = RawValue::from_string("{\"n\":1}".into()).unwrap();
        let timeout = Duration::from_secs(30);
        let ask = |deadlines: &mut Deadlines, id: u64| {
            let id = RawValue::from_string(id.to_string()).unwrap();
            let reply_to = ReplyTo::new(requester.clone(), &id, InFlight::new(&in_flight));
            let seq = router.request_into(Publish::new("svc", &payload, "requester"), reply_to).unwrap();
            let deadline =
                RequestDeadline { at: Instant::now() + timeout, seq, timeout, topic: "svc".into() };
            deadlines.add(in_flight.load(Ordering::Relaxed), deadline);
            seq
        };
        for id in 0..1000 {
            ask(&mut deadlines, id);
            let delivery = taken(&mut responder_queue);
            let reply_to = delivery["params"]["reply_to"].as_str().unwrap().to_owned();
            assert_eq!(router.reply(&reply_to, &payload).recipients, 1);
            let answer = taken(&mut requester_queue);
            assert_eq!((answer["id"].as_u64(), &answer["result"]), (Some(id), &serde_json::json!({"n": 1})));
            assert!(
                deadlines.len() <= 2 + 64 + 1,
                "{} deadlines kept for 1 request in flight",
                deadlines.len()
            );
        }
        assert_eq!(in_flight.load(Ordering::Relaxed), 0, "answered requests are no longer in flight");

        ask(&mut deadlines, 5000);
        let unanswered = taken(&mut responder_queue)["params"]["reply_to"].as_str().unwrap().to_owned();
        deadlines.expire(Instant::now());
        assert!(requester_queue.try_recv().is_none(), "not before its deadline");
        deadlines.expire(Instant::now() + timeout);
        let answer = taken(&mut requester_queue);
        assert_eq!(
            (answer["id"].as_u64(), answer["error"]["data"]["name"].as_str()),
            (Some(5000), Some("TIMEOUT"))
        );
        assert_eq!(router.reply(&unanswered, &payload).recipients, 0, "a reply after the deadline is late");
        assert_eq!(router.counters.timeouts.load(Ordering::Relaxed), 1);

        ask(&mut deadlines, 6000);
        let left_behind = taken(&mut responder_queue)["params"]["reply_to"].as_str().unwrap().to_owned();
        drop(deadlines);
        assert_eq!(router.reply(&left_behind, &payload).recipients, 0, "the requester left");
        assert!(requester_queue.try_recv().is_none());
        assert_eq!(in_flight.load(Ordering::Relaxed), 0);
    }
}
