//! A worker's queue of file datagrams held for their session's file cap
//! ([`super::table::Decision::Hold`]): each waits, its token already wiped, until the
//! clock reaches the time its leg's bucket admits it, then goes out in a batched send.
//!
//! Bounded twice: the table holds a leg's datagrams at most [`super::table::FILE_QUEUE_NS`]
//! past its bucket, and a worker keeps at most [`HELD_MAX`] (past that the worker asks
//! the table not to hold, so file data over its cap is dropped as before). Buffers are
//! reused, so a held datagram costs a copy, not an allocation, once the queue has grown.
//! A leg's datagrams leave in the order they came: the bucket gives each a later time.

use super::mmsg::{self, BATCH_MAX};
use super::table::Peer;
use super::tcp::TcpConns;
use super::worker::{Tally, forward};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};

/// Datagrams a worker holds at most: 50 ms of a 100 MB/s worker's file data.
pub const HELD_MAX: usize = 4096;

struct Held {
    until_ms: u64,
    order: u64,
    to: Peer,
    bytes: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.until_ms, self.order) == (other.until_ms, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.until_ms, self.order).cmp(&(other.until_ms, other.order))
    }
}

/// The held datagrams of one worker, earliest first.
#[derive(Default)]
pub struct HoldQueue {
    heap: BinaryHeap<Reverse<Held>>,
    free: Vec<Vec<u8>>,
    due: Vec<Held>,
    next_order: u64,
}

impl HoldQueue {
    /// Whether another datagram may be held.
    pub fn has_room(&self) -> bool {
        self.heap.len() < HELD_MAX
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps a copy of `datagram` (token wiped) for `to` until `until_ms`.
    pub fn hold(&mut self, datagram: &[u8], to: Peer, until_ms: u64) {
        let mut bytes = self.free.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(datagram);
        self.next_order += 1;
        self.heap.push(Reverse(Held { until_ms, order: self.next_order, to, bytes }));
    }

    /// When the earliest held datagram is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(h)| h.until_ms)
    }

    /// Sends every datagram due at `now_ms`: those for UDP legs in batched calls.
    pub fn release(&mut self, now_ms: u64, socket: &UdpSocket, conns: &TcpConns, tally: &mut Tally) {
        let mut due = std::mem::take(&mut self.due);
        while self.next_due_ms().is_some_and(|t| t <= now_ms) {
            while due.len() < BATCH_MAX && self.next_due_ms().is_some_and(|t| t <= now_ms) {
                let Some(Reverse(h)) = self.heap.pop() else { break };
                due.push(h);
            }
            let mut udp = [(&[][..], SocketAddr::from(([0, 0, 0, 0], 0))); BATCH_MAX];
            let mut n = 0;
            for h in &due {
                match h.to {
                    Peer::Udp(addr) => {
                        udp[n] = (&h.bytes[..], addr);
                        n += 1;
                    }
                    tcp @ Peer::Tcp { .. } => forward(socket, conns, tcp, &h.bytes, tally),
                }
            }
            let sent = mmsg::send(socket, &udp[..n]);
            tally.forwarded += sent.sent as u64;
            tally.bytes_out += sent.bytes as u64;
            tally.send_failed += sent.failed as u64;
            self.free.extend(due.drain(..).map(|h| h.bytes));
        }
        self.due = due;
    }
}
