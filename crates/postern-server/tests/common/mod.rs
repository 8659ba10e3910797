//! A server on loopback in a temporary directory, and members registered
//! through the real SMS outbox.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use postern_client::{Client, Connection};
use postern_proto::keys::NoiseKeypair;
use postern_proto::pb;
use postern_server::{RunningServer, Server, ServerConfig};
use postern_transport::{ConnReader, ConnWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

pub struct TestServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub outbox: PathBuf,
}

pub fn config(dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig {
        data_dir: dir.join("server"),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    cfg.sms.outbox = Some(dir.join("outbox.jsonl"));
    cfg.limits.code_interval = Duration::ZERO;
    cfg
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let outbox = cfg.sms.outbox.clone().unwrap();
        let server = Server::start(cfg).await.expect("server starts");
        TestServer {
            server,
            dir,
            outbox,
        }
    }

    pub fn code(&self, phone: &str) -> String {
        postern_server::sms::outbox_code(&self.outbox, phone)
            .unwrap()
            .expect("a code in the outbox")
    }

    /// A new client home (not registered).
    pub fn client(&self, name: &str) -> Client {
        Client::setup(&self.dir.path().join(name), &self.server.link).unwrap()
    }

    /// A registered member with username `name`.
    pub async fn member(&self, name: &str, phone: &str) -> (Client, Connection) {
        let client = self.client(name);
        let mut conn = client.connect().await.unwrap();
        conn.request_code(phone).await.unwrap();
        conn.register(phone, &self.code(phone), Some(name), "test")
            .await
            .unwrap();
        (client, conn)
    }

    /// A raw protocol session with a fresh key.
    pub async fn raw(&self) -> Raw {
        self.raw_with(&NoiseKeypair::generate()).await
    }

    /// A raw protocol session authenticated as `client`'s device.
    pub async fn raw_as(&self, client: &Client) -> Raw {
        let secret: [u8; 32] = client
            .with_home(|h| h.get("noise_secret"))
            .unwrap()
            .expect("a set-up home")
            .try_into()
            .unwrap();
        self.raw_with(&NoiseKeypair::from_secret(secret)).await
    }

    pub async fn raw_with(&self, keys: &NoiseKeypair) -> Raw {
        let stream = TcpStream::connect(self.server.client_addr).await.unwrap();
        let hello = pb::ClientHello {
            version: postern_proto::PROTOCOL_VERSION,
            software: "test".into(),
        };
        let (conn, server_hello) = postern_transport::client_handshake(
            stream,
            keys,
            &self.server.link.noise_key,
            &hello,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let (r, w) = conn.split();
        Raw {
            r,
            w,
            hello: server_hello,
            next: 1,
        }
    }
}

pub struct Raw {
    pub r: ConnReader<ReadHalf<TcpStream>>,
    pub w: ConnWriter<WriteHalf<TcpStream>>,
    pub hello: pb::ServerHello,
    next: u64,
}

impl Raw {
    pub async fn call(&mut self, kind: pb::request::Kind) -> pb::response::Kind {
        let id = self.next;
        self.next += 1;
        self.w
            .send(&postern_proto::frame::envelope(
                id,
                pb::envelope::Body::Request(pb::Request { kind: Some(kind) }),
            ))
            .await
            .unwrap();
        loop {
            let env = tokio::time::timeout(Duration::from_secs(10), self.r.recv())
                .await
                .expect("an answer within 10 s")
                .unwrap()
                .expect("connection open");
            if env.id == id
                && let Some(pb::envelope::Body::Response(r)) = env.body
            {
                return r.kind.expect("non-empty response");
            }
        }
    }
}

/// The error code of a response, or panics if it is not an error.
pub fn error_code(resp: &pb::response::Kind) -> pb::ErrorCode {
    match resp {
        pb::response::Kind::Error(e) => pb::ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}
