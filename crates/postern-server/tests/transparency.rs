//! The transparency log a server hosts, as an auditor and a witness see it
//! over real loopback HTTP: entries appended through the server's handle,
//! the log verified from `/log/`, a restart that keeps the key and extends
//! the same tree, witnesses cosigning (and misconfigured ones that only
//! cost a warning), and the cache headers a CDN relies on.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, Once};
use std::time::Duration;

use postern_server::{RunningServer, Server, ServerConfig};
use postern_tlog::client::{self, MonitorState, Verdict, VerifyError};
use postern_tlog::entry::{
    AuthorityType, Commitment, DataCategories, Entry, Jurisdiction, LegalRequest, Month, Outcome,
    ReasonCode,
};
use postern_tlog::http::{HttpFetch, witness_router};
use postern_tlog::note::{Algorithm, Signer, Verifier};
use postern_tlog::witness::{FileStore, Witness};
use postern_tlog::{DirFetch, Policy};

fn config(dir: &Path) -> ServerConfig {
    let mut cfg = common::config(dir);
    cfg.transparency.checkpoint_interval = Duration::from_millis(50);
    cfg
}

fn request(i: u8) -> Entry {
    Entry::LegalRequest(LegalRequest {
        id: [i; 16],
        month: Month::new(2026, 11).unwrap(),
        jurisdiction: Jurisdiction::new("FR").unwrap(),
        authority: AuthorityType::Court,
        legal_basis: "CPP art. 60-1".into(),
        categories: DataCategories::PHONE_NUMBER,
        outcome: Outcome::Refused(ReasonCode::OUTSIDE_POLICY),
        accounts: 1,
        order: Commitment::to_order(&[i; 32], b"order"),
        account_ids: Commitment::to_accounts(&[i; 32], &[[3; 16]]),
    })
}

fn log_url(server: &RunningServer) -> String {
    format!("http://{}/log", server.http_addr)
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Verifies the served log until `check` accepts a verdict (cosignatures
/// follow the checkpoint by a moment), or fails after 10 s.
async fn verify_until(
    server: &RunningServer,
    policy: &Policy,
    state: Option<&MonitorState>,
    check: impl Fn(&Verdict) -> bool,
) -> Verdict {
    let fetch = HttpFetch::new(&log_url(server)).unwrap();
    let mut last = None;
    for _ in 0..200 {
        match client::verify(&fetch, policy, state).await {
            Ok(v) if check(&v) => return v,
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the served log never passed the check: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_hosts_a_log_anyone_can_verify_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(config(dir.path())).await.unwrap();

    // The log has its own key, named after the public host, written out.
    let key = server.log_key.clone().expect("the log is on by default");
    assert_eq!(key.name(), "127.0.0.1/log");
    let vkey = std::fs::read_to_string(data.join("log-vkey.txt")).unwrap();
    assert_eq!(vkey.trim(), key.vkey());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("log.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_ne!(
        std::fs::read(data.join("log.key")).unwrap(),
        std::fs::read(data.join("server.key")).unwrap()
    );

    // Appends from several tasks come back with their indexes once
    // published.
    let log = server.transparency().unwrap().clone();
    let appends: Vec<_> = (0..3u8)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(&request(i)).await })
        })
        .collect();
    let mut indexes = Vec::new();
    for a in appends {
        indexes.push(a.await.unwrap().unwrap());
    }
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);

    // An auditor with only the URL and the vkey checks it, entries and all.
    let policy = Policy::log_only(Verifier::from_vkey(vkey.trim()).unwrap());
    let fetch = HttpFetch::new(&log_url(&server)).unwrap();
    let mut seen = Vec::new();
    let v = client::verify_with(&fetch, &policy, None, |i, e| seen.push((i, e.to_vec())))
        .await
        .unwrap();
    assert_eq!(
        (v.checkpoint.size, v.checkpoint.origin.as_str()),
        (3, "127.0.0.1/log")
    );
    assert_eq!(seen.len(), 3);
    for (_, bytes) in &seen {
        assert!(matches!(Entry::decode(bytes), Ok(Entry::LegalRequest(_))));
    }

    // Tiles are immutable and served as the directory holds them, so a
    // static mirror of DATA_DIR/log serves the same bytes; the checkpoint
    // may be cached only briefly.
    let web = http();
    for (path, cache) in [
        ("checkpoint", "public, max-age=5"),
        ("tile/0/000.p/3", "public, max-age=31536000, immutable"),
        (
            "tile/entries/000.p/3",
            "public, max-age=31536000, immutable",
        ),
    ] {
        let resp = web
            .get(format!("{}/{path}", log_url(&server)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["cache-control"], cache, "{path}");
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            &body[..],
            std::fs::read(data.join("log").join(path)).unwrap()
        );
    }
    let mirrored = client::verify(&DirFetch(data.join("log")), &policy, None)
        .await
        .unwrap();
    assert_eq!(mirrored.checkpoint, v.checkpoint);
    // Nothing but the checkpoint and tiles is reachable under /log/.
    for path in ["tile/../../log.key", "tile/x", "log.key", ""] {
        let resp = web
            .get(format!("{}/{path}", log_url(&server)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }

    // Restarted: the same key, and the log grows from where it was, which
    // the auditor's saved state proves.
    drop(log);
    server.shutdown().await;
    let server = Server::start(config(dir.path())).await.unwrap();
    assert_eq!(server.log_key.as_ref().unwrap().vkey(), key.vkey());
    let log = server.transparency().unwrap();
    assert_eq!(log.append(&request(3)).await.unwrap(), 3);
    assert_eq!(log.append(&request(4)).await.unwrap(), 4);
    let v2 = verify_until(&server, &policy, Some(&v.state), |v| v.checkpoint.size == 5).await;
    assert_eq!((v2.previous_size, v2.new_entries), (Some(3), 2));

    // Shutting down publishes what was queued, even with a handle left.
    let log = log.clone();
    let pending = tokio::spawn(async move { log.append(&request(5)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
    assert_eq!(pending.await.unwrap().unwrap(), 5);

    // With the log off, there is no key and no /log/.
    let mut cfg = config(dir.path());
    cfg.transparency.enabled = false;
    let server = Server::start(cfg).await.unwrap();
    assert!(server.log_key.is_none() && server.transparency().is_none());
    let resp = web
        .get(format!("{}/checkpoint", log_url(&server)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    server.shutdown().await;
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Warnings from every thread, for the test to read.
fn capture_warnings() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .init();
    });
}

fn warnings() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_cosign_and_a_misconfigured_one_only_warns() {
    capture_warnings();
    let dir = tempfile::tempdir().unwrap();

    // The witness needs the log's key, the server the witness's address:
    // bind first, serve once the server has made its key.
    let good_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wrong_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let good_key = Signer::generate("witness.example.net", Algorithm::CosignatureV1).unwrap();
    let wrong_key = Signer::generate("other.example.net", Algorithm::CosignatureV1).unwrap();
    // What the operator configured for the second witness: not its key.
    let mistaken = Signer::generate("other.example.net", Algorithm::CosignatureV1).unwrap();

    let mut cfg = config(dir.path());
    let witness = |url: String, key: &Signer| postern_server::config::WitnessConfig {
        url,
        vkey: key.verifier().vkey(),
    };
    cfg.transparency.witnesses = vec![
        witness(
            format!("http://{}", good_listener.local_addr().unwrap()),
            &good_key,
        ),
        witness(
            format!("http://{}", wrong_listener.local_addr().unwrap()),
            &mistaken,
        ),
        witness(format!("http://{unreachable}"), &good_key),
    ];
    cfg.transparency.quorum = Some(1);
    let server = Server::start(cfg.clone()).await.unwrap();
    let log_key = server.log_key.clone().unwrap();
    for (listener, key, state) in [
        (good_listener, &good_key, "good"),
        (wrong_listener, &wrong_key, "wrong"),
    ] {
        let store = FileStore::open(&dir.path().join(state)).unwrap();
        let router = witness_router(Witness::new(key.clone(), vec![log_key.clone()], store));
        tokio::spawn(async move { axum::serve(listener, router).await });
    }

    let log = server.transparency().unwrap();
    assert_eq!(log.policy().quorum, 1);
    assert_eq!(log.policy().witnesses.len(), 3);
    for i in 0..4u8 {
        assert_eq!(log.append(&request(i)).await.unwrap(), u64::from(i));
    }

    // The published checkpoint carries the good witness's cosignature, so
    // a verifier requiring it accepts the log.
    let quorum = Policy {
        log: log_key.clone(),
        witnesses: vec![good_key.verifier()],
        quorum: 1,
    };
    let v = verify_until(&server, &quorum, None, |v| v.checkpoint.size == 4).await;
    assert_eq!(v.cosigners, ["witness.example.net"]);
    // The misconfigured witnesses added nothing, and the server said so.
    let all = Policy {
        log: log_key.clone(),
        witnesses: vec![good_key.verifier(), wrong_key.verifier()],
        quorum: 2,
    };
    let fetch = HttpFetch::new(&log_url(&server)).unwrap();
    assert!(matches!(
        client::verify(&fetch, &all, None).await,
        Err(VerifyError::Checkpoint(
            postern_tlog::checkpoint::OpenError::Quorum { got: 1, .. }
        ))
    ));
    let text = warnings();
    assert!(
        text.contains("the witness did not cosign") && text.contains("other.example.net"),
        "{text}"
    );
    assert!(text.contains("no valid cosignature"), "{text}");
    assert!(text.contains("cannot reach the witness"), "{text}");
    assert!(text.contains(&unreachable.to_string()), "{text}");

    // The server carries on: it serves its own signed checkpoint to anyone
    // who requires no witness, and its API is up.
    client::verify(&fetch, &Policy::log_only(log_key.clone()), None)
        .await
        .unwrap();
    let health = http()
        .get(format!("http://{}/health", server.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // After a restart the server no longer knows what size the witness
    // holds; the witness's 409 tells it, and the next checkpoint is
    // cosigned with a proof from there.
    server.shutdown().await;
    let server = Server::start(cfg).await.unwrap();
    assert_eq!(
        server
            .transparency()
            .unwrap()
            .append(&request(9))
            .await
            .unwrap(),
        4
    );
    let v2 = verify_until(&server, &quorum, Some(&v.state), |v| {
        v.checkpoint.size == 5 && !v.cosigners.is_empty()
    })
    .await;
    assert_eq!(v2.previous_size, Some(4));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_transparency_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |tweak: fn(&mut ServerConfig)| {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        async move { Server::start(cfg).await.err().map(|e| format!("{e:#}")) }
    };
    let err = start(|c| {
        c.transparency.witnesses = vec![postern_server::config::WitnessConfig {
            url: "http://127.0.0.1:1".into(),
            vkey: "not a key".into(),
        }];
    })
    .await
    .unwrap();
    assert!(err.contains("not a witness verifier key"), "{err}");
    let err = start(|c| c.transparency.quorum = Some(1)).await.unwrap();
    assert!(
        err.contains("more than the 0 configured witnesses"),
        "{err}"
    );
    let err = start(|c| c.transparency.checkpoint_interval = Duration::ZERO)
        .await
        .unwrap();
    assert!(err.contains("at least 1 second"), "{err}");
    let err = start(|c| c.transparency.origin = Some("bad name".into()))
        .await
        .unwrap();
    assert!(
        err.contains("cannot be the transparency log's origin"),
        "{err}"
    );

    // A configured origin names the log on first start and must not change.
    let err = start(|c| c.transparency.origin = Some("chat.example.org/log".into())).await;
    assert_eq!(err, None);
    let err = start(|c| c.transparency.origin = Some("elsewhere.example.org/log".into()))
        .await
        .unwrap();
    assert!(err.contains("origin never changes"), "{err}");
}
