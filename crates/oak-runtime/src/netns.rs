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

/// A simulated host: a network namespace joined to the root namespace by a veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub netns: String,
    /// The veth end in the root namespace.
    pub veth: String,
    /// Address of the host (inside its namespace).
    pub ip: String,
    /// Address of the root-namespace end: how the host reaches services on this machine.
    pub gateway: String,
}

/// Creates namespace `netns` with a veth to the root namespace: `10.<a>.<b>.2/24` inside,
/// `10.<a>.<b>.1/24` outside, default route via the outside end. `veth` is at most 15 bytes.
pub fn create_host(netns: &str, veth: &str, a: u8, b: u8) -> Result<Host, String> {
    remove_host(netns, veth);
    create(netns)?;
    let (ip_in, ip_out) = (format!("10.{a}.{b}.2"), format!("10.{a}.{b}.1"));
    let inner = format!("{veth}i");
    ip(&["link", "add", veth, "type", "veth", "peer", "name", &inner])?;
    ip(&["link", "set", &inner, "netns", netns])?;
    ip(&["addr", "add", &format!("{ip_out}/24"), "dev", veth])?;
    ip(&["link", "set", veth, "up"])?;
    ip(&["-n", netns, "link", "set", &inner, "name", "eth0"])?;
    ip(&["-n", netns, "addr", "add", &format!("{ip_in}/24"), "dev", "eth0"])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", netns, "route", "add", "default", "via", &ip_out])?;
    // Hosts reach each other through the root namespace, as through a router.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| format!("cannot enable forwarding: {e}"))?;
    Ok(Host { netns: netns.to_owned(), veth: veth.to_owned(), ip: ip_in, gateway: ip_out })
}

/// Removes a simulated host (its veth goes with its namespace). Missing parts are fine.
pub fn remove_host(netns: &str, veth: &str) {
    let _ = ip(&["link", "del", veth]);
    let _ = remove(netns);
}

/// Moves the calling thread into the named namespace. Threads it creates afterwards (a tokio
/// runtime built after this call) inherit it; mounts stay shared with the root namespace, so
/// containerd sees the instance namespaces the process creates.
pub fn enter(name: &str) -> Result<(), String> {
    let f = std::fs::File::open(path(name)).map_err(|e| format!("cannot open {}: {e}", path(name)))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot enter {name}: {e}"))
}
