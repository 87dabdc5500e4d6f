//! The Channels layer methods: `channel_send` (answered at once, `CHANNEL_FULL` when
//! the channel is full), `channel_receive` (answered when a message comes, or empty at
//! its timeout; what it answers with stays this connection's until `channel_ack`),
//! `channel_nack`, `channel_cancel`, `group_add`, `group_discard`, `group_send` and
//! `channel_flush`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;

use super::Session;
use super::dispatch::{Outcome, RpcResult, to_raw, unix_now};
use super::publish::Payload;
use super::request::MAX_REQUESTS_IN_FLIGHT;
use crate::broker::channels::{ReceiveBy, Taken};
use crate::broker::router::ChannelReceipt;
use crate::broker::router::InFlight;
use crate::error::{ErrorCode, RpcError};
use crate::protocol::channels::{
    ChannelCancel, ChannelFlush, ChannelReceive, ChannelSend, ChannelTags, GroupAdd, GroupDiscard, GroupSend,
};

impl Session {
    pub(super) fn channel_send(&mut self, params: ChannelSend) -> RpcResult {
        let message = kept(&params.message);
        self.router.channel_send(&params.prefix, &params.channel, message, params.ttl, params.capacity)?;
        to_raw(&json!({"sent": true}))
    }

    /// A receive that will not be `answered` (a notification) is refused before it
    /// takes anything: its messages would have nowhere to go.
    pub(super) fn channel_receive(
        &mut self,
        params: ChannelReceive,
        answered: bool,
    ) -> Result<Outcome, RpcError> {
        if !answered {
            return Err(RpcError::new(
                ErrorCode::InvalidRequest,
                "channel_receive needs an id: the messages it takes come in its answer",
            ));
        }
        if !params.ack.is_empty() {
            self.router.channel_ack(self.id, &params.ack);
        }
        let wait = params.timeout > 0.0;
        if wait && self.in_flight.load(Ordering::Relaxed) >= MAX_REQUESTS_IN_FLIGHT {
            return Err(RpcError::new(
                ErrorCode::TooManyRequests,
                format!("{MAX_REQUESTS_IN_FLIGHT} calls already wait for answers on this connection"),
            ));
        }
        let by = ReceiveBy {
            lease: Some(self.id),
            exclude: Arc::new(params.exclude.into_iter().map(String::into_boxed_str).collect()),
        };
        match self.router.channel_receive(by, &params.prefix, &params.channel, params.max, wait)? {
            ChannelReceipt::Ready(taken) => Ok(Outcome::Done(answer(&taken))),
            ChannelReceipt::Waiting(waiting) => {
                let in_flight = InFlight::new(&self.in_flight);
                let timeout = Duration::from_secs_f64(params.timeout);
                Ok(Outcome::Pending(Box::pin(async move {
                    let _in_flight = in_flight;
                    answer(&waiting.until(timeout).await)
                })))
            }
        }
    }

    pub(super) fn channel_ack(&mut self, params: ChannelTags) -> RpcResult {
        let acked = self.router.channel_ack(self.id, &params.tags);
        to_raw(&json!({"acked": acked}))
    }

    pub(super) fn channel_nack(&mut self, params: ChannelTags) -> RpcResult {
        let returned = self.router.channel_nack(self.id, &params.tags);
        to_raw(&json!({"returned": returned}))
    }

    pub(super) fn channel_cancel(&mut self, params: ChannelCancel) -> RpcResult {
        let cancelled = self.router.channel_cancel(self.id, &params.prefix, &params.channel);
        to_raw(&json!({"cancelled": cancelled}))
    }

    pub(super) fn group_add(&mut self, params: GroupAdd) -> RpcResult {
        let members = self.router.group_add(
            &params.prefix,
            &params.group,
            &params.channel,
            params.ttl,
            params.capacity,
        )?;
        to_raw(&json!({"members": members}))
    }

    pub(super) fn group_discard(&mut self, params: GroupDiscard) -> RpcResult {
        let removed = self.router.group_discard(&params.prefix, &params.group, &params.channel);
        to_raw(&json!({"removed": removed}))
    }

    pub(super) fn group_send(&mut self, params: GroupSend) -> RpcResult {
        let message = kept(&params.message);
        let sent = self.router.group_send(&params.prefix, &params.group, message, params.ttl);
        to_raw(&json!({"members": sent.members, "sent": sent.sent, "full": sent.full}))
    }

    pub(super) fn channel_flush(&mut self, params: ChannelFlush) -> RpcResult {
        let (channels, groups) = self.router.channel_flush(&params.prefix);
        to_raw(&json!({"channels": channels, "groups": groups}))
    }
}

/// A message as channels keep it: on one line, so that it can be answered to
/// newline-delimited connections as it is.
fn kept(message: &RawValue) -> Arc<RawValue> {
    let flat = Payload::new(Some(message));
    Arc::from(flat.get().to_owned())
}

/// `{"messages": [{"channel", "message", "expires_in", "tag"}]}`, each message as it
/// was sent (never re-read: any JSON text goes through).
fn answer(taken: &[Taken]) -> RpcResult {
    let now = unix_now();
    let mut text = String::from(r#"{"messages":["#);
    for (n, taken) in taken.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        let channel = serde_json::to_string(&*taken.channel).expect("strings serialise");
        let expires_in = (taken.expires - now).max(0.0);
        text.push_str(&format!(
            r#"{{"channel":{channel},"message":{},"expires_in":{expires_in},"tag":{}}}"#,
            taken.message.get(),
            taken.tag
        ));
    }
    text.push_str("]}");
    RawValue::from_string(text).map_err(|e| RpcError::new(ErrorCode::InternalError, e.to_string()))
}
