//! End-to-end encrypted conversations through a real server: the SDK's MLS
//! layer against the delivery service, on loopback.

mod common;

use std::time::Duration;

use common::TestServer;
use postern_client::{Connection, ReceivedMessage, Target};

fn to(s: &str) -> Target {
    s.parse().unwrap()
}

/// Receives until a non-system message arrives (or times out).
async fn next_message(conn: &mut Connection) -> ReceivedMessage {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("connection open");
        if !m.is_system() {
            return m;
        }
    }
}

#[tokio::test]
async fn a_direct_chat_is_end_to_end_encrypted_both_ways() {
    let server = TestServer::start().await;
    let (_alice, mut a) = server.member("alice", "+14155550101").await;
    let (_bob, mut b) = server.member("bob", "+14155550102").await;

    a.send_text(&to("@bob"), "hello bob").await.unwrap();
    b.sync().await.unwrap();
    let m = next_message(&mut b).await;
    assert_eq!(m.text(), "hello bob");
    assert_eq!(m.from, "@alice");
    assert_eq!(m.conversation, "@alice");

    b.send_text(&to("@alice"), "hi alice").await.unwrap();
    a.sync().await.unwrap();
    let m = next_message(&mut a).await;
    assert_eq!(m.text(), "hi alice");
    assert_eq!(m.from, "@bob");
}
