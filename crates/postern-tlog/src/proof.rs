//! Offline proofs of inclusion, `c2sp.org/tlog-proof@v1`: a checkpoint
//! (with its cosignatures), an entry's index and its inclusion proof, so
//! that anyone holding the entry and the log's and witnesses' keys can
//! check it was logged without asking the log anything.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::checkpoint::{OpenError, OpenedCheckpoint, Policy, parse_decimal};
use crate::merkle::{Hash, ProofError, leaf_hash, verify_inclusion};

/// The first line of a proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// The most inclusion proof lines a proof can need (a tree of 2^63 entries).
const MAX_PROOF_LINES: usize = 63;

/// A `tlog-proof@v1` bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofBundle {
    /// Opaque, unauthenticated application data.
    pub extra: Option<Vec<u8>>,
    /// The entry's index in the log.
    pub index: u64,
    /// The inclusion proof, from the leaf's sibling up.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
}

/// What was wrong with a proof bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The text is not a `tlog-proof@v1`.
    #[error("not a c2sp.org/tlog-proof@v1 proof: {0}")]
    Malformed(&'static str),
    /// The checkpoint does not satisfy the policy.
    #[error(transparent)]
    Checkpoint(#[from] OpenError),
    /// The inclusion proof does not bind the entry to the checkpoint.
    #[error("the entry is not proven to be in the log: {0}")]
    Inclusion(#[from] ProofError),
}

impl ProofBundle {
    /// Parses a proof.
    pub fn parse(text: &str) -> Result<ProofBundle, BundleError> {
        let mut rest = text
            .strip_prefix(HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or(BundleError::Malformed(
                "the first line must be c2sp.org/tlog-proof@v1",
            ))?;
        let mut line = || -> Result<&str, BundleError> {
            let (l, r) = rest
                .split_once('\n')
                .ok_or(BundleError::Malformed("a line does not end in a newline"))?;
            rest = r;
            Ok(l)
        };
        let mut l = line()?;
        let mut extra = None;
        if let Some(b64) = l.strip_prefix("extra ") {
            extra = Some(
                B64.decode(b64)
                    .map_err(|_| BundleError::Malformed("the extra line is not base64"))?,
            );
            l = line()?;
        }
        let index = l
            .strip_prefix("index ")
            .and_then(parse_decimal)
            .ok_or(BundleError::Malformed("expected an \"index N\" line"))?;
        let mut proof = Vec::new();
        loop {
            let l = line()?;
            if l.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(BundleError::Malformed("too many proof lines"));
            }
            proof.push(
                Hash::from_base64(l).ok_or(BundleError::Malformed("a proof line is not a hash"))?,
            );
        }
        Ok(ProofBundle {
            extra,
            index,
            proof,
            checkpoint: rest.to_owned(),
        })
    }

    /// Checks that `entry` is in the log: the checkpoint satisfies
    /// `policy` and the proof leads from the entry to its root.
    pub fn verify(&self, entry: &[u8], policy: &Policy) -> Result<OpenedCheckpoint, BundleError> {
        let opened = policy.open(self.checkpoint.as_bytes())?;
        verify_inclusion(
            self.index,
            opened.checkpoint.size,
            &leaf_hash(entry),
            &self.proof,
            &opened.checkpoint.root,
        )?;
        Ok(opened)
    }
}

impl fmt::Display for ProofBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{HEADER}")?;
        if let Some(extra) = &self.extra {
            writeln!(f, "extra {}", B64.encode(extra))?;
        }
        writeln!(f, "index {}", self.index)?;
        for h in &self.proof {
            writeln!(f, "{h}")?;
        }
        writeln!(f)?;
        f.write_str(&self.checkpoint)
    }
}
