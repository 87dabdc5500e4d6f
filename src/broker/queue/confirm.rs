//! `confirm_on_ack`: the publishers of `qos=1` messages waiting for a consumer's
//! acknowledgement, answered however their message leaves the queue.

use super::dispatch::Queue;

/// What a publisher waiting on `confirm_on_ack` hears: acknowledged, or why the
/// message left the queue without that.
pub type AckOutcome = Result<(), String>;

impl Queue {
    /// Answers the publishers waiting for messages the queue no longer holds (neither
    /// ready in memory nor in flight, and nothing counted on disk).
    pub(super) fn answer_publishers_of_missing(&mut self, outcome: impl Fn(&str) -> AckOutcome) {
        if self.awaiting_ack.is_empty() || self.on_disk.count > 0 {
            return;
        }
        let in_flight = self.in_flight.values().map(|f| f.item.seq);
        let held: std::collections::HashSet<u64> =
            in_flight.chain(self.ready.iter().map(|item| item.seq)).collect();
        let missing: Vec<u64> = self.awaiting_ack.keys().copied().filter(|seq| !held.contains(seq)).collect();
        for seq in missing {
            self.answer_publisher(seq, &outcome);
        }
    }

    /// Answers the publisher waiting for message `seq`, if one is.
    pub(super) fn answer_publisher(&mut self, seq: u64, outcome: impl FnOnce(&str) -> AckOutcome) {
        if let Some(waiting) = self.awaiting_ack.remove(&seq) {
            // A publisher that stopped waiting (its time ran out, its connection
            // went) no longer hears it.
            let _ = waiting.send(outcome(&self.name));
        }
    }
}
