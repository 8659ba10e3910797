//! End to end through a volunteer's relay: a member whose only working
//! route is a relay registers and holds a conversation, and the relay's
//! forwarding code sees nothing but ciphertext.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use postern_client::{Client, Event, Recipient, Target};
use postern_proto::link::ServerLink;
use postern_relay::{Direction, Hooks, RelayConfig, Tap};

async fn next_text(listener: &mut postern_client::Listener) -> String {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), listener.next())
            .await
            .expect("a message in time")
            .expect("the listener runs");
        if let Event::Message(m) = event
            && !m.is_system()
        {
            return m.text().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_only_route_is_a_relay_talks_and_the_relay_sees_only_ciphertext() {
    let t = TestServer::start().await;
    let cover = postern_relay::testing::start_cover().await;
    let seen: Arc<Mutex<Vec<(Direction, Vec<u8>)>>> = Arc::default();
    let tap: Tap = {
        let seen = seen.clone();
        Arc::new(move |dir, bytes: &[u8]| seen.lock().unwrap().push((dir, bytes.to_vec())))
    };
    let relay = postern_relay::start(
        RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cover: cover.addr.to_string(),
            sni: postern_relay::testing::SNI.into(),
            server: t.server.link.to_string(),
            data_dir: t.dir.path().join("relay"),
            name: Some("test-relay".into()),
            ..RelayConfig::default()
        },
        Hooks { tap: Some(tap) },
    )
    .await
    .unwrap();

    let (bob, _bob_conn) = t.member("bob", "+14155552672").await;

    // Alice's only direct route is dead (a closed port, as a censor's
    // block answers); she holds the relay link.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let link = ServerLink {
        tcp: vec![dead_addr.to_string()],
        noise_key: t.server.link.noise_key,
        ..ServerLink::default()
    };
    let alice = Client::setup(&t.dir.path().join("alice"), &link).unwrap();
    alice.add_relay(relay.link()).unwrap();
    // A relay for another server is refused.
    let mut foreign = relay.link().clone();
    foreign.server_key = Some([9; 32]);
    assert!(alice.add_relay(&foreign).is_err());

    let phone = "+14155552671";
    let mut conn = alice.connect().await.unwrap();
    assert_eq!(
        alice.route_in_use().unwrap(),
        Some(format!("cloak://{}", relay.local_addr()))
    );
    conn.request_code(phone).await.unwrap();
    conn.register(phone, &t.code(phone), Some("alice"), "test")
        .await
        .unwrap();

    let secret_text = "meet me at the old bridge at noon";
    let reply_text = "the old bridge it is";
    let mut bob_events = bob.listen();
    conn.send_text(&Target::Contact(Recipient::Username("bob".into())), secret_text)
        .await
        .unwrap();
    assert_eq!(next_text(&mut bob_events).await, secret_text);

    let mut bob_conn = bob.connect().await.unwrap();
    let mut alice_events = alice.listen();
    bob_conn
        .send_text(&Target::Contact(Recipient::Username("alice".into())), reply_text)
        .await
        .unwrap();
    assert_eq!(next_text(&mut alice_events).await, reply_text);
    drop(alice_events);
    drop(conn);

    // What the relay forwarded: plenty of bytes both ways, none of them
    // the messages, the phone number or the username.
    let seen = seen.lock().unwrap();
    let up: Vec<u8> = seen
        .iter()
        .filter(|(d, _)| *d == Direction::ToServer)
        .flat_map(|(_, b)| b.clone())
        .collect();
    let down: Vec<u8> = seen
        .iter()
        .filter(|(d, _)| *d == Direction::ToClient)
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert!(up.len() > 1000 && down.len() > 1000, "{} / {}", up.len(), down.len());
    for (what, needle) in [
        ("the message", secret_text.as_bytes()),
        ("the reply", reply_text.as_bytes()),
        ("the phone number", phone.as_bytes()),
        ("the phone number's digits", b"4155552671".as_slice()),
        ("the username", b"alice".as_slice()),
    ] {
        for (dir, data) in [("to the server", &up), ("to the member", &down)] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "the relay saw {what} in clear {dir}"
            );
        }
    }
    let m = relay.metrics();
    assert!(m.relayed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(m.splices_for("bad_authenticator"), 0);
}
