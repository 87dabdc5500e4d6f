//! `publish`: routing a message, answered at once or, for a `qos=1` message bound
//! for durable queues, once the store has it (and, for queues with
//! `confirm_on_ack`, once their consumers acknowledged it). A publish to a reply
//! address is the answer to a request: its payload, or with `error` the
//! responder's failure.

use tokio::time::Instant;

use super::Session;
use super::dispatch::{Outcome, to_raw};
use crate::broker::access;
use crate::broker::queue::AwaitedAck;
use crate::broker::router::Publish;
use crate::error::{ErrorCode, ResponderFailure, RpcError};
use crate::protocol::message::single_line;
use crate::protocol::method;
use crate::protocol::rules;
use crate::protocol::topic::REPLY_PREFIX;
use serde_json::value::RawValue;

impl Session {
    /// `answered`: the call has an id, so its caller waits for the answer.
    pub(super) fn publish(
        &mut self,
        params: method::Publish<'_>,
        answered: bool,
    ) -> Result<Outcome, RpcError> {
        let payload = Payload::new(params.payload);
        if params.topic.starts_with(REPLY_PREFIX) {
            let replied = match params.error {
                Some(error) => self.router.reply_failure(
                    &params.topic,
                    ResponderFailure {
                        kind: error.kind,
                        message: error.message,
                        responder: self.sender().to_owned(),
                    },
                ),
                None => self.router.reply(&params.topic, payload.get()),
            };
            return Ok(if answered { Outcome::Done(to_raw(&replied)) } else { Outcome::Unanswered });
        }
        rules::publishable(&params.topic)?;
        self.permissions.may_publish(&params.topic).map_err(access::denied)?;
        let headers = Payload::new(params.headers);
        let published = self.router.publish(Publish {
            message_id: params.message_id.as_deref(),
            ttl: params.ttl,
            qos: params.qos,
            retain: params.retain,
            headers: headers.present(),
            origin: Some(self.id),
            received_at: Some(self.received_at),
            ..Publish::new(&params.topic, payload.get(), self.sender())
        })?;
        if params.qos > 0 && !published.full.is_empty() {
            let refusals: Vec<String> =
                published.full.iter().map(|(queue, why)| format!("queue {queue:?} is full: {why}")).collect();
            return Err(RpcError::new(
                ErrorCode::QueueFull,
                format!(
                    "{}; message {} was not kept there (it went to the other subscribers)",
                    refusals.join("; "),
                    published.message_id
                ),
            ));
        }
        if !answered {
            // Nobody waits: the answer is not made (nor the store waited for).
            return Ok(Outcome::Unanswered);
        }
        let answer = to_raw(&published)?;
        if published.stored.is_none() && published.awaiting_ack.is_empty() {
            return Ok(Outcome::Done(Ok(answer)));
        }
        let (stored, awaiting_ack) = (published.stored, published.awaiting_ack);
        let message_id = published.message_id.into_owned();
        Ok(Outcome::Pending(Box::pin(async move {
            if let Some(stored) = stored {
                match stored.await {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => {
                        return Err(RpcError::new(
                            ErrorCode::StorageFailed,
                            format!("the message could not be stored: {reason}"),
                        ));
                    }
                    Err(_) => {
                        return Err(RpcError::new(
                            ErrorCode::StorageFailed,
                            "the store closed before the message was stored",
                        ));
                    }
                }
            }
            let started = Instant::now();
            for awaited in awaiting_ack {
                acknowledged(awaited, started, &message_id).await?;
            }
            Ok(answer)
        })))
    }
}

/// Waits for a `confirm_on_ack` queue's consumer to acknowledge the message. When it
/// does not in time, the message stays in the queue (it may still be taken care
/// of): the publisher hears that it is not confirmed, and may publish it again.
async fn acknowledged(awaited: AwaitedAck, started: Instant, message_id: &str) -> Result<(), RpcError> {
    let not_confirmed = |why: String| {
        RpcError::new(ErrorCode::StorageFailed, format!("message {message_id} is not confirmed: {why}"))
    };
    match tokio::time::timeout_at(started + awaited.within, awaited.outcome).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => Err(not_confirmed(why)),
        Ok(Err(_)) => Err(not_confirmed(format!(
            "queue {:?} closed before its consumer acknowledged it",
            awaited.queue
        ))),
        Err(_) => Err(not_confirmed(format!(
            "the consumer of queue {:?} did not acknowledge it within {} s; it stays queued",
            awaited.queue,
            awaited.within.as_secs_f64()
        ))),
    }
}

/// Published JSON text (a payload, headers), flattened to one line when it had line
/// breaks, so that it can be forwarded to newline-delimited connections as is.
pub(super) struct Payload<'a> {
    given: Option<&'a RawValue>,
    flattened: Option<Box<RawValue>>,
}

impl<'a> Payload<'a> {
    pub(super) fn new(given: Option<&'a RawValue>) -> Self {
        Payload { given, flattened: given.and_then(single_line) }
    }

    /// The text as it is forwarded; `null` when none was given.
    pub(super) fn get(&self) -> &RawValue {
        self.present().unwrap_or(RawValue::NULL)
    }

    /// The text as it is forwarded, if any was given.
    pub(super) fn present(&self) -> Option<&RawValue> {
        self.flattened.as_deref().or(self.given)
    }
}
