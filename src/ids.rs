//! Message ids: a random per-process prefix and a counter. Unique across broker
//! restarts without a random draw per message.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for MessageIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageIds {
    pub fn new() -> Self {
        // RandomState is seeded from the operating system's random source.
        let random = RandomState::new().hash_one(std::process::id());
        MessageIds { prefix: format!("{:012x}", random & 0xffff_ffff_ffff), next: AtomicU64::new(1) }
    }

    /// The random part shared by this generator's ids.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Written by hand: the formatting machinery costs more than the rest of
        // routing a message to one subscriber.
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut id = String::with_capacity(self.prefix.len() + 1 + digits.len() - at);
        id.push_str(&self.prefix);
        id.push('-');
        id.extend(digits[at..].iter().map(|&d| char::from(d)));
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed_per_generator() {
        let a = MessageIds::new();
        let b = MessageIds::new();
        let first = a.next();
        assert_ne!(first, a.next());
        assert_ne!(first, b.next(), "two generators do not share a prefix");
        assert_eq!(first, format!("{}-1", a.prefix()));
        a.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(a.next(), format!("{}-{}", a.prefix(), u64::MAX));
        a.next.store(1_000_000_007, Ordering::Relaxed);
        assert_eq!(a.next(), format!("{}-1000000007", a.prefix()));
    }
}
