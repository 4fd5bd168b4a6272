//! When to try again: equal-jitter exponential backoff, and jitter for server hints.
//!
//! Randomness is injected through [`Random`] so a seed reproduces every delay. Equal jitter (a draw from
//! `[d/2, d]`) spreads clients out while guaranteeing a minimum wait: never a tight loop.

use std::time::Duration;

/// A source of uniform random numbers. Implemented by [`SplitMix64`]; tests may supply fixed sequences.
pub trait Random {
    /// The next uniformly distributed 64-bit value.
    fn next_u64(&mut self) -> u64;

    /// A uniform draw from `[0, 1)`.
    fn unit(&mut self) -> f64 {
        // 53 random mantissa bits: exactly representable, uniform, never 1.0.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64: tiny, fast, statistically fine for jitter, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
}

impl Random for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The nominal delay before retry `n` (1-based): `min(cap, base · 2^(n-1))`, saturating.
pub fn nominal(base: Duration, cap: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// Equal jitter: `d/2 + u · d/2` for a draw `u` in `[0, 1)`.
pub fn equal_jitter(nominal: Duration, u: f64) -> Duration {
    let half = nominal / 2;
    half + half.mul_f64(u.clamp(0.0, 1.0))
}

/// A server hint plus up to 10 % upward jitter, so clients told the same instant don't return together.
pub fn hint_jitter(hint: Duration, u: f64) -> Duration {
    hint.saturating_add(hint.mul_f64(0.1 * u.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_doubles_to_the_cap() {
        let ms = Duration::from_millis;
        let got: Vec<_> = (1..=7).map(|n| nominal(ms(500), ms(8000), n)).collect();
        assert_eq!(
            got,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(8000),
                ms(8000)
            ]
        );
        assert_eq!(
            nominal(ms(500), ms(8000), u32::MAX),
            ms(8000),
            "no overflow"
        );
        assert_eq!(nominal(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn equal_jitter_stays_in_range() {
        let d = Duration::from_millis(1000);
        assert_eq!(equal_jitter(d, 0.0), Duration::from_millis(500));
        assert!(equal_jitter(d, 0.999_999) <= d);
        assert_eq!(equal_jitter(d, 7.0), d, "out-of-range draws are clamped");
    }

    #[test]
    fn splitmix_is_deterministic_and_unit_in_range() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..1000 {
            let u = a.unit();
            assert_eq!(u, b.unit());
            assert!((0.0..1.0).contains(&u));
        }
    }
}
