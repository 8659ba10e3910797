//! One accepted connection: decide whether it is one of ours, then either
//! relay it to the server or splice it to the cover.
//!
//! The decision is made on the first flight alone, and while it is pending
//! the relay behaves like a transparent TCP proxy in front of the cover:
//! the cover connection is opened at once, every byte the stranger sends
//! is passed on to the cover as it arrives, and if the cover speaks or
//! closes first, that is what the stranger gets. So a silent prober, a
//! prober who sends half a hello and waits, or one who sends garbage all
//! meet the cover's own timeouts and answers. Only a complete hello with a
//! valid, fresh authenticator for the relay's SNI is answered by the relay
//! itself; the cover connection is then closed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use postern_cloak::{Peek, Step};
use tokio::net::TcpStream;

use crate::replay::Seen;
use crate::splice::{self, half_close, reset_on_close, write_all};
use crate::{Direction, Shared, unix_now};

/// How long to wait for the cover's TCP connection.
const COVER_CONNECT: Duration = Duration::from_secs(10);

/// How much a relayed session reads from the member at once (four full
/// records).
const READ_AHEAD: usize = 4 * 16_401;

/// The most bytes an authenticated client may send before its handshake
/// completes (its finish record; anything more waits in the kernel).
const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

struct OpenGuard<'a>(&'a Shared);
impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.open.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Decision {
    Splice(&'static str),
    Check(usize),
}

pub(crate) async fn handle(client: TcpStream, shared: Arc<Shared>) {
    let m = &shared.metrics;
    m.connections.fetch_add(1, Ordering::Relaxed);
    m.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(&shared);
    let _ = client.set_nodelay(true);

    let cover_addr = shared.config.cover.clone();
    let mut cover_connect = Box::pin(async move {
        tokio::time::timeout(COVER_CONNECT, TcpStream::connect(cover_addr)).await
    });
    let mut cover: Option<TcpStream> = None;
    let mut cover_dead = false;
    let mut first = Vec::new();
    let mut forwarded = 0usize;

    let decision = loop {
        if shared.retired.load(Ordering::Relaxed) {
            break Decision::Splice("retired");
        }
        match postern_cloak::peek(&first) {
            Peek::NotCloak(r) => break Decision::Splice(r.name()),
            Peek::Complete { len } => break Decision::Check(len),
            Peek::NeedMore => {}
        }
        tokio::select! {
            r = &mut cover_connect, if cover.is_none() && !cover_dead => match r {
                Ok(Ok(s)) => {
                    if forwarded < first.len() && write_all(&s, &first[forwarded..]).await.is_err() {
                        return;
                    }
                    forwarded = first.len();
                    cover = Some(s);
                }
                _ => {
                    cover_dead = true;
                    m.cover_failures.fetch_add(1, Ordering::Relaxed);
                }
            },
            r = client.readable() => {
                if r.is_err() {
                    return;
                }
                let mut buf = shared.pool.take();
                match client.try_read(&mut buf) {
                    Ok(0) => break Decision::Splice("early_close"),
                    Ok(n) => {
                        first.extend_from_slice(&buf[..n]);
                        drop(buf);
                        if let Some(c) = &cover {
                            if write_all(c, &first[forwarded..]).await.is_err() {
                                reset_on_close(&client);
                                return;
                            }
                            forwarded = first.len();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        if let Some(c) = &cover {
                            reset_on_close(c);
                        }
                        return;
                    }
                }
            },
            r = async { cover.as_ref().expect("guarded").readable().await }, if cover.is_some() => {
                // The cover spoke or hung up first: the stranger gets that.
                let _ = r;
                break Decision::Splice("cover_first");
            }
        }
    };

    let reason = match decision {
        Decision::Splice(reason) => reason,
        Decision::Check(len) => {
            let now = unix_now();
            match postern_cloak::verify(
                &shared.secret,
                &shared.config.sni,
                &first[..len],
                now,
                shared.config.window_secs,
            ) {
                Err(r) => r.name(),
                Ok(v) => match shared.replay.check_and_insert(v.tag, v.timestamp, now) {
                    Seen::Fresh => {
                        // Ours. The cover connection (if any) just closes.
                        drop(cover);
                        drop(cover_connect);
                        relay(client, v, first.split_off(len), &shared).await;
                        return;
                    }
                    Seen::Replay => {
                        m.replays.fetch_add(1, Ordering::Relaxed);
                        "replay"
                    }
                    Seen::BeforeStart => "stale",
                    Seen::Full => {
                        m.replay_cache_full.fetch_add(1, Ordering::Relaxed);
                        "other"
                    }
                },
            }
        }
    };

    // Not ours: from here on the relay is a plain TCP proxy to the cover.
    m.splice(reason);
    let cover = match cover {
        Some(c) => c,
        None if cover_dead => return,
        None => match cover_connect.await {
            Ok(Ok(c)) => c,
            _ => {
                m.cover_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    if forwarded < first.len() && write_all(&cover, &first[forwarded..]).await.is_err() {
        reset_on_close(&client);
        return;
    }
    drop(first);
    splice::splice(&client, &cover, &shared.pool).await;
}

/// Answers an authenticated client, finishes the cloak handshake, and
/// forwards the inner bytes to the server and back.
async fn relay(client: TcpStream, v: postern_cloak::Verified, rest: Vec<u8>, shared: &Shared) {
    let m = &shared.metrics;
    let shape = shared.shape.read().expect("shape lock").clone();
    let (flight, mut pending) = {
        let mut rng = rand::thread_rng();
        postern_cloak::respond(&shared.secret, &v, &shape, &mut rng)
    };
    drop(v);
    let handshake = async {
        write_all(&client, &flight).await?;
        let mut inbuf = rest;
        loop {
            match pending.on_client_bytes(&inbuf) {
                Ok(Step::Done { value, consumed }) => {
                    inbuf.drain(..consumed);
                    return Ok::<_, io::Error>(Some((value, inbuf)));
                }
                Ok(Step::NeedMore) => {}
                Err(_) => return Ok(None),
            }
            if inbuf.len() > MAX_HANDSHAKE_BYTES {
                return Ok(None);
            }
            client.readable().await?;
            let mut buf = shared.pool.take();
            match client.try_read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    let timeout = Duration::from_secs(shared.config.handshake_timeout_secs);
    let Ok(Ok(Some((session, leftover)))) = tokio::time::timeout(timeout, handshake).await else {
        m.handshake_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // A real server sends session tickets right after the handshake: so
    // does the relay (padding-only records of the cover's ticket sizes,
    // which the client skips), before any session data.
    let mut session = session;
    let mut tickets = Vec::new();
    if shape
        .seal_tickets(&mut session.sealer, &mut tickets)
        .is_err()
        || write_all(&client, &tickets).await.is_err()
    {
        m.handshake_failures.fetch_add(1, Ordering::Relaxed);
        return;
    }
    drop(tickets);
    let server = match shared.connect_server().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot reach the server: {e}");
            m.server_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    m.relayed.fetch_add(1, Ordering::Relaxed);
    m.relayed_open.fetch_add(1, Ordering::Relaxed);
    splice::keepalive(&client);
    splice::keepalive(&server);
    let _ = server.set_nodelay(true);
    if let Err(e) = pump(&client, &server, session, leftover, shared).await {
        tracing::debug!("relayed session ended: {e}");
        reset_on_close(&client);
    }
    m.relayed_open.fetch_sub(1, Ordering::Relaxed);
}

/// Opens every complete record in `pending` and forwards the plaintext.
async fn forward_up(
    opener: &mut postern_cloak::Opener,
    pending: &mut BytesMut,
    server: &TcpStream,
    shared: &Shared,
) -> io::Result<()> {
    // Open every complete record, then write their payloads in one
    // vectored write: one syscall per read, not one per record.
    let mut plains: Vec<bytes::Bytes> = Vec::new();
    loop {
        let opened = opener
            .open(pending)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let Some(plain) = opened else { break };
        if let Some(tap) = &shared.tap {
            tap(Direction::ToServer, &plain);
        }
        shared
            .metrics
            .bytes_up
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        plains.push(plain);
    }
    splice::write_all_vectored(server, &plains).await?;
    if pending.is_empty() && pending.capacity() > 0 {
        // Idle connections hold no buffer.
        *pending = BytesMut::new();
    }
    Ok(())
}

async fn pump(
    client: &TcpStream,
    server: &TcpStream,
    session: postern_cloak::Session,
    leftover: Vec<u8>,
    shared: &Shared,
) -> io::Result<()> {
    let postern_cloak::Session {
        mut sealer,
        mut opener,
    } = session;
    let mut pending = BytesMut::from(&leftover[..]);
    drop(leftover);
    forward_up(&mut opener, &mut pending, server, shared).await?;
    let (mut client_done, mut server_done) = (false, false);
    while !(client_done && server_done) {
        tokio::select! {
            r = client.readable(), if !client_done => {
                r?;
                // Read straight into the record buffer (up to a few
                // records at once); it is freed again when empty.
                pending.reserve(READ_AHEAD);
                match client.try_read_buf(&mut pending) {
                    Ok(0) => {
                        client_done = true;
                        if !pending.is_empty() {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed mid-record"));
                        }
                        half_close(server);
                    }
                    Ok(_) => {
                        forward_up(&mut opener, &mut pending, server, shared).await?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        reset_on_close(server);
                        return Err(e);
                    }
                }
            }
            r = server.readable(), if !server_done => {
                r?;
                let mut buf = shared.pool.take();
                match server.try_read(&mut buf) {
                    Ok(0) => {
                        server_done = true;
                        half_close(client);
                    }
                    Ok(n) => {
                        if let Some(tap) = &shared.tap {
                            tap(Direction::ToClient, &buf[..n]);
                        }
                        shared.metrics.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                        let mut out = Vec::with_capacity(n + 64);
                        sealer
                            .seal(&buf[..n], &mut out)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        drop(buf);
                        write_all(client, &out).await?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
