//! A small OCI image built from the host's static busybox (Debian's `busybox-static`), for the
//! sample application and the tests: no registry, no internet.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

/// The reference the image is imported under.
pub const IMAGE: &str = "oak.local/busybox:latest";

const APPLETS: &[&str] = &[
    "sh", "ash", "echo", "cat", "sleep", "httpd", "wget", "ls", "mkdir", "true", "false", "env", "hostname", "ps",
    "kill", "nc", "ping", "ip", "ifconfig", "date", "head", "tail", "grep", "seq", "yes", "dd", "rm", "touch",
];

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::image::hex(&Sha256::digest(bytes)))
}

fn layer(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |name: &str, b: &mut tar::Builder<Vec<u8>>| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, std::io::empty())
    };
    for d in ["bin/", "tmp/", "www/", "etc/", "proc/", "sys/", "dev/"] {
        dir(d, &mut b)?;
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "bin/busybox", busybox)?;
    for a in APPLETS {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    let passwd = b"root:x:0:0:root:/:/bin/sh\n";
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "etc/passwd", &passwd[..])?;
    b.into_inner()
}

/// Writes the OCI image layout tar of the busybox image to `out`.
pub fn build(busybox: &Path, out: &Path) -> Result<(), String> {
    let bin = std::fs::read(busybox)
        .map_err(|e| format!("cannot read {}: {e} (install busybox-static)", busybox.display()))?;
    let layer = layer(&bin).map_err(|e| e.to_string())?;
    let layer_digest = digest(&layer);
    let config = serde_json::json!({
        "architecture": crate::image::host_arch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest), "size": manifest.len(),
                       "platform": {"architecture": crate::image::host_arch(), "os": "linux"},
                       "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "latest"}}]
    });
    let index = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        t.append_data(&mut h, name, data)
    };
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| e.to_string())?;
    add("index.json".into(), &index).map_err(|e| e.to_string())?;
    add(blob(&digest(&manifest)), &manifest).map_err(|e| e.to_string())?;
    add(blob(&digest(&config)), &config).map_err(|e| e.to_string())?;
    add(blob(&layer_digest), &layer).map_err(|e| e.to_string())?;
    let bytes = t.into_inner().map_err(|e| e.to_string())?;
    std::fs::write(out, bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// Builds the image from `/bin/busybox` and imports it into containerd namespace `ns`
/// (with `ctr`, as containerd 1.6 has no import API).
pub fn import(ns: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("oak-image-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tar = dir.join("busybox.tar");
    build(Path::new("/bin/busybox"), &tar)?;
    // Concurrent imports of the same blobs into different namespaces race in containerd's
    // shared content store ("content digest ... not found"); a retry succeeds.
    let mut last = String::new();
    for attempt in 0..6 {
        let out = Command::new("ctr")
            .args(["-n", ns, "images", "import", "--index-name", IMAGE])
            .arg(&tar)
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        if out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        std::thread::sleep(std::time::Duration::from_millis(100 * (attempt + 1)));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Err(format!("ctr images import failed: {last}"))
}
