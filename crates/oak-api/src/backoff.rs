//! Retry delays for every reconnect loop: exponential backoff with full jitter.
//!
//! Without jitter, every worker of a cluster that comes back (or every cluster of a root)
//! retries in lockstep and hits it at the same instants. Here the n-th delay (from 0) is drawn
//! uniformly from `[base, min(cap, base × 2^(n+1))]`: the ceiling doubles with each failure
//! up to the cap, the draws spread over the whole range, and none is shorter than `base` (no
//! hot loop).
//!
//! Pure: the caller passes one random `u64` per draw, so tests and the simulator replay a
//! sequence exactly and this crate needs no random number generator.

use std::time::Duration;

/// The delays of one retry loop. `next` after each failure, `reset` after a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failures since the last success, counted until the ceiling reaches the cap.
    attempt: u32,
}

impl Backoff {
    /// Delays from `base` (at least 1 ns) up to `cap` (taken as `base` when smaller).
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.max(Duration::from_nanos(1));
        Self { base, cap: cap.max(base), attempt: 0 }
    }

    /// The longest the next delay can be: `base × 2^(attempt+1)`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        // At most ~100 doublings: `attempt` stops growing once the cap is reached.
        let mut c = self.base;
        for _ in 0..=self.attempt {
            if c >= self.cap {
                break;
            }
            c = c.saturating_mul(2);
        }
        c.min(self.cap)
    }

    /// The delay before the next attempt: uniform in `[base, ceiling]`, drawn from `random`
    /// (0 gives `base`, `u64::MAX` the ceiling).
    pub fn next(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        if ceiling < self.cap {
            self.attempt += 1;
        }
        pick(self.base, ceiling, random)
    }

    /// After a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `lo + random/2^64 × (hi - lo)`, both ends included, to the nanosecond.
fn pick(lo: Duration, hi: Duration, random: u64) -> Duration {
    // Spans past u64::MAX ns (584 years) are clamped: `span + 1` must fit the multiplication.
    let span = u64::try_from(hi.saturating_sub(lo).as_nanos()).unwrap_or(u64::MAX).min(u64::MAX - 1);
    let offset = ((u128::from(span) + 1) * u128::from(random)) >> 64;
    lo + Duration::from_nanos(u64::try_from(offset).unwrap_or(span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(5);

    /// splitmix64: a fixed stream of well-spread numbers for the tests.
    fn stream(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn the_ends_of_the_range() {
        // The highest draws double until the cap, then stay there.
        let mut b = Backoff::new(BASE, CAP);
        let got: Vec<Duration> = (0..6).map(|_| b.next(u64::MAX)).collect();
        assert_eq!(got, [400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis));
        // The lowest are always base, however long the outage.
        let mut b = Backoff::new(BASE, CAP);
        assert!((0..40).all(|_| b.next(0) == BASE));
        assert_eq!(b.ceiling(), CAP);
        // A draw in the middle of the range lands in its middle.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(100));
        assert_eq!(b.next(1 << 63), Duration::from_millis(1500));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(BASE, CAP);
        for _ in 0..5 {
            b.next(u64::MAX);
        }
        assert_eq!(b.ceiling(), CAP);
        b.reset();
        assert_eq!(b, Backoff::new(BASE, CAP));
        assert_eq!(b.next(u64::MAX), BASE * 2);
    }

    #[test]
    fn a_cap_below_base_is_base() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.next(u64::MAX), Duration::from_secs(2));
        assert_eq!(b.next(0), Duration::from_secs(2));
    }

    #[test]
    fn long_outages_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..100 {
            assert!(b.next(u64::MAX) >= Duration::from_secs(u64::MAX / 4));
        }
        let mut b = Backoff::new(Duration::from_nanos(1), Duration::from_secs(3600));
        for _ in 0..100 {
            b.next(u64::MAX);
        }
        assert_eq!(b.next(u64::MAX), Duration::from_secs(3600));
        // A zero base is one nanosecond: the ceiling still grows.
        let mut b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.next(0), Duration::from_nanos(1));
        for _ in 0..100 {
            b.next(0);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn delays_grow_on_average_up_to_the_cap() {
        // Mean of the n-th delay over many independent loops.
        let mut rnd = stream(7);
        let loops = 2000;
        let mut means = [0.0f64; 8];
        for _ in 0..loops {
            let mut b = Backoff::new(BASE, CAP);
            for m in means.iter_mut() {
                *m += b.next(rnd()).as_secs_f64() / f64::from(loops);
            }
        }
        for w in means.windows(2).take(4) {
            assert!(w[1] > w[0] * 1.4, "the mean delay should grow: {means:?}");
        }
        // Then it stays halfway between base and cap.
        assert!((means[7] - 2.6).abs() < 0.15, "{means:?}");
    }

    #[test]
    fn jitter_spreads_the_delays() {
        // Many loops at the same step (e.g. a cluster's workers after it restarts) do not
        // retry together: their delays cover the whole range evenly, with few equal.
        let mut rnd = stream(11);
        let mut third: Vec<Duration> = (0..1400)
            .map(|_| {
                let mut b = Backoff::new(BASE, CAP);
                b.next(rnd());
                b.next(rnd());
                b.next(rnd())
            })
            .collect();
        // Its range is [200 ms, 1600 ms]: fourteen buckets of 100 ms, 100 draws each on average.
        let mut buckets = [0u32; 14];
        for d in &third {
            assert!(*d >= BASE && *d <= Duration::from_millis(1600), "{d:?}");
            buckets[((d.as_millis() - 200) / 100).min(13) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (60..=140).contains(&n)), "{buckets:?}");
        third.sort();
        third.dedup();
        assert!(third.len() > 1350, "only {} distinct delays of 1400", third.len());
    }

    proptest! {
        #[test]
        fn every_delay_is_within_base_and_cap(
            base_ms in 1u64..10_000,
            cap_ms in 1u64..100_000,
            draws in proptest::collection::vec(any::<u64>(), 1..50),
        ) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let mut b = Backoff::new(base, cap);
            for (n, r) in draws.into_iter().enumerate() {
                let d = b.next(r);
                prop_assert!(d >= base && d <= cap.max(base), "{d:?} outside {base:?}..{cap:?}");
                prop_assert!(d <= base * (1 << (n + 1).min(20)), "draw {n}: {d:?} above base × 2^{}", n + 1);
            }
        }
    }
}
