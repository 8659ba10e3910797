//! The server's carrier listeners: plain TCP, TLS 1.3, WebSocket over TLS
//! and QUIC, all feeding the same connection handling ([`conn::serve`]).
//!
//! One semaphore of `max_connections` slots is shared by every listener, so
//! the limit holds across carriers; the TLS and WebSocket handshakes run in
//! the connection's own task under `handshake_timeout`, never in the accept
//! loop, so a slow or silent client cannot stall accepting. The carriers
//! never look past their own framing: the Noise session starts right after.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use postern_proto::link::ServerLink;
use postern_transport::quic::QuicListener;
use postern_transport::tls::Acceptor as TlsAcceptor;
use postern_transport::tls::ServerCert;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::CarriersConfig;
use crate::{Shared, conn, ratelimit, stopped};

/// Where the optional carriers listen, once bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarrierAddrs {
    /// TLS 1.3.
    pub tls: Option<SocketAddr>,
    /// WebSocket over TLS.
    pub wss: Option<SocketAddr>,
    /// QUIC (UDP).
    pub quic: Option<SocketAddr>,
}

/// The bound listeners, before they serve.
pub(crate) struct Bound {
    pub addrs: CarrierAddrs,
    tls: Option<(TcpListener, TlsAcceptor)>,
    wss: Option<(TcpListener, TlsAcceptor, String)>,
    quic: Option<QuicListener>,
}

/// Reads (or generates and stores) the certificate and binds the
/// configured carriers; adds their endpoints to `link`.
pub(crate) async fn bind(
    cfg: &CarriersConfig,
    data_dir: &Path,
    link: &mut ServerLink,
) -> anyhow::Result<Bound> {
    let mut bound = Bound {
        addrs: CarrierAddrs::default(),
        tls: None,
        wss: None,
        quic: None,
    };
    if !cfg.any() {
        return Ok(bound);
    }
    if !cfg.wss_path.starts_with('/') {
        anyhow::bail!(
            "carriers.wss_path must start with '/', not {:?}",
            cfg.wss_path
        );
    }
    let (cert, pin) = certificate(cfg, data_dir)?;
    let public = |addr: SocketAddr| {
        let host = cfg.public_host.clone().unwrap_or_else(|| {
            let ip = if addr.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                addr.ip()
            };
            SocketAddr::new(ip, 0)
                .to_string()
                .trim_end_matches(":0")
                .to_owned()
        });
        format!("{host}:{}", addr.port())
    };
    if let Some(addr) = cfg.tls {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for TLS clients on {addr}"))?;
        let local = listener.local_addr()?;
        bound.addrs.tls = Some(local);
        link.tls.push(public(local));
        bound.tls = Some((listener, cert.acceptor()?));
    }
    if let Some(addr) = cfg.wss {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for WebSocket clients on {addr}"))?;
        let local = listener.local_addr()?;
        bound.addrs.wss = Some(local);
        link.wss.push(format!("{}{}", public(local), cfg.wss_path));
        bound.wss = Some((listener, cert.acceptor()?, cfg.wss_path.clone()));
    }
    if let Some(addr) = cfg.quic {
        let listener = QuicListener::bind(addr, &cert)
            .with_context(|| format!("cannot listen for QUIC clients on {addr}"))?;
        let local = listener.local_addr()?;
        bound.addrs.quic = Some(local);
        link.quic.push(public(local));
        bound.quic = Some(listener);
    }
    link.sni = cfg.sni.clone();
    if pin {
        link.cert_sha256 = Some(cert.sha256());
    }
    Ok(bound)
}

/// The configured certificate, or the generated one in the data directory
/// (created on first use); and whether the link should pin it.
fn certificate(cfg: &CarriersConfig, data_dir: &Path) -> anyhow::Result<(ServerCert, bool)> {
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => Ok((ServerCert::from_pem_files(cert, key)?, cfg.pin)),
        (None, None) => {
            let cert_path = data_dir.join("tls-cert.pem");
            let key_path = data_dir.join("tls-key.pem");
            if !cert_path.exists() {
                let (cert, cert_pem, key_pem) = ServerCert::self_signed(&cfg.cert_names)?;
                crate::write_private(&key_path, key_pem.as_bytes())
                    .with_context(|| format!("cannot write {}", key_path.display()))?;
                std::fs::write(&cert_path, cert_pem)
                    .with_context(|| format!("cannot write {}", cert_path.display()))?;
                return Ok((cert, true));
            }
            Ok((ServerCert::from_pem_files(&cert_path, &key_path)?, true))
        }
        _ => anyhow::bail!("carriers.cert and carriers.key go together: give both or neither"),
    }
}

/// What a TCP listener does with a connection before the session.
#[derive(Clone)]
enum Wrap {
    Plain,
    Tls(TlsAcceptor),
    Wss(TlsAcceptor, Arc<str>),
}

/// Spawns every listener's accept loop on `tasks`.
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    tcp: TcpListener,
    bound: Bound,
    shared: Arc<Shared>,
    max_connections: usize,
    stop: &watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    tasks.spawn(tcp_loop(
        tcp,
        Wrap::Plain,
        shared.clone(),
        slots.clone(),
        stop.clone(),
    ));
    if let Some((listener, acceptor)) = bound.tls {
        tasks.spawn(tcp_loop(
            listener,
            Wrap::Tls(acceptor),
            shared.clone(),
            slots.clone(),
            stop.clone(),
        ));
    }
    if let Some((listener, acceptor, path)) = bound.wss {
        tasks.spawn(tcp_loop(
            listener,
            Wrap::Wss(acceptor, path.into()),
            shared.clone(),
            slots.clone(),
            stop.clone(),
        ));
    }
    if let Some(listener) = bound.quic {
        tasks.spawn(quic_loop(listener, shared, slots, stop.clone()));
    }
}

/// Takes a connection slot, or says (rate-limited) why not.
fn slot(
    slots: &Arc<Semaphore>,
    refusals: &ratelimit::LogThrottle,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slot = slots.clone().try_acquire_owned().ok();
    if slot.is_none()
        && let Some(refused) = refusals.hit(std::time::Instant::now())
    {
        tracing::warn!(refused, "connection limit reached; closing new connections");
    }
    slot
}

async fn tcp_loop(
    listener: TcpListener,
    wrap: Wrap,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let refusals = ratelimit::LogThrottle::new(Duration::from_secs(10));
    let mut connections = JoinSet::new();
    let mut drain = shared.drain.subscribe();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            () = stopped(&mut drain) => {
                // Close the listener so new clients go elsewhere at once;
                // the connections finish and leave by themselves.
                drop(listener);
                finish(&mut connections, &mut stop).await;
                break;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slot(&slots, &refusals) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let wrap = wrap.clone();
        connections.spawn(async move {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            let timeout = shared.service.limits().handshake_timeout;
            match wrap {
                Wrap::Plain => serve(&shared, stream, peer).await,
                Wrap::Tls(acceptor) => {
                    match postern_transport::tls::accept(&acceptor, stream, timeout).await {
                        Ok(stream) => serve(&shared, stream, peer).await,
                        Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                    }
                }
                Wrap::Wss(acceptor, path) => {
                    let upgraded = async {
                        let stream =
                            postern_transport::tls::accept(&acceptor, stream, timeout).await?;
                        postern_transport::ws::accept(stream, &path, timeout).await
                    };
                    match upgraded.await {
                        Ok(stream) => serve(&shared, stream, peer).await,
                        Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                    }
                }
            }
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    connections.shutdown().await;
}

async fn quic_loop(
    listener: QuicListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let refusals = ratelimit::LogThrottle::new(Duration::from_secs(10));
    let mut connections = JoinSet::new();
    let mut drain = shared.drain.subscribe();
    loop {
        let incoming = tokio::select! {
            () = stopped(&mut stop) => break,
            () = stopped(&mut drain) => {
                listener.close();
                finish(&mut connections, &mut stop).await;
                break;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            incoming = listener.incoming() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let Some(slot) = slot(&slots, &refusals) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            let timeout = shared.service.limits().handshake_timeout;
            match postern_transport::quic::accept(incoming, timeout).await {
                Ok((stream, peer)) => serve(&shared, stream, peer).await,
                Err(e) => tracing::debug!(error = %e, "QUIC connection failed"),
            }
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    listener.close();
    connections.shutdown().await;
}

/// While draining: waits until every connection has left, or until the
/// stop that ends the drain.
async fn finish(connections: &mut JoinSet<()>, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = stopped(stop) => {}
        () = async { while connections.join_next().await.is_some() {} } => {
            stopped(stop).await;
        }
    }
}

async fn serve<S>(shared: &Shared, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn::serve(
        shared.service.clone(),
        shared.keys.clone(),
        shared.handshakes.clone(),
        shared.drain.subscribe(),
        stream,
        peer,
    )
    .await;
}
