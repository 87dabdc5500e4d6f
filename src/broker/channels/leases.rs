//! What a connection received and has not acknowledged yet: its lease, the tags that
//! settle it, and the messages given back to the front of their channels, in the
//! order they were sent, when a receiver or its connection goes away.

use super::*;

impl Channels {
    /// Keeps `taken` (of the channel under `key`) for the connection `session` until it
    /// acknowledges them, and tags them. A connection that has ended gets nothing: the
    /// messages go back to their channel.
    pub fn lease(
        &mut self,
        session: SessionId,
        prefix: &str,
        key: &str,
        taken: Vec<Taken>,
        now: f64,
    ) -> Vec<Taken> {
        let Some(lease) = self.leases.get_mut(&session) else {
            self.put_back(prefix, key, taken, now);
            return Vec::new();
        };
        let (prefix, key): (Arc<str>, Arc<str>) = (prefix.into(), key.into());
        let mut tagged = Vec::with_capacity(taken.len());
        for mut taken in taken {
            self.next_tag += 1;
            taken.tag = self.next_tag;
            tagged.push(taken.clone());
            lease.unacked.insert(taken.tag, Leased { prefix: prefix.clone(), key: key.clone(), taken });
        }
        self.unacked += tagged.len();
        tagged
    }

    /// The messages of `tags` that `session` holds are received for good; returns how
    /// many it held.
    pub fn ack(&mut self, session: SessionId, tags: &[u64]) -> usize {
        let released = self.release(session, tags).len();
        self.stats.acked += released as u64;
        released
    }

    /// The messages of `tags` that `session` holds go back to the front of their
    /// channels; returns how many it held.
    pub fn nack(&mut self, session: SessionId, tags: &[u64], now: f64) -> usize {
        let released = self.release(session, tags);
        let count = released.len();
        self.give_back(released, now);
        count
    }

    /// The connection `session` ended: what it held goes back to the front of its
    /// channels, in the order it was sent.
    pub fn end_lease(&mut self, session: SessionId, now: f64) {
        let Some(lease) = self.leases.remove(&session) else { return };
        self.unacked -= lease.unacked.len();
        self.give_back(lease.unacked.into_values().collect(), now);
    }

    /// Answers the receivers of `session` waiting on the channel under `key` with
    /// nothing, now; returns how many there were.
    pub fn cancel(&mut self, session: SessionId, prefix: &str, key: &str) -> usize {
        let Some(queue) = self.spaces.get_mut(prefix).and_then(|space| space.queues.get_mut(key)) else {
            return 0;
        };
        let mut cancelled = 0;
        queue.waiters.retain_mut(|waiter| {
            if waiter.by.lease != Some(session) {
                return !waiter.tx.is_closed();
            }
            let (closed, _) = oneshot::channel();
            let tx = std::mem::replace(&mut waiter.tx, closed);
            cancelled += usize::from(tx.send(Vec::new()).is_ok());
            false
        });
        self.drop_queue_if_idle(prefix, key);
        cancelled
    }

    fn release(&mut self, session: SessionId, tags: &[u64]) -> Vec<Leased> {
        let Some(lease) = self.leases.get_mut(&session) else { return Vec::new() };
        let released: Vec<Leased> = tags.iter().filter_map(|tag| lease.unacked.remove(tag)).collect();
        self.unacked -= released.len();
        released
    }

    fn give_back(&mut self, leased: Vec<Leased>, now: f64) {
        let mut by_channel: HashMap<(Arc<str>, Arc<str>), Vec<Taken>> = HashMap::new();
        for Leased { prefix, key, mut taken } in leased {
            taken.tag = 0;
            by_channel.entry((prefix, key)).or_default().push(taken);
        }
        for ((prefix, key), taken) in by_channel {
            self.put_back(&prefix, &key, taken, now);
        }
    }

    /// Messages taken from the channel under `key` that go back: to the receivers
    /// waiting for them, or to the front of the channel, in the order they were sent.
    fn put_back(&mut self, prefix: &str, key: &str, given_back: Vec<Taken>, now: f64) {
        let mut live: Vec<Taken> = given_back
            .into_iter()
            .filter(|taken| {
                let expired = taken.expires <= now;
                self.stats.expired += u64::from(expired);
                !expired
            })
            .collect();
        live.sort_by_key(|taken| taken.seq);
        self.stats.received -= live.len() as u64;
        self.stats.returned += live.len() as u64;
        let space = match self.spaces.get_mut(prefix) {
            Some(space) => space,
            None if live.is_empty() => return,
            None => self.spaces.entry(prefix.into()).or_default(),
        };
        let queue = match space.queues.get_mut(key) {
            Some(queue) => queue,
            None if live.is_empty() => return,
            // Put back even past the bounds: it was kept a moment ago.
            None => {
                self.queue_count += 1;
                space.queues.entry(key.into()).or_default()
            }
        };
        let mut kept = Vec::with_capacity(live.len());
        for taken in live {
            match queue.hand_to_waiter(taken) {
                Ok(()) => self.stats.received += 1,
                Err(taken) => kept.push(taken),
            }
        }
        let before = queue.bytes;
        queue.merge_front(kept);
        self.memory += queue.bytes - before;
        self.drop_queue_if_idle(prefix, key);
    }

    /// A waiter that stops waiting: it goes, and what it was handed but could not pass
    /// on (`given_back`) goes to the next receivers, or back to the front of its
    /// channel, in the order it was sent.
    pub fn forget_waiter(&mut self, prefix: &str, key: &str, id: u64, given_back: Vec<Taken>, now: f64) {
        if let Some(queue) = self.spaces.get_mut(prefix).and_then(|space| space.queues.get_mut(key)) {
            queue.waiters.retain(|waiter| waiter.id != id && !waiter.tx.is_closed());
        }
        self.put_back(prefix, key, given_back, now);
        self.drop_queue_if_idle(prefix, key);
    }
}
