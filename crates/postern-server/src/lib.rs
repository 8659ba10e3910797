//! The Postern server: accounts, devices, delivery queues, SMS gateways,
//! the HTTP API and the transparency log, wired to a store and to carrier
//! listeners.
//!
//! From the socket inward: a TCP listener accepts ([`Server::start`]), each
//! connection runs a Noise handshake and then the request loop in `conn`,
//! requests are handled by [`service::Service`], messages go to per-device
//! queues in the store and wake subscribed connections through the hub.
//! Relays listed in the config are handed out by the distributor
//! ([`relays`]), whose state is saved in the store.
//! The [`directory`] module publishes the signed directory (over HTTP and
//! on every carrier) whose key the server link carries.
//! Beside them, the [`transparency`] log takes typed entries, signs a
//! checkpoint per batch and is served under `/log/` on the HTTP API.
//!
//! The server never parses message payloads and never logs phone numbers,
//! codes or payloads.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod carriers;
pub mod cases;
pub mod config;
mod conn;
pub mod directory;
mod http;
pub mod hub;
pub mod legal;
mod operator;
pub mod phone;
pub mod ratelimit;
pub mod reachability;
pub mod relays;
pub mod service;
pub mod sms;
pub mod transparency;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use postern_proto::keys::NoiseKeypair;
use postern_proto::link::ServerLink;
use postern_store::{PgStore, SqliteOptions, SqliteStore, Store, Synchronous};
use postern_tlog::Verifier;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use carriers::CarrierAddrs;
pub use config::ServerConfig;
use config::SmsGatewayKind;
use service::{Service, now_ms};
use transparency::TransparencyLog;

/// State every connection and the HTTP API share.
pub(crate) struct Shared {
    service: Arc<Service>,
    keys: Arc<NoiseKeypair>,
    link: ServerLink,
    connections: AtomicUsize,
    handshakes: Arc<Semaphore>,
    node: String,
    store_kind: &'static str,
    /// Set once on SIGTERM (or [`RunningServer::drain`]): stop accepting,
    /// finish requests, send GoAway, close.
    drain: watch::Sender<bool>,
}

impl Shared {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// The server; see [`Server::start`].
pub struct Server;

/// A started server: its addresses, its link, and a handle to stop it.
pub struct RunningServer {
    /// Where clients connect (TCP).
    pub client_addr: SocketAddr,
    /// Where the other carriers listen, those configured.
    pub carriers: CarrierAddrs,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The link clients bootstrap from.
    pub link: ServerLink,
    /// The transparency log's verifier key (also in `DATA_DIR/log-vkey.txt`),
    /// if the server hosts the log.
    pub log_key: Option<Verifier>,
    /// This node's name (`[node] name`, or `DATA_DIR/node-id`).
    pub node: String,
    drain_timeout: Duration,
    /// The directory being published, if any.
    pub directory: Option<Arc<directory::Published>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    store: OpenStore,
    shared: Arc<Shared>,
    log: Option<transparency::Hosted>,
    cases: Arc<cases::Cases>,
}

impl Server {
    /// Opens the data directory and store, binds the listeners, writes
    /// `server-link.txt`, opens the transparency log (creating its key and
    /// writing `log-vkey.txt` on first start), and starts serving in the
    /// background.
    pub async fn start(cfg: ServerConfig) -> anyhow::Result<RunningServer> {
        create_private_dir(&cfg.data_dir)?;
        let keys = Arc::new(load_or_create_key(&cfg.data_dir.join("server.key"))?);
        let node = match &cfg.node.name {
            Some(name) => check_node_name(name)?,
            None => load_or_create_node_id(&cfg.data_dir.join("node-id"))?,
        };

        let synchronous = match cfg.sqlite_synchronous.as_str() {
            "full" => Synchronous::Full,
            "normal" => Synchronous::Normal,
            other => bail!("sqlite_synchronous must be \"full\" or \"normal\", not {other:?}"),
        };
        let store = match &cfg.store {
            None => {
                let mut opts = SqliteOptions::new(cfg.data_dir.join("postern.db"));
                opts.synchronous = synchronous;
                OpenStore::Sqlite(SqliteStore::open(opts).await.with_context(|| {
                    format!("cannot open the database in {}", cfg.data_dir.display())
                })?)
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                OpenStore::Postgres(PgStore::connect(url).await.with_context(|| {
                    "cannot connect to the PostgreSQL store (is the server up, and the URL right?)"
                })?)
            }
            Some(other) => bail!(
                "store must be a postgres:// URL (or unset for the embedded SQLite file), not {other:?}"
            ),
        };

        let sms: Arc<dyn sms::SmsGateway> = match cfg.sms.gateway {
            SmsGatewayKind::Outbox => Arc::new(sms::OutboxGateway::new(
                cfg.sms
                    .outbox
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("sms-outbox.jsonl")),
            )),
            SmsGatewayKind::Webhook => {
                let url =
                    cfg.sms.webhook_url.clone().context(
                        "the webhook SMS gateway needs sms.webhook_url in the config file",
                    )?;
                Arc::new(sms::WebhookGateway::new(url)?)
            }
        };

        let listener = postern_transport::tcp::bind(&cfg.listen.to_string())
            .await
            .with_context(|| format!("cannot listen for clients on {}", cfg.listen))?;
        let client_addr = listener.local_addr()?;
        let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", cfg.http_listen))?;
        let http_addr = http_listener.local_addr()?;

        let public = cfg.public_addr.clone().unwrap_or_else(|| {
            let mut a = client_addr;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a.to_string()
        });
        let mut link = ServerLink {
            tcp: vec![public],
            noise_key: keys.public,
            ..ServerLink::default()
        };
        let bound = carriers::bind(&cfg.carriers, &cfg.data_dir, &mut link).await?;
        let carrier_addrs = bound.addrs;
        let log = if cfg.transparency.enabled {
            Some(
                transparency::start(&cfg.transparency, &cfg.data_dir, &link.tcp[0])
                    .await
                    .context("cannot start the transparency log")?,
            )
        } else {
            None
        };

        let (shutdown, stop) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let published = if cfg.directory.enabled {
            let host = link.tcp[0]
                .rsplit_once(':')
                .map_or(link.tcp[0].as_str(), |(h, _)| h)
                .to_owned();
            let witnesses = cfg
                .transparency
                .witnesses
                .iter()
                .filter_map(|w| Verifier::from_vkey(&w.vkey).ok())
                .map(|v| v.vkey())
                .collect();
            let publisher = directory::start(
                &cfg.directory,
                &cfg.data_dir,
                directory::Facts {
                    tcp: &link.tcp,
                    noise_key: keys.public,
                    log_key: log.as_ref().map(|l| l.log.key()),
                    witnesses,
                    origin: host.clone(),
                },
                stop.clone(),
            )
            .context("cannot publish the directory")?;
            tasks.spawn(publisher.task);
            link.directory_key = Some(publisher.key.vkey());
            link.http = Some(
                cfg.directory
                    .http_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{host}:{}", http_addr.port())),
            );
            link.mirrors = cfg.directory.mirrors.clone();
            link.dns = match (&cfg.directory.doh, &cfg.directory.dns_name) {
                (Some(doh), Some(name)) => Some((doh.clone(), name.clone())),
                (None, None) => None,
                _ => bail!("[directory] doh and dns_name go together"),
            };
            // The configured URLs must make a link clients can read.
            link = link
                .to_string()
                .parse()
                .context("[directory] http_url, mirrors, doh or dns_name cannot go in a link")?;
            Some(publisher.published)
        } else {
            None
        };

        let suite =
            postern_proto::mls::ciphersuite_by_name(&cfg.mls_ciphersuite).with_context(|| {
                let names: Vec<&str> = postern_proto::mls::CIPHERSUITES
                    .iter()
                    .map(|(_, n)| *n)
                    .collect();
                format!(
                    "mls_ciphersuite {:?} is not one Postern supports ({})",
                    cfg.mls_ciphersuite,
                    names.join(", ")
                )
            })?;
        let store_dyn = store.shared();
        let store_kind = match &store {
            OpenStore::Sqlite(_) => "sqlite",
            OpenStore::Postgres(_) => "postgres",
        };
        let (hub, nats_events) = match &cfg.node.nats {
            None => (Arc::new(hub::Hub::default()), None),
            Some(url) => {
                if store_kind == "sqlite" {
                    tracing::warn!(
                        "NATS is configured but the store is SQLite, which one node only can use"
                    );
                }
                let (client, events) = postern_nats::Client::connect(postern_nats::Options::new(
                    url,
                    format!("postern {node}"),
                ))
                .await
                .context("cannot connect to NATS (is it running, and the URL right?)")?;
                (
                    Arc::new(hub::Hub::with_fanout(hub::Fanout::new(
                        client,
                        &cfg.node.nats_prefix,
                    ))),
                    Some(events),
                )
            }
        };
        let relays = Arc::new(
            relays::Relays::open(
                store_dyn.clone(),
                &cfg.relays,
                cfg.distributor.clone(),
                &cfg.relay_operators,
                keys.public,
            )
            .await
            .context("cannot start relay distribution")?,
        );
        let vault = Arc::new(legal::Vault::open(&cfg.legal, &cfg.data_dir)?);
        if vault.is_development() {
            tracing::warn!(
                "no [[legal.custodians]] configured: phone numbers and connection addresses are \
                 sealed to a development custodian whose key is in the data directory; \
                 configure real custodians before production"
            );
        }
        let migrated = vault
            .seal_legacy(store_dyn.as_ref())
            .await
            .context("cannot move clear phone numbers into the vault")?;
        if migrated > 0 {
            tracing::warn!(
                accounts = migrated,
                "sealed phone numbers stored in clear into the vault; the database file may keep \
                 old copies in free pages until it is vacuumed (SQLite: VACUUM while stopped)"
            );
        }
        let cases = Arc::new(cases::Cases::open(
            &cfg.legal,
            &cfg.data_dir,
            store_dyn.clone(),
            vault.clone(),
            log.as_ref().map(|l| l.log.clone()),
        )?);
        let service = Arc::new(
            Service::new(
                store_dyn.clone(),
                sms,
                hub.clone(),
                relays,
                vault.clone(),
                cfg.limits.clone(),
                cfg.message_ttl,
            )
            .with_mls_ciphersuite(suite)
            .with_cases(cases.clone())
            .with_directory(published.clone())
            .with_reachability(Arc::new(reachability::Reachability::new(link.endpoints()))),
        );
        let shared = Arc::new(Shared {
            service,
            keys,
            link: link.clone(),
            connections: AtomicUsize::new(0),
            handshakes: Arc::new(Semaphore::new(cfg.limits.max_handshakes)),
            node: node.clone(),
            store_kind,
            drain: watch::channel(false).0,
        });

        carriers::spawn(
            &mut tasks,
            listener,
            bound,
            shared.clone(),
            cfg.limits.max_connections,
            &stop,
        );
        if let Some(events) = nats_events {
            tasks.spawn(wake_loop(events, hub, cfg.node.poll_interval, stop.clone()));
        }
        let mut http_stop = stop.clone();
        let operator = Arc::new(operator::Operator::new(
            &cfg.legal.operators,
            cases.clone(),
            shared.service.relays().clone(),
        )?);
        let router = http::router(
            shared.clone(),
            log.as_ref().map(|l| l.log.dir()),
            published.clone(),
        )
        .merge(operator::router(operator));
        tasks.spawn(async move {
            let serve = axum::serve(http_listener, router)
                .with_graceful_shutdown(async move { stopped(&mut http_stop).await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tasks.spawn(cases::gag_loop(cases.clone(), stop.clone()));
        tasks.spawn(legal::retention_loop(
            store_dyn.clone(),
            vault,
            stop.clone(),
        ));
        tasks.spawn(relay_signal_loop(
            shared.service.relays().clone(),
            stop.clone(),
        ));
        tasks.spawn(purge_loop(store_dyn, stop));
        // Written last: once it exists, everything else (the log's vkey
        // included) is in place and the server is serving.
        // Replaced whole (rename), so a reader never sees it half written.
        let link_path = cfg.data_dir.join("server-link.txt");
        let tmp = cfg.data_dir.join("server-link.txt.tmp");
        std::fs::write(&tmp, format!("{link}\n"))
            .and_then(|()| std::fs::rename(&tmp, &link_path))
            .with_context(|| format!("cannot write {}", link_path.display()))?;

        Ok(RunningServer {
            client_addr,
            carriers: carrier_addrs,
            http_addr,
            link,
            log_key: log.as_ref().map(|l| l.log.key().clone()),
            node,
            drain_timeout: cfg.node.drain_timeout,
            directory: published,
            shutdown,
            tasks,
            store,
            shared,
            log,
            cases,
        })
    }
}

/// The store a server opened, kept to close it on shutdown.
enum OpenStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl OpenStore {
    fn shared(&self) -> Arc<dyn Store> {
        match self {
            OpenStore::Sqlite(s) => Arc::new(s.clone()),
            OpenStore::Postgres(s) => Arc::new(s.clone()),
        }
    }

    async fn close(&self) {
        match self {
            OpenStore::Sqlite(s) => s.close().await,
            OpenStore::Postgres(s) => s.close().await,
        }
    }
}

impl RunningServer {
    /// The relays and their distributor (operators approve and retire
    /// registered relays through it).
    pub fn relays(&self) -> &Arc<relays::Relays> {
        self.shared.service.relays()
    }

    /// Connections open right now.
    pub fn connections(&self) -> usize {
        self.shared.connections()
    }

    /// The transparency log, to append entries to; `None` if the server
    /// does not host it (`transparency.enabled = false`).
    pub fn transparency(&self) -> Option<&TransparencyLog> {
        self.log.as_ref().map(|l| &l.log)
    }

    /// The lawful-request cases this server keeps.
    pub fn cases(&self) -> &Arc<cases::Cases> {
        &self.cases
    }

    /// Drains the node, then [shuts down](Self::shutdown): stops
    /// accepting, lets every connection finish the requests it has in
    /// flight and tells its client to move (GoAway), and waits up to
    /// `[node] drain_timeout` for the connections to close. Meanwhile
    /// `/health` answers 503, so a load balancer takes the node out.
    pub async fn drain(self) {
        self.shared.drain.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.shared.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.shared.connections();
        if left > 0 {
            tracing::warn!(connections = left, "drain timeout; closing the rest");
        } else {
            tracing::info!("drained: no connection left");
        }
        self.shutdown().await;
    }

    /// Stops accepting, closes the listeners, publishes what the
    /// transparency log has queued and stops it, and closes the store.
    /// Requests already acknowledged are durable before this returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(log) = self.log.take() {
            log.stop().await;
        }
        self.store.close().await;
    }
}

/// Hands each day's relayed-session counts to the distributor soon after
/// the day ends, even when no session comes (a relay blocked everywhere
/// sees none).
async fn relay_signal_loop(relays: Arc<relays::Relays>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = relays.flush_day(relays::now()).await {
            tracing::warn!("relay signals not recorded: {e:#}");
        }
    }
}

async fn purge_loop(store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        match store.purge_expired(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "expired undelivered messages"),
            Err(e) => tracing::warn!(error = %e, "purging expired messages failed"),
        }
        if let Err(e) = store.purge_codes(now).await {
            tracing::warn!(error = %e, "purging expired codes failed");
        }
    }
}

/// Wakes local connections for other nodes' messages (NATS), after a
/// NATS reconnect (wake-ups may have been lost meanwhile), and every
/// `poll` as the safety net for wake-ups lost otherwise.
async fn wake_loop(
    mut events: postern_nats::Events,
    hub: Arc<hub::Hub>,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            event = events.recv() => match event {
                None => return,
                Some(postern_nats::Event::Message { subject, .. }) => hub.wake_subject(&subject),
                Some(postern_nats::Event::Reconnected | postern_nats::Event::Lagged) => {
                    let woken = hub.wake_all();
                    tracing::info!(connections = woken, "NATS wake-ups may have been lost; every connection checks the store");
                }
                Some(postern_nats::Event::Disconnected(_)) => {}
            },
            _ = tick.tick() => {
                hub.wake_all();
            }
        }
    }
}

/// Resolves once shutdown was requested (or the server handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Node names appear in logs, NATS and `/node`: keep them plain.
fn check_node_name(name: &str) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        bail!("node name {name:?} must be 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(name.to_owned())
}

/// Reads this node's name from `path`, or creates `node-` + 8 hex digits.
fn load_or_create_node_id(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => check_node_name(text.trim())
            .with_context(|| format!("{} does not hold a node name", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = format!("node-{:08x}", rand::random::<u32>());
            std::fs::write(path, format!("{name}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(name)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads the server's Noise static key, or creates it (mode 0600).
fn load_or_create_key(path: &Path) -> anyhow::Result<NoiseKeypair> {
    match std::fs::read_to_string(path).map(zeroize::Zeroizing::new) {
        Ok(text) => {
            let mut secret = zeroize::Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), &mut secret[..]).with_context(|| {
                format!("{} is not a server key (64 hex digits)", path.display())
            })?;
            Ok(NoiseKeypair::from_secret(*secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = NoiseKeypair::generate();
            let text = zeroize::Zeroizing::new(hex::encode(keys.secret()));
            write_private(path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(keys)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
