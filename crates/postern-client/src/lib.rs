//! The Postern client SDK.
//!
//! A [`Client`] is a device: a home directory holding its keys, the server
//! link and its local message store. [`Client::connect`] opens a
//! [`Connection`] (a Noise session over whichever carrier the
//! [`connectivity`] manager finds open: TCP, TLS, WebSocket or QUIC) for
//! requests — register, send, whoami — and [`Client::listen`] gives a
//! [`Listener`], an async stream of received messages and connection-state
//! events that reconnects by itself, over another route if need be.
//!
//! Every conversation is end-to-end encrypted with MLS (RFC 9420, openmls):
//! [`mls`] is the engine, [`chat`] what a connection does with it — direct
//! chats and groups, multi-device joins, credential checks against the
//! server's directory, safety numbers ([`safety`]). The server sees MLS
//! ciphertext and the public MLS header, never content.
//!
//! Received messages are decrypted and stored in the home in the same
//! transaction as the MLS state change, before they are acked, so a crash
//! never loses one; sends wait in the home's outbox until the server
//! accepts them and are retried with the same id, so a retry is delivered
//! once.
//!
//! The signed [`directory`] is accepted only under the key the server link
//! pins, cached in the home, fetched through several channels with
//! fallbacks, and its TCP endpoints come first when connecting.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chat;
pub mod connectivity;
pub mod directory;
mod home;
mod listener;
pub mod mls;
pub mod safety;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use openmls::prelude::Ciphersuite;
use postern_proto::PROTOCOL_VERSION;
use postern_proto::frame::envelope;
use postern_proto::ids::{AccountId, DeviceAddr};
use postern_proto::keys::{NoiseKeypair, sign_device_binding};
use postern_proto::link::ServerLink;
use postern_proto::pb::{
    self, ErrorCode, envelope::Body, request::Kind as Req, response::Kind as Resp,
};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

pub use chat::{Member, SafetyReport, Target};
pub use connectivity::{Candidate, Racing};
pub use home::{
    Conversation, ConversationKind, Home, PendingSend, RouteHealth, StoredRelay, TimelineItem,
};
pub use listener::{ConnectionState, Event, Listener};

/// How long connecting (TCP plus handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may wait for its response, by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client notices a dead route and how it finds the next.
#[derive(Clone, Copy, Debug)]
pub struct Connectivity {
    /// The race between candidate routes.
    pub racing: Racing,
    /// How long a request may wait for its response; a connection whose
    /// request times out is taken for dead (frozen) and dropped.
    pub request_timeout: Duration,
    /// How often a listening connection pings when nothing arrives.
    pub ping_every: Duration,
}

impl Default for Connectivity {
    fn default() -> Self {
        Connectivity {
            racing: Racing::default(),
            request_timeout: REQUEST_TIMEOUT,
            ping_every: Duration::from_secs(25),
        }
    }
}

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The home directory has no client yet.
    #[error("{0} is not a Postern home; run `postern --home DIR setup LINK` first")]
    NotSetUp(PathBuf),
    /// The home directory is already set up.
    #[error("{0} is already set up; use another --home")]
    AlreadySetUp(PathBuf),
    /// The home could not be opened or written.
    #[error("cannot use the home {0}: {1}")]
    Home(PathBuf, String),
    /// The local database failed.
    #[error("local database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The stored server link is unreadable.
    #[error("bad server link: {0}")]
    Link(#[from] postern_proto::link::LinkError),
    /// This device has no account yet.
    #[error("this device is not registered; run `postern register PHONE` first")]
    NotRegistered,
    /// The server could not be reached or the connection broke.
    #[error("connection failed: {0}")]
    Transport(#[from] postern_transport::TransportError),
    /// Every route to the server failed.
    #[error("no route to the server works: {}", describe_attempts(.0))]
    NoRoute(Vec<connectivity::Attempt>),
    /// The connection closed before the answer came.
    #[error("the connection to the server closed")]
    Disconnected,
    /// The server did not answer in time.
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server refused the request (or the client did, before sending,
    /// by the same rule the server applies, e.g. an invalid username).
    #[error("{message}")]
    Server {
        /// Typed reason.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// For rate limits: when to retry.
        retry_after: Option<Duration>,
    },
    /// The server sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The MLS layer refused or failed (a malformed or undecryptable
    /// message, a credential the directory does not confirm).
    #[error("{0}")]
    Mls(String),
    /// The server link pins no directory key, so no directory can be trusted.
    #[error(
        "the server link carries no directory key (dkey=); ask the operator for a current link"
    )]
    NoDirectoryKey,
    /// A relay link names another server than the home's.
    #[error("this relay forwards to another server than the one this home uses")]
    WrongServer,
    /// A signed directory was refused.
    #[error("directory refused: {0}")]
    Directory(#[from] postern_proto::directory::DirectoryError),
}

impl ClientError {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for failures that a reconnect may cure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Transport(_)
                | ClientError::NoRoute(_)
                | ClientError::Disconnected
                | ClientError::Timeout(_)
        ) || matches!(
            self.code(),
            Some(ErrorCode::Internal | ErrorCode::Unavailable)
        )
    }
}

fn describe_attempts(attempts: &[connectivity::Attempt]) -> String {
    if attempts.is_empty() {
        return "the server link names no route".into();
    }
    attempts
        .iter()
        .map(|a| format!("{} ({}: {})", a.route, a.failure, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The relays a member holds, from [`Connection::fetch_relays`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayAssignment {
    /// Relay links (`postern://relay?…`) it may use now.
    pub links: Vec<String>,
    /// Its trust level, 0 (new) to 4.
    pub level: u32,
    /// Invitations it may still create.
    pub invitations: u32,
    /// Why it holds no relay, when it holds none: a short name (`waiting`,
    /// `no_credit`, ...) and a sentence for the member. `None` from a
    /// server too old to say.
    pub unserved: Option<(String, String)>,
}

impl From<pb::Relays> for RelayAssignment {
    fn from(r: pb::Relays) -> Self {
        RelayAssignment {
            links: r.links,
            level: r.level,
            invitations: r.invitations,
            unserved: (!r.unserved.is_empty()).then_some((r.unserved, r.unserved_text)),
        }
    }
}

/// Who to send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A phone number in international form.
    Phone(String),
    /// A username, without '@'.
    Username(String),
    /// An account id.
    Account(AccountId),
}

impl std::str::FromStr for Recipient {
    type Err = std::convert::Infallible;
    /// `@name` is a username, 32 hex digits an account id, anything else a
    /// phone number (validated by the server).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(if let Some(name) = s.strip_prefix('@') {
            Recipient::Username(name.to_ascii_lowercase())
        } else if let Ok(id) = s.parse::<AccountId>() {
            Recipient::Account(id)
        } else {
            Recipient::Phone(s.to_owned())
        })
    }
}

/// A received message or membership event, decrypted and stored.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// How this device shows the conversation: `#group` or the contact.
    pub conversation: String,
    /// What this device calls the sender (`@username`, a phone number, or
    /// "you" for this account's other devices); empty for events.
    pub from: String,
    /// The timeline entry.
    pub item: TimelineItem,
}

impl ReceivedMessage {
    /// What to show.
    pub fn text(&self) -> &str {
        &self.item.body
    }

    /// True for membership changes and warnings.
    pub fn is_system(&self) -> bool {
        self.item.system
    }
}

/// Who this device is, as the server sees it.
#[derive(Clone, Debug)]
pub struct Whoami {
    /// The account.
    pub account: AccountId,
    /// This device's number.
    pub device_id: u32,
    /// E.164, as this home remembers it from registration (the server
    /// keeps no clear copy); empty on a linked device.
    pub phone: String,
    /// Username, if set.
    pub username: Option<String>,
    /// All devices of the account.
    pub devices: Vec<pb::DeviceInfo>,
}

struct Inner {
    dir: PathBuf,
    home: Mutex<Home>,
    link: ServerLink,
    noise: NoiseKeypair,
    signer: mls::DeviceSigner,
    suite: Mutex<Ciphersuite>,
    device: Mutex<Option<DeviceAddr>>,
    connectivity: Mutex<Connectivity>,
    extra_candidates: Mutex<Vec<Candidate>>,
}

/// A device: its home directory and keys. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What this client says of itself in every handshake.
fn client_hello() -> pb::ClientHello {
    pb::ClientHello {
        version: PROTOCOL_VERSION,
        software: concat!("postern/", env!("CARGO_PKG_VERSION")).into(),
    }
}

impl Client {
    /// Creates a home in `dir` bound to `link`, with fresh device keys.
    pub fn setup(dir: &Path, link: &ServerLink) -> Result<Client, ClientError> {
        if dir.join("client.db").exists() {
            return Err(ClientError::AlreadySetUp(dir.to_owned()));
        }
        let home = Home::open(dir, true)?;
        let noise = NoiseKeypair::generate();
        let identity = SigningKey::generate(&mut rand::rngs::OsRng);
        home.set("server_link", link.to_string().as_bytes())?;
        home.set("noise_secret", noise.secret())?;
        home.set("identity_secret", identity.as_bytes())?;
        drop(home);
        Client::open(dir)
    }

    /// Opens the home in `dir`.
    pub fn open(dir: &Path) -> Result<Client, ClientError> {
        let home = Home::open(dir, false)?;
        let corrupt =
            |what: &str| ClientError::Home(dir.to_owned(), format!("{what} is missing or damaged"));
        let link: ServerLink = home
            .get_text("server_link")?
            .ok_or_else(|| corrupt("the server link"))?
            .parse()?;
        let noise_secret = Zeroizing::new(
            home.get("noise_secret")?
                .ok_or_else(|| corrupt("the device key"))?,
        );
        let noise = NoiseKeypair::from_secret(
            noise_secret[..]
                .try_into()
                .map_err(|_| corrupt("the device key"))?,
        );
        let identity_secret = Zeroizing::new(
            home.get("identity_secret")?
                .ok_or_else(|| corrupt("the identity key"))?,
        );
        let identity = SigningKey::from_bytes(
            identity_secret[..]
                .try_into()
                .map_err(|_| corrupt("the identity key"))?,
        );
        let device = match (home.get("account_id")?, home.get_text("device_id")?) {
            (Some(a), Some(d)) => Some(DeviceAddr {
                account: AccountId::from_slice(&a).ok_or_else(|| corrupt("the account id"))?,
                device: d.parse().map_err(|_| corrupt("the device id"))?,
            }),
            _ => None,
        };
        let suite = home
            .get_text("mls_ciphersuite")?
            .and_then(|s| s.parse().ok())
            .and_then(mls::ciphersuite)
            .unwrap_or(mls::DEFAULT_CIPHERSUITE);
        Ok(Client {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                home: Mutex::new(home),
                link,
                noise,
                signer: mls::DeviceSigner(identity),
                suite: Mutex::new(suite),
                device: Mutex::new(device),
                connectivity: Mutex::new(Connectivity::default()),
                extra_candidates: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The home directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The server link this home is bound to.
    pub fn link(&self) -> &ServerLink {
        &self.inner.link
    }

    /// This device's Noise static public key: how the server knows the
    /// device (it also picks which of several endpoints to try first).
    pub fn transport_key(&self) -> [u8; 32] {
        self.inner.noise.public
    }

    /// This device's address, once registered.
    pub fn device(&self) -> Option<DeviceAddr> {
        *lock(&self.inner.device)
    }

    /// Runs `f` on the home database.
    pub fn with_home<T>(&self, f: impl FnOnce(&mut Home) -> T) -> T {
        f(&mut lock(&self.inner.home))
    }

    /// Sets how this client notices dead routes and races for new ones.
    pub fn set_connectivity(&self, c: Connectivity) {
        *lock(&self.inner.connectivity) = c;
    }

    /// How this client notices dead routes and races for new ones.
    pub fn connectivity(&self) -> Connectivity {
        *lock(&self.inner.connectivity)
    }

    /// Adds routes to race besides the server link's (from the signed
    /// directory or relays); replaces those added before.
    pub fn set_extra_candidates(&self, candidates: Vec<Candidate>) {
        *lock(&self.inner.extra_candidates) = candidates;
    }

    /// Every route this client may race: the current verified directory's
    /// (by its priorities), then the server link's (always kept as a last
    /// resort), then the extra ones (relays). Routes of equal priority —
    /// several server nodes — are rotated by this device's key, so devices
    /// spread over the nodes, each always starting at the same one.
    pub fn candidates(&self) -> Vec<Candidate> {
        let spread = usize::from(self.inner.noise.public[0]);
        let mut listed = match self.directory() {
            Ok(Some(d)) => connectivity::candidates_from_directory(d.directory(), &self.inner.link),
            _ => Vec::new(),
        };
        let mut link = connectivity::candidates_from_link(&self.inner.link);
        // The link's routes come after the directory's, in link order.
        let after = listed
            .iter()
            .map(|c| c.priority)
            .max()
            .map_or(0, |p| p.saturating_add(1));
        for (i, c) in link.iter_mut().enumerate() {
            c.priority = after.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
        }
        // The link's TCP routes are one group: several nodes behind one link.
        let tcp = link
            .iter()
            .filter(|c| c.carrier == postern_transport::carrier::Carrier::Tcp)
            .count();
        if tcp > 1 {
            let first = link[0].priority;
            for c in link.iter_mut().take(tcp) {
                c.priority = first;
            }
        }
        listed.extend(link);
        let mut all: Vec<Candidate> = Vec::with_capacity(listed.len());
        for group in listed.chunk_by(|a, b| a.priority == b.priority) {
            let start = spread % group.len();
            for c in group.iter().cycle().skip(start).take(group.len()) {
                if !all.iter().any(|a| a.route() == c.route()) {
                    all.push(c.clone());
                }
            }
        }
        // `order` sorts stably by priority: keep this order within a group.
        for (i, c) in all.iter_mut().enumerate() {
            c.priority = u32::try_from(i).unwrap_or(u32::MAX);
        }
        // Then the relays held for this server, in the order they were added.
        let relays = self.with_home(|h| h.relays()).unwrap_or_default();
        let key = self.inner.link.noise_key;
        for r in relays {
            if r.link.server_key.is_some_and(|k| k != key) {
                continue;
            }
            let priority = u32::try_from(all.len()).unwrap_or(u32::MAX);
            if let Some(c) = Candidate::from_relay(&r.link, priority)
                && !all.iter().any(|a| a.route() == c.route())
            {
                all.push(c);
            }
        }
        all.extend(lock(&self.inner.extra_candidates).iter().cloned());
        all
    }

    /// Adds a relay from its link (`relay add`). Refused if the link names
    /// another server.
    pub fn add_relay(&self, link: &postern_proto::link::RelayLink) -> Result<(), ClientError> {
        if let Some(k) = link.server_key
            && k != self.inner.link.noise_key
        {
            return Err(ClientError::WrongServer);
        }
        self.with_home(|h| h.add_relay(link, "manual", now_ms()))
    }

    /// The relays this home holds.
    pub fn relays(&self) -> Result<Vec<StoredRelay>, ClientError> {
        self.with_home(|h| h.relays())
    }

    /// Removes relays by host, name or link; returns how many.
    pub fn remove_relay(&self, which: &str) -> Result<usize, ClientError> {
        self.with_home(|h| h.remove_relay(which, None))
    }

    /// What the home remembers about each route.
    pub fn routes(&self) -> Result<Vec<RouteHealth>, ClientError> {
        self.with_home(|h| h.routes())
    }

    /// The route the last connection used.
    pub fn route_in_use(&self) -> Result<Option<String>, ClientError> {
        self.with_home(|h| h.get_text("route_in_use"))
    }

    /// Connects to the server over the first route that works: races the
    /// candidates (see [`connectivity`]), records each failure and the
    /// winner in the home.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        self.connect_racing().await.map(|(conn, _)| conn)
    }

    /// Like [`Client::connect`], also returning the failed attempts seen
    /// before the winner.
    pub async fn connect_racing(
        &self,
    ) -> Result<(Connection, Vec<connectivity::Attempt>), ClientError> {
        let hello = client_hello();
        let settings = self.connectivity();
        let now = now_ms();
        let (health, sticky) =
            self.with_home(|h| Ok::<_, ClientError>((h.routes()?, h.get_text("route_in_use")?)))?;
        let ordered = connectivity::order(self.candidates(), &health, sticky.as_deref(), now);
        if ordered.is_empty() {
            return Err(ClientError::NoRoute(Vec::new()));
        }
        let attempt = |candidate: Candidate| {
            let hello = hello.clone();
            let timeout = settings.racing.attempt_timeout;
            async move {
                let stream = postern_transport::carrier::dial(&candidate.target(), timeout)
                    .await
                    .map_err(|e| (postern_transport::carrier::classify(&e, 0), e.to_string()))?;
                let counter = stream.counter();
                postern_transport::client_handshake(
                    stream,
                    &self.inner.noise,
                    &self.inner.link.noise_key,
                    &hello,
                    timeout,
                )
                .await
                .map(|(conn, server_hello)| (conn, server_hello, counter.clone()))
                .map_err(|e| {
                    let read = counter.load(std::sync::atomic::Ordering::Relaxed);
                    (
                        postern_transport::carrier::classify(&e, read),
                        e.to_string(),
                    )
                })
            }
        };
        let outcome = connectivity::race(&ordered, &settings.racing, attempt).await;
        let failures = match &outcome {
            Ok((_, _, failures)) => failures.clone(),
            Err(failures) => failures.clone(),
        };
        for f in &failures {
            self.route_failed(&f.route, f.failure, &f.error, &health, &settings.racing)?;
        }
        let (winner, (conn, server_hello, counter), _) = outcome.map_err(ClientError::NoRoute)?;
        if let Some(e) = server_hello.error {
            return Err(server_error(e));
        }
        let route = winner.route();
        self.with_home(|h| {
            h.route_worked(&route, now_ms())?;
            h.set("route_in_use", route.as_bytes())
        })?;
        let device = server_hello
            .device
            .as_ref()
            .and_then(|d| DeviceAddr::try_from(d).ok());
        self.adopt_ciphersuite(server_hello.mls_ciphersuite)?;
        let conn = Connection::start(self.clone(), conn, device, route, counter);
        if conn.device().is_some()
            && let Err(e) = conn.report_routes().await
        {
            // Reports are best effort: the next connection tries again.
            tracing::debug!(error = %e, "could not report blocked routes");
        }
        Ok((conn, failures))
    }

    /// Connects over one route only (no race, nothing recorded in the
    /// home): the directory's relay channel uses it.
    pub async fn connect_via(
        &self,
        candidate: &Candidate,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let hello = client_hello();
        let stream = postern_transport::carrier::dial(&candidate.target(), timeout).await?;
        let counter = stream.counter();
        let (conn, server_hello) = postern_transport::client_handshake(
            stream,
            &self.inner.noise,
            &self.inner.link.noise_key,
            &hello,
            timeout,
        )
        .await?;
        if let Some(e) = server_hello.error {
            return Err(server_error(e));
        }
        let device = server_hello
            .device
            .as_ref()
            .and_then(|d| DeviceAddr::try_from(d).ok());
        Ok(Connection::start(
            self.clone(),
            conn,
            device,
            candidate.route(),
            counter,
        ))
    }

    /// Tries one route (dial, carrier handshake, Noise handshake with the
    /// server) without using it; returns how long it took, or the failure's
    /// class and message. `relay test` uses it.
    pub async fn probe(
        &self,
        candidate: &Candidate,
        timeout: Duration,
    ) -> Result<Duration, (postern_transport::carrier::Failure, String)> {
        let start = std::time::Instant::now();
        let hello = client_hello();
        let stream = postern_transport::carrier::dial(&candidate.target(), timeout)
            .await
            .map_err(|e| (postern_transport::carrier::classify(&e, 0), e.to_string()))?;
        let counter = stream.counter();
        let (conn, _) = postern_transport::client_handshake(
            stream,
            &self.inner.noise,
            &self.inner.link.noise_key,
            &hello,
            timeout,
        )
        .await
        .map_err(|e| {
            let read = counter.load(std::sync::atomic::Ordering::Relaxed);
            (
                postern_transport::carrier::classify(&e, read),
                e.to_string(),
            )
        })?;
        drop(conn);
        Ok(start.elapsed())
    }

    /// Keeps the relays the server assigned: adds the new ones, drops the
    /// assigned ones it no longer gives (relays added by hand stay).
    pub fn set_assigned_relays(&self, links: &[String]) -> Result<(), ClientError> {
        let parsed: Vec<postern_proto::link::RelayLink> =
            links.iter().filter_map(|l| l.parse().ok()).collect();
        self.with_home(|h| {
            for old in h.relays()? {
                if old.source == "assigned" && !parsed.iter().any(|p| p.host == old.link.host) {
                    h.remove_relay(&old.link.host, Some("assigned"))?;
                }
            }
            let held = h.relays()?;
            for link in &parsed {
                if !held
                    .iter()
                    .any(|r| r.link.host == link.host && r.source == "manual")
                {
                    h.add_relay(link, "assigned", now_ms())?;
                }
            }
            Ok(())
        })
    }

    /// Records a failed route in the home, with its next backoff.
    pub(crate) fn route_failed(
        &self,
        route: &str,
        failure: postern_transport::carrier::Failure,
        error: &str,
        health: &[RouteHealth],
        racing: &Racing,
    ) -> Result<(), ClientError> {
        let failures = health
            .iter()
            .find(|h| h.route == route)
            .map(|h| h.failures)
            .unwrap_or(0)
            + 1;
        let now = now_ms();
        let next =
            now + i64::try_from(racing.backoff(failures).as_millis()).unwrap_or(i64::MAX / 2);
        let after = match failure {
            postern_transport::carrier::Failure::Freeze { after } => after,
            _ => 0,
        };
        self.with_home(|h| h.route_failed(route, failure.name(), after, error, now, next))
    }

    /// Uses the MLS ciphersuite the server names for new groups and key
    /// packages (0: the server does not say; keep the current one).
    fn adopt_ciphersuite(&self, number: u32) -> Result<(), ClientError> {
        if number == 0 {
            return Ok(());
        }
        let suite = u16::try_from(number)
            .ok()
            .and_then(mls::ciphersuite)
            .ok_or(ClientError::Protocol(
                "the server asks for an MLS ciphersuite this client does not support",
            ))?;
        let mut current = lock(&self.inner.suite);
        if *current != suite {
            *current = suite;
            self.with_home(|h| h.set("mls_ciphersuite", number.to_string().as_bytes()))?;
        }
        Ok(())
    }

    /// The MLS ciphersuite this device uses for new groups and key packages.
    pub fn ciphersuite(&self) -> Ciphersuite {
        *lock(&self.inner.suite)
    }

    /// A stream of received messages and connection-state events that
    /// reconnects by itself.
    pub fn listen(&self) -> Listener {
        Listener::new(self.clone())
    }

    fn device_keys(&self, name: &str) -> pb::DeviceKeys {
        pb::DeviceKeys {
            identity_key: self
                .inner
                .signer
                .0
                .verifying_key()
                .to_bytes()
                .to_vec()
                .into(),
            binding_signature: sign_device_binding(&self.inner.signer.0, &self.inner.noise.public)
                .to_vec()
                .into(),
            name: name.into(),
        }
    }

    fn registered(&self, r: &pb::Registered) -> Result<DeviceAddr, ClientError> {
        let addr = r
            .device
            .as_ref()
            .and_then(|d| DeviceAddr::try_from(d).ok())
            .ok_or(ClientError::Protocol(
                "registration answer without a device",
            ))?;
        self.with_home(|h| -> Result<(), ClientError> {
            h.set("account_id", &addr.account.0)?;
            h.set("device_id", addr.device.to_string().as_bytes())?;
            // The server keeps no clear copy of the number: this home is
            // where the member's own number is remembered. A linked device
            // gets none (its first device knows it).
            let phone = (!r.phone.is_empty()).then_some(r.phone.as_str());
            if let Some(phone) = phone {
                h.set("phone", phone.as_bytes())?;
            }
            h.set("username", r.username.as_bytes())?;
            h.remember_contact(addr.account, phone, Some(&r.username))
        })?;
        *lock(&self.inner.device) = Some(addr);
        Ok(addr)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn server_error(e: pb::Error) -> ClientError {
    ClientError::Server {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        message: e.message,
        retry_after: (e.retry_after_ms > 0).then(|| Duration::from_millis(e.retry_after_ms)),
    }
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

type Pending = oneshot::Sender<Result<Resp, ClientError>>;

enum Command {
    Call(Req, Pending),
}

/// A live session with the server. Requests may be issued concurrently
/// from clones of nothing: use one task, or wrap in an Arc.
pub struct Connection {
    client: Client,
    route: String,
    read: Arc<std::sync::atomic::AtomicU64>,
    broken: Arc<Mutex<Option<postern_transport::TransportError>>>,
    /// Set when a request went unanswered for `request_timeout`: the
    /// connection is taken for dead, and later requests fail at once
    /// instead of each waiting out the timeout again.
    timed_out: std::sync::atomic::AtomicBool,
    commands: mpsc::Sender<Command>,
    deliveries: mpsc::UnboundedReceiver<pb::Deliver>,
    device: Option<DeviceAddr>,
    subscribed: bool,
    tasks: Vec<chat::Task>,
    lost_races: u64,
    topped_up: bool,
}

impl Connection {
    fn start<S>(
        client: Client,
        conn: postern_transport::Connection<S>,
        device: Option<DeviceAddr>,
        route: String,
        read: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (commands, rx) = mpsc::channel(256);
        let (deliver_tx, deliveries) = mpsc::unbounded_channel();
        let broken = Arc::new(Mutex::new(None));
        tokio::spawn(io_task(conn, rx, deliver_tx, broken.clone()));
        Connection {
            client,
            route,
            read,
            broken,
            timed_out: std::sync::atomic::AtomicBool::new(false),
            commands,
            deliveries,
            device,
            subscribed: false,
            tasks: Vec::new(),
            lost_races: 0,
            topped_up: false,
        }
    }

    /// How many times a commit or message of this connection lost the race
    /// for an epoch and was rebuilt (`STALE_EPOCH`).
    pub fn lost_races(&self) -> u64 {
        self.lost_races
    }

    /// The device the server authenticated this session as.
    pub fn device(&self) -> Option<DeviceAddr> {
        self.device
    }

    /// The route (`carrier://endpoint`) this connection runs over.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Tells the server which of its routes failed since the last report
    /// (route, failure class, hour); returns how many were reported.
    pub async fn report_routes(&self) -> Result<usize, ClientError> {
        let pending: Vec<RouteHealth> = self
            .client
            .routes()?
            .into_iter()
            .filter(|r| !r.reported && r.last_failure.is_some())
            .take(32)
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let routes = pending
            .iter()
            .map(|r| pb::BlockedRoute {
                route: r.route.clone(),
                failure: r.last_failure.clone().unwrap_or_default(),
                hour: u64::try_from(r.last_fail_ms.unwrap_or(0) / 3_600_000).unwrap_or(0),
            })
            .collect();
        self.call(Req::ReportRoutes(pb::ReportRoutes { routes }))
            .await?;
        let names: Vec<String> = pending.into_iter().map(|r| r.route).collect();
        self.client.with_home(|h| h.routes_reported(&names))?;
        Ok(names.len())
    }

    /// Records in the home that this connection's route failed with
    /// `error` (a request that timed out, a ping unanswered, the carrier
    /// broken), classified by what the carrier reported and how many bytes
    /// it had carried; the next race tries it last.
    pub fn record_failure(&self, error: &ClientError) -> Result<(), ClientError> {
        use postern_transport::carrier::{Failure, classify};
        let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
        let failure = match (&*lock(&self.broken), error) {
            (Some(e), _) => classify(e, read),
            (None, ClientError::Timeout(_)) if read > 0 => Failure::Freeze { after: read },
            (None, ClientError::Timeout(_)) => Failure::Timeout,
            (None, ClientError::Disconnected) => Failure::Closed,
            _ => Failure::Other,
        };
        let health = self.client.routes()?;
        let racing = self.client.connectivity().racing;
        self.client
            .route_failed(&self.route, failure, &error.to_string(), &health, &racing)
    }

    /// Sends a request and waits for its response; server refusals become
    /// [`ClientError::Server`].
    pub async fn call(&self, req: Req) -> Result<Resp, ClientError> {
        use std::sync::atomic::Ordering::Relaxed;
        let timeout = self.client.connectivity().request_timeout;
        if self.timed_out.load(Relaxed) {
            return Err(ClientError::Timeout(timeout));
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Call(req, tx))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.timed_out.store(true, Relaxed);
                Err(ClientError::Timeout(timeout))
            }
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Ok(Ok(Ok(Resp::Error(e)))) => Err(server_error(e)),
            Ok(Ok(r)) => r,
        }
    }

    /// Asks the server to text a registration code to `phone`.
    pub async fn request_code(&self, phone: &str) -> Result<pb::CodeSent, ClientError> {
        match self
            .call(Req::RequestCode(pb::RequestCode {
                phone: phone.into(),
            }))
            .await?
        {
            Resp::CodeSent(c) => Ok(c),
            _ => Err(ClientError::Protocol("unexpected answer to a code request")),
        }
    }

    /// Registers a new account for `phone` with this device as its first.
    pub async fn register(
        &mut self,
        phone: &str,
        code: &str,
        username: Option<&str>,
        device_name: &str,
    ) -> Result<DeviceAddr, ClientError> {
        self.register_with_invite(phone, code, username, device_name, None)
            .await
    }

    /// Like [`Connection::register`], redeeming a member's invitation: the
    /// new account starts trusted and shares its inviter's relays where
    /// possible. An unknown or used invitation refuses the registration
    /// (`ErrorCode::InviteInvalid`) and leaves the code usable.
    pub async fn register_with_invite(
        &mut self,
        phone: &str,
        code: &str,
        username: Option<&str>,
        device_name: &str,
        invite: Option<&str>,
    ) -> Result<DeviceAddr, ClientError> {
        let req = Req::Register(pb::Register {
            phone: phone.into(),
            code: code.into(),
            device: Some(self.client.device_keys(device_name)),
            username: username.unwrap_or_default().into(),
            invite: invite.unwrap_or_default().trim().into(),
        });
        match self.call(req).await? {
            Resp::Registered(r) => {
                let addr = self.client.registered(&r)?;
                self.device = Some(addr);
                self.top_up_key_packages().await?;
                Ok(addr)
            }
            _ => Err(ClientError::Protocol("unexpected answer to register")),
        }
    }

    /// From a registered device: a one-time token another device redeems
    /// with [`Connection::link_device`] to join this account.
    pub async fn create_link_token(&self) -> Result<Vec<u8>, ClientError> {
        match self
            .call(Req::CreateLinkToken(pb::CreateLinkToken {}))
            .await?
        {
            Resp::LinkToken(t) => Ok(t.token.to_vec()),
            _ => Err(ClientError::Protocol(
                "unexpected answer to a link-token request",
            )),
        }
    }

    /// From a new device: joins the account that created `token`, uploads
    /// key packages, and joins every conversation of the account (see
    /// [`Connection::join_account_conversations`]).
    pub async fn link_device(
        &mut self,
        token: &[u8],
        device_name: &str,
    ) -> Result<DeviceAddr, ClientError> {
        let req = Req::LinkDevice(pb::LinkDevice {
            token: token.to_vec().into(),
            device: Some(self.client.device_keys(device_name)),
        });
        match self.call(req).await? {
            Resp::Registered(r) => {
                let addr = self.client.registered(&r)?;
                self.device = Some(addr);
                self.top_up_key_packages().await?;
                self.join_account_conversations().await?;
                Ok(addr)
            }
            _ => Err(ClientError::Protocol("unexpected answer to a device link")),
        }
    }

    /// Sets (or with an empty name clears) this account's username;
    /// returns the name as stored, after the rules of
    /// [`postern_proto::username`] (checked here before asking the server).
    pub async fn set_username(&self, name: &str) -> Result<Option<String>, ClientError> {
        let name = if name.trim().is_empty() {
            None
        } else {
            let name =
                postern_proto::username::normalize(name).map_err(|e| ClientError::Server {
                    code: ErrorCode::InvalidUsername,
                    message: e.to_string(),
                    retry_after: None,
                })?;
            Some(name)
        };
        let username = name.clone().unwrap_or_default();
        self.call(Req::SetUsername(pb::SetUsername {
            username: username.clone(),
        }))
        .await?;
        self.client
            .with_home(|h| h.set("username", username.as_bytes()))?;
        Ok(name)
    }

    /// The relays the server assigns this member, topped up to what its
    /// trust level allows.
    pub async fn fetch_relays(&self) -> Result<RelayAssignment, ClientError> {
        match self.call(Req::FetchRelays(pb::FetchRelays {})).await? {
            Resp::Relays(r) => Ok(r.into()),
            _ => Err(ClientError::Protocol(
                "unexpected answer to a relay request",
            )),
        }
    }

    /// Tells the server this member cannot reach the relay at `link`;
    /// returns its relays afterwards, with a replacement when the block is
    /// confirmed and the rules allow one.
    pub async fn report_blocked(&self, link: &str) -> Result<RelayAssignment, ClientError> {
        match self
            .call(Req::ReportBlocked(pb::ReportBlocked {
                link: link.trim().into(),
            }))
            .await?
        {
            Resp::Relays(r) => Ok(r.into()),
            _ => Err(ClientError::Protocol("unexpected answer to a relay report")),
        }
    }

    /// A one-time invitation code for someone to register with
    /// (`postern register PHONE --invite CODE`).
    pub async fn create_invite(&self) -> Result<String, ClientError> {
        match self.call(Req::CreateInvite(pb::CreateInvite {})).await? {
            Resp::Invite(i) => Ok(i.code),
            _ => Err(ClientError::Protocol(
                "unexpected answer to an invitation request",
            )),
        }
    }

    /// Disclosures of this account's data the member may now be told of
    /// (lawful requests whose gag lapsed, or that had none), oldest first.
    pub async fn notices(&self) -> Result<Vec<pb::DisclosureNotice>, ClientError> {
        match self.call(Req::FetchNotices(pb::FetchNotices {})).await? {
            Resp::Notices(n) => {
                let mut list = n.notices;
                list.sort_by_key(|n| n.disclosed_at_ms);
                Ok(list)
            }
            _ => Err(ClientError::Protocol(
                "unexpected answer to a notice request",
            )),
        }
    }

    /// Who this device is. The phone number comes from this home (the
    /// server does not keep it in clear); empty on a linked device.
    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        match self.call(Req::Whoami(pb::Whoami {})).await? {
            Resp::Account(a) => Ok(Whoami {
                account: AccountId::from_slice(&a.account_id)
                    .ok_or(ClientError::Protocol("bad account id"))?,
                device_id: a.device_id,
                phone: if a.phone.is_empty() {
                    self.client
                        .with_home(|h| h.get_text("phone"))?
                        .unwrap_or_default()
                } else {
                    a.phone
                },
                username: (!a.username.is_empty()).then_some(a.username),
                devices: a.devices,
            }),
            _ => Err(ClientError::Protocol("unexpected answer to whoami")),
        }
    }

    /// The account a recipient names, from the contacts, else the server.
    pub async fn resolve(&self, to: &Recipient) -> Result<AccountId, ClientError> {
        use pb::resolve::Who;
        let (known, who) = match to {
            Recipient::Account(id) => return Ok(*id),
            Recipient::Phone(p) => (
                self.client.with_home(|h| h.contact_by_phone(p))?,
                Who::Phone(p.clone()),
            ),
            Recipient::Username(u) => (
                self.client.with_home(|h| h.contact_by_username(u))?,
                Who::Username(u.clone()),
            ),
        };
        if let Some(id) = known {
            return Ok(id);
        }
        match self
            .call(Req::Resolve(pb::Resolve { who: Some(who) }))
            .await?
        {
            Resp::Resolved(r) => {
                let id = AccountId::from_slice(&r.account_id)
                    .ok_or(ClientError::Protocol("bad account id"))?;
                let phone = match to {
                    Recipient::Phone(p) => Some(p.as_str()),
                    _ => None,
                };
                let username = (!r.username.is_empty()).then_some(r.username.as_str());
                self.client
                    .with_home(|h| h.remember_contact(id, phone, username))?;
                Ok(id)
            }
            _ => Err(ClientError::Protocol("unexpected answer to resolve")),
        }
    }

    /// Starts delivery of messages after the last one processed (once per
    /// connection; later calls do nothing).
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        if self.device.is_none() {
            return Err(ClientError::NotRegistered);
        }
        if self.subscribed {
            return Ok(());
        }
        let after_seq = self.client.with_home(|h| h.last_seq())?;
        self.call(Req::Subscribe(pb::Subscribe { after_seq }))
            .await?;
        self.subscribed = true;
        Ok(())
    }

    /// The next message or event not yet returned by a `recv` of this
    /// home — including what other calls (a `sync` before a send, say)
    /// received and stored meanwhile — waiting for the server's deliveries
    /// when there is none (after [`Connection::subscribe`]). Each batch is
    /// decrypted and stored in the home, then acked, before anything of it
    /// is returned. `None` when the connection closed.
    pub async fn recv(&mut self) -> Result<Option<ReceivedMessage>, ClientError> {
        loop {
            if let Some(m) = self.next_unshown()? {
                return Ok(Some(m));
            }
            let Some(batch) = self.deliveries.recv().await else {
                return Ok(None);
            };
            self.take_batch(batch).await?;
            self.run_tasks().await?;
        }
    }
}

async fn io_task<S>(
    conn: postern_transport::Connection<S>,
    mut commands: mpsc::Receiver<Command>,
    deliveries: mpsc::UnboundedSender<pb::Deliver>,
    broken: Arc<Mutex<Option<postern_transport::TransportError>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = conn.split();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut next_id = 1u64;
    let mut out = Vec::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let mut cmd = Some(cmd);
                // Take everything queued, so it leaves in one write.
                while let Some(Command::Call(req, reply)) = cmd {
                    let id = next_id;
                    next_id += 1;
                    pending.insert(id, reply);
                    out.push(envelope(id, Body::Request(pb::Request { kind: Some(req) })));
                    cmd = commands.try_recv().ok();
                }
                if let Err(e) = writer.send_batch(out.iter()).await {
                    *lock(&broken) = Some(e);
                    break;
                }
                out.clear();
            }
            read = reader.recv() => {
                match read {
                    Ok(Some(env)) => match env.body {
                        Some(Body::Response(r)) => {
                            if let Some(reply) = pending.remove(&env.id) {
                                let _ = reply.send(r.kind.ok_or(ClientError::Protocol("empty response")));
                            }
                        }
                        Some(Body::Push(pb::Push { kind: Some(pb::push::Kind::Deliver(d)) })) => {
                            let _ = deliveries.send(d);
                        }
                        Some(Body::Push(pb::Push { kind: Some(pb::push::Kind::GoAway(g)) })) => {
                            tracing::info!(reason = %g.reason, "server asked us to reconnect");
                            break;
                        }
                        _ => {}
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection failed");
                        *lock(&broken) = Some(e);
                        break;
                    }
                }
            }
        }
    }
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(ClientError::Disconnected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_parse_as_a_member_would_type_them() {
        assert_eq!(
            "@Bob".parse::<Recipient>().unwrap(),
            Recipient::Username("bob".into())
        );
        assert_eq!(
            "+1 415 555 2671".parse::<Recipient>().unwrap(),
            Recipient::Phone("+1 415 555 2671".into())
        );
        let id = AccountId([7; 16]);
        assert_eq!(
            id.to_string().parse::<Recipient>().unwrap(),
            Recipient::Account(id)
        );
    }
}
