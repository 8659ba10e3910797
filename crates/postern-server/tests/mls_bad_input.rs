//! The MLS delivery service and the SDK from the attacker's side: malformed
//! MLS messages, stale commits, strangers, forged credentials, exhausted
//! key packages, and a server (or network) that replays or reorders —
//! typed errors, no panics, and no damage to any client's group state.

mod common;

use std::time::Duration;

use common::{Raw, TestServer, error_code};
use postern_client::{Client, Connection, Target};
use postern_proto::mls::{ContentType, private_message_header};
use postern_proto::pb::{self, ErrorCode, request::Kind as Req, response::Kind as Resp};

fn to(s: &str) -> Target {
    s.parse().unwrap()
}

fn id() -> bytes::Bytes {
    postern_proto::ids::new_message_id().to_vec().into()
}

async fn create_group(raw: &mut Raw, group: &[u8]) {
    let resp = raw
        .call(Req::CreateGroup(pb::CreateGroup {
            group_id: group.to_vec().into(),
        }))
        .await;
    assert!(matches!(resp, Resp::Ok(_)), "{resp:?}");
}

/// A GroupInfo-shaped MLSMessage (the server reads only its wire format).
fn group_info() -> bytes::Bytes {
    vec![0, 1, 0, 4, 0xde, 0xad].into()
}

fn commit(group: &[u8], epoch: u64) -> pb::GroupCommit {
    let mut body = private_message_header(group, epoch, ContentType::Commit);
    body.extend_from_slice(&[0; 32]);
    pb::GroupCommit {
        client_message_id: id(),
        group_id: group.to_vec().into(),
        commit: body.into(),
        group_info: group_info(),
        ..Default::default()
    }
}

fn send(group: &[u8], message: Vec<u8>) -> Req {
    Req::GroupSend(pb::GroupSend {
        client_message_id: id(),
        group_id: group.to_vec().into(),
        message: message.into(),
    })
}

fn stale_epoch(resp: &Resp) -> u64 {
    match resp {
        Resp::Error(e) if e.code == ErrorCode::StaleEpoch as i32 => e.current_epoch,
        other => panic!("expected STALE_EPOCH, got {other:?}"),
    }
}

#[tokio::test]
async fn the_delivery_service_refuses_what_breaks_its_rules() {
    let t = TestServer::start().await;
    let (alice, _) = t.member("alice", "+14155550801").await;
    let (mallory, _) = t.member("mallory", "+14155550802").await;
    let mut a = t.raw_as(&alice).await;
    let mut m = t.raw_as(&mallory).await;
    let group = b"0123456789abcdef";
    create_group(&mut a, group).await;
    let again = a
        .call(Req::CreateGroup(pb::CreateGroup {
            group_id: group.to_vec().into(),
        }))
        .await;
    assert_eq!(error_code(&again), ErrorCode::GroupExists);

    // Not MLS, the wrong content type, another group's message.
    for (message, code) in [
        (b"hello in clear".to_vec(), ErrorCode::BadMlsMessage),
        (
            private_message_header(group, 0, ContentType::Commit),
            ErrorCode::BadMlsMessage,
        ),
        (
            private_message_header(b"another group id", 0, ContentType::Application),
            ErrorCode::BadMlsMessage,
        ),
        (vec![], ErrorCode::BadMlsMessage),
    ] {
        assert_eq!(error_code(&a.call(send(group, message)).await), code);
    }
    let app = private_message_header(group, 0, ContentType::Application);
    assert_eq!(
        error_code(&m.call(send(group, app.clone())).await),
        ErrorCode::NotAMember
    );
    assert_eq!(
        error_code(&a.call(send(b"no such group", app.clone())).await),
        ErrorCode::BadMlsMessage,
        "the header names another group"
    );
    let unknown = private_message_header(b"no such group", 0, ContentType::Application);
    assert_eq!(
        error_code(&a.call(send(b"no such group", unknown)).await),
        ErrorCode::UnknownGroup
    );

    // Commits: the first for an epoch wins; a later one learns the epoch.
    let resp = a.call(Req::GroupCommit(commit(group, 0))).await;
    assert!(matches!(resp, Resp::Sent(_)), "{resp:?}");
    assert_eq!(
        stale_epoch(&a.call(Req::GroupCommit(commit(group, 0))).await),
        1
    );
    assert_eq!(
        stale_epoch(&a.call(Req::GroupCommit(commit(group, 7))).await),
        1
    );
    assert_eq!(
        stale_epoch(&a.call(send(group, app)).await),
        1,
        "app messages too"
    );
    assert_eq!(
        error_code(&m.call(Req::GroupCommit(commit(group, 1))).await),
        ErrorCode::NotAMember
    );
    // Welcomes only for added devices; external commits add only their sender.
    let mallory_addr = pb::DeviceAddress {
        account_id: mallory.device().unwrap().account.0.to_vec().into(),
        device_id: 1,
    };
    let mut c = commit(group, 1);
    c.welcome = vec![0, 1, 0, 3, 0].into();
    c.welcome_to = vec![mallory_addr.clone()];
    assert_eq!(
        error_code(&a.call(Req::GroupCommit(c)).await),
        ErrorCode::BadRequest
    );
    let mut external = vec![0, 1, 0, 1];
    postern_proto::mls::encode_varint(group.len(), &mut external);
    external.extend_from_slice(group);
    external.extend_from_slice(&1u64.to_be_bytes());
    external.extend_from_slice(&[4, 0, 3]);
    let mut c = commit(group, 1);
    c.commit = external.into();
    c.added = vec![mallory_addr];
    assert_eq!(
        error_code(&a.call(Req::GroupCommit(c)).await),
        ErrorCode::BadRequest
    );
    let mut c = commit(group, 1);
    c.group_info = b"not a group info".to_vec().into();
    assert_eq!(
        error_code(&a.call(Req::GroupCommit(c)).await),
        ErrorCode::BadMlsMessage
    );

    // Group info only for members' accounts.
    let resp = m
        .call(Req::FetchGroupInfo(pb::FetchGroupInfo {
            group_id: group.to_vec().into(),
            epoch: None,
        }))
        .await;
    assert_eq!(error_code(&resp), ErrorCode::NotAMember);

    // Key packages must be key packages, small, and not too many.
    let upload = |packages: Vec<Vec<u8>>| {
        Req::UploadKeyPackages(pb::UploadKeyPackages {
            key_packages: packages.into_iter().map(Into::into).collect(),
            last_resort: Default::default(),
        })
    };
    assert_eq!(
        error_code(&m.call(upload(vec![b"junk".to_vec()])).await),
        ErrorCode::BadMlsMessage
    );
    let mut huge = vec![0, 1, 0, 5];
    huge.resize(64 * 1024, 0);
    assert_eq!(
        error_code(&m.call(upload(vec![huge])).await),
        ErrorCode::PayloadTooLarge
    );
    assert_eq!(
        error_code(&m.call(upload(vec![vec![0, 1, 0, 5]; 101])).await),
        ErrorCode::BadRequest
    );

    // None of it without a device.
    let mut anon = t.raw().await;
    for req in [
        Req::CreateGroup(pb::CreateGroup {
            group_id: b"x".to_vec().into(),
        }),
        Req::ListGroups(pb::ListGroups {}),
        Req::ClaimKeyPackages(pb::ClaimKeyPackages {
            account_id: vec![0; 16].into(),
        }),
    ] {
        assert_eq!(
            error_code(&anon.call(req).await),
            ErrorCode::NotAuthenticated
        );
    }
}

#[tokio::test]
async fn key_package_claims_are_rate_limited() {
    let t = TestServer::start_with(|c| c.limits.key_package_claims_per_device_per_hour = 3).await;
    let (alice, _) = t.member("alice", "+14155550811").await;
    let (bob, _) = t.member("bob", "+14155550812").await;
    let mut a = t.raw_as(&alice).await;
    let claim = || {
        Req::ClaimKeyPackages(pb::ClaimKeyPackages {
            account_id: bob.device().unwrap().account.0.to_vec().into(),
        })
    };
    for _ in 0..3 {
        assert!(matches!(a.call(claim()).await, Resp::ClaimedKeyPackages(_)));
    }
    assert_eq!(error_code(&a.call(claim()).await), ErrorCode::RateLimited);
}

/// Receives until `idle` passes without anything new.
async fn drain(conn: &mut Connection) -> Vec<postern_client::ReceivedMessage> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(300), conn.recv()).await
    {
        out.push(m);
    }
    out
}

async fn raw_send(raw: &mut Raw, to: &Client, payload: Vec<u8>) {
    let resp = raw
        .call(Req::Send(pb::Send {
            client_message_id: id(),
            to_account_id: to.device().unwrap().account.0.to_vec().into(),
            payload: payload.into(),
        }))
        .await;
    assert!(matches!(resp, Resp::Sent(_)), "{resp:?}");
}

#[tokio::test]
async fn garbage_and_replays_leave_the_client_intact() {
    let t = TestServer::start().await;
    let (_, mut a) = t.member("alice", "+14155550821").await;
    let (bob, mut b) = t.member("bob", "+14155550822").await;
    let (mallory, _) = t.member("mallory", "+14155550823").await;
    a.send_text(&to("@bob"), "first").await.unwrap();
    b.sync().await.unwrap();
    drain(&mut b).await;

    // Mallory (or a compromised server) pushes junk straight into bob's
    // queue: not MLS, a truncated header, a Welcome nobody can open.
    let mut m = t.raw_as(&mallory).await;
    raw_send(&mut m, &bob, b"plain text".to_vec()).await;
    raw_send(&mut m, &bob, vec![0, 1, 0, 2, 0x10]).await;
    raw_send(&mut m, &bob, vec![0, 1, 0, 3, 0, 1, 2, 3]).await;

    // And replays a message bob already read: its key is gone.
    let mut copy = t.raw_as(&bob).await;
    let after_seq = bob.with_home(|h| h.last_seq()).unwrap();
    copy.call(Req::Subscribe(pb::Subscribe { after_seq })).await;
    a.send_text(&to("@bob"), "second").await.unwrap();
    let original = loop {
        let env = tokio::time::timeout(Duration::from_secs(10), copy.r.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::envelope::Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(d)),
        })) = env.body
            && let Some(msg) = d.messages.into_iter().find(|q| q.payload.len() > 100)
        {
            break msg.payload;
        }
    };
    drop(copy);
    b.sync().await.unwrap();
    let got = drain(&mut b).await;
    let warnings: Vec<&str> = got
        .iter()
        .filter(|m| m.is_system())
        .map(|m| m.text())
        .collect();
    assert_eq!(
        warnings.len(),
        3,
        "each bad message is reported: {warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with("a message could not be read"))
    );
    assert!(got.iter().any(|m| m.text() == "second"));

    raw_send(&mut m, &bob, original.to_vec()).await;
    b.sync().await.unwrap();
    let got = drain(&mut b).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].is_system(),
        "the replay is refused, not shown as a message"
    );

    // Bob's state is intact: the conversation goes on both ways.
    a.send_text(&to("@bob"), "third").await.unwrap();
    b.send_text(&to("@alice"), "all fine").await.unwrap();
    b.sync().await.unwrap();
    assert!(drain(&mut b).await.iter().any(|m| m.text() == "third"));
    a.sync().await.unwrap();
    assert!(drain(&mut a).await.iter().any(|m| m.text() == "all fine"));
}

#[tokio::test]
async fn a_forged_credential_is_never_added() {
    // Twenty packages per device: a fresh upload replaces all older ones.
    let t = TestServer::start_with(|c| c.limits.key_packages_per_device = 20).await;
    let (alice, mut a) = t.member("alice", "+14155550831").await;
    let (mallory, _) = t.member("mallory", "+14155550832").await;
    let mut m = t.raw_as(&mallory).await;

    // Mallory replaces her key packages with ones whose credential claims
    // to be alice's device, signed with mallory's own key.
    let alice_addr = alice.device().unwrap();
    let forged = mallory
        .with_engine(|e, h| {
            let as_alice = postern_client::mls::Engine {
                provider: postern_client::mls::Provider::new(h.connection()),
                signer: e.signer,
                me: alice_addr,
                suite: e.suite,
            };
            Ok(as_alice.key_packages(20, true).unwrap())
        })
        .unwrap();
    let (last, one_time) = forged.split_last().unwrap();
    let resp = m
        .call(Req::UploadKeyPackages(pb::UploadKeyPackages {
            key_packages: one_time.iter().cloned().map(Into::into).collect(),
            last_resort: last.clone().into(),
        }))
        .await;
    assert!(matches!(resp, Resp::KeyPackageCount(_)), "{resp:?}");

    let err = a.send_text(&to("@mallory"), "hi").await.unwrap_err();
    assert!(err.to_string().contains("no usable key packages"), "{err}");
    let forged_only = alice.with_home(|h| h.conversations()).unwrap().len();

    // With honest packages again, the same send goes through: it was the
    // forgery that was refused.
    let honest = mallory
        .with_engine(|e, _| Ok(e.key_packages(20, true).unwrap()))
        .unwrap();
    let (last, one_time) = honest.split_last().unwrap();
    m.call(Req::UploadKeyPackages(pb::UploadKeyPackages {
        key_packages: one_time.iter().cloned().map(Into::into).collect(),
        last_resort: last.clone().into(),
    }))
    .await;
    a.send_text(&to("@mallory"), "hi again").await.unwrap();
    assert_eq!(
        forged_only, 0,
        "no conversation was made with the forged packages"
    );
}

#[tokio::test]
async fn a_welcome_to_a_group_the_server_does_not_know_is_refused() {
    let t = TestServer::start().await;
    let (bob, mut b) = t.member("bob", "+14155550841").await;
    let (mallory, _) = t.member("mallory", "+14155550842").await;
    let mut m = t.raw_as(&mallory).await;
    let bob_addr = bob.device().unwrap();
    let Resp::ClaimedKeyPackages(claimed) = m
        .call(Req::ClaimKeyPackages(pb::ClaimKeyPackages {
            account_id: bob_addr.account.0.to_vec().into(),
        }))
        .await
    else {
        panic!("claim")
    };
    let bob_key: [u8; 32] = b.whoami().await.unwrap().devices[0].identity_key[..]
        .try_into()
        .unwrap();
    let directory = [(bob_addr.account, [(1u32, bob_key)].into_iter().collect())]
        .into_iter()
        .collect();
    // A group mallory made only on her device: a real Welcome, for a group
    // the server never registered.
    let welcome = mallory
        .with_engine(|e, _| {
            let kp = e
                .validate_key_package(&claimed.key_packages[0].key_package, bob_addr, &directory)
                .unwrap();
            let mut g = e
                .create_group(b"phantom-group-id", &Default::default())
                .unwrap();
            Ok(e.commit(&mut g, vec![kp], Vec::new())
                .unwrap()
                .welcome
                .unwrap())
        })
        .unwrap();
    raw_send(&mut m, &bob, welcome).await;
    b.sync().await.unwrap();
    let got = drain(&mut b).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].is_system() && got[0].text().starts_with("a message could not be read"));
    assert!(bob.with_home(|h| h.conversations()).unwrap().is_empty());
}

#[tokio::test]
async fn a_member_without_key_packages_cannot_be_added_and_says_why() {
    let t = TestServer::start().await;
    let (_, mut a) = t.member("alice", "+14155550851").await;
    // Dave registers with a bare protocol client that uploads nothing.
    let keys = postern_proto::keys::NoiseKeypair::generate();
    let identity = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let mut raw = t.raw().await;
    raw.call(Req::RequestCode(pb::RequestCode {
        phone: "+14155550852".into(),
    }))
    .await;
    let mut dave = t.raw_with(&keys).await;
    let resp = dave
        .call(Req::Register(pb::Register {
            phone: "+14155550852".into(),
            code: t.code("+14155550852"),
            device: Some(pb::DeviceKeys {
                identity_key: identity.verifying_key().to_bytes().to_vec().into(),
                binding_signature: postern_proto::keys::sign_device_binding(
                    &identity,
                    &keys.public,
                )
                .to_vec()
                .into(),
                name: "bare".into(),
            }),
            username: "dave".into(),
            invite: String::new(),
        }))
        .await;
    let Resp::Registered(reg) = resp else {
        panic!("{resp:?}")
    };
    let Resp::ClaimedKeyPackages(claimed) = raw_claim(&t, &reg).await else {
        panic!("claim")
    };
    assert!(claimed.key_packages.is_empty());
    assert_eq!(claimed.exhausted, vec![1]);
    let err = a.send_text(&to("@dave"), "hello?").await.unwrap_err();
    assert!(
        err.to_string().contains("@dave has no usable key packages"),
        "{err}"
    );
}

/// A claim of `reg`'s key packages by a third member.
async fn raw_claim(t: &TestServer, reg: &pb::Registered) -> Resp {
    let (claimer, _) = t.member("claimer", "+14155550853").await;
    t.raw_as(&claimer)
        .await
        .call(Req::ClaimKeyPackages(pb::ClaimKeyPackages {
            account_id: reg.device.as_ref().unwrap().account_id.clone(),
        }))
        .await
}

#[tokio::test]
async fn reordered_messages_fail_cleanly_and_leave_the_group_state_intact() {
    let t = TestServer::start().await;
    let (_, mut a) = t.member("alice", "+14155550861").await;
    let (bob, mut b) = t.member("bob", "+14155550862").await;
    let (_, _c) = t.member("carol", "+14155550863").await;
    a.create_group("order", &["@bob".parse().unwrap()])
        .await
        .unwrap();
    b.sync().await.unwrap();
    drain(&mut b).await;
    drop(b);

    // Capture, without processing them, the commit that adds carol and
    // the message that follows it in the next epoch.
    let mut copy = t.raw_as(&bob).await;
    let after_seq = bob.with_home(|h| h.last_seq()).unwrap();
    copy.call(Req::Subscribe(pb::Subscribe { after_seq })).await;
    a.add_members(&to("#order"), &["@carol".parse().unwrap()])
        .await
        .unwrap();
    a.send_text(&to("#order"), "next epoch").await.unwrap();
    let mut captured: Vec<pb::QueuedMessage> = Vec::new();
    while captured.len() < 3 {
        let env = tokio::time::timeout(Duration::from_secs(10), copy.r.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::envelope::Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(d)),
        })) = env.body
        {
            captured.extend(d.messages);
        }
    }
    let header = |m: &pb::QueuedMessage| {
        postern_proto::mls::framed_header(&m.payload)
            .unwrap()
            .content_type
    };
    let commit = captured
        .iter()
        .find(|m| header(m) == ContentType::Commit)
        .unwrap();
    let later = captured
        .iter()
        .filter(|m| header(m) == ContentType::Application)
        .last()
        .unwrap();

    // Delivered out of order: the later message first.
    let open = |m: &pb::QueuedMessage| {
        bob.with_engine(|e, _| {
            let mut g = e.load(&m.group_id).unwrap().unwrap();
            let before = g.epoch();
            let msg = postern_client::mls::parse(&m.payload).unwrap();
            let result = e.process(&mut g, msg.try_into_protocol_message().unwrap());
            let merged = match result {
                Ok(p) => match p.into_content() {
                    openmls::prelude::ProcessedMessageContent::StagedCommitMessage(s) => {
                        e.merge(&mut g, *s).map(|_| "commit")
                    }
                    openmls::prelude::ProcessedMessageContent::ApplicationMessage(_) => {
                        Ok("message")
                    }
                    _ => Ok("other"),
                },
                Err(e) => Err(e),
            };
            Ok((
                before,
                e.load(&m.group_id).unwrap().unwrap().epoch(),
                merged.map_err(|e| e.to_string()),
            ))
        })
        .unwrap()
    };
    let (before, after, result) = open(later);
    assert!(
        result.is_err(),
        "a message from an epoch not yet reached is refused"
    );
    assert_eq!(before, after, "and the group state is unchanged");
    let (_, after_commit, result) = open(commit);
    assert_eq!(result, Ok("commit"));
    assert_eq!(after_commit.as_u64(), after.as_u64() + 1);
    let (_, _, result) = open(later);
    assert_eq!(result, Ok("message"), "in order, the same message opens");
}
