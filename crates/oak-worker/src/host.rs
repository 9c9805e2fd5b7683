//! Facts about the host, read from /proc (cheap, no extra crates: the worker stays small).

/// (total, available) memory in MiB.
pub fn memory_mb() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Aggregate CPU counters (busy, total) in jiffies, from the first line of /proc/stat.
pub fn cpu_times() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let nums: Vec<u64> =
        text.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = nums.iter().sum();
    let idle = nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub fn cpu_cores() -> f64 {
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// Free MiB on the file system holding `path`.
pub fn disk_free_mb(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path).map(|s| s.blocks_available() * s.fragment_size() / (1024 * 1024)).unwrap_or(0)
}

/// The local address this host uses to reach `host:port` (no packet is sent).
pub fn source_ip_towards(host: &str, port: u16) -> Option<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect((host, port)).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_host() {
        let (total, avail) = super::memory_mb();
        assert!(total > 0 && avail <= total);
        let (busy, all) = super::cpu_times();
        assert!(all > 0 && busy <= all);
        assert!(super::cpu_cores() >= 1.0);
        assert_eq!(super::source_ip_towards("127.0.0.1", 9).as_deref(), Some("127.0.0.1"));
    }
}
