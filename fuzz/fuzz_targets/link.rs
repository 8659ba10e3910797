//! Arbitrary text parsed as a server link and as a relay link: never a panic, and whatever
//! parses prints back to a link that parses to the same value (directory
//! key and fetch locations included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::link::{RelayLink, ServerLink};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = text.parse::<ServerLink>() {
        // A pinned directory key is always a usable verifier.
        assert_eq!(
            link.directory_key.is_some(),
            link.directory_verifier().is_some()
        );
        let printed = link.to_string();
        assert_eq!(
            printed.parse::<ServerLink>().as_ref(),
            Ok(&link),
            "{printed}"
        );
    }
    if let Ok(link) = text.parse::<RelayLink>() {
        let printed = link.to_string();
        assert_eq!(
            printed.parse::<RelayLink>().as_ref(),
            Ok(&link),
            "{printed}"
        );
    }
});
