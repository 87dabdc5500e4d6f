//! What the benchmarks share: a router with subscribers of `jobs.*`, each with a
//! queue to take its deliveries off.

use std::sync::Arc;

use message_broker::BrokerConfig;
use message_broker::broker::Peer;
use message_broker::broker::outbox::{self, OutboxReceiver};
use message_broker::broker::router::{ClientInfo, Router, SubscriptionFlags};
use tokio::sync::Notify;

/// A router with `subscribers` clients subscribed to `jobs.*`, and their queues.
pub fn router_with_subscribers(subscribers: usize) -> (Arc<Router>, Vec<OutboxReceiver>) {
    let router = Router::new(BrokerConfig::default());
    let mut queues = Vec::new();
    for i in 0..subscribers {
        let session = router.new_session_id();
        let (outbox, queue) = outbox::channel(1 << 20, usize::MAX);
        let info = ClientInfo {
            client_id: format!("sub{i}").into(),
            client_type: None,
            version: None,
            peer: Peer::in_process(),
        };
        router.register(session, info, outbox, Arc::new(Notify::new())).unwrap();
        router.subscribe(session, &["jobs.*".into()], SubscriptionFlags::default()).unwrap();
        queues.push(queue);
    }
    (router, queues)
}
