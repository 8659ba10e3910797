//! RFC 6962 / RFC 9162 Merkle trees: leaf and node hashing, tree hashes of
//! any size, and inclusion and consistency proofs, generated and verified.
//!
//! Proof generation reads complete-subtree hashes through [`HashReader`], so
//! the same code serves a log held in memory ([`MemoryTree`]), tiles read
//! from disk and tiles fetched over HTTP. Verification needs no reader.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// A SHA-256 Merkle tree hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash from exactly 32 bytes, or `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; 32]>::try_from(bytes).ok().map(Hash)
    }

    /// The hash from standard base64 (as checkpoints and proofs write it).
    pub fn from_base64(text: &str) -> Option<Hash> {
        // 32 bytes encode to exactly 44 characters; checking first keeps a
        // long line from being decoded just to be thrown away.
        if text.len() != 44 {
            return None;
        }
        B64.decode(text).ok().and_then(|b| Hash::from_slice(&b))
    }

    /// Standard base64, 44 characters.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", hex::encode(self.0))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// The hash of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// The hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// A source of complete-subtree hashes.
///
/// `node(level, index)` is the hash of the complete subtree of `2^level`
/// leaves that starts at leaf `index << level`. Callers only ask for
/// subtrees that lie wholly inside the tree they are working on.
pub trait HashReader {
    /// Why a hash could not be read (a missing tile, an I/O error, …).
    type Error;
    /// The hash of the complete subtree at (`level`, `index`).
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof was rejected, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index is not below the tree size.
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index asked about.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The old size is larger than the new size.
    #[error("old size {old} is larger than new size {new}")]
    SizesReversed {
        /// The first (old) size.
        old: u64,
        /// The second (new) size.
        new: u64,
    },
    /// A consistency proof from the empty tree was asked for; it says
    /// nothing (every tree is consistent with the empty one).
    #[error("a consistency proof from the empty tree is meaningless")]
    FromEmptyTree,
    /// The proof has the wrong number of hashes for the sizes given.
    #[error("the proof has the wrong number of hashes ({0})")]
    WrongLength(usize),
    /// The proof does not lead to the expected root.
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of the leaves `[start, end)`, as RFC 6962 defines
/// it for the subtrees its recursion visits (the empty range is the empty
/// tree's hash).
pub fn subtree_hash<R: HashReader + ?Sized>(
    reader: &R,
    start: u64,
    end: u64,
) -> Result<Hash, R::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros() as u8;
        return reader.node(level, start >> level);
    }
    let k = if n.is_power_of_two() {
        n / 2
    } else {
        split_point(n)
    };
    let left = subtree_hash(reader, start, start + k)?;
    let right = subtree_hash(reader, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root hash of the tree of the first `size` leaves.
pub fn tree_hash<R: HashReader + ?Sized>(reader: &R, size: u64) -> Result<Hash, R::Error> {
    subtree_hash(reader, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 6962 §2.1.1), from the leaf's sibling up to the root's child.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    reader: &R,
    index: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofError>, R::Error> {
    if index >= size {
        return Ok(Err(ProofError::IndexOutOfRange { index, size }));
    }
    let mut out = Vec::new();
    let (mut start, mut end) = (0, size);
    // Walk down from the root; the siblings come out root-first.
    while end - start > 1 {
        let k = split_point(end - start);
        if index - start < k {
            out.push(subtree_hash(reader, start + k, end)?);
            end = start + k;
        } else {
            out.push(subtree_hash(reader, start, start + k)?);
            start += k;
        }
    }
    out.reverse();
    Ok(Ok(out))
}

/// The consistency proof between the trees of `old` and `new` leaves
/// (RFC 6962 §2.1.2). Empty when the sizes are equal.
pub fn consistency_proof<R: HashReader + ?Sized>(
    reader: &R,
    old: u64,
    new: u64,
) -> Result<Result<Vec<Hash>, ProofError>, R::Error> {
    if old > new {
        return Ok(Err(ProofError::SizesReversed { old, new }));
    }
    if old == 0 {
        return Ok(Err(ProofError::FromEmptyTree));
    }
    let mut out = Vec::new();
    if old == new {
        return Ok(Ok(out));
    }
    // SUBPROOF(m, D[start:end], b), unrolled: each step either descends
    // left (recording the right sibling) or right (recording the left one).
    let (mut m, mut start, mut end, mut whole) = (old, 0u64, new, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(subtree_hash(reader, start, end)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push(subtree_hash(reader, start + k, end)?);
            end = start + k;
        } else {
            out.push(subtree_hash(reader, start, start + k)?);
            m -= k;
            start += k;
            whole = false;
        }
    }
    // The recursion appends on the way back up, so the deepest hash
    // comes first.
    out.reverse();
    Ok(Ok(out))
}

/// Checks that `proof` proves leaf `index`, whose hash is `leaf`, is in
/// the tree of `size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength(proof.len()));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength(proof.len()));
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that `proof` proves the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`
/// (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesReversed { old, new });
    }
    if old == 0 {
        return Err(ProofError::FromEmptyTree);
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength(proof.len()));
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength(0));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength(proof.len()));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength(proof.len()));
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a tree: the roots of its maximal complete subtrees,
/// largest first. Enough to append leaves and compute the root without the
/// rest of the tree (at most 64 hashes), which is what a monitor keeps
/// between runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the highest bit down.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// A frontier from its size and hashes, if their number matches the size.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Frontier> {
        (hashes.len() == size.count_ones() as usize).then_some(Frontier { size, hashes })
    }

    /// The frontier of the tree of `size` leaves, read from `reader`.
    pub fn read<R: HashReader + ?Sized>(reader: &R, size: u64) -> Result<Frontier, R::Error> {
        let mut hashes = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                hashes.push(reader.node(level, start >> level)?);
                start += 1 << level;
            }
        }
        Ok(Frontier { size, hashes })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The complete-subtree hashes, largest subtree first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf by its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a subtree of the same
        // height as the carry, which merges into it.
        while size & 1 == 1 {
            let left = self.hashes.pop().expect("one hash per set bit");
            h = node_hash(&left, &h);
            size >>= 1;
        }
        self.hashes.push(h);
        self.size += 1;
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        let mut it = self.hashes.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(last) => it.fold(*last, |acc, h| node_hash(h, &acc)),
        }
    }
}

/// A whole tree in memory: every complete-subtree hash, level by level.
/// The log writer keeps one; tests use it as a reference.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> MemoryTree {
        MemoryTree::default()
    }

    /// The tree of these leaf data.
    pub fn from_leaves<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(leaves: I) -> MemoryTree {
        let mut t = MemoryTree::new();
        for l in leaves {
            t.push(leaf_hash(l.as_ref()));
        }
        t
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf by its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(h);
            let row = &self.levels[level];
            if !row.len().is_multiple_of(2) {
                break;
            }
            h = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// The stored complete-subtree hashes of one level (level 0 are leaves).
    pub fn level(&self, level: u8) -> &[Hash] {
        self.levels
            .get(usize::from(level))
            .map_or(&[][..], |v| v.as_slice())
    }

    /// The root hash of the first `size` leaves (`size <= self.size()`).
    pub fn root_at(&self, size: u64) -> Hash {
        tree_hash(self, size).expect("in-memory tree holds every complete subtree")
    }
}

/// Asking for a subtree a [`MemoryTree`] does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tree has no complete subtree at level {level}, index {index}")]
pub struct MissingNode {
    /// The level asked for.
    pub level: u8,
    /// The index asked for.
    pub index: u64,
}

impl HashReader for MemoryTree {
    type Error = MissingNode;
    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(usize::from(level))
            .and_then(|l| usize::try_from(index).ok().and_then(|i| l.get(i)))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's definition, straight from the text, as the reference.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_and_frontier_match_the_definition() {
        let leaves: Vec<Vec<u8>> = (0..70u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let tree = MemoryTree::from_leaves(&leaves);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for n in 0..=leaves.len() {
            assert_eq!(tree.root_at(n as u64), mth(&leaves[..n]), "size {n}");
            assert_eq!(frontier.root(), mth(&leaves[..n]), "frontier size {n}");
            assert_eq!(Frontier::read(&tree, n as u64).unwrap(), frontier);
            if n < leaves.len() {
                frontier.push(leaf_hash(&leaves[n]));
            }
        }
    }

    #[test]
    fn every_proof_of_a_small_tree_verifies() {
        let tree = MemoryTree::from_leaves((0..40u32).map(|i| i.to_le_bytes()));
        for size in 1..=40u64 {
            let root = tree.root_at(size);
            for index in 0..size {
                let proof = inclusion_proof(&tree, index, size).unwrap().unwrap();
                let leaf = tree.level(0)[index as usize];
                verify_inclusion(index, size, &leaf, &proof, &root).unwrap();
            }
            for old in 1..=size {
                let proof = consistency_proof(&tree, old, size).unwrap().unwrap();
                verify_consistency(old, size, &tree.root_at(old), &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn proof_requests_outside_the_tree_are_errors() {
        let tree = MemoryTree::from_leaves([b"a", b"b"]);
        assert_eq!(
            inclusion_proof(&tree, 2, 2).unwrap(),
            Err(ProofError::IndexOutOfRange { index: 2, size: 2 })
        );
        assert_eq!(
            consistency_proof(&tree, 2, 1).unwrap(),
            Err(ProofError::SizesReversed { old: 2, new: 1 })
        );
        assert!(tree_hash(&tree, 3).is_err());
    }
}
