//! The node's memory cap for stored mail, shared by every slot's store: a flood across
//! many slots or senders fills this budget and is refused, rather than growing memory
//! beyond what the operator allowed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The node's default cap on stored mail (256 MiB: about 100,000 messages of 2 KiB).
pub const NODE_BYTES_MAX_DEFAULT: u64 = 256 << 20;

/// Bytes charged for a held message besides its sealed bytes and usernames: the map
/// nodes, the order key and the acknowledgements of up to 16 devices.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 320;
/// Bytes charged for a tombstone (id, time, map node).
pub const TOMBSTONE_BYTES: u64 = 64;
/// Bytes charged for a remembered device, besides its user's name.
pub const DEVICE_BYTES: u64 = 64;

/// A byte budget shared by clones: one per node, handed to every slot's store. Plain
/// counting (no clock, no I/O); atomics only so that stores owned by different actors
/// can share it.
#[derive(Debug, Clone)]
pub struct Budget {
    cap: u64,
    used: Arc<AtomicU64>,
}

impl Budget {
    /// A budget of `cap` bytes, nothing used.
    pub fn new(cap: u64) -> Self {
        Self { cap, used: Arc::new(AtomicU64::new(0)) }
    }

    /// Takes `bytes` if they fit under the cap.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(bytes).filter(|n| *n <= self.cap))
            .is_ok()
    }

    /// Takes `bytes` whatever the cap: for what must be kept (a tombstone replacing a
    /// larger message, a device whose loss would delete messages early). Bounded by the
    /// caller.
    pub fn force_take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives `bytes` back.
    pub fn give(&self, bytes: u64) {
        let prev = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "mail budget released more than it took");
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> u64 {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_cap() {
        let a = Budget::new(100);
        let b = a.clone();
        assert!(a.try_take(60));
        assert!(!b.try_take(41), "the clone sees what the other took");
        assert!(b.try_take(40));
        assert_eq!(a.used(), 100);
        a.give(30);
        assert!(b.try_take(30) && !b.try_take(1));
        b.force_take(5);
        assert_eq!(a.used(), 105);
        assert!(!a.try_take(u64::MAX), "no overflow");
    }
}
