//! For tests and benchmarks: a local cover website (HTTPS with a
//! generated certificate) and helpers to probe a TCP endpoint and record
//! exactly what it answers. Public so that the server's and the CLI's
//! tests can put a relay in front of a real cover too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A relay on a free loopback port in front of `cover` (for [`SNI`]),
/// forwarding to the server of `server_link`, keeping its files in
/// `data_dir`; the rest as by default.
pub fn local_config(
    cover: SocketAddr,
    server_link: &str,
    data_dir: std::path::PathBuf,
) -> crate::RelayConfig {
    crate::RelayConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        cover: cover.to_string(),
        sni: SNI.into(),
        server: server_link.into(),
        data_dir,
        ..crate::RelayConfig::default()
    }
}

/// The cover's name.
pub const SNI: &str = "www.example.org";

/// How long the cover waits for a client's TLS handshake and request, as
/// a web server's header timeout.
pub const COVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The body the cover serves.
pub const BODY: &str =
    "<html><body>Welcome to example.org, a perfectly ordinary site.</body></html>";

/// A running cover site.
pub struct Cover {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate.
    pub cert_der: Vec<u8>,
}

/// Starts an HTTPS site for [`SNI`]: TLS 1.3 (rustls), answers any request
/// with [`BODY`] and closes; closes after [`COVER_TIMEOUT`] if the client
/// does not complete the handshake and a request in time.
pub async fn start_cover() -> Cover {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec![SNI.to_owned()]).unwrap();
    let cert_der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let served = tokio::time::timeout(COVER_TIMEOUT, async {
                    let mut tls = acceptor.accept(s).await.ok()?;
                    let mut req = vec![0u8; 4096];
                    let mut n = 0;
                    while !req[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < req.len() {
                        let got = tls.read(&mut req[n..]).await.ok()?;
                        if got == 0 {
                            return None;
                        }
                        n += got;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                        BODY.len()
                    );
                    tls.write_all(resp.as_bytes()).await.ok()?;
                    tls.shutdown().await.ok()?;
                    Some(())
                })
                .await;
                let _ = served;
            });
        }
    });
    Cover { addr, cert_der }
}

/// How a probed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The peer sent FIN.
    Fin,
    /// The peer reset the connection.
    Reset,
    /// Still open when we stopped watching.
    Open,
}

/// What an endpoint answered to a probe.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// How it ended.
    pub close: Close,
    /// When it ended (or when we stopped watching).
    pub after: Duration,
}

impl Answer {
    /// The answer as TLS records' (content type, length), if it is made of
    /// whole TLS records; else None.
    pub fn records(&self) -> Option<Vec<(u8, usize)>> {
        let mut out = Vec::new();
        let mut rest = &self.bytes[..];
        while !rest.is_empty() {
            if rest.len() < 5 || !(20..=23).contains(&rest[0]) || rest[1] != 3 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if rest.len() < 5 + len {
                return None;
            }
            out.push((rest[0], len));
            rest = &rest[5 + len..];
        }
        Some(out)
    }
}

/// Connects to `addr`, sends `payload` (nothing if empty), and records
/// everything that comes back until the peer closes or `watch` passes.
pub async fn probe(addr: SocketAddr, payload: &[u8], watch: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    if !payload.is_empty() {
        // The peer may close while we write a big payload.
        let _ = s.write_all(payload).await;
    }
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 65536];
    let close = loop {
        let left = watch.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => break Close::Open,
            Ok(Ok(0)) => break Close::Fin,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break Close::Reset,
            Ok(Err(e)) => panic!("unexpected read error: {e}"),
        }
    };
    Answer {
        bytes,
        close,
        after: start.elapsed(),
    }
}

/// Asserts that the relay's answer is the cover's: the same bytes (or,
/// for TLS answers with random fields, the same records), the same way of
/// closing, at about the same time.
pub fn assert_same(what: &str, relay: &Answer, cover: &Answer) {
    match (relay.records(), cover.records()) {
        (Some(r), Some(c)) if !r.is_empty() && r.iter().any(|(t, _)| *t == 22) => {
            // Two handshakes with the same server: the same records, but
            // an ECDSA signature's DER length varies by a few bytes, so
            // encrypted records may differ that much (between two direct
            // connections to the cover too).
            let same = r.len() == c.len()
                && r.iter().zip(&c).all(|((rt, rl), (ct, cl))| {
                    rt == ct
                        && (if *rt == 23 {
                            rl.abs_diff(*cl) <= 4
                        } else {
                            rl == cl
                        })
                });
            assert!(same, "{what}: TLS records differ: {r:?} vs {c:?}");
        }
        _ => assert_eq!(
            relay.bytes,
            cover.bytes,
            "{what}: bytes differ ({} vs {})",
            relay.bytes.len(),
            cover.bytes.len()
        ),
    }
    assert_eq!(relay.close, cover.close, "{what}: close differs");
    let diff = relay.after.abs_diff(cover.after);
    assert!(
        diff < Duration::from_millis(700),
        "{what}: closed after {:?} through the relay, {:?} at the cover",
        relay.after,
        cover.after
    );
}

/// Fetches `/` over TLS from `addr` as a browser would, accepting any
/// certificate; returns the certificate the server showed and the whole
/// HTTP response.
pub async fn fetch_page(addr: SocketAddr, sni: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned())?;
    let mut tls = connector.connect(name, tcp).await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n").as_bytes())
        .await?;
    let mut page = Vec::new();
    // The cover closes without close_notify on some paths: keep what came.
    let _ = tls.read_to_end(&mut page).await;
    Ok((cert, String::from_utf8_lossy(&page).into_owned()))
}

/// Accepts any server certificate (the test only records it).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
