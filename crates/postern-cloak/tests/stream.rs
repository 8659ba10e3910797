//! CloakStream both ways over `tokio::io::duplex`, with the relay side driven
//! through the sans-IO API as the relay daemon drives it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use postern_cloak::{
    ClientConfig, CloakError, CloakStream, CoverShape, Peek, Secret, Session, Step, client_connect,
    client_start, peek, respond, verify,
};
use rand::rngs::OsRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

const SNI: &str = "cover.example.org";

fn config() -> ClientConfig {
    ClientConfig {
        secret: Secret::from_bytes([5; 32]),
        sni: SNI.into(),
    }
}

/// The relay's side: read the hello, verify, answer in the cover's shape,
/// check the client's confirmation.
async fn relay_accept<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> CloakStream<S> {
    let secret = config().secret;
    let mut buf = BytesMut::new();
    let len = loop {
        match peek(&buf) {
            Peek::NeedMore => assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0),
            Peek::Complete { len } => break len,
            Peek::NotCloak(reject) => panic!("rejected: {reject}"),
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verified = verify(&secret, SNI, &buf[..len], now, 30).unwrap();
    let mut rest = buf.split_off(len);
    let (flight, mut pending) = respond(&secret, &verified, &CoverShape::fallback(), &mut OsRng);
    stream.write_all(&flight).await.unwrap();
    loop {
        match pending.on_client_bytes(&rest).unwrap() {
            Step::NeedMore => assert_ne!(stream.read_buf(&mut rest).await.unwrap(), 0),
            Step::Done {
                value: mut session,
                consumed,
            } => {
                let mut tickets = Vec::new();
                CoverShape::fallback()
                    .seal_tickets(&mut session.sealer, &mut tickets)
                    .unwrap();
                stream.write_all(&tickets).await.unwrap();
                let leftover = rest.split_off(consumed);
                return CloakStream::new(stream, session, leftover);
            }
        }
    }
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ salt).collect()
}

async fn pair(capacity: usize) -> (CloakStream<DuplexStream>, CloakStream<DuplexStream>) {
    let (a, b) = duplex(capacity);
    let relay = tokio::spawn(relay_accept(b));
    let client = client_connect(a, &config(), Duration::from_secs(5))
        .await
        .unwrap();
    (client, relay.await.unwrap())
}

#[tokio::test]
async fn megabytes_both_ways() {
    let (client, relay) = pair(64 * 1024).await;
    const N: usize = 3 * 1024 * 1024;

    // The relay echoes everything back; the client writes and reads at once.
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(relay);
        let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    });
    let (mut r, mut w) = tokio::io::split(client);
    let writer = tokio::spawn(async move {
        let data = pattern(N, 0x5a);
        // Odd write sizes exercise record splitting and small records.
        let mut at = 0;
        let mut step = 1;
        while at < N {
            let end = (at + step).min(N);
            w.write_all(&data[at..end]).await.unwrap();
            at = end;
            step = (step * 7 + 3) % 70_000 + 1;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(N);
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(echo.await.unwrap(), N as u64);
    assert_eq!(got.len(), N);
    assert!(got == pattern(N, 0x5a));
}

#[tokio::test]
async fn data_right_after_the_handshake_is_not_lost() {
    let (mut client, mut relay) = pair(1 << 20).await;
    client.write_all(b"first").await.unwrap();
    client.flush().await.unwrap();
    relay.write_all(b"answer").await.unwrap();
    relay.flush().await.unwrap();
    let mut buf = [0; 6];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"answer");
    let mut buf = [0; 5];
    relay.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"first");
    // Idle streams hold almost nothing.
    assert!(
        client.buffered_capacity() <= 32 * 1024,
        "{}",
        client.buffered_capacity()
    );
    assert!(
        relay.buffered_capacity() <= 32 * 1024,
        "{}",
        relay.buffered_capacity()
    );
}

#[tokio::test]
async fn idle_memory_shrinks_after_bulk() {
    let (mut client, mut relay) = pair(1 << 20).await;
    let data = pattern(200_000, 1);
    client.write_all(&data).await.unwrap();
    client.flush().await.unwrap();
    let mut got = vec![0; data.len()];
    relay.read_exact(&mut got).await.unwrap();
    assert!(got == data);
    assert!(
        client.buffered_capacity() <= 32 * 1024,
        "{}",
        client.buffered_capacity()
    );
    assert!(
        relay.buffered_capacity() <= 32 * 1024,
        "{}",
        relay.buffered_capacity()
    );
}

#[tokio::test]
async fn the_client_refuses_a_cover_and_times_out_on_silence() {
    // Something that answers like a web server, not our relay.
    let (a, mut b) = duplex(1 << 16);
    tokio::spawn(async move {
        let mut buf = vec![0; 4096];
        let _ = b.read(&mut buf).await;
        let _ = b.write_all(&[0x15, 3, 3, 0, 2, 2, 40]).await;
    });
    let err = client_connect(a, &config(), Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, CloakError::NotRelay), "{err}");

    // Something that never answers.
    let (a, _b) = duplex(1 << 16);
    let err = client_connect(a, &config(), Duration::from_millis(200))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, CloakError::Timeout), "{err}");
}

#[tokio::test]
async fn a_forged_record_fails_the_read_and_a_hang_up_is_eof() {
    let (mut client, mut relay) = pair(1 << 16).await;
    let mut forged = vec![0x17, 3, 3, 0, 40];
    forged.extend_from_slice(&[0xab; 40]);
    relay.get_mut().write_all(&forged).await.unwrap();
    let mut buf = [0; 16];
    let err = client.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    let (mut client, relay) = pair(1 << 16).await;
    drop(relay);
    assert_eq!(client.read(&mut buf).await.unwrap(), 0);
}

/// Both sessions of an in-memory handshake.
fn sessions() -> (Session, Session) {
    let cfg = config();
    let now = 1_800_000_000;
    let (mut client, hello) = client_start(&cfg, now, &mut OsRng);
    let v = verify(&cfg.secret, SNI, &hello, now, 30).unwrap();
    let (flight, mut relay) = respond(&cfg.secret, &v, &CoverShape::fallback(), &mut OsRng);
    let Ok(Step::Done {
        value: (client, reply),
        ..
    }) = client.on_server_bytes(&flight)
    else {
        panic!("client")
    };
    let Ok(Step::Done { value: relay, .. }) = relay.on_client_bytes(&reply) else {
        panic!("relay")
    };
    (client, relay)
}

#[tokio::test]
async fn shutdown_sends_a_close_notify_sized_record_then_eof() {
    let (client, mut relay) = sessions();
    let (a, mut raw) = duplex(1 << 16);
    let mut client = CloakStream::new(a, client, BytesMut::new());
    client.shutdown().await.unwrap();
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();
    // One record the size of a TLS 1.3 close_notify alert, then FIN.
    assert_eq!(&wire[..5], &[0x17, 3, 3, 0, 19]);
    assert_eq!(wire.len(), 5 + 19);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(relay.opener.open(&mut buf).unwrap().is_none());
    assert!(buf.is_empty());
}

fn _assert_send_unpin() {
    fn check<T: Send + Unpin>() {}
    check::<CloakStream<DuplexStream>>();
}
