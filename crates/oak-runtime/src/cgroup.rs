//! An instance's usage, read from its cgroup under either cgroup layout.
//!
//! The spec puts every instance in the cgroup `/oak/<id>` (`spec.rs`). Where that is depends
//! on the host:
//! - cgroup v2 (one unified hierarchy, `cgroup.controllers` at its root):
//!   `<root>/oak/<id>/cpu.stat` (`usage_usec`) and `<root>/oak/<id>/memory.current`;
//! - cgroup v1 (a hierarchy per controller, and so also a hybrid host, whose unified tree at
//!   `<root>/unified` holds no controllers): `<root>/cpuacct/oak/<id>/cpuacct.usage` (ns) and
//!   `<root>/memory/oak/<id>/memory.usage_in_bytes`.
//!
//! The root is a parameter so that tests read both layouts from fixture files.

use crate::Usage;
use std::path::{Path, PathBuf};

/// Where cgroups are mounted on a usual host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

/// The cgroups of instances under one mount root, with its layout detected once.
#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
    layout: Layout,
}

impl Cgroups {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let layout = Self::detect(&root);
        Self { root, layout }
    }

    /// v2 when the root is a unified hierarchy (it lists its controllers), else v1.
    pub fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").is_file() { Layout::V2 } else { Layout::V1 }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The directory of the instance's cgroup for `controller` (the same one for all on v2).
    pub fn dir(&self, controller: &str, id: &str) -> PathBuf {
        match self.layout {
            Layout::V2 => self.root.join("oak").join(id),
            Layout::V1 => self.root.join(controller).join("oak").join(id),
        }
    }

    /// CPU time and memory in use; a figure that cannot be read is 0.
    pub fn usage(&self, id: &str) -> Usage {
        let (cpu_ns, memory_bytes) = match self.layout {
            Layout::V2 => {
                let dir = self.dir("", id);
                let usec = read(&dir.join("cpu.stat")).and_then(|s| stat_field(&s, "usage_usec"));
                (usec.map(|u| u.saturating_mul(1000)), read_u64(&dir.join("memory.current")))
            }
            Layout::V1 => (
                read_u64(&self.dir("cpuacct", id).join("cpuacct.usage")),
                read_u64(&self.dir("memory", id).join("memory.usage_in_bytes")),
            ),
        };
        Usage { cpu_ns: cpu_ns.unwrap_or(0), memory_bytes: memory_bytes.unwrap_or(0) }
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`key value` per line).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_a_v2_host() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cgroup.controllers", "cpuset cpu io memory pids\n");
        write(
            root.path(),
            "oak/svc-0/cpu.stat",
            "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n",
        );
        write(root.path(), "oak/svc-0/memory.current", "8392704\n");
        // v1 files that a v2 host does not have must not be what is read.
        write(root.path(), "cpuacct/oak/svc-0/cpuacct.usage", "1\n");
        let cg = Cgroups::new(root.path());
        assert_eq!(cg.layout(), Layout::V2);
        assert_eq!(cg.usage("svc-0"), Usage { cpu_ns: 1_234_567_000, memory_bytes: 8_392_704 });
        assert_eq!(cg.usage("other"), Usage::default());
    }

    #[test]
    fn reads_a_v1_host() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cpuacct/oak/svc-0/cpuacct.usage", "987654321\n");
        write(root.path(), "memory/oak/svc-0/memory.usage_in_bytes", "4096\n");
        let cg = Cgroups::new(root.path());
        assert_eq!(cg.layout(), Layout::V1);
        assert_eq!(cg.usage("svc-0"), Usage { cpu_ns: 987_654_321, memory_bytes: 4096 });
        assert_eq!(cg.usage("other"), Usage::default());
    }

    #[test]
    fn a_hybrid_host_is_read_as_v1() {
        // systemd's hybrid mode: v1 controllers, and a unified tree without them.
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "unified/cgroup.controllers", "");
        write(root.path(), "cpuacct/oak/svc-0/cpuacct.usage", "5\n");
        write(root.path(), "memory/oak/svc-0/memory.usage_in_bytes", "6\n");
        let cg = Cgroups::new(root.path());
        assert_eq!(cg.layout(), Layout::V1);
        assert_eq!(cg.usage("svc-0"), Usage { cpu_ns: 5, memory_bytes: 6 });
    }

    #[test]
    fn keyed_fields() {
        assert_eq!(stat_field("usage_usec 12\nuser_usec 3", "usage_usec"), Some(12));
        assert_eq!(stat_field("usage_usec_x 12\nusage_usec 4", "usage_usec"), Some(4));
        assert_eq!(stat_field("user_usec 3", "usage_usec"), None);
        assert_eq!(stat_field("usage_usec lots", "usage_usec"), None);
    }
}
