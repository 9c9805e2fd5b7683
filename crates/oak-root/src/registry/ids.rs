//! Where the registry's new ids come from.
//!
//! Ids are keys, and keys order things: the root scheduler places pending instances in
//! service id order. Production ids are random v4 UUIDs; a simulation gives the registry a
//! seeded source instead, so that a seed replays exactly.

use uuid::Uuid;

/// A source of fresh ids (users, organizations, applications, services, clusters, join
/// tokens).
pub struct IdSource(Box<dyn FnMut() -> Uuid + Send>);

impl IdSource {
    /// Random v4 UUIDs: what a real root uses.
    pub fn random() -> Self {
        Self(Box::new(Uuid::new_v4))
    }

    /// A sequence of v4-shaped UUIDs fixed by `seed` (splitmix64): equal seeds, equal ids.
    pub fn seeded(seed: u64) -> Self {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self(Box::new(move || {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&next().to_be_bytes());
            bytes[8..].copy_from_slice(&next().to_be_bytes());
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        }))
    }

    /// Ids from any function (tests).
    pub fn from_fn(f: impl FnMut() -> Uuid + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    /// The next id.
    pub fn next_id(&mut self) -> Uuid {
        (self.0)()
    }
}

impl Default for IdSource {
    fn default() -> Self {
        Self::random()
    }
}

impl std::fmt::Debug for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdSource")
    }
}

#[cfg(test)]
mod tests {
    use super::IdSource;

    #[test]
    fn a_seed_fixes_the_ids_and_random_ones_differ() {
        let take = |mut s: IdSource| (0..4).map(|_| s.next_id()).collect::<Vec<_>>();
        let a = take(IdSource::seeded(7));
        assert_eq!(a, take(IdSource::seeded(7)));
        assert_ne!(a, take(IdSource::seeded(8)));
        assert!(a.iter().all(|u| u.get_version_num() == 4));
        assert_eq!(a.iter().collect::<std::collections::BTreeSet<_>>().len(), 4, "{a:?}");
        assert_ne!(take(IdSource::random()), take(IdSource::random()));
    }
}
