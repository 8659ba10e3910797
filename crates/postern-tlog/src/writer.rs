//! The log writer: takes entries, integrates them in batches, writes the
//! tiles and entry bundles into a directory laid out as C2SP
//! `tlog-tiles` serves it, and signs a checkpoint per batch.
//!
//! Files are immutable once written (a partial tile gets a new `.p/W`
//! name as it grows), so any static server, mirror or CDN can serve the
//! directory. The checkpoint is the only file replaced, always after the
//! tiles it commits to are on disk. The writer keeps every tree hash in
//! memory (64 bytes per entry) so proofs for witnesses cost no I/O; it
//! must be the only writer of its directory.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, OpenError, Policy};
use crate::merkle::{self, Frontier, Hash, MemoryTree, ProofError, leaf_hash};
use crate::note::{Algorithm, Note, NoteSignature, Signer};
use crate::proof::ProofBundle;
use crate::tile::{
    MAX_ENTRY_LEN, TILE_HEIGHT, TILE_WIDTH, Tile, TileError, TileKind, parse_entry_bundle,
    parse_hash_tile, push_entry,
};
use crate::witness::write_atomic;

/// The name of the checkpoint file in a log directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// What went wrong writing or reopening a log.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The signing key is not an Ed25519 note key.
    #[error("a log signs checkpoints with an Ed25519 (type 0x01) key")]
    WrongKeyType,
    /// An entry is larger than an entry bundle can hold.
    #[error("an entry of {0} bytes is longer than the 65535 bytes a log entry can hold")]
    EntryTooLarge(usize),
    /// The directory's checkpoint is not one this key signed.
    #[error("the log directory's checkpoint does not open with this key: {0}")]
    Checkpoint(#[from] OpenError),
    /// The directory's tiles are damaged or do not match its checkpoint.
    #[error("the log directory is damaged: {0}")]
    Corrupt(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WriterError + '_ {
    move |source| WriterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A transparency log being written to a directory.
pub struct LogWriter {
    dir: PathBuf,
    signer: Signer,
    tree: MemoryTree,
    /// Entries since the last full entry bundle, which the next partial
    /// or full bundle repeats.
    tail: Vec<Vec<u8>>,
    /// Appended, not yet integrated.
    pending: Vec<Vec<u8>>,
    checkpoint: Note,
    /// Whether each tile write is fsynced before the checkpoint moves on.
    sync: bool,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("dir", &self.dir)
            .field("origin", &self.signer.name())
            .field("size", &self.size())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl LogWriter {
    /// Opens the log in `dir`, or creates an empty one there. The log's
    /// origin is the signer's key name.
    ///
    /// Reopening reads the level-0 tiles back, recomputes the tree and
    /// checks it against the checkpoint, so a damaged directory is caught
    /// before anything is appended to it.
    pub fn open(dir: &Path, signer: Signer) -> Result<LogWriter, WriterError> {
        if signer.algorithm() != Algorithm::Ed25519 {
            return Err(WriterError::WrongKeyType);
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cp_path = dir.join(CHECKPOINT_FILE);
        let mut w = LogWriter {
            dir: dir.to_owned(),
            checkpoint: sign_checkpoint(&signer, 0, &MemoryTree::new()).1,
            signer,
            tree: MemoryTree::new(),
            tail: Vec::new(),
            pending: Vec::new(),
            sync: true,
        };
        match fs::read(&cp_path) {
            Ok(bytes) => {
                let opened = Policy::log_only(w.signer.verifier()).open(&bytes)?;
                w.reload(opened.checkpoint.size, opened.checkpoint.root)?;
                w.checkpoint = opened.note;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                w.sign_and_write(0)?;
            }
            Err(e) => return Err(io_err(&cp_path)(e)),
        }
        Ok(w)
    }

    /// Turns fsync of every tile on or off (on by default). Off is for
    /// tests and benchmarks on a disk whose durability does not matter.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn reload(&mut self, size: u64, root: Hash) -> Result<(), WriterError> {
        let full = size / TILE_WIDTH;
        let mut frontier = Frontier::new();
        for index in 0..=full {
            let Some(tile) = Tile::for_tree(TileKind::Hashes { level: 0 }, index, size) else {
                break;
            };
            let bytes = self.read_tile(&tile)?;
            for h in
                parse_hash_tile(&tile, &bytes).map_err(|e| WriterError::Corrupt(e.to_string()))?
            {
                self.tree.push(h);
                frontier.push(h);
            }
        }
        if frontier.root() != root {
            return Err(WriterError::Corrupt(
                "the level-0 tiles do not hash to the checkpoint's root".into(),
            ));
        }
        if let Some(tile) = Tile::for_tree(TileKind::Entries, full, size) {
            let bytes = self.read_tile(&tile)?;
            let entries = parse_entry_bundle(&bytes, tile.width)
                .map_err(|e| WriterError::Corrupt(e.to_string()))?;
            for (i, e) in entries.iter().enumerate() {
                if leaf_hash(e) != self.tree.level(0)[(full * TILE_WIDTH) as usize + i] {
                    return Err(WriterError::Corrupt(format!(
                        "entry {} does not match its leaf hash",
                        full * TILE_WIDTH + i as u64
                    )));
                }
            }
            self.tail = entries.into_iter().map(<[u8]>::to_vec).collect();
        }
        Ok(())
    }

    fn read_tile(&self, tile: &Tile) -> Result<Vec<u8>, WriterError> {
        let path = self.dir.join(tile.path());
        fs::read(&path).map_err(io_err(&path))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's origin (its key name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The number of entries in the latest checkpoint.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Entries appended and not yet published.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues an entry for the next [`publish`](Self::publish) and returns
    /// the index it will have. It is not in the log (nor on disk) until
    /// that call returns.
    pub fn append(&mut self, entry: Vec<u8>) -> Result<u64, WriterError> {
        if entry.len() > MAX_ENTRY_LEN {
            return Err(WriterError::EntryTooLarge(entry.len()));
        }
        self.pending.push(entry);
        Ok(self.tree.size() + self.pending.len() as u64 - 1)
    }

    /// Integrates the queued entries: writes the new tiles and bundles,
    /// fsyncs them, then signs and replaces the checkpoint. Returns the new
    /// checkpoint. After an error the in-memory tree is ahead of the
    /// directory: drop the writer and reopen it.
    pub fn publish(&mut self) -> Result<Checkpoint, WriterError> {
        let old = self.tree.size();
        let base = old / TILE_WIDTH * TILE_WIDTH;
        let mut entries = std::mem::take(&mut self.tail);
        for e in &self.pending {
            self.tree.push(leaf_hash(e));
        }
        entries.append(&mut self.pending);
        let size = self.tree.size();
        let mut dirs = BTreeSet::new();
        let mut written = Vec::new();
        for tile in Tile::new_in(old, size) {
            let bytes = match tile.kind {
                TileKind::Hashes { level } => {
                    let row = self.tree.level(TILE_HEIGHT * level);
                    let start = (tile.index * TILE_WIDTH) as usize;
                    let mut out = Vec::with_capacity(usize::from(tile.width) * 32);
                    for h in &row[start..start + usize::from(tile.width)] {
                        out.extend_from_slice(&h.0);
                    }
                    out
                }
                TileKind::Entries => {
                    let start = (tile.index * TILE_WIDTH - base) as usize;
                    let mut out = Vec::new();
                    for e in &entries[start..start + usize::from(tile.width)] {
                        push_entry(&mut out, e)
                            .map_err(|e: TileError| WriterError::Corrupt(e.to_string()))?;
                    }
                    out
                }
            };
            let path = self.dir.join(tile.path());
            if let Some(parent) = path.parent() {
                dirs.insert(parent.to_owned());
            }
            written.push((path.clone(), self.write_tile(&path, &bytes)?));
        }
        if self.sync {
            let dirs = dirs
                .into_iter()
                .map(|d| {
                    fs::File::open(&d)
                        .map(|f| (d.clone(), f))
                        .map_err(io_err(&d))
                })
                .collect::<Result<Vec<_>, _>>()?;
            sync_all(written)?;
            sync_all(dirs)?;
        }
        let keep = (size / TILE_WIDTH * TILE_WIDTH - base) as usize;
        self.tail = entries.split_off(keep.min(entries.len()));
        self.sign_and_write(size)
    }

    /// Writes a tile under a temporary name and renames it into place.
    /// Returns the open file for the caller to fsync with the others.
    fn write_tile(&self, path: &Path, bytes: &[u8]) -> Result<fs::File, WriterError> {
        let dir = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // A tile left by a run that crashed before its checkpoint is not
        // referenced by any checkpoint; publishing rewrites every tile the
        // last checkpoint does not cover, so it is replaced here.
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(f)
    }

    fn sign_and_write(&mut self, size: u64) -> Result<Checkpoint, WriterError> {
        let (checkpoint, note) = sign_checkpoint(&self.signer, size, &self.tree);
        let path = self.dir.join(CHECKPOINT_FILE);
        write_atomic(&path, note.to_string().as_bytes()).map_err(io_err(&path))?;
        self.checkpoint = note;
        Ok(checkpoint)
    }

    /// The latest checkpoint note, with any cosignatures added so far.
    pub fn checkpoint(&self) -> &Note {
        &self.checkpoint
    }

    /// Adds witness cosignatures to the latest checkpoint and rewrites it.
    /// Signature lines for another key replace nothing; the caller should
    /// have verified them (see [`crate::http::WitnessClient`]).
    pub fn add_cosignatures(&mut self, sigs: Vec<NoteSignature>) -> Result<(), WriterError> {
        for s in sigs {
            self.checkpoint.add_signature(s);
        }
        let path = self.dir.join(CHECKPOINT_FILE);
        write_atomic(&path, self.checkpoint.to_string().as_bytes()).map_err(io_err(&path))
    }

    /// The root hash at an earlier (or the current) size.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        (size <= self.size()).then(|| self.tree.root_at(size))
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        merkle::inclusion_proof(&self.tree, index, size).expect("size checked")
    }

    /// The consistency proof between two sizes, as a witness needs it.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new)?;
        merkle::consistency_proof(&self.tree, old, new).expect("size checked")
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::IndexOutOfRange {
                index: size,
                size: self.size() + 1,
            });
        }
        Ok(())
    }

    /// An offline proof (`c2sp.org/tlog-proof@v1`) that entry `index` is in
    /// the latest checkpoint, with the cosignatures it carries.
    pub fn proof_bundle(
        &self,
        index: u64,
        extra: Option<Vec<u8>>,
    ) -> Result<ProofBundle, ProofError> {
        let size = self.size();
        Ok(ProofBundle {
            extra,
            index,
            proof: self.inclusion_proof(index, size)?,
            checkpoint: self.checkpoint.to_string(),
        })
    }
}

/// The checkpoint of `tree` at `size`, and its note signed by `signer`.
fn sign_checkpoint(signer: &Signer, size: u64, tree: &MemoryTree) -> (Checkpoint, Note) {
    let checkpoint = Checkpoint {
        origin: signer.name().to_owned(),
        size,
        root: tree.root_at(size),
        extensions: Vec::new(),
    };
    let mut note = Note::new(&checkpoint.to_string()).expect("a checkpoint is valid note text");
    note.sign(signer, 0);
    (checkpoint, note)
}

/// Fsyncs files on a few threads at once: a batch writes tens to
/// hundreds of small files, and one fsync after another would make the
/// disk's latency, not its throughput, the bound.
fn sync_all(files: Vec<(PathBuf, fs::File)>) -> Result<(), WriterError> {
    const THREADS: usize = 16;
    if files.is_empty() {
        return Ok(());
    }
    let per = files.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    for (path, f) in chunk {
                        f.sync_all().map_err(io_err(path))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_seed("example.org/log", Algorithm::Ed25519, [9; 32]).unwrap()
    }

    #[test]
    fn reopening_finds_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), signer()).unwrap();
        w.set_sync(false);
        let mut reference = MemoryTree::new();
        for batch in [1usize, 254, 1, 300, 0, 70] {
            for _ in 0..batch {
                let e = format!("entry {}", reference.size()).into_bytes();
                reference.push(leaf_hash(&e));
                w.append(e).unwrap();
            }
            let cp = w.publish().unwrap();
            assert_eq!(cp.root, reference.root_at(reference.size()));
            let again = LogWriter::open(dir.path(), signer()).unwrap();
            assert_eq!(again.size(), w.size());
            assert_eq!(again.tail, w.tail);
        }
        assert_eq!(w.size(), 626);
        // The tail bundle is partial: 626 = 2 * 256 + 114.
        assert!(dir.path().join("tile/entries/002.p/114").exists());
        assert!(dir.path().join("tile/0/001").exists());
        assert!(dir.path().join("tile/1/000.p/2").exists());
    }

    #[test]
    fn a_damaged_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), signer()).unwrap();
        w.set_sync(false);
        for i in 0..10u8 {
            w.append(vec![i]).unwrap();
        }
        w.publish().unwrap();
        let other = Signer::from_seed("example.org/log", Algorithm::Ed25519, [8; 32]).unwrap();
        assert!(matches!(
            LogWriter::open(dir.path(), other),
            Err(WriterError::Checkpoint(_))
        ));
        fs::write(dir.path().join("tile/0/000.p/10"), [0u8; 320]).unwrap();
        assert!(matches!(
            LogWriter::open(dir.path(), signer()),
            Err(WriterError::Corrupt(_))
        ));
        fs::write(dir.path().join("tile/0/000.p/10"), [0u8; 31]).unwrap();
        assert!(matches!(
            LogWriter::open(dir.path(), signer()),
            Err(WriterError::Corrupt(_))
        ));
    }
}
