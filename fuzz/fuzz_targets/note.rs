//! Signed notes from the network (checkpoints, witness answers): parsing
//! and verifying arbitrary bytes never panics, and whatever parses
//! re-serialises to the same bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use postern_tlog::note::{Algorithm, Note, Signer, Verifier};

static VERIFIERS: LazyLock<Vec<Verifier>> = LazyLock::new(|| {
    vec![
        Signer::from_seed("example.org/log", Algorithm::Ed25519, [1; 32])
            .unwrap()
            .verifier(),
        Signer::from_seed("witness.example", Algorithm::CosignatureV1, [2; 32])
            .unwrap()
            .verifier(),
    ]
});

fuzz_target!(|data: &[u8]| {
    if let Ok(note) = Note::parse(data) {
        let _ = note.verify(&VERIFIERS);
        assert_eq!(note.to_string().as_bytes(), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Verifier::from_vkey(text);
        let _ = Signer::from_skey(text);
    }
});
