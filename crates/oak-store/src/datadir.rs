//! Data directories: owned by the user that runs the orchestrator and private to it.
//!
//! Everything a tier keeps (its store with the JWT signing secret or the MQTT password hashes,
//! its join tokens, a worker's identity secret) is readable only by its owner: a data dir is
//! created `0700`, files in it `0600`, and an existing dir or file that other users can reach
//! is refused at start with a message naming the path and the mode to set. Nothing is fixed
//! silently: a secret that was readable may already have been read, and the operator should
//! know (and rotate it).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data dir {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "{path} is mode {mode:04o}, open to other users; it holds secrets: set it with `chmod {want:o} {path}` \
         (and rotate what it held if others could read it)"
    )]
    Loose { path: String, mode: u32, want: u32 },
    #[error("{path} is owned by uid {owner}, not by this user (uid {me}); refusing to use it")]
    Owner { path: String, owner: u32, me: u32 },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Read { path: path.display().to_string(), source }
}

#[cfg(unix)]
fn check_entry(path: &Path, meta: &std::fs::Metadata) -> Result<(), DataDirError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() { 0o700 } else { 0o600 };
    if mode & 0o077 != 0 {
        return Err(DataDirError::Loose { path: path.display().to_string(), mode, want });
    }
    let me = nix_uid();
    if meta.uid() != me {
        return Err(DataDirError::Owner { path: path.display().to_string(), owner: meta.uid(), me });
    }
    Ok(())
}

#[cfg(unix)]
fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just made is its effective uid, without libc.
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// Makes `dir` ready to hold secrets: creates it (and missing parents) `0700`, or checks that
/// an existing one, and every file and directory directly in it, is private to this user.
pub fn prepare(dir: &Path) -> Result<PathBuf, DataDirError> {
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).map_err(|source| DataDirError::Create { path: dir.display().to_string(), source })?;
    }
    #[cfg(unix)]
    {
        let meta = std::fs::metadata(dir).map_err(io(dir))?;
        check_entry(dir, &meta)?;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            // A link is judged by what it points to: a secret linked to a readable file is
            // readable. (A dangling link holds nothing.)
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_file() || meta.is_dir() {
                check_entry(&path, &meta)?;
            }
        }
    }
    Ok(dir.to_path_buf())
}

/// Creates the directory `dir` inside a data dir, `0700`, if it is missing, or checks that an
/// existing one is private. What others write into it (containerd's log files) is not
/// checked: the directory's mode keeps other users out of all of it.
pub fn private_subdir(dir: &Path) -> Result<(), DataDirError> {
    if !dir.exists() {
        return prepare(dir).map(|_| ());
    }
    #[cfg(unix)]
    check_entry(dir, &std::fs::metadata(dir).map_err(io(dir))?)?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file (mode `0600`) and a rename, so a crash
/// leaves the old content or the new one, never a torn file or a readable one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Creates an empty file at `path` with mode `0600` if it does not exist (so that a library
/// that creates it with the default mode, as redb does, finds it private).
pub fn touch_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path().join("a/b");
        prepare(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
    }

    #[test]
    fn loose_dirs_and_files_are_refused_with_the_path_and_the_mode() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path().join("data");
        prepare(&d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
        let e = prepare(&d).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(&d.display().to_string()) && e.contains("0755") && e.contains("chmod 700"), "{e}");

        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap_or_else(|e| panic!("{e}"));
        let f = d.join("root.redb");
        std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
        let e = prepare(&d).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("root.redb") && e.contains("0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("{e}"));
        assert!(prepare(&d).is_ok());
    }

    #[test]
    fn a_link_to_a_readable_file_is_refused() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path().join("data");
        prepare(&d).unwrap_or_else(|e| panic!("{e}"));
        let outside = t.path().join("token");
        std::fs::write(&outside, b"s").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&outside, d.join("worker-token")).unwrap_or_else(|e| panic!("{e}"));
        let e = prepare(&d).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("worker-token") && e.contains("0644"), "{e}");
    }

    #[test]
    fn private_files_are_0600() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = t.path().join("secret");
        write_private(&f, b"s").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&f), 0o600);
        let g = t.path().join("store");
        touch_private(&g).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&g), 0o600);
    }
}
