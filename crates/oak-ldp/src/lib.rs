//! Latency and distance-aware placement (LDP), the pure part: network coordinates and what
//! is computed from them. No I/O, no clock (callers pass the time), no global randomness.
