//! Two server nodes sharing one PostgreSQL store and a NATS server:
//! members on different nodes converse; NATS restarts mid-conversation; a
//! node dies and its clients move to the other; a node drains on request
//! and its clients move back. Every message arrives exactly once.
//!
//! Needs `POSTERN_TEST_PG_URL` and the `nats-server` binary (a throwaway
//! NATS is started, so the test can restart it); without either it says
//! so and passes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use postern_client::{Client, Connection, Recipient, Target};
use postern_proto::link::ServerLink;
use postern_server::{RunningServer, Server, ServerConfig};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// Long, so that prompt deliveries across nodes are NATS's doing.
const POLL: Duration = Duration::from_secs(60);

fn node_config(
    dir: &Path,
    name: &str,
    store: &str,
    nats: &str,
    listen: SocketAddr,
) -> ServerConfig {
    let mut cfg = common::config(dir);
    cfg.data_dir = dir.join(name);
    cfg.listen = listen;
    cfg.sms.outbox = Some(dir.join("outbox.jsonl"));
    cfg.store = Some(store.to_owned());
    cfg.node.name = Some(name.to_owned());
    // Nodes of one deployment share the phone-index key.
    cfg.legal.phone_index_key = Some(dir.join("phone-index.key"));
    cfg.node.nats = Some(nats.to_owned());
    cfg.node.poll_interval = POLL;
    cfg.node.drain_timeout = Duration::from_secs(10);
    // One log per deployment; these nodes host none.
    cfg.transparency.enabled = false;
    cfg
}

/// A home whose device tries `link`'s endpoint number `first` first.
fn client_starting_at(dir: &Path, name: &str, link: &ServerLink, first: usize) -> Client {
    for i in 0.. {
        let client = Client::setup(&dir.join(format!("{name}-{i}")), link).unwrap();
        if usize::from(client.transport_key()[0]) % link.tcp.len() == first {
            return client;
        }
    }
    unreachable!()
}

async fn register(client: &Client, outbox: &Path, name: &str, phone: &str) -> Connection {
    let mut conn = client.connect().await.unwrap();
    conn.request_code(phone).await.unwrap();
    let code = postern_server::sms::outbox_code(outbox, phone)
        .unwrap()
        .expect("a code in the outbox");
    conn.register(phone, &code, Some(name), "test")
        .await
        .unwrap();
    conn.subscribe().await.unwrap();
    conn
}

/// Reconnects as a member's app would: any node, then catch up and send
/// what the outbox holds.
async fn reconnect(client: &Client) -> Connection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client.connect().await {
            Ok(mut conn) => {
                conn.sync().await.unwrap();
                conn.flush_outbox().await.unwrap();
                conn.subscribe().await.unwrap();
                return conn;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no node took us: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The next `n` texts (system lines skipped), each within `wait`.
async fn texts(conn: &mut Connection, n: usize, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(wait, conn.recv())
            .await
            .unwrap_or_else(|_| panic!("only {got:?} arrived; {} more expected", n - got.len()))
            .unwrap()
            .expect("connection open");
        if !m.is_system() {
            got.push(m.text().to_owned());
        }
    }
    got
}

/// Nothing more arrives for a while (no duplicate).
async fn silent(conn: &mut Connection) {
    if let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(700), conn.recv()).await {
        assert!(m.is_system(), "unexpected extra message {:?}", m.text());
    }
}

async fn send(conn: &mut Connection, to: &str, text: &str) {
    conn.send_text(&Target::Contact(Recipient::Username(to.into())), text)
        .await
        .unwrap();
}

fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn health(server: &RunningServer) -> u16 {
    tls();
    reqwest::get(format!("http://{}/health", server.http_addr))
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn run(store: &str, nats: &mut postern_nats::test_server::TestServer) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (addr_a, addr_b) = (free(), free());
    let cfg_a = node_config(dir.path(), "a", store, &nats.url(), addr_a);
    let a = Server::start(cfg_a.clone()).await.expect("node a starts");
    // Nodes of one service share its Noise key.
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    std::fs::copy(
        dir.path().join("a/server.key"),
        dir.path().join("b/server.key"),
    )
    .unwrap();
    let cfg_b = node_config(dir.path(), "b", store, &nats.url(), addr_b);
    let b = Server::start(cfg_b.clone()).await.expect("node b starts");
    assert_eq!((a.node.as_str(), b.node.as_str()), ("a", "b"));
    let link = ServerLink {
        tcp: vec![addr_a.to_string(), addr_b.to_string()],
        noise_key: a.link.noise_key,
        ..ServerLink::default()
    };
    let outbox = dir.path().join("outbox.jsonl");

    // Alice on node a, Bob on node b.
    let alice = client_starting_at(dir.path(), "alice", &link, 0);
    let bob = client_starting_at(dir.path(), "bob", &link, 1);
    let mut al = register(&alice, &outbox, "alice", "+14155552671").await;
    let mut bo = register(&bob, &outbox, "bob", "+14155552672").await;
    assert_eq!(
        (a.connections(), b.connections()),
        (1, 1),
        "one member per node"
    );

    // 1. Across nodes, both ways, promptly (the poll is a minute away).
    send(&mut al, "bob", "a1").await;
    assert_eq!(texts(&mut bo, 1, Duration::from_secs(5)).await, ["a1"]);
    send(&mut bo, "alice", "b1").await;
    assert_eq!(texts(&mut al, 1, Duration::from_secs(5)).await, ["b1"]);
    send(&mut al, "bob", "a2").await;
    send(&mut al, "bob", "a3").await;
    assert_eq!(
        texts(&mut bo, 2, Duration::from_secs(5)).await,
        ["a2", "a3"]
    );

    // 2. NATS restarts mid-conversation. A wake-up published while it is
    // down is lost; the reconnect makes node b check the store.
    nats.stop();
    send(&mut al, "bob", "a4 (NATS down)").await;
    nats.restart();
    assert_eq!(
        texts(&mut bo, 1, Duration::from_secs(15)).await,
        ["a4 (NATS down)"]
    );
    send(&mut bo, "alice", "b2").await;
    assert_eq!(texts(&mut al, 1, Duration::from_secs(10)).await, ["b2"]);

    // 3. Node a dies mid-conversation. Alice's next send fails; it waits
    // in her outbox, and she reconnects to node b, which sends it.
    a.shutdown().await;
    let failed = al
        .send_text(
            &Target::Contact(Recipient::Username("bob".into())),
            "a5 (a died)",
        )
        .await;
    assert!(failed.is_err(), "the node is gone");
    send(&mut bo, "alice", "b3 (while alice moves)").await;
    drop(al);
    let mut al = reconnect(&alice).await;
    assert_eq!(b.connections(), 2, "alice moved to node b");
    send(&mut al, "bob", "a6").await;
    assert_eq!(
        texts(&mut bo, 2, Duration::from_secs(10)).await,
        ["a5 (a died)", "a6"]
    );
    assert_eq!(
        texts(&mut al, 1, Duration::from_secs(10)).await,
        ["b3 (while alice moves)"]
    );

    // 4. Node a comes back; node b drains: both members get GoAway and
    // move to node a; nothing is lost or repeated.
    let a = Server::start(cfg_a).await.expect("node a restarts");
    let drained = tokio::spawn(b.drain());
    // Both connections are told to go; their next reads end.
    for conn in [&mut al, &mut bo] {
        let end = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
        assert!(
            matches!(end, Ok(Ok(None)) | Ok(Err(_))),
            "the draining node ends the connection"
        );
    }
    drained.await.unwrap();
    drop((al, bo));
    let mut al = reconnect(&alice).await;
    let mut bo = reconnect(&bob).await;
    assert_eq!(a.connections(), 2, "both members on node a now");
    assert_eq!(health(&a).await, 200);
    let node: serde_json::Value = reqwest::get(format!("http://{}/node", a.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (node["node"].as_str(), node["store"].as_str()),
        (Some("a"), Some("postgres"))
    );
    assert_eq!(node["nats"]["connected"], true);
    assert_eq!(node["nats"]["subscriptions"], 2, "one per connected device");
    send(&mut al, "bob", "a7").await;
    send(&mut bo, "alice", "b4").await;
    assert_eq!(texts(&mut bo, 1, Duration::from_secs(10)).await, ["a7"]);
    assert_eq!(texts(&mut al, 1, Duration::from_secs(10)).await, ["b4"]);
    silent(&mut bo).await;
    silent(&mut al).await;
    drop((al, bo));
    a.shutdown().await;
}

#[tokio::test]
async fn two_nodes_share_postgres_and_nats() {
    let Ok(base) = std::env::var("POSTERN_TEST_PG_URL") else {
        eprintln!("skipping: POSTERN_TEST_PG_URL is not set");
        return;
    };
    let Some(mut nats) = postern_nats::test_server::TestServer::start() else {
        return;
    };
    let schema = format!("postern_nodes_test_{}", std::process::id());
    let mut admin = PgConnection::connect(&base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let outcome = std::panic::AssertUnwindSafe(run(&url, &mut nats))
        .catch_unwind()
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn a_node_refuses_an_unreachable_nats_and_a_bad_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.node.nats = Some("nats://127.0.0.1:1".into());
    let err = Server::start(cfg).await.err().expect("refused");
    assert!(
        format!("{err:#}").contains("cannot connect to NATS"),
        "{err:#}"
    );
    let mut cfg = common::config(dir.path());
    cfg.node.name = Some("no spaces please".into());
    let err = Server::start(cfg).await.err().expect("refused");
    assert!(format!("{err:#}").contains("node name"), "{err:#}");
}

#[tokio::test]
async fn a_single_node_drains_with_health_503_and_goaway() {
    tls();
    let t = common::TestServer::start().await;
    let client = t.client("alice");
    let mut conn = client.connect().await.unwrap();
    conn.request_code("+14155552671").await.unwrap();
    conn.register(
        "+14155552671",
        &t.code("+14155552671"),
        Some("alice"),
        "test",
    )
    .await
    .unwrap();
    let node: serde_json::Value = reqwest::get(format!("http://{}/node", t.server.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node["state"], "serving");
    assert_eq!(node["store"], "sqlite");
    assert!(node["node"].as_str().unwrap().starts_with("node-"));
    assert!(node["nats"].is_null());
    let named = std::fs::read_to_string(t.dir.path().join("server/node-id")).unwrap();
    assert_eq!(
        named.trim(),
        node["node"].as_str().unwrap(),
        "the name is kept"
    );
    let http = t.server.http_addr;
    let client_addr = t.server.client_addr;
    // A client still in its handshake keeps the node draining for a while.
    let slow = tokio::net::TcpStream::connect(client_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = tokio::spawn(t.server.drain());
    // The connection gets GoAway and is closed.
    let end = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    let status = reqwest::get(format!("http://{http}/health")).await.unwrap();
    assert_eq!(status.status().as_u16(), 503, "load balancers take it out");
    assert_eq!(status.text().await.unwrap(), "draining\n");
    assert!(!drain.is_finished(), "still waiting for the slow client");
    drop(slow);
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("drained once the last connection left")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(client_addr).await.is_err(),
        "a drained node accepts nothing"
    );
    assert!(reqwest::get(format!("http://{http}/health")).await.is_err());
}
