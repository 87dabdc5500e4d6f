//! Everything the client hands to its user (messages, responses, state changes)
//! queues here, to be taken as one batch.
//!
//! The first event after a drain wakes the consumer once; further events join the
//! batch without another wake-up. The queue is bounded: when it is full the client
//! stops reading from the socket until the consumer catches up, so a slow consumer
//! pushes back on the broker (which drops for it and says so) instead of growing
//! memory here.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Wakes the consumer of an inbox. Called from runtime threads, so it must not block
/// (the Python binding writes one byte to a socket the event loop awaits).
pub trait Waker: Send + Sync {
    fn wake(&self);
}

/// An error the broker answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    pub code: i32,
    pub message: String,
    /// The error's `data` as JSON text, when the broker sent any.
    pub data: Option<String>,
}

/// A message delivered to this client.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The client's subscriptions whose patterns match the topic.
    pub subscriptions: Vec<u64>,
    pub topic: String,
    /// The payload as JSON text, exactly as the broker sent it.
    pub payload: String,
    pub sender: String,
    pub id: String,
    pub timestamp: f64,
    pub reply_to: Option<String>,
    pub ttl: Option<f64>,
    pub qos: u8,
    /// The publisher's headers, a JSON object of strings, as text.
    pub headers: Option<String>,
    /// From the retained store: the topic's last known state, not a fresh message.
    pub retained: bool,
    /// For a delivery from a queue: how to acknowledge it.
    pub from_queue: Option<QueueDelivery>,
}

/// A delivery from a queue, to acknowledge with [`super::Client::settle`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDelivery {
    pub queue: String,
    pub tag: u64,
    pub delivery_count: u32,
    /// The connection it came on: a later connection cannot settle it.
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Delivered),
    /// The answer to a call: the result as JSON text, or the broker's error.
    Response {
        call: u64,
        result: Result<String, RemoteError>,
    },
    /// The broker refused a publish (which was sent without waiting for its answer).
    PublishFailed {
        message_id: String,
        error: RemoteError,
    },
    /// Connected (or reconnected) and subscriptions restored.
    Connected,
    /// The connection was lost; `reconnecting` when the client tries again.
    Disconnected {
        reason: String,
        reconnecting: bool,
    },
    /// The first connection could not be made; the client has stopped.
    ConnectFailed {
        reason: String,
        /// The error code when the broker refused the connect itself.
        code: Option<i32>,
    },
    /// Room in the outgoing queue again, after a publish found it full.
    Writable,
    /// The client has stopped for good: nothing follows.
    Closed,
}

struct State {
    events: VecDeque<Event>,
    wake_pending: bool,
}

pub struct Inbox {
    state: Mutex<State>,
    waker: Box<dyn Waker>,
    limit: usize,
    space: Notify,
}

impl Inbox {
    pub fn new(waker: Box<dyn Waker>, limit: usize) -> Inbox {
        Inbox {
            state: Mutex::new(State { events: VecDeque::new(), wake_pending: false }),
            waker,
            limit,
            space: Notify::new(),
        }
    }

    pub fn push(&self, event: Event) {
        let wake = {
            let mut state = self.state.lock();
            state.events.push_back(event);
            !std::mem::replace(&mut state.wake_pending, true)
        };
        if wake {
            self.waker.wake();
        }
    }

    /// Takes up to `limit` queued events, oldest first. When more remain, the
    /// consumer is woken again, so it can take them in its next turn: a bounded batch
    /// keeps one turn short, whatever has piled up.
    pub fn drain(&self, limit: usize) -> Vec<Event> {
        let (events, more) = {
            let mut state = self.state.lock();
            let take = limit.min(state.events.len());
            let events: Vec<Event> = state.events.drain(..take).collect();
            let more = !state.events.is_empty();
            state.wake_pending = more;
            (events, more)
        };
        if more {
            self.waker.wake();
        }
        self.space.notify_waiters();
        events
    }

    pub fn len(&self) -> usize {
        self.state.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the queue is below its limit.
    pub async fn wait_for_room(&self) {
        loop {
            let room = self.space.notified();
            if self.len() < self.limit {
                return;
            }
            room.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter(Arc<AtomicUsize>);

    impl Waker for Counter {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn one_wake_per_batch() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::new(Box::new(Counter(wakes.clone())), 100);
        for _ in 0..10 {
            inbox.push(Event::Writable);
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        assert_eq!(inbox.drain(usize::MAX).len(), 10);
        inbox.push(Event::Closed);
        assert_eq!(wakes.load(Ordering::Relaxed), 2, "the first event after a drain wakes again");
    }

    #[test]
    fn a_partial_drain_wakes_again_for_the_rest() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::new(Box::new(Counter(wakes.clone())), 100);
        for _ in 0..5 {
            inbox.push(Event::Writable);
        }
        assert_eq!(inbox.drain(3).len(), 3);
        assert_eq!(wakes.load(Ordering::Relaxed), 2, "two left: woken again");
        inbox.push(Event::Closed);
        assert_eq!(wakes.load(Ordering::Relaxed), 2, "a wake-up is already pending");
        assert_eq!(inbox.drain(3), vec![Event::Writable, Event::Writable, Event::Closed]);
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn room_is_awaited_when_full() {
        let inbox = Arc::new(Inbox::new(Box::new(Counter(Arc::default())), 2));
        inbox.push(Event::Writable);
        inbox.push(Event::Writable);
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        inbox.drain(usize::MAX);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
