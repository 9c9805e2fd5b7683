//! Latency and distance-aware placement (LDP), the pure part: network coordinates and what
//! is computed from them. No I/O, no clock (callers pass the time, in seconds), no global
//! randomness (seeds come in), no async. The wire types (`Coord`, `GeoCircle`,
//! `CoordCircle`, `LdpSummary`) live in `oak_api::ldp`.
//!
//! - [`vivaldi`]: a worker's network coordinate, learnt from RTT samples to its peers
//!   (Vivaldi with the NSDI'07 moving-percentile filter and application-level coordinates).
//! - [`locate`]: placing a user in the space from RTTs that a few workers measured to it
//!   (multilateration), and one point standing for several users (geometric median).
//! - [`summary`]: a cluster's summary for the root (discs over its workers' locations,
//!   balls over their coordinates), and the lower bounds schedulers compute from it.
//! - [`space`]: a synthetic latency space with the structure of a real one, for tests,
//!   simulations and benchmarks.
//! - [`rng`]: the seeded PRNG (splitmix64) the other modules use.

pub mod locate;
pub mod rng;
#[cfg(test)]
mod simulation;
pub mod space;
pub mod summary;
pub mod vivaldi;

pub use locate::{geometric_median, multilaterate};
pub use rng::{next_f64, next_u64};
pub use space::{Space, SpaceParams};
pub use summary::{best_km, best_rtt, least_k, summarize};
pub use vivaldi::{Config, Vivaldi};
