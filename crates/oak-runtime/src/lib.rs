//! Instances on a container runtime. [`Runtime`] is the narrow boundary the worker uses;
//! [`containerd::ContainerdRuntime`] implements it over containerd's gRPC API (the calls and
//! their pitfalls are in `../shared/reference/rust-deps.md`).
//!
//! Each instance gets its own network namespace (loopback up), cgroup limits from the SLA's
//! `memory` and `vcpus` (usage is read back under cgroup v1 or v2, [`cgroup`]), and a log file
//! for stdout and stderr. Removing an instance leaves
//! nothing behind: task, container, snapshot, namespace and log go.
//!
//! This crate runs instances; it holds no orchestration logic (what should run where).

pub mod cgroup;
pub mod containerd;
pub mod image;
pub mod netns;
pub mod spec;
pub mod testimage;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Everything needed to start one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceSpec {
    /// Container id, unique on the runtime.
    pub id: String,
    pub image: String,
    /// Replaces the image's entrypoint and command when not empty.
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, appended after the image's environment.
    pub env: Vec<String>,
    pub hostname: String,
    /// Memory limit in MiB (0: none).
    pub memory_mb: u64,
    /// CPU limit in thousandths of a core (0: none).
    pub millicpu: u64,
    pub log_path: PathBuf,
    /// Name of the network namespace the runtime creates for the instance.
    pub netns: String,
    pub labels: BTreeMap<String, String>,
}

/// How an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The process exited with this code (128+n for signal n).
    Code(u32),
    /// The runtime lost track of it (e.g. the task vanished).
    Lost,
}

/// Resource usage of a running instance.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time used, in nanoseconds since start.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect to containerd at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("image {image} is not available: {reason}")]
    Image { image: String, reason: String },
    #[error("cannot create network namespace {name}: {reason}")]
    Netns { name: String, reason: String },
    #[error("instance {id} already exists")]
    Exists { id: String },
    #[error("instance {id}: {op} failed: {reason}")]
    Op { id: String, op: &'static str, reason: String },
}

/// A place to run instances. Implemented by containerd; tests of orchestration logic use fakes.
pub trait Runtime: Send + Sync + 'static {
    /// Runtime names this runtime serves (as the SLA's `virtualization` says them).
    fn names(&self) -> Vec<String>;

    /// Whether the image is present (nothing is pulled).
    fn has_image(&self, image: &str) -> impl Future<Output = bool> + Send;

    /// Makes sure the image is present (pulling it if needed).
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts an instance. The receiver yields once, when it exits.
    fn start(
        &self,
        spec: &InstanceSpec,
    ) -> impl Future<Output = Result<tokio::sync::oneshot::Receiver<Exit>, RuntimeError>> + Send;

    /// Stops an instance (SIGTERM, then SIGKILL after `grace`) and removes everything it had.
    /// Removing an instance that does not exist is not an error.
    fn remove(&self, id: &str, grace: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Ids of the instances that carry all of `labels`.
    fn list(&self, labels: &BTreeMap<String, String>)
    -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// Current usage of an instance, when it runs.
    fn usage(&self, id: &str) -> Option<Usage>;
}
