//! The few system calls the data plane needs that std does not offer: opening a TUN device
//! and moving several UDP datagrams per call (`sendmmsg`/`recvmmsg`).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A layer-3 TUN device without packet information, opened non-blocking. It exists as long
/// as this value lives.
pub struct Tun {
    fd: OwnedFd,
    name: String,
    offload: bool,
}

impl Tun {
    /// With `offload`, every packet read or written carries a `virtio_net_hdr` in front
    /// ([`crate::offload::VnetHdr`]) and the kernel may pass TCP super-packets (TSO).
    pub fn open(name: &str, offload: bool) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        // SAFETY: a NUL-terminated path literal; the returned descriptor is checked.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let flags = IFF_TUN | IFF_NO_PI | if offload { IFF_VNET_HDR } else { 0 };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if offload && unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, name: name.to_owned(), offload })
    }

    /// True when packets carry a `virtio_net_hdr`.
    pub fn offload(&self) -> bool {
        self.offload
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes one packet.
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        // SAFETY: reads `pkt.len()` bytes from `pkt`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes one packet given in parts (`writev`).
    pub fn write_parts(&self, parts: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the kernel only reads them.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), parts.len() as libc::c_int) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Waits until a packet can be read, at most `timeout_ms`. True when one can.
    pub fn wait_readable(&self, timeout_ms: i32) -> bool {
        poll_in(self.fd.as_raw_fd(), timeout_ms)
    }
}

fn poll_in(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r > 0 && p.revents & libc::POLLIN != 0
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// Up to [`capacity`](Self::capacity) datagrams sent with one `sendmmsg`, buffers and headers
/// allocated once.
///
/// Sound by construction: the fields are private, a datagram enters only through
/// [`push`](Self::push), which copies it into a buffer it fits in, and `prepare`, the one place
/// that builds the iovecs the kernel reads, takes each iovec from a bounds-checked slice of its
/// buffer. No sequence of safe calls can make the kernel read outside a buffer.
///
/// ```compile_fail
/// let mut b = oak_net::sys::Batch::new(1, 8);
/// b.lens[0] = 1 << 20; // private: lengths are set only by `push`
/// ```
pub struct Batch {
    /// Every buffer is `buf_size` bytes long, for the batch's whole life.
    bufs: Vec<Vec<u8>>,
    /// `lens[i] <= bufs[i].len()` for every queued datagram (`i < queued`).
    lens: Vec<usize>,
    addrs: Vec<SocketAddrV4>,
    /// Datagrams `0..queued` wait to be sent.
    queued: usize,
    raw_addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` only ever point into this value's own
// buffers and are rebuilt before every call; the value is used by one thread at a time.
unsafe impl Send for Batch {}

impl Batch {
    /// Room for `cap` datagrams of at most `buf_size` bytes each.
    pub fn new(cap: usize, buf_size: usize) -> Self {
        let zero_addr = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Self {
            bufs: vec![vec![0; buf_size]; cap],
            lens: vec![0; cap],
            addrs: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); cap],
            queued: 0,
            raw_addrs: vec![zero_addr; cap],
            iovs: (0..cap).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
            hdrs: (0..cap).map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() }).collect(),
        }
    }

    /// How many datagrams fit.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The largest datagram [`push`](Self::push) takes.
    pub fn buf_size(&self) -> usize {
        self.bufs.first().map_or(0, Vec::len)
    }

    /// How many datagrams are queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn is_full(&self) -> bool {
        self.queued == self.capacity()
    }

    /// Queues a copy of `data` for `to`. False, and nothing queued, when the batch is full or
    /// `data` is longer than [`buf_size`](Self::buf_size).
    #[must_use]
    pub fn push(&mut self, data: &[u8], to: SocketAddrV4) -> bool {
        let i = self.queued;
        let Some(buf) = self.bufs.get_mut(i) else { return false };
        let Some(dst) = buf.get_mut(..data.len()) else { return false };
        dst.copy_from_slice(data);
        self.lens[i] = data.len();
        self.addrs[i] = to;
        self.queued += 1;
        true
    }

    /// Queues a datagram that `fill` writes in place (e.g. encrypts straight into the buffer):
    /// `fill` gets the next free buffer and returns the length it wrote and where the datagram
    /// goes. False, and nothing queued, when the batch is full, `fill` returns `None`, or the
    /// length it returns exceeds the buffer.
    #[must_use]
    pub fn push_with(&mut self, fill: impl FnOnce(&mut [u8]) -> Option<(usize, SocketAddrV4)>) -> bool {
        let i = self.queued;
        let Some(buf) = self.bufs.get_mut(i) else { return false };
        let room = buf.len();
        let Some((len, to)) = fill(buf) else { return false };
        if len > room {
            return false;
        }
        self.lens[i] = len;
        self.addrs[i] = to;
        self.queued += 1;
        true
    }

    /// Forgets the queued datagrams.
    pub fn clear(&mut self) {
        self.queued = 0;
    }

    /// Builds the headers of the queued datagrams. The only place iovecs are made: each is
    /// taken from a slice of its buffer, so its length never exceeds the buffer's.
    fn prepare(&mut self) {
        for i in 0..self.queued {
            let data = &mut self.bufs[i][..self.lens[i]];
            self.iovs[i] = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
            self.raw_addrs[i] = sockaddr(self.addrs[i]);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.raw_addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Sends the queued datagrams, in order, and empties the batch. Returns how many went;
    /// a datagram the kernel refuses is skipped, not retried.
    pub fn send(&mut self, sock: &UdpSocket) -> usize {
        let n = self.queued;
        self.prepare();
        let (mut done, mut sent) = (0, 0);
        while done < n {
            // Bounds-checked: the headers prepared just above, and only those.
            let hdrs = &mut self.hdrs[done..n];
            // SAFETY: `hdrs` are the headers `prepare` built; each points at its address and at
            // one iovec within its own live buffer. `self` is borrowed mutably throughout.
            let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
            if r > 0 {
                let r = (r as usize).min(n - done);
                done += r;
                sent += r;
                continue;
            }
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // E.g. no route, or a full buffer (or, never, nothing sent): skip this one datagram.
            done += 1;
        }
        self.queued = 0;
        sent
    }
}

/// Sets the socket's receive and send buffers to `bytes` each, beyond the `rmem_max` and
/// `wmem_max` limits when allowed (root). Bursts of 64 KB datagrams overflow the default
/// 208 KB at once, and every overflow drops a whole burst of inner segments.
pub fn set_buffers(sock: &UdpSocket, bytes: usize) -> bool {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    let set = |opt: libc::c_int| {
        // SAFETY: a valid int option.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    let rcv = set(libc::SO_RCVBUFFORCE) || set(libc::SO_RCVBUF);
    let snd = set(libc::SO_SNDBUFFORCE) || set(libc::SO_SNDBUF);
    rcv && snd
}

/// Asks the kernel to coalesce received datagrams (UDP GRO). False when it cannot.
pub fn enable_udp_gro(sock: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Sends datagrams given as `parts` (consecutive iovecs; every datagram is `seg` bytes but
/// the last of each call, which may be shorter) to `to` with UDP segmentation offload. The
/// caller groups them: `calls` holds, per call, the range of `parts` and its byte count.
pub fn send_gso(
    sock: &UdpSocket,
    to: SocketAddrV4,
    parts: &[std::io::IoSlice<'_>],
    seg: usize,
    calls: &[(usize, usize, usize)],
) -> io::Result<()> {
    let mut addr = sockaddr(to);
    for &(from, until, bytes) in calls {
        let iov = &parts[from..until];
        // One cmsg with a u16; CMSG_SPACE(2) is at most 24 bytes.
        let mut ctrl = [0u64; 4];
        // SAFETY: msghdr is plain old data; the pointers below stay valid for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        if bytes > seg {
            // SAFETY: CMSG_SPACE of a u16 fits in `ctrl` (32 bytes).
            let space = unsafe { libc::CMSG_SPACE(2) } as usize;
            msg.msg_control = ctrl.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed bytes; CMSG_FIRSTHDR is non-null.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
            }
        }
        loop {
            // SAFETY: `msg` is fully initialised; IoSlice is ABI-compatible with iovec.
            let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Receives up to `cap` (possibly coalesced) datagrams per call; for each, the size of the
/// datagrams it holds (equal to its length when not coalesced). Like [`Batch`], its fields are
/// private: the iovecs are built from the buffers themselves, and a received datagram is only
/// handed out as a slice of its buffer.
pub struct GroBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    segs: Vec<usize>,
    /// Datagrams `0..received` hold what the last [`recv`](Self::recv) got.
    received: usize,
    ctrl: Vec<[u64; 8]>,
    raw_addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Offset in each buffer where data starts (room for a header in front).
    headroom: usize,
}

// SAFETY: as for `Batch`: the raw pointers only point into this value's own buffers.
unsafe impl Send for GroBatch {}

impl GroBatch {
    pub fn new(cap: usize, buf_size: usize, headroom: usize) -> Self {
        let zero_addr = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Self {
            bufs: vec![vec![0; headroom + buf_size]; cap],
            lens: vec![0; cap],
            segs: vec![0; cap],
            received: 0,
            ctrl: vec![[0; 8]; cap],
            raw_addrs: vec![zero_addr; cap],
            iovs: (0..cap).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
            hdrs: (0..cap).map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() }).collect(),
            headroom,
        }
    }

    /// Waits at most the socket's read timeout for the first datagram; returns the count.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.received = 0;
        let cap = self.bufs.len();
        for i in 0..cap {
            // The iovec is the buffer past the headroom, from a bounds-checked slice.
            let room = &mut self.bufs[i][self.headroom..];
            self.iovs[i] = libc::iovec { iov_base: room.as_mut_ptr().cast(), iov_len: room.len() };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.raw_addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into this batch's live buffers, `cap` of them.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = (r as usize).min(cap);
        for i in 0..n {
            // Never more than the room offered (the kernel truncates a larger datagram).
            let len = (self.hdrs[i].msg_len as usize).min(self.iovs[i].iov_len);
            self.lens[i] = len;
            self.segs[i] = len;
            let h = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let seg = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        if seg > 0 {
                            self.segs[i] = seg as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        self.received = n;
        Ok(n)
    }

    /// The source address of datagram `i` of the last [`recv`](Self::recv).
    pub fn source(&self, i: usize) -> Option<SocketAddrV4> {
        if i >= self.received {
            return None;
        }
        let a = &self.raw_addrs[i];
        if a.sin_family != libc::AF_INET as libc::sa_family_t {
            return None;
        }
        Some(SocketAddrV4::new(Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()), u16::from_be(a.sin_port)))
    }

    /// Datagram `i` of the last [`recv`](Self::recv) (with the headroom in front) and the size
    /// of the datagrams coalesced in it; `None` past what was received.
    pub fn datagram_mut(&mut self, i: usize) -> Option<(&mut [u8], usize)> {
        if i >= self.received {
            return None;
        }
        let end = self.headroom + self.lens[i];
        Some((&mut self.bufs[i][..end], self.segs[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn v4(a: SocketAddr) -> SocketAddrV4 {
        match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    fn receiver() -> (UdpSocket, SocketAddrV4) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        assert!(enable_udp_gro(&rx), "this kernel has UDP GRO");
        assert!(set_buffers(&rx, 4 << 20));
        let to = v4(rx.local_addr().unwrap());
        (rx, to)
    }

    /// Everything received within the timeout: (datagram sizes, bytes).
    fn drain(rx: &UdpSocket) -> Vec<(usize, Vec<u8>)> {
        let mut inb = GroBatch::new(4, 65535, 0);
        let mut got = Vec::new();
        loop {
            let n = inb.recv(rx).unwrap();
            if n == 0 {
                return got;
            }
            for i in 0..n {
                let (b, seg) = inb.datagram_mut(i).unwrap();
                got.push((seg, b.to_vec()));
            }
            assert!(inb.datagram_mut(n).is_none(), "nothing past what was received");
        }
    }

    #[test]
    fn batches_send_many_datagrams_per_call() {
        let (rx, to) = receiver();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = Batch::new(8, 64);
        for i in 0..8 {
            let mut d = vec![0; 1 + i];
            d[0] = i as u8;
            assert!(out.push(&d, to));
        }
        assert!(out.is_full());
        assert_eq!(out.send(&tx), 8);
        assert!(out.is_empty(), "sending empties the batch");
        // Different sizes: the kernel does not coalesce them.
        let got: Vec<(u8, usize)> = drain(&rx)
            .into_iter()
            .map(|(seg, b)| {
                assert_eq!(seg, b.len());
                (b[0], b.len())
            })
            .collect();
        assert_eq!(got, (0..8).map(|i| (i as u8, 1 + i as usize)).collect::<Vec<_>>());
    }

    #[test]
    fn datagrams_written_in_place_are_sent_and_their_source_is_known() {
        let (rx, to) = receiver();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = v4(tx.local_addr().unwrap());
        let mut out = Batch::new(3, 8);
        assert!(out.push_with(|b| {
            b[..3].copy_from_slice(b"abc");
            Some((3, to))
        }));
        assert!(!out.push_with(|_| None), "the writer declined");
        assert!(!out.push_with(|_| Some((9, to))), "longer than the buffer");
        assert!(out.push_with(|b| Some((b.len(), to))), "a full buffer fits");
        assert_eq!(out.len(), 2);
        assert_iovecs_within_buffers(&mut out);
        assert_eq!(out.send(&tx), 2);
        let mut inb = GroBatch::new(4, 64, 0);
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = inb.recv(&rx).unwrap();
            assert!(n > 0, "both datagrams arrive");
            for i in 0..n {
                assert_eq!(inb.source(i), Some(from));
                got.push(inb.datagram_mut(i).unwrap().0.to_vec());
            }
            assert_eq!(inb.source(n), None, "nothing past what was received");
        }
        assert_eq!(got, vec![b"abc".to_vec(), vec![0; 8]]);
    }

    #[test]
    fn segmentation_offload_round_trips_through_the_kernel() {
        let (rx, to) = receiver();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // 100 datagrams of 1000 bytes and a last one of 10, in parts of unequal sizes.
        let data: Vec<u8> = (0..100_010u32).map(|i| (i % 251) as u8).collect();
        let parts: Vec<std::io::IoSlice<'_>> = data.chunks(700).map(std::io::IoSlice::new).collect();
        // Calls of 70 parts: 49 000 bytes, 49 whole datagrams each (the last call: the rest).
        let mut calls = Vec::new();
        let mut from = 0;
        while from < parts.len() {
            let until = (from + 70).min(parts.len());
            let bytes = parts[from..until].iter().map(|p| p.len()).sum();
            calls.push((from, until, bytes));
            from = until;
        }
        send_gso(&tx, to, &parts, 1000, &calls).unwrap();
        let got = drain(&rx);
        let joined: Vec<u8> = got.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(joined, data, "all bytes, in order");
        assert!(got.iter().any(|(seg, b)| *seg == 1000 && b.len() > 1000), "GRO coalesced some datagrams");
    }

    /// The invariant the kernel relies on: each prepared header points at one iovec that
    /// lies within its own buffer, and only queued datagrams are prepared.
    fn assert_iovecs_within_buffers(b: &mut Batch) {
        b.prepare();
        assert!(b.queued <= b.capacity());
        for i in 0..b.queued {
            let (buf, iov, h) = (&b.bufs[i], &b.iovs[i], &b.hdrs[i].msg_hdr);
            assert_eq!(buf.len(), b.buf_size(), "buffers never change size");
            assert!(iov.iov_len <= buf.len(), "iovec {i} of {} bytes over a {}-byte buffer", iov.iov_len, buf.len());
            assert_eq!(iov.iov_base.cast_const(), buf.as_ptr().cast(), "iovec {i} starts its buffer");
            assert_eq!(iov.iov_len, b.lens[i]);
            assert_eq!(h.msg_iov.cast_const(), std::ptr::from_ref(iov), "header {i} uses its own iovec");
            assert_eq!(h.msg_iovlen, 1);
        }
    }

    #[test]
    fn a_datagram_larger_than_its_buffer_is_refused() {
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let mut b = Batch::new(2, 16);
        assert!(!b.push(&[7; 17], to), "one byte too many");
        assert!(b.is_empty(), "a refused datagram leaves nothing queued");
        assert!(b.push(&[7; 16], to));
        assert!(b.push(&[], to), "an empty datagram fits");
        assert!(!b.push(&[1], to), "full");
        assert_eq!(b.len(), 2);
        assert_iovecs_within_buffers(&mut b);
        b.clear();
        assert!(b.is_empty());
        assert_iovecs_within_buffers(&mut b);
        // A batch without room takes nothing.
        let mut none = Batch::new(0, 16);
        assert!(!none.push(&[1], to));
        let mut tiny = Batch::new(4, 0);
        assert!(!tiny.push(&[1], to));
        assert!(tiny.push(&[], to));
        assert_iovecs_within_buffers(&mut tiny);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(usize),
        Clear,
        Send,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![6 => (0usize..300).prop_map(Op::Push), 1 => Just(Op::Clear), 1 => Just(Op::Send)]
    }

    proptest::proptest! {
        /// Whatever safe calls are made, in whatever order, no iovec reaches past its buffer,
        /// and what is sent is exactly what was pushed and accepted.
        #[test]
        fn no_call_sequence_builds_an_iovec_past_its_buffer(
            cap in 0usize..6,
            buf_size in 0usize..200,
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let to = v4(rx.local_addr().unwrap());
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut b = Batch::new(cap, buf_size);
            let mut model: Vec<Vec<u8>> = Vec::new();
            let mut tag = 0u8;
            for op in ops {
                match op {
                    Op::Push(len) => {
                        tag = tag.wrapping_add(1);
                        let data = vec![tag; len];
                        let fits = len <= buf_size && model.len() < cap;
                        proptest::prop_assert_eq!(b.push(&data, to), fits);
                        if fits {
                            model.push(data);
                        }
                    }
                    Op::Clear => {
                        b.clear();
                        model.clear();
                    }
                    Op::Send => {
                        proptest::prop_assert_eq!(b.send(&tx), model.len());
                        let mut buf = [0u8; 512];
                        for want in model.drain(..) {
                            let n = rx.recv(&mut buf).unwrap();
                            proptest::prop_assert_eq!(&buf[..n], &want[..]);
                        }
                    }
                }
                proptest::prop_assert_eq!(b.len(), model.len());
                assert_iovecs_within_buffers(&mut b);
            }
        }
    }
}
