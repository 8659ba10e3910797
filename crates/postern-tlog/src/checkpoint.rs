//! C2SP checkpoints (`c2sp.org/tlog-checkpoint`): the note text naming a
//! log's origin, size and root hash, and opening a signed checkpoint
//! against a log key and a witness policy (k of n cosignatures).

use std::fmt;

use crate::merkle::Hash;
use crate::note::{Note, NoteError, VerifiedSignature, Verifier};

/// A log's signed tree head: origin, size, root hash and extension lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `transparency.example.org/legal`.
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The RFC 6962 root hash of the tree of `size` entries.
    pub root: Hash,
    /// Optional further lines; each non-empty.
    pub extensions: Vec<String>,
}

/// What was wrong with a checkpoint's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Fewer than three lines, or the text does not end with a newline.
    #[error("a checkpoint needs an origin, size and root hash line, each ending in a newline")]
    TooShort,
    /// The origin line is empty.
    #[error("the checkpoint's origin line is empty")]
    EmptyOrigin,
    /// The size line is not a decimal number without leading zeros.
    #[error("the checkpoint's size line {0:?} is not a decimal number")]
    BadSize(String),
    /// The root hash line is not 32 bytes in base64.
    #[error("the checkpoint's root hash line {0:?} is not a base64 SHA-256 hash")]
    BadRoot(String),
    /// An extension line is empty.
    #[error("the checkpoint has an empty extension line")]
    EmptyExtension,
}

/// Parses a decimal without sign or leading zeros (`0` itself is allowed).
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Checkpoint {
    /// Parses a checkpoint's note text.
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::TooShort)?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::TooShort);
        };
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size = parse_decimal(size).ok_or_else(|| CheckpointError::BadSize(size.into()))?;
        let root = Hash::from_base64(root).ok_or_else(|| CheckpointError::BadRoot(root.into()))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError::EmptyExtension);
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

impl fmt::Display for Checkpoint {
    /// The note text, ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}\n{}\n{}", self.origin, self.size, self.root)?;
        for e in &self.extensions {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Who must have signed a checkpoint for a client to accept it.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The log's key; its name is the origin the checkpoint must carry.
    pub log: Verifier,
    /// The witnesses' cosigning keys (plain Ed25519 vkeys are taken as the
    /// same keys' cosignature/v1 keys).
    pub witnesses: Vec<Verifier>,
    /// How many distinct witnesses must have cosigned.
    pub quorum: usize,
}

/// Why a signed checkpoint was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The note is malformed, or the log's signature is missing or bad.
    #[error("checkpoint note: {0}")]
    Note(#[from] NoteError),
    /// The text is not a checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint names another log.
    #[error("the checkpoint is for {found:?}, not {expected:?}")]
    WrongOrigin {
        /// The origin the policy expects.
        expected: String,
        /// The origin the checkpoint names.
        found: String,
    },
    /// Too few witnesses cosigned.
    #[error("{got} of the required {needed} witness cosignatures")]
    Quorum {
        /// The policy's quorum.
        needed: usize,
        /// Valid cosignatures from distinct witnesses.
        got: usize,
    },
}

/// A checkpoint whose log signature and witness quorum verified.
#[derive(Clone, Debug)]
pub struct OpenedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The whole note, signatures included.
    pub note: Note,
    /// The witness cosignatures that verified.
    pub cosignatures: Vec<VerifiedSignature>,
}

impl Policy {
    /// A policy trusting only the log's own signature.
    pub fn log_only(log: Verifier) -> Policy {
        Policy {
            log,
            witnesses: Vec::new(),
            quorum: 0,
        }
    }

    /// Parses a signed checkpoint and checks it against this policy.
    pub fn open(&self, bytes: &[u8]) -> Result<OpenedCheckpoint, OpenError> {
        let note = Note::parse(bytes)?;
        note.verify(std::slice::from_ref(&self.log))?;
        let checkpoint = Checkpoint::parse(note.text())?;
        if checkpoint.origin != self.log.name() {
            return Err(OpenError::WrongOrigin {
                expected: self.log.name().to_owned(),
                found: checkpoint.origin,
            });
        }
        let cosigners: Vec<Verifier> = self.witnesses.iter().map(Verifier::to_cosigner).collect();
        let cosignatures = match note.verify(&cosigners) {
            Ok(v) => v,
            Err(NoteError::NoTrustedSignature) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if cosignatures.len() < self.quorum {
            return Err(OpenError::Quorum {
                needed: self.quorum,
                got: cosignatures.len(),
            });
        }
        Ok(OpenedCheckpoint {
            checkpoint,
            note,
            cosignatures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::empty_root;

    #[test]
    fn round_trip_and_errors() {
        let c = Checkpoint {
            origin: "example.org/log".into(),
            size: 20852163,
            root: empty_root(),
            extensions: vec!["ext".into()],
        };
        assert_eq!(Checkpoint::parse(&c.to_string()), Ok(c));
        let ok = "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
        assert!(Checkpoint::parse(ok).is_ok());
        for (bad, want) in [
            ("o\n1\n", CheckpointError::TooShort),
            ("o\n1\nx", CheckpointError::TooShort),
            (
                "\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                CheckpointError::EmptyOrigin,
            ),
            (
                "o\n01\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                CheckpointError::BadSize("01".into()),
            ),
            (
                "o\n-1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                CheckpointError::BadSize("-1".into()),
            ),
            (
                "o\n99999999999999999999\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                CheckpointError::BadSize("99999999999999999999".into()),
            ),
            ("o\n1\nAAAA\n", CheckpointError::BadRoot("AAAA".into())),
            (
                "o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n",
                CheckpointError::EmptyExtension,
            ),
        ] {
            assert_eq!(Checkpoint::parse(bad), Err(want), "{bad:?}");
        }
    }
}
