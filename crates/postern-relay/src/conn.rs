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

use postern_cloak::{Peek, Step};
use tokio::net::TcpStream;

use crate::replay::Seen;
use crate::splice::{self, half_close, reset_on_close, write_all};
use crate::{Direction, Shared, unix_now};

/// How long to wait for the cover's TCP connection.
const COVER_CONNECT: Duration = Duration::from_secs(10);

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

/// Opens the records in `data` (just read from the member) where they
/// lie and writes their payloads to the server with one vectored write.
/// A record cut by the read is finished from `partial`, or left there: the
/// connection holds a buffer only while a record is half read.
async fn forward_up(
    opener: &mut postern_cloak::Opener,
    partial: &mut Vec<u8>,
    data: &mut [u8],
    server: &TcpStream,
    shared: &Shared,
) -> io::Result<()> {
    let bad =
        |e: postern_cloak::CloakError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut data = data;
    // First finish the record a previous read cut, if any.
    let mut head_payload: Option<std::ops::Range<usize>> = None;
    if !partial.is_empty() {
        loop {
            match postern_cloak::Opener::complete_record(partial).map_err(bad)? {
                Some(_) => break,
                None if data.is_empty() => return Ok(()),
                None => {
                    // Take what the header says is missing (or 5 bytes to
                    // learn the length), at most what was read.
                    let want = if partial.len() < 5 {
                        5 - partial.len()
                    } else {
                        let len = usize::from(u16::from_be_bytes([partial[3], partial[4]])) + 5;
                        len.saturating_sub(partial.len()).max(1)
                    };
                    let take = want.min(data.len());
                    partial.extend_from_slice(&data[..take]);
                    data = &mut data[take..];
                }
            }
        }
        let range = opener.open_in_place(partial).map_err(bad)?;
        head_payload = Some(range);
    }
    // Then every complete record of this read, in place.
    let mut ranges = Vec::new();
    let mut offset = 0;
    while let Some(len) = postern_cloak::Opener::complete_record(&data[offset..]).map_err(bad)? {
        let range = opener
            .open_in_place(&mut data[offset..offset + len])
            .map_err(bad)?;
        if !range.is_empty() {
            ranges.push(offset + range.start..offset + range.end);
        }
        offset += len;
    }
    let rest = &data[offset..];
    let mut parts: Vec<&[u8]> = Vec::with_capacity(ranges.len() + 1);
    if let Some(r) = &head_payload
        && !r.is_empty()
    {
        parts.push(&partial[r.clone()]);
    }
    parts.extend(ranges.iter().map(|r| &data[r.clone()]));
    for p in &parts {
        if let Some(tap) = &shared.tap {
            tap(Direction::ToServer, p);
        }
        shared
            .metrics
            .bytes_up
            .fetch_add(p.len() as u64, Ordering::Relaxed);
    }
    splice::write_all_slices(server, &parts).await?;
    if head_payload.is_some() {
        partial.clear();
    }
    if !rest.is_empty() {
        partial.extend_from_slice(rest);
    } else if partial.is_empty() && partial.capacity() > 0 {
        // Idle connections hold no buffer.
        *partial = Vec::new();
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
    let mut partial = Vec::new();
    let mut leftover = leftover;
    forward_up(&mut opener, &mut partial, &mut leftover, server, shared).await?;
    drop(leftover);
    let (mut client_done, mut server_done) = (false, false);
    while !(client_done && server_done) {
        tokio::select! {
            r = client.readable(), if !client_done => {
                r?;
                // A pooled buffer for this read only (a few records at
                // once); records are opened where they lie.
                let mut buf = shared.pool.take();
                match client.try_read(&mut buf) {
                    Ok(0) => {
                        client_done = true;
                        if !partial.is_empty() {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed mid-record"));
                        }
                        half_close(server);
                    }
                    Ok(n) => {
                        forward_up(&mut opener, &mut partial, &mut buf[..n], server, shared).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use postern_cloak::{ClientConfig, CoverShape, Secret};
    use tokio::io::AsyncReadExt;

    const SNI: &str = "www.example.org";

    /// A client and relay session pair, through the real handshake.
    fn sessions() -> (postern_cloak::Session, postern_cloak::Session) {
        let secret = [7u8; 32];
        let cfg = ClientConfig {
            secret: Secret::from_bytes(secret),
            sni: SNI.into(),
        };
        let now = crate::unix_now();
        let mut rng = rand::thread_rng();
        let (mut client, hello) = postern_cloak::client_start(&cfg, now, &mut rng);
        let v = postern_cloak::verify(&Secret::from_bytes(secret), SNI, &hello, now, 30).unwrap();
        let (flight, mut relay) = postern_cloak::respond(
            &Secret::from_bytes(secret),
            &v,
            &CoverShape::fallback(),
            &mut rng,
        );
        let postern_cloak::Step::Done {
            value: (client_session, finish),
            ..
        } = client.on_server_bytes(&flight).unwrap()
        else {
            panic!("the client needs more")
        };
        let postern_cloak::Step::Done {
            value: relay_session,
            ..
        } = relay.on_client_bytes(&finish).unwrap()
        else {
            panic!("the relay needs more")
        };
        (client_session, relay_session)
    }

    fn shared() -> Shared {
        Shared {
            config: crate::RelayConfig::default(),
            secret: Secret::from_bytes([0; 32]),
            server: postern_proto::link::ServerLink::default(),
            replay: crate::replay::ReplayCache::open(None, 30, 10, 0).unwrap(),
            shape: std::sync::RwLock::new(CoverShape::fallback()),
            metrics: Default::default(),
            pool: crate::splice::BufPool::new(4),
            tap: None,
            server_state: std::sync::RwLock::new("unknown".into()),
            retired: Default::default(),
        }
    }

    /// Records cut anywhere by the reads (one byte at a time, inside the
    /// header, across several records) come out whole and in order.
    #[tokio::test]
    async fn records_split_across_reads_are_forwarded_whole_and_in_order() {
        let (mut client, relay) = sessions();
        let mut opener = relay.opener;
        let payloads: Vec<Vec<u8>> = [1usize, 5, 300, 16_383, 40_000, 2]
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|j| (j * 31 + i) as u8).collect())
            .collect();
        let want: Vec<u8> = payloads.concat();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut far, _) = listener.accept().await.unwrap();
        let shared = shared();
        let mut partial = Vec::new();
        for step in [1usize, 3, 4, 5, 6, 4096, 16_401, 16_402, 70_000] {
            // Fresh sessions per cut size: counters must match.
            let (mut c, r) = sessions();
            let mut o = r.opener;
            let mut w = Vec::new();
            for p in &payloads {
                c.sealer.seal(p, &mut w).unwrap();
            }
            let mut sent = 0;
            for chunk in w.chunks_mut(step) {
                forward_up(&mut o, &mut partial, chunk, &server, &shared)
                    .await
                    .unwrap();
                sent += chunk.len();
            }
            assert_eq!(sent, w.len());
            assert!(partial.is_empty(), "step {step}: nothing left half read");
            assert_eq!(partial.capacity(), 0, "step {step}: no buffer kept");
            let mut got = vec![0u8; want.len()];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want, "step {step}");
        }
        // A flipped byte is an error, never forwarded garbage; the same
        // record unflipped goes through.
        let mut w = Vec::new();
        client.sealer.seal(b"hello", &mut w).unwrap();
        let good = w.clone();
        w[10] ^= 1;
        assert!(
            forward_up(&mut opener, &mut partial, &mut w, &server, &shared)
                .await
                .is_err()
        );
        let mut good = good;
        forward_up(&mut opener, &mut partial, &mut good, &server, &shared)
            .await
            .unwrap();
        let mut got = [0u8; 5];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
