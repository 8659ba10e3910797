//! The WebSocket-over-TLS carrier: the session's bytes travel as binary
//! WebSocket messages (RFC 6455, via tungstenite) on a configurable path,
//! so the server can sit behind an ordinary HTTPS reverse proxy or CDN.
//!
//! [`WsStream`] turns a WebSocket back into a byte stream for the session
//! code. Message boundaries carry no meaning: the Noise records inside are
//! self-delimiting. A request for another path gets a 404 and nothing else,
//! as from any web server. Frames and messages are capped at
//! [`MAX_MESSAGE`]; tungstenite parses the framing, and this module never
//! looks inside the payloads.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::TransportError;
use crate::tls::{ClientTls, ClientTlsStream, ServerTlsStream};

/// Largest WebSocket message (and frame) either side accepts; larger ones
/// end the connection. Writes are cut into messages of at most
/// [`WRITE_CHUNK`].
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Most bytes one outgoing message carries.
const WRITE_CHUNK: usize = 64 * 1024;

/// The ALPN a WebSocket carrier offers: plain HTTP/1.1, as browsers do for
/// WebSocket upgrades.
const WS_ALPN: &[&[u8]] = &[b"http/1.1"];

fn config() -> WebSocketConfig {
    // Small buffers: an idle connection must stay cheap on the server.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE * 2)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Connects to `addr`, runs TLS, then the WebSocket upgrade on `path`; the
/// whole attempt takes at most `timeout`.
pub async fn connect(
    addr: &str,
    path: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<WsStream<ClientTlsStream<TcpStream>>, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = crate::tcp::connect(addr, timeout).await?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let stream = tls.handshake(tcp, WS_ALPN, left).await?;
    let url = format!("wss://{}{path}", tls.sni);
    let upgrade = tokio_tungstenite::client_async_with_config(url, stream, Some(config()));
    let (ws, _response) = tokio::time::timeout_at(deadline, upgrade)
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(ws_error)?;
    Ok(WsStream::new(ws))
}

/// Runs the server's side of the upgrade over an accepted TLS stream;
/// anything but a WebSocket upgrade on `path` is answered 404.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: ServerTlsStream<S>,
    path: &str,
    timeout: Duration,
) -> Result<WsStream<ServerTlsStream<S>>, TransportError> {
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == path {
            Ok(response)
        } else {
            let mut not_found = ErrorResponse::new(Some("not found".into()));
            *not_found.status_mut() = tungstenite::http::StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config()));
    let ws = tokio::time::timeout(timeout, upgrade)
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(ws_error)?;
    Ok(WsStream::new(ws))
}

fn ws_error(e: tungstenite::Error) -> TransportError {
    match e {
        tungstenite::Error::Io(io) => crate::tls::tls_error(io),
        tungstenite::Error::Http(response) => TransportError::Upgrade(format!(
            "the server answered HTTP {} instead of a WebSocket",
            response.status()
        )),
        other => TransportError::Upgrade(other.to_string()),
    }
}

fn io_error(e: tungstenite::Error) -> std::io::Error {
    match e {
        tungstenite::Error::Io(io) => io,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            std::io::ErrorKind::BrokenPipe.into()
        }
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    }
}

/// A WebSocket seen as a byte stream: binary messages in and out.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last message read.
    pending: Bytes,
    closed: bool,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(self.pending.get(..n).unwrap_or_default());
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => self.closed = true,
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // Pings are answered by tungstenite; text and pongs carry
                // nothing for us.
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed)) => self.closed = true,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        let n = buf.len().min(WRITE_CHUNK);
        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(chunk))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}
