//! HNS's QOS policy: a token bucket on an endpoint's outgoing bytes.
//!
//! As firecracker's rate limiter, the bucket takes `now` from the caller and
//! never sleeps: a frame either fits in the tokens accumulated so far or is
//! refused (the datapath drops it, and TCP backs off). The bucket holds at
//! most `burst` bytes, so an idle endpoint cannot save up a flood; the
//! default burst is what the rate sends in 10 ms, and never less than one
//! 64 KiB super-frame, which must pass whole.

use std::time::{Duration, Instant};

/// The smallest burst: one GSO super-frame.
pub const MIN_BURST: u64 = 65_536;
/// The default burst is the rate over this long.
const BURST_TIME: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: u64,
    burst: u64,
    /// Whole bytes in the bucket.
    tokens: u64,
    /// What the last refills earned short of a whole byte, in byte-
    /// nanoseconds per second, so slow rates do not round to nothing.
    remainder_ns: u128,
    last: Instant,
}

impl TokenBucket {
    /// A bucket for `rate` bytes per second, full at `now`.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let burst =
            ((u128::from(rate) * BURST_TIME.as_nanos() / 1_000_000_000) as u64).max(MIN_BURST);
        TokenBucket::with_burst(rate, burst, now)
    }

    pub fn with_burst(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            remainder_ns: 0,
            last: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now.max(self.last);
        // Bytes earned = rate * elapsed; the sub-byte remainder is kept.
        let earned = u128::from(self.rate) * elapsed.as_nanos() + self.remainder_ns;
        let bytes = earned / 1_000_000_000;
        self.remainder_ns = earned % 1_000_000_000;
        self.tokens = (u128::from(self.tokens) + bytes).min(u128::from(self.burst)) as u64;
        if self.tokens == self.burst {
            self.remainder_ns = 0;
        }
    }

    /// Takes `bytes` if the bucket holds them; false means the frame
    /// exceeds the rate and must not be sent.
    pub fn take(&mut self, bytes: u64, now: Instant) -> bool {
        self.refill(now);
        if bytes <= self.tokens {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(1_000_000, 10_000, t0);
        assert!(b.take(10_000, t0));
        assert!(!b.take(1, t0));
        // 1 MB/s: 5 ms earn 5,000 bytes.
        let t1 = t0 + Duration::from_millis(5);
        assert!(b.take(5_000, t1));
        assert!(!b.take(1, t1));
        // Never more than the burst, however long it idles.
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.take(10_000, t2));
        assert!(!b.take(1, t2));
    }

    #[test]
    fn slow_rates_do_not_round_to_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(3, 100, t0);
        assert!(b.take(100, t0));
        // 3 bytes a second, asked for every 100 ms: 30 bytes in 10 s.
        let mut sent = 0;
        for i in 1..=100 {
            if b.take(1, t0 + Duration::from_millis(100 * i)) {
                sent += 1;
            }
        }
        assert_eq!(sent, 30);
    }

    #[test]
    fn long_run_average_is_the_rate() {
        let t0 = Instant::now();
        let rate = 12_500_000; // 100 Mbit/s
        let mut b = TokenBucket::new(rate, t0);
        let mut sent = 0u64;
        // Offer 1500-byte frames every 10 µs (1.2 Gbit/s) for 1 s.
        for i in 1..=100_000u64 {
            if b.take(1500, t0 + Duration::from_micros(10 * i)) {
                sent += 1500;
            }
        }
        let burst = b.burst;
        assert!(sent <= rate + burst, "{sent}");
        assert!(sent >= rate - 1500, "{sent}");
    }

    #[test]
    fn a_super_frame_fits_the_default_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, t0);
        assert!(b.take(65_536, t0));
    }
}
