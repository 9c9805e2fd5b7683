//! A small seeded PRNG (splitmix64), so that every random choice in this crate is replayed
//! exactly from a seed. Not for cryptography.

/// Advances `state` and returns the next 64 random bits (splitmix64).
pub fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in `[0, 1)`, with 53 random bits.
pub fn next_f64(state: &mut u64) -> f64 {
    (next_u64(state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform index in `0..n` (0 when `n` is 0).
pub fn next_below(state: &mut u64, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    // Multiply-shift: no modulo bias worth speaking of for the n this crate uses.
    ((u128::from(next_u64(state)) * n as u128) >> 64) as usize
}

/// The bits that `next_u64` would give for a state derived from `key`: a stateless hash,
/// for values that must be the same whenever they are asked for (a pair's detour).
pub fn mix(key: u64) -> u64 {
    let mut s = key;
    next_u64(&mut s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // Reference values of splitmix64 seeded with 0.
        let mut s = 0;
        assert_eq!(next_u64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(next_u64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn floats_are_uniform_enough() {
        let mut s = 7;
        let n = 10_000;
        let mean = (0..n).map(|_| next_f64(&mut s)).sum::<f64>() / f64::from(n);
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    proptest! {
        #[test]
        fn values_stay_in_range(seed: u64, n in 0usize..1000) {
            let mut s = seed;
            let f = next_f64(&mut s);
            prop_assert!((0.0..1.0).contains(&f));
            let i = next_below(&mut s, n);
            prop_assert!(i < n.max(1));
        }
    }
}
