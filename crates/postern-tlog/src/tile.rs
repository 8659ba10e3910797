//! C2SP tiles (`c2sp.org/tlog-tiles`): tile paths, hash tiles, entry
//! bundles, and [`TileHashes`], which reads proofs and roots out of tiles.
//!
//! A tile is 256 hashes wide and 8 tree levels high: the hashes of tile
//! level `L` are the tree's hashes at level `8 L`. The rightmost tiles of a
//! tree are partial (`.p/W`, 1 ≤ W ≤ 255). Paths follow C2SP, not the Go
//! checksum database: the index is split into 3-digit groups, all but the
//! last prefixed with `x` (`x001/x234/067`).
//!
//! Everything here parses bytes from the network: lengths are checked
//! before use and nothing panics on bad input.

use std::collections::HashMap;

use crate::merkle::{Hash, HashReader, node_hash};

/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels covered by one tile level.
pub const TILE_HEIGHT: u8 = 8;
/// The longest entry an entry bundle can hold (uint16 length prefix).
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// What a tile holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// Tree hashes at tree level `8 * level`.
    Hashes {
        /// The tile level, 0 to 63.
        level: u8,
    },
    /// An entry bundle: the entries under the level-0 tile of the same index.
    Entries,
}

/// One tile or entry bundle of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Hashes or entries.
    pub kind: TileKind,
    /// The tile's index within its level.
    pub index: u64,
    /// How many hashes or entries it holds, 1 to 256 (256: full).
    pub width: u16,
}

/// What was wrong with a tile, a tile path or an entry bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// The path is not a C2SP tile path.
    #[error("{0:?} is not a tile path")]
    BadPath(String),
    /// A hash tile of the wrong length for its width.
    #[error("hash tile {path} is {got} bytes; width {width} needs {expected}")]
    WrongLength {
        /// The tile's path.
        path: String,
        /// Its width.
        width: u16,
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// An entry bundle ended inside an entry, or held fewer entries than
    /// its width.
    #[error("entry bundle is truncated: {got} of {width} entries")]
    TruncatedBundle {
        /// Entries expected.
        width: u16,
        /// Complete entries found.
        got: usize,
    },
    /// An entry bundle held bytes after its last entry.
    #[error("entry bundle has {0} bytes after its last entry")]
    TrailingBytes(usize),
    /// An entry is longer than a bundle can encode.
    #[error("an entry of {0} bytes is longer than the 65535 an entry bundle can hold")]
    EntryTooLarge(usize),
}

fn encode_index(mut n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    n /= 1000;
    while n > 0 {
        s = format!("x{:03}/{s}", n % 1000);
        n /= 1000;
    }
    s
}

fn parse_index(elements: &[&str]) -> Option<u64> {
    let (last, rest) = elements.split_last()?;
    let mut n: u64 = 0;
    for (i, e) in rest
        .iter()
        .map(|e| e.strip_prefix('x'))
        .chain([Some(*last)])
        .enumerate()
    {
        let e = e?;
        if e.len() != 3 || !e.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // A leading group of zeros would give one index two paths.
        if i == 0 && !rest.is_empty() && e == "000" {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(e.parse::<u64>().ok()?)?;
    }
    Some(n)
}

impl Tile {
    /// Whether this is a full (256-wide) tile.
    pub fn is_full(&self) -> bool {
        u64::from(self.width) == TILE_WIDTH
    }

    /// The path below the log's prefix, e.g. `tile/0/x001/234.p/7`.
    pub fn path(&self) -> String {
        let kind = match self.kind {
            TileKind::Hashes { level } => level.to_string(),
            TileKind::Entries => "entries".to_owned(),
        };
        let mut p = format!("tile/{kind}/{}", encode_index(self.index));
        if !self.is_full() {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path below the log's prefix.
    pub fn parse_path(path: &str) -> Result<Tile, TileError> {
        let bad = || TileError::BadPath(path.chars().take(100).collect());
        let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
        let (rest, width) = match rest.split_once(".p/") {
            Some((r, w)) => {
                let w = crate::checkpoint::parse_decimal(w)
                    .filter(|w| (1..TILE_WIDTH).contains(w))
                    .ok_or_else(bad)?;
                (r, w as u16)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let mut elements: Vec<&str> = rest.split('/').collect();
        if elements.len() < 2 || elements.len() > 8 {
            return Err(bad());
        }
        let kind = match elements.remove(0) {
            "entries" => TileKind::Entries,
            l => {
                let level = crate::checkpoint::parse_decimal(l)
                    .filter(|l| *l <= 63)
                    .ok_or_else(bad)?;
                TileKind::Hashes { level: level as u8 }
            }
        };
        let index = parse_index(&elements).ok_or_else(bad)?;
        Ok(Tile { kind, index, width })
    }

    /// The hash tile of `level` and `index` in the tree of `size` leaves:
    /// full, or as wide as that tree makes it. `None` if the tree has no
    /// hashes there.
    pub fn for_tree(kind: TileKind, index: u64, size: u64) -> Option<Tile> {
        let level = match kind {
            TileKind::Hashes { level } => level,
            TileKind::Entries => 0,
        };
        let hashes = size
            .checked_shr(u32::from(TILE_HEIGHT) * u32::from(level))
            .unwrap_or(0);
        let start = index.checked_mul(TILE_WIDTH)?;
        let width = hashes.checked_sub(start)?.min(TILE_WIDTH);
        (width > 0).then_some(Tile {
            kind,
            index,
            width: width as u16,
        })
    }

    /// Every tile and entry bundle of the tree of `size` leaves whose
    /// contents `old_size` did not already fix: the new full tiles and the
    /// partial tiles at `size`.
    pub fn new_in(old_size: u64, size: u64) -> Vec<Tile> {
        let mut out = Vec::new();
        for level in 0..64u8 {
            let shift = u32::from(TILE_HEIGHT) * u32::from(level);
            let hashes = size.checked_shr(shift).unwrap_or(0);
            if hashes == 0 {
                break;
            }
            let old_hashes = old_size.checked_shr(shift).unwrap_or(0);
            // The first tile that changed: the one the old tree was filling.
            let first = old_hashes / TILE_WIDTH;
            let last = (hashes - 1) / TILE_WIDTH;
            for index in first..=last {
                for kind in [TileKind::Hashes { level }, TileKind::Entries] {
                    if kind == TileKind::Entries && level > 0 {
                        continue;
                    }
                    if let Some(t) = Tile::for_tree(kind, index, size) {
                        let old = Tile::for_tree(kind, index, old_size);
                        if old != Some(t) {
                            out.push(t);
                        }
                    }
                }
            }
        }
        out
    }
}

/// Parses a hash tile of `tile.width` hashes.
pub fn parse_hash_tile(tile: &Tile, bytes: &[u8]) -> Result<Vec<Hash>, TileError> {
    let expected = usize::from(tile.width) * 32;
    if bytes.len() != expected {
        return Err(TileError::WrongLength {
            path: tile.path(),
            width: tile.width,
            expected,
            got: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| Hash::from_slice(c).expect("32-byte chunk"))
        .collect())
}

/// Parses an entry bundle holding exactly `width` entries.
pub fn parse_entry_bundle(bytes: &[u8], width: u16) -> Result<Vec<&[u8]>, TileError> {
    let mut out = Vec::with_capacity(usize::from(width));
    let mut rest = bytes;
    while out.len() < usize::from(width) {
        let truncated = TileError::TruncatedBundle {
            width,
            got: out.len(),
        };
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err(truncated);
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return Err(truncated);
        }
        let (entry, tail) = tail.split_at(len);
        out.push(entry);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(TileError::TrailingBytes(rest.len()));
    }
    Ok(out)
}

/// Appends one entry, length-prefixed, to an entry bundle.
pub fn push_entry(bundle: &mut Vec<u8>, entry: &[u8]) -> Result<(), TileError> {
    let len = u16::try_from(entry.len()).map_err(|_| TileError::EntryTooLarge(entry.len()))?;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
    Ok(())
}

/// A tile that [`TileHashes`] needs and does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tile {} is needed", .0.path())]
pub struct NeedTile(pub Tile);

/// The hash tiles of one tree, as far as they have been fetched: a
/// [`HashReader`] that answers from them or names the tile it lacks, so a
/// caller can fetch it and try again (every proof needs a handful).
#[derive(Clone, Debug)]
pub struct TileHashes {
    size: u64,
    tiles: HashMap<(u8, u64), Vec<Hash>>,
}

impl TileHashes {
    /// An empty cache for the tree of `size` leaves.
    pub fn new(size: u64) -> TileHashes {
        TileHashes {
            size,
            tiles: HashMap::new(),
        }
    }

    /// The tree size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds a fetched hash tile after checking its length. A wider tile
    /// than needed is fine (a full tile answers for a partial one).
    pub fn insert(&mut self, tile: &Tile, bytes: &[u8]) -> Result<(), TileError> {
        let TileKind::Hashes { level } = tile.kind else {
            return Err(TileError::BadPath(tile.path()));
        };
        let hashes = parse_hash_tile(tile, bytes)?;
        let slot = self.tiles.entry((level, tile.index)).or_default();
        if hashes.len() > slot.len() {
            *slot = hashes;
        }
        Ok(())
    }
}

impl HashReader for TileHashes {
    type Error = NeedTile;

    fn node(&self, level: u8, index: u64) -> Result<Hash, NeedTile> {
        let tile_level = level / TILE_HEIGHT;
        let height = level % TILE_HEIGHT;
        let count = 1u64 << height;
        let first = index << height;
        let tile_index = first / TILE_WIDTH;
        let pos = (first % TILE_WIDTH) as usize;
        let need = || {
            let kind = TileKind::Hashes { level: tile_level };
            NeedTile(Tile::for_tree(kind, tile_index, self.size).unwrap_or(Tile {
                kind,
                index: tile_index,
                width: TILE_WIDTH as u16,
            }))
        };
        let hashes = self.tiles.get(&(tile_level, tile_index)).ok_or_else(need)?;
        let Some(row) = hashes.get(pos..pos + count as usize) else {
            return Err(need());
        };
        let mut row = row.to_vec();
        while row.len() > 1 {
            row = row
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
        }
        Ok(row[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_c2sp() {
        let t = |kind, index, width| Tile { kind, index, width };
        let h0 = TileKind::Hashes { level: 0 };
        for (tile, path) in [
            (t(h0, 1234067, 256), "tile/0/x001/x234/067"),
            (t(h0, 0, 256), "tile/0/000"),
            (t(TileKind::Hashes { level: 3 }, 5, 7), "tile/3/005.p/7"),
            (t(TileKind::Entries, 1000, 1), "tile/entries/x001/000.p/1"),
            (
                t(TileKind::Entries, u64::MAX, 256),
                "tile/entries/x018/x446/x744/x073/x709/x551/615",
            ),
        ] {
            assert_eq!(tile.path(), path);
            assert_eq!(Tile::parse_path(path), Ok(tile), "{path}");
        }
        for bad in [
            "tile/0/1",
            "tile/0/0001",
            "tile/0/x000/001",
            "tile/0/001/002",
            "tile/64/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/07",
            "tile/00/001",
            "tile/entries",
            "tile/0/x999/x999/x999/x999/x999/x999/x999/999",
            "tiles/0/001",
            "tile/0/x001/",
        ] {
            assert!(Tile::parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_spec_example_of_a_tree_of_70000() {
        let tiles = Tile::new_in(0, 70_000);
        let count = |f: &dyn Fn(&Tile) -> bool| tiles.iter().filter(|t| f(t)).count();
        let level = |l| TileKind::Hashes { level: l };
        assert_eq!(count(&|t| t.kind == level(0) && t.is_full()), 273);
        assert!(tiles.contains(&Tile {
            kind: level(0),
            index: 273,
            width: 112
        }));
        assert_eq!(count(&|t| t.kind == level(1) && t.is_full()), 1);
        assert!(tiles.contains(&Tile {
            kind: level(1),
            index: 1,
            width: 17
        }));
        assert!(tiles.contains(&Tile {
            kind: level(2),
            index: 0,
            width: 1
        }));
        assert_eq!(count(&|t| t.kind == TileKind::Entries), 274);
        assert_eq!(tiles.len(), 274 + 2 + 1 + 274);
        // Growing by one entry only touches the partial tiles.
        let more = Tile::new_in(70_000, 70_001);
        assert!(more.iter().all(|t| !t.is_full()), "{more:?}");
        assert_eq!(more.len(), 2);
    }

    #[test]
    fn bundles_round_trip_and_reject_bad_lengths() {
        let mut b = Vec::new();
        for e in [&b""[..], b"a", b"hello"] {
            push_entry(&mut b, e).unwrap();
        }
        assert_eq!(
            parse_entry_bundle(&b, 3).unwrap(),
            vec![&b""[..], b"a", b"hello"]
        );
        assert_eq!(
            parse_entry_bundle(&b[..b.len() - 1], 3),
            Err(TileError::TruncatedBundle { width: 3, got: 2 })
        );
        assert_eq!(parse_entry_bundle(&b, 2), Err(TileError::TrailingBytes(7)));
        assert_eq!(
            parse_entry_bundle(&b, 4),
            Err(TileError::TruncatedBundle { width: 4, got: 3 })
        );
        assert_eq!(
            push_entry(&mut b, &vec![0; 70_000]),
            Err(TileError::EntryTooLarge(70_000))
        );
        let t = Tile {
            kind: TileKind::Hashes { level: 0 },
            index: 0,
            width: 2,
        };
        assert!(matches!(
            parse_hash_tile(&t, &[0; 63]),
            Err(TileError::WrongLength { .. })
        ));
        assert_eq!(parse_hash_tile(&t, &[0; 64]).unwrap().len(), 2);
    }
}
