//! Custodian bundles (`postern custodian review|approve BUNDLE`): JSON from
//! the operator, parsed, summarised and checked against a log policy.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use postern_legal::bundle::Bundle;
use postern_tlog::checkpoint::Policy;
use postern_tlog::note::{Algorithm, Signer};

static POLICY: LazyLock<Policy> = LazyLock::new(|| Policy {
    log: Signer::from_seed("example.org/log", Algorithm::Ed25519, [1; 32])
        .unwrap()
        .verifier(),
    witnesses: vec![
        Signer::from_seed("witness.example", Algorithm::CosignatureV1, [2; 32])
            .unwrap()
            .verifier(),
    ],
    quorum: 1,
});

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Bundle::parse(data) {
        let _ = b.summary();
        // Nobody without the log's and the witness's keys can make a
        // bundle that passes.
        assert!(b.check(&[3; 32], &POLICY, None).is_err());
        assert_eq!(Bundle::parse(b.to_json().as_bytes()).as_ref(), Ok(&b));
    }
});
