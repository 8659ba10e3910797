//! A real TLS 1.3 server (rustls) as the cover: it accepts our Chrome-shaped
//! hello, we learn its flight's shape, and the relay's answer in that shape
//! completes a cloak handshake.

use std::sync::Arc;
use std::time::Duration;

use postern_cloak::{
    ClientConfig, Secret, Step, client_start, learn_cover_shape, probe_hello, respond, verify,
};
use rand::rngs::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SNI: &str = "cover.example.org";

async fn rustls_cover() -> std::net::SocketAddr {
    let generated = rcgen::generate_simple_self_signed(vec![SNI.to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

/// Sends `hello` and collects what the server sends until it goes quiet.
async fn first_flight(addr: std::net::SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut flight = Vec::new();
    let mut buf = vec![0; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        flight.extend_from_slice(&buf[..n]);
    }
    flight
}

#[tokio::test]
async fn learn_a_real_servers_shape_and_answer_in_it() {
    let addr = rustls_cover().await;
    let flight = first_flight(addr, &probe_hello(SNI, &mut OsRng)).await;
    let shape = learn_cover_shape(&flight).unwrap();
    // rustls with ring has no ML-KEM: it picks x25519, and (compatibility
    // mode, as our hello has a session id) sends a ChangeCipherSpec; it
    // packs its encrypted handshake messages into one record.
    assert_eq!(shape.group, postern_cloak::hello::X25519);
    assert!(matches!(shape.cipher_suite, 0x1301..=0x1303));
    assert!(shape.change_cipher_spec);
    assert!(!shape.record_lengths.is_empty(), "{shape:?}");

    let cfg = ClientConfig {
        secret: Secret::from_bytes([8; 32]),
        sni: SNI.into(),
    };
    let (mut client, hello) = client_start(&cfg, 1_800_000_000, &mut OsRng);
    // The cover answers our real hello too; the client refuses that answer.
    let cover_answer = first_flight(addr, &hello).await;
    assert!(matches!(
        client.on_server_bytes(&cover_answer),
        Err(postern_cloak::CloakError::NotRelay)
    ));

    let (mut client, hello) = client_start(&cfg, 1_800_000_000, &mut OsRng);
    let v = verify(&cfg.secret, SNI, &hello, 1_800_000_000, 30).unwrap();
    let (ours, _) = respond(&cfg.secret, &v, &shape, &mut OsRng);
    assert_eq!(learn_cover_shape(&ours).unwrap(), shape);
    assert_eq!(ours.len(), flight.len());
    assert!(matches!(
        client.on_server_bytes(&ours).unwrap(),
        Step::Done { .. }
    ));
}
