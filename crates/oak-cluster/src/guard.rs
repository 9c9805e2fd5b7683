//! Topic authorization in front of the embedded broker (rumqttd has no hook for it): every
//! worker connection passes through this guard, which reads the MQTT 3.1.1 packets the
//! worker sends and lets through only what stays under its own `nodes/<id>/` (its will, its
//! publishes, its subscriptions). A refused subscription is answered with a failure code and
//! not forwarded; a refused publish or will closes the connection. Both are logged. What the
//! broker sends back is copied unchanged.
//!
//! The worker's identity is the user name it logs in with, which the broker then checks
//! against that worker's credentials.

use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest packet a logged-in worker may send: a report of the most instances a worker
/// may list (10,000, about 2 MB) or a 1 MiB log chunk with its JSON escapes fit.
pub const MAX_PACKET: usize = 4 * 1024 * 1024;
/// The largest packet before a login is accepted: a CONNECT (client id, will, user name,
/// password) is well under this. A stranger holds at most this much of the cluster's memory.
pub const MAX_CONNECT: usize = 4 * 1024;
/// A connection that has not been logged in by the broker within this is closed.
pub const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most connections at once (the broker's limit), and most of them not yet logged in.
pub const MAX_CONNECTIONS: usize = 10_000;
pub const MAX_PENDING_LOGINS: usize = 1_024;

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;

/// What the guard decides about one packet from a worker.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Send this packet to the broker instead (a CONNECT with the relay password).
    Replace(Vec<u8>),
    /// A SUBSCRIBE outside the worker's topics: answer with this SUBACK, do not forward.
    Refuse(Vec<u8>),
    /// Close the connection; the reason is logged.
    Close(String),
}

fn string(b: &[u8], at: &mut usize) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*b.get(*at)?, *b.get(*at + 1)?]));
    let s = b.get(*at + 2..*at + 2 + len)?;
    *at += 2 + len;
    String::from_utf8(s.to_vec()).ok()
}

/// The length of a packet's fixed header and its body, once `b` holds its fixed header.
/// `Err` for a malformed length or a packet over `limit`.
pub fn frame(b: &[u8], limit: usize) -> Result<Option<(usize, usize)>, String> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = b.get(1 + i) else { return Ok(None) };
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if len > limit {
                return Err(format!("a packet of {len} bytes is over the limit of {limit}"));
            }
            return Ok(Some((2 + i, len)));
        }
    }
    Err("a malformed packet length".into())
}

fn allowed(topic: &str, node: &str) -> bool {
    topic.strip_prefix("nodes/").and_then(|r| r.strip_prefix(node)).is_some_and(|r| r.starts_with('/'))
        && !node.is_empty()
}

/// What the guard needs of a CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub user: String,
    pub password: String,
    /// Where the user name field starts in the body: what follows it is the password.
    pub user_at: usize,
}

/// The same CONNECT with `password` in place of the worker's own: what the guard sends the
/// broker (the password is the last field of a 3.1.1 CONNECT).
pub fn with_password(body: &[u8], c: &Connect, password: &str) -> Vec<u8> {
    let user_end = c.user_at + 2 + c.user.len();
    let mut new_body = body[..user_end].to_vec();
    new_body.extend_from_slice(&(password.len() as u16).to_be_bytes());
    new_body.extend_from_slice(password.as_bytes());
    let mut packet = vec![CONNECT << 4];
    push_length(&mut packet, new_body.len());
    packet.extend(new_body);
    packet
}

/// Appends `len` as an MQTT remaining length (a variable-length integer).
fn push_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
}

/// Parses a CONNECT `body` (without its fixed header) and checks its will topic.
pub fn parse_connect(body: &[u8]) -> Result<Connect, String> {
    let mut at = 0;
    let proto = string(body, &mut at).ok_or("a malformed CONNECT")?;
    let level = *body.get(at).ok_or("a malformed CONNECT")?;
    if proto != "MQTT" || level != 4 {
        return Err(format!("only MQTT 3.1.1 is accepted (got {proto:?} level {level})"));
    }
    let flags = *body.get(at + 1).ok_or("a malformed CONNECT")?;
    at += 4;
    let client_id = string(body, &mut at).ok_or("a malformed CONNECT client id")?;
    let will = if flags & 0x04 != 0 {
        let topic = string(body, &mut at).ok_or("a malformed CONNECT will")?;
        let _msg = string(body, &mut at);
        Some(topic)
    } else {
        None
    };
    if flags & 0x80 == 0 || flags & 0x40 == 0 {
        return Err("a CONNECT without a user name and password".into());
    }
    let user_at = at;
    let user = string(body, &mut at).ok_or("a malformed CONNECT user name")?;
    let password = string(body, &mut at).ok_or("a malformed CONNECT password")?;
    if at != body.len() {
        return Err("a CONNECT with bytes after its password".into());
    }
    // Only a worker's id (a UUID the cluster issued) logs in from outside: never the
    // cluster's own client, whatever password is offered.
    if !oak_api::node::valid_node_id(&user) {
        return Err(format!("{:?} is not a worker's user name", user.chars().take(64).collect::<String>()));
    }
    if let Some(w) = will
        && !allowed(&w, &user)
    {
        return Err(format!("worker {user} may not leave a will on {w}"));
    }
    Ok(Connect { client_id, user, password, user_at })
}

/// Decides about a packet (`first` its first byte, `body` the rest after the fixed header)
/// that `node` sends.
pub fn check(node: &str, first: u8, body: &[u8]) -> Verdict {
    match first >> 4 {
        CONNECT => Verdict::Close("a second CONNECT".into()),
        PUBLISH => {
            let mut at = 0;
            match string(body, &mut at) {
                Some(t) if allowed(&t, node) => Verdict::Forward,
                Some(t) => Verdict::Close(format!("worker {node} may not publish to {t}")),
                None => Verdict::Close("a malformed PUBLISH".into()),
            }
        }
        SUBSCRIBE => {
            let Some(id) = body.get(..2) else { return Verdict::Close("a malformed SUBSCRIBE".into()) };
            let mut at = 2;
            let mut codes = Vec::new();
            let mut all_ok = true;
            while at < body.len() {
                let Some(filter) = string(body, &mut at) else {
                    return Verdict::Close("a malformed SUBSCRIBE".into());
                };
                let Some(&qos) = body.get(at) else { return Verdict::Close("a malformed SUBSCRIBE".into()) };
                at += 1;
                let ok = allowed(&filter, node);
                all_ok &= ok;
                if !ok {
                    tracing::warn!(node, filter = %filter, "refused a subscription outside the worker's topics");
                }
                codes.push(if ok { qos.min(1) } else { 0x80 });
            }
            if codes.is_empty() {
                return Verdict::Close("a SUBSCRIBE without filters".into());
            }
            if all_ok {
                Verdict::Forward
            } else {
                let mut ack = vec![0x90];
                // More than 125 filters need two bytes of remaining length.
                push_length(&mut ack, 2 + codes.len());
                ack.extend_from_slice(id);
                ack.extend(codes);
                Verdict::Refuse(ack)
            }
        }
        _ => Verdict::Forward,
    }
}

/// Accepts worker connections on `listener` and relays them to the broker at `upstream`.
/// Beyond [`MAX_CONNECTIONS`], or [`MAX_PENDING_LOGINS`] not yet logged in, a new connection
/// is closed at once.
/// With `tls`, workers speak MQTT over TLS: the guard terminates it (the handshake, like the
/// login, within [`LOGIN_TIMEOUT`]) and the broker stays plain on loopback.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    creds: crate::broker::Credentials,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Each relayed connection holds three descriptors here (the worker's, ours to the broker
    // and the broker's end): stay well below the file limit.
    // (The cluster raised its soft limit at start; this only reads it.)
    let files = oak_tls::serve::file_limit().map(|(soft, _)| soft).unwrap_or(1024);
    let max = MAX_CONNECTIONS.min((files.saturating_sub(512) / 3).max(64) as usize);
    if max < MAX_CONNECTIONS {
        tracing::info!(open_files = files, max_connections = max, "MQTT connections bounded by the file limit");
    }
    let all = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    let pending = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_LOGINS.min(max)));
    let per_source: std::sync::Arc<parking_lot::Mutex<HashMap<std::net::IpAddr, usize>>> = Default::default();
    let mut refused = 0u64;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept an MQTT connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = oak_tls::serve::throttle_source(peer.ip());
        let from_source = {
            let mut m = per_source.lock();
            let n = m.entry(source).or_insert(0);
            *n += 1;
            *n
        };
        let slot = PendingLogin { source, table: per_source.clone() };
        let (Ok(conn), Ok(permit)) = (all.clone().try_acquire_owned(), pending.clone().try_acquire_owned()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(peer = %peer, refused, "MQTT connection limit reached; closing new connections");
            }
            drop(client);
            continue;
        };
        // One address cannot hold the logins of everyone else.
        if from_source > MAX_PENDING_PER_SOURCE {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(peer = %peer, refused, "too many MQTT logins pending from one address; closing");
            }
            drop(client);
            continue;
        }
        let login = (permit, slot);
        let creds = creds.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            // The TLS handshake and the login share one time limit.
            let deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
            let r = match acceptor {
                None => relay(client, upstream, login, creds, deadline).await,
                Some(a) => match tokio::time::timeout_at(deadline, a.accept(client)).await {
                    Ok(Ok(tls)) => relay(tls, upstream, login, creds, deadline).await,
                    Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                    Err(_) => Err(format!("no TLS handshake within {} s", LOGIN_TIMEOUT.as_secs())),
                },
            };
            if let Err(e) = r {
                tracing::info!(peer = %peer, reason = %e, "MQTT connection closed by the guard");
            }
            drop(conn);
        });
    }
}

/// Most connections one address (an IPv6 /64) may have waiting to log in.
pub const MAX_PENDING_PER_SOURCE: usize = 64;

/// A connection from `source` that has not logged in yet: counted until dropped.
struct PendingLogin {
    source: std::net::IpAddr,
    table: std::sync::Arc<parking_lot::Mutex<HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        let mut m = self.table.lock();
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// CONNACK, return code 4: bad user name or password (MQTT 3.1.1 §3.2.2.3).
pub const REFUSED_LOGIN: [u8; 4] = [0x20, 0x02, 0x00, 0x04];

async fn relay<S>(
    client: S,
    upstream: SocketAddr,
    login: impl Send + 'static,
    creds: crate::broker::Credentials,
    deadline: tokio::time::Instant,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let broker = tokio::time::timeout_at(deadline, TcpStream::connect(upstream))
        .await
        .map_err(|_| "the broker did not answer".to_owned())?
        .map_err(|e| format!("cannot reach the broker: {e}"))?;
    let _ = broker.set_nodelay(true);
    let (mut from_client, client_w) = tokio::io::split(client);
    let (mut from_broker, mut to_broker) = broker.into_split();
    let client_w = std::sync::Arc::new(tokio::sync::Mutex::new(client_w));
    let down_w = client_w.clone();
    // Set once the broker accepted the login (a CONNACK with return code 0).
    let logged_in = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = logged_in.clone();
    let down = tokio::spawn(async move {
        let mut login = Some(login);
        let mut first: Vec<u8> = Vec::with_capacity(4);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_broker.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if first.len() < 4 {
                        first.extend(buf[..n].iter().take(4 - first.len()));
                        if first.len() == 4 && first[0] == 0x20 && first[3] == 0 {
                            accepted.store(true, std::sync::atomic::Ordering::Release);
                            login.take();
                        }
                    }
                    if down_w.lock().await.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        // The broker closed: so does the worker's connection. Closing before any CONNACK
        // means it refused the login (rumqttd just hangs up); say so in MQTT, "bad user name
        // or password", so the worker knows to register again rather than retry forever.
        let mut w = down_w.lock().await;
        if first.is_empty() {
            let _ = w.write_all(&REFUSED_LOGIN).await;
        }
        let _ = w.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut node: Option<String> = None;
    let result = loop {
        let is_in = logged_in.load(std::sync::atomic::Ordering::Acquire);
        let limit = if is_in { MAX_PACKET } else { MAX_CONNECT };
        // One whole packet in `buf[..end]`.
        let framed = loop {
            let want = match frame(&buf, limit) {
                Ok(Some(f)) if buf.len() >= f.0 + f.1 => break Ok(f),
                Ok(Some(f)) => f.0 + f.1 - buf.len(),
                Ok(None) => 1,
                Err(e) => break Err(e),
            };
            // Memory follows what was sent, never what a header announces.
            buf.reserve(want.min(16 * 1024));
            let read = from_client.read_buf(&mut buf);
            let n = if logged_in.load(std::sync::atomic::Ordering::Acquire) {
                read.await
            } else {
                match tokio::time::timeout_at(deadline, read).await {
                    Ok(r) => r,
                    Err(_) if logged_in.load(std::sync::atomic::Ordering::Acquire) => continue,
                    Err(_) => break Err(format!("no login within {} s", LOGIN_TIMEOUT.as_secs())),
                }
            };
            match n {
                Ok(0) => {
                    down.abort();
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        let (head, len) = match framed {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        let end = head + len;
        let (first, body) = (buf[0], &buf[head..end]);
        let verdict = match &node {
            None if first >> 4 == CONNECT => match parse_connect(body) {
                // The worker's own password is checked here; the broker sees a relay
                // password only the guard can make.
                Ok(c) if creds.check(&c.client_id, &c.user, &c.password) => {
                    let packet = with_password(body, &c, &creds.relay_password(&c.user));
                    node = Some(c.user);
                    Verdict::Replace(packet)
                }
                Ok(c) => {
                    let _ = client_w.lock().await.write_all(&REFUSED_LOGIN).await;
                    Verdict::Close(format!("worker {} gave a wrong password", c.user))
                }
                Err(e) => Verdict::Close(e),
            },
            None => Verdict::Close("the first packet must be CONNECT".into()),
            Some(n) => check(n, first, body),
        };
        match verdict {
            Verdict::Forward => {
                if let Err(e) = to_broker.write_all(&buf[..end]).await {
                    break Err(e.to_string());
                }
            }
            Verdict::Replace(packet) => {
                if let Err(e) = to_broker.write_all(&packet).await {
                    break Err(e.to_string());
                }
            }
            Verdict::Refuse(ack) => {
                if let Err(e) = client_w.lock().await.write_all(&ack).await {
                    break Err(e.to_string());
                }
            }
            Verdict::Close(why) => {
                tracing::warn!(node = node.as_deref().unwrap_or("?"), reason = %why, "closing an MQTT connection");
                break Err(why);
            }
        }
        buf.drain(..end);
        if buf.capacity() > 64 * 1024 && buf.len() < 1024 {
            buf.shrink_to(1024);
        }
    };
    down.abort();
    result
}

#[cfg(test)]
mod tests;
