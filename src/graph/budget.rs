//! [`RequestBudget`]: a sliding-window limit on Graph requests per tenant, so the product
//! never sends more than Graph's presence limit (1,500 requests per 30 s per app per
//! tenant, graph.md §4.1). Every attempt, retries included, takes a slot; a caller past the
//! limit waits (tokio time) until the oldest slot leaves the window.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A sliding window of `limit` requests per `window`. Share one (`Arc`) between every
/// client of one tenant.
#[derive(Debug)]
pub struct RequestBudget {
    limit: usize,
    window: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl RequestBudget {
    /// At most `limit` (at least 1) requests in any `window`.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            sent: Mutex::new(VecDeque::new()),
        }
    }

    /// Takes a slot, waiting until one is free. Waiters are served in order (the lock is
    /// fair), so a burst is spread over the window rather than starved.
    pub async fn acquire(&self) {
        let mut sent = self.sent.lock().await;
        loop {
            let now = Instant::now();
            while sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                sent.pop_front();
            }
            if sent.len() < self.limit {
                sent.push_back(now);
                return;
            }
            let Some(oldest) = sent.front().copied() else {
                continue;
            };
            let wait = self.window.saturating_sub(now.duration_since(oldest));
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "graph request budget exhausted, waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Requests counted in the current window.
    pub async fn in_window(&self) -> usize {
        let sent = self.sent.lock().await;
        let now = Instant::now();
        sent.iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_window() {
        let budget = RequestBudget::new(3, Duration::from_secs(30));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        for _ in 0..2 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert_eq!(budget.in_window().await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_any_window() {
        let budget = std::sync::Arc::new(RequestBudget::new(1500, Duration::from_secs(30)));
        let mut times = Vec::new();
        let start = Instant::now();
        for _ in 0..4000 {
            budget.acquire().await;
            times.push(start.elapsed());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(30))
                .count();
            assert!(in_window <= 1500, "{in_window} at {t:?}");
        }
    }
}
