//! The delivery service's reader of MLS message headers, on arbitrary
//! bytes: it must never panic, and whatever header it reads must be the one
//! `private_message_header` writes back for the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::mls::{self, WireFormat};

fuzz_target!(|data: &[u8]| {
    let _ = mls::wire_format(data);
    if let Ok(h) = mls::framed_header(data)
        && h.wire_format == WireFormat::PrivateMessage
    {
        let rebuilt = mls::private_message_header(h.group_id, h.epoch, h.content_type);
        assert!(data.starts_with(&rebuilt), "a private header reads back as written");
    }
});
