//! Arbitrary text parsed as a server link: never a panic, and whatever
//! parses prints back to a link that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::link::ServerLink;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = text.parse::<ServerLink>() {
        let printed = link.to_string();
        assert_eq!(
            printed.parse::<ServerLink>().as_ref(),
            Ok(&link),
            "{printed}"
        );
    }
});
