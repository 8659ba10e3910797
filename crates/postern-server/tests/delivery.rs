//! Delivery over real loopback sockets: conversations, offline queues,
//! multi-device fan-out, idempotent retries, acks. The SDK's conversations
//! are MLS groups (see mls.rs for their rules); the raw-protocol tests here
//! drive the queue underneath directly.

mod common;

use std::time::Duration;

use common::{TestServer, error_code};
use postern_client::{Recipient, Target};
use postern_proto::pb::{self, ErrorCode, request::Kind as Req, response::Kind as Resp};

/// The next message, skipping membership events.
async fn recv_one(conn: &mut postern_client::Connection) -> postern_client::ReceivedMessage {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("connection open");
        if !m.is_system() {
            return m;
        }
    }
}

fn contact(r: Recipient) -> Target {
    Target::Contact(r)
}

#[tokio::test]
async fn two_members_converse_by_username_and_phone() {
    let t = TestServer::start().await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let (_, mut bob) = t.member("bob", "+14155552672").await;
    bob.subscribe().await.unwrap();

    alice
        .send_text(&contact(Recipient::Username("bob".into())), "hi bob")
        .await
        .unwrap();
    let m = recv_one(&mut bob).await;
    assert_eq!((m.from.as_str(), m.text()), ("@alice", "hi bob"));
    assert!(m.item.sent_at > 0 && m.item.received_at >= m.item.sent_at - 60_000);

    alice.subscribe().await.unwrap();
    bob.send_text(
        &contact(Recipient::Phone("+1 415 555 2671".into())),
        "hi alice",
    )
    .await
    .unwrap();
    let m = recv_one(&mut alice).await;
    assert_eq!((m.from.as_str(), m.text()), ("@bob", "hi alice"));
}

#[tokio::test]
async fn offline_device_gets_queued_messages_in_order_and_acked_ones_are_gone() {
    let t = TestServer::start().await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let (bob_client, bob) = t.member("bob", "+14155552672").await;
    drop(bob);
    for i in 0..5 {
        alice
            .send_text(
                &contact(Recipient::Username("bob".into())),
                &format!("m{i}"),
            )
            .await
            .unwrap();
    }
    let mut bob = bob_client.connect().await.unwrap();
    bob.subscribe().await.unwrap();
    for i in 0..5 {
        assert_eq!(recv_one(&mut bob).await.text(), format!("m{i}"));
    }
    drop(bob);

    // Everything was acked: a fresh subscription from seq 0 finds nothing.
    let mut raw = t.raw_as(&bob_client).await;
    assert!(raw.hello.device.is_some(), "the device key authenticates");
    raw.call(Req::Subscribe(pb::Subscribe { after_seq: 0 }))
        .await;
    let pushed = tokio::time::timeout(Duration::from_millis(500), raw.r.recv()).await;
    assert!(pushed.is_err(), "nothing is left after the ack: {pushed:?}");
}

#[tokio::test]
async fn a_retried_send_is_stored_and_delivered_once() {
    let t = TestServer::start().await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let (_, mut bob) = t.member("bob", "+14155552672").await;
    let bob_id = bob.whoami().await.unwrap().account;

    let pending = alice
        .queue_text(&contact(Recipient::Account(bob_id)), "once")
        .await
        .unwrap();
    let first = alice.send_pending(&pending).await.unwrap();
    let again = alice.send_pending(&pending).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "the retry is recognised");
    assert_eq!(first.received_at_ms, again.received_at_ms);
    alice
        .send_text(&contact(Recipient::Account(bob_id)), "next")
        .await
        .unwrap();

    bob.subscribe().await.unwrap();
    assert_eq!(recv_one(&mut bob).await.text(), "once");
    assert_eq!(recv_one(&mut bob).await.text(), "next");
}

#[tokio::test]
async fn every_device_of_the_recipient_gets_the_message() {
    let t = TestServer::start().await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let (_, bob) = t.member("bob", "+14155552672").await;
    let token = bob.create_link_token().await.unwrap();

    let tablet = t.client("bob-tablet");
    let mut tablet_conn = tablet.connect().await.unwrap();
    let addr = tablet_conn.link_device(&token, "tablet").await.unwrap();
    assert_eq!(addr.device, 2);
    assert_eq!(bob.whoami().await.unwrap().devices.len(), 2);

    // The token works once.
    let other = t.client("intruder");
    let mut other_conn = other.connect().await.unwrap();
    let err = other_conn.link_device(&token, "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TokenInvalid));

    let mut bob = bob;
    bob.subscribe().await.unwrap();
    tablet_conn.subscribe().await.unwrap();
    alice
        .send_text(&contact(Recipient::Username("bob".into())), "to all of you")
        .await
        .unwrap();
    assert_eq!(recv_one(&mut bob).await.text(), "to all of you");
    assert_eq!(recv_one(&mut tablet_conn).await.text(), "to all of you");
}

#[tokio::test]
async fn unknown_recipients_and_oversized_payloads_are_typed_errors() {
    let t = TestServer::start().await;
    let (_, mut alice) = t.member("alice", "+14155552671").await;
    let err = alice
        .send_text(&contact(Recipient::Username("nobody".into())), "hello?")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownRecipient));
    let err = alice
        .send_text(&contact(Recipient::Phone("+14155559999".into())), "hello?")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownRecipient));

    let mut raw = t.raw().await;
    let resp = raw
        .call(Req::Send(pb::Send {
            client_message_id: vec![1; 16].into(),
            to_account_id: vec![2; 16].into(),
            payload: vec![0; 16].into(),
        }))
        .await;
    assert_eq!(error_code(&resp), ErrorCode::NotAuthenticated);
}

#[tokio::test]
async fn payloads_are_stored_and_delivered_byte_for_byte() {
    let t = TestServer::start().await;
    let (alice_client, _) = t.member("alice", "+14155552671").await;
    let (bob_client, bob) = t.member("bob", "+14155552672").await;
    let bob_id = bob.whoami().await.unwrap().account;
    drop(bob);
    let mut a = t.raw_as(&alice_client).await;
    // Not a valid client content encoding: the server must not care.
    let payload: Vec<u8> = (0..=255u8)
        .cycle()
        .take(postern_proto::MAX_PAYLOAD_LEN)
        .collect();
    let resp = a
        .call(Req::Send(pb::Send {
            client_message_id: vec![7; 16].into(),
            to_account_id: bob_id.0.to_vec().into(),
            payload: payload.clone().into(),
        }))
        .await;
    assert!(matches!(resp, Resp::Sent(_)), "{resp:?}");
    let too_big = a
        .call(Req::Send(pb::Send {
            client_message_id: vec![8; 16].into(),
            to_account_id: bob_id.0.to_vec().into(),
            payload: vec![0; postern_proto::MAX_PAYLOAD_LEN + 1].into(),
        }))
        .await;
    assert_eq!(error_code(&too_big), ErrorCode::PayloadTooLarge);

    let mut b = t.raw_as(&bob_client).await;
    b.call(Req::Subscribe(pb::Subscribe { after_seq: 0 })).await;
    let env = b.r.recv().await.unwrap().unwrap();
    let Some(pb::envelope::Body::Push(pb::Push {
        kind: Some(pb::push::Kind::Deliver(d)),
    })) = env.body
    else {
        panic!("expected a delivery, got {env:?}")
    };
    assert_eq!(d.messages.len(), 1);
    assert_eq!(d.messages[0].payload.as_ref(), &payload[..]);
    assert_eq!(d.messages[0].client_message_id.as_ref(), &[7; 16]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_reach_a_live_device_exactly_once_in_sequence() {
    // Exercises both delivery paths: messages handed over in memory right
    // after commit, and fetches from the store when hand-overs arrive out of
    // order or overflow the mailbox.
    let t = TestServer::start().await;
    let (bob_client, bob) = t.member("bob", "+14155552600").await;
    let bob_id = bob.whoami().await.unwrap().account;
    drop(bob);
    // Five senders with three sessions each, all sending at once.
    let mut sessions = Vec::new();
    for i in 0..5 {
        let (client, _) = t
            .member(&format!("sender{i}"), &format!("+1415555261{i}"))
            .await;
        for _ in 0..3 {
            sessions.push(t.raw_as(&client).await);
        }
    }
    let mut raw = t.raw_as(&bob_client).await;
    raw.call(Req::Subscribe(pb::Subscribe { after_seq: 0 }))
        .await;

    let per_session = 100;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, mut session) in sessions.into_iter().enumerate() {
        tasks.spawn(async move {
            for j in 0..per_session {
                let resp = session
                    .call(Req::Send(pb::Send {
                        client_message_id: postern_proto::ids::new_message_id().to_vec().into(),
                        to_account_id: bob_id.0.to_vec().into(),
                        payload: format!("{s}/{j}").into_bytes().into(),
                    }))
                    .await;
                assert!(matches!(resp, Resp::Sent(_)), "{resp:?}");
            }
        });
    }

    let total = 15 * per_session;
    let mut seqs = Vec::new();
    while seqs.len() < total {
        let env = tokio::time::timeout(Duration::from_secs(20), raw.r.recv())
            .await
            .expect("all messages within 20 s")
            .unwrap()
            .unwrap();
        if let Some(pb::envelope::Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(d)),
        })) = env.body
        {
            let last = d.messages.last().unwrap().seq;
            seqs.extend(d.messages.iter().map(|m| m.seq));
            raw.w
                .send(&postern_proto::frame::envelope(
                    0,
                    pb::envelope::Body::Request(pb::Request {
                        kind: Some(Req::Ack(pb::Ack { up_to_seq: last })),
                    }),
                ))
                .await
                .unwrap();
        }
    }
    while tasks.join_next().await.is_some() {}
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(seqs, expected, "every seq once, in order, no gaps");
    let extra = tokio::time::timeout(Duration::from_millis(300), raw.r.recv()).await;
    assert!(
        !matches!(
            extra,
            Ok(Ok(Some(pb::Envelope {
                body: Some(pb::envelope::Body::Push(_)),
                ..
            })))
        ),
        "nothing is pushed twice: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_to_a_live_device_are_split_across_frames() {
    // 8 × 200 KiB would not fit one 1 MiB frame; however they reach the
    // connection (mailbox or fetch), it must split them, not fail. The
    // mailbox's own limit is tested deterministically in conn.rs.
    let t = TestServer::start().await;
    let (alice_client, _) = t.member("alice", "+14155552671").await;
    let (bob_client, bob) = t.member("bob", "+14155552672").await;
    let bob_id = bob.whoami().await.unwrap().account;
    drop(bob);
    let mut b = t.raw_as(&bob_client).await;
    b.call(Req::Subscribe(pb::Subscribe { after_seq: 0 })).await;
    // All eight sends in one write, so they commit together and reach
    // bob's mailbox together.
    let mut a = t.raw_as(&alice_client).await;
    let sends: Vec<pb::Envelope> = (0..8u8)
        .map(|i| {
            postern_proto::frame::envelope(
                100 + u64::from(i),
                pb::envelope::Body::Request(pb::Request {
                    kind: Some(Req::Send(pb::Send {
                        client_message_id: vec![i; 16].into(),
                        to_account_id: bob_id.0.to_vec().into(),
                        payload: vec![i; 200 * 1024].into(),
                    })),
                }),
            )
        })
        .collect();
    a.w.send_batch(sends.iter()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        let env = tokio::time::timeout(Duration::from_secs(10), b.r.recv())
            .await
            .expect("messages within 10 s")
            .unwrap()
            .expect("the connection stays open");
        if let Some(pb::envelope::Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(d)),
        })) = env.body
        {
            got.extend(d.messages.iter().map(|m| (m.seq, m.payload.len())));
        }
    }
    let mut confirmed = 0;
    while confirmed < 8 {
        let env = a.r.recv().await.unwrap().unwrap();
        if let Some(pb::envelope::Body::Response(r)) = env.body {
            assert!(matches!(r.kind, Some(Resp::Sent(_))), "{r:?}");
            confirmed += 1;
        }
    }
    assert_eq!(got, (1..=8).map(|s| (s, 200 * 1024)).collect::<Vec<_>>());
}
