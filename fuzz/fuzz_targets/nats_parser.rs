//! The NATS protocol parser on arbitrary server bytes, fed in two pieces:
//! it never panics, never buffers past its limits, and gives the same
//! operations however the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_nats::proto::{MAX_CONTROL_LINE, MAX_PAYLOAD, Parser, ServerOp};

fn drain(p: &mut Parser, ops: &mut Vec<ServerOp>) -> bool {
    loop {
        match p.next_op() {
            Ok(Some(op)) => ops.push(op),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut whole = Parser::new();
    whole.feed(data);
    let mut ops_whole = Vec::new();
    let ok_whole = drain(&mut whole, &mut ops_whole);

    let mut split = Parser::new();
    let mut ops_split = Vec::new();
    split.feed(&data[..cut]);
    let mut ok_split = drain(&mut split, &mut ops_split);
    if ok_split {
        split.feed(&data[cut..]);
        ok_split = drain(&mut split, &mut ops_split);
    }
    assert_eq!(ok_whole, ok_split);
    if ok_whole {
        assert_eq!(ops_whole, ops_split);
        assert!(whole.buffered() <= MAX_CONTROL_LINE + MAX_PAYLOAD + 4);
    }
});
