//! Our hello against a real Chromium's, and what must vary between hellos.

use std::collections::BTreeSet;

use postern_cloak::hello::{X25519, X25519MLKEM768, is_grease, mlkem_coefficients};
use postern_cloak::{ClientConfig, ClientHelloInfo, Secret, client_start, ja4, parse_client_hello};
use rand::rngs::OsRng;

const CHROMIUM: [&str; 2] = [
    include_str!("fixtures/chromium-156-client-hello-1.hex"),
    include_str!("fixtures/chromium-156-client-hello-2.hex"),
];
const CHROMIUM_156_JA4: &str = "t13d1517h2_8daaf6152771_cb7bf5808d99";

fn chromium(i: usize) -> Vec<u8> {
    hex::decode(CHROMIUM[i].trim()).unwrap()
}

fn ours() -> Vec<u8> {
    let cfg = ClientConfig {
        secret: Secret::from_bytes([3; 32]),
        sni: "www.example.com".into(),
    };
    client_start(&cfg, 1_800_000_000, &mut OsRng).1
}

fn no_grease(v: &[u16]) -> Vec<u16> {
    v.iter().copied().filter(|x| !is_grease(*x)).collect()
}

fn set(v: &[u16]) -> BTreeSet<u16> {
    no_grease(v).into_iter().collect()
}

fn shares(info: &ClientHelloInfo) -> Vec<(u16, usize)> {
    info.key_shares
        .iter()
        .map(|k| {
            let group = if is_grease(k.group) { 0x0a0a } else { k.group };
            (group, k.key_exchange.len())
        })
        .collect()
}

#[test]
fn same_shape_as_chromium() {
    let ours = ours();
    let mine = parse_client_hello(&ours).unwrap();
    for i in 0..2 {
        let theirs = parse_client_hello(&chromium(i)).unwrap();
        assert_eq!(mine.legacy_version, theirs.legacy_version);
        assert_eq!(mine.session_id.len(), theirs.session_id.len());
        assert_eq!(mine.compression_methods, theirs.compression_methods);
        assert_eq!(mine.cipher_suites.len(), theirs.cipher_suites.len());
        assert!(is_grease(mine.cipher_suites[0]) && is_grease(theirs.cipher_suites[0]));
        assert_eq!(
            no_grease(&mine.cipher_suites),
            no_grease(&theirs.cipher_suites)
        );
        assert_eq!(set(&mine.extensions), set(&theirs.extensions));
        assert_eq!(mine.extensions.len(), theirs.extensions.len());
        for info in [&mine, &theirs] {
            assert!(is_grease(info.extensions[0]));
            assert!(is_grease(*info.extensions.last().unwrap()));
        }
        assert_eq!(mine.supported_groups.len(), theirs.supported_groups.len());
        assert_eq!(
            no_grease(&mine.supported_groups),
            no_grease(&theirs.supported_groups)
        );
        assert_eq!(
            mine.signature_algorithms.len(),
            theirs.signature_algorithms.len()
        );
        assert_eq!(
            no_grease(&mine.signature_algorithms),
            no_grease(&theirs.signature_algorithms)
        );
        assert_eq!(shares(&mine), shares(&theirs));
        assert_eq!(
            shares(&mine),
            vec![(0x0a0a, 1), (X25519MLKEM768, 1216), (X25519, 32)]
        );
        assert_eq!(mine.alpn, theirs.alpn);
        assert_eq!(
            mine.supported_versions.len(),
            theirs.supported_versions.len()
        );
        assert_eq!(
            no_grease(&mine.supported_versions),
            no_grease(&theirs.supported_versions)
        );
        assert_eq!(mine.sni, theirs.sni);
        assert!([144, 176, 208, 240].contains(&theirs.ech_payload_len.unwrap()));
        assert!([144, 176, 208, 240].contains(&mine.ech_payload_len.unwrap()));
        assert_eq!(ja4(&chromium(i)).unwrap(), CHROMIUM_156_JA4);
    }
    assert_eq!(ja4(&ours).unwrap(), CHROMIUM_156_JA4);
}

#[test]
fn extension_bodies_match_chromium_where_chromium_is_constant() {
    // Every extension whose body does not vary between Chromium's two
    // connections must have exactly that body in ours.
    fn bodies(record: &[u8]) -> std::collections::BTreeMap<u16, Vec<u8>> {
        // Walk the extensions block directly: header 9, version 2, random
        // 32, session id 33, suites, compression.
        let b = &record[9..];
        let mut p = 2 + 32 + 1 + usize::from(b[34]);
        p += 2 + usize::from(u16::from_be_bytes([b[p], b[p + 1]]));
        p += 1 + usize::from(b[p]);
        let end = p + 2 + usize::from(u16::from_be_bytes([b[p], b[p + 1]]));
        p += 2;
        let mut out = std::collections::BTreeMap::new();
        while p < end {
            let id = u16::from_be_bytes([b[p], b[p + 1]]);
            let len = usize::from(u16::from_be_bytes([b[p + 2], b[p + 3]]));
            if !is_grease(id) {
                out.insert(id, b[p + 4..p + 4 + len].to_vec());
            }
            p += 4 + len;
        }
        out
    }
    let (a, b) = (bodies(&chromium(0)), bodies(&chromium(1)));
    let mine = bodies(&ours());
    let mut constant = 0;
    for (id, body) in &a {
        // Both captures happen to share their supported_versions GREASE
        // value (a 1-in-16 chance); that body is not constant in Chrome.
        if b[id] == *body && *id != 0x002b {
            constant += 1;
            assert_eq!(mine[id], *body, "extension {id:#06x}");
        }
    }
    assert!(constant >= 10);
}

#[test]
fn nothing_chrome_varies_is_constant() {
    let (a, b) = (ours(), ours());
    let (ia, ib) = (
        parse_client_hello(&a).unwrap(),
        parse_client_hello(&b).unwrap(),
    );
    assert_ne!(ia.random, ib.random);
    assert_ne!(ia.session_id, ib.session_id);
    for group in [X25519, X25519MLKEM768] {
        assert_ne!(ia.key_share(group), ib.key_share(group));
    }
    assert_eq!(ja4(&a).unwrap(), ja4(&b).unwrap());

    // Over many hellos: orders, GREASE values and ECH lengths all vary.
    let many: Vec<ClientHelloInfo> = (0..64)
        .map(|_| parse_client_hello(&ours()).unwrap())
        .collect();
    let distinct = |f: &dyn Fn(&ClientHelloInfo) -> Vec<u16>| {
        many.iter().map(f).collect::<BTreeSet<_>>().len()
    };
    assert!(
        distinct(&|i| i
            .extensions
            .iter()
            .copied()
            .filter(|e| !is_grease(*e))
            .collect())
            > 60
    );
    assert!(distinct(&|i| vec![i.cipher_suites[0]]) > 4);
    assert!(distinct(&|i| vec![i.supported_groups[0]]) > 4);
    assert!(distinct(&|i| vec![i.signature_algorithms[0]]) > 4);
    assert!(distinct(&|i| vec![i.supported_versions[0]]) > 4);
    assert!(distinct(&|i| vec![i.extensions[0]]) > 4);
    assert!(distinct(&|i| vec![i.ech_payload_len.unwrap() as u16]) == 4);
    for info in &many {
        // GREASE in the key share is the supported_groups GREASE; the two
        // GREASE extensions differ, as BoringSSL makes them.
        assert_eq!(info.key_shares[0].group, info.supported_groups[0]);
        assert_ne!(info.extensions[0], *info.extensions.last().unwrap());
        // The hybrid share's X25519 half is its own key.
        let hybrid = info.key_share(X25519MLKEM768).unwrap();
        assert_ne!(&hybrid[1184..], info.key_share(X25519).unwrap());
    }
}

#[test]
fn same_length_as_chromium_for_the_same_ech_length() {
    for i in 0..2 {
        let theirs = chromium(i);
        let ech = parse_client_hello(&theirs)
            .unwrap()
            .ech_payload_len
            .unwrap();
        let ours = loop {
            let ours = ours();
            if parse_client_hello(&ours).unwrap().ech_payload_len == Some(ech) {
                break ours;
            }
        };
        assert_eq!(ours.len(), theirs.len());
    }
}

#[test]
fn x25519_keys_look_like_real_ones() {
    // An X25519 public key is below 2^255: its top bit is always clear.
    // Chromium's ECH GREASE `enc` is a real key too.
    let top_bit_clear = |k: &[u8]| k.len() == 32 && k[31] & 0x80 == 0;
    for i in 0..2 {
        let theirs = parse_client_hello(&chromium(i)).unwrap();
        assert!(top_bit_clear(theirs.ech_enc.as_deref().unwrap()));
    }
    for _ in 0..64 {
        let info = parse_client_hello(&ours()).unwrap();
        assert!(top_bit_clear(info.ech_enc.as_deref().unwrap()));
        assert!(top_bit_clear(info.key_share(X25519).unwrap()));
        assert!(top_bit_clear(
            &info.key_share(X25519MLKEM768).unwrap()[1184..]
        ));
    }
}

#[test]
fn mlkem_coefficients_are_in_range() {
    for _ in 0..32 {
        let info = parse_client_hello(&ours()).unwrap();
        let ek = info.key_share(X25519MLKEM768).unwrap();
        let coefficients: Vec<u16> = mlkem_coefficients(&ek[..1184]).collect();
        assert_eq!(coefficients.len(), 768);
        assert!(coefficients.iter().all(|c| *c < 3329));
        // Uniform mod q: both halves of the range occur.
        assert!(coefficients.iter().any(|c| *c > 3000));
    }
    for i in 0..2 {
        let info = parse_client_hello(&chromium(i)).unwrap();
        let ek = info.key_share(X25519MLKEM768).unwrap();
        assert!(mlkem_coefficients(&ek[..1184]).all(|c| c < 3329));
    }
}

/// A hand-built hello with the cipher suites, extensions and signature
/// algorithms of the published example at <https://shigshag.com/tools/ja4>
/// (`JA4_r t13d1011h2_00ff,1301,…`), whose JA4 it gives as
/// `t13d1011h2_61a7ad8aa9b6_3fcd1a44f3e3`.
#[test]
fn ja4_matches_a_published_value() {
    let suites = [
        0x00ff, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02c, 0xc02f, 0xc030, 0xcca8, 0xcca9,
    ];
    let sigalgs = [
        0x0503, 0x0403, 0x0807, 0x0806, 0x0805, 0x0804, 0x0601, 0x0501, 0x0401,
    ];
    let mut ext = Vec::new();
    let mut push = |id: u16, body: &[u8]| {
        ext.extend_from_slice(&id.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    push(0x0000, b"\x00\x0e\x00\x00\x0bexample.com");
    push(0x0010, b"\x00\x0c\x02h2\x08http/1.1");
    push(0x0005, &[1, 0, 0, 0, 0]);
    push(0x000a, &[0, 2, 0, 0x1d]);
    push(0x000b, &[1, 0]);
    let mut sig = vec![0, 18];
    sigalgs
        .iter()
        .for_each(|s: &u16| sig.extend_from_slice(&s.to_be_bytes()));
    push(0x000d, &sig);
    push(0x0017, &[]);
    push(0x0023, &[]);
    push(0x002b, &[2, 3, 4]);
    push(0x002d, &[1, 1]);
    push(0x0033, &[0, 0]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0; 32]);
    body.push(0);
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    suites
        .iter()
        .for_each(|s: &u16| body.extend_from_slice(&s.to_be_bytes()));
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    record.push(1);
    record.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    record.extend_from_slice(&body);
    assert_eq!(
        ja4(&record).unwrap(),
        "t13d1011h2_61a7ad8aa9b6_3fcd1a44f3e3"
    );
}

/// A real browser visiting the cover site through the relay's address is
/// not one of ours: the relay splices it to the cover.
#[test]
fn a_real_chromium_hello_goes_to_the_cover() {
    for i in 0..2 {
        let theirs = chromium(i);
        assert_eq!(
            postern_cloak::peek(&theirs),
            postern_cloak::Peek::Complete { len: theirs.len() }
        );
        assert_eq!(
            postern_cloak::verify(
                &Secret::from_bytes([3; 32]),
                "www.example.com",
                &theirs,
                0,
                u64::MAX
            )
            .unwrap_err(),
            postern_cloak::Reject::BadAuthenticator
        );
    }
}
