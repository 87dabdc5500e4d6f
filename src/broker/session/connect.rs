//! `connect`: naming the connection (or taking over a live one with the same name),
//! and the last will published if the connection ends without `disconnect`.

use std::sync::Arc;

use serde_json::json;

use super::Session;
use super::dispatch::{RpcResult, to_raw};
use super::publish::Payload;
use crate::broker::access;
use crate::broker::permissions::ClientPermissions;
use crate::broker::router::{ClientInfo, Publish};
use crate::error::RpcError;
use crate::protocol::method::Connect;
use crate::protocol::rules;

pub(super) use crate::protocol::method::Will;

impl Session {
    pub(super) fn connect(&mut self, params: Connect) -> RpcResult {
        let access = self.router.access();
        // A connection that has proven itself need not again; a token given is checked.
        if let Some(access) = access.filter(|_| self.owes_token || params.token.is_some()) {
            access.check_token(self.origin, params.token.as_deref())?;
        }
        self.owes_token = false;
        let client_id = params.client_id.unwrap_or_else(|| self.router.anonymous_client_id(self.id));
        let permissions = match access {
            Some(access) => access.permissions_for(&client_id)?,
            None => ClientPermissions::default(),
        };
        if let Some(will) = &params.will {
            permissions.may_publish(&will.topic).map_err(access::denied)?;
        }
        match &self.client_id {
            Some(current) if **current == *client_id => {}
            Some(current) => {
                return Err(RpcError::invalid_params(format!(
                    "this connection is already connected as {current:?}; open another connection for {client_id:?}"
                )));
            }
            None => {
                let client_id: Arc<str> = client_id.into();
                let info = ClientInfo {
                    client_id: client_id.clone(),
                    client_type: params.client_type,
                    version: params.version,
                    peer: self.peer.clone(),
                };
                self.router.register(self.id, info, self.outbox.clone(), self.evicted.clone())?;
                self.client_id = Some(client_id);
            }
        }
        self.permissions = Arc::new(permissions);
        if params.will.is_some() {
            self.will = params.will;
        }
        let config = self.router.config();
        to_raw(&json!({
            "client_id": self.client_id.as_deref(),
            "broker_version": crate::VERSION,
            "heartbeat_interval": config.heartbeat_interval.as_secs_f64(),
            "heartbeat_timeout": config.heartbeat_timeout.as_secs_f64(),
            "max_message_size": config.max_message_size,
        }))
    }

    /// Publishes the will, checked when it was given at `connect`.
    pub(super) fn publish_will(&self, will: &Will) {
        let payload = Payload::new(will.payload.as_deref());
        let headers = will.headers.as_deref().filter(|headers| !rules::is_empty_object(headers));
        let headers = Payload::new(headers);
        let sender = self.sender();
        let msg = Publish {
            ttl: rules::ttl(will.ttl).unwrap_or_default(),
            qos: rules::qos(will.qos.as_ref()).unwrap_or(0),
            retain: will.retain,
            headers: headers.present(),
            ..Publish::new(&will.topic, payload.get(), sender)
        };
        match self.router.publish(msg) {
            Ok(_) => {
                tracing::info!(client_id = sender, topic = %will.topic, "published the last will of a client that went away")
            }
            Err(error) => tracing::warn!(client_id = sender, "the last will could not be published: {error}"),
        }
    }
}
