//! The QUIC carrier (quinn, rustls with ring): one bidirectional stream per
//! connection carries the session.
//!
//! QUIC runs over UDP, which some censors drop wholesale and others leave
//! alone; as one carrier among several it costs the client one attempt. The
//! client opens the stream and speaks first (the Noise hello), which is
//! also what makes the server see the stream at all.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::TransportError;
use crate::tls::{ClientTls, ServerCert};

/// The ALPN a QUIC carrier offers.
const QUIC_ALPN: &[&[u8]] = &[b"postern"];

/// A QUIC connection with no packet for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alives well inside [`IDLE_TIMEOUT`], also keeping NAT bindings open.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// A QUIC server endpoint.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: quinn::Endpoint,
}

impl QuicListener {
    /// Listens on UDP `addr` with `cert`.
    pub fn bind(addr: SocketAddr, cert: &ServerCert) -> Result<QuicListener, TransportError> {
        let crypto = QuicServerConfig::try_from(cert.server_config(QUIC_ALPN)?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport());
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|source| TransportError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Ok(QuicListener { endpoint })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The next incoming connection attempt; `None` once the endpoint is
    /// closed. Finish it with [`accept`] (in its own task).
    pub async fn incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes the endpoint and every connection on it.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// Completes an incoming connection and waits for the client's stream, at
/// most `timeout` in all.
pub async fn accept(
    incoming: quinn::Incoming,
    timeout: Duration,
) -> Result<(QuicStream, SocketAddr), TransportError> {
    let peer = incoming.remote_address();
    let work = async {
        let conn = incoming.await.map_err(quic_error)?;
        let (send, recv) = conn.accept_bi().await.map_err(quic_error)?;
        Ok::<_, TransportError>(QuicStream {
            send,
            recv,
            _conn: conn,
            _endpoint: None,
        })
    };
    let stream = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::Timeout)??;
    Ok((stream, peer))
}

/// Connects to `addr` over QUIC and opens the session's stream; at most
/// `timeout` in all.
pub async fn connect(
    addr: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<QuicStream, TransportError> {
    let work = async {
        let target = tokio::net::lookup_host(addr)
            .await
            .map_err(|source| TransportError::Connect {
                addr: addr.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| TransportError::NoAddress(addr.to_owned()))?;
        let local: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(local)?;
        let crypto = QuicClientConfig::try_from(tls.client_config(QUIC_ALPN)?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        let conn = endpoint
            .connect_with(config, target, &tls.sni)
            .map_err(|e| TransportError::Quic(e.to_string()))?
            .await
            .map_err(quic_error)?;
        let (send, recv) = conn.open_bi().await.map_err(quic_error)?;
        Ok(QuicStream {
            send,
            recv,
            _conn: conn,
            _endpoint: Some(endpoint),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::Timeout)?
}

fn quic_error(e: quinn::ConnectionError) -> TransportError {
    match e {
        quinn::ConnectionError::TimedOut => TransportError::Timeout,
        quinn::ConnectionError::Reset => {
            TransportError::Io(std::io::ErrorKind::ConnectionReset.into())
        }
        quinn::ConnectionError::TransportError(t)
            if t.to_string().to_ascii_lowercase().contains("certificate") =>
        {
            TransportError::Certificate(t.to_string())
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.to_string().to_ascii_lowercase().contains("certificate") =>
        {
            TransportError::TlsAlert(c.to_string())
        }
        other => TransportError::Quic(other.to_string()),
    }
}

/// The session's QUIC stream, holding its connection (and, on a client,
/// its endpoint) open for as long as it lives.
#[derive(Debug)]
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _conn: quinn::Connection,
    _endpoint: Option<quinn::Endpoint>,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(std::io::Error::other)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
