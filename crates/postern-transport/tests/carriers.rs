//! Every carrier carries the same Noise session over real loopback sockets,
//! and their failures sort into the classes the client keeps.

use std::sync::Arc;
use std::time::Duration;

use postern_proto::frame::envelope;
use postern_proto::keys::NoiseKeypair;
use postern_proto::{PROTOCOL_VERSION, pb};
use postern_transport::carrier::{self, Carrier, Failure, Target};
use postern_transport::tls::{ClientTls, ServerCert, Verify};
use postern_transport::{TransportError, client_handshake, quic, server_accept, tcp, tls, ws};
use tokio::io::{AsyncRead, AsyncWrite};

const TIMEOUT: Duration = Duration::from_secs(5);
const PATH: &str = "/chat/ws";

fn hello() -> pb::ClientHello {
    pb::ClientHello {
        version: PROTOCOL_VERSION,
        software: "carrier-test".into(),
    }
}

fn cert() -> ServerCert {
    ServerCert::self_signed(&["localhost".into()]).unwrap().0
}

/// Serves one session on `stream`: echoes every envelope back, 1 MB of
/// pings included, until the client closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S, keys: Arc<NoiseKeypair>) {
    let (pending, _) = server_accept(stream, &keys, TIMEOUT).await.unwrap();
    let conn = pending
        .accept(&pb::ServerHello {
            version: PROTOCOL_VERSION,
            ..Default::default()
        })
        .await
        .unwrap();
    let (mut reader, mut writer) = conn.split();
    while let Ok(Some(env)) = reader.recv().await {
        writer.send(&env).await.unwrap();
    }
}

/// Starts a server for `carrier` on loopback; returns the target to dial.
async fn serve(carrier: Carrier, cert: &ServerCert, keys: Arc<NoiseKeypair>) -> Target {
    let client_tls = Some(ClientTls {
        sni: "localhost".into(),
        verify: Verify::Pinned(cert.sha256()),
    });
    let (addr, tls) = match carrier {
        Carrier::Tcp => {
            let listener = tcp::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = tcp::accept(&listener).await {
                    tokio::spawn(echo(s, keys.clone()));
                }
            });
            (addr, None)
        }
        Carrier::Tls | Carrier::Wss => {
            let listener = tcp::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = cert.acceptor().unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = tcp::accept(&listener).await {
                    let acceptor = acceptor.clone();
                    let keys = keys.clone();
                    tokio::spawn(async move {
                        let Ok(s) = tls::accept(&acceptor, s, TIMEOUT).await else {
                            return;
                        };
                        if carrier == Carrier::Wss {
                            let Ok(s) = ws::accept(s, PATH, TIMEOUT).await else {
                                return;
                            };
                            echo(s, keys).await;
                        } else {
                            echo(s, keys).await;
                        }
                    });
                }
            });
            (addr, client_tls)
        }
        Carrier::Quic => {
            let listener = quic::QuicListener::bind("127.0.0.1:0".parse().unwrap(), cert).unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Some(incoming) = listener.incoming().await {
                    let keys = keys.clone();
                    tokio::spawn(async move {
                        if let Ok((s, _)) = quic::accept(incoming, TIMEOUT).await {
                            echo(s, keys).await;
                        }
                    });
                }
            });
            (addr, client_tls)
        }
        Carrier::Cloak => unreachable!("the relay's tests cover the cloak"),
    };
    Target {
        carrier,
        addr: addr.to_string(),
        path: PATH.into(),
        tls,
        cloak: None,
    }
}

#[tokio::test]
async fn every_carrier_carries_the_same_session() {
    let cert = cert();
    let keys = Arc::new(NoiseKeypair::generate());
    for carrier in [Carrier::Tcp, Carrier::Tls, Carrier::Wss, Carrier::Quic] {
        let target = serve(carrier, &cert, keys.clone()).await;
        let stream = carrier::dial(&target, TIMEOUT).await.unwrap();
        let counter = stream.counter();
        let client = NoiseKeypair::generate();
        let (conn, server_hello) =
            client_handshake(stream, &client, &keys.public, &hello(), TIMEOUT)
                .await
                .unwrap();
        assert!(server_hello.error.is_none());
        let (mut reader, mut writer) = conn.split();
        // Large envelopes cross WebSocket message and QUIC packet limits.
        let sent: Vec<_> = (0..40u64)
            .map(|i| {
                envelope(
                    i,
                    pb::envelope::Body::Push(pb::Push {
                        kind: Some(pb::push::Kind::Deliver(pb::Deliver {
                            messages: vec![pb::QueuedMessage {
                                seq: i,
                                payload: vec![i as u8; 30_000].into(),
                                ..Default::default()
                            }],
                        })),
                    }),
                )
            })
            .collect();
        writer.send_batch(&sent).await.unwrap();
        for want in &sent {
            let got = tokio::time::timeout(TIMEOUT, reader.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(&got, want, "{carrier}");
        }
        assert!(
            counter.load(std::sync::atomic::Ordering::Relaxed) > 40 * 30_000,
            "{carrier}: the stream counts what it reads"
        );
    }
}

#[tokio::test]
async fn a_wrong_pin_is_a_certificate_mismatch_on_every_tls_carrier() {
    let cert = cert();
    let keys = Arc::new(NoiseKeypair::generate());
    for carrier in [Carrier::Tls, Carrier::Wss, Carrier::Quic] {
        let mut target = serve(carrier, &cert, keys.clone()).await;
        target.tls = Some(ClientTls {
            sni: "localhost".into(),
            verify: Verify::Pinned([0; 32]),
        });
        let err = carrier::dial(&target, TIMEOUT).await.unwrap_err();
        assert_eq!(
            carrier::classify(&err, 0),
            Failure::CertificateMismatch,
            "{carrier}: {err}"
        );
    }
}

#[tokio::test]
async fn a_self_signed_certificate_fails_the_system_roots() {
    let cert = cert();
    let keys = Arc::new(NoiseKeypair::generate());
    let mut target = serve(Carrier::Tls, &cert, keys).await;
    target.tls = Some(ClientTls {
        sni: "localhost".into(),
        verify: Verify::System,
    });
    let err = carrier::dial(&target, TIMEOUT).await.unwrap_err();
    assert_eq!(
        carrier::classify(&err, 0),
        Failure::CertificateMismatch,
        "{err}"
    );
}

#[tokio::test]
async fn a_websocket_on_another_path_gets_a_404() {
    let cert = cert();
    let keys = Arc::new(NoiseKeypair::generate());
    let mut target = serve(Carrier::Wss, &cert, keys).await;
    target.path = "/elsewhere".into();
    let err = carrier::dial(&target, TIMEOUT).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Upgrade(m) if m.contains("404")),
        "{err}"
    );
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let listener = tcp::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let target = Target {
        carrier: Carrier::Tcp,
        addr,
        path: String::new(),
        tls: None,
        cloak: None,
    };
    let err = carrier::dial(&target, TIMEOUT).await.unwrap_err();
    assert_eq!(carrier::classify(&err, 0), Failure::Refused, "{err}");
}

#[test]
fn a_timeout_after_some_bytes_is_a_freeze() {
    assert_eq!(
        carrier::classify(&TransportError::Timeout, 16_384),
        Failure::Freeze { after: 16_384 }
    );
    assert_eq!(
        carrier::classify(&TransportError::Timeout, 0),
        Failure::Timeout
    );
    for f in [
        Failure::Refused,
        Failure::Reset,
        Failure::Timeout,
        Failure::TlsAlert,
        Failure::Freeze { after: 7 },
        Failure::CertificateMismatch,
        Failure::Closed,
        Failure::Other,
    ] {
        assert_eq!(Failure::from_name(f.name(), 7), Some(f));
    }
}

#[tokio::test]
async fn certificates_load_from_pem_files() {
    let (cert, cert_pem, key_pem) = ServerCert::self_signed(&["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
    let loaded =
        ServerCert::from_pem_files(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
            .unwrap();
    assert_eq!(loaded.sha256(), cert.sha256());
    let err = ServerCert::from_pem_files(&dir.path().join("key.pem"), &dir.path().join("key.pem"))
        .unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}
