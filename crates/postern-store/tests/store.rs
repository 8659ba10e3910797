//! The stores, driven through their traits as the server drives them.
//!
//! Every test body is generic over a [`Backend`] and runs twice, against
//! SQLite and against PostgreSQL (see `store_tests!` at the end); a few
//! tests at the end are about one store only.

#[macro_use]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use postern_store::{
    AccountId, AccountStore, CodeStore, CommitOutcome, Device, DeviceAddr, DistributorStore,
    GroupStore, KeyPackageStore, NewAccount, NewCommit, NewDevice, NewMessage, QueueStore,
    Recipients, SealedConnection, Store, StoreError, VaultEntry, VaultStore,
};
use support::{Backend, Postgres, Sqlite};

const NOW: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

/// A device with keys no other test device has.
fn new_device(name: &str) -> NewDevice {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    NewDevice {
        name: name.to_owned(),
        identity_key: [n; 32],
        noise_key: {
            let mut k = [n; 32];
            k[0] = 0xee;
            k
        },
    }
}

/// A stand-in for the server's keyed phone hash: distinct for distinct
/// numbers, which is all the store relies on.
fn key(phone: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..phone.len()].copy_from_slice(phone.as_bytes());
    k
}

fn new_account(phone: &str, username: Option<&str>) -> NewAccount {
    NewAccount {
        id: AccountId::random(),
        phone_key: key(phone),
        country: "US".into(),
        username: username.map(str::to_owned),
        vault: None,
    }
}

async fn account(store: &impl Store, phone: &str, devices: usize) -> Vec<Device> {
    let (_, first) = store
        .create_account(new_account(phone, None), new_device("first"), NOW)
        .await
        .unwrap();
    let mut out = vec![first.clone()];
    for i in 1..devices {
        out.push(
            store
                .add_device(first.addr.account, new_device(&format!("d{i}")), NOW)
                .await
                .unwrap(),
        );
    }
    out
}

fn message(from: DeviceAddr, to: AccountId, id: u128, payload: &str) -> NewMessage {
    NewMessage {
        sender: from,
        client_message_id: id.to_be_bytes(),
        to: to.into(),
        group_id: None,
        group_epoch: None,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        received_at: NOW,
        expires_at: NOW + HOUR,
    }
}

async fn accounts_are_created_and_found<B: Backend>(b: &B) {
    let store = b.open().await;
    let dev = new_device("laptop");
    let (account, device) = store
        .create_account(new_account("+15550001", Some("alice")), dev.clone(), NOW)
        .await
        .unwrap();
    assert_eq!(account.country, "US");
    assert_eq!(account.username.as_deref(), Some("alice"));
    assert_eq!(device.addr.device, 1);
    assert_eq!(device.noise_key, dev.noise_key);

    assert_eq!(
        store.account(account.id).await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(
        store.account_by_phone_key(&key("+15550001")).await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(
        store.account_by_username("alice").await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(
        store.account_by_username("ALICE").await.unwrap(),
        Some(account.clone()),
        "usernames ignore case"
    );
    assert_eq!(
        store.account_by_phone_key(&key("+15559999")).await.unwrap(),
        None
    );
    assert_eq!(store.account(AccountId([7; 16])).await.unwrap(), None);
    assert_eq!(
        store.devices(account.id).await.unwrap(),
        vec![device.clone()]
    );
    assert_eq!(
        store.device_by_noise_key(&dev.noise_key).await.unwrap(),
        Some(device)
    );
    assert_eq!(store.device_by_noise_key(&[0; 32]).await.unwrap(), None);
}

async fn taken_phone_username_or_key_fail_with_typed_errors_and_create_nothing<B: Backend>(b: &B) {
    let store = b.open().await;
    let dev = new_device("a");
    store
        .create_account(new_account("+15550001", Some("alice")), dev.clone(), NOW)
        .await
        .unwrap();

    let err = store
        .create_account(new_account("+15550001", None), new_device("b"), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PhoneTaken), "{err:?}");

    let err = store
        .create_account(
            new_account("+15550002", Some("Alice")),
            new_device("b"),
            NOW,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UsernameTaken), "{err:?}");

    // The account row would be fine; its device is not, so neither is kept.
    let err = store
        .create_account(new_account("+15550003", Some("carol")), dev.clone(), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DeviceKeyTaken), "{err:?}");
    assert_eq!(
        store.account_by_phone_key(&key("+15550003")).await.unwrap(),
        None
    );
    assert_eq!(store.account_by_username("carol").await.unwrap(), None);

    // After all that, the phone is still free to register.
    store
        .create_account(
            new_account("+15550003", Some("carol")),
            new_device("c"),
            NOW,
        )
        .await
        .unwrap();
}

async fn usernames_are_set_cleared_and_unique<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr.account;
    let bob = account(&store, "+15550002", 1).await[0].addr.account;

    store.set_username(alice, Some("alice")).await.unwrap();
    let err = store.set_username(bob, Some("alice")).await.unwrap_err();
    assert!(matches!(err, StoreError::UsernameTaken), "{err:?}");
    store.set_username(alice, None).await.unwrap();
    assert_eq!(store.account_by_username("alice").await.unwrap(), None);
    assert_eq!(store.account(alice).await.unwrap().unwrap().username, None);
    store.set_username(bob, Some("alice")).await.unwrap();
    assert_eq!(
        store
            .account_by_username("alice")
            .await
            .unwrap()
            .unwrap()
            .id,
        bob
    );
    let err = store
        .set_username(AccountId([9; 16]), Some("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAccount), "{err:?}");
}

async fn devices_are_numbered_in_order<B: Backend>(b: &B) {
    let store = b.open().await;
    let devices = account(&store, "+15550001", 3).await;
    let numbers: Vec<u32> = devices.iter().map(|d| d.addr.device).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let id = devices[0].addr.account;
    assert_eq!(store.devices(id).await.unwrap(), devices);
    assert_eq!(
        store
            .device_by_noise_key(&devices[2].noise_key)
            .await
            .unwrap(),
        Some(devices[2].clone())
    );

    let err = store
        .add_device(
            id,
            NewDevice {
                ..devices[1].clone().into_new()
            },
            NOW,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DeviceKeyTaken), "{err:?}");
    let err = store
        .add_device(AccountId([3; 16]), new_device("x"), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAccount), "{err:?}");
    assert_eq!(store.devices(AccountId([3; 16])).await.unwrap(), vec![]);
}

trait IntoNew {
    fn into_new(self) -> NewDevice;
}

impl IntoNew for Device {
    fn into_new(self) -> NewDevice {
        NewDevice {
            name: self.name,
            identity_key: self.identity_key,
            noise_key: self.noise_key,
        }
    }
}

async fn link_tokens_work_once_and_expire<B: Backend>(b: &B) {
    let store = b.open().await;
    let id = account(&store, "+15550001", 1).await[0].addr.account;

    store
        .create_link_token(id, [1; 32], NOW + 1000)
        .await
        .unwrap();
    assert_eq!(
        store.redeem_link_token([1; 32], NOW).await.unwrap(),
        Some(id)
    );
    assert_eq!(store.redeem_link_token([1; 32], NOW).await.unwrap(), None);

    store
        .create_link_token(id, [2; 32], NOW + 1000)
        .await
        .unwrap();
    assert_eq!(
        store.redeem_link_token([2; 32], NOW + 1000).await.unwrap(),
        None
    );
    assert_eq!(
        store.redeem_link_token([2; 32], NOW).await.unwrap(),
        None,
        "an expired token is gone, not kept for later"
    );
    assert_eq!(store.redeem_link_token([3; 32], NOW).await.unwrap(), None);

    let err = store
        .create_link_token(AccountId([5; 16]), [4; 32], NOW + 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAccount), "{err:?}");
}

async fn codes_are_issued_counted_consumed_once_and_purged<B: Backend>(b: &B) {
    let store = b.open().await;
    let phone = "+15550001";
    assert_eq!(store.latest_code(&key(phone)).await.unwrap(), None);
    store
        .issue_code(&key(phone), [1; 32], NOW, NOW + 600_000)
        .await
        .unwrap();
    store
        .issue_code(&key(phone), [2; 32], NOW + 1000, NOW + 601_000)
        .await
        .unwrap();
    store
        .issue_code(&key("+15550002"), [3; 32], NOW + 2000, NOW + 602_000)
        .await
        .unwrap();

    assert_eq!(store.codes_issued_since(&key(phone), NOW).await.unwrap(), 2);
    assert_eq!(
        store
            .codes_issued_since(&key(phone), NOW + 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .codes_issued_since(&key(phone), NOW + 2000)
            .await
            .unwrap(),
        0
    );

    let code = store.latest_code(&key(phone)).await.unwrap().unwrap();
    assert_eq!(code.code_hash, [2; 32]);
    assert_eq!(code.issued_at, NOW + 1000);
    assert_eq!(code.expires_at, NOW + 601_000);
    assert_eq!((code.used_at, code.failed_attempts), (None, 0));

    assert_eq!(store.record_failed_attempt(code.id).await.unwrap(), 1);
    assert_eq!(store.record_failed_attempt(code.id).await.unwrap(), 2);
    assert_eq!(store.record_failed_attempt(i64::MAX).await.unwrap(), 0);

    // Two registrations race for the same code: exactly one wins.
    let (a, b) = tokio::join!(
        store.consume_code(code.id, NOW + 5000),
        store.consume_code(code.id, NOW + 5001)
    );
    assert!(a.unwrap() ^ b.unwrap());
    assert!(!store.consume_code(code.id, NOW + 6000).await.unwrap());
    let code = store.latest_code(&key(phone)).await.unwrap().unwrap();
    assert_eq!(code.failed_attempts, 2);
    assert!(code.used_at.is_some());

    assert_eq!(store.purge_codes(NOW + 600_500).await.unwrap(), 1);
    assert_eq!(store.codes_issued_since(&key(phone), 0).await.unwrap(), 1);
    assert_eq!(store.purge_codes(NOW + HOUR).await.unwrap(), 2);
    assert_eq!(store.latest_code(&key(phone)).await.unwrap(), None);
}

async fn a_message_reaches_every_device_with_increasing_sequence_numbers<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 3).await;
    let to = bob[0].addr.account;

    for i in 1..=3u64 {
        let sent = store
            .enqueue(message(alice, to, i.into(), &format!("hi {i}")))
            .await
            .unwrap();
        assert!(!sent.duplicate);
        assert_eq!(sent.received_at, NOW);
        let expected: Vec<_> = bob.iter().map(|d| (d.addr, i)).collect();
        assert_eq!(sent.deliveries, expected);
    }
    for device in &bob {
        let got = store.fetch(device.addr, 0, 100, usize::MAX).await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(got[1].payload, Bytes::from_static(b"hi 2"));
        assert_eq!(got[1].sender, alice);
        assert_eq!(got[1].client_message_id, 2u128.to_be_bytes());
        assert_eq!(got[1].received_at, NOW);
    }

    // A device added later starts its own queue at 1.
    let late = store.add_device(to, new_device("late"), NOW).await.unwrap();
    let sent = store.enqueue(message(alice, to, 4, "hi 4")).await.unwrap();
    assert!(sent.deliveries.contains(&(late.addr, 1)));
    assert!(sent.deliveries.contains(&(bob[0].addr, 4)));
}

async fn a_resent_message_is_stored_once<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 1).await[0].addr;

    let first = store
        .enqueue(message(alice, bob.account, 1, "hi"))
        .await
        .unwrap();
    let mut again = message(alice, bob.account, 1, "hi");
    again.received_at = NOW + 5000;
    let again = store.enqueue(again).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.received_at, first.received_at);
    assert!(again.deliveries.is_empty());

    // The same id from another sender account is another message.
    let carol = account(&store, "+15550003", 1).await[0].addr;
    let other = store
        .enqueue(message(carol, bob.account, 1, "yo"))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(store.fetch(bob, 0, 10, usize::MAX).await.unwrap().len(), 2);
}

async fn concurrent_resends_are_stored_once<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 2).await[0].addr;

    let sends = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.enqueue(message(alice, bob.account, 42, "hi")).await })
    });
    let results: Vec<_> = futures::future::join_all(sends).await;
    let results: Vec<_> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.received_at == NOW));
    let stored = store.fetch(bob, 0, 100, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].seq, 1);
}

async fn an_unknown_recipient_fails_only_its_own_message<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 1).await[0].addr;
    let nobody = AccountId([0xab; 16]);

    let sends = (0..30u128).map(|i| {
        let store = store.clone();
        let to = if i % 3 == 0 { nobody } else { bob.account };
        tokio::spawn(async move { (i, store.enqueue(message(alice, to, i, "x")).await) })
    });
    for done in futures::future::join_all(sends).await {
        let (i, result) = done.unwrap();
        if i % 3 == 0 {
            assert!(
                matches!(result, Err(StoreError::UnknownAccount)),
                "{result:?}"
            );
        } else {
            assert!(!result.unwrap().duplicate);
        }
    }
    let stored = store.fetch(bob, 0, 100, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), 20);
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());

    // The failed sends left no idempotency record: a retry to a real
    // recipient with the same id is a new message.
    let retry = store
        .enqueue(message(alice, bob.account, 0, "x"))
        .await
        .unwrap();
    assert!(!retry.duplicate);
}

async fn fetch_respects_cursor_limit_and_byte_budget<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 1).await[0].addr;
    for i in 1..=10u128 {
        store
            .enqueue(message(alice, bob.account, i, &"x".repeat(100)))
            .await
            .unwrap();
    }
    let seqs = |msgs: Vec<postern_store::StoredMessage>| -> Vec<u64> {
        msgs.iter().map(|m| m.seq).collect()
    };
    assert_eq!(
        seqs(store.fetch(bob, 0, 3, usize::MAX).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        seqs(store.fetch(bob, 8, 5, usize::MAX).await.unwrap()),
        [9, 10]
    );
    assert_eq!(
        seqs(store.fetch(bob, 10, 5, usize::MAX).await.unwrap()),
        [0u64; 0]
    );
    assert_eq!(
        seqs(store.fetch(bob, 0, 0, usize::MAX).await.unwrap()),
        [0u64; 0]
    );
    assert_eq!(seqs(store.fetch(bob, 0, 10, 250).await.unwrap()), [1, 2]);
    assert_eq!(seqs(store.fetch(bob, 0, 10, 300).await.unwrap()), [1, 2, 3]);
    assert_eq!(
        seqs(store.fetch(bob, 4, 10, 10).await.unwrap()),
        [5],
        "one message even if it alone is over budget"
    );
    let other = DeviceAddr { device: 2, ..bob };
    assert_eq!(
        seqs(store.fetch(other, 0, 10, usize::MAX).await.unwrap()),
        [0u64; 0]
    );
}

async fn ack_deletes_up_to_the_sequence_number_of_one_device<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 2).await;
    let (b1, b2) = (bob[0].addr, bob[1].addr);
    for i in 1..=5u128 {
        store
            .enqueue(message(alice, b1.account, i, "x"))
            .await
            .unwrap();
    }
    store.ack(b1, 3).await.unwrap();
    let left: Vec<u64> = store
        .fetch(b1, 0, 10, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(left, [4, 5]);
    assert_eq!(store.fetch(b2, 0, 10, usize::MAX).await.unwrap().len(), 5);
    store.ack(b1, u64::MAX).await.unwrap();
    assert!(store.fetch(b1, 0, 10, usize::MAX).await.unwrap().is_empty());

    // Sequence numbers are never reused after an ack.
    let sent = store
        .enqueue(message(alice, b1.account, 6, "x"))
        .await
        .unwrap();
    assert!(sent.deliveries.contains(&(b1, 6)));
}

async fn purge_drops_expired_messages_and_their_send_records<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550001", 1).await[0].addr;
    let bob = account(&store, "+15550002", 2).await[0].addr;
    let mut short = message(alice, bob.account, 1, "short");
    short.expires_at = NOW + 1000;
    store.enqueue(short.clone()).await.unwrap();
    store
        .enqueue(message(alice, bob.account, 2, "long"))
        .await
        .unwrap();

    assert_eq!(store.purge_expired(NOW + 999).await.unwrap(), 0);
    assert_eq!(
        store.purge_expired(NOW + 1000).await.unwrap(),
        2,
        "one copy per device"
    );
    let left = store.fetch(bob, 0, 10, usize::MAX).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload, Bytes::from_static(b"long"));

    // With its send record gone too, the old id is accepted again.
    assert!(!store.enqueue(short).await.unwrap().duplicate);
    assert!(
        store
            .enqueue(message(alice, bob.account, 2, "long"))
            .await
            .unwrap()
            .duplicate
    );
}

async fn many_concurrent_senders_get_gap_free_queues<B: Backend>(b: &B) {
    send_concurrently(&b.open().await).await;
}

const TASKS: u128 = 50;
const PER_TASK: u128 = 40;

/// `TASKS` senders each send `PER_TASK` messages one after another, to four
/// accounts of two devices; every device's queue must come out gap-free.
async fn send_concurrently(store: &(impl Store + Clone + 'static)) {
    let senders: Vec<DeviceAddr> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(account(store, &format!("+1555100{i}"), 1).await[0].addr);
        }
        v
    };
    let mut recipients = Vec::new();
    for i in 0..4 {
        recipients.push(account(store, &format!("+1555200{i}"), 2).await);
    }

    let tasks = (0..TASKS).map(|t| {
        let store = store.clone();
        let from = senders[(t % 5) as usize];
        let to: Vec<AccountId> = recipients.iter().map(|r| r[0].addr.account).collect();
        tokio::spawn(async move {
            for i in 0..PER_TASK {
                let id = t * 1000 + i;
                let to = to[(id % 4) as usize];
                let sent = store
                    .enqueue(message(from, to, id, &id.to_string()))
                    .await
                    .unwrap();
                assert!(!sent.duplicate);
                assert_eq!(sent.deliveries.len(), 2);
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }

    let mut all = HashSet::new();
    for devices in &recipients {
        let mut per_device = BTreeMap::new();
        for d in devices {
            let msgs = store.fetch(d.addr, 0, 10_000, usize::MAX).await.unwrap();
            let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=msgs.len() as u64).collect::<Vec<_>>());
            per_device.insert(
                d.addr.device,
                msgs.iter().map(|m| m.client_message_id).collect::<Vec<_>>(),
            );
            all.extend(msgs.iter().map(|m| (m.sender.account, m.client_message_id)));
        }
        // Every device of an account sees the same messages in the same order.
        assert_eq!(per_device[&1], per_device[&2]);
    }
    assert_eq!(all.len(), (TASKS * PER_TASK) as usize);
}

async fn everything_is_there_after_reopening<B: Backend>(b: &B) {
    let (alice, bob);
    {
        let store = b.open().await;
        alice = account(&store, "+15550001", 1).await[0].addr;
        bob = account(&store, "+15550002", 2).await;
        store
            .set_username(alice.account, Some("alice"))
            .await
            .unwrap();
        store
            .issue_code(&key("+15550003"), [1; 32], NOW, NOW + HOUR)
            .await
            .unwrap();
        store
            .create_link_token(alice.account, [9; 32], NOW + HOUR)
            .await
            .unwrap();
        for i in 1..=3u128 {
            store
                .enqueue(message(alice, bob[0].addr.account, i, "x"))
                .await
                .unwrap();
        }
        store.ack(bob[0].addr, 1).await.unwrap();
        b.close(&store).await;
        let err = store
            .account_by_phone_key(&key("+15550001"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err:?}");
        let err = store
            .enqueue(message(alice, bob[0].addr.account, 4, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err:?}");
    }
    let store = b.open().await;
    assert_eq!(
        store
            .account_by_username("alice")
            .await
            .unwrap()
            .unwrap()
            .id,
        alice.account
    );
    assert_eq!(store.devices(bob[0].addr.account).await.unwrap(), bob);
    assert!(
        store
            .latest_code(&key("+15550003"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.redeem_link_token([9; 32], NOW).await.unwrap(),
        Some(alice.account)
    );
    let seqs = |m: Vec<postern_store::StoredMessage>| m.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.fetch(bob[0].addr, 0, 10, usize::MAX).await.unwrap()),
        [2, 3]
    );
    assert_eq!(
        seqs(store.fetch(bob[1].addr, 0, 10, usize::MAX).await.unwrap()),
        [1, 2, 3]
    );
    assert!(
        store
            .enqueue(message(alice, bob[0].addr.account, 3, "x"))
            .await
            .unwrap()
            .duplicate
    );
    let next = store
        .enqueue(message(alice, bob[0].addr.account, 4, "x"))
        .await
        .unwrap();
    assert_eq!(next.deliveries, vec![(bob[0].addr, 4), (bob[1].addr, 4)]);
}

fn commit(group: &[u8], epoch: u64, sender: DeviceAddr, id: u128) -> NewCommit {
    NewCommit {
        group_id: Bytes::copy_from_slice(group),
        epoch,
        sender,
        client_message_id: id.to_be_bytes(),
        added: Vec::new(),
        removed: Vec::new(),
        commit: Bytes::from(format!("commit {id}")),
        welcome: None,
        group_info: Bytes::from(format!("info {id}")),
        ratchet_tree: Bytes::from(format!("tree {id}")),
        received_at: NOW,
        expires_at: NOW + HOUR,
    }
}

async fn queued(store: &impl Store, device: DeviceAddr) -> Vec<(Option<Bytes>, Bytes)> {
    store
        .fetch(device, 0, 100, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.group_id, m.payload))
        .collect()
}

async fn the_first_commit_of_an_epoch_wins_and_is_delivered_with_its_welcome<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15551001", 2).await;
    let bob = account(&store, "+15551002", 1).await;
    let group = b"group-one";
    store.create_group(group, alice[0].addr, NOW).await.unwrap();
    assert!(matches!(
        store.create_group(group, bob[0].addr, NOW).await,
        Err(StoreError::GroupExists)
    ));

    // Alice's first device adds her second device and Bob.
    let mut add = commit(group, 0, alice[0].addr, 1);
    add.added = vec![alice[1].addr, bob[0].addr];
    add.welcome = Some((
        Bytes::from_static(b"welcome"),
        vec![alice[1].addr, bob[0].addr],
    ));
    let CommitOutcome::Accepted { commit: c, welcome } = store.commit(add.clone()).await.unwrap()
    else {
        panic!("the first commit of epoch 0 must be accepted");
    };
    assert!(c.deliveries.is_empty(), "alice's first device was alone");
    assert_eq!(welcome.unwrap().deliveries.len(), 2);
    let state = store.group(group).await.unwrap().unwrap();
    assert_eq!(state.epoch, 1);
    assert_eq!(state.members.len(), 3);
    assert_eq!(
        queued(&store, bob[0].addr).await,
        vec![(
            Some(Bytes::copy_from_slice(group)),
            Bytes::from_static(b"welcome")
        )]
    );

    // A retry of the same commit is a duplicate, not a stale commit.
    let CommitOutcome::Accepted { commit: again, .. } = store.commit(add).await.unwrap() else {
        panic!("a retried commit is answered as accepted");
    };
    assert!(again.duplicate);
    assert_eq!(
        queued(&store, bob[0].addr).await.len(),
        1,
        "nothing queued twice"
    );

    // Bob and Alice's second device race for epoch 1: Bob wins.
    let CommitOutcome::Accepted { commit: c, .. } = store
        .commit(commit(group, 1, bob[0].addr, 2))
        .await
        .unwrap()
    else {
        panic!("bob's commit is first for epoch 1");
    };
    assert_eq!(
        c.deliveries.len(),
        2,
        "both of alice's devices get bob's commit"
    );
    assert_eq!(
        store
            .commit(commit(group, 1, alice[1].addr, 3))
            .await
            .unwrap(),
        CommitOutcome::Stale { current_epoch: 2 }
    );
    assert_eq!(store.group(group).await.unwrap().unwrap().epoch, 2);
    let (epoch, info, tree) = store.group_info(group).await.unwrap().unwrap();
    assert_eq!(
        (epoch, &info[..], &tree[..]),
        (2, &b"info 2"[..], &b"tree 2"[..])
    );
    assert_eq!(
        store
            .commit(commit(b"nope", 0, bob[0].addr, 4))
            .await
            .unwrap(),
        CommitOutcome::UnknownGroup
    );
    assert_eq!(
        store.groups_of_account(bob[0].addr.account).await.unwrap(),
        vec![Bytes::copy_from_slice(group)]
    );
    // The tree of the epoch bob was welcomed into is kept for him, apart
    // from the latest one, until it expires.
    assert_eq!(
        store.welcome_tree(group, 1).await.unwrap().as_deref(),
        Some(&b"tree 1"[..])
    );
    assert_eq!(
        store.welcome_tree(group, 2).await.unwrap(),
        None,
        "no welcome at 2"
    );
    assert_eq!(store.queue_head(bob[0].addr).await.unwrap(), 1);
    store.purge_expired(NOW + HOUR).await.unwrap();
    assert_eq!(store.welcome_tree(group, 1).await.unwrap(), None);
}

async fn strangers_cannot_commit_but_a_members_new_device_can_join<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15551101", 1).await;
    let mallory = account(&store, "+15551102", 1).await;
    let group = b"group-two";
    store.create_group(group, alice[0].addr, NOW).await.unwrap();

    let mut join = commit(group, 0, mallory[0].addr, 10);
    join.added = vec![mallory[0].addr];
    assert_eq!(
        store.commit(join).await.unwrap(),
        CommitOutcome::NotAMember,
        "an external commit needs the joiner's account in the group"
    );
    assert_eq!(
        store
            .commit(commit(group, 0, mallory[0].addr, 11))
            .await
            .unwrap(),
        CommitOutcome::NotAMember
    );

    let laptop = store
        .add_device(alice[0].addr.account, new_device("laptop"), NOW)
        .await
        .unwrap();
    let mut join = commit(group, 0, laptop.addr, 12);
    join.added = vec![laptop.addr];
    assert!(matches!(
        store.commit(join).await.unwrap(),
        CommitOutcome::Accepted { .. }
    ));
    let state = store.group(group).await.unwrap().unwrap();
    assert_eq!(state.members, vec![alice[0].addr, laptop.addr]);
    assert_eq!(
        queued(&store, alice[0].addr).await.len(),
        1,
        "the phone hears of the join"
    );

    // A member's commit cannot slip a stranger in by claiming to be the
    // stranger's own join.
    let mut sneaky = commit(group, 1, mallory[0].addr, 13);
    sneaky.added = vec![mallory[0].addr];
    assert_eq!(
        store.commit(sneaky).await.unwrap(),
        CommitOutcome::NotAMember
    );
}

async fn group_messages_reach_listed_devices_that_exist<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15551201", 1).await;
    let bob = account(&store, "+15551202", 2).await;
    let ghost = DeviceAddr {
        account: bob[0].addr.account,
        device: 9,
    };
    let mut msg = message(alice[0].addr, bob[0].addr.account, 1, "to two");
    msg.to = Recipients::Devices(vec![bob[1].addr, ghost]);
    msg.group_id = Some(Bytes::from_static(b"g"));
    let enqueued = store.enqueue(msg).await.unwrap();
    assert_eq!(enqueued.deliveries.len(), 1);
    assert!(queued(&store, bob[0].addr).await.is_empty());
    assert_eq!(
        queued(&store, bob[1].addr).await,
        vec![(
            Some(Bytes::from_static(b"g")),
            Bytes::from_static(b"to two")
        )]
    );
}

async fn a_group_message_is_queued_only_in_the_groups_current_epoch<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15551301", 1).await;
    let bob = account(&store, "+15551302", 1).await;
    let group = b"epoch-guard";
    store.create_group(group, alice[0].addr, NOW).await.unwrap();
    let mut add = commit(group, 0, alice[0].addr, 1);
    add.added = vec![bob[0].addr];
    assert!(matches!(
        store.commit(add).await.unwrap(),
        CommitOutcome::Accepted { .. }
    ));
    let guarded = |epoch: u64, id: u128, group: &[u8]| {
        let mut msg = message(alice[0].addr, bob[0].addr.account, id, "hello");
        msg.to = Recipients::Devices(vec![bob[0].addr]);
        msg.group_id = Some(Bytes::copy_from_slice(group));
        msg.group_epoch = Some(epoch);
        msg
    };
    // Written for epoch 0, after the commit that began epoch 1: refused,
    // and nothing of it stays (not even its send record).
    assert!(matches!(
        store.enqueue(guarded(0, 7, group)).await,
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    assert!(matches!(
        store.enqueue(guarded(0, 8, b"no-such-group")).await,
        Err(StoreError::UnknownGroup)
    ));
    assert!(queued(&store, bob[0].addr).await.is_empty());
    let sent = store.enqueue(guarded(1, 7, group)).await.unwrap();
    assert!(!sent.duplicate, "the refused attempt left no send record");
    assert_eq!(sent.deliveries.len(), 1);
    assert_eq!(queued(&store, bob[0].addr).await.len(), 1);
}

async fn key_packages_are_handed_out_once_then_the_last_resort<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15551301", 1).await;
    let bob = account(&store, "+15551302", 2).await;
    let kp = |s: &str| Bytes::from(s.to_owned());
    let count = store
        .add_key_packages(
            bob[0].addr,
            vec![kp("b1"), kp("b2")],
            Some(kp("b-last")),
            100,
        )
        .await
        .unwrap();
    assert_eq!((count.one_time, count.last_resort), (2, true));

    let (got, exhausted) = store
        .claim_key_packages(bob[0].addr.account, alice[0].addr)
        .await
        .unwrap();
    assert_eq!(exhausted, vec![2], "bob's second device uploaded nothing");
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].device, &got[0].key_package[..], got[0].last_resort),
        (1, &b"b1"[..], false)
    );
    let (got, _) = store
        .claim_key_packages(bob[0].addr.account, alice[0].addr)
        .await
        .unwrap();
    assert_eq!(&got[0].key_package[..], b"b2");
    for _ in 0..2 {
        let (got, _) = store
            .claim_key_packages(bob[0].addr.account, alice[0].addr)
            .await
            .unwrap();
        assert_eq!(
            (&got[0].key_package[..], got[0].last_resort),
            (&b"b-last"[..], true)
        );
    }
    assert_eq!(
        store.key_package_count(bob[0].addr).await.unwrap().one_time,
        0
    );

    // A device never gets its own package; the cap keeps the newest.
    let (got, _) = store
        .claim_key_packages(bob[0].addr.account, bob[1].addr)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let many: Vec<Bytes> = (0..10).map(|i| kp(&format!("p{i}"))).collect();
    let count = store
        .add_key_packages(bob[1].addr, many, None, 4)
        .await
        .unwrap();
    assert_eq!((count.one_time, count.last_resort), (4, false));
    let (got, _) = store
        .claim_key_packages(bob[0].addr.account, alice[0].addr)
        .await
        .unwrap();
    assert_eq!(&got[1].key_package[..], b"p6");
    assert!(matches!(
        store
            .claim_key_packages(AccountId([9; 16]), alice[0].addr)
            .await,
        Err(StoreError::UnknownAccount)
    ));
}

async fn a_removed_device_loses_its_queue_packages_and_groups<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15551401", 2).await;
    let group = b"group-three";
    store.create_group(group, alice[0].addr, NOW).await.unwrap();
    let mut add = commit(group, 0, alice[0].addr, 1);
    add.added = vec![alice[1].addr];
    store.commit(add).await.unwrap();
    store
        .add_key_packages(alice[1].addr, vec![Bytes::from_static(b"k")], None, 10)
        .await
        .unwrap();
    store
        .enqueue(message(alice[0].addr, alice[0].addr.account, 7, "hi"))
        .await
        .unwrap();

    assert!(store.remove_device(alice[1].addr).await.unwrap());
    assert!(!store.remove_device(alice[1].addr).await.unwrap());
    assert_eq!(
        store.group(group).await.unwrap().unwrap().members,
        vec![alice[0].addr]
    );
    assert!(queued(&store, alice[1].addr).await.is_empty());
    assert_eq!(
        store
            .key_package_count(alice[1].addr)
            .await
            .unwrap()
            .one_time,
        0
    );
    assert_eq!(store.devices(alice[0].addr.account).await.unwrap().len(), 1);
}

async fn the_distributor_state_is_replaced_whole_and_survives_reopening<B: Backend>(b: &B) {
    {
        let store = b.open().await;
        assert_eq!(store.distributor_state().await.unwrap(), None);
        store
            .save_distributor_state(Bytes::from_static(b"first"), NOW)
            .await
            .unwrap();
        store
            .save_distributor_state(Bytes::from_static(b"second"), NOW + 1)
            .await
            .unwrap();
        b.close(&store).await;
    }
    let store = b.open().await;
    assert_eq!(
        store.distributor_state().await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
}

async fn vault_entries_and_connections_are_kept_found_and_purged<B: Backend>(b: &B) {
    let store = b.open().await;
    let alice = account(&store, "+15550101", 1).await[0].addr.account;
    let bob = account(&store, "+15550102", 1).await[0].addr.account;
    let entry = |account, index: u8| VaultEntry {
        account,
        phone_index: [index; 32],
        public_key: [index + 1; 32],
        sealed_phone: Bytes::from(vec![index; 60]),
        threshold: 2,
        shares: vec![
            ([1; 32], Bytes::from_static(b"share for custodian 1")),
            ([2; 32], Bytes::from_static(b"share for custodian 2")),
            ([3; 32], Bytes::from_static(b"share for custodian 3")),
        ],
    };
    store.put_vault(entry(alice, 10)).await.unwrap();
    assert_eq!(store.vault(alice).await.unwrap(), Some(entry(alice, 10)));
    assert_eq!(store.vault(bob).await.unwrap(), None);
    assert_eq!(
        store.account_by_phone_index(&[10; 32]).await.unwrap(),
        Some(alice)
    );
    assert_eq!(store.account_by_phone_index(&[11; 32]).await.unwrap(), None);

    // A taken phone index is PhoneTaken, and stores nothing (not even the
    // shares); an unknown account is UnknownAccount.
    assert!(matches!(
        store.put_vault(entry(bob, 10)).await,
        Err(StoreError::PhoneTaken)
    ));
    assert_eq!(store.vault(bob).await.unwrap(), None);
    assert!(matches!(
        store.put_vault(entry(AccountId([9; 16]), 12)).await,
        Err(StoreError::UnknownAccount)
    ));
    store.put_vault(entry(bob, 11)).await.unwrap();

    for (i, at) in [NOW - 40 * 24 * HOUR, NOW - 2 * HOUR, NOW - HOUR, NOW]
        .iter()
        .enumerate()
    {
        store
            .add_connection(alice, *at, Bytes::from(vec![i as u8; 70]))
            .await
            .unwrap();
    }
    store
        .add_connection(bob, NOW - HOUR, Bytes::from_static(b"bob's"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_connection(AccountId([9; 16]), NOW, Bytes::from_static(b"x"))
            .await,
        Err(StoreError::UnknownAccount)
    ));
    // The window is [from, until), oldest first, this account's only.
    let window = store.connections(alice, NOW - 2 * HOUR, NOW).await.unwrap();
    assert_eq!(
        window,
        vec![
            SealedConnection {
                at: NOW - 2 * HOUR,
                sealed: Bytes::from(vec![1; 70])
            },
            SealedConnection {
                at: NOW - HOUR,
                sealed: Bytes::from(vec![2; 70])
            },
        ]
    );
    // Retention: 30 days.
    assert_eq!(
        store.purge_connections(NOW - 30 * 24 * HOUR).await.unwrap(),
        1
    );
    assert_eq!(
        store.connections(alice, 0, i64::MAX).await.unwrap().len(),
        3
    );
    assert_eq!(store.connections(bob, 0, i64::MAX).await.unwrap().len(), 1);
}

async fn an_account_and_its_vault_are_created_together<B: Backend>(b: &B) {
    let store = b.open().await;
    let vault = |account, index: u8| VaultEntry {
        account,
        phone_index: [index; 32],
        public_key: [index + 1; 32],
        sealed_phone: Bytes::from(vec![index; 60]),
        threshold: 1,
        shares: vec![([1; 32], Bytes::from_static(b"share"))],
    };
    let mut new = new_account("+15550201", None);
    new.vault = Some(vault(new.id, 20));
    let (alice, _) = store
        .create_account(new.clone(), new_device("a"), NOW)
        .await
        .unwrap();
    assert_eq!(store.vault(alice.id).await.unwrap(), new.vault);
    assert_eq!(
        store.account_by_phone_index(&[20; 32]).await.unwrap(),
        Some(alice.id)
    );
    // A vault entry that cannot be stored (its index is taken) keeps the
    // account from being created.
    let mut other = new_account("+15550202", None);
    other.vault = Some(vault(other.id, 20));
    let err = store
        .create_account(other.clone(), new_device("b"), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PhoneTaken), "{err:?}");
    assert_eq!(store.account(other.id).await.unwrap(), None);
    assert!(store.legacy_phones(10).await.unwrap().is_empty());
}

/// Instantiates each generic test body for SQLite and for PostgreSQL.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&crate::Sqlite::new()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    with_postgres!(super::$name);
                }
            )*
        }
    };
}

store_tests!(
    accounts_are_created_and_found,
    an_account_and_its_vault_are_created_together,
    taken_phone_username_or_key_fail_with_typed_errors_and_create_nothing,
    usernames_are_set_cleared_and_unique,
    devices_are_numbered_in_order,
    link_tokens_work_once_and_expire,
    codes_are_issued_counted_consumed_once_and_purged,
    a_message_reaches_every_device_with_increasing_sequence_numbers,
    a_resent_message_is_stored_once,
    concurrent_resends_are_stored_once,
    an_unknown_recipient_fails_only_its_own_message,
    fetch_respects_cursor_limit_and_byte_budget,
    ack_deletes_up_to_the_sequence_number_of_one_device,
    purge_drops_expired_messages_and_their_send_records,
    many_concurrent_senders_get_gap_free_queues,
    everything_is_there_after_reopening,
    the_first_commit_of_an_epoch_wins_and_is_delivered_with_its_welcome,
    strangers_cannot_commit_but_a_members_new_device_can_join,
    group_messages_reach_listed_devices_that_exist,
    a_group_message_is_queued_only_in_the_groups_current_epoch,
    key_packages_are_handed_out_once_then_the_last_resort,
    a_removed_device_loses_its_queue_packages_and_groups,
    the_distributor_state_is_replaced_whole_and_survives_reopening,
    vault_entries_and_connections_are_kept_found_and_purged,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_concurrent_senders_in_groups() {
    let sqlite = Sqlite::new();
    let store = sqlite.open().await;
    let before = store.stats();
    send_concurrently(&store).await;
    let stats = store.stats();
    // Accounts and devices are writes too: 5 senders, 4 recipients of 2.
    let commands = stats.commands - before.commands - 5 - 4 * 2;
    let batches = stats.batches - before.batches;
    assert_eq!(commands, (TASKS * PER_TASK) as u64);
    assert!(
        batches < commands,
        "group commit: {batches} batches for {commands} calls"
    );
}

/// Two nodes (two pools) send to one device at once: every sequence number
/// is handed out once, in order, and a reader following the queue as it
/// fills never sees a later number before an earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_share_one_gap_free_queue() {
    with_postgres!(two_nodes_enqueue_to_one_device);
}

async fn two_nodes_enqueue_to_one_device(pg: &Postgres) {
    const SENDERS: u128 = 16;
    const EACH: u128 = 25;
    const TOTAL: u64 = (SENDERS * EACH) as u64;
    let (one, two) = (pg.open_node().await, pg.open_node().await);
    let alice = account(&one, "+15553001", 1).await[0].addr;
    let bob = account(&two, "+15553002", 1).await[0].addr;

    let reader = {
        let store = one.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while last < TOTAL {
                for m in store.fetch(bob, last, 1000, usize::MAX).await.unwrap() {
                    assert_eq!(m.seq, last + 1, "a sequence number became visible early");
                    last = m.seq;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let senders = (0..SENDERS).map(|t| {
        let store = if t % 2 == 0 { one.clone() } else { two.clone() };
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let sent = store
                    .enqueue(message(alice, bob.account, t << 32 | i, "x"))
                    .await
                    .unwrap();
                assert_eq!(sent.deliveries.len(), 1);
                seqs.push(sent.deliveries[0].1);
            }
            seqs
        })
    });
    let mut all = Vec::new();
    for seqs in futures::future::join_all(senders).await {
        let seqs = seqs.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one sender's messages are queued in the order sent: {seqs:?}"
        );
        all.extend(seqs);
    }
    reader.await.unwrap();
    all.sort_unstable();
    assert_eq!(all, (1..=TOTAL).collect::<Vec<_>>());
    let stored = two.fetch(bob, 0, 10_000, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(two.queue_head(bob).await.unwrap(), TOTAL);
    one.close().await;
    two.close().await;
}

/// Members on two nodes commit for the same epoch at the same moment:
/// exactly one commit is accepted, the rest are stale, and every member
/// is sent that one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_racing_for_an_epoch_accept_one_commit() {
    with_postgres!(two_nodes_race_for_an_epoch);
}

async fn two_nodes_race_for_an_epoch(pg: &Postgres) {
    const DEVICES: usize = 8;
    let (one, two) = (pg.open_node().await, pg.open_node().await);
    let alice = account(&one, "+15553101", DEVICES).await;
    let group = b"contested";
    one.create_group(group, alice[0].addr, NOW).await.unwrap();
    let mut add = commit(group, 0, alice[0].addr, 1);
    add.added = alice[1..].iter().map(|d| d.addr).collect();
    assert!(matches!(
        two.commit(add).await.unwrap(),
        CommitOutcome::Accepted { .. }
    ));

    for round in 0..5u128 {
        let epoch = 1 + round as u64;
        let racers = alice.iter().enumerate().map(|(i, d)| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let c = commit(group, epoch, d.addr, 100 * (round + 1) + i as u128);
            tokio::spawn(async move { store.commit(c).await.unwrap() })
        });
        let outcomes: Vec<CommitOutcome> = futures::future::join_all(racers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, CommitOutcome::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.iter().all(|o| match o {
            CommitOutcome::Accepted { .. } => true,
            CommitOutcome::Stale { current_epoch } => *current_epoch == epoch + 1,
            _ => false,
        }));
        assert_eq!(one.group(group).await.unwrap().unwrap().epoch, epoch + 1);
    }
    // Each round's winner sent its commit to the others, once (the first
    // commit went to nobody: its sender was the only member).
    let mut received = 0;
    for d in &alice {
        received += two.fetch(d.addr, 0, 1000, usize::MAX).await.unwrap().len();
    }
    assert_eq!(received, 5 * (DEVICES - 1));
    one.close().await;
    two.close().await;
}

/// One node queues group messages for an epoch while another commits the
/// next one: no member ever finds a message of the old epoch after the
/// commit that ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_never_queue_a_message_behind_its_epochs_end() {
    with_postgres!(messages_race_a_commit);
}

async fn messages_race_a_commit(pg: &Postgres) {
    let (one, two) = (pg.open_node().await, pg.open_node().await);
    let alice = account(&one, "+15553201", 1).await;
    let bob = account(&one, "+15553202", 1).await;
    let group = b"raced";
    one.create_group(group, alice[0].addr, NOW).await.unwrap();
    let mut add = commit(group, 0, alice[0].addr, 1);
    add.added = vec![bob[0].addr];
    assert!(matches!(
        one.commit(add).await.unwrap(),
        CommitOutcome::Accepted { .. }
    ));
    let mut refused = 0;
    for epoch in 1..=5u64 {
        // Eight race the commit; two more start after it and must lose.
        let senders = (0..10u128).map(|i| {
            let store = one.clone();
            let mut msg = message(
                alice[0].addr,
                bob[0].addr.account,
                1000 * u128::from(epoch) + i,
                &format!("message of epoch {epoch}"),
            );
            msg.to = Recipients::Devices(vec![bob[0].addr]);
            msg.group_id = Some(Bytes::from_static(group));
            msg.group_epoch = Some(epoch);
            (i, store, msg)
        });
        let mut c = commit(group, epoch, alice[0].addr, 10 + u128::from(epoch));
        c.commit = Bytes::from(format!("commit ending epoch {epoch}"));
        let committer = two.clone();
        let mut committed = Some(tokio::spawn(
            async move { committer.commit(c).await.unwrap() },
        ));
        let mut running = Vec::new();
        for (i, store, msg) in senders {
            if i == 8 {
                let committed = committed.take().expect("once");
                assert!(matches!(
                    committed.await.unwrap(),
                    CommitOutcome::Accepted { .. }
                ));
            }
            running.push(tokio::spawn(async move { store.enqueue(msg).await }));
        }
        for s in running {
            match s.await.unwrap() {
                Ok(_) => {}
                Err(StoreError::StaleEpoch { current }) => {
                    assert_eq!(current, epoch + 1);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    // Bob's queue, in order: once an epoch's commit is there, no message
    // of that epoch follows.
    let mut ended = 0u64;
    for (_, payload) in queued(&two, bob[0].addr).await {
        let text = String::from_utf8(payload.to_vec()).unwrap();
        if let Some(e) = text.strip_prefix("commit ending epoch ") {
            ended = e.parse().unwrap();
        } else if let Some(e) = text.strip_prefix("message of epoch ") {
            let e: u64 = e.parse().unwrap();
            assert!(e > ended, "{text} after the commit ending epoch {ended}");
        }
    }
    assert!(refused >= 10, "the two late senders of each epoch lose");
    eprintln!("{refused} of 50 messages lost their race to a commit and were refused");
    one.close().await;
    two.close().await;
}

/// Members on two nodes claim the same account's key packages at once:
/// every one-time package is handed out once, then the last resort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_claiming_key_packages_never_share_one() {
    with_postgres!(two_nodes_claim_key_packages);
}

async fn two_nodes_claim_key_packages(pg: &Postgres) {
    const PACKAGES: usize = 40;
    const CLAIMS: usize = 50;
    let (one, two) = (pg.open_node().await, pg.open_node().await);
    let alice = account(&one, "+15553201", 1).await[0].addr;
    let bob = account(&two, "+15553202", 1).await[0].addr;
    let packages: Vec<Bytes> = (0..PACKAGES)
        .map(|i| Bytes::from(format!("kp{i}")))
        .collect();
    one.add_key_packages(bob, packages, Some(Bytes::from_static(b"last")), 100)
        .await
        .unwrap();

    let claims = (0..CLAIMS).map(|i| {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        tokio::spawn(async move { store.claim_key_packages(bob.account, alice).await })
    });
    let mut one_time = HashSet::new();
    let mut last_resort = 0;
    for claim in futures::future::join_all(claims).await {
        let (got, exhausted) = claim.unwrap().unwrap();
        assert!(exhausted.is_empty());
        assert_eq!(got.len(), 1);
        if got[0].last_resort {
            last_resort += 1;
        } else {
            assert!(
                one_time.insert(got[0].key_package.clone()),
                "{:?} handed out twice",
                got[0].key_package
            );
        }
    }
    assert_eq!((one_time.len(), last_resort), (PACKAGES, CLAIMS - PACKAGES));
    one.close().await;
    two.close().await;
}
