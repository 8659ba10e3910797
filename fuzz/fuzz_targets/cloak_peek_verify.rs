//! Arbitrary first bytes of a connection into the relay's verdict (`peek`,
//! `verify`, the ClientHello parser and JA4), both as they come and XORed
//! onto a genuine hello: every outcome is a verdict, never a panic, and no
//! mutation of a genuine hello is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_cloak::{ClientConfig, Secret, client_start, ja4, parse_client_hello, peek, verify};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let secret = Secret::from_bytes([1; 32]);
    let _ = peek(data);
    let _ = verify(&secret, "cover.example", data, NOW, 30);
    let _ = parse_client_hello(data);
    let _ = ja4(data);

    let cfg = ClientConfig {
        secret: secret.clone(),
        sni: "cover.example".into(),
    };
    let (_, mut hello) = client_start(&cfg, NOW, &mut StdRng::seed_from_u64(7));
    let mut changed = false;
    for (b, d) in hello.iter_mut().zip(data) {
        *b ^= d;
        changed |= *d != 0;
    }
    let _ = peek(&hello);
    let verdict = verify(&secret, "cover.example", &hello, NOW, 30);
    assert!(!changed || verdict.is_err(), "a mutated hello verified");
    let _ = parse_client_hello(&hello);
});
