//! Arbitrary bytes, in arbitrary pieces, into a `FrameDecoder`: it must never
//! panic and never buffer more than one maximal frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::frame::{FRAME_PREFIX_LEN, FrameDecoder, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, so splits are explored too.
    let (piece, bytes) = data
        .split_first()
        .map_or((1, data), |(p, rest)| (usize::from(*p).max(1), rest));
    let mut decoder = FrameDecoder::new();
    for chunk in bytes.chunks(piece) {
        decoder.extend(chunk);
        while let Ok(Some(_)) = decoder.next_envelope() {}
        assert!(decoder.buffered_len() <= MAX_FRAME_LEN + FRAME_PREFIX_LEN);
    }
});
