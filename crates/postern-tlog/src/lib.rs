//! `postern-tlog`: Postern's public transparency log of legal requests.
//!
//! This crate owns everything about the log that is not hosting it:
//!
//! - [`merkle`]: RFC 6962 / RFC 9162 Merkle trees — hashing, roots, and
//!   inclusion and consistency proofs, generated and verified;
//! - the C2SP formats the Certificate Transparency, Go checksum database
//!   and Sigstore ecosystems share, so their witnesses, monitors and
//!   verifiers can watch this log: [`note`] (`signed-note`, Ed25519 and
//!   cosignature/v1 keys), [`checkpoint`] (`tlog-checkpoint`), [`tile`]
//!   (`tlog-tiles`), [`witness`] (`tlog-witness`, sans-IO) and [`proof`]
//!   (`tlog-proof` offline bundles);
//! - [`LogWriter`], which appends entries in batches, writes immutable
//!   tiles and entry bundles to a directory and signs checkpoints;
//! - [`client`], the verifier and monitor: fetch over any [`Fetch`],
//!   recompute the root from the entries, check consistency with the last
//!   run and report forks with the signed evidence;
//! - [`entry`]: the typed, canonical entries (legal requests, sealed
//!   requests and their openings), which hold no personal data;
//! - with the `http` feature (on by default), the async shells: [`http`]
//!   (an axum router serving a log directory, the witness server, reqwest
//!   clients for both) and [`sequencer`] (batched appends, a checkpoint per
//!   interval, witness cosigning), which is what a server embeds.
//!
//! It must never log personal data, and never sign two checkpoints that
//! are not consistent: the writer only appends.
//!
//! A log written, checked, and an entry proven, in a few lines:
//!
//! ```
//! use postern_tlog::note::{Algorithm, Signer};
//! use postern_tlog::{DirFetch, LogWriter, Policy, client};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let key = Signer::generate("transparency.example.org/legal", Algorithm::Ed25519)?;
//! let mut log = LogWriter::open(dir.path(), key.clone())?;
//! for i in 0..1000u32 {
//!     log.append(i.to_be_bytes().to_vec())?;
//! }
//! log.publish()?; // tiles, bundles and a signed checkpoint on disk
//!
//! // Anyone with the log's verifier key can check it...
//! let policy = Policy::log_only(key.verifier());
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! let verdict = rt.block_on(client::verify(&DirFetch(dir.path().into()), &policy, None))?;
//! assert_eq!(verdict.checkpoint.size, 1000);
//!
//! // ...and an offline proof shows one entry is in it.
//! let proof = log.proof_bundle(42, None)?;
//! proof.verify(&42u32.to_be_bytes(), &policy)?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod client;
pub mod entry;
#[cfg(feature = "http")]
pub mod http;
pub mod merkle;
pub mod note;
pub mod proof;
#[cfg(feature = "http")]
pub mod sequencer;
pub mod tile;
pub mod witness;
pub mod writer;

pub use checkpoint::{Checkpoint, Policy};
pub use client::{DirFetch, Fetch, MonitorState, Verdict, VerifyError};
pub use merkle::Hash;
pub use note::{Algorithm, Note, Signer, Verifier};
pub use proof::ProofBundle;
pub use writer::LogWriter;
