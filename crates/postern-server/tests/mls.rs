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

/// Receives everything that arrives within `idle`, messages and events.
async fn drain(conn: &mut Connection, idle: Duration) -> Vec<ReceivedMessage> {
    let mut out = Vec::new();
    while let Ok(next) = tokio::time::timeout(idle, conn.recv()).await {
        match next.unwrap() {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

fn texts(ms: &[ReceivedMessage]) -> Vec<String> {
    ms.iter()
        .filter(|m| !m.is_system())
        .map(|m| m.text().to_owned())
        .collect()
}

fn events(ms: &[ReceivedMessage]) -> Vec<String> {
    ms.iter()
        .filter(|m| m.is_system())
        .map(|m| m.text().to_owned())
        .collect()
}

#[tokio::test]
async fn three_members_talk_in_a_group_and_see_who_joins_and_leaves() {
    let server = TestServer::start().await;
    let (_, mut a) = server.member("alice", "+14155550201").await;
    let (_, mut b) = server.member("bob", "+14155550202").await;
    let (_, mut c) = server.member("carol", "+14155550203").await;

    let group = a
        .create_group("friends", &["@bob".parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(group.name, "friends");
    a.send_text(&to("#friends"), "welcome bob").await.unwrap();
    b.sync().await.unwrap();
    let got = drain(&mut b, Duration::from_millis(300)).await;
    assert_eq!(events(&got), vec!["@alice added you to #friends"]);
    assert_eq!(texts(&got), vec!["welcome bob"]);
    assert!(got.iter().all(|m| m.conversation == "#friends"));

    b.add_members(&to("#friends"), &["@carol".parse().unwrap()])
        .await
        .unwrap();
    c.sync().await.unwrap();
    assert_eq!(
        events(&drain(&mut c, Duration::from_millis(300)).await),
        vec!["@bob added you to #friends"]
    );
    c.send_text(&to("#friends"), "hi all").await.unwrap();
    a.sync().await.unwrap();
    let got = drain(&mut a, Duration::from_millis(300)).await;
    assert_eq!(events(&got), vec!["@bob added @carol"]);
    assert_eq!(texts(&got), vec!["hi all"]);
    b.sync().await.unwrap();
    assert_eq!(
        texts(&drain(&mut b, Duration::from_millis(300)).await),
        vec!["hi all"]
    );

    // Carol leaves; the remaining member with the lowest leaf (alice)
    // commits her removal, and bob sees it.
    c.leave_group(&to("#friends")).await.unwrap();
    a.sync().await.unwrap();
    let got = drain(&mut a, Duration::from_millis(300)).await;
    assert_eq!(texts(&got), vec!["(left the group)"]);
    b.sync().await.unwrap();
    let got = drain(&mut b, Duration::from_millis(300)).await;
    assert!(
        events(&got).contains(&"@alice removed @carol".to_owned()),
        "{:?}",
        events(&got)
    );
    let members: Vec<String> = b
        .group_members(&group.group_id)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(!members.contains(&"@carol".to_owned()));
}

#[tokio::test]
async fn an_offline_member_catches_up_across_several_epochs() {
    let server = TestServer::start().await;
    let (_, mut a) = server.member("alice", "+14155550301").await;
    let (bob, b) = server.member("bob", "+14155550302").await;
    let (_, _c) = server.member("carol", "+14155550303").await;
    let (_, _d) = server.member("dave", "+14155550304").await;
    drop(b);
    a.create_group("club", &["@bob".parse().unwrap()])
        .await
        .unwrap();
    a.send_text(&to("#club"), "one").await.unwrap();
    a.add_members(&to("#club"), &["@carol".parse().unwrap()])
        .await
        .unwrap();
    a.send_text(&to("#club"), "two").await.unwrap();
    a.add_members(&to("#club"), &["@dave".parse().unwrap()])
        .await
        .unwrap();
    a.remove_members(&to("#club"), &["@carol".parse().unwrap()])
        .await
        .unwrap();
    a.send_text(&to("#club"), "three").await.unwrap();

    // Bob was offline for four epochs; his queue holds the Welcome, the
    // commits and the messages in order.
    let mut b = bob.connect().await.unwrap();
    b.sync().await.unwrap();
    let got = drain(&mut b, Duration::from_millis(300)).await;
    assert_eq!(texts(&got), vec!["one", "two", "three"]);
    assert_eq!(
        events(&got),
        vec![
            "@alice added you to #club",
            "@alice added @carol",
            "@alice added @dave",
            "@alice removed @carol"
        ]
    );
    b.send_text(&to("#club"), "back").await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(
        texts(&drain(&mut a, Duration::from_millis(300)).await),
        vec!["back"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_one_wins_the_other_retries_and_both_converge() {
    let server = TestServer::start().await;
    let (_, mut a) = server.member("alice", "+14155550401").await;
    let (_, mut b) = server.member("bob", "+14155550402").await;
    let (_, mut c) = server.member("carol", "+14155550403").await;
    let (_, mut d) = server.member("dave", "+14155550404").await;
    let group = a
        .create_group("race", &["@bob".parse().unwrap()])
        .await
        .unwrap();
    b.sync().await.unwrap();

    // Both commit at the same epoch; the server takes one first.
    let (group_target, carol, dave) = (
        to("#race"),
        ["@carol".parse().unwrap()],
        ["@dave".parse().unwrap()],
    );
    let (ra, rb) = tokio::join!(
        a.add_members(&group_target, &carol),
        b.add_members(&group_target, &dave),
    );
    ra.unwrap();
    rb.unwrap();
    assert!(
        a.lost_races() + b.lost_races() >= 1,
        "one of the two commits lost the race and was rebuilt"
    );
    for conn in [&mut a, &mut b, &mut c, &mut d] {
        conn.sync().await.unwrap();
    }
    let names = |conn: &Connection| -> Vec<String> {
        let mut n: Vec<String> = conn
            .group_members(&group.group_id)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        n.sort();
        n
    };
    let seen_by_alice = names(&a);
    assert_eq!(seen_by_alice.len(), 4, "{seen_by_alice:?}");
    assert_eq!(names(&b).len(), 4);
    // Everyone is in the same epoch: a message from each reaches the others.
    c.send_text(&to("#race"), "from carol").await.unwrap();
    d.send_text(&to("#race"), "from dave").await.unwrap();
    a.sync().await.unwrap();
    let mut got = texts(&drain(&mut a, Duration::from_millis(300)).await);
    got.sort();
    assert_eq!(got, vec!["from carol", "from dave"]);
}
