//! Request and reply: a fresh, unguessable reply address per request, the first
//! reply (or a responder's failure) handed to the requester, no-responders at once,
//! timeouts counted.
//!
//! A single request is answered straight into its connection's queue by the task
//! that has the answer: the responder's connection, a relay's, or the requester's own
//! at the deadline. Nothing runs per request in between. A request of a batch waits
//! for its answer with the rest of its batch, through a channel.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{Publish, Published, Router};
use crate::broker::outbox::Outbox;
use crate::error::{ErrorCode, ResponderFailure, RpcError};
use crate::protocol::jsonrpc;
use crate::protocol::topic::REPLY_PREFIX;

/// What a requester gets: the reply payload, or the responder's failure.
type Answer = Result<Box<RawValue>, RpcError>;

/// The `error.type` a relay answers with when no one on its side responds: once
/// every relay a request reached has said so, and no subscriber here may answer, the
/// requester gets `NO_RESPONDERS`.
pub const RELAY_NO_RESPONDERS: &str = "NO_RESPONDERS";

/// Who waits for a request's answer.
enum Requester {
    /// Whoever holds the [`PendingReply`].
    Waiting(oneshot::Sender<Answer>),
    /// The connection that sent the request, answered into its queue.
    Direct(ReplyTo),
}

impl Requester {
    /// Hands over the answer; false when no one takes it any more.
    fn answer(self, answer: Result<&RawValue, RpcError>) -> bool {
        match self {
            Requester::Waiting(tx) => tx.send(answer.map(RawValue::to_owned)).is_ok(),
            Requester::Direct(reply_to) => reply_to.answer(answer),
        }
    }
}

/// Where the answer to a single request goes: its connection's queue, under the id of
/// its call. Counted among the connection's calls in flight until it is answered or
/// forgotten.
pub struct ReplyTo {
    outbox: Outbox,
    id: Box<RawValue>,
    _in_flight: InFlight,
}

impl ReplyTo {
    pub fn new(outbox: Outbox, id: &RawValue, in_flight: InFlight) -> ReplyTo {
        ReplyTo { outbox, id: id.to_owned(), _in_flight: in_flight }
    }

    fn answer(self, answer: Result<&RawValue, RpcError>) -> bool {
        let response = match answer {
            Ok(payload) => jsonrpc::success(&self.id, payload),
            Err(error) => jsonrpc::failure(Some(&self.id), &error),
        };
        self.outbox.answer(Bytes::from(response))
    }
}

/// Counts a call of a connection while it waits for its answer (a request, a receive
/// from a channel), against [`MAX_REQUESTS_IN_FLIGHT`](crate::broker::session::MAX_REQUESTS_IN_FLIGHT).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn new(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's reply address and its requester, waiting.
pub(super) struct AwaitedReply {
    /// The random token in the reply address.
    token: u64,
    requester: Requester,
    /// Who the request reached, once it is published: subscribers here that may
    /// answer, and relays.
    reached: Option<(usize, usize)>,
    /// Relays that said that no one on their side responds (possibly before
    /// `reached` is known).
    relays_gave_up: usize,
}

impl AwaitedReply {
    /// True when no one is left who could answer.
    fn abandoned(&self) -> bool {
        self.reached.is_some_and(|(responders, relays)| responders == 0 && self.relays_gave_up >= relays)
    }
}

impl Router {
    /// Publishes a request with a fresh reply address. Fails at once when no client
    /// that may answer is subscribed to the topic (passive subscribers never answer).
    pub fn request(self: &Arc<Self>, msg: Publish<'_>, timeout: Duration) -> Result<PendingReply, RpcError> {
        let (tx, rx) = oneshot::channel();
        let seq = self.publish_request(msg, Requester::Waiting(tx))?;
        Ok(PendingReply { router: self.clone(), seq, rx, timeout, topic: msg.topic.to_owned() })
    }

    /// Publishes a single request whose answer goes straight into its connection's
    /// queue; fails as [`Router::request`] does. Returns the request's number, which
    /// the requester gives to [`Router::expire_request`] at its deadline and to
    /// [`Router::forget_requests`] when it leaves.
    pub fn request_into(&self, msg: Publish<'_>, reply_to: ReplyTo) -> Result<u64, RpcError> {
        self.publish_request(msg, Requester::Direct(reply_to))
    }

    fn publish_request(&self, msg: Publish<'_>, requester: Requester) -> Result<u64, RpcError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let seq = self.next_reply.fetch_add(1, Ordering::Relaxed);
        // The random token keeps other clients from guessing, and answering, the
        // address of someone else's request.
        let token = RandomState::new().hash_one(seq);
        let reply_to = format!("{REPLY_PREFIX}{seq}.{token:016x}");
        self.replies.lock().insert(seq, AwaitedReply { token, requester, reached: None, relays_gave_up: 0 });
        let published = match self.publish(Publish { reply_to: Some(&reply_to), ..msg }) {
            Ok(published) => published,
            Err(error) => {
                self.replies.lock().remove(&seq);
                return Err(error);
            }
        };
        if published.responders == 0 && published.relays == 0 {
            if self.replies.lock().remove(&seq).is_none() {
                // A passive listener, which hears the request too, answered it already
                // (while it was being routed): the requester has its answer.
                return Ok(seq);
            }
            self.counters.no_responders.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::new(
                ErrorCode::NoResponders,
                format!("no responders: no client is subscribed to {:?}", msg.topic),
            ));
        }
        // A relay may have given up already, before the counts were known (and then
        // the requester has its answer: this request is done).
        let abandoned = {
            let mut replies = self.replies.lock();
            match replies.get_mut(&seq) {
                Some(awaited) => {
                    awaited.reached = Some((published.responders, published.relays));
                    if awaited.abandoned() { replies.remove(&seq) } else { None }
                }
                None => None,
            }
        };
        if let Some(awaited) = abandoned {
            self.fail_abandoned(awaited);
        }
        Ok(seq)
    }

    /// A single request's deadline passed: when it is still unanswered, it is answered
    /// that it timed out, and its reply address retired.
    pub fn expire_request(&self, seq: u64, topic: &str, timeout: Duration) {
        let Some(awaited) = self.replies.lock().remove(&seq) else {
            return;
        };
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        awaited.requester.answer(Err(timed_out(topic, timeout)));
    }

    /// Retires the reply addresses of a connection's requests, unanswered when it left.
    pub fn forget_requests(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut replies = self.replies.lock();
        for seq in seqs {
            replies.remove(&seq);
        }
    }

    /// Keeps of `items` those whose request still waits for its answer.
    pub fn keep_waiting<T: Ord>(&self, items: &mut std::collections::BinaryHeap<T>, seq: impl Fn(&T) -> u64) {
        let replies = self.replies.lock();
        items.retain(|item| replies.contains_key(&seq(item)));
    }

    /// Hands a reply to the waiting requester. An unknown or already answered reply
    /// address is counted as a late reply and discarded: the first answer wins.
    pub fn reply(&self, reply_to: &str, payload: &RawValue) -> Published<'static> {
        self.answer(reply_to, Ok(payload))
    }

    /// Hands a responder's failure to the waiting requester, as the error of its
    /// `request`; like a reply, only the first answer counts. A relay's
    /// [`RELAY_NO_RESPONDERS`] is not an answer but a relay giving up: the request
    /// fails with `NO_RESPONDERS` once every relay has, unless a subscriber here may
    /// still answer.
    pub fn reply_failure(&self, reply_to: &str, failure: ResponderFailure) -> Published<'static> {
        if failure.kind == RELAY_NO_RESPONDERS {
            return self.relay_gave_up(reply_to);
        }
        self.answer(reply_to, Err(RpcError::responder_failed(failure)))
    }

    fn relay_gave_up(&self, reply_to: &str) -> Published<'static> {
        let mut replies = self.replies.lock();
        let mut abandoned = None;
        if let Some((seq, token)) = reply_address(reply_to)
            && let Some(awaited) = replies.get_mut(&seq)
            && awaited.token == token
        {
            awaited.relays_gave_up += 1;
            if awaited.abandoned() {
                abandoned = replies.remove(&seq);
            }
        }
        drop(replies);
        let answered = abandoned.is_some_and(|awaited| self.fail_abandoned(awaited));
        self.published_answer(usize::from(answered))
    }

    /// Tells a requester that no one reached answers: the relays all gave up.
    fn fail_abandoned(&self, awaited: AwaitedReply) -> bool {
        self.counters.no_responders.fetch_add(1, Ordering::Relaxed);
        let error = RpcError::new(
            ErrorCode::NoResponders,
            "no responders: no client here answers this topic, nor anyone behind a bridge",
        );
        awaited.requester.answer(Err(error))
    }

    fn answer(&self, reply_to: &str, answer: Result<&RawValue, RpcError>) -> Published<'static> {
        let waiter = reply_address(reply_to).and_then(|(seq, token)| {
            let mut replies = self.replies.lock();
            match replies.get(&seq) {
                Some(awaited) if awaited.token == token => replies.remove(&seq).map(|a| a.requester),
                _ => None,
            }
        });
        let delivered = waiter.is_some_and(|requester| requester.answer(answer));
        let counter = if delivered { &self.counters.replies } else { &self.counters.late_replies };
        counter.fetch_add(1, Ordering::Relaxed);
        self.published_answer(usize::from(delivered))
    }

    fn published_answer(&self, recipients: usize) -> Published<'static> {
        Published {
            message_id: self.ids.next().into(),
            recipients,
            responders: recipients,
            relays: 0,
            stored: None,
            awaiting_ack: Vec::new(),
            full: Vec::new(),
        }
    }
}

/// The sequence number and token of a reply address.
fn reply_address(reply_to: &str) -> Option<(u64, u64)> {
    let (seq, token) = reply_to.strip_prefix(REPLY_PREFIX)?.split_once('.')?;
    Some((seq.parse().ok()?, u64::from_str_radix(token, 16).ok()?))
}

/// A request waiting for its first reply.
pub struct PendingReply {
    router: Arc<Router>,
    seq: u64,
    rx: oneshot::Receiver<Answer>,
    timeout: Duration,
    topic: String,
}

impl PendingReply {
    pub async fn wait(mut self) -> Result<Box<RawValue>, RpcError> {
        match tokio::time::timeout(self.timeout, &mut self.rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                self.router.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(timed_out(&self.topic, self.timeout))
            }
        }
    }
}

fn timed_out(topic: &str, timeout: Duration) -> RpcError {
    RpcError::new(ErrorCode::Timeout, format!("request timed out: no reply on {topic:?} within {timeout:?}"))
}

impl Drop for PendingReply {
    /// However the wait ends (reply, timeout, or the requester leaving), the reply
    /// address is retired.
    fn drop(&mut self) {
        self.router.replies.lock().remove(&self.seq);
    }
}
