//! Byte-for-byte splicing between two TCP connections, with the peers'
//! way of closing carried across: a FIN becomes a FIN (half-close), a
//! reset becomes a reset. That is what makes a prober's view of the relay
//! the cover's view: the bytes, the certificate and how the connection
//! ends all come from the cover.
//!
//! Reads wait for readiness first and only then borrow a buffer from the
//! [`BufPool`], so an idle connection holds no buffer at all.

use std::io;
use std::net::Shutdown;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;

/// Size of the pooled read buffers: four full records (a read takes up
/// to four at once).
pub const BUF_SIZE: usize = 4 * 16_401;

/// A pool of read buffers shared by every connection: buffers are taken
/// only for the moment of a read and its write, then returned.
pub struct BufPool {
    free: Mutex<Vec<Box<[u8]>>>,
    keep: usize,
}

impl BufPool {
    /// A pool that keeps at most `keep` free buffers.
    pub fn new(keep: usize) -> Self {
        BufPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// Takes a buffer (a new one if none is free).
    pub fn take(&self) -> PooledBuf<'_> {
        let buf = self
            .free
            .lock()
            .expect("buffer pool lock")
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice());
        PooledBuf {
            pool: self,
            buf: Some(buf),
        }
    }

    /// Free buffers held now.
    pub fn free_buffers(&self) -> usize {
        self.free.lock().expect("buffer pool lock").len()
    }
}

/// A buffer on loan from a [`BufPool`]; returned on drop.
pub struct PooledBuf<'a> {
    pool: &'a BufPool,
    buf: Option<Box<[u8]>>,
}

impl std::ops::Deref for PooledBuf<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().expect("buffer present until drop")
    }
}

impl std::ops::DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().expect("buffer present until drop")
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.lock().expect("buffer pool lock");
            if free.len() < self.pool.keep {
                free.push(buf);
            }
        }
    }
}

/// How one direction of a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source sent FIN; it was passed on as a half-close.
    Fin,
    /// The source reset the connection (or failed).
    Reset,
    /// Writing to the destination failed (it reset or went away).
    SinkFailed,
}

/// Writes all of `data` to `to`, waiting for writability.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `parts`, in order, with vectored writes.
pub async fn write_all_slices(to: &TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut i = 0;
    let mut offset = 0;
    while i < parts.len() {
        if parts[i].len() == offset {
            i += 1;
            offset = 0;
            continue;
        }
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(io::IoSlice::new(&parts[i][offset..]))
            .chain(parts[i + 1..].iter().map(|p| io::IoSlice::new(p)))
            .take(64)
            .collect();
        to.writable().await?;
        match to.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                while n > 0 && i < parts.len() {
                    let left = parts[i].len() - offset;
                    if n >= left {
                        n -= left;
                        i += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends FIN on `s` (its write side), leaving reads open.
pub fn half_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// Makes the coming close of `s` a reset (SO_LINGER 0).
pub fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Turns TCP keepalive on (so dead peers of long-idle sessions go away
/// without an application-level idle timeout that would mark the relay).
pub fn keepalive(s: &TcpStream) {
    let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(120));
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Copies `from` to `to` until `from` ends; a FIN is passed on as a
/// half-close. `count` is called with each chunk's length.
pub async fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    pool: &BufPool,
    mut count: impl FnMut(usize),
) -> End {
    loop {
        if let Err(e) = from.readable().await {
            // Readiness fails only when the socket is gone.
            let _ = e;
            return End::Reset;
        }
        let mut buf = pool.take();
        match from.try_read(&mut buf) {
            Ok(0) => {
                half_close(to);
                return End::Fin;
            }
            Ok(n) => {
                count(n);
                if write_all(to, &buf[..n]).await.is_err() {
                    return End::SinkFailed;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return End::Reset,
        }
    }
}

/// Splices `a` and `b` both ways until both directions have ended. A
/// reset on one side is passed on as a reset of the other; two FINs end it
/// quietly, as the peers closed it. Returns the bytes carried a→b and b→a.
pub async fn splice(a: &TcpStream, b: &TcpStream, pool: &BufPool) -> (u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let (ab, ba) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = pipe(a, b, pool, |n| {
        ab.fetch_add(n as u64, Relaxed);
    });
    let down = pipe(b, a, pool, |n| {
        ba.fetch_add(n as u64, Relaxed);
    });
    tokio::pin!(up, down);
    let (mut up_end, mut down_end) = (None, None);
    while up_end.is_none() || down_end.is_none() {
        tokio::select! {
            e = &mut up, if up_end.is_none() => {
                match e {
                    End::Reset => { reset_on_close(b); break; }
                    End::SinkFailed => { reset_on_close(a); break; }
                    End::Fin => up_end = Some(e),
                }
            }
            e = &mut down, if down_end.is_none() => {
                match e {
                    End::Reset => { reset_on_close(a); break; }
                    End::SinkFailed => { reset_on_close(b); break; }
                    End::Fin => down_end = Some(e),
                }
            }
        }
    }
    (ab.load(Relaxed), ba.load(Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn carries_bytes_fins_and_resets() {
        let pool = BufPool::new(4);
        // client <-> (a relay b) <-> cover
        let (mut client, a) = pair().await;
        let (b, mut cover) = pair().await;
        let relay = tokio::spawn(async move {
            let pool = BufPool::new(4);
            splice(&a, &b, &pool).await
        });
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        cover.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        cover.write_all(&[1u8; 40_000]).await.unwrap();
        let mut big = vec![0u8; 40_000];
        client.read_exact(&mut big).await.unwrap();
        // FIN from the client reaches the cover as EOF; the cover can
        // still answer.
        client.shutdown().await.unwrap();
        assert_eq!(cover.read(&mut got).await.unwrap(), 0);
        cover.write_all(b"bye").await.unwrap();
        cover.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        assert_eq!(relay.await.unwrap(), (5, 40_003));
        assert_eq!(pool.free_buffers(), 0);

        // A reset by the cover reaches the client as a reset.
        let (mut client, a) = pair().await;
        let (b, cover) = pair().await;
        let relay = tokio::spawn(async move {
            let pool = BufPool::new(4);
            splice(&a, &b, &pool).await;
        });
        client.write_all(b"x").await.unwrap();
        reset_on_close(&cover);
        drop(cover);
        relay.await.unwrap();
        let mut buf = [0u8; 8];
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
