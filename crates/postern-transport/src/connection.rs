//! The async shell around [`postern_proto::session`]: handshakes with a
//! timeout, then a reader and a writer that move envelopes.

use std::time::Duration;

use postern_proto::keys::NoiseKeypair;
use postern_proto::pb;
use postern_proto::session::{Hello, Initiator, Opener, Responder, Sealer, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::TransportError;

/// Reads start this small, so an idle connection holds little memory...
const MIN_READ: usize = 1024;

/// ...and grow up to this size while the peer keeps filling them, so a busy
/// connection reads whole records at once.
const MAX_READ: usize = 64 * 1024;

/// A writer keeps at most this much buffer capacity between sends.
const IDLE_WRITE_CAPACITY: usize = 4 * 1024;

/// Runs the client's side of the handshake over `stream`, authenticating as
/// `local` to the server whose static key is `server_key`.
///
/// Returns the connection and the server's hello; a hello with `error` set
/// means the server refused the session (and is closing the connection).
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    local: &NoiseKeypair,
    server_key: &[u8; 32],
    hello: &pb::ClientHello,
    timeout: Duration,
) -> Result<(Connection<S>, pb::ServerHello), TransportError> {
    let (mut initiator, message1) = Initiator::start(local, server_key, hello)?;
    let handshake = async {
        stream.write_all(&message1).await?;
        stream.flush().await?;
        let mut buf = vec![0; MIN_READ];
        loop {
            let read = stream.read(&mut buf).await?;
            if read == 0 {
                return Err(TransportError::Closed);
            }
            if let Some(done) = initiator.feed(buf.get(..read).unwrap_or_default())? {
                return Ok(done);
            }
        }
    };
    let (session, server_hello) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| TransportError::Timeout)??;
    Ok((Connection { stream, session }, server_hello))
}

/// Reads the client's hello on `stream`, authenticating as `local`.
///
/// The [`Hello`] carries the client's proven static key; look it up, then
/// [accept](PendingServer::accept) or [refuse](PendingServer::refuse). A
/// client that used the wrong server key fails here with
/// [`TransportError::Session`], and dropping the stream closes it.
pub async fn server_accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    local: &NoiseKeypair,
    timeout: Duration,
) -> Result<(PendingServer<S>, Hello), TransportError> {
    let mut responder = Responder::new(local);
    let handshake = async {
        let mut buf = vec![0; MIN_READ];
        loop {
            let read = stream.read(&mut buf).await?;
            if read == 0 {
                return Err(TransportError::Closed);
            }
            if let Some(hello) = responder.feed(buf.get(..read).unwrap_or_default())? {
                return Ok(hello);
            }
        }
    };
    let hello = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| TransportError::Timeout)??;
    let pending = PendingServer {
        stream,
        responder,
        timeout,
    };
    Ok((pending, hello))
}

/// A server-side handshake waiting for the server's answer.
pub struct PendingServer<S> {
    stream: S,
    responder: Responder,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PendingServer<S> {
    /// Sends `hello` and returns the established connection.
    pub async fn accept(self, hello: &pb::ServerHello) -> Result<Connection<S>, TransportError> {
        let PendingServer {
            mut stream,
            responder,
            timeout,
        } = self;
        let (session, message2) = responder.accept(hello)?;
        write_with_timeout(&mut stream, &message2, timeout).await?;
        Ok(Connection { stream, session })
    }

    /// Sends `hello` (which should have `error` set, telling the client why)
    /// and shuts the connection down.
    pub async fn refuse(self, hello: &pb::ServerHello) -> Result<(), TransportError> {
        let timeout = self.timeout;
        let mut conn = self.accept(hello).await?;
        tokio::time::timeout(timeout, conn.stream.shutdown())
            .await
            .map_err(|_| TransportError::Timeout)??;
        Ok(())
    }
}

impl<S> std::fmt::Debug for PendingServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingServer")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

async fn write_with_timeout<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), TransportError> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| TransportError::Timeout)??;
    Ok(())
}

/// An established session over a carrier stream.
pub struct Connection<S> {
    stream: S,
    session: Session,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    /// The peer's Noise static public key, proven by the handshake.
    pub fn remote_static(&self) -> &[u8; 32] {
        self.session.remote_static()
    }

    /// Splits the connection into a reader and a writer that can be used
    /// independently, e.g. from two tasks.
    pub fn split(self) -> (ConnReader<ReadHalf<S>>, ConnWriter<WriteHalf<S>>) {
        let (read, write) = tokio::io::split(self.stream);
        let (sealer, opener) = self.session.split();
        let reader = ConnReader {
            stream: read,
            opener,
            buf: Vec::new(),
        };
        let writer = ConnWriter {
            stream: write,
            sealer,
            out: Vec::new(),
            written: 0,
        };
        (reader, writer)
    }
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a connection.
pub struct ConnReader<R> {
    stream: R,
    opener: Opener,
    /// Allocated on first read; sized between [`MIN_READ`] and [`MAX_READ`]
    /// by how full recent reads were.
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> ConnReader<R> {
    /// The next envelope from the peer, or `None` once the peer closed the
    /// connection cleanly (between frames).
    ///
    /// Cancel-safe: when used in `tokio::select!` and another branch wins,
    /// no received bytes are lost; the next call picks up where this one
    /// stopped.
    pub async fn recv(&mut self) -> Result<Option<pb::Envelope>, TransportError> {
        loop {
            if let Some(env) = self.opener.next_envelope()? {
                return Ok(Some(env));
            }
            if self.buf.is_empty() {
                self.buf = vec![0; MIN_READ];
            }
            // The only await point: bytes read are fed before anything else
            // can be cancelled.
            let read = self.stream.read(&mut self.buf).await?;
            if read == 0 {
                return match self.opener.buffered_len() {
                    0 => Ok(None),
                    left => Err(TransportError::Truncated(left)),
                };
            }
            self.opener.feed(self.buf.get(..read).unwrap_or_default())?;
            self.resize_buffer(read);
        }
    }

    /// Gives back buffer memory beyond the minimum read buffer; for a
    /// connection that has gone quiet (busy connections keep their buffers
    /// to avoid reallocating per frame).
    pub fn shrink(&mut self) {
        self.opener.shrink();
        if self.buf.len() > MIN_READ {
            self.buf = vec![0; MIN_READ];
        }
    }

    /// Grows the read buffer while reads fill it; drops back to the minimum
    /// when they do not, so an idle connection holds only [`MIN_READ`].
    fn resize_buffer(&mut self, read: usize) {
        let len = self.buf.len();
        if read == len && len < MAX_READ {
            self.buf = vec![0; (len * 2).min(MAX_READ)];
        } else if read < len / 4 && len > MIN_READ {
            self.buf = vec![0; MIN_READ];
        }
    }
}

impl<R> std::fmt::Debug for ConnReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnReader")
            .field("opener", &self.opener)
            .field("read_buffer", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// The sending half of a connection.
///
/// If a send is cancelled (e.g. in `tokio::select!`), its envelopes stay
/// queued and the next [`send`](Self::send), [`send_batch`](Self::send_batch)
/// or [`flush`](Self::flush) writes them first: nothing is lost or sent twice.
pub struct ConnWriter<W> {
    stream: W,
    sealer: Sealer,
    /// Sealed records not yet fully written.
    out: Vec<u8>,
    /// How much of `out` has been written.
    written: usize,
}

impl<W: AsyncWrite + Unpin> ConnWriter<W> {
    /// Sends one envelope and flushes it.
    pub async fn send(&mut self, env: &pb::Envelope) -> Result<(), TransportError> {
        self.sealer.push(env)?;
        self.flush().await
    }

    /// Sends several envelopes with as few records and writes as possible,
    /// then flushes. Use it whenever more than one envelope is ready.
    pub async fn send_batch<'a>(
        &mut self,
        envs: impl IntoIterator<Item = &'a pb::Envelope>,
    ) -> Result<(), TransportError> {
        for env in envs {
            self.sealer.push(env)?;
        }
        self.flush().await
    }

    /// Writes everything queued and flushes the carrier.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        if self.sealer.has_pending() {
            self.sealer.seal(&mut self.out)?;
        }
        while let Some(unwritten) = self.out.get(self.written..).filter(|b| !b.is_empty()) {
            let n = self.stream.write(unwritten).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            self.written += n;
        }
        self.stream.flush().await?;
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > IDLE_WRITE_CAPACITY {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Gives back buffer memory if nothing is waiting to be written; for a
    /// connection that has gone quiet.
    pub fn shrink(&mut self) {
        self.sealer.shrink();
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// Writes everything queued, then closes the sending direction.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

impl<W> std::fmt::Debug for ConnWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnWriter")
            .field("sealer", &self.sealer)
            .field("unwritten", &(self.out.len() - self.written))
            .finish_non_exhaustive()
    }
}
