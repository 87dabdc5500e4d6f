//! The frames waiting to be written to the broker: length-prefixed, one after the
//! other in one buffer, which the writer takes whole and hands back emptied. A frame
//! is written into it where it is made, so no frame is an allocation of its own, and
//! the writer holds the client's lock only to swap buffers.

use std::collections::HashSet;

/// Frames waiting to be written, in order.
#[derive(Debug, Default)]
pub(super) struct Outbound {
    bytes: Vec<u8>,
    /// Frames in `bytes`, counted against `max_pending` (the rest of a frame partly
    /// written counts as one).
    frames: usize,
    /// The calls among them: they await their answers once taken for writing.
    calls: Vec<u64>,
}

impl Outbound {
    pub(super) fn len(&self) -> usize {
        self.frames
    }

    /// Queues the frame that `write` writes (its body: the length prefix is added).
    pub(super) fn push_with(&mut self, call: Option<u64>, write: impl FnOnce(&mut Vec<u8>)) {
        frame_into(&mut self.bytes, write);
        self.frames += 1;
        self.calls.extend(call);
    }

    pub(super) fn push(&mut self, body: &[u8], call: Option<u64>) {
        self.push_with(call, |out| out.extend_from_slice(body));
    }

    /// Everything queued, framed, for a write: `into` (empty) takes the queued bytes and
    /// the queue keeps `into`'s buffer, so the two allocations alternate. The calls
    /// taken go into `awaiting`.
    pub(super) fn take(&mut self, into: &mut Vec<u8>, awaiting: &mut HashSet<u64>) {
        debug_assert!(into.is_empty(), "the writer takes frames only when it wrote what it had");
        std::mem::swap(&mut self.bytes, into);
        self.frames = 0;
        awaiting.extend(self.calls.drain(..));
    }

    /// Called after `written` bytes of the queue went to the socket directly (only when
    /// nothing else was under way, so the queue held one frame): what is left of it
    /// waits for the writer.
    pub(super) fn written(&mut self, written: usize, awaiting: &mut HashSet<u64>) {
        if written >= self.bytes.len() {
            self.bytes.clear();
            self.frames = 0;
            awaiting.extend(self.calls.drain(..));
        } else {
            self.bytes.drain(..written);
        }
    }

    /// Gives back memory past `limit` bytes when nothing is queued.
    pub(super) fn shrink_to(&mut self, limit: usize) {
        if self.bytes.is_empty() && self.bytes.capacity() > limit {
            self.bytes = Vec::new();
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Appends a length-prefixed frame whose body `write` writes.
pub(super) fn frame_into(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = u32::try_from(out.len() - start - 4).expect("frames are far smaller than 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_queue_in_order_and_are_taken_whole() {
        let mut outbound = Outbound::default();
        outbound.push(b"{\"a\":1}", None);
        outbound.push_with(Some(7), |out| out.extend_from_slice(b"[2]"));
        assert_eq!(outbound.len(), 2);
        let mut written = Vec::with_capacity(64);
        let mut awaiting = HashSet::new();
        outbound.take(&mut written, &mut awaiting);
        assert_eq!(written, b"\0\0\0\x07{\"a\":1}\0\0\0\x03[2]");
        assert_eq!((outbound.len(), outbound.bytes().len()), (0, 0));
        assert!(awaiting.contains(&7));
        assert!(outbound.bytes.capacity() >= 64, "the writer's buffer is kept for the next frames");
        outbound.push(&[b'x'; 100], None);
        outbound.shrink_to(16);
        assert_eq!(outbound.len(), 1, "what is queued is never given back");
        outbound.take(&mut Vec::with_capacity(1000), &mut awaiting);
        assert!(outbound.bytes.capacity() >= 1000);
        outbound.shrink_to(16);
        assert_eq!(outbound.bytes.capacity(), 0, "an empty queue gives back what a burst took");
    }

    #[test]
    fn a_frame_partly_written_leaves_its_rest_queued() {
        let mut outbound = Outbound::default();
        let mut awaiting = HashSet::new();
        outbound.push(b"hello", Some(1));
        outbound.written(6, &mut awaiting);
        assert_eq!((outbound.bytes(), outbound.len()), (&b"llo"[..], 1));
        assert!(awaiting.is_empty(), "the call awaits its answer once it is all written");
        outbound.written(3, &mut awaiting);
        assert_eq!((outbound.bytes().len(), outbound.len()), (0, 0));
        assert!(awaiting.contains(&1));
    }
}
