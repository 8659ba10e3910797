//! The server's typed configuration, with defaults that work on a laptop.
//!
//! The binary fills it from a TOML file, then environment variables, then
//! flags; this module only defines the shape and the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything `postern serve` can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the database, the server key and the server link live.
    pub data_dir: PathBuf,
    /// Client carrier (TCP) listen address.
    pub listen: SocketAddr,
    /// Address clients are told to use in the server link; defaults to the
    /// listen address, with an unspecified IP (0.0.0.0, ::) shown as loopback.
    pub public_addr: Option<String>,
    /// HTTP API listen address (health, server link, stats).
    pub http_listen: SocketAddr,
    /// The other carriers clients may use besides TCP (`[carriers]`).
    pub carriers: CarriersConfig,
    /// How registration codes reach phones.
    pub sms: SmsConfig,
    /// How long an undelivered message waits in a device queue.
    #[serde(with = "humantime_secs")]
    pub message_ttl: Duration,
    /// Where accounts, queues and groups are kept: unset for the embedded
    /// SQLite file `DATA_DIR/postern.db`, or a `postgres://` URL for a
    /// PostgreSQL database several server nodes can share.
    pub store: Option<String>,
    /// SQLite durability: "full" (default; survives power loss) or "normal"
    /// (survives a process crash, may lose the last commits on power loss).
    pub sqlite_synchronous: String,
    /// The MLS ciphersuite clients use for new groups and key packages, by
    /// its RFC 9420 name; one of `postern_proto::mls::CIPHERSUITES`.
    pub mls_ciphersuite: String,
    /// Connection and request limits.
    pub limits: Limits,
    /// The public transparency log the server hosts.
    pub transparency: TransparencyConfig,
    /// Relays the server hands out to members (`[[relays]]`).
    pub relays: Vec<RelayConfig>,
    /// Relay operators' Ed25519 keys (base64url) whose relays are handed
    /// out as soon as they register; relays of other keys wait as
    /// `pending` until an operator approves them.
    pub relay_operators: Vec<String>,
    /// The distributor's policy (`[distributor]`): trust levels,
    /// invitations, blockage limits, caps; see `postern_distributor::Config`.
    pub distributor: postern_distributor::Config,
    /// This node's name and how it works with other nodes (`[node]`).
    pub node: NodeConfig,
    /// The signed directory the server publishes (`[directory]`).
    pub directory: DirectoryConfig,
    /// The PII vault and lawful requests (`[legal]`).
    pub legal: LegalConfig,
}

/// One server node among several sharing a PostgreSQL store.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, shown in `/node`, logs and the NATS connection.
    /// Default: the name kept in `DATA_DIR/node-id`, created on first
    /// start as `node-` and 8 random hex digits.
    pub name: Option<String>,
    /// NATS server (`nats://[user:pass@]host:port`) through which nodes
    /// wake each other when a message is queued for a device connected
    /// elsewhere. Unset: one node, no NATS.
    pub nats: Option<String>,
    /// Subject prefix for wake-ups, so several deployments can share one
    /// NATS (subjects are `PREFIX.wake.ACCOUNT.DEVICE`).
    pub nats_prefix: String,
    /// With NATS, every subscribed connection also checks the store this
    /// often, so a lost wake-up delays a message by at most this long.
    #[serde(with = "humantime_secs")]
    pub poll_interval: Duration,
    /// On SIGTERM the node stops accepting, finishes requests in flight,
    /// tells clients to move (GoAway) and waits this long at most for them
    /// to leave before it closes what remains.
    #[serde(with = "humantime_secs")]
    pub drain_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            nats: None,
            nats_prefix: "postern".into(),
            poll_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The signed directory: where it comes from and where clients are told
/// to look for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Publish a directory (default). Off, the link carries no directory key.
    pub enabled: bool,
    /// A directory signed offline (`postern directory sign`), published as
    /// is and re-read when it changes. Unset: the server signs a
    /// development directory itself with `DATA_DIR/directory.key`.
    pub file: Option<PathBuf>,
    /// The verifier key of `file`'s signer; required with `file`.
    pub vkey: Option<String>,
    /// How often `file` is checked for changes, in seconds.
    #[serde(with = "humantime_secs")]
    pub reload_interval: Duration,
    /// How long a development directory is valid, in seconds (it is
    /// re-signed at half that).
    #[serde(with = "humantime_secs")]
    pub validity: Duration,
    /// Relay links the development directory lists publicly (relays meant
    /// for everyone; the distributor's `[[relays]]` stay private).
    pub public_relays: Vec<String>,
    /// The HTTP API's public URL written in the link (`http=`); default:
    /// `http://` the public host and the HTTP port.
    pub http_url: Option<String>,
    /// Static mirror URLs of the signed file written in the link (`dir=`).
    pub mirrors: Vec<String>,
    /// A DNS-over-HTTPS resolver written in the link (`doh=`), with
    /// `dns_name`.
    pub doh: Option<String>,
    /// The name whose TXT records hold the directory (`dns=`).
    pub dns_name: Option<String>,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            enabled: true,
            file: None,
            vkey: None,
            reload_interval: Duration::from_secs(10),
            validity: Duration::from_secs(7 * 24 * 3600),
            public_relays: Vec::new(),
            http_url: None,
            mirrors: Vec::new(),
            doh: None,
            dns_name: None,
        }
    }
}

/// One relay an operator lists; the server adds it to the distributor at
/// start and retires relays that are no longer listed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// A stable name for the relay (its identity in the distributor's
    /// state: renaming it makes it a new relay).
    pub name: String,
    /// The link members are given (`postern://relay?…`), passed on as is.
    pub link: String,
    /// The hosting network (provider or address block) for the per-network
    /// limits and the operators' view; default: the relay's own network.
    pub network: Option<String>,
    /// Where the relay is hosted, for the operators' view only.
    pub country: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: default_data_dir(),
            listen: "127.0.0.1:7447".parse().expect("valid default"),
            public_addr: None,
            http_listen: "127.0.0.1:7448".parse().expect("valid default"),
            carriers: CarriersConfig::default(),
            sms: SmsConfig::default(),
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            store: None,
            sqlite_synchronous: "full".into(),
            mls_ciphersuite: postern_proto::mls::CIPHERSUITES[0].1.into(),
            limits: Limits::default(),
            transparency: TransparencyConfig::default(),
            relays: Vec::new(),
            relay_operators: Vec::new(),
            distributor: postern_distributor::Config::default(),
            node: NodeConfig::default(),
            directory: DirectoryConfig::default(),
            legal: LegalConfig::default(),
        }
    }
}

/// The PII vault and the lawful-request process (`[legal]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegalConfig {
    /// The custodians each account's vault key is split among
    /// (`[[legal.custodians]]`: `name`, `jurisdiction`, `public_key`, as
    /// `postern custodian init` prints them). None: a development
    /// custodian whose key the server keeps in `DATA_DIR`, with a warning.
    pub custodians: Vec<postern_legal::custodian::CustodianRecord>,
    /// How many custodians must approve a disclosure (k). Default: a
    /// majority of the custodians.
    pub threshold: Option<usize>,
    /// The key of the phone-number index (64 hex digits in a 0600 file;
    /// created if missing). Default `DATA_DIR/phone-index.key`. Nodes
    /// sharing a store must share this file: lookups by phone, per-number
    /// code limits and uniqueness all depend on it.
    pub phone_index_key: Option<PathBuf>,
    /// How long each connection's sealed source address is kept, in
    /// seconds (default 30 days); older records are deleted.
    #[serde(with = "humantime_secs")]
    pub ip_retention: Duration,
    /// Log each client connection's source address (off by default). Logs
    /// are outside the vault: keep them no longer than `ip_retention`.
    pub log_client_ips: bool,
    /// The published policy (TOML); default: `postern_legal`'s
    /// `DEFAULT_POLICY`.
    pub policy: Option<PathBuf>,
    /// Operators allowed to use the operator API, by Ed25519 public key
    /// (64 hex digits); two distinct ones must approve a request.
    pub operators: Vec<String>,
    /// Trusted court certificates per jurisdiction:
    /// `{ DE = "/etc/postern/courts/de.pem" }`.
    pub trust_anchors: std::collections::BTreeMap<String, PathBuf>,
}

impl Default for LegalConfig {
    fn default() -> Self {
        LegalConfig {
            custodians: Vec::new(),
            threshold: None,
            phone_index_key: None,
            ip_retention: Duration::from_secs(30 * 24 * 3600),
            log_client_ips: false,
            policy: None,
            operators: Vec::new(),
            trust_anchors: Default::default(),
        }
    }
}

/// The carriers besides plain TCP; each is off unless given an address.
/// They carry the same Noise session, share the connection and handshake
/// limits, and all appear in the server link.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarriersConfig {
    /// TLS 1.3 listen address (TCP).
    pub tls: Option<SocketAddr>,
    /// WebSocket-over-TLS listen address (TCP); put it behind an HTTPS
    /// reverse proxy or CDN, or expose it directly.
    pub wss: Option<SocketAddr>,
    /// The path WebSocket upgrades must ask for; every other request gets
    /// a 404.
    pub wss_path: String,
    /// QUIC listen address (UDP).
    pub quic: Option<SocketAddr>,
    /// PEM certificate chain for TLS, WebSocket and QUIC; unset: a
    /// self-signed certificate generated once and kept in the data
    /// directory (`tls-cert.pem`, `tls-key.pem`), which the server link pins.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Names a generated certificate is made out to.
    pub cert_names: Vec<String>,
    /// Pin the certificate in the server link (`certsha256=`) even when it
    /// comes from files; always on for a generated one.
    pub pin: bool,
    /// The host written in the link for these carriers (default: the
    /// listen address, loopback for an unspecified one).
    pub public_host: Option<String>,
    /// The TLS server name clients send (SNI); default: the host.
    pub sni: Option<String>,
}

impl Default for CarriersConfig {
    fn default() -> Self {
        CarriersConfig {
            tls: None,
            wss: None,
            wss_path: "/postern".into(),
            quic: None,
            cert: None,
            key: None,
            cert_names: vec!["localhost".into()],
            pin: false,
            public_host: None,
            sni: None,
        }
    }
}

impl CarriersConfig {
    /// True if any carrier besides TCP is on.
    pub fn any(&self) -> bool {
        self.tls.is_some() || self.wss.is_some() || self.quic.is_some()
    }
}

/// `$XDG_DATA_HOME/postern` (or the platform's equivalent), else `./postern-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("postern"))
        .unwrap_or_else(|| PathBuf::from("postern-data"))
}

/// SMS gateway selection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// "outbox" (default: append JSON lines to a file, for development and
    /// tests) or "webhook" (POST JSON to `webhook_url`).
    pub gateway: SmsGatewayKind,
    /// Outbox file; default `DATA_DIR/sms-outbox.jsonl`.
    pub outbox: Option<PathBuf>,
    /// URL the webhook gateway POSTs `{"phone":…,"code":…,"text":…}` to.
    pub webhook_url: Option<String>,
}

/// Which SMS gateway to use.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmsGatewayKind {
    /// Append to a local file.
    #[default]
    Outbox,
    /// POST to an HTTP(S) endpoint.
    Webhook,
}

/// Every limit the server enforces. Defaults are documented in the README.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Noise handshakes in progress at once.
    pub max_handshakes: usize,
    /// A handshake must finish within this many seconds.
    #[serde(with = "humantime_secs")]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing (not even a ping) for this long is closed.
    #[serde(with = "humantime_secs")]
    pub idle_timeout: Duration,
    /// Requests one connection may have in progress; further frames wait.
    pub max_inflight_requests: usize,
    /// Messages pushed to a device and not yet acked, per connection.
    pub delivery_window: u64,
    /// How long a registration code stays valid.
    #[serde(with = "humantime_secs")]
    pub code_ttl: Duration,
    /// Codes sent to one phone number: at most one per this many seconds...
    #[serde(with = "humantime_secs")]
    pub code_interval: Duration,
    /// ...and at most this many per hour.
    pub codes_per_phone_per_hour: u32,
    /// Code requests from one source address per hour.
    pub code_requests_per_ip_per_hour: u32,
    /// Registration and device-link attempts (right or wrong) from one
    /// source address per hour.
    pub verify_attempts_per_ip_per_hour: u32,
    /// Wrong guesses that burn a code.
    pub max_code_attempts: u32,
    /// One-time MLS key packages kept per device (the oldest beyond go).
    pub key_packages_per_device: u32,
    /// Below this many one-time key packages the server tells a device to
    /// upload more.
    pub key_packages_low_water: u32,
    /// Key-package claims one device may make per hour (each claim takes a
    /// package of every device of one account, so this bounds how fast a
    /// member can drain another's packages).
    pub key_package_claims_per_device_per_hour: u32,
    /// Relay requests (fetch, report, invite) one account may make per hour;
    /// the distributor's own limits (per account and per network) apply
    /// on top.
    pub relay_requests_per_account_per_hour: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 50_000,
            max_handshakes: 1_024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(180),
            max_inflight_requests: 256,
            delivery_window: 2_048,
            code_ttl: Duration::from_secs(300),
            code_interval: Duration::from_secs(30),
            codes_per_phone_per_hour: 5,
            code_requests_per_ip_per_hour: 20,
            verify_attempts_per_ip_per_hour: 30,
            max_code_attempts: 5,
            key_packages_per_device: 100,
            key_packages_low_water: 10,
            key_package_claims_per_device_per_hour: 600,
            relay_requests_per_account_per_hour: 60,
        }
    }
}

/// The transparency log of legal requests the server hosts under `/log/`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparencyConfig {
    /// Host the log (default). Off, no log key is created and `/log/` is
    /// not served.
    pub enabled: bool,
    /// The longest an appended entry waits for the signed checkpoint that
    /// includes it; a checkpoint is signed only when there are new entries.
    #[serde(with = "humantime_secs")]
    pub checkpoint_interval: Duration,
    /// The log's origin (its key name, the first line of every
    /// checkpoint), a schema-less URL such as `chat.example.org/log`.
    /// Default: on first start, the host of `public_addr` followed by
    /// `/log`; afterwards, the name in the log's key file, so the log keeps
    /// its identity when the address changes.
    pub origin: Option<String>,
    /// Witnesses each new checkpoint is submitted to for cosigning.
    pub witnesses: Vec<WitnessConfig>,
    /// How many witness cosignatures verifiers should require; a
    /// checkpoint with fewer is still published, with a warning. Default:
    /// all the configured witnesses.
    pub quorum: Option<usize>,
}

impl Default for TransparencyConfig {
    fn default() -> Self {
        TransparencyConfig {
            enabled: true,
            checkpoint_interval: Duration::from_secs(1),
            origin: None,
            witnesses: Vec::new(),
            quorum: None,
        }
    }
}

/// A witness of the log: where it takes submissions and its key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The URL prefix of its `add-checkpoint` endpoint, e.g.
    /// `https://witness.example.net` for `…/add-checkpoint`.
    pub url: String,
    /// Its cosigning verifier key (a C2SP vkey, `NAME+KEYID+BASE64`).
    pub vkey: String,
}

/// Durations in config files are whole seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_what_it_names() {
        let cfg: ServerConfig = toml_from_str(
            "listen = \"0.0.0.0:9000\"\nmessage_ttl = 60\n[limits]\nmax_connections = 5\n",
        );
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.message_ttl, Duration::from_secs(60));
        assert_eq!(cfg.limits.max_connections, 5);
        assert_eq!(cfg.limits.max_code_attempts, 5);
        assert_eq!(cfg.http_listen.port(), 7448);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ServerConfig>("lisen = \"0.0.0.0:9000\"").is_err());
        assert!(toml::from_str::<ServerConfig>("[transparency]\nintervall = 5").is_err());
        assert!(
            toml::from_str::<ServerConfig>(
                "[[transparency.witnesses]]\nurl = \"http://w\"\nvkey = \"k\"\nkey = \"k\""
            )
            .is_err()
        );
    }

    #[test]
    fn the_log_is_on_by_default_and_witnesses_are_a_list() {
        let cfg = ServerConfig::default();
        assert!(cfg.transparency.enabled);
        assert_eq!(cfg.transparency.checkpoint_interval, Duration::from_secs(1));
        let cfg = toml_from_str(
            "[transparency]\ncheckpoint_interval = 10\norigin = \"chat.example.org/log\"\n\
             quorum = 1\n[[transparency.witnesses]]\nurl = \"https://w.example\"\n\
             vkey = \"w.example+01234567+AAAA\"\n",
        );
        let t = cfg.transparency;
        assert_eq!(t.checkpoint_interval, Duration::from_secs(10));
        assert_eq!(t.origin.as_deref(), Some("chat.example.org/log"));
        assert_eq!((t.witnesses.len(), t.quorum), (1, Some(1)));
        assert_eq!(t.witnesses[0].url, "https://w.example");
    }

    #[test]
    fn relays_are_a_list_and_the_policy_a_table() {
        let cfg = toml_from_str(
            "[[relays]]\nname = \"r1\"\nlink = \"postern://relay?x\"\ncountry = \"NL\"\n\
             [[relays]]\nname = \"r2\"\nlink = \"postern://relay?y\"\nnetwork = \"hetzner\"\n\
             [distributor]\nuntrusted_days = 7\n",
        );
        assert_eq!(cfg.relays.len(), 2);
        assert_eq!(cfg.relays[0].country.as_deref(), Some("NL"));
        assert_eq!(cfg.relays[1].network.as_deref(), Some("hetzner"));
        assert_eq!(cfg.distributor.untrusted_days, 7);
        assert_eq!(cfg.distributor.bucket_size, 3);
        assert!(
            toml::from_str::<ServerConfig>("[[relays]]\nname = \"r\"\nlink = \"l\"\nport = 1")
                .is_err()
        );
    }

    #[test]
    fn the_node_table_names_nats_and_timings() {
        let cfg = ServerConfig::default();
        assert!(cfg.node.nats.is_none());
        assert_eq!(cfg.node.poll_interval, Duration::from_secs(30));
        let cfg = toml_from_str(
            "[node]\nname = \"eu-1\"\nnats = \"nats://10.0.0.2:4222\"\npoll_interval = 5\n",
        );
        assert_eq!(cfg.node.name.as_deref(), Some("eu-1"));
        assert_eq!(cfg.node.nats.as_deref(), Some("nats://10.0.0.2:4222"));
        assert_eq!(cfg.node.poll_interval, Duration::from_secs(5));
        assert_eq!(cfg.node.nats_prefix, "postern");
        assert!(toml::from_str::<ServerConfig>("[node]\nnat = \"x\"").is_err());
    }

    #[test]
    fn the_directory_is_a_table() {
        let cfg = toml_from_str(
            "[directory]\nfile = \"/etc/postern/directory.signed\"\nvkey = \"k\"\n\
             mirrors = [\"https://m.example/d\"]\nreload_interval = 5\n",
        );
        assert_eq!(cfg.directory.mirrors.len(), 1);
        assert_eq!(cfg.directory.reload_interval, Duration::from_secs(5));
        assert!(ServerConfig::default().directory.enabled);
        assert!(toml::from_str::<ServerConfig>("[directory]\nfiel = \"x\"").is_err());
    }

    #[test]
    fn the_legal_table_lists_custodians() {
        let cfg = ServerConfig::default();
        assert!(cfg.legal.custodians.is_empty());
        assert_eq!(cfg.legal.ip_retention, Duration::from_secs(30 * 24 * 3600));
        assert!(!cfg.legal.log_client_ips);
        let cfg = toml_from_str(&format!(
            "[legal]\nthreshold = 2\nip_retention = 86400\n\
             [[legal.custodians]]\nname = \"A\"\njurisdiction = \"CH\"\npublic_key = \"{}\"\n",
            "ab".repeat(32)
        ));
        assert_eq!(cfg.legal.custodians.len(), 1);
        assert_eq!(cfg.legal.threshold, Some(2));
        assert_eq!(cfg.legal.ip_retention, Duration::from_secs(86400));
        assert!(toml::from_str::<ServerConfig>("[legal]\nretention = 1").is_err());
    }

    fn toml_from_str(s: &str) -> ServerConfig {
        toml::from_str(s).expect("valid config")
    }
}
