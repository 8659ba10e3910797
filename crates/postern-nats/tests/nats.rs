//! The client against a real NATS server: the machine's shared one
//! (`POSTERN_TEST_NATS_URL`) for publish/subscribe, and a throwaway
//! `nats-server` process for restarts.

use std::time::Duration;

use bytes::Bytes;
use postern_nats::test_server::TestServer;
use postern_nats::{Client, Event, Events, Options};

fn shared_url() -> Option<String> {
    match std::env::var("POSTERN_TEST_NATS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: POSTERN_TEST_NATS_URL is not set (e.g. nats://127.0.0.1:4222)");
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}.{}.{n}", std::process::id())
}

async fn next_message(events: &mut Events) -> (String, Bytes) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .expect("client alive")
        {
            Event::Message {
                subject, payload, ..
            } => return (subject, payload),
            _ => continue,
        }
    }
}

async fn nothing_for(events: &mut Events, wait: Duration) {
    if let Ok(Some(Event::Message { subject, .. })) =
        tokio::time::timeout(wait, events.recv()).await
    {
        panic!("unexpected message on {subject}");
    }
}

#[tokio::test]
async fn publish_reaches_subscribers_and_only_them() {
    let Some(url) = shared_url() else { return };
    let base = unique("postern-test");
    let (a, mut a_events) = Client::connect(Options::new(&url, "a")).await.unwrap();
    let (b, mut b_events) = Client::connect(Options::new(&url, "b")).await.unwrap();
    let sid = b.subscribe(&format!("{base}.*")).unwrap();
    b.flush().await.unwrap();

    a.publish(&format!("{base}.x"), Bytes::from_static(b"one"))
        .unwrap();
    a.publish(&format!("{base}.y.z"), Bytes::from_static(b"too deep"))
        .unwrap();
    a.publish(&format!("{base}.y"), Bytes::from_static(b"two"))
        .unwrap();
    a.flush().await.unwrap();
    assert_eq!(
        next_message(&mut b_events).await,
        (format!("{base}.x"), Bytes::from_static(b"one"))
    );
    assert_eq!(
        next_message(&mut b_events).await,
        (format!("{base}.y"), Bytes::from_static(b"two"))
    );

    // No echo: a publisher subscribed to its own subject hears nothing.
    a.subscribe(&format!("{base}.x")).unwrap();
    a.flush().await.unwrap();
    a.publish(&format!("{base}.x"), Bytes::from_static(b"three"))
        .unwrap();
    a.flush().await.unwrap();
    assert_eq!(
        next_message(&mut b_events).await.1,
        Bytes::from_static(b"three")
    );
    nothing_for(&mut a_events, Duration::from_millis(200)).await;

    b.unsubscribe(sid);
    b.flush().await.unwrap();
    a.publish(&format!("{base}.x"), Bytes::from_static(b"after"))
        .unwrap();
    a.flush().await.unwrap();
    nothing_for(&mut b_events, Duration::from_millis(300)).await;
    assert_eq!(b.subscriptions(), 0);
}

#[tokio::test]
async fn bad_subjects_and_urls_are_refused_clearly() {
    let err = Client::connect(Options::new("tls://127.0.0.1:4222", "x"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("TLS is not supported"), "{err}");
    // Nothing listens on port 1.
    let err = Client::connect(Options::new("nats://127.0.0.1:1", "x"))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("cannot connect to NATS at 127.0.0.1:1"),
        "{err}"
    );
    let Some(url) = shared_url() else { return };
    let (c, _events) = Client::connect(Options::new(&url, "x")).await.unwrap();
    assert!(c.publish("has space", Bytes::new()).is_err());
    assert!(c.subscribe("").is_err());
    assert!(c.subscribe("a..b").is_err());
}

#[tokio::test]
async fn subscriptions_survive_a_server_restart() {
    let Some(mut server) = TestServer::start() else {
        return;
    };
    let mut opts = Options::new(server.url(), "restart");
    opts.max_backoff = Duration::from_millis(200);
    let (sub, mut events) = Client::connect(opts.clone()).await.unwrap();
    let (publisher, _p_events) = Client::connect(opts).await.unwrap();
    sub.subscribe("wake.>").unwrap();
    sub.flush().await.unwrap();
    publisher
        .publish("wake.1", Bytes::from_static(b"before"))
        .unwrap();
    assert_eq!(
        next_message(&mut events).await.1,
        Bytes::from_static(b"before")
    );

    server.stop();
    // The loss is reported...
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Event::Disconnected(_))) => break,
            Ok(Some(_)) => continue,
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    assert!(!sub.is_connected());
    // ...a publish while down is dropped and counted, not queued...
    publisher
        .publish("wake.2", Bytes::from_static(b"lost"))
        .unwrap();
    server.restart();
    // ...and after the reconnect the subscription works again.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Event::Reconnected)) => break,
            Ok(Some(Event::Message { payload, .. })) => {
                panic!("a publish made while NATS was down arrived: {payload:?}")
            }
            Ok(Some(_)) => continue,
            other => panic!("expected Reconnected, got {other:?}"),
        }
    }
    sub.flush().await.unwrap();
    // The publisher may reconnect a little later than the subscriber.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !publisher.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publisher never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.flush().await.unwrap();
    publisher
        .publish("wake.3", Bytes::from_static(b"after"))
        .unwrap();
    assert_eq!(
        next_message(&mut events).await,
        ("wake.3".into(), Bytes::from_static(b"after"))
    );
    assert!(
        publisher.dropped() >= 1,
        "the publish while down was counted"
    );
}
