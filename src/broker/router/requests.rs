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

/// A request's reply address and its requester, waiting.
pub(super) struct AwaitedReply {
    /// The random token in the reply address.
    token: u64,
    requester: oneshot::Sender<Answer>,
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
        self.replies.lock().insert(seq, AwaitedReply { token, requester: tx });
        let published = match self.publish(Publish { reply_to: Some(&reply_to), ..msg }) {
            Ok(published) => published,
            Err(error) => {
                self.replies.lock().remove(&seq);
                return Err(error);
            }
        };
        if published.responders == 0 {
            self.replies.lock().remove(&seq);
            self.counters.no_responders.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::new(
                ErrorCode::NoResponders,
                format!("no responders: no client is subscribed to {:?}", msg.topic),
            ));
        }
        Ok(PendingReply { router: self.clone(), seq, rx, timeout, topic: msg.topic.to_owned() })
    }

    /// Hands a reply to the waiting requester. An unknown or already answered reply
    /// address is counted as a late reply and discarded: the first answer wins.
    pub fn reply(&self, reply_to: &str, payload: &RawValue) -> Published {
        self.answer(reply_to, Ok(payload.to_owned()))
    }

    /// Hands a responder's failure to the waiting requester, as the error of its
    /// `request`; like a reply, only the first answer counts.
    pub fn reply_failure(&self, reply_to: &str, failure: ResponderFailure) -> Published {
        self.answer(reply_to, Err(RpcError::responder_failed(failure)))
    }

    fn answer(&self, reply_to: &str, answer: Answer) -> Published {
        let address = reply_to.strip_prefix(REPLY_PREFIX).and_then(|rest| rest.split_once('.'));
        let waiter = address
            .and_then(|(seq, token)| Some((seq.parse::<u64>().ok()?, u64::from_str_radix(token, 16).ok()?)))
            .and_then(|(seq, token)| {
                let mut replies = self.replies.lock();
                match replies.get(&seq) {
                    Some(awaited) if awaited.token == token => replies.remove(&seq).map(|a| a.requester),
                    _ => None,
                }
            });
        let delivered = waiter.is_some_and(|tx| tx.send(answer).is_ok());
        let counter = if delivered { &self.counters.replies } else { &self.counters.late_replies };
        counter.fetch_add(1, Ordering::Relaxed);
        let recipients = usize::from(delivered);
        Published {
            message_id: self.ids.next(),
            recipients,
            responders: recipients,
            stored: None,
            full: Vec::new(),
        }
    }
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
