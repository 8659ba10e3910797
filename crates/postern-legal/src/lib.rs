//! `postern-legal`: how Postern answers lawful requests, and proves it.
//!
//! - [`vault`]: the PII vault. Each account's phone number and connection
//!   IPs are sealed (HPKE, RFC 9180) to a per-account key whose private
//!   half exists only as Shamir shares, k of n, wrapped to custodians;
//!   lookups by phone use a keyed hash.
//! - [`custodian`]: custodians' keys and records, wrapped shares, and the
//!   release of a share for one request and one account.
//! - [`request`]: the request file (`REQUEST.toml`) an operator
//!   transcribes an authority's request into.
//! - [`order`]: verification of a court order's detached CMS signature and
//!   its X.509 chain against the requesting jurisdiction's trust anchors.
//! - [`bundle`]: the log entry of a case, and the bundle a custodian
//!   checks before releasing a share: an inclusion proof of the grant in a
//!   witness-cosigned checkpoint, matching the request, order and accounts.
//! - [`disclosure`]: rebuilding the granted accounts' keys from k released
//!   shares, opening only what was granted, and the signed package.
//! - [`operator`]: signed operator requests (Ed25519 over method, path,
//!   body hash, time and nonce) and the server's gate for them.
//! - [`policy`]: the published policy (TOML) and the engine deciding
//!   granted, partly granted or refused, with reason codes.
//! - [`report`]: the semiannual transparency report, computed from the
//!   log's entries alone.
//!
//! Everything here is sans-IO: files, clocks and the network belong to
//! the server and the CLI. Nothing here logs, and no secret outlives the
//! call that needs it (key material is zeroized on drop).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod custodian;
pub mod date;
pub mod disclosure;
pub mod operator;
pub mod order;
pub mod policy;
pub mod report;
pub mod request;
pub mod vault;
