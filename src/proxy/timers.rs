//! RFC 3261 §17 timer values and a deadline queue.
//!
//! The core never reads a clock: every deadline is an `Instant` computed from the `now`
//! the runtime hands in. Deletion is lazy: a fired entry whose transaction is gone or
//! has moved on is simply ignored by the caller.
//!
//! Most timers of one kind have the same duration (timers B/F and the linger timers are
//! 32 s, timer C 181 s), so their deadlines arrive in time order: each kind has a FIFO
//! lane that takes a deadline in O(1) when it is not earlier than the lane's last one.
//! The rest (retransmit intervals that double, a shorter linger on a stream) go to a
//! binary heap. Deadlines come out in the same order as from one heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// RTT estimate (RFC 3261 §17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Maximum duration a message remains in the network.
pub const T4: Duration = Duration::from_secs(5);
/// Transaction timeout: timers B, F, H (64·T1 = 32 s).
pub const TIMEOUT: Duration = Duration::from_secs(32);
/// Timer C: a proxy's limit on an INVITE that got a provisional but no final response
/// (RFC 3261 §16.6 step 11: greater than 3 minutes).
pub const TIMER_C: Duration = Duration::from_secs(181);

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Retransmit the forwarded request (timers A/E, UDP only).
    Retransmit,
    /// Give up waiting for the next hop's final response (timers B/F).
    Timeout,
    /// Timer C: an INVITE has rung too long.
    InviteRinging,
    /// Retransmit our final non-2xx INVITE response upstream (timer G, UDP only).
    ResponseRetransmit,
    /// End the transaction's linger state (timers D, H, I, J, K, L, M).
    Expire,
}

impl TimerKind {
    /// Index into a transaction's per-kind generations.
    pub fn index(self) -> usize {
        match self {
            Self::Retransmit => 0,
            Self::Timeout => 1,
            Self::InviteRinging => 2,
            Self::ResponseRetransmit => 3,
            Self::Expire => 4,
        }
    }
}

/// One deadline: when, which transaction, what for, and a generation so that a
/// rescheduled timer's old entry is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    /// When it fires.
    pub at: Instant,
    /// The transaction it belongs to.
    pub txn: u64,
    /// What it is for.
    pub kind: TimerKind,
    /// The transaction's timer generation when scheduled.
    pub generation: u32,
}

/// Deadlines in time order.
#[derive(Debug, Default)]
pub struct TimerQueue {
    /// Per [`TimerKind::index`], deadlines in increasing order.
    lanes: [VecDeque<Deadline>; 5],
    /// Deadlines that arrived out of their lane's order.
    heap: BinaryHeap<Reverse<Deadline>>,
}

/// Where the earliest deadline is.
#[derive(Clone, Copy)]
enum Earliest {
    Lane(usize),
    Heap,
}

impl TimerQueue {
    /// Schedules a deadline.
    pub fn push(&mut self, deadline: Deadline) {
        let lane = &mut self.lanes[deadline.kind.index()];
        if lane.back().is_none_or(|last| *last < deadline) {
            lane.push_back(deadline);
        } else {
            self.heap.push(Reverse(deadline));
        }
    }

    fn earliest(&self) -> Option<(Earliest, &Deadline)> {
        let heap = self.heap.peek().map(|Reverse(d)| (Earliest::Heap, d));
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.front().map(|d| (Earliest::Lane(i), d)))
            .chain(heap)
            .min_by(|a, b| a.1.cmp(b.1))
    }

    /// The earliest deadline.
    pub fn next_at(&self) -> Option<Instant> {
        self.earliest().map(|(_, d)| d.at)
    }

    /// Takes the earliest deadline if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Deadline> {
        let (at, _) = self.earliest().filter(|(_, d)| d.at <= now)?;
        match at {
            Earliest::Lane(i) => self.lanes[i].pop_front(),
            Earliest::Heap => self.heap.pop().map(|Reverse(d)| d),
        }
    }

    /// Number of queued deadlines (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len() + self.lanes.iter().map(VecDeque::len).sum::<usize>()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.lanes.iter().all(VecDeque::is_empty)
    }
}
