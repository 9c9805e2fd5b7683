//! The accept loop of the orchestrators' HTTP servers (the root's API, the cluster's worker
//! registration): hyper under our own loop, so that no client can hold the process's file
//! descriptors.
//!
//! - At most [`ConnLimits::max_connections`] connections are open at once, a bound below the
//!   open-file limit. A connection beyond it is still served: the one that has been silent
//!   the longest is closed for it, never one with a request in flight nor an upgraded
//!   connection (at the root, a cluster link, which its handler allows only with a cluster
//!   token). Only when every connection is busy is the newcomer closed.
//! - A request head must arrive within [`ConnLimits::header_timeout`] of the connection
//!   waiting for it (hyper's header read timeout: it also ends a kept-alive connection that
//!   stays silent between requests); a request body within [`ConnLimits::body_timeout`].
//! - A connection that moves no byte in either direction for [`ConnLimits::idle_timeout`]
//!   while no request is in flight is closed: this is what ends a silent upgraded
//!   connection, or one whose client stopped reading its response.
//! - A TLS handshake must finish within [`ConnLimits::handshake_timeout`].
//! - On shutdown the listener closes at once, kept-alive connections close when their
//!   request is answered, and whatever is still open after [`ConnLimits::shutdown_grace`]
//!   is closed.
//!
//! Every request carries the peer's address as [`axum::extract::ConnectInfo<SocketAddr>`].

use crate::ServerConfig;
use axum::extract::ConnectInfo;
use futures_util::task::AtomicWaker;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// File descriptors kept free for everything but client connections (the store, logs, the
/// runtime, connections being closed).
const FD_RESERVE: u64 = 128;
/// The most connections served at once, whatever the file limit.
const MAX_CONNECTIONS_CAP: u64 = 16_384;
/// How often a warning about the connection bound may be logged.
const WARN_EVERY_MS: u64 = 10_000;

/// Timeouts and the bound on open connections of an HTTP server.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// The most connections open at once; `None`: derived from the open-file limit
    /// (see [`ConnLimits::max_connections`]).
    pub max_connections: Option<usize>,
    /// A request head not complete this long after the connection began waiting for it
    /// ends the connection (slowly trickled headers, silent kept-alive connections).
    pub header_timeout: Duration,
    /// A request body not complete this long after its head fails the request.
    pub body_timeout: Duration,
    /// No byte in either direction this long, with no request in flight, ends the connection.
    pub idle_timeout: Duration,
    /// A TLS handshake not finished this long after the connection was accepted ends it.
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before their connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ConnLimits {
    /// The bound on open connections: the configured one, else the soft open-file limit less
    /// a reserve of 128 (at least half the limit), at most 16,384.
    pub fn max_connections(&self) -> usize {
        match self.max_connections {
            Some(n) => n.max(1),
            None => bound_for_file_limit(file_limit().ok().map(|(soft, _)| soft)),
        }
    }

    /// These limits with the overrides of the environment, as the root's hidden options of
    /// the same names: `OAK_MAX_CONNECTIONS`, `OAK_HEADER_TIMEOUT_MS`, `OAK_IDLE_TIMEOUT_MS`.
    /// A value that is not a number is ignored, with a warning.
    pub fn with_env(self) -> Self {
        self.with_vars(|name| std::env::var(name).ok())
    }

    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name: &str| {
            let value = var(name)?;
            match value.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    tracing::warn!(variable = name, value = %value, "ignoring a setting that is not a number");
                    None
                }
            }
        };
        if let Some(n) = number("OAK_MAX_CONNECTIONS") {
            self.max_connections = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(ms) = number("OAK_HEADER_TIMEOUT_MS") {
            self.header_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = number("OAK_IDLE_TIMEOUT_MS") {
            self.idle_timeout = Duration::from_millis(ms.max(1));
        }
        self
    }
}

fn bound_for_file_limit(soft: Option<u64>) -> usize {
    let bound = match soft {
        Some(soft) if soft != nix::sys::resource::RLIM_INFINITY => {
            soft.saturating_sub(FD_RESERVE).max(soft / 2).clamp(1, MAX_CONNECTIONS_CAP)
        }
        _ => MAX_CONNECTIONS_CAP,
    };
    usize::try_from(bound).unwrap_or(usize::MAX)
}

/// The soft and hard limits of open files of this process.
/// The address a throttle counts a peer under: an IPv6 host holds a whole /64, so that is
/// one address; an IPv4-mapped address is its IPv4 one.
pub fn throttle_source(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// This process's (soft, hard) limits of open files.
pub fn file_limit() -> io::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

/// Raises this process's soft limit of open files to its hard limit (an unlimited hard limit
/// to the kernel's `nr_open`) and returns the soft limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    let (soft, hard) = file_limit()?;
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft != RLIM_INFINITY && soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
    }
    Ok(file_limit()?.0)
}

/// Serves `app` on `listener` (over TLS with `tls`, see [`crate::server_config`]) under
/// `limits` until `shutdown` completes, then drains (see the module's documentation).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<ServerConfig>>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = tls.map(TlsAcceptor::from);
    let max = limits.max_connections();
    tracing::info!(
        max_connections = max,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "serving connections"
    );
    let table = Arc::new(Table::new());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // Connection tasks watch `stop`; each holds a receiver of `done`, so that `done_tx.closed()`
    // completes when the last one ends.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let sweeper = tokio::spawn(sweep(table.clone(), limits.idle_timeout));
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                accept_failed(&table, &e).await;
                continue;
            }
        };
        let Some(conn) = table.admit(max) else {
            if table.may_warn() {
                tracing::warn!(
                    peer = %peer,
                    max_connections = max,
                    "connection bound reached and every connection is busy: refused a connection"
                );
            }
            drop(tcp);
            continue;
        };
        let service = ConnService { app: app.clone(), peer, conn: conn.clone(), body_timeout: limits.body_timeout };
        let io = Tracked { inner: tcp, conn, table: table.clone() };
        tokio::spawn(connection(
            io,
            service,
            http.clone(),
            tls.clone(),
            limits.handshake_timeout,
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    if tokio::time::timeout(limits.shutdown_grace, done_tx.closed()).await.is_err() {
        tracing::info!(connections = done_tx.receiver_count(), "requests still in flight at shutdown: closing them");
    }
    table.kill_all();
    sweeper.abort();
    Ok(())
}

/// Out of file descriptors, the accept would fail at once again: close the longest-idle
/// connection and wait a little for it to go.
async fn accept_failed(table: &Table, e: &io::Error) {
    use nix::errno::Errno;
    let out_of_files = [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
        .iter()
        .any(|errno| e.raw_os_error() == Some(*errno as i32));
    if !out_of_files {
        use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
            // The peer gave up before it was accepted.
            tracing::debug!(error = %e, "cannot accept a connection");
        } else {
            if table.may_warn() {
                tracing::warn!(error = %e, "cannot accept a connection");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return;
    }
    let evicted = table.evict_one();
    if table.may_warn() {
        tracing::warn!(error = %e, evicted, "cannot accept a connection: out of file descriptors");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn connection(
    io: Tracked<TcpStream>,
    service: ConnService,
    http: hyper::server::conn::http1::Builder,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    match tls {
        None => drive(TokioIo::new(io), service, &http, &mut stop).await,
        Some(acceptor) => {
            let peer = service.peer;
            let stream = tokio::select! {
                s = crate::handshake::handshake(&acceptor, io, handshake_timeout, peer) => s,
                () = stopped(&mut stop) => return,
            };
            if let Some(stream) = stream {
                drive(TokioIo::new(stream), service, &http, &mut stop).await;
            }
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection; on `stop`, finishes the request in
/// flight and closes.
async fn drive<I>(
    io: I,
    service: ConnService,
    http: &hyper::server::conn::http1::Builder,
    stop: &mut watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = service.peer;
    let mut conn = pin!(http.serve_connection(io, service).with_upgrades());
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(peer = %peer, error = %e, "connection ended");
    }
}

/// Completes once the server stops.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Closes connections idle past `idle`, checking a few times per `idle`.
async fn sweep(table: Arc<Table>, idle: Duration) {
    let every = (idle / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let closed = table.close_idle(idle_ms);
        if closed > 0 {
            tracing::debug!(closed, "closed idle connections");
        }
    }
}

/// The open connections.
struct Table {
    start: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    last_warn_ms: AtomicU64,
}

/// One open connection, as its IO wrapper and its service see it.
struct Conn {
    id: u64,
    /// Milliseconds since [`Table::start`] when a byte last moved.
    last_active_ms: AtomicU64,
    in_flight: AtomicU32,
    /// Answered with 101 (at the root, a cluster link now).
    upgraded: AtomicBool,
    killed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

impl Conn {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// May be closed to make room for another: idle, and not upgraded.
    fn evictable(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.upgraded.load(Ordering::Relaxed)
    }
}

impl Table {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::default(),
            last_warn_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection, closing the longest-idle evictable one when `max` are open;
    /// `None` when all of them are busy.
    fn admit(&self, max: usize) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock();
        if conns.len() >= max {
            let victim =
                conns.values().filter(|c| c.evictable()).min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
            let id = victim?.id;
            if let Some(c) = conns.remove(&id) {
                c.kill();
            }
            if self.may_warn() {
                tracing::warn!(max_connections = max, "connection bound reached: closing the longest-idle connections");
            }
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            last_active_ms: AtomicU64::new(self.now_ms()),
            in_flight: AtomicU32::new(0),
            upgraded: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
        });
        conns.insert(conn.id, conn.clone());
        Some(conn)
    }

    /// Closes the longest-idle evictable connection; whether there was one.
    fn evict_one(&self) -> bool {
        let mut conns = self.conns.lock();
        let victim = conns.values().filter(|c| c.evictable()).min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
        let Some(id) = victim.map(|c| c.id) else { return false };
        if let Some(c) = conns.remove(&id) {
            c.kill();
        }
        true
    }

    /// Closes the connections with no request in flight that moved no byte for `idle_ms`.
    fn close_idle(&self, idle_ms: u64) -> usize {
        let now = self.now_ms();
        let mut closed = 0;
        self.conns.lock().retain(|_, c| {
            let idle = now.saturating_sub(c.last_active_ms.load(Ordering::Relaxed)) >= idle_ms;
            if idle && c.in_flight.load(Ordering::SeqCst) == 0 {
                c.kill();
                closed += 1;
                false
            } else {
                true
            }
        });
        closed
    }

    fn kill_all(&self) {
        for (_, c) in self.conns.lock().drain() {
            c.kill();
        }
    }

    fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// At most one warning every [`WARN_EVERY_MS`].
    fn may_warn(&self) -> bool {
        let now = self.now_ms().max(1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS)
            && self.last_warn_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// A connection's IO: notes when a byte moves, and fails once the connection is killed
/// (idle, evicted, or left over at shutdown). Leaves the table when dropped.
struct Tracked<T> {
    inner: T,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl<T> Tracked<T> {
    /// After a write: progress counts as activity; waiting registers for a kill.
    fn wrote(&mut self, r: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => self.pending(&self.conn.write_waker, cx),
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            r => r,
        }
    }

    fn touch(&self) {
        self.conn.last_active_ms.store(self.table.now_ms(), Ordering::Relaxed);
    }

    /// After the inner IO returned `Pending`: wake on a kill too, and fail if it came first.
    fn pending<R>(&self, waker: &AtomicWaker, cx: &Context<'_>) -> Poll<io::Result<R>> {
        waker.register(cx.waker());
        if self.conn.killed() { Poll::Ready(Err(closed())) } else { Poll::Pending }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection closed by the server (idle, or making room for another)")
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.table.remove(self.conn.id);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(closed()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.pending(&this.conn.read_waker, cx),
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            r => r,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(closed()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(closed()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(closed()));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending(&this.conn.write_waker, cx),
            r => r,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The service of one connection: the router, with the peer's address in every request,
/// its body under a deadline, and the request counted in flight until it is answered.
#[derive(Clone)]
struct ConnService {
    app: axum::Router,
    peer: SocketAddr,
    conn: Arc<Conn>,
    body_timeout: Duration,
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn enter(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::enter(self.conn.clone());
        let timeout = self.body_timeout;
        let mut req = req.map(|body| axum::body::Body::new(TimedBody { inner: body, timeout, deadline: None }));
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(async move {
            let response = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                in_flight.0.upgraded.store(true, Ordering::Relaxed);
            }
            drop(in_flight);
            Ok(response)
        })
    }
}

/// A request body that fails once it has waited `timeout` for the rest of its bytes.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs_f64()
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_stays_below_the_file_limit() {
        assert_eq!(bound_for_file_limit(Some(1024)), 896);
        assert_eq!(bound_for_file_limit(Some(256)), 128);
        assert_eq!(bound_for_file_limit(Some(100)), 50);
        assert_eq!(bound_for_file_limit(Some(1 << 20)), 16_384);
        assert_eq!(bound_for_file_limit(Some(nix::sys::resource::RLIM_INFINITY)), 16_384);
        assert_eq!(bound_for_file_limit(None), 16_384);
    }

    #[test]
    fn the_environment_overrides_the_limits() {
        let vars = |name: &str| match name {
            "OAK_MAX_CONNECTIONS" => Some("7".to_owned()),
            "OAK_HEADER_TIMEOUT_MS" => Some(" 2000 ".to_owned()),
            "OAK_IDLE_TIMEOUT_MS" => Some("soon".to_owned()),
            _ => None,
        };
        let limits = ConnLimits::default().with_vars(vars);
        assert_eq!(limits.max_connections(), 7);
        assert_eq!(limits.header_timeout, Duration::from_millis(2000));
        assert_eq!(limits.idle_timeout, ConnLimits::default().idle_timeout, "not a number: ignored");
        let limits = ConnLimits { max_connections: Some(3), ..ConnLimits::default() }.with_vars(|_| None);
        assert_eq!(limits.max_connections(), 3);
        assert_eq!(limits.header_timeout, ConnLimits::default().header_timeout);
    }

    fn conn(table: &Table, max: usize) -> Arc<Conn> {
        table.admit(max).expect("admitted")
    }

    #[test]
    fn a_full_table_closes_the_longest_idle_connection_that_is_not_busy() {
        let table = Table::new();
        let a = conn(&table, 3);
        let b = conn(&table, 3);
        let c = conn(&table, 3);
        a.last_active_ms.store(10, Ordering::Relaxed);
        b.last_active_ms.store(5, Ordering::Relaxed);
        c.last_active_ms.store(1, Ordering::Relaxed);
        // c is the oldest but busy, b the oldest idle one.
        c.in_flight.store(1, Ordering::SeqCst);
        let d = conn(&table, 3);
        assert!(b.killed() && !a.killed() && !c.killed() && !d.killed());
        // An upgraded connection (a cluster link) is not closed for a newcomer either.
        a.upgraded.store(true, Ordering::Relaxed);
        d.in_flight.store(1, Ordering::SeqCst);
        assert!(table.admit(3).is_none(), "every connection is busy: the newcomer is refused");
        assert_eq!(table.conns.lock().len(), 3);
    }

    #[test]
    fn idle_connections_close_unless_a_request_is_in_flight() {
        let table = Table::new();
        let a = conn(&table, 10);
        let b = conn(&table, 10);
        b.in_flight.store(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(table.close_idle(10), 1);
        assert!(a.killed() && !b.killed());
        assert_eq!(table.close_idle(10_000), 0);
    }

    /// Serves `app` on a loopback port with `limits`; the address, the shutdown trigger and
    /// the server task.
    async fn server(
        app: axum::Router,
        limits: ConnLimits,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, None, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    /// Sends `request` and reads until the server closes the connection.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, SocketAddr) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let local = conn.local_addr().expect("local addr");
        conn.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await.expect("closed");
        (String::from_utf8_lossy(&out).into_owned(), local)
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address_and_shutdown_lets_a_request_finish() {
        use axum::routing::{get, post};
        let app = axum::Router::new()
            .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route("/echo", post(|body: String| async move { body }));
        let limits = ConnLimits { body_timeout: Duration::from_millis(200), ..ConnLimits::default() };
        let (addr, stop, task) = server(app, limits).await;

        let (response, local) = exchange(addr, b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with(&local.to_string()), "{response}");

        // A body that stops short fails the request once the body timeout passes.
        let started = Instant::now();
        let (response, _) = exchange(addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab").await;
        assert!(response.starts_with("HTTP/1.1 4"), "{response}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");

        // A request in flight when the server stops is still answered; then the server ends.
        let slow = tokio::spawn(exchange(addr, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).expect("stop");
        let (response, _) = slow.await.expect("joined");
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("done"), "{response}");
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stopped").expect("joined").expect("served");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    }

    #[tokio::test]
    async fn a_killed_connection_fails_its_pending_read() {
        use tokio::io::AsyncReadExt;
        let table = Arc::new(Table::new());
        let c = conn(&table, 10);
        let (client, server) = tokio::io::duplex(64);
        let mut io = Tracked { inner: server, conn: c.clone(), table: table.clone() };
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.kill();
        let r = tokio::time::timeout(Duration::from_secs(5), read).await.expect("woken").expect("joined");
        assert_eq!(r.expect_err("killed").kind(), io::ErrorKind::TimedOut);
        drop(client);
        assert!(table.conns.lock().is_empty(), "a dropped connection leaves the table");
    }
}
