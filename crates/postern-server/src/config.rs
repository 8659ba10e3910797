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
    /// How registration codes reach phones.
    pub sms: SmsConfig,
    /// How long an undelivered message waits in a device queue.
    #[serde(with = "humantime_secs")]
    pub message_ttl: Duration,
    /// SQLite durability: "full" (default; survives power loss) or "normal"
    /// (survives a process crash, may lose the last commits on power loss).
    pub sqlite_synchronous: String,
    /// The MLS ciphersuite clients use for new groups and key packages, by
    /// its RFC 9420 name; one of `postern_proto::mls::CIPHERSUITES`.
    pub mls_ciphersuite: String,
    /// Connection and request limits.
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: default_data_dir(),
            listen: "127.0.0.1:7447".parse().expect("valid default"),
            public_addr: None,
            http_listen: "127.0.0.1:7448".parse().expect("valid default"),
            sms: SmsConfig::default(),
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            sqlite_synchronous: "full".into(),
            mls_ciphersuite: postern_proto::mls::CIPHERSUITES[0].1.into(),
            limits: Limits::default(),
        }
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
        }
    }
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
    }

    fn toml_from_str(s: &str) -> ServerConfig {
        toml::from_str(s).expect("valid config")
    }
}
