//! The two packet pipelines of a worker, each on its own thread:
//!
//! - egress: TUN → [`Proxy::egress`] → `sendmmsg` on the tunnel socket (hairpin: back into
//!   the TUN). The TUN is drained until empty (up to a batch) before one `sendmmsg`.
//! - ingress: `recvmmsg` on the tunnel socket → [`Proxy::ingress`] → TUN.
//!
//! Buffers are allocated once per thread; the per-packet path allocates nothing, except for
//! a packet that must wait for a table (it is copied into the wait queue).

use crate::proxy::{Proxy, Verdict};
use crate::sys::{Batch, Tun};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
/// Larger than any packet the MTU lets through; a read that fills it was truncated.
const BUF: usize = 2048;

pub struct Dataplane {
    proxy: Arc<Proxy>,
    tun: Arc<Tun>,
    sock: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    pub fn start(proxy: Arc<Proxy>, tun: Tun, sock: UdpSocket) -> std::io::Result<Self> {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tun, sock) = (Arc::new(tun), Arc::new(sock));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (proxy, tun, sock, stop) = (proxy.clone(), tun.clone(), sock.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("oak-egress".into())
                    .spawn(move || egress_loop(&proxy, &tun, &sock, &stop))?,
            );
        }
        {
            let (proxy, tun, sock, stop) = (proxy.clone(), tun.clone(), sock.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("oak-ingress".into())
                    .spawn(move || ingress_loop(&proxy, &tun, &sock, &stop))?,
            );
        }
        Ok(Self { proxy, tun, sock, stop, threads })
    }

    /// Sends packets that waited for a table (see [`Proxy::set_tables`]).
    pub fn retry(&self, packets: Vec<Vec<u8>>) {
        let now = Instant::now();
        for mut p in packets {
            match self.proxy.egress(&mut p, now) {
                Verdict::Send(to) => {
                    let _ = self.sock.send_to(&p, to);
                }
                Verdict::Local => {
                    if self.proxy.ingress(&mut p) {
                        let _ = self.tun.write(&p);
                    }
                }
                Verdict::Pending | Verdict::Drop(_) => {}
            }
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn egress_loop(proxy: &Proxy, tun: &Tun, sock: &UdpSocket, stop: &AtomicBool) {
    let mut out = Batch::new(BATCH, BUF);
    while !stop.load(Ordering::Relaxed) {
        if !tun.wait_readable(200) {
            continue;
        }
        let now = Instant::now();
        let mut n = 0;
        let mut reads = 0;
        while reads < BATCH {
            reads += 1;
            let len = match tun.read(&mut out.bufs[n]) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the TUN device; the overlay stops sending");
                    return;
                }
            };
            if len == 0 || len >= BUF {
                continue;
            }
            match proxy.egress(&mut out.bufs[n][..len], now) {
                Verdict::Send(to) => {
                    out.lens[n] = len;
                    out.addrs[n] = to;
                    n += 1;
                }
                Verdict::Local => {
                    if proxy.ingress(&mut out.bufs[n][..len]) {
                        let _ = tun.write(&out.bufs[n][..len]);
                    }
                }
                Verdict::Pending | Verdict::Drop(_) => {}
            }
        }
        if n > 0 {
            out.send(sock, n);
        }
    }
}

fn ingress_loop(proxy: &Proxy, tun: &Tun, sock: &UdpSocket, stop: &AtomicBool) {
    let mut inb = Batch::new(BATCH, BUF);
    while !stop.load(Ordering::Relaxed) {
        let n = match inb.recv(sock) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel receive failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        for i in 0..n {
            let len = inb.lens[i];
            if len == 0 || len >= BUF {
                continue;
            }
            let pkt = &mut inb.bufs[i][..len];
            if proxy.ingress(pkt) {
                let _ = tun.write(pkt);
            }
        }
    }
}
