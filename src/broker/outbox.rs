//! The bounded queue of frames waiting to be written to one client.
//!
//! Deliveries from other clients are *offered*: when the queue is full the message is
//! dropped for this client only and counted, so a subscriber that stops reading never
//! slows the publisher or anyone else. A client's own responses are *sent*: they wait
//! for room, which slows down only the client that is not reading its responses.
//! Deliveries from queues are *credited*: the consumer's prefetch already bounds them,
//! so they go past the delivery bound (into a reserve) instead of being dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

/// One connection's traffic: what was queued for it and what it sent, for `status` and
/// monitoring. Frames are counted whole, envelope included.
#[derive(Debug, Default)]
pub struct Traffic {
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub dropped: AtomicU64,
    /// Messages the client published (requests included), and their bytes.
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Milliseconds since the Unix epoch of the client's last frame.
    pub last_activity_ms: AtomicU64,
    /// Bytes waiting in the queue.
    pub bytes: AtomicUsize,
    /// Set at the first drop, cleared when the writer empties the queue: the
    /// slow-consumer announcement is made once per episode, not once per drop.
    congested: AtomicBool,
}

/// The outcome of offering a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Dropped because the queue is full; `newly_congested` on the first drop of an episode.
    Dropped {
        newly_congested: bool,
    },
    /// The connection is gone.
    Closed,
}

/// Room kept beyond the delivery bound for credited deliveries and responses.
pub const CREDIT_RESERVE: usize = 1024;

#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    stats: Arc<Traffic>,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Bytes>,
    stats: Arc<Traffic>,
}

/// A queue of at most `capacity` frames and `max_bytes` bytes for offered deliveries,
/// with [`CREDIT_RESERVE`] frames more for credited deliveries and responses.
pub fn channel(capacity: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity + CREDIT_RESERVE);
    let stats = Arc::new(Traffic::default());
    (Outbox { tx, stats: stats.clone(), max_frames: capacity, max_bytes }, OutboxReceiver { rx, stats })
}

impl Outbox {
    /// Queues a delivery if there is room, else drops it and counts the drop.
    pub fn offer(&self, frame: Bytes) -> Offer {
        let len = frame.len();
        if self.stats.bytes.load(Ordering::Relaxed) + len > self.max_bytes || self.len() >= self.max_frames {
            return self.dropped();
        }
        match self.tx.try_reserve() {
            Ok(room) => {
                self.queue(room, frame);
                self.count_delivery(len);
                Offer::Queued
            }
            Err(mpsc::error::TrySendError::Full(())) => self.dropped(),
            Err(mpsc::error::TrySendError::Closed(())) => Offer::Closed,
        }
    }

    /// Counts the frame's bytes, then queues it. The writer subtracts what it takes:
    /// a frame it could take before it was counted would bring the count below zero,
    /// where it wraps, and every offer meanwhile would be refused as over the budget.
    fn queue(&self, room: mpsc::Permit<'_, Bytes>, frame: Bytes) {
        self.stats.bytes.fetch_add(frame.len(), Ordering::Relaxed);
        room.send(frame);
    }

    fn dropped(&self) -> Offer {
        if self.tx.is_closed() {
            return Offer::Closed;
        }
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        let newly_congested = !self.stats.congested.swap(true, Ordering::Relaxed);
        Offer::Dropped { newly_congested }
    }

    /// Queues a delivery from a queue, whose consumer's prefetch bounds how many wait.
    /// Fails only when the reserve is used up or the connection is gone.
    pub fn push_credited(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let sent = self.try_send(frame);
        if sent {
            self.count_delivery(len);
        }
        sent
    }

    fn count_delivery(&self, len: usize) {
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.stats.delivered_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Queues a response to this client's own request, waiting for room.
    /// Returns false when the connection is gone.
    pub async fn send(&self, frame: Bytes) -> bool {
        let Ok(room) = self.tx.reserve().await else {
            return false;
        };
        self.queue(room, frame);
        true
    }

    /// Queues the answer to this client's request from another connection's task,
    /// which must not wait on this queue: when it is full, a task of its own waits for
    /// room. Returns false when the connection is gone.
    pub fn answer(&self, frame: Bytes) -> bool {
        match self.tx.try_reserve() {
            Ok(room) => {
                self.queue(room, frame);
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return false;
                };
                let outbox = self.clone();
                runtime.spawn(async move { outbox.send(frame).await });
                true
            }
            Err(mpsc::error::TrySendError::Closed(())) => false,
        }
    }

    /// Queues a frame if there is room: a last notice before closing, a credited delivery.
    pub fn try_send(&self, frame: Bytes) -> bool {
        let Ok(room) = self.tx.try_reserve() else {
            return false;
        };
        self.queue(room, frame);
        true
    }

    /// True when a response would wait for room (the reserve is used up too).
    pub fn is_full(&self) -> bool {
        self.tx.capacity() == 0
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on offered deliveries.
    pub fn capacity(&self) -> usize {
        self.max_frames
    }

    pub fn stats(&self) -> &Arc<Traffic> {
        &self.stats
    }
}

impl OutboxReceiver {
    /// Waits for at least one frame and takes up to `limit`; 0 when every sender is gone.
    pub async fn recv_many(&mut self, frames: &mut Vec<Bytes>, limit: usize) -> usize {
        let start = frames.len();
        let taken = self.rx.recv_many(frames, limit).await;
        self.release(&frames[start..]);
        taken
    }

    fn release(&self, frames: &[Bytes]) {
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        self.stats.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Takes one queued frame without waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.release(std::slice::from_ref(&frame));
        Some(frame)
    }

    /// Called by the writer after a write: an empty queue ends a congestion episode.
    /// Returns whether the queue is empty.
    pub fn note_written(&self) -> bool {
        let empty = self.rx.is_empty();
        if empty {
            self.stats.congested.store(false, Ordering::Relaxed);
        }
        empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_and_counts_once_per_episode() {
        let (outbox, mut rx) = channel(2, 1024);
        assert_eq!(outbox.offer(Bytes::from_static(b"1")), Offer::Queued);
        assert_eq!(outbox.offer(Bytes::from_static(b"2")), Offer::Queued);
        assert_eq!(outbox.offer(Bytes::from_static(b"3")), Offer::Dropped { newly_congested: true });
        assert_eq!(outbox.offer(Bytes::from_static(b"4")), Offer::Dropped { newly_congested: false });
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.stats().dropped.load(Ordering::Relaxed), 2);

        let mut frames = Vec::new();
        assert_eq!(rx.recv_many(&mut frames, 10).await, 2);
        rx.note_written();
        assert_eq!(outbox.offer(Bytes::from_static(b"5")), Offer::Queued);
        assert_eq!(outbox.offer(Bytes::from_static(b"6")), Offer::Queued);
        assert_eq!(
            outbox.offer(Bytes::from_static(b"7")),
            Offer::Dropped { newly_congested: true },
            "a new episode is announced again"
        );
        assert!(outbox.push_credited(Bytes::from_static(b"q")), "credited deliveries use the reserve");
        drop(rx);
        assert_eq!(outbox.offer(Bytes::from_static(b"8")), Offer::Closed);
        assert!(!outbox.push_credited(Bytes::from_static(b"9")));
    }

    /// The writer takes frames as soon as they are queued: the byte count must never
    /// fall below what is queued. Were a frame taken before it was counted, the count
    /// would wrap below zero, and offers meanwhile would be refused as over the byte
    /// budget (a message lost though the queue was nearly empty). The channel wakes
    /// its receiver from inside the send, so a waker that takes the frames there is a
    /// writer as quick as a busy machine's other processor can be, every time.
    #[test]
    fn frames_are_counted_before_the_writer_can_take_them() {
        struct EagerWriter {
            rx: parking_lot::Mutex<OutboxReceiver>,
            taken: AtomicUsize,
            highest_count: AtomicUsize,
        }
        impl EagerWriter {
            fn wait(self: &Arc<Self>) {
                let waker = std::task::Waker::from(self.clone());
                let polled = self.rx.lock().rx.poll_recv(&mut std::task::Context::from_waker(&waker));
                // Ready(None) once the outbox is dropped at the end.
                assert!(!matches!(polled, std::task::Poll::Ready(Some(_))), "a frame was left behind");
            }
        }
        impl std::task::Wake for EagerWriter {
            fn wake(self: Arc<Self>) {
                let mut rx = self.rx.lock();
                while rx.try_recv().is_some() {
                    self.taken.fetch_add(1, Ordering::Relaxed);
                    self.highest_count.fetch_max(rx.stats.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                drop(rx);
                self.wait();
            }
        }

        let (outbox, rx) = channel(100, 1024);
        let writer = Arc::new(EagerWriter {
            rx: parking_lot::Mutex::new(rx),
            taken: AtomicUsize::new(0),
            highest_count: AtomicUsize::new(0),
        });
        writer.wait();
        for len in 1..=50 {
            assert_eq!(outbox.offer(Bytes::from(vec![b'x'; len])), Offer::Queued);
        }
        assert!(outbox.push_credited(Bytes::from_static(b"credited")));
        assert!(outbox.answer(Bytes::from_static(b"answer")));
        assert!(outbox.try_send(Bytes::from_static(b"last notice")));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(runtime.block_on(outbox.send(Bytes::from_static(b"response"))));
        assert_eq!(writer.taken.load(Ordering::Relaxed), 54, "the writer took each frame as it came");
        assert_eq!(writer.highest_count.load(Ordering::Relaxed), 0, "the byte count wrapped below zero");
        assert_eq!(outbox.stats().bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn byte_budget_bounds_large_deliveries() {
        let (outbox, mut rx) = channel(100, 10);
        assert_eq!(outbox.offer(Bytes::from_static(b"123456")), Offer::Queued);
        assert_eq!(outbox.offer(Bytes::from_static(b"123456")), Offer::Dropped { newly_congested: true });
        assert_eq!(outbox.offer(Bytes::from_static(b"1234")), Offer::Queued, "still fits");
        assert_eq!(outbox.stats().bytes.load(Ordering::Relaxed), 10);
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 10).await;
        assert_eq!(outbox.stats().bytes.load(Ordering::Relaxed), 0);
        assert_eq!(outbox.offer(Bytes::from_static(b"123456")), Offer::Queued);
    }
}
