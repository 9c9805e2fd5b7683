//! The worker node engine: registers with its cluster over HTTP (the worker token), then
//! speaks MQTT with per-worker credentials. It runs the instances the cluster sends on a
//! [`Runtime`], pushes every status change at once (`nodes/<id>/job`) and reports its
//! resources and its instances' usage every interval (`nodes/<id>/information`).
//!
//! The worker's id lives in its data dir, so a restarted worker is the same node. On start it
//! removes the containers it owns from an earlier run (re-adoption comes with issue #5). One
//! worker with the overlay runs per network namespace ([`lock`]).
//!
//! This crate must not import the other tiers; it meets the cluster only through `oak-api`.

mod host;
pub mod lock;
mod node;
mod table;

pub use node::{OverlaySettings, Worker, WorkerConfig, WorkerError};
pub use table::RunEnd;
