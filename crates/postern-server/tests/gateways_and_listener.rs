//! The webhook SMS gateway against a real HTTP endpoint on loopback, and
//! the client SDK's reconnecting listener across a server restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use postern_client::{ConnectionState, Event, Recipient, Target};
use postern_proto::pb::ErrorCode;
use postern_server::Server;
use postern_server::config::SmsGatewayKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 endpoint that records request bodies and answers
/// every request with `status`.
async fn endpoint(status: u16) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then exactly Content-Length bytes of body.
            let body = loop {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            if let Some(body) = body {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
            }
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    (url, seen)
}

#[tokio::test]
async fn the_webhook_gateway_posts_the_code_as_json() {
    let (url, seen) = endpoint(200).await;
    let t = TestServer::start_with(|c| {
        c.sms.gateway = SmsGatewayKind::Webhook;
        c.sms.webhook_url = Some(url);
    })
    .await;
    let client = t.client("alice");
    let mut conn = client.connect().await.unwrap();
    conn.request_code("+1 415 555 2671").await.unwrap();
    let body = seen.lock().unwrap().pop().expect("one POST");
    assert_eq!(body["phone"], "+14155552671");
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    assert!(body["text"].as_str().unwrap().contains(&code));
    conn.register("+14155552671", &code, None, "x")
        .await
        .unwrap();
    assert!(
        !t.outbox.exists(),
        "the outbox is not used with the webhook gateway"
    );
}

#[tokio::test]
async fn a_failing_webhook_is_a_clear_error() {
    let (url, _) = endpoint(500).await;
    let t = TestServer::start_with(|c| {
        c.sms.gateway = SmsGatewayKind::Webhook;
        c.sms.webhook_url = Some(url);
    })
    .await;
    let conn = t.client("alice").connect().await.unwrap();
    let err = conn.request_code("+14155552671").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Internal));
    assert!(err.to_string().contains("SMS"), "{err}");
}

async fn next_event(l: &mut postern_client::Listener) -> Event {
    tokio::time::timeout(Duration::from_secs(15), l.next())
        .await
        .expect("an event within 15 s")
        .unwrap()
}

#[tokio::test]
async fn the_listener_reports_state_and_reconnects_after_a_restart() {
    let t = TestServer::start().await;
    let (bob, _) = t.member("bob", "+14155552672").await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let mut listener = bob.listen();
    assert!(matches!(
        next_event(&mut listener).await,
        Event::State(ConnectionState::Connecting)
    ));
    assert!(matches!(
        next_event(&mut listener).await,
        Event::State(ConnectionState::Updating { .. })
    ));
    assert!(matches!(
        next_event(&mut listener).await,
        Event::State(ConnectionState::Ready { .. })
    ));
    alice
        .send_text(&Target::Contact(Recipient::Username("bob".into())), "first")
        .await
        .unwrap();
    let m = loop {
        match next_event(&mut listener).await {
            Event::Message(m) if !m.is_system() => break m,
            Event::Message(_) => continue,
            e => panic!("expected a message, got {e:?}"),
        }
    };
    assert_eq!(m.text(), "first");

    // Stop the server; the listener notices and keeps retrying.
    let addr = t.server.client_addr;
    let mut cfg = common::config(t.dir.path());
    cfg.listen = addr;
    let TestServer { server, dir, .. } = t;
    drop(alice);
    server.shutdown().await;
    let Event::State(ConnectionState::Disconnected { .. }) = next_event(&mut listener).await else {
        panic!("expected a disconnection")
    };

    // Same data, same address: the listener gets back in and delivery goes on.
    let server = Server::start(cfg).await.unwrap();
    let alice = postern_client::Client::open(&dir.path().join("alice")).unwrap();
    let mut conn = alice.connect().await.unwrap();
    conn.send_text(
        &Target::Contact(Recipient::Username("bob".into())),
        "second",
    )
    .await
    .unwrap();
    loop {
        match next_event(&mut listener).await {
            Event::Message(m) if !m.is_system() => {
                assert_eq!(m.text(), "second");
                break;
            }
            _ => continue,
        }
    }
    server.shutdown().await;
}
