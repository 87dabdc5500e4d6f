//! Request and reply: a fresh, unguessable reply address per request, the first
//! reply (or a responder's failure) handed to the requester, no-responders at once,
//! timeouts counted.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{Publish, Published, Router};
use crate::error::{ErrorCode, ResponderFailure, RpcError};
use crate::protocol::topic::REPLY_PREFIX;

/// What a requester gets: the reply payload, or the responder's failure.
type Answer = Result<Box<RawValue>, RpcError>;

/// The `error.type` a relay answers with when no one on its side responds: once
/// every relay a request reached has said so, and no subscriber here may answer, the
/// requester gets `NO_RESPONDERS`.
pub const RELAY_NO_RESPONDERS: &str = "NO_RESPONDERS";

/// A request's reply address and its requester, waiting.
pub(super) struct AwaitedReply {
    /// The random token in the reply address.
    token: u64,
    requester: oneshot::Sender<Answer>,
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
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let seq = self.next_reply.fetch_add(1, Ordering::Relaxed);
        // The random token keeps other clients from guessing, and answering, the
        // address of someone else's request.
        let token = RandomState::new().hash_one(seq);
        let reply_to = format!("{REPLY_PREFIX}{seq}.{token:016x}");
        let (tx, rx) = oneshot::channel();
        self.replies
            .lock()
            .insert(seq, AwaitedReply { token, requester: tx, reached: None, relays_gave_up: 0 });
        let published = match self.publish(Publish { reply_to: Some(&reply_to), ..msg }) {
            Ok(published) => published,
            Err(error) => {
                self.replies.lock().remove(&seq);
                return Err(error);
            }
        };
        if published.responders == 0 && published.relays == 0 {
            self.replies.lock().remove(&seq);
            self.counters.no_responders.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::new(
                ErrorCode::NoResponders,
                format!("no responders: no client is subscribed to {:?}", msg.topic),
            ));
        }
        {
            // A relay may have given up already, before the counts were known.
            let mut replies = self.replies.lock();
            if let Some(awaited) = replies.get_mut(&seq) {
                awaited.reached = Some((published.responders, published.relays));
                if awaited.abandoned() {
                    self.fail_abandoned(replies.remove(&seq).expect("just looked up"));
                }
            }
        }
        Ok(PendingReply { router: self.clone(), seq, rx, timeout, topic: msg.topic.to_owned() })
    }

    /// Hands a reply to the waiting requester. An unknown or already answered reply
    /// address is counted as a late reply and discarded: the first answer wins.
    pub fn reply(&self, reply_to: &str, payload: &RawValue) -> Published<'static> {
        self.answer(reply_to, Ok(payload.to_owned()))
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
        let mut answered = false;
        if let Some((seq, token)) = reply_address(reply_to)
            && let Some(awaited) = replies.get_mut(&seq)
            && awaited.token == token
        {
            awaited.relays_gave_up += 1;
            if awaited.abandoned() {
                answered = self.fail_abandoned(replies.remove(&seq).expect("just looked up"));
            }
        }
        drop(replies);
        self.published_answer(usize::from(answered))
    }

    /// Tells a requester that no one reached answers: the relays all gave up.
    fn fail_abandoned(&self, awaited: AwaitedReply) -> bool {
        self.counters.no_responders.fetch_add(1, Ordering::Relaxed);
        let error = RpcError::new(
            ErrorCode::NoResponders,
            "no responders: no client here answers this topic, nor anyone behind a bridge",
        );
        awaited.requester.send(Err(error)).is_ok()
    }

    fn answer(&self, reply_to: &str, answer: Answer) -> Published<'static> {
        let waiter = reply_address(reply_to).and_then(|(seq, token)| {
            let mut replies = self.replies.lock();
            match replies.get(&seq) {
                Some(awaited) if awaited.token == token => replies.remove(&seq).map(|a| a.requester),
                _ => None,
            }
        });
        let delivered = waiter.is_some_and(|tx| tx.send(answer).is_ok());
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
                Err(RpcError::new(
                    ErrorCode::Timeout,
                    format!("request timed out: no reply on {:?} within {:?}", self.topic, self.timeout),
                ))
            }
        }
    }
}

impl Drop for PendingReply {
    /// However the wait ends (reply, timeout, or the requester leaving), the reply
    /// address is retired.
    fn drop(&mut self) {
        self.router.replies.lock().remove(&self.seq);
    }
}
