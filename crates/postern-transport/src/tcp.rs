//! The plain TCP carrier.
//!
//! Connections set `TCP_NODELAY`: the session already coalesces frames into
//! records, so Nagle's algorithm would only add latency.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::TransportError;

/// Connects to `addr` (`HOST:PORT`), trying every address it resolves to in
/// turn, each with an equal share of the time left; the whole attempt,
/// resolution included, takes at most `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    let deadline = Instant::now() + timeout;
    let resolved: Vec<SocketAddr> =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(|source| TransportError::Connect {
                addr: addr.to_owned(),
                source,
            })?
            .collect();
    let mut last_error = None;
    for (i, target) in resolved.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(resolved.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(err)) => last_error = Some(err),
            Err(_) => {
                last_error = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{target} did not answer in time"),
                ));
            }
        }
    }
    match last_error {
        Some(source) if source.kind() == std::io::ErrorKind::TimedOut => {
            Err(TransportError::Timeout)
        }
        Some(source) => Err(TransportError::Connect {
            addr: addr.to_owned(),
            source,
        }),
        None => Err(TransportError::NoAddress(addr.to_owned())),
    }
}

/// Listens for TCP connections on `addr` (`HOST:PORT`; port 0 picks a free
/// one, see [`TcpListener::local_addr`]).
pub async fn bind(addr: &str) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Accepts the next connection on `listener`, with `TCP_NODELAY` set.
pub async fn accept(listener: &TcpListener) -> Result<(TcpStream, SocketAddr), TransportError> {
    let (stream, peer) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok((stream, peer))
}
