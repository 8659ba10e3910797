//! The cloak handshake end to end, in memory: what the relay accepts, what
//! it rejects, and what the client refuses.

use bytes::BytesMut;
use postern_cloak::hello::X25519MLKEM768;
use postern_cloak::{
    ClientConfig, CloakError, CoverShape, Peek, Reject, Secret, Session, Step, client_start,
    learn_cover_shape, peek, probe_hello, respond, verify,
};
use proptest::prelude::*;
use rand::rngs::OsRng;

const NOW: u64 = 1_800_000_000;
const SNI: &str = "cover.example.org";
const WINDOW: u64 = 30;

fn secret() -> Secret {
    Secret::from_bytes([42; 32])
}

fn config() -> ClientConfig {
    ClientConfig {
        secret: secret(),
        sni: SNI.into(),
    }
}

fn hello() -> Vec<u8> {
    client_start(&config(), NOW, &mut OsRng).1
}

/// Runs a whole handshake against `shape`, feeding the flight to the client
/// in pieces of `piece` bytes; returns (client session, relay session).
fn handshake(shape: &CoverShape, piece: usize) -> (Session, Session) {
    let (mut client, hello) = client_start(&config(), NOW, &mut OsRng);
    assert_eq!(peek(&hello), Peek::Complete { len: hello.len() });
    let verified = verify(&secret(), SNI, &hello, NOW + 3, WINDOW).unwrap();
    assert_eq!(verified.timestamp, NOW);
    assert_eq!(verified.sni, SNI);
    assert_eq!(&verified.tag[..], &hello[44..68]);
    let (flight, mut relay) = respond(&secret(), &verified, shape, &mut OsRng);
    assert_eq!(
        learn_cover_shape(&flight).unwrap().record_lengths.len(),
        shape.record_lengths.len().min(16)
    );

    let mut got = Vec::new();
    let mut done = None;
    for chunk in flight.chunks(piece) {
        assert!(done.is_none(), "done before the whole flight arrived");
        got.extend_from_slice(chunk);
        match client.on_server_bytes(&got).unwrap() {
            Step::NeedMore => {}
            Step::Done { value, consumed } => {
                assert_eq!(consumed, flight.len());
                done = Some(value);
            }
        }
    }
    let (client_session, reply) = done.expect("the client finished");
    assert_eq!(&reply[..6], &[0x14, 3, 3, 0, 1, 1]);
    // The size of Chrome's Finished record for the suite.
    let finished = if shape.cipher_suite == 0x1302 { 69 } else { 53 };
    assert_eq!(&reply[6..11], &[0x17, 3, 3, 0, finished]);
    assert_eq!(reply.len(), 6 + 5 + usize::from(finished));

    let mut sent = reply.clone();
    sent.extend_from_slice(b"early application data");
    for n in 1..reply.len() {
        assert!(matches!(
            relay.on_client_bytes(&reply[..n]).unwrap(),
            Step::NeedMore
        ));
    }
    match relay.on_client_bytes(&sent).unwrap() {
        Step::Done { value, consumed } => {
            assert_eq!(consumed, reply.len());
            (client_session, value)
        }
        Step::NeedMore => panic!("the relay needs more than the client's reply"),
    }
}

fn exchange(from: &mut Session, to: &mut Session, payload: &[u8]) {
    let mut wire = Vec::new();
    from.sealer.seal(payload, &mut wire).unwrap();
    let mut buf = BytesMut::from(&wire[..]);
    let mut got = Vec::new();
    while let Some(p) = to.opener.open(&mut buf).unwrap() {
        got.extend_from_slice(&p);
    }
    assert!(buf.is_empty());
    assert_eq!(got, payload);
}

#[test]
fn handshake_with_every_kind_of_cover() {
    let hybrid = CoverShape {
        cipher_suite: 0x1302,
        group: X25519MLKEM768,
        extension_order: vec![0x0033, 0x002b],
        change_cipher_spec: false,
        record_lengths: vec![25, 40, 4000, 300, 69],
        ticket_lengths: vec![234, 234],
    };
    let tiny = CoverShape {
        record_lengths: vec![20, 30],
        ..CoverShape::fallback()
    };
    for shape in [CoverShape::fallback(), hybrid, tiny] {
        for piece in [1, 7, 100, usize::MAX] {
            let (mut client, mut relay) = handshake(&shape, piece.min(1 << 20));
            exchange(&mut client, &mut relay, b"ping");
            exchange(&mut relay, &mut client, &vec![9; 50_000]);
            exchange(&mut client, &mut relay, &vec![1; 16383]);
        }
    }
}

#[test]
fn hand_built_shapes_the_client_cannot_follow_are_normalized() {
    let odd = CoverShape {
        cipher_suite: 0xc02f,
        group: 0x0017,
        extension_order: vec![0x0033],
        change_cipher_spec: false,
        record_lengths: vec![100; 40],
        ticket_lengths: vec![],
    };
    let (mut client, mut relay) = handshake(&odd, usize::MAX);
    exchange(&mut client, &mut relay, b"still works");
}

#[test]
fn relay_flight_has_the_cover_shape() {
    let shape = CoverShape {
        cipher_suite: 0x1302,
        group: X25519MLKEM768,
        extension_order: vec![0x0033, 0x002b],
        change_cipher_spec: true,
        record_lengths: vec![32, 5000, 264, 53],
        ticket_lengths: vec![250, 250],
    };
    let (_, hello) = client_start(&config(), NOW, &mut OsRng);
    let v = verify(&secret(), SNI, &hello, NOW, WINDOW).unwrap();
    let (flight, _) = respond(&secret(), &v, &shape, &mut OsRng);
    assert_eq!(learn_cover_shape(&flight).unwrap(), shape);
    // The session id is echoed.
    assert_eq!(&flight[44..76], &v.session_id);
}

#[test]
fn verify_rejects_what_is_not_ours() {
    let hello = hello();
    assert!(verify(&secret(), SNI, &hello, NOW, WINDOW).is_ok());
    assert!(verify(&secret(), &SNI.to_uppercase(), &hello, NOW, WINDOW).is_ok());
    assert_eq!(
        verify(&Secret::from_bytes([1; 32]), SNI, &hello, NOW, WINDOW).unwrap_err(),
        Reject::BadAuthenticator
    );
    assert_eq!(
        verify(&secret(), "other.example.org", &hello, NOW, WINDOW).unwrap_err(),
        Reject::WrongSni
    );
    assert_eq!(
        verify(&secret(), SNI, &hello, NOW + 31, WINDOW).unwrap_err(),
        Reject::Stale { skew_secs: -31 }
    );
    assert_eq!(
        verify(&secret(), SNI, &hello, NOW - 31, WINDOW).unwrap_err(),
        Reject::Stale { skew_secs: 31 }
    );
    assert!(verify(&secret(), SNI, &hello, NOW + 30, WINDOW).is_ok());
    assert!(verify(&secret(), SNI, &hello, NOW - 30, WINDOW).is_ok());
    assert_eq!(
        verify(&secret(), SNI, &probe_hello(SNI, &mut OsRng), NOW, WINDOW).unwrap_err(),
        Reject::BadAuthenticator
    );
    assert_eq!(
        verify(&secret(), SNI, &hello[..hello.len() - 1], NOW, WINDOW).unwrap_err(),
        Reject::Malformed
    );
    let mut longer = hello.clone();
    longer.push(0);
    assert_eq!(
        verify(&secret(), SNI, &longer, NOW, WINDOW).unwrap_err(),
        Reject::Malformed
    );
    assert_eq!(Reject::Stale { skew_secs: 1 }.name(), "stale");
}

#[test]
fn peek_says_need_more_until_the_hello_is_complete() {
    let hello = hello();
    for n in 0..hello.len() {
        assert_eq!(peek(&hello[..n]), Peek::NeedMore, "prefix of {n} bytes");
    }
    assert_eq!(peek(&hello), Peek::Complete { len: hello.len() });
    let mut more = hello.clone();
    more.extend_from_slice(&[0x14, 3, 3]);
    assert_eq!(peek(&more), Peek::Complete { len: hello.len() });
}

#[test]
fn peek_refuses_the_usual_probes_at_once() {
    assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotCloak(Reject::NotTls));
    assert_eq!(peek(b"G"), Peek::NotCloak(Reject::NotTls));
    assert_eq!(peek(&[0x16, 3, 3]), Peek::NotCloak(Reject::NotTls));
    assert_eq!(
        peek(&[0x16, 3, 1, 0x40, 1]),
        Peek::NotCloak(Reject::TooLarge)
    );
    assert_eq!(
        peek(&[0x16, 3, 1, 0, 200]),
        Peek::NotCloak(Reject::Malformed)
    );
    assert_eq!(
        peek(&[0x16, 3, 1, 7, 0, 2]),
        Peek::NotCloak(Reject::NotClientHello)
    );
    assert_eq!(
        peek(&[0x16, 3, 1, 7, 0, 1, 0, 6, 0]),
        Peek::NotCloak(Reject::Malformed)
    );
    assert_eq!(peek(&[]), Peek::NeedMore);
}

#[test]
fn client_refuses_anyone_but_the_relay() {
    // A relay with another secret (or the cover, or a censor's box).
    let (mut client, hello) = client_start(&config(), NOW, &mut OsRng);
    let other = Secret::from_bytes([7; 32]);
    let v = verify(&secret(), SNI, &hello, NOW, WINDOW).unwrap();
    let (flight, _) = respond(&other, &v, &CoverShape::fallback(), &mut OsRng);
    assert!(matches!(
        client.on_server_bytes(&flight),
        Err(CloakError::NotRelay)
    ));

    for answer in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        &[0x15, 3, 3, 0, 2, 2, 40],
        &[0x16, 3, 3, 0, 4, 2, 0, 0, 0],
    ] {
        let (mut client, _) = client_start(&config(), NOW, &mut OsRng);
        assert!(matches!(
            client.on_server_bytes(answer),
            Err(CloakError::NotRelay)
        ));
    }

    // A genuine flight with one bit flipped anywhere fails.
    let flight_len = {
        let v = verify(&secret(), SNI, &self::hello(), NOW, WINDOW).unwrap();
        respond(&secret(), &v, &CoverShape::fallback(), &mut OsRng)
            .0
            .len()
    };
    for at in (0..flight_len).step_by(17) {
        let (mut client, hello) = client_start(&config(), NOW, &mut OsRng);
        let v = verify(&secret(), SNI, &hello, NOW, WINDOW).unwrap();
        let (mut flight, _) = respond(&secret(), &v, &CoverShape::fallback(), &mut OsRng);
        assert_eq!(flight.len(), flight_len);
        flight[at] ^= 0x01;
        let result = client.on_server_bytes(&flight);
        assert!(
            !matches!(result, Ok(Step::Done { .. })),
            "flip at {at} accepted"
        );
    }
}

#[test]
fn relay_refuses_a_bad_confirmation() {
    let (mut client, hello) = client_start(&config(), NOW, &mut OsRng);
    let v = verify(&secret(), SNI, &hello, NOW, WINDOW).unwrap();
    let (flight, mut relay) = respond(&secret(), &v, &CoverShape::fallback(), &mut OsRng);
    let Step::Done {
        value: (_, reply), ..
    } = client.on_server_bytes(&flight).unwrap()
    else {
        panic!("the client needs more");
    };
    for at in 0..reply.len() {
        let mut bad = reply.clone();
        bad[at] ^= 0x80;
        assert!(!matches!(
            relay.on_client_bytes(&bad),
            Ok(Step::Done { .. })
        ));
    }
    // A replayer without the keys cannot finish either.
    let mut forged = reply[..11].to_vec();
    forged.extend_from_slice(&[0; 53]);
    assert!(relay.on_client_bytes(&forged).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_mutation_of_the_hello_is_rejected(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut hello = hello();
        let at = at.index(hello.len());
        hello[at] ^= flip;
        prop_assert!(verify(&secret(), SNI, &hello, NOW, WINDOW).is_err());
    }

    #[test]
    fn peek_and_verify_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = peek(&bytes);
        let _ = verify(&secret(), SNI, &bytes, NOW, WINDOW);
        let _ = postern_cloak::parse_client_hello(&bytes);
        let _ = learn_cover_shape(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(cut in 0usize..2000, tail in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut bytes = hello();
        bytes.truncate(cut);
        bytes.extend_from_slice(&tail);
        let _ = peek(&bytes);
        let _ = verify(&secret(), SNI, &bytes, NOW, WINDOW);
        let _ = postern_cloak::parse_client_hello(&bytes);
    }
}
