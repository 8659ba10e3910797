//! Arbitrary bytes as a cover site's first flight, as they come and XORed
//! onto a relay's flight in the hybrid-group shape: learning must succeed
//! or fail cleanly, and a learned shape must be one the relay can answer
//! with (its answer has that shape again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_cloak::hello::X25519MLKEM768;
use postern_cloak::{
    ClientConfig, CoverShape, Secret, client_start, learn_cover_shape, respond, verify,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(5);
    let cfg = ClientConfig {
        secret: Secret::from_bytes([1; 32]),
        sni: "cover.example".into(),
    };
    let (_, hello) = client_start(&cfg, NOW, &mut rng);
    let v = verify(&cfg.secret, "cover.example", &hello, NOW, 30).expect("our hello");
    let hybrid = CoverShape {
        cipher_suite: 0x1302,
        group: X25519MLKEM768,
        extension_order: vec![0x0033, 0x002b],
        change_cipher_spec: true,
        record_lengths: vec![32, 3000, 264, 53],
        ticket_lengths: vec![234, 234],
    };
    let (mut genuine, _) = respond(&cfg.secret, &v, &hybrid, &mut rng);
    for (b, d) in genuine.iter_mut().zip(data) {
        *b ^= d;
    }
    for flight in [data, &genuine[..]] {
        if let Ok(shape) = learn_cover_shape(flight) {
            let (answer, _) = respond(&cfg.secret, &v, &shape, &mut rng);
            let again = learn_cover_shape(&answer).expect("our answer has a shape");
            assert_eq!(again.cipher_suite, shape.cipher_suite);
            assert_eq!(again.group, shape.group);
            assert_eq!(again.extension_order, shape.extension_order);
            assert_eq!(again.change_cipher_spec, shape.change_cipher_spec);
        }
    }
});
