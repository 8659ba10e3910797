//! Arbitrary bytes into the server's side of the handshake, with a fixed
//! server key: it must never panic, whatever the bytes and their split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::keys::NoiseKeypair;
use postern_proto::pb;
use postern_proto::session::Responder;

fuzz_target!(|data: &[u8]| {
    let key = NoiseKeypair::from_secret([7; 32]);
    let mut responder = Responder::new(&key);
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (first, second) = data.split_at(split);
    let _ = responder.feed(first);
    let _ = responder.feed(second);
    if let Ok((session, _)) = responder.accept(&pb::ServerHello::default()) {
        let (_, mut opener) = session.split();
        while let Ok(Some(_)) = opener.next_envelope() {}
    }
});
