//! One worker per host network. A worker with the overlay tears down `oak0`, `oaktun0`, the
//! `oakv*` veths and the `OAK-*` chains when it starts (what an earlier run left) and when it
//! stops; a second worker in the same network would destroy the running one's. So a worker
//! first takes an exclusive `flock` on [`default_path`], and a second one fails at once,
//! naming the holder (its pid and data dir, which the holder writes into the file).
//!
//! The lock is keyed by the network namespace (its inode): `oak up` and the end-to-end tests
//! run several workers on one machine, each in its own namespace as if on its own host, and
//! those do not block each other. The kernel releases the lock when its holder dies, however
//! it dies; a stale file is simply taken over.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the lock files live (one per network namespace).
pub const DIR: &str = "/run/oak";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another worker ({holder}) runs in this network namespace and holds {path}: stop it first, or run \
         this one in another network namespace"
    )]
    Held { path: String, holder: String },
    #[error("cannot take the worker lock {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The lock of this worker on its host network: held until dropped (or the process ends).
#[derive(Debug)]
pub struct HostLock {
    _file: Flock<std::fs::File>,
}

/// `/run/oak/worker-net<inode>.lock`, for the network namespace of the calling thread.
pub fn default_path() -> Result<PathBuf, LockError> {
    // The calling thread's namespace: `oak worker --netns` enters it before any other thread
    // exists, so that every thread of the worker is in it.
    let ns = "/proc/thread-self/ns/net";
    let ino = std::fs::metadata(ns).map_err(|source| LockError::Io { path: ns.to_owned(), source })?.ino();
    Ok(Path::new(DIR).join(format!("worker-net{ino}.lock")))
}

impl HostLock {
    /// Takes the lock at `path` for the worker with `data_dir`, or says who holds it.
    pub fn acquire(path: &Path, data_dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Not truncated before it is ours: the holder's note is what the error shows.
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                file.set_len(0).map_err(io)?;
                write!(file, "pid={}\ndata_dir={}\n", std::process::id(), data_dir.display()).map_err(io)?;
                Ok(Self { _file: file })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut note = String::new();
                let _ = file.read_to_string(&mut note);
                Err(LockError::Held { path: path.display().to_string(), holder: holder(&note) })
            }
            Err((_, e)) => Err(io(e.into())),
        }
    }
}

/// The lock for a worker with `data_dir`, at [`default_path`]. Where this process may not
/// create it (not root: `/run` is not writable), it may not change the host's network either,
/// so it runs without one (`Ok(None)`, with a warning).
pub fn take(data_dir: &Path) -> Result<Option<HostLock>, LockError> {
    match default_path().and_then(|path| HostLock::acquire(&path, data_dir)) {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Io { path, source })
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            tracing::warn!(path, error = %source, "cannot take the worker lock; running without it");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// "pid 42, data dir /var/lib/oak/worker" from the holder's note.
fn holder(note: &str) -> String {
    let field = |key: &str| note.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).filter(|v| !v.is_empty());
    match (field("pid="), field("data_dir=")) {
        (Some(pid), Some(dir)) => format!("pid {pid}, data dir {dir}"),
        (Some(pid), None) => format!("pid {pid}"),
        // It has just taken the lock and not written its note yet.
        _ => "pid unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_worker_is_refused_and_told_who_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/oak/worker.lock");
        let first = HostLock::acquire(&path, Path::new("/var/lib/oak/w1")).unwrap();
        // flock locks belong to the open file, so a second open in this process conflicts as
        // a second process would.
        let e = HostLock::acquire(&path, Path::new("/var/lib/oak/w2")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::Held { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("data dir /var/lib/oak/w1") && msg.contains(&path.display().to_string()), "{msg}");
        // Once the first one is gone, the next takes over (and the note is its own).
        drop(first);
        let _second = HostLock::acquire(&path, Path::new("/var/lib/oak/w2")).unwrap();
        let note = std::fs::read_to_string(&path).unwrap();
        assert_eq!(note, format!("pid={}\ndata_dir=/var/lib/oak/w2\n", std::process::id()));
    }

    #[test]
    fn notes() {
        assert_eq!(holder("pid=7\ndata_dir=/d\n"), "pid 7, data dir /d");
        assert_eq!(holder("pid=7\n"), "pid 7");
        assert_eq!(holder(""), "pid unknown");
    }

    #[test]
    fn the_lock_is_per_network_namespace() {
        let here = default_path().unwrap();
        let name = here.file_name().unwrap().to_string_lossy().into_owned();
        assert!(here.starts_with(DIR) && name.starts_with("worker-net") && name.ends_with(".lock"), "{name}");
        assert_eq!(default_path().unwrap(), here, "stable within a namespace");
        // Another namespace: a thread that enters one, as `oak worker --netns` does.
        if !nix::unistd::Uid::effective().is_root() {
            assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "CI needs root");
            eprintln!("skipping the second namespace: needs root");
            return;
        }
        let ns = format!("oak-test-lock-{}", std::process::id());
        oak_runtime::netns::create(&ns).unwrap();
        let ns2 = ns.clone();
        let there = std::thread::spawn(move || {
            oak_runtime::netns::enter(&ns2).unwrap();
            default_path().unwrap()
        })
        .join()
        .unwrap();
        oak_runtime::netns::remove(&ns).unwrap();
        // Different files: workers in different namespaces do not block each other.
        assert_ne!(there, here);
    }
}
