//! The disclosure: rebuilding the granted accounts' keys from custodians'
//! released shares, opening only what was granted, and the signed package
//! for the authority.
//!
//! [`disclose`] first re-checks the bundle (the grant must be proven in a
//! witness-cosigned checkpoint), then, account by account, opens the
//! released shares with the request's disclosure key, rebuilds the vault
//! secret (at least k shares from distinct configured custodians, checked
//! against the account's public key), opens the phone number if granted
//! and the connection records if granted, keeping only those inside the
//! request's window, and drops the secret (zeroized). Any failure for any
//! account fails the whole disclosure: nothing is returned, so nothing
//! partial can be handed over. The package is JSON signed with the
//! operator's disclosure key (Ed25519, never the log key).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use postern_tlog::checkpoint::Policy as LogPolicy;

use crate::bundle::{Bundle, BundleError};
use crate::custodian::{CustodianRecord, DisclosureKey, ReleasedShare};
use crate::request::Category;
use crate::vault::{AccountId, SealedRecord, VaultError, VaultPublicKey, VaultSecret};

const PACKAGE_DOMAIN: &[u8] = b"postern-legal disclosure v1\n";

/// Why a disclosure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisclosureError {
    /// The bundle does not prove a logged grant.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The operator has no vault row for a granted account.
    #[error("no vault record for account {0}")]
    UnknownAccount(String),
    /// The shares did not rebuild an account's key, or a record did not
    /// open.
    #[error("account {account}: {error}")]
    Vault {
        /// The account.
        account: String,
        /// What went wrong.
        error: VaultError,
    },
}

/// What the vault holds for one account.
#[derive(Clone, Debug)]
pub struct AccountVault {
    /// The account.
    pub account: AccountId,
    /// Its vault public key.
    pub public_key: VaultPublicKey,
    /// Its sealed phone number.
    pub phone: SealedRecord,
    /// Its sealed connection records (within retention).
    pub connections: Vec<SealedRecord>,
}

/// One connection, as disclosed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// From which address.
    pub ip: String,
}

/// What is disclosed about one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosedAccount {
    /// The account id (32 hex digits).
    pub account: String,
    /// The phone number, if granted.
    pub phone_number: Option<String>,
    /// The connections inside the window, oldest first, if granted.
    pub connections: Option<Vec<Connection>>,
}

/// The package for the authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Format version (1).
    pub version: u32,
    /// The request id (hex), as in the transparency log.
    pub request_id: String,
    /// The log index of the request's entry.
    pub log_index: u64,
    /// The requesting jurisdiction.
    pub jurisdiction: String,
    /// The authority.
    pub authority: String,
    /// The case reference.
    pub case_reference: String,
    /// The legal basis.
    pub legal_basis: String,
    /// The categories disclosed.
    pub categories: Vec<Category>,
    /// The window for connections (RFC 3339, `[from, until)`).
    pub window: (String, String),
    /// When the package was made (RFC 3339).
    pub disclosed_at: String,
    /// Per account.
    pub accounts: Vec<DisclosedAccount>,
}

/// A package and the operator's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPackage {
    /// The package's JSON, verbatim: the signature covers these bytes.
    pub package: String,
    /// The operator's Ed25519 disclosure key (hex).
    pub key: String,
    /// Ed25519 over `"postern-legal disclosure v1\n" || package` (base64).
    pub signature: String,
}

impl SignedPackage {
    /// Checks the signature with the operator's published key and returns
    /// the package.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Package, String> {
        if hex::encode(key.as_bytes()) != self.key {
            return Err("signed with another key".into());
        }
        let sig = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or("the signature is malformed")?;
        key.verify(&[PACKAGE_DOMAIN, self.package.as_bytes()].concat(), &sig)
            .map_err(|_| "the signature does not verify".to_owned())?;
        serde_json::from_str(&self.package).map_err(|e| e.to_string())
    }
}

/// Discloses what `bundle` grants (see the module docs). `k` is the
/// custodian threshold; `now` the time (UNIX seconds).
#[allow(clippy::too_many_arguments)]
pub fn disclose(
    bundle: &Bundle,
    log: &LogPolicy,
    key: &DisclosureKey,
    released: &[ReleasedShare],
    custodians: &[CustodianRecord],
    k: usize,
    vaults: &[AccountVault],
    signer: &SigningKey,
    now: u64,
) -> Result<SignedPackage, DisclosureError> {
    let approval = bundle.verify(log, None)?;
    let categories = bundle.decision.categories.clone();
    let (from, until) = approval.request.window;
    let mut accounts = Vec::new();
    for account in &approval.accounts {
        let name = hex::encode(account);
        let vault_err = |error| DisclosureError::Vault {
            account: name.clone(),
            error,
        };
        let vault = vaults
            .iter()
            .find(|v| v.account == *account)
            .ok_or_else(|| DisclosureError::UnknownAccount(name.clone()))?;
        let shares = key
            .open_releases(&approval.request_id, account, custodians, released)
            .map_err(vault_err)?;
        let secret = VaultSecret::combine(&shares, k, &vault.public_key).map_err(vault_err)?;
        let phone_number = if categories.contains(&Category::PhoneNumber) {
            Some(
                secret
                    .open_phone(account, &vault.phone)
                    .map_err(vault_err)?,
            )
        } else {
            None
        };
        let connections = if categories.contains(&Category::ConnectionIps) {
            let mut list = Vec::new();
            for r in &vault.connections {
                let c = secret.open_ip(account, r).map_err(vault_err)?;
                if (from..until).contains(&c.at) {
                    list.push(c);
                }
            }
            list.sort_by_key(|c| c.at);
            Some(
                list.into_iter()
                    .map(|c| Connection {
                        at: crate::date::format_datetime(c.at),
                        ip: c.ip.to_string(),
                    })
                    .collect(),
            )
        } else {
            None
        };
        drop(secret);
        accounts.push(DisclosedAccount {
            account: name,
            phone_number,
            connections,
        });
    }
    let package = Package {
        version: 1,
        request_id: hex::encode(approval.request_id),
        log_index: approval.log_index,
        jurisdiction: approval.request.jurisdiction.as_str().to_owned(),
        authority: approval.request.authority_name.clone(),
        case_reference: approval.request.case_reference.clone(),
        legal_basis: approval.request.legal_basis.clone(),
        categories,
        window: (
            crate::date::format_datetime(from),
            crate::date::format_datetime(until),
        ),
        disclosed_at: crate::date::format_datetime(now),
        accounts,
    };
    let json = serde_json::to_string_pretty(&package).expect("a package serialises");
    let signature = signer.sign(&[PACKAGE_DOMAIN, json.as_bytes()].concat());
    Ok(SignedPackage {
        package: json,
        key: hex::encode(signer.verifying_key().as_bytes()),
        signature: B64.encode(signature.to_bytes()),
    })
}
