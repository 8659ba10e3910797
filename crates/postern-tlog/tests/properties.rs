//! Property tests: proofs verify for random trees and fail when any bit of
//! them changes; tiles give the same proofs as the whole tree; parsers of
//! untrusted bytes never panic.

use postern_tlog::checkpoint::Checkpoint;
use postern_tlog::client::MonitorState;
use postern_tlog::merkle::{
    Hash, MemoryTree, consistency_proof, inclusion_proof, leaf_hash, verify_consistency,
    verify_inclusion,
};
use postern_tlog::note::Note;
use postern_tlog::proof::ProofBundle;
use postern_tlog::tile::{Tile, TileHashes, TileKind, parse_entry_bundle, parse_hash_tile};
use postern_tlog::witness::AddCheckpoint;
use proptest::prelude::*;

fn tree(size: u64) -> MemoryTree {
    MemoryTree::from_leaves((0..size).map(|i| i.to_be_bytes()))
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut b = h.0;
    b[bit / 8 % 32] ^= 1 << (bit % 8);
    Hash(b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inclusion_proofs_verify_and_any_flipped_bit_fails(
        size in 1u64..3000, index_seed: u64, which: usize, bit in 0usize..256,
    ) {
        let t = tree(size);
        let index = index_seed % size;
        let root = t.root_at(size);
        let leaf = leaf_hash(&index.to_be_bytes());
        let proof = inclusion_proof(&t, index, size).unwrap().unwrap();
        prop_assert!(verify_inclusion(index, size, &leaf, &proof, &root).is_ok());
        // Flip one bit somewhere in (leaf, proof..., root).
        let n = proof.len() + 2;
        let k = which % n;
        let (mut l, mut p, mut r) = (leaf, proof.clone(), root);
        match k {
            0 => l = flip(&l, bit),
            k if k == n - 1 => r = flip(&r, bit),
            k => p[k - 1] = flip(&p[k - 1], bit),
        }
        prop_assert!(verify_inclusion(index, size, &l, &p, &r).is_err());
        // Wrong index or size also fail (unless the proof happens to fit,
        // which it cannot for a different leaf position in the same tree).
        if size > 1 {
            let other = (index + 1) % size;
            prop_assert!(verify_inclusion(other, size, &leaf, &proof, &root).is_err());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_any_flipped_bit_fails(
        new in 2u64..3000, old_seed: u64, which: usize, bit in 0usize..256,
    ) {
        let t = tree(new);
        let old = 1 + old_seed % (new - 1);
        let (r1, r2) = (t.root_at(old), t.root_at(new));
        let proof = consistency_proof(&t, old, new).unwrap().unwrap();
        prop_assert!(verify_consistency(old, new, &r1, &r2, &proof).is_ok());
        let n = proof.len() + 2;
        let k = which % n;
        let (mut a, mut p, mut b) = (r1, proof.clone(), r2);
        match k {
            0 => a = flip(&a, bit),
            k if k == n - 1 => b = flip(&b, bit),
            k => p[k - 1] = flip(&p[k - 1], bit),
        }
        prop_assert!(verify_consistency(old, new, &a, &b, &p).is_err());
        // A proof for another pair of sizes does not fit.
        if old + 1 < new {
            prop_assert!(verify_consistency(old + 1, new, &t.root_at(old + 1), &r2, &proof).is_err());
        }
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), width in 1u16..=256) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Note::parse(&bytes);
        let _ = Checkpoint::parse(&text);
        let _ = Tile::parse_path(&text);
        let _ = parse_entry_bundle(&bytes, width);
        let t = Tile { kind: TileKind::Hashes { level: 0 }, index: 0, width };
        let _ = parse_hash_tile(&t, &bytes);
        let _ = AddCheckpoint::parse(&bytes);
        let _ = ProofBundle::parse(&text);
        let _ = MonitorState::parse(&text);
    }

    #[test]
    fn tile_paths_round_trip(level in 0u8..64, index: u64, width in 1u16..=256, entries: bool) {
        let kind = if entries { TileKind::Entries } else { TileKind::Hashes { level } };
        let t = Tile { kind, index, width };
        prop_assert_eq!(Tile::parse_path(&t.path()), Ok(t));
    }
}

/// Proofs read out of tiles (partial ones included) equal the proofs from
/// the whole tree, across tile and level boundaries.
#[test]
fn tiles_give_the_same_proofs_as_the_tree() {
    for size in [1u64, 255, 256, 257, 511, 65_535, 65_536, 65_537, 70_000] {
        let t = tree(size);
        let mut cache = TileHashes::new(size);
        for tile in Tile::new_in(0, size) {
            let TileKind::Hashes { level } = tile.kind else {
                continue;
            };
            let row = t.level(8 * level);
            let start = (tile.index * 256) as usize;
            let bytes: Vec<u8> = row[start..start + usize::from(tile.width)]
                .iter()
                .flat_map(|h| h.0)
                .collect();
            cache.insert(&tile, &bytes).unwrap();
        }
        assert_eq!(
            postern_tlog::merkle::tree_hash(&cache, size).unwrap(),
            t.root_at(size),
            "size {size}"
        );
        for index in [0, size / 3, size - 1] {
            assert_eq!(
                inclusion_proof(&cache, index, size).unwrap(),
                inclusion_proof(&t, index, size).unwrap()
            );
        }
        for old in [1, size / 2, size - 1].into_iter().filter(|o| *o >= 1) {
            assert_eq!(
                consistency_proof(&cache, old, size).unwrap(),
                consistency_proof(&t, old, size).unwrap(),
                "{old} -> {size}"
            );
        }
    }
}

/// A cache missing a tile names exactly the tile to fetch.
#[test]
fn missing_tiles_are_named() {
    let cache = TileHashes::new(70_000);
    let err = postern_tlog::merkle::tree_hash(&cache, 70_000).unwrap_err();
    assert!(Tile::new_in(0, 70_000).contains(&err.0), "{:?}", err.0);
    let err = inclusion_proof(&cache, 5, 70_000).unwrap_err();
    assert!(err.0.kind != TileKind::Entries);
}
