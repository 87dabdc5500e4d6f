//! The router's door to channels and groups (see [`crate::broker::channels`]): the
//! calls of the session, and the receive that waits, which gives back what it was
//! handed if it ends before answering, and leases what it answers with to its
//! connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{Router, unix_now};
use crate::broker::channels::{GroupSent, ReceiveBy, ReceiveLimit, Received, Taken};
use crate::error::RpcError;
use crate::index::SessionId;

/// What a receive got: messages at once, or a wait for the next one.
pub enum ChannelReceipt {
    Ready(Vec<Taken>),
    Waiting(ChannelWait),
}

/// A receive waiting for a channel's next message. Dropped before it is answered (its
/// connection ended), it gives back what it was handed.
pub struct ChannelWait {
    router: Arc<Router>,
    lease: Option<SessionId>,
    prefix: String,
    key: String,
    id: u64,
    rx: Option<oneshot::Receiver<Vec<Taken>>>,
}

impl ChannelWait {
    /// The messages handed to it within `timeout` (leased to its connection, in the
    /// same step); none when the time is up, the prefix was flushed or the wait
    /// cancelled.
    pub async fn until(mut self, timeout: Duration) -> Vec<Taken> {
        let handed = self.handed_within(timeout).await;
        match self.lease {
            Some(session) if !handed.is_empty() => {
                self.router.channels.lock().lease(session, &self.prefix, &self.key, handed, unix_now())
            }
            _ => handed,
        }
    }

    async fn handed_within(&mut self, timeout: Duration) -> Vec<Taken> {
        let rx = self.rx.as_mut().expect("set until answered");
        match tokio::time::timeout(timeout, &mut *rx).await {
            Ok(handed) => {
                self.rx = None;
                handed.unwrap_or_default()
            }
            Err(_) => {
                let mut rx = self.rx.take().expect("set until answered");
                // Closed first, so that no send slips in after the look.
                rx.close();
                let handed = rx.try_recv().unwrap_or_default();
                self.router.channels.lock().forget_waiter(
                    &self.prefix,
                    &self.key,
                    self.id,
                    Vec::new(),
                    unix_now(),
                );
                handed
            }
        }
    }
}

impl Drop for ChannelWait {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            let handed = rx.try_recv().unwrap_or_default();
            self.router.channels.lock().forget_waiter(&self.prefix, &self.key, self.id, handed, unix_now());
        }
    }
}

impl Router {
    pub fn channel_send(
        &self,
        prefix: &str,
        channel: &str,
        message: Arc<RawValue>,
        ttl: f64,
        capacity: usize,
    ) -> Result<(), RpcError> {
        self.channels.lock().send(prefix, channel, message, ttl, capacity, unix_now())
    }

    /// Up to `max` messages of the channel kept under `key` that `by` takes (together
    /// within the broker's `max_message_size`, so that the answer is a frame clients
    /// accept); with none there and `wait`, a wait for the next one.
    pub fn channel_receive(
        self: &Arc<Self>,
        by: ReceiveBy,
        prefix: &str,
        key: &str,
        max: usize,
        wait: bool,
    ) -> Result<ChannelReceipt, RpcError> {
        let limit = ReceiveLimit { max, max_bytes: self.config.max_message_size };
        let received = self.channels.lock().receive_by(&by, prefix, key, limit, wait, unix_now())?;
        Ok(match received {
            Received::Ready(taken) => ChannelReceipt::Ready(taken),
            Received::Waiting { id, rx } => ChannelReceipt::Waiting(ChannelWait {
                router: self.clone(),
                lease: by.lease,
                prefix: prefix.to_owned(),
                key: key.to_owned(),
                id,
                rx: Some(rx),
            }),
        })
    }

    pub fn group_add(
        &self,
        prefix: &str,
        group: &str,
        channel: &str,
        ttl: f64,
        capacity: usize,
    ) -> Result<usize, RpcError> {
        self.channels.lock().group_add(prefix, group, channel, ttl, capacity, unix_now())
    }

    pub fn group_discard(&self, prefix: &str, group: &str, channel: &str) -> bool {
        self.channels.lock().group_discard(prefix, group, channel)
    }

    pub fn group_send(&self, prefix: &str, group: &str, message: Arc<RawValue>, ttl: f64) -> GroupSent {
        let sent = self.channels.lock().group_send(prefix, group, message, ttl, unix_now());
        if sent.full > 0 {
            tracing::debug!(
                prefix,
                group,
                full = sent.full,
                members = sent.members,
                "channels over capacity in a group send"
            );
        }
        sent
    }

    /// Messages `session` received are received for good; returns how many it held.
    pub fn channel_ack(&self, session: SessionId, tags: &[u64]) -> usize {
        self.channels.lock().ack(session, tags)
    }

    /// Messages `session` received go back to the front of their channels.
    pub fn channel_nack(&self, session: SessionId, tags: &[u64]) -> usize {
        self.channels.lock().nack(session, tags, unix_now())
    }

    /// The receives of `session` waiting on `key` are answered now, with nothing.
    pub fn channel_cancel(&self, session: SessionId, prefix: &str, key: &str) -> usize {
        self.channels.lock().cancel(session, prefix, key)
    }

    /// The connection `session` ended: what it received and did not acknowledge goes
    /// back to its channels.
    pub(super) fn end_channel_lease(&self, session: SessionId) {
        self.channels.lock().end_lease(session, unix_now());
    }

    /// Drops the channels and groups of `prefix`; returns how many of each went.
    pub fn channel_flush(&self, prefix: &str) -> (usize, usize) {
        self.channels.lock().flush(prefix)
    }

    pub(super) fn tick_channels(&self, now: f64) {
        self.channels.lock().tick(now);
    }

    pub(super) fn channels_status(&self) -> Value {
        self.channels.lock().status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    fn message(n: u64) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(n.to_string()).unwrap())
    }

    fn waiting(router: &Arc<Router>, key: &str) -> ChannelWait {
        match router.channel_receive(ReceiveBy::default(), "asgi", key, 10, true).unwrap() {
            ChannelReceipt::Waiting(wait) => wait,
            ChannelReceipt::Ready(_) => panic!("nothing was sent yet"),
        }
    }

    fn ready(router: &Arc<Router>, key: &str) -> Vec<String> {
        match router.channel_receive(ReceiveBy::default(), "asgi", key, 10, false).unwrap() {
            ChannelReceipt::Ready(taken) => taken.iter().map(|t| t.message.get().to_owned()).collect(),
            ChannelReceipt::Waiting(_) => panic!("a receive without wait never waits"),
        }
    }

    #[tokio::test]
    async fn a_wait_gets_the_next_message_or_nothing_at_its_timeout() {
        let router = Router::new(BrokerConfig::default());
        let wait = waiting(&router, "c");
        router.channel_send("asgi", "c", message(1), 60.0, 10).unwrap();
        let taken = wait.until(Duration::from_secs(5)).await;
        assert_eq!(taken.iter().map(|t| t.message.get()).collect::<Vec<_>>(), vec!["1"]);

        let wait = waiting(&router, "c");
        assert!(wait.until(Duration::from_millis(10)).await.is_empty());
        assert_eq!(router.channels_status()["receivers_waiting"], 0, "the waiter went with its timeout");
        router.channel_send("asgi", "c", message(2), 60.0, 10).unwrap();
        assert_eq!(ready(&router, "c"), vec!["2"], "kept for the next receiver");
    }

    #[tokio::test]
    async fn a_wait_dropped_after_it_was_handed_a_message_gives_it_back_first() {
        let router = Router::new(BrokerConfig::default());
        let wait = waiting(&router, "p!");
        router.channel_send("asgi", "p!a", message(1), 60.0, 10).unwrap();
        router.channel_send("asgi", "p!b", message(2), 60.0, 10).unwrap();
        // Its connection ended before the answer was written.
        drop(wait);
        assert_eq!(ready(&router, "p!"), vec!["1", "2"]);
        assert_eq!(router.channels_status()["returned"], 1);
    }
}
