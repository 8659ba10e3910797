//! End-to-end encrypted conversations through a real server: the SDK's MLS
//! layer against the delivery service, on loopback.

mod common;

use std::time::Duration;

use common::TestServer;
use postern_client::{Connection, ReceivedMessage, Target};
use postern_proto::pb;

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
    assert_eq!(
        events(&got),
        vec![
            "@alice added you to a group",
            "the group is called #friends"
        ]
    );
    assert_eq!(texts(&got), vec!["welcome bob"]);
    assert!(
        got.iter()
            .filter(|m| !m.is_system())
            .all(|m| m.conversation == "#friends")
    );

    b.add_members(&to("#friends"), &["@carol".parse().unwrap()])
        .await
        .unwrap();
    c.sync().await.unwrap();
    assert_eq!(
        events(&drain(&mut c, Duration::from_millis(300)).await),
        vec!["@bob added you to a group", "the group is called #friends"]
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
            "@alice added you to a group",
            "the group is called #club",
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

#[tokio::test]
async fn a_new_device_joins_every_conversation_and_a_removed_one_reads_nothing_more() {
    let server = TestServer::start().await;
    let (_, mut a) = server.member("alice", "+14155550501").await;
    let (_, mut b) = server.member("bob", "+14155550502").await;
    let (carol, mut c) = server.member("carol", "+14155550503").await;
    a.send_text(&to("@bob"), "before the tablet").await.unwrap();
    a.create_group(
        "team",
        &["@bob".parse().unwrap(), "@carol".parse().unwrap()],
    )
    .await
    .unwrap();
    b.sync().await.unwrap();
    drain(&mut b, Duration::from_millis(200)).await;

    // Bob links a tablet: it joins both conversations by external commit.
    let token = b.create_link_token().await.unwrap();
    let tablet = server.client("bob-tablet");
    let mut t = tablet.connect().await.unwrap();
    let addr = t.link_device(&token, "tablet").await.unwrap();
    assert_eq!(addr.device, 2);
    // Bob's phone sees its new device join and tells it the group's name.
    b.sync().await.unwrap();
    t.sync().await.unwrap();
    let mut joined: Vec<String> = tablet
        .with_home(|h| h.conversations())
        .unwrap()
        .iter()
        .map(|c| tablet.conversation_name(c))
        .collect();
    joined.sort();
    assert_eq!(joined, vec!["#team", "@alice"]);

    a.sync().await.unwrap();
    let seen = events(&drain(&mut a, Duration::from_millis(300)).await);
    assert_eq!(
        seen.iter()
            .filter(|e| *e == "@bob joined from a new device")
            .count(),
        2,
        "{seen:?}"
    );

    // It reads what is sent after it joined, in both, and can write.
    a.send_text(&to("@bob"), "hello tablet").await.unwrap();
    c.send_text(&to("#team"), "hello team").await.unwrap();
    t.sync().await.unwrap();
    let mut got = texts(&drain(&mut t, Duration::from_millis(300)).await);
    got.sort();
    assert_eq!(got, vec!["hello tablet", "hello team"]);
    t.send_text(&to("#team"), "typed on the tablet")
        .await
        .unwrap();
    c.sync().await.unwrap();
    let got = drain(&mut c, Duration::from_millis(300)).await;
    let m = got.iter().find(|m| !m.is_system()).expect("carol gets it");
    assert_eq!((m.from.as_str(), m.text()), ("@bob", "typed on the tablet"));
    // Bob's phone sees what his tablet sent, as his own.
    b.sync().await.unwrap();
    let got = drain(&mut b, Duration::from_millis(300)).await;
    let own = got
        .iter()
        .find(|m| m.text() == "typed on the tablet")
        .expect("bob's phone gets it");
    assert_eq!(own.from, "you");

    // Bob removes the tablet from his phone.
    drop(t);
    let removed_from = b.remove_device(2).await.unwrap();
    assert_eq!(removed_from, 2);
    assert!(
        tablet.connect().await.unwrap().device().is_none(),
        "the server no longer knows the tablet's key"
    );
    a.sync().await.unwrap();
    let seen = events(&drain(&mut a, Duration::from_millis(300)).await);
    assert!(
        seen.contains(&"@bob removed a device of @bob".to_owned()),
        "{seen:?}"
    );

    // A message sent now: the tablet's MLS state cannot open it. Take
    // the ciphertext from carol's queue, as a thief holding the tablet's
    // keys and a copy of the traffic would.
    let mut raw = server.raw_as(&carol).await;
    let after_seq = carol.with_home(|h| h.last_seq()).unwrap();
    raw.call(pb::request::Kind::Subscribe(pb::Subscribe { after_seq }))
        .await;
    a.send_text(&to("#team"), "after the removal")
        .await
        .unwrap();
    let is_application = |m: &pb::QueuedMessage| {
        postern_proto::mls::framed_header(&m.payload)
            .is_ok_and(|h| h.content_type == postern_proto::mls::ContentType::Application)
    };
    let queued = 'found: loop {
        let env = tokio::time::timeout(Duration::from_secs(10), raw.r.recv())
            .await
            .expect("carol's copy arrives")
            .unwrap()
            .unwrap();
        if let Some(pb::envelope::Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(d)),
        })) = env.body
        {
            for m in d.messages {
                if is_application(&m) {
                    break 'found m;
                }
            }
        }
    };
    let opened = tablet.with_engine(|e, _| {
        let mut g = e
            .load(&queued.group_id)
            .unwrap()
            .expect("the tablet still has its old state");
        let msg = postern_client::mls::parse(&queued.payload).unwrap();
        Ok(e.process(&mut g, msg.try_into_protocol_message().unwrap())
            .map(|_| ()))
    });
    assert!(
        matches!(opened, Ok(Err(_)) | Err(_)),
        "a removed device cannot decrypt later messages"
    );
    // Carol, still a member, reads it.
    c.sync().await.unwrap();
    assert!(
        texts(&drain(&mut c, Duration::from_millis(300)).await)
            .contains(&"after the removal".to_owned())
    );
}

/// Every place in `dir` — the bytes of every file (database, WAL, logs,
/// outbox) and every value of every table of every SQLite database — where
/// `needle` occurs.
async fn find_everywhere(dir: &std::path::Path, needle: &str) -> Vec<String> {
    use sqlx::{Column, Connection, Row};
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut databases = Vec::new();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            hits.push(format!("file {}", path.display()));
        }
        if bytes.starts_with(b"SQLite format 3\0") {
            databases.push(path);
        }
    }
    for db in databases {
        let url = format!("sqlite://{}?mode=ro", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for table in tables {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{table}\"")))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            for row in rows {
                for (i, column) in row.columns().iter().enumerate() {
                    let value: Option<Vec<u8>> = row
                        .try_get::<Option<Vec<u8>>, _>(i)
                        .or_else(|_| {
                            row.try_get::<Option<String>, _>(i)
                                .map(|s| s.map(String::into_bytes))
                        })
                        .unwrap_or(None);
                    if value
                        .is_some_and(|v| v.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    {
                        hits.push(format!("{table}.{}", column.name()));
                    }
                }
            }
        }
    }
    hits
}

#[tokio::test]
async fn the_server_never_holds_a_byte_of_plaintext() {
    let server = TestServer::start().await;
    let (_, mut a) = server.member("alice", "+14155550601").await;
    let (_, mut b) = server.member("bob", "+14155550602").await;
    let (_, _c) = server.member("carol", "+14155550603").await;
    let direct = format!("direct-secret-{:016x}", nonce());
    let grouped = format!("group-secret-{:016x}", nonce());
    a.send_text(&to("@bob"), &direct).await.unwrap();
    a.create_group(
        "plans",
        &["@bob".parse().unwrap(), "@carol".parse().unwrap()],
    )
    .await
    .unwrap();
    a.send_text(&to("#plans"), &grouped).await.unwrap();
    // Bob reads (and acks) them; carol's copies stay queued, unread.
    b.sync().await.unwrap();
    let got = texts(&drain(&mut b, Duration::from_millis(300)).await);
    assert_eq!(got, vec![direct.clone(), grouped.clone()]);

    let data = server.dir.path().join("server");
    // The scan finds what the server does hold (a positive control: the
    // username; phone numbers are sealed in the vault) ...
    assert!(!find_everywhere(&data, "alice").await.is_empty());
    assert!(find_everywhere(&data, "+14155550601").await.is_empty());
    // ... and none of the plaintext, nor the group's name.
    for secret in [&direct, &grouped, &"plans".to_owned()] {
        let hits = find_everywhere(&data, secret).await;
        assert!(hits.is_empty(), "{secret:?} found in {hits:?}");
    }
    // The members' homes do hold it (decrypted, as they should).
    let hits = find_everywhere(&server.dir.path().join("bob"), &direct).await;
    assert!(!hits.is_empty(), "the scan would have found it");
}

/// A value no other run uses, so a hit cannot come from elsewhere.
fn nonce() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test]
async fn conversations_survive_restarting_the_server_and_the_clients() {
    let server = TestServer::start().await;
    let (_, mut a) = server.member("alice", "+14155550701").await;
    let (_, mut b) = server.member("bob", "+14155550702").await;
    let (_, _c) = server.member("carol", "+14155550703").await;
    a.send_text(&to("@bob"), "before").await.unwrap();
    a.create_group("crew", &["@bob".parse().unwrap()])
        .await
        .unwrap();
    b.sync().await.unwrap();
    drain(&mut b, Duration::from_millis(200)).await;
    a.send_text(&to("#crew"), "queued while bob is away")
        .await
        .unwrap();
    drop((a, b));

    // The server goes down and comes back on the same data and address.
    let addr = server.server.client_addr;
    let mut cfg = common::config(server.dir.path());
    cfg.listen = addr;
    let TestServer {
        server: running,
        dir,
        ..
    } = server;
    running.shutdown().await;
    let running = postern_server::Server::start(cfg).await.unwrap();

    // The members come back from their homes alone.
    let alice = postern_client::Client::open(&dir.path().join("alice")).unwrap();
    let bob = postern_client::Client::open(&dir.path().join("bob")).unwrap();
    let mut a = alice.connect().await.unwrap();
    let mut b = bob.connect().await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(
        texts(&drain(&mut b, Duration::from_millis(300)).await),
        vec!["queued while bob is away"]
    );
    a.add_members(&to("#crew"), &["@carol".parse().unwrap()])
        .await
        .unwrap();
    b.send_text(&to("#crew"), "after the restart")
        .await
        .unwrap();
    b.send_text(&to("@alice"), "still private").await.unwrap();
    a.sync().await.unwrap();
    let mut got = texts(&drain(&mut a, Duration::from_millis(300)).await);
    got.sort();
    assert_eq!(got, vec!["after the restart", "still private"]);
    running.shutdown().await;
}

#[tokio::test]
async fn the_deployment_chooses_the_ciphersuite() {
    let suite = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519";
    let server = TestServer::start_with(|c| c.mls_ciphersuite = suite.into()).await;
    let (alice, mut a) = server.member("alice", "+14155550901").await;
    let (_, mut b) = server.member("bob", "+14155550902").await;
    assert_eq!(
        alice.ciphersuite(),
        openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
    );
    a.send_text(&to("@bob"), "over chacha").await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(
        texts(&drain(&mut b, Duration::from_millis(300)).await),
        vec!["over chacha"]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.mls_ciphersuite = "MLS_256_DHKEMP384_AES256GCM_SHA384_P384".into();
    let err = postern_server::Server::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("not one Postern supports"),
        "{err}"
    );
}

#[tokio::test]
async fn a_device_tops_up_its_key_packages_when_the_server_says_they_are_low() {
    let server = TestServer::start().await;
    let (alice, a) = server.member("alice", "+14155551001").await;
    let (bob, _) = server.member("bob", "+14155551002").await;
    drop(a);
    let mut raw = server.raw_as(&bob).await;
    // Bob takes all twenty one-time packages; the last resort remains.
    for _ in 0..20 {
        assert!(!claim_is_last_resort(&mut raw, &alice).await);
    }
    assert!(
        claim_is_last_resort(&mut raw, &alice).await,
        "only the last resort is left"
    );
    // Alice's next session notices and uploads a fresh batch.
    let mut a = alice.connect().await.unwrap();
    a.sync().await.unwrap();
    assert!(
        !claim_is_last_resort(&mut raw, &alice).await,
        "one-time packages again"
    );
}

/// Claims one of `of`'s key packages; true if it was the last-resort one.
async fn claim_is_last_resort(raw: &mut common::Raw, of: &postern_client::Client) -> bool {
    let req = pb::request::Kind::ClaimKeyPackages(pb::ClaimKeyPackages {
        account_id: of.device().unwrap().account.0.to_vec().into(),
    });
    match raw.call(req).await {
        pb::response::Kind::ClaimedKeyPackages(c) => c.key_packages[0].last_resort,
        other => panic!("{other:?}"),
    }
}

/// A TCP relay between a client and the server that, once armed, passes on
/// the next large client write (a commit, with its tree) and then cuts the
/// connection before the server's answer comes back: the commit reaches the
/// server, its sender never learns the outcome.
struct Cutter {
    addr: std::net::SocketAddr,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cutter {
    async fn start(server: std::net::SocketAddr) -> Cutter {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = std::sync::Arc::new(AtomicBool::new(false));
        let flag = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let cut = std::sync::Arc::new(AtomicBool::new(false));
                let (flag, cut_up, cut_down) = (flag.clone(), cut.clone(), cut.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if n >= 1000 && flag.swap(false, Ordering::SeqCst) {
                            cut_up.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = ur.read(&mut buf).await {
                        if n == 0 || cut_down.load(Ordering::SeqCst) {
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Dropping `cw` closes the client's side.
                });
            }
        });
        Cutter { addr, armed }
    }
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_settled_on_the_next_connection() {
    let server = TestServer::start().await;
    let cutter = Cutter::start(server.server.client_addr).await;
    // Alice reaches the server through the cutter.
    let link = postern_proto::link::ServerLink {
        tcp: vec![cutter.addr.to_string()],
        noise_key: server.server.link.noise_key,
        ..Default::default()
    };
    let alice = postern_client::Client::setup(&server.dir.path().join("alice"), &link).unwrap();
    let mut a = alice.connect().await.unwrap();
    a.request_code("+14155551101").await.unwrap();
    a.register(
        "+14155551101",
        &server.code("+14155551101"),
        Some("alice"),
        "phone",
    )
    .await
    .unwrap();
    let (_, mut b) = server.member("bob", "+14155551102").await;
    let (_, mut c) = server.member("carol", "+14155551103").await;
    a.create_group("ops", &["@bob".parse().unwrap()])
        .await
        .unwrap();
    b.sync().await.unwrap();

    // The commit adding carol reaches the server; the answer never comes.
    cutter
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = a
        .add_members(&to("#ops"), &["@carol".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(alice.with_home(|h| h.pending_commits()).unwrap().len(), 1);
    drop(a);

    // The next connection repeats the recorded commit with its id: the
    // server recognises it, and alice's group moves on to where the others
    // are.
    let mut a = alice.connect().await.unwrap();
    a.sync().await.unwrap();
    assert!(alice.with_home(|h| h.pending_commits()).unwrap().is_empty());
    c.sync().await.unwrap();
    c.send_text(&to("#ops"), "carol is in").await.unwrap();
    for conn in [&mut a, &mut b] {
        conn.sync().await.unwrap();
        let got = texts(&drain(conn, Duration::from_millis(300)).await);
        assert!(got.contains(&"carol is in".to_owned()), "{got:?}");
    }
}
