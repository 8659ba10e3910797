//! Arbitrary bytes as the relay's answer to a client hello, fed as they come
//! and XORed onto a genuine flight (in two pieces): the client must refuse
//! or ask for more, never panic, and never finish on anything but the
//! genuine flight.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_cloak::{ClientConfig, CoverShape, Secret, Step, client_start, respond, verify};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let cfg = ClientConfig {
        secret: Secret::from_bytes([1; 32]),
        sni: "cover.example".into(),
    };
    let mut rng = StdRng::seed_from_u64(7);
    let (mut client, hello) = client_start(&cfg, NOW, &mut rng);
    assert!(!matches!(
        client.on_server_bytes(data),
        Ok(Step::Done { .. })
    ));

    let mut rng = StdRng::seed_from_u64(7);
    let (mut client, _) = client_start(&cfg, NOW, &mut rng);
    let v = verify(&cfg.secret, "cover.example", &hello, NOW, 30).expect("our hello");
    let (mut flight, _) = respond(&cfg.secret, &v, &CoverShape::fallback(), &mut rng);
    let mut changed = false;
    for (b, d) in flight.iter_mut().zip(data) {
        *b ^= d;
        changed |= *d != 0;
    }
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) * 16)
        .min(flight.len());
    let result = match client.on_server_bytes(&flight[..split]) {
        Ok(Step::NeedMore) => client.on_server_bytes(&flight),
        other => other,
    };
    assert!(
        !changed || !matches!(result, Ok(Step::Done { .. })),
        "a mutated flight finished"
    );
});
