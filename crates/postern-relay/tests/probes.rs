//! Active probing, as a censor does it: every probe is sent to the relay
//! and to the cover site directly, and the answers must be the same — the
//! bytes (or, where TLS puts random values in them, the same records), the
//! way the connection is closed (FIN or RST) and about when.
//!
//! The cover is a local HTTPS site with a generated certificate; the relay
//! sits in front of it as a volunteer would run it.

use std::net::SocketAddr;
use std::time::Duration;

use postern_cloak::{ClientConfig, Secret};
use postern_relay::testing::{self, Answer, Close, SNI, assert_same, probe};
use postern_relay::{Hooks, RelayConfig, RunningRelay};
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

/// Long enough to see the cover's 2 s timeout close a waiting connection.
const WATCH: Duration = Duration::from_secs(4);

struct Setup {
    relay: RunningRelay,
    cover: testing::Cover,
    _dir: tempfile::TempDir,
    _server: TcpListener,
}

async fn setup() -> Setup {
    let cover = testing::start_cover().await;
    // Probes never reach the server; a listener stands in for it.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&cover, &server, dir.path());
    let relay = postern_relay::start(config, Hooks::default())
        .await
        .unwrap();
    Setup {
        relay,
        cover,
        _dir: dir,
        _server: server,
    }
}

/// A relay in front of `cover`, forwarding to the stand-in `server` (which
/// does not speak Noise, so the relay does not register).
fn config(cover: &testing::Cover, server: &TcpListener, dir: &std::path::Path) -> RelayConfig {
    let link = format!(
        "postern://server?v=1&tcp={}&key={}",
        server.local_addr().unwrap(),
        base64_key([3; 32])
    );
    RelayConfig {
        register: false,
        ..testing::local_config(cover.addr, &link, dir.join("relay"))
    }
}

fn base64_key(k: [u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Setup {
    fn relay_addr(&self) -> SocketAddr {
        self.relay.local_addr()
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            secret: Secret::from_bytes(self.relay.link().secret),
            sni: SNI.into(),
        }
    }

    /// A genuine member's first flight, stamped `at`.
    fn genuine_flight(&self, at: u64) -> Vec<u8> {
        let (_pending, flight) =
            postern_cloak::client_start(&self.client_config(), at, &mut rand::thread_rng());
        flight
    }

    /// Sends `payload` to the relay and to the cover at once.
    async fn both(&self, payload: &[u8]) -> (Answer, Answer) {
        tokio::join!(
            probe(self.relay_addr(), payload, WATCH),
            probe(self.cover.addr, payload, WATCH)
        )
    }
}

#[tokio::test]
async fn empty_random_and_http_probes_get_the_covers_answers() {
    let s = setup().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2018);
    let mut probes: Vec<(String, Vec<u8>)> = vec![("empty connection".into(), Vec::new())];
    for len in (1..=99).chain([221, 402, 1000, 20_000]) {
        let bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        probes.push((format!("{len} random bytes"), bytes));
    }
    // The relay's most likely first byte for a prober to try: a TLS
    // handshake record header with random contents.
    let mut tls_like: Vec<u8> = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    tls_like.extend((0..100).map(|_| rng.r#gen::<u8>()));
    probes.push(("a TLS record header and random bytes".into(), tls_like));
    probes.push((
        "an HTTP GET".into(),
        format!("GET / HTTP/1.1\r\nHost: {SNI}\r\nUser-Agent: curl/8.0\r\n\r\n").into_bytes(),
    ));
    let answers = futures::future::join_all(probes.iter().map(|(_, p)| s.both(p))).await;
    for ((what, _), (relay, cover)) in probes.iter().zip(&answers) {
        assert_same(what, relay, cover);
    }
    // The empty connection waited for the cover's timeout, and was closed
    // by it, through the relay too.
    assert_eq!(answers[0].0.close, Close::Fin);
    assert!(answers[0].0.after >= testing::COVER_TIMEOUT - Duration::from_millis(100));
    let m = s.relay.metrics();
    assert_eq!(m.relayed.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(m.splices_for("not_tls") > 50, "{}", m.render());
}

#[tokio::test]
async fn hellos_without_the_right_authenticator_reach_the_cover() {
    let s = setup().await;
    // A Chrome-shaped hello for the right SNI with a random authenticator.
    let no_auth = postern_cloak::probe_hello(SNI, &mut rand::thread_rng());
    // A genuine hello made with another secret.
    let other = ClientConfig {
        secret: Secret::from_bytes([42; 32]),
        sni: SNI.into(),
    };
    let (_p, wrong_secret) = postern_cloak::client_start(&other, now(), &mut rand::thread_rng());
    // A genuine hello for another name.
    let other_sni = ClientConfig {
        secret: Secret::from_bytes(s.relay.link().secret),
        sni: "other.example.net".into(),
    };
    let (_p, wrong_sni) = postern_cloak::client_start(&other_sni, now(), &mut rand::thread_rng());
    for (what, hello) in [
        ("no authenticator", &no_auth),
        ("a wrong authenticator", &wrong_secret),
        ("another SNI", &wrong_sni),
    ] {
        let (relay, cover) = s.both(hello).await;
        assert!(
            relay
                .records()
                .is_some_and(|r| r.first().map(|x| x.0) == Some(22)),
            "{what}: the cover answers with a ServerHello: {:?}",
            relay.records()
        );
        assert_same(what, &relay, &cover);
    }
    let m = s.relay.metrics();
    assert!(m.splices_for("bad_authenticator") >= 2, "{}", m.render());
    assert_eq!(m.splices_for("wrong_sni"), 1, "{}", m.render());
}

#[tokio::test]
async fn replays_and_stale_or_mutated_flights_reach_the_cover() {
    let s = setup().await;
    let flight = s.genuine_flight(now());
    // The genuine first flight is answered by the relay itself...
    let first = probe(s.relay_addr(), &flight, Duration::from_millis(800)).await;
    assert!(!first.bytes.is_empty(), "the relay answers a genuine hello");
    assert_eq!(s.relay.metrics().splices_for("bad_authenticator"), 0);
    // ...but a replay of it, at once, goes to the cover.
    let (relay, cover) = s.both(&flight).await;
    assert_same("a replay at once", &relay, &cover);
    assert_eq!(
        s.relay
            .metrics()
            .replays
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A flight from outside the ±30 s window (as a replay after it would be).
    for (what, at) in [
        ("a flight 2 minutes old", now() - 120),
        ("a flight from the future", now() + 120),
    ] {
        let stale = s.genuine_flight(at);
        let (relay, cover) = s.both(&stale).await;
        assert_same(what, &relay, &cover);
    }
    assert!(s.relay.metrics().splices_for("stale") >= 2);
    // Mutated replays: byte 0, byte 16, bytes 0–7.
    let fresh = s.genuine_flight(now());
    let mut mutations = Vec::new();
    let mut m0 = fresh.clone();
    m0[0] ^= 0xff;
    mutations.push(("byte 0 mutated", m0));
    let mut m16 = fresh.clone();
    m16[16] ^= 0x01;
    mutations.push(("byte 16 mutated", m16));
    let mut m07 = fresh.clone();
    for b in &mut m07[..8] {
        *b = b.wrapping_add(1);
    }
    mutations.push(("bytes 0-7 mutated", m07));
    for (what, bytes) in &mutations {
        let (relay, cover) = s.both(bytes).await;
        assert_same(what, &relay, &cover);
    }
    // None of them got the relay to answer as itself.
    assert_eq!(
        s.relay
            .metrics()
            .relayed
            .load(std::sync::atomic::Ordering::Relaxed)
            + s.relay
                .metrics()
                .handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the genuine flight was answered by the relay"
    );
}

#[tokio::test]
async fn a_browser_through_the_relay_gets_the_covers_certificate_and_page() {
    let s = setup().await;
    for addr in [s.relay_addr(), s.cover.addr] {
        let (cert, page) = testing::fetch_page(addr, SNI).await.unwrap();
        assert_eq!(cert, s.cover.cert_der, "the cover's own certificate");
        assert!(page.ends_with(testing::BODY), "{page}");
    }
}

#[tokio::test]
async fn the_replay_cache_survives_a_restart() {
    let cover = testing::start_cover().await;
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&cover, &server, dir.path());
    let relay = postern_relay::start(config.clone(), Hooks::default())
        .await
        .unwrap();
    let cfg = ClientConfig {
        secret: Secret::from_bytes(relay.link().secret),
        sni: SNI.into(),
    };
    let (_p, flight) = postern_cloak::client_start(&cfg, now(), &mut rand::thread_rng());
    let first = probe(relay.local_addr(), &flight, Duration::from_millis(500)).await;
    assert!(!first.bytes.is_empty());
    relay.stop().await;
    // The same secret (from the data dir), and the replay is still known.
    let relay = postern_relay::start(config, Hooks::default())
        .await
        .unwrap();
    assert_eq!(relay.link().secret, *cfg.secret.as_bytes());
    let (r, c) = tokio::join!(
        probe(relay.local_addr(), &flight, WATCH),
        probe(cover.addr, &flight, WATCH)
    );
    assert_same("a replay after a restart", &r, &c);
    assert_eq!(
        relay
            .metrics()
            .replays
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn metrics_are_served_on_loopback_only() {
    let cover = testing::start_cover().await;
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig {
        metrics: Some("0.0.0.0:0".parse().unwrap()),
        ..config(&cover, &server, dir.path())
    };
    let refused = postern_relay::start(config.clone(), Hooks::default()).await;
    let err = refused.err().expect("a public metrics port is refused");
    assert!(err.to_string().contains("not on loopback"), "{err}");
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let relay = postern_relay::start(config, Hooks::default())
        .await
        .unwrap();
    probe(
        relay.local_addr(),
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let page = probe(
        relay.metrics_addr().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let text = String::from_utf8(page.bytes).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("postern_relay_connections_total 1"), "{text}");
    assert!(
        text.contains("postern_relay_cover_splices_total{reason=\"not_tls\"} 1"),
        "{text}"
    );
    let other = probe(
        relay.metrics_addr().unwrap(),
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(String::from_utf8_lossy(&other.bytes).starts_with("HTTP/1.1 404"));
}
