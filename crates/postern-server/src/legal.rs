//! The PII vault on the server: what registration and every connection
//! hand to `postern-legal`, and what the server keeps of it.
//!
//! At registration [`Vault::escrow`] creates the account's vault key,
//! seals the phone number to it and splits it among the custodians; the
//! store keeps only the sealed number, the wrapped shares and a keyed hash
//! of the number ([`Vault::phone_key`]) for lookups, plus the number's
//! country. Each authenticated connection's source address and time are
//! sealed to the same key ([`Vault::record_connection`]); the
//! [`retention_loop`] deletes records older than `[legal] ip_retention`.
//!
//! Without `[[legal.custodians]]` the server makes a **development
//! custodian**: a custodian key of its own in `DATA_DIR/dev-custodian.key`,
//! with k = 1, and warns at every start. A database copy alone still opens
//! nothing, but whoever has the data directory has the key: do not run
//! that in production.
//!
//! Databases from before the vault hold phone numbers in clear; at start
//! [`Vault::seal_legacy`] seals them to the configured custodians. With
//! only the development custodian it refuses instead (sealing real
//! numbers to a key on the same disk would only pretend to protect them).
//!
//! This module must never log a phone number, a phone key or (unless
//! `log_client_ips` is on, in `conn`) a client address.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use postern_distributor::Country;
use postern_legal::custodian::{CustodianKey, CustodianRecord, check_quorum};
use postern_legal::vault::{self, IpRecord, PhoneIndexKey, VaultError, VaultPublicKey};
use postern_proto::ids::AccountId;
use postern_store::{Store, VaultEntry};
use tokio::sync::watch;

use crate::config::LegalConfig;

/// The name the development custodian's record carries.
pub const DEVELOPMENT_CUSTODIAN: &str = "development custodian (this server; not for production)";

/// How many legacy accounts are sealed per store round trip.
const LEGACY_BATCH: u32 = 256;

/// The vault's keys and settings, shared by the service and the tasks.
#[derive(Debug)]
pub struct Vault {
    index_key: PhoneIndexKey,
    custodians: Vec<CustodianRecord>,
    threshold: usize,
    retention: Duration,
    log_client_ips: bool,
    development: bool,
}

impl Vault {
    /// Loads (or creates) the phone-index key and the custodian set from
    /// `[legal]`, checking the quorum rules.
    pub fn open(cfg: &LegalConfig, data_dir: &Path) -> anyhow::Result<Vault> {
        let index_path = cfg
            .phone_index_key
            .clone()
            .unwrap_or_else(|| data_dir.join("phone-index.key"));
        let index_key = PhoneIndexKey::from_bytes(load_or_create_secret(&index_path)?);
        let (custodians, development) = if cfg.custodians.is_empty() {
            let key_path = data_dir.join("dev-custodian.key");
            let key = CustodianKey::from_bytes(load_or_create_secret(&key_path)?);
            let record = CustodianRecord {
                name: DEVELOPMENT_CUSTODIAN.into(),
                jurisdiction: "ZZ".into(),
                public_key: key.public_key()?,
            };
            (vec![record], true)
        } else {
            (cfg.custodians.clone(), false)
        };
        let threshold = match (development, cfg.threshold) {
            (true, _) => 1,
            (false, Some(k)) => k,
            (false, None) => custodians.len() / 2 + 1,
        };
        check_quorum(&custodians, threshold)
            .context("[legal] custodians and threshold do not make a valid quorum")?;
        if cfg.ip_retention.is_zero() {
            bail!("[legal] ip_retention must be at least one second");
        }
        Ok(Vault {
            index_key,
            custodians,
            threshold,
            retention: cfg.ip_retention,
            log_client_ips: cfg.log_client_ips,
            development,
        })
    }

    /// True when the only custodian is the server's own development key.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// The custodians every account's key is split among.
    pub fn custodians(&self) -> &[CustodianRecord] {
        &self.custodians
    }

    /// How many custodians open an account's records.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// How long connection records are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Whether the operator asked for client addresses in the logs.
    pub fn log_client_ips(&self) -> bool {
        self.log_client_ips
    }

    /// The keyed hash an E.164 number is looked up by (accounts, codes).
    pub fn phone_key(&self, phone: &str) -> [u8; 32] {
        self.index_key.lookup(phone)
    }

    /// A new account's vault entry: a fresh key, `phone` sealed to it, the
    /// key split among the custodians and forgotten.
    pub fn escrow(&self, account: AccountId, phone: &str) -> Result<VaultEntry, VaultError> {
        let escrow = vault::escrow(&account.0, &self.custodians, self.threshold)?;
        let sealed = vault::seal_phone(&escrow.public_key, &account.0, phone)?;
        let mut shares: Vec<([u8; 32], Bytes)> = self
            .custodians
            .iter()
            .zip(&escrow.shares)
            .map(|(c, s)| (c.public_key, Bytes::from(s.encode())))
            .collect();
        shares.sort_by_key(|s| s.0);
        Ok(VaultEntry {
            account,
            phone_index: self.phone_key(phone),
            public_key: escrow.public_key.0,
            sealed_phone: Bytes::from(sealed.encode()),
            threshold: u32::try_from(self.threshold).unwrap_or(u32::MAX),
            shares,
        })
    }

    /// Appends one connection (source address and time) to the account's
    /// sealed IP log. Failures are logged (without the address) and
    /// otherwise ignored: a member is never refused service for them.
    pub async fn record_connection(
        &self,
        store: &dyn Store,
        account: AccountId,
        ip: IpAddr,
        at_ms: i64,
    ) {
        if let Err(e) = self.try_record_connection(store, account, ip, at_ms).await {
            tracing::warn!(error = %e, "could not add a connection to the vault's IP log");
        }
    }

    async fn try_record_connection(
        &self,
        store: &dyn Store,
        account: AccountId,
        ip: IpAddr,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        let Some(entry) = store.vault(account).await? else {
            // Only accounts sealed into the vault have an IP log.
            return Ok(());
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let record = IpRecord {
            at: u64::try_from(at_ms / 1000).unwrap_or(0),
            ip,
        };
        let sealed = vault::seal_ip(&VaultPublicKey(entry.public_key), &account.0, &record)?;
        store
            .add_connection(account, at_ms, Bytes::from(sealed.encode()))
            .await?;
        Ok(())
    }

    /// Seals phone numbers a database from before the vault holds in clear;
    /// returns how many. Refuses (and changes nothing) when only the
    /// development custodian is configured.
    pub async fn seal_legacy(&self, store: &dyn Store) -> anyhow::Result<usize> {
        let mut sealed = 0;
        loop {
            let batch = store.legacy_phones(LEGACY_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            if self.development {
                bail!(
                    "the database holds phone numbers in clear from before the PII vault; \
                     configure the custodians ([[legal.custodians]] in the config file, see \
                     README \"Lawful requests\") and start again to seal them into the vault, \
                     or start from an empty data directory"
                );
            }
            for legacy in batch {
                let entry = self
                    .escrow(legacy.account, &legacy.phone)
                    .context("cannot seal a legacy phone number")?;
                let country = country_of(&legacy.phone);
                store
                    .seal_legacy_phone(
                        legacy.account,
                        entry.phone_index,
                        country.as_str(),
                        Some(entry),
                    )
                    .await?;
                sealed += 1;
            }
        }
        Ok(sealed)
    }
}

/// The country of an E.164 number, as the distributor counts it.
pub fn country_of(phone: &str) -> Country {
    crate::relays::phone_country(phone)
}

/// A stored country code, `ZZ` if it is not one.
pub fn stored_country(code: &str) -> Country {
    Country::new(code).unwrap_or_else(|_| Country::new("ZZ").expect("two letters"))
}

/// Deletes connection records older than the retention, every
/// `min(retention / 10, 1 h)`.
pub async fn retention_loop(
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    mut stop: watch::Receiver<bool>,
) {
    let every = (vault.retention / 10)
        .min(Duration::from_secs(3600))
        .max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let cutoff =
            crate::service::now_ms() - i64::try_from(vault.retention.as_millis()).unwrap_or(0);
        match store.purge_connections(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "deleted connection records past retention"),
            Err(e) => tracing::warn!(error = %e, "purging connection records failed"),
        }
    }
}

/// Reads a 32-byte secret (64 hex digits) from `path`, or creates it
/// (mode 0600).
pub(crate) fn load_or_create_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    match std::fs::read_to_string(path).map(zeroize::Zeroizing::new) {
        Ok(text) => {
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret)
                .with_context(|| format!("{} is not a key (64 hex digits)", path.display()))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(secret)));
            match crate::write_private(path, text.as_bytes()) {
                Ok(()) => Ok(secret),
                // Another node sharing the file made it first.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_secret(path)
                }
                Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_custodians_a_development_custodian_is_made_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let a = Vault::open(&LegalConfig::default(), dir.path()).unwrap();
        assert!(a.is_development());
        assert_eq!(a.threshold(), 1);
        let b = Vault::open(&LegalConfig::default(), dir.path()).unwrap();
        assert_eq!(a.custodians(), b.custodians());
        assert_eq!(a.phone_key("+14155552671"), b.phone_key("+14155552671"));
        let entry = a.escrow(AccountId([1; 16]), "+14155552671").unwrap();
        assert_eq!(entry.shares.len(), 1);
        assert!(!entry.sealed_phone.windows(4).any(|w| w == b"4155"));
    }

    #[test]
    fn custodians_get_a_majority_threshold_and_bad_quorums_are_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let record = |name: &str, j: &str| CustodianRecord {
            name: name.into(),
            jurisdiction: j.into(),
            public_key: CustodianKey::generate().public_key().unwrap(),
        };
        let mut cfg = LegalConfig {
            custodians: vec![record("A", "CH"), record("B", "IS"), record("C", "NZ")],
            ..LegalConfig::default()
        };
        let v = Vault::open(&cfg, dir.path()).unwrap();
        assert!(!v.is_development());
        assert_eq!(v.threshold(), 2);
        assert_eq!(v.escrow(AccountId([2; 16]), "+1").unwrap().shares.len(), 3);
        cfg.threshold = Some(4);
        assert!(Vault::open(&cfg, dir.path()).is_err());
        cfg.threshold = Some(2);
        cfg.custodians[1].jurisdiction = "CH".into();
        assert!(
            Vault::open(&cfg, dir.path()).is_err(),
            "two in CH can gather k = 2"
        );
    }
}
