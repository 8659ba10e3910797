//! Arbitrary bytes into an `Opener` after a real handshake and one genuine
//! record: forged records must fail cleanly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_proto::frame::envelope;
use postern_proto::keys::NoiseKeypair;
use postern_proto::pb;
use postern_proto::session::{Initiator, Responder};

fuzz_target!(|data: &[u8]| {
    let server = NoiseKeypair::from_secret([1; 32]);
    let client = NoiseKeypair::from_secret([2; 32]);
    let (mut initiator, m1) =
        Initiator::start(&client, &server.public, &pb::ClientHello::default()).expect("start");
    let mut responder = Responder::new(&server);
    responder.feed(&m1).expect("message 1").expect("hello");
    let (server_session, m2) = responder
        .accept(&pb::ServerHello::default())
        .expect("accept");
    let (client_session, _) = initiator.feed(&m2).expect("message 2").expect("session");
    let (mut sealer, _) = server_session.split();
    let (_, mut opener) = client_session.split();

    let mut genuine = Vec::new();
    let ping = pb::envelope::Body::Request(pb::Request {
        kind: Some(pb::request::Kind::Ping(pb::Ping {})),
    });
    sealer.push(&envelope(1, ping)).expect("push");
    sealer.seal(&mut genuine).expect("seal");
    opener.feed(&genuine).expect("genuine record");

    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (first, second) = data.split_at(split);
    for piece in [first, second] {
        let _ = opener.feed(piece);
        while let Ok(Some(_)) = opener.next_envelope() {}
    }
});
