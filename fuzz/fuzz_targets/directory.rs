//! Arbitrary bytes as a signed directory, and as the DNS TXT strings one
//! is fetched in: never a panic; whatever parses prints back to the very
//! text it came from (one canonical form), and a directory whose text
//! parses is refused by a verifier whose key did not sign it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::directory::{Directory, SignedDirectory, txt};
use postern_tlog::note::{Algorithm, Signer};

fuzz_target!(|data: &[u8]| {
    if let Ok((note, directory)) = SignedDirectory::parse_unverified(data) {
        assert_eq!(directory.to_text(), note.text());
        let key = Signer::from_seed("fuzz/directory", Algorithm::Ed25519, [7; 32]).unwrap();
        assert!(SignedDirectory::verify(data, &key.verifier()).is_err());
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(d) = Directory::parse_text(text)
    {
        assert_eq!(d.to_text(), text);
    }
    // The same bytes as TXT records: split at 0xff into records and at
    // 0xfe into strings.
    let records: Vec<Vec<Vec<u8>>> = data
        .split(|&b| b == 0xff)
        .map(|r| r.split(|&b| b == 0xfe).map(<[u8]>::to_vec).collect())
        .collect();
    let _ = txt::decode(&records);
});
