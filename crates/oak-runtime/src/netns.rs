//! Named network namespaces (`/run/netns/NAME`), made and removed with iproute2.
//!
//! `ip netns add` forks a helper rather than unsharing a thread of this multi-threaded
//! process; that is the robust choice here, and it costs a few milliseconds per instance.

use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Path of a named namespace.
pub fn path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Creates a namespace with loopback up. An existing namespace of that name is reused.
pub fn create(name: &str) -> Result<(), String> {
    if !std::path::Path::new(&path(name)).exists() {
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Removes a namespace; a missing one is fine.
pub fn remove(name: &str) -> Result<(), String> {
    if std::path::Path::new(&path(name)).exists() {
        ip(&["netns", "delete", name])?;
    }
    Ok(())
}
