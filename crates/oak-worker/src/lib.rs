//! The worker node engine: registers with its cluster over HTTP (the worker token), then
//! speaks MQTT with per-worker credentials. It runs the instances the cluster sends on a
//! [`Runtime`], pushes every status change at once (`nodes/<id>/job`) and reports its
//! resources and its instances' usage every interval (`nodes/<id>/information`).
//!
//! It also measures latency (LDP): it probes the peer workers its cluster names over UDP
//! (`probe`, port 50104) and keeps a Vivaldi network coordinate, and measures the RTT to user
//! addresses on request (`measure`); its reports carry both (`ldp`).
//!
//! The worker's id lives in its data dir, so a restarted worker is the same node. On start it
//! removes the containers it owns from an earlier run (re-adoption comes with issue #5). One
//! worker with the overlay runs per network namespace ([`lock`]).
//!
//! This crate must not import the other tiers; it meets the cluster only through `oak-api`.

mod host;
mod ldp;
pub mod lock;
mod measure;
mod node;
mod probe;
mod table;

pub use node::{MAX_ADDON_LEN, MAX_ADDONS, OverlaySettings, Worker, WorkerConfig, WorkerError, check_addons};
pub use probe::{PROBE_INTERVAL, PROBE_PORT};
pub use table::RunEnd;
