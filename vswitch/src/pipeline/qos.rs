//! HNS's QOS policy: a token bucket on an endpoint's outgoing bytes.
//!
//! As firecracker's rate limiter, the bucket takes `now` from the caller and
//! never sleeps. The datapath shapes rather than polices: every frame it has
//! read passes ([`TokenBucket::charge`]), the bucket may go into debt, and
//! while it is in debt the datapath stops reading the endpoint's port. The
//! endpoint's own queue then fills and its TCP slows down (TCP small queues)
//! without a loss, where dropping 64 KiB super-frames made TCP collapse to
//! a twentieth of the rate. The bucket holds at most `burst` bytes, so an
//! idle endpoint cannot save up a flood; the default burst is what the rate
//! sends in 10 ms, and never less than one 64 KiB super-frame.

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
    /// Bytes sent beyond the tokens, repaid before tokens accrue again.
    debt: u64,
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
            debt: 0,
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
        let mut bytes = earned / 1_000_000_000;
        self.remainder_ns = earned % 1_000_000_000;
        let repaid = bytes.min(u128::from(self.debt));
        self.debt -= repaid as u64;
        bytes -= repaid;
        self.tokens = (u128::from(self.tokens) + bytes).min(u128::from(self.burst)) as u64;
        if self.tokens == self.burst {
            self.remainder_ns = 0;
        }
    }

    /// Charges `bytes` that are sent whatever the bucket holds; returns how
    /// long the sender must then wait before its debt is repaid (`None`: no
    /// debt, send on).
    pub fn charge(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        if bytes <= self.tokens {
            self.tokens -= bytes;
        } else {
            self.debt += bytes - self.tokens;
            self.tokens = 0;
        }
        (self.debt > 0).then(|| {
            let ns = (u128::from(self.debt) * 1_000_000_000).div_ceil(u128::from(self.rate.max(1)));
            Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
        })
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
    fn charging_goes_into_debt_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        // 1 MB/s, burst 64 KiB.
        let mut b = TokenBucket::new(1_000_000, t0);
        assert_eq!(b.charge(65_536, t0), None);
        // 100 kB more than the bucket holds: 100 ms to repay.
        assert_eq!(b.charge(100_000, t0), Some(Duration::from_millis(100)));
        // Half-way, half the debt is left; then it is repaid and tokens
        // accrue again.
        assert_eq!(
            b.charge(0, t0 + Duration::from_millis(50)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(b.charge(0, t0 + Duration::from_millis(100)), None);
        assert_eq!(b.charge(1_000, t0 + Duration::from_millis(101)), None);
    }

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
