//! A client and a server talking over real loopback TCP.

use std::time::Duration;

use postern_proto::frame::envelope;
use postern_proto::keys::NoiseKeypair;
use postern_proto::session::SessionError;
use postern_proto::{PROTOCOL_VERSION, pb};
use postern_transport::{TransportError, client_handshake, server_accept, tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(5);

fn client_hello() -> pb::ClientHello {
    pb::ClientHello {
        version: PROTOCOL_VERSION,
        software: "transport-test".into(),
    }
}

fn welcome() -> pb::ServerHello {
    pb::ServerHello {
        version: PROTOCOL_VERSION,
        server_time_ms: 42,
        ..Default::default()
    }
}

fn ping(id: u64) -> pb::Envelope {
    envelope(
        id,
        pb::envelope::Body::Request(pb::Request {
            kind: Some(pb::request::Kind::Ping(pb::Ping {})),
        }),
    )
}

fn deliver(seq: u64, payload_len: usize) -> pb::Envelope {
    envelope(
        0,
        pb::envelope::Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(pb::Deliver {
                messages: vec![pb::QueuedMessage {
                    seq,
                    payload: vec![seq as u8; payload_len].into(),
                    ..Default::default()
                }],
            })),
        }),
    )
}

#[tokio::test]
async fn envelopes_flow_both_ways_at_once() {
    let server_key = NoiseKeypair::generate();
    let client_key = NoiseKeypair::generate();
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();

    let server_secret = *server_key.secret();
    let server = tokio::spawn(async move {
        let (stream, _) = tcp::accept(&listener).await.unwrap();
        let server_key = NoiseKeypair::from_secret(server_secret);
        let (pending, hello) = server_accept(stream, &server_key, TIMEOUT).await.unwrap();
        assert_eq!(hello.client, client_hello());
        let conn = pending.accept(&welcome()).await.unwrap();
        let (mut reader, mut writer) = conn.split();
        let pushes = tokio::spawn(async move {
            let batch: Vec<_> = (0..500).map(|i| deliver(i, 1000)).collect();
            writer.send_batch(&batch).await.unwrap();
            writer.send(&deliver(500, 300_000)).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(env) = reader.recv().await.unwrap() {
            got.push(env);
        }
        pushes.await.unwrap();
        (hello.remote_static, got)
    });

    let stream = tcp::connect(&addr, TIMEOUT).await.unwrap();
    let (conn, hello) = client_handshake(
        stream,
        &client_key,
        &server_key.public,
        &client_hello(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(hello, welcome());
    assert_eq!(conn.remote_static(), &server_key.public);
    let (mut reader, mut writer) = conn.split();
    let sent: Vec<_> = (1..=1000).map(ping).collect();
    let requests = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for chunk in sent.chunks(100) {
                writer.send_batch(chunk).await.unwrap();
            }
            writer.send(&ping(0)).await.unwrap();
            writer.shutdown().await.unwrap();
        })
    };
    let mut received = Vec::new();
    while let Some(env) = reader.recv().await.unwrap() {
        received.push(env);
    }
    requests.await.unwrap();

    let mut expected: Vec<_> = (0..500).map(|i| deliver(i, 1000)).collect();
    expected.push(deliver(500, 300_000));
    assert_eq!(received, expected);

    let (client_static, server_got) = server.await.unwrap();
    assert_eq!(client_static, client_key.public);
    let mut want = sent;
    want.push(ping(0));
    assert_eq!(server_got, want);
}

#[tokio::test]
async fn recv_is_cancel_safe_in_select() {
    let server_key = NoiseKeypair::generate();
    let (client_io, server_io) = tokio::io::duplex(64);
    let server_secret = *server_key.secret();
    let server = tokio::spawn(async move {
        let key = NoiseKeypair::from_secret(server_secret);
        let (pending, _) = server_accept(server_io, &key, TIMEOUT).await.unwrap();
        let (_, mut writer) = pending.accept(&welcome()).await.unwrap().split();
        for i in 0..50 {
            writer.send(&deliver(i, 5000)).await.unwrap();
            tokio::task::yield_now().await;
        }
        writer.shutdown().await.unwrap();
    });
    let (conn, _) = client_handshake(
        client_io,
        &NoiseKeypair::generate(),
        &server_key.public,
        &client_hello(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let (mut reader, _writer) = conn.split();
    let mut got = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_micros(10));
    loop {
        tokio::select! {
            env = reader.recv() => match env.unwrap() {
                Some(env) => got.push(env),
                None => break,
            },
            _ = ticks.tick() => {}
        }
    }
    server.await.unwrap();
    assert_eq!(got, (0..50).map(|i| deliver(i, 5000)).collect::<Vec<_>>());
}

#[tokio::test]
async fn wrong_server_key_fails_at_the_server_and_the_client_sees_it_closed() {
    let server_key = NoiseKeypair::generate();
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (stream, _) = tcp::accept(&listener).await.unwrap();
        server_accept(stream, &server_key, TIMEOUT)
            .await
            .map(|_| ())
    });

    let stream = tcp::connect(&addr, TIMEOUT).await.unwrap();
    let wrong_key = NoiseKeypair::generate().public;
    let client = client_handshake(
        stream,
        &NoiseKeypair::generate(),
        &wrong_key,
        &client_hello(),
        TIMEOUT,
    )
    .await;

    let server_err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            server_err,
            TransportError::Session(SessionError::Handshake(snow::Error::Decrypt))
        ),
        "{server_err:?}"
    );
    let client_err = client.unwrap_err();
    assert!(
        matches!(
            client_err,
            TransportError::Closed | TransportError::Timeout | TransportError::Io(_)
        ),
        "{client_err:?}"
    );
}

#[tokio::test]
async fn refusal_reaches_the_client() {
    let server_key = NoiseKeypair::generate();
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let refusal = pb::ServerHello {
        version: PROTOCOL_VERSION,
        error: Some(pb::Error {
            code: pb::ErrorCode::UnsupportedVersion.into(),
            message: "please update Postern".into(),
            retry_after_ms: 0,
            current_epoch: 0,
        }),
        ..Default::default()
    };
    let server_secret = *server_key.secret();
    let server_refusal = refusal.clone();
    let server = tokio::spawn(async move {
        let (stream, _) = tcp::accept(&listener).await.unwrap();
        let key = NoiseKeypair::from_secret(server_secret);
        let (pending, _) = server_accept(stream, &key, TIMEOUT).await.unwrap();
        pending.refuse(&server_refusal).await.unwrap();
    });

    let stream = tcp::connect(&addr, TIMEOUT).await.unwrap();
    let (conn, hello) = client_handshake(
        stream,
        &NoiseKeypair::generate(),
        &server_key.public,
        &client_hello(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(hello, refusal);
    let (mut reader, _) = conn.split();
    assert!(reader.recv().await.unwrap().is_none(), "server closed");
    server.await.unwrap();
}

#[tokio::test]
async fn silent_server_times_out_the_handshake() {
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut stream, _) = tcp::accept(&listener).await.unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let stream = tcp::connect(&addr, TIMEOUT).await.unwrap();
    let result = client_handshake(
        stream,
        &NoiseKeypair::generate(),
        &NoiseKeypair::generate().public,
        &client_hello(),
        Duration::from_millis(200),
    )
    .await;
    assert!(matches!(result, Err(TransportError::Timeout)));
    server.abort();
}

#[tokio::test]
async fn connection_cut_mid_record_is_reported() {
    let server_key = NoiseKeypair::generate();
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server_secret = *server_key.secret();
    let server = tokio::spawn(async move {
        let key = NoiseKeypair::from_secret(server_secret);
        let (pending, _) = server_accept(server_io, &key, TIMEOUT).await.unwrap();
        let conn = pending.accept(&welcome()).await.unwrap();
        let (_, mut writer) = conn.split();
        writer.send(&ping(1)).await.unwrap();
        drop(writer);
    });
    let (conn, _) = client_handshake(
        client_io,
        &NoiseKeypair::generate(),
        &server_key.public,
        &client_hello(),
        TIMEOUT,
    )
    .await
    .unwrap();
    server.await.unwrap();
    let (mut reader, _) = conn.split();
    assert_eq!(reader.recv().await.unwrap(), Some(ping(1)));
    assert!(reader.recv().await.unwrap().is_none());

    // A peer that stops in the middle of a record.
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let server_secret = *server_key.secret();
    let server = tokio::spawn(async move {
        let key = NoiseKeypair::from_secret(server_secret);
        let (pending, _) = server_accept(&mut server_io, &key, TIMEOUT).await.unwrap();
        pending.accept(&welcome()).await.unwrap();
        server_io.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    });
    let (conn, _) = client_handshake(
        client_io,
        &NoiseKeypair::generate(),
        &server_key.public,
        &client_hello(),
        TIMEOUT,
    )
    .await
    .unwrap();
    server.await.unwrap();
    let (mut reader, _) = conn.split();
    assert!(matches!(
        reader.recv().await,
        Err(TransportError::Truncated(5))
    ));
}

#[tokio::test]
async fn connect_reports_unreachable_addresses() {
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = tcp::connect(&addr, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert!(matches!(
        tcp::bind("256.0.0.1:0").await,
        Err(TransportError::Bind { .. })
    ));
}
