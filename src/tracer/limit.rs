//! A token bucket per key (a cgroup id, a container), in userspace: the kernel's bucket
//! bounds what crosses the ring buffer; this one bounds what the agent judges and reports
//! per container. The number of keys is bounded too: past it, the least recently seen
//! bucket is forgotten (it starts full again, which only ever lets more through).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter<K> {
    rate_per_sec: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate_per_sec: f64, burst: u32, max_keys: usize) -> RateLimiter<K> {
        RateLimiter {
            rate_per_sec: rate_per_sec.max(0.0),
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `key` at `now`; `false` when its bucket is empty.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.forget_oldest();
        }
        let (rate, burst) = (self.rate_per_sec, self.burst);
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last);
        b.tokens = (b.tokens + elapsed.as_secs_f64() * rate).min(burst);
        b.last = now.max(b.last);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets buckets untouched for `idle` (they are full again by then at any rate that
    /// refills `burst` tokens within `idle`).
    pub fn prune(&mut self, now: Instant, idle: Duration) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < idle);
    }

    fn forget_oldest(&mut self) {
        if let Some(k) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut l = RateLimiter::new(2.0, 5, 100);
        let t0 = Instant::now();
        let first: usize = (0..100).filter(|_| l.allow(&"a", t0)).count();
        assert_eq!(first, 5, "the burst");
        // Another container is not starved by the first one's storm.
        assert!(l.allow(&"b", t0));
        // One second later: two more tokens, no more.
        let t1 = t0 + Duration::from_secs(1);
        let more: usize = (0..100).filter(|_| l.allow(&"a", t1)).count();
        assert_eq!(more, 2);
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        let after: usize = (0..100).filter(|_| l.allow(&"a", t2)).count();
        assert_eq!(after, 5);
    }

    #[test]
    fn keys_are_bounded() {
        let mut l = RateLimiter::new(1.0, 1, 3);
        let t0 = Instant::now();
        for (i, k) in [1, 2, 3, 4, 5].iter().enumerate() {
            assert!(l.allow(k, t0 + Duration::from_millis(i as u64)));
        }
        assert_eq!(l.len(), 3);
        l.prune(t0 + Duration::from_secs(60), Duration::from_secs(10));
        assert!(l.is_empty());
    }
}
