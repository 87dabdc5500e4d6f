//! `publish`: routing a message, answered at once or, for a `qos=1` message bound
//! for durable queues, once the store has it. A publish to a reply address is the
//! answer to a request: its payload, or with `error` the responder's failure.

use super::Session;
use super::dispatch::{Outcome, to_raw};
use crate::broker::access;
use crate::broker::router::Publish;
use crate::error::{ErrorCode, ResponderFailure, RpcError};
use crate::protocol::message::single_line;
use crate::protocol::method;
use crate::protocol::rules;
use crate::protocol::topic::REPLY_PREFIX;
use serde_json::value::RawValue;

impl Session {
    pub(super) fn publish(&mut self, params: method::Publish<'_>) -> Result<Outcome, RpcError> {
        let payload = Payload::new(params.payload);
        if params.topic.starts_with(REPLY_PREFIX) {
            let answered = match params.error {
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
            return Ok(Outcome::Done(to_raw(&answered)));
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
        let answer = to_raw(&published)?;
        let Some(stored) = published.stored else {
            return Ok(Outcome::Done(Ok(answer)));
        };
        Ok(Outcome::Pending(Box::pin(async move {
            match stored.await {
                Ok(Ok(())) => Ok(answer),
                Ok(Err(reason)) => Err(RpcError::new(
                    ErrorCode::StorageFailed,
                    format!("the message could not be stored: {reason}"),
                )),
                Err(_) => Err(RpcError::new(
                    ErrorCode::StorageFailed,
                    "the store closed before the message was stored",
                )),
            }
        })))
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
