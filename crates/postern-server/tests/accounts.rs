//! Registration from the attacker's side too: wrong, expired, reused and
//! guessed codes, rate limits, bad numbers and usernames.

mod common;

use std::time::Duration;

use common::{TestServer, error_code};
use postern_proto::pb::{self, ErrorCode, request::Kind as Req, response::Kind as Resp};

const PHONE: &str = "+14155552671";

fn keys_for(raw_key: &postern_proto::keys::NoiseKeypair) -> pb::DeviceKeys {
    let identity = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    pb::DeviceKeys {
        identity_key: identity.verifying_key().to_bytes().to_vec().into(),
        binding_signature: postern_proto::keys::sign_device_binding(&identity, &raw_key.public)
            .to_vec()
            .into(),
        name: "raw".into(),
    }
}

async fn register_raw(
    t: &TestServer,
    phone: &str,
    code: &str,
) -> (pb::response::Kind, postern_proto::keys::NoiseKeypair) {
    let keys = postern_proto::keys::NoiseKeypair::generate();
    let mut raw = t.raw_with(&keys).await;
    let resp = raw
        .call(Req::Register(pb::Register {
            phone: phone.into(),
            code: code.into(),
            device: Some(keys_for(&keys)),
            username: String::new(),
            invite: String::new(),
        }))
        .await;
    (resp, keys)
}

async fn request_code(t: &TestServer, phone: &str) -> pb::response::Kind {
    t.raw()
        .await
        .call(Req::RequestCode(pb::RequestCode {
            phone: phone.into(),
        }))
        .await
}

#[tokio::test]
async fn a_code_registers_once_and_a_reused_code_is_refused() {
    let t = TestServer::start().await;
    let sent = request_code(&t, "+1 (415) 555-2671").await;
    let Resp::CodeSent(sent) = sent else {
        panic!("{sent:?}")
    };
    assert_eq!(sent.phone, PHONE, "normalized to E.164");
    let code = t.code(PHONE);
    let (ok, keys) = register_raw(&t, PHONE, &code).await;
    assert!(matches!(ok, Resp::Registered(_)), "{ok:?}");
    let (again, _) = register_raw(&t, PHONE, &code).await;
    assert_eq!(error_code(&again), ErrorCode::CodeUsed);

    // The registered key now authenticates; its sessions may not register.
    let mut raw = t.raw_with(&keys).await;
    assert!(raw.hello.device.is_some());
    let resp = raw
        .call(Req::Register(pb::Register {
            phone: "+14155552672".into(),
            code: "000000".into(),
            device: Some(keys_for(&keys)),
            username: String::new(),
            invite: String::new(),
        }))
        .await;
    assert_eq!(error_code(&resp), ErrorCode::AlreadyAuthenticated);
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let t = TestServer::start_with(|c| c.limits.code_ttl = Duration::from_secs(1)).await;
    request_code(&t, PHONE).await;
    let code = t.code(PHONE);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (resp, _) = register_raw(&t, PHONE, &code).await;
    assert_eq!(error_code(&resp), ErrorCode::CodeExpired);
}

#[tokio::test]
async fn wrong_guesses_burn_the_code() {
    let t = TestServer::start().await;
    request_code(&t, PHONE).await;
    let code = t.code(PHONE);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for _ in 0..5 {
        let (resp, _) = register_raw(&t, PHONE, wrong).await;
        assert_eq!(error_code(&resp), ErrorCode::CodeInvalid);
    }
    let (resp, _) = register_raw(&t, PHONE, &code).await;
    assert_eq!(
        error_code(&resp),
        ErrorCode::CodeInvalid,
        "the right code no longer works after 5 wrong ones"
    );
}

#[tokio::test]
async fn code_requests_are_rate_limited_per_number_and_per_address() {
    let t = TestServer::start_with(|c| {
        c.limits.code_interval = Duration::from_secs(30);
        c.limits.code_requests_per_ip_per_hour = 3;
    })
    .await;
    assert!(matches!(request_code(&t, PHONE).await, Resp::CodeSent(_)));
    let again = request_code(&t, PHONE).await;
    assert_eq!(error_code(&again), ErrorCode::RateLimited);
    let Resp::Error(e) = again else {
        unreachable!()
    };
    assert!(
        e.retry_after_ms > 0 && e.retry_after_ms <= 30_000,
        "{}",
        e.retry_after_ms
    );

    // The refused request still counted against the address: two more numbers
    // use up the hourly budget of 3, the third is refused.
    assert!(matches!(
        request_code(&t, "+14155552672").await,
        Resp::CodeSent(_)
    ));
    let refused = request_code(&t, "+14155552673").await;
    assert_eq!(error_code(&refused), ErrorCode::RateLimited);
}

#[tokio::test]
async fn codes_per_number_per_hour_are_capped() {
    let t = TestServer::start_with(|c| c.limits.codes_per_phone_per_hour = 2).await;
    for _ in 0..2 {
        assert!(matches!(request_code(&t, PHONE).await, Resp::CodeSent(_)));
    }
    assert_eq!(
        error_code(&request_code(&t, PHONE).await),
        ErrorCode::RateLimited
    );
}

#[tokio::test]
async fn bad_numbers_and_usernames_get_clear_errors() {
    let t = TestServer::start().await;
    for bad in ["4155552671", "+1 555", "call me", ""] {
        let resp = request_code(&t, bad).await;
        assert_eq!(error_code(&resp), ErrorCode::InvalidPhone, "{bad:?}");
        let Resp::Error(e) = resp else { unreachable!() };
        assert!(e.message.contains("phone"), "{}", e.message);
    }

    let (alice_client, alice) = t.member("alice", PHONE).await;
    // The client checks first; the server checks again for clients that don't.
    let mut raw = t.raw_as(&alice_client).await;
    for bad in ["ab", "9lives", "has space"] {
        let err = alice.set_username(bad).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidUsername), "{bad:?}");
        let resp = raw
            .call(Req::SetUsername(pb::SetUsername {
                username: bad.into(),
            }))
            .await;
        assert_eq!(error_code(&resp), ErrorCode::InvalidUsername, "{bad:?}");
    }
    let client = t.client("bob");
    let mut bob = client.connect().await.unwrap();
    bob.request_code("+14155552672").await.unwrap();
    let err = bob
        .register("+14155552672", &t.code("+14155552672"), Some("Alice"), "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UsernameTaken));
    // The code was not used up by the refused registration.
    bob.register("+14155552672", &t.code("+14155552672"), Some("bob"), "x")
        .await
        .unwrap();
    alice.set_username("").await.unwrap();
    bob.set_username("@ALICE").await.unwrap();
    assert_eq!(
        bob.whoami().await.unwrap().username.as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn a_forged_device_binding_is_refused() {
    let t = TestServer::start().await;
    request_code(&t, PHONE).await;
    let keys = postern_proto::keys::NoiseKeypair::generate();
    let other = postern_proto::keys::NoiseKeypair::generate();
    let mut raw = t.raw_with(&keys).await;
    let resp = raw
        .call(Req::Register(pb::Register {
            phone: PHONE.into(),
            code: t.code(PHONE),
            // Signed for another Noise key: must not bind to this session.
            device: Some(keys_for(&other)),
            username: String::new(),
            invite: String::new(),
        }))
        .await;
    assert_eq!(error_code(&resp), ErrorCode::BadSignature);
}

#[tokio::test]
async fn unauthenticated_sessions_can_do_nothing_else() {
    let t = TestServer::start().await;
    let mut raw = t.raw().await;
    for req in [
        Req::Whoami(pb::Whoami {}),
        Req::CreateLinkToken(pb::CreateLinkToken {}),
        Req::Subscribe(pb::Subscribe { after_seq: 0 }),
        Req::Ack(pb::Ack { up_to_seq: 10 }),
        Req::SetUsername(pb::SetUsername {
            username: "mallory".into(),
        }),
        Req::Resolve(pb::Resolve {
            who: Some(pb::resolve::Who::Phone(PHONE.into())),
        }),
    ] {
        let resp = raw.call(req.clone()).await;
        assert_eq!(error_code(&resp), ErrorCode::NotAuthenticated, "{req:?}");
    }
}
