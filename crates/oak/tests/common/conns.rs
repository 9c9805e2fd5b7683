//! Helpers for the connection tests (tests/connections.rs, tests/cluster_connections.rs).

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The log without its colours.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many of `conns` the server has closed (end of stream or reset).
pub fn closed_by_server(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    conns
        .iter()
        .filter(|c| match c.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

/// Reads until the server closes the connection; how long that took.
pub async fn until_closed(conn: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection is still open after {within:?}"),
        }
    }
}

/// Sends `head` (the start of a request head) to `addr`, then a header byte every second,
/// never its end; how long until the server closed the connection (panics after 10 s).
pub async fn trickled_head_closed_after(addr: &str, head: &'static [u8]) -> Duration {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(head).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b"X").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("a trickled head is still read after 10 s"),
        }
    }
    writer.abort();
    started.elapsed()
}

/// Collects `child`'s stderr (echoed, colours stripped) into a shared string, as it comes.
pub fn collect_log(child: &mut std::process::Child) -> std::sync::Arc<parking_lot::Mutex<String>> {
    use std::io::Read;
    let log = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            eprint!("{text}");
            sink.lock().push_str(&strip_ansi(&text));
        }
    });
    log
}
