//! Failover under a censor: a server listening on every carrier, two
//! members reaching it only through the censor harness, and routes blocked
//! one by one while they talk. Every message must arrive exactly once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestServer;
use postern_censor::{Censor, Rule};
use postern_client::{
    Client, ClientError, Connection, ConnectionState, Connectivity, Event, Racing, Recipient,
    Target,
};
use postern_proto::link::ServerLink;
use tokio::sync::mpsc;

/// The server's real addresses and the censor in front of them.
struct Censored {
    t: TestServer,
    censor: Censor,
    tcp: SocketAddr,
    tls: SocketAddr,
    wss: SocketAddr,
    quic: SocketAddr,
    link: ServerLink,
}

async fn censored_server() -> Censored {
    let t = TestServer::start_with(|cfg| {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        cfg.carriers.tls = Some(any);
        cfg.carriers.wss = Some(any);
        cfg.carriers.quic = Some(any);
        cfg.carriers.wss_path = "/chat".into();
    })
    .await;
    let c = t.server.carriers;
    let (tcp, tls, wss, quic) = (
        t.server.client_addr,
        c.tls.unwrap(),
        c.wss.unwrap(),
        c.quic.unwrap(),
    );
    let censor = Censor::new();
    let link = ServerLink {
        tcp: vec![censor.tcp(tcp).await.unwrap().to_string()],
        tls: vec![censor.tcp(tls).await.unwrap().to_string()],
        wss: vec![format!("{}/chat", censor.tcp(wss).await.unwrap())],
        quic: vec![censor.udp(quic).await.unwrap().to_string()],
        sni: None,
        cert_sha256: t.server.link.cert_sha256,
        noise_key: t.server.link.noise_key,
        ..ServerLink::default()
    };
    assert!(
        link.cert_sha256.is_some(),
        "a generated certificate is pinned"
    );
    Censored {
        t,
        censor,
        tcp,
        tls,
        wss,
        quic,
        link,
    }
}

/// Quick to notice a dead route, as a test (or an impatient member) wants.
fn fast() -> Connectivity {
    Connectivity {
        racing: Racing {
            attempt_timeout: Duration::from_secs(3),
            ..Racing::default()
        },
        request_timeout: Duration::from_secs(2),
        ping_every: Duration::from_millis(700),
    }
}

impl Censored {
    async fn member(&self, name: &str, phone: &str) -> Client {
        let client = Client::setup(&self.t.dir.path().join(name), &self.link).unwrap();
        client.set_connectivity(fast());
        let mut conn = client.connect().await.unwrap();
        conn.request_code(phone).await.unwrap();
        conn.register(phone, &self.t.code(phone), Some(name), "test")
            .await
            .unwrap();
        client
    }
}

/// Sends `text` to bob, reconnecting (and racing) as often as it takes;
/// a message that may have reached the server is sent again with the same
/// id, never queued twice.
async fn send(alice: &Client, conn: &mut Option<Connection>, text: &str) {
    let to = Target::Contact(Recipient::Username("bob".into()));
    let mut queued = false;
    for _ in 0..40 {
        if conn.is_none() {
            match alice.connect().await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        let before = alice.with_home(|h| h.outbox()).unwrap().len();
        let result = async {
            if !queued {
                let r = c.queue_text(&to, text).await;
                // Queued if it reached the outbox, whatever happened after.
                queued = alice.with_home(|h| h.outbox()).unwrap().len() > before;
                r?;
            }
            c.flush_outbox().await
        }
        .await;
        match result {
            Ok(_) => return,
            Err(e) if e.is_transient() => {
                c.record_failure(&e).unwrap();
                *conn = None;
            }
            Err(e) => panic!("sending {text:?}: {e}"),
        }
    }
    panic!("could not send {text:?}");
}

/// Bob's listener in a task: texts to `texts`, states to `states`.
fn listen(
    bob: &Client,
) -> (
    mpsc::UnboundedReceiver<String>,
    mpsc::UnboundedReceiver<ConnectionState>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, texts) = mpsc::unbounded_channel();
    let (stx, states) = mpsc::unbounded_channel();
    let mut listener = bob.listen();
    let task = tokio::spawn(async move {
        loop {
            match listener.next().await {
                Ok(Event::Message(m)) if !m.is_system() => {
                    let _ = tx.send(m.text().to_owned());
                }
                Ok(Event::Message(_)) => {}
                Ok(Event::State(s)) => {
                    let _ = stx.send(s);
                }
                Err(e) => panic!("listener failed: {e}"),
            }
        }
    });
    (texts, states, task)
}

/// Waits until bob has `want` (in order), failing on anything extra.
async fn expect(texts: &mut mpsc::UnboundedReceiver<String>, want: &[String]) {
    for w in want {
        let got = tokio::time::timeout(Duration::from_secs(30), texts.recv())
            .await
            .unwrap_or_else(|_| panic!("bob never got {w:?}"))
            .unwrap();
        assert_eq!(&got, w, "every message once, in order");
    }
}

async fn no_more(texts: &mut mpsc::UnboundedReceiver<String>) {
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_secs(2), texts.recv()).await {
        panic!("a message arrived twice or unexpectedly: {extra:?}");
    }
}

async fn ready_over(states: &mut mpsc::UnboundedReceiver<ConnectionState>, prefix: &str) {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(30), states.recv())
            .await
            .expect("bob gets ready again")
            .unwrap();
        if let ConnectionState::Ready { route } = &s
            && route.starts_with(prefix)
        {
            return;
        }
    }
}

/// Sends a round of numbered messages and checks bob got each once.
async fn round(
    alice: &Client,
    conn: &mut Option<Connection>,
    texts: &mut mpsc::UnboundedReceiver<String>,
    label: &str,
) {
    let batch: Vec<String> = (0..3).map(|i| format!("{label} #{i}")).collect();
    for m in &batch {
        send(alice, conn, m).await;
    }
    expect(texts, &batch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_survives_routes_blocked_one_by_one() {
    let s = censored_server().await;
    let bob = s.member("bob", "+14155552672").await;
    let alice = s.member("alice", "+14155552671").await;
    let (mut texts, mut states, task) = listen(&bob);
    ready_over(&mut states, "tcp://").await;
    let mut conn = None;
    round(&alice, &mut conn, &mut texts, "all open").await;

    // Direct TCP reset, mid-conversation.
    s.censor.set(s.tcp, Rule::Reset);
    round(&alice, &mut conn, &mut texts, "tcp blocked").await;
    ready_over(&mut states, "tls://").await;

    // TLS blackholed too (names it knows: connections go silent).
    s.censor.set(s.tls, Rule::Blackhole);
    round(&alice, &mut conn, &mut texts, "tcp+tls blocked").await;

    // UDP dropped: only WebSocket over TLS is left.
    s.censor.set(s.quic, Rule::DropUdp);
    round(&alice, &mut conn, &mut texts, "only wss open").await;
    ready_over(&mut states, "wss://").await;
    assert_eq!(
        alice.route_in_use().unwrap(),
        Some(format!("wss://{}", s.link.wss[0]))
    );

    // Everything open again, but the route in use freezes after 16 KiB.
    s.censor.set(s.tcp, Rule::Pass);
    s.censor.set(s.tls, Rule::Pass);
    s.censor.set(s.quic, Rule::Pass);
    s.censor.set(s.wss, Rule::FreezeAfter(16 * 1024));
    round(&alice, &mut conn, &mut texts, "wss frozen").await;
    no_more(&mut texts).await;

    // The home remembers why each route failed.
    let routes = alice.routes().unwrap();
    let class = |prefix: &str| {
        routes
            .iter()
            .find(|r| r.route.starts_with(prefix))
            .and_then(|r| r.last_failure.clone())
    };
    assert!(
        matches!(class("tcp://").as_deref(), Some("reset" | "closed")),
        "{routes:?}"
    );
    assert!(
        matches!(class("tls://").as_deref(), Some("timeout" | "freeze")),
        "{routes:?}"
    );
    // QUIC is raced only if WebSocket was slow to answer.
    assert!(
        matches!(class("quic://").as_deref(), None | Some("timeout")),
        "{routes:?}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quic_blocked_and_tcp_refused_the_others_carry_on() {
    let s = censored_server().await;
    let bob = s.member("bob", "+14155552672").await;
    let alice = s.member("alice", "+14155552671").await;
    let (mut texts, mut states, task) = listen(&bob);
    ready_over(&mut states, "tcp://").await;
    let mut conn = None;
    round(&alice, &mut conn, &mut texts, "all open").await;
    s.censor.set(s.quic, Rule::DropUdp);
    s.censor.set(s.tcp, Rule::Reset);
    s.censor.set(s.tls, Rule::Reset);
    round(&alice, &mut conn, &mut texts, "quic, tcp, tls blocked").await;
    assert!(
        alice.route_in_use().unwrap().unwrap().starts_with("wss://"),
        "only WebSocket is left"
    );
    // Then only QUIC is open.
    s.censor.set(s.quic, Rule::Pass);
    s.censor.set(s.wss, Rule::Reset);
    round(&alice, &mut conn, &mut texts, "only quic open").await;
    assert!(
        alice
            .route_in_use()
            .unwrap()
            .unwrap()
            .starts_with("quic://")
    );
    no_more(&mut texts).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_everything_blocked_the_listener_waits_for_network() {
    let s = censored_server().await;
    let bob = s.member("bob", "+14155552672").await;
    for addr in [s.tcp, s.tls, s.wss] {
        s.censor.set(addr, Rule::Reset);
    }
    s.censor.set(s.quic, Rule::DropUdp);
    let (_texts, mut states, task) = listen(&bob);
    let waiting = loop {
        match tokio::time::timeout(Duration::from_secs(30), states.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ConnectionState::WaitingForNetwork { reason, .. } => break reason,
            ConnectionState::Connecting => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    for carrier in ["tcp://", "tls://", "wss://", "quic://"] {
        assert!(waiting.contains(carrier), "{waiting}");
    }
    // The route opens again: bob gets in by himself.
    s.censor.set(s.wss, Rule::Pass);
    ready_over(&mut states, "wss://").await;
    task.abort();
    let err = ClientError::NoRoute(Vec::new());
    assert!(err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_routes_are_reported_per_country_on_the_next_connection() {
    // The server's TCP route is the censor's proxy, so it is one of the
    // routes the server lists; TLS is reached directly.
    let censor = Censor::new();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap();
    drop(free);
    let proxy = censor.tcp(listen).await.unwrap();
    let t = TestServer::start_with(|cfg| {
        cfg.listen = listen;
        cfg.public_addr = Some(proxy.to_string());
        cfg.carriers.tls = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = Client::setup(&t.dir.path().join("alice"), &t.server.link).unwrap();
    client.set_connectivity(fast());
    let mut conn = client.connect().await.unwrap();
    assert!(conn.route().starts_with("tcp://"));
    conn.request_code("+79161234567").await.unwrap();
    conn.register(
        "+79161234567",
        &t.code("+79161234567"),
        Some("alice"),
        "test",
    )
    .await
    .unwrap();
    drop(conn);

    censor.set(listen, Rule::Reset);
    let conn = client.connect().await.unwrap();
    assert!(conn.route().starts_with("tls://"));
    // Reported on connecting: nothing is left to report.
    assert_eq!(conn.report_routes().await.unwrap(), 0);
    assert!(client.routes().unwrap().iter().all(|r| r.reported));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("http://{}/reachability", t.server.http_addr);
    let view: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let rows = view.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{view}");
    assert_eq!(rows[0]["route"], format!("tcp://{proxy}"));
    assert_eq!(rows[0]["country"], "RU");
    assert_eq!(rows[0]["reports"], 1);
    let failures = rows[0]["failures"].as_object().unwrap();
    assert!(
        failures.contains_key("reset") || failures.contains_key("closed"),
        "{view}"
    );
}
