//! `ack`, `nack`, `delete_queue` and `purge_queue`: settling deliveries from queues,
//! removing a queue with its messages, and emptying a queue that stays.

use serde_json::json;

use super::Session;
use super::dispatch::{RpcResult, to_raw};
use crate::error::RpcError;
use crate::protocol::method::{DeleteQueue, PurgeQueue, Settle};

impl Session {
    /// `ack`, or `nack` with `requeue` (false dead-letters the messages).
    pub(super) fn settle(&mut self, params: Settle) -> RpcResult {
        let ack = params.requeue.is_none();
        let settled = self.router.settle(self.id, &params.deliveries, ack, params.requeue.unwrap_or(true));
        let key = if ack { "acked" } else { "nacked" };
        to_raw(&json!({key: settled}))
    }

    pub(super) fn delete_queue(&mut self, params: DeleteQueue) -> RpcResult {
        match self.router.delete_queue(&params.name, &self.permissions)? {
            Some(messages) => to_raw(&json!({"deleted": true, "messages": messages})),
            None => Err(RpcError::invalid_params(format!("there is no queue {:?}", params.name))),
        }
    }

    pub(super) fn purge_queue(&mut self, params: PurgeQueue) -> RpcResult {
        match self.router.purge_queue(&params.name, &self.permissions)? {
            Some(purged) => to_raw(&json!({"purged": purged})),
            None => Err(RpcError::invalid_params(format!("there is no queue {:?}", params.name))),
        }
    }
}
