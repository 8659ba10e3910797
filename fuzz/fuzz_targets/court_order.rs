//! Detached CMS signatures over a court order: the blob an authority sends
//! (`ORDER.p7s`), parsed and checked against an order document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_legal::order::{TrustStore, inspect, verify_order};

fuzz_target!(|data: &[u8]| {
    let _ = inspect(data);
    let mut trust = TrustStore::new();
    // Anchors are PEM or DER certificates: the same bytes as one.
    let _ = trust.add_anchors("DE", data);
    if let Ok(v) = verify_order(&trust, "DE", b"%PDF-1.4 order", data, 1_800_000_000) {
        // Only a blob that is both a certificate and a valid signature by
        // it over the document could get here.
        assert!(v.chain_len >= 1);
    }
});
