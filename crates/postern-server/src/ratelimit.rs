//! In-memory per-key rate limits (token buckets), for limits keyed by
//! source address. Limits keyed by phone number live in the store, so every
//! server node sees the same count.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket per key: `capacity` tokens, refilled evenly over `period`.
pub struct RateLimiter<K> {
    capacity: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Keys kept before idle full buckets are swept.
const SWEEP_AT: usize = 100_000;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `capacity` requests per `period`, bursting up to `capacity`.
    pub fn new(capacity: u32, period: Duration) -> Self {
        RateLimiter {
            capacity: f64::from(capacity),
            per_sec: f64::from(capacity) / period.as_secs_f64().max(1e-3),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            let (cap, rate) = (self.capacity, self.per_sec);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < cap);
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_sec).min(self.capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let rl = RateLimiter::new(3, Duration::from_secs(3));
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check(&"a", t0).unwrap();
        }
        let wait = rl.check(&"a", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        rl.check(&"b", t0).expect("other keys are independent");
        rl.check(&"a", t0 + Duration::from_secs(1))
            .expect("refilled");
        assert!(rl.check(&"a", t0 + Duration::from_secs(1)).is_err());
    }
}

/// Keeps a flood from flooding the log: counts events and says when to log
/// them, at most once per `every`.
pub struct LogThrottle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    /// Logs at most once per `every`.
    pub fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one event; returns how many happened since the last log line
    /// when it is time for one.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        match state.0 {
            Some(at) if now.duration_since(at) < self.every => None,
            _ => {
                let n = state.1;
                *state = (Some(now), 0);
                Some(n)
            }
        }
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn logs_the_first_event_then_a_count_per_period() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(1));
        for _ in 0..99 {
            assert_eq!(t.hit(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), Some(100));
    }
}
