//! Arbitrary bytes into an `Opener` after a real cloak handshake and one
//! genuine record: forged records must fail cleanly, never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use postern_cloak::{ClientConfig, CoverShape, Secret, Step, client_start, respond, verify};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(3);
    let cfg = ClientConfig {
        secret: Secret::from_bytes([1; 32]),
        sni: "cover.example".into(),
    };
    let (mut client, hello) = client_start(&cfg, NOW, &mut rng);
    let v = verify(&cfg.secret, "cover.example", &hello, NOW, 30).expect("our hello");
    let (flight, _) = respond(&cfg.secret, &v, &CoverShape::fallback(), &mut rng);
    let Ok(Step::Done {
        value: (mut client_session, _),
        ..
    }) = client.on_server_bytes(&flight)
    else {
        panic!("the handshake did not finish");
    };
    let _ = client_session.sealer.seal(b"warm-up", &mut Vec::new());

    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (first, second) = data.split_at(split);
    let mut buf = BytesMut::new();
    for piece in [first, second] {
        buf.extend_from_slice(piece);
        while let Ok(Some(_)) = client_session.opener.open(&mut buf) {}
    }
});
