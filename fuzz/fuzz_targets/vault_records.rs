//! What the vault reads back: sealed records and wrapped shares from the
//! database, released shares from custodians (a custodian's bundle), and
//! report computation over arbitrary log entries.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use postern_legal::custodian::{CustodianKey, CustodianRecord, DisclosureKey, ReleasedShare, WrappedShare};
use postern_legal::report::Report;
use postern_legal::vault::{KeyShare, SealedRecord, VaultSecret};

static CUSTODIAN: LazyLock<(CustodianKey, CustodianRecord)> = LazyLock::new(|| {
    let key = CustodianKey::from_bytes([3; 32]);
    let record = CustodianRecord {
        name: "fuzz".into(),
        jurisdiction: "CH".into(),
        public_key: key.public_key().unwrap(),
    };
    (key, record)
});

fuzz_target!(|data: &[u8]| {
    let account = [7u8; 16];
    if let Ok(r) = SealedRecord::decode(data) {
        assert_eq!(r.encode(), data);
        let secret = VaultSecret::generate().unwrap();
        assert!(secret.open(&account, &r).is_err());
    }
    if let Ok(w) = WrappedShare::decode(data) {
        assert_eq!(w.encode(), data);
        let _ = CUSTODIAN.0.unwrap_share(&account, &w);
    }
    if let Ok(r) = ReleasedShare::decode(data) {
        assert_eq!(r.encode(), data);
        let dk = DisclosureKey::from_bytes([4; 32]);
        let _ = dk.open_releases(&r.request, &r.account, &[CUSTODIAN.1.clone()], &[r.clone()]);
    }
    if let Ok(s) = KeyShare::from_bytes(data) {
        assert_eq!(&s.to_bytes()[..], data);
    }
    // Entries as u8-length-prefixed chunks.
    let mut entries = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        entries.push(&tail[..n]);
        rest = &tail[n..];
    }
    let r = Report::compute("2026-H2".parse().unwrap(), entries.iter().copied());
    assert_eq!(r.log_size, entries.len() as u64);
    assert!(r.outcomes.requests + r.sealed_pending <= r.received);
});
