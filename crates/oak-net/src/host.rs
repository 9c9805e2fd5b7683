//! The worker's side of the overlay in the kernel: a bridge for the instances, a veth per
//! instance namespace, the TUN route for the semantic subnet, port mappings as DNAT rules,
//! and the removal of all of it. Everything this module creates carries the `oak` prefix
//! (links) or lives in the `OAK-*` chains (netfilter), so cleanup finds it all.

use std::net::Ipv4Addr;
use std::process::Command;

pub const BRIDGE: &str = "oak0";
pub const TUN: &str = "oaktun0";
/// MTU of the TUN, the bridge and the instances' veths: room for the outer IPv4 and UDP
/// headers (28 bytes) and some underlay encapsulation below a 1500-byte underlay.
pub const MTU: u16 = 1450;
/// The same with the encrypted tunnel, whose data messages add 32 bytes: WireGuard's usual
/// 1420, which also leaves room for an IPv6 underlay. (UDP GSO refuses segments larger than the
/// underlay's MTU, so this must hold.)
pub const MTU_ENCRYPTED: u16 = 1420;
const PORTS_CHAIN: &str = "OAK-PORTS";
const FWD_CHAIN: &str = "OAK-FWD";
const NAT_POST_CHAIN: &str = "OAK-POST";

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(|_| ())
}

/// Several `ip` commands in one process (`ip -batch -`), inside `netns` when given: each
/// process costs about 2 ms, and attaching an instance takes five commands.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), String> {
    use std::io::Write;
    let mut args = Vec::new();
    if let Some(n) = netns {
        args.extend(["-n", n]);
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes()).map_err(|e| format!("cannot feed ip: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("ip -batch: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {} ({}): {}", args.join(" "), lines.join("; "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ipt(args: &[&str]) -> Result<(), String> {
    let mut a = vec!["-w"];
    a.extend_from_slice(args);
    run("iptables", &a).map(|_| ())
}

/// The /26 of a worker: its bridge address is the first host address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
}

impl Subnet {
    pub const PREFIX: u8 = 26;

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Addresses for instances: base+2 … base+62.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let b = u32::from(self.base);
        (b + 2..b + 63).map(Ipv4Addr::from)
    }
}

/// Removes everything an earlier run left (bridge, veths, TUN, chains). Missing parts are fine.
pub fn teardown() {
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for l in links.lines() {
            let name = l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or_default().to_owned());
            if let Some(n) = name
                && (n.starts_with("oakv") || n == BRIDGE || n == TUN)
            {
                let _ = ip(&["link", "del", &n]);
            }
        }
    }
    // The jumps into our chains, whatever their matches.
    for (table, parent) in [("nat", "PREROUTING"), ("nat", "OUTPUT"), ("nat", "POSTROUTING"), ("filter", "FORWARD")] {
        let Ok(rules) = run("iptables", &["-w", "-t", table, "-S", parent]) else { continue };
        for r in rules.lines().filter(|l| l.starts_with("-A ") && l.contains("-j OAK-")) {
            let mut del = vec!["-t", table, "-D"];
            del.extend(r.split_whitespace().skip(1));
            let _ = ipt(&del);
        }
    }
    for (table, chain) in [("nat", PORTS_CHAIN), ("nat", NAT_POST_CHAIN), ("filter", FWD_CHAIN)] {
        let _ = ipt(&["-t", table, "-F", chain]);
        let _ = ipt(&["-t", table, "-X", chain]);
    }
}

/// Bridge with the gateway address, forwarding on, semantic subnet routed to the TUN
/// (`tun` must already be open), netfilter chains. Called after [`teardown`].
pub fn setup(subnet: Subnet, tun: &str, mtu: u16) -> Result<(), String> {
    let cidr = format!("{}/{}", subnet.base, Subnet::PREFIX);
    // A fixed address: otherwise the bridge takes the lowest address of its ports, which
    // changes as instances come and go, and every instance's ARP entry for its gateway goes
    // stale (its traffic blackholed until the entry expires).
    let o = subnet.base.octets();
    let mac = format!("02:6f:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    ip(&["link", "add", BRIDGE, "address", &mac, "type", "bridge"])?;
    ip(&["link", "set", BRIDGE, "mtu", &mtu.to_string()])?;
    ip(&["addr", "add", &format!("{}/{}", subnet.gateway(), Subnet::PREFIX), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    ip(&["link", "set", tun, "mtu", &mtu.to_string(), "up"])?;
    let (net, len) = oak_api::net::SERVICE_NET;
    ip(&["route", "replace", &format!("{net}/{len}"), "dev", tun])?;
    run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    // Replies from the TUN come from semantic addresses routed back into it; loose mode
    // keeps reverse-path filtering out of the way on hosts that set it strict.
    let _ = run("sysctl", &["-qw", &format!("net.ipv4.conf.{tun}.rp_filter=2")]);
    ipt(&["-t", "filter", "-N", FWD_CHAIN])?;
    ipt(&["-t", "filter", "-A", FWD_CHAIN, "-i", BRIDGE, "-j", "ACCEPT"])?;
    ipt(&["-t", "filter", "-A", FWD_CHAIN, "-o", BRIDGE, "-j", "ACCEPT"])?;
    ipt(&["-t", "filter", "-I", "FORWARD", "-j", FWD_CHAIN])?;
    ipt(&["-t", "nat", "-N", PORTS_CHAIN])?;
    ipt(&["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", PORTS_CHAIN])?;
    ipt(&["-t", "nat", "-A", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", PORTS_CHAIN])?;
    // Instances reach outside the overlay through the worker's address.
    ipt(&["-t", "nat", "-N", NAT_POST_CHAIN])?;
    ipt(&["-t", "nat", "-A", NAT_POST_CHAIN, "-s", &cidr, "!", "-d", "10.16.0.0/12", "-j", "MASQUERADE"])?;
    ipt(&["-t", "nat", "-A", "POSTROUTING", "-j", NAT_POST_CHAIN])?;
    Ok(())
}

/// Name of the host end of an instance's veth: derived from its address, unique per worker.
pub fn veth_name(ns_ip: Ipv4Addr) -> String {
    format!("oakv{:08x}", u32::from(ns_ip))
}

/// A veth from the bridge into `netns` (named `eth0` there) with `ns_ip`, default route via
/// the bridge, `mtu` as [`setup`] was given. On failure nothing is left.
pub fn attach(netns: &str, subnet: Subnet, ns_ip: Ipv4Addr, mtu: u16) -> Result<(), String> {
    let host = veth_name(ns_ip);
    let mtu = mtu.to_string();
    let r = (|| {
        ip_batch(
            None,
            &[
                format!("link add {host} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {netns}"),
                format!("link set {host} master {BRIDGE} up"),
            ],
        )?;
        ip_batch(
            Some(netns),
            &[
                format!("addr add {ns_ip}/{} dev eth0", Subnet::PREFIX),
                "link set eth0 up".to_owned(),
                format!("route add default via {}", subnet.gateway()),
            ],
        )
    })();
    if r.is_err() {
        let _ = ip(&["link", "del", &host]);
    }
    r
}

/// Removes an instance's veth (gone already if its namespace went first).
pub fn detach(ns_ip: Ipv4Addr) {
    let _ = ip(&["link", "del", &veth_name(ns_ip)]);
}

/// One DNAT rule per mapping, on the worker's address `host_ip`, tagged with `tag`.
pub fn add_ports(
    tag: &str,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    ports: &[oak_api::sla::PortMapping],
) -> Result<(), String> {
    for p in ports {
        let proto = match p.protocol {
            oak_api::sla::Protocol::Udp => "udp",
            oak_api::sla::Protocol::Tcp => "tcp",
        };
        let host_port = p.host.unwrap_or(p.container);
        if host_port == oak_api::net::TUNNEL_PORT {
            remove_ports(tag);
            return Err(format!("port {host_port} is the overlay's tunnel port and cannot be mapped"));
        }
        let r = ipt(&[
            "-t",
            "nat",
            "-A",
            PORTS_CHAIN,
            "-d",
            &host_ip.to_string(),
            "-p",
            proto,
            "--dport",
            &host_port.to_string(),
            "-m",
            "comment",
            "--comment",
            tag,
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{ns_ip}:{}", p.container),
        ]);
        if let Err(e) = r {
            remove_ports(tag);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the DNAT rules tagged `tag`.
pub fn remove_ports(tag: &str) {
    let Ok(rules) = run("iptables", &["-w", "-t", "nat", "-S", PORTS_CHAIN]) else { return };
    for r in rules.lines().filter(|l| l.starts_with("-A ") && l.contains(&format!("--comment {tag} "))) {
        let args: Vec<&str> = r.split_whitespace().skip(1).collect();
        let mut del = vec!["-t", "nat", "-D"];
        del.extend(args);
        let _ = ipt(&del);
    }
}
