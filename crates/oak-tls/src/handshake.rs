//! HTTPS: the TLS handshake of one accepted connection, under a deadline. It runs in the
//! connection's own task (`serve.rs`), so a slow or silent client holds up no other.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Completes the server side of a TLS handshake on `io`; `None` (logged) when it fails or
/// does not finish within `timeout`.
pub(crate) async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => Some(tls),
        // rustls's refusals (a client that does not trust our certificate, or does not speak
        // TLS): worth an operator's eye. A peer that left, or a connection the server closed
        // (idle, or making room), is not: a crowd of them must not flood the log.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::info!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            None
        }
    }
}
