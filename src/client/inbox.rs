//! Everything the client hands to its user (messages, responses, state changes)
//! queues here, to be taken as one batch.
//!
//! The first event after a drain wakes the consumer once; further events join the
//! batch without another wake-up. The queue is bounded: when it is full the client
//! stops reading from the socket until the consumer catches up, so a slow consumer
//! pushes back on the broker (which drops for it and says so) instead of growing
//! memory here.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::Bytes;
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

/// A message delivered to this client. Its text fields are cut out of the frame it
/// came in, which it keeps: neither the payload nor the topic and ids are copied
/// between the wire and the consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The client's subscriptions whose patterns match the topic.
    pub subscriptions: Vec<u64>,
    frame: Bytes,
    topic: Text,
    /// The payload, exactly as the broker sent it.
    payload: Span,
    sender: Text,
    id: Text,
    reply_to: Option<Text>,
    /// The publisher's headers, a JSON object of strings.
    headers: Option<Span>,
    pub timestamp: f64,
    pub ttl: Option<f64>,
    pub qos: u8,
    /// From the retained store: the topic's last known state, not a fresh message.
    pub retained: bool,
    /// For a delivery from a queue: how to acknowledge it.
    pub from_queue: Option<QueueDelivery>,
}

/// Where a text of the frame is: at a span of it, or, for a string written with
/// escapes, unescaped beside it.
#[derive(Debug, Clone)]
enum Text {
    At(Span),
    Unescaped(Box<str>),
}

/// A range of the frame that holds UTF-8 text (it was cut from a `&str` into it).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// A delivery as read from its frame: the texts borrowed from the frame itself,
/// except strings that had escapes.
#[derive(Debug)]
pub struct DeliveryFields<'a> {
    pub topic: Cow<'a, str>,
    pub payload: &'a str,
    pub sender: Cow<'a, str>,
    pub id: Cow<'a, str>,
    pub reply_to: Option<Cow<'a, str>>,
    pub headers: Option<&'a str>,
    pub timestamp: f64,
    pub ttl: Option<f64>,
    pub qos: u8,
    pub retained: bool,
}

impl Delivered {
    /// A delivery whose fields were read from `frame` (its borrowed texts must be
    /// slices of it).
    pub fn new(
        subscriptions: Vec<u64>,
        frame: &Bytes,
        fields: DeliveryFields<'_>,
        from_queue: Option<QueueDelivery>,
    ) -> Delivered {
        let span = |cut: &str| Span::of(frame, cut);
        let text_of = |cut: Cow<'_, str>| match cut {
            Cow::Borrowed(cut) => Text::At(span(cut)),
            Cow::Owned(unescaped) => Text::Unescaped(unescaped.into_boxed_str()),
        };
        Delivered {
            subscriptions,
            frame: frame.clone(),
            topic: text_of(fields.topic),
            payload: span(fields.payload),
            sender: text_of(fields.sender),
            id: text_of(fields.id),
            reply_to: fields.reply_to.map(text_of),
            headers: fields.headers.map(span),
            timestamp: fields.timestamp,
            ttl: fields.ttl,
            qos: fields.qos,
            retained: fields.retained,
            from_queue,
        }
    }

    pub fn topic(&self) -> &str {
        self.text(&self.topic)
    }

    /// The payload as JSON text, exactly as the broker sent it.
    pub fn payload(&self) -> &str {
        self.span(self.payload)
    }

    pub fn sender(&self) -> &str {
        self.text(&self.sender)
    }

    pub fn id(&self) -> &str {
        self.text(&self.id)
    }

    /// Where the answer goes, for a request.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_ref().map(|text| self.text(text))
    }

    /// The publisher's headers as JSON text (an object of strings), when it gave any.
    pub fn headers(&self) -> Option<&str> {
        self.headers.map(|span| self.span(span))
    }

    fn text<'a>(&'a self, text: &'a Text) -> &'a str {
        match text {
            Text::At(span) => self.span(*span),
            Text::Unescaped(text) => text,
        }
    }

    fn span(&self, span: Span) -> &str {
        let bytes = &self.frame[span.start..span.end];
        // SAFETY: a span is only made from a `&str` that lies inside this frame
        // (`Span::of`), and the frame never changes: the bytes are that `&str`'s.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// Equal when what they deliver is, whatever frames they were cut from.
impl PartialEq for Delivered {
    fn eq(&self, other: &Self) -> bool {
        self.subscriptions == other.subscriptions
            && self.topic() == other.topic()
            && self.payload() == other.payload()
            && self.sender() == other.sender()
            && self.id() == other.id()
            && self.reply_to() == other.reply_to()
            && self.headers() == other.headers()
            && self.timestamp == other.timestamp
            && self.ttl == other.ttl
            && self.qos == other.qos
            && self.retained == other.retained
            && self.from_queue == other.from_queue
    }
}

impl Span {
    /// The span of `frame` that `cut` occupies.
    ///
    /// # Panics
    /// When `cut` is not a slice of `frame`: a bug in the reader.
    fn of(frame: &[u8], cut: &str) -> Span {
        let start = (cut.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
        let end = start.wrapping_add(cut.len());
        assert!(
            start <= frame.len() && end <= frame.len() && start <= end,
            "text is not a slice of its frame"
        );
        Span { start, end }
    }
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

    fn fields<'a>(topic: Cow<'a, str>, payload: &'a str, id: Cow<'a, str>) -> DeliveryFields<'a> {
        DeliveryFields {
            topic,
            payload,
            sender: Cow::Owned("s".into()),
            id,
            reply_to: None,
            headers: None,
            timestamp: 1.0,
            ttl: None,
            qos: 0,
            retained: false,
        }
    }

    #[test]
    fn a_delivery_keeps_its_frame_and_reads_its_texts_from_it() {
        let frame = Bytes::from_static(br#"{"topic":"jobs.a","payload":{"n":1},"id":"m\"1"}"#);
        let text = std::str::from_utf8(&frame).unwrap();
        let cut = |from: usize, len: usize| &text[from..from + len];
        let delivery = Delivered::new(
            vec![3],
            &frame,
            fields(Cow::Borrowed(cut(10, 6)), cut(28, 7), Cow::Owned("m\"1".into())),
            None,
        );
        assert_eq!((delivery.topic(), delivery.payload(), delivery.id()), ("jobs.a", r#"{"n":1}"#, "m\"1"));
        assert_eq!(delivery.sender(), "s", "an unescaped text, kept beside the frame");

        let other = Bytes::from_static(br#"  jobs.a {"n":1} m"1"#);
        let text = std::str::from_utf8(&other).unwrap();
        let same = Delivered::new(
            vec![3],
            &other,
            fields(Cow::Borrowed(&text[2..8]), &text[9..16], Cow::Borrowed(&text[17..20])),
            None,
        );
        assert_eq!(delivery, same, "equal by what they deliver, not by their frames");
    }

    #[test]
    #[should_panic(expected = "not a slice of its frame")]
    fn a_text_from_outside_the_frame_is_refused() {
        let frame = Bytes::from_static(b"{}");
        let elsewhere = String::from("jobs.a");
        Delivered::new(vec![], &frame, fields(Cow::Borrowed(&elsewhere), "{}", Cow::Borrowed("x")), None);
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
