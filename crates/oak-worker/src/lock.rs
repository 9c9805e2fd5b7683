//! One worker per host network, and one per data dir.
//!
//! A worker with the overlay tears down `oak0`, `oaktun0`, the `oakv*` veths and the `OAK-*`
//! chains when it starts (what an earlier run left) and when it stops; a second worker in the
//! same network would destroy the running one's. So a worker with the overlay first takes an
//! exclusive `flock` on [`default_path`], and a second one fails at once, naming the holder
//! (its pid and data dir, which the holder writes into the file).
//!
//! The lock is keyed by the network namespace (its inode): `oak up` and the end-to-end tests
//! run several workers on one machine, each in its own namespace as if on its own host, and
//! those do not block each other. The kernel releases the lock when its holder dies, however
//! it dies; a stale file is simply taken over.
//!
//! Every worker, overlay or not, also locks [`DATA_DIR_LOCK`] in its data dir, before anything
//! else: a worker removes the containers an earlier run of its node left (found by the node
//! id in its data dir), so a second worker on the same data dir would kill the first one's
//! instances.
//!
//! `flock(LOCK_EX)` needs only a read-only descriptor, so whoever can open a lock file can
//! hold it and keep the worker from starting. The directories are created `0700` and the
//! files `0600`, and one that other users can open (or that another user owns) is refused,
//! with the `chmod` that fixes it.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the lock files live (one per network namespace).
pub const DIR: &str = "/run/oak";

/// The lock file of a data dir, in the data dir itself.
pub const DATA_DIR_LOCK: &str = "worker.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another worker ({holder}) runs in this network namespace and holds {path}: stop it first, or run \
         this one in another network namespace"
    )]
    Held { path: String, holder: String },
    #[error(
        "another worker ({holder}) runs with the data dir {data_dir} and holds {path}: stop it first, or give \
         this one another --data-dir"
    )]
    DataDirHeld { path: String, data_dir: String, holder: String },
    #[error(
        "{path} is mode {mode:04o}: other users could open it and hold the worker lock; set it with \
         `chmod {want:o} {path}`"
    )]
    Loose { path: String, mode: u32, want: u32 },
    #[error("{path} is owned by uid {owner}, not by this user (uid {me}); refusing it as a worker lock")]
    Owner { path: String, owner: u32, me: u32 },
    #[error("cannot take the worker lock {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Locks of this worker (see [`take`]): held until dropped (or the process ends).
#[derive(Debug)]
pub struct HostLock {
    _files: Vec<Flock<std::fs::File>>,
}

/// `/run/oak/worker-net<inode>.lock`, for the network namespace of the calling thread.
pub fn default_path() -> Result<PathBuf, LockError> {
    // The calling thread's namespace: `oak worker --netns` enters it before any other thread
    // exists, so that every thread of the worker is in it.
    let ns = "/proc/thread-self/ns/net";
    let ino = std::fs::metadata(ns).map_err(|source| LockError::Io { path: ns.to_owned(), source })?.ino();
    Ok(Path::new(DIR).join(format!("worker-net{ino}.lock")))
}

/// Refuses `path` (a lock file or its directory) if other users can open it or another
/// user owns it.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), LockError> {
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() { 0o700 } else { 0o600 };
    if mode & 0o077 != 0 {
        return Err(LockError::Loose { path: path.display().to_string(), mode, want });
    }
    let me = nix::unistd::Uid::effective().as_raw();
    if meta.uid() != me {
        return Err(LockError::Owner { path: path.display().to_string(), owner: meta.uid(), me });
    }
    Ok(())
}

/// Takes the exclusive lock at `path` (creating its directory `0700` and the file `0600`)
/// and writes this worker's note into it; `Ok(Err(holder))` when another one holds it.
fn lock_file(path: &Path, data_dir: &Path) -> Result<Result<Flock<std::fs::File>, String>, LockError> {
    let io = |source| LockError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Missing parents too, all 0700; an existing directory keeps its mode, and is checked.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        let meta = std::fs::metadata(dir).map_err(io)?;
        check_private(dir, &meta)?;
    }
    // Not truncated before it is ours: the holder's note is what the error shows. Not through
    // a link: the file is the one in this directory.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    check_private(path, &file.metadata().map_err(io)?)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut file) => {
            file.set_len(0).map_err(io)?;
            write!(file, "pid={}\ndata_dir={}\n", std::process::id(), data_dir.display()).map_err(io)?;
            Ok(Ok(file))
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut note = String::new();
            let _ = file.read_to_string(&mut note);
            Ok(Err(holder(&note)))
        }
        Err((_, e)) => Err(io(e.into())),
    }
}

/// The network lock at `path` for the worker with `data_dir`, or who holds it.
fn net_lock(path: &Path, data_dir: &Path) -> Result<Flock<std::fs::File>, LockError> {
    lock_file(path, data_dir)?.map_err(|holder| LockError::Held { path: path.display().to_string(), holder })
}

/// The lock of `data_dir` ([`DATA_DIR_LOCK`] in it, the dir created `0700` if missing), or
/// who holds it.
fn data_dir_lock(data_dir: &Path) -> Result<Flock<std::fs::File>, LockError> {
    let path = data_dir.join(DATA_DIR_LOCK);
    lock_file(&path, data_dir)?.map_err(|holder| LockError::DataDirHeld {
        path: path.display().to_string(),
        data_dir: data_dir.display().to_string(),
        holder,
    })
}

impl HostLock {
    /// Takes the network lock at `path` for the worker with `data_dir`, or says who holds it.
    pub fn acquire(path: &Path, data_dir: &Path) -> Result<Self, LockError> {
        Ok(Self { _files: vec![net_lock(path, data_dir)?] })
    }

    /// Takes the lock of `data_dir` ([`DATA_DIR_LOCK`] in it; the dir is created `0700` if
    /// missing), or says who holds it.
    pub fn acquire_data_dir(data_dir: &Path) -> Result<Self, LockError> {
        Ok(Self { _files: vec![data_dir_lock(data_dir)?] })
    }
}

/// The locks for a worker with `data_dir`: its data dir's, and with `overlay` the one at
/// [`default_path`]. Where this process may not create the network lock (not root: `/run`
/// is not writable), it may not change the host's network either, so it runs without that
/// one (with a warning); the data dir's it always takes.
pub fn take(data_dir: &Path, overlay: bool) -> Result<HostLock, LockError> {
    let data = data_dir_lock(data_dir)?;
    if !overlay {
        return Ok(HostLock { _files: vec![data] });
    }
    match default_path().and_then(|path| net_lock(&path, data_dir)) {
        Ok(net) => Ok(HostLock { _files: vec![data, net] }),
        Err(LockError::Io { path, source })
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            tracing::warn!(path, error = %source, "cannot take the worker lock; running without it");
            Ok(HostLock { _files: vec![data] })
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

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn locks_are_private_to_their_user() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/oak/worker-net1.lock");
        let data = t.path().join("var/lib/oak/worker");
        let lock = take_at(&path, &data);
        // Whatever the umask: nobody else can open them, so nobody else can hold them.
        assert_eq!(mode(&t.path().join("run")), 0o700);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join(DATA_DIR_LOCK)), 0o600);
        drop(lock);
        // And taken again as they are.
        take_at(&path, &data);
    }

    /// Both locks, as [`take`] takes them, with the network lock at `path`.
    fn take_at(path: &Path, data: &Path) -> (HostLock, HostLock) {
        (HostLock::acquire_data_dir(data).unwrap(), HostLock::acquire(path, data).unwrap())
    }

    #[test]
    fn a_lock_others_can_open_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("oak");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let path = dir.join("worker-net1.lock");
        let data = t.path().join("data");
        let msg = HostLock::acquire(&path, &data).unwrap_err().to_string();
        assert!(msg.contains(&format!("chmod 700 {}", dir.display())) && msg.contains("0755"), "{msg}");
        assert!(!path.exists(), "nothing is created in a loose directory");

        set_mode(&dir, 0o700);
        std::fs::write(&path, "pid=1\n").unwrap();
        set_mode(&path, 0o644);
        let e = HostLock::acquire(&path, &data).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::Loose { .. }), "{msg}");
        assert!(msg.contains(&format!("chmod 600 {}", path.display())) && msg.contains("0644"), "{msg}");
        set_mode(&path, 0o600);
        HostLock::acquire(&path, &data).unwrap();

        // The data dir's lock, the same.
        std::fs::create_dir(&data).unwrap();
        set_mode(&data, 0o750);
        let msg = HostLock::acquire_data_dir(&data).unwrap_err().to_string();
        assert!(msg.contains(&format!("chmod 700 {}", data.display())), "{msg}");
        set_mode(&data, 0o700);
        let file = data.join(DATA_DIR_LOCK);
        std::fs::write(&file, "").unwrap();
        set_mode(&file, 0o604);
        let msg = take(&data, false).unwrap_err().to_string();
        assert!(msg.contains(&format!("chmod 600 {}", file.display())), "{msg}");
    }

    #[test]
    fn a_lock_another_user_owns_or_a_link_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let path = t.path().join("oak/net.lock");
        HostLock::acquire(&path, &data).unwrap();
        // A link in place of the file: not followed.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::write(&elsewhere, "").unwrap();
        set_mode(&elsewhere, 0o600);
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let e = HostLock::acquire(&path, &data).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }), "{e}");
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping another owner: needs root");
            return;
        }
        std::fs::remove_file(&path).unwrap();
        HostLock::acquire(&path, &data).unwrap();
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&path, Some(nobody), None).unwrap();
        let e = HostLock::acquire(&path, &data).unwrap_err();
        assert!(matches!(e, LockError::Owner { owner: 65534, .. }), "{e}");
        nix::unistd::chown(&path, Some(nix::unistd::Uid::effective()), None).unwrap();
        nix::unistd::chown(path.parent().unwrap(), Some(nobody), None).unwrap();
        let e = HostLock::acquire(&path, &data).unwrap_err();
        assert!(matches!(e, LockError::Owner { owner: 65534, .. }), "{e}");
    }

    #[test]
    fn a_second_worker_on_one_data_dir_is_refused_overlay_or_not() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("worker");
        // Without the overlay: only the data dir's lock, which a second worker cannot take.
        let first = take(&data, false).unwrap();
        let e = take(&data, false).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::DataDirHeld { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains(&data.join(DATA_DIR_LOCK).display().to_string()), "{msg}");
        assert!(msg.contains("--data-dir"), "{msg}");
        // Nor with the overlay: the data dir's lock comes first.
        assert!(matches!(take(&data, true), Err(LockError::DataDirHeld { .. })));
        // Another data dir is another worker.
        let _other = take(&t.path().join("worker2"), false).unwrap();
        drop(first);
        let _again = take(&data, false).unwrap();
        let note = std::fs::read_to_string(data.join(DATA_DIR_LOCK)).unwrap();
        assert_eq!(note, format!("pid={}\ndata_dir={}\n", std::process::id(), data.display()));
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
