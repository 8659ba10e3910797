//! The operator API's gate: arbitrary headers, method, path and body
//! never panic it, and nothing unsigned passes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_legal::operator::{
    Gate, HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIME, parse_key,
};

fuzz_target!(|data: &[u8]| {
    // Six NUL-separated fields: key, time, nonce, signature, path, body.
    let mut parts = data.splitn(6, |b| *b == 0);
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (key, time, nonce, signature, path, body) =
        (field(), field(), field(), field(), field(), field());
    // A real operator key (its private half is not in the tree).
    let operator = parse_key("dc679ed954f2e1f96a66383d7d89dd0c2cd559fe7a200c5249bfb6cf66c22628")
        .expect("a valid Ed25519 public key");
    let mut gate = Gate::new(vec![operator]);
    let headers = [
        (HEADER_KEY, key),
        (HEADER_TIME, time),
        (HEADER_NONCE, nonce),
        (HEADER_SIGNATURE, signature),
    ];
    let result = gate.check(
        |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()),
        "POST",
        &path,
        body.as_bytes(),
        1_795_000_000,
    );
    // Only a signature by the operator's private key could pass, and the
    // fuzzer does not have it.
    assert!(result.is_err());
});
