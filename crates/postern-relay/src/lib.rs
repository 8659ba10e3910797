//! `postern-relay`: the relay a volunteer runs in front of an ordinary
//! HTTPS website (the *cover*) so that members whose own routes to the
//! server are blocked still get through.
//!
//! ```text
//!  member ──cloak (looks like Chrome → cover site)──▶ relay ──TCP──▶ server
//!  prober ──anything else──────────────────────────▶ relay ──splice──▶ cover
//! ```
//!
//! - [`conn`] decides, per connection, on the first flight alone: a
//!   Chrome-shaped TLS ClientHello for the relay's SNI carrying a valid,
//!   fresh authenticator under the relay secret (see `postern-cloak`) is
//!   answered by the relay; everything else is spliced byte for byte to
//!   the cover, which the relay connects to as soon as the stranger
//!   connects, so probers see the cover's bytes, certificate, timeouts and
//!   way of closing.
//! - [`replay`] keeps the authenticators accepted inside the time window
//!   (±30 s), on disk as well, so a replayed first flight goes to the cover.
//! - [`cover`] learns the cover's TLS server flight so the relay's own
//!   answer has the same shape, and refreshes it.
//! - [`splice`] moves bytes with pooled buffers taken only while a read is
//!   ready: an idle connection holds no buffer.
//! - [`metrics`] counts connections, bytes, splices by reason, replays and
//!   failures, served on a local Prometheus port.
//!
//! The relay never sees plaintext: what it forwards is the member's Noise
//! session to the server, which it cannot read; the cloak layer around it
//! is between the member and the relay only. [`Hooks::tap`] lets tests see
//! exactly the bytes the forwarding code handles.
//!
//! Limits, all explicit: [`RelayConfig::max_connections`] (the accept loop
//! waits for a free slot rather than accepting and closing, as an
//! overloaded web server would), a first flight of at most one TLS record
//! (`postern-cloak` bounds it), [`RelayConfig::handshake_timeout_secs`]
//! for an authenticated client to finish its handshake, and the replay
//! cache's size. There is no idle timeout of the relay's own on relayed
//! sessions (a close after a fixed idle time would mark it); TCP keepalive
//! clears dead peers, and the server's own keepalives clear idle sessions.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conn;
pub mod cover;
pub mod metrics;
pub mod register;
pub mod replay;
pub mod splice;
pub mod testing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_cloak::{CoverShape, Secret};
use postern_proto::link::{RelayLink, ServerLink};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;
use crate::replay::ReplayCache;
use crate::splice::BufPool;

/// The relay's settings (`postern relay --config relay.toml`, or flags).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Where to listen, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// `HOST:PORT` members connect to, written into the relay link;
    /// default: the listen address (required when that is 0.0.0.0 or ::).
    pub public: Option<String>,
    /// The cover website, `HOST:PORT` (a real HTTPS site the volunteer
    /// controls, typically on the same machine on another port).
    pub cover: String,
    /// The cover site's name: the SNI members send and the relay expects.
    pub sni: String,
    /// The server's link (`postern://server?…`); the relay forwards to its
    /// TCP endpoints.
    pub server: String,
    /// Where the relay keeps its secret and replay cache.
    pub data_dir: PathBuf,
    /// A label for the relay link.
    pub name: Option<String>,
    /// A local address for Prometheus metrics; off by default.
    pub metrics: Option<SocketAddr>,
    /// Allow the metrics port on a non-loopback address.
    pub metrics_public: bool,
    /// Most connections at once (relayed and spliced).
    pub max_connections: usize,
    /// Accepted clock difference for the authenticator's timestamp, seconds.
    pub window_secs: u64,
    /// Time an authenticated client has to finish its handshake, seconds.
    pub handshake_timeout_secs: u64,
    /// How often to re-learn the cover's TLS shape, seconds.
    pub cover_refresh_secs: u64,
    /// Most entries in the replay cache.
    pub replay_max_entries: usize,
    /// Register with the server and report health (default true).
    pub register: bool,
    /// Connections offered to the server's distributor (default:
    /// `max_connections`).
    pub capacity: Option<usize>,
    /// Countries (two-letter codes) the relay means to serve.
    pub regions: Vec<String>,
    /// How often to report health to the server, seconds.
    pub report_interval_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: "0.0.0.0:443".parse().expect("valid default"),
            public: None,
            cover: String::new(),
            sni: String::new(),
            server: String::new(),
            data_dir: PathBuf::from("postern-relay"),
            name: None,
            metrics: None,
            metrics_public: false,
            max_connections: 16_384,
            window_secs: 30,
            handshake_timeout_secs: 10,
            cover_refresh_secs: 1800,
            replay_max_entries: 1_000_000,
            register: true,
            capacity: None,
            regions: Vec::new(),
            report_interval_secs: 300,
        }
    }
}

impl RelayConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid relay config", path.display()))
    }

    /// Checks what can be checked without the network.
    pub fn check(&self) -> anyhow::Result<ServerLink> {
        anyhow::ensure!(
            !self.cover.is_empty(),
            "no cover site: pass --cover HOST:PORT"
        );
        anyhow::ensure!(
            self.cover
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()),
            "the cover \"{}\" is not HOST:PORT",
            self.cover
        );
        anyhow::ensure!(
            !self.sni.is_empty(),
            "no SNI: pass --sni NAME (the cover site's name)"
        );
        anyhow::ensure!(!self.server.is_empty(), "no server: pass --server LINK");
        anyhow::ensure!(
            self.max_connections > 0,
            "max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.public.is_some() || !self.listen.ip().is_unspecified(),
            "the relay listens on {}, which members cannot dial: pass --public HOST:PORT \
             (the address or name and port members connect to) for the relay link",
            self.listen
        );
        anyhow::ensure!(
            (1..=300).contains(&self.window_secs),
            "window_secs must be 1 to 300"
        );
        let link: ServerLink = self
            .server
            .parse()
            .map_err(|e| anyhow::anyhow!("--server is not a server link: {e}"))?;
        anyhow::ensure!(
            !link.tcp.is_empty(),
            "the server link has no tcp= endpoint; the relay forwards over plain TCP \
             (the member's Noise session is the protection)"
        );
        Ok(link)
    }
}

/// Which way bytes were going when the tap saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a member to the server.
    ToServer,
    /// From the server to a member.
    ToClient,
}

/// A function that sees every byte the relay forwards between a member
/// and the server (after the cloak layer is removed): for tests.
pub type Tap = Arc<dyn Fn(Direction, &[u8]) + Send + Sync>;

/// Things tests plug in.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Sees forwarded bytes.
    pub tap: Option<Tap>,
}

pub(crate) struct Shared {
    pub(crate) config: RelayConfig,
    pub(crate) secret: Secret,
    pub(crate) server: ServerLink,
    pub(crate) replay: ReplayCache,
    pub(crate) shape: RwLock<CoverShape>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: BufPool,
    pub(crate) tap: Option<Tap>,
    /// The server's last word on this relay: `unknown` until it answers.
    pub(crate) server_state: RwLock<String>,
    /// Retired by the server: everything goes to the cover.
    pub(crate) retired: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Connects to the first of the server's TCP endpoints that answers.
    pub(crate) async fn connect_server(&self) -> anyhow::Result<TcpStream> {
        let mut last = None;
        for endpoint in &self.server.tcp {
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(endpoint)).await
            {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = Some(anyhow::anyhow!("{endpoint}: {e}")),
                Err(_) => last = Some(anyhow::anyhow!("{endpoint}: timed out")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the server link has no tcp endpoint")))
    }
}

/// Unix time in seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads 32 bytes kept as base64url text in `path`, or, if the file does
/// not exist, makes them with `make` and writes them (mode 0600, never
/// overwriting). `what` names the key in errors.
pub(crate) fn load_or_create_key_file(
    path: &Path,
    what: &str,
    make: impl FnOnce() -> [u8; 32],
) -> anyhow::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .with_context(|| {
                format!(
                    "{} does not hold a {what} (32 bytes, base64url)",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = make();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            std::io::Write::write_all(&mut f, URL_SAFE_NO_PAD.encode(bytes).as_bytes())?;
            Ok(bytes)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads the relay secret from `DATA_DIR/relay-secret`, creating it (mode
/// 0600) on first start.
pub fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Secret> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut bytes =
        load_or_create_key_file(&data_dir.join("relay-secret"), "relay secret", || {
            let mut b = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
            b
        })?;
    let secret = Secret::from_bytes(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(secret)
}

/// A running relay.
pub struct RunningRelay {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    link: RelayLink,
    metrics: Arc<Metrics>,
    operator_public: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningRelay {
    /// The address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics port's address, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The relay link members add.
    pub fn link(&self) -> &RelayLink {
        &self.link
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The operator key's public half (base64url), for the server's
    /// `relay_operators`.
    pub fn operator_key(&self) -> &str {
        &self.operator_public
    }

    /// What the server last said about this relay: `active`, `pending`,
    /// `retired`, or `unknown` before it answered.
    pub fn server_state(&self) -> String {
        self.shared.server_state.read().expect("state lock").clone()
    }

    /// Stops accepting; open connections run on until they end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits until the relay stops (it runs until [`Self::stop`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts a relay: loads (or creates) the secret, opens the replay cache,
/// learns the cover's shape, binds the listener and the metrics port.
pub async fn start(config: RelayConfig, hooks: Hooks) -> anyhow::Result<RunningRelay> {
    let server = config.check()?;
    let secret = load_or_create_secret(&config.data_dir)?;
    let replay = ReplayCache::open(
        Some(&config.data_dir.join("replay-cache")),
        config.window_secs,
        config.replay_max_entries,
        unix_now(),
    )
    .context("cannot open the replay cache")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let shape = match cover::learn(&config.cover, &config.sni, Duration::from_secs(10)).await {
        Ok(shape) => shape,
        Err(e) => {
            tracing::warn!("{e:#}; answering with a typical server flight until it can");
            CoverShape::fallback()
        }
    };
    let metrics = Arc::new(Metrics::default());
    let metrics_listener = match config.metrics {
        Some(addr) => Some(metrics::bind(addr, config.metrics_public).await?),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let host = config
        .public
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    let link: RelayLink = RelayLink {
        host,
        sni: config.sni.clone(),
        secret: *secret.as_bytes(),
        server_key: Some(server.noise_key),
        name: config.name.clone(),
    }
    .to_string()
    .parse()
    .map_err(|e| {
        anyhow::anyhow!("the relay link would be invalid: {e} (check --public and --sni)")
    })?;

    let shared = Arc::new(Shared {
        config,
        secret,
        server,
        replay,
        shape: RwLock::new(shape),
        metrics: metrics.clone(),
        pool: BufPool::new(256),
        tap: hooks.tap,
        server_state: RwLock::new("unknown".into()),
        retired: std::sync::atomic::AtomicBool::new(false),
    });
    let operator_key = register::load_or_create_operator_key(&shared.config.data_dir)?;
    let operator_public = URL_SAFE_NO_PAD.encode(operator_key.verifying_key().to_bytes());
    let reporter = shared.config.register.then(|| {
        tokio::spawn(register::report_loop(
            shared.clone(),
            link.clone(),
            operator_key,
        ))
    });
    let shared_view = shared.clone();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let metrics_task =
            metrics_listener.map(|l| tokio::spawn(metrics::serve(l, shared.metrics.clone())));
        let refresh = tokio::spawn(refresh_cover(shared.clone()));
        let slots = Arc::new(Semaphore::new(shared.config.max_connections));
        loop {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    shared
                        .metrics
                        .at_capacity
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::select! {
                        p = slots.clone().acquire_owned() => p.expect("never closed"),
                        _ = stopped.changed() => break,
                    }
                }
            };
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            conn::handle(stream, shared).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait, don't spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = stopped.changed() => break,
            }
        }
        refresh.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(t) = reporter {
            t.abort();
        }
    });
    Ok(RunningRelay {
        local_addr,
        metrics_addr,
        link,
        metrics,
        operator_public,
        shared: shared_view,
        stop,
        task,
    })
}

async fn refresh_cover(shared: Arc<Shared>) {
    let every = Duration::from_secs(shared.config.cover_refresh_secs.max(10));
    loop {
        tokio::time::sleep(every).await;
        match cover::learn(
            &shared.config.cover,
            &shared.config.sni,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(shape) => *shared.shape.write().expect("shape lock") = shape,
            Err(e) => tracing::warn!("{e:#}; keeping the shape learned before"),
        }
    }
}
