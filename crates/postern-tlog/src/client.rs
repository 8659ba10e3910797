//! The verifier: fetches a log's checkpoint, entries and tiles through a
//! [`Fetch`] (HTTP, a directory, anything), checks the signatures and the
//! witness quorum, recomputes the root from the entries, proves
//! consistency with the state saved by the previous run, and reports a
//! fork with the two signed checkpoints that prove it.
//!
//! The state a monitor keeps between runs is its last verified checkpoint
//! and that tree's right edge ([`Frontier`], at most 64 hashes), so each
//! run downloads only the entries added since.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use crate::checkpoint::{Checkpoint, OpenError, Policy};
use crate::merkle::{
    self, Frontier, Hash, ProofError, leaf_hash, verify_consistency, verify_inclusion,
};
use crate::note::Note;
use crate::proof::ProofBundle;
use crate::tile::{
    NeedTile, TILE_WIDTH, Tile, TileError, TileHashes, TileKind, parse_entry_bundle,
};

/// Why a resource could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The log does not have it (HTTP 404, no such file).
    #[error("{0}: not found")]
    NotFound(String),
    /// Anything else: network, I/O, another status.
    #[error("{path}: {reason}")]
    Failed {
        /// The path below the log's prefix.
        path: String,
        /// What happened.
        reason: String,
    },
}

/// Reads a log's resources by their path below its prefix (`checkpoint`,
/// `tile/0/000`, …).
pub trait Fetch {
    /// The bytes at `path`.
    fn fetch(&self, path: &str) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

/// A log read from a directory, as [`crate::LogWriter`] writes it.
#[derive(Clone, Debug)]
pub struct DirFetch(pub PathBuf);

impl Fetch for DirFetch {
    fn fetch(&self, path: &str) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        let result = if path.split('/').any(|p| p == ".." || p.is_empty()) {
            Err(FetchError::NotFound(path.to_owned()))
        } else {
            std::fs::read(self.0.join(path)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FetchError::NotFound(path.to_owned()),
                _ => FetchError::Failed {
                    path: path.to_owned(),
                    reason: e.to_string(),
                },
            })
        };
        std::future::ready(result)
    }
}

/// Evidence that a log showed two histories that cannot both be true.
/// Both checkpoints are signed by the log: together they are proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// What kind of fork.
    pub kind: ForkKind,
    /// The checkpoint seen before, signed.
    pub previous: String,
    /// The checkpoint seen now, signed.
    pub current: String,
}

/// How two checkpoints contradict each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkKind {
    /// The log is smaller than it was.
    Shrunk,
    /// Same size, different root hash.
    SameSizeDifferentRoot,
    /// The entries the log serves now do not reproduce the root it
    /// signed before: its history was rewritten.
    Rewritten,
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ForkKind::Shrunk => "the log is smaller than when it was last checked",
            ForkKind::SameSizeDifferentRoot => {
                "the log signed two different trees of the same size"
            }
            ForkKind::Rewritten => {
                "the log's current entries do not contain the tree it signed before"
            }
        };
        write!(
            f,
            "FORK: {what}.\nPrevious checkpoint:\n{}\nCurrent checkpoint:\n{}",
            self.previous, self.current
        )
    }
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A resource could not be fetched.
    #[error("fetching from the log: {0}")]
    Fetch(#[from] FetchError),
    /// The checkpoint's signatures or quorum failed.
    #[error("the checkpoint was not accepted: {0}")]
    Checkpoint(#[from] OpenError),
    /// The log forked.
    #[error("{0}")]
    Fork(Box<Fork>),
    /// The entries served do not hash to the signed root.
    #[error(
        "the log's entries hash to {computed}, not to the root {signed} it signed for size {size}"
    )]
    EntriesDoNotMatch {
        /// The checkpoint's size.
        size: u64,
        /// The root computed from the entries.
        computed: Hash,
        /// The root in the checkpoint.
        signed: Hash,
    },
    /// A tile or entry bundle is malformed.
    #[error("a tile from the log is malformed: {0}")]
    Tile(#[from] TileError),
    /// The hash tiles do not give the signed root or a valid proof.
    #[error("the log's hash tiles are wrong: {0}")]
    Tiles(String),
    /// The saved state is unreadable or for another log.
    #[error("the saved state: {0}")]
    State(String),
}

/// What a monitor keeps between runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorState {
    /// The last verified checkpoint note, signatures included.
    pub checkpoint: String,
    /// The right edge of that tree.
    pub frontier: Frontier,
}

const STATE_HEADER: &str = "postern-tlog-monitor-state v1";

impl MonitorState {
    /// The checkpoint, parsed.
    pub fn parsed(&self) -> Result<Checkpoint, VerifyError> {
        let note = Note::parse(self.checkpoint.as_bytes())
            .map_err(|e| VerifyError::State(e.to_string()))?;
        Checkpoint::parse(note.text()).map_err(|e| VerifyError::State(e.to_string()))
    }

    /// Parses a state file, checking that the frontier gives the
    /// checkpoint's root.
    pub fn parse(text: &str) -> Result<MonitorState, VerifyError> {
        let bad = |m: &str| VerifyError::State(m.to_owned());
        let rest = text
            .strip_prefix(STATE_HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| bad("not a postern-tlog monitor state file"))?;
        let (head, checkpoint) = rest
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let size = lines
            .next()
            .and_then(|l| l.strip_prefix("size "))
            .and_then(crate::checkpoint::parse_decimal)
            .ok_or_else(|| bad("no size line"))?;
        let hashes = lines
            .map(|l| Hash::from_base64(l).ok_or_else(|| bad("a frontier line is not a hash")))
            .collect::<Result<Vec<_>, _>>()?;
        let frontier = Frontier::from_parts(size, hashes)
            .ok_or_else(|| bad("the frontier does not match the size"))?;
        let state = MonitorState {
            checkpoint: checkpoint.to_owned(),
            frontier,
        };
        let cp = state.parsed()?;
        if cp.size != size || cp.root != state.frontier.root() {
            return Err(bad("the frontier does not give the checkpoint's root"));
        }
        Ok(state)
    }
}

impl MonitorState {
    /// Reads a state file; `Ok(None)` if it does not exist yet.
    pub fn load(path: &std::path::Path) -> Result<Option<MonitorState>, VerifyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => MonitorState::parse(&text)
                .map(Some)
                .map_err(|e| VerifyError::State(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VerifyError::State(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the state file atomically (write, fsync, rename).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::witness::write_atomic(path, self.to_string().as_bytes())
    }
}

impl fmt::Display for MonitorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{STATE_HEADER}\nsize {}", self.frontier.size())?;
        for h in self.frontier.hashes() {
            writeln!(f, "{h}")?;
        }
        writeln!(f)?;
        f.write_str(&self.checkpoint)
    }
}

/// The outcome of a successful verification.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The checkpoint now verified.
    pub checkpoint: Checkpoint,
    /// The size at the previous run, if there was one.
    pub previous_size: Option<u64>,
    /// Entries downloaded and hashed in this run.
    pub new_entries: u64,
    /// The witnesses whose cosignatures verified.
    pub cosigners: Vec<String>,
    /// The state to save for the next run.
    pub state: MonitorState,
}

/// Fetches a tile or bundle; a partial one that is gone may have been
/// replaced by its full tile, which the spec lets a log delete it for.
async fn fetch_tile<F: Fetch>(fetch: &F, tile: Tile) -> Result<(Tile, Vec<u8>), VerifyError> {
    match fetch.fetch(&tile.path()).await {
        Ok(bytes) => Ok((tile, bytes)),
        Err(FetchError::NotFound(path)) if !tile.is_full() => {
            let full = Tile {
                width: TILE_WIDTH as u16,
                ..tile
            };
            match fetch.fetch(&full.path()).await {
                Ok(bytes) => Ok((full, bytes)),
                Err(_) => Err(FetchError::NotFound(path).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Calls `f` on every entry in `[from, to)`, reading entry bundles.
async fn for_each_entry<F: Fetch>(
    fetch: &F,
    from: u64,
    to: u64,
    mut f: impl FnMut(&[u8]),
) -> Result<(), VerifyError> {
    if from >= to {
        return Ok(());
    }
    for index in from / TILE_WIDTH..=(to - 1) / TILE_WIDTH {
        let tile = Tile::for_tree(TileKind::Entries, index, to).expect("index below size");
        let (tile, bytes) = fetch_tile(fetch, tile).await?;
        let entries = parse_entry_bundle(&bytes, tile.width)?;
        let skip = from.saturating_sub(index * TILE_WIDTH) as usize;
        let end = (to - index * TILE_WIDTH).min(TILE_WIDTH) as usize;
        for e in entries.into_iter().take(end).skip(skip) {
            f(e);
        }
    }
    Ok(())
}

/// Runs `f` against the hash tiles of the tree of `size`, fetching each
/// tile it asks for, until it succeeds.
async fn with_tiles<F: Fetch, T>(
    fetch: &F,
    size: u64,
    f: impl Fn(&TileHashes) -> Result<T, NeedTile>,
) -> Result<T, VerifyError> {
    let mut cache = TileHashes::new(size);
    let mut fetched = HashSet::new();
    loop {
        match f(&cache) {
            Ok(v) => return Ok(v),
            Err(NeedTile(tile)) => {
                if !fetched.insert(tile) {
                    return Err(VerifyError::Tiles(format!(
                        "tile {} does not hold the hashes it should",
                        tile.path()
                    )));
                }
                let (tile, bytes) = fetch_tile(fetch, tile).await?;
                cache.insert(&tile, &bytes)?;
            }
        }
    }
}

/// The inclusion proof of entry `index` in the tree of `size`, from tiles.
pub async fn inclusion_proof<F: Fetch>(
    fetch: &F,
    index: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofError>, VerifyError> {
    with_tiles(fetch, size, |t| merkle::inclusion_proof(t, index, size)).await
}

/// The consistency proof from `old` to `new`, from the tiles of `new`.
pub async fn consistency_proof<F: Fetch>(
    fetch: &F,
    old: u64,
    new: u64,
) -> Result<Result<Vec<Hash>, ProofError>, VerifyError> {
    with_tiles(fetch, new, |t| merkle::consistency_proof(t, old, new)).await
}

/// Verifies the log behind `fetch` against `policy`, continuing from
/// `state` (the previous run's) if given. See the module docs.
pub async fn verify<F: Fetch>(
    fetch: &F,
    policy: &Policy,
    state: Option<&MonitorState>,
) -> Result<Verdict, VerifyError> {
    verify_with(fetch, policy, state, |_, _| {}).await
}

/// [`verify`], also handing each new entry, with its index, to `inspect`
/// (to decode and audit them; see [`crate::entry::Tally`]). Entries are
/// passed before the root is checked: act on them only if this succeeds.
pub async fn verify_with<F: Fetch>(
    fetch: &F,
    policy: &Policy,
    state: Option<&MonitorState>,
    mut inspect: impl FnMut(u64, &[u8]),
) -> Result<Verdict, VerifyError> {
    let bytes = fetch.fetch("checkpoint").await?;
    let opened = policy.open(&bytes)?;
    let new = opened.checkpoint.clone();
    let current_note = opened.note.to_string();
    let previous = state.map(|s| s.parsed().map(|c| (c, s))).transpose()?;
    let mut frontier = Frontier::new();
    if let Some((prev, s)) = &previous {
        if prev.origin != new.origin {
            return Err(VerifyError::State(format!(
                "it is for the log {:?}, not {:?}",
                prev.origin, new.origin
            )));
        }
        let fork = |kind| {
            VerifyError::Fork(Box::new(Fork {
                kind,
                previous: s.checkpoint.clone(),
                current: current_note.clone(),
            }))
        };
        if new.size < prev.size {
            return Err(fork(ForkKind::Shrunk));
        }
        if new.size == prev.size && new.root != prev.root {
            return Err(fork(ForkKind::SameSizeDifferentRoot));
        }
        frontier = s.frontier.clone();
    }
    let from = frontier.size();
    let mut index = from;
    for_each_entry(fetch, from, new.size, |e| {
        frontier.push(leaf_hash(e));
        inspect(index, e);
        index += 1;
    })
    .await?;
    if frontier.root() != new.root {
        if let Some((_, s)) = &previous {
            // Either the new entries are wrong, or the old ones changed.
            let mut full = Frontier::new();
            for_each_entry(fetch, 0, new.size, |e| full.push(leaf_hash(e))).await?;
            if full.root() == new.root {
                return Err(VerifyError::Fork(Box::new(Fork {
                    kind: ForkKind::Rewritten,
                    previous: s.checkpoint.clone(),
                    current: current_note,
                })));
            }
        }
        return Err(VerifyError::EntriesDoNotMatch {
            size: new.size,
            computed: frontier.root(),
            signed: new.root,
        });
    }
    // The entries are right; clients read proofs from the hash tiles, so
    // check those give the same tree too.
    let size = new.size;
    let tile_root = with_tiles(fetch, size, |t| merkle::tree_hash(t, size)).await?;
    if tile_root != new.root {
        return Err(VerifyError::Tiles(format!(
            "they hash to {tile_root}, not the signed root {}",
            new.root
        )));
    }
    if let Some((prev, _)) = &previous
        && prev.size > 0
        && prev.size < size
    {
        let proof = consistency_proof(fetch, prev.size, size)
            .await?
            .map_err(|e| VerifyError::Tiles(e.to_string()))?;
        verify_consistency(prev.size, size, &prev.root, &new.root, &proof)
            .map_err(|e| VerifyError::Tiles(format!("consistency proof: {e}")))?;
    }
    Ok(Verdict {
        previous_size: previous.as_ref().map(|(p, _)| p.size),
        new_entries: size - from,
        cosigners: opened
            .cosignatures
            .iter()
            .map(|c| c.verifier.name().to_owned())
            .collect(),
        checkpoint: new,
        state: MonitorState {
            checkpoint: current_note,
            frontier,
        },
    })
}

/// Builds an offline proof that entry `index` is in the log's current
/// checkpoint, checking it before returning it.
pub async fn prove_inclusion<F: Fetch>(
    fetch: &F,
    policy: &Policy,
    index: u64,
    entry: &[u8],
    extra: Option<Vec<u8>>,
) -> Result<ProofBundle, VerifyError> {
    let bytes = fetch.fetch("checkpoint").await?;
    let opened = policy.open(&bytes)?;
    let size = opened.checkpoint.size;
    let proof = inclusion_proof(fetch, index, size)
        .await?
        .map_err(|e| VerifyError::Tiles(e.to_string()))?;
    verify_inclusion(
        index,
        size,
        &leaf_hash(entry),
        &proof,
        &opened.checkpoint.root,
    )
    .map_err(|e| VerifyError::Tiles(format!("inclusion proof: {e}")))?;
    Ok(ProofBundle {
        extra,
        index,
        proof,
        checkpoint: opened.note.to_string(),
    })
}
