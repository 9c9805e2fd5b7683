//! [`Runtime`] over containerd's gRPC API.
//!
//! The sequence per instance: image → manifest → config → chain id → `Snapshots.Prepare` →
//! `Containers.Create` (OCI spec) → `Tasks.Create` (rootfs mounts, log file) → `Tasks.Wait`
//! (spawned before start, so a fast exit is not missed) → `Tasks.Start`. Removal reverses it.
//! Images are pulled with `ctr` when absent (containerd 1.6 has no server-side pull), against
//! the same socket as every other call.

use crate::cgroup::Cgroups;
use crate::image::{self, ImageConfigJson, ManifestJson};
use crate::{Exit, InstanceSpec, Runtime, RuntimeError, Usage};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, GetImageRequest,
    KillRequest, ListContainersRequest, ReadContentRequest, StartRequest, WaitRequest, container::Runtime as CRuntime,
};
use containerd_client::tonic::Request;
use containerd_client::tonic::transport::Channel;
use containerd_client::with_namespace;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

const SNAPSHOTTER: &str = "overlayfs";
const RUNC: &str = "io.containerd.runc.v2";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

struct Running {
    netns: String,
    log: std::path::PathBuf,
    /// Becomes `Some` when the task exits.
    exited: watch::Receiver<Option<Exit>>,
}

/// A containerd client bound to one namespace.
pub struct ContainerdRuntime {
    channel: Channel,
    socket: String,
    namespace: String,
    running: Mutex<HashMap<String, Running>>,
    arch: String,
    pull_timeout: Duration,
    cgroups: Cgroups,
}

/// How long a pull may take before the instance fails (and is placed again after a backoff).
/// A registry that accepts the connection and never answers would otherwise keep an
/// instance CREATING forever.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);

fn op(id: &str, op: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Op { id: id.to_owned(), op, reason: e.to_string() }
}

impl ContainerdRuntime {
    /// Connects to the socket (e.g. `/run/containerd/containerd.sock`) and checks it answers.
    pub async fn connect(socket: &str, namespace: &str) -> Result<Self, RuntimeError> {
        let err = |reason: String| RuntimeError::Connect { path: socket.to_owned(), reason };
        if !std::path::Path::new(socket).exists() {
            return Err(err("no such socket".into()));
        }
        let channel = containerd_client::connect(socket).await.map_err(|e| err(e.to_string()))?;
        let mut v = containerd_client::services::v1::version_client::VersionClient::new(channel.clone());
        v.version(()).await.map_err(|e| err(e.message().to_owned()))?;
        Ok(Self {
            channel,
            socket: socket.to_owned(),
            namespace: namespace.to_owned(),
            running: Mutex::new(HashMap::new()),
            arch: image::host_arch().to_owned(),
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            cgroups: Cgroups::new(crate::cgroup::DEFAULT_ROOT),
        })
    }

    /// Reads instances' usage from cgroups mounted at `root` instead of `/sys/fs/cgroup`.
    pub fn with_cgroup_root(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        self.cgroups = Cgroups::new(root);
        self
    }

    /// Sets how long a pull may take.
    pub fn with_pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull_timeout = timeout;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        let mut c = ContentClient::new(self.channel.clone());
        let req = ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 };
        let mut stream = c
            .read(with_namespace!(req, self.namespace.as_str()))
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| e.message().to_owned())? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// The image's config (process defaults and layer diff ids).
    async fn image_config(&self, name: &str) -> Result<ImageConfigJson, String> {
        let mut images = ImagesClient::new(self.channel.clone());
        let req = GetImageRequest { name: name.to_owned() };
        let img = images
            .get(with_namespace!(req, self.namespace.as_str()))
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner()
            .image
            .ok_or("containerd returned no image")?;
        let target = img.target.ok_or("the image has no target")?;
        let mut digest = target.digest;
        let mut blob = self.read_blob(&digest).await?;
        if image::is_index(&target.media_type) {
            digest = image::pick_manifest(&blob, &self.arch)?;
            blob = self.read_blob(&digest).await?;
        }
        let manifest: ManifestJson =
            serde_json::from_slice(&blob).map_err(|e| format!("bad manifest {digest}: {e}"))?;
        let config = self.read_blob(&manifest.config.digest).await?;
        serde_json::from_slice(&config).map_err(|e| format!("bad image config: {e}"))
    }

    async fn cleanup(&self, id: &str, netns: Option<String>, log: Option<std::path::PathBuf>) {
        let ns = self.namespace.as_str();
        let mut tasks = TasksClient::new(self.channel.clone());
        let _ = tasks.delete(with_namespace!(DeleteTaskRequest { container_id: id.to_owned() }, ns)).await;
        let mut containers = ContainersClient::new(self.channel.clone());
        let _ = containers.delete(with_namespace!(DeleteContainerRequest { id: id.to_owned() }, ns)).await;
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let req = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: id.to_owned() };
        let _ = snaps.remove(with_namespace!(req, ns)).await;
        if let Some(n) = netns
            && let Err(e) = crate::netns::remove(&n)
        {
            tracing::warn!(instance = id, error = %e, "cannot remove network namespace");
        }
        if let Some(l) = log {
            let _ = std::fs::remove_file(l);
        }
    }

    async fn create_and_start(&self, spec: &InstanceSpec) -> Result<watch::Receiver<Option<Exit>>, RuntimeError> {
        let id = spec.id.as_str();
        let ns = self.namespace.as_str();
        let config = self
            .image_config(&spec.image)
            .await
            .map_err(|reason| RuntimeError::Image { image: spec.image.clone(), reason })?;
        let chain = image::chain_id(&config.rootfs.diff_ids).ok_or_else(|| RuntimeError::Image {
            image: spec.image.clone(),
            reason: "the image has no layers".into(),
        })?;
        let oci = crate::spec::build(spec, &config.config).map_err(|e| op(id, "build spec", e))?;
        let oci_json = serde_json::to_vec(&oci).map_err(|e| op(id, "encode spec", e))?;

        crate::netns::create(&spec.netns).map_err(|reason| RuntimeError::Netns { name: spec.netns.clone(), reason })?;

        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let labels = HashMap::from([("containerd.io/gc.root".to_owned(), "oak".to_owned())]);
        let req =
            PrepareSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: id.to_owned(), parent: chain, labels };
        let mounts = snaps
            .prepare(with_namespace!(req, ns))
            .await
            .map_err(|e| op(id, "prepare snapshot", e.message()))?
            .into_inner()
            .mounts;

        let container = Container {
            id: id.to_owned(),
            image: spec.image.clone(),
            labels: spec.labels.clone().into_iter().collect(),
            runtime: Some(CRuntime { name: RUNC.to_owned(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE.to_owned(), value: oci_json }),
            snapshotter: SNAPSHOTTER.to_owned(),
            snapshot_key: id.to_owned(),
            ..Default::default()
        };
        let mut containers = ContainersClient::new(self.channel.clone());
        containers
            .create(with_namespace!(CreateContainerRequest { container: Some(container) }, ns))
            .await
            .map_err(|e| op(id, "create container", e.message()))?;

        if let Some(dir) = spec.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| op(id, "create log directory", e))?;
        }
        std::fs::File::create(&spec.log_path).map_err(|e| op(id, "create log file", e))?;
        let log = spec.log_path.display().to_string();
        let mut tasks = TasksClient::new(self.channel.clone());
        let req = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdout: log.clone(),
            stderr: log,
            ..Default::default()
        };
        tasks.create(with_namespace!(req, ns)).await.map_err(|e| op(id, "create task", e.message()))?;

        // Wait before start, so that a fast exit is not missed.
        let (tx, rx) = watch::channel(None);
        let mut waiter = TasksClient::new(self.channel.clone());
        let wait_req = with_namespace!(WaitRequest { container_id: id.to_owned(), exec_id: String::new() }, ns);
        let wait_id = id.to_owned();
        tokio::spawn(async move {
            let exit = match waiter.wait(wait_req).await {
                Ok(r) => Exit::Code(r.into_inner().exit_status),
                Err(e) => {
                    tracing::warn!(instance = %wait_id, error = %e.message(), "lost the task");
                    Exit::Lost
                }
            };
            let _ = tx.send(Some(exit));
        });
        tasks
            .start(with_namespace!(StartRequest { container_id: id.to_owned(), exec_id: String::new() }, ns))
            .await
            .map_err(|e| op(id, "start task", e.message()))?;
        Ok(rx)
    }
}

/// `ctr --address <socket> -n <namespace> images pull -- <image>`: the pull goes to the
/// containerd this runtime talks to, not to `ctr`'s default socket. The `--` ends the options
/// (ctr's flag parser honours it), so an image named like one (`--skip-verify`, `--http-dump`)
/// is taken as the reference, not as an option.
fn pull_command(socket: &str, namespace: &str, image: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ctr");
    cmd.args(["--address", socket, "-n", namespace, "images", "pull", "--", image]);
    cmd
}

impl Runtime for ContainerdRuntime {
    fn names(&self) -> Vec<String> {
        vec!["container".to_owned(), "docker".to_owned()]
    }

    async fn has_image(&self, image: &str) -> bool {
        let mut images = ImagesClient::new(self.channel.clone());
        let req = GetImageRequest { name: image.to_owned() };
        images.get(with_namespace!(req, self.namespace.as_str())).await.is_ok()
    }

    async fn ensure_image(&self, name: &str) -> Result<(), RuntimeError> {
        if self.has_image(name).await {
            return Ok(());
        }
        let pull = pull_command(&self.socket, &self.namespace, name).kill_on_drop(true).output();
        let out = tokio::time::timeout(self.pull_timeout, pull)
            .await
            .map_err(|_| RuntimeError::Image {
                image: name.to_owned(),
                reason: format!("the pull did not finish in {} s", self.pull_timeout.as_secs_f64()),
            })?
            .map_err(|e| RuntimeError::Image { image: name.to_owned(), reason: format!("cannot run ctr: {e}") })?;
        if out.status.success() && self.has_image(name).await {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("pull failed").trim().to_owned();
            Err(RuntimeError::Image {
                image: name.to_owned(),
                reason: format!("not present and cannot be pulled: {last}"),
            })
        }
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<oneshot::Receiver<Exit>, RuntimeError> {
        if self.running.lock().contains_key(&spec.id) {
            return Err(RuntimeError::Exists { id: spec.id.clone() });
        }
        match self.create_and_start(spec).await {
            Ok(mut exited) => {
                self.running.lock().insert(
                    spec.id.clone(),
                    Running { netns: spec.netns.clone(), log: spec.log_path.clone(), exited: exited.clone() },
                );
                let (tx, rx) = oneshot::channel();
                tokio::spawn(async move {
                    let exit = loop {
                        if let Some(e) = *exited.borrow_and_update() {
                            break e;
                        }
                        if exited.changed().await.is_err() {
                            break Exit::Lost;
                        }
                    };
                    let _ = tx.send(exit);
                });
                Ok(rx)
            }
            Err(e) => {
                // Nothing half-made stays behind.
                self.cleanup(&spec.id, Some(spec.netns.clone()), Some(spec.log_path.clone())).await;
                Err(e)
            }
        }
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let ns = self.namespace.as_str();
        let running = self.running.lock().remove(id);
        let mut tasks = TasksClient::new(self.channel.clone());
        let kill = |signal: u32| KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal, all: true };
        let (netns, log) = match running {
            Some(mut r) => {
                if r.exited.borrow().is_none() {
                    let _ = tasks.kill(with_namespace!(kill(15), ns)).await;
                    let in_time = tokio::time::timeout(grace, r.exited.wait_for(Option::is_some)).await.is_ok();
                    if !in_time {
                        let _ = tasks.kill(with_namespace!(kill(9), ns)).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), r.exited.wait_for(Option::is_some)).await;
                    }
                }
                (Some(r.netns), Some(r.log))
            }
            None => {
                // Not started by this process (e.g. left over from a previous run): kill hard.
                let _ = tasks.kill(with_namespace!(kill(9), ns)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                (Some(format!("oak-{id}")), None)
            }
        };
        self.cleanup(id, netns, log).await;
        Ok(())
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<String>, RuntimeError> {
        let filters: Vec<String> = labels.iter().map(|(k, v)| format!("labels.\"{k}\"=={v}")).collect();
        let filter = filters.join(",");
        let mut containers = ContainersClient::new(self.channel.clone());
        let req = ListContainersRequest { filters: if filter.is_empty() { vec![] } else { vec![filter] } };
        let list = containers
            .list(with_namespace!(req, self.namespace.as_str()))
            .await
            .map_err(|e| op("*", "list containers", e.message()))?;
        let mut ids: Vec<String> = list.into_inner().containers.into_iter().map(|c| c.id).collect();
        ids.sort();
        Ok(ids)
    }

    fn usage(&self, id: &str) -> Option<Usage> {
        if !self.running.lock().contains_key(id) {
            return None;
        }
        Some(self.cgroups.usage(id))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pulls_go_to_the_configured_socket() {
        let cmd = super::pull_command("/run/other/containerd.sock", "oak-x", "docker.io/library/nginx:1");
        let cmd = cmd.as_std();
        assert_eq!(cmd.get_program(), "ctr");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--address",
                "/run/other/containerd.sock",
                "-n",
                "oak-x",
                "images",
                "pull",
                "--",
                "docker.io/library/nginx:1"
            ]
        );
    }

    #[test]
    fn an_image_named_like_an_option_stays_the_image() {
        let cmd = super::pull_command("/run/containerd/containerd.sock", "oak", "--skip-verify");
        let args: Vec<_> = cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        // Every option comes before the `--` that ends them; the image is the one argument after.
        let end = args.iter().position(|a| a == "--").expect("no --");
        assert_eq!(args[end + 1..], ["--skip-verify"]);
    }

    /// What `ctr` itself makes of it: a reference that cannot be resolved, not a flag (which
    /// would leave no reference: "please provide an image reference to pull").
    #[tokio::test]
    async fn ctr_reads_an_option_named_image_as_the_reference() {
        const SOCKET: &str = "/run/containerd/containerd.sock";
        if !std::path::Path::new(SOCKET).exists() || !nix::unistd::Uid::effective().is_root() {
            assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "CI needs root and containerd");
            eprintln!("skipping: needs root and containerd at {SOCKET}");
            return;
        }
        let ns = format!("oak-test-pull-{}", std::process::id());
        let out = super::pull_command(SOCKET, &ns, "--http-dump").output().await.expect("cannot run ctr");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("\"--http-dump\""), "{err}");
        let _ = std::process::Command::new("ctr").args(["--address", SOCKET, "namespaces", "remove", &ns]).output();
    }
}
