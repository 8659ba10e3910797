//! End to end through a volunteer's relay: a member whose only working
//! route is a relay registers and holds a conversation, and the relay's
//! forwarding code sees nothing but ciphertext.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use postern_client::{Client, Event, Recipient, Target};
use postern_proto::link::ServerLink;
use postern_relay::testing::local_config;
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
    type Seen = Arc<Mutex<Vec<(Direction, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let tap: Tap = {
        let seen = seen.clone();
        Arc::new(move |dir, bytes: &[u8]| seen.lock().unwrap().push((dir, bytes.to_vec())))
    };
    let relay = postern_relay::start(
        RelayConfig {
            name: Some("test-relay".into()),
            ..local_config(
                cover.addr,
                &t.server.link.to_string(),
                t.dir.path().join("relay"),
            )
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
    conn.send_text(
        &Target::Contact(Recipient::Username("bob".into())),
        secret_text,
    )
    .await
    .unwrap();
    assert_eq!(next_text(&mut bob_events).await, secret_text);

    let mut bob_conn = bob.connect().await.unwrap();
    let mut alice_events = alice.listen();
    bob_conn
        .send_text(
            &Target::Contact(Recipient::Username("alice".into())),
            reply_text,
        )
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
    assert!(
        up.len() > 1000 && down.len() > 1000,
        "{} / {}",
        up.len(),
        down.len()
    );
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

/// Starts a relay in front of a fresh cover for `t`'s server, with the
/// operator key made from `seed`, reporting every second.
async fn relay_for(
    t: &TestServer,
    name: &str,
    seed: [u8; 32],
) -> (postern_relay::RunningRelay, postern_relay::testing::Cover) {
    use base64::Engine;
    let cover = postern_relay::testing::start_cover().await;
    let data_dir = t.dir.path().join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(
        data_dir.join("operator-key"),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed),
    )
    .unwrap();
    let relay = postern_relay::start(
        RelayConfig {
            name: Some(name.into()),
            regions: vec!["RU".into(), "BY".into()],
            report_interval_secs: 1,
            ..local_config(cover.addr, &t.server.link.to_string(), data_dir)
        },
        Hooks::default(),
    )
    .await
    .unwrap();
    (relay, cover)
}

async fn wait_state(relay: &postern_relay::RunningRelay, want: &str) {
    for _ in 0..100 {
        if relay.server_state() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the relay never became {want}: {}", relay.server_state());
}

fn operator_public(seed: [u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_register_report_get_handed_out_and_retire_to_their_cover() {
    let trusted = [1u8; 32];
    let t =
        TestServer::start_with(|cfg| cfg.relay_operators = vec![operator_public(trusted)]).await;
    let (good, _c1) = relay_for(&t, "trusted-relay", trusted).await;
    let (other, _c2) = relay_for(&t, "stranger-relay", [2u8; 32]).await;
    assert_eq!(good.operator_key(), operator_public(trusted));
    wait_state(&good, "active").await;
    wait_state(&other, "pending").await;

    // The operators' view: both registered, health reported, no secrets.
    let status = t.server.relays().status().await;
    let host = good.link().host.clone();
    let reg = status.registered.iter().find(|r| r.host == host).unwrap();
    assert_eq!(reg.state, "active");
    assert_eq!(reg.regions, ["RU", "BY"]);
    assert!(reg.health.is_some());
    let json = serde_json::to_string(&status).unwrap();
    for relay in [&good, &other] {
        use base64::Engine;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(relay.link().secret);
        assert!(
            !json.contains(&secret),
            "the operators' view shows no relay secret"
        );
    }

    // A new member is given the active relay, not the pending one.
    let (alice, alice_conn) = t.member("alice", "+14155552671").await;
    let held = alice_conn.fetch_relays().await.unwrap();
    assert_eq!(held.links, [good.link().to_string()]);
    alice.set_assigned_relays(&held.links).unwrap();
    assert_eq!(alice.relays().unwrap().len(), 1);

    // An operator approves the stranger's relay; a newcomer may get either.
    t.server.relays().approve(&other.link().host).await.unwrap();
    wait_state(&other, "active").await;

    // Retired: the relay learns it and becomes just its cover site.
    t.server.relays().retire(&host).await.unwrap();
    wait_state(&good, "retired").await;
    let candidate = postern_client::connectivity::Candidate::from_relay(good.link(), 0).unwrap();
    let err = alice
        .probe(&candidate, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err.0,
        postern_transport::carrier::Failure::NotRelay,
        "{err:?}"
    );
    assert!(good.metrics().splices_for("retired") >= 1);
    let (cert, page) =
        postern_relay::testing::fetch_page(good.local_addr(), postern_relay::testing::SNI)
            .await
            .unwrap();
    assert!(!cert.is_empty() && page.contains("ordinary site"));
    // A retired relay cannot come back by registering again, nor be approved.
    assert!(t.server.relays().approve(&host).await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(good.server_state(), "retired");
}

#[tokio::test]
async fn forged_or_foreign_relay_registrations_are_refused() {
    use postern_proto::pb;
    use postern_proto::pb::request::Kind as Req;
    let t = TestServer::start().await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let now = u64::try_from(postern_client::now_ms()).unwrap();
    let link = |server_key: [u8; 32], host: &str| postern_proto::link::RelayLink {
        host: host.into(),
        sni: "www.example.org".into(),
        secret: [1; 32],
        server_key: Some(server_key),
        name: None,
    };
    let ours = t.server.link.noise_key;
    let mut raw = t.raw().await;
    let signed = |l: postern_proto::link::RelayLink, ts: u64, key: &ed25519_dalek::SigningKey| {
        let mut m = pb::RegisterRelay {
            link: l.to_string(),
            capacity: 10,
            timestamp_ms: ts,
            ..Default::default()
        };
        postern_proto::relay_auth::sign_registration(key, &mut m);
        m
    };
    let good = signed(link(ours, "192.0.2.1:443"), now, &key);
    let mut tampered = good.clone();
    tampered.capacity = 1_000_000;
    let cases = [
        ("a tampered registration", tampered),
        (
            "another server's relay",
            signed(link([9; 32], "192.0.2.2:443"), now, &key),
        ),
        (
            "a stale registration",
            signed(link(ours, "192.0.2.3:443"), now - 3_600_000, &key),
        ),
    ];
    for (what, msg) in cases {
        let resp = raw.call(Req::RegisterRelay(msg)).await;
        assert_eq!(
            common::error_code(&resp),
            pb::ErrorCode::BadRequest,
            "{what}: {resp:?}"
        );
    }
    // The genuine one is accepted (pending: the key is not trusted)...
    match raw.call(Req::RegisterRelay(good)).await {
        pb::response::Kind::RelayState(s) => assert_eq!(s.state, "pending"),
        other => panic!("{other:?}"),
    }
    // ...and nobody else can take its host over or report for it.
    let thief = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let stolen = signed(link(ours, "192.0.2.1:443"), now, &thief);
    let resp = raw.call(Req::RegisterRelay(stolen)).await;
    assert_eq!(common::error_code(&resp), pb::ErrorCode::BadRequest);
    let mut health = pb::RelayHealthReport {
        host: "192.0.2.1:443".into(),
        timestamp_ms: now,
        ..Default::default()
    };
    postern_proto::relay_auth::sign_health(&thief, &mut health);
    let resp = raw.call(Req::RelayHealth(health)).await;
    assert_eq!(common::error_code(&resp), pb::ErrorCode::UnknownRelay);
    let status = t.server.relays().status().await;
    assert_eq!(status.registered.len(), 1);
    assert_eq!(status.registered[0].capacity, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_a_member_cannot_reach_is_reported_to_the_distributor() {
    use postern_censor::{Censor, Rule};
    let trusted = [1u8; 32];
    let t =
        TestServer::start_with(|cfg| cfg.relay_operators = vec![operator_public(trusted)]).await;
    let (given, _c1) = relay_for(&t, "relay-a", trusted).await;
    wait_state(&given, "active").await;
    // A relay of alice's own, unknown to the server's distributor.
    let cover = postern_relay::testing::start_cover().await;
    let own = postern_relay::start(
        RelayConfig {
            register: false,
            ..local_config(
                cover.addr,
                &t.server.link.to_string(),
                t.dir.path().join("own-relay"),
            )
        },
        Hooks::default(),
    )
    .await
    .unwrap();

    // Alice reaches the server through a censor, which later blocks it.
    let censor = Censor::new();
    let direct = censor.tcp(t.server.client_addr).await.unwrap();
    let link = ServerLink {
        tcp: vec![direct.to_string()],
        noise_key: t.server.link.noise_key,
        ..ServerLink::default()
    };
    let alice = Client::setup(&t.dir.path().join("alice"), &link).unwrap();
    let mut conn = alice.connect().await.unwrap();
    let phone = "+14155552671";
    conn.request_code(phone).await.unwrap();
    conn.register(phone, &t.code(phone), Some("alice"), "test")
        .await
        .unwrap();
    let held = conn.fetch_relays().await.unwrap();
    assert_eq!(held.links, [given.link().to_string()]);
    alice.set_assigned_relays(&held.links).unwrap();
    // Relays are raced in the order they were added: the given one first.
    tokio::time::sleep(Duration::from_millis(5)).await;
    alice.add_relay(own.link()).unwrap();
    drop(conn);

    // The censor blocks the server and the relay she was given goes away.
    censor.set(t.server.client_addr, Rule::Reset);
    let given_host = given.link().host.clone();
    given.stop().await;
    let conn = alice.connect().await.unwrap();
    assert_eq!(
        alice.route_in_use().unwrap(),
        Some(format!("cloak://{}", own.local_addr()))
    );
    // The report went out on connecting; the distributor counts it (she is
    // the relay's only holder, so her report confirms the block in her
    // country).
    let mut blocked = None;
    for _ in 0..50 {
        let status = t.server.relays().status().await;
        blocked = status
            .relays
            .iter()
            .find(|r| r.name == "registered:relay-a")
            .map(|r| r.blocked_in.clone());
        if blocked.as_ref().is_some_and(|b| !b.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blocked = blocked.expect("the registered relay is listed");
    assert!(
        blocked.contains_key("US"),
        "{blocked:?} ({given_host}); alice's routes: {:?}",
        alice.routes().unwrap()
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_country_vanishing_from_a_relay_mark_it_blocked_there() {
    let trusted = [1u8; 32];
    let t = TestServer::start_with(|cfg| {
        cfg.relay_operators = vec![operator_public(trusted)];
        // One member is a baseline here (the default wants eight).
        cfg.distributor.signal_min_baseline = 1.0;
    })
    .await;
    let (relay, _cover) = relay_for(&t, "relay-s", trusted).await;
    wait_state(&relay, "active").await;
    // Alice's sessions come through the relay: the server sees them from
    // the relay's address, where its registration came from.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let link = ServerLink {
        tcp: vec![dead.local_addr().unwrap().to_string()],
        noise_key: t.server.link.noise_key,
        ..ServerLink::default()
    };
    drop(dead);
    let alice = Client::setup(&t.dir.path().join("alice"), &link).unwrap();
    alice.add_relay(relay.link()).unwrap();
    let mut conn = alice.connect().await.unwrap();
    let phone = "+14155552671";
    conn.request_code(phone).await.unwrap();
    conn.register(phone, &t.code(phone), Some("alice"), "test")
        .await
        .unwrap();
    drop(conn);
    let _again = alice.connect().await.unwrap();
    let relays = t.server.relays();
    let today = postern_server::relays::now().0;
    let blocked = |status: &postern_server::relays::RelaysStatus| {
        status
            .relays
            .iter()
            .find(|r| r.name == "registered:relay-s")
            .map(|r| r.blocked_in.clone())
            .unwrap()
    };
    // The day ends with one member from the US; the next passes with none.
    relays
        .flush_day(postern_distributor::Time(today + postern_distributor::DAY))
        .await
        .unwrap();
    assert!(blocked(&relays.status().await).is_empty());
    relays
        .flush_day(postern_distributor::Time(
            today + 2 * postern_distributor::DAY,
        ))
        .await
        .unwrap();
    let now_blocked = blocked(&relays.status().await);
    assert!(now_blocked.contains_key("US"), "{now_blocked:?}");
}
