//! The proxy's deadline queue (`proxy::timers::TimerQueue`) against one binary heap:
//! whatever mix of in-order and out-of-order deadlines it is given, it hands them back
//! in the same order (its FIFO lanes per timer kind are only a faster route to it).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers assert

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use presence_proxy::proxy::timers::{Deadline, TimerKind, TimerQueue};
use proptest::prelude::*;

const KINDS: [TimerKind; 5] = [
    TimerKind::Retransmit,
    TimerKind::Timeout,
    TimerKind::InviteRinging,
    TimerKind::ResponseRetransmit,
    TimerKind::Expire,
];

proptest! {
    /// Pushes (some in their lane's order, some not) and pops as time advances give
    /// the same deadlines in the same order as one binary heap.
    #[test]
    fn same_order_as_one_heap(
        steps in proptest::collection::vec(
            (0u64..3, 0u64..40, 0usize..5, 0u32..3, 0u64..20, any::<bool>()),
            1..300,
        )
    ) {
        // the test's own time base; the queue never reads a clock
        let mut now = Instant::now();
        let mut queue = TimerQueue::default();
        let mut reference = BinaryHeap::new();
        for (advance, delay, kind, generation, txn, pop) in steps {
            now += Duration::from_millis(advance);
            let deadline = Deadline {
                at: now + Duration::from_millis(delay),
                txn,
                kind: KINDS[kind],
                generation,
            };
            queue.push(deadline);
            reference.push(Reverse(deadline));
            prop_assert_eq!(queue.len(), reference.len());
            prop_assert_eq!(queue.next_at(), reference.peek().map(|Reverse(d)| d.at));
            if pop {
                loop {
                    let want = match reference.peek() {
                        Some(Reverse(d)) if d.at <= now => reference.pop().map(|Reverse(d)| d),
                        _ => None,
                    };
                    prop_assert_eq!(queue.pop_due(now), want);
                    if want.is_none() {
                        break;
                    }
                }
            }
        }
        let end = now + Duration::from_secs(60);
        while let Some(Reverse(want)) = reference.pop() {
            prop_assert_eq!(queue.pop_due(end), Some(want));
        }
        prop_assert!(queue.is_empty());
    }
}
