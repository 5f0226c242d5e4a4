//! Per-client publish rate limit (`limits.max_publish_rate`): a token bucket per connection,
//! owned by the connection's read loop on its shard. A client over its rate is not
//! disconnected; its socket is simply not read until the bucket has refilled, so TCP slows
//! that client down and no other.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Throttle {
    /// A full bucket at `now`; `None` when `rate` is 0 (no limit). A `burst` of 0 means
    /// one second's worth.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Option<Throttle> {
        if rate == 0 {
            return None;
        }
        let burst = f64::from(if burst == 0 { rate } else { burst });
        Some(Throttle {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: now,
        })
    }

    /// Takes one token at `now` if there is one (a new connection): no debt builds up, so a
    /// source that stops flooding is let in again within a second.
    pub fn try_take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (nothing to remember about this source).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `n` tokens at `now` (the PUBLISH packets of one read); returns how long to stop
    /// reading so that the client stays within its rate (zero when it is within).
    pub fn take(&mut self, n: u32, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= f64::from(n);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_no_bucket() {
        assert!(Throttle::new(0, 10, Instant::now()).is_none());
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut t = Throttle::new(100, 50, t0).unwrap();
        assert_eq!(t.take(50, t0), Duration::ZERO, "the burst");
        // 10 more at once: 10 / 100 per second = 100 ms of not reading.
        assert_eq!(t.take(10, t0), Duration::from_millis(100));
        // Waiting those 100 ms pays the debt back exactly.
        assert_eq!(t.take(0, t0 + Duration::from_millis(100)), Duration::ZERO);
        // A client within its rate never waits: 1 message every 10 ms.
        for i in 1..=100 {
            let at = t0 + Duration::from_millis(100 + 10 * i);
            assert_eq!(t.take(1, at), Duration::ZERO, "message {i}");
        }
        // Savings are capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(t.take(50, later), Duration::ZERO);
        assert!(t.take(1, later) > Duration::ZERO);
    }

    #[test]
    fn connects_take_a_token_each_without_debt() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, 2, t0).unwrap();
        assert!(t.try_take_one(t0) && t.try_take_one(t0));
        assert!(!t.try_take_one(t0), "over the rate");
        for _ in 0..100 {
            assert!(!t.try_take_one(t0), "refusals cost nothing");
        }
        assert!(
            t.try_take_one(t0 + Duration::from_millis(500)),
            "one token back"
        );
        assert!(!t.is_full(t0 + Duration::from_millis(500)));
        assert!(t.is_full(t0 + Duration::from_secs(2)));
    }
}
