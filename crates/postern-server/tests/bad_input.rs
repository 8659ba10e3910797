//! Hostile and broken clients: each gets a typed error or a closed
//! connection, and the server keeps serving everyone else.
//!
//! These tests speak Noise with snow directly, so they can send bytes the
//! real client code would never produce.

mod common;

use std::time::Duration;

use common::TestServer;
use postern_proto::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

struct RawNoise {
    stream: TcpStream,
    transport: snow::TransportState,
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

async fn read_record(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// A completed handshake with `hello_version` in the ClientHello.
async fn noise_connect(t: &TestServer, hello_version: u32) -> (RawNoise, pb::ServerHello) {
    let builder = snow::Builder::new(PATTERN.parse().unwrap());
    let local = builder.generate_keypair().unwrap();
    let mut hs = snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(&local.private)
        .unwrap()
        .remote_public_key(&t.server.link.noise_key)
        .unwrap()
        .prologue(b"postern/1")
        .unwrap()
        .build_initiator()
        .unwrap();
    let hello = pb::ClientHello {
        version: hello_version,
        software: "hostile".into(),
    }
    .encode_to_vec();
    let mut buf = vec![0; 65535];
    let n = hs.write_message(&hello, &mut buf).unwrap();
    let mut stream = TcpStream::connect(t.server.client_addr).await.unwrap();
    stream.write_all(&record(&buf[..n])).await.unwrap();
    let msg2 = read_record(&mut stream).await.unwrap();
    let n = hs.read_message(&msg2, &mut buf).unwrap();
    let server_hello = pb::ServerHello::decode(&buf[..n]).unwrap();
    let transport = hs.into_transport_mode().unwrap();
    (RawNoise { stream, transport }, server_hello)
}

impl RawNoise {
    async fn send_plaintext(&mut self, plaintext: &[u8]) {
        let mut out = Vec::new();
        for chunk in plaintext.chunks(65535 - 16) {
            let mut buf = vec![0; 65535];
            let n = self.transport.write_message(chunk, &mut buf).unwrap();
            out.extend(record(&buf[..n]));
        }
        // The server may close mid-write; that is an acceptable answer.
        let _ = self.stream.write_all(&out).await;
    }

    async fn send_frame(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_plaintext(&frame).await;
    }

    /// Reads until the server closes; returns the frames' envelopes seen.
    async fn until_closed(&mut self) -> Vec<pb::Envelope> {
        let mut seen = Vec::new();
        let mut plain = Vec::new();
        loop {
            let rec = tokio::time::timeout(Duration::from_secs(5), read_record(&mut self.stream))
                .await
                .expect("the server closes a broken connection within 5 s");
            let Ok(rec) = rec else { return seen };
            let mut buf = vec![0; 65535];
            let n = self.transport.read_message(&rec, &mut buf).unwrap();
            plain.extend_from_slice(&buf[..n]);
            while plain.len() >= 4 {
                let len = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
                if plain.len() < 4 + len {
                    break;
                }
                seen.push(pb::Envelope::decode(&plain[4..4 + len]).unwrap());
                plain.drain(..4 + len);
            }
        }
    }
}

/// The server still registers and delivers for a well-behaved member.
async fn still_serves(t: &TestServer, name: &str, phone: &str) {
    let (_, conn) = t.member(name, phone).await;
    conn.whoami()
        .await
        .expect("a well-behaved client is served");
}

async fn assert_closed_quickly(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept a broken connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let t = TestServer::start().await;
    let (_, alice) = t.member("alice", "+14155552671").await;
    let (mut raw, hello) = noise_connect(&t, postern_proto::PROTOCOL_VERSION).await;
    assert!(hello.error.is_none());
    // Announce 2 MiB; the server must refuse on the prefix alone.
    raw.send_plaintext(&(2u32 * 1024 * 1024).to_be_bytes())
        .await;
    raw.until_closed().await;
    alice
        .whoami()
        .await
        .expect("other connections are undisturbed");
    still_serves(&t, "bob", "+14155552672").await;
}

#[tokio::test]
async fn undecodable_and_wrong_version_frames_close_the_connection() {
    let t = TestServer::start().await;
    let (mut raw, _) = noise_connect(&t, postern_proto::PROTOCOL_VERSION).await;
    raw.send_frame(&[0xff; 7]).await;
    raw.until_closed().await;

    let (mut raw, _) = noise_connect(&t, postern_proto::PROTOCOL_VERSION).await;
    let env = pb::Envelope {
        version: 99,
        id: 1,
        body: Some(pb::envelope::Body::Request(pb::Request {
            kind: Some(pb::request::Kind::Ping(pb::Ping {})),
        })),
    };
    raw.send_frame(&env.encode_to_vec()).await;
    raw.until_closed().await;

    // A client may not send responses or pushes: typed error, then closed.
    let (mut raw, _) = noise_connect(&t, postern_proto::PROTOCOL_VERSION).await;
    let env = pb::Envelope {
        version: postern_proto::PROTOCOL_VERSION,
        id: 5,
        body: Some(pb::envelope::Body::Push(pb::Push::default())),
    };
    raw.send_frame(&env.encode_to_vec()).await;
    let seen = raw.until_closed().await;
    let Some(pb::envelope::Body::Response(pb::Response {
        kind: Some(pb::response::Kind::Error(e)),
    })) = seen.last().and_then(|e| e.body.clone())
    else {
        panic!("expected an error response, got {seen:?}")
    };
    assert_eq!(e.code, pb::ErrorCode::BadRequest as i32);
    still_serves(&t, "carol", "+14155552673").await;
}

#[tokio::test]
async fn extreme_sequence_numbers_do_not_break_the_connection() {
    let t = TestServer::start().await;
    let (client, conn) = t.member("alice", "+14155552671").await;
    drop(conn);
    let mut raw = t.raw_as(&client).await;
    for req in [
        pb::request::Kind::Subscribe(pb::Subscribe {
            after_seq: u64::MAX,
        }),
        pb::request::Kind::Ack(pb::Ack {
            up_to_seq: u64::MAX,
        }),
    ] {
        let resp = raw.call(req).await;
        assert!(matches!(resp, pb::response::Kind::Ok(_)), "{resp:?}");
    }
    let again = raw
        .call(pb::request::Kind::Subscribe(pb::Subscribe { after_seq: 0 }))
        .await;
    assert!(
        matches!(&again, pb::response::Kind::Error(e) if e.code == pb::ErrorCode::BadRequest as i32),
        "one subscription per connection: {again:?}"
    );
    // A message for the device now: the connection must stay usable.
    let (_, mut bob) = t.member("bob", "+14155552672").await;
    bob.send_text(
        &postern_client::Target::Contact(postern_client::Recipient::Username("alice".into())),
        "still there?",
    )
    .await
    .unwrap();
    let resp = raw.call(pb::request::Kind::Ping(pb::Ping {})).await;
    assert!(matches!(resp, pb::response::Kind::Pong(_)), "{resp:?}");
}

#[tokio::test]
async fn an_unknown_protocol_version_gets_a_typed_refusal() {
    let t = TestServer::start().await;
    let (mut raw, hello) = noise_connect(&t, 99).await;
    let err = hello.error.expect("a refusal");
    assert_eq!(err.code, pb::ErrorCode::UnsupportedVersion as i32);
    assert!(err.message.contains("version"));
    assert_closed_quickly(&mut raw.stream).await;
}

#[tokio::test]
async fn a_handshake_for_the_wrong_key_or_garbage_is_dropped() {
    // Garbage that announces a long first record is closed by the timeout.
    let t = TestServer::start_with(|c| c.limits.handshake_timeout = Duration::from_secs(1)).await;
    // Noise for another server's key: the server cannot decrypt it.
    let wrong = postern_proto::keys::NoiseKeypair::generate();
    let me = postern_proto::keys::NoiseKeypair::generate();
    let hello = pb::ClientHello {
        version: postern_proto::PROTOCOL_VERSION,
        software: "x".into(),
    };
    let stream = TcpStream::connect(t.server.client_addr).await.unwrap();
    let result = postern_transport::client_handshake(
        stream,
        &me,
        &wrong.public,
        &hello,
        Duration::from_secs(5),
    )
    .await;
    assert!(result.is_err(), "the handshake must fail");

    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0u8; 3],
        (0..=255u8).collect(),
    ] {
        let mut s = TcpStream::connect(t.server.client_addr).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        if garbage.len() > 3 {
            assert_closed_quickly(&mut s).await;
        }
    }
    still_serves(&t, "alice", "+14155552671").await;
}

#[tokio::test]
async fn silent_connections_time_out() {
    let t =
        TestServer::start_with(|c| c.limits.handshake_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(t.server.client_addr).await.unwrap();
    assert_closed_quickly(&mut s).await;
}

#[tokio::test]
async fn a_flood_of_connections_is_capped_and_the_server_recovers() {
    let t = TestServer::start_with(|c| c.limits.max_connections = 8).await;
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(TcpStream::connect(t.server.client_addr).await.unwrap());
    }
    // Let the server accept them all.
    for _ in 0..50 {
        if t.server.connections() == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.server.connections(), 8);
    let mut extra = TcpStream::connect(t.server.client_addr).await.unwrap();
    assert_closed_quickly(&mut extra).await;
    drop(flood);
    for _ in 0..50 {
        if t.server.connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_serves(&t, "alice", "+14155552671").await;
}

#[tokio::test]
async fn idle_sessions_are_closed_and_pinging_ones_kept() {
    let t = TestServer::start_with(|c| c.limits.idle_timeout = Duration::from_secs(2)).await;
    let mut quiet = t.raw().await;
    let mut chatty = t.raw().await;
    let started = std::time::Instant::now();
    // Pings every 300 ms keep a session alive well past the 2 s timeout.
    while started.elapsed() < Duration::from_millis(4000) {
        let pong = chatty.call(pb::request::Kind::Ping(pb::Ping {})).await;
        assert!(matches!(pong, pb::response::Kind::Pong(_)), "{pong:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(1), quiet.r.recv())
        .await
        .expect("the silent session was closed by now");
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
}
