//! Tiles from the network: tile paths, hash tiles and entry bundles of
//! any width, and the typed entries inside bundles. Whatever parses must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_tlog::entry::Entry;
use postern_tlog::merkle;
use postern_tlog::tile::{
    Tile, TileHashes, TileKind, parse_entry_bundle, parse_hash_tile, push_entry,
};

fuzz_target!(|data: &[u8]| {
    let Some((&w, rest)) = data.split_first() else {
        return;
    };
    let width = u16::from(w) + 1;
    if let Ok(entries) = parse_entry_bundle(rest, width) {
        let mut again = Vec::new();
        for e in &entries {
            push_entry(&mut again, e).unwrap();
            if let Ok(entry) = Entry::decode(e) {
                assert_eq!(&entry.encode().unwrap(), e);
            }
        }
        assert_eq!(again, rest);
    }
    let tile = Tile { kind: TileKind::Hashes { level: 0 }, index: 0, width };
    if parse_hash_tile(&tile, rest).is_ok() {
        let mut cache = TileHashes::new(u64::from(width));
        cache.insert(&tile, rest).unwrap();
        let _ = merkle::tree_hash(&cache, u64::from(width));
        let _ = merkle::inclusion_proof(&cache, 0, u64::from(width));
    }
    if let Ok(path) = std::str::from_utf8(rest) {
        if let Ok(t) = Tile::parse_path(path) {
            assert_eq!(t.path(), path);
        }
    }
});
