//! The tokio adapter: a [`Session`] over any byte stream, and the whole
//! client handshake in one call.
//!
//! Idle streams must stay cheap (the relay budgets 32 KiB per idle
//! connection), so there are no fixed buffers: the read buffer grows to hold
//! about one record at most and is released as soon as it is empty, and the
//! write buffer holds at most two sealed records and is released once
//! flushed if it grew past 4 KiB. An idle stream holds a few hundred bytes
//! of state and at most 4 KiB of buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use rand::rngs::OsRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::{ClientConfig, CloakError, MAX_RECORD_PAYLOAD, Opener, Sealer, Session, Step};

/// How much is read from the inner stream at a time (more if a record
/// needs it).
const READ_CHUNK: usize = 4096;
/// Payload accepted per `poll_write` call.
const WRITE_BATCH: usize = 2 * MAX_RECORD_PAYLOAD;
/// A flushed write buffer bigger than this is released, so an idle stream
/// keeps at most this much.
const KEEP_WRITE_CAPACITY: usize = 4096;
/// Body length of a TLS 1.3 close_notify alert record (2-byte alert,
/// content type, tag).
const CLOSE_NOTIFY_RECORD: usize = 19;
/// The relay's whole flight must fit in this (a ServerHello and up to 16
/// full records, the most a learned cover shape has).
const MAX_FLIGHT: usize = 17 * 16 * 1024 + 2048;

/// A cloak session over a byte stream: what you write is sealed into
/// application-data records, what you read is opened from them.
pub struct CloakStream<S> {
    inner: S,
    sealer: Sealer,
    opener: Opener,
    /// Ciphertext read but not yet opened.
    rbuf: BytesMut,
    /// Opened payload not yet returned.
    plain: Bytes,
    /// Sealed records not yet written, and how much of them is.
    wbuf: Vec<u8>,
    wpos: usize,
    read_eof: bool,
    close_notify_sealed: bool,
}

impl<S> CloakStream<S> {
    /// Wraps `stream` after the handshake; `leftover` is anything already
    /// read from it past the handshake.
    pub fn new(stream: S, session: Session, leftover: BytesMut) -> CloakStream<S> {
        CloakStream {
            inner: stream,
            sealer: session.sealer,
            opener: session.opener,
            rbuf: leftover,
            plain: Bytes::new(),
            wbuf: Vec::new(),
            wpos: 0,
            read_eof: false,
            close_notify_sealed: false,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The underlying stream, mutably (writing to it directly corrupts the
    /// session).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Bytes currently held in this stream's buffers (for memory budgets).
    pub fn buffered_capacity(&self) -> usize {
        self.rbuf.capacity() + self.wbuf.capacity() + self.plain.len()
    }
}

fn invalid(e: CloakError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> CloakStream<S> {
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wpos = 0;
        if self.wbuf.capacity() > KEEP_WRITE_CAPACITY {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CloakStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() {
                    this.plain = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(payload) = this.opener.open(&mut this.rbuf).map_err(invalid)? {
                this.plain = payload;
                if this.rbuf.is_empty() {
                    this.rbuf = BytesMut::new();
                }
                continue;
            }
            if this.read_eof {
                return Poll::Ready(if this.rbuf.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
            let record_len = match this.rbuf.get(3..5) {
                Some(len) => 5 + usize::from(u16::from_be_bytes([len[0], len[1]])),
                None => 5,
            };
            let missing = record_len.saturating_sub(this.rbuf.len());
            let old = this.rbuf.len();
            this.rbuf.resize(old + missing.max(READ_CHUNK), 0);
            let mut rb = ReadBuf::new(&mut this.rbuf[old..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.rbuf.truncate(old + n);
            if this.rbuf.is_empty() {
                this.rbuf = BytesMut::new();
            }
            ready!(polled)?;
            if n == 0 {
                this.read_eof = true;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for CloakStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_write_pending(cx))?;
        let n = buf.len().min(WRITE_BATCH);
        this.sealer
            .seal(&buf[..n], &mut this.wbuf)
            .map_err(invalid)?;
        // Start sending now; what does not fit waits for the next call.
        if let Poll::Ready(Err(e)) = this.poll_write_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// Flushes, sends a padding record the size of a TLS 1.3 close_notify
    /// alert (19 bytes, what browsers and servers send before closing), and
    /// shuts the inner stream down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sealed {
            ready!(this.poll_write_pending(cx))?;
            this.sealer
                .seal_padding(CLOSE_NOTIFY_RECORD, &mut this.wbuf)
                .map_err(invalid)?;
            this.close_notify_sealed = true;
        }
        ready!(this.poll_write_pending(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Runs the whole client side over `stream`: writes the hello, reads the
/// relay's flight, writes the confirmation. Fails with
/// [`CloakError::NotRelay`] if anything but our relay answers (nothing more
/// is sent then) and with [`CloakError::Timeout`] after `timeout`.
pub async fn client_connect<S>(
    mut stream: S,
    cfg: &ClientConfig,
    timeout: Duration,
) -> Result<CloakStream<S>, CloakError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (mut pending, hello) = crate::client_start(cfg, now, &mut OsRng);
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match pending.on_server_bytes(&buf)? {
                Step::NeedMore => {
                    if buf.len() >= MAX_FLIGHT {
                        return Err(CloakError::NotRelay);
                    }
                    buf.reserve(READ_CHUNK);
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Err(CloakError::NotRelay);
                    }
                }
                Step::Done {
                    value: (session, reply),
                    consumed,
                } => {
                    stream.write_all(&reply).await?;
                    stream.flush().await?;
                    let leftover = BytesMut::from(&buf[consumed..]);
                    return Ok((session, leftover));
                }
            }
        }
    };
    let (session, leftover) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| CloakError::Timeout)??;
    Ok(CloakStream::new(stream, session, leftover))
}
