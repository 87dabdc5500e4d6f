//! The frames waiting to be written to the broker: length-prefixed, one after the
//! other in chunks of about [`CHUNK`] bytes. A frame is written into the last chunk
//! where it is made, so no frame is an allocation of its own; the writer takes one
//! chunk at a time, swapping it for its own emptied buffer under the client's lock.
//! What the writer holds is bounded by a chunk: the rest stays queued (and counted
//! against `max_pending`), and is written on the next connection if this one drops.

use std::collections::{HashSet, VecDeque};

/// About how many bytes the writer takes at a time (a frame is never split).
pub(super) const CHUNK: usize = 256 * 1024;

/// Frames in one buffer, and the calls among them.
#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    frames: usize,
    calls: Vec<u64>,
}

/// Frames waiting to be written, in order.
#[derive(Debug, Default)]
pub(super) struct Outbound {
    chunks: VecDeque<Chunk>,
    /// Frames queued, counted against `max_pending` (the rest of a frame partly
    /// written counts as one).
    frames: usize,
    /// The length of the rest of a frame partly written at the front of the queue,
    /// and its call: only the connection it was started on can take it.
    partial: Option<(usize, Option<u64>)>,
    /// An emptied buffer, kept for the next chunk.
    spare: Vec<u8>,
}

impl Outbound {
    pub(super) fn len(&self) -> usize {
        self.frames
    }

    /// Queues the frame that `write` writes (its body: the length prefix is added).
    pub(super) fn push_with(&mut self, call: Option<u64>, write: impl FnOnce(&mut Vec<u8>)) {
        if self.chunks.back().is_none_or(|chunk| chunk.bytes.len() >= CHUNK) {
            self.chunks.push_back(Chunk { bytes: std::mem::take(&mut self.spare), ..Chunk::default() });
        }
        let chunk = self.chunks.back_mut().expect("just made sure of one");
        frame_into(&mut chunk.bytes, write);
        chunk.frames += 1;
        chunk.calls.extend(call);
        self.frames += 1;
    }

    pub(super) fn push(&mut self, body: &[u8], call: Option<u64>) {
        self.push_with(call, |out| out.extend_from_slice(body));
    }

    /// The oldest chunk, for a write: `into` (empty) takes its bytes and the queue
    /// keeps `into`'s buffer for a later chunk, so the allocations are reused. Its
    /// calls go into `awaiting`.
    pub(super) fn take(&mut self, into: &mut Vec<u8>, awaiting: &mut HashSet<u64>) {
        debug_assert!(into.is_empty(), "the writer takes frames only when it wrote what it had");
        let Some(mut chunk) = self.chunks.pop_front() else {
            return;
        };
        std::mem::swap(&mut chunk.bytes, into);
        if self.spare.capacity() < chunk.bytes.capacity() {
            self.spare = chunk.bytes;
        }
        self.frames -= chunk.frames;
        self.partial = None;
        awaiting.extend(chunk.calls);
    }

    /// Everything queued, appended to `into`: the last write before a goodbye.
    pub(super) fn take_all(&mut self, into: &mut Vec<u8>, awaiting: &mut HashSet<u64>) {
        for chunk in self.chunks.drain(..) {
            into.extend_from_slice(&chunk.bytes);
            awaiting.extend(chunk.calls);
        }
        self.frames = 0;
        self.partial = None;
    }

    /// The bytes a direct write would write: the one frame queued.
    pub(super) fn only_frame(&self) -> &[u8] {
        debug_assert!(self.frames == 1 && self.chunks.len() == 1);
        &self.chunks[0].bytes
    }

    /// Called after `written` bytes of the one frame queued went to the socket
    /// directly: what is left of it waits for the writer, on this connection only.
    pub(super) fn written(&mut self, written: usize, awaiting: &mut HashSet<u64>) {
        let chunk = &mut self.chunks[0];
        if written >= chunk.bytes.len() {
            let chunk = self.chunks.pop_front().expect("the frame written");
            self.spare = chunk.bytes;
            self.spare.clear();
            self.frames = 0;
            awaiting.extend(chunk.calls);
        } else {
            chunk.bytes.drain(..written);
            self.partial = Some((chunk.bytes.len(), chunk.calls.first().copied()));
        }
    }

    /// The connection ended: the rest of a frame partly written on it would corrupt
    /// the next one. It is dropped, and its call (if any) awaits an answer that will
    /// not come, so that it fails with the connection.
    pub(super) fn connection_ended(&mut self, awaiting: &mut HashSet<u64>) {
        let Some((len, call)) = self.partial.take() else {
            return;
        };
        let chunk = self.chunks.front_mut().expect("the rest is queued");
        chunk.bytes.drain(..len);
        chunk.frames -= 1;
        self.frames -= 1;
        if let Some(call) = call {
            chunk.calls.retain(|queued| *queued != call);
            awaiting.insert(call);
        }
        if chunk.frames == 0 {
            self.chunks.pop_front();
        }
    }

    /// Gives back memory past `limit` bytes kept for later frames.
    pub(super) fn shrink_to(&mut self, limit: usize) {
        if self.spare.capacity() > limit {
            self.spare = Vec::new();
        }
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
    fn frames_queue_in_order_and_are_taken_a_chunk_at_a_time() {
        let mut outbound = Outbound::default();
        outbound.push(b"{\"a\":1}", None);
        outbound.push_with(Some(7), |out| out.extend_from_slice(b"[2]"));
        assert_eq!(outbound.len(), 2);
        let mut written = Vec::with_capacity(64);
        let mut awaiting = HashSet::new();
        outbound.take(&mut written, &mut awaiting);
        assert_eq!(written, b"\0\0\0\x07{\"a\":1}\0\0\0\x03[2]");
        assert_eq!(outbound.len(), 0);
        assert!(awaiting.contains(&7));
        assert!(outbound.spare.capacity() >= 64, "the writer's buffer is kept for the next frames");

        // Past a chunk, the writer takes the oldest and the rest stays queued.
        let body = vec![b'x'; 1000];
        let frames = 2 * CHUNK / 1004 + 10;
        for _ in 0..frames {
            outbound.push(&body, None);
        }
        written.clear();
        outbound.take(&mut written, &mut awaiting);
        let taken = written.len() / 1004;
        assert!(written.len() >= CHUNK && written.len() < CHUNK + 1004, "{}", written.len());
        assert_eq!(outbound.len(), frames - taken, "what was not taken is still counted");
        outbound.shrink_to(16);
        assert_eq!(outbound.spare.capacity(), 0, "what a burst took is given back");

        // A goodbye writes everything still queued, in order.
        outbound.push(b"last", None);
        let mut everything = Vec::new();
        outbound.take_all(&mut everything, &mut awaiting);
        assert_eq!(everything.len(), (frames - taken) * 1004 + 8);
        assert!(everything.ends_with(b"\0\0\0\x04last"));
        assert_eq!(outbound.len(), 0);
    }

    #[test]
    fn a_frame_partly_written_leaves_its_rest_queued_for_this_connection_only() {
        let mut outbound = Outbound::default();
        let mut awaiting = HashSet::new();
        outbound.push(b"hello", Some(1));
        outbound.written(6, &mut awaiting);
        assert_eq!((outbound.only_frame(), outbound.len()), (&b"llo"[..], 1));
        assert!(awaiting.is_empty(), "the call awaits its answer once it is all written");
        outbound.push(b"next", Some(2));
        let mut written = Vec::new();
        outbound.take(&mut written, &mut awaiting);
        assert_eq!(written, b"llo\0\0\0\x04next");
        assert!(awaiting.contains(&1) && awaiting.contains(&2));

        // The connection ends before the rest is written: the next one never sees it,
        // and its call fails with the connection.
        let mut awaiting = HashSet::new();
        outbound.push(b"hello", Some(3));
        outbound.written(6, &mut awaiting);
        outbound.push(b"later", None);
        outbound.connection_ended(&mut awaiting);
        assert!(awaiting.contains(&3));
        assert_eq!(outbound.len(), 1);
        let mut written = Vec::new();
        outbound.take(&mut written, &mut awaiting);
        assert_eq!(written, b"\0\0\0\x05later");
    }
}
