//! The signed directory end to end: an operator signs it offline, the
//! server publishes it (and reloads it), and clients fetch it through every
//! channel — the server's HTTP API, a carrier connection, a relay, DNS TXT records
//! from a DNS-over-HTTPS responder, a static mirror — falling back from one
//! to the next, and refuse every directory the rule refuses.
//!
//! The mirror and the DNS-over-HTTPS responder are tiny axum servers on
//! loopback written here. The responder speaks real RFC 8484 (DNS wire
//! format, POST `application/dns-message`) over plain HTTP: the client's
//! HTTP stack is the same reqwest client for `https://` resolvers, and
//! plain HTTP keeps the test free of a private CA.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{TestServer, config};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use postern_client::directory::Channel;
use postern_client::{Client, ClientError};
use postern_proto::directory::{
    Accepted, Carrier, Directory, DirectoryError, Endpoint, SignedDirectory, txt,
};
use postern_proto::link::ServerLink;
use postern_server::Server;
use postern_tlog::note::{Algorithm, Signer};

const DNS_NAME: &str = "_postern.chat.test";

fn now() -> u64 {
    postern_client::directory::now_secs()
}

fn operator_key() -> Signer {
    Signer::from_seed("chat.test/directory", Algorithm::Ed25519, [42; 32]).unwrap()
}

fn directory(version: u64, noise_key: [u8; 32], tcp: SocketAddr) -> Directory {
    Directory {
        origin: "chat.test".into(),
        version,
        expires: now() + 3600,
        noise_key,
        nodes: vec!["n1".into()],
        endpoints: vec![Endpoint {
            carrier: Carrier::Tcp,
            host: tcp.ip().to_string(),
            port: tcp.port(),
            priority: 10,
            sni: None,
            path: None,
            node: Some("n1".into()),
            cert_sha256: None,
        }],
        relays: Vec::new(),
        log_key: None,
        witnesses: Vec::new(),
    }
}

/// Bytes served by a test HTTP server, changeable while it runs.
type Shared = Arc<Mutex<Option<Vec<u8>>>>;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A static web host holding the signed file at `/postern/directory.txt`.
async fn mirror(content: Shared) -> SocketAddr {
    serve(
        Router::new()
            .route(
                "/postern/directory.txt",
                get(|State(c): State<Shared>| async move {
                    match c.lock().unwrap().clone() {
                        Some(b) => (StatusCode::OK, b),
                        None => (StatusCode::NOT_FOUND, Vec::new()),
                    }
                }),
            )
            .with_state(content),
    )
    .await
}

/// An RFC 8484 responder answering TXT queries for [`DNS_NAME`] with the
/// directory's records (NXDOMAIN for other names, or when it holds none).
async fn doh(content: Shared) -> SocketAddr {
    async fn answer(State(c): State<Shared>, body: Bytes) -> (StatusCode, Vec<u8>) {
        let Ok(query) = Message::from_vec(&body) else {
            return (StatusCode::BAD_REQUEST, Vec::new());
        };
        let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = true;
        resp.metadata.recursion_available = true;
        let q = query.queries[0].clone();
        let held = c.lock().unwrap().clone();
        let name = q.name().to_ascii();
        resp.add_query(q.clone());
        match held {
            Some(bytes)
                if name.trim_end_matches('.') == DNS_NAME && q.query_type() == RecordType::TXT =>
            {
                // The records in reverse: clients must not rely on order.
                for record in txt::encode(&bytes).into_iter().rev() {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        300,
                        RData::TXT(TXT::new(record)),
                    ));
                }
                // And an unrelated TXT record at the same name.
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
                ));
            }
            _ => resp.metadata.response_code = ResponseCode::NXDomain,
        }
        (StatusCode::OK, resp.to_vec().unwrap())
    }
    serve(
        Router::new()
            .route("/dns-query", post(answer))
            .with_state(content),
    )
    .await
}

struct Setup {
    t: TestServer,
    file: std::path::PathBuf,
    mirror: Shared,
    dns: Shared,
    mirror_addr: SocketAddr,
    doh_addr: SocketAddr,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A server publishing an offline-signed directory (version 1) from a
/// file, with a mirror and a DNS-over-HTTPS responder holding the same.
async fn setup() -> Setup {
    let mirror_content: Shared = Arc::default();
    let dns_content: Shared = Arc::default();
    let mirror_addr = mirror(mirror_content.clone()).await;
    let doh_addr = doh(dns_content.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // The server key is made before the server starts, so the directory
    // (signed "offline") can carry it.
    let mut cfg = config(dir.path());
    cfg.listen = free_port();
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let noise = postern_proto::keys::NoiseKeypair::generate();
    std::fs::write(cfg.data_dir.join("server.key"), hex::encode(noise.secret())).unwrap();
    let signed = directory(1, noise.public, cfg.listen)
        .sign(&operator_key())
        .unwrap();
    let file = dir.path().join("directory.signed");
    std::fs::write(&file, signed.bytes()).unwrap();
    *mirror_content.lock().unwrap() = Some(signed.bytes().to_vec());
    *dns_content.lock().unwrap() = Some(signed.bytes().to_vec());
    cfg.directory.file = Some(file.clone());
    cfg.directory.vkey = Some(operator_key().verifier().vkey());
    cfg.directory.reload_interval = Duration::from_millis(100);
    cfg.directory.mirrors = vec![format!("http://{mirror_addr}/postern/directory.txt")];
    cfg.directory.doh = Some(format!("http://{doh_addr}/dns-query"));
    cfg.directory.dns_name = Some(DNS_NAME.into());
    let outbox = cfg.sms.outbox.clone().unwrap();
    let server = Server::start(cfg).await.expect("server starts");
    Setup {
        t: TestServer {
            server,
            dir,
            outbox,
        },
        file,
        mirror: mirror_content,
        dns: dns_content,
        mirror_addr,
        doh_addr,
    }
}

fn home(s: &Setup, name: &str, link: &ServerLink) -> Client {
    Client::setup(&s.t.dir.path().join(name), link).unwrap()
}

#[tokio::test]
async fn every_channel_delivers_the_directory() {
    let s = setup().await;
    let link = &s.t.server.link;
    assert_eq!(
        link.directory_key.as_deref(),
        Some(operator_key().verifier().vkey().as_str())
    );
    assert!(link.to_string().contains("&dns=_postern.chat.test"));
    for channel in [
        Channel::Http,
        Channel::Carrier,
        Channel::Dns,
        Channel::Mirror,
    ] {
        let client = home(&s, channel.name(), link);
        assert!(client.directory().unwrap().is_none());
        let report = client.fetch_directory(Some(channel)).await;
        let ok = report
            .success()
            .unwrap_or_else(|| panic!("{channel}: {:?}", report.attempts));
        assert_eq!(ok.channel, channel);
        assert!(report.updated);
        let held = client.directory().unwrap().expect("cached");
        assert_eq!(held.directory().version, 1);
        // Fetched again: the same directory, not an update.
        let again = client.fetch_directory(Some(channel)).await;
        assert!(again.success().is_some() && !again.updated);
        // The connectivity manager races the directory's endpoints first.
        let raced = client.candidates();
        assert_eq!(
            raced[0].source,
            postern_client::connectivity::Source::Directory
        );
        assert_eq!(
            raced
                .iter()
                .filter(|c| c.source == postern_client::connectivity::Source::Directory)
                .count(),
            held.directory().endpoints.len(),
            "every listed route, whatever its carrier"
        );
    }
    // Without a relay the relay channel says so...
    let client = home(&s, "relay", link);
    let report = client.fetch_directory(Some(Channel::Relay)).await;
    assert!(report.success().is_none());
    assert!(
        report.attempts[0]
            .error
            .as_ref()
            .unwrap()
            .contains("holds no relay"),
        "{:?}",
        report.attempts
    );
    // ...and through a relay it delivers, even with the server's own
    // routes dead.
    let cover = postern_relay::testing::start_cover().await;
    let relay = postern_relay::start(
        postern_relay::RelayConfig {
            register: false,
            ..postern_relay::testing::local_config(
                cover.addr,
                &link.to_string(),
                s.t.dir.path().join("relay-data"),
            )
        },
        postern_relay::Hooks::default(),
    )
    .await
    .unwrap();
    let dead = free_port();
    let censored = ServerLink {
        tcp: vec![dead.to_string()],
        http: Some(format!("http://{dead}")),
        ..link.clone()
    };
    let client = home(&s, "relayed", &censored);
    client.add_relay(relay.link()).unwrap();
    let report = client.fetch_directory(Some(Channel::Relay)).await;
    let ok = report
        .success()
        .unwrap_or_else(|| panic!("relay: {:?}", report.attempts));
    assert_eq!(ok.channel, Channel::Relay);
    assert_eq!(client.directory().unwrap().unwrap().directory().version, 1);
}

#[tokio::test]
async fn blocked_channels_fall_back_in_order_and_say_why() {
    let s = setup().await;
    let dead = free_port();
    // The server's own addresses are blocked: TCP and HTTP go nowhere.
    let link = ServerLink {
        tcp: vec![dead.to_string()],
        http: Some(format!("http://{dead}")),
        ..s.t.server.link.clone()
    };
    let client = home(&s, "censored", &link);
    let report = client.fetch_directory(None).await;
    let channels: Vec<Channel> = report.attempts.iter().map(|a| a.channel).collect();
    assert_eq!(channels, [Channel::Http, Channel::Carrier, Channel::Dns]);
    assert!(report.attempts[0].error.is_some());
    assert!(report.attempts[1].error.is_some());
    assert_eq!(report.success().unwrap().channel, Channel::Dns);

    // DNS is blocked too (the name answers NXDOMAIN): the mirror remains.
    *s.dns.lock().unwrap() = None;
    let client = home(&s, "censored-more", &link);
    let report = client.fetch_directory(None).await;
    let dns = report
        .attempts
        .iter()
        .find(|a| a.channel == Channel::Dns)
        .unwrap();
    assert!(
        dns.error.as_ref().unwrap().contains("Non-Existent Domain"),
        "{dns:?}"
    );
    assert_eq!(report.success().unwrap().channel, Channel::Mirror);
    assert_eq!(client.directory().unwrap().unwrap().directory().version, 1);

    // Everything blocked: a clear list of failures, nothing cached.
    *s.mirror.lock().unwrap() = None;
    let client = home(&s, "cut-off", &link);
    let report = client.fetch_directory(None).await;
    assert!(report.success().is_none());
    assert_eq!(report.attempts.len(), 4);
    assert!(report.attempts.iter().all(|a| a.error.is_some()));
    assert!(client.directory().unwrap().is_none());
    let _ = (s.mirror_addr, s.doh_addr);
}

#[tokio::test]
async fn the_client_refuses_bad_directories_with_clear_errors() {
    let s = setup().await;
    let client = home(&s, "m", &s.t.server.link);
    let key = operator_key();
    let base = directory(5, s.t.server.link.noise_key, s.t.server.client_addr);
    let good = base.sign(&key).unwrap();
    assert!(matches!(
        client.import_directory(good.bytes()).unwrap(),
        Accepted::Newer(_)
    ));
    let refused = |bytes: &[u8]| match client.import_directory(bytes) {
        Err(ClientError::Directory(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Bad signature: the text changed after signing.
    let tampered = String::from_utf8(good.bytes().to_vec())
        .unwrap()
        .replace("version 5", "version 6");
    let e = refused(tampered.as_bytes());
    assert!(matches!(e, DirectoryError::BadSignature(_)), "{e}");
    assert!(e.to_string().contains("altered or forged"));

    // Older than held: a replay.
    let old = Directory {
        version: 4,
        ..base.clone()
    }
    .sign(&key)
    .unwrap();
    let e = refused(old.bytes());
    assert_eq!(
        e,
        DirectoryError::Older {
            offered: 4,
            held: 5
        }
    );
    assert!(e.to_string().contains("rollback"));

    // Expired.
    let expired = Directory {
        version: 9,
        expires: now() - 1,
        ..base.clone()
    }
    .sign(&key)
    .unwrap();
    assert!(matches!(
        refused(expired.bytes()),
        DirectoryError::Expired { .. }
    ));

    // Wrong key (same name, another key).
    let mallory = Signer::from_seed("chat.test/directory", Algorithm::Ed25519, [1; 32]).unwrap();
    let forged = Directory {
        version: 9,
        ..base.clone()
    }
    .sign(&mallory)
    .unwrap();
    let e = refused(forged.bytes());
    assert!(matches!(e, DirectoryError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("pinned directory key"));

    // Truncated.
    let e = refused(&good.bytes()[..good.bytes().len() - 30]);
    assert!(
        matches!(
            e,
            DirectoryError::NotSigned(_) | DirectoryError::BadSignature(_)
        ),
        "{e}"
    );
    let e = refused(&good.bytes()[..100]);
    assert!(matches!(e, DirectoryError::NotSigned(_)), "{e}");

    // None of these touched the cache.
    assert_eq!(client.directory().unwrap().unwrap(), good);

    // A mirror serving an old version is refused the same way, and the
    // report says why.
    *s.mirror.lock().unwrap() = Some(old.bytes().to_vec());
    let report = client.fetch_directory(Some(Channel::Mirror)).await;
    assert!(report.success().is_none());
    assert!(
        report.attempts[0].error.as_ref().unwrap().contains("older"),
        "{:?}",
        report.attempts
    );

    // A link without a directory key cannot accept any directory.
    let bare = ServerLink {
        directory_key: None,
        ..s.t.server.link.clone()
    };
    let unpinned = home(&s, "unpinned", &bare);
    assert!(matches!(
        unpinned.import_directory(good.bytes()),
        Err(ClientError::NoDirectoryKey)
    ));
}

async fn published_version(http: SocketAddr) -> u64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bytes = reqwest::get(format!("http://{http}/directory"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    SignedDirectory::verify(&bytes, &operator_key().verifier())
        .unwrap()
        .directory()
        .version
}

async fn wait_for_version(http: SocketAddr, version: u64) {
    for _ in 0..100 {
        if published_version(http).await == version {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("version {version} was never published");
}

fn replace_file(path: &Path, bytes: &[u8]) {
    // A new mtime even on coarse clocks.
    std::thread::sleep(Duration::from_millis(20));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_server_reloads_newer_files_and_keeps_serving_through_bad_ones() {
    let s = setup().await;
    let http = s.t.server.http_addr;
    assert_eq!(published_version(http).await, 1);
    let base = directory(2, s.t.server.link.noise_key, s.t.server.client_addr);
    replace_file(&s.file, base.sign(&operator_key()).unwrap().bytes());
    wait_for_version(http, 2).await;

    // A file signed by another key, then an older version: both refused,
    // version 2 stays published.
    let mallory = Signer::from_seed("chat.test/directory", Algorithm::Ed25519, [1; 32]).unwrap();
    let forged = Directory {
        version: 3,
        ..base.clone()
    };
    replace_file(&s.file, forged.sign(&mallory).unwrap().bytes());
    let older = Directory {
        version: 1,
        ..base.clone()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace_file(&s.file, older.sign(&operator_key()).unwrap().bytes());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(published_version(http).await, 2);

    // The carrier answers with the same, to anyone (no registration needed).
    let client = home(&s, "m", &s.t.server.link);
    let report = client.fetch_directory(Some(Channel::Carrier)).await;
    assert_eq!(report.directory.unwrap().directory().version, 2);
}

#[tokio::test]
async fn a_server_refuses_to_start_on_a_bad_directory_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let file = dir.path().join("d.signed");
    let mallory = Signer::from_seed("chat.test/directory", Algorithm::Ed25519, [1; 32]).unwrap();
    let forged = directory(1, [1; 32], "127.0.0.1:1".parse().unwrap())
        .sign(&mallory)
        .unwrap();
    std::fs::write(&file, forged.bytes()).unwrap();
    cfg.directory.file = Some(file);
    cfg.directory.vkey = Some(operator_key().verifier().vkey());
    let e = Server::start(cfg).await.err().expect("refused");
    let text = format!("{e:#}");
    assert!(
        text.contains("not signed by the pinned directory key"),
        "{text}"
    );
}

#[tokio::test]
async fn with_no_file_the_server_signs_a_development_directory() {
    let t = TestServer::start().await;
    let link = &t.server.link;
    let key = link.directory_verifier().expect("the link pins a key");
    let vkey_file = t.dir.path().join("server/directory-vkey.txt");
    assert_eq!(
        std::fs::read_to_string(vkey_file).unwrap().trim(),
        key.vkey()
    );
    let client = t.client("m");
    let report = client.fetch_directory(Some(Channel::Http)).await;
    let d = report.directory.expect("fetched over HTTP");
    let d = d.directory();
    assert_eq!(d.noise_key, link.noise_key);
    assert_eq!(d.tcp_addrs(), link.tcp);
    assert_eq!(
        d.log_key.as_deref(),
        t.server.log_key.as_ref().map(|k| k.vkey()).as_deref()
    );
    assert!(d.expires > now() + 3600);
    // The member can register through it as usual.
    let conn = client.connect().await.unwrap();
    conn.request_code("+14155550101").await.unwrap();
}
