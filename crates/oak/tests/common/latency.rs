//! A latency emulator for the end-to-end tests. This kernel has no netem, so delays are made
//! in user space with NFQUEUE: in each emulated host's network namespace, one iptables chain
//! (`OAKLAT-<pid>-<k>` in the `mangle` table, jumped to from `PREROUTING`) sends every IPv4
//! packet that arrives from another emulated host's address to the namespace's queue
//! (`--queue-num` [`QUEUE_BASE`]` + host index`, no `--queue-bypass`). A dedicated thread that
//! entered the namespace (`setns`) reads the queue and holds each packet's verdict (accept)
//! until `arrival + delay(src, dst)`, in a min-heap by deadline; packets of one pair keep their
//! order even when [`LatencyEmulator::set`] lowers its delay.
//!
//! **What is delayed.** A packet from host `a`'s address to host `b` is delayed once, by the
//! one-way delay `d(a, b)`, so the round trip between them is `d(a, b) + d(b, a)`. The delay is
//! applied where the packet enters `b` rather than where it leaves `a`: held at `a`'s egress it
//! would still be charged to the sending socket, and TCP Small Queues would throttle the flow
//! to a few packets per delay (measured: 0.5 MB/s at 10 ms; netem avoids that by orphaning the
//! packets, which NFQUEUE cannot do). Whatever arrives at `b` from `a`'s address is delayed,
//! whether `b` itself or something behind it (a container) receives it; packets from `a`
//! whose source is not `a`'s address (not masqueraded), loopback, a host's own address, ARP,
//! and traffic with any address that is not an emulated host (the gateway, a root or cluster
//! in the root namespace) are not. A control plane is delayed only when it runs on one of the
//! emulated hosts' addresses.
//!
//! The kernel queue holds up to [`QUEUE_MAXLEN`] packets per host, only their first 20 bytes
//! (the IPv4 header) are copied to user space, GSO packets are queued whole, and the netlink
//! socket's receive buffer is forced to [`SOCKET_BUFFER`] bytes, so a TCP transfer of several
//! MB or a burst of thousands of datagrams passes without loss. Should the queue or the socket
//! overflow all the same, packets fail open (pass undelayed) rather than stall;
//! [`LatencyEmulator::counters`] tells how many did. Dropping the emulator (or
//! [`LatencyEmulator::stop`]) removes its rules first, then releases every held packet at once
//! and stops its threads; this happens on unwinding too.
//!
//! Attaching it to the worker hosts of a [`Hierarchy`](super::Hierarchy) (ordinary named
//! network namespaces, `ip netns`, reached from each other through the root namespace):
//!
//! ```ignore
//! let h = Hierarchy::start("lat", 3).await;
//! let hosts: Vec<_> = (0..3).map(|i| (h.host(i).0, h.host_ip(i))).collect();
//! // 5 ms one way between workers 0 and 1, 40 ms between worker 2 and the others.
//! let lat = LatencyEmulator::start(&hosts, |a, b| if a == 2 || b == 2 { 40.0 } else { 5.0 })?;
//! // … deploy, then make worker 0 → 1 slow to break an SLA:
//! lat.set(0, 1, 80.0);
//! lat.set(1, 0, 80.0);
//! ```
//!
//! Workers reach their cluster through their gateway in the root namespace, so with a
//! `Hierarchy` the control plane is not delayed; worker-to-worker traffic (the overlay's UDP
//! tunnels, direct connections) is.
//!
//! [`TestHosts`] makes bare hosts for tests of the emulator itself (or of anything that needs
//! a few hosts on one link): namespaces `oaklat<pid>-<k>-<i>` at `10.99.<k>.<i + 1>/24` whose
//! veths meet on a bridge inside a namespace of their own (`oaklat<pid>-<k>-sw`), so nothing
//! is added to the root namespace. [`UdpEcho`], [`udp_rtts`], [`TcpSink`] and
//! [`tcp_connect_rtts`] measure what the emulator does.

use anyhow::{Context, Result, anyhow, bail, ensure};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Queue number of host 0 (host `i` uses `QUEUE_BASE + i`); queues are per network namespace.
pub const QUEUE_BASE: u16 = 0xA000;
/// Packets the kernel holds per queue before failing open.
pub const QUEUE_MAXLEN: u32 = 16384;
/// Receive buffer of each queue's netlink socket (`SO_RCVBUFFORCE`): some 20 000 packets.
pub const SOCKET_BUFFER: usize = 16 << 20;
/// The longest a queue thread waits before it looks whether it should stop.
const POLL: Duration = Duration::from_millis(10);
/// Bytes of each packet copied to user space: the IPv4 header, for the source.
const COPY_RANGE: u16 = 20;

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// Whether this machine can emulate latency (root, iptables with NFQUEUE). With CI=true a
/// missing prerequisite is a failure; elsewhere the test says why it skips.
pub fn can_emulate(test: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root".to_owned())
    } else if !Command::new("iptables").arg("-V").output().is_ok_and(|o| o.status.success()) {
        Some("needs iptables (scripts/setup installs it)".to_owned())
    } else if !std::path::Path::new("/proc/net/netfilter/nfnetlink_queue").exists() {
        load_modules();
        (!std::path::Path::new("/proc/net/netfilter/nfnetlink_queue").exists())
            .then(|| "needs nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE)".to_owned())
    } else {
        None
    };
    if let Some(why) = why {
        assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "{test}: {why}");
        eprintln!("skipping {test}: {why}");
        return false;
    }
    true
}

/// Loads the queue modules; a kernel that has them built in (or no modprobe) is fine.
fn load_modules() {
    for m in ["nfnetlink_queue", "xt_NFQUEUE"] {
        let _ = Command::new("modprobe").arg(m).output();
    }
}

/// Runs a command; its stderr is the error.
fn run(cmd: &[&str]) -> Result<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().with_context(|| format!("cannot run {}", cmd[0]))?;
    ensure!(out.status.success(), "{}: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a new thread inside network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let ns = netns.to_owned();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            oak_runtime::netns::enter(&ns).map_err(|e| anyhow!(e))?;
            f()
        })
        .expect("cannot spawn a thread")
}

/// Joins a thread of [`in_netns`].
fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("thread panicked"))?
}

/// What one host's queue saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Packets that matched this host's rules (iptables counters).
    pub matched: u64,
    /// Packets the emulator read from the queue and delayed.
    pub delayed: u64,
    /// Packets the kernel dropped (`queue_dropped + user_dropped`): zero while failing open.
    pub dropped: u64,
    /// Verdicts or reads that failed.
    pub errors: u64,
}

impl HostCounters {
    /// Packets that matched but never reached the emulator: passed undelayed (fail open).
    pub fn bypassed(&self) -> u64 {
        self.matched.saturating_sub(self.delayed)
    }
}

/// Delays between emulated hosts; see the module documentation. Removes everything it added
/// when dropped.
pub struct LatencyEmulator {
    hosts: Vec<(String, Ipv4Addr)>,
    chain: String,
    /// One-way delays in microseconds, `[src * n + dst]`.
    delays: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<(AtomicU64, AtomicU64)>>,
    /// Hosts whose chain may exist.
    installed: Vec<usize>,
}

impl LatencyEmulator {
    /// Delays what `hosts[a]` (namespace, address) sends from its address to `hosts[b]` by
    /// `one_way_ms(a, b)` milliseconds (see the module documentation).
    pub fn start(hosts: &[(String, Ipv4Addr)], one_way_ms: impl Fn(usize, usize) -> f64) -> Result<Self> {
        let n = hosts.len();
        ensure!(n >= 2, "at least two hosts");
        ensure!(n <= 4096, "at most 4096 hosts");
        let mut delays = Vec::with_capacity(n * n);
        for a in 0..n {
            for b in 0..n {
                delays.push(AtomicU64::new(if a == b { 0 } else { micros(one_way_ms(a, b))? }));
            }
        }
        load_modules();
        let mut by_ip = HashMap::new();
        for (i, (_, ip)) in hosts.iter().enumerate() {
            ensure!(by_ip.insert(*ip, i).is_none(), "{ip} is given twice");
        }
        let mut me = LatencyEmulator {
            hosts: hosts.to_vec(),
            chain: format!("OAKLAT-{}-{}", std::process::id(), INSTANCES.fetch_add(1, Ordering::Relaxed)),
            delays: Arc::new(delays),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Vec::new(),
            installed: Vec::new(),
        };
        // Queues first: without a reader, queued packets would be dropped.
        let by_ip = Arc::new(by_ip);
        let mut ready = Vec::new();
        for (i, (netns, _)) in hosts.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let stats = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
            let q = Queuer {
                host: i,
                n,
                num: QUEUE_BASE + i as u16,
                by_ip: by_ip.clone(),
                delays: me.delays.clone(),
                stop: me.stop.clone(),
                stats: stats.clone(),
            };
            let ns = netns.clone();
            let t = std::thread::Builder::new()
                .name(format!("oaklat-{i}"))
                .spawn(move || q.run(&ns, tx))
                .context("cannot spawn a queue thread")?;
            me.threads.push(t);
            me.stats.push(stats);
            ready.push(rx);
        }
        for (i, rx) in ready.into_iter().enumerate() {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("queue of {}: {e}", hosts[i].0),
                Err(_) => bail!("queue of {}: no answer", hosts[i].0),
            }
        }
        for (i, (netns, _)) in hosts.iter().enumerate() {
            me.installed.push(i);
            me.install(i, netns)?;
        }
        Ok(me)
    }

    fn iptables(netns: &str, args: &[&str]) -> Result<String> {
        let mut cmd = vec!["ip", "netns", "exec", netns, "iptables", "-w", "-t", "mangle"];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    fn install(&self, i: usize, netns: &str) -> Result<()> {
        let chain = self.chain.as_str();
        Self::iptables(netns, &["-N", chain])?;
        let queue = (QUEUE_BASE + i as u16).to_string();
        for (j, (_, ip)) in self.hosts.iter().enumerate().filter(|(j, _)| *j != i) {
            let src = format!("{ip}/32");
            Self::iptables(netns, &["-A", chain, "-s", &src, "!", "-i", "lo", "-j", "NFQUEUE", "--queue-num", &queue])
                .with_context(|| format!("rule {j} -> {i}"))?;
        }
        Self::iptables(netns, &["-I", "PREROUTING", "1", "-j", chain])?;
        Ok(())
    }

    /// The hosts, as given.
    pub fn hosts(&self) -> &[(String, Ipv4Addr)] {
        &self.hosts
    }

    /// The iptables chain (mangle table) this emulator added in every host namespace.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Changes the one-way delay from `a` to `b`; packets already held keep theirs.
    pub fn set(&self, a: usize, b: usize, ms: f64) {
        let n = self.hosts.len();
        assert!(a < n && b < n && a != b, "no pair ({a}, {b}) among {n} hosts");
        self.delays[a * n + b].store(micros(ms).unwrap(), Ordering::Relaxed);
    }

    /// The one-way delay from `a` to `b`, in milliseconds.
    pub fn get(&self, a: usize, b: usize) -> f64 {
        self.delays[a * self.hosts.len() + b].load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// What each host's queue saw so far.
    pub fn counters(&self) -> Result<Vec<HostCounters>> {
        let mut all = Vec::new();
        for (i, (netns, _)) in self.hosts.iter().enumerate() {
            let listing = Self::iptables(netns, &["-n", "-v", "-x", "-L", &self.chain])?;
            let matched = listing
                .lines()
                .filter(|l| l.contains("NFQUEUE"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            let proc = run(&["ip", "netns", "exec", netns, "cat", "/proc/net/netfilter/nfnetlink_queue"])?;
            let num = (QUEUE_BASE + i as u16).to_string();
            let dropped = proc
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() >= 7 && f[0] == num)
                .map(|f| f[5].parse::<u64>().unwrap_or(0) + f[6].parse::<u64>().unwrap_or(0))
                .sum();
            let (delayed, errors) = (&self.stats[i].0, &self.stats[i].1);
            all.push(HostCounters {
                matched,
                delayed: delayed.load(Ordering::Relaxed),
                dropped,
                errors: errors.load(Ordering::Relaxed),
            });
        }
        Ok(all)
    }

    /// Removes the rules, releases every held packet and stops the threads (as dropping does).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for i in std::mem::take(&mut self.installed) {
            let netns = &self.hosts[i].0;
            // A namespace that is already gone took the rules with it.
            while Self::iptables(netns, &["-D", "PREROUTING", "-j", &self.chain]).is_ok() {}
            let _ = Self::iptables(netns, &["-F", &self.chain]);
            let _ = Self::iptables(netns, &["-X", &self.chain]);
        }
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LatencyEmulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn micros(ms: f64) -> Result<u64> {
    ensure!(ms.is_finite() && (0.0..=3_600_000.0).contains(&ms), "bad delay {ms} ms");
    Ok((ms * 1000.0).round() as u64)
}

/// A packet whose verdict waits for its deadline.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    deadline: Instant,
    seq: u64,
    id: u32,
}

/// The thread of one host's queue.
struct Queuer {
    host: usize,
    n: usize,
    num: u16,
    by_ip: Arc<HashMap<Ipv4Addr, usize>>,
    delays: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    /// Packets delayed, errors.
    stats: Arc<(AtomicU64, AtomicU64)>,
}

impl Queuer {
    fn open(&self, netns: &str) -> Result<nfqueue::Queue> {
        oak_runtime::netns::enter(netns).map_err(|e| anyhow!(e))?;
        let flags = nfqueue::F_FAIL_OPEN | nfqueue::F_GSO;
        nfqueue::Queue::open(self.num, COPY_RANGE, QUEUE_MAXLEN, flags, SOCKET_BUFFER)
            .with_context(|| format!("cannot open netfilter queue {}", self.num))
    }

    fn run(self, netns: &str, ready: mpsc::Sender<Result<(), String>>) {
        let mut q = match self.open(netns) {
            Ok(q) => q,
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut heap = BinaryHeap::new();
        let mut last = vec![None::<Instant>; self.n];
        let mut seq = 0u64;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if stopping {
                // The rules are gone: catch what was queued meanwhile, then let all go.
                std::thread::sleep(Duration::from_millis(5));
            }
            self.read(&mut q, &mut heap, &mut last, &mut seq);
            let now = Instant::now();
            while heap.peek().is_some_and(|Reverse(h): &Reverse<Held>| stopping || h.deadline <= now) {
                let Some(Reverse(h)) = heap.pop() else { break };
                if q.accept(h.id).is_err() {
                    self.stats.1.fetch_add(1, Ordering::Relaxed);
                }
            }
            if stopping {
                break;
            }
            let wait = heap.peek().map_or(POLL, |Reverse(h)| h.deadline.saturating_duration_since(now));
            q.wait(wait.min(POLL));
        }
    }

    /// Reads every packet waiting in the socket and gives each its deadline.
    fn read(
        &self,
        q: &mut nfqueue::Queue,
        heap: &mut BinaryHeap<Reverse<Held>>,
        last: &mut [Option<Instant>],
        seq: &mut u64,
    ) {
        let mut packets = Vec::new();
        loop {
            packets.clear();
            match q.recv(&mut packets) {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stats.1.fetch_add(1, Ordering::Relaxed);
                }
            }
            let now = Instant::now();
            for p in &packets {
                self.stats.0.fetch_add(1, Ordering::Relaxed);
                let h = &p.head[..p.len];
                let src = (h.len() >= 20 && h[0] >> 4 == 4)
                    .then(|| Ipv4Addr::new(h[12], h[13], h[14], h[15]))
                    .and_then(|ip| self.by_ip.get(&ip).copied());
                let Some(src) = src else {
                    let _ = q.accept(p.id);
                    continue;
                };
                let d = Duration::from_micros(self.delays[src * self.n + self.host].load(Ordering::Relaxed));
                // Never before an earlier packet of the same pair.
                let deadline = last[src].map_or(now + d, |l| l.max(now + d));
                last[src] = Some(deadline);
                *seq += 1;
                heap.push(Reverse(Held { deadline, seq: *seq, id: p.id }));
            }
        }
    }
}

/// A minimal NFQUEUE client (`nfnetlink_queue`) over nix's safe socket calls: bind a queue,
/// configure it, read packets (id and first bytes), accept them. The `nfq` crate hides its
/// socket, so its receive buffer could not be raised (bursts overflowed it) nor the socket
/// polled.
mod nfqueue {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, setsockopt, socket,
        sockopt,
    };
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    const NFNL_SUBSYS_QUEUE: u16 = 3;
    const NFQNL_MSG_PACKET: u16 = 0;
    const NFQNL_MSG_VERDICT: u16 = 1;
    const NFQNL_MSG_CONFIG: u16 = 2;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NFQA_PACKET_HDR: u16 = 1;
    const NFQA_VERDICT_HDR: u16 = 2;
    const NFQA_PAYLOAD: u16 = 10;
    const NFQA_CFG_CMD: u16 = 1;
    const NFQA_CFG_PARAMS: u16 = 2;
    const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
    const NFQA_CFG_MASK: u16 = 4;
    const NFQA_CFG_FLAGS: u16 = 5;
    const NFQNL_CFG_CMD_BIND: u8 = 1;
    const NFQNL_COPY_PACKET: u8 = 2;
    const NF_ACCEPT: u32 = 1;
    /// `NFQA_CFG_F_FAIL_OPEN`: accept rather than drop when the queue or socket is full.
    pub const F_FAIL_OPEN: u32 = 1;
    /// `NFQA_CFG_F_GSO`: queue GSO packets whole.
    pub const F_GSO: u32 = 4;
    /// Bytes kept of a packet's head.
    pub const HEAD: usize = 20;

    /// A queued packet: its id and its first bytes.
    pub struct Packet {
        pub id: u32,
        pub head: [u8; HEAD],
        pub len: usize,
    }

    pub struct Queue {
        fd: OwnedFd,
        num: u16,
        seq: u32,
        buf: Vec<u8>,
    }

    impl Queue {
        /// Binds queue `num` in the calling thread's network namespace: `copy` bytes of each
        /// packet, at most `maxlen` packets waiting, `flags` (`F_*`), `rcvbuf` bytes of socket.
        pub fn open(num: u16, copy: u16, maxlen: u32, flags: u32, rcvbuf: usize) -> io::Result<Self> {
            let fd = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                SockProtocol::NetlinkNetFilter,
            )?;
            bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf)?;
            let mut q = Queue { fd, num, seq: 0, buf: vec![0; 1 << 16] };
            // command, padding, protocol family (unused since Linux 3.8)
            q.request(&[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])])?;
            let mut params = (copy as u32).to_be_bytes().to_vec();
            params.push(NFQNL_COPY_PACKET);
            q.request(&[
                (NFQA_CFG_PARAMS, &params),
                (NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes()),
                (NFQA_CFG_MASK, &flags.to_be_bytes()),
                (NFQA_CFG_FLAGS, &flags.to_be_bytes()),
            ])?;
            Ok(q)
        }

        /// A netlink message of the queue subsystem for this queue.
        fn message(&mut self, ty: u16, flags: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
            self.seq = self.seq.wrapping_add(1);
            let mut m = Vec::with_capacity(64);
            m.extend_from_slice(&0u32.to_ne_bytes()); // length, below
            m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | ty).to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&self.seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
            m.extend_from_slice(&[0, 0]); // nfgenmsg: AF_UNSPEC, NFNETLINK_V0
            m.extend_from_slice(&self.num.to_be_bytes());
            for (t, data) in attrs {
                m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
                m.extend_from_slice(&t.to_ne_bytes());
                m.extend_from_slice(data);
                m.resize(m.len().next_multiple_of(4), 0);
            }
            let len = m.len() as u32;
            m[..4].copy_from_slice(&len.to_ne_bytes());
            m
        }

        /// Sends a configuration message and waits for its acknowledgement.
        fn request(&mut self, attrs: &[(u16, &[u8])]) -> io::Result<()> {
            let m = self.message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, attrs);
            send(self.fd.as_raw_fd(), &m, MsgFlags::empty())?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let len = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(len) => len,
                    Err(nix::errno::Errno::EAGAIN) => {
                        self.wait(Duration::from_millis(100));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                for (ty, seq, body) in Messages::new(&self.buf[..len]) {
                    if ty == NLMSG_ERROR && seq == self.seq && body.len() >= 4 {
                        let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                        return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
                    }
                }
            }
            Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from nfnetlink_queue"))
        }

        /// Reads one datagram into `out`; false when there was none. A kernel error message
        /// (a verdict for an unknown id, an overrun) is an error.
        pub fn recv(&mut self, out: &mut Vec<Packet>) -> io::Result<bool> {
            let len = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let mut error = None;
            for (ty, _, body) in Messages::new(&self.buf[..len]) {
                if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
                    let mut p = Packet { id: 0, head: [0; HEAD], len: 0 };
                    let mut has_id = false;
                    for (t, data) in Attrs(&body[4..]) {
                        if t == NFQA_PACKET_HDR && data.len() >= 4 {
                            p.id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                            has_id = true;
                        } else if t == NFQA_PAYLOAD {
                            p.len = data.len().min(HEAD);
                            p.head[..p.len].copy_from_slice(&data[..p.len]);
                        }
                    }
                    if has_id {
                        out.push(p);
                    }
                } else if ty == NLMSG_ERROR && body.len() >= 4 {
                    let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if errno != 0 {
                        error = Some(io::Error::from_raw_os_error(-errno));
                    }
                }
            }
            error.map_or(Ok(true), Err)
        }

        /// Lets packet `id` go on.
        pub fn accept(&mut self, id: u32) -> io::Result<()> {
            let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
            hdr.extend_from_slice(&id.to_be_bytes());
            let m = self.message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, &[(NFQA_VERDICT_HDR, &hdr)]);
            send(self.fd.as_raw_fd(), &m, MsgFlags::empty())?;
            Ok(())
        }

        /// Waits up to `timeout` for something to read.
        pub fn wait(&self, timeout: Duration) {
            use nix::poll::{PollFd, PollFlags, ppoll};
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let _ = ppoll(&mut fds, Some(nix::sys::time::TimeSpec::from_duration(timeout)), None);
        }
    }

    /// The netlink messages of a datagram: (type, sequence, body after the header).
    struct Messages<'a>(&'a [u8]);

    impl<'a> Messages<'a> {
        fn new(buf: &'a [u8]) -> Self {
            Messages(buf)
        }
    }

    impl<'a> Iterator for Messages<'a> {
        type Item = (u16, u32, &'a [u8]);
        fn next(&mut self) -> Option<Self::Item> {
            let b = self.0;
            if b.len() < 16 {
                return None;
            }
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len < 16 || len > b.len() {
                return None;
            }
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            self.0 = &b[len.next_multiple_of(4).min(b.len())..];
            Some((ty, seq, &b[16..len]))
        }
    }

    /// The attributes of a message body: (type without flags, data).
    struct Attrs<'a>(&'a [u8]);

    impl<'a> Iterator for Attrs<'a> {
        type Item = (u16, &'a [u8]);
        fn next(&mut self) -> Option<Self::Item> {
            let b = self.0;
            if b.len() < 4 {
                return None;
            }
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            if len < 4 || len > b.len() {
                return None;
            }
            let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
            self.0 = &b[len.next_multiple_of(4).min(b.len())..];
            Some((ty, &b[4..len]))
        }
    }
}

/// Bare hosts on one link, for tests: see the module documentation. Removed when dropped.
pub struct TestHosts {
    /// (namespace, address) of each host, as [`LatencyEmulator::start`] takes them.
    pub hosts: Vec<(String, Ipv4Addr)>,
    switch: String,
    names: Vec<String>,
}

impl TestHosts {
    pub fn new(n: usize) -> Result<Self> {
        ensure!((1..=250).contains(&n), "1 to 250 hosts");
        let k = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("oaklat{}-{k}", std::process::id());
        let switch = format!("{prefix}-sw");
        let mut me = TestHosts { hosts: Vec::new(), switch: switch.clone(), names: vec![switch.clone()] };
        let netns = |name: &str| -> Result<()> {
            oak_runtime::netns::remove(name).map_err(|e| anyhow!(e))?;
            oak_runtime::netns::create(name).map_err(|e| anyhow!(e))
        };
        netns(&switch)?;
        run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            me.names.push(name.clone());
            netns(&name)?;
            let (port, ip) = (format!("v{i}"), Ipv4Addr::new(10, 99, (k % 256) as u8, i as u8 + 1));
            run(&["ip", "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
            run(&["ip", "-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            run(&["ip", "-n", &name, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &name, "link", "set", "eth0", "up"])?;
            me.hosts.push((name, ip));
        }
        Ok(me)
    }

    pub fn netns(&self, i: usize) -> &str {
        &self.hosts[i].0
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].1
    }

    /// The namespace holding the bridge.
    pub fn switch(&self) -> &str {
        &self.switch
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = oak_runtime::netns::remove(name);
        }
    }
}

/// A UDP echo server in a namespace until dropped.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl UdpEcho {
    pub fn start(netns: &str, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let st = stop.clone();
        let thread = in_netns(netns, move || {
            let s = UdpSocket::bind(("0.0.0.0", port));
            let _ = tx.send(s.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let s = s?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((len, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..len], from);
                }
            }
            Ok(())
        });
        rx.recv_timeout(Duration::from_secs(5)).map_err(|_| anyhow!("echo did not start"))?.map_err(|e| anyhow!(e))?;
        Ok(UdpEcho { stop, thread: Some(thread) })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `count` UDP round trips from namespace `netns` to an echo at `to`, one at a time.
pub fn udp_rtts(netns: &str, to: SocketAddrV4, count: usize) -> Result<Vec<Duration>> {
    join(in_netns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut rtts = Vec::with_capacity(count);
        let mut buf = [0u8; 64];
        for k in 0..count as u64 {
            let t = Instant::now();
            s.send(&k.to_be_bytes())?;
            // A late answer to an earlier probe is skipped.
            loop {
                let len = s.recv(&mut buf).with_context(|| format!("no echo from {to}"))?;
                if buf[..len] == k.to_be_bytes() {
                    break;
                }
            }
            rtts.push(t.elapsed());
        }
        Ok(rtts)
    }))
}

/// A TCP server in a namespace that reads every connection to its end, until dropped.
pub struct TcpSink {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl TcpSink {
    pub fn start(netns: &str, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let (st, by) = (stop.clone(), bytes.clone());
        let thread = in_netns(netns, move || {
            let l = TcpListener::bind(("0.0.0.0", port));
            let _ = tx.send(l.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let l = l?;
            l.set_nonblocking(true)?;
            let mut buf = vec![0u8; 1 << 16];
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false)?;
                        c.set_read_timeout(Some(Duration::from_millis(200)))?;
                        loop {
                            match c.read(&mut buf) {
                                Ok(0) => break,
                                Ok(len) => {
                                    by.fetch_add(len as u64, Ordering::Relaxed);
                                }
                                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                                    if st.load(Ordering::Relaxed) {
                                        break;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            Ok(())
        });
        rx.recv_timeout(Duration::from_secs(5)).map_err(|_| anyhow!("sink did not start"))?.map_err(|e| anyhow!(e))?;
        Ok(TcpSink { stop, bytes, thread: Some(thread) })
    }

    /// Bytes received so far, over all connections.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `count` TCP handshakes from namespace `netns` to `to` (a [`TcpSink`]): the time `connect`
/// takes is one round trip (SYN, SYN-ACK).
pub fn tcp_connect_rtts(netns: &str, to: SocketAddrV4, count: usize) -> Result<Vec<Duration>> {
    join(in_netns(netns, move || {
        let mut rtts = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            let c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
                .with_context(|| format!("cannot connect to {to}"))?;
            rtts.push(t.elapsed());
            drop(c);
        }
        Ok(rtts)
    }))
}

/// Sends `bytes` over one TCP connection from namespace `netns` to `to`; returns how long
/// writing them and closing took.
pub fn tcp_send(netns: &str, to: SocketAddrV4, bytes: usize) -> Result<Duration> {
    join(in_netns(netns, move || {
        use std::io::Write;
        let t = Instant::now();
        let mut c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let len = left.min(chunk.len());
            c.write_all(&chunk[..len])?;
            left -= len;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        // The sink closes after reading everything: wait for it.
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        let _ = c.read(&mut [0u8; 1]);
        Ok(t.elapsed())
    }))
}

/// The median of some durations.
pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Milliseconds, for messages.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
