//! `request`: a message that waits for one reply, or the broker's own status when
//! sent to `status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Session;
use super::dispatch::{PendingResult, to_raw};
use super::publish::Payload;
use crate::broker::access;
use crate::broker::router::Publish;
use crate::error::{ErrorCode, RpcError};
use crate::protocol::method;
use crate::protocol::rules;
use crate::protocol::topic::STATUS_TOPIC;

/// Requests one connection may have waiting for replies at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 10_000;

impl Session {
    pub(super) fn request(&mut self, params: method::Request<'_>) -> Result<PendingResult, RpcError> {
        if params.topic == STATUS_TOPIC {
            let status = to_raw(&self.router.status());
            return Ok(Box::pin(async move { status }));
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
            ..Publish::new(&params.topic, payload.get(), self.sender())
        };
        let pending = self.router.request(msg, Duration::from_secs_f64(params.timeout))?;
        let in_flight = InFlight::new(&self.in_flight);
        Ok(Box::pin(async move {
            let _in_flight = in_flight;
            pending.wait().await
        }))
    }
}

/// Counts a request (or a receive from a channel) while it waits for its answer.
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
