//! The witness side of C2SP `tlog-witness`, sans-IO: an `add-checkpoint`
//! request body in, a status, content type and body out; and the client's
//! half (building requests, reading cosignatures and 409 answers).
//!
//! A witness keeps, per log origin, the latest checkpoint it cosigned, and
//! cosigns a new one only with a valid consistency proof from it. It never
//! cosigns two checkpoints of a log that are not consistent, which is what
//! lets clients holding a quorum of cosignatures rule out a split view.
//! The check and the update must be atomic: a caller serialises calls to
//! [`Witness::add_checkpoint`] (the HTTP shell holds a mutex), and a
//! [`WitnessStore`] persists each update before the answer goes out.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, parse_decimal};
use crate::merkle::{Hash, empty_root, verify_consistency};
use crate::note::{Algorithm, MAX_NOTE_LEN, Note, NoteError, NoteSignature, Signer, Verifier};

/// The most consistency proof lines a request may carry (the spec's limit).
pub const MAX_PROOF_LINES: usize = 63;

/// The largest `add-checkpoint` body accepted.
pub const MAX_REQUEST_LEN: usize = MAX_NOTE_LEN + 4096;

/// The content type of a 409 answer's body (the witness's size).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// An `add-checkpoint` request: old size, consistency proof, checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness is believed to hold.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, as sent.
    pub checkpoint: Vec<u8>,
}

impl AddCheckpoint {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, Refusal> {
        if body.len() > MAX_REQUEST_LEN {
            return Err(Refusal::Malformed("the request body is too large".into()));
        }
        let malformed = |what: &str| Refusal::Malformed(what.to_owned());
        let mut rest = body;
        let next_line = |rest: &mut &[u8]| -> Result<String, Refusal> {
            let i = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| malformed("a line does not end in a newline"))?;
            let line = std::str::from_utf8(&rest[..i])
                .map_err(|_| malformed("a header line is not UTF-8"))?
                .to_owned();
            *rest = &rest[i + 1..];
            Ok(line)
        };
        let first = next_line(&mut rest)?;
        let old_size = first
            .strip_prefix("old ")
            .and_then(parse_decimal)
            .ok_or_else(|| malformed("the first line must be \"old SIZE\""))?;
        let mut proof = Vec::new();
        loop {
            let line = next_line(&mut rest)?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(malformed("more than 63 consistency proof lines"));
            }
            proof.push(
                Hash::from_base64(&line)
                    .ok_or_else(|| malformed("a proof line is not a base64 hash"))?,
            );
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint: rest.to_vec(),
        })
    }

    /// The request body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old_size).into_bytes();
        for h in &self.proof {
            out.extend_from_slice(h.to_base64().as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.checkpoint);
        out
    }
}

/// Why a witness refused a checkpoint; each maps to the status the spec
/// requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the request or checkpoint is malformed, or old size > size.
    #[error("bad request: {0}")]
    Malformed(String),
    /// 403: no valid signature from the log's key(s), or a bad one.
    #[error("the checkpoint is not validly signed by the log: {0}")]
    BadSignature(NoteError),
    /// 404: the witness does not know the log.
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// 409: the old size is not the size the witness last cosigned.
    #[error("the witness's latest cosigned size is {latest}")]
    Conflict {
        /// The size of the latest checkpoint the witness cosigned.
        latest: u64,
    },
    /// 422: the consistency proof (or the empty tree's root) is wrong.
    #[error("the consistency proof does not verify: {0}")]
    BadProof(String),
    /// 500: the witness could not persist its state.
    #[error("the witness could not store its state: {0}")]
    Storage(String),
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::BadSignature(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::BadProof(_) => 422,
            Refusal::Storage(_) => 500,
        }
    }
}

/// An HTTP answer, independent of any HTTP library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl From<&Refusal> for Response {
    fn from(r: &Refusal) -> Response {
        match r {
            Refusal::Conflict { latest } => Response {
                status: 409,
                content_type: SIZE_CONTENT_TYPE,
                body: format!("{latest}\n").into_bytes(),
            },
            other => Response {
                status: other.status(),
                content_type: "text/plain; charset=utf-8",
                body: format!("{other}\n").into_bytes(),
            },
        }
    }
}

/// What a witness remembers about one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The latest checkpoint it cosigned.
    pub checkpoint: Checkpoint,
    /// That checkpoint's note, with the witness's cosignature.
    pub note: String,
}

/// Where a witness keeps its latest cosigned checkpoint per log.
pub trait WitnessStore {
    /// The latest record for `origin`, if any.
    fn latest(&self, origin: &str) -> Result<Option<LogRecord>, String>;
    /// Replaces the record for `origin`; must be durable on return.
    fn store(&mut self, origin: &str, record: &LogRecord) -> Result<(), String>;
}

/// A [`WitnessStore`] in a directory: one file per log, named by the
/// SHA-256 of its origin, replaced by write, fsync and rename.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: &Path) -> std::io::Result<FileStore> {
        fs::create_dir_all(dir)?;
        Ok(FileStore {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding a log's latest cosigned checkpoint (the monitoring
    /// endpoint `<origin hash>/checkpoint` serves it).
    pub fn path_for(&self, origin: &str) -> PathBuf {
        self.dir.join(origin_hash(origin))
    }
}

/// The lowercase hex SHA-256 of an origin, as tlog-witness names logs.
pub fn origin_hash(origin: &str) -> String {
    hex::encode(Sha256::digest(origin.as_bytes()))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl WitnessStore for FileStore {
    fn latest(&self, origin: &str) -> Result<Option<LogRecord>, String> {
        let path = self.path_for(origin);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let note = Note::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let checkpoint =
            Checkpoint::parse(note.text()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(LogRecord {
            checkpoint,
            note: note.to_string(),
        }))
    }

    fn store(&mut self, origin: &str, record: &LogRecord) -> Result<(), String> {
        let path = self.path_for(origin);
        write_atomic(&path, record.note.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A witness: its cosigning key, the logs it follows and their state.
pub struct Witness<S> {
    signer: Signer,
    logs: HashMap<String, Vec<Verifier>>,
    store: S,
}

impl<S: WitnessStore> Witness<S> {
    /// A witness cosigning with `signer` (a [`Algorithm::CosignatureV1`]
    /// key) for the logs whose keys are given; a log's origin is its key's
    /// name.
    ///
    /// # Panics
    ///
    /// If `signer` is not a cosignature/v1 key: a witness that signed with a
    /// plain note key would produce signatures no client counts.
    pub fn new(signer: Signer, logs: Vec<Verifier>, store: S) -> Witness<S> {
        assert_eq!(
            signer.algorithm(),
            Algorithm::CosignatureV1,
            "a witness cosigns with a cosignature/v1 key"
        );
        let mut map: HashMap<String, Vec<Verifier>> = HashMap::new();
        for v in logs {
            map.entry(v.name().to_owned()).or_default().push(v);
        }
        Witness {
            signer,
            logs: map,
            store,
        }
    }

    /// The witness's cosigning key.
    pub fn verifier(&self) -> Verifier {
        self.signer.verifier()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Handles an `add-checkpoint` body at time `now` (POSIX seconds).
    pub fn handle(&mut self, body: &[u8], now: u64) -> Response {
        match self.add_checkpoint(body, now) {
            Ok(sig) => Response {
                status: 200,
                content_type: "text/plain; charset=utf-8",
                body: sig.to_string().into_bytes(),
            },
            Err(r) => Response::from(&r),
        }
    }

    /// Checks an `add-checkpoint` request and, if it passes, records the
    /// checkpoint and returns the cosignature line.
    pub fn add_checkpoint(&mut self, body: &[u8], now: u64) -> Result<NoteSignature, Refusal> {
        let req = AddCheckpoint::parse(body)?;
        let mut note =
            Note::parse(&req.checkpoint).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let checkpoint =
            Checkpoint::parse(note.text()).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let keys = self
            .logs
            .get(&checkpoint.origin)
            .ok_or_else(|| Refusal::UnknownLog(checkpoint.origin.clone()))?;
        note.verify(keys).map_err(|e| match e {
            NoteError::BadSignature { .. } | NoteError::NoTrustedSignature => {
                Refusal::BadSignature(e)
            }
            other => Refusal::Malformed(other.to_string()),
        })?;
        if req.old_size > checkpoint.size {
            return Err(Refusal::Malformed(format!(
                "old size {} is larger than the checkpoint's size {}",
                req.old_size, checkpoint.size
            )));
        }
        let latest = self
            .store
            .latest(&checkpoint.origin)
            .map_err(Refusal::Storage)?;
        let latest_size = latest.as_ref().map_or(0, |r| r.checkpoint.size);
        if req.old_size != latest_size {
            return Err(Refusal::Conflict {
                latest: latest_size,
            });
        }
        if checkpoint.size == 0 && checkpoint.root != empty_root() {
            return Err(Refusal::BadProof(
                "a checkpoint of size 0 must carry the empty tree's root".into(),
            ));
        }
        match &latest {
            Some(old) if req.old_size > 0 => verify_consistency(
                old.checkpoint.size,
                checkpoint.size,
                &old.checkpoint.root,
                &checkpoint.root,
                &req.proof,
            )
            .map_err(|e| Refusal::BadProof(e.to_string()))?,
            _ => {
                if !req.proof.is_empty() {
                    return Err(Refusal::BadProof(
                        "a proof from size 0 must be empty".into(),
                    ));
                }
            }
        }
        let sig = self.signer.sign(note.text(), now);
        note.add_signature(sig.clone());
        let origin = checkpoint.origin.clone();
        self.store
            .store(
                &origin,
                &LogRecord {
                    checkpoint,
                    note: note.to_string(),
                },
            )
            .map_err(Refusal::Storage)?;
        Ok(sig)
    }
}

/// Reads the signature lines of a 200 answer to `add-checkpoint`.
pub fn parse_cosignatures(body: &[u8]) -> Option<Vec<NoteSignature>> {
    let text = std::str::from_utf8(body).ok()?;
    let text = text.strip_suffix('\n')?;
    text.split('\n').map(NoteSignature::parse_line).collect()
}

/// Reads the size in a 409 answer to `add-checkpoint`.
pub fn parse_conflict(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_suffix('\n')
        .and_then(parse_decimal)
}
